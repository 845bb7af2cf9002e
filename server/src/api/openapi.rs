//! The OpenAPI 3 document: its paths come from the handlers' annotations as
//! the router registers them (`api::router`); this adds the rest.

use super::error::{ErrorBody, ErrorInner};
use super::types::*;
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "countersign", description = "A human-approval gate for AI agents' tool calls: the agent, orchestrator and executor API."),
    components(schemas(
        ErrorBody, ErrorInner, MintRunBody, MintRunResponse, Budgets, CheckBody, CheckResponse, PreviewBody,
        ProposeBody, ProposalResponse, Approval, DecisionBody, ExecutionBody, ClaimBody, ClaimResponse, JobBody,
        HeartbeatBody, HeartbeatResponse, CompleteBody, CompleteResponse, PreviewReportBody, JobKindBody,
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

/// The document the router was built with (`api::router`).
pub async fn spec(doc: std::sync::Arc<utoipa::openapi::OpenApi>) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}
