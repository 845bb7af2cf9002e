//! History and the audit log, for auditors.

use crate::error::AppError;
use crate::model::{AuditPage, HistoryPage, HistoryQuery};
use leptos::prelude::*;
use leptos::server_fn::codec::GetUrl;

#[server(input = GetUrl, endpoint = "history")]
pub async fn get_history(q: HistoryQuery) -> Result<HistoryPage, AppError> {
    use super::ssr::*;
    let p = person().await?;
    Ok(core()?.history(&p, &q).await?)
}

#[server(input = GetUrl, endpoint = "audit")]
pub async fn get_audit_log(before: Option<i64>) -> Result<AuditPage, AppError> {
    use super::ssr::*;
    let p = person().await?;
    Ok(core()?.audit_page(&p, before).await?)
}
