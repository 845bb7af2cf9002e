//! The built-in upstream executor's calls: an executor principal of its own,
//! which claims, heartbeats and completes through the same queue as any
//! executor, and records each call durably around it so that an upstream
//! tool is never called twice for one execution key. The intent is written
//! just before the call and its outcome just after; an intent left without
//! an outcome (the process died mid-call) means the call may have happened,
//! and it is not made again.

use super::{Core, ExecutorPrincipal, RunPrincipal};
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::lifecycle::JobState;
use crate::store::queries::upstream_calls::{self, UpstreamCallRow};
use crate::store::queries::{jobs, proposals};
use crate::store::Tx;
use serde_json::Value;
use std::collections::BTreeSet;

/// The key id of the built-in upstream executor. Keys made by people are
/// `key_…`, so no key can be it.
pub const UPSTREAM_EXECUTOR_KEY_ID: &str = "upstream-executor";

impl ExecutorPrincipal {
    /// The built-in upstream executor, for one env and the policy's upstream tools.
    pub fn upstream_executor(env: &str, tools: BTreeSet<String>) -> ExecutorPrincipal {
        ExecutorPrincipal {
            key_id: UPSTREAM_EXECUTOR_KEY_ID.into(),
            name: "countersign upstream executor".into(),
            env: env.to_owned(),
            tools,
        }
    }

    pub fn is_upstream_executor(&self) -> bool {
        self.key_id == UPSTREAM_EXECUTOR_KEY_ID
    }
}

/// How an upstream call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The upstream answered with a result.
    Succeeded,
    /// The upstream answered with an error result (`isError`).
    Failed,
    /// The connection was refused: the call never left, and may be tried again.
    NotSent,
    /// No answer (a timeout, a connection cut mid-call): it may have happened.
    Unknown,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Succeeded => "succeeded",
            CallOutcome::Failed => "failed",
            CallOutcome::NotSent => "not_sent",
            CallOutcome::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<CallOutcome> {
        Some(match s {
            "succeeded" => CallOutcome::Succeeded,
            "failed" => CallOutcome::Failed,
            "not_sent" => CallOutcome::NotSent,
            "unknown" => CallOutcome::Unknown,
            _ => return None,
        })
    }
}

/// What the executor may do with a claimed job's call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallStart {
    /// The intent is recorded: call now, once.
    Call,
    /// An earlier attempt made the call and it ended: report that outcome.
    Ended {
        outcome: CallOutcome,
        result: Option<Value>,
    },
    /// An earlier attempt recorded the intent and never its outcome: the call
    /// may have happened, so it is not made again.
    Unknown { started_at_ms: i64 },
}

/// A recorded call, as the gateway answers the agent with it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamCall {
    pub upstream: String,
    pub tool: String,
    pub outcome: Option<CallOutcome>,
    pub result: Option<Value>,
}

#[derive(Clone)]
struct Begin {
    exec: ExecutorPrincipal,
    job_id: String,
    lease_id: String,
    upstream: String,
    tool: String,
}

async fn begin_in(tx: &mut Tx<'_>, b: Begin) -> Result<CallStart> {
    let now = tx.now_ms();
    let j = jobs::get_for_update(&mut tx.conn, &b.job_id)
        .await?
        .filter(|j| j.env == b.exec.env && b.exec.tools.contains(&j.tool))
        .ok_or(Error::NotFound)?;
    // Fenced like a completion: only the holder of a live lease may call.
    let live = j.state == JobState::Leased
        && j.lease_id.as_deref() == Some(b.lease_id.as_str())
        && j.lease_expires_at.is_some_and(|t| t > now);
    if !live {
        return Err(Error::InvalidTransition("this lease is no longer held".into()));
    }
    let start = match upstream_calls::get_for_update(&mut tx.conn, &j.execution_key).await? {
        None => {
            let row = UpstreamCallRow {
                execution_key: j.execution_key.clone(),
                job_id: j.id.clone(),
                proposal_id: j.proposal_id.clone(),
                upstream: b.upstream.clone(),
                tool: b.tool.clone(),
                attempt: j.attempt,
                started_at: now,
                finished_at: None,
                outcome: None,
                result: None,
            };
            if !upstream_calls::insert_intent(&mut tx.conn, &row).await? {
                return Err(Error::internal("an upstream call's intent appeared under the lock"));
            }
            CallStart::Call
        }
        Some(r) => match r.outcome.as_deref().and_then(CallOutcome::parse) {
            None => CallStart::Unknown {
                started_at_ms: r.started_at,
            },
            Some(CallOutcome::NotSent) => {
                if !upstream_calls::rearm_not_sent(&mut tx.conn, &j.execution_key, &j.id, j.attempt, now).await? {
                    return Err(Error::internal("an unsent upstream call could not be armed again"));
                }
                CallStart::Call
            }
            Some(outcome) => CallStart::Ended {
                outcome,
                result: r.result.as_deref().map(serde_json::from_str).transpose()?,
            },
        },
    };
    if start == CallStart::Call {
        tx.audit(
            AuditDraft::new(b.exec.actor(), "upstream.call")
                .tenant(j.tenant.clone())
                .tool(j.tool.clone())
                .subject(j.proposal_id.clone())
                .scope(b.exec.scope())
                .status("started")
                .details(serde_json::json!({
                    "job": j.id, "attempt": j.attempt, "upstream": b.upstream, "upstream_tool": b.tool,
                    "execution_key": j.execution_key,
                })),
        );
    }
    Ok(start)
}

#[derive(Clone)]
struct Finish {
    exec: ExecutorPrincipal,
    job_id: String,
    outcome: CallOutcome,
    result: Option<String>,
}

async fn finish_in(tx: &mut Tx<'_>, f: Finish) -> Result<()> {
    let now = tx.now_ms();
    // Not fenced by the lease: the call happened whether or not the lease
    // outlived it, and what it answered must be kept.
    let j = jobs::get_for_update(&mut tx.conn, &f.job_id)
        .await?
        .filter(|j| j.env == f.exec.env && f.exec.tools.contains(&j.tool))
        .ok_or(Error::NotFound)?;
    let row = upstream_calls::get_for_update(&mut tx.conn, &j.execution_key)
        .await?
        .ok_or_else(|| Error::InvalidTransition("no call was begun for this job".into()))?;
    // A call that outlived its proposal (expired mid-call) may end after an
    // on-demand purge erased the proposal's personal data: its answer is
    // not kept then. Locked (as completing a job locks it), so a purge in
    // another process is either seen here or sees this answer.
    let erased = proposals::get_for_update(&mut tx.conn, &j.proposal_id)
        .await?
        .is_some_and(|p| p.pii_erased_at.is_some());
    let result = if erased { None } else { f.result.as_deref() };
    if !upstream_calls::finish(&mut tx.conn, &j.execution_key, f.outcome.as_str(), result, now).await? {
        return Err(Error::InvalidTransition("this upstream call has already ended".into()));
    }
    let mut ev = AuditDraft::new(f.exec.actor(), "upstream.call")
        .tenant(j.tenant.clone())
        .tool(j.tool.clone())
        .subject(j.proposal_id.clone())
        .scope(f.exec.scope())
        .status(f.outcome.as_str())
        .details(serde_json::json!({
            "job": j.id, "attempt": row.attempt, "upstream": row.upstream, "upstream_tool": row.tool,
            "execution_key": j.execution_key,
        }));
    ev.duration_ms = Some(now - row.started_at);
    tx.audit(ev);
    Ok(())
}

/// The largest upstream answer kept for the agent.
pub const MAX_UPSTREAM_RESULT_BYTES: usize = 1024 * 1024;

impl Core {
    /// Record the intent to call the upstream for a job this executor holds
    /// under a live lease, or say why not to call.
    pub async fn begin_upstream_call(
        &self,
        exec: &ExecutorPrincipal,
        job_id: &str,
        lease_id: &str,
        upstream: &str,
        tool: &str,
    ) -> Result<CallStart> {
        if !exec.is_upstream_executor() {
            return Err(Error::Forbidden("only the upstream executor calls upstreams".into()));
        }
        let b = Begin {
            exec: exec.clone(),
            job_id: job_id.to_owned(),
            lease_id: lease_id.to_owned(),
            upstream: upstream.to_owned(),
            tool: tool.to_owned(),
        };
        self.store.write(move |tx| Box::pin(begin_in(tx, b))).await
    }

    /// Record how a begun call ended, with the upstream's answer (kept for
    /// the agent until the proposal's personal data is erased, never shown
    /// in audit or exports).
    pub async fn finish_upstream_call(
        &self,
        exec: &ExecutorPrincipal,
        job_id: &str,
        outcome: CallOutcome,
        result: Option<&Value>,
    ) -> Result<()> {
        if !exec.is_upstream_executor() {
            return Err(Error::Forbidden("only the upstream executor calls upstreams".into()));
        }
        let result = result.map(crate::audit::canonical_json);
        if result.as_ref().is_some_and(|r| r.len() > MAX_UPSTREAM_RESULT_BYTES) {
            return Err(Error::BadRequest(format!(
                "the upstream's answer is over {MAX_UPSTREAM_RESULT_BYTES} bytes"
            )));
        }
        let f = Finish {
            exec: exec.clone(),
            job_id: job_id.to_owned(),
            outcome,
            result,
        };
        self.store.write(move |tx| Box::pin(finish_in(tx, f))).await
    }

    /// The upstream call of a proposal this run may read, if one was made.
    pub async fn upstream_call_for_run(&self, run: &RunPrincipal, proposal_id: &str) -> Result<Option<UpstreamCall>> {
        // The same visibility as the proposal itself.
        self.proposal_for_run(run, proposal_id).await?;
        let row = upstream_calls::of_proposal(&mut self.store.reader().await?.conn(), proposal_id).await?;
        row.map(|r| {
            Ok(UpstreamCall {
                outcome: r.outcome.as_deref().and_then(CallOutcome::parse),
                result: r.result.as_deref().map(serde_json::from_str).transpose()?,
                upstream: r.upstream,
                tool: r.tool,
            })
        })
        .transpose()
    }

    /// The envs with queued jobs of these tools, where the upstream executor
    /// has work.
    pub async fn envs_with_queued_jobs(&self, tools: &[String]) -> Result<Vec<String>> {
        jobs::envs_with_queued(&mut self.store.reader().await?.conn(), tools).await
    }
}
