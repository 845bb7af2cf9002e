"""Gate a tool in one line.

::

    @countersign.gated("ticket.close", client=agent)
    def close_ticket(ticket_id: str, reason: str) -> None:
        "Close a support ticket."  # never runs: an executor elsewhere does it

    close_ticket("T-18421", "fixed")   # propose -> wait -> {"closed": "T-18421"}

A call proposes the tool with the call's arguments (bound by name), waits for
the outcome and returns it. **What a call returns is always the job's
reported result, a JSON object** (``dict[str, Any]``; ``{}`` when the
executor reported none), whatever the decorated function is annotated to
return, in both modes and for a replayed call alike:

* **remote execution** (no ``executor=``): the function body never runs; the
  call returns the ``result`` the executor reported.
* **local execution** (``executor=`` a client holding an executor key for the
  tool, and ``env=`` the env it acts in): the function *is* the tool. Once
  approved, the call claims the job, verifies its receipt, runs the function
  with the receipt's args under a heartbeated lease, completes the job, and
  returns the result it reported: the function's return value as a job
  result (a mapping as it is, ``None`` as ``{}``, anything else as
  ``{"value": …}``), which is also what a later replayed call returns. An
  exception of the function is raised as it is. While it claims it acts as an
  executor for the tool: a job of another proposal of the same tool that it
  happens to claim is run and completed too.

Rejection, expiry and cancellation raise :class:`ProposalRejected`,
:class:`ProposalExpired` and :class:`ProposalCancelled`; a failed execution
raises :class:`ExecutionFailed`; a deadline that passes first raises
:class:`ApprovalTimeout`. ``str()`` of each is a short sentence for a model
("Rejected by sam: wrong customer").

**The idempotency key** is derived from the tool and the canonical args
(sorted-key JSON), plus ``scope`` when given, so a retried call finds the same
proposal instead of making another, and calling again after
:class:`ApprovalTimeout` resumes waiting on it. The flip side: by default an
identical call after a *rejection* gets the same rejected proposal back (and
raises again) — the reviewer's "no" stands for that exact call. To propose
the same call again, give it a new ``scope`` (e.g. the conversation or task
id, or a turn number), or pass ``repropose_after={"rejected", ...}``: a
call whose key finds a proposal ended in one of those statuses proposes anew
under the next key of a deterministic chain (``"<key>#2"``, ``"<key>#3"``, …).
The key's scope is the tenant and env, not the run: a call from a new run (an
agent restarted by its orchestrator) with the same args gets the earlier
run's proposal back and follows it to its outcome.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator, Mapping
from typing import Any, ParamSpec, overload

from .client import AsyncClient, Client
from .errors import (
    ApprovalTimeout,
    ExecutionFailed,
    ProposalCancelled,
    ProposalExpired,
    ProposalRejected,
)
from .executor import AsyncExecutor, Executor, Job, JobOutcome
from .models import FINAL_STATUSES, Preview, Proposal, ProposeResult

__all__ = [
    "JSONObject",
    "canonical_json",
    "gated",
    "idempotency_key_for",
    "outcome_of",
]

P = ParamSpec("P")

#: What a gated call returns: the job's reported result.
JSONObject = dict[str, Any]
ArgsFn = Callable[[dict[str, Any]], Any]
KeyFn = Callable[[dict[str, Any]], str]
Scope = str | Callable[[dict[str, Any]], str]
#: The longest claim long-poll while waiting for the approved job.
_CLAIM_WAIT = 10
#: Pause between claims that cannot long-poll (less than a second left).
_SHORT_PAUSE = 0.2
#: The longest chain of re-proposals a call walks (see ``repropose_after``).
MAX_REPROPOSALS = 50
#: The statuses ``repropose_after`` may name: final, and not a success.
_REPROPOSABLE = frozenset(FINAL_STATUSES - {"succeeded"})
_MAX_KEY = 200


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON: the same args always give the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _fits(key: str) -> bool:
    return len(key) <= _MAX_KEY and key.isascii() and key.isprintable()


def idempotency_key_for(tool: str, args: Mapping[str, Any], scope: str | None = None) -> str:
    """``"<tool>:<sha256 of the canonical args>"`` (at most 200 characters).
    With ``scope`` (a conversation, a task), the digest covers it too: the
    same args in another scope make another proposal."""
    body: Any = dict(args) if scope is None else {"args": dict(args), "scope": scope}
    digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    key = f"{tool}:{digest}"
    if not _fits(key):
        key = "cs:" + hashlib.sha256(f"{tool}\n{digest}".encode()).hexdigest()
    return key


def key_chain(key: str) -> Iterator[str]:
    """The keys a call with ``repropose_after`` walks: ``key``, then
    ``key#2``, ``key#3``, … (a long key is hashed to make room)."""
    yield key
    stem = key
    n = 2
    while True:
        suffix = f"#{n}"
        if len(stem) + len(suffix) > _MAX_KEY:
            stem = "cs:" + hashlib.sha256(key.encode()).hexdigest()
        yield stem + suffix
        n += 1


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


def _as_object(value: Any) -> JSONObject:
    """A reported result as the JSON object a gated call returns."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return {"value": value}


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


def _honest(call: Any, fn: Callable[..., Any]) -> None:
    """Make the wrapper's signature say what it returns (the function's own
    return annotation is not what a gated call returns), for the frameworks
    that read it."""
    call.__signature__ = inspect.signature(fn).replace(return_annotation=JSONObject)
    call.__annotations__ = {**getattr(fn, "__annotations__", {}), "return": JSONObject}


class _Plan:
    """What one gated tool sends, shared by the sync and async wrappers."""

    def __init__(
        self,
        tool: str,
        reason: str | ArgsFn | None,
        preview: ArgsFn | None,
        idempotency_key: KeyFn | None,
        scope: Scope | None,
        repropose_after: Collection[str],
    ) -> None:
        if idempotency_key is not None and scope is not None:
            raise ValueError("pass idempotency_key or scope, not both")
        if isinstance(repropose_after, str):
            raise TypeError("repropose_after is a set of statuses, e.g. {'rejected'}")
        unknown = set(repropose_after) - _REPROPOSABLE
        if unknown:
            raise ValueError(
                f"repropose_after may name {sorted(_REPROPOSABLE)}, not {sorted(unknown)}"
            )
        self.tool = tool
        self._reason = reason
        self._preview = preview
        self._key = idempotency_key
        self._scope = scope
        self.repropose_after = frozenset(repropose_after)

    def key(self, args: dict[str, Any]) -> str:
        if self._key is not None:
            return self._key(args)
        scope = self._scope(args) if callable(self._scope) else self._scope
        return idempotency_key_for(self.tool, args, scope)

    def request(self, args: dict[str, Any]) -> dict[str, Any]:
        reason = self._reason(args) if callable(self._reason) else self._reason
        preview = self._preview(args) if self._preview is not None else None
        return {
            "reason": reason,
            "preview": Preview.coerce(preview) if preview is not None else None,
        }

    def keys(self, args: dict[str, Any]) -> Iterator[str]:
        """The idempotency keys to try, in turn."""
        first = self.key(args)
        if not self.repropose_after:
            yield first
            return
        chain = key_chain(first)
        for _ in range(MAX_REPROPOSALS):
            yield next(chain)

    def settled(self, res: ProposeResult) -> bool:
        """True when this proposal is the call's; False when it is an earlier
        one that ended in a status the call proposes again after."""
        return not (res.replayed and res.proposal.status in self.repropose_after)


def _mine(outcomes: list[JobOutcome], proposal_id: str) -> JobOutcome | None:
    for o in outcomes:
        if o.proposal_id == proposal_id:
            return o
    return None


def _settle(outcome: JobOutcome) -> tuple[bool, JSONObject]:
    """(done, result) for our own job's outcome; raises its error when final."""
    if outcome.status == "succeeded":
        # What was reported: the same a replayed call gets back later.
        return True, _as_object(outcome.result)
    again = outcome.completion is not None and outcome.completion.state == "queued"
    if again or outcome.completion_error is not None:
        return False, {}  # offered again (retry), or the lease was lost: look again
    if outcome.error is not None:
        raise outcome.error
    return False, {}


@overload
def gated(
    tool: str,
    *,
    client: Client,
    executor: Client | None = None,
    env: str | None = None,
    timeout: float = 300.0,
    reason: str | ArgsFn | None = None,
    preview: ArgsFn | None = None,
    idempotency_key: KeyFn | None = None,
    scope: Scope | None = None,
    repropose_after: Collection[str] = (),
    verify_receipts: bool = True,
    lease_seconds: int = 60,
) -> Callable[[Callable[P, Any]], Callable[P, JSONObject]]: ...


@overload
def gated(
    tool: str,
    *,
    client: AsyncClient,
    executor: AsyncClient | None = None,
    env: str | None = None,
    timeout: float = 300.0,
    reason: str | ArgsFn | None = None,
    preview: ArgsFn | None = None,
    idempotency_key: KeyFn | None = None,
    scope: Scope | None = None,
    repropose_after: Collection[str] = (),
    verify_receipts: bool = True,
    lease_seconds: int = 60,
) -> Callable[[Callable[P, Awaitable[Any]]], Callable[P, Coroutine[Any, Any, JSONObject]]]: ...


def gated(
    tool: str,
    *,
    client: Client | AsyncClient,
    executor: Client | AsyncClient | None = None,
    env: str | None = None,
    timeout: float = 300.0,
    reason: str | ArgsFn | None = None,
    preview: ArgsFn | None = None,
    idempotency_key: KeyFn | None = None,
    scope: Scope | None = None,
    repropose_after: Collection[str] = (),
    verify_receipts: bool = True,
    lease_seconds: int = 60,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function so that calling it goes through countersign. The
    call returns the job's reported result (a ``dict``); see the module's
    documentation.

    :param tool: the policy's tool name, e.g. ``"ticket.close"``.
    :param client: a client holding a run token (``Client`` for a plain
        function, ``AsyncClient`` for a coroutine function).
    :param executor: a client holding an executor key for ``tool``: the
        function is the tool's implementation and runs here once approved.
    :param env: (with ``executor``, required) the env this executor acts in,
        from your own configuration: the receipt must name it.
    :param timeout: seconds a call may take in all (approval and execution).
    :param reason: shown to reviewers: a string, or ``reason(args)``.
    :param preview: ``preview(args) -> Preview | {"before", "after"} | None``.
    :param idempotency_key: ``idempotency_key(args) -> str`` instead of the
        derived key.
    :param scope: a string, or ``scope(args) -> str``, that the derived key
        covers too (a conversation or task id): the same args in another
        scope are another proposal.
    :param repropose_after: final statuses (``"rejected"``, ``"expired"``,
        ``"cancelled"``, ``"failed"``) after which an identical call proposes
        again instead of answering the earlier outcome.
    :param verify_receipts: (local execution) verify the job's receipt.
    :param lease_seconds: (local execution) the lease asked for.
    """
    return _gate(
        tool,
        client=client,
        executor=executor,
        env=env,
        timeout=timeout,
        plan=_Plan(tool, reason, preview, idempotency_key, scope, repropose_after),
        verify_receipts=verify_receipts,
        lease_seconds=lease_seconds,
    )


def _gate(
    tool: str,
    *,
    client: Client | AsyncClient,
    executor: Client | AsyncClient | None,
    env: str | None,
    timeout: float,
    plan: _Plan,
    verify_receipts: bool,
    lease_seconds: int,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    if executor is not None and not env:
        raise ValueError(
            "local execution (executor=) needs env=, the env this executor acts in, "
            "from your own configuration: the receipt must name it"
        )

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        bind = _binder(fn)
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(fn):
            if not isinstance(client, AsyncClient) or not (
                executor is None or isinstance(executor, AsyncClient)
            ):
                raise TypeError(f"{fn.__qualname__} is async: pass AsyncClient(s)")
            runner: AsyncExecutor | None = None
            if executor is not None and env:

                async def handler(job: Job) -> Any:
                    return await fn(**job.args)

                runner = AsyncExecutor(
                    executor,
                    tools={plan.tool: handler},
                    env=env,
                    verify_receipts=verify_receipts,
                    lease_seconds=lease_seconds,
                    wait_seconds=_CLAIM_WAIT,
                )
            wrapper = _async_wrapper(fn, bind, plan, client, runner, timeout)
        else:
            if not isinstance(client, Client) or not (
                executor is None or isinstance(executor, Client)
            ):
                raise TypeError(f"{fn.__qualname__} is not async: pass Client(s), not AsyncClient")
            sync_runner: Executor | None = None
            if executor is not None and env:
                sync_runner = Executor(
                    executor,
                    tools={plan.tool: lambda job: fn(**job.args)},
                    env=env,
                    verify_receipts=verify_receipts,
                    lease_seconds=lease_seconds,
                    wait_seconds=_CLAIM_WAIT,
                )
            wrapper = _sync_wrapper(fn, bind, plan, client, sync_runner, timeout)
        _honest(wrapper, fn)
        return wrapper

    return decorate


def _sync_wrapper(
    fn: Callable[..., Any],
    bind: Callable[..., dict[str, Any]],
    plan: _Plan,
    client: Client,
    runner: Executor | None,
    timeout: float,
) -> Callable[..., JSONObject]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> JSONObject:
        deadline = time.monotonic() + timeout

        def left() -> float:
            return deadline - time.monotonic()

        tool_args = bind(*args, **kwargs)
        return follow(propose(tool_args), left)

    def propose(tool_args: dict[str, Any]) -> Proposal:
        request = plan.request(tool_args)
        res: ProposeResult | None = None
        for key in plan.keys(tool_args):
            res = client.propose(plan.tool, tool_args, idempotency_key=key, **request)
            if plan.settled(res):
                break
        assert res is not None
        return res.proposal

    def follow(proposal: Proposal, left: Callable[[], float]) -> JSONObject:
        if runner is None:
            if not proposal.is_final:
                proposal = client.wait(proposal.id, max(0.0, left()))
            return _as_object(outcome_of(proposal))
        if not proposal.is_decided:
            proposal = client.wait(proposal.id, max(0.0, left()), until="decided")
        while True:
            if proposal.is_final or not proposal.is_decided or left() <= 0:
                return _as_object(outcome_of(proposal))
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
    runner: AsyncExecutor | None,
    timeout: float,
) -> Callable[..., Coroutine[Any, Any, JSONObject]]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> JSONObject:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left() -> float:
            return deadline - loop.time()

        tool_args = bind(*args, **kwargs)
        return await follow(await propose(tool_args), left)

    async def propose(tool_args: dict[str, Any]) -> Proposal:
        request = plan.request(tool_args)
        res: ProposeResult | None = None
        for key in plan.keys(tool_args):
            res = await client.propose(plan.tool, tool_args, idempotency_key=key, **request)
            if plan.settled(res):
                break
        assert res is not None
        return res.proposal

    async def follow(proposal: Proposal, left: Callable[[], float]) -> JSONObject:
        if runner is None:
            if not proposal.is_final:
                proposal = await client.wait(proposal.id, max(0.0, left()))
            return _as_object(outcome_of(proposal))
        if not proposal.is_decided:
            proposal = await client.wait(proposal.id, max(0.0, left()), until="decided")
        while True:
            if proposal.is_final or not proposal.is_decided or left() <= 0:
                return _as_object(outcome_of(proposal))
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
