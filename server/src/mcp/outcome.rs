//! What an agent is told, as MCP tool results: every refusal and every end
//! of a proposal is a result with `isError: true`, a short text a model can
//! act on, and `structuredContent` with the same `code` as the JSON API.

use crate::api::error::details_of;
use countersign_core::lifecycle::{JobKind, Status, Verdict};
use countersign_core::service::ProposalOut;
use countersign_core::Error;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Value};

/// An error result with its text and structured content.
pub fn error_result(text: String, structured: Value) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = Some(structured);
    r
}

/// A refusal by the core, as the model reads it.
pub fn refusal(e: &Error, tool: &str) -> CallToolResult {
    let text = match e {
        Error::ToolDenied { .. } => format!(
            "{tool} is denied on this route: countersign will not perform it. Do not call it again; \
             use another tool or ask a person."
        ),
        Error::ToolNotAllowed { .. } => format!(
            "{tool} is not allowed on this route: countersign will not perform it. Do not call it again; \
             use one of the listed tools or ask a person."
        ),
        Error::InvalidArgs { fields, .. } => {
            let problems: Vec<String> = fields.iter().map(|(f, p)| format!("{f} {p}")).collect();
            format!(
                "Invalid arguments for {tool}: {}. Correct them and call again.",
                problems.join("; ")
            )
        }
        Error::SecretInArgs { field, kind } => {
            format!("{field} looks like a secret ({kind}); secrets never go into proposals. Call again without it.")
        }
        Error::Disabled { switch } => format!(
            "A kill switch is on ({switch}): countersign performs nothing of this kind now. Stop and tell a person."
        ),
        Error::BudgetExhausted { budget } => {
            format!("This run's {budget} budget is used up: stop and report to a person what is left to do.")
        }
        Error::IdempotencyConflict { existing } => {
            format!("This idempotency key was already used for another call (proposal {existing}). Send another key.")
        }
        Error::Unauthenticated(m) => format!("This run can no longer act ({m}). Stop."),
        Error::RateLimited { retry_after_secs } => {
            format!("Too many calls at once: wait {retry_after_secs} s and call again.")
        }
        Error::Internal(detail) => {
            tracing::error!(error = %detail, "internal error answered to an MCP client");
            "countersign failed internally; the server logged the details. Try again later.".to_owned()
        }
        other => other.to_string(),
    };
    let structured = json!({ "code": e.code(), "message": text, "details": details_of(e) });
    error_result(text, structured)
}

/// A failure of the gateway itself (an upstream that does not answer a read).
pub fn gateway_error(code: &str, text: String) -> CallToolResult {
    let structured = json!({ "code": code, "message": text });
    error_result(text, structured)
}

fn decisions(out: &ProposalOut) -> Value {
    out.decisions
        .iter()
        .map(|d| {
            json!({
                "by": d.username, "verdict": d.verdict, "comment": d.comment,
                "at": countersign_core::clock::rfc3339(d.decided_at), "break_glass": d.break_glass,
            })
        })
        .collect()
}

/// The result of a proposal that ended without success; None while it is
/// still on its way (or succeeded).
pub fn ended(out: &ProposalOut) -> Option<CallToolResult> {
    let call = match (&out.row.upstream, &out.row.upstream_tool) {
        (Some(u), Some(t)) => format!("{u}/{t}"),
        _ => out.row.tool.clone(),
    };
    let job_result: Option<Value> = out
        .job
        .as_ref()
        .and_then(|j| j.result.as_deref())
        .and_then(|r| serde_json::from_str(r).ok());
    let (code, text) = match out.row.status {
        Status::Rejected => {
            let who: Vec<String> = out
                .decisions
                .iter()
                .filter(|d| d.verdict == Verdict::Reject)
                .map(|d| {
                    if d.comment.trim().is_empty() {
                        d.username.clone()
                    } else {
                        format!("{}: {}", d.username, d.comment.trim())
                    }
                })
                .collect();
            (
                "rejected".to_owned(),
                format!(
                    "Rejected by {}. Do not repeat this call; change what was asked or ask a person.",
                    if who.is_empty() { "a reviewer".to_owned() } else { who.join("; ") }
                ),
            )
        }
        Status::Expired if out.job.as_ref().is_some_and(|j| j.kind == JobKind::Execute) => (
            "expired".to_owned(),
            format!("Approved, but {call} was not performed in time, so the approval expired. Propose it again if it is still needed."),
        ),
        Status::Expired => (
            "expired".to_owned(),
            "Nobody decided in time: the proposal expired. Propose it again only if it is still needed.".to_owned(),
        ),
        Status::Cancelled => (
            "cancelled".to_owned(),
            "Cancelled: the proposal was withdrawn or its run revoked. Stop and tell a person.".to_owned(),
        ),
        Status::Failed => {
            let code = job_result
                .as_ref()
                .and_then(|r| r["code"].as_str())
                .unwrap_or("failed")
                .to_owned();
            let why = job_result
                .as_ref()
                .and_then(|r| r["message"].as_str())
                .unwrap_or("the executor reported a failure");
            let attempts = out.job.as_ref().map_or(0, |j| j.attempt);
            (
                code,
                format!("Approved, but {call} failed after {attempts} attempt(s): {why}. Tell a person before trying again."),
            )
        }
        _ => return None,
    };
    let structured = json!({
        "code": code, "message": text, "proposal_id": out.row.id, "status": out.row.status,
        "decisions": decisions(out),
    });
    Some(error_result(text, structured))
}

/// Expired after the upstream executor sent its call and no answer came:
/// it may have happened, and it will not be made again.
pub fn expired_unknown(out: &ProposalOut, upstream: &str, tool: &str) -> CallToolResult {
    let text = format!(
        "Approved, and the call to {upstream}/{tool} was sent, but no answer came before the approval expired: \
         whether it happened is unknown, and countersign will not make it again. Do not repeat it; tell a \
         person to check."
    );
    let structured = json!({
        "code": "upstream_outcome_unknown", "message": text, "proposal_id": out.row.id,
        "status": out.row.status, "decisions": decisions(out),
    });
    error_result(text, structured)
}

/// A performed call whose upstream answer was dropped when the proposal's
/// personal data was erased: not an error (it happened, once), and never a
/// reason to call again.
pub fn performed_answer_erased(out: &ProposalOut, erased_at: i64) -> CallToolResult {
    let call = match (&out.row.upstream, &out.row.upstream_tool) {
        (Some(u), Some(t)) => format!("{u}/{t}"),
        _ => out.row.tool.clone(),
    };
    let at = countersign_core::clock::rfc3339(erased_at);
    let text = format!(
        "Done: {call} was performed. Its answer is no longer kept: this call's personal data was erased on {at}. \
         Do not call it again to get the answer."
    );
    let mut r = CallToolResult::success(vec![ContentBlock::text(text.clone())]);
    r.structured_content = Some(json!({
        "status": "succeeded", "proposal_id": out.row.id, "answer_erased": true, "pii_erased_at": at,
        "message": text,
    }));
    r
}

/// Still waiting at the deadline: not an error; the same call again
/// returns the outcome.
pub fn pending(out: &ProposalOut) -> CallToolResult {
    let text = match out.row.status {
        Status::Pending | Status::Previewing => format!(
            "Waiting for a person to approve ({} of {} approvals) at {}. Call this tool again with the same \
             arguments to get the outcome; that does not propose it twice.",
            out.row.approvals, out.row.approvals_required, out.review_url
        ),
        _ => format!(
            "Approved; countersign is performing it (status {}). Call this tool again with the same arguments \
             to get the outcome; that does not perform it twice.",
            out.row.status
        ),
    };
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({
        "status": "pending", "proposal_id": out.row.id, "review_url": out.review_url,
        "proposal_status": out.row.status,
    }));
    r
}

/// What a waiting caller is told while it waits.
pub fn progress_message(out: &ProposalOut) -> String {
    match out.row.status {
        Status::Pending | Status::Previewing => format!(
            "waiting for approval ({} of {})",
            out.row.approvals, out.row.approvals_required
        ),
        Status::Approved => "approved; held by a kill switch or breaker".to_owned(),
        Status::Queued => "approved; waiting to be performed".to_owned(),
        Status::Running => match (&out.row.upstream, &out.row.upstream_tool) {
            (Some(u), Some(t)) => format!("approved; calling {u}/{t}"),
            _ => "approved; being performed".to_owned(),
        },
        other => other.to_string(),
    }
}
