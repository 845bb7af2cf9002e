"""The executor helper: claim approved jobs, verify their receipts, run your
handler under a heartbeated lease, report the outcome.

::

    def close_ticket(job: countersign.Job) -> dict:
        tickets.close(job.args["ticket_id"], reason=job.args["reason"])
        return {"closed": job.args["ticket_id"]}

    with countersign.Client(URL, executor_key) as client:
        countersign.Executor(client, env="prod", tools={"ticket.close": close_ticket}).run()

``env`` is the env this executor acts in, from its own configuration: every
receipt must name it (docs/api.md, "Writing an executor", step 3).

What a handler returns is the job's ``result`` (a mapping; anything else
JSON-serialisable is sent as ``{"value": …}``). Raising :class:`Retryable`
completes the job ``failed`` + ``retryable`` (the server offers it again,
up to the tool's attempt limit); :class:`StalePreview` completes it ``failed``
with ``{"code": "stale_preview"}``; :class:`JobFailed` or any other exception
completes it ``failed``, not retryable.

On SIGTERM / SIGINT (or :meth:`Executor.stop`) the executor claims no more;
jobs in hand get ``grace_seconds`` to finish, then are *handed back*:
completed ``failed`` + ``retryable`` with ``{"code": "executor_stopping"}``, so
the queue offers them again. A second signal hands them back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from .client import AsyncClient, Client
from .errors import (
    BadRequest,
    CountersignError,
    InvalidTransition,
    PayloadTooLarge,
    RateLimited,
    ReceiptError,
    SecretInArgs,
    ServerError,
    TransportError,
)
from .models import ClaimedJob, Completion, Heartbeat, Preview
from .receipts import AsyncReceiptVerifier, Receipt, ReceiptVerifier

__all__ = [
    "AsyncExecutor",
    "ExecutionStore",
    "Executor",
    "Job",
    "JobFailed",
    "JobOutcome",
    "MemoryStore",
    "Retryable",
    "StalePreview",
]

log = logging.getLogger("countersign.executor")

#: Pause between empty claims when they do not long-poll (wait_seconds=0).
_IDLE_PAUSE = 0.5
#: How long jobs in hand may finish after a stop, by default: inside the 30 s
#: most process managers allow between SIGTERM and SIGKILL.
DEFAULT_GRACE_SECONDS = 25.0


# -------------------------------------------------------- handler signals


class Retryable(Exception):
    """Raise from a handler when the attempt failed but a later one may
    succeed (a timeout talking to the real system, a 503). ``result`` is
    reported with the failure."""

    def __init__(self, message: str = "", *, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = dict(result) if result is not None else None


class JobFailed(Exception):
    """Raise from a handler to fail the job for good with this ``result``."""

    def __init__(self, message: str = "", *, result: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = dict(result) if result is not None else None


class StalePreview(Exception):
    """Raise from a handler when the world changed since the reviewer looked
    (the current state is not ``job.preview_state``): the job is completed
    ``failed`` with ``{"code": "stale_preview"}`` and the agent must propose
    again."""


# ------------------------------------------------------------ dedup store


class ExecutionStore(Protocol):
    """Where an executor remembers the side effects it already performed,
    keyed by ``execution_key`` (unique across the whole deployment).

    The executor helper calls :meth:`seen` before a handler runs and
    :meth:`remember` after it succeeded. A crash between the side effect and
    :meth:`remember` still repeats the effect on the next delivery, so a
    handler whose effect must happen at most once should also make the effect
    itself idempotent on ``job.execution_key`` (a unique key in the target
    system, in the same transaction as the change)."""

    def seen(self, execution_key: str) -> Mapping[str, Any] | None:
        """The result remembered for this key, or ``None``."""
        ...

    def remember(self, execution_key: str, result: Mapping[str, Any]) -> None:
        """Remember that this key's effect happened, with its result."""
        ...


class MemoryStore:
    """An in-process :class:`ExecutionStore` (tests, single short-lived
    processes). It forgets everything when the process ends."""

    def __init__(self) -> None:
        self._done: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def seen(self, execution_key: str) -> Mapping[str, Any] | None:
        with self._lock:
            return self._done.get(execution_key)

    def remember(self, execution_key: str, result: Mapping[str, Any]) -> None:
        with self._lock:
            self._done[execution_key] = dict(result)


# --------------------------------------------------------------- the job


@dataclass
class Job:
    """What a handler gets. ``args`` are the verified receipt's args (or, for
    a preview job, which no person approved yet, the queue's).

    A long handler should look at :attr:`should_stop` between steps: it turns
    true when the run was revoked, the lease was lost, or the job was handed
    back because the executor is stopping."""

    claimed: ClaimedJob
    args: dict[str, Any]
    receipt: Receipt | None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lost: threading.Event = field(default_factory=threading.Event, repr=False)
    _deadline: threading.Event = field(default_factory=threading.Event, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _handed_back: threading.Event = field(default_factory=threading.Event, repr=False)
    #: When the lease ends (POSIX seconds, the server's clock), as last granted.
    _lease_until: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._lease_until is None and self.claimed.lease_expires_at is not None:
            self._lease_until = self.claimed.lease_expires_at.timestamp()

    @property
    def job_id(self) -> str:
        return self.claimed.job_id

    @property
    def lease_id(self) -> str:
        return self.claimed.lease_id

    @property
    def proposal_id(self) -> str:
        return self.claimed.proposal_id

    @property
    def tenant(self) -> str:
        return self.claimed.tenant

    @property
    def env(self) -> str:
        return self.claimed.env

    @property
    def tool(self) -> str:
        return self.claimed.tool

    @property
    def kind(self) -> str:
        return self.claimed.kind

    @property
    def attempt(self) -> int:
        return self.claimed.attempt

    @property
    def idempotency_key(self) -> str | None:
        return self.claimed.idempotency_key

    @property
    def execution_key(self) -> str | None:
        """Unique across the deployment and the same for every attempt:
        deduplicate side effects on it."""
        return self.claimed.execution_key

    @property
    def preview_state(self) -> str | None:
        """The precondition the reviewer saw (tools with executor previews):
        compare with the current state and raise :class:`StalePreview` when
        they differ."""
        if self.receipt is not None and self.receipt.preview_state is not None:
            return self.receipt.preview_state
        return self.claimed.preview_state

    @property
    def execute_by(self) -> datetime | None:
        """The job's execute-by deadline (the receipt's ``exp``); ``None``
        without a verified receipt."""
        if self.receipt is None:
            return None
        return datetime.fromtimestamp(self.receipt.exp, tz=timezone.utc)

    @property
    def lease_expires_at(self) -> datetime | None:
        """When the lease ends, as last granted by the claim or a heartbeat."""
        if self._lease_until is None:
            return None
        return datetime.fromtimestamp(self._lease_until, tz=timezone.utc)

    @property
    def cancel_requested(self) -> bool:
        """True once a heartbeat said the run was revoked."""
        return self._cancel.is_set()

    @property
    def lease_lost(self) -> bool:
        """True once a heartbeat was refused: another holder may run the job;
        this one's completion will be refused."""
        return self._lost.is_set()

    @property
    def deadline_reached(self) -> bool:
        """True once the lease can no longer be extended because it would
        outlast the job's execute-by time. The lease is still held, until
        :attr:`lease_expires_at`: finish before then, or the completion is
        refused."""
        return self._deadline.is_set()

    @property
    def stopping(self) -> bool:
        """True once the executor was asked to stop: finish within its grace
        period, start nothing new."""
        return self._stopping.is_set()

    @property
    def handed_back(self) -> bool:
        """True once the job was handed back (the executor stopped before it
        finished): it will be offered again, and what this handler does now
        is never reported. Stop without acting."""
        return self._handed_back.is_set()

    @property
    def should_stop(self) -> bool:
        """True when going on is pointless or harmful: the run was revoked,
        the lease was lost, or the job was handed back."""
        return self.cancel_requested or self.lease_lost or self.handed_back


Outcome = Literal["succeeded", "failed"]


@dataclass
class JobOutcome:
    """What happened to one claimed job."""

    claimed: ClaimedJob
    status: Outcome
    result: dict[str, Any] | None
    retryable: bool = False
    #: The handler's own return value (before it became ``result``).
    value: Any = None
    #: The exception the handler (or the receipt check) raised.
    error: BaseException | None = None
    #: The server's answer to the completion, when it accepted it.
    completion: Completion | None = None
    #: Why the completion was not accepted (e.g. the lease was lost).
    completion_error: CountersignError | None = None
    #: True when the store already had this execution_key: the handler did not run.
    duplicate: bool = False
    preview: Preview | None = None
    job: Job | None = None
    #: Set when the server refused what the first completion carried (a
    #: result over 16 KiB or with a secret in it, a preview it cannot show):
    #: the job was then completed with a note in ``result`` instead.
    result_refused: CountersignError | None = None
    #: True when the executor stopped before the job finished (or started):
    #: it was completed as a retryable failure, to be offered again.
    handed_back: bool = False

    @property
    def proposal_id(self) -> str:
        return self.claimed.proposal_id


Handler = Callable[[Job], Any]
PreviewHandler = Callable[[Job], Preview | Mapping[str, Any]]
AsyncHandler = Callable[[Job], Any | Awaitable[Any]]
AsyncPreviewHandler = Callable[
    [Job], Preview | Mapping[str, Any] | Awaitable[Preview | Mapping[str, Any]]
]


def as_result(value: Any) -> dict[str, Any]:
    """A handler's return value as a job ``result`` object: a mapping as it
    is, ``None`` as ``{}``, anything else as ``{"value": …}``. Values JSON
    cannot carry are sent as their ``str()`` (the effect already happened, so
    the job still succeeded)."""
    result: dict[str, Any]
    if value is None:
        result = {}
    elif isinstance(value, Mapping):
        result = {str(k): v for k, v in value.items()}
    else:
        result = {"value": value}
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        converted: dict[str, Any] = json.loads(json.dumps(result, default=str))
        return converted
    return result


def _failure(exc: BaseException) -> tuple[dict[str, Any], bool]:
    """The result and retryable flag that report a handler's exception."""
    if isinstance(exc, Retryable):
        return exc.result or {"error": "retryable", "message": str(exc)}, True
    if isinstance(exc, StalePreview):
        return {"code": "stale_preview", "message": str(exc) or "the state changed"}, False
    if isinstance(exc, JobFailed):
        return exc.result or {"error": "failed", "message": str(exc)}, False
    return {"error": type(exc).__name__, "message": str(exc)}, False


def _executor_preview(value: Any) -> Preview:
    """A preview handler's return value as the preview job's report."""
    preview = Preview.coerce(value)
    if preview.state is None:
        raise TypeError(
            "a preview handler must return a state (the precondition the execute job "
            "re-checks, e.g. a row version or ETag); use state='' if there is none"
        )
    return preview


# What the server answers when it refuses the body of a completion.
_REFUSED_BODY: tuple[type[CountersignError], ...] = (BadRequest, SecretInArgs, PayloadTooLarge)


def _instead_of_refused(outcome: JobOutcome, exc: CountersignError) -> JobOutcome | None:
    """The completion to send when the server refused what ``outcome`` carried,
    so that the job does not stay leased until it is offered (and its effect
    repeated) again; ``None`` when there is nothing better to send."""
    if not isinstance(exc, _REFUSED_BODY) or outcome.result_refused is not None:
        return None
    note = {"code": exc.code, "message": exc.message}
    if outcome.preview is not None:
        # A preview reviewers cannot be shown: the proposal fails, saying why.
        return dataclasses.replace(
            outcome,
            status="failed",
            result={"error": "preview_refused", **note},
            retryable=False,
            preview=None,
            result_refused=exc,
        )
    # The effect (or the failure) happened; only its report was refused.
    return dataclasses.replace(
        outcome, result={"error": "result_refused", **note}, result_refused=exc
    )


def _receipt_failure(exc: ReceiptError) -> tuple[dict[str, Any], bool]:
    # A key set that cannot be fetched says nothing about the receipt: the job
    # is offered again. A receipt that fails is never acted on.
    retryable = exc.code == "jwks_unavailable"
    return {"code": exc.code, "error": "receipt_rejected", "message": exc.message}, retryable


def _env_mismatch(claimed: ClaimedJob, env: str) -> JobOutcome | None:
    """Without receipt verification, the queue's word for the env is still
    checked against the executor's own: a job of another env is refused."""
    if claimed.env == env:
        return None
    return JobOutcome(
        claimed,
        "failed",
        {
            "error": "job_refused",
            "code": "env_mismatch",
            "message": f"the job is for env {claimed.env!r}; this executor acts in {env!r}",
        },
    )


def _handed_back(claimed: ClaimedJob, job: Job | None, started: bool) -> JobOutcome:
    """The completion that gives a job back to the queue when the executor
    stops: a retryable failure, so it is offered again."""
    when = "before it finished" if started else "before it started"
    return JobOutcome(
        claimed,
        "failed",
        {"code": "executor_stopping", "message": f"executor stopping: handed back {when}"},
        retryable=True,
        job=job,
        handed_back=True,
    )


def _check_env(env: object) -> str:
    if not isinstance(env, str) or not env:
        raise ValueError(
            "env must name the env this executor acts in, from its own configuration "
            f"(e.g. env='prod'), not the job's; got {env!r}"
        )
    return env


class _Config:
    """Settings and pure decisions shared by both executors."""

    def __init__(
        self,
        tools: Mapping[str, Any],
        previews: Mapping[str, Any] | None,
        *,
        env: str,
        lease_seconds: int,
        wait_seconds: int,
        concurrency: int,
        heartbeat_every: float | None,
        store: ExecutionStore | None,
        grace_seconds: float,
    ) -> None:
        if not tools and not previews:
            raise ValueError("an executor needs at least one tool handler or preview handler")
        if concurrency < 1 or concurrency > 100:
            raise ValueError("concurrency must be between 1 and 100")
        if not 1 <= lease_seconds <= 3600:
            raise ValueError("lease_seconds must be between 1 and 3600")
        if not 0 <= wait_seconds <= 60:
            raise ValueError("wait_seconds must be between 0 and 60")
        if not grace_seconds >= 0:
            raise ValueError("grace_seconds must be >= 0")
        self.env = _check_env(env)
        self.tools = dict(tools)
        self.previews = dict(previews or {})
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.concurrency = concurrency
        self.heartbeat_every = heartbeat_every or max(0.5, lease_seconds / 3)
        self.store = store
        self.grace_seconds = float(grace_seconds)
        # One claim per set of tools that want the same kinds of job, so a
        # job is only ever claimed by an executor with a handler for it. A
        # server that knows no previews knows no `kinds`: sent only when needed.
        both = sorted(set(self.tools) & set(self.previews))
        self.groups: list[tuple[list[str], list[str] | None]] = [
            (names, kinds)
            for names, kinds in (
                (both, ["preview", "execute"]),
                (sorted(set(self.tools) - set(self.previews)), None),
                (sorted(set(self.previews) - set(self.tools)), ["preview"]),
            )
            if names
        ]
        self._turn = 0

    def claims(self, only: Sequence[str] | None) -> list[tuple[list[str], list[str] | None]]:
        """The (tools, kinds) of each claim to make, narrowed to ``only``."""
        if only is None:
            return self.groups
        wanted = set(only)
        narrowed = [([t for t in names if t in wanted], kinds) for names, kinds in self.groups]
        return [(names, kinds) for names, kinds in narrowed if names]

    def next_turn(self, n: int) -> int:
        """Which of ``n`` claims long-polls this time (they take turns)."""
        self._turn = (self._turn + 1) % n
        return self._turn

    def handler_for(self, job: ClaimedJob) -> tuple[Any, str | None]:
        """The handler for a job, or why there is none."""
        if job.kind == "preview":
            h = self.previews.get(job.tool)
            return h, None if h else f"no preview handler for {job.tool}"
        if job.kind == "execute":
            h = self.tools.get(job.tool)
            return h, None if h else f"no handler for {job.tool}"
        return None, f"unknown job kind {job.kind!r}"


# --------------------------------------------------------------- leases

# The server's refusal of a heartbeat that would outlast the job's
# execute-by time (core/src/service/jobs.rs): "a lease cannot outlast the
# job's execute-by deadline (…): ask for at most N s". It carries no details,
# so the sentence is what tells it from a lost lease.
_DEADLINE_REFUSAL = re.compile(r"execute-by")
_AT_MOST = re.compile(r"at most (\d+) s\b")


class _Lease:
    """What one job's heartbeats decide: how long to ask for, and what a
    refusal means. A heartbeat may not extend a lease past the job's
    execute-by time; that is not a lost lease (the lease is still held until
    it ends), so heartbeats then stop and the job says
    :attr:`Job.deadline_reached`."""

    def __init__(self, job: Job, lease_seconds: int) -> None:
        self.job = job
        self.lease_seconds = lease_seconds
        self.exp = float(job.receipt.exp) if job.receipt is not None else None
        if job._lease_until is None:
            job._lease_until = time.time() + lease_seconds

    @property
    def until(self) -> float:
        return self.job._lease_until or 0.0

    def ask(self) -> int | None:
        """Seconds to ask for now; ``None`` when no heartbeat can extend the
        lease any more (it already reaches the execute-by time)."""
        if self.exp is None:
            return self.lease_seconds
        now = time.time()
        cap = int(self.exp - now)
        if cap >= self.lease_seconds:
            return self.lease_seconds
        if cap < 1 or now + cap <= self.until:
            return None
        return cap

    def granted(self, beat: Heartbeat, asked: int, sent_at: float) -> None:
        at = beat.lease_expires_at
        self.job._lease_until = at.timestamp() if at is not None else sent_at + asked

    def refused(self, exc: InvalidTransition) -> int | None:
        """``None`` when the refusal means the lease was lost; else it was
        the execute-by time, and this is how many seconds one last heartbeat
        may still ask for (0 when it would not make the lease longer)."""
        if not _DEADLINE_REFUSAL.search(exc.message):
            return None
        m = _AT_MOST.search(exc.message)
        most = int(m.group(1)) if m else 0
        return most if most >= 1 and time.time() + most > self.until else 0

    def lost(self) -> None:
        log.warning("lease of %s lost; its completion will be refused", self.job.job_id)
        self.job._lost.set()

    def deadline(self) -> None:
        if not self.job._deadline.is_set():
            log.warning(
                "%s: the lease cannot outlast the job's execute-by time; it ends at %s: "
                "finish before then",
                self.job.job_id,
                self.job.lease_expires_at,
            )
            self.job._deadline.set()

    def beat(self, beat: Heartbeat) -> None:
        if beat.cancel_requested and not self.job._cancel.is_set():
            log.warning("%s: cancel requested (the run was revoked)", self.job.job_id)
            self.job._cancel.set()


@contextlib.contextmanager
def _signals(handler: Callable[[], None], enabled: bool) -> Iterator[None]:
    """SIGTERM and SIGINT call ``handler`` while inside (main thread only)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda _s, _f: handler()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _fatal(exc: CountersignError) -> bool:
    """Claim errors that retrying cannot fix."""
    return not isinstance(exc, (TransportError, ServerError, RateLimited))


# ------------------------------------------------------------ sync executor


class _Heartbeat:
    """Heartbeats one job's lease from a background thread while inside."""

    def __init__(self, client: Client, job: Job, lease_seconds: int, every: float) -> None:
        self._client, self._job = client, job
        self._lease = _Lease(job, lease_seconds)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"countersign-heartbeat-{job.job_id}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            if not self._once():
                return

    def _send(self, seconds: int) -> Heartbeat:
        job = self._job
        return self._client.heartbeat(job.job_id, job.lease_id, seconds)

    def _once(self) -> bool:
        """One heartbeat; False when there will be no more."""
        lease = self._lease
        asked = lease.ask()
        if asked is None:
            lease.deadline()
            return False
        sent = time.time()
        try:
            beat = self._send(asked)
        except InvalidTransition as exc:
            last = lease.refused(exc)
            if last is None:
                lease.lost()
                return False
            if last:
                sent = time.time()
                try:
                    lease.granted(self._send(last), last, sent)
                except InvalidTransition as again:
                    if lease.refused(again) is None:
                        lease.lost()
                        return False
                except CountersignError as again:
                    log.warning("heartbeat of %s failed: %s", self._job.job_id, again)
            lease.deadline()
            return False
        except CountersignError as exc:
            log.warning("heartbeat of %s failed: %s", self._job.job_id, exc)
            return True
        lease.granted(beat, asked, sent)
        lease.beat(beat)
        return True


class Executor:
    """Claims and runs jobs with a synchronous :class:`~countersign.Client`
    holding an executor key.

    :param tools: handler per tool, ``handler(job) -> result``.
    :param previews: preview handler per tool whose policy says
        ``preview = "executor"``: ``handler(job) -> Preview(before, after, state)``;
        it must read the current state and change nothing.
    :param env: the env this executor acts in, from **its own
        configuration** (required). Every receipt must name it; without
        receipt verification, every job must.
    :param verify_receipts: verify each execute job's approval receipt
        (signature, ``exp``, ``env``, ``tool``, ``jti``) before its handler
        runs, and hand the handler the receipt's args. Turn off only against
        a server that issues no receipts.
    :param issuer: also require this ``iss`` in receipts.
    :param store: an :class:`ExecutionStore` consulted on ``execution_key``.
    :param lease_seconds: the lease asked for at claim and at each heartbeat.
    :param wait_seconds: how long a claim long-polls (also bounds how long
        :meth:`run` takes to notice a stop between jobs).
    :param concurrency: jobs claimed and run at once (threads).
    :param heartbeat_every: seconds between heartbeats (default a third of
        the lease).
    :param grace_seconds: after a stop, how long jobs in hand may finish
        before they are handed back (default 25).

    Handlers run in a worker thread of their own (with the caller's
    ``contextvars``), so that a stop can hand a job back while its handler
    is still running.
    """

    def __init__(
        self,
        client: Client,
        tools: Mapping[str, Handler] | None = None,
        previews: Mapping[str, PreviewHandler] | None = None,
        *,
        env: str,
        verify_receipts: bool = True,
        issuer: str | None = None,
        leeway: float = 0.0,
        store: ExecutionStore | None = None,
        lease_seconds: int = 60,
        wait_seconds: int = 10,
        concurrency: int = 1,
        heartbeat_every: float | None = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if not isinstance(client, Client):
            raise TypeError(
                "Executor needs a countersign.Client; use AsyncExecutor for AsyncClient"
            )
        self.client = client
        self._c = _Config(
            tools or {},
            previews,
            env=env,
            lease_seconds=lease_seconds,
            wait_seconds=wait_seconds,
            concurrency=concurrency,
            heartbeat_every=heartbeat_every,
            store=store,
            grace_seconds=grace_seconds,
        )
        self.verifier: ReceiptVerifier | None = (
            ReceiptVerifier(
                client.jwks,
                env=self._c.env,
                tools=frozenset(self._c.tools),
                issuer=issuer,
                leeway=leeway,
            )
            if verify_receipts
            else None
        )
        self._stop = threading.Event()
        self._handback = threading.Event()
        # Reentrant: a signal handler runs on the main thread, perhaps while
        # that thread holds it.
        self._lock = threading.RLock()
        self._wakes: set[threading.Event] = set()
        self._grace: threading.Timer | None = None

    @property
    def env(self) -> str:
        """The env this executor acts in."""
        return self._c.env

    # -- control

    def stop(self, *, now: bool = False) -> None:
        """Claim no more. Jobs in hand may finish for ``grace_seconds``, then
        are handed back (completed ``failed`` + ``retryable``, to be offered
        again). A second call, or ``now=True``, hands them back at once.
        SIGTERM and SIGINT call this while :meth:`run` runs."""
        with self._lock:
            first = not self._stop.is_set()
            self._stop.set()
        if now or not first:
            self.hand_back()
            return
        log.info(
            "stopping: claiming no more; jobs in hand have %.1fs to finish",
            self._c.grace_seconds,
        )
        timer = threading.Timer(self._c.grace_seconds, self.hand_back)
        timer.daemon = True
        timer.name = "countersign-executor-grace"
        with self._lock:
            self._grace = timer
        timer.start()

    def hand_back(self) -> None:
        """Stop now: every job in hand is handed back without waiting for its
        handler (whose late result is never reported; a success is still
        remembered in the ``store``)."""
        with self._lock:
            self._stop.set()
            if self._handback.is_set():
                return
            self._handback.set()
            wakes = list(self._wakes)
        if wakes:
            log.warning("handing back %d job(s) in hand", len(wakes))
        for wake in wakes:
            wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Claim and process jobs until :meth:`stop`, SIGTERM or SIGINT (a
        second signal hands the jobs in hand back at once). Connection
        failures, 5xx and ``rate_limited`` answers are retried with backoff;
        a credential the server refuses ends the loop with its exception."""
        failures = 0
        try:
            with _signals(self.stop, install_signal_handlers):
                while not self._stop.is_set():
                    try:
                        jobs = self.run_once()
                        failures = 0
                        if not jobs and self._c.wait_seconds == 0:
                            self._stop.wait(_IDLE_PAUSE)  # no long poll: do not spin
                    except CountersignError as exc:
                        if _fatal(exc):
                            raise
                        failures += 1
                        delay = min(30.0, 0.5 * 2**failures)
                        log.warning("claim failed (%s); again in %.1fs", exc, delay)
                        self._stop.wait(delay)
        finally:
            with self._lock:
                grace, self._grace = self._grace, None
            if grace is not None:
                grace.cancel()
        log.info("executor stopped")

    def run_once(
        self, wait_seconds: int | None = None, *, tools: Sequence[str] | None = None
    ) -> list[JobOutcome]:
        """Claim one batch (long-polling up to ``wait_seconds``), process it,
        and return what happened to each job."""
        specs = self._c.claims(tools)
        wait = self._c.wait_seconds if wait_seconds is None else wait_seconds
        jobs: list[ClaimedJob] = []
        if len(specs) == 1:
            jobs = self._claim(specs[0], wait, self._c.concurrency)
        elif specs:
            # Several claims: look at each without waiting, then long-poll one.
            for spec in specs:
                if len(jobs) < self._c.concurrency:
                    jobs += self._claim(spec, 0, self._c.concurrency - len(jobs))
            if not jobs and wait > 0:
                spec = specs[self._c.next_turn(len(specs))]
                jobs = self._claim(spec, wait, self._c.concurrency)
        if len(jobs) <= 1 or self._c.concurrency == 1:
            return [self.process(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=self._c.concurrency) as pool:
            return list(pool.map(self.process, jobs))

    def _claim(
        self, spec: tuple[list[str], list[str] | None], wait: int, n: int
    ) -> list[ClaimedJob]:
        names, kinds = spec
        return self.client.claim(
            tools=names,
            max=n,
            lease_seconds=self._c.lease_seconds,
            wait_seconds=wait,
            kinds=kinds,
        )

    # -- one job

    def process(self, claimed: ClaimedJob) -> JobOutcome:
        """Verify, run and complete one claimed job. A job that arrives after
        a stop was asked for is handed back without starting."""
        log.info(
            "claimed %s (%s %s, attempt %d, proposal %s)",
            claimed.job_id,
            claimed.kind,
            claimed.tool,
            claimed.attempt,
            claimed.proposal_id,
        )
        if self._stop.is_set():
            return self._finish(_handed_back(claimed, None, started=False))
        handler, missing = self._c.handler_for(claimed)
        if handler is None:
            return self._finish(
                JobOutcome(claimed, "failed", {"error": "no_handler", "message": missing})
            )
        receipt: Receipt | None = None
        args = claimed.args
        if self.verifier is not None and (claimed.kind == "execute" or claimed.receipt):
            try:
                receipt = self.verifier.verify(claimed)
            except ReceiptError as exc:
                log.error("refusing %s: %s (%s)", claimed.job_id, exc.message, exc.code)
                result, retryable = _receipt_failure(exc)
                return self._finish(JobOutcome(claimed, "failed", result, retryable, error=exc))
            args = receipt.args
        else:
            refused = _env_mismatch(claimed, self._c.env)
            if refused is not None:
                log.error("refusing %s: %s", claimed.job_id, (refused.result or {})["message"])
                return self._finish(refused)
        job = Job(claimed=claimed, args=args, receipt=receipt, _stopping=self._stop)
        store, key = self._c.store, claimed.execution_key
        if claimed.kind == "execute" and store is not None and key:
            prior = store.seen(key)
            if prior is not None:
                log.info("%s: execution_key already done; reporting the remembered result", key)
                return self._finish(
                    JobOutcome(claimed, "succeeded", dict(prior), duplicate=True, job=job)
                )
        with _Heartbeat(self.client, job, self._c.lease_seconds, self._c.heartbeat_every):
            outcome = self._run_handler(handler, job)
        if not outcome.handed_back:
            self._remember(outcome)
        return self._finish(outcome)

    def _remember(self, outcome: JobOutcome) -> None:
        store, c = self._c.store, outcome.claimed
        if outcome.status == "succeeded" and c.kind == "execute" and store and c.execution_key:
            store.remember(c.execution_key, outcome.result or {})

    def _run_handler(self, handler: Callable[[Job], Any], job: Job) -> JobOutcome:
        """Run the handler in a worker thread; its outcome, or a hand-back
        when the executor stops first."""
        wake = threading.Event()
        done: list[JobOutcome] = []
        context = contextvars.copy_context()

        def work() -> None:
            try:
                outcome = context.run(self._call, handler, job)
            except BaseException as exc:  # SystemExit, KeyboardInterrupt in the handler
                result, retryable = _failure(exc)
                outcome = JobOutcome(job.claimed, "failed", result, retryable, error=exc, job=job)
            with self._lock:
                late = job._handed_back.is_set()
                if not late:
                    done.append(outcome)
            wake.set()
            if late:
                log.warning(
                    "%s finished (%s) after it was handed back; that is not reported",
                    job.job_id,
                    outcome.status,
                )
                self._remember(outcome)

        with self._lock:
            if self._handback.is_set():
                job._handed_back.set()
                return _handed_back(job.claimed, job, started=False)
            self._wakes.add(wake)
        try:
            threading.Thread(target=work, name=f"countersign-job-{job.job_id}", daemon=True).start()
            wake.wait()
        finally:
            with self._lock:
                self._wakes.discard(wake)
                if not done:
                    job._handed_back.set()
        if done:
            return done[0]
        log.warning("%s: handing it back unfinished (the executor is stopping)", job.job_id)
        return _handed_back(job.claimed, job, started=True)

    def _call(self, handler: Callable[[Job], Any], job: Job) -> JobOutcome:
        try:
            value = handler(job)
            if job.kind == "preview":
                preview = _executor_preview(value)
                return JobOutcome(
                    job.claimed, "succeeded", None, value=value, preview=preview, job=job
                )
            return JobOutcome(job.claimed, "succeeded", as_result(value), value=value, job=job)
        except Exception as exc:
            if not isinstance(exc, (Retryable, StalePreview, JobFailed)):
                log.exception("handler for %s (%s) raised", job.job_id, job.tool)
            result, retryable = _failure(exc)
            return JobOutcome(job.claimed, "failed", result, retryable, error=exc, job=job)

    def _finish(self, outcome: JobOutcome) -> JobOutcome:
        c = outcome.claimed
        try:
            outcome.completion = self.client.complete(
                c.job_id,
                c.lease_id,
                outcome.status,
                result=outcome.result,
                retryable=outcome.retryable,
                preview=outcome.preview,
            )
        except CountersignError as exc:
            instead = _instead_of_refused(outcome, exc)
            if instead is not None:
                log.error(
                    "the server refused the completion of %s (%s); sending a note", c.job_id, exc
                )
                return self._finish(instead)
            outcome.completion_error = exc
            log.error("completing %s failed: %s", c.job_id, exc)
        else:
            log.info("completed %s: %s", c.job_id, outcome.completion.state)
        return outcome


# ----------------------------------------------------------- async executor


class AsyncExecutor:
    """The asyncio twin of :class:`Executor`, for an
    :class:`~countersign.AsyncClient`. Handlers may be coroutine functions or
    plain functions (run in a worker thread). A handed-back coroutine handler
    is cancelled; a plain one runs on in its thread, unreported."""

    def __init__(
        self,
        client: AsyncClient,
        tools: Mapping[str, AsyncHandler] | None = None,
        previews: Mapping[str, AsyncPreviewHandler] | None = None,
        *,
        env: str,
        verify_receipts: bool = True,
        issuer: str | None = None,
        leeway: float = 0.0,
        store: ExecutionStore | None = None,
        lease_seconds: int = 60,
        wait_seconds: int = 10,
        concurrency: int = 1,
        heartbeat_every: float | None = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if not isinstance(client, AsyncClient):
            raise TypeError("AsyncExecutor needs a countersign.AsyncClient")
        self.client = client
        self._c = _Config(
            tools or {},
            previews,
            env=env,
            lease_seconds=lease_seconds,
            wait_seconds=wait_seconds,
            concurrency=concurrency,
            heartbeat_every=heartbeat_every,
            store=store,
            grace_seconds=grace_seconds,
        )
        self.verifier: AsyncReceiptVerifier | None = (
            AsyncReceiptVerifier(
                client.jwks,
                env=self._c.env,
                tools=frozenset(self._c.tools),
                issuer=issuer,
                leeway=leeway,
            )
            if verify_receipts
            else None
        )
        self._stop = asyncio.Event()
        self._handback = asyncio.Event()
        # What handlers see as Job.stopping (they may read it from a thread).
        self._stopping = threading.Event()
        self._grace: asyncio.TimerHandle | None = None

    @property
    def env(self) -> str:
        """The env this executor acts in."""
        return self._c.env

    def stop(self, *, now: bool = False) -> None:
        """See :meth:`Executor.stop`. Call it from the event loop's thread
        (from another: ``loop.call_soon_threadsafe(executor.stop)``)."""
        first = not self._stop.is_set()
        self._stop.set()
        self._stopping.set()
        if now or not first:
            self.hand_back()
            return
        log.info(
            "stopping: claiming no more; jobs in hand have %.1fs to finish",
            self._c.grace_seconds,
        )
        self._grace = asyncio.get_running_loop().call_later(self._c.grace_seconds, self.hand_back)

    def hand_back(self) -> None:
        """See :meth:`Executor.hand_back` (from the event loop's thread)."""
        self._stop.set()
        self._stopping.set()
        if not self._handback.is_set():
            log.warning("handing back the jobs in hand")
            self._handback.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """See :meth:`Executor.run`."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    jobs = await self.run_once()
                    failures = 0
                    if not jobs and self._c.wait_seconds == 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), _IDLE_PAUSE)
                except CountersignError as exc:
                    if _fatal(exc):
                        raise
                    failures += 1
                    delay = min(30.0, 0.5 * 2**failures)
                    log.warning("claim failed (%s); again in %.1fs", exc, delay)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        log.info("executor stopped")

    async def run_once(
        self, wait_seconds: int | None = None, *, tools: Sequence[str] | None = None
    ) -> list[JobOutcome]:
        """See :meth:`Executor.run_once`."""
        specs = self._c.claims(tools)
        wait = self._c.wait_seconds if wait_seconds is None else wait_seconds
        jobs: list[ClaimedJob] = []
        if len(specs) == 1:
            jobs = await self._claim(specs[0], wait, self._c.concurrency)
        elif specs:
            for spec in specs:
                if len(jobs) < self._c.concurrency:
                    jobs += await self._claim(spec, 0, self._c.concurrency - len(jobs))
            if not jobs and wait > 0:
                spec = specs[self._c.next_turn(len(specs))]
                jobs = await self._claim(spec, wait, self._c.concurrency)
        return list(await asyncio.gather(*(self.process(j) for j in jobs)))

    async def _claim(
        self, spec: tuple[list[str], list[str] | None], wait: int, n: int
    ) -> list[ClaimedJob]:
        names, kinds = spec
        return await self.client.claim(
            tools=names,
            max=n,
            lease_seconds=self._c.lease_seconds,
            wait_seconds=wait,
            kinds=kinds,
        )

    async def process(self, claimed: ClaimedJob) -> JobOutcome:
        """See :meth:`Executor.process`."""
        log.info(
            "claimed %s (%s %s, attempt %d, proposal %s)",
            claimed.job_id,
            claimed.kind,
            claimed.tool,
            claimed.attempt,
            claimed.proposal_id,
        )
        if self._stop.is_set():
            return await self._finish(_handed_back(claimed, None, started=False))
        handler, missing = self._c.handler_for(claimed)
        if handler is None:
            return await self._finish(
                JobOutcome(claimed, "failed", {"error": "no_handler", "message": missing})
            )
        receipt: Receipt | None = None
        args = claimed.args
        if self.verifier is not None and (claimed.kind == "execute" or claimed.receipt):
            try:
                receipt = await self.verifier.verify(claimed)
            except ReceiptError as exc:
                log.error("refusing %s: %s (%s)", claimed.job_id, exc.message, exc.code)
                result, retryable = _receipt_failure(exc)
                return await self._finish(
                    JobOutcome(claimed, "failed", result, retryable, error=exc)
                )
            args = receipt.args
        else:
            refused = _env_mismatch(claimed, self._c.env)
            if refused is not None:
                log.error("refusing %s: %s", claimed.job_id, (refused.result or {})["message"])
                return await self._finish(refused)
        job = Job(claimed=claimed, args=args, receipt=receipt, _stopping=self._stopping)
        store, key = self._c.store, claimed.execution_key
        if claimed.kind == "execute" and store is not None and key:
            prior = store.seen(key)
            if prior is not None:
                return await self._finish(
                    JobOutcome(claimed, "succeeded", dict(prior), duplicate=True, job=job)
                )
        if self._handback.is_set():
            job._handed_back.set()
            return await self._finish(_handed_back(claimed, job, started=False))
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            outcome = await self._run_handler(handler, job)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if not outcome.handed_back:
            self._remember(outcome)
        return await self._finish(outcome)

    def _remember(self, outcome: JobOutcome) -> None:
        store, c = self._c.store, outcome.claimed
        if outcome.status == "succeeded" and c.kind == "execute" and store and c.execution_key:
            store.remember(c.execution_key, outcome.result or {})

    async def _run_handler(self, handler: Callable[[Job], Any], job: Job) -> JobOutcome:
        """The handler's outcome, or a hand-back when the executor stops first
        (a coroutine handler is then cancelled)."""
        work = asyncio.create_task(self._call(handler, job))
        stopped = asyncio.create_task(self._handback.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            stopped.cancel()
        if work.done():
            return work.result()
        job._handed_back.set()
        work.cancel()

        def late(task: asyncio.Task[JobOutcome]) -> None:
            if task.cancelled() or task.exception() is not None:
                return
            outcome = task.result()
            log.warning(
                "%s finished (%s) after it was handed back; that is not reported",
                job.job_id,
                outcome.status,
            )
            self._remember(outcome)

        work.add_done_callback(late)
        log.warning("%s: handing it back unfinished (the executor is stopping)", job.job_id)
        return _handed_back(job.claimed, job, started=True)

    async def _heartbeat(self, job: Job) -> None:
        lease = _Lease(job, self._c.lease_seconds)

        async def send(seconds: int) -> Heartbeat:
            return await self.client.heartbeat(job.job_id, job.lease_id, seconds)

        while True:
            await asyncio.sleep(self._c.heartbeat_every)
            asked = lease.ask()
            if asked is None:
                lease.deadline()
                return
            sent = time.time()
            try:
                beat = await send(asked)
            except InvalidTransition as exc:
                last = lease.refused(exc)
                if last is None:
                    lease.lost()
                    return
                if last:
                    sent = time.time()
                    try:
                        lease.granted(await send(last), last, sent)
                    except InvalidTransition as again:
                        if lease.refused(again) is None:
                            lease.lost()
                            return
                    except CountersignError as again:
                        log.warning("heartbeat of %s failed: %s", job.job_id, again)
                lease.deadline()
                return
            except CountersignError as exc:
                log.warning("heartbeat of %s failed: %s", job.job_id, exc)
                continue
            lease.granted(beat, asked, sent)
            lease.beat(beat)

    async def _call(self, handler: Callable[[Job], Any], job: Job) -> JobOutcome:
        try:
            if inspect.iscoroutinefunction(handler):
                value = await handler(job)
            else:
                value = await asyncio.to_thread(handler, job)
                if inspect.isawaitable(value):
                    value = await value
            if job.kind == "preview":
                preview = _executor_preview(value)
                return JobOutcome(
                    job.claimed, "succeeded", None, value=value, preview=preview, job=job
                )
            return JobOutcome(job.claimed, "succeeded", as_result(value), value=value, job=job)
        except Exception as exc:
            if not isinstance(exc, (Retryable, StalePreview, JobFailed)):
                log.exception("handler for %s (%s) raised", job.job_id, job.tool)
            result, retryable = _failure(exc)
            return JobOutcome(job.claimed, "failed", result, retryable, error=exc, job=job)

    async def _finish(self, outcome: JobOutcome) -> JobOutcome:
        c = outcome.claimed
        try:
            outcome.completion = await self.client.complete(
                c.job_id,
                c.lease_id,
                outcome.status,
                result=outcome.result,
                retryable=outcome.retryable,
                preview=outcome.preview,
            )
        except CountersignError as exc:
            instead = _instead_of_refused(outcome, exc)
            if instead is not None:
                log.error(
                    "the server refused the completion of %s (%s); sending a note", c.job_id, exc
                )
                return await self._finish(instead)
            outcome.completion_error = exc
            log.error("completing %s failed: %s", c.job_id, exc)
        else:
            log.info("completed %s: %s", c.job_id, outcome.completion.state)
        return outcome
