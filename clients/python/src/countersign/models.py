"""Typed results of the API. Every class keeps the server's JSON in ``raw``,
so fields added by a newer server are reachable before this SDK names them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = [
    "FINAL_STATUSES",
    "STATUSES",
    "Approval",
    "Budgets",
    "CheckResult",
    "ClaimedJob",
    "Completion",
    "Decision",
    "Execution",
    "Heartbeat",
    "Preview",
    "Proposal",
    "ProposeResult",
    "Run",
]

#: Statuses after which nothing more happens to a proposal.
FINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "rejected", "expired", "cancelled"}
)
#: Every proposal status of the contract.
STATUSES: frozenset[str] = FINAL_STATUSES | {
    "previewing",
    "pending",
    "approved",
    "queued",
    "running",
}
#: Statuses in which no person has decided yet.
UNDECIDED_STATUSES: frozenset[str] = frozenset({"previewing", "pending"})

JobKind = Literal["execute", "preview"]

_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})?$"
)


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time as an aware ``datetime`` (UTC when no offset is given);
    ``None`` for a missing or unreadable value."""
    if not isinstance(value, str):
        return None
    m = _TIME.match(value.strip())
    if m is None:
        return None
    date, clock, fraction, offset = m.groups()
    text = f"{date}T{clock}"
    if fraction:
        text += "." + fraction[:6].ljust(6, "0")
    if offset is None or offset in ("Z", "z"):
        offset = "+00:00"
    try:
        parsed = datetime.fromisoformat(text + offset)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _str(d: Mapping[str, Any], key: str, default: str = "") -> str:
    value = d.get(key)
    return value if isinstance(value, str) else default


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) else None


def _int(d: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = d.get(key)
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return default


def _float(d: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = d.get(key)
    if isinstance(value, bool):
        return default
    return float(value) if isinstance(value, (int, float)) else default


def _strs(d: Mapping[str, Any], key: str) -> list[str]:
    value = d.get(key)
    if not isinstance(value, list):
        return []
    return [x for x in value if isinstance(x, str)]


def _obj(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Budgets:
    """A run's budgets, from its route."""

    steps: int
    seconds: int
    usd: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Budgets:
        return cls(steps=_int(d, "steps"), seconds=_int(d, "seconds"), usd=_float(d, "usd"))


@dataclass(frozen=True)
class Run:
    """A minted run. ``token`` is the run token: make a client for it with
    ``client.for_run(run)``. It is shown once; do not log it."""

    run_id: str
    token: str = field(repr=False)
    tenant: str
    env: str
    route: str
    expires_at: datetime | None
    allow_tools: list[str]
    require_approval: list[str]
    budgets: Budgets
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Run:
        return cls(
            run_id=_str(d, "run_id"),
            token=_str(d, "token"),
            tenant=_str(d, "tenant"),
            env=_str(d, "env"),
            route=_str(d, "route"),
            expires_at=parse_time(d.get("expires_at")),
            allow_tools=_strs(d, "allow_tools"),
            require_approval=_strs(d, "require_approval"),
            budgets=Budgets.from_json(_obj(d.get("budgets"))),
            raw=_redacted(d),
        )


def _redacted(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    if "token" in out:
        out["token"] = "<redacted>"
    return out


@dataclass(frozen=True)
class CheckResult:
    """The answer of ``check``: ``decision`` is ``allow`` or ``require_approval``."""

    tool: str
    decision: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def allowed(self) -> bool:
        """True when the agent may call the tool itself without a proposal."""
        return self.decision == "allow"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckResult:
        return cls(tool=_str(d, "tool"), decision=_str(d, "decision"), raw=dict(d))


@dataclass(frozen=True)
class Preview:
    """What an action changes. Agents send ``before``/``after``; an executor
    computing a preview also returns ``state``, an opaque precondition
    (a row version, an ETag; at most 200 characters)."""

    before: str
    after: str
    state: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"before": self.before, "after": self.after}
        if self.state is not None:
            out["state"] = self.state
        return out

    @classmethod
    def coerce(cls, value: Preview | Mapping[str, Any]) -> Preview:
        if isinstance(value, Preview):
            return value
        before, after, state = value.get("before"), value.get("after"), value.get("state")
        if not isinstance(before, str) or not isinstance(after, str):
            raise TypeError("a preview needs string 'before' and 'after'")
        if state is not None and not isinstance(state, str):
            raise TypeError("a preview's 'state' must be a string")
        return cls(before=before, after=after, state=state)


@dataclass(frozen=True)
class Approval:
    by: str
    at: datetime | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Approval:
        return cls(by=_str(d, "by") or _str(d, "user"), at=parse_time(d.get("at")))


@dataclass(frozen=True)
class Decision:
    """A reviewer's decision: ``verdict`` is ``approve`` or ``reject``."""

    by: str
    verdict: str
    comment: str
    at: datetime | None
    break_glass: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Decision:
        return cls(
            by=_str(d, "by") or _str(d, "user"),
            verdict=_str(d, "verdict"),
            comment=_str(d, "comment"),
            at=parse_time(d.get("at")),
            break_glass=d.get("break_glass") is True,
        )


@dataclass(frozen=True)
class Execution:
    """What the executor reported: ``status`` is ``queued``, ``held``,
    ``running``, ``succeeded``, ``failed``, ``expired`` or ``cancelled``;
    ``kind`` is ``execute``, or ``preview`` while the executor's dry run is
    the only job."""

    status: str
    attempts: int
    result: Any
    finished_at: datetime | None
    kind: str = "execute"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Execution:
        return cls(
            status=_str(d, "status"),
            attempts=_int(d, "attempts"),
            result=d.get("result"),
            finished_at=parse_time(d.get("finished_at")),
            kind=_str(d, "kind", "execute") or "execute",
        )


@dataclass(frozen=True)
class Proposal:
    """A proposal as the API shows it to the run that made it."""

    id: str
    status: str
    tool: str
    approvals_required: int
    approvals: list[Approval]
    expires_at: datetime | None
    review_url: str
    decisions: list[Decision]
    execution: Execution | None
    tenant: str | None = None
    env: str | None = None
    route: str | None = None
    run_id: str | None = None
    created_at: datetime | None = None
    idempotency_key: str | None = None
    args_hash: str | None = None
    #: Who described the change: ``executor`` (a dry run, by
    #: :attr:`preview_by`), ``agent`` (not checked), or ``None``.
    preview_source: str | None = None
    #: The name of the executor key that computed the preview.
    preview_by: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        """True once nothing more will happen (succeeded, failed, rejected,
        expired, cancelled)."""
        return self.status in FINAL_STATUSES

    @property
    def is_decided(self) -> bool:
        """True once the proposal has left ``previewing`` and ``pending``."""
        return self.status not in UNDECIDED_STATUSES

    @property
    def rejection(self) -> Decision | None:
        """The (last) rejecting decision, if any."""
        rejects = [d for d in self.decisions if d.verdict == "reject"]
        return rejects[-1] if rejects else None

    @property
    def result(self) -> Any:
        """The executor's reported result (``None`` before execution)."""
        return self.execution.result if self.execution else None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Proposal:
        execution = d.get("execution")
        return cls(
            id=_str(d, "id"),
            status=_str(d, "status"),
            tool=_str(d, "tool"),
            approvals_required=_int(d, "approvals_required"),
            approvals=[
                Approval.from_json(a) for a in d.get("approvals") or [] if isinstance(a, Mapping)
            ],
            expires_at=parse_time(d.get("expires_at")),
            review_url=_str(d, "review_url"),
            decisions=[
                Decision.from_json(x) for x in d.get("decisions") or [] if isinstance(x, Mapping)
            ],
            execution=Execution.from_json(execution) if isinstance(execution, Mapping) else None,
            tenant=_opt_str(d, "tenant"),
            env=_opt_str(d, "env"),
            route=_opt_str(d, "route"),
            run_id=_opt_str(d, "run_id"),
            created_at=parse_time(d.get("created_at")),
            idempotency_key=_opt_str(d, "idempotency_key"),
            args_hash=_opt_str(d, "args_hash"),
            preview_source=_opt_str(d, "preview_source"),
            preview_by=_opt_str(d, "preview_by"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class ProposeResult:
    """The answer of ``propose``: the proposal, and whether it is the original
    returned for a repeated idempotency key (``200`` with
    ``Idempotent-Replayed: true``) rather than a new one (``201``)."""

    proposal: Proposal
    replayed: bool


@dataclass(frozen=True)
class ClaimedJob:
    """A job as the claim API hands it out, under the lease ``lease_id``.

    ``args`` here are the queue's copy; an executor that verifies receipts acts
    on the receipt's args instead (the :class:`countersign.Executor` does)."""

    job_id: str
    lease_id: str
    proposal_id: str
    tenant: str
    env: str
    tool: str
    args: dict[str, Any]
    idempotency_key: str | None
    attempt: int
    lease_expires_at: datetime | None
    kind: str = "execute"
    execution_key: str | None = None
    receipt: str | None = field(default=None, repr=False)
    preview_state: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClaimedJob:
        return cls(
            job_id=_str(d, "job_id"),
            lease_id=_str(d, "lease_id"),
            proposal_id=_str(d, "proposal_id"),
            tenant=_str(d, "tenant"),
            env=_str(d, "env"),
            tool=_str(d, "tool"),
            args=_obj(d.get("args")),
            idempotency_key=_opt_str(d, "idempotency_key"),
            attempt=_int(d, "attempt", 1),
            lease_expires_at=parse_time(d.get("lease_expires_at")),
            kind=_str(d, "kind", "execute") or "execute",
            execution_key=_opt_str(d, "execution_key"),
            receipt=_opt_str(d, "receipt"),
            preview_state=_opt_str(d, "preview_state"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Heartbeat:
    """A renewed lease. ``cancel_requested`` is true when the job's run was
    revoked: finish (or abandon) the work; nothing new should start."""

    job_id: str
    lease_id: str
    lease_expires_at: datetime | None
    cancel_requested: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Heartbeat:
        return cls(
            job_id=_str(d, "job_id"),
            lease_id=_str(d, "lease_id"),
            lease_expires_at=parse_time(d.get("lease_expires_at")),
            cancel_requested=d.get("cancel_requested") is True,
            raw=dict(d),
        )


@dataclass(frozen=True)
class Completion:
    """The answer of ``complete``: ``state`` is ``succeeded``, ``failed``, or
    ``queued`` when a retry is scheduled (``next_attempt_at``)."""

    job_id: str
    state: str
    proposal_status: str
    attempt: int
    next_attempt_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Completion:
        return cls(
            job_id=_str(d, "job_id"),
            state=_str(d, "state"),
            proposal_status=_str(d, "proposal_status"),
            attempt=_int(d, "attempt"),
            next_attempt_at=parse_time(d.get("next_attempt_at")),
            raw=dict(d),
        )
