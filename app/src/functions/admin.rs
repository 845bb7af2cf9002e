//! Administration: people, keys, switches and breakers, runs, break-glass,
//! webhooks and the policy history. Every function requires an admin session;
//! the core refuses anyone else too (it takes an `Admin`).

use crate::error::AppError;
use crate::model::AdminView;
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

#[cfg(feature = "ssr")]
async fn admin() -> Result<
    (
        std::sync::Arc<countersign_core::service::Core>,
        countersign_core::service::Person,
        countersign_core::service::Admin,
    ),
    AppError,
> {
    let p = super::ssr::person().await?;
    let a = countersign_core::service::Admin::person(&p)?;
    Ok((super::ssr::core()?, p, a))
}

#[server(input = GetUrl, endpoint = "admin")]
pub async fn get_admin() -> Result<AdminView, AppError> {
    use crate::model::*;
    let (core, me, _) = admin().await?;
    let now = core.now_ms();
    let policy_rows = core.policy_versions(20).await?;
    let run_rows = core.recent_runs(20).await?;
    let pol = core.policy();
    Ok(AdminView {
        now_ms: now,
        people: core
            .people()
            .await?
            .into_iter()
            .map(|p| PersonView {
                id: p.id,
                username: p.username,
                roles: p.roles.names(),
                tenants: p.tenants,
                disabled: p.disabled,
            })
            .collect(),
        keys: core
            .list_keys()
            .await?
            .into_iter()
            .map(|k| KeyView {
                scope: format!("{}/{}", k.tenant.unwrap_or_else(|| "*".into()), k.env),
                id: k.id,
                kind: k.kind.as_str().to_owned(),
                name: k.name,
                tools: k.tools,
                hint: k.hint,
                created_at_ms: k.created_at,
                revoked: k.revoked_at.is_some(),
            })
            .collect(),
        switches: core
            .switches()
            .await?
            .into_iter()
            .map(|s| SwitchView {
                scope: s.scope.as_str().to_owned(),
                target: s.target,
                engaged: s.engaged,
                reason: s.reason,
                changed_by: s.changed_by,
                changed_at_ms: s.changed_at,
            })
            .collect(),
        breakers: core
            .breakers()
            .await?
            .into_iter()
            .map(|b| BreakerView {
                route: b.route,
                reason: b.reason,
                tripped_at_ms: b.tripped_at,
            })
            .collect(),
        break_glass: core
            .break_glass_sessions()
            .await?
            .into_iter()
            .map(|b| BreakGlassView {
                mine: b.user_id == me.id,
                active: b.ended_at.is_none() && b.ends_at > now,
                id: b.id,
                username: b.username,
                reason: b.reason,
                incident: b.incident,
                started_at_ms: b.started_at,
                ends_at_ms: b.ends_at,
                ended_at_ms: b.ended_at,
            })
            .collect(),
        runs: run_rows
            .into_iter()
            .map(|r| RunView {
                id: r.id,
                tenant: r.tenant,
                env: r.env,
                route: r.route,
                created_at_ms: r.created_at,
                revoked: r.revoked_reason,
            })
            .collect(),
        policy: policy_rows
            .into_iter()
            .map(|v| PolicyVersionView {
                id: v.id,
                hash: v.hash,
                loaded_at_ms: v.loaded_at,
                loaded_by: v.loaded_by,
                diff: v.diff,
            })
            .collect(),
        webhooks: core
            .webhooks()
            .await?
            .into_iter()
            .map(|w| WebhookView {
                id: w.id,
                url: w.url,
                events: w.events,
                format: w.format,
            })
            .collect(),
        tools: pol.tools.keys().cloned().collect(),
        routes: pol.routes.keys().cloned().collect(),
        undelivered: core.undelivered().await?,
    })
}

#[cfg(feature = "ssr")]
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

#[server(endpoint = "admin/user/add")]
pub async fn admin_add_user(
    username: String,
    password: String,
    roles: String,
    tenants: String,
    csrf: String,
) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    let p = core
        .add_user(
            &by,
            countersign_core::service::NewUser {
                username,
                password,
                roles: list(&roles),
                tenants: list(&tenants),
            },
        )
        .await?;
    Ok(format!("Added {}.", p.username))
}

#[server(endpoint = "admin/user/disable")]
pub async fn admin_set_disabled(user_id: String, disabled: bool, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.set_disabled(&by, &user_id, disabled).await?;
    Ok(if disabled {
        "Disabled: their sessions have ended."
    } else {
        "Enabled."
    }
    .into())
}

#[server(endpoint = "admin/user/password")]
pub async fn admin_reset_password(user_id: String, password: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.reset_password(&by, &user_id, password).await?;
    Ok("Password reset: their sessions have ended.".into())
}

#[server(endpoint = "admin/user/access")]
pub async fn admin_set_access(
    user_id: String,
    roles: String,
    tenants: String,
    csrf: String,
) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.set_access(&by, &user_id, &list(&roles), &list(&tenants)).await?;
    Ok("Roles and tenants saved.".into())
}

/// Make a key. The answer carries the key itself, shown this once.
#[server(endpoint = "admin/key/create")]
pub async fn admin_create_key(
    kind: String,
    name: String,
    tenant: String,
    env: String,
    tools: String,
    csrf: String,
) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    let tenant = Some(tenant.trim().to_owned()).filter(|t| !t.is_empty());
    let kind = countersign_core::tokens::KeyKind::parse(&kind)
        .ok_or_else(|| AppError::BadRequest(format!("unknown key kind {kind:?}: use service or executor")))?;
    let (id, key) = core
        .create_key(
            &by,
            countersign_core::service::NewKey {
                kind,
                name,
                tenant,
                env,
                tools: list(&tools),
            },
        )
        .await?;
    Ok(format!("{id}\n{key}"))
}

#[server(endpoint = "admin/key/revoke")]
pub async fn admin_revoke_key(id: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.revoke_key(&by, &id).await?;
    Ok(format!("Key {id} revoked."))
}

#[server(endpoint = "admin/switch")]
pub async fn admin_switch(
    scope: String,
    target: String,
    engaged: bool,
    reason: String,
    csrf: String,
) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    let parsed = countersign_core::controls::Scope::parse(&scope).ok_or_else(|| {
        AppError::BadRequest(format!(
            "unknown switch scope {scope:?}: use global, tool, tenant or route"
        ))
    })?;
    core.set_switch(&by, parsed, &target, engaged, &reason).await?;
    Ok(format!(
        "Kill switch {} for {scope} {target}.",
        if engaged { "on" } else { "off" }
    ))
}

#[server(endpoint = "admin/breaker/reset")]
pub async fn admin_reset_breaker(route: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.reset_breaker(&by, &route).await?;
    Ok(format!("Route {route} releases again."))
}

#[server(endpoint = "admin/run/revoke")]
pub async fn admin_revoke_run(run_id: String, reason: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.revoke_run(&by, &run_id, &reason).await?;
    Ok(format!("Run {run_id} revoked: its token stops now."))
}

#[server(endpoint = "admin/breakglass/start")]
pub async fn start_break_glass(
    password: String,
    reason: String,
    incident: String,
    minutes: i64,
    csrf: String,
) -> Result<String, AppError> {
    let _ = csrf;
    let (core, me, _) = admin().await?;
    let addr = leptos_axum::extract::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .await
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let b = core
        .start_break_glass(&me, &password, &reason, &incident, minutes, &addr)
        .await?;
    // Break-glass belongs to this session alone.
    super::ssr::session()
        .await?
        .insert(super::ssr::SESSION_BREAK_GLASS, &b.id)
        .await
        .map_err(|_| AppError::Internal)?;
    Ok(format!(
        "Break-glass is on until {}.",
        countersign_core::clock::rfc3339(b.ends_at)
    ))
}

#[server(endpoint = "admin/breakglass/end")]
pub async fn end_break_glass(id: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, me, _) = admin().await?;
    core.end_break_glass(&me, &id).await?;
    Ok("Break-glass ended.".into())
}

/// Add a webhook. The answer carries its signing secret, shown this once.
#[server(endpoint = "admin/webhook/add")]
pub async fn admin_add_webhook(url: String, events: String, format: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    let (id, secret) = core.add_webhook(&by, &url, &list(&events), &format).await?;
    Ok(format!("{id}\n{secret}"))
}

#[server(endpoint = "admin/webhook/remove")]
pub async fn admin_remove_webhook(id: String, csrf: String) -> Result<String, AppError> {
    let _ = csrf;
    let (core, _, by) = admin().await?;
    core.remove_webhook(&by, &id).await?;
    Ok("Webhook removed.".into())
}
