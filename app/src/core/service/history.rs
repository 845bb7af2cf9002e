//! History and the audit log for auditors: filtered, paginated, exportable,
//! limited to the auditor's tenants.

use super::people::Person;
use super::views::{decision_view, execution_view};
use super::Core;
use crate::core::clock::parse_rfc3339;
use crate::core::error::{Error, Result};
use crate::core::store::queries::audit::{self, EventFilter};
use crate::core::store::queries::jobs;
use crate::core::store::queries::proposals::{self, HistoryFilter};
use crate::model::{AuditPage, AuditRow, HistoryPage, HistoryQuery, HistoryRow};
use std::collections::HashMap;

pub const HISTORY_PAGE: i64 = 50;
pub const AUDIT_PAGE: i64 = 100;

fn parse_time(what: &str, s: &str) -> Result<i64> {
    let s = s.trim();
    if let Some(ms) = parse_rfc3339(s) {
        return Ok(ms);
    }
    parse_rfc3339(&format!("{s}T00:00:00Z"))
        .ok_or_else(|| Error::BadRequest(format!("{what} must be a date (YYYY-MM-DD) or an RFC 3339 time")))
}

fn none_if_blank(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|x| x.trim().to_owned()).filter(|x| !x.is_empty())
}

impl Core {
    fn auditor_tenants(&self, person: &Person) -> Result<Option<Vec<String>>> {
        if person.roles.admin {
            return Ok(None);
        }
        if !person.roles.auditor {
            return Err(Error::Forbidden("history is for auditors".into()));
        }
        Ok(Some(person.tenants.clone()))
    }

    pub fn history_filter(&self, person: &Person, q: &HistoryQuery) -> Result<HistoryFilter> {
        let tenants = self.auditor_tenants(person)?;
        let before = match none_if_blank(&q.cursor) {
            Some(c) => {
                let (at, id) = c
                    .split_once('~')
                    .ok_or_else(|| Error::BadRequest("bad cursor".into()))?;
                Some((
                    at.parse().map_err(|_| Error::BadRequest("bad cursor".into()))?,
                    id.to_owned(),
                ))
            }
            None => None,
        };
        Ok(HistoryFilter {
            tenants,
            tenant: none_if_blank(&q.tenant),
            tool: none_if_blank(&q.tool),
            status: none_if_blank(&q.status),
            person: none_if_blank(&q.person),
            from_ms: none_if_blank(&q.from).map(|s| parse_time("from", &s)).transpose()?,
            to_ms: none_if_blank(&q.to)
                .map(|s| parse_time("to", &s).map(|t| if s.len() == 10 { t + 86_400_000 } else { t }))
                .transpose()?,
            before,
        })
    }

    /// One page of history, newest first.
    pub async fn history(&self, person: &Person, q: &HistoryQuery) -> Result<HistoryPage> {
        let f = self.history_filter(person, q)?;
        let rows = self.history_rows(&f, HISTORY_PAGE).await?;
        let next_cursor = (rows.len() as i64 == HISTORY_PAGE)
            .then(|| rows.last().map(|r| format!("{}~{}", r.created_at_ms, r.id)))
            .flatten();
        Ok(HistoryPage { rows, next_cursor })
    }

    pub async fn history_rows(&self, f: &HistoryFilter, limit: i64) -> Result<Vec<HistoryRow>> {
        let mut r = self.store.reader().await?;
        let ps = proposals::history(&mut r.conn(), f, limit).await?;
        let ids: Vec<String> = ps.iter().map(|p| p.id.clone()).collect();
        let mut decisions: HashMap<String, Vec<_>> = HashMap::new();
        for d in proposals::decisions_of_many(&mut r.conn(), &ids).await? {
            decisions.entry(d.proposal_id.clone()).or_default().push(d);
        }
        let mut job_of: HashMap<String, _> = HashMap::new();
        for j in jobs::by_proposals(&mut r.conn(), &ids).await? {
            job_of.insert(j.proposal_id.clone(), j);
        }
        let quick = self.settings.quick_decision_ms;
        Ok(ps
            .into_iter()
            .map(|p| HistoryRow {
                decisions: decisions
                    .get(&p.id)
                    .map(|ds| ds.iter().map(|d| decision_view(d, quick)).collect())
                    .unwrap_or_default(),
                execution: job_of.get(&p.id).map(execution_view),
                id: p.id,
                tool: p.tool,
                tenant: p.tenant,
                env: p.env,
                route: p.route,
                status: p.status,
                on_behalf_of: p.on_behalf_of,
                created_at_ms: p.created_at,
                destructive: p.destructive,
            })
            .collect())
    }

    /// Every row matching the filter, page by page, for export.
    pub async fn history_export(
        &self,
        person: &Person,
        q: &HistoryQuery,
        mut sink: impl FnMut(&HistoryRow) -> Result<()>,
    ) -> Result<u64> {
        let mut f = self.history_filter(person, q)?;
        let mut n = 0;
        loop {
            let rows = self.history_rows(&f, 500).await?;
            let Some(last) = rows.last() else { break };
            f.before = Some((last.created_at_ms, last.id.clone()));
            for r in &rows {
                sink(r)?;
                n += 1;
            }
            if n > 1_000_000 {
                return Err(Error::BadRequest("more than a million rows: narrow the filter".into()));
            }
        }
        Ok(n)
    }

    /// One page of the audit log (newest first) and whether the chain verifies.
    pub async fn audit_page(&self, person: &Person, before: Option<i64>) -> Result<AuditPage> {
        let tenants = self.auditor_tenants(person)?;
        let f = EventFilter {
            tenants,
            before_seq: before,
            ..Default::default()
        };
        let events = audit::events_page(&mut self.store.reader().await?.conn(), &f, AUDIT_PAGE).await?;
        let report = self.verify_audit_chain().await?;
        let next_before = (events.len() as i64 == AUDIT_PAGE)
            .then(|| events.last().map(|e| e.seq))
            .flatten();
        Ok(AuditPage {
            rows: events
                .into_iter()
                .map(|e| AuditRow {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    actor: e.actor,
                    action: e.action,
                    tenant: e.tenant,
                    subject: e.subject,
                    tool: e.tool,
                    result_status: e.result_status,
                    hash: e.hash,
                })
                .collect(),
            next_before,
            verified: report.ok(),
            verify_message: report.message(),
        })
    }
}
