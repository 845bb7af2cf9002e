//! Crashes, with real processes and SIGKILL: an executor dying mid-job, and
//! the server dying between claim and complete. On SQLite and PostgreSQL.

use countersign_core::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_countersign");
const EXECUTOR: &str = env!("CARGO_BIN_EXE_reference-executor");

const BULK: &str = r#"
[tools."note.write"]
kind = "write"
undo = "Delete the note"
blast_radius = "1 note"
max_attempts = 3
args.text = { type = "string", max_len = 100 }

[routes."bulk"]
allow_tools = ["note.write"]
auto_approve = ["note.write"]
budgets = { steps = 100000, seconds = 86400, usd = 100.0 }
"#;

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("countersign-crash-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(db: &str, args: &[&str]) -> String {
    let o = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

struct Server {
    child: Child,
    url: String,
}

fn serve(db: &str, policy: &std::path::Path, port: u16) -> Server {
    let child = Command::new(BIN)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--policy"])
        .arg(policy)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, url }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(http: &reqwest::Client, url: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let r = http.post(url).bearer_auth(key).json(&body).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn setup(db: &str, dir: &std::path::Path) -> (std::path::PathBuf, String, String) {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("{}\n{BULK}", include_str!("../../examples/policy.toml")),
    )
    .unwrap();
    cli(db, &["migrate"]);
    let service = cli(
        db,
        &[
            "key", "create", "service", "--tenant", "acme", "--env", "prod", "--name", "s",
        ],
    );
    let exec = cli(
        db,
        &[
            "key",
            "create",
            "executor",
            "--env",
            "prod",
            "--tools",
            "note.write",
            "--name",
            "e",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    (policy, service, exec)
}

async fn propose_notes(http: &reqwest::Client, url: &str, service: &str, n: usize) -> Vec<String> {
    let (_, run) = post(
        http,
        &format!("{url}/api/v1/runs"),
        service,
        json!({ "route": "bulk", "ttl_seconds": 900 }),
    )
    .await;
    let token = run["token"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for i in 0..n {
        let (s, p) = post(
            http,
            &format!("{url}/api/v1/proposals"),
            &token,
            json!({ "tool": "note.write", "args": { "text": format!("n{i}") }, "idempotency_key": format!("note-{i}") }),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn a_killed_executors_job_returns_and_runs_once(db: &TestDb) {
    let dir = temp_dir();
    let (policy, service, exec) = setup(&db.url, &dir).await;
    let server = serve(&db.url, &policy, free_port());
    let http = reqwest::Client::new();
    propose_notes(&http, &server.url, &service, 1).await;
    let effects = format!("sqlite://{}/effects.db", dir.display());

    // The first executor acts, then stalls before reporting; it is killed.
    let mut dying = Command::new(EXECUTOR)
        .args(["--url", &server.url, "--db", &effects, "--lease", "2", "--stall", "600"])
        .args(["--env", "prod", "--tools", "note.write"])
        .env("COUNTERSIGN_EXECUTOR_KEY", &exec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(dying.stdout.take().unwrap());
    let mut line = String::new();
    let dead_lease = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the executor ended early");
        if let Some(rest) = line.split(" lease ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let job_id = line.split_whitespace().nth(1).unwrap().to_owned();
    sigkill(&mut dying);

    // Its lease runs out (2 s) and the sweeper re-offers the job: a second
    // executor with the same effects table finishes it without acting again.
    let second = Command::new(EXECUTOR)
        .args(["--url", &server.url, "--db", &effects, "--once"])
        .args(["--env", "prod", "--tools", "note.write"])
        .env("COUNTERSIGN_EXECUTOR_KEY", &exec)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains(&format!("claimed {job_id}")), "{text}");
    assert!(text.contains("attempt 2"), "{text}");
    assert!(text.contains("completed"), "{text}");

    // The dead executor's late report is refused by its stale lease.
    let (s, body) = post(
        &http,
        &format!("{}/api/v1/jobs/{job_id}/complete", server.url),
        &exec,
        json!({ "lease_id": dead_lease, "status": "succeeded", "result": {} }),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");

    let rows: Vec<(String, String)> = {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&effects).await.unwrap();
        sqlx::query_as("SELECT execution_key, job_id FROM effects")
            .fetch_all(&mut c)
            .await
            .unwrap()
    };
    assert_eq!(rows.len(), 1, "the tool acted once: {rows:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

fn sigkill(child: &mut Child) {
    // Child::kill sends SIGKILL on Unix: no chance to report anything.
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn a_server_killed_between_claim_and_complete_loses_and_doubles_nothing(db: &TestDb) {
    let dir = temp_dir();
    let (policy, service, exec) = setup(&db.url, &dir).await;
    let port = free_port();
    let mut server = serve(&db.url, &policy, port);
    let http = reqwest::Client::new();
    let ids = propose_notes(&http, &server.url, &service, 20).await;
    let claim_url = format!("{}/api/v1/jobs/claim", server.url);
    let (_, claimed) = post(&http, &claim_url, &exec, json!({ "max": 10, "lease_seconds": 120 })).await;
    let claimed = claimed["jobs"].as_array().unwrap().clone();
    assert_eq!(claimed.len(), 10);
    let complete = |job: &Value| {
        let (http, url, exec, job) = (http.clone(), server.url.clone(), exec.clone(), job.clone());
        async move {
            post(
                &http,
                &format!("{url}/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap()),
                &exec,
                json!({ "lease_id": job["lease_id"], "status": "succeeded", "result": { "n": 1 } }),
            )
            .await
        }
    };
    for job in &claimed[..5] {
        assert_eq!(complete(job).await.0, StatusCode::OK);
    }

    sigkill(&mut server.child);
    let server = serve(&db.url, &policy, port);

    // The five still leased keep their leases across the restart…
    for job in &claimed[5..] {
        assert_eq!(complete(job).await.0, StatusCode::OK);
    }
    // …and the ten never claimed are all still there, each offered once.
    let (_, rest) = post(
        &http,
        &format!("{}/api/v1/jobs/claim", server.url),
        &exec,
        json!({ "max": 50 }),
    )
    .await;
    let rest = rest["jobs"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 10);
    let claimed_ids: std::collections::HashSet<_> = claimed.iter().map(|j| j["proposal_id"].clone()).collect();
    assert!(
        rest.iter().all(|j| !claimed_ids.contains(&j["proposal_id"])),
        "nothing offered twice"
    );
    for job in &rest {
        assert_eq!(complete(job).await.0, StatusCode::OK);
    }
    drop(server);
    // Every proposal succeeded, exactly once.
    let inspect = countersign_core::testing::Inspect::open(&db.url).await.unwrap();
    for id in &ids {
        let p = inspect.proposal(id).await.unwrap().unwrap();
        assert_eq!(p.status, countersign_core::lifecycle::Status::Succeeded);
    }
    let mut completed = 0;
    let events = inspect.audit_events().await.unwrap();
    for e in &events {
        if e.action == "job.completed" {
            completed += 1;
        }
    }
    assert_eq!(completed, 20);
    drop(inspect);
    let o = Command::new(BIN)
        .args(["audit", "verify"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

countersign_core::store_tests!(
    a_killed_executors_job_returns_and_runs_once,
    a_server_killed_between_claim_and_complete_loses_and_doubles_nothing,
);
