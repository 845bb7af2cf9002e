//! countersign-bench: the load generator. It starts countersign (the
//! `countersign` binary beside it) on a fresh database, drives it over HTTP as
//! agents, executors and a reviewer would, and prints a table of figures:
//!
//! - intake: N agents POSTing proposals of a write tool for a fixed time;
//! - release + claim + complete: auto-approved jobs drained by K executors;
//! - approve -> claim: from the decision's commit to a long-poll's return;
//! - review render: server render of `/proposals/{id}` and `/` with many rows;
//! - the machine's limit: bare SQLite inserts of the same row shape;
//! - the server's peak RSS.
//!
//! `--smoke` runs each part for a moment and checks the counts (CI).
//! `--attacks` measures what an attacker's bursts get instead (see attacks.rs).
//! `--mcp` measures what the MCP gateway adds to a pass-through read (mcp.rs);
//! with `--smoke`, briefly.
//! `--chaos` runs three PostgreSQL-backed processes behind HAProxy under load
//! and faults, and checks the invariants (chaos.rs); `--smoke` is CI's short
//! form, `--seconds N` the long one.
//! `DATABASE_URL=postgres://…/postgres` benchmarks PostgreSQL instead: a fresh
//! database is created on that server and dropped afterwards.
//!
//! Errors are `String`s on purpose: each is a sentence for the person running
//! the load generator, printed once before it exits; nothing branches on them.

mod attacks;
mod chaos;
mod mcp;
#[path = "../server/tests/support/mcp_upstream.rs"]
mod mcp_upstream;

use serde_json::{json, Value};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";

const BENCH_POLICY: &str = r#"
[tools."bench.write"]
kind = "write"
undo = "Delete the record"
blast_radius = "1 record of {tenant}"
args.record = { type = "string", pattern = "^R-[0-9]{1,12}$" }
args.note = { type = "string", max_len = 200 }

[tools."bench.note"]
kind = "write"
undo = "Delete the note"
blast_radius = "1 note"
execute_within_seconds = 3600
args.text = { type = "string", max_len = 100 }

[routes."bench/intake"]
allow_tools = ["bench.write"]
require_approval = ["bench.write"]
budgets = { steps = 100000, seconds = 86400, usd = 1000.0 }

[routes."bench/auto"]
allow_tools = ["bench.note"]
auto_approve = ["bench.note"]
budgets = { steps = 100000, seconds = 86400, usd = 1000.0 }
"#;

/// countersign's load generator: starts the release server on a fresh
/// database and prints one table of figures. `DATABASE_URL=postgres://…`
/// benchmarks PostgreSQL (a fresh database on that server).
#[derive(Clone, clap::Parser)]
#[command(name = "countersign-bench")]
struct Opts {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Agents proposing at once.
    #[arg(long, default_value_t = 64)]
    agents: usize,
    /// How long intake runs, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Executors claiming at once.
    #[arg(long, default_value_t = 16)]
    executors: usize,
    /// Server processes on the one PostgreSQL database; intake and drain
    /// are spread over them (PostgreSQL only). Comparing 1 with 2 or 3
    /// measures what serialises writes across processes.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Jobs released and drained.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs per claim.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Approve -> claim samples.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Proposals seeded before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    seed_rows: u64,
    /// CI's few-second run: every part for a moment, counts checked.
    #[arg(long)]
    smoke: bool,
    /// Measure what an attacker's bursts get (sign-in guesses, worst-case
    /// previews, anonymous floods) instead of throughput.
    #[arg(long)]
    attacks: bool,
    /// Measure what the MCP gateway adds to a pass-through read instead.
    #[arg(long)]
    mcp: bool,
    /// Run the chaos harness instead: three processes on a PostgreSQL of its
    /// own behind HAProxy, faults for `--seconds`, then the invariants.
    #[arg(long)]
    chaos: bool,
    /// The chaos schedule's seed (the same seed, the same faults in turn).
    #[arg(long, default_value_t = 1)]
    chaos_seed: u64,
    /// Keep the database (and a PostgreSQL database) afterwards, for EXPLAIN.
    #[arg(long)]
    keep: bool,
    /// The server to measure (default: `countersign` beside this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    #[arg(long, default_value = "target/site")]
    site_root: PathBuf,
    /// The policy the bench's own tools are added to (default: this
    /// version's examples/policy.toml). Pass an older version's example
    /// policy to measure an older server (`--server-bin`), which refuses
    /// keys it does not know.
    #[arg(long)]
    base_policy: Option<PathBuf>,
}

impl Opts {
    fn server_bin(&self) -> PathBuf {
        self.server_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .map(|e| e.with_file_name("countersign"))
                .unwrap_or_else(|_| PathBuf::from("countersign"))
        })
    }
}

fn opts() -> Result<Opts, String> {
    let mut o = <Opts as clap::Parser>::parse();
    o.database_url = o.database_url.filter(|u| !u.is_empty());
    if o.smoke {
        o.agents = 4;
        o.seconds = 1;
        o.executors = 2;
        o.jobs = 100;
        o.batch = 10;
        o.samples = 10;
        o.seed_rows = 2_000;
    }
    if o.processes == 0 {
        return Err("--processes must be at least 1".into());
    }
    if o.processes > 1 && o.database_url.is_none() {
        return Err("--processes above 1 needs PostgreSQL (DATABASE_URL=postgres://…)".into());
    }
    o.server_bin = Some(o.server_bin());
    if !o.server_bin().exists() {
        return Err(format!(
            "{} not found: build countersign first (or pass --server-bin)",
            o.server_bin().display()
        ));
    }
    Ok(o)
}

/// Sorted durations and their percentiles.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut v: Vec<Duration>) -> Self {
        v.sort();
        Latencies(v)
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i].as_secs_f64() * 1000.0
    }
    fn max(&self) -> f64 {
        self.0.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

struct Row {
    what: String,
    value: String,
    target: String,
}

fn row(what: impl Into<String>, value: impl Into<String>, target: impl Into<String>) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target: target.into(),
    }
}

// ------------------------------------------------------------ the database

struct Db {
    url: String,
    /// PostgreSQL: (admin URL, database name) to drop at the end.
    pg: Option<(String, String)>,
    dir: PathBuf,
}

async fn fresh_db(o: &Opts, dir: &Path) -> Result<Db, String> {
    match &o.database_url {
        Some(u) if u.starts_with("postgres") => {
            let mut c = sqlx::PgConnection::connect(u)
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?;
            let name = format!("cs_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let base = u.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(u.clone());
            Ok(Db {
                url: format!("{base}/{name}"),
                pg: Some((u.clone(), name)),
                dir: dir.to_owned(),
            })
        }
        _ => Ok(Db {
            url: format!("sqlite://{}/bench.db", dir.display()),
            pg: None,
            dir: dir.to_owned(),
        }),
    }
}

impl Db {
    async fn drop_pg(&self) {
        if let Some((admin, name)) = &self.pg {
            if let Ok(mut c) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}

fn cli(o: &Opts, db: &Db, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(o.server_bin())
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(s.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "countersign {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A service key for tenant acme and an executor key for the bench's tools,
/// both in env prod and named `name`: (service, executor).
fn bench_keys(o: &Opts, db: &Db, name: &str, policy: &Path) -> Result<(String, String), String> {
    let service = cli(
        o,
        db,
        &[
            "key", "create", "service", "--tenant", "acme", "--env", "prod", "--name", name,
        ],
        None,
    )?;
    let policy_arg = policy.to_string_lossy().to_string();
    let executor = cli(
        o,
        db,
        &[
            "key",
            "create",
            "executor",
            "--env",
            "prod",
            "--tools",
            "bench.note,bench.write",
            "--name",
            name,
            "--policy",
            &policy_arg,
        ],
        None,
    )?;
    Ok((service, executor))
}

/// Fill the database with `n` decided proposals (and a few pending ones) in a
/// single statement on the database side: history the render must cope with.
async fn seed(db: &Db, n: u64) -> Result<Duration, String> {
    let started = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let run = "INSERT INTO runs (id, tenant, env, route, service_key_id, created_at, expires_at) \
               SELECT 'run_seed', 'acme', 'prod', 'bench/intake', id, 0, 0 FROM api_keys LIMIT 1";
    let cols = "id, tenant, env, route, run_id, tool, args, args_hash, content_hash, idempotency_key, reason, \
                preview_before, preview_after, diff, on_behalf_of, status, approvals_required, approvals, destructive, \
                irreversible, created_at, expires_at, decided_at, execute_by";
    let select = |i: &str| {
        format!(
            "SELECT 'prp_seed' || {i}, CASE WHEN {i} % 10 = 3 THEN 'globex' ELSE 'acme' END, 'prod', 'bench/intake', 'run_seed', \
             'bench.write', '{{\"note\":\"seeded\",\"record\":\"R-' || {i} || '\"}}', 'h' || {i}, 'c' || {i}, 'seed-' || {i}, \
             'seeded history', 'status: open', 'status: closed', NULL, NULL, \
             CASE WHEN {i} % 5000 = 0 THEN 'pending' WHEN {i} % 7 = 0 THEN 'rejected' ELSE 'succeeded' END, \
             1, 1, FALSE, FALSE, {now} - ({n} - {i}) * 100, {now} + 86400000, NULL, NULL"
        )
    };
    if let Some((_, _)) = &db.pg {
        let mut c = sqlx::PgConnection::connect(&db.url).await.map_err(|e| e.to_string())?;
        sqlx::query(run).execute(&mut c).await.map_err(|e| e.to_string())?;
        let sql = format!(
            "INSERT INTO proposals ({cols}) {} FROM generate_series(1, {n}) AS g(i)",
            select("i")
        );
        sqlx::query(&sql).execute(&mut c).await.map_err(|e| e.to_string())?;
        sqlx::query("ANALYZE")
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        let mut c = sqlx::SqliteConnection::connect(&db.url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(run).execute(&mut c).await.map_err(|e| e.to_string())?;
        let sql = format!(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) INSERT INTO proposals ({cols}) {} FROM g",
            select("i")
        );
        sqlx::query(&sql).execute(&mut c).await.map_err(|e| e.to_string())?;
        sqlx::query("ANALYZE")
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}

/// The machine's own limit for this row shape: bare SQLite, synchronous=FULL,
/// WAL, one row per transaction and many rows per transaction.
async fn bare_sqlite(dir: &Path, seconds: f64) -> Result<(f64, f64), String> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use std::str::FromStr;
    let url = format!("sqlite://{}/bare.db", dir.display());
    let opts = SqliteConnectOptions::from_str(&url)
        .map_err(|e| e.to_string())?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut c = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(
        "CREATE TABLE p (id TEXT PRIMARY KEY, tenant TEXT, tool TEXT, args TEXT, args_hash TEXT, reason TEXT, \
         status TEXT, created_at INTEGER, h TEXT)",
    )
    .execute(&mut c)
    .await
    .map_err(|e| e.to_string())?;
    let insert = "INSERT INTO p VALUES ($1, 'acme', 'bench.write', '{\"note\":\"n\",\"record\":\"R-1\"}', $2, 'reason', 'pending', $3, $4)";
    let mut i = 0u64;
    async fn run(c: &mut sqlx::SqliteConnection, insert: &str, i: u64) -> Result<(), String> {
        sqlx::query(insert)
            .bind(format!("prp_{i:026}"))
            .bind(format!("{i:064}"))
            .bind(i as i64)
            .bind(format!("{i:064}"))
            .execute(c)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let mut tx = c.begin().await.map_err(|e| e.to_string())?;
        run(&mut tx, insert, i).await?;
        tx.commit().await.map_err(|e| e.to_string())?;
        i += 1;
    }
    let single = i as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        let mut tx = c.begin().await.map_err(|e| e.to_string())?;
        for _ in 0..64 {
            run(&mut tx, insert, i).await?;
            i += 1;
            n += 1;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    Ok((single, n as f64 / started.elapsed().as_secs_f64()))
}

// ------------------------------------------------------------ the server

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn peak_rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

async fn start_server(o: &Opts, db: &Db, policy: &Path) -> Result<Server, String> {
    start_server_n(o, db, policy, 0).await
}

/// The `n`th server process on `db` (its log: server.log, server-1.log, …).
async fn start_server_n(o: &Opts, db: &Db, policy: &Path, n: usize) -> Result<Server, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| e.to_string())?
        .local_addr()
        .unwrap()
        .port();
    let log_name = if n == 0 {
        "server.log".to_owned()
    } else {
        format!("server-{n}.log")
    };
    let log = std::fs::File::create(db.dir.join(log_name)).map_err(|e| e.to_string())?;
    let child = Command::new(o.server_bin())
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--read-connections",
            "8",
            "--policy",
        ])
        .arg(policy)
        .arg("--site-root")
        .arg(&o.site_root)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{port}");
    let server = Server { child, url };
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", server.url)).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the server did not become ready in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(http: &reqwest::Client, url: &str, bearer: &str, body: &Value) -> Result<(u16, Value), String> {
    let r = http
        .post(url)
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

async fn mint(http: &reqwest::Client, base: &str, key: &str, route: &str) -> Result<String, String> {
    let (s, b) = post(
        http,
        &format!("{base}/api/v1/runs"),
        key,
        &json!({ "route": route, "ttl_seconds": 900 }),
    )
    .await?;
    if s != 201 {
        return Err(format!("minting a run: {s} {b}"));
    }
    Ok(b["token"].as_str().unwrap_or_default().to_owned())
}

struct Intake {
    ok: u64,
    errors: u64,
    rate: f64,
    lat: Latencies,
}

/// N agents, each with its own run, proposing as fast as answers come;
/// agent `a` talks to `bases[a % bases.len()]`.
async fn intake(
    o: &Opts,
    bases: &[String],
    key: &str,
    route: &str,
    tool_body: fn(u64, u64) -> Value,
    duration: Duration,
) -> Result<Intake, String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.agents * 2)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokens = Vec::new();
    for a in 0..o.agents {
        let base = &bases[a % bases.len()];
        tokens.push((base.clone(), mint(&http, base, key, route).await?));
    }
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (a, (base, token)) in tokens.into_iter().enumerate() {
        let url = format!("{base}/api/v1/proposals");
        let (http, ok, errors, lat) = (http.clone(), ok.clone(), errors.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < duration {
                let body = tool_body(a as u64, i);
                i += 1;
                let t0 = Instant::now();
                match http.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        mine.push(t0.elapsed());
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("intake: {} {}", r.status(), r.text().await.unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("intake: {e}");
                        }
                    }
                }
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let lat = Latencies::new(std::mem::take(&mut *lat.lock().unwrap()));
    Ok(Intake {
        ok,
        errors: errors.load(Ordering::Relaxed),
        rate: ok as f64 / elapsed,
        lat,
    })
}

fn write_body(agent: u64, i: u64) -> Value {
    json!({
        "tool": "bench.write",
        "args": { "record": format!("R-{i}"), "note": "Update the record after the customer confirmed" },
        "idempotency_key": format!("a{agent}-{i}"),
        "reason": "load test",
        "preview": { "before": "status: open\nowner: bob", "after": "status: closed\nowner: bob" }
    })
}

fn note_body(agent: u64, i: u64) -> Value {
    json!({ "tool": "bench.note", "args": { "text": format!("note {i}") }, "idempotency_key": format!("n{agent}-{i}") })
}

/// Release `jobs` auto-approved jobs, then drain them with K executors.
async fn drain(o: &Opts, bases: &[String], key: &str, exec: &str) -> Result<(u64, u64, f64, Option<String>), String> {
    // Release: agents propose auto-approved notes until there are enough.
    let http = reqwest::Client::new();
    let per_agent = o.jobs.div_ceil(o.agents);
    let mut tasks = Vec::new();
    for a in 0..o.agents {
        let (http, base, key) = (http.clone(), bases[a % bases.len()].clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let token = mint(&http, &base, &key, "bench/auto").await?;
            for i in 0..per_agent {
                let (s, b) = post(
                    &http,
                    &format!("{base}/api/v1/proposals"),
                    &token,
                    &note_body(a as u64, i as u64),
                )
                .await?;
                if s != 201 {
                    return Err(format!("releasing: {s} {b}"));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let released = (per_agent * o.agents) as u64;
    // Marks the timed part, for a profiler watching the log.
    eprintln!("  claiming and completing {released} jobs");
    let completed = Arc::new(AtomicU64::new(0));
    let claimed_twice = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let before = writer_counters(bases).await;
    let finished_before = completion_counters(bases).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for e in 0..o.executors {
        let (http, base, exec, completed, seen, twice) = (
            http.clone(),
            bases[e % bases.len()].clone(),
            exec.to_owned(),
            completed.clone(),
            seen.clone(),
            claimed_twice.clone(),
        );
        let batch = o.batch;
        tasks.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 3 {
                let (s, b) = post(
                    &http,
                    &format!("{base}/api/v1/jobs/claim"),
                    &exec,
                    &json!({ "max": batch, "lease_seconds": 300 }),
                )
                .await?;
                if s != 200 {
                    return Err(format!("claim: {s} {b}"));
                }
                let jobs = b["jobs"].as_array().cloned().unwrap_or_default();
                if jobs.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                // An executor runs the jobs of a claim side by side.
                let mut pending = Vec::new();
                for j in jobs {
                    let id = j["job_id"].as_str().unwrap_or_default().to_owned();
                    if !seen.lock().unwrap().insert(id.clone()) {
                        twice.fetch_add(1, Ordering::Relaxed);
                    }
                    let (http, base, exec, completed) = (http.clone(), base.clone(), exec.clone(), completed.clone());
                    pending.push(async move {
                        let body =
                            json!({ "lease_id": j["lease_id"], "status": "succeeded", "result": { "ok": true } });
                        let (s, b) = post(&http, &format!("{base}/api/v1/jobs/{id}/complete"), &exec, &body).await?;
                        if s != 200 {
                            return Err(format!("complete: {s} {b}"));
                        }
                        completed.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, String>(())
                    });
                }
                for r in futures::future::join_all(pending).await {
                    r?;
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    // The idle polls at the end are not work: take them off.
    let elapsed = (started.elapsed().as_secs_f64() - 0.06).max(0.001);
    let done = completed.load(Ordering::Relaxed);
    if claimed_twice.load(Ordering::Relaxed) > 0 {
        return Err(format!(
            "{} jobs were delivered twice",
            claimed_twice.load(Ordering::Relaxed)
        ));
    }
    let after = writer_counters(bases).await;
    let finished_after = completion_counters(bases).await;
    let writer = before.zip(after).map(|(a, b)| {
        let writes = finished_after.0 - finished_before.0;
        let together = (finished_after.1 - finished_before.1) / writes.max(1.0);
        format!(
            "{} · {together:.1} completions per finishing write",
            writer_between(a, b)
        )
    });
    Ok((released, done, done as f64 / elapsed, writer))
}

/// A reviewer's browser session: cookie jar, CSRF token.
struct Reviewer {
    http: reqwest::Client,
    csrf: String,
    base: String,
}

/// The CSRF token of a fresh sign-in page (and its session, in `http`'s jar).
async fn login_csrf(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let page = http
        .get(format!("{base}/login"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .unwrap_or_default();
    let at = page.find("name=\"csrf\" value=\"").ok_or("no CSRF token on /login")? + 19;
    Ok(page[at..].split('"').next().unwrap_or_default().to_owned())
}

async fn sign_in(base: &str, name: &str) -> Result<Reviewer, String> {
    sign_in_as(base, name, PASSWORD, None).await
}

async fn sign_in_as(
    base: &str,
    name: &str,
    password: &str,
    from: Option<std::net::IpAddr>,
) -> Result<Reviewer, String> {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(from)
        .build()
        .map_err(|e| e.to_string())?;
    let csrf = login_csrf(&http, base).await?;
    let r = http
        .post(format!("{base}/api/login"))
        .header("origin", base)
        .form(&[
            ("username", name),
            ("password", password),
            ("csrf", &csrf),
            ("next", "/"),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !(r.status().is_success() || r.status().is_redirection()) {
        return Err(format!("signing in: {}", r.status()));
    }
    // The token rotates at sign-in: read the new one.
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .unwrap_or_default();
    let at = page.find("name=\"csrf\" value=\"").ok_or("not signed in")? + 19;
    let csrf = page[at..].split('"').next().unwrap_or_default().to_owned();
    Ok(Reviewer {
        http,
        csrf,
        base: base.to_owned(),
    })
}

/// From the approving request's answer (the decision has committed) to the
/// return of an executor's waiting claim.
async fn approve_to_claim(o: &Opts, r: &Reviewer, key: &str, exec: &str) -> Result<Latencies, String> {
    let http = reqwest::Client::new();
    let token = mint(&http, &r.base, key, "bench/intake").await?;
    let mut out = Vec::new();
    for i in 0..o.samples {
        let (s, p) = post(
            &http,
            &format!("{}/api/v1/proposals", r.base),
            &token,
            &write_body(9999, i as u64),
        )
        .await?;
        if s != 201 {
            return Err(format!("propose: {s} {p}"));
        }
        let id = p["id"].as_str().unwrap_or_default().to_owned();
        let review: Value = r
            .http
            .get(format!("{}/api/review?id={id}", r.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let hash = review["content_hash"].as_str().ok_or("no content hash")?.to_owned();
        let waiter = {
            let (http, url, exec) = (http.clone(), format!("{}/api/v1/jobs/claim", r.base), exec.to_owned());
            tokio::spawn(async move {
                let body = json!({ "max": 1, "wait_seconds": 30, "lease_seconds": 60 });
                let res = http.post(url).bearer_auth(&exec).json(&body).send().await;
                let at = Instant::now();
                let b: Value = match res {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                (at, b)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let res = r
            .http
            .post(format!("{}/api/decide", r.base))
            .header("origin", &r.base)
            .form(&[
                ("id", id.as_str()),
                ("verdict", "approve"),
                ("comment", ""),
                ("content_hash", &hash),
                ("view_ms", "5000"),
                ("csrf", &r.csrf),
            ])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let committed = Instant::now();
        if !res.status().is_success() {
            return Err(format!(
                "approve: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            ));
        }
        let (returned, body) = waiter.await.map_err(|e| e.to_string())?;
        let job = body["jobs"].get(0).cloned().ok_or("the claim returned no job")?;
        out.push(returned.saturating_duration_since(committed));
        let done = json!({ "lease_id": job["lease_id"], "status": "succeeded" });
        post(
            &http,
            &format!(
                "{}/api/v1/jobs/{}/complete",
                r.base,
                job["job_id"].as_str().unwrap_or("")
            ),
            exec,
            &done,
        )
        .await?;
    }
    Ok(Latencies::new(out))
}

/// The writer's counters: (batches, requests, run seconds, commit seconds, retried batches).
type WriterCounters = (f64, f64, f64, f64, f64);

/// The server's metrics page, read once.
async fn metrics_text(base: &str) -> Option<String> {
    reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()
}

/// One unlabelled metric's value from a metrics page.
fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Completions finished together: (writes, completions) so far, summed over
/// the processes.
async fn completion_counters(bases: &[String]) -> (f64, f64) {
    let mut sum = (0.0, 0.0);
    for base in bases {
        let text = metrics_text(base).await.unwrap_or_default();
        sum.0 += metric_in(&text, "countersign_completions_per_write_count").unwrap_or(0.0);
        sum.1 += metric_in(&text, "countersign_completions_per_write_sum").unwrap_or(0.0);
    }
    sum
}

/// The writers' counters, summed over the processes.
async fn writer_counters(bases: &[String]) -> Option<WriterCounters> {
    let mut sum = (0.0, 0.0, 0.0, 0.0, 0.0);
    for base in bases {
        let text = metrics_text(base).await?;
        let metric = |name: &str| metric_in(&text, name);
        sum.0 += metric("countersign_write_batch_size_count")?;
        sum.1 += metric("countersign_write_batch_size_sum")?;
        sum.2 += metric("countersign_write_batch_run_seconds_sum")?;
        sum.3 += metric("countersign_write_batch_commit_seconds_sum")?;
        sum.4 += metric("countersign_write_batch_retries_total").unwrap_or(0.0);
    }
    Some(sum)
}

/// Batches, mean requests per batch, mean run and commit time, between two readings.
fn writer_between(a: WriterCounters, b: WriterCounters) -> String {
    let n = (b.0 - a.0).max(1.0);
    format!(
        "{:.0} · {:.1} · {:.2} · {:.2} · {:.0} retried",
        b.0 - a.0,
        (b.1 - a.1) / n,
        (b.2 - a.2) / n * 1000.0,
        (b.3 - a.3) / n * 1000.0,
        b.4 - a.4
    )
}

async fn render(r: &Reviewer, paths: &[String]) -> Result<Latencies, String> {
    let mut out = Vec::new();
    for p in paths {
        let t0 = Instant::now();
        let res = r
            .http
            .get(format!("{}{p}", r.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let _ = res.bytes().await;
        out.push(t0.elapsed());
        if !status.is_success() {
            return Err(format!("GET {p}: {status}"));
        }
    }
    Ok(Latencies::new(out))
}

async fn run(o: Opts) -> Result<Vec<Row>, String> {
    let dir = std::env::temp_dir().join(format!("countersign-bench-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = fresh_db(&o, &dir).await?;
    let result = run_on(&o, &db).await;
    if o.keep {
        eprintln!("kept the database: {}", db.url);
        return result;
    }
    db.drop_pg().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {} (server.log)", dir.display());
    }
    result
}

async fn run_on(o: &Opts, db: &Db) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let backend = if db.pg.is_some() { "PostgreSQL" } else { "SQLite" };
    let policy = db.dir.join("policy.toml");
    let base = match &o.base_policy {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => include_str!("../examples/policy.toml").to_owned(),
    };
    std::fs::write(&policy, format!("{base}\n{BENCH_POLICY}")).map_err(|e| e.to_string())?;

    if o.mcp {
        return mcp::run(o, db, backend).await;
    }
    if o.attacks {
        cli(o, db, &["migrate"], None)?;
        for name in ["rita", "gus", "vic", "val", "vin", "viv", "vera"] {
            cli(
                o,
                db,
                &["user", "add", name, "--role", "reviewer", "--tenant", "acme"],
                Some(&format!("{PASSWORD}\n")),
            )?;
        }
        let key = cli(
            o,
            db,
            &[
                "key", "create", "service", "--tenant", "acme", "--env", "prod", "--name", "bench",
            ],
            None,
        )?;
        let server = start_server(o, db, &policy).await?;
        let mut rows = attacks::run(&server, &key, o.seconds).await?;
        rows.insert(0, row("store", backend, ""));
        return Ok(rows);
    }

    eprintln!("• bare SQLite inserts (the machine's limit)");
    let (single, batched) = bare_sqlite(&db.dir, if o.smoke { 0.2 } else { 3.0 }).await?;

    cli(o, db, &["migrate"], None)?;
    for (name, role, tenant) in [("rita", "reviewer", "acme"), ("root", "admin", "")] {
        let mut args = vec!["user", "add", name, "--role", role];
        if !tenant.is_empty() {
            args.extend(["--tenant", tenant]);
        }
        cli(o, db, &args, Some(&format!("{PASSWORD}\n")))?;
    }
    let (key, exec) = bench_keys(o, db, "bench", &policy)?;
    if o.seed_rows > 0 {
        eprintln!("• seeding {} proposals", o.seed_rows);
        let took = seed(db, o.seed_rows).await?;
        rows.push(row(
            "seeded history rows",
            format!("{} in {:.1} s", o.seed_rows, took.as_secs_f64()),
            "",
        ));
    }
    let server = start_server(o, db, &policy).await?;
    let base = server.url.clone();
    let mut others = Vec::new();
    for n in 1..o.processes {
        others.push(start_server_n(o, db, &policy, n).await?);
    }
    let bases: Vec<String> = std::iter::once(base.clone())
        .chain(others.iter().map(|s| s.url.clone()))
        .collect();
    if o.processes > 1 {
        rows.push(row(
            "server processes (intake and drain spread over them)",
            o.processes.to_string(),
            "",
        ));
    }

    eprintln!("• intake: {} agents for {} s", o.agents, o.seconds);
    let before_intake = writer_counters(&bases).await;
    let i = intake(
        o,
        &bases,
        &key,
        "bench/intake",
        write_body,
        Duration::from_secs(o.seconds),
    )
    .await?;
    if i.ok == 0 || i.errors > 0 {
        return Err(format!("intake: {} accepted, {} errors", i.ok, i.errors));
    }
    rows.push(row(
        format!("intake, {} agents (proposals/s)", o.agents),
        format!("{:.0}", i.rate),
        "≥ 5,000 (PostgreSQL ≥ 3,000)",
    ));
    rows.push(row(
        "intake latency p50 / p99 / max (ms)",
        format!("{:.1} / {:.1} / {:.1}", i.lat.pct(0.5), i.lat.pct(0.99), i.lat.max()),
        "p99 ≤ 25",
    ));
    rows.push(row(
        "intake as a share of bare SQLite, 1 row/tx",
        format!("{:.0} %", 100.0 * i.rate / single),
        "",
    ));
    rows.push(row(
        "intake as a share of bare SQLite, 64 rows/tx",
        format!("{:.0} %", 100.0 * i.rate / batched),
        "",
    ));
    rows.push(row(
        "bare SQLite inserts/s, 1 row/tx · 64 rows/tx",
        format!("{single:.0} · {batched:.0}"),
        "(synchronous=FULL, WAL)",
    ));
    if let (Some(a), Some(b)) = (before_intake, writer_counters(&bases).await) {
        rows.push(row(
            "  writer during intake: batches · requests/batch · run · commit (ms)",
            writer_between(a, b),
            "",
        ));
    }

    eprintln!(
        "• release + claim + complete: {} jobs, {} executors",
        o.jobs, o.executors
    );
    let (released, done, rate, writer) = drain(o, &bases, &key, &exec).await?;
    if done != released {
        return Err(format!("drained {done} of {released} jobs"));
    }
    rows.push(row(
        format!(
            "claim + complete, {} executors, batches of {} (jobs/s)",
            o.executors, o.batch
        ),
        format!("{rate:.0}"),
        "≥ 5,000",
    ));
    if let Some(w) = writer {
        rows.push(row(
            "  writer while draining: batches · requests/batch · run · commit (ms) · grouping",
            w,
            "",
        ));
    }

    let reviewer = sign_in(&base, "rita").await?;
    eprintln!("• approve -> claim latency ({} samples)", o.samples);
    let l = approve_to_claim(o, &reviewer, &key, &exec).await?;
    if l.0.len() != o.samples {
        return Err("approve -> claim: samples missing".into());
    }
    rows.push(row(
        "approve -> claim p50 / p99 (ms)",
        format!("{:.1} / {:.1}", l.pct(0.5), l.pct(0.99)),
        "p99 < 50",
    ));

    eprintln!("• review render");
    if db.pg.is_some() {
        // The intake left tens of thousands of pending rows that the
        // statistics from seeding do not know of; in service, autovacuum
        // analyzes proposals after 1% of it changes (migration 0006), within
        // a minute. Do now what it would do, rather than wait for it.
        let mut c = sqlx::PgConnection::connect(&db.url).await.map_err(|e| e.to_string())?;
        sqlx::query("ANALYZE proposals")
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
    }
    let pending: Vec<String> = {
        let r: Value = reviewer
            .http
            .get(format!("{base}/api/queue"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        r["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x["id"].as_str().map(|s| format!("/proposals/{s}")))
            .collect()
    };
    if pending.is_empty() {
        return Err("no pending proposals to render".into());
    }
    let review_paths: Vec<String> = (0..o.samples).map(|i| pending[i % pending.len()].clone()).collect();
    let queue_paths: Vec<String> = (0..o.samples).map(|_| "/".to_owned()).collect();
    let rv = render(&reviewer, &review_paths).await?;
    let qv = render(&reviewer, &queue_paths).await?;
    let label = if o.seed_rows > 0 {
        format!(" at {} rows", o.seed_rows + i.ok)
    } else {
        String::new()
    };
    rows.push(row(
        format!("render /proposals/{{id}}{label} p50 / p99 (ms)"),
        format!("{:.1} / {:.1}", rv.pct(0.5), rv.pct(0.99)),
        "p99 < 10",
    ));
    rows.push(row(
        format!("render / (queue, {} rows shown) p50 / p99 (ms)", pending.len()),
        format!("{:.1} / {:.1}", qv.pct(0.5), qv.pct(0.99)),
        "p99 < 10",
    ));

    let rss = server.peak_rss_mb();
    rows.push(row("server peak RSS (MB)", format!("{rss:.0}"), "≤ 150"));
    drop(others);
    drop(server);
    let verify = cli(o, db, &["audit", "verify"], None)?;
    rows.push(row("audit chain after the run", verify, ""));
    rows.insert(0, row("store", backend, ""));
    Ok(rows)
}

fn main() {
    // The chaos harness's executors are this binary again.
    if std::env::args().nth(1).as_deref() == Some("chaos-executor") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        if let Err(e) = rt.block_on(chaos::executor()) {
            eprintln!("chaos executor: {e}");
            std::process::exit(1);
        }
        return;
    }
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("countersign-bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if o.chaos {
        if let Err(e) = rt.block_on(chaos::run(&o)) {
            eprintln!("countersign-bench --chaos: {e}");
            std::process::exit(1);
        }
        return;
    }
    match rt.block_on(run(o)) {
        Ok(rows) => {
            let w = rows.iter().map(|r| r.what.chars().count()).max().unwrap_or(10);
            let v = rows.iter().map(|r| r.value.chars().count()).max().unwrap_or(10);
            println!("| {:w$} | {:v$} | target |", "measure", "figure");
            println!("|{}|{}|---|", "-".repeat(w + 2), "-".repeat(v + 2));
            for r in rows {
                println!("| {:w$} | {:v$} | {} |", r.what, r.value, r.target);
            }
        }
        Err(e) => {
            eprintln!("countersign-bench: {e}");
            std::process::exit(1);
        }
    }
}
