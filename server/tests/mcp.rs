//! The MCP gateway, black-box on SQLite and PostgreSQL: an rmcp client as
//! the agent, an rmcp upstream in the test counting what it is sent, the
//! app on port 0 with a manual clock. Reviewers decide through the core.

mod common;
#[path = "support/mcp_upstream.rs"]
mod mcp_upstream;

use common::*;
use countersign_core::controls::Scope;
use countersign_core::lifecycle::{Status, Verdict};
use countersign_core::policy::{load_policy, Policy};
use countersign_core::service::{Admin, DecideRequest};
use countersign_core::testing::TestDb;
use mcp_upstream::TestUpstream;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, NumberOrString, ProgressNotificationParam, ProgressToken,
    RequestMetaObject,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const UPSTREAM_TOKEN: &str = "up-secret-7f3a9c2e5b";

pub fn policy_src(upstream_url: &str, token_file: &Path, wait_seconds: i64) -> String {
    format!(
        r#"
[upstreams.tickets]
url = "{upstream_url}"
headers = {{ Authorization = "file:{token}" }}
timeout_seconds = 5

[mcp]
wait_seconds = {wait_seconds}

[tools."ticket.search"]
kind = "read"
upstream = "tickets"
upstream_tool = "search"
args.query = {{ type = "string", max_len = 100 }}

[tools."ticket.close"]
kind = "write"
upstream = "tickets"
upstream_tool = "close_ticket"
undo = "Reopen with ticket.reopen"
blast_radius = "1 ticket of {{tenant}}"
max_attempts = 2
expires_after_seconds = 300
args.ticket_id = {{ type = "string", pattern = "^T-[0-9]{{1,10}}$" }}
args.reason = {{ type = "string", max_len = 200, required = false }}

[tools."refund.create"]
kind = "write"
destructive = true
upstream = "tickets"
upstream_tool = "refund"
undo = "irreversible"
blast_radius = "Moves {{amount_cents}} cents"
args.amount_cents = {{ type = "integer", min = 1, max = 100000 }}
args.currency = {{ type = "enum", values = ["EUR", "USD"] }}

[tools."db.write"]
kind = "write"
upstream = "tickets"
upstream_tool = "wipe"
undo = "irreversible"
blast_radius = "everything"

[tools."kb.lookup"]
kind = "read"
args.q = {{ type = "string", max_len = 10 }}

[routes."support"]
allow_tools = ["ticket.search", "ticket.close", "refund.create", "kb.lookup"]
deny_tools = ["db.write"]
require_approval = ["ticket.close", "refund.create"]
budgets = {{ steps = 50, seconds = 86400, usd = 10.0 }}

[routes."tiny"]
allow_tools = ["ticket.search"]
budgets = {{ steps = 1, seconds = 86400, usd = 10.0 }}
"#,
        token = token_file.display()
    )
}

/// The app, an upstream, and the file the upstream's credential is read from.
struct Gate {
    t: TestApp,
    up: Option<TestUpstream>,
    dir: PathBuf,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn gate(db: &TestDb, wait_seconds: i64) -> Gate {
    let up = TestUpstream::start(0, UPSTREAM_TOKEN).await;
    let dir = std::env::temp_dir().join(format!("countersign-mcp-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("tickets-token");
    // A secret manager's file, with its trailing newline.
    std::fs::write(&token_file, format!("Bearer {UPSTREAM_TOKEN}\n")).unwrap();
    let policy: Policy = load_policy(&policy_src(&up.url(), &token_file, wait_seconds)).unwrap();
    let t = spawn_with(db, policy, |c| {
        c.check_upstreams_at_start = false;
        c.upstream_lease = Duration::from_secs(30);
    })
    .await;
    Gate { t, up: Some(up), dir }
}

impl Gate {
    fn upstream(&self) -> &mcp_upstream::UpstreamState {
        &self.up.as_ref().expect("the upstream runs").state
    }
}

/// The agent's side: progress messages as they come.
#[derive(Clone, Default)]
struct Agent {
    progress: Arc<Mutex<Vec<String>>>,
    lists_changed: Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientHandler for Agent {
    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.lists_changed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _ctx: NotificationContext<RoleClient>) {
        self.progress.lock().unwrap().push(p.message.unwrap_or_default());
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }
}

/// The agent's HTTP client speaks TLS with rustls on ring, as the server does.
fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn connect(t: &TestApp, token: &str) -> (RunningService<RoleClient, Agent>, Agent) {
    tls();
    let agent = Agent::default();
    let cfg = StreamableHttpClientTransportConfig::with_uri(t.url("/mcp")).auth_header(token);
    let client = agent
        .clone()
        .serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .expect("the agent connects");
    (client, agent)
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    let Value::Object(m) = args else {
        panic!("args are an object")
    };
    CallToolRequestParams::new(name.to_owned()).with_arguments(m)
}

fn with_progress(mut p: CallToolRequestParams) -> CallToolRequestParams {
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(NumberOrString::String("p1".into())));
    p.meta = Some(meta);
    p
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn structured(r: &CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or(Value::Null)
}

/// The one open proposal of a run, once the gateway has made it.
async fn open_proposal(t: &TestApp, run_id: &str) -> String {
    for _ in 0..200 {
        let open = t.inspect().open_proposals_of_run(run_id).await.unwrap();
        if let Some(p) = open.first() {
            return p.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway made no proposal");
}

async fn decide(t: &TestApp, who: &countersign_core::service::Person, id: &str, verdict: Verdict, comment: &str) {
    let hash = t.inspect().proposal(id).await.unwrap().unwrap().content_hash;
    let req = DecideRequest {
        proposal_id: id.into(),
        verdict,
        comment: comment.into(),
        content_hash: hash,
        view_ms: Some(5000),
        passkey: None,
    };
    t.core().decide(who, req).await.unwrap();
}

async fn list_names(client: &RunningService<RoleClient, Agent>) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

async fn tools_list_shows_only_allowed_upstream_tools_with_their_schemas(db: &TestDb) {
    let g = gate(db, 30).await;
    let (_, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, agent) = connect(&g.t, &token).await;
    let info = client.peer_info().expect("initialized");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("countersign"));
    assert!(info.capabilities.tools.is_some());

    let tools = client.list_all_tools().await.unwrap();
    let names = list_names(&client).await;
    assert_eq!(
        names,
        ["refund.create", "ticket.close", "ticket.search"],
        "denied (db.write) and upstream-less (kb.lookup) tools are never listed"
    );
    let close = tools.iter().find(|t| t.name == "ticket.close").unwrap();
    let d = close.description.as_deref().unwrap();
    assert!(
        d.starts_with("Close a ticket."),
        "the upstream's own description first: {d}"
    );
    assert!(d.ends_with("Needs approval by one person."), "{d}");
    let refund = tools.iter().find(|t| t.name == "refund.create").unwrap();
    assert!(
        refund
            .description
            .as_deref()
            .unwrap()
            .ends_with("Needs approval by two different people. Irreversible."),
        "{:?}",
        refund.description
    );
    let schema = Value::Object((*close.input_schema).clone());
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"], json!(["ticket_id"]));
    assert_eq!(
        schema["properties"]["ticket_id"]["allOf"][0]["pattern"],
        "^T-[0-9]{1,10}$"
    );
    assert_eq!(schema["properties"]["reason"]["maxLength"], 200);
    let refund_schema = Value::Object((*refund.input_schema).clone());
    assert_eq!(refund_schema["properties"]["amount_cents"]["minimum"], 1);
    assert_eq!(refund_schema["properties"]["amount_cents"]["maximum"], 100000);
    assert_eq!(refund_schema["properties"]["currency"]["enum"], json!(["EUR", "USD"]));
    // The schema says what the gate accepts, to an independent validator.
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(v.is_valid(&json!({ "ticket_id": "T-12" })));
    assert!(!v.is_valid(&json!({ "ticket_id": "X-12" })));
    assert!(!v.is_valid(&json!({ "ticket_id": "T-12", "admin": true })));
    // The upstream's credential reaches no agent.
    let listed = serde_json::to_string(&tools).unwrap();
    assert!(!listed.contains(UPSTREAM_TOKEN));

    // A run on another route sees that route's tools.
    let (_, tiny) = g.t.run("acme", "prod", "tiny", None).await;
    let (other, _) = connect(&g.t, &tiny).await;
    assert_eq!(list_names(&other).await, ["ticket.search"]);

    // A new policy: the client is told its list changed, and the list follows it.
    assert!(info.capabilities.tools.as_ref().and_then(|t| t.list_changed) == Some(true));
    let src = policy_src(&g.up.as_ref().unwrap().url(), &g.dir.join("tickets-token"), 30)
        .replace(r#""refund.create", "kb.lookup"]"#, r#""kb.lookup"]"#)
        .replace(r#"["ticket.close", "refund.create"]"#, r#"["ticket.close"]"#);
    g.t.core()
        .replace_policy(load_policy(&src).unwrap(), "cli")
        .await
        .unwrap();
    for _ in 0..200 {
        if agent.lists_changed.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.lists_changed.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(list_names(&client).await, ["ticket.close", "ticket.search"]);
}

async fn a_read_passes_through_is_audited_and_counts_a_step(db: &TestDb) {
    let g = gate(db, 30).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let r = client
        .call_tool(call("ticket.search", json!({ "query": "printer" })))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    assert_eq!(
        text(&r),
        "found 1 ticket for printer",
        "the upstream's result as it came"
    );
    assert_eq!(structured(&r), json!({ "hits": [{ "id": "T-1", "title": "printer" }] }));
    let calls = g.upstream().calls_of("search");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].args, json!({ "query": "printer" }));
    assert_eq!(g.upstream().unauthorized.load(std::sync::atomic::Ordering::SeqCst), 0);
    let events = g.t.inspect().audit_events().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "check" && e.tool.as_deref() == Some("ticket.search") && e.result_status == "allow"),
        "the read was checked and audited"
    );
    assert_eq!(g.t.inspect().run(&run_id).await.unwrap().unwrap().steps_used, 1);
    // Invalid args for a read are refused before the upstream sees them.
    let bad = client
        .call_tool(call("ticket.search", json!({ "query": "x".repeat(101) })))
        .await
        .unwrap();
    assert_eq!(bad.is_error, Some(true));
    assert_eq!(structured(&bad)["code"], "invalid_args");
    assert_eq!(g.upstream().calls_of("search").len(), 1);
    // A tool allowed but without upstream is not offered here.
    let none = client.call_tool(call("kb.lookup", json!({ "q": "a" }))).await.unwrap();
    assert_eq!(structured(&none)["code"], "no_upstream");
}

async fn a_write_waits_for_approval_then_runs_once_and_returns_the_upstreams_result(db: &TestDb) {
    let g = gate(db, 30).await;
    let bob = g.t.person("bob", &["reviewer"], &["acme"]).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", Some("alice")).await;
    let (client, agent) = connect(&g.t, &token).await;
    let args = json!({ "ticket_id": "T-42", "reason": "fixed" });
    let waiting = {
        let peer = client.peer().clone();
        let p = with_progress(call("ticket.close", args.clone()));
        tokio::spawn(async move { peer.call_tool(p).await })
    };
    let id = open_proposal(&g.t, &run_id).await;
    let p = g.t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(p.status, Status::Pending);
    assert_eq!(p.via.as_deref(), Some("mcp"));
    assert_eq!(p.upstream.as_deref(), Some("tickets"));
    assert_eq!(p.upstream_tool.as_deref(), Some("close_ticket"));
    assert!(p.idempotency_key.as_deref().unwrap().starts_with("mcp:ticket.close:"));
    assert!(
        g.upstream().calls_of("close_ticket").is_empty(),
        "nothing runs before approval"
    );
    // The client heard that it waits.
    for _ in 0..100 {
        if !agent.progress.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        agent.progress.lock().unwrap().first().map(String::as_str),
        Some("waiting for approval (0 of 1)")
    );

    decide(&g.t, &bob, &id, Verdict::Approve, "").await;
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the call returns after approval")
        .unwrap()
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(text(&r), "closed T-42", "the upstream's own result");
    let calls = g.upstream().calls_of("close_ticket");
    assert_eq!(calls.len(), 1, "the upstream was called once");
    assert_eq!(calls[0].args, args, "with the receipt's args");
    let job = g.t.inspect().job_of(&id).await.unwrap().unwrap();
    assert_eq!(
        calls[0].meta["countersign/execution_key"], job.execution_key,
        "the execution key travels to the upstream"
    );
    assert_eq!(
        g.t.inspect().proposal(&id).await.unwrap().unwrap().status,
        Status::Succeeded
    );
    let record = g.t.inspect().upstream_call(&id).await.unwrap().unwrap();
    assert_eq!(record.outcome.as_deref(), Some("succeeded"));

    // The same call again: the same proposal, its outcome, no second call.
    let again = client.call_tool(call("ticket.close", args)).await.unwrap();
    assert_eq!(text(&again), "closed T-42");
    assert_eq!(g.upstream().calls_of("close_ticket").len(), 1);
    let proposals =
        g.t.inspect()
            .audit_events()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "proposal.created")
            .count();
    assert_eq!(proposals, 1, "an identical repeated call makes no second proposal");
    // Reviewers see what will be called, on the review page and in history.
    let rita = g.t.person("rita", &["reviewer", "auditor"], &["acme"]).await;
    let browser = Browser::new(&g.t);
    let (status, _) = browser.login(&rita.username, PASSWORD).await;
    assert!(status.is_redirection() || status.is_success(), "{status}");
    let page = browser.page(&format!("/proposals/{id}")).await.text().await.unwrap();
    assert!(
        page.contains("MCP: calls close_ticket on tickets, asked through the MCP gateway"),
        "the review page marks the upstream call"
    );
    let history = browser.page("/history").await.text().await.unwrap();
    assert!(history.contains("MCP: tickets/close_ticket"), "history marks it too");
    // The upstream's credential is in no audit event.
    let events = serde_json::to_string(
        &g.t.inspect()
            .audit_events()
            .await
            .unwrap()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!events.contains(UPSTREAM_TOKEN));
    assert!(events.contains("upstream.call"));
}

async fn a_rejection_is_an_error_the_model_can_act_on(db: &TestDb) {
    let g = gate(db, 30).await;
    let sam = g.t.person("sam", &["reviewer"], &["acme"]).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let waiting = {
        let peer = client.peer().clone();
        tokio::spawn(async move {
            peer.call_tool(call("ticket.close", json!({ "ticket_id": "T-7" })))
                .await
        })
    };
    let id = open_proposal(&g.t, &run_id).await;
    decide(&g.t, &sam, &id, Verdict::Reject, "wrong customer").await;
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).starts_with("Rejected by sam: wrong customer"), "{}", text(&r));
    let s = structured(&r);
    assert_eq!(s["code"], "rejected");
    assert_eq!(s["proposal_id"], id.as_str());
    assert_eq!(s["status"], "rejected");
    assert_eq!(s["decisions"][0]["by"], "sam");
    assert_eq!(s["decisions"][0]["verdict"], "reject");
    assert_eq!(s["decisions"][0]["comment"], "wrong customer");
    assert!(g.upstream().calls_of("close_ticket").is_empty());
}

async fn a_call_pending_at_the_deadline_says_so_and_its_repeat_returns_the_expiry(db: &TestDb) {
    let g = gate(db, 1).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let args = json!({ "ticket_id": "T-9" });
    let r = client.call_tool(call("ticket.close", args.clone())).await.unwrap();
    assert_eq!(r.is_error, Some(false), "still waiting is not an error");
    let s = structured(&r);
    assert_eq!(s["status"], "pending");
    let id = s["proposal_id"].as_str().unwrap().to_owned();
    assert_eq!(s["review_url"], g.t.url(&format!("/proposals/{id}")));
    assert!(text(&r).contains(s["review_url"].as_str().unwrap()), "{}", text(&r));
    assert!(
        text(&r).contains("Call this tool again with the same arguments"),
        "{}",
        text(&r)
    );
    assert_eq!(g.t.inspect().open_proposals_of_run(&run_id).await.unwrap().len(), 1);

    // Nobody decides: it expires; the same call says so.
    g.t.advance(301);
    g.t.core().sweep().await.unwrap();
    let r = client.call_tool(call("ticket.close", args)).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    let s = structured(&r);
    assert_eq!(s["code"], "expired");
    assert_eq!(s["proposal_id"], id.as_str());
    assert!(text(&r).starts_with("Nobody decided in time"), "{}", text(&r));
}

async fn refusals_are_structured_errors_audited_and_counted(db: &TestDb) {
    let g = gate(db, 1).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let code = |r: &CallToolResult| {
        assert_eq!(r.is_error, Some(true), "{r:?}");
        structured(r)["code"].as_str().unwrap_or("").to_owned()
    };
    // Denied and not allowed: never listed, refused when called anyway.
    let denied = client.call_tool(call("db.write", json!({}))).await.unwrap();
    assert_eq!(code(&denied), "tool_denied");
    assert!(text(&denied).contains("Do not call it again"), "{}", text(&denied));
    let unknown = client.call_tool(call("mail.send", json!({}))).await.unwrap();
    assert_eq!(code(&unknown), "tool_not_allowed");
    // Invalid args, with each field's problem.
    let bad = client
        .call_tool(call("ticket.close", json!({ "ticket_id": "X-1", "admin": true })))
        .await
        .unwrap();
    assert_eq!(code(&bad), "invalid_args");
    assert_eq!(structured(&bad)["details"]["fields"]["admin"], "unknown field");
    assert!(text(&bad).contains("ticket_id must match"), "{}", text(&bad));
    // Each counted toward the run's breaker, and audited as the API's are.
    let run = g.t.inspect().run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.denials_in_row, 3);
    let refused: Vec<_> =
        g.t.inspect()
            .audit_events()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.result_status.starts_with("refused:"))
            .map(|e| e.result_status)
            .collect();
    assert_eq!(
        refused,
        [
            "refused:tool_denied",
            "refused:tool_not_allowed",
            "refused:invalid_args"
        ]
    );
    // A secret in args.
    let secret = client
        .call_tool(call(
            "ticket.close",
            json!({ "ticket_id": "T-1", "reason": "key sk-proj-abcdefghijklmnopqrstuvwx" }),
        ))
        .await
        .unwrap();
    assert_eq!(code(&secret), "secret_in_args");
    assert!(!text(&secret).contains("abcdefghijklmnop"), "the value is never echoed");

    // A kill switch.
    g.t.core()
        .set_switch(&Admin::cli(), Scope::Tool, "ticket.close", true, "incident")
        .await
        .unwrap();
    let off = client
        .call_tool(call("ticket.close", json!({ "ticket_id": "T-2" })))
        .await
        .unwrap();
    assert_eq!(code(&off), "disabled");
    assert_eq!(structured(&off)["details"]["switch"], "tool:ticket.close");

    // A budget: the tiny route's run has one step.
    let (_, tiny) = g.t.run("acme", "prod", "tiny", None).await;
    let (small, _) = connect(&g.t, &tiny).await;
    let first = small
        .call_tool(call("ticket.search", json!({ "query": "a" })))
        .await
        .unwrap();
    assert_eq!(first.is_error, Some(false));
    let second = small
        .call_tool(call("ticket.search", json!({ "query": "b" })))
        .await
        .unwrap();
    assert_eq!(code(&second), "budget_exhausted");
    assert_eq!(structured(&second)["details"]["budget"], "steps");
    assert_eq!(
        g.upstream().calls_of("search").len(),
        1,
        "a refused read never reaches the upstream"
    );
    assert!(g.upstream().calls_of("wipe").is_empty());
}

async fn an_upstream_down_during_execution_is_retried_and_its_failure_reported(db: &TestDb) {
    let mut g = gate(db, 30).await;
    let bob = g.t.person("bob", &["reviewer"], &["acme"]).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let waiting = {
        let peer = client.peer().clone();
        tokio::spawn(async move {
            peer.call_tool(call("ticket.close", json!({ "ticket_id": "T-5" })))
                .await
        })
    };
    let id = open_proposal(&g.t, &run_id).await;
    // The upstream goes away before the executor gets to it.
    let url = g.up.as_ref().unwrap().url();
    let state = g.up.take().unwrap().stop().await;
    decide(&g.t, &bob, &id, Verdict::Approve, "").await;
    // Each failed attempt is offered again after its backoff (the manual
    // clock moves it along) until max_attempts (2).
    let mut attempts_seen = 0;
    for _ in 0..200 {
        let job = g.t.inspect().job_of(&id).await.unwrap();
        if let Some(j) = &job {
            attempts_seen = j.attempt;
            if j.state == countersign_core::lifecycle::JobState::Failed {
                break;
            }
        }
        g.t.advance(5);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts_seen, 2, "retried up to max_attempts");
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let s = structured(&r);
    assert_eq!(s["code"], "upstream_unavailable", "{s}");
    assert_eq!(s["status"], "failed");
    assert!(text(&r).contains("failed after 2 attempt(s)"), "{}", text(&r));
    assert!(text(&r).contains("upstream tickets"), "{}", text(&r));
    assert!(state.calls_of("close_ticket").is_empty());
    // The next identical call is told the same.
    let again = client
        .call_tool(call("ticket.close", json!({ "ticket_id": "T-5" })))
        .await
        .unwrap();
    assert_eq!(structured(&again)["code"], "upstream_unavailable");
    // A read to a down upstream names it.
    let read = client
        .call_tool(call("ticket.search", json!({ "query": "a" })))
        .await
        .unwrap();
    assert_eq!(read.is_error, Some(true));
    assert_eq!(structured(&read)["code"], "upstream_unavailable");
    assert!(text(&read).contains("upstream tickets"), "{}", text(&read));
    // …and not where it lives: no address reaches the agent or the job's result.
    let host = url.split("//").nth(1).unwrap().split('/').next().unwrap().to_owned();
    for told in [text(&r), text(&again), text(&read), s.to_string()] {
        assert!(!told.contains(&host), "{told}");
    }
}

async fn an_upstream_error_result_fails_the_proposal_without_retry(db: &TestDb) {
    let g = gate(db, 30).await;
    let (bob, sam) = (
        g.t.person("bob", &["reviewer"], &["acme"]).await,
        g.t.person("sam", &["reviewer"], &["acme"]).await,
    );
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, agent) = connect(&g.t, &token).await;
    let waiting = {
        let peer = client.peer().clone();
        let p = with_progress(call("refund.create", json!({ "amount_cents": 500, "currency": "EUR" })));
        tokio::spawn(async move { peer.call_tool(p).await })
    };
    let id = open_proposal(&g.t, &run_id).await;
    decide(&g.t, &bob, &id, Verdict::Approve, "").await;
    for _ in 0..100 {
        if agent
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "waiting for approval (1 of 2)")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        agent
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "waiting for approval (1 of 2)"),
        "{:?}",
        agent.progress.lock().unwrap()
    );
    decide(&g.t, &sam, &id, Verdict::Approve, "").await;
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(structured(&r)["code"], "upstream_error");
    assert!(text(&r).contains("card declined"), "{}", text(&r));
    assert_eq!(
        g.upstream().calls_of("refund").len(),
        1,
        "an answered failure is not retried"
    );
    // The same call, its integer written 500.0: the same proposal, its outcome.
    let again = client
        .call_tool(call(
            "refund.create",
            json!({ "amount_cents": 500.0, "currency": "EUR" }),
        ))
        .await
        .unwrap();
    assert_eq!(structured(&again)["proposal_id"], structured(&r)["proposal_id"]);
    assert_eq!(g.upstream().calls_of("refund").len(), 1);
}

async fn a_bad_token_is_refused_before_any_message(db: &TestDb) {
    let g = gate(db, 30).await;
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "x", "version": "1" } }
    });
    let post = |bearer: Option<String>| {
        let mut req =
            g.t.http
                .post(g.t.url("/mcp"))
                .header("accept", "application/json, text/event-stream")
                .json(&init);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.send()
    };
    for bearer in [None, Some("crt_forged.token".to_owned()), Some("garbage".to_owned())] {
        let r = post(bearer).await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated");
    }
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let opened = post(Some(token.clone())).await.unwrap();
    assert!(opened.status().is_success());

    // A session belongs to the run that opened it: to another run's token
    // it does not exist, whatever the request (a call, a notification, the
    // GET stream, DELETE), and that run cannot end it either.
    let session = opened.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = opened.text().await;
    let on_session = |method: reqwest::Method, bearer: &str, session: &str, body: Option<Value>| {
        let mut req =
            g.t.http
                .request(method, g.t.url("/mcp"))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18")
                .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    use reqwest::Method;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let r = on_session(Method::POST, &token, &session, Some(initialized))
        .await
        .unwrap();
    assert!(r.status().is_success());
    let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
    let (_, other) = g.t.run("acme", "prod", "support", None).await;
    let cancelled = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 2 } });
    for (method, body) in [
        (Method::POST, Some(list.clone())),
        (Method::POST, Some(cancelled)),
        (Method::GET, None),
        (Method::DELETE, None),
    ] {
        let r = on_session(method.clone(), &other, &session, body).await.unwrap();
        assert_eq!(r.status(), 404, "{method} with another run's token");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    // A session nobody opened: the same answer.
    let r = on_session(Method::POST, &token, "no-such-session", Some(list.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The session still serves its own run.
    let own = on_session(Method::POST, &token, &session, Some(list))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(own.contains("ticket.close"), "{own}");

    // Expired: 401 as well.
    g.t.advance(3600);
    assert_eq!(post(Some(token)).await.unwrap().status(), 401);
    // A service key is the wrong kind.
    let key = g.t.service_key("acme", "prod").await;
    assert_eq!(post(Some(key)).await.unwrap().status(), 403);
    assert_eq!(g.t.inspect().run(&run_id).await.unwrap().unwrap().steps_used, 0);
}

// Crashes, with the real binary and SIGKILL.

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

struct Server {
    child: std::process::Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(db: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// The server, with a 2 s upstream lease so a dead holder's job returns soon.
fn serve(db: &str, policy: &Path, port: u16) -> Server {
    let child = std::process::Command::new(BIN)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--policy"])
        .arg(policy)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .env("COUNTERSIGN_UPSTREAM_LEASE", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn sigkill(mut s: Server) {
    // Child::kill is SIGKILL on Unix: nothing is reported, nothing flushed.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

async fn agent_of(url: &str, token: &str) -> RunningService<RoleClient, Agent> {
    tls();
    let cfg = StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp")).auth_header(token);
    Agent::default()
        .serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .expect("the agent connects")
}

/// The proposal's status as its run sees it over the API.
async fn status_of(url: &str, token: &str, id: &str) -> String {
    let r: Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/proposals/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    r["status"].as_str().unwrap_or("").to_owned()
}

async fn until_status(url: &str, token: &str, id: &str, want: &str) {
    for _ in 0..600 {
        if status_of(url, token, id).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "proposal {id} never became {want} (is {})",
        status_of(url, token, id).await
    );
}

/// A served gateway whose one ticket.close proposal was approved by bob:
/// (server, dir, policy, run token, proposal id).
async fn approved_through_the_binary(db: &TestDb, up: &TestUpstream) -> (Server, PathBuf, PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("countersign-mcp-crash-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("tickets-token");
    std::fs::write(&token_file, format!("Bearer {UPSTREAM_TOKEN}\n")).unwrap();
    let src = policy_src(&up.url(), &token_file, 1).replace("timeout_seconds = 5", "timeout_seconds = 60");
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &src).unwrap();
    cli(&db.url, &["migrate"]);
    let service = cli(
        &db.url,
        &[
            "key", "create", "service", "--tenant", "acme", "--env", "prod", "--name", "s",
        ],
    );
    let server = serve(&db.url, &policy_path, free_port());
    let run: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/runs", server.url))
        .bearer_auth(&service)
        .json(&json!({ "route": "support", "ttl_seconds": 900 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = run["token"].as_str().unwrap().to_owned();
    let agent = agent_of(&server.url, &token).await;
    let r = agent
        .call_tool(call("ticket.close", json!({ "ticket_id": "T-1" })))
        .await
        .unwrap();
    assert_eq!(structured(&r)["status"], "pending", "{r:?}");
    let id = structured(&r)["proposal_id"].as_str().unwrap().to_owned();
    // A reviewer decides, through the core, beside the running server.
    let core = countersign_core::service::Core::open(
        countersign_core::service::StoreOptions::new(db.url.clone()),
        load_policy(&src).unwrap(),
        countersign_core::service::Settings::default(),
    )
    .await
    .unwrap();
    let bob = core
        .add_user(
            &Admin::cli(),
            countersign_core::service::NewUser {
                username: "bob".into(),
                password: PASSWORD.into(),
                roles: vec!["reviewer".into()],
                tenants: vec!["acme".into()],
            },
        )
        .await
        .unwrap();
    let hash = countersign_core::testing::Inspect::of(&core)
        .proposal(&id)
        .await
        .unwrap()
        .unwrap()
        .content_hash;
    let req = DecideRequest {
        proposal_id: id.clone(),
        verdict: Verdict::Approve,
        comment: String::new(),
        content_hash: hash,
        view_ms: Some(5000),
        passkey: None,
    };
    core.decide(&bob, req).await.unwrap();
    (server, dir, policy_path, token, id)
}

async fn sigkill_between_approval_and_the_upstream_call_leads_to_exactly_one_call(db: &TestDb) {
    let up = TestUpstream::start(0, UPSTREAM_TOKEN).await;
    // Sessions hang in their handshake: the executor claims the job and is
    // held before it records anything or sends the call.
    up.state.hold_handshake.send_replace(true);
    let (server, dir, policy, token, id) = approved_through_the_binary(db, &up).await;
    until_status(&server.url, &token, &id, "running").await;
    assert!(up.state.initializes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(up.state.calls_of("close_ticket").is_empty());
    let port = server.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    sigkill(server);

    up.state.hold_handshake.send_replace(false);
    let server = serve(&db.url, &policy, port);
    // The dead holder's lease runs out; the job is offered again and run once.
    until_status(&server.url, &token, &id, "succeeded").await;
    assert_eq!(up.state.calls_of("close_ticket").len(), 1, "exactly one upstream call");
    let agent = agent_of(&server.url, &token).await;
    let r = agent
        .call_tool(call("ticket.close", json!({ "ticket_id": "T-1" })))
        .await
        .unwrap();
    assert_eq!(text(&r), "closed T-1", "the repeated call returns the outcome");
    assert_eq!(up.state.calls_of("close_ticket").len(), 1);
    drop(agent);
    drop(server);
    let o = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_call_cut_off_by_a_crash_is_never_made_again(db: &TestDb) {
    let up = TestUpstream::start(0, UPSTREAM_TOKEN).await;
    // The upstream takes the call and holds its answer: the server dies mid-call.
    up.state.hold_calls.send_replace(true);
    let (server, dir, policy, token, id) = approved_through_the_binary(db, &up).await;
    for _ in 0..600 {
        if !up.state.calls_of("close_ticket").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.state.calls_of("close_ticket").len(), 1);
    let port = server.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    sigkill(server);
    up.state.hold_calls.send_replace(false);

    let server = serve(&db.url, &policy, port);
    // Its intent has no outcome: it may have happened, so it is not made
    // again, and the job fails saying so (at most once).
    until_status(&server.url, &token, &id, "failed").await;
    assert_eq!(up.state.calls_of("close_ticket").len(), 1, "never a second call");
    let agent = agent_of(&server.url, &token).await;
    let r = agent
        .call_tool(call("ticket.close", json!({ "ticket_id": "T-1" })))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(structured(&r)["code"], "upstream_outcome_unknown", "{r:?}");
    assert!(text(&r).contains("it may have happened"), "{}", text(&r));
    drop(agent);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// examples/mcp's policy loads without warnings and passes its own tests.
#[test]
fn the_example_gateway_policy_loads_and_passes_its_tests() {
    let p = load_policy(include_str!("../../examples/mcp/policy.toml")).expect("examples/mcp/policy.toml loads");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.tools["ticket.close"].upstream.as_ref().unwrap().tool, "close_ticket");
    let report = countersign_core::policy::run_expectations(&p, include_str!("../../examples/mcp/policy.test.toml"))
        .expect("the policy tests parse");
    assert!(report.passed(), "{:?}", report.failures);
}

/// `countersign mcp check`: which upstreams answer, and which tools the
/// policy performs on them that they lack. No database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_check_says_which_upstreams_answer_and_what_they_lack() {
    let up = TestUpstream::start(0, UPSTREAM_TOKEN).await;
    let dir = std::env::temp_dir().join(format!("countersign-mcp-check-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("tickets-token");
    std::fs::write(&token_file, format!("Bearer {UPSTREAM_TOKEN}\n")).unwrap();
    let extra = format!(
        r#"
[upstreams.billing]
url = "http://127.0.0.1:{}/mcp"

[tools."ticket.archive"]
kind = "read"
upstream = "tickets"
upstream_tool = "archive"
"#,
        free_port()
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy_src(&up.url(), &token_file, 30) + &extra).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["mcp", "check", "--policy"])
        .arg(&path)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "an upstream that lacks tools or does not answer fails the check"
    );
    assert!(
        text.contains(&format!(
            "tickets  {}  answers, offering 5 tool(s): close_ticket, refund, search, send_mail, wipe",
            up.url()
        )),
        "{text}"
    );
    assert!(
        text.contains("  lacks tools the policy performs on it: archive"),
        "{text}"
    );
    assert!(
        text.contains("billing  http://127.0.0.1:") && text.contains("does not answer"),
        "{text}"
    );
    assert!(!text.contains(UPSTREAM_TOKEN));
    let _ = std::fs::remove_dir_all(dir);
}

fn with_meta(mut p: CallToolRequestParams, meta: Value) -> CallToolRequestParams {
    let Value::Object(m) = meta else {
        panic!("meta is an object")
    };
    p.meta = Some(RequestMetaObject(rmcp::model::MetaObject(m)));
    p
}

async fn the_agents_own_idempotency_key_and_reason_come_from_meta(db: &TestDb) {
    let g = gate(db, 0).await;
    let (_, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let meta = json!({
        "countersign/idempotency_key": "close-T-5-once",
        "countersign/reason": "the customer confirmed it is solved",
    });
    let r = client
        .call_tool(with_meta(
            call("ticket.close", json!({ "ticket_id": "T-5" })),
            meta.clone(),
        ))
        .await
        .unwrap();
    assert_eq!(structured(&r)["status"], "pending", "{r:?}");
    let id = structured(&r)["proposal_id"].as_str().unwrap().to_owned();
    let p = g.t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(p.idempotency_key.as_deref(), Some("close-T-5-once"));
    assert_eq!(p.reason, "the customer confirmed it is solved");
    // The key is the agent's: other args under it are a conflict…
    let r = client
        .call_tool(with_meta(call("ticket.close", json!({ "ticket_id": "T-6" })), meta))
        .await
        .unwrap();
    assert_eq!(structured(&r)["code"], "idempotency_conflict", "{r:?}");
    // …and a key that is not a string is refused.
    let r = client
        .call_tool(with_meta(
            call("ticket.close", json!({ "ticket_id": "T-7" })),
            json!({ "countersign/idempotency_key": 7 }),
        ))
        .await
        .unwrap();
    assert_eq!(structured(&r)["code"], "invalid_args", "{r:?}");
    assert!(
        structured(&r)["details"]["fields"]["_meta.countersign/idempotency_key"].is_string(),
        "{r:?}"
    );
}

async fn a_run_holds_at_most_sixteen_sessions_and_a_closed_one_frees_its_place(db: &TestDb) {
    let g = gate(db, 30).await;
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "x", "version": "1" } }
    });
    let open = |token: String| {
        g.t.http
            .post(g.t.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(token)
            .json(&init)
            .send()
    };
    let (_, token) = g.t.run("acme", "prod", "support", None).await;
    let mut sessions = Vec::new();
    for _ in 0..server::mcp::MAX_SESSIONS_PER_RUN {
        let r = open(token.clone()).await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        sessions.push(r.headers()["mcp-session-id"].to_str().unwrap().to_owned());
        let _ = r.text().await;
    }
    let r = open(token.clone()).await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another run is not held back by this one's sessions.
    let (_, other) = g.t.run("acme", "prod", "support", None).await;
    assert!(open(other).await.unwrap().status().is_success());
    // Closing one frees its place.
    let closed =
        g.t.http
            .delete(g.t.url("/mcp"))
            .header("mcp-session-id", sessions[0].as_str())
            .header("mcp-protocol-version", "2025-06-18")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    assert!(open(token).await.unwrap().status().is_success());
}

async fn the_core_decides_which_reads_go_through_unreviewed(db: &TestDb) {
    let g = gate(db, 1).await;
    let (run_id, token) = g.t.run("acme", "prod", "support", None).await;
    let countersign_core::service::Credential::Run(run) = g.t.core().authenticate(&token).await.unwrap() else {
        panic!("a run token authenticates a run");
    };
    use countersign_core::service::ReadCheck;
    // A write the route gates, and a read with no upstream: never forwarded,
    // and nothing counted by the question.
    let close =
        g.t.core()
            .check_read(&run, "ticket.close", &json!({ "ticket_id": "T-1" }))
            .await
            .unwrap();
    assert!(matches!(close, ReadCheck::Propose), "{close:?}");
    let kb =
        g.t.core()
            .check_read(&run, "kb.lookup", &json!({ "q": "a" }))
            .await
            .unwrap();
    assert!(matches!(kb, ReadCheck::Propose), "{kb:?}");
    assert_eq!(g.t.inspect().run(&run_id).await.unwrap().unwrap().steps_used, 0);
    // A read the route allows: forwarded with its args in normal form, one step.
    let search =
        g.t.core()
            .check_read(&run, "ticket.search", &json!({ "query": "printer" }))
            .await
            .unwrap();
    let ReadCheck::Forward(permit) = search else {
        panic!("an allowed read is forwarded: {search:?}");
    };
    assert_eq!(
        (permit.upstream.name.as_str(), permit.remote_tool.as_str()),
        ("tickets", "search")
    );
    assert_eq!(g.t.inspect().run(&run_id).await.unwrap().unwrap().steps_used, 1);

    // The policy now gates the read: through MCP it becomes a proposal, and
    // the upstream never sees it.
    let src = policy_src(&g.up.as_ref().unwrap().url(), &g.dir.join("tickets-token"), 1).replace(
        r#"require_approval = ["ticket.close", "refund.create"]"#,
        r#"require_approval = ["ticket.close", "refund.create", "ticket.search"]"#,
    );
    assert!(g
        .t
        .core()
        .replace_policy(load_policy(&src).unwrap(), "cli")
        .await
        .unwrap());
    let (client, _) = connect(&g.t, &token).await;
    let r = client
        .call_tool(call("ticket.search", json!({ "query": "printer" })))
        .await
        .unwrap();
    assert_eq!(structured(&r)["status"], "pending", "{r:?}");
    assert_eq!(g.upstream().calls_of("search").len(), 0);
    let id = structured(&r)["proposal_id"].as_str().unwrap().to_owned();
    assert_eq!(
        g.t.inspect().proposal(&id).await.unwrap().unwrap().tool,
        "ticket.search"
    );
}

async fn an_mcp_call_waits_in_the_same_places_as_the_runs_long_polls(db: &TestDb) {
    let g = gate(db, 1).await;
    let bob = g.t.person("bob", &["reviewer"], &["acme"]).await;
    let (_, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let args = json!({ "ticket_id": "T-9" });
    let first = client.call_tool(call("ticket.close", args.clone())).await.unwrap();
    assert_eq!(structured(&first)["status"], "pending", "{first:?}");
    let id = structured(&first)["proposal_id"].as_str().unwrap().to_owned();
    // The run's places for waiting all taken (as its API long-polls take
    // them)…
    let countersign_core::service::Credential::Run(run) = g.t.core().authenticate(&token).await.unwrap() else {
        panic!("a run token authenticates a run");
    };
    let held: Vec<_> = (0..countersign_core::service::MAX_LONG_POLLS_PER_HOLDER)
        .map(|_| g.t.core().wait_slot(&run).unwrap())
        .collect();
    // …an API long-poll is refused, and so is the MCP call's wait.
    let url = g.t.url(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=1"));
    let poll = g.t.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(poll.status(), 429);
    let refused = client.call_tool(call("ticket.close", args.clone())).await.unwrap();
    assert_eq!(structured(&refused)["code"], "rate_limited", "{refused:?}");
    assert_eq!(refused.is_error, Some(true));
    assert!(text(&refused).contains("call again"), "{}", text(&refused));
    // Places freed, the same call is answered again, with its outcome.
    drop(held);
    decide(&g.t, &bob, &id, Verdict::Approve, "ok").await;
    let r = client.call_tool(call("ticket.close", args)).await.unwrap();
    assert_eq!(r.is_error, Some(false), "approved, then pending or performed: {r:?}");
}

async fn an_approval_that_runs_out_after_its_upstream_call_was_sent_is_unknown_not_unperformed(db: &TestDb) {
    let g = gate(db, 1).await;
    // Sixty seconds to perform it, and an upstream that holds its answer.
    let src = policy_src(&g.up.as_ref().unwrap().url(), &g.dir.join("tickets-token"), 1)
        .replace("timeout_seconds = 5", "timeout_seconds = 120")
        .replace(
            "expires_after_seconds = 300",
            "expires_after_seconds = 300\nexecute_within_seconds = 60",
        );
    assert!(g
        .t
        .core()
        .replace_policy(load_policy(&src).unwrap(), "cli")
        .await
        .unwrap());
    g.upstream().hold_calls.send_replace(true);
    let bob = g.t.person("bob", &["reviewer"], &["acme"]).await;
    let (_, token) = g.t.run("acme", "prod", "support", None).await;
    let (client, _) = connect(&g.t, &token).await;
    let args = json!({ "ticket_id": "T-3" });
    let first = client.call_tool(call("ticket.close", args.clone())).await.unwrap();
    let id = structured(&first)["proposal_id"].as_str().unwrap().to_owned();
    decide(&g.t, &bob, &id, Verdict::Approve, "").await;
    for _ in 0..400 {
        if !g.upstream().calls_of("close_ticket").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(g.upstream().calls_of("close_ticket").len(), 1, "the call was sent");
    // The approval runs out while the answer is awaited.
    g.t.advance(120);
    g.t.core().sweep().await.unwrap();
    g.t.core().sweep().await.unwrap();
    assert_eq!(
        g.t.inspect().proposal(&id).await.unwrap().unwrap().status,
        Status::Expired
    );
    let r = client.call_tool(call("ticket.close", args)).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(structured(&r)["code"], "upstream_outcome_unknown", "{r:?}");
    assert!(
        text(&r).contains("unknown") && !text(&r).contains("not performed"),
        "{}",
        text(&r)
    );
    let events = g.t.inspect().audit_events().await.unwrap();
    let expired = events
        .iter()
        .find(|e| e.action == "proposal.expired" && e.subject.as_deref() == Some(id.as_str()))
        .expect("the expiry is audited");
    assert!(expired.details.to_string().contains("unknown"), "{}", expired.details);
    assert_eq!(
        g.upstream().calls_of("close_ticket").len(),
        1,
        "and it is not made again"
    );
    g.upstream().hold_calls.send_replace(false);
}

async fn a_stopping_server_lets_its_upstream_calls_finish_and_records_their_outcome(db: &TestDb) {
    let up = TestUpstream::start(0, UPSTREAM_TOKEN).await;
    let dir = std::env::temp_dir().join(format!("countersign-mcp-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("tickets-token");
    std::fs::write(&token_file, format!("Bearer {UPSTREAM_TOKEN}\n")).unwrap();
    let policy = load_policy(&policy_src(&up.url(), &token_file, 1)).unwrap();
    let t = spawn_with(db, policy, |c| {
        c.check_upstreams_at_start = false;
        c.upstream_lease = Duration::from_secs(30);
    })
    .await;
    up.state.hold_calls.send_replace(true);
    let bob = t.person("bob", &["reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support", None).await;
    let countersign_core::service::Credential::Run(run) = t.core().authenticate(&token).await.unwrap() else {
        panic!("a run token authenticates a run");
    };
    let (client, _) = connect(&t, &token).await;
    let first = client
        .call_tool(call("ticket.close", json!({ "ticket_id": "T-8" })))
        .await
        .unwrap();
    let id = structured(&first)["proposal_id"].as_str().unwrap().to_owned();
    decide(&t, &bob, &id, Verdict::Approve, "").await;
    for _ in 0..400 {
        if !up.state.calls_of("close_ticket").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(up.state.calls_of("close_ticket").len(), 1, "the call was sent");
    drop(client);
    // The server is told to stop while the upstream still holds its answer.
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let release = {
        let (released, state) = (released.clone(), up.state.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            released.store(true, std::sync::atomic::Ordering::SeqCst);
            state.hold_calls.send_replace(false);
        })
    };
    let core = t.app.core.clone();
    t.app.stop().await;
    assert!(
        released.load(std::sync::atomic::Ordering::SeqCst),
        "stopping waited for the call in flight"
    );
    release.await.unwrap();
    let call = core.upstream_call_for_run(&run, &id).await.unwrap().unwrap();
    assert_eq!(call.outcome, Some(countersign_core::service::CallOutcome::Succeeded));
    assert_eq!(
        core.proposal_for_run(&run, &id).await.unwrap().row.status,
        Status::Succeeded
    );
    let _ = std::fs::remove_dir_all(dir);
}

countersign_core::store_tests!(
    a_stopping_server_lets_its_upstream_calls_finish_and_records_their_outcome,
    an_approval_that_runs_out_after_its_upstream_call_was_sent_is_unknown_not_unperformed,
    a_run_holds_at_most_sixteen_sessions_and_a_closed_one_frees_its_place,
    the_core_decides_which_reads_go_through_unreviewed,
    an_mcp_call_waits_in_the_same_places_as_the_runs_long_polls,
    tools_list_shows_only_allowed_upstream_tools_with_their_schemas,
    the_agents_own_idempotency_key_and_reason_come_from_meta,
    a_read_passes_through_is_audited_and_counts_a_step,
    a_write_waits_for_approval_then_runs_once_and_returns_the_upstreams_result,
    a_rejection_is_an_error_the_model_can_act_on,
    a_call_pending_at_the_deadline_says_so_and_its_repeat_returns_the_expiry,
    refusals_are_structured_errors_audited_and_counted,
    an_upstream_down_during_execution_is_retried_and_its_failure_reported,
    an_upstream_error_result_fails_the_proposal_without_retry,
    a_bad_token_is_refused_before_any_message,
    sigkill_between_approval_and_the_upstream_call_leads_to_exactly_one_call,
    a_call_cut_off_by_a_crash_is_never_made_again,
);
