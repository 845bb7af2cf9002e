//! The JSON API of API.md under `/api/v1`: orchestrators mint runs, agents
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
use axum::routing::{get, post};
use axum::Router;
use countersign_core::service::Core;
use std::sync::Arc;

pub use openapi::ApiDoc;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/runs", post(runs::mint_run))
        .route("/check", post(runs::check))
        .route("/proposals", post(proposals::create))
        .route("/proposals/{id}", get(proposals::get_one))
        .route("/proposals/{id}/wait", get(proposals::wait))
        .route("/proposals/{id}/cancel", post(proposals::cancel))
        .route("/jobs/claim", post(jobs::claim))
        .route("/jobs/{id}/heartbeat", post(jobs::heartbeat))
        .route("/jobs/{id}/complete", post(jobs::complete))
        .route("/openapi.json", get(openapi::spec))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .with_state(core)
}

async fn not_found() -> axum::response::Response {
    error::error_response(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
        serde_json::json!({}),
    )
}
