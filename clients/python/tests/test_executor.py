"""The executor helper against the in-memory API: receipts verified before
any handler runs, handlers given the receipt's args, outcomes reported,
retryable failures, previews, heartbeats, dedup, graceful stop."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from countersign import (
    AsyncExecutor,
    ClaimedJob,
    Client,
    Executor,
    InvalidTransition,
    Job,
    JobFailed,
    MemoryStore,
    Preview,
    Receipt,
    Retryable,
    StalePreview,
    Unauthenticated,
)
from countersign.executor import _Lease
from fakeserver import ENV, EXECUTOR_KEY, FakeServer, error

ARGS = {"ticket_id": "T-18421", "reason": "Issue resolved"}


def approved(
    fake: FakeServer,
    tool: str = "ticket.close",
    args: dict[str, Any] | None = None,
    key: str | None = None,
) -> str:
    """Propose as an agent and approve as a reviewer; the proposal id."""
    with fake.client(fake.run_token()) as agent:
        p = agent.propose(tool, args or ARGS, key or f"k-{time.monotonic_ns()}").proposal
    fake.approve(p.id)
    return p.id


def status(fake: FakeServer, pid: str) -> str:
    return str(fake.proposals[pid]["status"])


def completion(fake: FakeServer, pid: str) -> dict[str, Any]:
    jid = fake.proposals[pid]["job_id"]
    bodies = [s.body for s in fake.calls("POST", rf"/api/v1/jobs/{jid}/complete")]
    assert bodies, "the job was never completed"
    return dict(bodies[-1])


def test_runs_the_handler_with_the_receipts_args(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)
    fake.queue_args = {"ticket_id": "T-666", "reason": "swapped in the queue"}
    got: list[Job] = []

    def close(job: Job) -> dict[str, Any]:
        got.append(job)
        return {"closed": job.args["ticket_id"]}

    outcomes = Executor(executor_client, env=ENV, tools={"ticket.close": close}).run_once(
        wait_seconds=0
    )
    assert [o.status for o in outcomes] == ["succeeded"]
    [job] = got
    assert job.args == ARGS  # the receipt's args, not the queue's
    assert job.claimed.args["ticket_id"] == "T-666"
    assert job.receipt is not None
    assert job.receipt.jti == job.job_id
    assert job.execution_key == f"exk_{pid}"
    assert job.attempt == 1
    assert job.kind == "execute"
    assert job.tool == "ticket.close"
    assert status(fake, pid) == "succeeded"
    assert completion(fake, pid)["result"] == {"closed": "T-18421"}
    assert outcomes[0].completion is not None
    assert outcomes[0].completion.state == "succeeded"
    # the claim named only the handled tools and asked for no kinds
    claim = fake.calls("POST", "/api/v1/jobs/claim")[0].body
    assert claim["tools"] == ["ticket.close"]
    assert "kinds" not in claim


def test_a_tampered_receipt_is_never_executed(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)

    def tamper(token: str) -> str:
        head, payload, sig = token.split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        return ".".join([head, flipped, sig])

    fake.tamper = tamper
    ran: list[Job] = []
    [outcome] = Executor(executor_client, env=ENV, tools={"ticket.close": ran.append}).run_once(0)
    assert ran == []
    assert outcome.status == "failed"
    assert not outcome.retryable
    body = completion(fake, pid)
    assert body["status"] == "failed"
    assert body["retryable"] is False
    assert body["result"]["code"] in ("receipt_bad_signature", "receipt_malformed")
    assert body["result"]["error"] == "receipt_rejected"
    assert status(fake, pid) == "failed"


def test_an_expired_receipt_is_never_executed(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)
    fake.receipt_ttl = -30
    ran: list[Job] = []
    [outcome] = Executor(executor_client, env=ENV, tools={"ticket.close": ran.append}).run_once(0)
    assert ran == []
    assert outcome.status == "failed"
    assert completion(fake, pid)["result"]["code"] == "receipt_expired"
    assert completion(fake, pid)["retryable"] is False


def test_a_job_without_receipt_is_refused(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)
    fake.receipts = False
    ran: list[Job] = []
    Executor(executor_client, env=ENV, tools={"ticket.close": ran.append}).run_once(0)
    assert ran == []
    assert completion(fake, pid)["result"]["code"] == "receipt_missing"


def test_verification_can_be_turned_off(fake: FakeServer, executor_client: Client) -> None:
    approved(fake)
    fake.receipts = False
    fake.queue_args = {"ticket_id": "T-1", "reason": "queue"}
    got: list[dict[str, Any]] = []
    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": lambda j: got.append(j.args)},
        verify_receipts=False,
    )
    [o] = ex.run_once(0)
    assert o.status == "succeeded"
    assert got == [{"ticket_id": "T-1", "reason": "queue"}]


def test_key_rotation_refetches_the_jwks_once(fake: FakeServer, executor_client: Client) -> None:
    ex = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: {"ok": True}})
    approved(fake)
    ex.run_once(0)
    fake.rotate_key()
    pid = approved(fake)
    [o] = ex.run_once(0)
    assert o.status == "succeeded"
    assert o.job is not None
    assert o.job.receipt is not None
    assert o.job.receipt.kid == "key-2"
    assert status(fake, pid) == "succeeded"
    assert len(fake.calls("GET", "/.well-known/jwks.json")) == 2


def test_a_receipt_signed_by_an_unpublished_key_is_refused(
    fake: FakeServer, executor_client: Client
) -> None:
    ex = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: {"ok": True}})
    key = fake.rotate_key()
    fake.published.remove(key)  # signed with a key the server does not publish
    pid = approved(fake)
    [o] = ex.run_once(0)
    assert o.status == "failed"
    assert completion(fake, pid)["result"]["code"] == "receipt_unknown_key"
    # The first fetch already lacked the kid: no second fetch for the same job.
    assert len(fake.calls("GET", "/.well-known/jwks.json")) == 1
    # A later job with that kid fetches once more, then is refused again.
    pid2 = approved(fake, key="k-again")
    [o2] = ex.run_once(0)
    assert o2.status == "failed"
    assert completion(fake, pid2)["result"]["code"] == "receipt_unknown_key"
    assert len(fake.calls("GET", "/.well-known/jwks.json")) == 2


def test_an_unreachable_jwks_fails_the_attempt_as_retryable(
    fake: FakeServer, executor_client: Client
) -> None:
    pid = approved(fake)
    fake.fail("GET", "/.well-known/jwks.json", lambda r: httpx.Response(503), times=10)
    ran: list[Job] = []
    [o] = Executor(executor_client, env=ENV, tools={"ticket.close": ran.append}).run_once(0)
    assert ran == []
    assert o.status == "failed"
    assert o.retryable
    assert completion(fake, pid)["result"]["code"] == "jwks_unavailable"
    assert status(fake, pid) == "queued"  # offered again


def test_retryable_failure_is_offered_again(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)
    attempts: list[int] = []

    def flaky(job: Job) -> dict[str, Any]:
        attempts.append(job.attempt)
        if job.attempt == 1:
            raise Retryable("upstream timed out")
        return {"ok": True}

    ex = Executor(executor_client, env=ENV, tools={"ticket.close": flaky})
    [first] = ex.run_once(0)
    assert first.status == "failed"
    assert first.retryable
    assert first.completion is not None
    assert first.completion.state == "queued"
    body = completion(fake, pid)
    assert body["retryable"] is True
    assert body["result"] == {"error": "retryable", "message": "upstream timed out"}
    time.sleep(0.06)
    [second] = ex.run_once(0)
    assert second.status == "succeeded"
    assert attempts == [1, 2]
    assert status(fake, pid) == "succeeded"
    assert fake.proposals[pid]["execution"]["attempts"] == 2


def test_retryable_with_a_result(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)

    def busy(job: Job) -> None:
        raise Retryable("503", result={"http": 503})

    Executor(executor_client, env=ENV, tools={"ticket.close": busy}).run_once(0)
    assert completion(fake, pid)["result"] == {"http": 503}


@pytest.mark.parametrize(
    ("exc", "result"),
    [
        (
            StalePreview("row version moved"),
            {"code": "stale_preview", "message": "row version moved"},
        ),
        (JobFailed("no", result={"code": "ticket_locked"}), {"code": "ticket_locked"}),
        (JobFailed("nope"), {"error": "failed", "message": "nope"}),
        (KeyError("ticket_id"), {"error": "KeyError", "message": "'ticket_id'"}),
    ],
)
def test_failures_are_not_retryable(
    fake: FakeServer, executor_client: Client, exc: Exception, result: dict[str, Any]
) -> None:
    pid = approved(fake)

    def fail(job: Job) -> None:
        raise exc

    [o] = Executor(executor_client, env=ENV, tools={"ticket.close": fail}).run_once(0)
    assert o.status == "failed"
    assert not o.retryable
    assert o.error is exc
    body = completion(fake, pid)
    assert body["status"] == "failed"
    assert body["retryable"] is False
    assert body["result"] == result
    assert status(fake, pid) == "failed"


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ({"a": 1}, {"a": 1}),
        (None, {}),
        ("done", {"value": "done"}),
        ([1, 2], {"value": [1, 2]}),
    ],
)
def test_handler_return_values_become_results(
    fake: FakeServer, executor_client: Client, value: Any, result: dict[str, Any]
) -> None:
    pid = approved(fake)
    [o] = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: value}).run_once(0)
    assert o.value == value
    assert completion(fake, pid)["result"] == result


def test_unserialisable_values_are_sent_as_text(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)
    [o] = Executor(
        executor_client, env=ENV, tools={"ticket.close": lambda j: {"at": object}}
    ).run_once(0)
    assert o.status == "succeeded"
    assert completion(fake, pid)["result"] == {"at": str(object)}


def test_previews_are_computed_and_executions_see_their_state(
    fake: FakeServer, executor_client: Client
) -> None:
    fake.executor_preview = ("ticket.close",)
    with fake.client(fake.run_token()) as agent:
        p = agent.propose("ticket.close", ARGS, "kp").proposal
    assert p.status == "previewing"
    seen_states: list[str | None] = []

    def preview(job: Job) -> Preview:
        assert job.receipt is None
        assert job.kind == "preview"
        return Preview(before="status: open", after="status: closed", state="v41")

    def close(job: Job) -> dict[str, Any]:
        seen_states.append(job.preview_state)
        if job.preview_state != "v41":
            raise StalePreview("changed")
        return {"closed": True}

    ex = Executor(
        executor_client, env=ENV, tools={"ticket.close": close}, previews={"ticket.close": preview}
    )
    [o] = ex.run_once(0)
    assert o.status == "succeeded"
    assert o.preview == Preview("status: open", "status: closed", "v41")
    claim = fake.calls("POST", "/api/v1/jobs/claim")[0].body
    assert claim["kinds"] == ["preview", "execute"]
    body = fake.calls("POST", r"/api/v1/jobs/.+/complete")[0].body
    assert body["status"] == "succeeded"
    assert body["preview"] == {"before": "status: open", "after": "status: closed", "state": "v41"}
    assert "result" not in body
    assert status(fake, p.id) == "pending"
    fake.approve(p.id)
    [run] = ex.run_once(0)
    assert run.status == "succeeded"
    assert seen_states == ["v41"]
    assert run.job is not None
    assert run.job.receipt is not None
    assert run.job.receipt.preview_state == "v41"


def test_claims_ask_each_tool_only_for_the_kinds_it_handles(
    fake: FakeServer, executor_client: Client
) -> None:
    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": lambda j: 1, "email.send": lambda j: 2},
        previews={"email.send": lambda j: Preview("a", "b")},
    )
    assert ex.run_once(wait_seconds=3) == []
    bodies = [s.body for s in fake.calls("POST", "/api/v1/jobs/claim")]
    # each group looked at without waiting, then one long poll
    assert bodies[0] == {
        "tools": ["email.send"],
        "kinds": ["preview", "execute"],
        "max": 1,
        "lease_seconds": 60,
        "wait_seconds": 0,
    }
    assert bodies[1] == {
        "tools": ["ticket.close"],
        "max": 1,
        "lease_seconds": 60,
        "wait_seconds": 0,
    }
    assert len(bodies) == 3
    assert bodies[2]["wait_seconds"] == 3
    ex.run_once(wait_seconds=3)
    polled = [s.body["tools"] for s in fake.calls("POST", "/api/v1/jobs/claim")[2::3]]
    assert polled[0] != polled[1]  # the long poll takes turns
    only_previews = Executor(
        executor_client, env=ENV, previews={"refund.create": lambda j: Preview("a", "b")}
    )
    only_previews.run_once(0)
    assert fake.calls("POST", "/api/v1/jobs/claim")[-1].body["kinds"] == ["preview"]


def test_a_preview_without_state_is_refused_by_the_executor(
    fake: FakeServer, executor_client: Client
) -> None:
    fake.executor_preview = ("ticket.close",)
    with fake.client(fake.run_token()) as agent:
        p = agent.propose("ticket.close", ARGS, "kps").proposal
    ex = Executor(executor_client, env=ENV, previews={"ticket.close": lambda j: Preview("a", "b")})
    [o] = ex.run_once(0)
    assert o.status == "failed"
    assert isinstance(o.error, TypeError)
    body = fake.calls("POST", r"/api/v1/jobs/.+/complete")[0].body
    assert "preview" not in body
    assert "must return a state" in body["result"]["message"]
    assert o.completion is not None
    assert status(fake, p.id) == "failed"


def test_a_refused_result_is_replaced_by_a_note(fake: FakeServer, executor_client: Client) -> None:
    """A result the server will not take (over 16 KiB, a secret in it) must
    not leave the job leased: it would be offered, and run, again."""
    pid = approved(fake)
    fake.fail(
        "POST",
        r"/api/v1/jobs/.+/complete",
        lambda r: error(
            422, "secret_in_args", "result.token looks like a secret", field="result.token"
        ),
    )
    ran: list[Job] = []

    def close(job: Job) -> dict[str, Any]:
        ran.append(job)
        return {"token": "sk-live-..."}

    [o] = Executor(executor_client, env=ENV, tools={"ticket.close": close}).run_once(0)
    assert len(ran) == 1
    assert o.status == "succeeded"
    assert o.completion is not None
    assert o.completion_error is None
    assert o.result_refused is not None
    assert o.result_refused.code == "secret_in_args"
    assert o.result == {
        "error": "result_refused",
        "code": "secret_in_args",
        "message": "result.token looks like a secret",
    }
    assert completion(fake, pid)["result"] == o.result
    assert status(fake, pid) == "succeeded"


def test_a_refused_preview_fails_the_proposal(fake: FakeServer, executor_client: Client) -> None:
    fake.executor_preview = ("ticket.close",)
    with fake.client(fake.run_token()) as agent:
        p = agent.propose("ticket.close", ARGS, "kpr").proposal
    fake.fail(
        "POST",
        r"/api/v1/jobs/.+/complete",
        lambda r: error(400, "bad_request", "preview.after looks like a secret"),
    )
    ex = Executor(
        executor_client, env=ENV, previews={"ticket.close": lambda j: Preview("a", "b", "v1")}
    )
    [o] = ex.run_once(0)
    assert o.status == "failed"
    assert o.preview is None
    assert o.result == {
        "error": "preview_refused",
        "code": "bad_request",
        "message": "preview.after looks like a secret",
    }
    assert status(fake, p.id) == "failed"


def test_a_second_refusal_is_reported_not_retried(
    fake: FakeServer, executor_client: Client
) -> None:
    approved(fake)
    fake.fail(
        "POST",
        r"/api/v1/jobs/.+/complete",
        lambda r: error(400, "bad_request", "no"),
        times=5,
    )
    [o] = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: {}}).run_once(0)
    assert o.completion is None
    assert o.completion_error is not None
    assert len(fake.calls("POST", r"/api/v1/jobs/.+/complete")) == 2


def test_a_failing_preview_fails_the_proposal(fake: FakeServer, executor_client: Client) -> None:
    fake.executor_preview = ("ticket.close",)
    with fake.client(fake.run_token()) as agent:
        p = agent.propose("ticket.close", ARGS, "kpf").proposal

    def preview(job: Job) -> Preview:
        raise JobFailed("ticket not found", result={"code": "not_found"})

    ex = Executor(executor_client, env=ENV, previews={"ticket.close": preview})
    [o] = ex.run_once(0)
    assert o.status == "failed"
    assert fake.calls("POST", r"/api/v1/jobs/.+/complete")[0].body["result"] == {
        "code": "not_found"
    }
    assert status(fake, p.id) == "failed"


def test_heartbeats_keep_the_lease_while_the_handler_runs(
    fake: FakeServer, executor_client: Client
) -> None:
    approved(fake)

    def slow(job: Job) -> dict[str, Any]:
        time.sleep(0.45)
        return {"ok": True}

    ex = Executor(
        executor_client, env=ENV, tools={"ticket.close": slow}, lease_seconds=2, heartbeat_every=0.1
    )
    [o] = ex.run_once(0)
    assert o.status == "succeeded"
    beats = fake.calls("POST", r"/api/v1/jobs/.+/heartbeat")
    assert len(beats) >= 3
    assert all(b.body == {"lease_id": o.claimed.lease_id, "lease_seconds": 2} for b in beats)
    # no heartbeat after completion
    n = len(beats)
    time.sleep(0.25)
    assert len(fake.calls("POST", r"/api/v1/jobs/.+/heartbeat")) == n


def test_a_lost_lease_is_visible_and_its_completion_refused(
    fake: FakeServer, executor_client: Client
) -> None:
    pid = approved(fake)
    flags: list[bool] = []

    def slow(job: Job) -> dict[str, Any]:
        fake.lost_leases.add(job.job_id)
        time.sleep(0.3)
        flags.append(job.lease_lost)
        return {"ok": True}

    [o] = Executor(
        executor_client, env=ENV, tools={"ticket.close": slow}, heartbeat_every=0.05
    ).run_once(0)
    assert flags == [True]
    assert isinstance(o.completion_error, InvalidTransition)
    assert o.completion is None
    assert status(fake, pid) == "running"


def test_cancel_requested_reaches_the_handler(fake: FakeServer, executor_client: Client) -> None:
    approved(fake)
    seen: list[bool] = []

    def slow(job: Job) -> dict[str, Any]:
        fake.cancel_requested.add(job.job_id)
        deadline = time.monotonic() + 2
        while not job.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(job.cancel_requested)
        return {"stopped": True}

    Executor(executor_client, env=ENV, tools={"ticket.close": slow}, heartbeat_every=0.05).run_once(
        0
    )
    assert seen == [True]


def test_the_store_deduplicates_on_execution_key(fake: FakeServer, executor_client: Client) -> None:
    store = MemoryStore()
    calls: list[str] = []

    def close(job: Job) -> dict[str, Any]:
        calls.append(job.job_id)
        return {"closed": job.args["ticket_id"]}

    ex = Executor(executor_client, env=ENV, tools={"ticket.close": close}, store=store)
    pid = approved(fake)
    [o] = ex.run_once(0)
    assert store.seen(f"exk_{pid}") == {"closed": "T-18421"}
    assert not o.duplicate

    # A second delivery of an effect already done (a lost completion):
    pid2 = approved(fake, key="k-second")
    store.remember(f"exk_{pid2}", {"closed": "earlier"})
    [dup] = ex.run_once(0)
    assert dup.duplicate
    assert dup.status == "succeeded"
    assert len(calls) == 1
    assert completion(fake, pid2)["result"] == {"closed": "earlier"}


def test_concurrency_runs_a_batch_in_parallel(fake: FakeServer, executor_client: Client) -> None:
    for i in range(3):
        approved(fake, args={"ticket_id": f"T-{i}", "reason": "r"}, key=f"kc{i}")
    barrier = threading.Barrier(3, timeout=5)

    def close(job: Job) -> dict[str, Any]:
        barrier.wait()  # only passes when three handlers run at once
        return {"t": job.args["ticket_id"]}

    outcomes = Executor(
        executor_client, env=ENV, tools={"ticket.close": close}, concurrency=3
    ).run_once(0)
    assert sorted(o.result["t"] for o in outcomes if o.result) == ["T-0", "T-1", "T-2"]
    assert fake.calls("POST", "/api/v1/jobs/claim")[0].body["max"] == 3


def test_sigterm_finishes_the_job_in_hand_and_claims_no_more(
    fake: FakeServer, executor_client: Client
) -> None:
    pid = approved(fake)
    approved(fake, args={"ticket_id": "T-2", "reason": "r"}, key="k-next")
    finished: list[str] = []

    def close(job: Job) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # still working when the signal arrives
        finished.append(job.proposal_id)
        return {"ok": True}

    before = signal.getsignal(signal.SIGTERM)
    ex = Executor(executor_client, env=ENV, tools={"ticket.close": close}, wait_seconds=0)
    ex.run()
    assert finished == [pid]
    assert status(fake, pid) == "succeeded"
    assert len(fake.calls("POST", "/api/v1/jobs/claim")) == 1
    assert ex.stopping
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_without_receipts_a_job_of_another_env_is_refused(
    fake: FakeServer, executor_client: Client
) -> None:
    """The env to act in is the executor's own, even when nothing is verified."""
    pid = approved(fake)
    fake.env = "staging"  # what the queue says
    ran: list[Job] = []
    ex = Executor(
        executor_client, env=ENV, tools={"ticket.close": ran.append}, verify_receipts=False
    )
    [o] = ex.run_once(0)
    assert ran == []
    assert o.status == "failed"
    assert not o.retryable
    body = completion(fake, pid)
    assert body["result"]["code"] == "env_mismatch"
    assert "'staging'" in body["result"]["message"]
    assert status(fake, pid) == "failed"


def test_a_receipt_of_another_env_than_the_executors_is_refused(
    fake: FakeServer, executor_client: Client
) -> None:
    """The queue and the receipt agree on staging; the executor acts in prod."""
    pid = approved(fake)
    fake.env = "staging"
    ran: list[Job] = []
    [o] = Executor(executor_client, env=ENV, tools={"ticket.close": ran.append}).run_once(0)
    assert ran == []
    assert o.status == "failed"
    assert completion(fake, pid)["result"]["code"] == "receipt_mismatch"
    assert "not 'prod'" in completion(fake, pid)["result"]["message"]


def test_a_heartbeat_past_the_execute_by_time_is_not_a_lost_lease(
    fake: FakeServer, executor_client: Client
) -> None:
    """The receipt's exp is the execute-by time: no heartbeat asks past it,
    and the lease (which already reaches it) is still held."""
    pid = approved(fake)
    fake.receipt_ttl = 2
    flags: list[tuple[bool, bool]] = []

    def slow(job: Job) -> dict[str, Any]:
        time.sleep(0.4)
        flags.append((job.deadline_reached, job.lease_lost))
        return {"ok": True}

    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": slow},
        lease_seconds=30,
        heartbeat_every=0.05,
    )
    [o] = ex.run_once(0)
    assert flags == [(True, False)]
    assert o.job is not None
    assert o.job.execute_by is not None
    assert o.job.lease_expires_at is not None
    assert o.job.lease_expires_at >= o.job.execute_by
    assert fake.calls("POST", r"/api/v1/jobs/.+/heartbeat") == []  # none would help
    assert o.completion is not None
    assert status(fake, pid) == "succeeded"


def test_a_heartbeat_refused_for_the_execute_by_time_without_a_receipt(
    fake: FakeServer, executor_client: Client
) -> None:
    """Without a receipt the server's refusal says it: still not a lost lease."""
    pid = approved(fake)
    fake.receipt_ttl = 2
    flags: list[tuple[bool, bool, bool]] = []

    def slow(job: Job) -> dict[str, Any]:
        time.sleep(0.4)
        flags.append((job.deadline_reached, job.lease_lost, job.should_stop))
        return {"ok": True}

    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": slow},
        lease_seconds=30,
        heartbeat_every=0.05,
        verify_receipts=False,
    )
    [o] = ex.run_once(0)
    assert flags == [(True, False, False)]
    beats = fake.calls("POST", r"/api/v1/jobs/.+/heartbeat")
    assert [b.body["lease_seconds"] for b in beats] == [30]  # refused once, then no more
    assert o.completion is not None
    assert status(fake, pid) == "succeeded"


def _job_with(receipt_exp: float | None, lease_until: float) -> Job:
    claimed = ClaimedJob(
        job_id="job_1",
        lease_id="lse_1",
        proposal_id="prp_1",
        tenant="acme",
        env=ENV,
        tool="ticket.close",
        args={},
        idempotency_key="k",
        attempt=1,
        lease_expires_at=datetime.fromtimestamp(lease_until, tz=timezone.utc),
    )
    receipt = None
    if receipt_exp is not None:
        receipt = Receipt(
            kid="k1",
            iss=None,
            jti="job_1",
            sub="prp_1",
            tenant="acme",
            env=ENV,
            tool="ticket.close",
            args={},
            execution_key=None,
            approvals=[],
            auto_approved=False,
            break_glass=False,
            preview_sha256=None,
            preview_state=None,
            policy_sha256=None,
            iat=None,
            exp=int(receipt_exp),
            claims={},
        )
    return Job(claimed=claimed, args={}, receipt=receipt)


def test_how_heartbeats_treat_the_execute_by_time() -> None:
    now = time.time()
    # far from the deadline: the whole lease
    assert _Lease(_job_with(now + 600, now + 10), 60).ask() == 60
    # nearer than a lease: up to the deadline, when that is longer than now
    up_to_the_deadline = _Lease(_job_with(now + 30.5, now + 10), 60).ask()
    assert up_to_the_deadline is not None
    assert 28 <= up_to_the_deadline <= 30  # whole seconds, exp is whole seconds too
    # the lease already reaches the deadline: nothing to ask
    assert _Lease(_job_with(now + 30.5, now + 40), 60).ask() is None
    assert _Lease(_job_with(now + 0.5, now + 0.2), 60).ask() is None
    # no receipt: ask, and read the server's refusal
    lease = _Lease(_job_with(None, now + 2), 60)
    assert lease.ask() == 60
    deadline = InvalidTransition(
        "a lease cannot outlast the job's execute-by deadline (2026-12-01T10:00:00Z): "
        "ask for at most 20 s",
        code="invalid_transition",
        status=409,
    )
    assert lease.refused(deadline) == 20  # one last heartbeat makes it longer
    assert _Lease(_job_with(None, now + 40), 60).refused(deadline) == 0
    lost = InvalidTransition("this lease is no longer held", code="invalid_transition")
    assert lease.refused(lost) is None


def test_sigterm_hands_back_a_job_that_outlasts_the_grace_period(
    fake: FakeServer, executor_client: Client
) -> None:
    pid = approved(fake)
    store = MemoryStore()
    seen: list[tuple[bool, bool]] = []
    late = threading.Event()

    def slow(job: Job) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not job.handed_back and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append((job.stopping, job.handed_back))
        late.set()
        return {"done": "late"}

    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": slow},
        wait_seconds=0,
        grace_seconds=0.3,
        store=store,
    )
    started = time.monotonic()
    ex.run()
    took = time.monotonic() - started
    assert 0.25 <= took < 5
    body = completion(fake, pid)
    assert body["status"] == "failed"
    assert body["retryable"] is True
    assert body["result"] == {
        "code": "executor_stopping",
        "message": "executor stopping: handed back before it finished",
    }
    assert status(fake, pid) == "queued"  # the queue offers it again
    assert len(fake.calls("POST", "/api/v1/jobs/claim")) == 1
    assert late.wait(5)
    assert seen == [(True, True)]
    # the handler's late success is never reported, but it is remembered
    assert len(fake.calls("POST", r"/api/v1/jobs/.+/complete")) == 1
    deadline = time.monotonic() + 5
    while store.seen(f"exk_{pid}") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.seen(f"exk_{pid}") == {"done": "late"}


def test_a_second_sigterm_hands_back_at_once(fake: FakeServer, executor_client: Client) -> None:
    pid = approved(fake)

    def slow(job: Job) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not job.should_stop and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"done": "late"}

    ex = Executor(
        executor_client, env=ENV, tools={"ticket.close": slow}, wait_seconds=0, grace_seconds=60
    )
    started = time.monotonic()
    ex.run()
    assert time.monotonic() - started < 5  # not the 60 s of grace
    body = completion(fake, pid)
    assert body["retryable"] is True
    assert body["result"]["code"] == "executor_stopping"
    assert status(fake, pid) == "queued"


def test_a_job_claimed_after_a_stop_is_handed_back_unstarted(
    fake: FakeServer, executor_client: Client
) -> None:
    pid = approved(fake)
    ran: list[Job] = []
    ex = Executor(executor_client, env=ENV, tools={"ticket.close": ran.append}, grace_seconds=0.05)
    ex.stop()
    [o] = ex.run_once(0)
    assert ran == []
    assert o.handed_back
    assert o.retryable
    assert completion(fake, pid)["result"]["message"] == (
        "executor stopping: handed back before it started"
    )
    assert status(fake, pid) == "queued"


def test_stop_now_hands_back_without_waiting(fake: FakeServer, executor_client: Client) -> None:
    approved(fake)
    ex: Executor

    def slow(job: Job) -> dict[str, Any]:
        ex.stop(now=True)
        deadline = time.monotonic() + 10
        while not job.handed_back and time.monotonic() < deadline:
            time.sleep(0.01)
        return {}

    ex = Executor(executor_client, env=ENV, tools={"ticket.close": slow}, grace_seconds=60)
    started = time.monotonic()
    [o] = ex.run_once(0)
    assert time.monotonic() - started < 5
    assert o.handed_back
    assert o.completion is not None
    assert o.completion.state == "queued"


def test_handlers_see_the_callers_context(fake: FakeServer, executor_client: Client) -> None:
    approved(fake)
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    request_id.set("req-7")
    got: list[str] = []
    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": lambda j: got.append(request_id.get("unset"))},
    )
    ex.run_once(0)
    assert got == ["req-7"]


def test_run_survives_server_errors_and_stops_on_request(fake: FakeServer) -> None:
    pid = approved(fake)
    fake.fail("POST", "/api/v1/jobs/claim", lambda r: httpx.Response(503), times=4)
    with fake.client(EXECUTOR_KEY) as c:
        ex = Executor(c, env=ENV, tools={"ticket.close": lambda j: ex.stop()}, wait_seconds=0)
        started = time.monotonic()
        ex.run(install_signal_handlers=False)
    assert status(fake, pid) == "succeeded"
    assert 0.5 <= time.monotonic() - started < 10


def test_run_backs_off_when_claims_are_rate_limited(fake: FakeServer) -> None:
    pid = approved(fake)
    fake.fail(
        "POST",
        "/api/v1/jobs/claim",
        lambda r: error(429, "rate_limited", "too many", retry_after_seconds=1),
        times=2,
    )
    with fake.client(EXECUTOR_KEY) as c:
        ex = Executor(c, env=ENV, tools={"ticket.close": lambda j: ex.stop()}, wait_seconds=0)
        ex.run(install_signal_handlers=False)
    assert status(fake, pid) == "succeeded"


def test_run_ends_on_a_refused_credential(fake: FakeServer) -> None:
    with fake.client("cek_revoked") as c, pytest.raises(Unauthenticated):
        Executor(c, env=ENV, tools={"ticket.close": lambda j: None}).run(
            install_signal_handlers=False
        )


def test_constructor_checks(executor_client: Client, fake: FakeServer) -> None:
    with pytest.raises(ValueError):
        Executor(executor_client, env=ENV)
    with pytest.raises(ValueError):
        Executor(executor_client, env=ENV, tools={"x": lambda j: None}, lease_seconds=0)
    with pytest.raises(ValueError):
        Executor(executor_client, env=ENV, tools={"x": lambda j: None}, wait_seconds=61)
    with pytest.raises(ValueError):
        Executor(executor_client, env=ENV, tools={"x": lambda j: None}, concurrency=0)
    with pytest.raises(ValueError, match="env must name"):
        Executor(executor_client, env="", tools={"x": lambda j: None})
    with pytest.raises(ValueError, match="grace_seconds"):
        Executor(executor_client, env=ENV, tools={"x": lambda j: None}, grace_seconds=-1)
    no_env: Any = Executor
    with pytest.raises(TypeError, match="env"):
        no_env(executor_client, tools={"x": lambda j: None})
    with pytest.raises(TypeError):
        Executor(fake.async_client(EXECUTOR_KEY), env=ENV, tools={"x": lambda j: None})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AsyncExecutor(executor_client, env=ENV, tools={"x": lambda j: None})  # type: ignore[arg-type]


def test_run_once_can_narrow_the_tools(fake: FakeServer, executor_client: Client) -> None:
    ex = Executor(
        executor_client, env=ENV, tools={"ticket.close": lambda j: 1, "email.send": lambda j: 2}
    )
    assert ex.run_once(0, tools=["refund.create"]) == []
    assert not fake.calls("POST", "/api/v1/jobs/claim")
    ex.run_once(0, tools=["email.send"])
    assert fake.calls("POST", "/api/v1/jobs/claim")[0].body["tools"] == ["email.send"]


# ------------------------------------------------------------------- async


async def test_async_executor(fake: FakeServer) -> None:
    pid = approved(fake)
    fake.queue_args = {"ticket_id": "T-666", "reason": "queue"}
    got: list[dict[str, Any]] = []

    async def close(job: Job) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        got.append(job.args)
        return {"closed": job.args["ticket_id"]}

    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(c, env=ENV, tools={"ticket.close": close}, heartbeat_every=0.05)
        [o] = await ex.run_once(0)
    assert o.status == "succeeded"
    assert got == [ARGS]
    assert status(fake, pid) == "succeeded"
    assert len(fake.calls("POST", r"/api/v1/jobs/.+/heartbeat")) >= 2


async def test_async_executor_sync_handlers_previews_and_failures(fake: FakeServer) -> None:
    fake.executor_preview = ("email.send",)
    with fake.client(fake.run_token()) as agent:
        p = agent.propose("email.send", {"to": "a@b.c", "subject": "s", "body": "b"}, "ke").proposal
    tampered_pid = approved(fake)

    def preview(job: Job) -> dict[str, str]:
        return {"before": "draft", "after": "sent", "state": "s1"}

    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(
            c,
            env=ENV,
            tools={"ticket.close": lambda j: {"ok": 1}, "email.send": lambda j: {"sent": 1}},
            previews={"email.send": preview},
            concurrency=5,
        )
        fake.tamper = lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB")
        outcomes = {o.proposal_id: o for o in await ex.run_once(0)}
    assert outcomes[p.id].preview == Preview("draft", "sent", "s1")
    assert status(fake, p.id) == "pending"
    assert outcomes[tampered_pid].status == "failed"
    assert completion(fake, tampered_pid)["result"]["code"] == "receipt_bad_signature"


async def test_async_retryable_and_signal_stop(fake: FakeServer) -> None:
    pid = approved(fake)

    async def flaky(job: Job) -> dict[str, Any]:
        if job.attempt == 1:
            raise Retryable("try later")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        return {"ok": True}

    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(c, env=ENV, tools={"ticket.close": flaky}, wait_seconds=0)
        await asyncio.wait_for(ex.run(), timeout=10)
    assert status(fake, pid) == "succeeded"
    assert ex.stopping


async def test_async_a_refused_result_is_replaced_by_a_note(fake: FakeServer) -> None:
    pid = approved(fake)
    fake.fail(
        "POST",
        r"/api/v1/jobs/.+/complete",
        lambda r: error(400, "bad_request", "result must be at most 16 KiB of JSON"),
    )
    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(c, env=ENV, tools={"ticket.close": lambda j: {"blob": "x" * 20_000}})
        [o] = await ex.run_once(0)
    assert o.status == "succeeded"
    assert o.result_refused is not None
    assert o.completion is not None
    assert completion(fake, pid)["result"]["error"] == "result_refused"
    assert status(fake, pid) == "succeeded"


async def test_async_sigterm_hands_back_after_the_grace_period(fake: FakeServer) -> None:
    pid = approved(fake)
    cancelled: list[bool] = []

    async def slow(job: Job) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(job.handed_back)
            raise
        return {"never": True}

    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(
            c, env=ENV, tools={"ticket.close": slow}, wait_seconds=0, grace_seconds=0.3
        )
        started = time.monotonic()
        await asyncio.wait_for(ex.run(), timeout=10)
        took = time.monotonic() - started
        await asyncio.sleep(0)  # let the cancelled handler see it
    assert 0.25 <= took < 5
    assert cancelled == [True]
    body = completion(fake, pid)
    assert body["retryable"] is True
    assert body["result"]["code"] == "executor_stopping"
    assert status(fake, pid) == "queued"


async def test_async_a_second_sigterm_hands_back_at_once(fake: FakeServer) -> None:
    pid = approved(fake)

    async def slow(job: Job) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)
        return {"never": True}

    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(
            c, env=ENV, tools={"ticket.close": slow}, wait_seconds=0, grace_seconds=60
        )
        await asyncio.wait_for(ex.run(), timeout=5)
    assert completion(fake, pid)["result"]["code"] == "executor_stopping"
    assert status(fake, pid) == "queued"


async def test_async_a_heartbeat_past_the_execute_by_time(fake: FakeServer) -> None:
    pid = approved(fake)
    fake.receipt_ttl = 2
    flags: list[tuple[bool, bool]] = []

    async def slow(job: Job) -> dict[str, Any]:
        await asyncio.sleep(0.4)
        flags.append((job.deadline_reached, job.lease_lost))
        return {"ok": True}

    async with fake.async_client(EXECUTOR_KEY) as c:
        ex = AsyncExecutor(
            c,
            env=ENV,
            tools={"ticket.close": slow},
            lease_seconds=30,
            heartbeat_every=0.05,
            verify_receipts=False,
        )
        [o] = await ex.run_once(0)
    assert flags == [(True, False)]
    assert len(fake.calls("POST", r"/api/v1/jobs/.+/heartbeat")) == 1
    assert o.completion is not None
    assert status(fake, pid) == "succeeded"
