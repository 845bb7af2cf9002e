//! The signed-in person's own account: their passkeys, and the ceremony that
//! signs one decision with a passkey.

use crate::error::AppError;
use crate::model::{Account, PasskeyCeremony};
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

#[server(input = GetUrl, endpoint = "account")]
pub async fn get_account() -> Result<Account, AppError> {
    use super::ssr::*;
    use crate::model::PasskeyItem;
    let p = person().await?;
    let core = core()?;
    let passkeys = core
        .passkeys_of(&p)
        .await?
        .into_iter()
        .map(|k| PasskeyItem {
            id: k.id,
            name: k.name,
            created_at_ms: k.created_at_ms,
            last_used_at_ms: k.last_used_at_ms,
        })
        .collect();
    Ok(Account {
        username: p.username,
        passkeys,
        passkeys_off: core.passkeys_off(),
    })
}

#[cfg(feature = "ssr")]
fn ceremony(s: countersign_core::service::PasskeyStart) -> PasskeyCeremony {
    PasskeyCeremony {
        ceremony: s.ceremony,
        options: s.options.to_string(),
    }
}

#[server(endpoint = "account/passkey/start")]
pub async fn start_passkey_registration(csrf: String) -> Result<PasskeyCeremony, AppError> {
    use super::ssr::*;
    let _ = csrf;
    let p = person().await?;
    Ok(ceremony(core()?.start_passkey_registration(&p).await?))
}

#[server(endpoint = "account/passkey/finish")]
pub async fn finish_passkey_registration(
    ceremony: String,
    name: String,
    credential: String,
    csrf: String,
) -> Result<String, AppError> {
    use super::ssr::*;
    let _ = csrf;
    let p = person().await?;
    let k = core()?
        .finish_passkey_registration(&p, &ceremony, &name, &credential)
        .await?;
    Ok(format!("Added passkey \u{201c}{}\u{201d}.", k.name))
}

#[server(endpoint = "account/passkey/remove")]
pub async fn remove_passkey(id: String, csrf: String) -> Result<String, AppError> {
    use super::ssr::*;
    let _ = csrf;
    let p = person().await?;
    core()?.remove_passkey(&p, &id).await?;
    Ok("Removed.".into())
}

/// Start signing one decision: the challenge is bound to the proposal, the
/// content hash the page showed and the verdict.
#[server(endpoint = "decide/passkey")]
pub async fn start_passkey_decision(
    id: String,
    verdict: String,
    content_hash: String,
    csrf: String,
) -> Result<PasskeyCeremony, AppError> {
    use super::ssr::*;
    use countersign_core::lifecycle::Verdict;
    let _ = csrf;
    let p = person().await?;
    let verdict =
        Verdict::parse(&verdict).ok_or_else(|| AppError::BadRequest("verdict must be approve or reject".into()))?;
    Ok(ceremony(
        core()?.start_passkey_decision(&p, &id, verdict, &content_hash).await?,
    ))
}
