//! Release: an approved proposal becomes a job on the executor queue, or is
//! held (status `approved`, job `held`) while a kill switch or a tripped route
//! breaker covers it; held jobs are queued once nothing holds them. This
//! module owns approved -> held | queued.

use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::lifecycle::{JobState, Status};
use crate::policy::Policy;
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::proposals::ProposalRow;
use crate::store::queries::{controls, proposals};
use crate::store::{Notice, Tx};

/// Put an approved proposal on the executor queue (or hold it), in the
/// caller's transaction. `row` is updated to its new status.
pub(super) async fn release_approved(
    tx: &mut Tx<'_>,
    policy: &Policy,
    row: &mut ProposalRow,
    why: &str,
    approval_ids: Vec<String>,
) -> Result<JobRow> {
    let tool = policy.tool(&row.tool).ok_or(Error::NotFound)?;
    let now = tx.now_ms();
    let execute_by = now + tool.execute_within_seconds * 1000;
    let held = controls::in_force(&mut tx.conn)
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
    let job = JobRow {
        id: new_id("job"),
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
        .details(serde_json::json!({ "job": job.id, "why": why, "held_by": held, "execute_by": execute_by }));
    ev.approval_ids = approval_ids;
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
    let in_force = controls::in_force(&mut tx.conn).await?;
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
