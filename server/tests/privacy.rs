//! Personal data in args (policy `pii = true`), black-box on SQLite and
//! PostgreSQL: shown to the reviewers who decide and given to the executor;
//! masked on history and audit pages, exports, `audit export`, webhooks,
//! logs, metrics and errors; erased after retention (or on demand) from
//! every place it was stored, with the audit chain still verifying. Also:
//! credentials read from files.

mod common;
#[path = "support/mcp_upstream.rs"]
mod mcp_upstream;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use countersign_core::policy::{load_policy, Policy};
use countersign_core::privacy::ERASED;
use countersign_core::service::{Admin, HistoryQuery};
use countersign_core::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");
const EXAMPLE_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.toml");

/// The personal values: the recipient, the message body, and a name only
/// the executor's dry run repeats.
const TO: &str = "dana.whitfield@example.com";
const BODY: &str = "Hello Dana, your refund of 25 EUR for order 7731 was sent to the card ending 4242. \
                    It can take five working days to arrive. Reply to this message if it has not arrived \
                    by then and we will look into it with the bank.";
const NAME: &str = "Dana Whitfield-Okafor";
/// A personal value that is a number, which an executor's result repeats as
/// a JSON number.
const PHONE: i64 = 4915112345678;
const PHONE_TEXT: &str = "4915112345678";

/// The example policy and a tool whose executor previews a change to a
/// customer's name (the preview repeats it).
fn policy() -> Policy {
    let src = format!(
        "{}\n{}",
        include_str!("../../examples/policy.toml"),
        r#"
[tools."customer.rename"]
kind = "write"
preview = "executor"
undo = "Rename back"
blast_radius = "The name of customer {customer_id}"
args.customer_id = { type = "string", pattern = "^C-[0-9]{1,12}$" }
args.name = { type = "string", max_len = 200, pii = true }
args.phone = { type = "integer", min = 0, max = 999999999999999, pii = true, required = false }

[routes."crm"]
allow_tools = ["customer.rename"]
require_approval = ["customer.rename"]
budgets = { steps = 100, seconds = 86400, usd = 10.0 }
"#
    );
    load_policy(&src).unwrap_or_else(|e| panic!("{e:?}"))
}

fn email(key: &str) -> Value {
    json!({
        "tool": "email.send",
        "args": { "to": TO, "subject": "Your refund", "body": BODY },
        "idempotency_key": key,
        "reason": format!("The customer asked by phone; reply to {TO} about order 7731"),
        "preview": { "before": "outbox: empty", "after": format!("outbox: 1 mail to {TO}\n{BODY}") }
    })
}

/// Every log line of this process (the server runs in it), the SQL
/// statements included, but not the test's own HTTP client: at every level,
/// under the server's own filter (which holds rmcp, whose lines print MCP
/// messages, at error; the test's upstream runs in this process too).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = Sink(buf.clone());
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let env = tracing_subscriber::EnvFilter::new(
            "trace,hyper=off,hyper_util=off,reqwest=off,h2=off,rustls=off,cookie_store=off",
        );
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .with_filter(server::telemetry::filter(env));
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("this test process logs to the buffer");
        buf
    })
    .clone()
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

fn assert_hidden(what: &str, text: &str) {
    for value in [TO, BODY, NAME, PHONE_TEXT] {
        assert!(
            !text.contains(value),
            "{what} holds the personal value {value:?}:\n{text}"
        );
    }
}

async fn claim(t: &TestApp, key: &str, body: Value) -> Vec<Value> {
    let r = t.post("/api/v1/jobs/claim", key, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["jobs"].as_array().unwrap().clone()
}

async fn complete(t: &TestApp, key: &str, job: &Value, mut body: Value) {
    body["lease_id"] = job["lease_id"].clone();
    let path = format!("/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap());
    let r = t.post(&path, key, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

fn receipt_claims(receipt: &str) -> Value {
    let payload = receipt.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// The CLI against this test's database.
fn cli(t: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", &t.db_url)
        .env_remove("DATABASE_URL_FILE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn signed_in(t: &TestApp, who: &str) -> Browser {
    let b = Browser::new(t);
    let (status, body) = b.login(who, PASSWORD).await;
    assert!(status.is_success() || status.is_redirection(), "{status}: {body}");
    b
}

async fn page(b: &Browser, path: &str) -> String {
    let r = b.page(path).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.text().await.unwrap()
}

/// Everything the database holds, as bytes: the SQLite file and its
/// write-ahead log, or a dump of every PostgreSQL table.
async fn database_bytes(db: &TestDb) -> Vec<u8> {
    if db.is_postgres() {
        let mut bytes = every_pg_text_column(&db.url).await;
        // And pg_dump's own reading, where it is installed.
        match Command::new("pg_dump")
            .args(["--data-only", "--dbname", &db.url])
            .output()
        {
            Ok(dump) => {
                assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
                bytes.extend(dump.stdout);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("pg_dump: {e}"),
        }
        bytes
    } else {
        // Read by another process: closing a file this process opened
        // would drop the server's POSIX locks on it (SQLite's locks are
        // per process), and another process could then take the database.
        let path = db.url.strip_prefix("sqlite://").unwrap();
        let mut bytes = Vec::new();
        for file in [path.to_owned(), format!("{path}-wal"), format!("{path}-journal")] {
            if std::path::Path::new(&file).exists() {
                let out = Command::new("cat").arg(&file).output().expect("cat runs");
                assert!(out.status.success(), "{file}");
                bytes.extend(out.stdout);
            }
        }
        assert!(bytes.len() > 4096, "the database was read");
        bytes
    }
}

/// Every text-like column of every table, read with SQL: what any reader
/// of the live tables can see (checked beside pg_dump).
async fn every_pg_text_column(url: &str) -> Vec<u8> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let cols: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(cols.iter().any(|(_, t, col)| t == "proposals" && col == "args"));
    let mut out = Vec::new();
    for (schema, table, col) in cols {
        let sql = format!("SELECT \"{col}\"::text FROM \"{schema}\".\"{table}\"");
        let rows: Vec<Option<String>> = sqlx::query_scalar(&sql).fetch_all(&mut c).await.unwrap();
        for r in rows.into_iter().flatten() {
            out.extend(r.into_bytes());
            out.push(b'\n');
        }
    }
    out
}

fn assert_nowhere_in(what: &str, bytes: &[u8]) {
    for value in [TO, BODY, NAME, PHONE_TEXT] {
        let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
        assert!(!found, "{what} still holds {value:?}");
    }
}

async fn personal_data_reaches_reviewers_and_the_executor_and_is_masked_elsewhere(db: &TestDb) {
    let logs = logs();
    let t = spawn_with(db, policy(), |_| {}).await;
    let json_hook = Receiver::start(0).await;
    let slack_hook = Receiver::start(0).await;
    t.core()
        .add_webhook(&Admin::cli(), &json_hook.url(), &["*".into()], "json")
        .await
        .unwrap();
    t.core()
        .add_webhook(&Admin::cli(), &slack_hook.url(), &["*".into()], "slack")
        .await
        .unwrap();
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let exec = t.executor_key("prod", &["email.send"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", Some("sam")).await;

    // Errors never repeat a value: not a schema problem, not an
    // idempotency key that repeats one (refused: the audit log keeps keys).
    let mut bad = email("mail-bad");
    bad["args"]["to"] = json!("dana.whitfield@example com");
    let r = t.post("/api/v1/proposals", &token, bad).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_args"));
    assert!(r.body["error"]["details"]["fields"]["to"].is_string(), "{}", r.body);
    assert!(!r.body.to_string().contains("whitfield"), "{}", r.body);
    let r = t.post("/api/v1/proposals", &token, email(&format!("send:{TO}"))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_args"));
    assert!(
        r.body["error"]["details"]["fields"]["idempotency_key"]
            .as_str()
            .unwrap()
            .contains("personal-data arg"),
        "{}",
        r.body
    );
    assert_hidden("the refusal", &r.body.to_string());

    let r = t.post("/api/v1/proposals", &token, email("mail-1")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["pii_erased_at"], Value::Null);
    assert_hidden("the agent's answer", &r.body.to_string());

    // The reviewer reads the values, marked as personal data.
    let review = t.core().review_for(&alice, &id).await.unwrap();
    assert!(review.personal.shown);
    assert_eq!(review.personal.fields, ["body".to_owned(), "to".to_owned()].into());
    let args: Value = serde_json::from_str(&review.proposal.args).unwrap();
    assert_eq!((args["to"].as_str(), args["body"].as_str()), (Some(TO), Some(BODY)));
    assert!(review.blast_radius.contains(TO), "{}", review.blast_radius);
    let b = signed_in(&t, "alice").await;
    let html = page(&b, &format!("/proposals/{id}")).await;
    assert!(
        html.contains(TO) && html.contains(BODY),
        "the reviewer's page shows the values"
    );
    assert!(html.contains("personal data"), "and marks them");

    // An auditor reads them masked, on the same page and everywhere.
    let masked = t.core().review_for(&audrey, &id).await.unwrap();
    assert!(!masked.personal.shown);
    let args: Value = serde_json::from_str(&masked.proposal.args).unwrap();
    assert_eq!(args["to"], "d…@example.com");
    assert_eq!(args["body"], format!("[personal data, {} chars]", BODY.chars().count()));
    assert_eq!(args["subject"], "Your refund", "what is not personal stays");
    assert_eq!(
        masked.proposal.reason,
        "The customer asked by phone; reply to d…@example.com about order 7731"
    );
    assert!(masked.diff.is_some(), "the auditor still sees what changes, masked");
    assert_hidden("the auditor's review", &format!("{masked:?}"));
    let b = signed_in(&t, "audrey").await;
    let html = page(&b, &format!("/proposals/{id}")).await;
    assert_hidden("the auditor's review page", &html);
    assert!(
        html.contains("d…@example.com") && html.contains("Personal data masked"),
        "{html}"
    );

    // Approved; the executor receives the values, in the job and its receipt.
    t.approve_as(&alice, &id).await.unwrap();
    let jobs = claim(&t, &exec, json!({})).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0]["args"]["to"].as_str(), jobs[0]["args"]["body"].as_str()),
        (Some(TO), Some(BODY))
    );
    let claims = receipt_claims(jobs[0]["receipt"].as_str().unwrap());
    assert_eq!(claims["args"]["to"], TO);
    complete(
        &t,
        &exec,
        &jobs[0],
        json!({ "status": "succeeded", "result": { "sent_to": TO, "message_id": "m-1" } }),
    )
    .await;

    // History, its page and both exports: masked.
    let history = t.core().history(&audrey, &HistoryQuery::default()).await.unwrap();
    assert_eq!(history.entries.len(), 1);
    assert_hidden("history", &format!("{:?}", history.entries));
    let html = page(&b, "/history").await;
    assert!(html.contains(&id));
    assert_hidden("the history page", &html);
    let csv = page(&b, "/export/history.csv").await;
    assert!(csv.contains(&id));
    assert_hidden("the CSV export", &csv);
    let jsonl = page(&b, "/export/history.jsonl").await;
    assert!(jsonl.contains(&id));
    assert!(
        jsonl.contains("d…@example.com"),
        "the result is masked, not dropped: {jsonl}"
    );
    assert_hidden("the JSON-lines export", &jsonl);
    let html = page(&b, "/audit").await;
    assert_hidden("the audit page", &html);

    // The agent that sent the values reads its proposal and the result.
    let r = t.get(&format!("/api/v1/proposals/{id}"), &token).await;
    assert_eq!(r.body["execution"]["result"]["sent_to"], TO);
    assert_eq!(r.body["pii_erased_at"], Value::Null);

    // The audit log never held a value.
    let events = t.inspect().audit_events().await.unwrap();
    assert!(events.len() > 5);
    assert_hidden("the audit events", &format!("{events:?}"));
    for format in ["jsonl", "csv"] {
        let (ok, out, err) = cli(&t, &["audit", "export", "--format", format]);
        assert!(ok, "{err}");
        assert!(out.contains(&id), "{out}");
        assert_hidden("audit export", &out);
    }

    // Webhooks (JSON and Slack) carry ids and links, never values.
    let json_got = json_hook.wait_for(2).await;
    let slack_got = slack_hook.wait_for(2).await;
    assert!(json_got
        .iter()
        .any(|(_, b)| b.contains("proposal.pending") && b.contains(&id)));
    assert!(!slack_got.is_empty());
    for (_, body) in json_got.iter().chain(&slack_got) {
        assert_hidden("a webhook body", body);
    }

    // Metrics and the server's logs (every level, SQL included).
    let metrics = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("countersign_http_requests_total"));
    assert_hidden("/metrics", &metrics);
    let text = log_text();
    assert!(
        text.contains(&id) || text.contains("INSERT INTO proposals"),
        "the logs were captured"
    );
    assert_hidden("the server's logs", &text);
    drop(logs);
}

async fn erasure_after_retention_leaves_no_value_and_the_chain_verifies(db: &TestDb) {
    let t = spawn_with(db, policy(), |_| {}).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let bob = t.person("bob", &["reviewer"], &["acme"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let exec = t.executor_key("prod", &["email.send", "customer.rename"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let (_, crm) = t.run("acme", "prod", "crm", None).await;

    // Sent: approved, executed, its result repeating the address.
    let sent = t.post("/api/v1/proposals", &token, email("mail-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.approve_as(&alice, &sent).await.unwrap();
    let jobs = claim(&t, &exec, json!({})).await;
    complete(
        &t,
        &exec,
        &jobs[0],
        json!({ "status": "succeeded", "result": { "sent_to": TO } }),
    )
    .await;

    // Rejected, with a comment that repeats the address.
    let rejected = t.post("/api/v1/proposals", &token, email("mail-2")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = t.inspect().proposal(&rejected).await.unwrap().unwrap().content_hash;
    t.core()
        .decide(
            &bob,
            countersign_core::service::DecideRequest {
                proposal_id: rejected.clone(),
                verdict: countersign_core::lifecycle::Verdict::Reject,
                comment: format!("{TO} already has a reply"),
                content_hash: hash,
                view_ms: Some(4000),
                passkey: None,
            },
        )
        .await
        .unwrap();

    // Renamed: the executor's dry run repeats the name in its preview.
    let r = t
        .post(
            "/api/v1/proposals",
            &crm,
            json!({ "tool": "customer.rename", "args": { "customer_id": "C-9", "name": NAME, "phone": PHONE }, "idempotency_key": "rn-1" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let renamed = r.body["id"].as_str().unwrap().to_owned();
    let previews = claim(&t, &exec, json!({ "kinds": ["preview"] })).await;
    let preview = json!({ "before": "name: Dana Okafor", "after": format!("name: {NAME}"), "state": "v1" });
    complete(
        &t,
        &exec,
        &previews[0],
        json!({ "status": "succeeded", "preview": preview }),
    )
    .await;
    t.approve_as(&alice, &renamed).await.unwrap();
    let jobs = claim(&t, &exec, json!({})).await;
    complete(
        &t,
        &exec,
        &jobs[0],
        json!({ "status": "succeeded", "result": { "renamed_to": NAME, "called": PHONE } }),
    )
    .await;
    // The number the result repeats is masked like text.
    let history = t.core().history(&audrey, &HistoryQuery::default()).await.unwrap();
    let entry = history.entries.iter().find(|e| e.proposal.id == renamed).unwrap();
    let result: Value = serde_json::from_str(entry.job.as_ref().unwrap().result.as_deref().unwrap()).unwrap();
    assert_eq!(result["called"], "[personal data]");
    assert_hidden("history of the rename", &format!("{entry:?}"));

    // Pending: it expires (finishes) after an hour, and is kept for the
    // retention period counted from then.
    let expired = t.post("/api/v1/proposals", &token, email("mail-3")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hashes: Vec<String> = {
        let mut v = Vec::new();
        for id in [&sent, &rejected, &renamed] {
            v.push(t.inspect().proposal(id).await.unwrap().unwrap().args_hash);
        }
        v
    };

    // Kept through the retention period…
    t.advance(29 * 86_400);
    t.core().sweep().await.unwrap();
    assert_eq!(t.inspect().proposal(&sent).await.unwrap().unwrap().pii_erased_at, None);
    let bytes = database_bytes(db).await;
    assert!(
        bytes.windows(TO.len()).any(|w| w == TO.as_bytes()),
        "kept until retention ends"
    );

    // …and erased after it, by the sweeper.
    t.advance(2 * 86_400);
    assert_eq!(t.core().sweep().await.unwrap(), 3, "three finished proposals erased");
    for (id, hash) in [&sent, &rejected, &renamed].into_iter().zip(&hashes) {
        let p = t.inspect().proposal(id).await.unwrap().unwrap();
        assert_eq!(p.pii_erased_at, Some(t.now_ms()), "{id}");
        assert_eq!(&p.args_hash, hash, "the args hash stays");
        let args: Value = serde_json::from_str(&p.args).unwrap();
        let personal = if *id == renamed { "name" } else { "to" };
        assert_eq!(args[personal], ERASED, "{id}: {args}");
        let job = t.inspect().job_of(id).await.unwrap();
        assert!(
            job.as_ref().is_none_or(|j| j.receipt.is_none()),
            "no receipt of the args is kept"
        );
    }
    let job = t.inspect().job_of(&renamed).await.unwrap().unwrap();
    let result: Value = serde_json::from_str(job.result.as_deref().unwrap()).unwrap();
    assert_eq!(result, json!({ "renamed_to": ERASED, "called": ERASED }));
    let p = t.inspect().proposal(&sent).await.unwrap().unwrap();
    assert_eq!(
        p.reason,
        format!("The customer asked by phone; reply to {ERASED} about order 7731")
    );
    assert_eq!((p.preview_after.as_deref(), p.diff.as_deref()), (Some(ERASED), None));
    assert_eq!(
        t.inspect().decisions(&rejected).await.unwrap()[0].comment,
        format!("{ERASED} already has a reply"),
        "the decision stays, without the value"
    );
    let kept = t.inspect().proposal(&expired).await.unwrap().unwrap();
    assert_eq!(kept.status, countersign_core::lifecycle::Status::Expired);
    assert_eq!(kept.pii_erased_at, None, "it finished two days ago: kept");

    // Each erasure is an audit event carrying the original args hash.
    let events = t.inspect().audit_events().await.unwrap();
    let erased: Vec<_> = events.iter().filter(|e| e.action == "privacy.erased").collect();
    assert_eq!(erased.len(), 3);
    let ev = erased
        .iter()
        .find(|e| e.subject.as_deref() == Some(sent.as_str()))
        .unwrap();
    assert_eq!(ev.args_hash.as_ref(), Some(&hashes[0]));
    assert_eq!(ev.actor, "system");
    let details: Value = serde_json::from_str(&ev.details).unwrap();
    assert_eq!(details["fields"], json!(["body", "to"]));
    assert_eq!(
        (details["why"].as_str(), details["retain_pii_days"].as_i64()),
        (Some("retention"), Some(30))
    );

    // The chain verifies, by the core and by the command line.
    assert!(t.core().verify_audit_chain().await.unwrap().ok());
    let (ok, out, err) = cli(&t, &["audit", "verify"]);
    assert!(ok, "{out}{err}");

    // The pages say it was erased, and when.
    for who in ["alice", "audrey"] {
        let b = signed_in(&t, who).await;
        let html = page(&b, &format!("/proposals/{sent}")).await;
        assert!(html.contains("Personal data erased on"), "{who}: {html}");
        assert!(html.contains(ERASED), "{who}");
        assert_hidden("an erased review page", &html);
        if who == "audrey" {
            let html = page(&b, "/history").await;
            assert!(html.contains("personal data erased"), "{html}");
        }
    }
    let review = t.core().review_for(&audrey, &renamed).await.unwrap();
    assert_eq!(review.personal.erased_at, Some(t.now_ms()));

    // Erased on demand too (what the command line does); then not a byte
    // of the values is left: not in the SQLite file or its log, not in any
    // PostgreSQL table.
    let by_retention = t.core().purge_personal_data(&Admin::cli(), None).await.unwrap();
    assert_eq!(by_retention.erased, 0, "the expired one is within retention");
    let now = t
        .core()
        .purge_personal_data(&Admin::cli(), Some(t.now_ms()))
        .await
        .unwrap();
    assert_eq!(now.erased, 1);
    assert_nowhere_in("the database", &database_bytes(db).await);
    let (ok, out, err) = cli(&t, &["audit", "verify"]);
    assert!(ok, "{out}{err}");
}

async fn a_purge_on_demand_erases_what_finished_and_the_agent_sees_when(db: &TestDb) {
    let t = spawn_with(db, policy(), |_| {}).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let exec = t.executor_key("prod", &["email.send"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let done = t.post("/api/v1/proposals", &token, email("mail-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.approve_as(&alice, &done).await.unwrap();
    let jobs = claim(&t, &exec, json!({})).await;
    complete(
        &t,
        &exec,
        &jobs[0],
        json!({ "status": "succeeded", "result": { "ok": true } }),
    )
    .await;
    let open = t.post("/api/v1/proposals", &token, email("mail-2")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // By default the purge keeps what is within retention.
    let (ok, out, err) = cli(&t, &["privacy", "purge", "--policy", EXAMPLE_POLICY]);
    assert!(ok, "{err}");
    assert!(out.contains("erased the personal data of 0 "), "{out}");
    let (ok, _, err) = cli(
        &t,
        &["privacy", "purge", "--before", "yesterday", "--policy", EXAMPLE_POLICY],
    );
    assert!(!ok && err.contains("--before \"yesterday\" is not a date"), "{err}");

    let (ok, out, err) = cli(&t, &["privacy", "purge", "--before", "now", "--policy", EXAMPLE_POLICY]);
    assert!(ok, "{err}");
    assert!(out.contains("erased the personal data of 1 "), "{out}");
    let r = t.get(&format!("/api/v1/proposals/{done}"), &token).await;
    assert!(r.body["pii_erased_at"].is_string(), "{}", r.body);
    assert_eq!(r.body["status"], "succeeded");
    let r = t.get(&format!("/api/v1/proposals/{open}"), &token).await;
    assert_eq!(
        r.body["pii_erased_at"],
        Value::Null,
        "a pending proposal keeps its values"
    );
    let ev = t
        .inspect()
        .audit_events()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.action == "privacy.erased")
        .expect("the purge is audited");
    assert_eq!((ev.actor.as_str(), ev.subject.as_deref()), ("cli", Some(done.as_str())));
    assert!(ev.details.contains("\"on demand\""), "{}", ev.details);
    let (ok, out, err) = cli(&t, &["audit", "verify"]);
    assert!(ok, "{out}{err}");

    // A replay of the erased proposal's request answers the erased proposal.
    let r = t.post("/api/v1/proposals", &token, email("mail-1")).await;
    assert_eq!((r.status, r.body["id"].as_str()), (StatusCode::OK, Some(done.as_str())));
}

async fn args_a_new_policy_marks_personal_are_masked_and_erased_on_older_proposals(db: &TestDb) {
    let unmarked = std::fs::read_to_string(EXAMPLE_POLICY)
        .unwrap()
        .replace(", pii = true", "");
    let t = spawn_with(db, load_policy(&unmarked).unwrap(), |_| {}).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, email("mail-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let review = t.core().review_for(&audrey, &id).await.unwrap();
    assert!(review.personal.fields.is_empty());
    assert!(review.proposal.args.contains(TO), "not personal data under that policy");
    let hash = t.inspect().proposal(&id).await.unwrap().unwrap().content_hash;
    t.core()
        .decide(
            &alice,
            countersign_core::service::DecideRequest {
                proposal_id: id.clone(),
                verdict: countersign_core::lifecycle::Verdict::Reject,
                comment: "not now".into(),
                content_hash: hash,
                view_ms: Some(3000),
                passkey: None,
            },
        )
        .await
        .unwrap();

    // The policy now marks the address and the body: recorded on the
    // earlier proposal, masked, then erased with the others.
    assert!(t.core().replace_policy(policy(), "cli").await.unwrap());
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(p.pii_fields.as_deref(), Some(r#"["body","to"]"#));
    assert!(t
        .inspect()
        .audit_events()
        .await
        .unwrap()
        .iter()
        .any(|e| e.action == "privacy.fields_marked" && e.tool.as_deref() == Some("email.send")));
    let review = t.core().review_for(&audrey, &id).await.unwrap();
    assert!(!review.proposal.args.contains(TO) && review.proposal.args.contains("d…@example.com"));
    t.advance(31 * 86_400);
    assert_eq!(t.core().sweep().await.unwrap(), 1);
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert!(p.pii_erased_at.is_some() && !p.args.contains(TO));
}

async fn the_database_url_can_come_from_a_file(db: &TestDb) {
    let dir = std::env::temp_dir().join(format!("countersign-secrets-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("database_url");
    std::fs::write(&file, format!("{}\n", db.url)).unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.arg("migrate")
            .env_remove("DATABASE_URL")
            .env_remove("DATABASE_URL_FILE");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let path = file.display().to_string();
    let (ok, out) = run(&[("DATABASE_URL_FILE", &path)]);
    assert!(ok, "{out}");
    let backend = if db.is_postgres() { "postgres" } else { "sqlite" };
    assert!(out.contains(&format!("migrations applied ({backend})")), "{out}");
    let (ok, out) = run(&[("DATABASE_URL_FILE", &path), ("DATABASE_URL", &db.url)]);
    assert!(
        !ok && out.contains("set DATABASE_URL or DATABASE_URL_FILE, not both"),
        "{out}"
    );
    let missing = dir.join("missing").display().to_string();
    let (ok, out) = run(&[("DATABASE_URL_FILE", &missing)]);
    assert!(
        !ok && out.contains(&format!("cannot read DATABASE_URL_FILE ({missing})")),
        "{out}"
    );
    assert!(!out.contains(&db.url), "{out}");

    // The same rules, read directly: the trailing newline (CR LF too) goes.
    std::fs::write(&file, format!("{}\r\n", db.url)).unwrap();
    let env = |name: &str| (name == "DATABASE_URL_FILE").then(|| std::ffi::OsString::from(&path));
    let found = server::config::credentials_from_files(server::config::CREDENTIAL_VARS, env).unwrap();
    assert_eq!(found, vec![("DATABASE_URL".to_owned(), db.url.clone())]);
    std::fs::write(&file, "\n").unwrap();
    let e = server::config::credentials_from_files(server::config::CREDENTIAL_VARS, env).unwrap_err();
    assert_eq!(e, format!("DATABASE_URL_FILE ({path}) is empty"));
    let _ = std::fs::remove_dir_all(dir);
}

async fn the_reference_executor_reads_its_key_from_a_file(db: &TestDb) {
    let t = spawn_with(db, policy(), |_| {}).await;
    let key = t.executor_key("prod", &["email.send"]).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, email("mail-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.approve_as(&alice, &id).await.unwrap();
    let dir = std::env::temp_dir().join(format!("countersign-secrets-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("executor_key");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let effects = format!("sqlite://{}/effects.db", dir.display());
    let run = |envs: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reference-executor"));
        c.args([
            "--url",
            &t.app.url(),
            "--db",
            &effects,
            "--once",
            "--env",
            "prod",
            "--tools",
            "email.send",
        ])
        .env_remove("COUNTERSIGN_EXECUTOR_KEY")
        .env_remove("COUNTERSIGN_EXECUTOR_KEY_FILE");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let path = file.display().to_string();
    let (ok, out) = run(&[("COUNTERSIGN_EXECUTOR_KEY_FILE", &path)]);
    assert!(ok, "the key from the file is accepted: {out}");
    let (ok, out) = run(&[
        ("COUNTERSIGN_EXECUTOR_KEY_FILE", &path),
        ("COUNTERSIGN_EXECUTOR_KEY", &key),
    ]);
    assert!(!ok && out.contains("not both"), "{out}");
    assert!(!out.contains(&key), "{out}");
    let (ok, out) = run(&[("COUNTERSIGN_EXECUTOR_KEY_FILE", "/no/such/key")]);
    assert!(
        !ok && out.contains("cannot read COUNTERSIGN_EXECUTOR_KEY_FILE (/no/such/key)"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// An MCP upstream's credential, for the gateway test.
const UPSTREAM_TOKEN: &str = "up-secret-5d1e8b7a90";

/// Tools performed on an upstream MCP server, with personal args: a write
/// whose upstream echoes them in its answer, and a read.
fn mcp_policy(upstream_url: &str, token_file: &std::path::Path) -> Policy {
    let src = format!(
        r#"
[upstreams.mail]
url = "{upstream_url}"
headers = {{ Authorization = "file:{token}" }}
timeout_seconds = 5

[mcp]
wait_seconds = 0

[tools."mail.send"]
kind = "write"
upstream = "mail"
upstream_tool = "send_mail"
undo = "Send a correction"
blast_radius = "One mail"
args.to = {{ type = "string", max_len = 254, pii = true }}
args.phone = {{ type = "integer", min = 0, max = 999999999999999, pii = true, required = false }}
args.subject = {{ type = "string", max_len = 100 }}

[tools."customer.find"]
kind = "read"
upstream = "mail"
upstream_tool = "search"
args.query = {{ type = "string", max_len = 254, pii = true }}

[routes."mail"]
allow_tools = ["mail.send", "customer.find"]
require_approval = ["mail.send"]
budgets = {{ steps = 100, seconds = 86400, usd = 10.0 }}
"#,
        token = token_file.display()
    );
    load_policy(&src).unwrap_or_else(|e| panic!("{e:?}"))
}

type McpClient = rmcp::service::RunningService<rmcp::service::RoleClient, rmcp::model::ClientConfig>;

async fn mcp_connect(t: &TestApp, token: &str) -> McpClient {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::ServiceExt;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = StreamableHttpClientTransportConfig::with_uri(t.url("/mcp")).auth_header(token);
    rmcp::model::ClientConfig::default()
        .serve(rmcp::transport::StreamableHttpClientTransport::from_config(cfg))
        .await
        .expect("the agent connects")
}

fn mcp_call(name: &str, args: &Value) -> rmcp::model::CallToolRequestParams {
    let Value::Object(m) = args.clone() else {
        panic!("args are an object")
    };
    rmcp::model::CallToolRequestParams::new(name.to_owned()).with_arguments(m)
}

/// All an agent reads of a tool result: its texts and structured content.
fn mcp_seen(r: &rmcp::model::CallToolResult) -> String {
    let texts: Vec<String> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    format!(
        "{}\n{}",
        texts.join("\n"),
        r.structured_content.clone().unwrap_or(Value::Null)
    )
}

/// The same call again until it no longer waits (the gateway waits 0 s).
async fn mcp_outcome(client: &McpClient, name: &str, args: &Value) -> rmcp::model::CallToolResult {
    for _ in 0..400 {
        let r = client.call_tool(mcp_call(name, args)).await.unwrap();
        if r.structured_content.as_ref().is_none_or(|s| s["status"] != "pending") {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{name} never ended");
}

async fn mcp_proposal(client: &McpClient, name: &str, args: &Value) -> String {
    let r = client.call_tool(mcp_call(name, args)).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let s = r.structured_content.clone().unwrap();
    assert_eq!(s["status"], "pending", "{s}");
    assert_hidden("a pending result", &mcp_seen(&r));
    s["proposal_id"].as_str().unwrap().to_owned()
}

async fn through_the_mcp_gateway_the_agent_reads_its_answers_until_they_are_erased(db: &TestDb) {
    let logs = logs();
    let up = mcp_upstream::TestUpstream::start(0, UPSTREAM_TOKEN).await;
    let dir = std::env::temp_dir().join(format!("countersign-privacy-mcp-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("mail-token");
    std::fs::write(&token_file, format!("Bearer {UPSTREAM_TOKEN}\n")).unwrap();
    let t = spawn_with(db, mcp_policy(&up.url(), &token_file), |c| {
        c.check_upstreams_at_start = false;
        c.upstream_lease = std::time::Duration::from_secs(30);
    })
    .await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "mail", None).await;
    let client = mcp_connect(&t, &token).await;

    // A read passes through: the upstream's answer is the agent's own; the
    // check it makes is audited without the value.
    let r = client
        .call_tool(mcp_call("customer.find", &json!({ "query": TO })))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert!(mcp_seen(&r).contains(TO), "the agent reads what it asked for");
    assert_eq!(up.state.calls_of("search").len(), 1);

    // An idempotency key that repeats a value is refused without saying it.
    let sent = json!({ "to": TO, "phone": PHONE, "subject": "Your refund" });
    let mut keyed = mcp_call("mail.send", &sent);
    let mut meta = serde_json::Map::new();
    meta.insert(server::mcp::IDEMPOTENCY_META.into(), json!(format!("send:{TO}")));
    keyed.meta = Some(rmcp::model::RequestMetaObject(rmcp::model::MetaObject(meta)));
    let r = client.call_tool(keyed).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(r.structured_content.as_ref().unwrap()["code"], "invalid_args");
    assert_hidden("the gateway's refusal", &mcp_seen(&r));

    // A write, approved and performed once: the upstream's answer echoes the
    // address and, as a number, the phone number. It is the agent's.
    let id = mcp_proposal(&client, "mail.send", &sent).await;
    t.approve_as(&alice, &id).await.unwrap();
    let r = mcp_outcome(&client, "mail.send", &sent).await;
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let s = r.structured_content.clone().unwrap();
    assert_eq!((s["sent_to"].as_str(), s["sms_to"].as_i64()), (Some(TO), Some(PHONE)));

    // A mail that bounces: the upstream's error names the address, and so
    // does the agent's error result.
    let bounced = json!({ "to": TO, "subject": "bounce" });
    let failed = mcp_proposal(&client, "mail.send", &bounced).await;
    t.approve_as(&alice, &failed).await.unwrap();
    let r = mcp_outcome(&client, "mail.send", &bounced).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert_eq!(r.structured_content.as_ref().unwrap()["code"], "upstream_error");
    assert!(mcp_seen(&r).contains(&format!("cannot deliver to {TO}")), "{r:?}");
    // One the upstream refuses with a protocol error naming the address:
    // the agent reads it; the server's log line masks it.
    let refused = json!({ "to": TO, "subject": "refuse" });
    let refused_id = mcp_proposal(&client, "mail.send", &refused).await;
    t.approve_as(&alice, &refused_id).await.unwrap();
    let r = mcp_outcome(&client, "mail.send", &refused).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(mcp_seen(&r).contains(&format!("no mailbox {TO}")), "{r:?}");
    assert!(
        log_text().contains("refused the call: no mailbox d…@example.com"),
        "the executor logs the upstream's error, masked"
    );
    assert_eq!(up.state.calls_of("send_mail").len(), 3);

    // Everyone else reads them masked: history, its export, the audit log.
    let history = t.core().history(&audrey, &HistoryQuery::default()).await.unwrap();
    assert_eq!(history.entries.len(), 3);
    assert_hidden("history", &format!("{:?}", history.entries));
    let entry = history.entries.iter().find(|e| e.proposal.id == failed).unwrap();
    let result: Value = serde_json::from_str(entry.job.as_ref().unwrap().result.as_deref().unwrap()).unwrap();
    assert_eq!(result["message"], "cannot deliver to d…@example.com");
    let b = signed_in(&t, "audrey").await;
    let jsonl = page(&b, "/export/history.jsonl").await;
    assert!(jsonl.contains(&failed));
    assert_hidden("the JSON-lines export", &jsonl);
    let events = t.inspect().audit_events().await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.action == "check" && e.tool.as_deref() == Some("customer.find")));
    assert!(events.iter().any(|e| e.action == "upstream.call"));
    assert_hidden("the audit events", &format!("{events:?}"));
    let call = t.inspect().upstream_call(&id).await.unwrap().unwrap();
    assert!(
        call.result.as_deref().is_some_and(|a| a.contains(TO)),
        "kept for the agent until erased"
    );

    // Erased: the proposals, their jobs, and the upstream's answers.
    let purge = t
        .core()
        .purge_personal_data(&Admin::cli(), Some(t.now_ms()))
        .await
        .unwrap();
    assert_eq!(purge.erased, 3);
    let call = t.inspect().upstream_call(&id).await.unwrap().unwrap();
    assert_eq!(
        (call.outcome.as_deref(), call.result.as_deref()),
        (Some("succeeded"), None),
        "the outcome stays: the call is never made again"
    );
    assert_nowhere_in("the database", &database_bytes(db).await);

    // The same calls again: the same proposals, no new call, and nothing of
    // the values; the performed one says its answer was erased.
    let r = client.call_tool(mcp_call("mail.send", &sent)).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let s = r.structured_content.clone().unwrap();
    assert_eq!(
        (
            s["proposal_id"].as_str(),
            s["status"].as_str(),
            s["answer_erased"].as_bool()
        ),
        (Some(id.as_str()), Some("succeeded"), Some(true)),
        "{s}"
    );
    assert!(mcp_seen(&r).contains("personal data was erased on"), "{r:?}");
    assert_hidden("the erased answer", &mcp_seen(&r));
    let r = client.call_tool(mcp_call("mail.send", &bounced)).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(mcp_seen(&r).contains(&format!("cannot deliver to {ERASED}")), "{r:?}");
    assert_hidden("the erased failure", &mcp_seen(&r));
    assert_eq!(up.state.calls_of("send_mail").len(), 3, "nothing was called again");
    let (ok, out, err) = cli(&t, &["audit", "verify"]);
    assert!(ok, "{out}{err}");

    // Nothing the server logged (at every level) held a value.
    assert_hidden("the server's logs", &log_text());
    drop(logs);
    drop(client);
    up.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

countersign_core::store_tests!(
    personal_data_reaches_reviewers_and_the_executor_and_is_masked_elsewhere,
    through_the_mcp_gateway_the_agent_reads_its_answers_until_they_are_erased,
    erasure_after_retention_leaves_no_value_and_the_chain_verifies,
    a_purge_on_demand_erases_what_finished_and_the_agent_sees_when,
    args_a_new_policy_marks_personal_are_masked_and_erased_on_older_proposals,
    the_database_url_can_come_from_a_file,
    the_reference_executor_reads_its_key_from_a_file,
);
