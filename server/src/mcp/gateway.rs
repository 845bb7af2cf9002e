//! The MCP server agents connect to: `tools/list` from the run's route and
//! `tools/call` through the same core use-cases as the JSON API: reads are
//! checked (audited, budgeted) and forwarded; everything else is a proposal
//! that people review, performed once by the upstream executor.

use super::outcome;
use super::upstream::{CallFailure, Upstreams};
use countersign_core::audit::{canonical_json, hash_parts};
use countersign_core::lifecycle::Status;
use countersign_core::policy::{Decision, Policy, Tool as PolicyTool, ToolKind};
use countersign_core::service::{CallOutcome, Core, ProposeRequest, ReadCheck, RunPrincipal, Via};
use countersign_core::Notice;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeRequestParams,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The `_meta` key an agent may send its own idempotency key under.
pub const IDEMPOTENCY_META: &str = "countersign/idempotency_key";
/// The `_meta` key an agent may send the proposal's reason under.
pub const REASON_META: &str = "countersign/reason";
/// The largest upstream answer to a read passed on to an agent, serialized.
pub const MAX_READ_ANSWER: usize = 1024 * 1024;
/// Reads forwarded at once, over all sessions: beyond that an agent is
/// told to call again, and no upstream is flooded through the gate.
pub const MAX_READS_IN_FLIGHT: usize = 64;
/// How often a waiting call tells the client it still waits.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// One MCP session's handler. Each request is authorised by its own run
/// token (the middleware puts its run in the request); a session stays with
/// the run that opened it.
#[derive(Clone)]
pub struct Gateway {
    core: Arc<Core>,
    upstreams: Arc<Upstreams>,
    run_id: Arc<OnceLock<String>>,
    /// Places for forwarded reads, shared by every session.
    reads: Arc<Semaphore>,
    /// Cancelled when the session's handler is dropped (the session ended).
    ended: CancellationToken,
    _ends: Arc<DropGuard>,
}

/// The idempotency key of a call without one of its own: the same run, tool
/// and args give the same key, so a repeated call finds its proposal.
pub fn derived_idempotency_key(run_id: &str, tool: &str, args: &Value) -> String {
    let h = hash_parts(&["countersign-mcp-v1", run_id, tool, &canonical_json(args)]);
    // Short enough (24 hex characters) never to look like a secret.
    format!("mcp:{tool}:{}", &h[..24])
}

/// What the gate adds to a tool's description.
fn gate_note(tool: &PolicyTool, decision: Decision) -> String {
    let irreversible = if tool.is_irreversible() { " Irreversible." } else { "" };
    match decision {
        Decision::RequireApproval { approvals: 1 } => format!("Needs approval by one person.{irreversible}"),
        Decision::RequireApproval { approvals: 2 } => {
            format!("Needs approval by two different people.{irreversible}")
        }
        Decision::RequireApproval { approvals } => {
            format!("Needs approval by {approvals} different people.{irreversible}")
        }
        Decision::Allow if tool.kind == ToolKind::Read => "Checked and audited by countersign.".to_owned(),
        Decision::Allow => format!("Approved by policy without review; performed once by countersign.{irreversible}"),
        Decision::Deny(_) => String::new(),
    }
}

fn schema_object(tool: &PolicyTool) -> JsonObject {
    let mut schema = tool.args.json_schema();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    match schema {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}

impl Gateway {
    pub fn new(core: Arc<Core>, upstreams: Arc<Upstreams>) -> Gateway {
        Gateway::sharing(core, upstreams, Arc::new(Semaphore::new(MAX_READS_IN_FLIGHT)))
    }

    fn sharing(core: Arc<Core>, upstreams: Arc<Upstreams>, reads: Arc<Semaphore>) -> Gateway {
        let ended = CancellationToken::new();
        Gateway {
            core,
            upstreams,
            reads,
            run_id: Arc::default(),
            _ends: Arc::new(ended.clone().drop_guard()),
            ended,
        }
    }

    /// A handler for a new session.
    pub fn for_session(&self) -> Gateway {
        Gateway::sharing(self.core.clone(), self.upstreams.clone(), self.reads.clone())
    }

    /// The run of this request, put there by the authentication middleware.
    fn run_of(&self, ctx: &RequestContext<RoleServer>) -> Result<RunPrincipal, ErrorData> {
        let run = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<RunPrincipal>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("the request carries no authenticated run", None))?;
        let bound = self.run_id.get_or_init(|| run.run_id.clone());
        if *bound != run.run_id {
            return Err(ErrorData::invalid_request(
                "this MCP session belongs to another run: initialize a new session",
                None,
            ));
        }
        Ok(run)
    }

    /// The route's tools as MCP tools: allowed for this run and performed on an upstream.
    async fn tools_for(&self, run: &RunPrincipal, policy: &Policy) -> Vec<Tool> {
        let Some(route) = policy.route(&run.route) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in &run.tools {
            let decision = policy.decide(route, name);
            let (Some(tool), false) = (policy.tool(name), matches!(decision, Decision::Deny(_))) else {
                continue;
            };
            let Some(via) = &tool.upstream else { continue };
            let Some(up) = policy.upstreams.get(&via.upstream) else {
                continue;
            };
            let own = self
                .upstreams
                .descriptions(up)
                .await
                .and_then(|d| d.get(&via.tool).cloned())
                .filter(|d| !d.trim().is_empty());
            let note = gate_note(tool, decision);
            let description = match own {
                Some(d) => format!("{}\n\n{note}", d.trim_end()),
                None => note,
            };
            let read_only = tool.kind == ToolKind::Read && decision == Decision::Allow;
            let annotations = ToolAnnotations::new()
                .read_only(read_only)
                .destructive(tool.destructive || tool.is_irreversible());
            out.push(Tool::new(name.clone(), description, Arc::new(schema_object(tool))).with_annotations(annotations));
        }
        out
    }

    /// A read: the core decides whether the route lets it through without
    /// review; if so it is checked (audited, one step) and forwarded, the
    /// upstream's result as it came; if not, it is proposed like any call.
    async fn read(
        &self,
        run: &RunPrincipal,
        name: &str,
        args: Value,
        req_meta: &JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let permit = match self.core.check_read(run, name, &args).await {
            Ok(ReadCheck::Forward(permit)) => permit,
            Ok(ReadCheck::Propose) => return self.propose(run, name, args, req_meta, ctx).await,
            Err(e) => return outcome::refusal(&e, name),
        };
        let args = match permit.args {
            Value::Object(m) => m,
            _ => JsonObject::new(),
        };
        // One upstream serves every tenant and env of the policy: it is told
        // whose call this is.
        let mut meta = JsonObject::new();
        meta.insert("countersign/run".into(), json!(run.run_id));
        meta.insert("countersign/tenant".into(), json!(run.tenant));
        meta.insert("countersign/env".into(), json!(run.env));
        let Ok(_read) = self.reads.clone().try_acquire_owned() else {
            let e = countersign_core::Error::RateLimited { retry_after_secs: 1 };
            return outcome::refusal(&e, name);
        };
        match self
            .upstreams
            .call(&permit.upstream, &permit.remote_tool, args, Some(meta))
            .await
        {
            Ok(result) => {
                let size = serde_json::to_vec(&result).map_or(usize::MAX, |v| v.len());
                if size > MAX_READ_ANSWER {
                    return outcome::gateway_error(
                        "upstream_error",
                        format!(
                            "upstream {}'s answer to {name} was {size} bytes, more than the {MAX_READ_ANSWER} the \
                             gate passes on. Ask for less (a narrower query, a page).",
                            permit.upstream.name
                        ),
                    );
                }
                result
            }
            Err(CallFailure::Refused(e)) => outcome::gateway_error("upstream_error", format!("{}.", e.for_agent())),
            Err(CallFailure::NotSent(e) | CallFailure::NoAnswer(e)) => {
                tracing::warn!(upstream = %permit.upstream.name, error = %e, "a read's upstream did not answer");
                outcome::gateway_error(
                    "upstream_unavailable",
                    format!("{}. Try again later, or tell a person if it lasts.", e.for_agent()),
                )
            }
        }
    }

    /// A call that needs a proposal: made exactly as the API makes one,
    /// then waited on.
    async fn propose(
        &self,
        run: &RunPrincipal,
        name: &str,
        args: Value,
        req_meta: &JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let key = match req_meta.get(IDEMPOTENCY_META) {
            Some(Value::String(k)) => k.clone(),
            Some(_) => {
                let e = countersign_core::Error::InvalidArgs {
                    tool: name.to_owned(),
                    fields: [(format!("_meta.{IDEMPOTENCY_META}"), "must be a string".to_owned())].into(),
                };
                return outcome::refusal(&e, name);
            }
            None => {
                // One value, one key: `5.0` and `5` for an integer are the same call.
                let canonical = match self.core.policy().tool(name) {
                    Some(t) => t.args.normalized(&args),
                    None => args.clone(),
                };
                derived_idempotency_key(&run.run_id, name, &canonical)
            }
        };
        let req = ProposeRequest {
            tool: name.to_owned(),
            args,
            idempotency_key: Some(key),
            reason: req_meta.get(REASON_META).and_then(Value::as_str).map(str::to_owned),
            preview: None,
            via: Via::Mcp,
        };
        let out = match self.core.propose(run, req).await {
            Ok((out, _replayed)) => out,
            Err(e) => return outcome::refusal(&e, name),
        };
        self.wait(run, &out.row.id, ctx).await
    }

    /// Wait for the proposal's outcome up to the policy's `[mcp]
    /// wait_seconds`, telling a client that asked for progress how it goes.
    async fn wait(&self, run: &RunPrincipal, id: &str, ctx: &RequestContext<RoleServer>) -> CallToolResult {
        // Held while waiting; a run with too many calls open is told to
        // call again (its proposal stands, and the same call finds it).
        let _slot = match self.core.wait_slot(run) {
            Ok(slot) => slot,
            Err(e) => return outcome::refusal(&e, id),
        };
        let wait = Duration::from_secs(self.core.policy().mcp.wait_seconds.max(0) as u64);
        let deadline = Instant::now() + wait;
        let token = ctx.meta.get_progress_token();
        let mut notices = self.core.subscribe();
        let mut told: Option<(String, Instant)> = None;
        let mut step = 0.0;
        loop {
            let out = match self.core.proposal_for_run(run, id).await {
                Ok(out) => out,
                Err(e) => return outcome::refusal(&e, id),
            };
            if out.row.status == Status::Succeeded {
                return self.succeeded(run, &out).await;
            }
            if out.row.status == Status::Expired {
                // Expired after its upstream call was sent: not "not
                // performed", but unknown.
                match self.core.upstream_call_for_run(run, id).await {
                    Ok(Some(call)) => match call.outcome {
                        None | Some(CallOutcome::Unknown) => {
                            return outcome::expired_unknown(&out, &call.upstream, &call.tool);
                        }
                        // Answered, though after the approval ran out: it
                        // happened, and the agent gets what came back.
                        Some(CallOutcome::Succeeded | CallOutcome::Failed) => {
                            match call
                                .result
                                .and_then(|v| serde_json::from_value::<CallToolResult>(v).ok())
                            {
                                Some(r) => return r,
                                None => return outcome::expired_unknown(&out, &call.upstream, &call.tool),
                            }
                        }
                        Some(CallOutcome::NotSent) => {}
                    },
                    Ok(None) => {}
                    Err(e) => return outcome::refusal(&e, id),
                }
            }
            if let Some(ended) = outcome::ended(&out) {
                return ended;
            }
            let now = Instant::now();
            if now >= deadline || ctx.ct.is_cancelled() {
                return outcome::pending(&out);
            }
            if let Some(token) = &token {
                let message = outcome::progress_message(&out);
                let due = told
                    .as_ref()
                    .is_none_or(|(m, at)| *m != message || at.elapsed() >= PROGRESS_EVERY);
                if due {
                    step += 1.0;
                    let p = ProgressNotificationParam::new(token.clone(), step).with_message(message.clone());
                    if let Err(e) = ctx.peer.notify_progress(p).await {
                        tracing::debug!(error = %e, "a progress notification was not delivered");
                    }
                    told = Some((message, Instant::now()));
                }
            }
            let until = deadline.min(Instant::now() + PROGRESS_EVERY);
            // Woken by this proposal's change; the timer covers a lost notice.
            tokio::select! {
                _ = ctx.ct.cancelled() => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = async {
                    loop {
                        match notices.recv().await {
                            Ok(Notice::Proposal { id: nid, .. }) if nid == id => return,
                            Ok(Notice::Missed) => return,
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    }
                } => {}
            }
        }
    }

    /// A performed proposal: the upstream's own result, as it came (the
    /// agent's, which sent the args), until its personal data is erased.
    async fn succeeded(&self, run: &RunPrincipal, out: &countersign_core::service::ProposalOut) -> CallToolResult {
        match self.core.upstream_call_for_run(run, &out.row.id).await {
            Ok(Some(call)) => {
                if let Some(r) = call
                    .result
                    .and_then(|v| serde_json::from_value::<CallToolResult>(v).ok())
                {
                    return r;
                }
                if let Some(at) = out.row.pii_erased_at {
                    return outcome::performed_answer_erased(out, at);
                }
            }
            Ok(None) => {}
            Err(e) => return outcome::refusal(&e, &out.row.tool),
        }
        // Performed by something other than the upstream executor: its report.
        let result = out.job.as_ref().and_then(|j| j.result.clone()).unwrap_or_default();
        let mut r = CallToolResult::success(vec![ContentBlock::text(format!("Done. {result}"))]);
        r.structured_content = serde_json::from_str(&result).ok();
        r
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("countersign", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "countersign gates these tools: reads are checked and audited; other calls wait for people to \
                 approve, and are performed once. A refused or ended call is an error result with a code; a \
                 call still waiting says so, and the same call again returns its outcome.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        // Binds the session to the run whose token opened it.
        self.run_of(&context)?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    /// From now until the session ends, a new policy tells the client that
    /// its tools list changed.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut changes = self.core.policy_changes();
        changes.mark_unchanged();
        let ended = self.ended.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = ended.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                if context.peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let run = self.run_of(&context)?;
        let policy = self.core.policy();
        Ok(ListToolsResult::with_all_items(self.tools_for(&run, &policy).await))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let run = self.run_of(&context)?;
        let name = request.name.to_string();
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        // rmcp hands the request's `_meta` over in the context, not in the
        // params.
        let mut req_meta = context.meta.0 .0.clone();
        if let Some(m) = &request.meta {
            req_meta.extend(m.0 .0.clone());
        }
        let policy = self.core.policy();
        let decision = policy.route(&run.route).map(|r| policy.decide(r, &name));
        let offered = run.tools.contains(&name) && !matches!(decision, None | Some(Decision::Deny(_)));
        let result = match policy.tool(&name) {
            Some(t) if offered && t.upstream.is_none() => outcome::gateway_error(
                "no_upstream",
                format!("{name} is not offered through MCP (it has no upstream): use the tools listed."),
            ),
            // The core decides, as it counts the call, whether a read goes
            // through unreviewed.
            Some(t) if offered && t.kind == ToolKind::Read => self.read(&run, &name, args, &req_meta, &context).await,
            // Denied, not allowed, unknown, or gated: the proposal path
            // refuses (audited, counted) or proposes, as the API does.
            _ => self.propose(&run, &name, args, &req_meta, &context).await,
        };
        Ok(result.into())
    }
}
