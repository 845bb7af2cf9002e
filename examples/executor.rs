//! A reference executor: the service that owns the real credential, written
//! as an executor author in any language would (docs/api.md, "Writing an
//! executor").
//!
//! The "real system" is a local SQLite table of records. For each job it
//! claims, it:
//! - computes a **preview** (a dry run) for preview jobs: the record before
//!   and after, and the record's version as the precondition (`state`);
//! - for execute jobs, **verifies the receipt** against the server's JWKS
//!   (signature, `exp`; env and tool against its own `--env` and `--tools`,
//!   never against what the queue says; job) and refuses to act on anything
//!   that fails; acts only on the receipt's args;
//! - refuses a **stale preview**: if the record changed since the reviewer
//!   saw the preview, it does nothing and reports `stale_preview`;
//! - acts **once per execution key**: the effects table's primary key is the
//!   execution key, so a job delivered twice (a lost lease, a crash between
//!   acting and reporting) acts once;
//! - **heartbeats** the leases of the jobs it holds, every third of the
//!   lease, so a slow action or a job waiting its turn in a batch keeps its
//!   lease (`--stall` hangs without heartbeats, to watch a lease run out).
//!
//! ```sh
//! export COUNTERSIGN_EXECUTOR_KEY=$(countersign key create executor --env prod \
//!     --tools ticket.close,email.send --name reference --policy examples/policy.toml)
//! cargo run -p server --bin reference-executor -- --url http://127.0.0.1:3000 \
//!     --env prod --tools ticket.close,email.send
//! ```
//!
//! The key comes from the environment, never an argument (arguments leak into
//! process lists and shell history). `reference-executor verify` checks one
//! receipt read from standard input, as the loop does before acting.
//!
//! Errors are `String`s on purpose: a refusal becomes the `reason` reported
//! with the job, a sentence for people; nothing branches on its kind.

use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "reference-executor", about = "countersign's reference executor")]
struct Options {
    /// The countersign server.
    #[arg(long, env = "COUNTERSIGN_URL", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// The executor's own database: its records and the effects it made.
    #[arg(long, default_value = "sqlite://data/executor.db")]
    db: String,
    /// Stop after the first claim that returned jobs.
    #[arg(long)]
    once: bool,
    /// Jobs per claim.
    #[arg(long, default_value_t = 10)]
    max: u32,
    /// Lease length, seconds.
    #[arg(long = "lease", default_value_t = 30)]
    lease_seconds: u32,
    /// Sleep this long after acting, before reporting, without heartbeats:
    /// a hung executor (to watch a lease run out).
    #[arg(long, default_value_t = 0)]
    stall: u64,
    /// Take this long to act (a slow action): heartbeats keep the lease.
    #[arg(long, default_value_t = 0)]
    work: u64,
    /// Claim only execute jobs (an executor that knows nothing of previews).
    #[arg(long)]
    no_previews: bool,
    /// The env this executor acts in: a receipt for any other is refused.
    #[arg(long, env = "COUNTERSIGN_ENV")]
    env: String,
    /// The tools this executor implements (comma-separated): it claims only
    /// these, and refuses a receipt for any other.
    #[arg(long, value_delimiter = ',', required = true)]
    tools: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

impl Options {
    fn serves(&self) -> Serves<'_> {
        Serves {
            env: &self.env,
            tools: &self.tools,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Verify a receipt read from standard input against the server's JWKS;
    /// prints `valid <job>` or `refused: <why>` (exit 1).
    Verify {
        /// The job id the receipt must name.
        #[arg(long)]
        job: Option<String>,
    },
}

/// What a receipt says was approved (the claims this executor relies on).
#[derive(Debug, Deserialize)]
struct Receipt {
    jti: String,
    sub: String,
    env: String,
    tool: String,
    args: Value,
    execution_key: String,
    preview_state: Option<String>,
}

/// The server's receipt keys, by `kid`, fetched again when a receipt names
/// one not yet seen (the server rotated).
struct Jwks {
    url: String,
    keys: HashMap<String, DecodingKey>,
}

impl Jwks {
    async fn fetch(http: &reqwest::Client, base: &str) -> Result<Jwks, String> {
        let mut j = Jwks {
            url: format!("{}/.well-known/jwks.json", base.trim_end_matches('/')),
            keys: HashMap::new(),
        };
        j.refresh(http).await?;
        Ok(j)
    }

    async fn refresh(&mut self, http: &reqwest::Client) -> Result<(), String> {
        let set: jsonwebtoken::jwk::JwkSet = http
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching the JWKS: {e}"))?
            .json()
            .await
            .map_err(|e| format!("reading the JWKS: {e}"))?;
        self.keys = set
            .keys
            .iter()
            .filter_map(|k| Some((k.common.key_id.clone()?, DecodingKey::from_jwk(k).ok()?)))
            .collect();
        Ok(())
    }

    /// The receipt's claims if its signature and `exp` hold, it is for this
    /// executor's env and one of its tools, and it names the job delivered.
    async fn verify(
        &mut self,
        http: &reqwest::Client,
        serves: &Serves<'_>,
        token: &str,
        job: &Value,
    ) -> Result<Receipt, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWS: {e}"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(format!("signed with {:?}, not EdDSA", header.alg));
        }
        let kid = header.kid.ok_or("the receipt names no key")?;
        if !self.keys.contains_key(&kid) {
            self.refresh(http).await?;
        }
        let key = self.keys.get(&kid).ok_or(format!("unknown signing key {kid}"))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_required_spec_claims(&["exp", "jti", "sub"]);
        v.leeway = 0;
        let r = jsonwebtoken::decode::<Receipt>(token, key, &v)
            .map_err(|e| format!("the receipt does not verify: {e}"))?
            .claims;
        // What this executor is for, from its own configuration: the queue
        // (what the receipt is there to check) has no say in it.
        if r.env != serves.env {
            return Err(format!(
                "the receipt is for env {}, this executor acts in {}",
                r.env, serves.env
            ));
        }
        if !serves.tools.contains(&r.tool) {
            return Err(format!(
                "the receipt is for tool {}, which this executor does not serve",
                r.tool
            ));
        }
        let expect = |field: &str, got: &str| -> Result<(), String> {
            match job[field].as_str() {
                Some(want) if want != got => Err(format!("the receipt is for {field} {got}, the job says {want}")),
                _ => Ok(()),
            }
        };
        expect("job_id", &r.jti)?;
        expect("proposal_id", &r.sub)?;
        expect("env", &r.env)?;
        expect("tool", &r.tool)?;
        expect("execution_key", &r.execution_key)?;
        Ok(r)
    }
}

/// What this executor is configured to act on.
struct Serves<'a> {
    env: &'a str,
    tools: &'a [String],
}

/// The record a tool call touches: the value of its first `*_id` arg (a
/// ticket, a customer), else the whole args.
fn subject(tool: &str, args: &Value) -> String {
    let id = args
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.ends_with("_id")))
        .map(|(_, v)| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
    format!("{tool}:{}", id.unwrap_or_else(|| args.to_string()))
}

/// How the record reads after the tool acts.
fn applied(tool: &str, args: &Value) -> String {
    let mut lines = vec![format!("status: done by {tool}")];
    if let Some(m) = args.as_object() {
        for (k, v) in m {
            lines.push(format!(
                "{k}: {}",
                v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
            ));
        }
    }
    lines.join("\n")
}

/// The record now: its text and version (a record never written is open, version 0).
async fn record(db: &SqlitePool, name: &str) -> Result<(String, i64), sqlx::Error> {
    let row: Option<(String, i64)> = sqlx::query_as("SELECT body, version FROM records WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await?;
    Ok(row.unwrap_or_else(|| ("status: open".into(), 0)))
}

/// A dry run: what the tool would change, and the version it would change.
async fn preview(db: &SqlitePool, job: &Value) -> Result<Value, sqlx::Error> {
    let (tool, args) = (job["tool"].as_str().unwrap_or(""), &job["args"]);
    let (before, version) = record(db, &subject(tool, args)).await?;
    Ok(json!({ "before": before, "after": applied(tool, args), "state": format!("v{version}") }))
}

/// Act on the receipt's args, once per execution key, unless the record
/// changed since the preview. Returns the result to report and whether the
/// job failed (not retryable). All in one transaction of the executor's own
/// database: first "was this execution key already done?" (a redelivery
/// after a crash between acting and reporting must answer "done", not
/// "stale": the action itself changed the record), then the precondition,
/// then the effect.
async fn perform(db: &SqlitePool, job: &Value, r: &Receipt) -> Result<(Value, bool), sqlx::Error> {
    let name = subject(&r.tool, &r.args);
    let mut tx = db.begin().await?;
    let done_before: Option<(String,)> = sqlx::query_as("SELECT job_id FROM effects WHERE execution_key = $1")
        .bind(&r.execution_key)
        .fetch_optional(&mut *tx)
        .await?;
    if done_before.is_some() {
        return Ok((
            json!({ "effect": "already done", "execution_key": r.execution_key, "record": name }),
            false,
        ));
    }
    let version: i64 = sqlx::query_as::<_, (i64,)>("SELECT version FROM records WHERE name = $1")
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await?
        .map_or(0, |(v,)| v);
    if let Some(state) = r.preview_state.as_deref() {
        if state != format!("v{version}") {
            return Ok((
                json!({ "code": "stale_preview", "message": format!("{name} changed since the preview ({state}, now v{version})") }),
                true,
            ));
        }
    }
    sqlx::query("INSERT INTO effects (execution_key, tool, args, job_id, attempt) VALUES ($1, $2, $3, $4, $5)")
        .bind(&r.execution_key)
        .bind(&r.tool)
        .bind(r.args.to_string())
        .bind(&r.jti)
        .bind(job["attempt"].as_i64())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO records (name, body, version) VALUES ($1, $2, 1) \
         ON CONFLICT (name) DO UPDATE SET body = excluded.body, version = records.version + 1",
    )
    .bind(&name)
    .bind(applied(&r.tool, &r.args))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        json!({ "effect": "performed", "execution_key": r.execution_key, "record": name }),
        false,
    ))
}

async fn call(
    http: &reqwest::Client,
    o: &Options,
    key: &str,
    path: &str,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let r = http
        .post(format!("{}{path}", o.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// The executor key: `COUNTERSIGN_EXECUTOR_KEY`, or the file
/// `COUNTERSIGN_EXECUTOR_KEY_FILE` names (a secret manager's mounted file),
/// trailing newline trimmed.
fn executor_key() -> Result<String, String> {
    const VAR: &str = "COUNTERSIGN_EXECUTOR_KEY";
    match (std::env::var(VAR), std::env::var_os(format!("{VAR}_FILE"))) {
        (Ok(_), Some(_)) => Err(format!("set {VAR} or {VAR}_FILE, not both")),
        (Ok(key), None) => Ok(key),
        (Err(_), Some(path)) => {
            let shown = std::path::Path::new(&path).display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {VAR}_FILE ({shown}): {e}"))?;
            match text.trim_end_matches(['\n', '\r']) {
                "" => Err(format!("{VAR}_FILE ({shown}) is empty")),
                key => Ok(key.to_owned()),
            }
        }
        (Err(_), None) => Err(format!("set {VAR} (or {VAR}_FILE) to an executor key (cek_…)")),
    }
}

async fn open_db(url: &str) -> Result<SqlitePool, String> {
    if let Some(dir) = url
        .strip_prefix("sqlite://")
        .and_then(|p| std::path::Path::new(p).parent())
    {
        let _ = std::fs::create_dir_all(dir);
    }
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("--db: {e}"))?
        .create_if_missing(true);
    let db = SqlitePool::connect_with(opts)
        .await
        .map_err(|e| format!("opening {url}: {e}"))?;
    for ddl in [
        "CREATE TABLE IF NOT EXISTS effects (execution_key TEXT PRIMARY KEY, tool TEXT, args TEXT, job_id TEXT, \
         attempt INTEGER, done_at TEXT DEFAULT CURRENT_TIMESTAMP)",
        "CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, body TEXT NOT NULL, version INTEGER NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&db).await.map_err(|e| e.to_string())?;
    }
    Ok(db)
}

/// What to report for one job.
async fn handle(
    db: &SqlitePool,
    http: &reqwest::Client,
    jwks: &mut Jwks,
    o: &Options,
    leases: &Leases,
    job: &Value,
) -> Value {
    let lease = job["lease_id"].as_str().unwrap_or("");
    if job["kind"] == "preview" {
        return match preview(db, job).await {
            Ok(p) => json!({ "lease_id": lease, "status": "succeeded", "preview": p }),
            Err(e) => {
                json!({ "lease_id": lease, "status": "failed", "result": { "error": e.to_string() }, "retryable": true })
            }
        };
    }
    let receipt = match job["receipt"].as_str() {
        Some(t) => jwks.verify(http, &o.serves(), t, job).await,
        None => Err("the job carries no receipt".into()),
    };
    let receipt = match receipt {
        Ok(r) => r,
        Err(why) => {
            eprintln!("refusing {}: {why}", job["job_id"]);
            let result = json!({ "code": "receipt_invalid", "message": why });
            return json!({ "lease_id": lease, "status": "failed", "result": result, "retryable": false });
        }
    };
    if o.work > 0 {
        tokio::time::sleep(Duration::from_secs(o.work)).await;
    }
    let outcome = perform(db, job, &receipt).await;
    if o.stall > 0 {
        leases.hang(job["job_id"].as_str().unwrap_or(""));
        tokio::time::sleep(Duration::from_secs(o.stall)).await;
    }
    match outcome {
        Ok((result, false)) => json!({ "lease_id": lease, "status": "succeeded", "result": result }),
        Ok((result, true)) => json!({ "lease_id": lease, "status": "failed", "result": result, "retryable": false }),
        Err(e) => {
            json!({ "lease_id": lease, "status": "failed", "result": { "error": e.to_string() }, "retryable": true })
        }
    }
}

/// The leases of the claimed jobs not yet reported, kept alive by a
/// heartbeat every third of the lease: a batch is handled one job at a time,
/// so a job may wait its turn, or act slowly, longer than its lease. A job
/// whose run was revoked is told here (`cancel_requested`); one whose lease
/// was lost anyway is left to its next delivery, which the execution key
/// makes a no-op if this one acted.
#[derive(Clone, Default)]
struct Leases {
    held: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl Leases {
    fn hold(&self, jobs: &[Value]) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for j in jobs {
            if let (Some(id), Some(lease)) = (j["job_id"].as_str(), j["lease_id"].as_str()) {
                held.insert(id.to_owned(), lease.to_owned());
            }
        }
    }
    /// Stop the heartbeat of a job: it was reported, or (`--stall`) hangs.
    fn hang(&self, job_id: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(job_id);
    }
    fn snapshot(&self) -> Vec<(String, String)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().map(|(j, l)| (j.clone(), l.clone())).collect()
    }

    /// Heartbeat every held lease until dropped (the task is aborted).
    fn keep_alive(&self, http: reqwest::Client, o: &Options, key: String) -> tokio::task::JoinHandle<()> {
        let (leases, lease_seconds) = (self.clone(), o.lease_seconds);
        let url = o.url.clone();
        let every = Duration::from_millis(u64::from(lease_seconds.max(1)) * 1000 / 3);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                for (job, lease) in leases.snapshot() {
                    let body = json!({ "lease_id": lease, "lease_seconds": lease_seconds });
                    let sent = http
                        .post(format!("{url}/api/v1/jobs/{job}/heartbeat"))
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            if v["cancel_requested"] == true {
                                println!("{job}: its run was revoked; finishing what was started");
                            }
                        }
                        Ok(r) if r.status().as_u16() == 409 => {
                            println!("lease lost for {job}: its next delivery will find what this one did");
                            leases.hang(&job);
                        }
                        Ok(r) => eprintln!("heartbeat for {job} refused ({})", r.status()),
                        Err(e) => eprintln!("heartbeat for {job} failed: {e}"),
                    }
                }
            }
        })
    }
}

async fn run(o: Options) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| e.to_string())?;
    let mut jwks = Jwks::fetch(&http, &o.url).await?;
    if let Some(Command::Verify { job }) = &o.command {
        let mut token = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut token).map_err(|e| e.to_string())?;
        let expect = json!({ "job_id": job });
        return match jwks.verify(&http, &o.serves(), token.trim(), &expect).await {
            Ok(r) => {
                println!("valid {} for {} ({}): {}", r.jti, r.sub, r.tool, r.args);
                Ok(())
            }
            Err(why) => Err(format!("refused: {why}")),
        };
    }
    let key = executor_key()?;
    let db = open_db(&o.db).await?;
    let kinds: &[&str] = if o.no_previews {
        &["execute"]
    } else {
        &["preview", "execute"]
    };
    println!("reference-executor: claiming from {}", o.url);
    let leases = Leases::default();
    let heartbeat = leases.keep_alive(http.clone(), &o, key.clone());
    let _stop = AbortOnDrop(heartbeat);
    loop {
        let claim = json!({
            "tools": o.tools, "max": o.max, "lease_seconds": o.lease_seconds, "wait_seconds": 20, "kinds": kinds,
        });
        let jobs = match call(&http, &o, &key, "/api/v1/jobs/claim", claim).await {
            Ok((200, body)) => body["jobs"].as_array().cloned().unwrap_or_default(),
            Ok((status, body)) => {
                let msg = format!("claim refused ({status}): {}", body["error"]["message"]);
                if status == 401 || status == 403 {
                    return Err(msg);
                }
                eprintln!("{msg}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                eprintln!("claim failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        leases.hold(&jobs);
        for job in &jobs {
            let (id, lease) = (
                job["job_id"].as_str().unwrap_or(""),
                job["lease_id"].as_str().unwrap_or(""),
            );
            println!(
                "claimed {id} lease {lease} attempt {} tool {} kind {}",
                job["attempt"], job["tool"], job["kind"]
            );
            let body = handle(&db, &http, &mut jwks, &o, &leases, job).await;
            let reported = call(&http, &o, &key, &format!("/api/v1/jobs/{id}/complete"), body).await;
            leases.hang(id);
            match reported {
                Ok((200, r)) => println!("completed {id}: {}", r["state"]),
                Ok((409, _)) => println!("lease lost for {id}: another delivery will finish it"),
                Ok((status, r)) => eprintln!("complete {id} refused ({status}): {}", r["error"]["message"]),
                Err(e) => eprintln!("complete {id} failed: {e} (the lease will run out and the job return)"),
            }
        }
        if o.once && !jobs.is_empty() {
            return Ok(());
        }
    }
}

/// Stops a task when the loop that started it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Options::parse()).await {
        eprintln!("reference-executor: {e}");
        std::process::exit(1);
    }
}
