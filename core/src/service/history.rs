//! History and the audit log for auditors: filtered, paginated, exportable,
//! limited to the auditor's tenants.

use super::audit_log::VerifyReport;
use super::people::Person;
use super::privacy::{mask_decision, mask_job, mask_proposal, personal_fields};
use super::Core;
use crate::audit::AuditEvent;
use crate::clock::parse_rfc3339;
use crate::error::{Error, Result};
use crate::lifecycle::Status;
use crate::store::queries::audit::{self, EventFilter};
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::proposals::{self, DecisionRow, HistoryFilter, ProposalRow};
use serde::Deserialize;
use std::collections::HashMap;

pub const HISTORY_PAGE: i64 = 50;
pub const AUDIT_PAGE: i64 = 100;

/// The history filters as a person types them (a form, a query string).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    pub tenant: Option<String>,
    pub tool: Option<String>,
    pub status: Option<String>,
    pub person: Option<String>,
    /// RFC 3339 or YYYY-MM-DD.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
}

/// A proposal with what happened to it, its personal data masked.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub proposal: ProposalRow,
    pub decisions: Vec<DecisionRow>,
    pub job: Option<JobRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    pub next_cursor: Option<String>,
}

/// A page of the audit log, newest first, and whether the chain verifies.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditLogPage {
    pub events: Vec<AuditEvent>,
    pub next_before: Option<i64>,
    pub report: VerifyReport,
}

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

/// Whom an event of no tenant is about, when it is about people.
#[derive(Debug, PartialEq)]
enum Concerns {
    /// The tenants it names (`details.tenants`).
    Tenants(Vec<String>),
    /// A person: `id:` their user id, `name:` the account typed at sign-in.
    User(String),
}

/// Events of people (accounts, sign-ins) concern the tenants those people
/// work in; everything else of no tenant (policy loads, break-glass, key
/// rotations, switches) concerns the whole deployment.
fn about_whom(e: &AuditEvent) -> Option<Concerns> {
    let details: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
    if let Some(ts) = details.get("tenants").and_then(|t| t.as_array()) {
        return Some(Concerns::Tenants(
            ts.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        ));
    }
    let people = e.action.starts_with("user.") || e.action.starts_with("login.") || e.action == "logout";
    if !people {
        return None;
    }
    match (&e.subject, details.get("account").and_then(|a| a.as_str())) {
        (Some(id), _) => Some(Concerns::User(format!("id:{id}"))),
        (None, Some(name)) => Some(Concerns::User(format!("name:{name}"))),
        // A failed sign-in that named no account names nobody.
        (None, None) => None,
    }
}

/// The tenants of the person `key` names (`id:` or `name:`), or None if no
/// such person is found: then only admins see their events.
async fn tenants_of_user(conn: &mut crate::store::Conn<'_>, key: &str) -> Result<Option<Vec<String>>> {
    use crate::store::queries::users;
    let user = match key.split_once(':') {
        Some(("id", id)) => users::by_id(conn, id).await?,
        Some((_, name)) => users::by_name(conn, name).await?,
        None => None,
    };
    Ok(match user {
        Some(u) => Some(users::access_of(conn, &u.id).await?.1),
        None => None,
    })
}

impl Core {
    /// The tenants whose history this person may read (None: all of them).
    fn auditor_tenants(&self, person: &Person) -> Result<Option<Vec<String>>> {
        if person.roles.admin {
            return Ok(None);
        }
        if !person.roles.auditor {
            return Err(Error::Forbidden("history is for auditors".into()));
        }
        Ok(Some(person.tenants.clone()))
    }

    fn history_filter(&self, person: &Person, q: &HistoryQuery) -> Result<HistoryFilter> {
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
        let status = none_if_blank(&q.status)
            .map(|s| Status::parse(&s).ok_or_else(|| Error::BadRequest(format!("unknown status {s:?}"))))
            .transpose()?;
        Ok(HistoryFilter {
            tenants,
            tenant: none_if_blank(&q.tenant),
            tool: none_if_blank(&q.tool),
            status,
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
        let entries = self.history_entries(&f, HISTORY_PAGE).await?;
        let next_cursor = (entries.len() as i64 == HISTORY_PAGE)
            .then(|| {
                entries
                    .last()
                    .map(|e| format!("{}~{}", e.proposal.created_at, e.proposal.id))
            })
            .flatten();
        Ok(HistoryPage { entries, next_cursor })
    }

    async fn history_entries(&self, f: &HistoryFilter, limit: i64) -> Result<Vec<HistoryEntry>> {
        let mut r = self.store.reader().await?;
        let ps = proposals::history(&mut r.conn(), f, limit).await?;
        let ids: Vec<String> = ps.iter().map(|p| p.id.clone()).collect();
        let mut decisions: HashMap<String, Vec<DecisionRow>> = HashMap::new();
        for d in proposals::decisions_of_many(&mut r.conn(), &ids).await? {
            decisions.entry(d.proposal_id.clone()).or_default().push(d);
        }
        let mut job_of: HashMap<String, JobRow> = HashMap::new();
        for j in jobs::by_proposals(&mut r.conn(), &ids).await? {
            job_of.insert(j.proposal_id.clone(), j);
        }
        let policy = self.policy();
        Ok(ps
            .into_iter()
            .map(|mut p| {
                let mut decisions = decisions.remove(&p.id).unwrap_or_default();
                let mut job = job_of.remove(&p.id);
                // History is read by auditors: personal data only masked.
                let fields = personal_fields(&policy, &p);
                let r = mask_proposal(&mut p, &fields);
                job.iter_mut().for_each(|j| mask_job(j, &r));
                decisions.iter_mut().for_each(|d| mask_decision(d, &r));
                HistoryEntry {
                    decisions,
                    job,
                    proposal: p,
                }
            })
            .collect())
    }

    /// Every entry matching the filter, page by page, for export.
    pub async fn history_export(
        &self,
        person: &Person,
        q: &HistoryQuery,
        mut sink: impl FnMut(&HistoryEntry) -> Result<()>,
    ) -> Result<u64> {
        let mut f = self.history_filter(person, q)?;
        let mut n = 0;
        loop {
            let entries = self.history_entries(&f, 500).await?;
            let Some(last) = entries.last() else { break };
            f.before = Some((last.proposal.created_at, last.proposal.id.clone()));
            for e in &entries {
                sink(e)?;
                n += 1;
            }
            if n > 1_000_000 {
                return Err(Error::BadRequest("more than a million rows: narrow the filter".into()));
            }
        }
        Ok(n)
    }

    /// One page of the audit log (newest first) and whether the chain verifies.
    pub async fn audit_page(&self, person: &Person, before: Option<i64>) -> Result<AuditLogPage> {
        let tenants = self.auditor_tenants(person)?;
        let f = EventFilter {
            tenants,
            untenanted: true,
            before_seq: before,
            ..Default::default()
        };
        let mut r = self.store.reader().await?;
        let mut events = audit::events_page(&mut r.conn(), &f, AUDIT_PAGE).await?;
        let next_before = (events.len() as i64 == AUDIT_PAGE)
            .then(|| events.last().map(|e| e.seq))
            .flatten();
        if let Some(mine) = &f.tenants {
            // Events of no tenant that are about people name them and their
            // tenants: an auditor sees those only when every tenant they
            // concern is theirs.
            let mut people: HashMap<String, Option<Vec<String>>> = HashMap::new();
            let mut kept = Vec::with_capacity(events.len());
            for e in events {
                let about = if e.tenant.is_some() { None } else { about_whom(&e) };
                let theirs = match about {
                    None => Some(Vec::new()),
                    Some(Concerns::Tenants(ts)) => Some(ts),
                    Some(Concerns::User(key)) => match people.get(&key) {
                        Some(ts) => ts.clone(),
                        None => {
                            let ts = tenants_of_user(&mut r.conn(), &key).await?;
                            people.insert(key, ts.clone());
                            ts
                        }
                    },
                };
                if theirs.is_some_and(|ts| ts.iter().all(|t| mine.contains(t))) {
                    kept.push(e);
                }
            }
            events = kept;
        }
        drop(r);
        let report = self.verify_audit_chain_since_last().await?;
        Ok(AuditLogPage {
            events,
            next_before,
            report,
        })
    }
}
