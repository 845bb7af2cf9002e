"""The gate decorator: propose -> wait -> outcome, with the function either
run elsewhere (remote execution) or run here for the approved job (local
execution with an executor key)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

import pytest

import countersign
import countersign.gate
from countersign import (
    ApprovalTimeout,
    Client,
    ExecutionFailed,
    Preview,
    ProposalCancelled,
    ProposalExpired,
    ProposalRejected,
    ReceiptError,
    Retryable,
    canonical_json,
    gated,
    idempotency_key_for,
)
from fakeserver import ENV, EXECUTOR_KEY, FakeServer

ARGS = {"ticket_id": "T-18421", "reason": "Issue resolved"}


def test_canonical_json_and_the_derived_key() -> None:
    assert (
        canonical_json({"b": 1, "a": {"y": [1, 2], "x": "s"}}) == '{"a":{"x":"s","y":[1,2]},"b":1}'
    )
    k1 = idempotency_key_for("ticket.close", {"reason": "r", "ticket_id": "T-1"})
    k2 = idempotency_key_for("ticket.close", {"ticket_id": "T-1", "reason": "r"})
    assert k1 == k2
    assert k1.startswith("ticket.close:")
    assert len(k1) == len("ticket.close:") + 64
    assert idempotency_key_for("ticket.close", {"ticket_id": "T-2", "reason": "r"}) != k1
    assert idempotency_key_for("email.send", {"ticket_id": "T-1", "reason": "r"}) != k1
    long = idempotency_key_for("t" * 190, {})
    assert len(long) <= 200
    assert long.startswith("cs:")
    assert idempotency_key_for("bad\ntool", {}).startswith("cs:")


def executor_thread(
    fake: FakeServer, result: dict[str, Any] | None = None, fail: str | None = None
) -> threading.Thread:
    """An executor elsewhere: runs the first released job."""

    def run() -> None:
        with fake.client(EXECUTOR_KEY) as ex:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for job in ex.claim():
                    if fail:
                        ex.complete(job.job_id, job.lease_id, "failed", {"message": fail})
                    else:
                        ex.complete(job.job_id, job.lease_id, "succeeded", result or {"ok": True})
                    return
                time.sleep(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def approve_on_wait(fake: FakeServer, by: str = "alice") -> None:
    def hook(p: dict[str, Any]) -> None:
        if p["status"] == "pending":
            fake.approve(p["id"], by=by)

    fake.on_wait = hook


def test_remote_execution_returns_the_executors_result(fake: FakeServer, agent: Client) -> None:
    body_ran: list[bool] = []

    @gated(
        "ticket.close",
        client=agent,
        reason="Customer confirmed the fix",
        preview=lambda a: Preview("status: open", "status: closed"),
    )
    def close_ticket(ticket_id: str, reason: str) -> dict[str, Any]:
        """Close a support ticket."""
        body_ran.append(True)
        return {}

    approve_on_wait(fake)
    t = executor_thread(fake, result={"closed": "T-18421"})
    assert close_ticket("T-18421", reason="Issue resolved") == {"closed": "T-18421"}
    t.join()
    assert body_ran == []
    sent = fake.calls("POST", "/api/v1/proposals")[0].body
    assert sent["tool"] == "ticket.close"
    assert sent["args"] == ARGS
    assert sent["idempotency_key"] == idempotency_key_for("ticket.close", ARGS)
    assert sent["reason"] == "Customer confirmed the fix"
    assert sent["preview"] == {"before": "status: open", "after": "status: closed"}
    assert close_ticket.__name__ == "close_ticket"
    assert close_ticket.__doc__ == "Close a support ticket."


def test_args_are_bound_by_name_with_defaults(fake: FakeServer, agent: Client) -> None:
    @gated("alert.ack", client=agent, timeout=0.5)
    def ack(alert_id: str, note: str | None = None, level: int = 2, **extra: Any) -> Any:
        """Acknowledge."""

    fake.require_approval = (*fake.require_approval, "alert.ack")
    calls: list[Callable[[], Any]] = [
        lambda: ack("AL-1"),
        lambda: ack("AL-2", note="seen", team="ops"),
    ]
    for call in calls:
        with pytest.raises(ApprovalTimeout):
            call()
    bodies = [s.body["args"] for s in fake.calls("POST", "/api/v1/proposals")]
    assert bodies == [
        {"alert_id": "AL-1", "level": 2},
        {"alert_id": "AL-2", "note": "seen", "level": 2, "team": "ops"},
    ]
    with pytest.raises(TypeError):
        ack()  # type: ignore[call-arg]


def test_star_args_are_refused(agent: Client) -> None:
    with pytest.raises(TypeError, match="names"):

        @gated("ticket.close", client=agent)
        def bad(*ids: str) -> None: ...


def test_rejection_is_a_short_sentence(fake: FakeServer, agent: Client) -> None:
    @gated("refund.create", client=agent)
    def refund(customer_id: str, amount_cents: int, currency: str) -> Any: ...

    fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="wrong customer")
    with pytest.raises(ProposalRejected) as info:
        refund("C-1", 500, "EUR")
    assert str(info.value) == "Rejected by sam: wrong customer"
    assert info.value.by == "sam"
    assert info.value.comment == "wrong customer"
    assert info.value.code == "rejected"
    assert info.value.proposal.status == "rejected"


@pytest.mark.parametrize(
    ("final", "exc", "text"),
    [
        ("expired", ProposalExpired, "Expired: ticket.close was not approved and run in time"),
        ("cancelled", ProposalCancelled, "Cancelled: ticket.close will not run"),
    ],
)
def test_expiry_and_cancellation(
    fake: FakeServer, agent: Client, final: str, exc: type[Exception], text: str
) -> None:
    @gated("ticket.close", client=agent)
    def close(ticket_id: str, reason: str) -> Any: ...

    fake.on_wait = lambda p: fake.set_status(p["id"], final)
    with pytest.raises(exc) as info:
        close(**ARGS)
    assert str(info.value) == text


def test_a_failed_execution(fake: FakeServer, agent: Client) -> None:
    @gated("ticket.close", client=agent)
    def close(ticket_id: str, reason: str) -> Any: ...

    approve_on_wait(fake)
    t = executor_thread(fake, fail="ticket is locked")
    with pytest.raises(ExecutionFailed) as info:
        close(**ARGS)
    t.join()
    assert str(info.value) == "ticket.close failed: ticket is locked"
    assert info.value.result == {"message": "ticket is locked"}


def test_timeout_then_resume_with_the_same_proposal(fake: FakeServer, agent: Client) -> None:
    @gated("ticket.close", client=agent, timeout=0.3)
    def close(ticket_id: str, reason: str) -> Any: ...

    with pytest.raises(ApprovalTimeout) as info:
        close(**ARGS)
    first = info.value.proposal
    assert first.status == "pending"
    assert "ask again later" in str(info.value)
    fake.approve(first.id)
    t = executor_thread(fake, result={"closed": True})
    t.join()
    # Asking again finds the same proposal (same key) and its outcome.
    assert close(**ARGS) == {"closed": True}
    ids = {fake.proposals[pid]["id"] for pid in fake.proposals}
    assert ids == {first.id}


def test_a_new_run_follows_the_proposal_an_earlier_run_made(fake: FakeServer) -> None:
    """The idempotency key's scope is the tenant and env: an agent restarted in
    a new run gets the original proposal back and may read and wait on it."""
    with fake.client(fake.run_token()) as first, fake.client(fake.run_token()) as second:

        @gated("ticket.close", client=first, timeout=0.2)
        def close_first(ticket_id: str, reason: str) -> Any: ...

        @gated("ticket.close", client=second, timeout=5)
        def close_second(ticket_id: str, reason: str) -> Any: ...

        with pytest.raises(ApprovalTimeout) as pending:
            close_first(**ARGS)
        pid = pending.value.proposal.id
        fake.approve(pid)
        t = executor_thread(fake, result={"closed": True})
        assert close_second(**ARGS) == {"closed": True}
        t.join()
        assert len(fake.proposals) == 1
        first_call, second_call = fake.calls("POST", "/api/v1/proposals")
        assert first_call.body["idempotency_key"] == second_call.body["idempotency_key"]
        assert first_call.headers["authorization"] != second_call.headers["authorization"]
    # a run that never used the key still sees nothing
    with fake.client(fake.run_token()) as third, pytest.raises(countersign.NotFound):
        third.get(pid)


def test_custom_key_and_reason_callable(fake: FakeServer, agent: Client) -> None:
    @gated(
        "ticket.close",
        client=agent,
        timeout=0.2,
        idempotency_key=lambda a: f"conv-7:{a['ticket_id']}",
        reason=lambda a: f"closing {a['ticket_id']}",
    )
    def close(ticket_id: str, reason: str) -> Any: ...

    with pytest.raises(ApprovalTimeout):
        close(**ARGS)
    body = fake.calls("POST", "/api/v1/proposals")[0].body
    assert body["idempotency_key"] == "conv-7:T-18421"
    assert body["reason"] == "closing T-18421"


def test_a_result_the_executor_left_out_is_an_empty_object(fake: FakeServer, agent: Client) -> None:
    @gated("ticket.close", client=agent, timeout=10)
    def close(ticket_id: str, reason: str) -> None: ...

    approve_on_wait(fake)

    def run() -> None:
        with fake.client(EXECUTOR_KEY) as ex:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for job in ex.claim():
                    ex.complete(job.job_id, job.lease_id, "succeeded")  # no result
                    return
                time.sleep(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert close(**ARGS) == {}
    t.join()


def test_an_identical_call_after_a_rejection_is_rejected_again_by_default(
    fake: FakeServer, agent: Client
) -> None:
    @gated("ticket.close", client=agent, timeout=5)
    def close(ticket_id: str, reason: str) -> Any: ...

    fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="not this one")
    with pytest.raises(ProposalRejected):
        close(**ARGS)
    fake.on_wait = None
    with pytest.raises(ProposalRejected, match="Rejected by sam: not this one"):
        close(**ARGS)  # the reviewer's no stands for this exact call
    assert len(fake.proposals) == 1


def test_a_scope_makes_the_same_args_another_proposal(fake: FakeServer, agent: Client) -> None:
    @gated("ticket.close", client=agent, timeout=0.2, scope=lambda a: "conversation-2")
    def close_in_2(ticket_id: str, reason: str) -> Any: ...

    @gated("ticket.close", client=agent, timeout=0.2, scope="conversation-1")
    def close_in_1(ticket_id: str, reason: str) -> Any: ...

    @gated("ticket.close", client=agent, timeout=0.2)
    def close(ticket_id: str, reason: str) -> Any: ...

    for call in (close_in_1, close_in_2, close_in_1, close):
        with pytest.raises(ApprovalTimeout):
            call(**ARGS)
    keys = [s.body["idempotency_key"] for s in fake.calls("POST", "/api/v1/proposals")]
    assert keys[0] == keys[2] == idempotency_key_for("ticket.close", ARGS, "conversation-1")
    assert keys[1] == idempotency_key_for("ticket.close", ARGS, "conversation-2")
    assert keys[3] == idempotency_key_for("ticket.close", ARGS)
    assert len(set(keys)) == 3
    assert len(fake.proposals) == 3
    assert all(k.startswith("ticket.close:") for k in keys)


def test_repropose_after_a_rejection(fake: FakeServer, agent: Client) -> None:
    @gated("ticket.close", client=agent, timeout=10, repropose_after={"rejected"})
    def close(ticket_id: str, reason: str) -> Any: ...

    fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="not yet")
    with pytest.raises(ProposalRejected):
        close(**ARGS)
    first = idempotency_key_for("ticket.close", ARGS)
    # the same call again proposes anew, under the next key of the chain
    approve_on_wait(fake)
    t = executor_thread(fake, result={"closed": True})
    assert close(**ARGS) == {"closed": True}
    t.join()
    assert len(fake.proposals) == 2
    keys = [s.body["idempotency_key"] for s in fake.calls("POST", "/api/v1/proposals")]
    assert keys == [first, first, f"{first}#2"]
    # and a third call walks the chain to the proposal that succeeded
    assert close(**ARGS) == {"closed": True}
    assert len(fake.proposals) == 2


async def test_async_repropose_after_a_cancellation(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent:

        @gated("ticket.close", client=agent, timeout=5, repropose_after=("cancelled",))
        async def close(ticket_id: str, reason: str) -> Any: ...

        fake.on_wait = lambda p: fake.set_status(p["id"], "cancelled")
        with pytest.raises(ProposalCancelled):
            await close(**ARGS)
        fake.on_wait = lambda p: fake.reject(p["id"])
        with pytest.raises(ProposalRejected):
            await close(**ARGS)  # a new proposal (#2): rejected is not re-proposed
        with pytest.raises(ProposalRejected):
            await close(**ARGS)
    assert len(fake.proposals) == 2


def test_the_key_chain() -> None:
    chain = countersign.gate.key_chain("ticket.close:abc")
    assert [next(chain) for _ in range(3)] == [
        "ticket.close:abc",
        "ticket.close:abc#2",
        "ticket.close:abc#3",
    ]
    long = "k" * 199
    chain = countersign.gate.key_chain(long)
    assert next(chain) == long
    second = next(chain)
    assert len(second) <= 200
    assert second.startswith("cs:")
    assert second.endswith("#2")


def test_gate_option_checks(agent: Client) -> None:
    with pytest.raises(ValueError, match="not both"):
        gated("ticket.close", client=agent, scope="s", idempotency_key=lambda a: "k")
    with pytest.raises(ValueError, match="succeeded"):
        gated("ticket.close", client=agent, repropose_after={"succeeded"})
    with pytest.raises(TypeError, match="set of statuses"):
        gated("ticket.close", client=agent, repropose_after="rejected")


def test_the_wrong_client_kind_is_refused(fake: FakeServer, agent: Client) -> None:
    """The overloads refuse these statically; at run time they are TypeErrors."""
    aclient = fake.async_client(fake.run_token())

    def sync_fn(ticket_id: str) -> None: ...

    async def async_fn(ticket_id: str) -> None: ...

    with pytest.raises(TypeError, match="is not async"):
        gated("ticket.close", client=aclient)(sync_fn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is async"):
        gated("ticket.close", client=agent)(async_fn)
    mixed: Any = gated
    with pytest.raises(TypeError, match="is not async"):
        mixed("ticket.close", client=agent, executor=fake.async_client(EXECUTOR_KEY), env=ENV)(
            sync_fn
        )
    with pytest.raises(ValueError):
        gated("ticket.close", client=agent, timeout=0)


def test_local_execution_needs_the_executors_own_env(
    agent: Client, executor_client: Client
) -> None:
    with pytest.raises(ValueError, match="needs env="):
        gated("ticket.close", client=agent, executor=executor_client)


def test_the_wrapper_says_what_a_call_returns(agent: Client) -> None:
    @gated("ticket.close", client=agent)
    def close_ticket(ticket_id: str, reason: str) -> str:
        """Close a support ticket."""
        return "never"

    sig = inspect.signature(close_ticket)
    assert list(sig.parameters) == ["ticket_id", "reason"]
    assert sig.return_annotation == dict[str, Any]
    assert typing.get_type_hints(close_ticket)["return"] == dict[str, Any]
    assert typing.get_type_hints(close_ticket)["ticket_id"] is str


# ----------------------------------------------------------- local execution


def test_local_execution_runs_the_function_for_the_approved_job(
    fake: FakeServer, agent: Client, executor_client: Client
) -> None:
    calls: list[dict[str, Any]] = []

    @gated("ticket.close", client=agent, executor=executor_client, env=ENV)
    def close_ticket(ticket_id: str, reason: str) -> Any:
        calls.append({"ticket_id": ticket_id, "reason": reason})
        return f"closed {ticket_id}"

    approve_on_wait(fake)
    # the call answers what was reported: the same as a replay answers later
    assert close_ticket(**ARGS) == {"value": "closed T-18421"}
    assert calls == [ARGS]
    [pid] = fake.proposals
    assert fake.proposals[pid]["status"] == "succeeded"
    assert fake.proposals[pid]["execution"]["result"] == {"value": "closed T-18421"}
    assert fake.calls("GET", "/.well-known/jwks.json")  # the receipt was verified
    # replayed later: the recorded outcome, without running again
    assert close_ticket(**ARGS) == {"value": "closed T-18421"}
    assert len(calls) == 1


def test_local_execution_uses_the_receipts_args(
    fake: FakeServer, agent: Client, executor_client: Client
) -> None:
    seen: list[str] = []

    @gated("ticket.close", client=agent, executor=executor_client, env=ENV)
    def close_ticket(ticket_id: str, reason: str) -> dict[str, str]:
        seen.append(ticket_id)
        return {"closed": ticket_id}

    approve_on_wait(fake)
    fake.queue_args = {"ticket_id": "T-666", "reason": "swapped"}
    assert close_ticket(**ARGS) == {"closed": "T-18421"}
    assert seen == ["T-18421"]


def test_local_execution_refuses_a_tampered_receipt(
    fake: FakeServer, agent: Client, executor_client: Client
) -> None:
    ran: list[bool] = []

    @gated("ticket.close", client=agent, executor=executor_client, env=ENV)
    def close_ticket(ticket_id: str, reason: str) -> None:
        ran.append(True)

    approve_on_wait(fake)
    fake.tamper = lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB")
    with pytest.raises(ReceiptError) as info:
        close_ticket(**ARGS)
    assert info.value.code == "receipt_bad_signature"
    assert ran == []


def test_local_execution_raises_the_functions_error(
    fake: FakeServer, agent: Client, executor_client: Client
) -> None:
    @gated("ticket.close", client=agent, executor=executor_client, env=ENV)
    def close_ticket(ticket_id: str, reason: str) -> None:
        raise LookupError(f"no ticket {ticket_id}")

    approve_on_wait(fake)
    with pytest.raises(LookupError, match="no ticket T-18421"):
        close_ticket(**ARGS)
    [pid] = fake.proposals
    assert fake.proposals[pid]["status"] == "failed"


def test_local_execution_retries_a_retryable_failure(
    fake: FakeServer, agent: Client, executor_client: Client
) -> None:
    attempts: list[int] = []

    @gated("ticket.close", client=agent, executor=executor_client, env=ENV, timeout=10)
    def close_ticket(ticket_id: str, reason: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise Retryable("flaky upstream")
        return "done"

    approve_on_wait(fake)
    assert close_ticket(**ARGS) == {"value": "done"}
    assert len(attempts) == 2


def test_local_execution_also_runs_other_jobs_of_the_tool(
    fake: FakeServer, agent: Client, executor_client: Client
) -> None:
    # another proposal of the same tool, approved earlier, waits in the queue
    with fake.client(fake.run_token()) as other:
        earlier = other.propose("ticket.close", {"ticket_id": "T-1", "reason": "x"}, "k-e").proposal
    fake.approve(earlier.id)
    ran: list[str] = []

    @gated("ticket.close", client=agent, executor=executor_client, env=ENV)
    def close_ticket(ticket_id: str, reason: str) -> str:
        ran.append(ticket_id)
        return ticket_id

    approve_on_wait(fake)
    assert close_ticket(**ARGS) == {"value": "T-18421"}
    assert ran == ["T-1", "T-18421"]
    assert fake.proposals[earlier.id]["status"] == "succeeded"


def test_local_execution_rejected(fake: FakeServer, agent: Client, executor_client: Client) -> None:
    @gated("ticket.close", client=agent, executor=executor_client, env=ENV)
    def close_ticket(ticket_id: str, reason: str) -> None:
        raise AssertionError("must not run")

    fake.on_wait = lambda p: fake.reject(p["id"], by="bob", comment="not yet")
    with pytest.raises(ProposalRejected, match="Rejected by bob: not yet"):
        close_ticket(**ARGS)


# ------------------------------------------------------------------- async


async def test_async_remote_execution(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent:

        @gated("ticket.close", client=agent)
        async def close_ticket(ticket_id: str, reason: str) -> dict[str, Any]:
            raise AssertionError("runs elsewhere")

        approve_on_wait(fake)
        t = executor_thread(fake, result={"closed": "yes"})
        assert await close_ticket(**ARGS) == {"closed": "yes"}
        await asyncio.to_thread(t.join)

        @gated("refund.create", client=agent)
        async def refund(customer_id: str, amount_cents: int, currency: str) -> Any: ...

        fake.on_wait = lambda p: fake.reject(p["id"], by="sam", comment="wrong customer")
        with pytest.raises(ProposalRejected, match=r"^Rejected by sam: wrong customer$"):
            await refund("C-1", 100, "EUR")


async def test_async_local_execution(fake: FakeServer) -> None:
    async with fake.async_client(fake.run_token()) as agent, fake.async_client(EXECUTOR_KEY) as ex:
        seen: list[str] = []

        @gated("ticket.close", client=agent, executor=ex, env=ENV)
        async def close_ticket(ticket_id: str, reason: str) -> str:
            await asyncio.sleep(0)
            seen.append(ticket_id)
            return "closed"

        approve_on_wait(fake)
        fake.queue_args = {"ticket_id": "T-0", "reason": "queue"}
        assert await close_ticket(**ARGS) == {"value": "closed"}
        assert seen == ["T-18421"]
        assert await close_ticket(**ARGS) == {"value": "closed"}  # a replay: the same
        assert seen == ["T-18421"]

        @gated("email.send", client=agent, executor=ex, env=ENV, timeout=0.3)
        async def send(to: str, subject: str, body: str) -> None: ...

        fake.on_wait = None
        with pytest.raises(ApprovalTimeout):
            await send("a@b.c", "s", "b")


def test_outcome_of_maps_every_final_status() -> None:
    def p(status: str) -> countersign.Proposal:
        return countersign.Proposal.from_json(
            {
                "id": "prp_1",
                "status": status,
                "tool": "ticket.close",
                "execution": {"status": status, "attempts": 1, "result": {"r": 1}},
            }
        )

    assert countersign.outcome_of(p("succeeded")) == {"r": 1}
    for status, exc in [
        ("failed", ExecutionFailed),
        ("rejected", ProposalRejected),
        ("expired", ProposalExpired),
        ("cancelled", ProposalCancelled),
        ("pending", ApprovalTimeout),
        ("running", ApprovalTimeout),
    ]:
        with pytest.raises(exc):
            countersign.outcome_of(p(status))
    assert str(ProposalRejected(p("rejected"))) == "Rejected: ticket.close was not approved"
