//! The executor queue: approved actions claimed under leases whose ids fence
//! out stale holders, completed once, retried with backoff; expired or
//! re-offered when the sweeper finds them overdue or their lease lost.

use super::credentials::executor_live_in;
use super::finishing::Completion;
use super::previews::{announce_pending, content_hash, diff_json, MAX_PREVIEW_BYTES};
use super::waiting::Waiter;
use super::{review_url, Core, ExecutorPrincipal};
use crate::audit::{canonical_json, AuditDraft};
use crate::error::{Error, Result};
use crate::lifecycle::{JobKind, JobState, Status};
use crate::policy::Policy;
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::{controls, proposals, upstream_calls};
use crate::store::{Notice, Tx};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const MAX_CLAIM: i64 = 100;
pub const MAX_LEASE_SECS: i64 = 3600;
pub const MAX_CLAIM_WAIT_SECS: i64 = 60;
pub const MAX_RESULT_BYTES: usize = 16 * 1024;
const MAX_BACKOFF_SECS: i64 = 300;

#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    pub tools: Option<Vec<String>>,
    pub max: Option<i64>,
    pub lease_seconds: Option<i64>,
    pub wait_seconds: Option<i64>,
    /// Which jobs: `execute` (the default), `preview`, or both. An executor
    /// that knows nothing of previews never receives one.
    pub kinds: Option<Vec<JobKind>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    pub job_id: String,
    pub lease_id: String,
    pub proposal_id: String,
    pub tenant: String,
    pub env: String,
    pub tool: String,
    pub args: Value,
    pub idempotency_key: Option<String>,
    pub attempt: i64,
    pub lease_expires_at_ms: i64,
    pub kind: JobKind,
    pub execution_key: String,
    /// The signed receipt of what was approved (execute jobs).
    pub receipt: Option<String>,
    /// The precondition of the executor's preview, to re-check before acting.
    pub preview_state: Option<String>,
}

/// What an executor's dry run says will change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewReport {
    pub before: String,
    pub after: String,
    /// An opaque precondition (a row version, an ETag), at most 200 characters.
    pub state: String,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub lease_expires_at_ms: i64,
    /// The job's run was revoked: finish or stop, but start nothing new.
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompleteRequest {
    pub lease_id: String,
    /// `succeeded` or `failed`.
    pub status: String,
    pub result: Value,
    pub retryable: bool,
    /// A preview job's report (required when it succeeded).
    pub preview: Option<PreviewReport>,
}

impl ExecutorPrincipal {
    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }
    pub(super) fn scope(&self) -> String {
        format!("executor:{}", self.env)
    }
    fn serves(&self, job: &JobRow) -> bool {
        job.env == self.env && self.tools.contains(&job.tool)
    }
}

fn range(name: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(Error::BadRequest(format!(
            "{name} must be between {lo} and {hi} (got {v})"
        )))
    }
}

/// What a proposal.expired or job.failed notification says (never args values).
fn notice_data(id: &str, tool: &str, tenant: &str, env: &str, public_url: &str) -> Value {
    serde_json::json!({
        "proposal": id, "tool": tool, "tenant": tenant, "env": env, "review_url": review_url(public_url, id),
    })
}

fn failure_data(j: &JobRow, public_url: &str) -> Value {
    let mut d = notice_data(&j.proposal_id, &j.tool, &j.tenant, &j.env, public_url);
    d["route"] = j.route.clone().into();
    d["attempts"] = j.attempt.into();
    d
}

pub const MAX_PREVIEW_STATE_CHARS: usize = 200;

/// An executor's preview, checked like an agent's (bounded, no secrets: a
/// reviewer reads it), and its diff computed off the async workers.
async fn checked_preview_diff(diffs: &crate::limits::Workers, p: &PreviewReport) -> Result<String> {
    if p.state.chars().count() > MAX_PREVIEW_STATE_CHARS {
        return Err(Error::BadRequest(format!(
            "preview.state must be at most {MAX_PREVIEW_STATE_CHARS} characters"
        )));
    }
    for (field, text) in [
        ("preview.before", &p.before),
        ("preview.after", &p.after),
        ("preview.state", &p.state),
    ] {
        if text.len() > MAX_PREVIEW_BYTES {
            return Err(Error::BadRequest(format!(
                "{field} must be at most {} bytes",
                MAX_PREVIEW_BYTES
            )));
        }
        if let Some(kind) = crate::secrets::secret_kind(text) {
            return Err(Error::BadRequest(format!(
                "{field} looks like a secret ({kind}): keep secrets out of what reviewers read"
            )));
        }
    }
    diff_json(diffs, p.before.clone(), p.after.clone()).await
}

/// A claim, with its limits checked.
#[derive(Clone)]
struct Claim {
    exec: ExecutorPrincipal,
    tools: Vec<String>,
    kinds: Vec<JobKind>,
    max: i64,
    lease_secs: i64,
}

async fn claim_in(tx: &mut Tx<'_>, c: Claim) -> Result<Vec<ClaimedJob>> {
    executor_live_in(tx, &c.exec).await?;
    let now = tx.now_ms();
    let candidates = jobs::claimable_rows(&mut tx.conn, &c.exec.env, &c.tools, &c.kinds, now, c.max).await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // A kill switch or a tripped breaker holds queued work back.
    let in_force = controls::in_force(tx).await?;
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|j| in_force.holding(&j.tenant, &j.route, &j.tool).is_none())
        .collect();
    let until = now + c.lease_secs * 1000;
    let ids: Vec<String> = candidates.iter().map(|j| j.id.clone()).collect();
    let claim = ulid::Ulid::new().to_string().to_lowercase();
    let leased: HashMap<String, (String, i64)> = jobs::lease_many(&mut tx.conn, &ids, &claim, now, until)
        .await?
        .into_iter()
        .map(|(id, lease, ends)| (id, (lease, ends)))
        .collect();
    let of_kind = |kind: JobKind| -> Vec<String> {
        candidates
            .iter()
            .filter(|j| j.kind == kind && leased.contains_key(&j.id))
            .map(|j| j.proposal_id.clone())
            .collect()
    };
    // An execution moves its proposal to running; a preview leaves it previewing.
    let (running, previewing) = (of_kind(JobKind::Execute), of_kind(JobKind::Preview));
    let mut facts: HashMap<String, proposals::RunFacts> =
        proposals::transition_many_returning(&mut tx.conn, &running, Status::Queued, Status::Running)
            .await?
            .into_iter()
            .map(|f| (f.id.clone(), f))
            .collect();
    for f in proposals::run_facts(&mut tx.conn, &previewing).await? {
        facts.insert(f.id.clone(), f);
    }
    let mut out = Vec::with_capacity(leased.len());
    for j in candidates {
        let (Some((lease_id, lease_ends)), Some(p)) = (leased.get(&j.id).cloned(), facts.get(&j.proposal_id)) else {
            continue;
        };
        let mut ev = AuditDraft::new(c.exec.actor(), "job.claimed")
            .tenant(j.tenant.clone())
            .tool(j.tool.clone())
            .subject(j.proposal_id.clone())
            .scope(c.exec.scope())
            .details(serde_json::json!({
                "job": j.id, "kind": j.kind, "lease": lease_id, "attempt": j.attempt + 1,
            }));
        ev.args_hash = Some(p.args_hash.clone());
        ev.idempotency_key = p.idempotency_key.clone();
        tx.audit(ev);
        if j.kind == JobKind::Execute {
            tx.notify(Notice::Proposal {
                id: j.proposal_id.clone(),
                tenant: j.tenant.clone(),
                status: Status::Running,
            });
        }
        out.push(ClaimedJob {
            job_id: j.id,
            lease_id,
            proposal_id: j.proposal_id,
            tenant: j.tenant,
            env: j.env,
            tool: j.tool,
            args: serde_json::from_str(&p.args)?,
            idempotency_key: p.idempotency_key.clone(),
            attempt: j.attempt + 1,
            lease_expires_at_ms: lease_ends,
            kind: j.kind,
            execution_key: j.execution_key,
            receipt: j.receipt,
            preview_state: p.preview_state.clone(),
        });
    }
    Ok(out)
}

async fn heartbeat_in(
    tx: &mut Tx<'_>,
    exec: ExecutorPrincipal,
    job_id: String,
    lease_id: String,
    secs: i64,
) -> Result<Heartbeat> {
    executor_live_in(tx, &exec).await?;
    let j = jobs::get_for_update(&mut tx.conn, &job_id)
        .await?
        .filter(|j| exec.serves(j))
        .ok_or(Error::NotFound)?;
    let now = tx.now_ms();
    let until = now + secs * 1000;
    if until > j.execute_by {
        return Err(Error::InvalidTransition(format!(
            "a lease cannot outlast the job's execute-by deadline ({}): ask for at most {} s",
            crate::clock::rfc3339(j.execute_by),
            ((j.execute_by - now) / 1000).max(0)
        )));
    }
    if !jobs::extend_lease(&mut tx.conn, &j.id, &lease_id, now, until).await? {
        return Err(Error::InvalidTransition("this lease is no longer held".into()));
    }
    // A dry run nobody waits for any more may stop at once.
    let unwanted = j.kind == JobKind::Preview && closed_before_its_preview(tx, &j).await?.is_some();
    Ok(Heartbeat {
        lease_expires_at_ms: until,
        cancel_requested: unwanted || jobs::run_revoked(&mut tx.conn, &j.id).await?,
    })
}

/// A completion reported one by one (failures, and successes the finisher
/// did not take).
#[derive(Clone)]
struct Completing {
    policy: Arc<Policy>,
    exec: ExecutorPrincipal,
    job_id: String,
    req: CompleteRequest,
    succeeded: bool,
    /// The canonical result and the canonical body, as stored.
    result: String,
    body: String,
    public_url: String,
    /// A successful preview's report and the diff computed from it.
    preview: Option<(PreviewReport, String)>,
}

/// A preview job's outcome: the proposal becomes decidable with the
/// executor's description, or fails, or waits for the retry.
async fn finish_preview_in(
    tx: &mut Tx<'_>,
    c: &Completing,
    j: &JobRow,
    state: JobState,
    next: Option<i64>,
    now: i64,
) -> Result<Completion> {
    let mut p = proposals::get_for_update(&mut tx.conn, &j.proposal_id)
        .await?
        .ok_or(Error::NotFound)?;
    let action = match state {
        JobState::Succeeded => {
            let (report, diff) = c
                .preview
                .as_ref()
                .ok_or_else(|| Error::internal("a successful preview without its report"))?;
            let hash = content_hash(
                &p.tool,
                &p.args,
                Some(&report.before),
                Some(&report.after),
                Some(&report.state),
            );
            let done = proposals::PreviewDone {
                before: &report.before,
                after: &report.after,
                state: &report.state,
                diff,
                content_hash: &hash,
                by: &c.exec.name,
                at: now,
            };
            if !proposals::record_preview(&mut tx.conn, &p.id, &done).await? {
                return Err(Error::InvalidTransition(format!(
                    "the proposal is {} now: its preview is no longer wanted",
                    p.status
                )));
            }
            p.status = Status::Pending;
            announce_pending(tx, &p, &c.public_url).await?;
            "preview.computed"
        }
        JobState::Failed => {
            proposals::close(&mut tx.conn, &p.id, Status::Previewing, Status::Failed, now).await?;
            p.status = Status::Failed;
            "preview.failed"
        }
        _ => "preview.retry",
    };
    let mut ev = AuditDraft::new(c.exec.actor(), action)
        .tenant(j.tenant.clone())
        .tool(j.tool.clone())
        .subject(j.proposal_id.clone())
        .scope(c.exec.scope())
        .status(c.req.status.clone())
        .details(serde_json::json!({ "job": j.id, "lease": c.req.lease_id, "attempt": j.attempt }));
    ev.duration_ms = j.leased_at.map(|t| now - t);
    ev.args_hash = Some(p.args_hash.clone());
    tx.audit(ev);
    tx.notify(Notice::Proposal {
        id: p.id.clone(),
        tenant: p.tenant.clone(),
        status: p.status,
    });
    if next.is_some() {
        tx.notify(Notice::JobReady { env: j.env.clone() });
    }
    Ok(Completion {
        job_id: j.id.clone(),
        state,
        proposal_status: p.status,
        attempt: j.attempt,
        next_attempt_at_ms: next,
    })
}

/// The status of a preview job's proposal if it is no longer waiting for
/// the preview (cancelled, its run revoked, expired).
async fn closed_before_its_preview(tx: &mut Tx<'_>, j: &JobRow) -> Result<Option<Status>> {
    let p = proposals::get(&mut tx.conn, &j.proposal_id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok((p.status != Status::Previewing).then_some(p.status))
}

/// A preview reported for a proposal that no longer wants it: the job ends
/// as reported (never offered again), the proposal is left as it is, and the
/// executor is told its status.
async fn finish_unwanted_preview(
    tx: &mut Tx<'_>,
    c: &Completing,
    j: &JobRow,
    proposal_status: Status,
    now: i64,
) -> Result<Completion> {
    let state = if c.succeeded {
        JobState::Succeeded
    } else {
        JobState::Failed
    };
    if !jobs::finish(&mut tx.conn, &j.id, &c.req.lease_id, state, &c.result, &c.body, now).await? {
        return Err(Error::InvalidTransition("this lease is no longer held".into()));
    }
    tx.audit(
        AuditDraft::new(c.exec.actor(), "preview.unwanted")
            .tenant(j.tenant.clone())
            .tool(j.tool.clone())
            .subject(j.proposal_id.clone())
            .scope(c.exec.scope())
            .status(proposal_status.as_str())
            .details(serde_json::json!({ "job": j.id, "lease": c.req.lease_id, "attempt": j.attempt })),
    );
    Ok(Completion {
        job_id: j.id.clone(),
        state,
        proposal_status,
        attempt: j.attempt,
        next_attempt_at_ms: None,
    })
}

async fn complete_in(tx: &mut Tx<'_>, c: Completing) -> Result<Completion> {
    executor_live_in(tx, &c.exec).await?;
    let now = tx.now_ms();
    let j = jobs::get_for_update(&mut tx.conn, &c.job_id)
        .await?
        .filter(|j| c.exec.serves(j))
        .ok_or(Error::NotFound)?;
    // A lease that ran out is lost even before the sweeper re-offers the job:
    // its holder may not complete it.
    let live = j.state == JobState::Leased
        && j.lease_id.as_deref() == Some(c.req.lease_id.as_str())
        && j.lease_expires_at.is_some_and(|t| t > now);
    if !live {
        // Repeating the accepted completion is answered alike.
        if j.completion.as_deref() == Some(c.body.as_str()) {
            let p = proposals::get(&mut tx.conn, &j.proposal_id)
                .await?
                .ok_or(Error::NotFound)?;
            return Ok(Completion {
                job_id: j.id,
                state: j.state,
                proposal_status: p.status,
                attempt: j.attempt,
                next_attempt_at_ms: None,
            });
        }
        let completed_by_this_lease = j
            .completion
            .as_deref()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
            .is_some_and(|b| b["lease_id"] == c.req.lease_id.as_str());
        return Err(Error::InvalidTransition(
            if completed_by_this_lease {
                "this job was already completed with a different outcome"
            } else {
                "this lease is no longer held (it expired or a newer claim replaced it)"
            }
            .into(),
        ));
    }
    match (j.kind, c.succeeded, c.preview.is_some()) {
        (JobKind::Preview, true, false) => {
            return Err(Error::BadRequest(
                "a preview job completes with preview: {before, after, state}".into(),
            ))
        }
        (JobKind::Execute, _, true) => {
            return Err(Error::BadRequest("only a preview job takes a preview".into()));
        }
        _ => {}
    }
    if j.kind == JobKind::Preview {
        if let Some(closed) = closed_before_its_preview(tx, &j).await? {
            return finish_unwanted_preview(tx, &c, &j, closed, now).await;
        }
    }
    let retry = !c.succeeded && c.req.retryable && j.attempt < j.max_attempts;
    let (state, next) = if c.succeeded {
        (JobState::Succeeded, None)
    } else if retry {
        let backoff = (1i64 << j.attempt.clamp(0, 8)).min(MAX_BACKOFF_SECS);
        (JobState::Queued, Some(now + backoff * 1000))
    } else {
        (JobState::Failed, None)
    };
    let moved = match next {
        Some(at) => jobs::requeue(&mut tx.conn, &j.id, at, Some(&c.result), Some(&c.body)).await?,
        None => jobs::finish(&mut tx.conn, &j.id, &c.req.lease_id, state, &c.result, &c.body, now).await?,
    };
    if !moved {
        return Err(Error::InvalidTransition("this lease is no longer held".into()));
    }
    if j.kind == JobKind::Preview {
        return finish_preview_in(tx, &c, &j, state, next, now).await;
    }
    let p = proposals::transition_returning(&mut tx.conn, &j.proposal_id, Status::Running, state.proposal_status())
        .await?
        .ok_or_else(|| Error::internal("a leased job's proposal was not running"))?;
    let mut ev = AuditDraft::new(c.exec.actor(), if retry { "job.retry" } else { "job.completed" })
        .tenant(j.tenant.clone())
        .tool(j.tool.clone())
        .subject(j.proposal_id.clone())
        .scope(c.exec.scope())
        .status(c.req.status.clone())
        .details(serde_json::json!({
            "job": j.id, "lease": c.req.lease_id, "attempt": j.attempt, "retryable": c.req.retryable,
        }));
    ev.duration_ms = j.leased_at.map(|t| now - t);
    ev.args_hash = Some(p.args_hash.clone());
    ev.idempotency_key = p.idempotency_key.clone();
    tx.audit(ev);
    tx.notify(Notice::Proposal {
        id: p.id.clone(),
        tenant: p.tenant.clone(),
        status: p.status,
    });
    if retry {
        tx.notify(Notice::JobReady { env: j.env.clone() });
    } else if !c.succeeded {
        // Only a failure can trip the route's breaker.
        super::notify::emit(tx, "job.failed", failure_data(&j, &c.public_url)).await?;
        super::breakers::check_route(tx, &c.policy, &j.route).await?;
    }
    Ok(Completion {
        job_id: j.id,
        state,
        proposal_status: p.status,
        attempt: j.attempt,
        next_attempt_at_ms: next,
    })
}

/// Released jobs not run by their deadline (queued or held past
/// `execute_by`) expire, and so do their proposals.
pub(super) async fn expire_overdue(tx: &mut Tx<'_>, public_url: &str) -> Result<usize> {
    let now = tx.now_ms();
    let mut moved = 0;
    for j in jobs::overdue(&mut tx.conn, now, 200).await? {
        if !jobs::set_state(&mut tx.conn, &j.id, j.state, JobState::Expired, now).await? {
            continue;
        }
        let (was, mut reason) = match j.kind {
            JobKind::Execute => (j.state.proposal_status(), "approved but not run in time"),
            JobKind::Preview => (Status::Previewing, "the executor's preview did not come in time"),
        };
        if j.kind == JobKind::Execute {
            // The upstream executor recorded its intent and never an
            // answer: the call may have happened, and the record says so
            // rather than "not run".
            let call = upstream_calls::of_proposal(&mut tx.conn, &j.proposal_id).await?;
            if call.is_some_and(|c| matches!(c.outcome.as_deref(), None | Some("unknown"))) {
                reason = "approved; its upstream call got no answer, so whether it happened is unknown";
            }
        }
        proposals::transition(&mut tx.conn, &j.proposal_id, was, Status::Expired).await?;
        tx.audit(
            AuditDraft::new("system", "proposal.expired")
                .tenant(j.tenant.clone())
                .tool(j.tool.clone())
                .subject(j.proposal_id.clone())
                .status("expired")
                .details(serde_json::json!({ "was": j.state, "job": j.id, "reason": reason })),
        );
        let data = notice_data(&j.proposal_id, &j.tool, &j.tenant, &j.env, public_url);
        super::notify::emit(tx, "proposal.expired", data).await?;
        tx.notify(Notice::Proposal {
            id: j.proposal_id,
            tenant: j.tenant,
            status: Status::Expired,
        });
        moved += 1;
    }
    Ok(moved)
}

/// Jobs whose lease ran out: offered again, or failed when that was their
/// last attempt.
pub(super) async fn reoffer_lost(tx: &mut Tx<'_>, policy: &Policy, public_url: &str) -> Result<usize> {
    let now = tx.now_ms();
    let mut moved = 0;
    for j in jobs::leases_lost(&mut tx.conn, now, 200).await? {
        if j.kind == JobKind::Preview && closed_before_its_preview(tx, &j).await?.is_some() {
            // Nobody waits for this dry run any more: never offer it again.
            let lease = j.lease_id.clone().unwrap_or_default();
            let result = r#"{"error":"the proposal was closed before its preview arrived"}"#;
            if jobs::finish(&mut tx.conn, &j.id, &lease, JobState::Failed, result, "", now).await? {
                tx.audit(
                    AuditDraft::new("system", "job.lease_lost")
                        .tenant(j.tenant.clone())
                        .tool(j.tool.clone())
                        .subject(j.proposal_id.clone())
                        .status("unwanted")
                        .details(serde_json::json!({ "job": j.id, "lease": j.lease_id, "attempt": j.attempt })),
                );
                moved += 1;
            }
            continue;
        }
        let last = j.attempt >= j.max_attempts;
        let to = if last { JobState::Failed } else { JobState::Queued };
        let done = if last {
            let lease = j.lease_id.clone().unwrap_or_default();
            let result = r#"{"error":"the lease was lost on the last attempt"}"#;
            jobs::finish(&mut tx.conn, &j.id, &lease, to, result, "", now).await?
        } else {
            jobs::requeue(&mut tx.conn, &j.id, now, None, None).await?
        };
        if !done {
            continue;
        }
        tx.count("countersign_lease_expiries_total", 1);
        let status = match (j.kind, last) {
            (JobKind::Execute, _) => {
                proposals::transition(&mut tx.conn, &j.proposal_id, Status::Running, to.proposal_status()).await?;
                to.proposal_status()
            }
            (JobKind::Preview, true) => {
                proposals::close(&mut tx.conn, &j.proposal_id, Status::Previewing, Status::Failed, now).await?;
                Status::Failed
            }
            (JobKind::Preview, false) => Status::Previewing,
        };
        if last {
            super::notify::emit(tx, "job.failed", failure_data(&j, public_url)).await?;
            super::breakers::check_route(tx, policy, &j.route).await?;
        } else {
            tx.notify(Notice::JobReady { env: j.env.clone() });
        }
        tx.audit(
            AuditDraft::new("system", "job.lease_lost")
                .tenant(j.tenant.clone())
                .tool(j.tool.clone())
                .subject(j.proposal_id.clone())
                .status(if last { "failed" } else { "requeued" })
                .details(serde_json::json!({ "job": j.id, "lease": j.lease_id, "attempt": j.attempt })),
        );
        tx.notify(Notice::Proposal {
            id: j.proposal_id.clone(),
            tenant: j.tenant.clone(),
            status,
        });
        moved += 1;
    }
    Ok(moved)
}

impl Core {
    /// Claim up to `max` jobs of the key's env and tools, long-polling up to
    /// `wait_seconds` for one to be released.
    ///
    /// Jobs are leased only by a transaction that finds the key live; an
    /// empty answer, or a refusal, is given only after a read of the key.
    pub async fn claim(&self, exec: &ExecutorPrincipal, req: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let got = self.claim_unconfirmed(exec, req).await;
        let got = self.answer_executor(exec, got).await?;
        if got.is_empty() {
            self.confirm_executor(exec).await?;
        }
        Ok(got)
    }

    async fn claim_unconfirmed(&self, exec: &ExecutorPrincipal, req: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let max = range("max", req.max, 1, 1, MAX_CLAIM)?;
        let lease_secs = range("lease_seconds", req.lease_seconds, 60, 1, MAX_LEASE_SECS)?;
        let wait = range("wait_seconds", req.wait_seconds, 0, 0, MAX_CLAIM_WAIT_SECS)?;
        let kinds = req.kinds.clone().unwrap_or_else(|| vec![JobKind::Execute]);
        if kinds.is_empty() {
            return Err(Error::BadRequest(
                "kinds must name at least one of preview, execute".into(),
            ));
        }
        let mut tools: Vec<String> = match &req.tools {
            Some(ts) => ts.iter().filter(|t| exec.tools.contains(*t)).cloned().collect(),
            None => exec.tools.iter().cloned().collect(),
        };
        // A tool with an upstream is performed by countersign's own upstream
        // executor and by no key holder; that executor performs nothing else.
        let policy = self.policy();
        tools.retain(|t| policy.tool(t).is_some_and(|t| t.upstream.is_some()) == exec.is_upstream_executor());
        if tools.is_empty() {
            return Ok(Vec::new());
        }
        let c = Claim {
            exec: exec.clone(),
            tools,
            kinds,
            max,
            lease_secs,
        };
        let _slot = if wait > 0 {
            Some(self.long_poll_slot(&exec.key_id)?)
        } else {
            None
        };
        let mut waiter = Waiter::new(self.subscribe(), Duration::from_secs(wait as u64), self.recheck());
        let mut confirmed = false;
        loop {
            // A read first: a waiting executor with nothing to claim takes
            // no turn of the writer.
            if self.claimable(&c).await? {
                let c = c.clone();
                let got = self.store.write(move |tx| Box::pin(claim_in(tx, c))).await?;
                if !got.is_empty() {
                    return Ok(got);
                }
            }
            if waiter.expired() {
                return Ok(Vec::new());
            }
            if !confirmed {
                // A revoked key hears so now, not when its wait ends.
                self.confirm_executor(exec).await?;
                confirmed = true;
            }
            // Woken by a release in this env; the recheck covers jobs that
            // become available by time (backoff).
            waiter
                .sleep(|n| matches!(n, Notice::JobReady { env } if *env == exec.env))
                .await;
        }
    }

    async fn claimable(&self, c: &Claim) -> Result<bool> {
        let now = self.now_ms();
        let rows = jobs::claimable_rows(
            &mut self.store.reader().await?.conn(),
            &c.exec.env,
            &c.tools,
            &c.kinds,
            now,
            1,
        )
        .await?;
        Ok(!rows.is_empty())
    }

    /// Extend a live lease. A lost lease is `invalid_transition`.
    pub async fn heartbeat(
        &self,
        exec: &ExecutorPrincipal,
        job_id: &str,
        lease_id: &str,
        lease_secs: Option<i64>,
    ) -> Result<Heartbeat> {
        let beat = async {
            let secs = range("lease_seconds", lease_secs, 60, 1, MAX_LEASE_SECS)?;
            let (exec, job_id, lease_id) = (exec.clone(), job_id.to_owned(), lease_id.to_owned());
            self.store
                .write(move |tx| Box::pin(heartbeat_in(tx, exec, job_id, lease_id, secs)))
                .await
        };
        let beat = beat.await;
        self.answer_executor(exec, beat).await
    }

    /// Report a job's outcome. The same body twice is answered alike; a stale
    /// lease or a different outcome is `invalid_transition`.
    pub async fn complete(&self, exec: &ExecutorPrincipal, job_id: &str, req: CompleteRequest) -> Result<Completion> {
        let done = self.complete_unconfirmed(exec, job_id, req).await;
        self.answer_executor(exec, done).await
    }

    async fn complete_unconfirmed(
        &self,
        exec: &ExecutorPrincipal,
        job_id: &str,
        req: CompleteRequest,
    ) -> Result<Completion> {
        let succeeded = match req.status.as_str() {
            "succeeded" => true,
            "failed" => false,
            other => {
                return Err(Error::BadRequest(format!(
                    "status must be succeeded or failed (got {other:?})"
                )))
            }
        };
        let mut body = serde_json::json!({
            "lease_id": req.lease_id,
            "status": req.status,
            "result": req.result,
            "retryable": req.retryable,
        });
        if let Some(p) = &req.preview {
            body["preview"] = serde_json::json!({ "before": p.before, "after": p.after, "state": p.state });
        }
        let body = canonical_json(&body);
        if !(req.result.is_object() || req.result.is_null()) {
            return Err(Error::BadRequest("result must be a JSON object".into()));
        }
        let result = canonical_json(&req.result);
        if result.len() > MAX_RESULT_BYTES {
            return Err(Error::BadRequest("result must be at most 16 KiB of JSON".into()));
        }
        // A result reaches the agent and the exports: no secrets in it.
        if let Some((field, kind)) = crate::secrets::find_secret(&req.result, "result") {
            return Err(Error::SecretInArgs {
                field,
                kind: kind.into(),
            });
        }
        let preview = match (&req.preview, succeeded) {
            (Some(p), true) => Some((p.clone(), checked_preview_diff(&self.diffs, p).await?)),
            (Some(_), false) => {
                return Err(Error::BadRequest(
                    "a failed preview reports why in result, not a preview".into(),
                ))
            }
            (None, _) => None,
        };
        if succeeded && preview.is_none() {
            // The common case, finished together with others waiting (see
            // `finishing`); anything it does not take is answered below.
            let s = super::finishing::Success {
                exec: exec.clone(),
                job_id: job_id.to_owned(),
                lease_id: req.lease_id.clone(),
                retryable: req.retryable,
                result: result.clone(),
                body: body.clone(),
                request_id: crate::audit::current_request_id(),
            };
            if let Some(done) = self.finisher.finish(s).await? {
                return Ok(done);
            }
        }
        let c = Completing {
            policy: self.policy(),
            exec: exec.clone(),
            job_id: job_id.to_owned(),
            req,
            succeeded,
            result,
            body,
            public_url: self.settings.public_url.clone(),
            preview,
        };
        self.store.write(move |tx| Box::pin(complete_in(tx, c))).await
    }
}
