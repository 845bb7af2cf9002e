//! Extractors at the API's edge: a strict JSON body (64 KiB, unknown fields
//! refused, problems named) and bearer credentials of the right kind.

use super::error::{error_response, ApiError};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use countersign_core::service::{Core, Credential, ExecutorPrincipal, ProposingRun, RunPrincipal, ServicePrincipal};
use countersign_core::tokens::RUN_TOKEN_PREFIX;
use countersign_core::Error;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

pub const MAX_BODY: usize = 64 * 1024;

/// A JSON body parsed into `T`, whose serde derive refuses unknown fields.
pub struct ApiJson<T>(pub T);

pub struct BodyRejection(Response);

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        self.0
    }
}

fn bad(msg: String) -> BodyRejection {
    BodyRejection(error_response(StatusCode::BAD_REQUEST, "bad_request", &msg, json!({})))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.split(';').next().unwrap_or("").trim();
                ct.eq_ignore_ascii_case("application/json")
            });
        if !is_json {
            return Err(bad("Content-Type must be application/json".into()));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                BodyRejection(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    &format!("the body is over the limit of {MAX_BODY} bytes"),
                    json!({ "limit_bytes": MAX_BODY }),
                ))
            } else {
                bad(format!("could not read the body: {}", r.body_text()))
            }
        })?;
        if bytes.len() > MAX_BODY {
            return Err(BodyRejection(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("the body is over the limit of {MAX_BODY} bytes"),
                json!({ "limit_bytes": MAX_BODY }),
            )));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    format!("malformed JSON: {inner}")
                }
                _ if path.is_empty() || path == "." => format!("the body does not fit: {inner}"),
                _ => format!("{path}: {inner}"),
            };
            bad(msg)
        })?;
        de.end().map_err(|e| bad(format!("malformed JSON: {e}")))?;
        Ok(ApiJson(value))
    }
}

/// Any valid credential.
pub struct Caller(pub Credential);

impl FromRequestParts<Arc<Core>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, Self::Rejection> {
        Ok(Caller(core.authenticate(bearer(parts)?).await?))
    }
}

/// The credential of an `Authorization: Bearer` header.
fn bearer(parts: &Parts) -> Result<&str, Error> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthenticated("missing Authorization: Bearer header".into()))?
        .to_str()
        .map_err(|_| Error::Unauthenticated("malformed Authorization header".into()))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Unauthenticated("the Authorization header must be Bearer <credential>".into()))
}

fn wrong_kind(got: &Credential, want: &str) -> ApiError {
    let article = |k: &str| {
        if k.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        }
    };
    let have = got.kind();
    ApiError(Error::Forbidden(format!(
        "{} {have} cannot do this: it needs {} {want}",
        article(have),
        article(want)
    )))
}

pub struct RunAuth(pub RunPrincipal);
/// A run token for `propose`, whose run's liveness the proposal's own
/// transaction checks (`ProposingRun`).
pub struct ProposerAuth(pub ProposingRun);
pub struct ServiceAuth(pub ServicePrincipal);
pub struct ExecutorAuth(pub ExecutorPrincipal);

impl ExecutorAuth {
    /// The call's body, or its rejection, answered only after the key is
    /// confirmed live: a revoked key hears that first, whatever its body.
    pub async fn body<T>(&self, core: &Core, body: Result<ApiJson<T>, BodyRejection>) -> Result<T, ExecutorError> {
        match body {
            Ok(ApiJson(body)) => Ok(body),
            Err(rejection) => Err(match core.confirm_executor(&self.0).await {
                Ok(()) => ExecutorError::Body(rejection),
                Err(e) => ExecutorError::Api(ApiError(e)),
            }),
        }
    }
}

/// How an executor's call failed: its body did not fit, or the call was
/// refused (its key first).
pub enum ExecutorError {
    Body(BodyRejection),
    Api(ApiError),
}

impl From<Error> for ExecutorError {
    fn from(e: Error) -> Self {
        ExecutorError::Api(ApiError(e))
    }
}

impl IntoResponse for ExecutorError {
    fn into_response(self) -> Response {
        match self {
            ExecutorError::Body(r) => r.into_response(),
            ExecutorError::Api(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<Arc<Core>> for RunAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, core).await?.0 {
            Credential::Run(r) => {
                tracing::Span::current().record("run", r.run_id.as_str());
                Ok(RunAuth(r))
            }
            other => Err(wrong_kind(&other, "run token")),
        }
    }
}

impl FromRequestParts<Arc<Core>> for ProposerAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if !token.starts_with(RUN_TOKEN_PREFIX) {
            // Another kind of credential (never a run's): authenticated as
            // any call is, and refused as the wrong kind.
            return Err(wrong_kind(&core.authenticate(token).await?, "run token"));
        }
        let run = core.authenticate_proposer(token).await?;
        tracing::Span::current().record("run", run.run_id());
        Ok(ProposerAuth(run))
    }
}

impl FromRequestParts<Arc<Core>> for ServiceAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, core).await?.0 {
            Credential::Service(s) => Ok(ServiceAuth(s)),
            other => Err(wrong_kind(&other, "service key")),
        }
    }
}

impl FromRequestParts<Arc<Core>> for ExecutorAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, Self::Rejection> {
        // An executor key is admitted from what this process knows of it;
        // its calls check it in their own transactions (`authenticate_executor`).
        match core.authenticate_executor(bearer(parts)?).await? {
            Credential::Executor(x) => Ok(ExecutorAuth(x)),
            other => Err(wrong_kind(&other, "executor key")),
        }
    }
}
