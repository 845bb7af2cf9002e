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
    let me = person_of(&core, &s).await?;
    // Signed in: the session's token; signed out: the one the sign-in page
    // made, if any (other pages make none, so a visitor writes nothing).
    let csrf = match me {
        Some(_) => csrf_token(&s).await?,
        None => s
            .get::<String>(SESSION_CSRF)
            .await
            .map_err(|_| AppError::Internal)?
            .unwrap_or_default(),
    };
    let banners = core.banners(me.as_ref()).await?;
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
    let target = next.as_deref().and_then(safe_next).unwrap_or_else(|| home.into());
    leptos_axum::redirect(&target);
    Ok(())
}

/// Where to go after signing in: only a path of this application. The value
/// must already be a plain absolute path (no scheme, no `//` or `\`, no
/// control or space characters, which browsers drop or turn into `/`), and
/// resolving it against this origin must keep the origin. Anything else goes
/// home, so sign-in can never send a person to another site.
#[cfg(feature = "ssr")]
pub fn safe_next(next: &str) -> Option<String> {
    if !next.starts_with('/')
        || next.starts_with("//")
        || next.contains('\\')
        || next.chars().any(|c| c.is_control() || c.is_whitespace())
        || next.len() > 2000
    {
        return None;
    }
    let base = url::Url::parse("http://countersign.invalid/").ok()?;
    let resolved = base.join(next).ok()?;
    if resolved.origin() != base.origin() {
        return None;
    }
    let mut target = resolved.path().to_owned();
    if let Some(q) = resolved.query() {
        target.push('?');
        target.push_str(q);
    }
    (target != "/" && !target.starts_with("/login")).then_some(target)
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    use super::safe_next;

    #[test]
    fn only_paths_of_this_app_are_followed_after_sign_in() {
        assert_eq!(safe_next("/proposals/prp_1").as_deref(), Some("/proposals/prp_1"));
        assert_eq!(
            safe_next("/history?tool=a&status=b").as_deref(),
            Some("/history?tool=a&status=b")
        );
        for evil in [
            "//evil.example",
            "/\\evil.example",
            "/\tevil.example",
            "/\t/evil.example",
            "/\n",
            "https://evil.example/",
            "evil.example",
            "/login?next=//evil",
            "/",
            "",
        ] {
            assert_eq!(safe_next(evil), None, "{evil:?}");
        }
    }
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
