//! Runs: minted by an orchestrator's service key; checked on every agent call
//! for revocation, expiry and budgets; revoked by the circuit breaker after
//! too many denials in a row.

use super::known::{Known, Memory};
use super::{Core, RunPrincipal, ServicePrincipal};
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::ids::{new_id, parse_username};
use crate::lifecycle::{JobKind, JobState, Status};
use crate::policy::{Budgets, Decision, Denial, Policy, Route, ToolKind, Upstream};
use crate::store::queries::runs::{self, RunRow};
use crate::store::queries::{controls, jobs, proposals};
use crate::store::{Notice, Outcome, Tx};
use crate::tokens::RunClaims;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct MintRequest {
    pub route: String,
    pub ttl_seconds: Option<i64>,
    pub on_behalf_of: Option<String>,
}

#[derive(Clone)]
pub struct MintedRun {
    pub run_id: String,
    pub token: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub expires_at_ms: i64,
    pub allow_tools: Vec<String>,
    pub require_approval: Vec<String>,
    pub budgets: Budgets,
}

/// Written by hand: the token is a bearer credential, never printed (its
/// run id names it in logs).
impl std::fmt::Debug for MintedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedRun")
            .field("run_id", &self.run_id)
            .field("tenant", &self.tenant)
            .field("env", &self.env)
            .field("route", &self.route)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    pub tool: String,
    /// `allow` or `require_approval`.
    pub decision: &'static str,
}

/// What `check_read` answers the MCP gateway: forward the read now, or
/// make it a proposal.
#[derive(Debug, Clone)]
pub enum ReadCheck {
    /// Allowed outright and a read: checked (audited, one step counted);
    /// call the upstream with these args, as the policy checked them.
    Forward(ReadPermit),
    /// Not a read the route allows outright (it needs approval, is a
    /// write, is refused, or has no upstream): the proposal path decides,
    /// refuses or proposes. Nothing was counted.
    Propose,
}

/// A read the core let through, and where it goes.
#[derive(Debug, Clone)]
pub struct ReadPermit {
    pub check: CheckOutcome,
    pub upstream: Upstream,
    /// The tool's name on the upstream.
    pub remote_tool: String,
    /// The args in their normal form (`5.0` for an integer is `5`).
    pub args: serde_json::Value,
}

pub const DEFAULT_RUN_TTL_SECS: i64 = 300;
/// The longest lifetime a caller may ask for (the server then caps it).
pub const MAX_REQUESTED_TTL_SECS: i64 = 365 * 24 * 3600;

impl RunPrincipal {
    pub fn actor(&self) -> String {
        format!("run:{}", self.run_id)
    }
    pub fn scope(&self) -> String {
        format!("run:{}/{}/{}", self.tenant, self.env, self.route)
    }
}

/// A run token whose signature, expiry and claims are checked, of a run this
/// process has seen live, whose revocation is not checked yet: `propose`
/// takes it and checks that in the transaction that inserts (the charge
/// refuses a revoked or expired run; a replay or a refusal reads the run),
/// so a run's proposals after its first cost no read of the run before it.
/// Made only by `Core::authenticate_proposer`.
#[derive(Debug, Clone)]
pub struct ProposingRun(RunPrincipal);

impl ProposingRun {
    pub(super) fn new(run: RunPrincipal) -> ProposingRun {
        ProposingRun(run)
    }
    pub fn run_id(&self) -> &str {
        &self.0.run_id
    }
    pub(super) fn unchecked(&self) -> &RunPrincipal {
        &self.0
    }
}

/// How many runs a process keeps what it knows of (`known::Memory`).
pub(super) const KNOWN_RUNS_MAX: usize = 20_000;

/// What this process knows of the runs it has admitted, by run id.
pub(super) type KnownRuns = Memory<LiveRun>;

/// What never changes about a run once minted: its scope, the person it
/// acts for, its end.
#[derive(Debug, Clone)]
pub(super) struct LiveRun {
    tenant: String,
    env: String,
    on_behalf_of: Option<String>,
    expires_at: i64,
}

impl Known<LiveRun> {
    pub(super) fn of(row: RunRow) -> Known<LiveRun> {
        if row.revoked_at.is_some() {
            return Known::Ended("the run was revoked".into());
        }
        Known::Live(LiveRun {
            tenant: row.tenant,
            env: row.env,
            on_behalf_of: row.on_behalf_of,
            expires_at: row.expires_at,
        })
    }

    /// The caller a verified token names, if its run is live and is the
    /// run the token was signed for.
    pub(super) fn admit(self, claims: RunClaims, now: i64) -> Result<RunPrincipal> {
        match self {
            Known::Ended(why) => Err(Error::Unauthenticated(why)),
            Known::Live(run) => {
                if run.expires_at <= now || run.tenant != claims.tenant || run.env != claims.env {
                    return Err(Error::Unauthenticated("the run token has expired".into()));
                }
                Ok(RunPrincipal {
                    run_id: claims.run,
                    tenant: claims.tenant,
                    env: claims.env,
                    route: claims.route,
                    tools: claims.tools,
                    on_behalf_of: run.on_behalf_of,
                })
            }
        }
    }
}

/// The route a run was minted for, as the policy now says.
pub(super) fn route_of<'p>(policy: &'p Policy, run: &RunPrincipal) -> Result<&'p Route> {
    policy
        .route(&run.route)
        .ok_or_else(|| Error::Forbidden(format!("route {} is no longer in the policy", run.route)))
}

/// The policy's decision, narrowed by what the token grants.
pub(super) fn decide_for_run(policy: &Policy, route: &Route, run: &RunPrincipal, tool: &str) -> Result<Decision> {
    let d = policy.decide(route, tool);
    let deny = |kind: Denial| match kind {
        Denial::Denied => Error::ToolDenied {
            tool: tool.to_owned(),
            route: route.name.clone(),
        },
        Denial::NotAllowed => Error::ToolNotAllowed {
            tool: tool.to_owned(),
            route: route.name.clone(),
        },
    };
    match d {
        Decision::Deny(kind) => Err(deny(kind)),
        _ if !run.tools.iter().any(|t| t == tool) => Err(deny(Denial::NotAllowed)),
        d => Ok(d),
    }
}

/// The run row, if the run may still act: not revoked, not expired.
pub(super) async fn live_run(tx: &mut Tx<'_>, run: &RunPrincipal) -> Result<RunRow> {
    let row = runs::get(&mut tx.conn, &run.run_id)
        .await?
        .ok_or_else(|| Error::Unauthenticated("the run does not exist".into()))?;
    if row.revoked_at.is_some() {
        return Err(Error::Unauthenticated("the run was revoked".into()));
    }
    if row.expires_at <= tx.now_ms() {
        return Err(Error::Unauthenticated("the run token has expired".into()));
    }
    Ok(row)
}

/// Steps, seconds (the run's age) and dollars, against the route's budgets.
pub(super) fn within_budget(row: &RunRow, b: &Budgets, now: i64, steps: i64, usd: f64) -> Result<()> {
    let over = |budget: &str| Err(Error::BudgetExhausted { budget: budget.into() });
    if row.steps_used + steps > b.steps {
        return over("steps");
    }
    if now - row.created_at > b.seconds * 1000 {
        return over("seconds");
    }
    if row.usd_used + usd > b.usd + 1e-9 {
        return over("usd");
    }
    Ok(())
}

/// Why a charge the store refused could not be paid: the run is gone
/// (answered as 401) or one of its budgets is used up.
pub(super) async fn why_unpaid(tx: &mut Tx<'_>, run: &RunPrincipal, b: &Budgets, now: i64, usd: f64) -> Result<Error> {
    let row = live_run(tx, run).await?;
    Ok(within_budget(&row, b, now, 1, usd)
        .err()
        .unwrap_or_else(|| Error::internal("the run's budget check disagreed")))
}

/// Refuse what an agent asked for: record the refusal (and, for a denial the
/// agent provoked, count it toward the run's breaker) in this transaction,
/// which commits, and answer the error. A run that is no longer live is
/// answered as such instead (401), before anything is recorded.
pub(super) async fn refuse<T>(
    tx: &mut Tx<'_>,
    policy: &Policy,
    run: &RunPrincipal,
    action: &str,
    tool: &str,
    err: Error,
) -> Result<Outcome<T>> {
    if !matches!(err, Error::Unauthenticated(_)) {
        live_run(tx, run).await?;
    }
    tx.audit(
        AuditDraft::new(run.actor(), action)
            .tenant(run.tenant.clone())
            .tool(tool)
            .scope(run.scope())
            .subject(run.run_id.clone())
            .status(format!("refused:{}", err.code())),
    );
    if err.is_agent_denial() {
        let streak = runs::add_denial(&mut tx.conn, &run.run_id).await?;
        if streak >= policy.breakers.run_denials {
            let reason = format!("circuit breaker: {streak} denials in a row");
            if revoke_cascade(tx, &run.run_id, &run.tenant, "system", &reason).await? {
                tracing::warn!(run = %run.run_id, streak, "run revoked by its circuit breaker");
            }
        }
    }
    Ok(Outcome::Refused(err))
}

/// Revoke a run: its token stops at once, its proposals still open
/// (previewing, pending) and its jobs no executor holds yet are cancelled,
/// each audited with the reason. Running jobs finish; their heartbeats say
/// `cancel_requested`. False if the run was already revoked.
pub(super) async fn revoke_cascade(
    tx: &mut Tx<'_>,
    run_id: &str,
    tenant: &str,
    actor: &str,
    reason: &str,
) -> Result<bool> {
    let now = tx.now_ms();
    if !runs::revoke(&mut tx.conn, run_id, now, reason).await? {
        return Ok(false);
    }
    tx.audit(
        AuditDraft::new(actor, "run.revoked")
            .tenant(tenant)
            .subject(run_id)
            .status(if actor == super::SYSTEM_ACTOR { "breaker" } else { "ok" })
            .details(serde_json::json!({ "reason": reason })),
    );
    let why = format!("its run was revoked: {reason}");
    let mut cancelled = Vec::new();
    for p in proposals::open_of_run(&mut tx.conn, run_id).await? {
        if proposals::close(&mut tx.conn, &p.id, p.status, Status::Cancelled, now).await? {
            super::release::cancel_unclaimed(tx, &p.id).await?;
            cancelled.push((p.id, p.tool));
        }
    }
    for j in jobs::unclaimed_of_run(&mut tx.conn, run_id).await? {
        if j.kind == JobKind::Execute && jobs::set_state(&mut tx.conn, &j.id, j.state, JobState::Cancelled, now).await?
        {
            let from = j.state.proposal_status();
            proposals::transition(&mut tx.conn, &j.proposal_id, from, Status::Cancelled).await?;
            cancelled.push((j.proposal_id, j.tool));
        }
    }
    for (id, tool) in cancelled {
        tx.audit(
            AuditDraft::new(actor, "proposal.cancelled")
                .tenant(tenant)
                .tool(tool)
                .subject(id.clone())
                .status("cancelled")
                .details(serde_json::json!({ "reason": why, "run": run_id })),
        );
        tx.notify(Notice::Proposal {
            id,
            tenant: tenant.to_owned(),
            status: Status::Cancelled,
        });
    }
    Ok(true)
}

/// A check, with what was decided before the transaction.
#[derive(Clone)]
struct Check {
    policy: Arc<Policy>,
    run: RunPrincipal,
    tool: String,
    /// The args of the call about to be made, checked against the tool's
    /// schema (the MCP gateway's reads); None for the API's check.
    args: Option<serde_json::Value>,
}

async fn check_in(tx: &mut Tx<'_>, c: Check) -> Result<Outcome<CheckOutcome>> {
    let Check {
        policy,
        run,
        tool,
        args,
    } = c;
    let route = route_of(&policy, &run)?;
    let decision = match decide_for_run(&policy, route, &run, &tool) {
        Ok(d) => d,
        Err(e) => return refuse(tx, &policy, &run, "check", &tool, e).await,
    };
    if let (Some(args), Some(t)) = (&args, policy.tool(&tool)) {
        if let Err(fields) = t.args.validate(args) {
            let e = Error::InvalidArgs {
                tool: tool.clone(),
                fields,
            };
            return refuse(tx, &policy, &run, "check", &tool, e).await;
        }
    }
    // In the transaction that spends and audits the check: a switch turned
    // on before it commits is seen.
    if let Some(switch) = controls::in_force(tx).await?.refusing(&run.tenant, &run.route, &tool) {
        return refuse(tx, &policy, &run, "check", &tool, Error::Disabled { switch }).await;
    }
    let cost = policy.tool(&tool).map_or(0.0, |t| t.cost_usd);
    let now = tx.now_ms();
    let spend = runs::Spend {
        run_id: &run.run_id,
        steps: 1,
        usd: cost,
        now,
        budgets: &route.budgets,
    };
    if !runs::try_spend(&mut tx.conn, &spend).await? {
        let e = why_unpaid(tx, &run, &route.budgets, now, cost).await?;
        return refuse(tx, &policy, &run, "check", &tool, e).await;
    }
    let label = match decision {
        Decision::Allow => "allow",
        _ => "require_approval",
    };
    if route.audit_enabled || label != "allow" {
        tx.audit(
            AuditDraft::new(run.actor(), "check")
                .tenant(run.tenant.clone())
                .tool(tool.clone())
                .subject(run.run_id.clone())
                .scope(run.scope())
                .status(label),
        );
    }
    Ok(Outcome::Done(CheckOutcome { tool, decision: label }))
}

async fn read_in(tx: &mut Tx<'_>, c: Check) -> Result<Outcome<ReadCheck>> {
    let route = route_of(&c.policy, &c.run)?;
    let allowed = matches!(decide_for_run(&c.policy, route, &c.run, &c.tool), Ok(Decision::Allow));
    let target = c
        .policy
        .tool(&c.tool)
        .filter(|t| t.kind == ToolKind::Read)
        .and_then(|t| {
            let via = t.upstream.as_ref()?;
            let upstream = c.policy.upstreams.get(&via.upstream)?.clone();
            let args = t.args.normalized(c.args.as_ref()?);
            Some((upstream, via.tool.clone(), args))
        });
    let (true, Some((upstream, remote_tool, args))) = (allowed, target) else {
        return Ok(Outcome::Done(ReadCheck::Propose));
    };
    Ok(match check_in(tx, c).await? {
        Outcome::Done(check) => Outcome::Done(ReadCheck::Forward(ReadPermit {
            check,
            upstream,
            remote_tool,
            args,
        })),
        Outcome::Refused(e) => Outcome::Refused(e),
    })
}

async fn record_mint(tx: &mut Tx<'_>, row: RunRow, actor: String, scope: String) -> Result<()> {
    runs::insert(&mut tx.conn, &row).await?;
    tx.audit(
        AuditDraft::new(actor, "run.minted")
            .tenant(row.tenant.clone())
            .subject(row.id.clone())
            .scope(scope)
            .details(serde_json::json!({
                "route": row.route,
                "on_behalf_of": row.on_behalf_of,
                "expires_at": row.expires_at,
            })),
    );
    Ok(())
}

async fn revoke_in(tx: &mut Tx<'_>, actor: String, run_id: String, reason: String) -> Result<()> {
    let row = runs::get(&mut tx.conn, &run_id).await?.ok_or(Error::NotFound)?;
    if !revoke_cascade(tx, &run_id, &row.tenant, &actor, &reason).await? {
        return Err(Error::InvalidTransition(format!("run {run_id} is already revoked")));
    }
    Ok(())
}

impl Core {
    pub async fn mint_run(&self, svc: &ServicePrincipal, req: MintRequest) -> Result<MintedRun> {
        let policy = self.policy();
        let route = policy.route(&req.route).ok_or_else(|| Error::Unprocessable {
            code: "unknown_route",
            message: format!("route {:?} is not in the policy", req.route),
        })?;
        let ttl = req.ttl_seconds.unwrap_or(DEFAULT_RUN_TTL_SECS);
        if !(1..=MAX_REQUESTED_TTL_SECS).contains(&ttl) {
            return Err(Error::BadRequest(format!(
                "ttl_seconds must be between 1 and {MAX_REQUESTED_TTL_SECS} (a year); the server caps it at {}",
                self.settings.max_run_ttl_secs
            )));
        }
        let ttl = ttl.min(self.settings.max_run_ttl_secs);
        let on_behalf_of = req
            .on_behalf_of
            .map(|p| parse_username(&p).map_err(|e| Error::BadRequest(format!("on_behalf_of: {e}"))))
            .transpose()?;
        let allow_tools: Vec<String> = route.allow_tools.difference(&route.deny_tools).cloned().collect();
        let require_approval: Vec<String> = allow_tools
            .iter()
            .filter(|t| matches!(policy.decide(route, t), Decision::RequireApproval { .. }))
            .cloned()
            .collect();
        let now = self.now_ms();
        let row = RunRow {
            id: new_id("run"),
            tenant: svc.tenant.clone(),
            env: svc.env.clone(),
            route: route.name.clone(),
            on_behalf_of,
            service_key_id: svc.key_id.clone(),
            created_at: now,
            expires_at: now + ttl * 1000,
            steps_used: 0,
            usd_used: 0.0,
            denials_in_row: 0,
            revoked_at: None,
            revoked_reason: None,
        };
        let token = self.sign_run_token(&RunClaims {
            run: row.id.clone(),
            tenant: row.tenant.clone(),
            env: row.env.clone(),
            route: row.route.clone(),
            tools: allow_tools.clone(),
            exp: row.expires_at,
        })?;
        let minted = MintedRun {
            run_id: row.id.clone(),
            token,
            tenant: row.tenant.clone(),
            env: row.env.clone(),
            route: row.route.clone(),
            expires_at_ms: row.expires_at,
            allow_tools,
            require_approval,
            budgets: route.budgets,
        };
        let actor = format!("key:{}", svc.key_id);
        let scope = format!("service:{}/{}", svc.tenant, svc.env);
        self.store
            .write(move |tx| Box::pin(record_mint(tx, row, actor, scope)))
            .await?;
        Ok(minted)
    }

    /// May the agent call `tool` directly? Audited; counts one step.
    pub async fn check(&self, run: &RunPrincipal, tool: &str) -> Result<CheckOutcome> {
        self.check_with(run, tool, None).await
    }

    /// A check of a call about to be made with `args` (the MCP gateway's
    /// reads): as `check`, and args that fail the tool's schema are refused
    /// and counted like a proposal's.
    pub async fn check_call(&self, run: &RunPrincipal, tool: &str, args: &serde_json::Value) -> Result<CheckOutcome> {
        self.check_with(run, tool, Some(args.clone())).await
    }

    /// The MCP gateway's question for a call: is it a read the route lets
    /// through without review? Decided here, in the same transaction that
    /// counts and audits it, from the policy in force then, so no policy
    /// change between the gateway's listing and the call forwards a call
    /// that needs people.
    pub async fn check_read(&self, run: &RunPrincipal, tool: &str, args: &serde_json::Value) -> Result<ReadCheck> {
        crate::ids::parse_tool_name(tool).map_err(Error::BadRequest)?;
        let c = Check {
            policy: self.policy(),
            run: run.clone(),
            tool: tool.to_owned(),
            args: Some(args.clone()),
        };
        self.store.write_or_refuse(move |tx| Box::pin(read_in(tx, c))).await
    }

    async fn check_with(
        &self,
        run: &RunPrincipal,
        tool: &str,
        args: Option<serde_json::Value>,
    ) -> Result<CheckOutcome> {
        crate::ids::parse_tool_name(tool).map_err(Error::BadRequest)?;
        let c = Check {
            policy: self.policy(),
            run: run.clone(),
            tool: tool.to_owned(),
            args,
        };
        self.store.write_or_refuse(move |tx| Box::pin(check_in(tx, c))).await
    }

    /// The latest runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        runs::recent(&mut self.store.reader().await?.conn(), limit).await
    }

    /// Revoke a run: its token stops working at once, and its work not yet
    /// begun is cancelled.
    pub async fn revoke_run(&self, by: &super::Admin, run_id: &str, reason: &str) -> Result<()> {
        let (actor, id, reason) = (by.actor().to_owned(), run_id.to_owned(), reason.to_owned());
        self.store
            .write(move |tx| Box::pin(revoke_in(tx, actor, id, reason)))
            .await?;
        self.known_runs.ended(run_id, "the run was revoked");
        Ok(())
    }

    /// Whether a run admitted for `propose` is live, read now: an answer
    /// other than success to a `ProposingRun` is given only after this (or
    /// the transaction's own look at the run), so an ended run hears 401.
    pub async fn confirm_proposer(&self, run: &ProposingRun) -> Result<()> {
        self.confirm_live(run.unchecked()).await
    }

    pub(super) async fn confirm_live(&self, run: &RunPrincipal) -> Result<()> {
        self.known_runs.count_read();
        let row = runs::get(&mut self.store.reader().await?.conn(), &run.run_id).await?;
        let ended = match row {
            None => "the run does not exist",
            Some(r) if r.revoked_at.is_some() => "the run was revoked",
            Some(r) if r.expires_at <= self.now_ms() => "the run token has expired",
            Some(_) => return Ok(()),
        };
        self.known_runs.ended(&run.run_id, ended);
        Err(Error::Unauthenticated(ended.into()))
    }

    /// How many times this process read a run's row to admit its token;
    /// a run's later proposals are admitted from what it learned then.
    pub fn run_rows_read(&self) -> u64 {
        self.known_runs.reads()
    }
}
