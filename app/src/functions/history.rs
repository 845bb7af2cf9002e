//! History and the audit log, for auditors.

use crate::error::AppError;
use crate::model::{AuditPage, HistoryPage, HistoryQuery};
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

#[server(input = GetUrl, endpoint = "history")]
pub async fn get_history(q: HistoryQuery) -> Result<HistoryPage, AppError> {
    use super::ssr::*;
    let p = person().await?;
    let core = core()?;
    let page = core.history(&p, &q.into()).await?;
    let quick = core.settings().quick_decision_ms;
    Ok(HistoryPage {
        rows: page
            .entries
            .iter()
            .map(|e| super::views::history_row(e, quick))
            .collect(),
        next_cursor: page.next_cursor,
    })
}

#[server(input = GetUrl, endpoint = "audit")]
pub async fn get_audit_log(before: Option<i64>) -> Result<AuditPage, AppError> {
    use super::ssr::*;
    let p = person().await?;
    Ok(super::views::audit_page(core()?.audit_page(&p, before).await?))
}
