//! The JSON API under `/api/v1` (docs/api.md): orchestrators mint runs, agents
//! check and propose, executors claim and complete. Every handler parses its
//! input at the edge and calls `countersign_core::service`; nothing here decides.

pub mod error;
pub mod extract;
mod jobs;
mod openapi;
mod proposals;
mod runs;
pub mod types;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};
use axum::Router;
use countersign_core::service::Core;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use openapi::ApiDoc;

/// The API under `/api/v1` and its OpenAPI document, built from one list of
/// routes: a handler is served exactly where the document says.
pub fn router(core: Arc<Core>) -> Router {
    let (routes, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", operations())
        .split_for_parts();
    let doc = Arc::new(openapi::base(&doc));
    routes
        .route(
            "/api/v1/openapi.json",
            get(openapi::spec).with_state((core.clone(), doc)),
        )
        .route("/api/v1", any(not_found))
        .route("/api/v1/{*rest}", any(not_found))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .with_state(core)
}

/// Every operation of the API, each with its annotation.
fn operations() -> OpenApiRouter<Arc<Core>> {
    OpenApiRouter::new()
        .routes(routes!(runs::mint_run))
        .routes(routes!(runs::check))
        .routes(routes!(proposals::create))
        .routes(routes!(proposals::get_one))
        .routes(routes!(proposals::wait))
        .routes(routes!(proposals::cancel))
        .routes(routes!(jobs::claim))
        .routes(routes!(jobs::heartbeat))
        .routes(routes!(jobs::complete))
}

async fn not_found() -> axum::response::Response {
    error::error_response(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
        serde_json::json!({}),
    )
}
