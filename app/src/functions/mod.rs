//! Server functions, one file per resource. Each authorises the caller from
//! its session, calls the core, and maps errors to `AppError`. Reads are GET
//! (safe); writes are POST and carry the session's CSRF token, which the
//! server checks before the function runs.

pub mod account;
pub mod admin;
pub mod history;
pub mod proposals;
pub mod session;
#[cfg(feature = "ssr")]
pub mod views;

#[cfg(feature = "ssr")]
pub mod ssr {
    //! What every server function needs on the server side.

    use crate::error::AppError;
    use countersign_core::service::{Core, Person};
    use leptos::prelude::*;
    use std::sync::Arc;
    use tower_sessions::Session;

    pub const SESSION_USER: &str = "uid";
    pub const SESSION_LOGIN_AT: &str = "login_at";
    pub const SESSION_CSRF: &str = "csrf";
    /// The break-glass this session started (break-glass is of a session).
    pub const SESSION_BREAK_GLASS: &str = "break_glass";

    pub fn core() -> Result<Arc<Core>, AppError> {
        use_context::<Arc<Core>>().ok_or_else(|| {
            tracing::error!("the core was not provided to server functions");
            AppError::Internal
        })
    }

    pub async fn session() -> Result<Session, AppError> {
        leptos_axum::extract::<Session>().await.map_err(|e| {
            tracing::error!(error = %e, "no session layer");
            AppError::Internal
        })
    }

    /// The signed-in person, or `SignedOut`. The session must still be good:
    /// the user active, not reset since sign-in, within the absolute timeout.
    pub async fn person_of(core: &Core, s: &Session) -> Result<Option<Person>, AppError> {
        let uid: Option<String> = s.get(SESSION_USER).await.map_err(|_| AppError::Internal)?;
        let login_at: Option<i64> = s.get(SESSION_LOGIN_AT).await.map_err(|_| AppError::Internal)?;
        let (Some(uid), Some(login_at)) = (uid, login_at) else {
            return Ok(None);
        };
        if core.now_ms() - login_at > core.settings().session_absolute_secs * 1000 {
            let _ = s.flush().await;
            return Ok(None);
        }
        match core.person_for_session(&uid, login_at).await? {
            Some(mut p) => {
                p.break_glass_session = s.get(SESSION_BREAK_GLASS).await.map_err(|_| AppError::Internal)?;
                Ok(Some(p))
            }
            None => {
                let _ = s.flush().await;
                Ok(None)
            }
        }
    }

    pub async fn person() -> Result<Person, AppError> {
        let core = core()?;
        let s = session().await?;
        match person_of(&core, &s).await? {
            Some(p) => Ok(p),
            None => {
                if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
                    res.set_status(AppError::SignedOut.status());
                }
                Err(AppError::SignedOut)
            }
        }
    }

    /// The session's CSRF token, made on first use.
    pub async fn csrf_token(s: &Session) -> Result<String, AppError> {
        if let Some(t) = s.get::<String>(SESSION_CSRF).await.map_err(|_| AppError::Internal)? {
            return Ok(t);
        }
        let t = countersign_core::tokens::random_token();
        s.insert(SESSION_CSRF, &t).await.map_err(|_| AppError::Internal)?;
        Ok(t)
    }
}
