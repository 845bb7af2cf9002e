//! Signing in and out, and what the shell needs about the session.

use crate::error::AppError;
use crate::model::SessionInfo;
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

/// Who is signed in, the CSRF token for forms, and the banners to show.
#[server(input = GetUrl, endpoint = "session")]
pub async fn get_session_info() -> Result<SessionInfo, AppError> {
    use super::ssr::*;
    let core = core()?;
    let s = session().await?;
    let csrf = csrf_token(&s).await?;
    let me = person_of(&core, &s).await?;
    let banners = core.banners().await?;
    Ok(SessionInfo {
        me: me.as_ref().map(super::views::me),
        csrf,
        banners: banners.into_iter().map(super::views::banner).collect(),
    })
}

/// Sign in. Wrong password and unknown user answer alike.
#[server(endpoint = "login")]
pub async fn login(username: String, password: String, csrf: String, next: Option<String>) -> Result<(), AppError> {
    use super::ssr::*;
    let _ = csrf; // checked by the CSRF layer before this runs
    let core = core()?;
    let s = session().await?;
    let addr = leptos_axum::extract::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .await
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    if username.trim().is_empty() || password.is_empty() {
        return Err(AppError::BadLogin("Enter your username and password.".into()));
    }
    let outcome = core.login(&username, &password, &addr).await?;
    // A new session id at sign-in: a session fixed before it is worthless.
    s.cycle_id().await.map_err(|_| AppError::Internal)?;
    s.insert(SESSION_USER, &outcome.person.id)
        .await
        .map_err(|_| AppError::Internal)?;
    s.insert(SESSION_LOGIN_AT, outcome.at_ms)
        .await
        .map_err(|_| AppError::Internal)?;
    s.insert(SESSION_CSRF, countersign_core::tokens::random_token())
        .await
        .map_err(|_| AppError::Internal)?;
    let home = if outcome.person.roles.reviewer {
        "/"
    } else if outcome.person.roles.auditor {
        "/history"
    } else {
        "/admin"
    };
    let target = next
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/login") && n != "/")
        .unwrap_or_else(|| home.into());
    leptos_axum::redirect(&target);
    Ok(())
}

/// Sign out: the session is deleted, not merely emptied.
#[server(endpoint = "logout")]
pub async fn logout(csrf: String) -> Result<(), AppError> {
    use super::ssr::*;
    let _ = csrf;
    let core = core()?;
    let s = session().await?;
    if let Some(p) = person_of(&core, &s).await? {
        core.record_logout(&p).await?;
    }
    s.flush().await.map_err(|_| AppError::Internal)?;
    leptos_axum::redirect("/login");
    Ok(())
}
