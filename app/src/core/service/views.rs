//! What the pages show: the queue and the review screen, built from rows for
//! one person, who sees only their tenants.

use super::people::Person;
use super::Core;
use crate::core::error::{Error, Result};
use crate::core::lifecycle::{may_decide, Decider, DecisionFacts, Status, Verdict};
use crate::core::policy::render_template;
use crate::core::store::queries::jobs::JobRow;
use crate::core::store::queries::proposals::{self, DecisionRow, ProposalRow};
use crate::core::store::queries::{jobs, users};
use crate::model::{shorten, ArgRow, DecisionView, ExecutionView, Queue, QueueRow, Review};

const SHORT_VALUE: usize = 120;
const QUEUE_LIMIT: i64 = 200;

pub(super) fn decision_view(d: &DecisionRow, quick_ms: i64) -> DecisionView {
    DecisionView {
        username: d.username.clone(),
        verdict: d.verdict.clone(),
        comment: d.comment.clone(),
        at_ms: d.decided_at,
        break_glass: d.break_glass,
        view_ms: d.view_ms,
        quick: d.view_ms.is_some_and(|v| v < quick_ms),
    }
}

pub(super) fn execution_view(j: &JobRow) -> ExecutionView {
    let status = match j.state.as_str() {
        "leased" => "running",
        other => other,
    };
    ExecutionView {
        status: status.into(),
        attempts: j.attempt,
        result: j.result.clone(),
        finished_at_ms: j.finished_at,
    }
}

fn arg_rows(args: &str) -> Vec<ArgRow> {
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
            ArgRow { name, short, full }
        })
        .collect()
}

impl Core {
    /// Pending proposals of the person's tenants, oldest first.
    pub async fn queue_for(&self, person: &Person) -> Result<Queue> {
        if !person.roles.reviewer {
            return Err(Error::Forbidden("the queue is for reviewers".into()));
        }
        let rows = proposals::pending(&mut self.store.reader().await?.conn(), &person.tenants, QUEUE_LIMIT).await?;
        Ok(Queue {
            rows: rows
                .into_iter()
                .map(|p| QueueRow {
                    reason_short: shorten(&p.reason, 90),
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
            now_ms: self.now_ms(),
        })
    }

    /// The review screen for one proposal, or not found when the person may not see it.
    pub async fn review_for(&self, person: &Person, id: &str) -> Result<Review> {
        let break_glass = self.break_glass_of(person).await?.is_some();
        let mut r = self.store.reader().await?;
        let p: ProposalRow = proposals::get(&mut r.conn(), id)
            .await?
            .filter(|p| {
                break_glass || (person.sees_tenant(&p.tenant) && (person.roles.reviewer || person.roles.auditor))
            })
            .ok_or(Error::NotFound)?;
        let decisions = proposals::decisions_of(&mut r.conn(), &p.id).await?;
        let job = jobs::by_proposal(&mut r.conn(), &p.id).await?;
        let reviewers = users::with_role_in_tenant(&mut r.conn(), "reviewer", &p.tenant).await?;
        drop(r);
        let policy = self.policy();
        let tool = policy.tool(&p.tool);
        let status = Status::parse(&p.status).unwrap_or(Status::Pending);
        let decided: Vec<(String, Verdict)> = decisions
            .iter()
            .filter_map(|d| Some((d.user_id.clone(), Verdict::parse(&d.verdict)?)))
            .collect();
        let facts = DecisionFacts {
            status,
            tenant: &p.tenant,
            on_behalf_of: p.on_behalf_of.as_deref(),
            approvals_required: p.approvals_required,
            decisions: &decided,
        };
        let now = self.now_ms();
        let who = |id: &'_ str, name: &'_ str| -> bool {
            let tenants = vec![p.tenant.clone()];
            may_decide(
                &facts,
                &Decider {
                    user_id: id,
                    username: name,
                    is_reviewer: true,
                    tenants: &tenants,
                    break_glass: false,
                },
            )
            .is_ok()
        };
        let why_not = if status == Status::Pending && p.expires_at <= now {
            Some("This proposal has expired".to_owned())
        } else {
            may_decide(
                &facts,
                &Decider {
                    user_id: &person.id,
                    username: &person.username,
                    is_reviewer: person.roles.reviewer,
                    tenants: &person.tenants,
                    break_glass,
                },
            )
            .err()
            .map(|r| r.to_string())
        };
        let why_not = match why_not {
            None => self
                .switch_covering(&p.tenant, &p.route, &p.tool)
                .await?
                .map(|s| format!("A kill switch is on ({s}): approvals wait until it is off")),
            some => some,
        };
        let eligible = if status == Status::Pending {
            reviewers
                .iter()
                .filter(|u| u.id != person.id && who(&u.id, &u.username))
                .map(|u| u.username.clone())
                .collect()
        } else {
            Vec::new()
        };
        let args: serde_json::Value = serde_json::from_str(&p.args).unwrap_or_default();
        Ok(Review {
            id: p.id.clone(),
            tool: p.tool.clone(),
            tenant: p.tenant.clone(),
            env: p.env.clone(),
            route: p.route.clone(),
            run_id: p.run_id.clone(),
            status: p.status.clone(),
            reason: p.reason.clone(),
            on_behalf_of: p.on_behalf_of.clone(),
            idempotency_key: p.idempotency_key.clone(),
            created_at_ms: p.created_at,
            expires_at_ms: p.expires_at,
            now_ms: now,
            approvals: p.approvals,
            approvals_required: p.approvals_required,
            destructive: p.destructive,
            irreversible: p.irreversible,
            undo: tool
                .map(|t| t.undo.clone())
                .unwrap_or_else(|| "unknown: the tool is no longer in the policy".into()),
            blast_radius: tool
                .map(|t| render_template(&t.blast_radius, &args, &p.tenant, &p.env, &p.route))
                .unwrap_or_else(|| "unknown".into()),
            diff: p.diff.as_deref().and_then(|d| serde_json::from_str(d).ok()),
            args: arg_rows(&p.args),
            decisions: decisions
                .iter()
                .map(|d| decision_view(d, self.settings.quick_decision_ms))
                .collect(),
            content_hash: p.content_hash.clone(),
            why_not,
            eligible,
            execution: job.as_ref().map(execution_view),
            break_glass,
        })
    }
}
