//! Use-cases. Each state change is one store transaction that also appends
//! its audit event: a named function over a `Tx`, handed to the store's
//! single writer in one line. The JSON API and the pages both call `Core`, so
//! every rule is enforced here, once, below both doors.
//!
//! Dependencies between the modules point one way (an arrow: "calls"):
//!
//! ```text
//! sweeper     ─> proposals, jobs, controls, privacy  (each module's expiry; erasure)
//! credentials ─> runs ─> release                     (revocation cancels)
//! proposals   ─> runs, release, previews, receipts, waiting
//! decisions   ─> people, release, receipts, passkeys (a signed decision)
//! controls    ─> people, release                     (a switch off releases what it held)
//! jobs        ─> previews, finishing, breakers, waiting
//! release     ─> receipts                            (approved -> held | queued, cancels unclaimed)
//! upstream_calls                                     (the upstream executor's intents and outcomes)
//! history     ─> audit_log, people, privacy;  review ─> people, privacy, previews
//! proposals, audit_log ─> privacy                    (recording personal fields)
//! audit_log, people, previews, proposals, decisions, controls, jobs ─> notify
//! ```
//!
//! `service_modules_depend_one_way` (below) fails when an arrow points back.

mod audit_log;
mod breakers;
mod controls;
mod credentials;
mod decisions;
mod finishing;
mod history;
mod jobs;
mod known;
mod notify;
mod passkeys;
mod people;
mod previews;
mod privacy;
mod proposals;
mod receipts;
mod release;
mod review;
mod runs;
mod sweeper;
mod upstream_calls;
mod waiting;

pub use audit_log::VerifyReport;
pub use controls::{Banner, BannerKind};
pub use credentials::{Credential, NewKey};
pub use decisions::DecideRequest;
pub use finishing::Completion;
pub use history::{AuditLogPage, HistoryEntry, HistoryPage, HistoryQuery};
pub use jobs::{ClaimRequest, ClaimedJob, CompleteRequest, Heartbeat, PreviewReport};
pub use notify::{Delivery, EVENTS};
pub use passkeys::{relying_party, PasskeyInfo, PasskeyProof, PasskeyStart};
pub use people::{LoginOutcome, NewUser, Person, PersonRow, BAD_LOGIN};
pub use privacy::{PersonalData, PurgeReport};
pub use proposals::{ProposalOut, ProposeRequest, Via};
pub use receipts::RECEIPT_KEY_REFRESH;
pub use review::{QueueEntry, ReviewData, RunEntry};
pub use runs::{CheckOutcome, MintRequest, MintedRun, ProposingRun, ReadCheck, ReadPermit};
pub use upstream_calls::{CallOutcome, CallStart, UpstreamCall, MAX_UPSTREAM_RESULT_BYTES, UPSTREAM_EXECUTOR_KEY_ID};

pub use crate::audit::{current_request_id, REQUEST_ID};
pub use crate::store::StoreOptions;

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::passwords::Passwords;
use crate::policy::Policy;
use crate::store::{Backend, Notice, Store};
use crate::tokens::Keyring;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;

/// Settings the use-cases need (the server maps flags and environment here).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where reviewers open proposals: `review_url` is built from it.
    pub public_url: String,
    /// The longest a run token lives, whatever is asked (default 900 s).
    pub max_run_ttl_secs: i64,
    /// Failed logins before an account or address is slowed down.
    pub login_free_failures: i64,
    /// Sessions idle this long end.
    pub session_idle_secs: i64,
    /// Sessions this old end, however active.
    pub session_absolute_secs: i64,
    /// Decisions faster than this are flagged as possible rubber stamps.
    pub quick_decision_ms: i64,
    /// How often a long-poll looks again when no notice woke it: a safety
    /// net for a lost notice, not how waiting works.
    pub wait_recheck_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:3000".into(),
            max_run_ttl_secs: 900,
            login_free_failures: 5,
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 3600,
            quick_decision_ms: 2000,
            wait_recheck_ms: 5_000,
        }
    }
}

/// Long-polls one run or executor key may hold open at once.
pub const MAX_LONG_POLLS_PER_HOLDER: usize = 16;

/// Where a person opens a proposal's review.
pub fn review_url(public_url: &str, id: &str) -> String {
    format!("{}/proposals/{id}", public_url.trim_end_matches('/'))
}

/// The credential of a run: what its token grants, checked on every call.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPrincipal {
    pub run_id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub tools: Vec<String>,
    /// The person the agent acts for, who may never approve its proposals.
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePrincipal {
    pub key_id: String,
    pub name: String,
    pub tenant: String,
    pub env: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorPrincipal {
    pub key_id: String,
    pub name: String,
    pub env: String,
    pub tools: BTreeSet<String>,
}

/// How many executors' keys a process keeps what it knows of.
const KNOWN_KEYS_MAX: usize = 10_000;

/// The system itself: background tasks.
pub const SYSTEM_ACTOR: &str = "system";
pub const CLI_ACTOR: &str = "cli";

/// Proof that the caller may administer: a signed-in admin, the command line
/// (which holds the database already), or the system itself. Administrative
/// use-cases take one, so no door can reach them without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin(String);

impl Admin {
    pub fn cli() -> Admin {
        Admin(CLI_ACTOR.into())
    }
    pub fn system() -> Admin {
        Admin(SYSTEM_ACTOR.into())
    }
    /// A signed-in person with the admin role; anyone else is refused.
    pub fn person(p: &Person) -> Result<Admin> {
        if p.roles.admin {
            Ok(Admin(p.actor()))
        } else {
            Err(Error::Forbidden("only admins may do this".into()))
        }
    }
    /// How the audit log names this admin.
    pub fn actor(&self) -> &str {
        &self.0
    }
}

/// Where the browser sessions live: beside the core's data. The one place a
/// pool leaves the core, kept on purpose: tower-sessions' sqlx store takes a
/// pool and owns its own table, and on PostgreSQL sharing the core's pool
/// keeps the connection count bounded. Nothing else may reach the store.
pub enum SessionDatabase {
    Sqlite(Box<sqlx::sqlite::SqliteConnectOptions>),
    Postgres(sqlx::PgPool),
}

/// Counts read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub proposals_pending: i64,
    /// How long the oldest pending proposal has waited (ms), if any waits.
    pub oldest_pending_ms: Option<i64>,
    pub jobs_queued: i64,
    pub jobs_leased: i64,
    /// Route breakers tripped now (release stops on them).
    pub breakers_tripped: i64,
    /// Since this process last verified the audit chain (ms), if it has.
    pub audit_verified_ago_ms: Option<i64>,
    /// Whether this process's last verification found the chain broken.
    pub audit_broken: bool,
    /// Write transactions this process committed (a counter).
    pub write_batches: u64,
}

pub struct Core {
    store: Store,
    passwords: Passwords,
    settings: Settings,
    policy: RwLock<Arc<Policy>>,
    /// The hash of the policy in force, changed when another is swapped in.
    policy_hash: tokio::sync::watch::Sender<String>,
    keyring: RwLock<Keyring>,
    /// When the run-token keys were last reloaded for an unknown key id.
    keyring_reloaded: std::sync::Mutex<Option<std::time::Instant>>,
    /// What this process knows of the runs it has admitted.
    known_runs: runs::KnownRuns,
    /// What this process knows of the executors' keys it has admitted, by
    /// the key's hash (`Core::authenticate_executor`).
    known_keys: known::Memory<ExecutorPrincipal>,
    /// Long-polls each run or executor key holds open.
    long_polls: std::sync::Arc<crate::limits::Slots>,
    /// The diff thread: one diff at a time, 32 in the line.
    diffs: crate::limits::Workers,
    /// The last audit event the audit page verified (seq, hash, count).
    verified_to: std::sync::Mutex<Option<(i64, String, u64)>>,
    /// When (ms) a verification of the chain last passed here (0: never),
    /// and whether the last one found it broken.
    audit_verified_at: std::sync::atomic::AtomicI64,
    audit_broken: std::sync::atomic::AtomicBool,
    /// The key that signs approval receipts now.
    receipt_key: RwLock<Option<crate::receipts::ReceiptKey>>,
    /// Gathers executors' successes into shared writes.
    finisher: finishing::Finisher,
    /// When the sweeper last forgot old sign-in throttle records (ms).
    throttles_forgotten_at: std::sync::atomic::AtomicI64,
    /// When (application clock) the sweeper last looked for personal data
    /// past its retention.
    erasure_checked_at: std::sync::atomic::AtomicI64,
    /// The WebAuthn relying party (the public URL), or why passkeys are off.
    webauthn: std::result::Result<Arc<webauthn_rs::Webauthn>, String>,
}

impl Core {
    /// Open (creating and migrating as needed) the database and build the
    /// core over it, making sure a signing key exists. The server then
    /// records the policy it loaded (`record_policy_load`).
    pub async fn open(db: StoreOptions, policy: Policy, settings: Settings) -> Result<Arc<Core>> {
        let store = Store::open(db).await?;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let webauthn = relying_party(&settings.public_url).map(Arc::new);
        if let Err(why) = &webauthn {
            tracing::info!("passkeys are off: {why}");
        }
        let core = Arc::new(Core {
            webauthn,
            finisher: finishing::Finisher::start(store.clone()),
            store,
            passwords: Passwords::new(threads),
            settings,
            policy_hash: tokio::sync::watch::channel(policy.hash.clone()).0,
            policy: RwLock::new(Arc::new(policy)),
            keyring: RwLock::new(Keyring::default()),
            keyring_reloaded: std::sync::Mutex::new(None),
            known_runs: runs::KnownRuns::new(runs::KNOWN_RUNS_MAX),
            known_keys: known::Memory::new(KNOWN_KEYS_MAX),
            receipt_key: RwLock::new(None),
            verified_to: std::sync::Mutex::new(None),
            audit_verified_at: std::sync::atomic::AtomicI64::new(0),
            audit_broken: std::sync::atomic::AtomicBool::new(false),
            diffs: crate::limits::Workers::new("diff", 1, 32),
            long_polls: std::sync::Arc::default(),
            throttles_forgotten_at: std::sync::atomic::AtomicI64::new(0),
            erasure_checked_at: std::sync::atomic::AtomicI64::new(i64::MIN / 2),
        });
        core.load_keyring().await?;
        core.load_receipt_keys().await?;
        Ok(core)
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The policy's hash now, and a way to wait for the next policy (the
    /// MCP gateway tells its clients their tools list changed).
    pub fn policy_changes(&self) -> tokio::sync::watch::Receiver<String> {
        self.policy_hash.subscribe()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn clock(&self) -> &SharedClock {
        self.store.clock()
    }

    pub fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// Whether an unknown key id may reload the run-token keys now: at most
    /// once a second, however many tokens name keys nobody made.
    fn may_reload_keyring(&self) -> bool {
        let mut last = self.keyring_reloaded.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// A place for one more long-poll of `holder` (a run, an executor key):
    /// each may hold only so many open, so waiting is never a way to pile
    /// up connections.
    pub(super) fn long_poll_slot(&self, holder: &str) -> Result<crate::limits::Slot> {
        self.long_polls
            .take(holder, MAX_LONG_POLLS_PER_HOLDER)
            .ok_or(Error::RateLimited { retry_after_secs: 1 })
    }

    pub fn review_url(&self, id: &str) -> String {
        review_url(&self.settings.public_url, id)
    }

    /// Changes as they commit (in this process, and on PostgreSQL in every
    /// process), for live pages and waiting callers.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.store.subscribe()
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        self.store.ping().await
    }

    /// The database the browser sessions use.
    pub fn session_database(&self) -> Result<SessionDatabase> {
        Ok(match self.store.pg_pool() {
            Some(pool) => SessionDatabase::Postgres(pool),
            None => SessionDatabase::Sqlite(Box::new(crate::store::sqlite_options(self.store.url())?)),
        })
    }

    /// What waits and what an operator alerts on: pending proposals and the
    /// oldest one's age, queued and leased jobs, tripped breakers, and how
    /// long ago the audit chain last verified here.
    pub async fn gauges(&self) -> Result<Gauges> {
        use crate::store::queries::{controls, jobs, proposals};
        use std::sync::atomic::Ordering;
        let now = self.now_ms();
        let mut r = self.store.reader().await?;
        let mut c = r.conn();
        let (pending, oldest) = proposals::pending_count_and_oldest(&mut c).await?;
        let (queued, leased) = jobs::count_queued_and_leased(&mut c).await?;
        let verified_at = self.audit_verified_at.load(Ordering::Relaxed);
        Ok(Gauges {
            proposals_pending: pending,
            oldest_pending_ms: oldest.map(|t| (now - t).max(0)),
            jobs_queued: queued,
            jobs_leased: leased,
            breakers_tripped: controls::count_breakers(&mut c).await?,
            audit_verified_ago_ms: (verified_at > 0).then(|| (now - verified_at).max(0)),
            audit_broken: self.audit_broken.load(Ordering::Relaxed),
            write_batches: self.store.batches_committed(),
        })
    }
}

#[cfg(any(test, feature = "testing"))]
impl Core {
    /// The store, for `testing::Inspect`'s reads.
    pub(crate) fn store_for_tests(&self) -> Store {
        self.store.clone()
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("a lock was poisoned")
}

#[cfg(test)]
mod module_graph {
    //! The arrows of the diagram at the top, read from the sources: a
    //! `super::name` reference is an arrow to `name`.

    const MODULES: &[(&str, &str)] = &[
        ("audit_log", include_str!("audit_log.rs")),
        ("breakers", include_str!("breakers.rs")),
        ("controls", include_str!("controls.rs")),
        ("credentials", include_str!("credentials.rs")),
        ("decisions", include_str!("decisions.rs")),
        ("finishing", include_str!("finishing.rs")),
        ("history", include_str!("history.rs")),
        ("jobs", include_str!("jobs.rs")),
        ("notify", include_str!("notify.rs")),
        ("passkeys", include_str!("passkeys.rs")),
        ("people", include_str!("people.rs")),
        ("previews", include_str!("previews.rs")),
        ("privacy", include_str!("privacy.rs")),
        ("proposals", include_str!("proposals.rs")),
        ("receipts", include_str!("receipts.rs")),
        ("release", include_str!("release.rs")),
        ("review", include_str!("review.rs")),
        ("runs", include_str!("runs.rs")),
        ("sweeper", include_str!("sweeper.rs")),
        ("upstream_calls", include_str!("upstream_calls.rs")),
        ("waiting", include_str!("waiting.rs")),
    ];

    fn arrows(src: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, _) in MODULES {
            let path = format!("super::{name}");
            let grouped = |s: &str| {
                // `use super::{a, b, Core}` names modules too.
                s.split("use super::{").skip(1).any(|rest| {
                    rest.split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .any(|item| item.trim() == *name)
                })
            };
            let mentioned = src
                .match_indices(&path)
                .any(|(i, _)| !src[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'));
            if mentioned || grouped(src) {
                out.push(*name);
            }
        }
        out
    }

    #[test]
    fn service_modules_depend_one_way() {
        let graph: Vec<(&str, Vec<&str>)> = MODULES.iter().map(|(n, src)| (*n, arrows(src))).collect();
        // Depth-first search for a path back to where it started.
        fn reaches<'a>(graph: &[(&'a str, Vec<&'a str>)], from: &'a str, to: &str, seen: &mut Vec<&'a str>) -> bool {
            let next = graph
                .iter()
                .find(|(n, _)| *n == from)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            next.into_iter().any(|m| {
                if m == to {
                    return true;
                }
                if seen.contains(&m) {
                    return false;
                }
                seen.push(m);
                reaches(graph, m, to, seen)
            })
        }
        for (name, _) in &graph {
            assert!(
                !reaches(&graph, name, name, &mut Vec::new()),
                "service module {name} depends on itself through others: {graph:?}"
            );
        }
        // The test reads what it should: the sweeper calls the expiries.
        let sweeper = &graph.iter().find(|(n, _)| *n == "sweeper").unwrap().1;
        assert!(
            sweeper.contains(&"proposals") && sweeper.contains(&"jobs"),
            "{sweeper:?}"
        );
    }
}
