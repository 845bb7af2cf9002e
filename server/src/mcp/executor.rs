//! The built-in upstream executor: performs the tools the policy ties to an
//! upstream, as an executor of its own through the same queue as any other
//! (claim under a lease, heartbeat, complete, retries with backoff, expiry,
//! kill switches and breakers all in the core). Like any executor it
//! verifies each job's receipt and acts on the receipt's args only. Around
//! each call it records the intent and the outcome (`begin_upstream_call`,
//! `finish_upstream_call`), as late as possible before sending, so a tool is
//! never called twice for one execution key.

use super::upstream::{CallFailure, Upstreams};
use countersign_core::privacy::Redactor;
use countersign_core::receipts::ReceiptClaims;
use countersign_core::service::{
    CallOutcome, CallStart, ClaimRequest, ClaimedJob, CompleteRequest, Core, ExecutorPrincipal,
};
use countersign_core::{Error, Notice};
use rmcp::model::{CallToolResult, JsonObject};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Calls in flight at once, over all upstreams.
const MAX_IN_FLIGHT: usize = 32;
/// How often the queue is looked at when no release woke the executor (jobs
/// also become claimable by time: retries after their backoff).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The executor's settings.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorSettings {
    /// The lease each claim takes; heartbeats renew it during a call.
    pub lease: Duration,
}

/// Start the executor; it runs until the task is aborted.
/// The running upstream executor: its claiming loop, and the places its
/// calls in flight hold.
pub struct Executor {
    task: tokio::task::JoinHandle<()>,
    slots: Arc<Semaphore>,
}

pub fn spawn(core: Arc<Core>, upstreams: Arc<Upstreams>, settings: ExecutorSettings) -> Executor {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let task = tokio::spawn(run(core, upstreams, settings, slots.clone()));
    Executor { task, slots }
}

impl Executor {
    /// Claim nothing more, and give the calls in flight up to `grace` to
    /// finish and record their outcome: a call cut off by shutdown would be
    /// an unknown outcome, never made again. True if all finished.
    pub async fn drain(self, grace: Duration) -> bool {
        self.task.abort();
        let busy = MAX_IN_FLIGHT - self.slots.available_permits();
        if busy > 0 {
            tracing::info!(calls = busy, "waiting for upstream calls in flight to finish");
        }
        let all = self.slots.acquire_many(MAX_IN_FLIGHT as u32);
        let finished = tokio::time::timeout(grace, all).await.is_ok();
        if !finished {
            tracing::warn!(
                calls = MAX_IN_FLIGHT - self.slots.available_permits(),
                "upstream calls still in flight at shutdown: their outcome will be unknown"
            );
        }
        finished
    }

    /// Stop at once (the app dropped without `stop`).
    pub fn abort(&self) {
        self.task.abort();
    }
}

async fn run(core: Arc<Core>, upstreams: Arc<Upstreams>, settings: ExecutorSettings, slots: Arc<Semaphore>) {
    loop {
        let mut notices = core.subscribe();
        let claimed = claim_round(&core, &upstreams, &slots, settings).await;
        if claimed {
            continue;
        }
        let wait = async {
            loop {
                match notices.recv().await {
                    Ok(Notice::JobReady { .. } | Notice::Missed)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(LOOK_EVERY, wait).await;
    }
}

/// Claim what waits in every env with upstream work; true if anything was claimed.
async fn claim_round(
    core: &Arc<Core>,
    upstreams: &Arc<Upstreams>,
    slots: &Arc<Semaphore>,
    s: ExecutorSettings,
) -> bool {
    let policy = core.policy();
    let tools: BTreeSet<String> = policy
        .tools
        .values()
        .filter(|t| t.upstream.is_some())
        .map(|t| t.name.clone())
        .collect();
    if tools.is_empty() || slots.available_permits() == 0 {
        return false;
    }
    let envs = match core
        .envs_with_queued_jobs(&tools.iter().cloned().collect::<Vec<_>>())
        .await
    {
        Ok(envs) => envs,
        Err(e) => {
            tracing::warn!(error = %e, "upstream executor: the queue could not be read");
            return false;
        }
    };
    let mut any = false;
    for env in envs {
        let exec = ExecutorPrincipal::upstream_executor(&env, tools.clone());
        let free = slots.available_permits().min(16) as i64;
        if free == 0 {
            break;
        }
        let req = ClaimRequest {
            max: Some(free),
            lease_seconds: Some(s.lease.as_secs().max(1) as i64),
            ..ClaimRequest::default()
        };
        let jobs = match core.claim(&exec, req).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, env = %env, "upstream executor: claim failed");
                continue;
            }
        };
        for job in jobs {
            any = true;
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return any;
            };
            let (core, upstreams, exec) = (core.clone(), upstreams.clone(), exec.clone());
            tokio::spawn(async move {
                perform(&core, &upstreams, &exec, job, s).await;
                drop(permit);
            });
        }
    }
    any
}

/// The receipt's claims, if it is signed by one of the server's receipt
/// keys, not past its deadline (by the server's clock), and for this job,
/// this env and a tool this executor performs.
async fn verify_receipt(core: &Core, exec: &ExecutorPrincipal, job: &ClaimedJob) -> Result<ReceiptClaims, String> {
    let receipt = job.receipt.as_deref().ok_or("the job carries no receipt")?;
    let header = jsonwebtoken::decode_header(receipt).map_err(|e| format!("the receipt is malformed: {e}"))?;
    let kid = header.kid.ok_or("the receipt names no key")?;
    let jwks = core.jwks().await.map_err(|e| e.to_string())?;
    let x = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .and_then(|k| k["x"].as_str())
        .ok_or("the receipt's key is not published")?;
    let key = jsonwebtoken::DecodingKey::from_ed_components(x).map_err(|e| format!("the receipt key: {e}"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_required_spec_claims(&["exp", "jti", "sub"]);
    // The deadline is checked below against the server's own clock.
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<ReceiptClaims>(receipt, &key, &v)
        .map_err(|e| format!("the receipt does not verify: {e}"))?
        .claims;
    if claims.exp * 1000 <= core.now_ms() {
        return Err("the receipt's deadline has passed".into());
    }
    if claims.env != exec.env || !exec.tools.contains(&claims.tool) {
        return Err(format!(
            "the receipt is for {} in {}, not work of this executor",
            claims.tool, claims.env
        ));
    }
    if claims.jti != job.job_id || claims.sub != job.proposal_id || claims.execution_key != job.execution_key {
        return Err("the receipt is for another job".into());
    }
    Ok(claims)
}

/// The summary a job completes with: what reviewers and exports see. The
/// upstream's own answer is kept for the agent alone.
fn summary(upstream: &str, tool: &str, code: Option<&str>, message: Option<String>) -> Value {
    let mut v = json!({ "upstream": upstream, "tool": tool });
    if let Some(c) = code {
        v["code"] = json!(c);
    }
    if let Some(m) = message {
        v["message"] = json!(m);
    }
    v
}

/// The first text of an error result, short.
fn error_text(r: &CallToolResult) -> String {
    let text = r
        .content
        .iter()
        .find_map(|c| c.as_text().map(|t| t.text.clone()))
        .unwrap_or_else(|| "the upstream reported an error".into());
    text.chars().take(300).collect()
}

async fn complete(core: &Core, exec: &ExecutorPrincipal, job: &ClaimedJob, ok: bool, result: Value, retryable: bool) {
    let req = CompleteRequest {
        lease_id: job.lease_id.clone(),
        status: if ok { "succeeded" } else { "failed" }.into(),
        result: result.clone(),
        retryable,
        preview: None,
    };
    match core.complete(exec, &job.job_id, req.clone()).await {
        Ok(c) => tracing::info!(job = %job.job_id, state = %c.state, "upstream executor completed a job"),
        Err(Error::SecretInArgs { .. }) => {
            // A message that looks like a secret stays out of the record.
            let mut bare = result;
            if let Some(o) = bare.as_object_mut() {
                o.remove("message");
            }
            let retry = CompleteRequest { result: bare, ..req };
            if let Err(e) = core.complete(exec, &job.job_id, retry).await {
                tracing::warn!(job = %job.job_id, error = %e, "upstream executor: completion refused");
            }
        }
        Err(e) => tracing::warn!(job = %job.job_id, error = %e, "upstream executor: completion refused"),
    }
}

/// Report an ended call.
async fn report(
    core: &Core,
    exec: &ExecutorPrincipal,
    job: &ClaimedJob,
    (upstream, tool): (&str, &str),
    outcome: CallOutcome,
    answer: Option<&Value>,
) {
    match outcome {
        CallOutcome::Succeeded => complete(core, exec, job, true, summary(upstream, tool, None, None), false).await,
        CallOutcome::Failed => {
            let text = answer
                .and_then(|a| serde_json::from_value::<CallToolResult>(a.clone()).ok())
                .map(|r| error_text(&r))
                .or_else(|| answer.and_then(|a| a["error"].as_str()).map(str::to_owned));
            let s = summary(upstream, tool, Some("upstream_error"), text);
            complete(core, exec, job, false, s, false).await
        }
        CallOutcome::NotSent => {
            let s = summary(
                upstream,
                tool,
                Some("upstream_unavailable"),
                Some(format!("upstream {upstream} does not answer")),
            );
            complete(core, exec, job, false, s, true).await
        }
        CallOutcome::Unknown => {
            let s = summary(
                upstream,
                tool,
                Some("upstream_outcome_unknown"),
                Some(format!(
                    "the call to {upstream}/{tool} got no answer; it may have happened, so it is not made again"
                )),
            );
            complete(core, exec, job, false, s, false).await
        }
    }
}

/// Keep the lease alive while `work` runs.
async fn heartbeating<T>(
    core: &Core,
    exec: &ExecutorPrincipal,
    job: &ClaimedJob,
    lease: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (lease / 3).max(Duration::from_millis(500));
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tokio::time::sleep(every) => {
                let secs = Some(lease.as_secs().max(1) as i64);
                if let Err(e) = core.heartbeat(exec, &job.job_id, &job.lease_id, secs).await {
                    tracing::debug!(job = %job.job_id, error = %e, "upstream executor: heartbeat refused");
                }
            }
        }
    }
}

async fn perform(core: &Core, upstreams: &Upstreams, exec: &ExecutorPrincipal, job: ClaimedJob, s: ExecutorSettings) {
    let claims = match verify_receipt(core, exec, &job).await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(job = %job.job_id, why = %why, "upstream executor refused a job's receipt");
            let r = json!({ "code": "bad_receipt", "message": why });
            return complete(core, exec, &job, false, r, false).await;
        }
    };
    let Some(target) = claims.upstream.clone() else {
        let r = json!({ "code": "no_upstream", "message": "the receipt names no upstream call" });
        return complete(core, exec, &job, false, r, false).await;
    };
    let policy = core.policy();
    let Some(up) = policy.upstreams.get(&target.name) else {
        let r =
            json!({ "code": "no_upstream", "message": format!("upstream {} is no longer in the policy", target.name) });
        return complete(core, exec, &job, false, r, false).await;
    };
    let names = (up.name.as_str(), target.tool.as_str());
    // Before anything is recorded: an upstream that does not answer now is
    // a failure that nothing was sent for, retried by the queue's rules.
    if let Err(e) = heartbeating(core, exec, &job, s.lease, upstreams.ready(up)).await {
        tracing::warn!(job = %job.job_id, error = %e, "upstream executor: upstream not ready");
        let r = summary(names.0, names.1, Some("upstream_unavailable"), Some(e.for_agent()));
        return complete(core, exec, &job, false, r, true).await;
    }
    match core
        .begin_upstream_call(exec, &job.job_id, &job.lease_id, names.0, names.1)
        .await
    {
        Ok(CallStart::Call) => {}
        Ok(CallStart::Ended { outcome, result }) => {
            return report(core, exec, &job, names, outcome, result.as_ref()).await;
        }
        Ok(CallStart::Unknown { .. }) => {
            tracing::warn!(job = %job.job_id, "upstream executor: an earlier call has no recorded outcome; not calling again");
            return report(core, exec, &job, names, CallOutcome::Unknown, None).await;
        }
        Err(e) => {
            tracing::warn!(job = %job.job_id, error = %e, "upstream executor: the call could not be begun");
            return;
        }
    }
    // An upstream's error may repeat the personal args it was sent: masked
    // in the log, as everywhere but the agent's answer.
    let personal = policy
        .tool(&claims.tool)
        .map(|t| t.args.personal_fields())
        .unwrap_or_default();
    let masker = Redactor::masking(&claims.args, &personal);
    let args: JsonObject = match claims.args {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    };
    let mut meta = JsonObject::new();
    meta.insert("countersign/execution_key".into(), json!(claims.execution_key));
    meta.insert("countersign/proposal_id".into(), json!(claims.sub));
    meta.insert("countersign/tenant".into(), json!(claims.tenant));
    meta.insert("countersign/env".into(), json!(claims.env));
    let answer = heartbeating(core, exec, &job, s.lease, upstreams.call(up, names.1, args, Some(meta))).await;
    let (outcome, kept) = match &answer {
        Ok(r) if r.is_error == Some(true) => (CallOutcome::Failed, serde_json::to_value(r).ok()),
        Ok(r) => (CallOutcome::Succeeded, serde_json::to_value(r).ok()),
        Err(CallFailure::NotSent(_)) => (CallOutcome::NotSent, None),
        Err(CallFailure::NoAnswer(_)) => (CallOutcome::Unknown, None),
        Err(CallFailure::Refused(e)) => (CallOutcome::Failed, Some(json!({ "error": e.for_agent() }))),
    };
    if let Err(e) = &answer {
        let error = masker.text(&e.error().to_string());
        tracing::warn!(job = %job.job_id, error = %error, "upstream executor: the call failed");
    }
    let kept = match kept {
        Some(v)
            if countersign_core::audit::canonical_json(&v).len()
                > countersign_core::service::MAX_UPSTREAM_RESULT_BYTES =>
        {
            Some(json!({ "error": "the upstream's answer was too large to keep" }))
        }
        other => other,
    };
    if let Err(e) = core
        .finish_upstream_call(exec, &job.job_id, outcome, kept.as_ref())
        .await
    {
        // The outcome stays unrecorded: a redelivery will not call again.
        tracing::error!(job = %job.job_id, error = %e, "upstream executor: the call's outcome was not recorded");
        return;
    }
    report(core, exec, &job, names, outcome, kept.as_ref()).await
}
