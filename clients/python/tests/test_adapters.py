"""The framework adapters, driven without a model: the OpenAI Agents SDK's
``FunctionTool.on_invoke_tool`` and LangChain's ``tool.invoke`` / LangGraph's
``ToolNode``."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from typing import Any

from agents import FunctionTool
from agents.tool_context import ToolContext
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from countersign import Client, InvalidArgs, ToolDenied, idempotency_key_for
from countersign.adapters import langchain as lc_adapter
from countersign.adapters import model_message
from countersign.adapters import openai_agents as oa_adapter
from countersign.errors import error_from_response
from fakeserver import ENV, EXECUTOR_KEY, FakeServer

ARGS = {"ticket_id": "T-18421", "reason": "Issue resolved"}


def executor_elsewhere(fake: FakeServer, result: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        with fake.client(EXECUTOR_KEY) as ex:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for job in ex.claim():
                    ex.complete(job.job_id, job.lease_id, "succeeded", result)
                    return
                time.sleep(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def approve_on_wait(fake: FakeServer) -> None:
    fake.on_wait = lambda p: fake.approve(p["id"]) if p["status"] == "pending" else None


def test_model_messages() -> None:
    bad = error_from_response(
        422,
        {
            "error": {
                "code": "invalid_args",
                "message": "m",
                "details": {"fields": {"ticket_id": "must match ^T-[0-9]+$"}},
            }
        },
    )
    assert isinstance(bad, InvalidArgs)
    assert model_message(bad) == (
        "countersign refused the call (invalid_args): ticket_id: must match ^T-[0-9]+$"
    )
    denied = error_from_response(
        403, {"error": {"code": "tool_denied", "message": "tool db.write is denied"}}
    )
    assert isinstance(denied, ToolDenied)
    assert (
        model_message(denied)
        == "countersign refused the call (tool_denied): tool db.write is denied"
    )


# ------------------------------------------------------------ OpenAI Agents


def ctx(tool: FunctionTool, args: str) -> ToolContext[Any]:
    return ToolContext(
        context=None, tool_name=tool.name, tool_call_id="call_1", tool_arguments=args
    )


async def test_openai_agents_tool_goes_through_countersign(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent:

        @oa_adapter.gated_tool("ticket.close", client=agent, timeout=10)
        async def close_ticket(ticket_id: str, reason: str) -> dict[str, Any]:
            """Close a support ticket.

            Args:
                ticket_id: The ticket, like T-18421.
                reason: Why it can be closed.
            """
            raise AssertionError("runs in the executor")

        assert isinstance(close_ticket, FunctionTool)
        assert close_ticket.name == "close_ticket"
        assert close_ticket.description.startswith("Close a support ticket.")
        schema = close_ticket.params_json_schema
        assert set(schema["properties"]) == {"ticket_id", "reason"}
        assert schema["required"] == ["ticket_id", "reason"]

        approve_on_wait(fake)
        t = executor_elsewhere(fake, {"closed": "T-18421"})
        args = json.dumps(ARGS)
        out = await close_ticket.on_invoke_tool(ctx(close_ticket, args), args)
        t.join()
        assert out == {"closed": "T-18421"}
        sent = fake.calls("POST", "/api/v1/proposals")[0].body
        assert sent["tool"] == "ticket.close"
        assert sent["args"] == ARGS


async def test_openai_agents_tool_tells_the_model_about_a_rejection(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent:

        @oa_adapter.gated_tool("refund.create", client=agent, name="create_refund", timeout=10)
        async def refund(customer_id: str, amount_cents: int, currency: str) -> Any:
            """Refund a customer."""

        fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="wrong customer")
        args = json.dumps({"customer_id": "C-1", "amount_cents": 500, "currency": "EUR"})
        out = await refund.on_invoke_tool(ctx(refund, args), args)
        assert refund.name == "create_refund"
        assert out == "Rejected by sam: wrong customer"


async def test_openai_agents_tool_reports_server_refusals(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent:

        @oa_adapter.gated_tool("db.write", client=agent)
        async def write(table: str, statement: str) -> None:
            """Write to the database."""

        args = json.dumps({"table": "users", "statement": "delete"})
        out = await write.on_invoke_tool(ctx(write, args), args)
        assert out == "countersign refused the call (tool_not_allowed): not allowed"


async def test_openai_agents_tool_with_a_sync_client_and_local_execution(
    fake: FakeServer,
) -> None:
    with fake.client(fake.run_token()) as agent, fake.client(EXECUTOR_KEY) as ex:
        ran: list[str] = []

        @oa_adapter.gated_tool("ticket.close", client=agent, executor=ex, env=ENV, timeout=10)
        def close_ticket(ticket_id: str, reason: str) -> str:
            """Close a support ticket."""
            ran.append(ticket_id)
            return f"closed {ticket_id}"

        approve_on_wait(fake)
        args = json.dumps(ARGS)
        out = await close_ticket.on_invoke_tool(ctx(close_ticket, args), args)
        assert out == {"value": "closed T-18421"}
        assert ran == ["T-18421"]


async def test_openai_agents_tool_with_a_sync_client_leaves_the_event_loop_free(
    fake: FakeServer,
) -> None:
    """A sync Client blocks its thread for the whole approval: the tool must
    not do that to the event loop (the agent's other tools, its streaming)."""
    fake.wait_delay = 0.3  # each long poll holds the calling thread this long
    loop_thread = threading.get_ident()
    polled_from: set[int] = set()

    def approve_late(p: dict[str, Any]) -> None:
        polled_from.add(threading.get_ident())
        if p["status"] == "pending" and len(fake.calls("GET", r".+/wait")) >= 2:
            fake.approve(p["id"])

    fake.on_wait = approve_late
    with fake.client(fake.run_token()) as agent:

        @oa_adapter.gated_tool("ticket.close", client=agent, timeout=20)
        def close_ticket(ticket_id: str, reason: str) -> Any:
            """Close a support ticket."""

        # The adapter hands the SDK a coroutine function that threads the
        # blocking call itself: it does not rely on the SDK version doing so.
        assert inspect.iscoroutinefunction(close_ticket.__wrapped__)
        t = executor_elsewhere(fake, {"closed": "T-18421"})
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        args = json.dumps(ARGS)
        started = time.monotonic()
        out = await close_ticket.on_invoke_tool(ctx(close_ticket, args), args)
        took = time.monotonic() - started
        done.set()
        await ticking
        await asyncio.to_thread(t.join)
    assert out == {"closed": "T-18421"}
    assert took >= 0.5
    assert ticks >= 20  # the loop went on while the tool waited
    assert polled_from
    assert loop_thread not in polled_from


# --------------------------------------------------------- LangChain / Graph


def test_langchain_tool_invoke(fake: FakeServer, agent: Client) -> None:
    @lc_adapter.gated_tool("ticket.close", client=agent, timeout=10)
    def close_ticket(ticket_id: str, reason: str) -> dict[str, Any]:
        """Close a support ticket."""
        raise AssertionError("runs in the executor")

    assert isinstance(close_ticket, StructuredTool)
    assert close_ticket.name == "close_ticket"
    assert close_ticket.description == "Close a support ticket."
    assert set(close_ticket.args) == {"ticket_id", "reason"}
    approve_on_wait(fake)
    t = executor_elsewhere(fake, {"closed": "T-18421"})
    assert close_ticket.invoke(ARGS) == {"closed": "T-18421"}
    t.join()
    fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="wrong customer")
    assert close_ticket.invoke({"ticket_id": "T-2", "reason": "r"}) == (
        "Rejected by sam: wrong customer"
    )


def test_langgraph_tool_node_drives_a_gated_call(fake: FakeServer, agent: Client) -> None:
    @lc_adapter.gated_tool("ticket.close", client=agent, timeout=10)
    def close_ticket(ticket_id: str, reason: str) -> Any:
        """Close a support ticket."""

    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([close_ticket]))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    app = graph.compile()

    def call(call_id: str, args: dict[str, Any]) -> ToolMessage:
        message = AIMessage(
            content="",
            tool_calls=[{"name": "close_ticket", "args": args, "id": call_id, "type": "tool_call"}],
        )
        out = app.invoke({"messages": [message]})
        reply = out["messages"][-1]
        assert isinstance(reply, ToolMessage)
        return reply

    approve_on_wait(fake)
    t = executor_elsewhere(fake, {"closed": "T-18421"})
    ok = call("call_1", ARGS)
    t.join()
    assert ok.tool_call_id == "call_1"
    assert ok.status == "success"
    assert json.loads(ok.content if isinstance(ok.content, str) else "") == {"closed": "T-18421"}

    fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="wrong customer")
    no = call("call_2", {"ticket_id": "T-2", "reason": "r"})
    assert no.status == "error"
    assert no.content == "Rejected by sam: wrong customer"


async def test_langchain_async_tool(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent, fake.async_client(EXECUTOR_KEY) as ex:

        @lc_adapter.gated_tool("ticket.close", client=agent, executor=ex, env=ENV, timeout=10)
        async def close_ticket(ticket_id: str, reason: str) -> str:
            """Close a support ticket."""
            return f"closed {ticket_id}"

        approve_on_wait(fake)
        assert await close_ticket.ainvoke(ARGS) == {"value": "closed T-18421"}
        fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="no")
        assert await close_ticket.ainvoke({"ticket_id": "T-3", "reason": "r"}) == (
            "Rejected by sam: no"
        )


def test_langchain_tool_passes_scope_and_repropose_after(fake: FakeServer, agent: Client) -> None:
    @lc_adapter.gated_tool(
        "ticket.close",
        client=agent,
        timeout=10,
        scope="conversation-9",
        repropose_after={"rejected"},
    )
    def close_ticket(ticket_id: str, reason: str) -> Any:
        """Close a support ticket."""

    fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="no")
    assert close_ticket.invoke(ARGS) == "Rejected by sam: no"
    approve_on_wait(fake)
    t = executor_elsewhere(fake, {"closed": "T-18421"})
    assert close_ticket.invoke(ARGS) == {"closed": "T-18421"}
    t.join()
    keys = [s.body["idempotency_key"] for s in fake.calls("POST", "/api/v1/proposals")]
    first = idempotency_key_for("ticket.close", ARGS, "conversation-9")
    assert keys == [first, first, f"{first}#2"]
