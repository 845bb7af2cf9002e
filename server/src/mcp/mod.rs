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
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use countersign_core::service::{Core, Credential, RunPrincipal};
use countersign_core::Error;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use upstream::Upstreams;

/// The largest MCP message accepted, as for the JSON API.
const MAX_MESSAGE: usize = crate::api::extract::MAX_BODY;
/// The header MCP's Streamable HTTP transport names a session in.
const SESSION_HEADER: &str = "mcp-session-id";

/// Sessions one run may hold open at once; a run opening more is told to
/// close one (DELETE) or wait for an idle one to end.
pub const MAX_SESSIONS_PER_RUN: usize = 16;

/// Which run opened each live session. Checked here, in front of rmcp, on
/// every request that names a session (calls, notifications, the GET
/// stream and its resumption, DELETE): a session answers only the run that
/// opened it, and to any other it does not exist.
struct Owners {
    manager: Arc<LocalSessionManager>,
    runs: Mutex<HashMap<String, String>>,
}

impl Owners {
    fn owner(&self, session: &str) -> Option<String> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .cloned()
    }

    /// How many live sessions `run` holds, forgetting those rmcp has ended
    /// (idle, closed, or their worker gone).
    async fn held_by(&self, run: &str) -> usize {
        let live: HashSet<String> = self
            .manager
            .sessions
            .read()
            .await
            .keys()
            .map(|k| k.to_string())
            .collect();
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.retain(|session, _| live.contains(session));
        runs.values().filter(|r| *r == run).count()
    }

    fn bind(&self, session: String, run: String) {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).insert(session, run);
    }

    fn forget(&self, session: &str) {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).remove(session);
    }
}

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
    let manager = Arc::new(LocalSessionManager::default());
    let owners = Arc::new(Owners {
        manager: manager.clone(),
        runs: Mutex::default(),
    });
    let service = StreamableHttpService::new(move || Ok(gateway.for_session()), manager, config);
    Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(owners, own_sessions))
        .layer(middleware::from_fn_with_state(core, authenticate))
}

/// Runs after `authenticate`: a request on a session must come from the
/// run that opened it; a new session is bound to its run, up to
/// `MAX_SESSIONS_PER_RUN`.
async fn own_sessions(State(owners): State<Arc<Owners>>, req: Request, next: Next) -> Response {
    let Some(run) = req.extensions().get::<RunPrincipal>().map(|r| r.run_id.clone()) else {
        return ApiError(Error::internal("the MCP request carries no authenticated run")).into_response();
    };
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match session {
        Some(session) => {
            if owners.owner(&session).as_deref() != Some(run.as_str()) {
                // Another run's session, or none at all: the same answer,
                // so a token learns nothing of sessions not its own.
                return ApiError(Error::NotFound).into_response();
            }
            let closing = req.method() == Method::DELETE;
            let res = next.run(req).await;
            if closing && res.status().is_success() {
                owners.forget(&session);
            }
            res
        }
        None => {
            if owners.held_by(&run).await >= MAX_SESSIONS_PER_RUN {
                return ApiError(Error::RateLimited { retry_after_secs: 60 }).into_response();
            }
            let res = next.run(req).await;
            if let Some(opened) = res.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
                owners.bind(opened.to_owned(), run);
            }
            res
        }
    }
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
