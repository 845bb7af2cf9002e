//! The queue, the review screen and decisions.
// `decide` takes the decision's form fields one by one (eight with the
// passkey's two); the server macro copies them into code of its own, so the
// allowance is for the module.
#![allow(clippy::too_many_arguments)]

use crate::error::AppError;
use crate::model::{Decided, Queue, Review};
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

#[server(input = GetUrl, endpoint = "queue")]
pub async fn get_queue() -> Result<Queue, AppError> {
    use super::ssr::*;
    let p = person().await?;
    let core = core()?;
    let rows = core.queue_for(&p).await?;
    Ok(super::views::queue(rows, core.now_ms()))
}

#[server(input = GetUrl, endpoint = "review")]
pub async fn get_review(id: String) -> Result<Review, AppError> {
    use super::ssr::*;
    let p = person().await?;
    let core = core()?;
    let r = core.review_for(&p, &id).await?;
    Ok(super::views::review(r, core.settings().quick_decision_ms))
}

/// Approve or reject. `content_hash` is what the page showed; `view_ms` how
/// long it was open. Answers the new status and the next proposal waiting
/// for this person, where the page takes them.
#[server(endpoint = "decide")]
pub async fn decide(
    id: String,
    verdict: String,
    comment: String,
    content_hash: String,
    view_ms: Option<i64>,
    csrf: String,
    passkey_ceremony: Option<String>,
    passkey_credential: Option<String>,
) -> Result<Decided, AppError> {
    use super::ssr::*;
    use countersign_core::lifecycle::Verdict;
    use countersign_core::service::DecideRequest;
    let _ = csrf;
    let p = person().await?;
    let verdict =
        Verdict::parse(&verdict).ok_or_else(|| AppError::BadRequest("verdict must be approve or reject".into()))?;
    let core = core()?;
    let status = core
        .decide(
            &p,
            DecideRequest {
                proposal_id: id.clone(),
                verdict,
                comment,
                content_hash,
                view_ms,
                passkey: passkey_ceremony
                    .zip(passkey_credential)
                    .map(|(ceremony, credential)| countersign_core::service::PasskeyProof { ceremony, credential }),
            },
        )
        .await?;
    Ok(Decided {
        status: status.as_str().to_owned(),
        next: core.next_for(&p, &id).await?,
    })
}
