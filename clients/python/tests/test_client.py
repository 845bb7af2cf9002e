"""The clients against the in-memory API: request shapes, typed results,
retries (5xx and connection errors only, same idempotency key), timeouts and
the wait loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

import countersign
from countersign import (
    AsyncClient,
    BadRequest,
    Client,
    IdempotencyConflict,
    InvalidTransition,
    NotFound,
    Preview,
    RetryPolicy,
    ServerError,
    ToolDenied,
    TransportError,
    Unauthenticated,
)
from countersign._http import timeout_for
from fakeserver import EXECUTOR_KEY, FAST_RETRY, SERVICE_KEY, FakeServer, error

ARGS = {"ticket_id": "T-18421", "reason": "Issue resolved"}


def test_mint_run_and_client_for_the_run(fake: FakeServer, service: Client) -> None:
    run = service.mint_run("support/send", ttl_seconds=120, on_behalf_of="alice")
    assert run.route == "support/send"
    assert run.tenant == "acme"
    assert run.env == "prod"
    assert run.token.startswith("rt_")
    assert run.token not in repr(run)
    assert run.raw["token"] == "<redacted>"
    assert run.budgets.steps == 25
    assert run.expires_at is not None
    assert run.expires_at.tzinfo is not None
    assert "ticket.close" in run.require_approval
    sent = fake.calls("POST", "/api/v1/runs")[0]
    assert sent.body == {"route": "support/send", "ttl_seconds": 120, "on_behalf_of": "alice"}
    assert sent.headers["authorization"] == f"Bearer {SERVICE_KEY}"
    assert sent.headers["user-agent"].startswith("countersign-python/")

    agent = service.for_run(run)
    assert agent.check("kb.search").allowed
    assert fake.seen[-1].headers["authorization"] == f"Bearer {run.token}"
    agent.close()  # shares the pool: closing it leaves the service client usable
    assert service.mint_run("research").route == "research"


def test_mint_run_sends_only_what_is_given(fake: FakeServer, service: Client) -> None:
    service.mint_run("support/draft")
    assert fake.calls("POST", "/api/v1/runs")[0].body == {"route": "support/draft"}


def test_check(agent: Client) -> None:
    assert agent.check("kb.search").decision == "allow"
    r = agent.check("ticket.close")
    assert r.decision == "require_approval"
    assert not r.allowed
    with pytest.raises(ToolDenied):
        agent.check("db.write")


def test_propose_new_then_replayed(fake: FakeServer, agent: Client) -> None:
    first = agent.propose(
        "ticket.close",
        ARGS,
        idempotency_key="req_1:ticket.close:T-18421",
        reason="Customer confirmed the fix",
        preview=Preview(before="status: open", after="status: closed"),
    )
    assert not first.replayed
    assert first.proposal.status == "pending"
    assert first.proposal.id.startswith("prp_")
    assert first.proposal.review_url.endswith(first.proposal.id)
    body = fake.calls("POST", "/api/v1/proposals")[0].body
    assert body == {
        "tool": "ticket.close",
        "args": ARGS,
        "idempotency_key": "req_1:ticket.close:T-18421",
        "reason": "Customer confirmed the fix",
        "preview": {"before": "status: open", "after": "status: closed"},
    }
    again = agent.propose("ticket.close", ARGS, idempotency_key="req_1:ticket.close:T-18421")
    assert again.replayed
    assert again.proposal.id == first.proposal.id
    with pytest.raises(IdempotencyConflict) as info:
        agent.propose("ticket.close", {**ARGS, "reason": "other"}, "req_1:ticket.close:T-18421")
    assert info.value.existing_proposal == first.proposal.id


def test_replayed_is_read_from_the_header_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201, json={"id": "prp_1", "status": "pending"}, headers={"Idempotent-Replayed": "true"}
        )

    with Client("http://cs.test", "t", transport=httpx.MockTransport(handler)) as c:
        assert c.propose("ticket.close", ARGS, "k").replayed


def test_preview_from_a_mapping_and_no_optional_fields(fake: FakeServer, agent: Client) -> None:
    agent.propose("ticket.close", ARGS, "k1", preview={"before": "a", "after": "b"})
    agent.propose("ticket.close", {"ticket_id": "T-2", "reason": "r"}, "k2")
    bodies = [s.body for s in fake.calls("POST", "/api/v1/proposals")]
    assert bodies[0]["preview"] == {"before": "a", "after": "b"}
    assert set(bodies[1]) == {"tool", "args", "idempotency_key"}
    with pytest.raises(TypeError):
        agent.propose("ticket.close", ARGS, "k3", preview={"before": 1})


def test_get_cancel_and_typed_fields(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "k").proposal
    fake.approve(p.id, by="alice")
    got = agent.get(p.id)
    assert got.status == "queued"
    assert [a.by for a in got.approvals] == ["alice"]
    assert got.decisions[0].verdict == "approve"
    assert got.execution is not None
    assert got.execution.status == "queued"
    assert got.is_decided
    assert not got.is_final
    with pytest.raises(InvalidTransition):
        agent.cancel(p.id)
    q = agent.propose("ticket.close", {"ticket_id": "T-3", "reason": "r"}, "k-other").proposal
    cancelled = agent.cancel(q.id)
    assert cancelled.status == "cancelled"
    assert cancelled.is_final
    with pytest.raises(NotFound):
        agent.get("prp_nope")


def test_ids_are_escaped_in_paths(fake: FakeServer, agent: Client) -> None:
    with pytest.raises(NotFound):
        agent.get("a/b?c")
    assert fake.seen[-1].raw_path == "/api/v1/proposals/a%2Fb%3Fc"
    with pytest.raises(ValueError):
        agent.get("")


def test_claim_heartbeat_complete(fake: FakeServer, agent: Client, executor_client: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "k").proposal
    fake.approve(p.id)
    jobs = executor_client.claim(tools=["ticket.close"], max=5, lease_seconds=30, wait_seconds=2)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.proposal_id == p.id
    assert job.kind == "execute"
    assert job.attempt == 1
    assert job.execution_key == f"exk_{p.id}"
    assert job.receipt
    assert job.receipt.count(".") == 2
    assert fake.calls("POST", "/api/v1/jobs/claim")[0].body == {
        "tools": ["ticket.close"],
        "max": 5,
        "lease_seconds": 30,
        "wait_seconds": 2,
    }
    beat = executor_client.heartbeat(job.job_id, job.lease_id, lease_seconds=30)
    assert beat.lease_id == job.lease_id
    assert not beat.cancel_requested
    done = executor_client.complete(job.job_id, job.lease_id, "succeeded", {"closed": True})
    assert done.state == "succeeded"
    assert done.proposal_status == "succeeded"
    sent = fake.calls("POST", r"/api/v1/jobs/.+/complete")[0].body
    assert sent == {
        "lease_id": job.lease_id,
        "status": "succeeded",
        "result": {"closed": True},
        "retryable": False,
    }
    # Completing twice with the same body is answered alike.
    assert executor_client.complete(job.job_id, job.lease_id, "succeeded", {"closed": True}).state
    with pytest.raises(InvalidTransition):
        executor_client.complete(job.job_id, job.lease_id, "failed", {"x": 1})
    with pytest.raises(InvalidTransition):
        executor_client.heartbeat(job.job_id, job.lease_id)
    assert agent.get(p.id).result == {"closed": True}


def test_claim_sends_kinds_only_when_given(fake: FakeServer, executor_client: Client) -> None:
    executor_client.claim()
    executor_client.claim(kinds=["preview", "execute"])
    bodies = [s.body for s in fake.calls("POST", "/api/v1/jobs/claim")]
    assert bodies[0] == {"max": 1, "lease_seconds": 60, "wait_seconds": 0}
    assert bodies[1]["kinds"] == ["preview", "execute"]
    with pytest.raises(TypeError):
        executor_client.claim(tools="ticket.close")
    with pytest.raises(BadRequest):
        executor_client.claim(max=0)


def test_complete_with_a_preview(executor_client: Client, fake: FakeServer) -> None:
    fake.executor_preview = ("ticket.close",)
    token = fake.run_token()
    with fake.client(token) as agent:
        p = agent.propose("ticket.close", ARGS, "kp").proposal
    assert p.status == "previewing"
    [job] = executor_client.claim(kinds=["preview", "execute"])
    assert job.kind == "preview"
    assert job.receipt is None
    executor_client.complete(
        job.job_id, job.lease_id, "succeeded", preview=Preview("open", "closed", state="v7")
    )
    body = fake.calls("POST", r"/api/v1/jobs/.+/complete")[0].body
    assert body == {
        "lease_id": job.lease_id,
        "status": "succeeded",
        "retryable": False,
        "preview": {"before": "open", "after": "closed", "state": "v7"},
    }
    with pytest.raises(ValueError):
        executor_client.complete(job.job_id, job.lease_id, "done")  # type: ignore[arg-type]


def test_complete_refuses_a_preview_the_server_would_refuse(
    fake: FakeServer, executor_client: Client
) -> None:
    """The server answers 400 for a preview without state (or with a failed
    status); the client says why before sending anything."""
    before = len(fake.seen)
    with pytest.raises(ValueError, match=r"preview\.state"):
        executor_client.complete("job_1", "lse_1", "succeeded", preview=Preview("open", "closed"))
    with pytest.raises(ValueError, match=r"preview\.state"):
        executor_client.complete(
            "job_1", "lse_1", "succeeded", preview={"before": "open", "after": "closed"}
        )
    with pytest.raises(ValueError, match="failed preview"):
        executor_client.complete(
            "job_1", "lse_1", "failed", {"why": "x"}, preview=Preview("a", "b", "v1")
        )
    assert len(fake.seen) == before  # nothing was sent


async def test_async_complete_refuses_a_preview_without_state(fake: FakeServer) -> None:
    async with fake.async_client(EXECUTOR_KEY) as ex:
        with pytest.raises(ValueError, match=r"preview\.state"):
            await ex.complete("job_1", "lse_1", "succeeded", preview=Preview("a", "b"))
    assert fake.seen == []


def test_wrong_credential_kinds(fake: FakeServer, service: Client) -> None:
    with pytest.raises(countersign.Forbidden):
        service.check("kb.search")
    with fake.client("rt_forged") as forged, pytest.raises(Unauthenticated):
        forged.check("kb.search")
    with fake.client() as anonymous, pytest.raises(ValueError):
        anonymous.check("kb.search")


def test_jwks_needs_no_credential(fake: FakeServer) -> None:
    with fake.client() as anonymous:
        keys = anonymous.jwks()
    assert keys["keys"][0]["kty"] == "OKP"
    assert "authorization" not in fake.seen[-1].headers


# ------------------------------------------------------------------ retries


def test_5xx_is_retried_with_the_same_idempotency_key(fake: FakeServer, agent: Client) -> None:
    fake.fail("POST", "/api/v1/proposals", lambda r: httpx.Response(503, text="busy"), times=2)
    res = agent.propose("ticket.close", ARGS, idempotency_key="same-key")
    assert not res.replayed
    sent = fake.calls("POST", "/api/v1/proposals")
    assert len(sent) == 3
    assert {s.body["idempotency_key"] for s in sent} == {"same-key"}
    assert all(s.body == sent[0].body for s in sent)


def test_connection_errors_are_retried(fake: FakeServer, agent: Client) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake.fail("POST", "/api/v1/proposals", refuse, times=1)
    fake.fail(
        "POST",
        "/api/v1/proposals",
        lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)),
        times=1,
    )
    assert agent.propose("ticket.close", ARGS, idempotency_key="k-conn").proposal.id
    sent = fake.calls("POST", "/api/v1/proposals")
    assert len(sent) == 3
    assert {s.body["idempotency_key"] for s in sent} == {"k-conn"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 423, 429])
def test_4xx_is_never_retried(fake: FakeServer, agent: Client, status: int) -> None:
    fake.fail(
        "POST",
        "/api/v1/proposals",
        lambda r: httpx.Response(status, json={"error": {"code": "x", "message": "no"}}),
        times=5,
    )
    with pytest.raises(countersign.APIError) as info:
        agent.propose("ticket.close", ARGS, "k4")
    assert info.value.status == status
    assert len(fake.calls("POST", "/api/v1/proposals")) == 1


def test_retries_run_out(fake: FakeServer, agent: Client) -> None:
    fake.fail("GET", "/api/v1/proposals/.+", lambda r: httpx.Response(500), times=10)
    with pytest.raises(ServerError) as info:
        agent.get("prp_1")
    assert info.value.status == 500
    assert len(fake.calls("GET", "/api/v1/proposals/.+")) == 1 + FAST_RETRY.max_retries

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    fake.fail("POST", "/api/v1/check", refuse, times=10)
    with pytest.raises(TransportError) as t:
        agent.check("kb.search")
    assert isinstance(t.value.__cause__, httpx.ConnectError)
    assert t.value.status is None
    assert t.value.code == "transport_error"


def test_no_retries_policy(fake: FakeServer) -> None:
    fake.fail("POST", "/api/v1/check", lambda r: httpx.Response(503), times=10)
    c = fake.client(fake.run_token(), retry=RetryPolicy(max_retries=0))
    with c, pytest.raises(ServerError):
        c.check("kb.search")
    assert len(fake.calls("POST", "/api/v1/check")) == 1


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after() -> None:
    import random

    policy = RetryPolicy(max_retries=5, initial_backoff=1.0, max_backoff=8.0)
    rng = random.Random(7)
    for n, ceiling in enumerate([1.0, 2.0, 4.0, 8.0, 8.0]):
        delays = {policy.delay(n, rng) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(0, rng, retry_after=5.0) == 5.0
    assert policy.delay(0, rng, retry_after=100.0) == 8.0
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


async def test_async_retries_with_the_same_key(fake: FakeServer) -> None:
    fake.fail("POST", "/api/v1/proposals", lambda r: httpx.Response(502), times=1)

    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("reset", request=request)

    fake.fail("POST", "/api/v1/proposals", reset, times=1)
    async with fake.async_client(fake.run_token()) as agent:
        res = await agent.propose("ticket.close", ARGS, idempotency_key="async-key")
        assert res.proposal.status == "pending"
    sent = fake.calls("POST", "/api/v1/proposals")
    assert len(sent) == 3
    assert {s.body["idempotency_key"] for s in sent} == {"async-key"}


# ----------------------------------------------------------------- timeouts


def test_timeouts_are_set_and_long_polls_get_room(fake: FakeServer) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        if request.url.path.endswith("/wait"):
            return httpx.Response(200, json={"id": "prp_1", "status": "succeeded"})
        return httpx.Response(200, json={"jobs": []})

    with Client("http://cs.test", "t", timeout=3.0, transport=httpx.MockTransport(handler)) as c:
        c.claim(wait_seconds=20)
        c.wait("prp_1", timeout=45)
        c.claim()
    assert seen[0]["read"] == 30.0  # 20 s of long poll + 10 s margin
    assert seen[0]["connect"] == 3.0
    assert seen[1]["read"] == 55.0  # 45 s wait + margin
    assert seen[2]["read"] == 3.0
    t = timeout_for(httpx.Timeout(100.0), 5)
    assert t.read == 100.0


def test_a_server_that_hangs_times_out(fake: FakeServer) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    fake.fail("POST", "/api/v1/check", slow, times=10)
    c = fake.client(fake.run_token(), retry=RetryPolicy(1, 0.001, 0.001))
    with c, pytest.raises(TransportError, match="no answer"):
        c.check("kb.search")
    assert len(fake.calls("POST", "/api/v1/check")) == 2


def test_real_socket_timeout() -> None:
    import socket

    # A listening socket that never answers: the read timeout must fire.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        started = time.monotonic()
        with (
            Client(f"http://127.0.0.1:{port}", "t", timeout=0.3, retry=RetryPolicy(0)) as c,
            pytest.raises(TransportError),
        ):
            c.check("kb.search")
        assert time.monotonic() - started < 5


# --------------------------------------------------------------- wait loop


def test_wait_long_polls_until_a_final_status(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "kw").proposal
    polls = []

    def on_wait(prop: dict[str, Any]) -> None:
        polls.append(prop["status"])
        if len(polls) == 2:
            fake.approve(prop["id"])

    fake.on_wait = on_wait
    done = threading.Event()

    def executor() -> None:
        # runs the job once it is queued, as an executor elsewhere would
        with fake.client(EXECUTOR_KEY) as ex:
            while not done.is_set():
                for job in ex.claim(tools=["ticket.close"]):
                    ex.complete(job.job_id, job.lease_id, "succeeded", {"ok": 1})
                    return
                time.sleep(0.01)

    t = threading.Thread(target=executor)
    t.start()
    try:
        final = agent.wait(p.id, timeout=30)
    finally:
        done.set()
        t.join()
    assert final.status == "succeeded"
    assert final.result == {"ok": 1}
    waits = fake.calls("GET", r"/api/v1/proposals/.+/wait")
    assert len(waits) == 2
    assert all(1 <= int(w.params["timeout_seconds"]) <= 60 for w in waits)
    assert waits[0].params["timeout_seconds"] == "30"


def test_wait_caps_each_poll_at_60_seconds(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "kw60").proposal
    fake.on_wait = lambda prop: fake.reject(prop["id"])
    final = agent.wait(p.id, timeout=600)
    assert final.status == "rejected"
    assert fake.calls("GET", r"/api/v1/proposals/.+/wait")[0].params["timeout_seconds"] == "60"


def test_wait_until_decided_returns_once_approved(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "kd").proposal
    fake.on_wait = lambda prop: fake.approve(prop["id"]) if prop["status"] == "pending" else None
    got = agent.wait(p.id, timeout=10, until="decided")
    assert got.status == "queued"
    with pytest.raises(ValueError):
        agent.wait(p.id, until="soon")  # type: ignore[arg-type]


def test_wait_returns_at_the_callers_deadline(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "kt").proposal
    started = time.monotonic()
    got = agent.wait(p.id, timeout=1.5)
    elapsed = time.monotonic() - started
    assert got.status == "pending"
    assert not got.is_final
    assert elapsed < 3.0
    # The fake answers at once, so the loop polled repeatedly until the deadline.
    assert len(fake.calls("GET", r"/api/v1/proposals/.+/wait")) >= 1


def test_wait_polls_with_pauses_while_queued(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "kq").proposal
    fake.approve(p.id)
    started = time.monotonic()
    got = agent.wait(p.id, timeout=1.0)
    assert got.status == "queued"
    reads = fake.calls("GET", rf"/api/v1/proposals/{p.id}")
    # pauses of 0.25, 0.5, ... : a handful of reads in a second, not hundreds
    assert 1 <= len(reads) <= 6
    assert time.monotonic() - started < 2.5


def test_wait_long_polls_while_previewing(fake: FakeServer, agent: Client) -> None:
    """The server's wait holds while the proposal is previewing, as while
    pending: the loop long-polls then too, rather than reading in a loop."""
    fake.executor_preview = ("ticket.close",)
    p = agent.propose("ticket.close", ARGS, "kpv").proposal
    assert p.status == "previewing"
    got = agent.wait(p.id, timeout=1.2, until="decided")
    assert got.status == "previewing"
    reads = [s.path for s in fake.seen if s.method == "GET"]
    assert reads[:3] == [f"/api/v1/proposals/{p.id}/wait"] * 3


def test_wait_backs_off_when_rate_limited(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "krl").proposal
    fake.fail(
        "GET",
        r"/api/v1/proposals/.+/wait",
        lambda r: error(429, "rate_limited", "too many long polls", retry_after_seconds=0.2),
    )
    fake.on_wait = lambda prop: fake.reject(prop["id"])
    started = time.monotonic()
    got = agent.wait(p.id, timeout=10)
    assert got.status == "rejected"
    assert time.monotonic() - started >= 0.2
    assert len(fake.calls("GET", r"/api/v1/proposals/.+/wait")) == 2


async def test_async_wait_backs_off_when_rate_limited(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent:
        p = (await agent.propose("ticket.close", ARGS, "karl")).proposal
        fake.fail(
            "GET",
            r"/api/v1/proposals/.+/wait",
            lambda r: error(429, "rate_limited", "too many", retry_after_seconds=0.1),
        )
        fake.on_wait = lambda prop: fake.reject(prop["id"])
        assert (await agent.wait(p.id, timeout=10)).status == "rejected"


def test_wait_zero_timeout_reads_once(fake: FakeServer, agent: Client) -> None:
    p = agent.propose("ticket.close", ARGS, "k0").proposal
    assert agent.wait(p.id, timeout=0).status == "pending"
    assert len(fake.calls("GET", rf"/api/v1/proposals/{p.id}")) == 1
    assert not fake.calls("GET", r"/api/v1/proposals/.+/wait")


async def test_async_client_round_trip(fake: FakeServer) -> None:
    async with fake.async_client(SERVICE_KEY) as service:
        run = await service.mint_run("support/send")
        agent = service.for_run(run)
        assert (await agent.check("kb.search")).allowed
        p = (await agent.propose("ticket.close", ARGS, "ka")).proposal
        fake.on_wait = lambda prop: fake.reject(prop["id"], by="sam", comment="no")
        final = await agent.wait(p.id, timeout=5)
        assert final.status == "rejected"
        assert final.rejection is not None
        assert final.rejection.comment == "no"
        assert (await agent.get(p.id)).status == "rejected"
        q = (
            await agent.propose("ticket.close", {"ticket_id": "T-9", "reason": "r"}, "kb")
        ).proposal
        assert (await agent.cancel(q.id)).status == "cancelled"
        w = (
            await agent.propose("ticket.close", {"ticket_id": "T-8", "reason": "r"}, "kc")
        ).proposal
        fake.on_wait = None
        assert (await agent.wait(w.id, timeout=0)).status == "pending"
        fake.approve(w.id)
        assert (await agent.wait(w.id, timeout=5, until="decided")).status == "queued"
    async with fake.async_client(EXECUTOR_KEY) as ex:
        [job] = await ex.claim(tools=["ticket.close"])
        assert (await ex.heartbeat(job.job_id, job.lease_id)).job_id == job.job_id
        done = await ex.complete(job.job_id, job.lease_id, "failed", {"e": 1}, retryable=True)
        assert done.state == "queued"
        assert (await ex.jwks())["keys"]


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Client("cs.test")
    with pytest.raises(ValueError):
        Client(
            "http://cs.test",
            transport=httpx.MockTransport(lambda r: httpx.Response(200)),
            http_client=httpx.Client(),
        )
    c = Client("http://cs.test/", "secret-token")
    assert c.base_url == "http://cs.test"
    assert "secret-token" not in repr(c)
    c.close()
    a = AsyncClient("http://cs.test", None)
    assert not a.has_credential


def test_a_caller_supplied_http_client_is_not_closed() -> None:
    http = httpx.Client(
        transport=httpx.MockTransport(
            lambda r: httpx.Response(200, json={"tool": "kb.search", "decision": "allow"})
        )
    )
    with Client("http://cs.test", "t", http_client=http) as c:
        assert c.check("kb.search").allowed
    assert not http.is_closed
    http.close()


def test_non_object_success_body_is_an_error() -> None:
    t = httpx.MockTransport(lambda r: httpx.Response(200, content=b"[1,2]"))
    with Client("http://cs.test", "t", transport=t) as c, pytest.raises(countersign.APIError) as i:
        c.check("kb.search")
    assert i.value.code == "unexpected_response"
