//! Release: an approved proposal becomes a job on the executor queue, or is
//! held (status `approved`, job `held`) while a kill switch or a tripped route
//! breaker covers it; held jobs are queued once nothing holds them. This
//! module owns approved -> held | queued, and cancels jobs not yet claimed.

use super::receipts::Signer;
use crate::audit::{hash_parts, AuditDraft};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::lifecycle::{JobKind, JobState, Status};
use crate::policy::Policy;
use crate::receipts::{execution_key, ReceiptApproval, ReceiptClaims, ReceiptUpstream};
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::proposals::{DecisionRow, ProposalRow};
use crate::store::queries::{controls, proposals};
use crate::store::{Notice, Tx};

/// Why an approved proposal is released, and by whose approvals.
pub(super) struct Approved<'a> {
    pub why: &'a str,
    /// The approvals that reached the threshold (none: the policy gates nothing).
    pub approvals: &'a [DecisionRow],
    pub break_glass: bool,
}

/// The SHA-256 of the preview the reviewers saw, as a receipt names it.
fn preview_sha256(row: &ProposalRow) -> Option<String> {
    match (&row.preview_before, &row.preview_after) {
        (Some(b), Some(a)) => Some(hash_parts(&[b, a])),
        _ => None,
    }
}

/// Put an approved proposal on the executor queue (or hold it), with its
/// signed receipt, in the caller's transaction. `row` is updated to its new
/// status.
pub(super) async fn release_approved(
    tx: &mut Tx<'_>,
    policy: &Policy,
    signer: &Signer,
    row: &mut ProposalRow,
    approved: Approved<'_>,
) -> Result<JobRow> {
    let tool = policy.tool(&row.tool).ok_or(Error::NotFound)?;
    let now = tx.now_ms();
    let execute_by = now + tool.execute_within_seconds * 1000;
    let held = controls::in_force(tx)
        .await?
        .holding(&row.tenant, &row.route, &row.tool);
    let state = if held.is_some() {
        JobState::Held
    } else {
        JobState::Queued
    };
    if !proposals::approve(
        &mut tx.conn,
        &row.id,
        row.approvals,
        state.proposal_status(),
        now,
        execute_by,
    )
    .await?
    {
        return Err(Error::InvalidTransition("this proposal is no longer pending".into()));
    }
    row.status = state.proposal_status();
    row.decided_at = Some(now);
    row.execute_by = Some(execute_by);
    let job_id = new_id("job");
    let exec_key = execution_key(
        row.idempotency_scope.as_deref(),
        row.idempotency_key.as_deref(),
        &job_id,
    );
    let claims = ReceiptClaims {
        iss: signer.issuer.clone(),
        jti: job_id.clone(),
        sub: row.id.clone(),
        tenant: row.tenant.clone(),
        env: row.env.clone(),
        tool: row.tool.clone(),
        args: serde_json::from_str(&row.args)?,
        execution_key: exec_key.clone(),
        approvals: approved
            .approvals
            .iter()
            .map(|d| ReceiptApproval {
                user: d.username.clone(),
                at: rfc3339(d.decided_at),
                passkey: d.passkey_id.is_some(),
            })
            .collect(),
        auto_approved: approved.approvals.is_empty(),
        break_glass: approved.break_glass,
        preview_sha256: preview_sha256(row),
        preview_state: row.preview_state.clone(),
        policy_sha256: policy.hash.clone(),
        iat: now / 1000,
        exp: execute_by / 1000,
        upstream: match (&row.upstream, &row.upstream_tool) {
            (Some(name), Some(tool)) => Some(ReceiptUpstream {
                name: name.clone(),
                tool: tool.clone(),
            }),
            _ => None,
        },
    };
    let job = JobRow {
        id: job_id,
        proposal_id: row.id.clone(),
        tenant: row.tenant.clone(),
        env: row.env.clone(),
        route: row.route.clone(),
        tool: row.tool.clone(),
        state,
        attempt: 0,
        max_attempts: tool.max_attempts,
        lease_id: None,
        lease_expires_at: None,
        leased_at: None,
        available_at: now,
        execute_by,
        result: None,
        completion: None,
        created_at: now,
        finished_at: None,
        kind: JobKind::Execute,
        execution_key: exec_key,
        receipt: Some(signer.key.sign(&claims)?),
    };
    jobs::insert(&mut tx.conn, &job).await?;
    let action = if held.is_some() {
        "proposal.approved.held"
    } else {
        "job.released"
    };
    let mut ev = AuditDraft::new("system", action)
        .tenant(row.tenant.clone())
        .tool(row.tool.clone())
        .subject(row.id.clone())
        .details(serde_json::json!({
            "job": job.id, "why": approved.why, "held_by": held, "execute_by": execute_by,
            "execution_key": job.execution_key, "receipt_key": signer.key.id,
        }));
    ev.approval_ids = approved.approvals.iter().map(|d| d.id.clone()).collect();
    ev.args_hash = Some(row.args_hash.clone());
    ev.idempotency_key = row.idempotency_key.clone();
    tx.audit(ev);
    if held.is_none() {
        tx.notify(Notice::JobReady { env: row.env.clone() });
    }
    Ok(job)
}

/// Queue held jobs nothing covers any more (a switch went off, a breaker was
/// reset). Answers how many were queued.
pub(super) async fn release_held(tx: &mut Tx<'_>, limit: i64) -> Result<usize> {
    let held = jobs::held(&mut tx.conn, limit).await?;
    if held.is_empty() {
        return Ok(0);
    }
    let in_force = controls::in_force(tx).await?;
    let now = tx.now_ms();
    let mut n = 0;
    for j in held {
        if in_force.holding(&j.tenant, &j.route, &j.tool).is_some() || j.execute_by <= now {
            continue; // still held, or the sweeper expires it
        }
        if !jobs::set_state(&mut tx.conn, &j.id, JobState::Held, JobState::Queued, now).await? {
            continue;
        }
        proposals::transition(&mut tx.conn, &j.proposal_id, Status::Approved, Status::Queued).await?;
        tx.audit(
            AuditDraft::new("system", "job.released")
                .tenant(j.tenant.clone())
                .tool(j.tool.clone())
                .subject(j.proposal_id.clone())
                .details(serde_json::json!({ "job": j.id, "why": "nothing holds it any more" })),
        );
        tx.notify(Notice::JobReady { env: j.env.clone() });
        tx.notify(Notice::Proposal {
            id: j.proposal_id.clone(),
            tenant: j.tenant.clone(),
            status: Status::Queued,
        });
        n += 1;
    }
    Ok(n)
}

/// Cancel a proposal's jobs no executor holds yet (its run was revoked, or
/// the agent withdrew a proposal still previewing).
pub(super) async fn cancel_unclaimed(tx: &mut Tx<'_>, proposal_id: &str) -> Result<usize> {
    let now = tx.now_ms();
    let mut n = 0;
    for j in jobs::of_proposal(&mut tx.conn, proposal_id).await? {
        if matches!(j.state, JobState::Queued | JobState::Held)
            && jobs::set_state(&mut tx.conn, &j.id, j.state, JobState::Cancelled, now).await?
        {
            n += 1;
        }
    }
    Ok(n)
}
