"""A gated tool for LangChain and LangGraph (``langchain-core``).

::

    from countersign.adapters.langchain import gated_tool

    @gated_tool("ticket.close", client=agent_client)
    def close_ticket(ticket_id: str, reason: str) -> dict:
        \"\"\"Close a support ticket.\"\"\"

    close_ticket.invoke({"ticket_id": "T-18421", "reason": "fixed"})
    # or: langgraph.prebuilt.ToolNode([close_ticket]), create_react_agent(model, [close_ticket])

The result is a ``StructuredTool`` whose call goes through
:func:`countersign.gated` (same options) and answers the job's reported
result. A call without a result raises a
``ToolException`` carrying the one-sentence reason
(:func:`countersign.adapters.model_message`), which the tool turns into the
model-visible answer (``handle_tool_error=True``; pass another value to
change that). A plain function makes a sync tool (``invoke``; needs a
``Client``), a coroutine function an async one (``ainvoke``; needs an
``AsyncClient``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any

from langchain_core.tools import StructuredTool, ToolException

from ..client import AsyncClient, Client
from ..errors import CountersignError
from ..gate import KeyFn, Scope, _gate, _Plan
from . import model_message

__all__ = ["gated_tool"]


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
    handle_tool_error: Any = True,
    **structured_tool_options: Any,
) -> Callable[[Callable[..., Any]], StructuredTool]:
    """Decorate a function into a ``StructuredTool`` gated by countersign.

    ``name`` defaults to the function's name, ``description`` to its
    docstring. Other keyword options go to ``StructuredTool.from_function``.
    """

    plan = _Plan(tool, reason, preview, idempotency_key, scope, repropose_after)

    def decorate(fn: Callable[..., Any]) -> StructuredTool:
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
        common: dict[str, Any] = {
            "name": name or fn.__name__,
            "description": description or inspect.getdoc(fn) or f"countersign-gated {tool}",
            "handle_tool_error": handle_tool_error,
        }
        common.update(structured_tool_options)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(wrapped)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await wrapped(*args, **kwargs)
                except CountersignError as exc:
                    raise ToolException(model_message(exc)) from exc

            made: StructuredTool = StructuredTool.from_function(coroutine=run_async, **common)
            return made

        @functools.wraps(wrapped)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return wrapped(*args, **kwargs)
            except CountersignError as exc:
                raise ToolException(model_message(exc)) from exc

        made_sync: StructuredTool = StructuredTool.from_function(func=run, **common)
        return made_sync

    return decorate
