//! Executors claim approved actions under leases, heartbeat and complete them.

use super::error::ErrorBody;
use super::extract::{ApiJson, BodyRejection, ExecutorAuth, ExecutorError};
use super::types::{ClaimBody, ClaimResponse, CompleteBody, CompleteResponse, HeartbeatBody, HeartbeatResponse};
use axum::extract::{Path, State};
use axum::Json;
use countersign_core::clock::rfc3339;
use countersign_core::service::{ClaimRequest, CompleteRequest, Core, PreviewReport};
use std::sync::Arc;

/// Claim jobs of the key's env and tools, long-polling up to `wait_seconds`.
#[utoipa::path(
    post, path = "/jobs/claim", tag = "executor",
    request_body = ClaimBody,
    responses(
        (status = 200, description = "Zero or more jobs, each under a new lease", body = ClaimResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 403, description = "forbidden: not an executor key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn claim(
    State(core): State<Arc<Core>>,
    auth: ExecutorAuth,
    body: Result<ApiJson<ClaimBody>, BodyRejection>,
) -> Result<Json<ClaimResponse>, ExecutorError> {
    let body = auth.body(&core, body).await?;
    let jobs = core
        .claim(
            &auth.0,
            ClaimRequest {
                tools: body.tools,
                max: body.max,
                lease_seconds: body.lease_seconds,
                wait_seconds: body.wait_seconds,
                kinds: body.kinds.map(|ks| ks.into_iter().map(Into::into).collect()),
            },
        )
        .await?;
    Ok(Json(ClaimResponse {
        jobs: jobs.into_iter().map(Into::into).collect(),
    }))
}

/// Extend a live lease.
#[utoipa::path(
    post, path = "/jobs/{id}/heartbeat", tag = "executor",
    params(("id" = String, Path, description = "Job id")),
    request_body = HeartbeatBody,
    responses(
        (status = 200, body = HeartbeatResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "invalid_transition: the lease was lost", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn heartbeat(
    State(core): State<Arc<Core>>,
    auth: ExecutorAuth,
    Path(id): Path<String>,
    body: Result<ApiJson<HeartbeatBody>, BodyRejection>,
) -> Result<Json<HeartbeatResponse>, ExecutorError> {
    let body = auth.body(&core, body).await?;
    let hb = core.heartbeat(&auth.0, &id, &body.lease_id, body.lease_seconds).await?;
    Ok(Json(HeartbeatResponse {
        job_id: id,
        lease_id: body.lease_id,
        lease_expires_at: rfc3339(hb.lease_expires_at_ms),
        cancel_requested: hb.cancel_requested,
    }))
}

/// Report the outcome; idempotent for the same body.
#[utoipa::path(
    post, path = "/jobs/{id}/complete", tag = "executor",
    params(("id" = String, Path, description = "Job id")),
    request_body = CompleteBody,
    responses(
        (status = 200, body = CompleteResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "invalid_transition: stale lease or a different outcome", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn complete(
    State(core): State<Arc<Core>>,
    auth: ExecutorAuth,
    Path(id): Path<String>,
    body: Result<ApiJson<CompleteBody>, BodyRejection>,
) -> Result<Json<CompleteResponse>, ExecutorError> {
    let body = auth.body(&core, body).await?;
    let done = core
        .complete(
            &auth.0,
            &id,
            CompleteRequest {
                lease_id: body.lease_id,
                status: body.status.as_str().to_owned(),
                result: body.result,
                retryable: body.retryable,
                preview: body.preview.map(|p| PreviewReport {
                    before: p.before,
                    after: p.after,
                    state: p.state,
                }),
            },
        )
        .await?;
    Ok(Json(done.into()))
}
