//! Proposals from agents: validated, deduplicated by idempotency key, stored
//! with their diff, approved at once when the policy says so; read, waited on
//! and cancelled by the run that made them.

use super::runs::{decide_for_run, live_run, record_refusal, route_of, within_budget};
use super::{Core, RunPrincipal};
use crate::core::audit::{canonical_json, hash_json, hash_parts, AuditDraft};
use crate::core::error::{Error, Result};
use crate::core::ids::{new_id, IdempotencyKey};
use crate::core::lifecycle::Status;
use crate::core::policy::{Decision, Policy, ToolKind};
use crate::core::secrets::{find_secret, secret_kind};
use crate::core::store::queries::jobs::{self, JobRow};
use crate::core::store::queries::proposals::{self, DecisionRow, ProposalRow};
use crate::core::store::queries::runs;
use crate::core::store::{Notice, Tx};
use serde_json::Value;
use std::time::Duration;

pub const MAX_REASON_CHARS: usize = 2000;
pub const MAX_PREVIEW_BYTES: usize = 32 * 1024;
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Clone, Default)]
pub struct ProposeRequest {
    pub tool: String,
    pub args: Value,
    pub idempotency_key: Option<String>,
    pub reason: Option<String>,
    pub preview: Option<(String, String)>,
}

/// A proposal with what happened to it, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalOut {
    pub row: ProposalRow,
    pub decisions: Vec<DecisionRow>,
    pub job: Option<JobRow>,
    pub review_url: String,
}

/// Everything checked before the transaction: pure work on the request.
#[derive(Clone)]
struct Prepared {
    row: ProposalRow,
    decision: Decision,
    cost_usd: f64,
}

fn prepare(policy: &Policy, run: &RunPrincipal, req: &ProposeRequest) -> Result<Prepared> {
    let route = route_of(policy, run)?;
    let decision = decide_for_run(policy, route, run, &req.tool)?;
    let tool = policy.tool(&req.tool).ok_or_else(|| Error::ToolNotAllowed {
        tool: req.tool.clone(),
        route: route.name.clone(),
    })?;
    if let Err(fields) = tool.args.validate(&req.args) {
        return Err(Error::InvalidArgs {
            tool: tool.name.clone(),
            fields,
        });
    }
    // Secrets are looked for everywhere text can enter a proposal.
    if let Some((field, kind)) = find_secret(&req.args, "args") {
        return Err(Error::SecretInArgs {
            field,
            kind: kind.into(),
        });
    }
    let reason = req.reason.clone().unwrap_or_default();
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::InvalidArgs {
            tool: tool.name.clone(),
            fields: [(
                "reason".to_owned(),
                format!("must be at most {MAX_REASON_CHARS} characters"),
            )]
            .into(),
        });
    }
    for (field, text) in [
        ("reason", Some(reason.as_str())),
        ("preview.before", req.preview.as_ref().map(|p| p.0.as_str())),
        ("preview.after", req.preview.as_ref().map(|p| p.1.as_str())),
    ] {
        let Some(text) = text else { continue };
        if let Some(kind) = secret_kind(text) {
            return Err(Error::SecretInArgs {
                field: field.into(),
                kind: kind.into(),
            });
        }
        if text.len() > MAX_PREVIEW_BYTES {
            return Err(Error::InvalidArgs {
                tool: tool.name.clone(),
                fields: [(field.to_owned(), format!("must be at most {MAX_PREVIEW_BYTES} bytes"))].into(),
            });
        }
    }
    let key = match &req.idempotency_key {
        Some(k) => Some(IdempotencyKey::parse(k).map_err(|m| Error::InvalidArgs {
            tool: tool.name.clone(),
            fields: [("idempotency_key".to_owned(), m)].into(),
        })?),
        None if tool.kind == ToolKind::Write => {
            return Err(Error::InvalidArgs {
                tool: tool.name.clone(),
                fields: [("idempotency_key".to_owned(), "is required for write tools".to_owned())].into(),
            })
        }
        None => None,
    };
    let args_canonical = canonical_json(&req.args);
    let (before, after) = req.preview.clone().unzip();
    let content_hash = hash_parts(&[
        &tool.name,
        &args_canonical,
        before.as_deref().unwrap_or("\u{0}"),
        after.as_deref().unwrap_or("\u{0}"),
    ]);
    let diff = match (&before, &after) {
        (Some(b), Some(a)) => Some(serde_json::to_string(&crate::core::diff::compute(b, a))?),
        _ => None,
    };
    let approvals_required = match decision {
        Decision::RequireApproval { approvals } => approvals,
        _ => 0,
    };
    Ok(Prepared {
        row: ProposalRow {
            id: new_id("prp"),
            tenant: run.tenant.clone(),
            env: run.env.clone(),
            route: run.route.clone(),
            run_id: run.run_id.clone(),
            tool: tool.name.clone(),
            args: args_canonical,
            args_hash: hash_json(&req.args),
            content_hash,
            idempotency_key: key.map(|k| k.as_str().to_owned()),
            reason,
            preview_before: before,
            preview_after: after,
            diff,
            on_behalf_of: None,
            status: Status::Pending.as_str().into(),
            approvals_required,
            approvals: 0,
            destructive: tool.destructive,
            irreversible: tool.is_irreversible(),
            created_at: 0,
            expires_at: 0,
            decided_at: None,
            execute_by: None,
        },
        decision,
        cost_usd: tool.cost_usd,
    })
}

impl Core {
    /// Propose an action. Answers the proposal and whether it was a replay of
    /// an earlier request with the same idempotency key.
    pub async fn propose(&self, run: &RunPrincipal, req: ProposeRequest) -> Result<(ProposalOut, bool)> {
        let policy = self.policy();
        let switch = self.switch_covering(&run.tenant, &run.route, &req.tool).await?;
        let prepared = prepare(&policy, run, &req);
        let run = run.clone();
        let tool_name = req.tool.clone();
        let base = self.settings.public_url.clone();
        let (row, replayed, job) = self
            .store
            .write(move |tx| {
                Box::pin(async move {
                    let mut p = match prepared {
                        Ok(p) => p,
                        Err(e) => {
                            live_run(tx, &run).await?;
                            return Ok(Err(record_refusal(
                                tx,
                                &policy,
                                &run,
                                "proposal.refused",
                                &tool_name,
                                e,
                            )
                            .await?));
                        }
                    };
                    if let Some(switch) = switch {
                        live_run(tx, &run).await?;
                        let e = Error::Disabled { switch };
                        return Ok(Err(record_refusal(
                            tx,
                            &policy,
                            &run,
                            "proposal.refused",
                            &tool_name,
                            e,
                        )
                        .await?));
                    }
                    let route = route_of(&policy, &run)?;
                    let tool = policy.tool(&p.row.tool).ok_or(Error::NotFound)?;
                    let now = tx.now_ms();
                    p.row.created_at = now;
                    p.row.expires_at = now + tool.expires_after_seconds * 1000;
                    p.row.on_behalf_of = run.on_behalf_of.clone();
                    // The common path is one call: insert (unless the key was
                    // used) and, if inserted, spend (unless over budget).
                    let spend = runs::Spend {
                        run_id: &run.run_id,
                        steps: 1,
                        usd: p.cost_usd,
                        now,
                        budgets: &route.budgets,
                    };
                    let inserted = proposals::insert_and_spend(&mut tx.conn, &p.row, &spend).await?;
                    if inserted == proposals::Inserted::Repeat {
                        let key = p.row.idempotency_key.clone().unwrap_or_default();
                        let existing = proposals::by_idempotency_key(&mut tx.conn, &run.run_id, &key)
                            .await?
                            .ok_or_else(|| Error::internal("an idempotency conflict without its proposal"))?;
                        if existing.tool == p.row.tool && existing.args_hash == p.row.args_hash {
                            return Ok(Ok((existing, true, None)));
                        }
                        tx.audit(
                            AuditDraft::new(run.actor(), "proposal.refused")
                                .tenant(run.tenant.clone())
                                .tool(tool_name.clone())
                                .scope(run.scope())
                                .status("refused:idempotency_conflict")
                                .details(serde_json::json!({ "idempotency_key": key, "existing": existing.id })),
                        )
                        .await?;
                        return Ok(Err(Error::IdempotencyConflict { existing: existing.id }));
                    }
                    if inserted == proposals::Inserted::Unpaid {
                        // Not spent: take the proposal back and say why
                        // (revoked or expired is 401, else a budget).
                        proposals::delete(&mut tx.conn, &p.row.id).await?;
                        let run_row = live_run(tx, &run).await?;
                        let e = within_budget(&run_row, &route.budgets, now, 1, p.cost_usd)
                            .err()
                            .unwrap_or_else(|| Error::internal("the run's budget check disagreed"));
                        return Ok(Err(record_refusal(
                            tx,
                            &policy,
                            &run,
                            "proposal.refused",
                            &tool_name,
                            e,
                        )
                        .await?));
                    }
                    let mut ev = AuditDraft::new(run.actor(), "proposal.created")
                        .tenant(run.tenant.clone())
                        .tool(p.row.tool.clone())
                        .subject(p.row.id.clone())
                        .scope(run.scope())
                        .details(
                            serde_json::json!({ "approvals_required": p.row.approvals_required, "run": run.run_id }),
                        );
                    ev.args_hash = Some(p.row.args_hash.clone());
                    ev.idempotency_key = p.row.idempotency_key.clone();
                    tx.audit(ev).await?;
                    let mut job = None;
                    if p.decision == Decision::Allow {
                        // Not gated by the policy (a read tool, or an explicit auto_approve).
                        job = Some(
                            release_approved(tx, &policy, &mut p.row, "policy: no approval required", Vec::new())
                                .await?,
                        );
                    } else {
                        let r = &p.row;
                        super::notify::emit(
                            tx,
                            "proposal.pending",
                            serde_json::json!({
                                "proposal": r.id, "tool": r.tool, "tenant": r.tenant, "env": r.env, "route": r.route,
                                "approvals_required": r.approvals_required, "destructive": r.destructive,
                                "review_url": format!("{}/proposals/{}", base.trim_end_matches('/'), r.id),
                            }),
                        )
                        .await?;
                    }
                    tx.notify(Notice::Proposal {
                        id: p.row.id.clone(),
                        tenant: p.row.tenant.clone(),
                        status: p.row.status.clone(),
                    });
                    Ok(Ok((p.row, false, job)))
                })
            })
            .await??;
        if replayed {
            return Ok((self.proposal_out(row).await?, true));
        }
        // A new proposal has no decisions yet, and its job (if released) is known.
        Ok((
            ProposalOut {
                review_url: self.review_url(&row.id),
                row,
                decisions: Vec::new(),
                job,
            },
            false,
        ))
    }

    async fn proposal_out(&self, row: ProposalRow) -> Result<ProposalOut> {
        let mut r = self.store.reader().await?;
        let decisions = proposals::decisions_of(&mut r.conn(), &row.id).await?;
        let job = jobs::by_proposal(&mut r.conn(), &row.id).await?;
        Ok(ProposalOut {
            review_url: self.review_url(&row.id),
            row,
            decisions,
            job,
        })
    }

    /// A proposal as its own run sees it; any other id is not found.
    pub async fn proposal_for_run(&self, run: &RunPrincipal, id: &str) -> Result<ProposalOut> {
        let row = proposals::get(&mut self.store.reader().await?.conn(), id)
            .await?
            .filter(|p| p.run_id == run.run_id && p.tenant == run.tenant)
            .ok_or(Error::NotFound)?;
        self.proposal_out(row).await
    }

    /// Wait until the proposal leaves `pending` or `timeout` passes. Woken by
    /// the decision's notice; a slow tick covers a missed notice.
    pub async fn wait_for_run(&self, run: &RunPrincipal, id: &str, timeout: Duration) -> Result<ProposalOut> {
        let timeout = timeout.min(Duration::from_secs(MAX_WAIT_SECS));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut notices = self.store.subscribe();
        loop {
            let out = self.proposal_for_run(run, id).await?;
            if out.row.status != Status::Pending.as_str() {
                return Ok(out);
            }
            let tick = tokio::time::Instant::now() + Duration::from_secs(2);
            let until = deadline.min(tick);
            loop {
                match tokio::time::timeout_at(until, notices.recv()).await {
                    Err(_) => break,
                    Ok(Ok(Notice::Proposal { id: nid, .. })) if nid == id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return self.proposal_for_run(run, id).await;
            }
        }
    }

    /// Withdraw a pending proposal.
    pub async fn cancel_for_run(&self, run: &RunPrincipal, id: &str) -> Result<ProposalOut> {
        let run = run.clone();
        let id = id.to_owned();
        let row = self
            .store
            .write(move |tx| {
                Box::pin(async move {
                    let mut p = proposals::get_for_update(&mut tx.conn, &id)
                        .await?
                        .filter(|p| p.run_id == run.run_id && p.tenant == run.tenant)
                        .ok_or(Error::NotFound)?;
                    let now_ms = tx.now_ms();
                    if !proposals::transition(
                        &mut tx.conn,
                        &id,
                        Status::Pending.as_str(),
                        Status::Cancelled.as_str(),
                        now_ms,
                    )
                    .await?
                    {
                        return Err(Error::InvalidTransition(format!(
                            "only a pending proposal can be cancelled; this one is {}",
                            p.status
                        )));
                    }
                    p.status = Status::Cancelled.as_str().into();
                    tx.audit(
                        AuditDraft::new(run.actor(), "proposal.cancelled")
                            .tenant(run.tenant.clone())
                            .tool(p.tool.clone())
                            .subject(id.clone())
                            .scope(run.scope()),
                    )
                    .await?;
                    tx.notify(Notice::Proposal {
                        id: id.clone(),
                        tenant: p.tenant.clone(),
                        status: p.status.clone(),
                    });
                    Ok(p)
                })
            })
            .await?;
        self.proposal_out(row).await
    }
}

/// Put an approved proposal on the executor queue (or hold it while a kill
/// switch or breaker covers it), in the caller's transaction. `row` is
/// updated to its new status.
pub(super) async fn release_approved(
    tx: &mut Tx<'_>,
    policy: &Policy,
    row: &mut ProposalRow,
    why: &str,
    approval_ids: Vec<String>,
) -> Result<JobRow> {
    let tool = policy.tool(&row.tool).ok_or(Error::NotFound)?;
    let now = tx.now_ms();
    let execute_by = now + tool.execute_within_seconds * 1000;
    let held = super::jobs::hold_reason(tx, &row.tenant, &row.route, &row.tool).await?;
    let (status, state) = match &held {
        Some(_) => (Status::Approved, "held"),
        None => (Status::Queued, "queued"),
    };
    proposals::set_approved(
        &mut tx.conn,
        &row.id,
        row.approvals,
        status.as_str(),
        now,
        Some(execute_by),
    )
    .await?;
    row.status = status.as_str().into();
    row.decided_at = Some(now);
    row.execute_by = Some(execute_by);
    let job = JobRow {
        id: new_id("job"),
        proposal_id: row.id.clone(),
        tenant: row.tenant.clone(),
        env: row.env.clone(),
        route: row.route.clone(),
        tool: row.tool.clone(),
        state: state.into(),
        attempt: 0,
        max_attempts: tool.max_attempts,
        lease_id: None,
        lease_expires_at: None,
        leased_at: None,
        available_at: now,
        execute_by,
        result: None,
        completion: None,
        created_at: now,
        finished_at: None,
    };
    jobs::insert(&mut tx.conn, &job).await?;
    let mut ev = AuditDraft::new(
        "system",
        if held.is_some() {
            "proposal.approved.held"
        } else {
            "job.released"
        },
    )
    .tenant(row.tenant.clone())
    .tool(row.tool.clone())
    .subject(row.id.clone())
    .details(serde_json::json!({ "job": job.id, "why": why, "held_by": held, "execute_by": execute_by }));
    ev.approval_ids = approval_ids;
    ev.args_hash = Some(row.args_hash.clone());
    ev.idempotency_key = row.idempotency_key.clone();
    tx.audit(ev).await?;
    if held.is_none() {
        tx.notify(Notice::JobReady { env: row.env.clone() });
    }
    Ok(job)
}
