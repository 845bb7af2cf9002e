//! The MCP gateway (docs/mcp.md): `/mcp` speaks MCP's Streamable HTTP
//! transport (rmcp) to agents, authenticated by their run token before any
//! message is read; the tools it lists and the calls it takes go through the
//! same `Core` use-cases as the JSON API. The built-in upstream executor
//! performs approved calls on the upstream MCP servers of the policy.

pub mod executor;
mod gateway;
mod outcome;
pub mod upstream;

pub use gateway::{derived_idempotency_key, IDEMPOTENCY_META, REASON_META};

use crate::api::error::ApiError;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use countersign_core::service::{Core, Credential};
use countersign_core::Error;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use upstream::Upstreams;

/// The largest MCP message accepted, as for the JSON API.
const MAX_MESSAGE: usize = crate::api::extract::MAX_BODY;

/// `/mcp`, for the app's router. Cancelling `stop` ends every session.
pub fn router(core: Arc<Core>, upstreams: Arc<Upstreams>, stop: CancellationToken) -> Router {
    let gateway = gateway::Gateway::new(core.clone(), upstreams);
    let config = StreamableHttpServerConfig::default()
        // Every request carries a bearer token and nothing rides on ambient
        // credentials (cookies), so a rebound DNS name gains nothing; the
        // deployment's own host names need no list here.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(MAX_MESSAGE)
        .with_cancellation_token(stop);
    let service = StreamableHttpService::new(
        move || Ok(gateway.for_session()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(core, authenticate))
}

/// The run token, checked before any MCP message is read: tenant, env and
/// route come from it, as everywhere.
async fn authenticate(State(core): State<Arc<Core>>, mut req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let Some(bearer) = bearer else {
        let e = Error::Unauthenticated("missing Authorization: Bearer <run token>".into());
        return ApiError(e).into_response();
    };
    match core.authenticate(&bearer).await {
        Ok(Credential::Run(run)) => {
            tracing::Span::current().record("run", run.run_id.as_str());
            req.extensions_mut().insert(run);
            next.run(req).await
        }
        Ok(other) => ApiError(Error::Forbidden(format!(
            "a {} cannot speak MCP here: it needs a run token",
            other.kind()
        )))
        .into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}
