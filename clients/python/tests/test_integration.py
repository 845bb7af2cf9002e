"""Integration tests against a real countersign server (``-m server``).

The session fixture in conftest.py starts ``COUNTERSIGN_BIN`` on a fresh
SQLite database with the example policy; reviewers decide through the
browser door (harness.Reviewer). Tests that rely on docs/api.md's newer sections
(receipts and JWKS, preview jobs and ``kinds``, ``execution_key``,
revocation cancelling proposals, receipt-key rotation) say so in their name
or docstring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents.tool_context import ToolContext

import countersign
from countersign import (
    AsyncClient,
    AsyncExecutor,
    BadRequest,
    BudgetExhausted,
    Client,
    Disabled,
    Executor,
    Forbidden,
    IdempotencyConflict,
    InvalidArgs,
    InvalidTransition,
    Job,
    JobOutcome,
    NotFound,
    PayloadTooLarge,
    Preview,
    ProposalRejected,
    RateLimited,
    Retryable,
    SecretInArgs,
    ToolDenied,
    ToolNotAllowed,
    Unauthenticated,
    UnknownRoute,
    gated,
    idempotency_key_for,
)
from countersign.adapters import langchain as lc_adapter
from countersign.adapters import openai_agents as oa_adapter
from harness import ENV, POLICY, LocalServer, Reviewer

pytestmark = pytest.mark.server


# ------------------------------------------------------------------ helpers


def ticket() -> str:
    return f"T-{random.randrange(10**9, 10**10)}"


def marker() -> str:
    """A unique reason, to find a proposal in a reviewer's queue."""
    return f"sdk-it {uuid.uuid4().hex[:12]}"


def close_args(reason: str = "Issue resolved") -> dict[str, Any]:
    return {"ticket_id": ticket(), "reason": reason}


class Background:
    """A thread whose exception is re-raised by :meth:`join`."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.value: Any = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:  # re-raised in join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 60.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background work did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def drain(ex: Executor, proposal_id: str, timeout: float = 45.0) -> JobOutcome:
    """Run the executor until it processed the job of ``proposal_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for outcome in ex.run_once(wait_seconds=2):
            if outcome.proposal_id == proposal_id:
                return outcome
    raise AssertionError(f"no job of {proposal_id} was claimed in {timeout}s")


@pytest.fixture(scope="module")
def service(server: LocalServer) -> Iterator[Client]:
    with Client(server.url, server.service_key, timeout=30.0) as c:
        yield c


@pytest.fixture
def agent(service: Client) -> Iterator[Client]:
    run = service.mint_run("support/send", ttl_seconds=600)
    client = service.for_run(run)
    yield client
    client.close()


@pytest.fixture(scope="module")
def executor_client(server: LocalServer) -> Iterator[Client]:
    with Client(server.url, server.executor_key, timeout=30.0) as c:
        yield c


def propose_and_approve(
    agent: Client,
    reviewer: Reviewer,
    args: dict[str, Any] | None = None,
    tool: str = "ticket.close",
) -> str:
    res = agent.propose(tool, args or close_args(), idempotency_key=f"it-{uuid.uuid4().hex}")
    reviewer.approve(res.proposal.id)
    return res.proposal.id


# ------------------------------------------------------------- the client


def test_mint_run_check_and_the_run_client(service: Client) -> None:
    run = service.mint_run("support/send", ttl_seconds=120, on_behalf_of="carol")
    assert run.run_id.startswith("run_")
    assert run.tenant == "acme"
    assert run.env == "prod"
    assert run.route == "support/send"
    assert run.expires_at is not None
    assert {"ticket.close", "email.send", "refund.create"} <= set(run.require_approval)
    assert "kb.search" in run.allow_tools
    assert "db.write" not in run.allow_tools
    assert run.budgets.steps == 25
    with service.for_run(run) as agent:
        assert agent.check("kb.search").decision == "allow"
        assert agent.check("ticket.close").decision == "require_approval"


def test_propose_replay_across_runs_and_conflict(service: Client, agent: Client) -> None:
    args = close_args()
    key = f"it-{uuid.uuid4().hex}"
    first = agent.propose(
        "ticket.close",
        args,
        idempotency_key=key,
        reason="Customer confirmed the fix",
        preview=Preview(before="status: open", after="status: closed"),
    )
    assert not first.replayed
    p = first.proposal
    assert p.status == "pending"
    assert p.tool == "ticket.close"
    assert p.approvals_required == 1
    assert p.review_url.endswith(f"/proposals/{p.id}")
    assert p.idempotency_key == key
    assert agent.propose("ticket.close", args, idempotency_key=key).replayed
    # a new run of the same tenant and env gets the original back
    with service.for_run(service.mint_run("support/send")) as other:
        again = other.propose("ticket.close", args, idempotency_key=key)
        assert again.replayed
        assert again.proposal.id == p.id
        assert other.get(p.id).id == p.id  # the replaying run may read and wait on it
        with pytest.raises(IdempotencyConflict):
            other.propose("ticket.close", {**args, "reason": "something else"}, idempotency_key=key)
    agent.cancel(p.id)


def test_get_wait_and_cancel(agent: Client) -> None:
    p = agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}").proposal
    assert agent.get(p.id).status == "pending"
    started = time.monotonic()
    waited = agent.wait(p.id, timeout=2)
    assert waited.status == "pending"
    assert 1.5 <= time.monotonic() - started < 10
    cancelled = agent.cancel(p.id)
    assert cancelled.status == "cancelled"
    assert agent.wait(p.id, timeout=5).status == "cancelled"
    with pytest.raises(InvalidTransition):
        agent.cancel(p.id)


def test_wait_sees_approval_and_execution(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    p = agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}").proposal

    def approve_then_execute() -> JobOutcome:
        time.sleep(1.0)
        alice.approve(p.id)
        ex = Executor(
            executor_client,
            env=ENV,
            tools={"ticket.close": lambda j: {"closed": j.args["ticket_id"]}},
            verify_receipts=False,
        )
        return drain(ex, p.id)

    bg = Background(approve_then_execute)
    final = agent.wait(p.id, timeout=60)
    outcome = bg.join()
    assert final.status == "succeeded", final
    assert final.execution is not None
    assert final.execution.attempts == 1
    assert final.result == outcome.result
    assert [d.by for d in final.decisions] == ["alice"]
    assert final.decisions[0].verdict == "approve"
    assert [a.by for a in final.approvals] == ["alice"]


def test_claim_heartbeat_complete_with_the_raw_client(
    service: Client, alice: Reviewer, bob: Reviewer, executor_client: Client
) -> None:
    with service.for_run(service.mint_run("support/send")) as agent:
        args = {
            "customer_id": f"C-{random.randrange(10**6)}",
            "amount_cents": 1250,
            "currency": "EUR",
        }
        p = agent.propose("refund.create", args, f"it-{uuid.uuid4().hex}").proposal
        assert p.approvals_required == 2
        alice.approve(p.id)
        assert agent.get(p.id).status == "pending"
        bob.approve(p.id)
        jobs: list[countersign.ClaimedJob] = []
        deadline = time.monotonic() + 20
        while not jobs and time.monotonic() < deadline:
            jobs = [
                j
                for j in executor_client.claim(
                    tools=["refund.create"], max=10, lease_seconds=30, wait_seconds=5
                )
                if j.proposal_id == p.id
            ]
        [job] = jobs
        assert job.tool == "refund.create"
        assert job.args == args
        assert job.attempt == 1
        assert job.tenant == "acme"
        assert job.env == "prod"
        beat = executor_client.heartbeat(job.job_id, job.lease_id, lease_seconds=30)
        assert beat.job_id == job.job_id
        assert beat.lease_expires_at is not None
        done = executor_client.complete(job.job_id, job.lease_id, "succeeded", {"refund": "re_1"})
        assert done.state == "succeeded"
        assert done.proposal_status == "succeeded"
        again = executor_client.complete(job.job_id, job.lease_id, "succeeded", {"refund": "re_1"})
        assert again.state == "succeeded"
        with pytest.raises(InvalidTransition):
            executor_client.complete(job.job_id, job.lease_id, "failed", {"other": True})
        with pytest.raises(InvalidTransition):
            executor_client.heartbeat(job.job_id, job.lease_id)
        final = agent.get(p.id)
        assert final.status == "succeeded"
        assert final.result == {"refund": "re_1"}
        assert sorted(a.by for a in final.approvals) == ["alice", "bob"]


async def test_async_client_against_the_server(server: LocalServer, alice: Reviewer) -> None:
    async with AsyncClient(server.url, server.service_key) as service:
        run = await service.mint_run("support/send")
        agent = service.for_run(run)
        assert (await agent.check("kb.search")).allowed
        res = await agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}")
        assert not res.replayed
        assert (await agent.get(res.proposal.id)).status == "pending"
        assert (await agent.wait(res.proposal.id, timeout=1)).status == "pending"
        assert (await agent.cancel(res.proposal.id)).status == "cancelled"
        with pytest.raises(NotFound):
            await agent.get("prp_01doesnotexist")
    async with AsyncClient(server.url, server.executor_key) as ex:
        # kb.search is not among the key's tools: the claim is empty, at once
        assert await ex.claim(tools=["kb.search"], wait_seconds=0) == []


# ------------------------------------------------------------------ errors


def test_error_bad_request(executor_client: Client) -> None:
    with pytest.raises(BadRequest) as info:
        executor_client.claim(max=0)
    assert info.value.status == 400
    assert info.value.code == "bad_request"


def test_error_unauthenticated(server: LocalServer) -> None:
    with Client(server.url, "not-a-credential") as c, pytest.raises(Unauthenticated) as info:
        c.check("kb.search")
    assert info.value.status == 401


def test_error_tool_denied_and_not_allowed(service: Client) -> None:
    with service.for_run(service.mint_run("support/send")) as agent:
        with pytest.raises(ToolDenied) as denied:
            agent.check("db.write")
        assert denied.value.status == 403
        assert denied.value.tool == "db.write"
        assert denied.value.route == "support/send"
        with pytest.raises(ToolNotAllowed) as not_allowed:
            agent.propose("web.search", {"query": "x"})
        assert not_allowed.value.status == 403
        assert not_allowed.value.tool == "web.search"
        assert not_allowed.value.route == "support/send"


def test_error_forbidden(server: LocalServer, service: Client, agent: Client) -> None:
    with pytest.raises(Forbidden):
        service.check("kb.search")  # a service key may only mint runs
    with pytest.raises(Forbidden):
        agent.claim()  # a run token may not claim jobs
    with Client(server.url, server.executor_key) as ex, pytest.raises(Forbidden):
        ex.mint_run("support/send")


def test_error_not_found(agent: Client, service: Client) -> None:
    with pytest.raises(NotFound):
        agent.get("prp_01doesnotexist")
    mine = agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}").proposal
    with service.for_run(service.mint_run("support/send")) as other, pytest.raises(NotFound):
        other.get(mine.id)  # another run's proposal is invisible
    agent.cancel(mine.id)


def test_error_idempotency_conflict(agent: Client) -> None:
    key = f"it-{uuid.uuid4().hex}"
    p = agent.propose("ticket.close", close_args(), key).proposal
    with pytest.raises(IdempotencyConflict) as info:
        agent.propose("ticket.close", close_args(), key)
    assert info.value.status == 409
    agent.cancel(p.id)


def test_error_invalid_transition(agent: Client) -> None:
    p = agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}").proposal
    agent.cancel(p.id)
    with pytest.raises(InvalidTransition) as info:
        agent.cancel(p.id)
    assert info.value.status == 409


def test_error_payload_too_large(agent: Client) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        agent.propose("ticket.close", {"ticket_id": ticket(), "reason": "x" * (70 * 1024)}, "k")
    assert info.value.status == 413


def test_error_invalid_args(agent: Client) -> None:
    with pytest.raises(InvalidArgs) as info:
        agent.propose(
            "ticket.close", {"ticket_id": "not-a-ticket", "reason": "r"}, f"it-{uuid.uuid4().hex}"
        )
    assert info.value.status == 422
    assert "ticket_id" in info.value.fields


def test_error_secret_in_args(agent: Client) -> None:
    with pytest.raises(SecretInArgs) as info:
        agent.propose(
            "ticket.close",
            {"ticket_id": ticket(), "reason": "key AKIAIOSFODNN7EXAMPLE"},
            f"it-{uuid.uuid4().hex}",
        )
    assert info.value.status == 422
    assert info.value.field == "args.reason"
    assert info.value.kind  # what it looked like, e.g. an AWS access key
    assert "AKIA" not in info.value.message
    assert "AKIA" not in str(info.value.details)


def test_error_unknown_route(service: Client) -> None:
    with pytest.raises(UnknownRoute) as info:
        service.mint_run("no/such/route")
    assert info.value.status == 422


def test_error_disabled_by_a_kill_switch(server: LocalServer, service: Client) -> None:
    run = service.mint_run("research")
    server.cli(
        "switch", "on", "--route", "research", "--reason", "sdk test", "--policy", str(POLICY)
    )
    try:
        with service.for_run(run) as agent, pytest.raises(Disabled) as info:
            agent.check("web.search")
        assert info.value.status == 423
        assert info.value.switch
    finally:
        server.cli(
            "switch",
            "off",
            "--route",
            "research",
            "--reason",
            "sdk test done",
            "--policy",
            str(POLICY),
        )


def test_error_budget_exhausted(service: Client) -> None:
    run = service.mint_run("support/draft")
    with service.for_run(run) as agent:
        for _ in range(run.budgets.steps - 1):
            agent.check("kb.search")
        # the budget runs out within the next two steps (whether minting or
        # the first check counted one is the server's business)
        with pytest.raises(BudgetExhausted) as info:
            exhaust(agent, 2)
        assert info.value.status == 429
        assert info.value.budget == "steps"


def exhaust(agent: Client, steps: int) -> None:
    for _ in range(steps):
        agent.check("kb.search")


# -------------------------------------------------------------- the gate


def test_gated_call_through_a_real_approval(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    reason = marker()

    @gated("ticket.close", client=agent, reason=reason, timeout=90)
    def close_ticket(ticket_id: str, reason: str) -> dict[str, Any]:
        """Close a support ticket (executed elsewhere)."""
        raise AssertionError("the body never runs in remote execution")

    args = close_args()

    def reviewer_and_executor() -> None:
        pid = alice.find(reason)
        alice.approve(pid)
        ex = Executor(
            executor_client,
            env=ENV,
            tools={"ticket.close": lambda j: {"closed": j.args}},
            verify_receipts=False,
        )
        drain(ex, pid)

    bg = Background(reviewer_and_executor)
    assert close_ticket(**args) == {"closed": args}
    bg.join()
    # the same call again is the same proposal: its outcome, at once
    assert close_ticket(**args) == {"closed": args}


def test_gated_call_rejected_by_a_reviewer(agent: Client, bob: Reviewer) -> None:
    reason = marker()

    @gated("email.send", client=agent, reason=reason, timeout=60)
    def send_email(to: str, subject: str, body: str) -> Any:
        """Send an email."""

    bg = Background(lambda: bob.reject(bob.find(reason), "wrong customer"))
    with pytest.raises(ProposalRejected) as info:
        send_email("pat@example.com", "Your refund", "It is on its way.")
    bg.join()
    assert str(info.value) == "Rejected by bob: wrong customer"


def test_gated_local_execution_with_receipts(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    """Needs docs/api.md's approval receipts and JWKS."""
    reason = marker()
    ran: list[dict[str, str]] = []

    @gated(
        "ticket.close",
        client=agent,
        executor=executor_client,
        env=ENV,
        reason=reason,
        timeout=90,
    )
    def close_ticket(ticket_id: str, reason: str) -> str:
        ran.append({"ticket_id": ticket_id, "reason": reason})
        return f"closed {ticket_id}"

    args = close_args()
    bg = Background(lambda: alice.approve(alice.find(reason)))
    assert close_ticket(**args) == {"value": f"closed {args['ticket_id']}"}
    bg.join()
    assert args in ran
    # the same call again is the recorded result, and the function does not run
    assert close_ticket(**args) == {"value": f"closed {args['ticket_id']}"}
    assert ran.count(args) == 1


def test_gated_call_proposes_again_after_a_real_rejection(
    agent: Client, alice: Reviewer, bob: Reviewer, executor_client: Client
) -> None:
    reason = marker()

    @gated("ticket.close", client=agent, reason=reason, timeout=90, repropose_after={"rejected"})
    def close_ticket(ticket_id: str, reason: str) -> None:
        """Close a support ticket (executed elsewhere)."""

    args = close_args()
    bg = Background(lambda: bob.reject(bob.find(reason), "not yet"))
    with pytest.raises(ProposalRejected, match="Rejected by bob: not yet"):
        close_ticket(**args)
    bg.join()
    first = idempotency_key_for("ticket.close", args)

    def approve_and_run() -> str:
        pid = alice.find(reason)
        alice.approve(pid)
        ex = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: {"closed": True}})
        drain(ex, pid)
        return pid

    bg2 = Background(approve_and_run)
    assert close_ticket(**args) == {"closed": True}
    second = bg2.join()
    assert agent.get(second).idempotency_key == f"{first}#2"
    assert close_ticket(**args) == {"closed": True}  # walks the chain, proposes nothing


# --------------------------------------------------------------- executor


def test_executor_verifies_the_receipt_and_runs_on_its_args(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    """Needs docs/api.md's approval receipts, JWKS and execution_key."""
    args = close_args()
    pid = propose_and_approve(agent, alice, args)
    got: list[Job] = []

    def close(job: Job) -> dict[str, Any]:
        got.append(job)
        return {"closed": job.args["ticket_id"]}

    ex = Executor(executor_client, tools={"ticket.close": close}, env="prod")
    outcome = drain(ex, pid)
    assert outcome.status == "succeeded"
    assert outcome.completion is not None
    job = next(j for j in got if j.proposal_id == pid)
    assert job.args == args
    assert job.receipt is not None
    assert job.receipt.jti == job.job_id
    assert job.receipt.sub == pid
    assert job.receipt.env == "prod"
    assert job.receipt.tool == "ticket.close"
    assert [a.by for a in job.receipt.approvals] == ["alice"]
    assert job.execution_key
    assert job.receipt.execution_key == job.execution_key
    assert agent.get(pid).status == "succeeded"
    keys = executor_client.jwks()["keys"]
    assert any(k.get("kid") == job.receipt.kid and k.get("crv") == "Ed25519" for k in keys)


def test_executor_refuses_a_tampered_receipt(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    """Needs docs/api.md's approval receipts."""
    args = close_args()
    pid = propose_and_approve(agent, alice, args, tool="ticket.close")
    ran: list[Job] = []
    ex = Executor(executor_client, env=ENV, tools={"ticket.close": ran.append})
    claimed = None
    deadline = time.monotonic() + 30
    while claimed is None and time.monotonic() < deadline:
        for job in executor_client.claim(tools=["ticket.close"], max=10, wait_seconds=2):
            if job.proposal_id == pid:
                claimed = job
            else:
                ex.process(job)  # someone else's: handle it normally
    assert claimed is not None
    assert claimed.receipt
    head, payload, sig = claimed.receipt.split(".")
    forged_payload = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    forged = dataclasses.replace(claimed, receipt=".".join([head, forged_payload, sig]))
    outcome = ex.process(forged)
    assert all(j.proposal_id != pid for j in ran)
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert outcome.completion is not None
    final = agent.get(pid)
    assert final.status == "failed"
    assert final.result["error"] == "receipt_rejected"
    assert final.result["code"] in ("receipt_bad_signature", "receipt_malformed")


def test_heartbeats_keep_a_long_jobs_lease(
    server: LocalServer, agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    pid = propose_and_approve(
        agent,
        alice,
        {"to": "pat@example.com", "subject": "Hello", "body": "A long one"},
        tool="email.send",
    )
    started = threading.Event()
    others: list[list[countersign.ClaimedJob]] = []

    def slow(job: Job) -> dict[str, Any]:
        if job.proposal_id != pid:
            return {"skipped": True}
        started.set()
        time.sleep(6)  # three times the lease
        return {"sent": True}

    ex = Executor(
        executor_client,
        env=ENV,
        tools={"email.send": slow},
        lease_seconds=2,
        heartbeat_every=0.5,
        verify_receipts=False,
    )

    def rival() -> None:
        # Another executor asks for the same tool while the lease should be held.
        started.wait(30)
        with Client(server.url, server.executor_key) as c:
            for _ in range(4):
                others.append(c.claim(tools=["email.send"], max=10, lease_seconds=2))
                time.sleep(1)

    bg = Background(rival)
    outcome = drain(ex, pid)
    bg.join()
    assert outcome.status == "succeeded"
    assert outcome.completion is not None
    assert outcome.completion_error is None
    assert outcome.completion.attempt == 1
    assert all(j.proposal_id != pid for batch in others for j in batch)
    final = agent.get(pid)
    assert final.status == "succeeded"
    assert final.execution is not None
    assert final.execution.attempts == 1


def test_retryable_failure_comes_back_with_the_same_job_and_execution_key(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    """The execution_key assertions need docs/api.md's execution_key."""
    pid = propose_and_approve(agent, alice)
    seen: list[Job] = []

    def flaky(job: Job) -> dict[str, Any]:
        if job.proposal_id == pid:
            seen.append(job)
            if len(seen) == 1:
                raise Retryable("upstream timed out")
        return {"ok": True}

    ex = Executor(executor_client, env=ENV, tools={"ticket.close": flaky}, verify_receipts=False)
    first = drain(ex, pid)
    assert first.status == "failed"
    assert first.retryable
    assert first.completion is not None
    assert first.completion.state == "queued"
    second = drain(ex, pid, timeout=60)
    assert second.status == "succeeded"
    assert [j.attempt for j in seen] == [1, 2]
    assert seen[0].job_id == seen[1].job_id
    assert seen[0].lease_id != seen[1].lease_id
    assert seen[0].idempotency_key == seen[1].idempotency_key
    assert seen[0].execution_key
    assert seen[0].execution_key == seen[1].execution_key
    assert agent.get(pid).status == "succeeded"


def test_receipt_key_rotation(
    server: LocalServer, agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    """`countersign receipt-key rotate` makes a new key; the running server
    signs with it once it looks (every 10 s); the executor fetches the JWKS
    once more for the new kid, and receipts of the old key still verify."""
    ex = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: {"ok": True}})
    first = drain(ex, propose_and_approve(agent, alice))
    assert first.status == "succeeded"
    assert first.job is not None
    assert first.job.receipt is not None
    old_kid = first.job.receipt.kid
    assert ex.verifier is not None
    fetches = ex.verifier.fetches
    server.cli("receipt-key", "rotate")
    published = {k["kid"] for k in executor_client.jwks()["keys"]}
    assert old_kid in published
    assert len(published) >= 2  # the new key is published at once
    # Receipts are signed at approval: approve until one is signed with the new
    # key (the server picks it up within its 10 s refresh).
    kids: list[str] = []
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        outcome = drain(ex, propose_and_approve(agent, alice))
        assert outcome.status == "succeeded"
        assert outcome.job is not None
        assert outcome.job.receipt is not None
        kids.append(outcome.job.receipt.kid)
        if kids[-1] != old_kid:
            break
        time.sleep(1.0)
    assert kids[-1] != old_kid, f"the server still signed with {old_kid} after 25 s"
    assert kids[-1] in published
    assert all(k == old_kid for k in kids[:-1])  # old-key receipts verified meanwhile
    assert ex.verifier.fetches == fetches + 1  # exactly one re-fetch, for the new kid


def test_revoking_a_run_cancels_its_proposals_and_flags_running_jobs(
    server: LocalServer, service: Client, alice: Reviewer, executor_client: Client
) -> None:
    """Needs docs/api.md's revocation: pending proposals cancelled, heartbeats
    answering cancel_requested."""
    run = service.mint_run("support/send")
    agent = service.for_run(run)
    running = propose_and_approve(agent, alice)
    pending = agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}").proposal
    saw_cancel: list[bool] = []
    started = threading.Event()

    def long_close(job: Job) -> dict[str, Any]:
        if job.proposal_id != running:
            return {"ok": True}
        started.set()
        deadline = time.monotonic() + 20
        while not job.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.1)
        saw_cancel.append(job.cancel_requested)
        return {"stopped": job.cancel_requested}

    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": long_close},
        heartbeat_every=0.3,
        verify_receipts=False,
    )

    def revoke() -> None:
        started.wait(30)
        server.cli("run", "revoke", run.run_id, "--reason", "sdk test")

    bg = Background(revoke)
    outcome = drain(ex, running)
    bg.join()
    assert saw_cancel == [True]
    assert outcome.status == "succeeded"
    with pytest.raises(Unauthenticated):
        agent.get(pending.id)  # the run's token ended at once
    assert alice.review(pending.id)["status"] == "cancelled"
    agent.close()


#: ticket.close on the second server: an approved job must run this soon.
SHORT_EXECUTE_WITHIN = 6


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A second server whose policy has email.send previewed by the executor
    and ticket.close executed within a few seconds of its approval."""
    workdir: Path = tmp_path_factory.mktemp("countersign-second")
    text = POLICY.read_text()
    policy = workdir / "policy.toml"
    for anchor, extra in [
        ('[tools."email.send"]\nkind = "write"\n', 'preview = "executor"\n'),
        (
            '[tools."ticket.close"]\nkind = "write"\n',
            f"execute_within_seconds = {SHORT_EXECUTE_WITHIN}\n",
        ),
    ]:
        assert anchor in text
        text = text.replace(anchor, anchor + extra)
    policy.write_text(text)
    srv = LocalServer.start(workdir, policy=policy)
    try:
        yield srv
    finally:
        srv.stop()


def test_executor_previews_then_executes(second_server: LocalServer) -> None:
    """Needs docs/api.md's previews computed by the executor (preview jobs, kinds)."""
    srv = second_server
    reviewer = Reviewer(srv.url, "alice")
    try:
        with Client(srv.url, srv.service_key) as service, Client(srv.url, srv.executor_key) as exc:
            agent = service.for_run(service.mint_run("support/send"))
            args = {"to": "pat@example.com", "subject": "Refund", "body": "On its way"}
            with pytest.raises(InvalidArgs) as refused:
                agent.propose(
                    "email.send", args, f"it-{uuid.uuid4().hex}", preview=Preview("a", "b")
                )
            assert "preview" in refused.value.fields
            p = agent.propose("email.send", args, f"it-{uuid.uuid4().hex}").proposal
            assert p.status == "previewing"
            states: list[str | None] = []

            def preview(job: Job) -> Preview:
                return Preview(before="outbox: empty", after="outbox: 1 email", state="outbox-v1")

            def send(job: Job) -> dict[str, Any]:
                states.append(job.preview_state)
                if job.preview_state != "outbox-v1":
                    raise countersign.StalePreview("outbox changed")
                return {"sent": True}

            ex = Executor(
                exc, env=ENV, tools={"email.send": send}, previews={"email.send": preview}
            )
            shown = drain(ex, p.id)
            assert shown.claimed.kind == "preview"
            assert shown.status == "succeeded"
            assert agent.get(p.id).status == "pending"
            assert reviewer.review(p.id)["content_hash"]
            reviewer.approve(p.id)
            done = drain(ex, p.id)
            assert done.claimed.kind == "execute"
            assert done.status == "succeeded"
            assert states == ["outbox-v1"]
            assert agent.wait(p.id, timeout=10).status == "succeeded"
            agent.close()
    finally:
        reviewer.close()


def test_a_lease_cannot_outlast_the_execute_by_time(second_server: LocalServer) -> None:
    """The server refuses a heartbeat past the job's execute-by time
    (core/src/service/jobs.rs): that is not a lost lease. With a receipt the
    executor asks for nothing past its exp; without, it reads the refusal."""
    srv = second_server
    reviewer = Reviewer(srv.url, "alice")
    try:
        with Client(srv.url, srv.service_key) as service, Client(srv.url, srv.executor_key) as exc:
            agent = service.for_run(service.mint_run("support/send"))
            flags: dict[str, tuple[bool, bool]] = {}

            def slow(job: Job) -> dict[str, Any]:
                time.sleep(1.5)
                flags[job.proposal_id] = (job.deadline_reached, job.lease_lost)
                return {"closed": True}

            for verify in (True, False):
                pid = propose_and_approve(agent, reviewer)
                ex = Executor(
                    exc,
                    env=ENV,
                    tools={"ticket.close": slow},
                    lease_seconds=30,
                    heartbeat_every=0.3,
                    verify_receipts=verify,
                )
                outcome = drain(ex, pid, timeout=SHORT_EXECUTE_WITHIN)
                assert flags[pid] == (True, False), verify
                assert outcome.status == "succeeded"
                assert outcome.completion is not None  # the lease was still held
                assert outcome.completion_error is None
                assert agent.get(pid).status == "succeeded"
            # the raw refusal, as the client raises it
            pid = propose_and_approve(agent, reviewer)
            [job] = [
                j
                for j in exc.claim(tools=["ticket.close"], max=10, wait_seconds=2)
                if j.proposal_id == pid
            ]
            with pytest.raises(InvalidTransition, match="execute-by") as refused:
                exc.heartbeat(job.job_id, job.lease_id, lease_seconds=60)
            assert refused.value.status == 409
            exc.complete(job.job_id, job.lease_id, "succeeded", {"closed": True})
            agent.close()
    finally:
        reviewer.close()


# ------------------------------------------------------------ rate limits


def test_error_rate_limited_past_16_long_polls_of_one_key(server: LocalServer) -> None:
    """docs/api.md: 429 rate_limited when one holder has too many long polls
    open (core/src/service/mod.rs: MAX_LONG_POLLS_PER_HOLDER = 16). A fresh
    executor key of a tool nobody proposes keeps them waiting."""
    key = server.new_executor_key(f"rl-{uuid.uuid4().hex[:8]}", ("alert.ack",))
    hold = 5
    with Client(server.url, key, timeout=30.0) as ex:
        holders = [
            Background(lambda: ex.claim(tools=["alert.ack"], wait_seconds=hold)) for _ in range(16)
        ]
        limited: RateLimited | None = None
        deadline = time.monotonic() + hold - 1
        while limited is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                ex.claim(tools=["alert.ack"], wait_seconds=1)
            except RateLimited as exc:
                limited = exc
        for h in holders:
            assert h.join(30) == []
        assert limited is not None, "17 long polls at once were never refused"
        assert limited.status == 429
        assert limited.code == "rate_limited"
        assert limited.retry_after_seconds == 1.0
        # the slots are back once the long polls ended
        assert ex.claim(tools=["alert.ack"], wait_seconds=1) == []


def test_wait_rides_out_rate_limiting(server: LocalServer, service: Client) -> None:
    """Client.wait when the run already holds 16 long polls: it pauses as the
    429 says and goes on, without raising."""
    answers: list[int] = []
    hook = {"response": [lambda r: answers.append(r.status_code)]}
    run = service.mint_run("support/send", ttl_seconds=600)
    with (
        httpx.Client(event_hooks=hook) as http,
        Client(server.url, run.token, http_client=http, timeout=30.0) as agent,
    ):
        p = agent.propose("ticket.close", close_args(), f"it-{uuid.uuid4().hex}").proposal
        holders = [
            Background(
                lambda: (
                    httpx.get(
                        f"{server.url}/api/v1/proposals/{p.id}/wait",
                        params={"timeout_seconds": 4},
                        headers={"Authorization": f"Bearer {run.token}"},
                        timeout=30.0,
                    ).status_code
                )
            )
            for _ in range(16)
        ]
        time.sleep(1.0)  # the 16 are waiting
        started = time.monotonic()
        waited = agent.wait(p.id, timeout=6)
        took = time.monotonic() - started
        assert [h.join(30) for h in holders] == [200] * 16
        assert waited.status == "pending"
        assert 5 <= took < 15
        assert 429 in answers  # it was refused, and rode it out
        assert answers[-1] == 200
        agent.cancel(p.id)


# ------------------------------------------------------------------ async


async def test_async_client_claims_heartbeats_and_completes(
    server: LocalServer, service: Client, alice: Reviewer
) -> None:
    with service.for_run(service.mint_run("support/send")) as agent:
        args = close_args()
        pid = propose_and_approve(agent, alice, args)
        async with AsyncClient(server.url, server.executor_key) as ex:
            mine: countersign.ClaimedJob | None = None
            deadline = time.monotonic() + 20
            while mine is None and time.monotonic() < deadline:
                for job in await ex.claim(tools=["ticket.close"], max=10, wait_seconds=2):
                    if job.proposal_id == pid:
                        mine = job
                    else:  # another test's leftover: finish it
                        await ex.complete(job.job_id, job.lease_id, "succeeded", {"ok": True})
            assert mine is not None
            jwks = await ex.jwks()
            receipt = countersign.verify_receipt(
                mine.receipt, countersign.KeySet(jwks), mine, env=ENV
            )
            assert receipt.args == args
            beat = await ex.heartbeat(mine.job_id, mine.lease_id, lease_seconds=30)
            assert beat.lease_id == mine.lease_id
            assert not beat.cancel_requested
            done = await ex.complete(mine.job_id, mine.lease_id, "succeeded", {"closed": True})
            assert done.state == "succeeded"
            again = await ex.complete(mine.job_id, mine.lease_id, "succeeded", {"closed": True})
            assert again.state == "succeeded"
            with pytest.raises(InvalidTransition):
                await ex.complete(mine.job_id, mine.lease_id, "failed", {"no": True})
            with pytest.raises(InvalidTransition):
                await ex.heartbeat(mine.job_id, mine.lease_id)
        assert agent.get(pid).result == {"closed": True}


async def test_async_executor_against_the_server(
    server: LocalServer, service: Client, alice: Reviewer
) -> None:
    """Receipts verified, the receipt's args, heartbeats holding a lease three
    times its length, and a tampered receipt refused."""
    with service.for_run(service.mint_run("support/send")) as agent:
        args = close_args()
        pid = propose_and_approve(agent, alice, args)
        forged_pid = propose_and_approve(agent, alice)
        got: list[Job] = []

        async def close(job: Job) -> dict[str, Any]:
            got.append(job)
            if job.proposal_id == pid:
                await asyncio.sleep(6)  # three times the lease
            return {"closed": job.args["ticket_id"]}

        async with AsyncClient(server.url, server.executor_key) as ex_client:
            ex = AsyncExecutor(
                ex_client,
                env=ENV,
                tools={"ticket.close": close},
                lease_seconds=2,
                heartbeat_every=0.5,
            )
            outcomes: dict[str, JobOutcome] = {}
            deadline = time.monotonic() + 40
            while pid not in outcomes and time.monotonic() < deadline:
                for o in await ex.run_once(wait_seconds=2):
                    outcomes[o.proposal_id] = o
            outcome = outcomes[pid]
            assert outcome.status == "succeeded"
            assert outcome.completion is not None
            assert outcome.completion.attempt == 1
            job = next(j for j in got if j.proposal_id == pid)
            assert job.args == args
            assert job.receipt is not None
            assert job.receipt.env == ENV
            assert not job.lease_lost

            if forged_pid in outcomes:  # claimed with the first: run as usual
                assert outcomes[forged_pid].status == "succeeded"
            else:
                claimed = None
                deadline = time.monotonic() + 20
                while claimed is None and time.monotonic() < deadline:
                    for j in await ex_client.claim(tools=["ticket.close"], max=10, wait_seconds=2):
                        if j.proposal_id == forged_pid:
                            claimed = j
                        else:
                            await ex.process(j)
                assert claimed is not None
                assert claimed.receipt
                head, payload, sig = claimed.receipt.split(".")
                flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
                forged = dataclasses.replace(claimed, receipt=".".join([head, flipped, sig]))
                refused = await ex.process(forged)
                assert refused.status == "failed"
                assert not refused.retryable
                assert all(j.proposal_id != forged_pid for j in got)
                assert agent.get(forged_pid).result["error"] == "receipt_rejected"
        assert agent.get(pid).status == "succeeded"


# ----------------------------------------------------------- graceful stop


def test_sigterm_hands_back_an_unfinished_job_and_the_queue_offers_it_again(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    pid = propose_and_approve(agent, alice)
    attempts: list[int] = []

    def slow(job: Job) -> dict[str, Any]:
        if job.proposal_id != pid:
            return {"ok": True}
        attempts.append(job.attempt)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while not job.handed_back and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"too": "late"}

    ex = Executor(
        executor_client,
        env=ENV,
        tools={"ticket.close": slow},
        wait_seconds=2,
        grace_seconds=1.0,
    )
    started = time.monotonic()
    ex.run()
    assert time.monotonic() - started < 15
    assert attempts == [1]
    again = agent.get(pid)
    assert again.status == "queued"  # handed back, to be offered again
    assert again.execution is not None
    assert again.execution.result == {
        "code": "executor_stopping",
        "message": "executor stopping: handed back before it finished",
    }
    # another executor (or this one, restarted) gets it, as attempt 2
    other = Executor(executor_client, env=ENV, tools={"ticket.close": lambda j: {"ok": 2}})
    done = drain(other, pid, timeout=30)
    assert done.status == "succeeded"
    assert done.claimed.attempt == 2
    assert agent.get(pid).result == {"ok": 2}


# ---------------------------------------------------------------- adapters


async def test_openai_agents_tool_drives_a_gated_call(
    server: LocalServer, alice: Reviewer, executor_client: Client
) -> None:
    reason = marker()
    async with AsyncClient(server.url, server.service_key) as service:
        agent = service.for_run(await service.mint_run("support/send"))

        @oa_adapter.gated_tool("ticket.close", client=agent, reason=reason, timeout=90)
        async def close_ticket(ticket_id: str, reason: str) -> Any:
            """Close a support ticket."""

        def reviewer_and_executor() -> None:
            pid = alice.find(reason)
            alice.approve(pid)
            ex = Executor(
                executor_client,
                env=ENV,
                tools={"ticket.close": lambda j: {"closed": True}},
                verify_receipts=False,
            )
            drain(ex, pid)

        bg = Background(reviewer_and_executor)
        args = json.dumps(close_args())
        ctx = ToolContext(
            context=None, tool_name=close_ticket.name, tool_call_id="call_1", tool_arguments=args
        )
        out = await close_ticket.on_invoke_tool(ctx, args)
        bg.join()
        assert out == {"closed": True}

        reason2 = marker()

        @oa_adapter.gated_tool("ticket.close", client=agent, reason=reason2, timeout=60)
        async def close_again(ticket_id: str, reason: str) -> Any:
            """Close a support ticket."""

        bg2 = Background(lambda: alice.reject(alice.find(reason2), "not this one"))
        args2 = json.dumps(close_args())
        ctx2 = ToolContext(
            context=None, tool_name=close_again.name, tool_call_id="call_2", tool_arguments=args2
        )
        assert await close_again.on_invoke_tool(ctx2, args2) == "Rejected by alice: not this one"
        bg2.join()


def test_langchain_tool_drives_a_gated_call(
    agent: Client, alice: Reviewer, executor_client: Client
) -> None:
    reason = marker()

    @lc_adapter.gated_tool("ticket.close", client=agent, reason=reason, timeout=90)
    def close_ticket(ticket_id: str, reason: str) -> Any:
        """Close a support ticket."""

    def reviewer_and_executor() -> None:
        pid = alice.find(reason)
        alice.approve(pid)
        ex = Executor(
            executor_client,
            env=ENV,
            tools={"ticket.close": lambda j: {"closed": True}},
            verify_receipts=False,
        )
        drain(ex, pid)

    bg = Background(reviewer_and_executor)
    assert close_ticket.invoke(close_args()) == {"closed": True}
    bg.join()

    reason2 = marker()

    @lc_adapter.gated_tool("ticket.close", client=agent, reason=reason2, timeout=60)
    def close_other(ticket_id: str, reason: str) -> Any:
        """Close a support ticket."""

    bg2 = Background(lambda: alice.reject(alice.find(reason2), "wrong ticket"))
    assert close_other.invoke(close_args()) == "Rejected by alice: wrong ticket"
    bg2.join()


def test_health_endpoints(server: LocalServer) -> None:
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
