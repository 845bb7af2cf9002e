"""`Client` and `AsyncClient`: the HTTP API of countersign, one method per
endpoint, typed results, errors as exceptions.

One client holds one credential. The three kinds of credential are never
interchangeable, so a program usually holds several clients sharing one
connection pool::

    service = countersign.Client("http://127.0.0.1:3000", service_key)
    run = service.mint_run("support/send", on_behalf_of="alice")
    agent = service.for_run(run)            # same pool, the run token
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

import httpx

from ._http import (
    Request,
    RetryPolicy,
    Transport,
    json_body,
    send_async,
    send_sync,
)
from .errors import RateLimited
from .models import (
    CheckResult,
    ClaimedJob,
    Completion,
    Heartbeat,
    Preview,
    Proposal,
    ProposeResult,
    Run,
)

__all__ = ["AsyncClient", "Client", "WaitUntil"]

#: The longest single long poll the server accepts.
MAX_WAIT_SECONDS = 60
#: Pauses between reads while a decided proposal is queued or running.
_IDLE_FIRST, _IDLE_MAX = 0.25, 2.0

WaitUntil = Literal["final", "decided"]
Status = Literal["succeeded", "failed"]


def _id(value: str) -> str:
    if not value:
        raise ValueError("an id must not be empty")
    return quote(value, safe="")


# ---------------------------------------------------------------- requests
# Pure descriptions shared by the sync and async clients.


def _mint_run(route: str, ttl_seconds: int | None, on_behalf_of: str | None) -> Request:
    body: dict[str, Any] = {"route": route}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    if on_behalf_of is not None:
        body["on_behalf_of"] = on_behalf_of
    return Request("POST", "/api/v1/runs", json=body, ok=(201, 200))


def _check(tool: str) -> Request:
    return Request("POST", "/api/v1/check", json={"tool": tool})


def _propose(
    tool: str,
    args: Mapping[str, Any],
    idempotency_key: str | None,
    reason: str | None,
    preview: Preview | Mapping[str, Any] | None,
) -> Request:
    body: dict[str, Any] = {"tool": tool, "args": dict(args)}
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if reason is not None:
        body["reason"] = reason
    if preview is not None:
        p = Preview.coerce(preview)
        body["preview"] = {"before": p.before, "after": p.after}
    return Request("POST", "/api/v1/proposals", json=body, ok=(201, 200))


def _propose_result(response: httpx.Response) -> ProposeResult:
    replayed = (
        response.status_code == 200
        or response.headers.get("idempotent-replayed", "").strip().lower() == "true"
    )
    return ProposeResult(proposal=Proposal.from_json(json_body(response)), replayed=replayed)


def _get(proposal_id: str) -> Request:
    return Request("GET", f"/api/v1/proposals/{_id(proposal_id)}")


def _wait_once(proposal_id: str, seconds: int) -> Request:
    seconds = max(0, min(MAX_WAIT_SECONDS, seconds))
    return Request(
        "GET",
        f"/api/v1/proposals/{_id(proposal_id)}/wait",
        params={"timeout_seconds": seconds},
        hold=float(seconds),
    )


def _cancel(proposal_id: str) -> Request:
    return Request("POST", f"/api/v1/proposals/{_id(proposal_id)}/cancel")


def _claim(
    tools: Sequence[str] | None,
    max: int,
    lease_seconds: int,
    wait_seconds: int,
    kinds: Sequence[str] | None,
) -> Request:
    if isinstance(tools, str) or isinstance(kinds, str):
        raise TypeError("tools and kinds are lists of names, not a single string")
    body: dict[str, Any] = {
        "max": max,
        "lease_seconds": lease_seconds,
        "wait_seconds": wait_seconds,
    }
    if tools is not None:
        body["tools"] = list(tools)
    # Sent only when asked for: a server without previews knows no `kinds`.
    if kinds is not None:
        body["kinds"] = list(kinds)
    return Request("POST", "/api/v1/jobs/claim", json=body, hold=float(max_wait(wait_seconds)))


def max_wait(seconds: int) -> int:
    return max(0, min(MAX_WAIT_SECONDS, seconds))


def _jobs(response: httpx.Response) -> list[ClaimedJob]:
    jobs = json_body(response).get("jobs")
    if not isinstance(jobs, list):
        return []
    return [ClaimedJob.from_json(j) for j in jobs if isinstance(j, Mapping)]


def _heartbeat(job_id: str, lease_id: str, lease_seconds: int) -> Request:
    return Request(
        "POST",
        f"/api/v1/jobs/{_id(job_id)}/heartbeat",
        json={"lease_id": lease_id, "lease_seconds": lease_seconds},
    )


def _complete(
    job_id: str,
    lease_id: str,
    status: str,
    result: Any,
    retryable: bool,
    preview: Preview | Mapping[str, Any] | None,
) -> Request:
    if status not in ("succeeded", "failed"):
        raise ValueError(f"status must be 'succeeded' or 'failed', got {status!r}")
    body: dict[str, Any] = {"lease_id": lease_id, "status": status, "retryable": retryable}
    if result is not None:
        body["result"] = result
    if preview is not None:
        # The server answers both of these 400; say why before sending.
        p = Preview.coerce(preview)
        if p.state is None:
            raise ValueError(
                "a preview job is completed with preview.state: the precondition the "
                "execute job re-checks (a row version, an ETag; state='' if there is none)"
            )
        if status != "succeeded":
            raise ValueError(
                "a failed preview job reports why in result, not with a preview; "
                "pass preview only with status='succeeded'"
            )
        body["preview"] = p.to_json()
    return Request("POST", f"/api/v1/jobs/{_id(job_id)}/complete", json=body)


def _jwks() -> Request:
    return Request("GET", "/.well-known/jwks.json", auth=False)


def _reached(proposal: Proposal, until: WaitUntil) -> bool:
    return proposal.is_final if until == "final" else proposal.is_decided


def _rate_limit_pause(exc: RateLimited) -> float:
    seconds = exc.retry_after_seconds
    return 1.0 if seconds is None else max(0.0, min(seconds, float(MAX_WAIT_SECONDS)))


def _check_wait_args(timeout: float, until: str) -> None:
    if until not in ("final", "decided"):
        raise ValueError("until must be 'final' or 'decided'")
    if timeout < 0:
        raise ValueError("timeout must be >= 0")


# ----------------------------------------------------------------- clients


class _Common:
    _t: Transport

    @property
    def base_url(self) -> str:
        return self._t.base_url

    @property
    def has_credential(self) -> bool:
        return bool(self._t.credential)

    def __repr__(self) -> str:
        kind = "no credential" if not self._t.credential else "with credential"
        return f"{type(self).__name__}({self._t.base_url!r}, {kind})"


class Client(_Common):
    """Synchronous client. Thread-safe; use it as a context manager or call
    :meth:`close`.

    :param base_url: the server, e.g. ``"http://127.0.0.1:3000"``.
    :param credential: a service key (``csk_…``), a run token or an executor
        key (``cek_…``), sent as ``Authorization: Bearer``.
    :param timeout: seconds (or an ``httpx.Timeout``) for every request;
        long polls get their own wait on top.
    :param retry: retries on connection errors and 5xx answers.
    :param http_client: an ``httpx.Client`` to use (not closed by this client).
    :param transport: an httpx transport (e.g. ``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        base_url: str,
        credential: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._t = Transport(
            base_url,
            credential,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            headers=headers,
            rng=None,
        )
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(transport=transport)

    # -- lifecycle

    def with_credential(self, credential: str) -> Client:
        """A client for another credential that shares this one's connection
        pool and settings. Closing it does not close the pool."""
        other = Client.__new__(Client)
        other._t = Transport(
            self._t.base_url,
            credential,
            timeout=self._t.timeout,
            retry=self._t.retry,
            headers=self._t.headers,
            rng=self._t.rng,
        )
        other._http = self._http
        other._owns_http = False
        return other

    def for_run(self, run: Run) -> Client:
        """A client holding ``run``'s token (see :meth:`with_credential`)."""
        return self.with_credential(run.token)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, req: Request) -> httpx.Response:
        return send_sync(self._t, self._http, req)

    # -- orchestrator (service key)

    def mint_run(
        self,
        route: str,
        ttl_seconds: int | None = None,
        on_behalf_of: str | None = None,
    ) -> Run:
        """Mint a run for ``route`` (service key). ``on_behalf_of`` names the
        person the agent acts for; they can never approve its proposals."""
        return Run.from_json(json_body(self._send(_mint_run(route, ttl_seconds, on_behalf_of))))

    # -- agent (run token)

    def check(self, tool: str) -> CheckResult:
        """May the agent call ``tool`` itself? Audited; counts one step."""
        return CheckResult.from_json(json_body(self._send(_check(tool))))

    def propose(
        self,
        tool: str,
        args: Mapping[str, Any],
        idempotency_key: str | None = None,
        reason: str | None = None,
        preview: Preview | Mapping[str, Any] | None = None,
    ) -> ProposeResult:
        """Propose an action. ``idempotency_key`` is required for write tools;
        the same key with the same tool and args returns the original proposal
        (``replayed=True``)."""
        return _propose_result(self._send(_propose(tool, args, idempotency_key, reason, preview)))

    def get(self, proposal_id: str) -> Proposal:
        """A proposal of this run, with its decisions and execution."""
        return Proposal.from_json(json_body(self._send(_get(proposal_id))))

    def wait(
        self,
        proposal_id: str,
        timeout: float = 300.0,
        *,
        until: WaitUntil = "final",
    ) -> Proposal:
        """Wait up to ``timeout`` seconds for the proposal to reach a final
        status (``until="final"``) or a decision (``until="decided"``: it has
        left ``previewing`` and ``pending``). Returns the proposal as last
        seen; check :attr:`Proposal.is_final` when the deadline may have
        passed first.

        Long-polls ``GET …/wait`` (at most 60 s a call) while the proposal is
        previewing or pending, and reads it with growing pauses while it is
        approved, queued or running (the server's wait answers at once then).
        A ``rate_limited`` answer (too many long polls of this run at once)
        pauses as the server says and polls again."""
        _check_wait_args(timeout, until)
        deadline = time.monotonic() + timeout
        proposal: Proposal | None = None
        idle = _IDLE_FIRST
        while True:
            remaining = deadline - time.monotonic()
            if proposal is not None and (_reached(proposal, until) or remaining <= 0):
                return proposal
            if proposal is None and remaining <= 0:
                return self.get(proposal_id)
            if proposal is None or not proposal.is_decided:
                # whole seconds; a deadline a few ms short of one still gets it
                seconds = int(min(MAX_WAIT_SECONDS, remaining + 0.05))
                if seconds >= 1:
                    try:
                        proposal = self._wait_once(proposal_id, seconds)
                        continue
                    except RateLimited as exc:
                        # Too many long polls of this credential at once: back
                        # off as told, then read it and long-poll again.
                        time.sleep(max(0.0, min(_rate_limit_pause(exc), remaining)))
                        proposal = self.get(proposal_id)
                        continue
            time.sleep(max(0.0, min(idle, remaining)))
            idle = min(idle * 2, _IDLE_MAX)
            proposal = self.get(proposal_id)

    def _wait_once(self, proposal_id: str, seconds: int) -> Proposal:
        return Proposal.from_json(json_body(self._send(_wait_once(proposal_id, seconds))))

    def cancel(self, proposal_id: str) -> Proposal:
        """Cancel a pending proposal (``invalid_transition`` otherwise)."""
        return Proposal.from_json(json_body(self._send(_cancel(proposal_id))))

    # -- executor (executor key)

    def claim(
        self,
        tools: Sequence[str] | None = None,
        max: int = 1,
        lease_seconds: int = 60,
        wait_seconds: int = 0,
        kinds: Sequence[str] | None = None,
    ) -> list[ClaimedJob]:
        """Claim up to ``max`` jobs of the key's env and tools, each under a
        new lease, long-polling up to ``wait_seconds`` (at most 60).
        ``kinds`` (e.g. ``["preview", "execute"]``) is sent only when given."""
        return _jobs(self._send(_claim(tools, max, lease_seconds, wait_seconds, kinds)))

    def heartbeat(self, job_id: str, lease_id: str, lease_seconds: int = 60) -> Heartbeat:
        """Extend a live lease; ``InvalidTransition`` when it was lost."""
        return Heartbeat.from_json(
            json_body(self._send(_heartbeat(job_id, lease_id, lease_seconds)))
        )

    def complete(
        self,
        job_id: str,
        lease_id: str,
        status: Status,
        result: Any = None,
        retryable: bool = False,
        preview: Preview | Mapping[str, Any] | None = None,
    ) -> Completion:
        """Report a job's outcome. Repeating the same body is answered alike;
        a stale lease or another outcome is ``InvalidTransition``. A preview
        job is completed with ``status="succeeded"`` and a ``preview`` with
        its ``state`` (``ValueError`` without it, before anything is sent)."""
        return Completion.from_json(
            json_body(self._send(_complete(job_id, lease_id, status, result, retryable, preview)))
        )

    def jwks(self) -> dict[str, Any]:
        """The server's receipt-signing public keys (no credential needed)."""
        return json_body(self._send(_jwks()))


class AsyncClient(_Common):
    """The asyncio twin of :class:`Client`; every API method is a coroutine."""

    def __init__(
        self,
        base_url: str,
        credential: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._t = Transport(
            base_url,
            credential,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            headers=headers,
            rng=None,
        )
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport)

    def with_credential(self, credential: str) -> AsyncClient:
        """A client for another credential sharing this one's pool and settings."""
        other = AsyncClient.__new__(AsyncClient)
        other._t = Transport(
            self._t.base_url,
            credential,
            timeout=self._t.timeout,
            retry=self._t.retry,
            headers=self._t.headers,
            rng=self._t.rng,
        )
        other._http = self._http
        other._owns_http = False
        return other

    def for_run(self, run: Run) -> AsyncClient:
        """A client holding ``run``'s token."""
        return self.with_credential(run.token)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, req: Request) -> httpx.Response:
        return await send_async(self._t, self._http, req)

    async def mint_run(
        self,
        route: str,
        ttl_seconds: int | None = None,
        on_behalf_of: str | None = None,
    ) -> Run:
        """See :meth:`Client.mint_run`."""
        response = await self._send(_mint_run(route, ttl_seconds, on_behalf_of))
        return Run.from_json(json_body(response))

    async def check(self, tool: str) -> CheckResult:
        """See :meth:`Client.check`."""
        return CheckResult.from_json(json_body(await self._send(_check(tool))))

    async def propose(
        self,
        tool: str,
        args: Mapping[str, Any],
        idempotency_key: str | None = None,
        reason: str | None = None,
        preview: Preview | Mapping[str, Any] | None = None,
    ) -> ProposeResult:
        """See :meth:`Client.propose`."""
        response = await self._send(_propose(tool, args, idempotency_key, reason, preview))
        return _propose_result(response)

    async def get(self, proposal_id: str) -> Proposal:
        """See :meth:`Client.get`."""
        return Proposal.from_json(json_body(await self._send(_get(proposal_id))))

    async def wait(
        self,
        proposal_id: str,
        timeout: float = 300.0,
        *,
        until: WaitUntil = "final",
    ) -> Proposal:
        """See :meth:`Client.wait`."""
        _check_wait_args(timeout, until)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        proposal: Proposal | None = None
        idle = _IDLE_FIRST
        while True:
            remaining = deadline - loop.time()
            if proposal is not None and (_reached(proposal, until) or remaining <= 0):
                return proposal
            if proposal is None and remaining <= 0:
                return await self.get(proposal_id)
            if proposal is None or not proposal.is_decided:
                # whole seconds; a deadline a few ms short of one still gets it
                seconds = int(min(MAX_WAIT_SECONDS, remaining + 0.05))
                if seconds >= 1:
                    try:
                        response = await self._send(_wait_once(proposal_id, seconds))
                    except RateLimited as exc:
                        await asyncio.sleep(max(0.0, min(_rate_limit_pause(exc), remaining)))
                        proposal = await self.get(proposal_id)
                        continue
                    proposal = Proposal.from_json(json_body(response))
                    continue
            await asyncio.sleep(max(0.0, min(idle, remaining)))
            idle = min(idle * 2, _IDLE_MAX)
            proposal = await self.get(proposal_id)

    async def cancel(self, proposal_id: str) -> Proposal:
        """See :meth:`Client.cancel`."""
        return Proposal.from_json(json_body(await self._send(_cancel(proposal_id))))

    async def claim(
        self,
        tools: Sequence[str] | None = None,
        max: int = 1,
        lease_seconds: int = 60,
        wait_seconds: int = 0,
        kinds: Sequence[str] | None = None,
    ) -> list[ClaimedJob]:
        """See :meth:`Client.claim`."""
        return _jobs(await self._send(_claim(tools, max, lease_seconds, wait_seconds, kinds)))

    async def heartbeat(self, job_id: str, lease_id: str, lease_seconds: int = 60) -> Heartbeat:
        """See :meth:`Client.heartbeat`."""
        response = await self._send(_heartbeat(job_id, lease_id, lease_seconds))
        return Heartbeat.from_json(json_body(response))

    async def complete(
        self,
        job_id: str,
        lease_id: str,
        status: Status,
        result: Any = None,
        retryable: bool = False,
        preview: Preview | Mapping[str, Any] | None = None,
    ) -> Completion:
        """See :meth:`Client.complete`."""
        response = await self._send(_complete(job_id, lease_id, status, result, retryable, preview))
        return Completion.from_json(json_body(response))

    async def jwks(self) -> dict[str, Any]:
        """See :meth:`Client.jwks`."""
        return json_body(await self._send(_jwks()))
