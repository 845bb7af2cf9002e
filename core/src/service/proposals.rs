//! Proposals from agents: validated, deduplicated by idempotency key, stored
//! with their diff, approved at once when the policy says so; read, waited on
//! and cancelled by the run that made them.

use super::previews::{announce_pending, content_hash, diff_json, diffs_inline, MAX_PREVIEW_BYTES};
use super::receipts::Signer;
use super::release::{cancel_unclaimed, release_approved, Approved};
use super::runs::{decide_for_run, live_run, refuse, route_of, why_unpaid, ProposingRun};
use super::waiting::Waiter;
use super::{review_url, Core, RunPrincipal};
use crate::audit::{canonical_json, hash_json, AuditDraft};
use crate::error::{Error, Result};
use crate::ids::{new_id, IdempotencyKey};
use crate::lifecycle::{JobKind, JobState, Status};
use crate::policy::{Decision, Policy, PreviewBy, ToolKind};
use crate::secrets::{find_secret, secret_kind};
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::proposals::{self, DecisionRow, ProposalRow};
use crate::store::queries::{controls, runs};
use crate::store::{Notice, Outcome, Tx};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub const MAX_REASON_CHARS: usize = 2000;
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Clone, Default)]
pub struct ProposeRequest {
    pub tool: String,
    pub args: Value,
    pub idempotency_key: Option<String>,
    pub reason: Option<String>,
    pub preview: Option<(String, String)>,
    /// The door the proposal came through, shown to reviewers.
    pub via: Via,
}

/// The door a proposal came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// The JSON API (`POST /api/v1/proposals`).
    #[default]
    Api,
    /// The MCP gateway (`tools/call` on `/mcp`).
    Mcp,
}

impl Via {
    /// As stored on the proposal: None for the API.
    fn stored(self) -> Option<String> {
        match self {
            Via::Api => None,
            Via::Mcp => Some("mcp".into()),
        }
    }
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
    // Where the executor describes the change, the agent may not.
    if tool.preview == PreviewBy::Executor && req.preview.is_some() {
        return Err(Error::InvalidArgs {
            tool: tool.name.clone(),
            fields: [(
                "preview".to_owned(),
                "is computed by the executor for this tool: do not send it".to_owned(),
            )]
            .into(),
        });
    }
    if let Err(fields) = tool.args.validate(&req.args) {
        return Err(Error::InvalidArgs {
            tool: tool.name.clone(),
            fields,
        });
    }
    // Secrets are looked for everywhere text can enter a proposal.
    // One number, one spelling: `5.0` for an integer field is stored, hashed
    // and released as `5`.
    let args = tool.args.normalized(&req.args);
    if let Some((field, kind)) = find_secret(&args, "args") {
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
        Some(k) => {
            if let Some(kind) = secret_kind(k) {
                return Err(Error::SecretInArgs {
                    field: "idempotency_key".into(),
                    kind: kind.into(),
                });
            }
            Some(IdempotencyKey::parse(k).map_err(|m| Error::InvalidArgs {
                tool: tool.name.clone(),
                fields: [("idempotency_key".to_owned(), m)].into(),
            })?)
        }
        None if tool.kind == ToolKind::Write => {
            return Err(Error::InvalidArgs {
                tool: tool.name.clone(),
                fields: [("idempotency_key".to_owned(), "is required for write tools".to_owned())].into(),
            })
        }
        None => None,
    };
    let personal = tool.args.personal_fields();
    // Idempotency keys go into the audit chain, which can never be erased.
    if key
        .as_ref()
        .is_some_and(|k| crate::privacy::Redactor::erasing(&args, &personal).finds(k.as_str()))
    {
        return Err(Error::InvalidArgs {
            tool: tool.name.clone(),
            fields: [(
                "idempotency_key".to_owned(),
                "must not repeat a personal-data arg: the audit log keeps idempotency keys for ever".to_owned(),
            )]
            .into(),
        });
    }
    let args_canonical = canonical_json(&args);
    let (before, after) = req.preview.clone().unzip();
    let content_hash = content_hash(&tool.name, &args_canonical, before.as_deref(), after.as_deref(), None);
    // A gated action whose executor describes the change waits for that first.
    let status = match decision {
        Decision::RequireApproval { .. } if tool.preview == PreviewBy::Executor => Status::Previewing,
        _ => Status::Pending,
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
            args_hash: hash_json(&args),
            content_hash,
            idempotency_key: key.as_ref().map(|k| k.as_str().to_owned()),
            reason,
            preview_before: before,
            preview_after: after,
            // Computed later, only for a proposal that will be stored (`propose`).
            diff: None,
            on_behalf_of: None,
            status,
            approvals_required,
            approvals: 0,
            destructive: tool.destructive,
            irreversible: tool.is_irreversible(),
            created_at: 0,
            expires_at: 0,
            decided_at: None,
            execute_by: None,
            preview_state: None,
            preview_by: None,
            preview_at: None,
            idempotency_scope: key.is_some().then(|| format!("{}/{}", run.tenant, run.env)),
            pii_fields: super::privacy::stored_fields(&personal),
            pii_erased_at: None,
            upstream: tool.upstream.as_ref().map(|u| u.upstream.clone()),
            upstream_tool: tool.upstream.as_ref().map(|u| u.tool.clone()),
            via: req.via.stored(),
        },
        decision,
        cost_usd: tool.cost_usd,
    })
}

/// A new proposal, with everything decided before the transaction.
#[derive(Clone)]
struct NewProposal {
    policy: Arc<Policy>,
    run: RunPrincipal,
    tool: String,
    prepared: Result<Prepared>,
    public_url: String,
    signer: Signer,
    /// Whether the run's liveness is checked here (`ProposingRun`), not
    /// before: the charge checks it on the way in, a replay reads it.
    check_run: bool,
}

/// The dry-run job of a proposal whose executor describes the change.
fn preview_job(p: &ProposalRow, preview_within_seconds: i64, max_attempts: i64, now: i64) -> JobRow {
    let id = new_id("job");
    JobRow {
        execution_key: format!("exk_{id}"),
        id,
        proposal_id: p.id.clone(),
        tenant: p.tenant.clone(),
        env: p.env.clone(),
        route: p.route.clone(),
        tool: p.tool.clone(),
        state: JobState::Queued,
        attempt: 0,
        max_attempts,
        lease_id: None,
        lease_expires_at: None,
        leased_at: None,
        available_at: now,
        execute_by: now + preview_within_seconds * 1000,
        result: None,
        completion: None,
        created_at: now,
        finished_at: None,
        kind: JobKind::Preview,
        receipt: None,
    }
}

/// The proposal as `create_in` inserts it first, for the writer to insert
/// together with others (`Store::write_or_refuse_inserting`); None where
/// the policy no longer has its route or tool (`create_in` says which).
fn insert_of(policy: &Policy, run: &RunPrincipal, tool_asked: &str, p: &Prepared) -> Option<crate::store::Insert> {
    let route = route_of(policy, run).ok()?;
    let tool = policy.tool(&p.row.tool)?;
    let mut row = p.row.clone();
    row.on_behalf_of = run.on_behalf_of.clone();
    Some(crate::store::Insert {
        charge: proposals::ToInsert {
            row,
            steps: 1,
            usd: p.cost_usd,
            budgets: route.budgets,
        },
        tool_asked: tool_asked.to_owned(),
        expires_after_ms: tool.expires_after_seconds * 1000,
    })
}

/// What the transaction made of it.
struct Created {
    row: ProposalRow,
    replayed: bool,
    job: Option<JobRow>,
}

async fn create_in(tx: &mut Tx<'_>, n: NewProposal) -> Result<Outcome<Created>> {
    let NewProposal {
        policy,
        run,
        tool: tool_name,
        prepared,
        public_url,
        signer,
        check_run,
    } = n;
    let mut p = match prepared {
        Ok(p) => p,
        Err(e) => return refuse(tx, &policy, &run, "proposal.refused", &tool_name, e).await,
    };
    // Read in the transaction that inserts: a switch turned on before the
    // proposal commits refuses it (once per batch of requests, not per request).
    if let Some(switch) = controls::in_force(tx)
        .await?
        .refusing(&run.tenant, &run.route, &tool_name)
    {
        if tx.inserted(&p.row.id).is_some() {
            // Inserted ahead by the writer before the switch changed within
            // the batch: fail, and the batch runs again one by one.
            return Err(Error::internal("a proposal inserted ahead is refused by a switch"));
        }
        let e = Error::Disabled { switch };
        return refuse(tx, &policy, &run, "proposal.refused", &tool_name, e).await;
    }
    let route = route_of(&policy, &run)?;
    let tool = policy.tool(&p.row.tool).ok_or(Error::NotFound)?;
    let now = tx.now_ms();
    p.row.created_at = now;
    p.row.expires_at = now + tool.expires_after_seconds * 1000;
    p.row.on_behalf_of = run.on_behalf_of.clone();
    // The common path is one call: insert (unless the key was used) and, if
    // inserted, spend (unless over budget). The writer may have made it
    // already, for this and other requests together (`insert_of`).
    let inserted = match tx.inserted(&p.row.id) {
        Some(ahead) => {
            p.row.created_at = ahead.created_at;
            p.row.expires_at = ahead.expires_at;
            ahead.outcome
        }
        None => {
            let spend = runs::Spend {
                run_id: &run.run_id,
                steps: 1,
                usd: p.cost_usd,
                now,
                budgets: &route.budgets,
            };
            proposals::insert_and_spend(&mut tx.conn, &p.row, &spend).await?
        }
    };
    match inserted {
        proposals::Inserted::Paid => {}
        proposals::Inserted::Repeat => {
            if check_run {
                live_run(tx, &run).await?;
            }
            return replay_in(tx, &run, &tool_name, p.row).await;
        }
        proposals::Inserted::Unpaid => {
            // Not spent: take the proposal back and say why (revoked or
            // expired is 401, else a budget).
            proposals::delete(&mut tx.conn, &p.row.id).await?;
            let e = why_unpaid(tx, &run, &route.budgets, now, p.cost_usd).await?;
            return refuse(tx, &policy, &run, "proposal.refused", &tool_name, e).await;
        }
    }
    let mut ev = AuditDraft::new(run.actor(), "proposal.created")
        .tenant(run.tenant.clone())
        .tool(p.row.tool.clone())
        .subject(p.row.id.clone())
        .scope(run.scope())
        .details(serde_json::json!({ "approvals_required": p.row.approvals_required, "run": run.run_id }));
    ev.args_hash = Some(p.row.args_hash.clone());
    ev.idempotency_key = p.row.idempotency_key.clone();
    tx.audit(ev);
    let mut job = None;
    if p.decision == Decision::Allow {
        // Not gated by the policy (a read tool, or an explicit auto_approve).
        let approved = Approved {
            why: "policy: no approval required",
            approvals: &[],
            break_glass: false,
        };
        job = Some(release_approved(tx, &policy, &signer, &mut p.row, approved).await?);
    } else if p.row.status == Status::Previewing {
        // Reviewers are told once the executor has described the change.
        let pj = preview_job(&p.row, tool.preview_within_seconds, tool.max_attempts, now);
        jobs::insert(&mut tx.conn, &pj).await?;
        tx.notify(Notice::JobReady { env: pj.env.clone() });
        job = Some(pj);
    } else {
        announce_pending(tx, &p.row, &public_url).await?;
    }
    tx.notify(Notice::Proposal {
        id: p.row.id.clone(),
        tenant: p.row.tenant.clone(),
        status: p.row.status,
    });
    Ok(Outcome::Done(Created {
        row: p.row,
        replayed: false,
        job,
    }))
}

/// The idempotency key was used before: the same tool and args replay the
/// first proposal; anything else is a conflict, recorded.
async fn replay_in(tx: &mut Tx<'_>, run: &RunPrincipal, tool: &str, new: ProposalRow) -> Result<Outcome<Created>> {
    let key = new.idempotency_key.clone().unwrap_or_default();
    let scope = new.idempotency_scope.clone().unwrap_or_default();
    let existing = proposals::by_idempotency_key(&mut tx.conn, &scope, &run.run_id, &key)
        .await?
        .ok_or_else(|| Error::internal("an idempotency conflict without its proposal"))?;
    if existing.tool == new.tool && existing.args_hash == new.args_hash {
        if existing.run_id != run.run_id {
            // A retry from a new run of the same action: that run may follow it.
            proposals::record_replay(&mut tx.conn, &existing.id, &run.run_id).await?;
        }
        return Ok(Outcome::Done(Created {
            row: existing,
            replayed: true,
            job: None,
        }));
    }
    tx.audit(
        AuditDraft::new(run.actor(), "proposal.refused")
            .tenant(run.tenant.clone())
            .tool(tool)
            .scope(run.scope())
            .status("refused:idempotency_conflict")
            .details(serde_json::json!({ "idempotency_key": key, "existing": existing.id })),
    );
    Ok(Outcome::Refused(Error::IdempotencyConflict { existing: existing.id }))
}

async fn cancel_in(tx: &mut Tx<'_>, run: RunPrincipal, id: String) -> Result<ProposalRow> {
    let mut p = proposals::get_for_update(&mut tx.conn, &id)
        .await?
        .filter(|p| p.run_id == run.run_id && p.tenant == run.tenant)
        .ok_or(Error::NotFound)?;
    let now_ms = tx.now_ms();
    let undecided = matches!(p.status, Status::Pending | Status::Previewing);
    if !undecided || !proposals::close(&mut tx.conn, &id, p.status, Status::Cancelled, now_ms).await? {
        return Err(Error::InvalidTransition(format!(
            "only a pending proposal can be cancelled; this one is {}",
            p.status
        )));
    }
    if p.status == Status::Previewing {
        cancel_unclaimed(tx, &p.id).await?;
    }
    p.status = Status::Cancelled;
    tx.audit(
        AuditDraft::new(run.actor(), "proposal.cancelled")
            .tenant(run.tenant.clone())
            .tool(p.tool.clone())
            .subject(id.clone())
            .scope(run.scope()),
    );
    tx.notify(Notice::Proposal {
        id,
        tenant: p.tenant.clone(),
        status: p.status,
    });
    Ok(p)
}

impl Core {
    /// Propose an action. Answers the proposal and whether it was a replay of
    /// an earlier request with the same idempotency key.
    pub async fn propose(&self, run: &RunPrincipal, req: ProposeRequest) -> Result<(ProposalOut, bool)> {
        self.propose_checking(run, req, false).await
    }

    /// `propose` for a run admitted from what this process knew of it: the
    /// transaction checks that it is still live (revoked in another process
    /// a moment ago, it is refused with nothing stored), and a run found
    /// ended is remembered so, its next calls refused before any write.
    pub async fn propose_as(&self, run: &ProposingRun, req: ProposeRequest) -> Result<(ProposalOut, bool)> {
        let out = self.propose_checking(run.unchecked(), req, true).await;
        if let Err(Error::Unauthenticated(why)) = &out {
            self.known_runs.ended(run.run_id(), why);
        }
        out
    }

    async fn propose_checking(
        &self,
        run: &RunPrincipal,
        req: ProposeRequest,
        check_run: bool,
    ) -> Result<(ProposalOut, bool)> {
        let (n, insert) = match self.new_proposal(run, req, check_run).await {
            Ok(ready) => ready,
            // Answered before the transaction: a run that has ended hears
            // that instead, as it would have from a check before.
            Err(e) if check_run => return Err(self.confirm_live(run).await.err().unwrap_or(e)),
            Err(e) => return Err(e),
        };
        let c = match insert {
            Some(insert) => {
                self.store
                    .write_or_refuse_inserting(insert, move |tx| Box::pin(create_in(tx, n)))
                    .await?
            }
            None => self.store.write_or_refuse(move |tx| Box::pin(create_in(tx, n))).await?,
        };
        if c.replayed {
            return Ok((self.proposal_out(c.row).await?, true));
        }
        // A new proposal has no decisions yet, and its job (if released) is known.
        Ok((
            ProposalOut {
                review_url: self.review_url(&c.row.id),
                row: c.row,
                decisions: Vec::new(),
                job: c.job,
            },
            false,
        ))
    }

    /// Everything done before the transaction: the request checked, its
    /// diff computed, and the row the writer may insert ahead.
    async fn new_proposal(
        &self,
        run: &RunPrincipal,
        req: ProposeRequest,
        check_run: bool,
    ) -> Result<(NewProposal, Option<crate::store::Insert>)> {
        crate::ids::parse_tool_name(&req.tool).map_err(Error::BadRequest)?;
        let policy = self.policy();
        let mut prepared = prepare(&policy, run, &req);
        if let Ok(p) = &mut prepared {
            p.row.diff = self.diff_unless_refused(run, &policy, &p.row).await?;
        }
        // The writer inserts a batch's new proposals together, on both stores.
        let insert = prepared
            .as_ref()
            .ok()
            .and_then(|p| insert_of(&policy, run, &req.tool, p));
        let n = NewProposal {
            prepared,
            policy,
            run: run.clone(),
            tool: req.tool,
            public_url: self.settings.public_url.clone(),
            signer: self.receipt_signer()?,
            check_run,
        };
        Ok((n, insert))
    }

    /// The diff of an agent's preview. A small one is computed at once (it
    /// costs less than asking the store anything). A large one only when the
    /// proposal will be stored: not for a replay of an earlier request (its
    /// proposal has its diff) nor for a run that can no longer pay (it will
    /// be refused), and one at a time on the diff thread: an agent sending
    /// huge previews slows its own proposals, not everyone's requests.
    async fn diff_unless_refused(
        &self,
        run: &RunPrincipal,
        policy: &Policy,
        row: &ProposalRow,
    ) -> Result<Option<String>> {
        let (Some(before), Some(after)) = (&row.preview_before, &row.preview_after) else {
            return Ok(None);
        };
        if !diffs_inline(before, after) {
            let mut r = self.store.reader().await?;
            if let (Some(scope), Some(key)) = (&row.idempotency_scope, &row.idempotency_key) {
                if proposals::by_idempotency_key(&mut r.conn(), scope, &run.run_id, key)
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
            }
            let live = runs::get(&mut r.conn(), &run.run_id).await?;
            let route = route_of(policy, run)?;
            let payable = live.is_some_and(|l| {
                l.revoked_at.is_none() && super::runs::within_budget(&l, &route.budgets, self.now_ms(), 1, 0.0).is_ok()
            });
            if !payable {
                return Ok(None);
            }
        }
        diff_json(&self.diffs, before.clone(), after.clone()).await.map(Some)
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

    /// A proposal as its own run sees it (or a run that replayed it); any
    /// other id is not found.
    pub async fn proposal_for_run(&self, run: &RunPrincipal, id: &str) -> Result<ProposalOut> {
        let mut r = self.store.reader().await?;
        let row = proposals::get(&mut r.conn(), id)
            .await?
            .filter(|p| p.tenant == run.tenant && p.env == run.env)
            .ok_or(Error::NotFound)?;
        if row.run_id != run.run_id && !proposals::replayed_by(&mut r.conn(), &row.id, &run.run_id).await? {
            return Err(Error::NotFound);
        }
        drop(r);
        self.proposal_out(row).await
    }

    /// Wait until the proposal leaves `pending` or `timeout` passes; woken by
    /// the notice of its change.
    pub async fn wait_for_run(&self, run: &RunPrincipal, id: &str, timeout: Duration) -> Result<ProposalOut> {
        let timeout = timeout.min(Duration::from_secs(MAX_WAIT_SECS));
        let _slot = self.long_poll_slot(&run.run_id)?;
        let mut waiter = Waiter::new(self.subscribe(), timeout, self.recheck());
        loop {
            let out = self.proposal_for_run(run, id).await?;
            if !matches!(out.row.status, Status::Pending | Status::Previewing) || waiter.expired() {
                return Ok(out);
            }
            waiter
                .sleep(|n| matches!(n, Notice::Proposal { id: nid, .. } if nid == id))
                .await;
        }
    }

    /// A place for one more call of `run` held open while it waits for an
    /// outcome (the MCP gateway's calls), counted with its API long-polls:
    /// however it waits, a run holds at most so many connections open.
    pub fn wait_slot(&self, run: &RunPrincipal) -> Result<crate::limits::Slot> {
        self.long_poll_slot(&run.run_id)
    }

    /// Withdraw a pending proposal.
    pub async fn cancel_for_run(&self, run: &RunPrincipal, id: &str) -> Result<ProposalOut> {
        let (run, id) = (run.clone(), id.to_owned());
        let row = self.store.write(move |tx| Box::pin(cancel_in(tx, run, id))).await?;
        self.proposal_out(row).await
    }

    /// How often a long-poll looks again without a notice.
    pub(super) fn recheck(&self) -> Duration {
        Duration::from_millis(self.settings.wait_recheck_ms.max(1))
    }
}

/// Pending proposals whose time is up expire.
pub(super) async fn expire_pending(tx: &mut Tx<'_>, public_url: &str) -> Result<usize> {
    let now = tx.now_ms();
    let mut moved = 0;
    for p in proposals::pending_expired(&mut tx.conn, now, 200).await? {
        if !proposals::close(&mut tx.conn, &p.id, Status::Pending, Status::Expired, now).await? {
            continue;
        }
        tx.audit(
            AuditDraft::new("system", "proposal.expired")
                .tenant(p.tenant.clone())
                .tool(p.tool.clone())
                .subject(p.id.clone())
                .status("expired")
                .details(serde_json::json!({ "was": "pending" })),
        );
        let data = serde_json::json!({
            "proposal": p.id, "tool": p.tool, "tenant": p.tenant, "env": p.env,
            "review_url": review_url(public_url, &p.id),
        });
        super::notify::emit(tx, "proposal.expired", data).await?;
        tx.notify(Notice::Proposal {
            id: p.id,
            tenant: p.tenant,
            status: Status::Expired,
        });
        moved += 1;
    }
    Ok(moved)
}
