//! Request and response bodies of the API, with their OpenAPI schemas.
//! Requests refuse unknown fields: tenant and env come from credentials only.

use countersign_core::clock::rfc3339;
use countersign_core::service::{ClaimedJob, Completion, MintedRun, ProposalOut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// An optional integer, as JSON means it: `118` and `118.0` are the same
/// number (the document's `integer` accepts both); `118.5` is not an integer.
/// From a query string, its text.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let n = match Option::<Num>::deserialize(d)? {
        None => return Ok(None),
        Some(Num::Int(i)) => return Ok(Some(i)),
        Some(Num::Float(f)) => f,
        Some(Num::Text(s)) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| serde::de::Error::custom(format!("expected an integer, got {s:?}")))?,
    };
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Ok(Some(n as i64))
    } else {
        Err(serde::de::Error::custom(format!("expected an integer, got {n}")))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRunBody {
    /// A route of the loaded policy, such as `support/send`.
    #[schema(min_length = 1, max_length = 200)]
    pub route: String,
    /// How long the run lives: 1 second to a year, capped by the server's
    /// `max_run_ttl` (default cap 900).
    #[schema(minimum = 1, maximum = 31_536_000)]
    #[serde(default, deserialize_with = "integer")]
    pub ttl_seconds: Option<i64>,
    /// The person the agent acts for: they can never approve this run's proposals.
    #[schema(pattern = r"^[A-Za-z0-9@._-]{1,64}$")]
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Budgets {
    pub steps: i64,
    pub seconds: i64,
    pub usd: f64,
}

/// `Debug` leaves the token out: it is a credential.
#[derive(Serialize, ToSchema)]
pub struct MintRunResponse {
    pub run_id: String,
    /// The run token: send it as `Authorization: Bearer …`. Shown once.
    pub token: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub expires_at: String,
    pub allow_tools: Vec<String>,
    pub require_approval: Vec<String>,
    pub budgets: Budgets,
}

impl std::fmt::Debug for MintRunResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintRunResponse")
            .field("run_id", &self.run_id)
            .field("tenant", &self.tenant)
            .field("env", &self.env)
            .field("route", &self.route)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl From<MintedRun> for MintRunResponse {
    fn from(m: MintedRun) -> Self {
        Self {
            run_id: m.run_id,
            token: m.token,
            tenant: m.tenant,
            env: m.env,
            route: m.route,
            expires_at: rfc3339(m.expires_at_ms),
            allow_tools: m.allow_tools,
            require_approval: m.require_approval,
            budgets: Budgets {
                steps: m.budgets.steps,
                seconds: m.budgets.seconds,
                usd: m.budgets.usd,
            },
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    #[schema(pattern = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length = 100)]
    pub tool: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResponse {
    pub tool: String,
    /// `allow` or `require_approval`.
    pub decision: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// At most 32 KiB of UTF-8.
    #[schema(max_length = 32768)]
    pub before: String,
    /// At most 32 KiB of UTF-8.
    #[schema(max_length = 32768)]
    pub after: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeBody {
    #[schema(pattern = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length = 100)]
    pub tool: String,
    /// Checked against the tool's schema.
    #[schema(value_type = Object)]
    pub args: Value,
    /// Required for write tools: 1–200 printable ASCII characters.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[ -~]*$")]
    pub idempotency_key: Option<String>,
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
    /// What changes: the server computes and shows the diff.
    pub preview: Option<PreviewBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Approval {
    pub by: String,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionBody {
    pub by: String,
    /// `approve` or `reject`.
    pub verdict: String,
    pub comment: String,
    pub at: String,
    pub break_glass: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionBody {
    /// `queued`, `held`, `running`, `succeeded`, `failed`, `expired` or
    /// `cancelled`.
    pub status: String,
    /// `execute`, or `preview` while the executor's dry run is the only job.
    pub kind: String,
    pub attempts: i64,
    #[schema(value_type = Option<Object>)]
    pub result: Value,
    pub finished_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalResponse {
    pub id: String,
    /// `previewing`, `pending`, `approved`, `queued`, `running`, `succeeded`,
    /// `failed`, `rejected`, `expired` or `cancelled`.
    pub status: String,
    pub tool: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub run_id: String,
    pub approvals_required: i64,
    pub approvals: Vec<Approval>,
    pub created_at: String,
    pub expires_at: String,
    pub review_url: String,
    pub args_hash: String,
    pub idempotency_key: Option<String>,
    pub decisions: Vec<DecisionBody>,
    pub execution: Option<ExecutionBody>,
    /// Who described the change: `executor` (a dry run, by `preview_by`) or
    /// `agent` (not checked); null when there is no preview.
    pub preview_source: Option<String>,
    pub preview_by: Option<String>,
    /// When the proposal's personal data (its `pii` args, and wherever its
    /// reason, preview or result repeated them) was erased, its retention
    /// over; null while it is kept.
    pub pii_erased_at: Option<String>,
}

impl From<ProposalOut> for ProposalResponse {
    fn from(o: ProposalOut) -> Self {
        let p = o.row;
        Self {
            approvals: o
                .decisions
                .iter()
                .filter(|d| d.verdict == countersign_core::lifecycle::Verdict::Approve)
                .map(|d| Approval {
                    by: d.username.clone(),
                    at: rfc3339(d.decided_at),
                })
                .collect(),
            decisions: o
                .decisions
                .into_iter()
                .map(|d| DecisionBody {
                    by: d.username,
                    verdict: d.verdict.to_string(),
                    comment: d.comment,
                    at: rfc3339(d.decided_at),
                    break_glass: d.break_glass,
                })
                .collect(),
            execution: o.job.map(|j| ExecutionBody {
                status: match j.state {
                    countersign_core::lifecycle::JobState::Leased => "running".into(),
                    other => other.to_string(),
                },
                kind: j.kind.to_string(),
                attempts: j.attempt,
                result: j
                    .result
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or(Value::Null),
                finished_at: j.finished_at.map(rfc3339),
            }),
            preview_source: match (&p.preview_by, &p.preview_before) {
                (Some(_), _) => Some("executor".into()),
                (None, Some(_)) => Some("agent".into()),
                (None, None) => None,
            },
            preview_by: p.preview_by.clone(),
            pii_erased_at: p.pii_erased_at.map(rfc3339),
            id: p.id,
            status: p.status.to_string(),
            tool: p.tool,
            tenant: p.tenant,
            env: p.env,
            route: p.route,
            run_id: p.run_id,
            approvals_required: p.approvals_required,
            created_at: rfc3339(p.created_at),
            expires_at: rfc3339(p.expires_at),
            review_url: o.review_url,
            args_hash: p.args_hash,
            idempotency_key: p.idempotency_key,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for the status to leave `pending` (0–60, default 30).
    #[param(minimum = 0, maximum = 60, value_type = Option<i64>)]
    #[serde(default, deserialize_with = "integer")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// Narrow the key's tools to these.
    #[schema(max_items = 1000)]
    pub tools: Option<Vec<String>>,
    /// 1–100, default 1.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "integer")]
    pub max: Option<i64>,
    /// 1–3600, default 60.
    #[schema(minimum = 1, maximum = 3600)]
    #[serde(default, deserialize_with = "integer")]
    pub lease_seconds: Option<i64>,
    /// Long-poll for up to this many seconds (0–60, default 0).
    #[schema(minimum = 0, maximum = 60)]
    #[serde(default, deserialize_with = "integer")]
    pub wait_seconds: Option<i64>,
    /// `execute` (the default) and/or `preview`.
    #[schema(min_items = 1)]
    pub kinds: Option<Vec<JobKindBody>>,
}

/// What a job does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKindBody {
    Preview,
    Execute,
}

impl From<JobKindBody> for countersign_core::lifecycle::JobKind {
    fn from(k: JobKindBody) -> Self {
        match k {
            JobKindBody::Preview => Self::Preview,
            JobKindBody::Execute => Self::Execute,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobBody {
    pub job_id: String,
    /// The fencing token: heartbeat and complete must present it.
    pub lease_id: String,
    pub proposal_id: String,
    pub tenant: String,
    pub env: String,
    pub tool: String,
    #[schema(value_type = Object)]
    pub args: Value,
    pub idempotency_key: Option<String>,
    pub attempt: i64,
    pub lease_expires_at: String,
    /// `execute`, or `preview` (compute what would change; act on nothing).
    pub kind: String,
    /// The same for every attempt, unique across the deployment: deduplicate
    /// side effects on it.
    pub execution_key: String,
    /// The signed receipt of what was approved (a JWS, EdDSA); null for previews.
    pub receipt: Option<String>,
    /// The precondition the executor's preview recorded; re-check it before acting.
    pub preview_state: Option<String>,
}

impl From<ClaimedJob> for JobBody {
    fn from(j: ClaimedJob) -> Self {
        Self {
            job_id: j.job_id,
            lease_id: j.lease_id,
            proposal_id: j.proposal_id,
            tenant: j.tenant,
            env: j.env,
            tool: j.tool,
            args: j.args,
            idempotency_key: j.idempotency_key,
            attempt: j.attempt,
            lease_expires_at: rfc3339(j.lease_expires_at_ms),
            kind: j.kind.to_string(),
            execution_key: j.execution_key,
            receipt: j.receipt,
            preview_state: j.preview_state,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimResponse {
    pub jobs: Vec<JobBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: String,
    /// 1–3600, default 60; not past the job's execute-by time.
    #[schema(minimum = 1, maximum = 3600)]
    #[serde(default, deserialize_with = "integer")]
    pub lease_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    pub job_id: String,
    pub lease_id: String,
    pub lease_expires_at: String,
    /// The job's run was revoked: finish or stop, but start nothing new.
    pub cancel_requested: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_id: String,
    pub status: Outcome,
    /// What the agent reads back: at most 16 KiB of JSON, no secrets.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub result: Value,
    #[serde(default)]
    pub retryable: bool,
    /// A preview job's report when it succeeded.
    pub preview: Option<PreviewReportBody>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }
}

/// What an executor's dry run says will change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewReportBody {
    /// At most 32 KiB of UTF-8.
    #[schema(max_length = 32768)]
    pub before: String,
    /// At most 32 KiB of UTF-8.
    #[schema(max_length = 32768)]
    pub after: String,
    /// An opaque precondition (a row version, an ETag), at most 200 characters.
    #[schema(max_length = 200)]
    pub state: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompleteResponse {
    pub job_id: String,
    /// `succeeded`, `failed`, or `queued` when a retry is scheduled.
    pub state: String,
    pub proposal_status: String,
    pub attempt: i64,
    pub next_attempt_at: Option<String>,
}

impl From<Completion> for CompleteResponse {
    fn from(c: Completion) -> Self {
        Self {
            job_id: c.job_id,
            state: c.state.to_string(),
            proposal_status: c.proposal_status.to_string(),
            attempt: c.attempt,
            next_attempt_at: c.next_attempt_at_ms.map(rfc3339),
        }
    }
}
