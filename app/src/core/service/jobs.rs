//! The executor queue: approved actions claimed under leases whose ids fence
//! out stale holders, completed once, retried with backoff, and expired or
//! re-offered by the sweeper.

use super::controls::Controls;
use super::{Core, ExecutorPrincipal};
use crate::core::audit::{canonical_json, AuditDraft};
use crate::core::error::{Error, Result};
use crate::core::lifecycle::Status;
use crate::core::store::queries::jobs::{self, JobRow};
use crate::core::store::queries::proposals;
use crate::core::store::{Notice, Tx};
use serde_json::Value;
use std::time::Duration;

pub const MAX_CLAIM: i64 = 100;
pub const MAX_LEASE_SECS: i64 = 3600;
pub const MAX_CLAIM_WAIT_SECS: i64 = 60;
const MAX_BACKOFF_SECS: i64 = 300;

#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    pub tools: Option<Vec<String>>,
    pub max: Option<i64>,
    pub lease_seconds: Option<i64>,
    pub wait_seconds: Option<i64>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompleteRequest {
    pub lease_id: String,
    /// `succeeded` or `failed`.
    pub status: String,
    pub result: Value,
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub job_id: String,
    pub state: String,
    pub proposal_status: String,
    pub attempt: i64,
    pub next_attempt_at_ms: Option<i64>,
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

/// Why release of this work is held, if it is: an engaged kill switch or a
/// tripped route breaker.
pub(super) async fn hold_reason(tx: &mut Tx<'_>, tenant: &str, route: &str, tool: &str) -> Result<Option<String>> {
    Ok(Controls::load(&mut tx.conn).await?.holding(tenant, route, tool))
}

/// Queue held jobs no switch covers any more (the switch went off).
pub(super) async fn release_held(tx: &mut Tx<'_>, limit: i64) -> Result<usize> {
    let held = jobs::held(&mut tx.conn, limit).await?;
    if held.is_empty() {
        return Ok(0);
    }
    let controls = Controls::load(&mut tx.conn).await?;
    let now = tx.now_ms();
    let mut n = 0;
    for j in held {
        if controls.holding(&j.tenant, &j.route, &j.tool).is_some() {
            continue;
        }
        if j.execute_by <= now {
            continue; // the sweeper expires it
        }
        if !jobs::set_state(&mut tx.conn, &j.id, "held", "queued", now).await? {
            continue;
        }
        proposals::set_status(&mut tx.conn, &j.proposal_id, Status::Queued.as_str()).await?;
        tx.audit(
            AuditDraft::new("system", "job.released")
                .tenant(j.tenant.clone())
                .tool(j.tool.clone())
                .subject(j.proposal_id.clone())
                .details(serde_json::json!({ "job": j.id, "why": "nothing holds it any more" })),
        )
        .await?;
        tx.notify(Notice::JobReady { env: j.env.clone() });
        tx.notify(Notice::Proposal {
            id: j.proposal_id.clone(),
            tenant: j.tenant.clone(),
            status: Status::Queued.as_str().into(),
        });
        n += 1;
    }
    Ok(n)
}

fn review_link(base: &str, id: &str) -> String {
    format!("{}/proposals/{id}", base.trim_end_matches('/'))
}

fn expiry_data(id: &str, tool: &str, tenant: &str, env: &str, base: &str) -> serde_json::Value {
    serde_json::json!({ "proposal": id, "tool": tool, "tenant": tenant, "env": env, "review_url": review_link(base, id) })
}

/// What a job.failed notification says (never args values).
fn failure_data(
    id: &str,
    tool: &str,
    tenant: &str,
    env: &str,
    route: &str,
    attempts: i64,
    base: &str,
) -> serde_json::Value {
    serde_json::json!({
        "proposal": id, "tool": tool, "tenant": tenant, "env": env, "route": route,
        "attempts": attempts, "review_url": review_link(base, id),
    })
}

impl Core {
    /// A cheap read first, so an idle sweeper does not take the write lock.
    async fn anything_to_sweep(&self) -> Result<bool> {
        let now = self.now_ms();
        let mut r = self.store.reader().await?;
        let mut c = r.conn();
        Ok(!proposals::pending_expired(&mut c, now, 1).await?.is_empty()
            || !jobs::overdue(&mut c, now, 1).await?.is_empty()
            || !jobs::leases_lost(&mut c, now, 1).await?.is_empty()
            || !crate::core::store::queries::controls::lapsed_break_glass(&mut c, now)
                .await?
                .is_empty())
    }

    /// Claim up to `max` jobs of the key's env and tools, long-polling up to
    /// `wait_seconds` for one to be released.
    pub async fn claim(&self, exec: &ExecutorPrincipal, req: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        let max = range("max", req.max, 1, 1, MAX_CLAIM)?;
        let lease_secs = range("lease_seconds", req.lease_seconds, 60, 1, MAX_LEASE_SECS)?;
        let wait = range("wait_seconds", req.wait_seconds, 0, 0, MAX_CLAIM_WAIT_SECS)?;
        let tools: Vec<String> = match &req.tools {
            Some(ts) => ts.iter().filter(|t| exec.tools.contains(*t)).cloned().collect(),
            None => exec.tools.iter().cloned().collect(),
        };
        if tools.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait as u64);
        // Subscribe before looking, so a release between the look and the
        // wait is not missed.
        let mut notices = self.store.subscribe();
        loop {
            let got = self.try_claim(exec, &tools, max, lease_secs).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            // Woken by a release in this env; a slow tick covers jobs that
            // become available by time (backoff, lost leases).
            let until = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            loop {
                match tokio::time::timeout_at(until, notices.recv()).await {
                    Err(_) => break,
                    Ok(Ok(Notice::JobReady { env })) if env == exec.env => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                }
            }
        }
    }

    async fn try_claim(
        &self,
        exec: &ExecutorPrincipal,
        tools: &[String],
        max: i64,
        lease_secs: i64,
    ) -> Result<Vec<ClaimedJob>> {
        let exec = exec.clone();
        let tools = tools.to_vec();
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let now = tx.now_ms();
                    let candidates = jobs::claimable_rows(&mut tx.conn, &exec.env, &tools, now, max).await?;
                    if candidates.is_empty() {
                        return Ok(Vec::new());
                    }
                    // A kill switch or a tripped breaker holds queued work back.
                    let controls = Controls::load(&mut tx.conn).await?;
                    let candidates: Vec<_> = candidates
                        .into_iter()
                        .filter(|j| controls.holding(&j.tenant, &j.route, &j.tool).is_none())
                        .collect();
                    let until = now + lease_secs * 1000;
                    let ids: Vec<String> = candidates.iter().map(|j| j.id.clone()).collect();
                    let claim = ulid::Ulid::new().to_string().to_lowercase();
                    let leased: std::collections::HashMap<String, String> =
                        jobs::lease_many(&mut tx.conn, &ids, &claim, now, until)
                            .await?
                            .into_iter()
                            .collect();
                    let running: Vec<String> = candidates
                        .iter()
                        .filter(|j| leased.contains_key(&j.id))
                        .map(|j| j.proposal_id.clone())
                        .collect();
                    let facts: std::collections::HashMap<String, proposals::RunFacts> =
                        proposals::set_status_many_returning(&mut tx.conn, &running, Status::Running.as_str())
                            .await?
                            .into_iter()
                            .map(|f| (f.id.clone(), f))
                            .collect();
                    let mut out = Vec::with_capacity(leased.len());
                    for j in candidates {
                        let Some(lease_id) = leased.get(&j.id).cloned() else {
                            continue;
                        };
                        let Some(p) = facts.get(&j.proposal_id) else {
                            continue;
                        };
                        let mut ev = AuditDraft::new(exec.actor(), "job.claimed")
                            .tenant(j.tenant.clone())
                            .tool(j.tool.clone())
                            .subject(j.proposal_id.clone())
                            .scope(exec.scope())
                            .details(serde_json::json!({ "job": j.id, "lease": lease_id, "attempt": j.attempt + 1 }));
                        ev.args_hash = Some(p.args_hash.clone());
                        ev.idempotency_key = p.idempotency_key.clone();
                        tx.audit(ev).await?;
                        tx.notify(Notice::Proposal {
                            id: j.proposal_id.clone(),
                            tenant: j.tenant.clone(),
                            status: Status::Running.as_str().into(),
                        });
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
                            lease_expires_at_ms: until,
                        });
                    }
                    Ok(out)
                })
            })
            .await
    }

    /// Extend a live lease. A lost lease is `invalid_transition`.
    pub async fn heartbeat(
        &self,
        exec: &ExecutorPrincipal,
        job_id: &str,
        lease_id: &str,
        lease_secs: Option<i64>,
    ) -> Result<i64> {
        let secs = range("lease_seconds", lease_secs, 60, 1, MAX_LEASE_SECS)?;
        let (exec, job_id, lease_id) = (exec.clone(), job_id.to_owned(), lease_id.to_owned());
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let j = jobs::get(&mut tx.conn, &job_id)
                        .await?
                        .filter(|j| exec.serves(j))
                        .ok_or(Error::NotFound)?;
                    let now = tx.now_ms();
                    let until = now + secs * 1000;
                    if !jobs::extend_lease(&mut tx.conn, &j.id, &lease_id, now, until).await? {
                        return Err(Error::InvalidTransition("this lease is no longer held".into()));
                    }
                    Ok(until)
                })
            })
            .await
    }

    /// Report a job's outcome. The same body twice is answered alike; a stale
    /// lease or a different outcome is `invalid_transition`.
    pub async fn complete(&self, exec: &ExecutorPrincipal, job_id: &str, req: CompleteRequest) -> Result<Completion> {
        let succeeded = match req.status.as_str() {
            "succeeded" => true,
            "failed" => false,
            other => {
                return Err(Error::BadRequest(format!(
                    "status must be succeeded or failed (got {other:?})"
                )))
            }
        };
        let body = canonical_json(&serde_json::json!({
            "lease_id": req.lease_id,
            "status": req.status,
            "result": req.result,
            "retryable": req.retryable,
        }));
        let result = canonical_json(&req.result);
        if result.len() > 16 * 1024 {
            return Err(Error::BadRequest("result must be at most 16 KiB of JSON".into()));
        }
        if succeeded {
            // The common case, finished together with others waiting (see
            // `finishing`); anything it does not take is answered below.
            let s = super::finishing::Success {
                exec: exec.clone(),
                job_id: job_id.to_owned(),
                lease_id: req.lease_id.clone(),
                retryable: req.retryable,
                result: result.clone(),
                body: body.clone(),
                request_id: crate::core::audit::current_request_id(),
            };
            if let Some(done) = self.finisher.finish(s).await? {
                return Ok(done);
            }
        }
        let (exec, job_id) = (exec.clone(), job_id.to_owned());
        let policy = self.policy();
        let base = self.settings.public_url.clone();
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let now = tx.now_ms();
                    let j = jobs::get(&mut tx.conn, &job_id).await?.filter(|j| exec.serves(j)).ok_or(Error::NotFound)?;
                    let live = j.state == "leased" && j.lease_id.as_deref() == Some(req.lease_id.as_str());
                    if !live {
                        // Repeating the accepted completion is answered alike.
                        if j.completion.as_deref() == Some(body.as_str()) {
                            let p = proposals::get(&mut tx.conn, &j.proposal_id).await?.ok_or(Error::NotFound)?;
                            return Ok(Completion {
                                job_id: j.id,
                                state: j.state,
                                proposal_status: p.status,
                                attempt: j.attempt,
                                next_attempt_at_ms: None,
                            });
                        }
                        let why = if j.completion.as_deref().is_some_and(|c| c.contains(&format!("\"lease_id\":\"{}\"", req.lease_id))) {
                            "this job was already completed with a different outcome"
                        } else {
                            "this lease is no longer held (it expired or a newer claim replaced it)"
                        };
                        return Err(Error::InvalidTransition(why.into()));
                    }
                    let retry = !succeeded && req.retryable && j.attempt < j.max_attempts;
                    let (state, pstatus, next) = if succeeded {
                        ("succeeded", Status::Succeeded, None)
                    } else if retry {
                        let backoff = (1i64 << j.attempt.clamp(0, 8)).min(MAX_BACKOFF_SECS);
                        ("queued", Status::Queued, Some(now + backoff * 1000))
                    } else {
                        ("failed", Status::Failed, None)
                    };
                    match next {
                        Some(at) => jobs::requeue(&mut tx.conn, &j.id, at, Some(&result), Some(&body)).await?,
                        None => {
                            if !jobs::finish(&mut tx.conn, &j.id, &req.lease_id, state, &result, &body, now).await? {
                                return Err(Error::InvalidTransition("this lease is no longer held".into()));
                            }
                        }
                    }
                    let p = proposals::set_status_returning(&mut tx.conn, &j.proposal_id, pstatus.as_str())
                        .await?
                        .ok_or(Error::NotFound)?;
                    let mut ev = AuditDraft::new(exec.actor(), if retry { "job.retry" } else { "job.completed" })
                        .tenant(j.tenant.clone())
                        .tool(j.tool.clone())
                        .subject(j.proposal_id.clone())
                        .scope(exec.scope())
                        .status(req.status.clone())
                        .details(serde_json::json!({ "job": j.id, "lease": req.lease_id, "attempt": j.attempt, "retryable": req.retryable }));
                    ev.duration_ms = j.leased_at.map(|t| now - t);
                    ev.args_hash = Some(p.args_hash.clone());
                    ev.idempotency_key = p.idempotency_key.clone();
                    tx.audit(ev).await?;
                    tx.notify(Notice::Proposal {
                        id: p.id.clone(),
                        tenant: p.tenant.clone(),
                        status: p.status.clone(),
                    });
                    if retry {
                        tx.notify(Notice::JobReady { env: j.env.clone() });
                    } else if !succeeded {
                        // Only a failure can trip the route's breaker.
                        super::notify::emit(tx, "job.failed", failure_data(&p.id, &p.tool, &p.tenant, &p.env, &p.route, j.attempt, &base)).await?;
                        super::controls::check_route_breaker(tx, &policy, &j.route).await?;
                    }
                    Ok(Completion {
                        job_id: j.id,
                        state: state.into(),
                        proposal_status: p.status,
                        attempt: j.attempt,
                        next_attempt_at_ms: next,
                    })
                })
            })
            .await
    }

    /// One pass of the sweeper: expire what ran out of time and re-offer lost
    /// leases. Safe to run in several processes at once: every move is
    /// conditional on the state it leaves. Returns how many things moved.
    pub async fn sweep(&self) -> Result<usize> {
        if !self.anything_to_sweep().await? {
            return Ok(0);
        }
        let base = self.settings.public_url.clone();
        let policy = self.policy();
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let now = tx.now_ms();
                    let mut moved = 0;
                    for p in proposals::pending_expired(&mut tx.conn, now, 200).await? {
                        if proposals::transition(&mut tx.conn, &p.id, "pending", "expired", now).await? {
                            tx.audit(
                                AuditDraft::new("system", "proposal.expired")
                                    .tenant(p.tenant.clone())
                                    .tool(p.tool.clone())
                                    .subject(p.id.clone())
                                    .status("expired")
                                    .details(serde_json::json!({ "was": "pending" })),
                            )
                            .await?;
                            super::notify::emit(tx, "proposal.expired", expiry_data(&p.id, &p.tool, &p.tenant, &p.env, &base)).await?;
                            tx.notify(Notice::Proposal { id: p.id, tenant: p.tenant, status: "expired".into() });
                            moved += 1;
                        }
                    }
                    for j in jobs::overdue(&mut tx.conn, now, 200).await? {
                        if jobs::set_state(&mut tx.conn, &j.id, &j.state, "expired", now).await? {
                            proposals::set_status(&mut tx.conn, &j.proposal_id, "expired").await?;
                            tx.audit(
                                AuditDraft::new("system", "proposal.expired")
                                    .tenant(j.tenant.clone())
                                    .tool(j.tool.clone())
                                    .subject(j.proposal_id.clone())
                                    .status("expired")
                                    .details(serde_json::json!({ "was": j.state, "job": j.id, "reason": "approved but not run in time" })),
                            )
                            .await?;
                            super::notify::emit(tx, "proposal.expired", expiry_data(&j.proposal_id, &j.tool, &j.tenant, &j.env, &base)).await?;
                            tx.notify(Notice::Proposal { id: j.proposal_id, tenant: j.tenant, status: "expired".into() });
                            moved += 1;
                        }
                    }
                    for j in jobs::leases_lost(&mut tx.conn, now, 200).await? {
                        let last = j.attempt >= j.max_attempts;
                        if last {
                            let lease = j.lease_id.clone().unwrap_or_default();
                            let result = r#"{"error":"the lease was lost on the last attempt"}"#;
                            if !jobs::finish(&mut tx.conn, &j.id, &lease, "failed", result, "", now).await? {
                                continue;
                            }
                            proposals::set_status(&mut tx.conn, &j.proposal_id, "failed").await?;
                            super::notify::emit(
                                tx,
                                "job.failed",
                                failure_data(&j.proposal_id, &j.tool, &j.tenant, &j.env, &j.route, j.attempt, &base),
                            )
                            .await?;
                            super::controls::check_route_breaker(tx, &policy, &j.route).await?;
                        } else {
                            jobs::requeue(&mut tx.conn, &j.id, now, None, None).await?;
                            proposals::set_status(&mut tx.conn, &j.proposal_id, "queued").await?;
                            tx.notify(Notice::JobReady { env: j.env.clone() });
                        }
                        tx.audit(
                            AuditDraft::new("system", "job.lease_lost")
                                .tenant(j.tenant.clone())
                                .tool(j.tool.clone())
                                .subject(j.proposal_id.clone())
                                .status(if last { "failed" } else { "requeued" })
                                .details(serde_json::json!({ "job": j.id, "lease": j.lease_id, "attempt": j.attempt })),
                        )
                        .await?;
                        tx.notify(Notice::Proposal {
                            id: j.proposal_id.clone(),
                            tenant: j.tenant.clone(),
                            status: if last { "failed".into() } else { "queued".into() },
                        });
                        moved += 1;
                    }
                    for b in crate::core::store::queries::controls::lapsed_break_glass(&mut tx.conn, now).await? {
                        super::controls::end_break_glass_in(tx, &b.id, "system", "its time ran out").await?;
                        moved += 1;
                    }
                    Ok(moved)
                })
            })
            .await
    }
}
