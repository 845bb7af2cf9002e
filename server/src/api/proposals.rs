//! Agents propose, read, wait on and cancel their own run's proposals.

use super::error::{error_response, ApiResult, ErrorBody};
use super::extract::{ApiJson, BodyRejection, ProposerAuth, RunAuth};
use super::types::{ProposalResponse, ProposeBody, WaitQuery};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use countersign_core::service::{Core, ProposeRequest};
use std::sync::Arc;
use std::time::Duration;

/// Propose an action.
#[utoipa::path(
    post, path = "/proposals", tag = "agent",
    request_body = ProposeBody,
    responses(
        (status = 201, description = "Created", body = ProposalResponse),
        (status = 200, description = "Replayed: same idempotency key, tool and args (header Idempotent-Replayed: true)", body = ProposalResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 403, description = "tool_denied, tool_not_allowed or forbidden", body = ErrorBody),
        (status = 409, description = "idempotency_conflict", body = ErrorBody),
        (status = 413, description = "payload_too_large", body = ErrorBody),
        (status = 422, description = "invalid_args or secret_in_args", body = ErrorBody),
        (status = 423, description = "disabled", body = ErrorBody),
        (status = 429, description = "budget_exhausted", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(core): State<Arc<Core>>,
    ProposerAuth(run): ProposerAuth,
    body: Result<ApiJson<ProposeBody>, BodyRejection>,
) -> ApiResult<Response> {
    let body = match body {
        Ok(ApiJson(body)) => body,
        Err(rejection) => {
            // A run that has ended hears that first, whatever its body.
            core.confirm_proposer(&run).await?;
            return Ok(rejection.into_response());
        }
    };
    let req = ProposeRequest {
        tool: body.tool,
        args: body.args,
        idempotency_key: body.idempotency_key,
        reason: body.reason,
        preview: body.preview.map(|p| (p.before, p.after)),
        via: countersign_core::service::Via::Api,
    };
    let (out, replayed) = core.propose_as(&run, req).await?;
    let body = Json(ProposalResponse::from(out));
    Ok(if replayed {
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
        r
    } else {
        (StatusCode::CREATED, body).into_response()
    })
}

/// A proposal of this run, with its decisions and execution.
#[utoipa::path(
    get, path = "/proposals/{id}", tag = "agent",
    params(("id" = String, Path, description = "Proposal id")),
    responses(
        (status = 200, body = ProposalResponse),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 404, description = "not_found (also another run's or tenant's id)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(core): State<Arc<Core>>,
    RunAuth(run): RunAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<ProposalResponse>> {
    Ok(Json(core.proposal_for_run(&run, &id).await?.into()))
}

/// Wait until the proposal leaves `pending`, or the timeout.
#[utoipa::path(
    get, path = "/proposals/{id}/wait", tag = "agent",
    params(("id" = String, Path, description = "Proposal id"), WaitQuery),
    responses(
        (status = 200, description = "The proposal, decided or still pending at the timeout", body = ProposalResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn wait(
    State(core): State<Arc<Core>>,
    RunAuth(run): RunAuth,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("timeout_seconds: {}", e.body_text()),
                serde_json::json!({}),
            ))
        }
    };
    let secs = q.timeout_seconds.unwrap_or(30);
    if !(0..=60).contains(&secs) {
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "timeout_seconds must be between 0 and 60",
            serde_json::json!({ "max": 60 }),
        ));
    }
    let out = core.wait_for_run(&run, &id, Duration::from_secs(secs as u64)).await?;
    Ok(Json(ProposalResponse::from(out)).into_response())
}

/// Cancel a pending proposal.
#[utoipa::path(
    post, path = "/proposals/{id}/cancel", tag = "agent",
    params(("id" = String, Path, description = "Proposal id")),
    responses(
        (status = 200, description = "Cancelled", body = ProposalResponse),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "invalid_transition: not pending", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(core): State<Arc<Core>>,
    RunAuth(run): RunAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<ProposalResponse>> {
    Ok(Json(core.cancel_for_run(&run, &id).await?.into()))
}
