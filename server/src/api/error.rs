//! The API's one error type: every failure is docs/api.md's JSON shape with its
//! code and status. Internal errors are logged with the request id and
//! answered without internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use countersign_core::Error;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// `{"error": {"code", "message", "details"}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInner,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorInner {
    /// snake_case; a client can branch on it alone.
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::ToolDenied { .. } | Error::ToolNotAllowed { .. } | Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound => StatusCode::NOT_FOUND,
        Error::IdempotencyConflict { .. } | Error::InvalidTransition(_) => StatusCode::CONFLICT,
        Error::InvalidArgs { .. } | Error::SecretInArgs { .. } | Error::Unprocessable { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Error::Disabled { .. } => StatusCode::LOCKED,
        Error::BudgetExhausted { .. } | Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `details` of an error, as the API and the MCP gateway report it.
pub fn details_of(e: &Error) -> Value {
    match e {
        Error::ToolDenied { tool, route } | Error::ToolNotAllowed { tool, route } => {
            json!({ "tool": tool, "route": route })
        }
        Error::InvalidArgs { tool, fields } => json!({ "tool": tool, "fields": fields }),
        // The value is never echoed: only where it was and what it looked like.
        Error::SecretInArgs { field, kind } => json!({ "field": field, "kind": kind }),
        Error::Disabled { switch } => json!({ "switch": switch }),
        Error::BudgetExhausted { budget } => json!({ "budget": budget }),
        Error::IdempotencyConflict { existing } => json!({ "existing_proposal": existing }),
        Error::RateLimited { retry_after_secs } => json!({ "retry_after_seconds": retry_after_secs }),
        _ => json!({}),
    }
}

pub fn error_response(status: StatusCode, code: &str, message: &str, details: Value) -> Response {
    let body = ErrorBody {
        error: ErrorInner {
            code: code.to_owned(),
            message: message.to_owned(),
            details,
        },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = status_of(&e);
        let details = details_of(&e);
        let message = match &e {
            Error::Internal(detail) => {
                tracing::error!(
                    error = %detail,
                    request_id = ?countersign_core::service::current_request_id(),
                    "internal error answered as 500"
                );
                "internal error; the server logged the details under this request's id".to_owned()
            }
            other => other.to_string(),
        };
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            tracing::warn!(code = e.code(), "refused: {message}");
        }
        error_response(status, e.code(), &message, details)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
