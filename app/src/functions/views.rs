//! The core's results as the pages show them (server side): records become
//! view types, long values are shortened, times stay epoch milliseconds.

use crate::model::*;
use countersign_core::diff;
use countersign_core::lifecycle::JobState;
use countersign_core::records::{Decision, Job, Proposal};
use countersign_core::service::{AuditLogPage, Banner as CoreBanner, HistoryEntry, Person, ReviewData};

const SHORT_VALUE: usize = 120;

pub fn me(p: &Person) -> Me {
    Me {
        id: p.id.clone(),
        username: p.username.clone(),
        roles: p.roles.names(),
        tenants: p.tenants.clone(),
    }
}

pub fn banner(b: CoreBanner) -> Banner {
    Banner {
        kind: b.kind.as_str().to_owned(),
        text: b.text,
    }
}

pub fn decision(d: &Decision, quick_ms: i64) -> DecisionView {
    decision_noted(d, quick_ms, None)
}

fn decision_noted(d: &Decision, quick_ms: i64, note: Option<String>) -> DecisionView {
    DecisionView {
        note,
        username: d.username.clone(),
        verdict: d.verdict.as_str().to_owned(),
        comment: d.comment.clone(),
        at_ms: d.decided_at,
        break_glass: d.break_glass,
        view_ms: d.view_ms,
        quick: d.view_ms.is_some_and(|v| v < quick_ms),
        passkey: d.passkey_id.is_some(),
    }
}

pub fn execution(j: &Job) -> ExecutionView {
    let status = match j.state {
        JobState::Leased => "running",
        other => other.as_str(),
    };
    ExecutionView {
        status: status.into(),
        attempts: j.attempt,
        result: j.result.clone(),
        finished_at_ms: j.finished_at,
    }
}

fn arg_rows(args: &str, personal: &std::collections::BTreeSet<String>) -> Vec<ArgRow> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(args) else {
        return Vec::new();
    };
    map.into_iter()
        .map(|(name, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let short = shorten(&text, SHORT_VALUE);
            let full = (short != text).then_some(text);
            ArgRow {
                personal: personal.contains(&name),
                name,
                short,
                full,
            }
        })
        .collect()
}

fn diff_line(l: diff::Line) -> DiffLine {
    DiffLine {
        tag: match l.tag {
            diff::Tag::Equal => DiffTag::Equal,
            diff::Tag::Delete => DiffTag::Delete,
            diff::Tag::Insert => DiffTag::Insert,
        },
        old_no: l.old_no,
        new_no: l.new_no,
        spans: l
            .spans
            .into_iter()
            .map(|s| DiffSpan {
                emph: s.emph,
                text: s.text,
            })
            .collect(),
    }
}

pub fn queue(rows: Vec<Proposal>, now_ms: i64) -> Queue {
    Queue {
        rows: rows
            .into_iter()
            .map(|p| QueueRow {
                reason_short: shorten(&p.reason, 90),
                run_id: p.run_id,
                on_behalf_of: p.on_behalf_of,
                id: p.id,
                tool: p.tool,
                tenant: p.tenant,
                env: p.env,
                route: p.route,
                created_at_ms: p.created_at,
                approvals: p.approvals,
                approvals_required: p.approvals_required,
                destructive: p.destructive,
                irreversible: p.irreversible,
            })
            .collect(),
        now_ms,
    }
}

/// The upstream call a proposal makes, if its tool has an upstream.
fn upstream_call(p: &Proposal) -> Option<UpstreamCallView> {
    Some(UpstreamCallView {
        upstream: p.upstream.clone()?,
        tool: p.upstream_tool.clone()?,
        via_mcp: p.via.as_deref() == Some("mcp"),
    })
}

pub fn review(r: ReviewData, quick_ms: i64) -> Review {
    let p = r.proposal;
    let note = |d: &Decision| {
        r.recent_review_changes
            .iter()
            .find(|c| c.user_id == d.user_id)
            .map(|c| format!("reviewer since {} ago: {} by {}", age(r.now_ms - c.at), c.what, c.by))
    };
    Review {
        args: arg_rows(&p.args, &r.personal.fields),
        personal: (!r.personal.fields.is_empty()).then_some(PersonalView {
            shown: r.personal.shown,
            erased_at_ms: r.personal.erased_at,
        }),
        decisions: r
            .decisions
            .iter()
            .map(|d| decision_noted(d, quick_ms, note(d)))
            .collect(),
        preview_source: match (&p.preview_by, &p.preview_before) {
            (Some(_), _) => Some("executor".into()),
            (None, Some(_)) => Some("agent".into()),
            (None, None) => None,
        },
        preview_by: p.preview_by.clone(),
        preview_at_ms: p.preview_at,
        execution: r.job.as_ref().map(execution),
        upstream_call: upstream_call(&p),
        run: r
            .run
            .iter()
            .map(|e| RunItem {
                id: e.id.clone(),
                tool: e.tool.clone(),
                status: e.status.as_str().to_owned(),
                created_at_ms: e.created_at,
                approvals: e.approvals,
                approvals_required: e.approvals_required,
                destructive: e.destructive,
            })
            .collect(),
        own_pace_ms: r.own_pace_ms,
        too_fast: r.too_fast,
        requires_passkey: r.requires_passkey,
        diff: r.diff.map(|d| d.into_iter().map(diff_line).collect()),
        id: p.id,
        tool: p.tool,
        tenant: p.tenant,
        env: p.env,
        route: p.route,
        run_id: p.run_id,
        status: p.status.as_str().to_owned(),
        reason: p.reason,
        on_behalf_of: p.on_behalf_of,
        idempotency_key: p.idempotency_key,
        created_at_ms: p.created_at,
        expires_at_ms: p.expires_at,
        now_ms: r.now_ms,
        approvals: p.approvals,
        approvals_required: p.approvals_required,
        destructive: p.destructive,
        irreversible: p.irreversible,
        undo: r.undo,
        blast_radius: r.blast_radius,
        content_hash: p.content_hash,
        why_not: r.why_not,
        eligible: r.eligible,
        break_glass: r.break_glass,
    }
}

pub fn history_row(e: &HistoryEntry, quick_ms: i64) -> HistoryRow {
    let p = &e.proposal;
    HistoryRow {
        id: p.id.clone(),
        tool: p.tool.clone(),
        tenant: p.tenant.clone(),
        env: p.env.clone(),
        route: p.route.clone(),
        status: p.status.as_str().to_owned(),
        on_behalf_of: p.on_behalf_of.clone(),
        created_at_ms: p.created_at,
        decisions: e.decisions.iter().map(|d| decision(d, quick_ms)).collect(),
        execution: e.job.as_ref().map(execution),
        destructive: p.destructive,
        pii_erased_at_ms: p.pii_erased_at,
        upstream_call: upstream_call(p),
    }
}

pub fn audit_page(page: AuditLogPage) -> AuditPage {
    AuditPage {
        verified: page.report.ok(),
        verify_message: page.report.message(),
        rows: page
            .events
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
        next_before: page.next_before,
    }
}

impl From<HistoryQuery> for countersign_core::service::HistoryQuery {
    fn from(q: HistoryQuery) -> Self {
        Self {
            tenant: q.tenant,
            tool: q.tool,
            status: q.status,
            person: q.person,
            from: q.from,
            to: q.to,
            cursor: q.cursor,
        }
    }
}
