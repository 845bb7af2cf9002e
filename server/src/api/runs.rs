//! Orchestrators mint runs; agents check read tools.

use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, RunAuth, ServiceAuth};
use super::types::{CheckBody, CheckResponse, MintRunBody, MintRunResponse};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use countersign_core::service::{Core, MintRequest};
use std::sync::Arc;

/// Mint a run and its capability token (service key).
#[utoipa::path(
    post, path = "/runs", tag = "orchestrator",
    request_body = MintRunBody,
    responses(
        (status = 201, description = "The run and its token", body = MintRunResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 403, description = "forbidden: not a service key", body = ErrorBody),
        (status = 422, description = "unknown_route", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn mint_run(
    State(core): State<Arc<Core>>,
    ServiceAuth(svc): ServiceAuth,
    ApiJson(body): ApiJson<MintRunBody>,
) -> ApiResult<(StatusCode, Json<MintRunResponse>)> {
    let minted = core
        .mint_run(
            &svc,
            MintRequest {
                route: body.route,
                ttl_seconds: body.ttl_seconds,
                on_behalf_of: body.on_behalf_of,
            },
        )
        .await?;
    tracing::info!(run = %minted.run_id, route = %minted.route, "run minted");
    Ok((StatusCode::CREATED, Json(minted.into())))
}

/// May the agent call this tool directly? Audited; counts a step.
#[utoipa::path(
    post, path = "/check", tag = "agent",
    request_body = CheckBody,
    responses(
        (status = 200, description = "allow or require_approval", body = CheckResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthenticated", body = ErrorBody),
        (status = 403, description = "tool_denied, tool_not_allowed or forbidden", body = ErrorBody),
        (status = 423, description = "disabled by a kill switch", body = ErrorBody),
        (status = 429, description = "budget_exhausted", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(core): State<Arc<Core>>,
    RunAuth(run): RunAuth,
    ApiJson(body): ApiJson<CheckBody>,
) -> ApiResult<Json<CheckResponse>> {
    let out = core.check(&run, &body.tool).await?;
    Ok(Json(CheckResponse {
        tool: out.tool,
        decision: out.decision.into(),
    }))
}
