//! The one error type of the core. Every use-case returns it; each door (the JSON
//! API, the server functions) maps it to its own wire shape. Messages are written
//! for the person reading them and never carry internals or secret values.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Malformed input that is not about a tool's args (bad ids, bad keys, …).
    #[error("{0}")]
    BadRequest(String),
    /// Missing, malformed, tampered, revoked or expired credential.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("tool {tool} is denied on route {route}")]
    ToolDenied { tool: String, route: String },
    #[error("tool {tool} is not allowed on route {route}")]
    ToolNotAllowed { tool: String, route: String },
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such object visible to this caller.
    #[error("not found")]
    NotFound,
    #[error("this idempotency key was already used with a different tool or args")]
    IdempotencyConflict { existing: String },
    #[error("{0}")]
    InvalidTransition(String),
    #[error("args do not match the schema of {tool}")]
    InvalidArgs {
        tool: String,
        fields: BTreeMap<String, String>,
    },
    /// The value is never carried: only where it was found.
    #[error("{field} looks like a secret ({kind}); secrets never enter proposals")]
    SecretInArgs { field: String, kind: String },
    #[error("a kill switch is on: {switch}")]
    Disabled { switch: String },
    #[error("the run's {budget} budget is used up")]
    BudgetExhausted { budget: String },
    /// Well-formed but refers to something that does not exist (e.g. an unknown route).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// Too many attempts (logins); retry after the given seconds.
    #[error("too many attempts; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Anything else: logged in full where it happens, answered as a bare 500.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }

    /// A denial an agent provoked by asking for something the policy refuses.
    /// Consecutive denials trip the run's circuit breaker.
    pub fn is_agent_denial(&self) -> bool {
        matches!(
            self,
            Error::ToolDenied { .. }
                | Error::ToolNotAllowed { .. }
                | Error::InvalidArgs { .. }
                | Error::SecretInArgs { .. }
        )
    }

    /// The snake_case code of docs/api.md's error table.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::ToolDenied { .. } => "tool_denied",
            Error::ToolNotAllowed { .. } => "tool_not_allowed",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound => "not_found",
            Error::IdempotencyConflict { .. } => "idempotency_conflict",
            Error::InvalidTransition(_) => "invalid_transition",
            Error::InvalidArgs { .. } => "invalid_args",
            Error::SecretInArgs { .. } => "secret_in_args",
            Error::Disabled { .. } => "disabled",
            Error::BudgetExhausted { .. } => "budget_exhausted",
            Error::Unprocessable { code, .. } => code,
            Error::RateLimited { .. } => "rate_limited",
            Error::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(format!("database: {e}"))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Internal(format!("migration: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}
