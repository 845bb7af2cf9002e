"""Every error code of docs/api.md maps to its own exception class, carrying code,
message, details and status, in the sync and the async client."""

from __future__ import annotations

import httpx
import pytest

import countersign
from countersign import (
    APIError,
    BadRequest,
    BudgetExhausted,
    CountersignError,
    Disabled,
    Forbidden,
    IdempotencyConflict,
    InvalidArgs,
    InvalidTransition,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SecretInArgs,
    ServerError,
    ToolDenied,
    ToolNotAllowed,
    Unauthenticated,
    UnknownAPIError,
    UnknownRoute,
)
from countersign.errors import error_from_response

CASES: list[tuple[int, str, type[APIError], dict[str, object]]] = [
    (400, "bad_request", BadRequest, {}),
    (401, "unauthenticated", Unauthenticated, {}),
    (403, "tool_denied", ToolDenied, {"tool": "db.write", "route": "support/send"}),
    (403, "tool_not_allowed", ToolNotAllowed, {"tool": "web.search", "route": "support/send"}),
    (403, "forbidden", Forbidden, {}),
    (404, "not_found", NotFound, {}),
    (409, "idempotency_conflict", IdempotencyConflict, {"existing_proposal": "prp_1"}),
    (409, "invalid_transition", InvalidTransition, {}),
    (413, "payload_too_large", PayloadTooLarge, {"limit_bytes": 65536}),
    (422, "invalid_args", InvalidArgs, {"fields": {"ticket_id": "must match ^T-[0-9]+$"}}),
    (422, "secret_in_args", SecretInArgs, {"field": "args.note", "kind": "AWS access key"}),
    (422, "unknown_route", UnknownRoute, {}),
    (423, "disabled", Disabled, {"switch": "tool ticket.close"}),
    (429, "budget_exhausted", BudgetExhausted, {"budget": "steps"}),
    (429, "rate_limited", RateLimited, {"retry_after_seconds": 30}),
]


def _answer(status: int, code: str, details: dict[str, object]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"error": {"code": code, "message": f"the {code} message", "details": details}},
            headers={"x-request-id": "req-123"},
        )

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(("status", "code", "cls", "details"), CASES)
def test_every_code_has_its_class(
    status: int, code: str, cls: type[APIError], details: dict[str, object]
) -> None:
    with (
        countersign.Client(
            "http://cs.test", "tok", transport=_answer(status, code, details)
        ) as client,
        pytest.raises(cls) as info,
    ):
        client.check("kb.search")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, CountersignError)
    assert err.code == code
    assert err.status == status
    assert err.message == f"the {code} message"
    assert str(err) == f"the {code} message"
    assert err.details == details
    assert err.request_id == "req-123"
    assert code == cls.CODE


@pytest.mark.parametrize(("status", "code", "cls", "details"), CASES)
async def test_every_code_has_its_class_async(
    status: int, code: str, cls: type[APIError], details: dict[str, object]
) -> None:
    async with countersign.AsyncClient(
        "http://cs.test", "tok", transport=_answer(status, code, details)
    ) as client:
        with pytest.raises(cls) as info:
            await client.check("kb.search")
    assert info.value.code == code
    assert info.value.status == status


def test_all_api_codes_are_distinct_classes() -> None:
    classes = {cls for _, _, cls, _ in CASES}
    assert len(classes) == len(CASES)


def test_detail_accessors() -> None:
    e = error_from_response(
        422,
        {"error": {"code": "invalid_args", "message": "m", "details": {"fields": {"a": "bad"}}}},
    )
    assert isinstance(e, InvalidArgs)
    assert e.fields == {"a": "bad"}
    c = error_from_response(
        409,
        {
            "error": {
                "code": "idempotency_conflict",
                "message": "m",
                "details": {"existing_proposal": "prp_9"},
            }
        },
    )
    assert isinstance(c, IdempotencyConflict)
    assert c.existing_proposal == "prp_9"
    d = error_from_response(
        423, {"error": {"code": "disabled", "message": "m", "details": {"switch": "global"}}}
    )
    assert isinstance(d, Disabled)
    assert d.switch == "global"
    b = error_from_response(
        429, {"error": {"code": "budget_exhausted", "message": "m", "details": {"budget": "usd"}}}
    )
    assert isinstance(b, BudgetExhausted)
    assert b.budget == "usd"
    r = error_from_response(
        429,
        {"error": {"code": "rate_limited", "message": "m", "details": {"retry_after_seconds": 7}}},
    )
    assert isinstance(r, RateLimited)
    assert r.retry_after_seconds == 7.0
    s = error_from_response(
        422,
        {
            "error": {
                "code": "secret_in_args",
                "message": "m",
                "details": {"field": "args.x", "kind": "AWS access key"},
            }
        },
    )
    assert isinstance(s, SecretInArgs)
    assert s.field == "args.x"
    assert s.kind == "AWS access key"
    for code, cls in (("tool_denied", ToolDenied), ("tool_not_allowed", ToolNotAllowed)):
        t = error_from_response(
            403,
            {
                "error": {
                    "code": code,
                    "message": "m",
                    "details": {"tool": "db.write", "route": "support/send"},
                }
            },
        )
        assert isinstance(t, cls)
        assert t.tool == "db.write"
        assert t.route == "support/send"
    bare = error_from_response(403, {"error": {"code": "tool_denied", "message": "m"}})
    assert isinstance(bare, ToolDenied)
    assert bare.tool is None
    assert bare.route is None


def test_unknown_code_falls_back_and_keeps_the_code() -> None:
    e = error_from_response(
        418, {"error": {"code": "teapot", "message": "short and stout", "details": {"x": 1}}}
    )
    assert type(e) is UnknownAPIError
    assert e.code == "teapot"
    assert e.status == 418
    assert e.details == {"x": 1}
    assert str(e) == "short and stout"


def test_bodies_that_are_not_the_error_shape() -> None:
    e = error_from_response(502, None, text="<html>Bad gateway</html>")
    assert isinstance(e, ServerError)
    assert e.status == 502
    assert "Bad gateway" in e.message
    t = error_from_response(413, None, text="too big")
    assert isinstance(t, PayloadTooLarge)
    assert t.code == "payload_too_large"
    f = error_from_response(403, "cross-origin request refused")
    assert isinstance(f, Forbidden)
    u = error_from_response(418, None)
    assert type(u) is UnknownAPIError
    assert u.code == "http_418"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (409, InvalidTransition),
        (422, InvalidArgs),
        (423, Disabled),
        (429, RateLimited),
    ],
)
def test_bare_bodies_of_the_other_statuses(status: int, cls: type[APIError]) -> None:
    """A proxy's or a load balancer's answer, without the API's error shape."""
    e = error_from_response(status, None, text="<html>nope</html>")
    assert type(e) is cls
    assert e.status == status
    assert e.code == cls.CODE
    assert "nope" in e.message


def test_a_bare_429_keeps_its_retry_after_header() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text="slow down", headers={"Retry-After": "7"})

    with (
        countersign.Client("http://cs.test", "tok", transport=httpx.MockTransport(handler)) as c,
        pytest.raises(RateLimited) as info,
    ):
        c.check("kb.search")
    assert info.value.retry_after_seconds == 7.0
    assert info.value.status == 429
    without = error_from_response(429, None)
    assert isinstance(without, RateLimited)
    assert without.retry_after_seconds is None


def test_internal_code_is_server_error() -> None:
    e = error_from_response(
        500, {"error": {"code": "internal", "message": "internal error", "details": {}}}
    )
    assert isinstance(e, ServerError)
    assert e.code == "internal"


def test_repr_names_code_and_status() -> None:
    e = error_from_response(404, {"error": {"code": "not_found", "message": "not found"}})
    assert repr(e) == "NotFound(code='not_found', status=404, message='not found')"
