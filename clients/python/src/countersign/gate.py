"""Gate a tool in one line.

::

    @countersign.gated("ticket.close", client=agent)
    def close_ticket(ticket_id: str, reason: str) -> dict[str, Any]:
        "Close a support ticket."  # never runs: an executor elsewhere does it

    close_ticket("T-18421", "fixed")   # propose -> wait -> the executor's result

A call proposes the tool with the call's arguments (bound by name), waits for
the outcome and returns it:

* **remote execution** (no ``executor=``): the function body never runs; the
  call returns the ``result`` the executor reported (a dict).
* **local execution** (``executor=`` a client holding an executor key for the
  tool): the function *is* the tool. Once approved, the call claims the job,
  verifies its receipt, runs the function with the receipt's args under a
  heartbeated lease, completes the job, and returns the function's own return
  value (or raises its exception). While it claims it acts as an executor for
  the tool: a job of another proposal of the same tool that it happens to
  claim is run and completed too.

Rejection, expiry and cancellation raise :class:`ProposalRejected`,
:class:`ProposalExpired` and :class:`ProposalCancelled`; a failed execution
raises :class:`ExecutionFailed`; a deadline that passes first raises
:class:`ApprovalTimeout`. ``str()`` of each is a short sentence for a model
("Rejected by sam: wrong customer").

The idempotency key is derived from the tool and the canonical args
(sorted-key JSON), so a retried call finds the same proposal instead of
making another; pass ``idempotency_key=`` to scope it differently (e.g. per
conversation). The key's scope is the tenant and env, not the run: a call from
a new run (an agent restarted by its orchestrator) with the same args gets the
earlier run's proposal back and follows it to its outcome.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from .client import AsyncClient, Client
from .errors import (
    ApprovalTimeout,
    ExecutionFailed,
    ProposalCancelled,
    ProposalExpired,
    ProposalRejected,
)
from .executor import AsyncExecutor, Executor, Job, JobOutcome
from .models import Preview, Proposal

__all__ = ["canonical_json", "gated", "idempotency_key_for", "outcome_of"]

P = ParamSpec("P")
R = TypeVar("R")

ArgsFn = Callable[[dict[str, Any]], Any]
#: The longest claim long-poll while waiting for the approved job.
_CLAIM_WAIT = 10
#: Pause between claims that cannot long-poll (less than a second left).
_SHORT_PAUSE = 0.2


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON: the same args always give the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def idempotency_key_for(tool: str, args: Mapping[str, Any]) -> str:
    """``"<tool>:<sha256 of the canonical args>"`` (at most 200 characters)."""
    digest = hashlib.sha256(canonical_json(dict(args)).encode()).hexdigest()
    key = f"{tool}:{digest}"
    if len(key) > 200 or not key.isascii() or not key.isprintable():
        key = "cs:" + hashlib.sha256(f"{tool}\n{digest}".encode()).hexdigest()
    return key


def outcome_of(proposal: Proposal) -> Any:
    """The executor's result of a succeeded proposal; raises the matching
    :class:`~countersign.GateError` for every other status."""
    status = proposal.status
    if status == "succeeded":
        return proposal.result
    if status == "failed":
        raise ExecutionFailed(proposal)
    if status == "rejected":
        raise ProposalRejected(proposal)
    if status == "expired":
        raise ProposalExpired(proposal)
    if status == "cancelled":
        raise ProposalCancelled(proposal)
    raise ApprovalTimeout(proposal)


def _binder(fn: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    sig = inspect.signature(fn)
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(
                f"{fn.__qualname__} takes *{p.name}: a gated tool's args must have names"
            )

    def bind(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = sig.bind(*args, **kwargs)
        explicit = set(bound.arguments)
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            param = sig.parameters[name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif name not in explicit and value is None:
                continue  # an optional arg left at None is not sent
            else:
                out[name] = value
        return out

    return bind


class _Plan:
    """What one gated tool sends, shared by the sync and async wrappers."""

    def __init__(
        self,
        tool: str,
        reason: str | ArgsFn | None,
        preview: ArgsFn | None,
        idempotency_key: Callable[[dict[str, Any]], str] | None,
    ) -> None:
        self.tool = tool
        self._reason = reason
        self._preview = preview
        self._key = idempotency_key

    def request(self, args: dict[str, Any]) -> dict[str, Any]:
        reason = self._reason(args) if callable(self._reason) else self._reason
        preview = self._preview(args) if self._preview is not None else None
        key = self._key(args) if self._key is not None else idempotency_key_for(self.tool, args)
        return {
            "idempotency_key": key,
            "reason": reason,
            "preview": Preview.coerce(preview) if preview is not None else None,
        }


def _mine(outcomes: list[JobOutcome], proposal_id: str) -> JobOutcome | None:
    for o in outcomes:
        if o.proposal_id == proposal_id:
            return o
    return None


def _settle(outcome: JobOutcome) -> tuple[bool, Any]:
    """(done, value) for our own job's outcome; raises its error when final."""
    if outcome.status == "succeeded":
        return True, outcome.result if outcome.duplicate else outcome.value
    again = outcome.completion is not None and outcome.completion.state == "queued"
    if again or outcome.completion_error is not None:
        return False, None  # offered again (retry), or the lease was lost: look again
    if outcome.error is not None:
        raise outcome.error
    return False, None


def gated(
    tool: str,
    *,
    client: Client | AsyncClient,
    executor: Client | AsyncClient | None = None,
    timeout: float = 300.0,
    reason: str | ArgsFn | None = None,
    preview: ArgsFn | None = None,
    idempotency_key: Callable[[dict[str, Any]], str] | None = None,
    verify_receipts: bool = True,
    lease_seconds: int = 60,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that calling it goes through countersign.

    :param tool: the policy's tool name, e.g. ``"ticket.close"``.
    :param client: a client holding a run token (``Client`` for a plain
        function, ``AsyncClient`` for a coroutine function).
    :param executor: a client holding an executor key for ``tool``: the
        function is the tool's implementation and runs here once approved.
    :param timeout: seconds a call may take in all (approval and execution).
    :param reason: shown to reviewers: a string, or ``reason(args)``.
    :param preview: ``preview(args) -> Preview | {"before", "after"} | None``.
    :param idempotency_key: ``idempotency_key(args) -> str`` instead of the
        derived key.
    :param verify_receipts: (local execution) verify the job's receipt.
    :param lease_seconds: (local execution) the lease asked for.
    """
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    plan = _Plan(tool, reason, preview, idempotency_key)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        bind = _binder(fn)
        if inspect.iscoroutinefunction(fn):
            if not isinstance(client, AsyncClient) or not (
                executor is None or isinstance(executor, AsyncClient)
            ):
                raise TypeError(f"{fn.__qualname__} is async: pass AsyncClient(s)")
            return cast(
                Callable[P, R],
                _async_wrapper(
                    fn, bind, plan, client, executor, timeout, verify_receipts, lease_seconds
                ),
            )
        if not isinstance(client, Client) or not (executor is None or isinstance(executor, Client)):
            raise TypeError(f"{fn.__qualname__} is not async: pass Client(s), not AsyncClient")
        return cast(
            Callable[P, R],
            _sync_wrapper(
                fn, bind, plan, client, executor, timeout, verify_receipts, lease_seconds
            ),
        )

    return decorate


def _sync_wrapper(
    fn: Callable[..., Any],
    bind: Callable[..., dict[str, Any]],
    plan: _Plan,
    client: Client,
    executor_client: Client | None,
    timeout: float,
    verify_receipts: bool,
    lease_seconds: int,
) -> Callable[..., Any]:
    runner: Executor | None = None
    if executor_client is not None:
        runner = Executor(
            executor_client,
            tools={plan.tool: lambda job: fn(**job.args)},
            verify_receipts=verify_receipts,
            lease_seconds=lease_seconds,
            wait_seconds=_CLAIM_WAIT,
        )

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return deadline - time.monotonic()

        tool_args = bind(*args, **kwargs)
        res = client.propose(plan.tool, tool_args, **plan.request(tool_args))
        return follow(res.proposal, left)

    def follow(proposal: Proposal, left: Callable[[], float]) -> Any:
        if runner is None:
            if not proposal.is_final:
                proposal = client.wait(proposal.id, max(0.0, left()))
            return outcome_of(proposal)
        if not proposal.is_decided:
            proposal = client.wait(proposal.id, max(0.0, left()), until="decided")
        while True:
            if proposal.is_final or not proposal.is_decided or left() <= 0:
                return outcome_of(proposal)
            wait = int(min(_CLAIM_WAIT, max(0.0, left())))
            outcomes = runner.run_once(wait_seconds=wait, tools=[plan.tool])
            mine = _mine(outcomes, proposal.id)
            if mine is not None:
                done, value = _settle(mine)
                if done:
                    return value
            elif wait == 0:
                time.sleep(max(0.0, min(_SHORT_PAUSE, left())))  # the last second: no spin
            proposal = client.get(proposal.id)

    return call


def _async_wrapper(
    fn: Callable[..., Awaitable[Any]],
    bind: Callable[..., dict[str, Any]],
    plan: _Plan,
    client: AsyncClient,
    executor_client: AsyncClient | None,
    timeout: float,
    verify_receipts: bool,
    lease_seconds: int,
) -> Callable[..., Awaitable[Any]]:
    runner: AsyncExecutor | None = None
    if executor_client is not None:

        async def handler(job: Job) -> Any:
            return await fn(**job.args)

        runner = AsyncExecutor(
            executor_client,
            tools={plan.tool: handler},
            verify_receipts=verify_receipts,
            lease_seconds=lease_seconds,
            wait_seconds=_CLAIM_WAIT,
        )

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left() -> float:
            return deadline - loop.time()

        tool_args = bind(*args, **kwargs)
        res = await client.propose(plan.tool, tool_args, **plan.request(tool_args))
        return await follow(res.proposal, left)

    async def follow(proposal: Proposal, left: Callable[[], float]) -> Any:
        if runner is None:
            if not proposal.is_final:
                proposal = await client.wait(proposal.id, max(0.0, left()))
            return outcome_of(proposal)
        if not proposal.is_decided:
            proposal = await client.wait(proposal.id, max(0.0, left()), until="decided")
        while True:
            if proposal.is_final or not proposal.is_decided or left() <= 0:
                return outcome_of(proposal)
            wait = int(min(_CLAIM_WAIT, max(0.0, left())))
            outcomes = await runner.run_once(wait_seconds=wait, tools=[plan.tool])
            mine = _mine(outcomes, proposal.id)
            if mine is not None:
                done, value = _settle(mine)
                if done:
                    return value
            elif wait == 0:
                await asyncio.sleep(max(0.0, min(_SHORT_PAUSE, left())))
            proposal = await client.get(proposal.id)

    return call
