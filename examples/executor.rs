//! A reference executor: the service that owns the real credential.
//!
//! It claims approved jobs from countersign, performs a fake tool against a
//! local SQLite table, and reports the outcome. It honours the idempotency
//! key: the table's primary key is the key, so a job delivered twice (a lost
//! lease, a retry, a crash between acting and reporting) acts once.
//!
//! ```sh
//! export COUNTERSIGN_EXECUTOR_KEY=$(countersign key create executor --env prod \
//!     --tools ticket.close,email.send --name reference --policy examples/policy.toml)
//! cargo run -p server --bin reference-executor -- --url http://127.0.0.1:3000
//! ```
//!
//! The key comes from the environment, never an argument (arguments leak into
//! process lists and shell history).

use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

struct Options {
    url: String,
    key: String,
    db: String,
    once: bool,
    max: u32,
    lease_seconds: u32,
    /// Sleep this long before completing (to watch a lease run out).
    stall: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        url: std::env::var("COUNTERSIGN_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into()),
        key: std::env::var("COUNTERSIGN_EXECUTOR_KEY")
            .map_err(|_| "set COUNTERSIGN_EXECUTOR_KEY to an executor key (cek_…)")?,
        db: "sqlite://data/executor.db".into(),
        once: false,
        max: 10,
        lease_seconds: 30,
        stall: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--url" => o.url = value("--url")?,
            "--db" => o.db = value("--db")?,
            "--once" => o.once = true,
            "--max" => o.max = value("--max")?.parse().map_err(|_| "--max takes a number")?,
            "--lease" => o.lease_seconds = value("--lease")?.parse().map_err(|_| "--lease takes seconds")?,
            "--stall" => o.stall = value("--stall")?.parse().map_err(|_| "--stall takes seconds")?,
            "-h" | "--help" => {
                println!("usage: reference-executor [--url URL] [--db sqlite://FILE] [--once] [--max N] [--lease SECS] [--stall SECS]\n(the key is read from COUNTERSIGN_EXECUTOR_KEY)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(o)
}

/// Perform the fake tool once per idempotency key. Returns what happened.
async fn perform(db: &SqlitePool, job: &Value) -> Result<Value, sqlx::Error> {
    let key = job["idempotency_key"]
        .as_str()
        .unwrap_or(job["proposal_id"].as_str().unwrap_or(""));
    let done = sqlx::query(
        "INSERT INTO effects (idempotency_key, tool, args, job_id, attempt) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(job["tool"].as_str())
    .bind(job["args"].to_string())
    .bind(job["job_id"].as_str())
    .bind(job["attempt"].as_i64())
    .execute(db)
    .await?
    .rows_affected();
    Ok(json!({ "effect": if done == 1 { "performed" } else { "already done" }, "idempotency_key": key }))
}

async fn call(http: &reqwest::Client, o: &Options, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let r = http
        .post(format!("{}{path}", o.url))
        .bearer_auth(&o.key)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::main]
async fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("reference-executor: {e}");
            std::process::exit(2);
        }
    };
    if let Some(dir) =
        o.db.strip_prefix("sqlite://")
            .and_then(|p| std::path::Path::new(p).parent())
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let opts = SqliteConnectOptions::from_str(&o.db)
        .expect("a sqlite:// URL")
        .create_if_missing(true);
    let db = SqlitePool::connect_with(opts)
        .await
        .expect("open the executor's database");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS effects (idempotency_key TEXT PRIMARY KEY, tool TEXT, args TEXT, \
         job_id TEXT, attempt INTEGER, done_at TEXT DEFAULT CURRENT_TIMESTAMP)",
    )
    .execute(&db)
    .await
    .expect("create the effects table");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("an HTTP client");
    println!("reference-executor: claiming from {}", o.url);
    loop {
        let claim = json!({ "max": o.max, "lease_seconds": o.lease_seconds, "wait_seconds": 20 });
        let jobs = match call(&http, &o, "/api/v1/jobs/claim", claim).await {
            Ok((200, body)) => body["jobs"].as_array().cloned().unwrap_or_default(),
            Ok((status, body)) => {
                eprintln!("claim refused ({status}): {}", body["error"]["message"]);
                if status == 401 || status == 403 {
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                eprintln!("claim failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for job in &jobs {
            let (id, lease) = (
                job["job_id"].as_str().unwrap_or(""),
                job["lease_id"].as_str().unwrap_or(""),
            );
            println!(
                "claimed {id} lease {lease} attempt {} tool {}",
                job["attempt"], job["tool"]
            );
            let outcome = perform(&db, job).await;
            if o.stall > 0 {
                tokio::time::sleep(Duration::from_secs(o.stall)).await;
            }
            let body = match outcome {
                Ok(result) => json!({ "lease_id": lease, "status": "succeeded", "result": result }),
                Err(e) => {
                    json!({ "lease_id": lease, "status": "failed", "result": { "error": e.to_string() }, "retryable": true })
                }
            };
            match call(&http, &o, &format!("/api/v1/jobs/{id}/complete"), body).await {
                Ok((200, r)) => println!("completed {id}: {}", r["state"]),
                Ok((409, _)) => println!("lease lost for {id}: another delivery will finish it"),
                Ok((status, r)) => eprintln!("complete {id} refused ({status}): {}", r["error"]["message"]),
                Err(e) => eprintln!("complete {id} failed: {e} (the lease will run out and the job return)"),
            }
        }
        if o.once && !jobs.is_empty() {
            break;
        }
    }
}
