//! Operations: health, readiness, Prometheus metrics, and the per-request
//! plumbing every route shares (request id, log span, metrics, panics).

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use countersign_core::service::{Core, REQUEST_ID};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The process's metrics recorder (installed once, however many apps a test starts).
pub fn metrics_handle() -> PrometheusHandle {
    static H: OnceLock<PrometheusHandle> = OnceLock::new();
    H.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
    .clone()
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(core): State<Arc<Core>>) -> Response {
    if core.ping().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
    }
}

/// The public keys that verify approval receipts (no credential needed).
pub async fn jwks(State(core): State<Arc<Core>>) -> Response {
    match core.jwks().await {
        Ok(keys) => axum::Json(keys).into_response(),
        Err(e) => crate::api::error::ApiError(e).into_response(),
    }
}

pub async fn metrics_text(State(core): State<Arc<Core>>) -> Response {
    // Gauges read at scrape time.
    if let Ok(g) = core.gauges().await {
        metrics::gauge!("countersign_proposals_pending").set(g.proposals_pending as f64);
        metrics::gauge!("countersign_oldest_pending_seconds").set(g.oldest_pending_ms.unwrap_or(0) as f64 / 1000.0);
        metrics::gauge!("countersign_jobs_queued").set(g.jobs_queued as f64);
        metrics::gauge!("countersign_jobs_leased").set(g.jobs_leased as f64);
        metrics::gauge!("countersign_breakers_tripped").set(g.breakers_tripped as f64);
        // -1 until this process has verified the chain once.
        metrics::gauge!("countersign_audit_verified_age_seconds")
            .set(g.audit_verified_ago_ms.map_or(-1.0, |ms| ms as f64 / 1000.0));
        metrics::gauge!("countersign_audit_chain_broken").set(if g.audit_broken { 1.0 } else { 0.0 });
        metrics::counter!("countersign_write_batches_total").absolute(g.write_batches);
    }
    let mut res = metrics_handle().render().into_response();
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

/// Request ids are made by tower-http's request-id layers (`SetRequestIdLayer`
/// with this maker, `PropagateRequestIdLayer` echoing it); a caller's own id
/// is kept only when it has a bounded, safe shape (`drop_unsafe_request_id`).
#[derive(Clone, Copy, Default)]
pub struct MakeRequestId;

impl tower_http::request_id::MakeRequestId for MakeRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<tower_http::request_id::RequestId> {
        HeaderValue::from_str(&countersign_core::ids::new_id("req"))
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// A caller may name its request (to find it in our logs), but what it sends
/// goes into logs and the audit chain: anything but 1-100 characters of
/// letters, digits and `-_.:` is dropped, and the server makes an id instead.
pub async fn drop_unsafe_request_id(mut req: Request, next: Next) -> Response {
    let safe = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| {
            !v.is_empty() && v.len() <= 100 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        });
    if !safe {
        req.headers_mut().remove(REQUEST_ID_HEADER);
    }
    next.run(req).await
}

/// Run each request in a span carrying its id, make the id visible to the
/// core (audit events), and count it.
pub async fn request_context(req: Request, next: Next) -> Response {
    let id = req
        .extensions()
        .get::<tower_http::request_id::RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| countersign_core::ids::new_id("req"));
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| route_class(req.uri().path()).to_owned());
    let span = tracing::info_span!("request", id = %id, method = %method, path = %req.uri().path(), run = tracing::field::Empty);
    let started = Instant::now();
    let res = REQUEST_ID.scope(id, next.run(req).instrument(span.clone())).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!(status, ms = elapsed.as_millis() as u64, "request failed");
        } else {
            tracing::debug!(status, ms = elapsed.as_millis() as u64, "request done");
        }
    });
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("countersign_http_requests_total", &labels).increment(1);
    metrics::histogram!("countersign_http_request_seconds", &labels[..2]).record(elapsed.as_secs_f64());
    res
}

/// A low-cardinality label for paths no route matched (pages, assets).
fn route_class(path: &str) -> &'static str {
    if path.starts_with("/api/v1/") {
        "/api/v1/*"
    } else if path.starts_with("/api/") {
        "/api/{server_fn}"
    } else if path.starts_with("/pkg/") {
        "/pkg/*"
    } else if path.starts_with("/proposals/") {
        "/proposals/{id}"
    } else {
        match path {
            "/" | "/login" | "/history" | "/audit" | "/admin" => "page",
            _ => "other",
        }
    }
}

/// A panic becomes a 500 with no internals; the server keeps serving.
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = %detail, "a request panicked");
    crate::api::error::error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the server logged the details",
        serde_json::json!({}),
    )
}
