"""A gated function tool for the OpenAI Agents SDK (``openai-agents``).

::

    from countersign.adapters.openai_agents import gated_tool

    @gated_tool("ticket.close", client=agent_client)
    async def close_ticket(ticket_id: str, reason: str) -> dict:
        \"\"\"Close a support ticket.\"\"\"

    agent = Agent(name="support", tools=[close_ticket])

The result is an ``agents.FunctionTool`` whose call goes through
:func:`countersign.gated` (same options) and answers the job's reported
result. When the call has no result (rejected, expired, cancelled, failed,
refused by the server) the model is told why in one sentence (see
:func:`countersign.adapters.model_message`); other exceptions get the SDK's
default message.

A plain function with a sync :class:`~countersign.Client` blocks for the
whole approval; the tool runs it in a worker thread (``asyncio.to_thread``),
so the event loop, and the agent's other tools, go on meanwhile. An
``async def`` with an :class:`~countersign.AsyncClient` needs no thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any

from agents import FunctionTool, RunContextWrapper, function_tool
from agents.tool import default_tool_error_function

from ..client import AsyncClient, Client
from ..errors import CountersignError
from ..gate import JSONObject, KeyFn, Scope, _gate, _Plan
from . import model_message

__all__ = ["gated_tool", "tool_error_message"]


def tool_error_message(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """The ``failure_error_function`` of gated tools."""
    if isinstance(error, CountersignError):
        return model_message(error)
    return default_tool_error_function(ctx, error)


def gated_tool(
    tool: str,
    *,
    client: Client | AsyncClient,
    executor: Client | AsyncClient | None = None,
    env: str | None = None,
    name: str | None = None,
    description: str | None = None,
    timeout: float = 300.0,
    reason: str | Callable[[dict[str, Any]], Any] | None = None,
    preview: Callable[[dict[str, Any]], Any] | None = None,
    idempotency_key: KeyFn | None = None,
    scope: Scope | None = None,
    repropose_after: Collection[str] = (),
    verify_receipts: bool = True,
    lease_seconds: int = 60,
    **function_tool_options: Any,
) -> Callable[[Callable[..., Any]], FunctionTool]:
    """Decorate a function into a ``FunctionTool`` gated by countersign.

    ``name`` defaults to the function's name (model-facing tool names may not
    contain dots, so ``ticket.close`` is not used); ``description`` to its
    docstring. Other keyword options go to ``agents.function_tool``.
    """

    plan = _Plan(tool, reason, preview, idempotency_key, scope, repropose_after)

    def decorate(fn: Callable[..., Any]) -> FunctionTool:
        wrapped = _gate(
            tool,
            client=client,
            executor=executor,
            env=env,
            timeout=timeout,
            plan=plan,
            verify_receipts=verify_receipts,
            lease_seconds=lease_seconds,
        )(fn)
        target = wrapped if inspect.iscoroutinefunction(wrapped) else _in_a_thread(wrapped)
        options: dict[str, Any] = {"failure_error_function": tool_error_message}
        options.update(function_tool_options)
        made: FunctionTool = function_tool(
            target,
            name_override=name or fn.__name__,
            description_override=description,
            **options,
        )
        return made

    return decorate


def _in_a_thread(call: Callable[..., JSONObject]) -> Callable[..., Any]:
    """``call`` as a coroutine function that runs it in a worker thread."""

    @functools.wraps(call)
    async def run(*args: Any, **kwargs: Any) -> JSONObject:
        return await asyncio.to_thread(call, *args, **kwargs)

    return run
