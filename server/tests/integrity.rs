//! Approval integrity, black-box on SQLite and PostgreSQL: previews computed
//! by the executor, signed receipts, execution keys, idempotency per tenant
//! and env, revocation that cancels work, and admins kept from reviewing.

mod common;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use countersign_core::lifecycle::Status;
use countersign_core::policy::{load_policy, Policy};
use countersign_core::service::Admin;
use countersign_core::testing::TestDb;
use countersign_core::Error;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;

const EXECUTOR: &str = env!("CARGO_BIN_EXE_reference-executor");
const BIN: &str = env!("CARGO_BIN_EXE_countersign");
/// The env and tools the reference executor is configured to serve here.
const SERVES: [&str; 4] = ["--env", "prod", "--tools", "record.update,refund.create,note.write"];

fn policy(extra: &str) -> Policy {
    let src = format!(
        "{}\n{extra}\n{}",
        include_str!("../../examples/policy.toml"),
        r#"
[tools."record.update"]
kind = "write"
preview = "executor"
preview_within_seconds = 30
undo = "Update it back"
blast_radius = "1 record of {tenant}"
args.record_id = { type = "string", pattern = "^R-[0-9]{1,6}$" }
args.text = { type = "string", max_len = 100 }

[tools."note.write"]
kind = "write"
undo = "Delete the note"
blast_radius = "1 note"
args.text = { type = "string", max_len = 100 }

[routes."records"]
allow_tools = ["record.update", "note.write"]
require_approval = ["record.update"]
auto_approve = ["note.write"]
budgets = { steps = 1000, seconds = 86400, usd = 100.0 }
"#
    );
    load_policy(&src).unwrap_or_else(|e| panic!("{e:?}"))
}

fn update(key: &str) -> Value {
    json!({ "tool": "record.update", "args": { "record_id": "R-7", "text": "hello" }, "idempotency_key": key })
}

fn note(key: &str) -> Value {
    json!({ "tool": "note.write", "args": { "text": "remember" }, "idempotency_key": key })
}

async fn claim(t: &TestApp, key: &str, body: Value) -> Vec<Value> {
    let r = t.post("/api/v1/jobs/claim", key, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["jobs"].as_array().unwrap().clone()
}

async fn complete(t: &TestApp, key: &str, job: &Value, body: Value) -> Reply {
    let mut body = body;
    body["lease_id"] = job["lease_id"].clone();
    t.post(
        &format!("/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap()),
        key,
        body,
    )
    .await
}

/// The reference executor, run once against this server with its own effects database.
fn run_executor(t: &TestApp, key: &str, effects: &str) -> String {
    let out = Command::new(EXECUTOR)
        .args(["--url", &t.app.url(), "--db", effects, "--once"])
        .args(SERVES)
        .env("COUNTERSIGN_EXECUTOR_KEY", key)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// `reference-executor verify`: the same check the executor makes before acting.
fn verify_with_executor(t: &TestApp, receipt: &str) -> (bool, String) {
    verify_serving(t, receipt, SERVES)
}

/// `reference-executor verify` by an executor configured with `serves`.
fn verify_serving(t: &TestApp, receipt: &str, serves: [&str; 4]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(EXECUTOR)
        .args(["--url", &t.app.url()])
        .args(serves)
        .arg("verify")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(receipt.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn effects_of(url: &str) -> Vec<(String, String)> {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT execution_key, tool FROM effects")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

fn temp_sqlite(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("countersign-integrity-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/{name}.db", dir.display());
    (dir, url)
}

/// Verify a JWS with ed25519-dalek alone (not the JWT library that signed
/// it): the signature over `header.payload` with the JWKS key its `kid` names.
/// Verify a receipt as an executor written elsewhere would: with a JWT
/// library that shares no code with the server's (jwt-simple, whose Ed25519 is
/// ed25519-compact; the server signs with jsonwebtoken and ed25519-dalek),
/// against the published JWKS. Answers the claims.
fn verify_independently(token: &str, jwks: &Value) -> Value {
    use jwt_simple::prelude::{Ed25519PublicKey, EdDSAPublicKeyLike, Token, VerificationOptions};
    let meta = Token::decode_metadata(token).expect("a compact JWS");
    assert_eq!(meta.algorithm(), "EdDSA");
    let kid = meta.key_id().expect("the receipt names its key");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the receipt's key is published");
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let key = Ed25519PublicKey::from_bytes(&x).expect("an Ed25519 public key");
    // The server's clock in these tests is the test's own (it may have been
    // moved on a little); expiry is the executor's check, tested apart.
    let options = VerificationOptions {
        time_tolerance: Some(jwt_simple::prelude::Duration::from_hours(2)),
        ..Default::default()
    };
    key.verify_token::<Value>(token, Some(options))
        .expect("the signature verifies");
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn an_executor_previewed_tool_goes_previewing_pending_approved_executed(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let exec = t.executor_key("prod", &["record.update"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;

    // The agent may not describe the change itself.
    let mut with_preview = update("u-agent");
    with_preview["preview"] = json!({ "before": "x", "after": "y" });
    let r = t.post("/api/v1/proposals", &token, with_preview).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_args"));
    assert!(
        r.body["error"]["details"]["fields"]["preview"].is_string(),
        "{}",
        r.body
    );

    let r = t.post("/api/v1/proposals", &token, update("u-1")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "previewing");
    let id = r.body["id"].as_str().unwrap().to_owned();

    // Not decidable yet, and an executor that asks only for executions gets nothing.
    let e = t.approve_as(&alice, &id).await.unwrap_err();
    assert!(
        matches!(&e, Error::Forbidden(m) if m.contains("still computing")),
        "{e:?}"
    );
    assert!(claim(&t, &exec, json!({})).await.is_empty());

    let jobs = claim(&t, &exec, json!({ "kinds": ["preview"] })).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["kind"], "preview");
    assert_eq!(jobs[0]["receipt"], Value::Null, "a dry run carries no receipt");
    let r = complete(
        &t,
        &exec,
        &jobs[0],
        json!({ "status": "succeeded", "preview": { "before": "text: old", "after": "text: hello", "state": "v3" } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["proposal_status"], "pending");

    let review = t.core().review_for(&alice, &id).await.unwrap();
    assert_eq!(review.proposal.preview_by.as_deref(), Some("exec-prod"));
    assert_eq!(review.proposal.preview_state.as_deref(), Some("v3"));
    assert!(review.diff.is_some());
    assert_eq!(t.approve_as(&alice, &id).await.unwrap(), Status::Queued);

    let jobs = claim(&t, &exec, json!({ "kinds": ["preview", "execute"] })).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0]["kind"].as_str(), jobs[0]["preview_state"].as_str()),
        (Some("execute"), Some("v3"))
    );
    let jwks = t
        .send(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .body;
    let claims = verify_independently(jobs[0]["receipt"].as_str().unwrap(), &jwks);
    assert_eq!(claims["preview_state"], "v3");
    assert!(claims["preview_sha256"].is_string());
    let r = complete(
        &t,
        &exec,
        &jobs[0],
        json!({ "status": "succeeded", "result": { "ok": true } }),
    )
    .await;
    assert_eq!(r.body["proposal_status"], "succeeded", "{}", r.body);
    let agent_view = t.get(&format!("/api/v1/proposals/{id}"), &token).await.body;
    assert_eq!(
        (agent_view["status"].as_str(), agent_view["preview_source"].as_str()),
        (Some("succeeded"), Some("executor"))
    );
}

async fn a_preview_nobody_computes_expires_the_proposal(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    let r = t.post("/api/v1/proposals", &token, update("u-1")).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    t.advance(31);
    assert!(t.core().sweep().await.unwrap() >= 1);
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(p.status, Status::Expired);
    let exec = t.executor_key("prod", &["record.update"]).await;
    assert!(claim(&t, &exec, json!({ "kinds": ["preview"] })).await.is_empty());
}

async fn the_world_changing_after_the_preview_fails_with_stale_preview_and_nothing_done(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let exec = t.executor_key("prod", &["record.update"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    let (dir, effects) = temp_sqlite("effects");
    let id = t.post("/api/v1/proposals", &token, update("u-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_executor(&t, &exec, &effects);
    assert!(out.contains("kind \"preview\""), "{out}");
    assert_eq!(t.approve_as(&alice, &id).await.unwrap(), Status::Queued);
    // Someone else changes the record between the review and the execution.
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&effects).await.unwrap();
        sqlx::query("INSERT INTO records (name, body, version) VALUES ('record.update:R-7', 'text: changed', 1)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let out = run_executor(&t, &exec, &effects);
    assert!(out.contains("kind \"execute\""), "{out}");
    let p = t.get(&format!("/api/v1/proposals/{id}"), &token).await.body;
    assert_eq!(p["status"], "failed", "{p}");
    assert_eq!(p["execution"]["result"]["code"], "stale_preview", "{p}");
    assert!(effects_of(&effects).await.is_empty(), "nothing was done");
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_receipt_verifies_independently_and_forged_ones_are_refused_by_the_executor(db: &TestDb) {
    let t = spawn(db).await;
    let (alice, bob) = (
        t.person("alice", &["reviewer"], &["acme"]).await,
        t.person("bob", &["reviewer"], &["acme"]).await,
    );
    let exec = t.executor_key("prod", &["refund.create"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, refund("r-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.approve_as(&alice, &id).await.unwrap();
    t.approve_as(&bob, &id).await.unwrap();
    let jobs = claim(&t, &exec, json!({})).await;
    let receipt = jobs[0]["receipt"].as_str().unwrap().to_owned();
    let jwks = t
        .send(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .body;
    let c = verify_independently(&receipt, &jwks);
    assert_eq!(c["jti"], jobs[0]["job_id"]);
    assert_eq!(c["sub"], id.as_str());
    assert_eq!((c["tenant"].as_str(), c["env"].as_str()), (Some("acme"), Some("prod")));
    assert_eq!(c["args"], jobs[0]["args"]);
    assert_eq!(c["execution_key"], jobs[0]["execution_key"]);
    let approvers: Vec<&str> = c["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["user"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["alice", "bob"]);
    assert_eq!(
        (c["auto_approved"].as_bool(), c["break_glass"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(c["policy_sha256"], t.core().policy().hash.as_str());
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(
        c["exp"].as_i64().unwrap(),
        p.execute_by.unwrap() / 1000,
        "exp is the execute-by deadline"
    );

    let (ok, out) = verify_with_executor(&t, &receipt);
    assert!(ok, "{out}");
    // A genuine receipt, but for a tool or env this executor is not for:
    // it checks its own configuration, not what the queue says.
    let (ok, out) = verify_serving(&t, &receipt, ["--env", "prod", "--tools", "note.write"]);
    assert!(!ok && out.contains("does not serve"), "{out}");
    let (ok, out) = verify_serving(&t, &receipt, ["--env", "staging", "--tools", "refund.create"]);
    assert!(!ok && out.contains("this executor acts in staging"), "{out}");
    // One changed byte of the payload: the signature no longer verifies.
    let mut forged = receipt.clone().into_bytes();
    let at = receipt.find('.').unwrap() + 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let (ok, out) = verify_with_executor(&t, &String::from_utf8(forged).unwrap());
    assert!(!ok && out.contains("refused"), "{out}");
    // Signed by a key the server never published.
    let mut claims: countersign_core::receipts::ReceiptClaims =
        serde_json::from_value(verify_independently(&receipt, &jwks)).unwrap();
    let stranger = countersign_core::receipts::ReceiptKey::generate().unwrap();
    let (ok, out) = verify_with_executor(&t, &stranger.sign(&claims).unwrap());
    assert!(!ok && out.contains("unknown signing key"), "{out}");
    // Signed by the server's own key but past its deadline.
    claims.exp = chrono_now() - 60;
    let key = t.inspect().current_receipt_key().await.unwrap();
    let (ok, out) = verify_with_executor(&t, &key.sign(&claims).unwrap());
    assert!(!ok && out.contains("xpired"), "{out}");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn the_executor_does_not_act_on_a_receipt_changed_in_the_queue(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    let r = t.post("/api/v1/proposals", &token, note("n-1")).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let job = t.inspect().job_of(&id).await.unwrap().unwrap();
    let mut receipt = job.receipt.clone().unwrap();
    let last = receipt.pop().unwrap();
    receipt.push(if last == 'A' { 'B' } else { 'A' });
    t.inspect().tamper_receipt(&job.id, &receipt).await.unwrap();
    let (dir, effects) = temp_sqlite("effects");
    let out = run_executor(&t, &exec, &effects);
    assert!(out.contains("refusing"), "{out}");
    assert!(effects_of(&effects).await.is_empty(), "nothing was done");
    let p = t.get(&format!("/api/v1/proposals/{id}"), &token).await.body;
    assert_eq!(
        (p["status"].as_str(), p["execution"]["result"]["code"].as_str()),
        (Some("failed"), Some("receipt_invalid"))
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_slow_action_keeps_its_lease_by_heartbeat(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    let r = t.post("/api/v1/proposals", &token, note("n-slow")).await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let (dir, effects) = temp_sqlite("effects");
    // A 2-second lease and an action that takes 5: only heartbeats keep it.
    let mut child = Command::new(EXECUTOR)
        .args([
            "--url",
            &t.app.url(),
            "--db",
            &effects,
            "--once",
            "--lease",
            "2",
            "--work",
            "5",
        ])
        .args(SERVES)
        .env("COUNTERSIGN_EXECUTOR_KEY", &exec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server's clock follows real time while the executor works.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the executor did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        t.clock.advance_ms(100);
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("completed ") && !text.contains("lease lost"), "{text}");
    let p = t.get(&format!("/api/v1/proposals/{id}"), &token).await.body;
    assert_eq!(
        (p["status"].as_str(), p["execution"]["attempts"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{p}"
    );
    assert_eq!(effects_of(&effects).await.len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

async fn after_a_receipt_key_rotation_old_receipts_still_verify(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    t.post("/api/v1/proposals", &token, note("n-1")).await;
    let before = t.inspect().current_receipt_key().await.unwrap();
    let new_id = t.core().rotate_receipt_key(&Admin::cli()).await.unwrap();
    assert_ne!(new_id, before.id);
    t.post("/api/v1/proposals", &token, note("n-2")).await;
    let jobs = claim(&t, &exec, json!({ "max": 10 })).await;
    assert_eq!(jobs.len(), 2);
    let jwks = t
        .send(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .body;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&before.id.as_str()) && kids.contains(&new_id.as_str()),
        "{kids:?}"
    );
    for j in &jobs {
        verify_independently(j["receipt"].as_str().unwrap(), &jwks);
        let (ok, out) = verify_with_executor(&t, j["receipt"].as_str().unwrap());
        assert!(ok, "{out}");
    }
}

async fn a_preview_nobody_waits_for_is_never_offered_again(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["record.update"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    let mut ids = Vec::new();
    for key in ["u-answered", "u-abandoned"] {
        let r = t.post("/api/v1/proposals", &token, update(key)).await;
        assert_eq!(r.body["status"], "previewing", "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let jobs = claim(
        &t,
        &exec,
        json!({ "kinds": ["preview"], "max": 10, "lease_seconds": 10 }),
    )
    .await;
    assert_eq!(jobs.len(), 2);
    // The agent gives up on both while their dry runs are under way.
    for id in &ids {
        let r = t
            .post(&format!("/api/v1/proposals/{id}/cancel"), &token, json!({}))
            .await;
        assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    }
    let job_of = |id: &str| jobs.iter().find(|j| j["proposal_id"] == id).unwrap().clone();
    let answered = job_of(&ids[0]);

    // Its heartbeat says stop; a preview still reported ends the job and
    // leaves the proposal cancelled.
    let beat = t
        .post(
            &format!("/api/v1/jobs/{}/heartbeat", answered["job_id"].as_str().unwrap()),
            &exec,
            json!({ "lease_id": answered["lease_id"], "lease_seconds": 10 }),
        )
        .await;
    assert_eq!(
        (beat.status, &beat.body["cancel_requested"]),
        (StatusCode::OK, &json!(true)),
        "{}",
        beat.body
    );
    let r = complete(
        &t,
        &exec,
        &answered,
        json!({ "status": "succeeded", "preview": { "before": "a", "after": "b", "state": "v1" } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["state"].as_str(), r.body["proposal_status"].as_str()),
        (Some("succeeded"), Some("cancelled"))
    );

    // The other's executor went away: once its lease runs out, it is not
    // offered again.
    t.advance(11);
    t.core().sweep().await.unwrap();
    assert!(claim(&t, &exec, json!({ "kinds": ["preview"], "max": 10 }))
        .await
        .is_empty());
    for id in &ids {
        assert_eq!(
            t.inspect().proposal(id).await.unwrap().unwrap().status,
            Status::Cancelled
        );
    }
}

fn kid_of(receipt: &Value) -> String {
    let header = receipt.as_str().unwrap().split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

async fn published_kids(t: &TestApp) -> Vec<String> {
    let jwks = t
        .send(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .body;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_key_rotated_by_the_command_line_signs_on_the_running_server_until_its_receipts_expire(db: &TestDb) {
    let t = spawn_with(db, policy(""), |c| {
        c.receipt_key_refresh = std::time::Duration::from_millis(100);
    })
    .await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let (_, token) = t.run("acme", "prod", "records", None).await;
    t.post("/api/v1/proposals", &token, note("n-before")).await;
    let first = claim(&t, &exec, json!({ "max": 10 })).await;
    let old = kid_of(&first[0]["receipt"]);

    // Another process rotates: the command line, on the same database.
    let out = Command::new(BIN)
        .args(["receipt-key", "rotate"])
        .env("DATABASE_URL", &t.db_url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The running server signs with the new key once it has looked.
    let started = std::time::Instant::now();
    let new = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the server still signs with {old}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let key = format!("n-{}", started.elapsed().as_micros());
        assert_eq!(
            t.post("/api/v1/proposals", &token, note(&key)).await.status,
            StatusCode::CREATED
        );
        let jobs = claim(&t, &exec, json!({ "max": 10 })).await;
        let kid = kid_of(&jobs[0]["receipt"]);
        if kid != old {
            break kid;
        }
    };
    let kids = published_kids(&t).await;
    assert!(kids.contains(&old) && kids.contains(&new), "{kids:?}");
    let jwks = t
        .send(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
        .await
        .body;
    verify_independently(first[0]["receipt"].as_str().unwrap(), &jwks);

    // The retired key is published as long as a receipt it signed can be
    // valid (the longest execute-by plus the refresh margin), and no longer.
    t.advance(countersign_core::policy::MAX_DEADLINE_SECONDS);
    assert!(published_kids(&t).await.contains(&old), "retired too early");
    // (The command line retired it by the real clock, a moment after this
    // test's clock started: a minute covers that.)
    t.advance(3600 + 60);
    assert_eq!(published_kids(&t).await, vec![new]);
}

async fn two_tenants_with_the_same_idempotency_key_both_execute(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let (_, acme) = t.run("acme", "prod", "records", None).await;
    let (_, globex) = t.run("globex", "prod", "records", None).await;
    assert_eq!(
        t.post("/api/v1/proposals", &acme, note("same-key")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        t.post("/api/v1/proposals", &globex, note("same-key")).await.status,
        StatusCode::CREATED
    );
    let jobs = claim(&t, &exec, json!({ "max": 10 })).await;
    assert_eq!(jobs.len(), 2);
    assert_ne!(jobs[0]["execution_key"], jobs[1]["execution_key"]);
    // Hand them back (lease expiry) and let the reference executor act on both.
    t.advance(61);
    t.core().sweep().await.unwrap();
    let (dir, effects) = temp_sqlite("effects");
    run_executor(&t, &exec, &effects);
    assert_eq!(effects_of(&effects).await.len(), 2, "both tenants' actions were done");
    let _ = std::fs::remove_dir_all(dir);
}

async fn a_retry_in_a_new_run_replays_the_first_proposal(db: &TestDb) {
    let t = spawn(db).await;
    let (_, first) = t.run("acme", "prod", "support/send", None).await;
    let a = t.post("/api/v1/proposals", &first, close_ticket("k-restart")).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.body["id"].as_str().unwrap();
    let (_, second) = t.run("acme", "prod", "support/send", None).await;
    let b = t.post("/api/v1/proposals", &second, close_ticket("k-restart")).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    assert_eq!(b.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(b.body["id"], id);
    assert_eq!(
        t.get(&format!("/api/v1/proposals/{id}"), &second).await.status,
        StatusCode::OK,
        "the retrying run may follow it"
    );
    let mut other = close_ticket("k-restart");
    other["args"]["ticket_id"] = json!("T-1");
    let c = t.post("/api/v1/proposals", &second, other).await;
    assert_eq!((c.status, c.code()), (StatusCode::CONFLICT, "idempotency_conflict"));
    // Another env is another scope.
    let (_, staging) = t.run("acme", "staging", "support/send", None).await;
    assert_eq!(
        t.post("/api/v1/proposals", &staging, close_ticket("k-restart"))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(t.inspect().count_pending().await.unwrap(), 2);
}

async fn revoking_a_run_cancels_its_pending_proposal_and_queued_job(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write", "record.update"]).await;
    let (run_id, token) = t.run("acme", "prod", "records", None).await;
    let id_of = |r: Reply| r.body["id"].as_str().unwrap().to_owned();
    // One proposal waits for a person (its preview delivered), one still
    // waits for its preview, one is approved at once and queued.
    let pending = id_of(t.post("/api/v1/proposals", &token, update("u-1")).await);
    let jobs = claim(&t, &exec, json!({ "kinds": ["preview"] })).await;
    let preview = json!({ "status": "succeeded", "preview": { "before": "a", "after": "b", "state": "v1" } });
    assert_eq!(
        complete(&t, &exec, &jobs[0], preview).await.body["proposal_status"],
        "pending"
    );
    let mut second = update("u-2");
    second["args"]["record_id"] = json!("R-8");
    let previewing = id_of(t.post("/api/v1/proposals", &token, second).await);
    let queued = id_of(t.post("/api/v1/proposals", &token, note("n-1")).await);
    for (id, want) in [
        (&pending, Status::Pending),
        (&previewing, Status::Previewing),
        (&queued, Status::Queued),
    ] {
        assert_eq!(t.inspect().proposal(id).await.unwrap().unwrap().status, want);
    }
    t.core()
        .revoke_run(&Admin::cli(), &run_id, "prompt injection seen")
        .await
        .unwrap();
    for id in [&pending, &previewing, &queued] {
        assert_eq!(
            t.inspect().proposal(id).await.unwrap().unwrap().status,
            Status::Cancelled
        );
    }
    assert!(
        claim(&t, &exec, json!({ "kinds": ["preview", "execute"], "max": 10 }))
            .await
            .is_empty(),
        "nothing reaches an executor"
    );
    let mut reasons = Vec::new();
    t.core()
        .export_audit(0, |e| {
            if e.action == "proposal.cancelled" {
                reasons.push(e.details.clone());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons.iter().all(|d| d.contains("prompt injection seen")),
        "{reasons:?}"
    );
    assert_eq!(
        t.post("/api/v1/proposals", &token, note("n-2")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn a_revoked_keys_tokens_answer_401_and_running_jobs_hear_of_it(db: &TestDb) {
    let t = spawn_with(db, policy(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let key = t.service_key("acme", "prod").await;
    let r = t.post("/api/v1/runs", &key, json!({ "route": "records" })).await;
    let token = r.body["token"].as_str().unwrap().to_owned();
    t.post("/api/v1/proposals", &token, note("n-1")).await;
    let jobs = claim(&t, &exec, json!({})).await;
    let path = format!("/api/v1/jobs/{}/heartbeat", jobs[0]["job_id"].as_str().unwrap());
    let body = json!({ "lease_id": jobs[0]["lease_id"] });
    assert_eq!(t.post(&path, &exec, body.clone()).await.body["cancel_requested"], false);
    let key_id = t
        .core()
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.kind == countersign_core::tokens::KeyKind::Service)
        .unwrap()
        .id;
    t.core().revoke_key(&Admin::cli(), &key_id).await.unwrap();
    let r = t.post("/api/v1/proposals", &token, note("n-2")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    let hb = t.post(&path, &exec, body).await;
    assert_eq!(hb.status, StatusCode::OK);
    assert_eq!(hb.body["cancel_requested"], true, "{}", hb.body);
}

async fn an_admin_who_reviews_is_refused_unless_the_policy_allows_it(db: &TestDb) {
    let t = spawn(db).await;
    let adam = t.person("adam", &["admin", "reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("k")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = t.approve_as(&adam, &id).await.unwrap_err();
    assert!(matches!(&e, Error::Forbidden(m) if m.contains("admin role")), "{e:?}");
    assert!(t
        .core()
        .review_for(&adam, &id)
        .await
        .unwrap()
        .why_not
        .unwrap()
        .contains("admin role"));

    let db2 = if db.is_postgres() {
        TestDb::postgres().await
    } else {
        TestDb::sqlite().await
    };
    let t = spawn_with(&db2, policy("[people]\nadmins_may_review = true"), |_| {}).await;
    assert_eq!(t.core().policy().warnings.len(), 1, "policy check warns");
    let adam = t.person("adam", &["admin", "reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("k")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(t.approve_as(&adam, &id).await.unwrap(), Status::Queued);
}

async fn granting_reviewer_fires_the_webhook_and_marks_the_approval(db: &TestDb) {
    let t = spawn(db).await;
    let rx = Receiver::start(0).await;
    t.core()
        .add_webhook(&Admin::cli(), &rx.url(), &["reviewer.changed".into()], "json")
        .await
        .unwrap();
    let adam = t.person("adam", &["admin"], &[]).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, refund("r-1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The admin makes a second account and grants it reviewer of acme.
    let by = Admin::person(&adam).unwrap();
    let sock = t
        .core()
        .add_user(
            &by,
            countersign_core::service::NewUser {
                username: "sock".into(),
                password: PASSWORD.into(),
                roles: vec!["auditor".into()],
                tenants: vec!["acme".into()],
            },
        )
        .await
        .unwrap();
    t.core()
        .set_access(&by, &sock.id, &["reviewer".into()], &["acme".into()])
        .await
        .unwrap();
    // alice (made by the command line) and sock (made reviewer by adam).
    let got = rx.wait_for(2).await;
    let events: Vec<Value> = got.iter().map(|(_, b)| serde_json::from_str(b).unwrap()).collect();
    assert!(events.iter().all(|e| e["type"] == "reviewer.changed"), "{events:?}");
    let sock_event = events
        .iter()
        .find(|e| e["data"]["user"] == "sock")
        .expect("the grant is announced");
    assert_eq!(sock_event["data"]["by"], "adam");
    assert_eq!(sock_event["data"]["change"], "granted the reviewer role");
    let sock = t
        .core()
        .person_for_session(&sock.id, t.now_ms())
        .await
        .unwrap()
        .unwrap();
    t.approve_as(&sock, &id).await.unwrap();
    let review = t.core().review_for(&alice, &id).await.unwrap();
    let view = app::functions::views::review(review, t.core().settings().quick_decision_ms);
    let note = view.decisions[0].note.clone().expect("the approval is marked");
    assert!(
        note.contains("reviewer since") && note.contains("granted the reviewer role by adam"),
        "{note}"
    );
}

countersign_core::store_tests!(
    an_executor_previewed_tool_goes_previewing_pending_approved_executed,
    a_preview_nobody_computes_expires_the_proposal,
    the_world_changing_after_the_preview_fails_with_stale_preview_and_nothing_done,
    a_receipt_verifies_independently_and_forged_ones_are_refused_by_the_executor,
    the_executor_does_not_act_on_a_receipt_changed_in_the_queue,
    a_slow_action_keeps_its_lease_by_heartbeat,
    after_a_receipt_key_rotation_old_receipts_still_verify,
    a_preview_nobody_waits_for_is_never_offered_again,
    a_key_rotated_by_the_command_line_signs_on_the_running_server_until_its_receipts_expire,
    two_tenants_with_the_same_idempotency_key_both_execute,
    a_retry_in_a_new_run_replays_the_first_proposal,
    revoking_a_run_cancels_its_pending_proposal_and_queued_job,
    a_revoked_keys_tokens_answer_401_and_running_jobs_hear_of_it,
    an_admin_who_reviews_is_refused_unless_the_policy_allows_it,
    granting_reviewer_fires_the_webhook_and_marks_the_approval,
);
