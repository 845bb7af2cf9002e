//! The error type of the browser door: what a server function can answer with,
//! carried across the wire as JSON. Internals are never in it.

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppError {
    /// Not signed in, or the session ended.
    SignedOut,
    /// Wrong username or password (the same for both).
    BadLogin(String),
    Forbidden(String),
    NotFound,
    BadRequest(String),
    Conflict(String),
    RateLimited(u64),
    /// Something went wrong on the server; details are in its log.
    Internal,
    /// The request did not reach the function (network, encoding).
    Transport(String),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::SignedOut => f.write_str("You are signed out. Sign in again."),
            AppError::BadLogin(m) | AppError::Forbidden(m) | AppError::BadRequest(m) | AppError::Conflict(m) => {
                f.write_str(m)
            }
            AppError::NotFound => f.write_str("Not found."),
            AppError::RateLimited(s) => write!(f, "Too many attempts. Try again in {s} s."),
            AppError::Internal => f.write_str("Something went wrong on the server. Try again."),
            AppError::Transport(m) => write!(f, "Could not reach the server: {m}"),
        }
    }
}

impl std::error::Error for AppError {}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        AppError::Transport(value.to_string())
    }
}

#[cfg(feature = "ssr")]
impl AppError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            AppError::SignedOut | AppError::BadLogin(_) => S::UNAUTHORIZED,
            AppError::Forbidden(_) => S::FORBIDDEN,
            AppError::NotFound => S::NOT_FOUND,
            AppError::BadRequest(_) => S::BAD_REQUEST,
            AppError::Conflict(_) => S::CONFLICT,
            AppError::RateLimited(_) => S::TOO_MANY_REQUESTS,
            AppError::Internal | AppError::Transport(_) => S::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(feature = "ssr")]
impl From<countersign_core::Error> for AppError {
    fn from(e: countersign_core::Error) -> Self {
        let app = Self::from_core(e);
        // A server function's answer carries the status its error deserves,
        // except a plain form's: that is answered with a redirect back to the
        // page, the error in its query, and must stay a redirect.
        if let Some(res) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() {
            if !from_plain_form() {
                res.set_status(app.status());
            }
        }
        app
    }
}

/// Whether this server function call is a form posted without script (it
/// asks for HTML); server_fn answers those with a redirect to the Referer.
#[cfg(feature = "ssr")]
fn from_plain_form() -> bool {
    leptos::prelude::use_context::<axum::http::request::Parts>().is_some_and(|p| {
        p.uri.path().starts_with("/api/")
            && p.headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"))
    })
}

#[cfg(feature = "ssr")]
impl AppError {
    fn from_core(e: countersign_core::Error) -> Self {
        use countersign_core::Error as E;
        match e {
            E::Unauthenticated(m) if m == countersign_core::service::BAD_LOGIN => AppError::BadLogin(m),
            E::Unauthenticated(_) => AppError::SignedOut,
            E::Forbidden(m) => AppError::Forbidden(m),
            E::NotFound => AppError::NotFound,
            E::BadRequest(m) => AppError::BadRequest(m),
            E::InvalidTransition(m) => AppError::Conflict(m),
            E::Disabled { switch } => AppError::Forbidden(format!("A kill switch is on ({switch})")),
            E::RateLimited { retry_after_secs } => AppError::RateLimited(retry_after_secs),
            E::Internal(m) => {
                tracing::error!(error = %m, request_id = ?countersign_core::service::current_request_id(), "internal error in a page request");
                AppError::Internal
            }
            other => AppError::BadRequest(other.to_string()),
        }
    }
}
