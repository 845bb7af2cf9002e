"""Exceptions. Every one is a :class:`CountersignError`.

The server answers every error as ``{"error": {"code", "message", "details"}}``;
each ``code`` of the API contract has its own class here, so callers can write
``except countersign.ToolDenied``. A code this version does not know becomes an
:class:`UnknownAPIError`, which still carries the code.

The gate's outcomes (:class:`ProposalRejected` and friends) are also
exceptions; their ``str()`` is a short sentence meant to be shown to a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .models import Proposal

__all__ = [
    "APIError",
    "ApprovalTimeout",
    "BadRequest",
    "BudgetExhausted",
    "CountersignError",
    "Disabled",
    "ExecutionFailed",
    "Forbidden",
    "GateError",
    "IdempotencyConflict",
    "InvalidArgs",
    "InvalidTransition",
    "NotFound",
    "PayloadTooLarge",
    "ProposalCancelled",
    "ProposalExpired",
    "ProposalRejected",
    "RateLimited",
    "ReceiptError",
    "SecretInArgs",
    "ServerError",
    "ToolDenied",
    "ToolNotAllowed",
    "TransportError",
    "Unauthenticated",
    "UnknownAPIError",
    "UnknownRoute",
    "error_from_response",
]


class CountersignError(Exception):
    """Base of every exception this package raises.

    ``code`` is the server's snake_case error code (or one of this package's
    own, such as ``"transport_error"`` or ``"rejected"``), ``message`` a
    sentence for people, ``details`` the server's ``details`` object, and
    ``status`` the HTTP status (``None`` when no response was received).
    """

    code: str
    message: str
    details: dict[str, Any]
    status: int | None
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


# --------------------------------------------------------------- API errors


class APIError(CountersignError):
    """The server answered with an error status."""

    #: The code this class stands for (``None`` on the catch-all classes).
    CODE: ClassVar[str | None] = None


class BadRequest(APIError):
    """400: malformed JSON, an unknown field, a wrong type, a value out of range."""

    CODE = "bad_request"


class Unauthenticated(APIError):
    """401: missing, malformed, tampered, revoked or expired credential."""

    CODE = "unauthenticated"


class _ToolRefusal(APIError):
    """A refusal by the route's policy; ``details`` name the tool and route."""

    @property
    def tool(self) -> str | None:
        """The tool that was refused (``details.tool``)."""
        value = self.details.get("tool")
        return value if isinstance(value, str) else None

    @property
    def route(self) -> str | None:
        """The run's route that refused it (``details.route``)."""
        value = self.details.get("route")
        return value if isinstance(value, str) else None


class ToolDenied(_ToolRefusal):
    """403: the tool is in the route's ``deny_tools``."""

    CODE = "tool_denied"


class ToolNotAllowed(_ToolRefusal):
    """403: the tool is not in the route's ``allow_tools``."""

    CODE = "tool_not_allowed"


class Forbidden(APIError):
    """403: the credential is valid but may not do this."""

    CODE = "forbidden"


class NotFound(APIError):
    """404: no such object visible to this credential."""

    CODE = "not_found"


class IdempotencyConflict(APIError):
    """409: the idempotency key was used with a different tool or args."""

    CODE = "idempotency_conflict"

    @property
    def existing_proposal(self) -> str | None:
        value = self.details.get("existing_proposal")
        return value if isinstance(value, str) else None


class InvalidTransition(APIError):
    """409: e.g. completing a job whose lease is no longer held."""

    CODE = "invalid_transition"


class PayloadTooLarge(APIError):
    """413: the body is over the server's limit (64 KiB)."""

    CODE = "payload_too_large"


class InvalidArgs(APIError):
    """422: the args fail the tool's schema; :attr:`fields` maps field to problem."""

    CODE = "invalid_args"

    @property
    def fields(self) -> dict[str, str]:
        raw = self.details.get("fields")
        if not isinstance(raw, Mapping):
            return {}
        return {str(k): str(v) for k, v in raw.items()}


class SecretInArgs(APIError):
    """422: an arg looks like a secret; the value is never echoed."""

    CODE = "secret_in_args"

    @property
    def field(self) -> str | None:
        """Where the secret was found, e.g. ``"args.note"`` or ``"result.token"``."""
        value = self.details.get("field")
        return value if isinstance(value, str) else None

    @property
    def kind(self) -> str | None:
        """What it looked like, e.g. ``"AWS access key"`` (never the value)."""
        value = self.details.get("kind")
        return value if isinstance(value, str) else None


class UnknownRoute(APIError):
    """422: minting a run for a route the policy does not have."""

    CODE = "unknown_route"


class Disabled(APIError):
    """423: a kill switch covers this tool, tenant or route."""

    CODE = "disabled"

    @property
    def switch(self) -> str | None:
        value = self.details.get("switch")
        return value if isinstance(value, str) else None


class BudgetExhausted(APIError):
    """429: the run's steps, seconds or usd are used up; :attr:`budget` says which."""

    CODE = "budget_exhausted"

    @property
    def budget(self) -> str | None:
        value = self.details.get("budget")
        return value if isinstance(value, str) else None


class RateLimited(APIError):
    """429: too many at once from this holder (more than 16 long polls of one
    run or executor key); ``retry_after_seconds`` says when to try again."""

    CODE = "rate_limited"

    @property
    def retry_after_seconds(self) -> float | None:
        value = self.details.get("retry_after_seconds")
        return float(value) if isinstance(value, (int, float)) else None


class ServerError(APIError):
    """5xx (after the retries ran out), or the server's ``internal`` code."""

    CODE = "internal"


class UnknownAPIError(APIError):
    """An error code this version of the SDK does not know; see ``code``."""


_BY_CODE: dict[str, type[APIError]] = {
    cls.CODE: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        ToolDenied,
        ToolNotAllowed,
        Forbidden,
        NotFound,
        IdempotencyConflict,
        InvalidTransition,
        PayloadTooLarge,
        InvalidArgs,
        SecretInArgs,
        UnknownRoute,
        Disabled,
        BudgetExhausted,
        RateLimited,
        ServerError,
    )
    if cls.CODE is not None
}

# What a status means when the body is not the API's error shape (a proxy's
# page, an empty body): the most general class of that status. A bare 409 is
# a conflict with the object's state, a bare 422 a request the server could
# not take as it is, a bare 429 a limit (its Retry-After header kept).
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: InvalidTransition,
    413: PayloadTooLarge,
    422: InvalidArgs,
    423: Disabled,
    429: RateLimited,
}


def error_from_response(
    status: int,
    body: Any,
    *,
    request_id: str | None = None,
    text: str = "",
    retry_after: float | None = None,
) -> APIError:
    """The exception for an error response: by ``code``, else by status.

    ``retry_after`` is the response's ``Retry-After`` header in seconds; a
    bare 429 carries it as ``details.retry_after_seconds``."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(err, Mapping) and isinstance(err.get("code"), str):
        code = str(err["code"])
        message = err.get("message")
        details = err.get("details")
        cls = _BY_CODE.get(code, UnknownAPIError)
        return cls(
            message if isinstance(message, str) and message else code,
            code=code,
            details=details if isinstance(details, Mapping) else {},
            status=status,
            request_id=request_id,
        )
    snippet = " ".join(text.split())[:200]
    message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if status >= 500:
        return ServerError(message, code="internal", status=status, request_id=request_id)
    cls = _BY_STATUS.get(status, UnknownAPIError)
    code = cls.CODE or f"http_{status}"
    extra: dict[str, Any] = {}
    if cls is RateLimited and retry_after is not None:
        extra["retry_after_seconds"] = retry_after
    return cls(message, code=code, details=extra, status=status, request_id=request_id)


class TransportError(CountersignError):
    """No answer from the server (connection refused, reset, timed out) after
    the retries ran out. The underlying ``httpx`` exception is ``__cause__``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="transport_error")


class ReceiptError(CountersignError):
    """An approval receipt failed verification; ``code`` names the reason
    (``receipt_missing``, ``receipt_malformed``, ``receipt_unknown_key``,
    ``receipt_bad_signature``, ``receipt_expired``, ``receipt_mismatch``,
    ``jwks_unavailable``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


# ------------------------------------------------------------ gate outcomes


class GateError(CountersignError):
    """A gated call did not produce a result. ``proposal`` is the last state
    seen; ``str()`` is a short sentence an agent framework can show a model."""

    proposal: Proposal

    def __init__(self, message: str, *, code: str, proposal: Proposal) -> None:
        super().__init__(message, code=code)
        self.proposal = proposal


class ProposalRejected(GateError):
    """A reviewer rejected the proposal: ``"Rejected by sam: wrong customer"``."""

    def __init__(self, proposal: Proposal) -> None:
        decision = proposal.rejection
        if decision is None:
            message = f"Rejected: {proposal.tool} was not approved"
        elif decision.comment:
            message = f"Rejected by {decision.by}: {decision.comment}"
        else:
            message = f"Rejected by {decision.by}"
        super().__init__(message, code="rejected", proposal=proposal)
        self.by = decision.by if decision else None
        self.comment = decision.comment if decision else ""


class ProposalExpired(GateError):
    """Nobody decided in time, or the approved action was not run in time."""

    def __init__(self, proposal: Proposal) -> None:
        super().__init__(
            f"Expired: {proposal.tool} was not approved and run in time",
            code="expired",
            proposal=proposal,
        )


class ProposalCancelled(GateError):
    """The proposal was cancelled (by its run, or because the run was revoked)."""

    def __init__(self, proposal: Proposal) -> None:
        super().__init__(
            f"Cancelled: {proposal.tool} will not run", code="cancelled", proposal=proposal
        )


class ExecutionFailed(GateError):
    """The action was approved but the executor reported ``failed``;
    :attr:`result` is what it reported."""

    def __init__(self, proposal: Proposal) -> None:
        result = proposal.execution.result if proposal.execution else None
        super().__init__(
            f"{proposal.tool} failed: {_describe(result)}",
            code="execution_failed",
            proposal=proposal,
        )
        self.result = result


class ApprovalTimeout(GateError):
    """The caller's deadline passed before the proposal reached an outcome.
    Calling again with the same args resumes waiting on the same proposal
    (the idempotency key is the same)."""

    def __init__(self, proposal: Proposal) -> None:
        super().__init__(
            f"Still {proposal.status}: {proposal.tool} has no outcome yet ({proposal.id}); "
            "ask again later",
            code="approval_timeout",
            proposal=proposal,
        )


def _describe(result: Any) -> str:
    if isinstance(result, Mapping):
        for key in ("message", "error", "reason", "code"):
            value = result.get(key)
            if isinstance(value, str) and value:
                return value
    if result is None:
        return "no details"
    text = str(result)
    return text if len(text) <= 200 else text[:197] + "..."
