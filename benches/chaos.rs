//! `countersign-bench --chaos`: countersign on PostgreSQL as three processes
//! behind HAProxy, under load and under fire, then a table of invariants.
//!
//! Everything runs on loopback: a PostgreSQL cluster of the harness's own
//! (initdb in a temporary directory, so restarting it touches nothing else),
//! three `countersign serve` processes, HAProxy in front of them with HTTP
//! health checks on `/readyz`, and executor processes (this binary again,
//! `countersign-bench chaos-executor`) that claim through the balancer and
//! record each effect in a SQLite file keyed by `execution_key`. In this
//! process, agents propose (half of it auto-approved, half for review) and
//! reviewers, signed in once through the balancer, approve or reject in the
//! browser API.
//!
//! While that runs, faults come in turn: SIGKILL a server process (restarted
//! a moment later), `pg_terminate_backend` on every connection of
//! countersign, SIGKILL an executor (restarted), and once, in the middle, an
//! immediate (crash) restart of PostgreSQL. After each fault the harness
//! waits for every server to be ready again and checks that a change made
//! on one process reaches a live stream open on another.
//!
//! At the end: agents stop, everything accepted must reach a final state
//! within a bound, and the invariants are printed as a table (every
//! acknowledged proposal exists, every approved job took effect exactly
//! once, nothing stuck, `countersign audit verify`, the reviewers never had
//! to sign in again, live updates across processes, no 5xx once calm), with
//! a table of the faults: when, what, the 5xx and connection errors clients
//! saw during and after it, and how long recovery took.
//!
//! `--smoke` is CI's short form (about two minutes); `--seconds 600` and up
//! is the long form. `--chaos-seed` replays a schedule.

use super::{cli, mint, post, sign_in_as, Opts, Reviewer, BENCH_POLICY, PASSWORD};
use serde_json::{json, Value};
use sqlx::Connection;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease an executor takes: a killed executor's jobs come back after it.
const LEASE_SECONDS: u64 = 15;
/// How long a job's work takes in the test executor, after its effect.
const WORK: Duration = Duration::from_millis(50);
const SERVERS: usize = 3;
const EXECUTORS: usize = 4;
const AGENTS: usize = 6;
const REVIEWERS: [&str; 2] = ["rita", "ravi"];
/// Runs are minted for 900 s; agents and the probe take new ones after this.
const RUN_RENEW: Duration = Duration::from_secs(600);

/// A small, seedable generator: a run's schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn free_port() -> Result<u16, String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| e.to_string())?
        .local_addr()
        .map_err(|e| e.to_string())?
        .port())
}

// ---------------------------------------------------------------------------
// PostgreSQL of the harness's own

struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

fn postgres_bin() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL's server programs are not installed (/usr/lib/postgresql)".to_owned())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_owned())
}

impl Postgres {
    /// PostgreSQL refuses to run as root: as root, run it as `postgres`.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if unsafe_is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    async fn start_new() -> Result<Postgres, String> {
        let data = std::env::temp_dir().join(format!("countersign-chaos-pg-{}", ulid::Ulid::new()));
        let pg = Postgres {
            bin: postgres_bin()?,
            data,
            port: free_port()?,
        };
        let d = pg.data.to_string_lossy().to_string();
        pg.run(
            "initdb",
            &["-D", &d, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
        )?;
        pg.start()?;
        Ok(pg)
    }

    fn start(&self) -> Result<(), String> {
        let d = self.data.to_string_lossy().to_string();
        let log = self.data.join("postgres.log").to_string_lossy().to_string();
        let options = format!(
            "-p {} -k {d} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on",
            self.port
        );
        self.run(
            "pg_ctl",
            &["-D", &d, "-o", &options, "-l", &log, "-w", "-t", "60", "start"],
        )
    }

    /// A crash: no checkpoint, no goodbye to clients; recovery replays the WAL.
    fn crash(&self) -> Result<(), String> {
        let d = self.data.to_string_lossy().to_string();
        self.run("pg_ctl", &["-D", &d, "-m", "immediate", "-w", "stop"])
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/countersign", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let d = self.data.to_string_lossy().to_string();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &d, "-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unsafe_is_root() -> bool {
    // The effective user id, from the kernel's own account of this process.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Processes

struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Setup {
    server_bin: PathBuf,
    bench_bin: PathBuf,
    site_root: PathBuf,
    dir: PathBuf,
    db_url: String,
    policy: PathBuf,
    balancer: String,
    exec_key: String,
}

impl Setup {
    /// A process's log in the run's directory, appended to across restarts.
    fn log(&self, name: &str) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .map_err(|e| e.to_string())
    }

    fn spawn_server(&self, port: u16, n: usize) -> Result<Proc, String> {
        let log = self.log(&format!("server-{n}.log"))?;
        let child = Command::new(&self.server_bin)
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--policy"])
            .arg(&self.policy)
            .arg("--site-root")
            .arg(&self.site_root)
            .args(["--public-url", &self.balancer])
            .env("DATABASE_URL", &self.db_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting countersign: {e}"))?;
        Ok(Proc { child: Some(child) })
    }

    fn spawn_executor(&self, n: usize) -> Result<Proc, String> {
        let log = self.log(&format!("executor-{n}.log"))?;
        let child = Command::new(&self.bench_bin)
            .arg("chaos-executor")
            .env("CHAOS_BASE", &self.balancer)
            .env("CHAOS_EXECUTOR_KEY", &self.exec_key)
            .env("CHAOS_EFFECTS", self.dir.join("effects.db"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting an executor: {e}"))?;
        Ok(Proc { child: Some(child) })
    }
}

async fn wait_ready(url: &str, within: Duration) -> Result<Duration, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > within {
            return Err(format!("{url} was not ready within {} s", within.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn haproxy_config(port: u16, servers: &[u16]) -> String {
    let mut s = format!(
        "global\n  maxconn 4096\n\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 90s\n  timeout server 90s\n  \
         timeout tunnel 1h\n  retries 3\n  option redispatch\n\n\
         frontend countersign\n  bind 127.0.0.1:{port}\n  default_backend servers\n\n\
         backend servers\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
         default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2\n"
    );
    for (i, p) in servers.iter().enumerate() {
        s.push_str(&format!("  server s{} 127.0.0.1:{p} check\n", i + 1));
    }
    s
}

// ---------------------------------------------------------------------------
// What the clients saw

#[derive(Clone, Copy, PartialEq)]
enum Seen {
    Ok,
    ServerError,
    Connection,
}

struct Ctx {
    t0: Instant,
    balancer: String,
    servers: Vec<String>,
    service_key: String,
    /// (seconds since start, what a client saw), every request of agents and reviewers.
    seen: Mutex<Vec<(f64, Seen)>>,
    /// Proposals acknowledged with 201/200: id -> tool.
    accepted: Mutex<HashMap<String, String>>,
    /// Answers other than 2xx, 5xx or a lost connection: a bug in the harness or the server.
    unexpected: Mutex<Vec<String>>,
    proposals_started: AtomicU64,
    max_proposals: u64,
    stop_agents: AtomicBool,
    stop_reviewers: AtomicBool,
    decisions: AtomicU64,
    decisions_after_first_kill: AtomicU64,
    first_server_kill: AtomicBool,
    re_sign_ins: AtomicU64,
    /// Pause between two proposals of one agent.
    pace: Duration,
}

impl Ctx {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
    fn saw(&self, s: Seen) {
        let at = self.now();
        self.seen.lock().unwrap().push((at, s));
    }
    /// Count one answer; `None` when it should be tried again (5xx or a lost connection).
    fn judge(&self, r: Result<reqwest::Response, reqwest::Error>) -> Option<reqwest::Response> {
        match r {
            Ok(r) if r.status().is_server_error() => {
                self.saw(Seen::ServerError);
                None
            }
            Ok(r) => {
                self.saw(Seen::Ok);
                Some(r)
            }
            Err(_) => {
                self.saw(Seen::Connection);
                None
            }
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Mint a run through the balancer, trying again through faults.
async fn mint_through(ctx: &Ctx, route: &str) -> Result<String, String> {
    let http = http_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match mint(&http, &ctx.balancer, &ctx.service_key, route).await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// One proposal, tried again with the same idempotency key until it is
/// answered (or a minute passes). Returns its id.
async fn propose(ctx: &Ctx, http: &reqwest::Client, base: &str, token: &str, body: &Value) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let r = http
            .post(format!("{base}/api/v1/proposals"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await;
        if let Some(r) = ctx.judge(r) {
            let status = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            if status == 201 || status == 200 {
                let id = b["id"].as_str().unwrap_or_default().to_owned();
                ctx.accepted
                    .lock()
                    .unwrap()
                    .insert(id.clone(), body["tool"].as_str().unwrap_or("").to_owned());
                return Some(id);
            }
            ctx.unexpected
                .lock()
                .unwrap()
                .push(format!("propose answered {status}: {b}"));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctx.unexpected
        .lock()
        .unwrap()
        .push("a proposal was not answered within a minute".into());
    None
}

async fn agent(ctx: Arc<Ctx>, n: u64) -> Result<(), String> {
    let mut review = mint_through(&ctx, "bench/intake").await?;
    let mut auto = mint_through(&ctx, "bench/auto").await?;
    let mut minted = Instant::now();
    let http = http_client();
    let mut i = 0u64;
    while !ctx.stop_agents.load(Ordering::Relaxed)
        && ctx.proposals_started.fetch_add(1, Ordering::Relaxed) < ctx.max_proposals
    {
        // Run tokens live 15 minutes: a long run takes new ones in time.
        if minted.elapsed() > RUN_RENEW {
            review = mint_through(&ctx, "bench/intake").await?;
            auto = mint_through(&ctx, "bench/auto").await?;
            minted = Instant::now();
        }
        // The bench's own bodies: a reviewed write, then an auto-approved note.
        let (token, body) = if i.is_multiple_of(2) {
            (&review, super::write_body(n, i))
        } else {
            (&auto, super::note_body(n, i))
        };
        propose(&ctx, &http, &ctx.balancer, token, &body).await;
        i += 1;
        tokio::time::sleep(ctx.pace).await;
    }
    Ok(())
}

/// A reviewer signed in once through the balancer, deciding what its queue
/// shows (its share of it), about one in ten rejected.
async fn reviewer(ctx: Arc<Ctx>, k: usize) -> Result<(), String> {
    let name = REVIEWERS[k];
    let mut r = sign_in_until(&ctx, name).await?;
    while !ctx.stop_reviewers.load(Ordering::Relaxed) {
        let res = r.http.get(format!("{}/api/queue", ctx.balancer)).send().await;
        let Some(res) = ctx.judge(res) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if res.status().as_u16() == 401 {
            // The session did not survive: it should have.
            ctx.re_sign_ins.fetch_add(1, Ordering::Relaxed);
            r = sign_in_until(&ctx, name).await?;
            continue;
        }
        let q: Value = res.json().await.unwrap_or(Value::Null);
        let mine: Vec<String> = q["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|row| row["id"].as_str().map(str::to_owned))
            .filter(|id| id.bytes().map(u64::from).sum::<u64>() % REVIEWERS.len() as u64 == k as u64)
            .take(20)
            .collect();
        if mine.is_empty() {
            tokio::time::sleep(Duration::from_millis(150)).await;
            continue;
        }
        for id in mine {
            if ctx.stop_reviewers.load(Ordering::Relaxed) {
                break;
            }
            decide(&ctx, &r, &id).await;
        }
    }
    Ok(())
}

async fn sign_in_until(ctx: &Ctx, name: &str) -> Result<Reviewer, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match sign_in_as(&ctx.balancer, name, PASSWORD, None).await {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() > deadline => return Err(format!("{name} cannot sign in: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn decide(ctx: &Ctx, r: &Reviewer, id: &str) {
    let hash = loop {
        let res = r.http.get(format!("{}/api/review?id={id}", ctx.balancer)).send().await;
        match ctx.judge(res) {
            Some(res) if res.status().is_success() => {
                let v: Value = res.json().await.unwrap_or(Value::Null);
                match v["content_hash"].as_str() {
                    Some(h) => break h.to_owned(),
                    None => return,
                }
            }
            Some(_) => return, // decided meanwhile, or not ours to see
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if ctx.stop_reviewers.load(Ordering::Relaxed) {
            return;
        }
    };
    let reject = id.bytes().map(u64::from).sum::<u64>() % 10 == 7;
    let verdict = if reject { "reject" } else { "approve" };
    let comment = if reject { "chaos: rejected on purpose" } else { "" };
    for attempt in 0..100 {
        let res = r
            .http
            .post(format!("{}/api/decide", ctx.balancer))
            .header("origin", &ctx.balancer)
            .form(&[
                ("id", id),
                ("verdict", verdict),
                ("comment", comment),
                ("content_hash", &hash),
                ("view_ms", "5000"),
                ("csrf", &r.csrf),
            ])
            .send()
            .await;
        match ctx.judge(res) {
            Some(res) => {
                let status = res.status().as_u16();
                if res.status().is_success() {
                    ctx.decisions.fetch_add(1, Ordering::Relaxed);
                    if ctx.first_server_kill.load(Ordering::Relaxed) {
                        ctx.decisions_after_first_kill.fetch_add(1, Ordering::Relaxed);
                    }
                } else if status != 409 {
                    let text = res.text().await.unwrap_or_default();
                    // Tried again after a lost answer whose decision had
                    // committed: the reviewer is told they already decided.
                    let ours_landed = attempt > 0 && status == 403 && text.contains("You already");
                    if !ours_landed {
                        ctx.unexpected
                            .lock()
                            .unwrap()
                            .push(format!("a decision was refused with {status}: {text}"));
                    }
                }
                // 409: decided already (by the other reviewer, or released meanwhile).
                return;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if ctx.stop_reviewers.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// A change made through one process reaches a live stream open on another:
/// a reviewer's `/events` on `on`, a proposal made through `through`.
async fn live_probe(
    ctx: &Ctx,
    reviewer: &Reviewer,
    token: &str,
    on: usize,
    through: usize,
) -> Result<Duration, String> {
    let mut stream = reviewer
        .http
        .get(format!("{}/events", ctx.servers[on]))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("opening /events on server {}: {e}", on + 1))?;
    if !stream.status().is_success() {
        return Err(format!("/events on server {} answered {}", on + 1, stream.status()));
    }
    // Let the stream subscribe before the change is made, and drop what it
    // said so far: only what comes after the change counts.
    let settle = Instant::now() + Duration::from_millis(200);
    while let Ok(Ok(Some(_))) = tokio::time::timeout_at(settle.into(), stream.chunk()).await {}
    let http = http_client();
    // A plain counter: a random key would be refused as a likely secret.
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let key = format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
    let body = json!({
        "tool": "bench.write",
        "args": { "record": "R-1", "note": "live probe" },
        "idempotency_key": key,
        "reason": "live probe",
    });
    let started = Instant::now();
    let id = propose(ctx, &http, &ctx.servers[through], token, &body)
        .await
        .ok_or_else(|| format!("the probe's proposal through server {} failed", through + 1))?;
    let mut text = String::new();
    let deadline = started + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), stream.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                text.push_str(&String::from_utf8_lossy(&bytes));
                if text.contains(&id) {
                    return Ok(started.elapsed());
                }
                // The process says it may have missed changes (its listener
                // came back): a page refetches, and must then see it.
                if text.contains("\"lagged\"") {
                    let r = reviewer
                        .http
                        .get(format!("{}/api/review?id={id}", ctx.servers[on]))
                        .send()
                        .await
                        .map_err(|e| format!("refetching on server {}: {e}", on + 1))?;
                    if r.status().is_success() {
                        return Ok(started.elapsed());
                    }
                    return Err(format!("server {} said lagged, then answered {}", on + 1, r.status()));
                }
            }
            Ok(Ok(None)) => return Err(format!("server {}'s stream ended", on + 1)),
            Ok(Err(e)) => return Err(format!("server {}'s stream: {e}", on + 1)),
            Err(_) => break,
        }
    }
    Err(format!(
        "a proposal made through server {} did not reach a stream on server {} within 10 s",
        through + 1,
        on + 1
    ))
}

// ---------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    KillServer,
    TerminateConnections,
    KillExecutor,
    RestartPostgres,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillServer => "SIGKILL server",
            Fault::TerminateConnections => "pg_terminate_backend",
            Fault::KillExecutor => "SIGKILL executor",
            Fault::RestartPostgres => "PostgreSQL crash + restart",
        }
    }
}

struct FaultRow {
    fault: Fault,
    target: String,
    at: f64,
    /// Every server ready again (and PostgreSQL up), seconds after the fault.
    ready_after: f64,
    live: Result<Duration, String>,
}

/// The faults in turn, the PostgreSQL restart once in the middle.
fn schedule(n: usize) -> Vec<Fault> {
    let turn = [Fault::KillServer, Fault::TerminateConnections, Fault::KillExecutor];
    let mut v: Vec<Fault> = (0..n.saturating_sub(1)).map(|i| turn[i % 3]).collect();
    v.insert(v.len() / 2, Fault::RestartPostgres);
    v
}

// ---------------------------------------------------------------------------
// The run

pub struct ChaosOpts {
    pub seconds: u64,
    pub fault_every: u64,
    pub rate: u64,
    pub max_proposals: u64,
    pub settle_seconds: u64,
    pub seed: u64,
}

pub fn options(o: &Opts) -> ChaosOpts {
    if o.smoke {
        ChaosOpts {
            seconds: 60,
            fault_every: 5,
            rate: 40,
            max_proposals: 20_000,
            settle_seconds: 60,
            seed: o.chaos_seed,
        }
    } else {
        ChaosOpts {
            seconds: o.seconds.max(30),
            fault_every: 15,
            rate: 60,
            max_proposals: 200_000,
            settle_seconds: 120,
            seed: o.chaos_seed,
        }
    }
}

/// Run the harness; prints its tables. Err when an invariant broke (or the
/// harness could not run).
pub async fn run(o: &Opts) -> Result<(), String> {
    let c = options(o);
    let dir = std::env::temp_dir().join(format!("countersign-chaos-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let haproxy = which("haproxy").ok_or("haproxy is not installed (scripts/setup --test installs it)")?;
    eprintln!(
        "• chaos: seed {}, {} s of faults every {} s, logs in {}",
        c.seed,
        c.seconds,
        c.fault_every,
        dir.display()
    );

    let pg = Postgres::start_new().await?;
    {
        let mut admin = sqlx::PgConnection::connect(&pg.admin_url())
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        sqlx::query("CREATE DATABASE countersign")
            .execute(&mut admin)
            .await
            .map_err(|e| e.to_string())?;
    }
    let db = super::Db {
        url: pg.url(),
        pg: None,
        dir: dir.clone(),
    };
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!("{}\n{BENCH_POLICY}", include_str!("../examples/policy.toml")),
    )
    .map_err(|e| e.to_string())?;
    cli(o, &db, &["migrate"], None)?;
    for name in REVIEWERS {
        cli(
            o,
            &db,
            &["user", "add", name, "--role", "reviewer", "--tenant", "acme"],
            Some(&format!("{PASSWORD}\n")),
        )?;
    }
    let (service_key, exec_key) = super::bench_keys(o, &db, "chaos", &policy)?;
    make_effects_table(&dir.join("effects.db")).await?;

    let ports: Vec<u16> = (0..SERVERS).map(|_| free_port()).collect::<Result<_, _>>()?;
    let balancer_port = free_port()?;
    let balancer = format!("http://127.0.0.1:{balancer_port}");
    let setup = Setup {
        server_bin: o.server_bin(),
        bench_bin: std::env::current_exe().map_err(|e| e.to_string())?,
        site_root: o.site_root.clone(),
        dir: dir.clone(),
        db_url: pg.url(),
        policy: policy.clone(),
        balancer: balancer.clone(),
        exec_key,
    };
    let servers_urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let mut servers: Vec<Proc> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        servers.push(setup.spawn_server(*p, i + 1)?);
    }
    for u in &servers_urls {
        wait_ready(u, Duration::from_secs(60)).await?;
    }
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(balancer_port, &ports)).map_err(|e| e.to_string())?;
    let _haproxy = Proc {
        child: Some(
            Command::new(haproxy)
                .arg("-f")
                .arg(&cfg)
                .arg("-db")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("haproxy.log")).map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("starting haproxy: {e}"))?,
        ),
    };
    wait_ready(&balancer, Duration::from_secs(30)).await?;
    let mut executors: Vec<Proc> = (0..EXECUTORS)
        .map(|i| setup.spawn_executor(i + 1))
        .collect::<Result<_, _>>()?;
    let mut killed_executors: HashSet<u32> = HashSet::new();

    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        balancer: balancer.clone(),
        servers: servers_urls.clone(),
        service_key: service_key.clone(),
        seen: Mutex::default(),
        accepted: Mutex::default(),
        unexpected: Mutex::default(),
        proposals_started: AtomicU64::new(0),
        max_proposals: c.max_proposals,
        stop_agents: AtomicBool::new(false),
        stop_reviewers: AtomicBool::new(false),
        decisions: AtomicU64::new(0),
        decisions_after_first_kill: AtomicU64::new(0),
        first_server_kill: AtomicBool::new(false),
        re_sign_ins: AtomicU64::new(0),
        pace: Duration::from_millis((1000 * AGENTS as u64 / c.rate.max(1)).max(1)),
    });
    let agents: Vec<_> = (0..AGENTS as u64)
        .map(|n| tokio::spawn(agent(ctx.clone(), n)))
        .collect();
    let reviewers: Vec<_> = (0..REVIEWERS.len())
        .map(|k| tokio::spawn(reviewer(ctx.clone(), k)))
        .collect();
    // The probe's own reviewer session and run, made before any fault.
    let watcher = sign_in_until(&ctx, "rita").await?;
    let mut probe_token = mint_through(&ctx, "bench/intake").await?;
    let mut probe_minted = Instant::now();

    let mut rng = Rng(c.seed.max(1));
    let faults = schedule((c.seconds / c.fault_every).max(4) as usize);
    let mut rows: Vec<FaultRow> = Vec::new();
    let mut admin = None;
    for (k, fault) in faults.iter().enumerate() {
        let due = ctx.t0 + Duration::from_secs(c.fault_every * (k as u64 + 1));
        tokio::time::sleep_until(due.into()).await;
        let at = ctx.now();
        let started = Instant::now();
        let target = match fault {
            Fault::KillServer => {
                let i = rng.below(SERVERS);
                servers[i].kill();
                ctx.first_server_kill.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500 + rng.below(1500) as u64)).await;
                servers[i] = setup.spawn_server(ports[i], i + 1)?;
                format!("server {}", i + 1)
            }
            Fault::TerminateConnections => {
                let n = terminate_backends(&pg, &mut admin).await?;
                format!("{n} connections")
            }
            Fault::KillExecutor => {
                let i = rng.below(EXECUTORS);
                killed_executors.insert(executors[i].pid());
                executors[i].kill();
                executors[i] = setup.spawn_executor(i + 1)?;
                format!("executor {}", i + 1)
            }
            Fault::RestartPostgres => {
                admin = None;
                pg.crash()?;
                tokio::time::sleep(Duration::from_millis(1000)).await;
                pg.start()?;
                "the cluster".to_owned()
            }
        };
        for u in &servers_urls {
            wait_ready(u, Duration::from_secs(60)).await?;
        }
        let ready_after = started.elapsed().as_secs_f64();
        if probe_minted.elapsed() > RUN_RENEW {
            probe_token = mint_through(&ctx, "bench/intake").await?;
            probe_minted = Instant::now();
        }
        // Each process's LISTEN connection is back (pg_stat_activity):
        // notices sent before that reach it as a "lagged" (refetch).
        wait_listening(&pg, &mut admin).await?;
        let on = rng.below(SERVERS);
        let through = (on + 1 + rng.below(SERVERS - 1)) % SERVERS;
        let live = live_probe(&ctx, &watcher, &probe_token, on, through).await;
        eprintln!(
            "  {:>6.1} s  {:<28} {:<16} ready after {:.1} s, live {}",
            at,
            fault.name(),
            target,
            ready_after,
            match &live {
                Ok(d) => format!("ok in {} ms", d.as_millis()),
                Err(e) => format!("FAILED: {e}"),
            }
        );
        rows.push(FaultRow {
            fault: *fault,
            target,
            at,
            ready_after,
            live,
        });
    }
    let chaos_end = ctx.now();
    eprintln!("• chaos over at {chaos_end:.1} s; agents stop, everything accepted must settle");
    ctx.stop_agents.store(true, Ordering::Relaxed);
    for a in agents {
        a.await.map_err(|e| e.to_string())??;
    }
    let agents_done = ctx.now();

    // Calm: live updates between every pair of processes.
    let mut calm_live = Vec::new();
    for on in 0..SERVERS {
        let through = (on + 1) % SERVERS;
        calm_live.push(live_probe(&ctx, &watcher, &probe_token, on, through).await);
    }
    // Settle: everything acknowledged reaches a final state within the bound.
    let mut conn = connect_retrying(&pg.url()).await?;
    let settle_started = Instant::now();
    let mut unsettled;
    loop {
        unsettled = not_final(&mut conn).await?;
        if unsettled == 0 || settle_started.elapsed() > Duration::from_secs(c.settle_seconds) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_in = settle_started.elapsed().as_secs_f64();
    ctx.stop_reviewers.store(true, Ordering::Relaxed);
    for r in reviewers {
        r.await.map_err(|e| e.to_string())??;
    }
    let calm_end = ctx.now();
    drop(executors);

    // Read the outcome from the database and the effects file.
    let db_rows: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT p.id, p.status, j.execution_key, j.attempt FROM proposals p LEFT JOIN jobs j ON j.proposal_id = p.id",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let accepted: HashMap<String, String> = ctx.accepted.lock().unwrap().clone();
    let effects = read_effects(&dir.join("effects.db")).await?;
    let audit = cli(o, &db, &["audit", "verify"], None);

    // Invariants.
    let by_id: HashMap<&str, (&str, Option<&str>)> = db_rows
        .iter()
        .map(|(id, st, ek, _)| (id.as_str(), (st.as_str(), ek.as_deref())))
        .collect();
    let missing = accepted.keys().filter(|id| !by_id.contains_key(id.as_str())).count();
    let finals = ["succeeded", "failed", "rejected", "expired", "cancelled"];
    let stuck: Vec<&str> = db_rows
        .iter()
        .filter(|(_, st, _, _)| !finals.contains(&st.as_str()))
        .map(|(id, _, _, _)| id.as_str())
        .collect();
    let succeeded: Vec<(&str, &str)> = db_rows
        .iter()
        .filter(|(_, st, _, _)| st == "succeeded")
        .filter_map(|(id, _, ek, _)| ek.as_deref().map(|k| (id.as_str(), k)))
        .collect();
    let mut effect_count: HashMap<&str, u64> = HashMap::new();
    for e in &effects.effects {
        *effect_count.entry(e.as_str()).or_default() += 1;
    }
    let not_once = succeeded
        .iter()
        .filter(|(_, k)| effect_count.get(k).copied().unwrap_or(0) != 1)
        .count();
    let succeeded_keys: HashSet<&str> = succeeded.iter().map(|(_, k)| *k).collect();
    let stray_effects = effects
        .effects
        .iter()
        .filter(|k| !succeeded_keys.contains(k.as_str()))
        .count();
    let failed_jobs = db_rows
        .iter()
        .filter(|(_, st, ek, _)| st == "failed" && ek.is_some())
        .count();
    // A job delivered again: fine after its holder died (its lease ran out),
    // counted either way.
    let mut deliveries: HashMap<&str, Vec<u32>> = HashMap::new();
    for (k, pid) in &effects.deliveries {
        deliveries.entry(k.as_str()).or_default().push(*pid);
    }
    let redelivered = deliveries.values().filter(|v| v.len() > 1).count();
    let redelivered_alive = deliveries
        .values()
        .filter(|v| v.len() > 1 && v[..v.len() - 1].iter().any(|p| !killed_executors.contains(p)))
        .count();
    let seen = ctx.seen.lock().unwrap().clone();
    let calm_from = rows.last().map_or(0.0, |r| r.at + r.ready_after) + 5.0;
    let errors_between = |from: f64, to: f64| -> (usize, usize) {
        let w = seen.iter().filter(|(t, _)| *t >= from && *t < to);
        let (mut s5, mut conn) = (0, 0);
        for (_, s) in w {
            match s {
                Seen::ServerError => s5 += 1,
                Seen::Connection => conn += 1,
                Seen::Ok => {}
            }
        }
        (s5, conn)
    };
    let (calm_5xx, calm_conn) = errors_between(calm_from.max(chaos_end), calm_end + 1.0);
    let live_failures =
        rows.iter().filter(|r| r.live.is_err()).count() + calm_live.iter().filter(|r| r.is_err()).count();
    let unexpected = ctx.unexpected.lock().unwrap().clone();
    let decisions = ctx.decisions.load(Ordering::Relaxed);
    let after_kill = ctx.decisions_after_first_kill.load(Ordering::Relaxed);
    let re_sign_ins = ctx.re_sign_ins.load(Ordering::Relaxed);

    let mut table: Vec<(String, String, bool)> = Vec::new();
    let mut check = |what: &str, figure: String, ok: bool| table.push((what.to_owned(), figure, ok));
    check(
        "acknowledged proposals (201/200) that exist",
        format!("{} of {} ({missing} missing)", accepted.len() - missing, accepted.len()),
        missing == 0,
    );
    check(
        "proposals in a final state after the chaos",
        format!(
            "{} of {} within {settled_in:.1} s (bound {} s; {} stuck)",
            db_rows.len() - stuck.len(),
            db_rows.len(),
            c.settle_seconds,
            stuck.len()
        ),
        stuck.is_empty(),
    );
    check(
        "approved jobs that took effect exactly once",
        format!(
            "{} of {} ({not_once} not once)",
            succeeded.len() - not_once,
            succeeded.len()
        ),
        not_once == 0,
    );
    check(
        "effects without a succeeded job",
        stray_effects.to_string(),
        stray_effects == 0,
    );
    check(
        "approved jobs that ended failed",
        failed_jobs.to_string(),
        failed_jobs == 0,
    );
    check(
        "jobs delivered again only after their holder was killed",
        format!("{redelivered} delivered again, {redelivered_alive} of them from a live holder"),
        redelivered_alive == 0,
    );
    check(
        "countersign audit verify",
        match &audit {
            Ok(s) => s.lines().last().unwrap_or("").to_owned(),
            Err(e) => e.lines().next().unwrap_or("").to_owned(),
        },
        audit.is_ok(),
    );
    check(
        "reviewer sessions kept through server kills",
        format!("{re_sign_ins} re-sign-ins; {after_kill} of {decisions} decisions after the first kill"),
        re_sign_ins == 0 && (after_kill > 0 || !faults.contains(&Fault::KillServer)),
    );
    check(
        "live updates across processes",
        format!(
            "{} of {} probes",
            rows.len() + calm_live.len() - live_failures,
            rows.len() + calm_live.len()
        ),
        live_failures == 0,
    );
    check(
        "answers other than 2xx, 409, 5xx",
        match unexpected.first() {
            Some(u) => format!("{}: {}", unexpected.len(), u.chars().take(120).collect::<String>()),
            None => "0".into(),
        },
        unexpected.is_empty(),
    );
    check(
        "5xx / lost connections once calm (5 s after the last recovery)",
        format!("{calm_5xx} / {calm_conn}"),
        calm_5xx == 0 && calm_conn == 0,
    );

    println!("\nInvariants (PostgreSQL, {SERVERS} processes behind HAProxy, {EXECUTORS} executors, {AGENTS} agents, {} reviewers)\n", REVIEWERS.len());
    let w = table.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
    let v = table.iter().map(|r| r.1.chars().count()).max().unwrap_or(10);
    println!("| {:w$} | {:v$} | holds |", "invariant", "figure");
    println!("|{}|{}|-------|", "-".repeat(w + 2), "-".repeat(v + 2));
    for (what, figure, ok) in &table {
        println!("| {what:w$} | {figure:v$} | {} |", if *ok { "yes  " } else { "NO   " });
    }

    println!("\nFaults ({} in {chaos_end:.0} s; clients' 5xx / lost connections during the fault (until every server was ready) and after it (until the next))\n", rows.len());
    println!("| at (s) | fault | target | ready after (s) | 5xx during | conn during | 5xx after | conn after | recovered (s) | live across processes |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (k, r) in rows.iter().enumerate() {
        let ready = r.at + r.ready_after;
        let next = rows.get(k + 1).map_or(agents_done, |n| n.at);
        let (d5, dc) = errors_between(r.at, ready);
        let (a5, ac) = errors_between(ready, next);
        // Recovered: the last failure a client saw because of this fault.
        let last_failure = seen
            .iter()
            .filter(|(t, s)| *t >= r.at && *t < next && *s != Seen::Ok)
            .map(|(t, _)| *t)
            .fold(r.at, f64::max);
        let recovered = (last_failure - r.at).max(r.ready_after);
        println!(
            "| {:.1} | {} | {} | {:.2} | {d5} | {dc} | {a5} | {ac} | {recovered:.2} | {} |",
            r.at,
            r.fault.name(),
            r.target,
            r.ready_after,
            match &r.live {
                Ok(d) => format!("ok, {} ms", d.as_millis()),
                Err(e) => format!("FAILED: {e}"),
            }
        );
    }
    let total_requests = seen.len();
    let (all5, allc) = errors_between(0.0, f64::MAX);
    println!(
        "\n{} requests by agents and reviewers: {all5} answered 5xx, {allc} lost connections; {} proposals acknowledged, {decisions} decisions, {} effects.",
        total_requests,
        accepted.len(),
        effects.effects.len()
    );

    let broken = table.iter().filter(|r| !r.2).count();
    drop(servers);
    drop(_haproxy);
    drop(conn);
    drop(pg);
    if broken > 0 {
        eprintln!("kept {} (server, executor and haproxy logs)", dir.display());
        return Err(format!("{broken} invariants broken"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

async fn connect_retrying(url: &str) -> Result<sqlx::PgConnection, String> {
    let mut last = String::new();
    for _ in 0..60 {
        match sqlx::PgConnection::connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("PostgreSQL: {last}"))
}

async fn terminate_backends(pg: &Postgres, admin: &mut Option<sqlx::PgConnection>) -> Result<i64, String> {
    if admin.is_none() {
        *admin = Some(connect_retrying(&pg.admin_url()).await?);
    }
    let c = admin.as_mut().expect("connected above");
    let n: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = 'countersign' AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(c)
    .await
    .map_err(|e| e.to_string())?;
    Ok(n.0)
}

/// Until every server process has a connection listening for notices (or
/// 30 s pass: the probe that follows then says what is wrong).
async fn wait_listening(pg: &Postgres, admin: &mut Option<sqlx::PgConnection>) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if admin.is_none() {
            *admin = Some(connect_retrying(&pg.admin_url()).await?);
        }
        let c = admin.as_mut().expect("connected above");
        match sqlx::query_as::<_, (i64,)>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'countersign' \
             AND state = 'idle' AND query LIKE 'LISTEN%'",
        )
        .fetch_one(c)
        .await
        {
            Ok((n,)) if n >= SERVERS as i64 => return Ok(()),
            Ok(_) => {}
            Err(_) => *admin = None,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn not_final(c: &mut sqlx::PgConnection) -> Result<i64, String> {
    loop {
        match sqlx::query_as::<_, (i64,)>(
            "SELECT count(*) FROM proposals WHERE status NOT IN ('succeeded', 'failed', 'rejected', 'expired', 'cancelled')",
        )
        .fetch_one(&mut *c)
        .await
        {
            Ok(n) => return Ok(n.0),
            Err(e) => {
                eprintln!("  (reading the state: {e}; again)");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The test executor: effects keyed by execution_key, in a SQLite file all
// executor processes share.

async fn effects_pool(path: &Path, create: bool) -> Result<sqlx::SqlitePool, String> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(|e| format!("the effects file: {e}"))
}

async fn make_effects_table(path: &Path) -> Result<(), String> {
    let pool = effects_pool(path, true).await?;
    for sql in [
        "CREATE TABLE effects (execution_key TEXT PRIMARY KEY, job_id TEXT NOT NULL, pid INTEGER NOT NULL, at_ms INTEGER NOT NULL)",
        "CREATE TABLE deliveries (seq INTEGER PRIMARY KEY, execution_key TEXT NOT NULL, job_id TEXT NOT NULL, lease_id TEXT NOT NULL, pid INTEGER NOT NULL, at_ms INTEGER NOT NULL)",
    ] {
        sqlx::query(sql).execute(&pool).await.map_err(|e| e.to_string())?;
    }
    pool.close().await;
    Ok(())
}

struct Effects {
    effects: Vec<String>,
    /// (execution_key, pid) in delivery order.
    deliveries: Vec<(String, u32)>,
}

async fn read_effects(path: &Path) -> Result<Effects, String> {
    let pool = effects_pool(path, false).await?;
    let effects: Vec<(String,)> = sqlx::query_as("SELECT execution_key FROM effects")
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let deliveries: Vec<(String, i64)> = sqlx::query_as("SELECT execution_key, pid FROM deliveries ORDER BY seq")
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Effects {
        effects: effects.into_iter().map(|r| r.0).collect(),
        deliveries: deliveries.into_iter().map(|(k, p)| (k, p as u32)).collect(),
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `countersign-bench chaos-executor`: claims through the balancer, records
/// each delivery and (once per execution key, in the same transaction) its
/// effect, then completes; tries again through faults until its lease ends.
pub async fn executor() -> Result<(), String> {
    let base = std::env::var("CHAOS_BASE").map_err(|_| "CHAOS_BASE is not set")?;
    let key = std::env::var("CHAOS_EXECUTOR_KEY").map_err(|_| "CHAOS_EXECUTOR_KEY is not set")?;
    let path = PathBuf::from(std::env::var("CHAOS_EFFECTS").map_err(|_| "CHAOS_EFFECTS is not set")?);
    let pool = effects_pool(&path, false).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    let pid = std::process::id();
    loop {
        let claim = json!({ "tools": ["bench.write", "bench.note"], "max": 10, "lease_seconds": LEASE_SECONDS, "wait_seconds": 5 });
        let jobs = match post(&http, &format!("{base}/api/v1/jobs/claim"), &key, &claim).await {
            Ok((200, b)) => b["jobs"].as_array().cloned().unwrap_or_default(),
            Ok((s, b)) => {
                eprintln!("claim: {s} {b}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                eprintln!("claim: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for j in jobs {
            let job_id = j["job_id"].as_str().unwrap_or_default().to_owned();
            let lease_id = j["lease_id"].as_str().unwrap_or_default().to_owned();
            let exk = j["execution_key"].as_str().unwrap_or_default().to_owned();
            let done_before = act_once(&pool, &exk, &job_id, &lease_id, pid).await?;
            // The work takes a moment: a kill often lands between the
            // effect and its report, and the job comes back to another.
            tokio::time::sleep(WORK).await;
            let body =
                json!({ "lease_id": lease_id, "status": "succeeded", "result": { "already_done": done_before } });
            let until = Instant::now() + Duration::from_secs(LEASE_SECONDS);
            while Instant::now() < until {
                match post(&http, &format!("{base}/api/v1/jobs/{job_id}/complete"), &key, &body).await {
                    Ok((200, _)) => break,
                    Ok((409, b)) => {
                        eprintln!("complete {job_id}: lease lost: {b}");
                        break;
                    }
                    Ok((s, b)) => eprintln!("complete {job_id}: {s} {b}"),
                    Err(e) => eprintln!("complete {job_id}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Record the delivery, and the effect unless this execution key already
/// took effect, in one transaction. True when it had.
async fn act_once(pool: &sqlx::SqlitePool, exk: &str, job: &str, lease: &str, pid: u32) -> Result<bool, String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO deliveries (execution_key, job_id, lease_id, pid, at_ms) VALUES (?, ?, ?, ?, ?)")
        .bind(exk)
        .bind(job)
        .bind(lease)
        .bind(pid as i64)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    let done = sqlx::query(
        "INSERT INTO effects (execution_key, job_id, pid, at_ms) VALUES (?, ?, ?, ?) ON CONFLICT (execution_key) DO NOTHING",
    )
    .bind(exk)
    .bind(job)
    .bind(pid as i64)
    .bind(now_ms())
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?
    .rows_affected()
        == 0;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(done)
}
