//! The OpenAPI 3 document, generated from the handlers' annotations.

use super::error::{ErrorBody, ErrorInner};
use super::types::*;
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "countersign", description = "A human-approval gate for AI agents' tool calls: the agent, orchestrator and executor API."),
    paths(
        super::runs::mint_run,
        super::runs::check,
        super::proposals::create,
        super::proposals::get_one,
        super::proposals::wait,
        super::proposals::cancel,
        super::jobs::claim,
        super::jobs::heartbeat,
        super::jobs::complete,
    ),
    components(schemas(
        ErrorBody, ErrorInner, MintRunBody, MintRunResponse, Budgets, CheckBody, CheckResponse, PreviewBody,
        ProposeBody, ProposalResponse, Approval, DecisionBody, ExecutionBody, ClaimBody, ClaimResponse, JobBody,
        HeartbeatBody, HeartbeatResponse, CompleteBody, CompleteResponse,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "orchestrator", description = "Service keys mint runs"),
        (name = "agent", description = "Run tokens check, propose and read their own proposals"),
        (name = "executor", description = "Executor keys claim and complete approved jobs"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
