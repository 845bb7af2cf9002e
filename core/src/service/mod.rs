//! Use-cases. Each state change is one store transaction that also appends
//! its audit event: a named function over a `Tx`, handed to the store's
//! single writer in one line. The JSON API and the pages both call `Core`, so
//! every rule is enforced here, once, below both doors.
//!
//! Dependencies between the modules point one way:
//!
//! ```text
//! sweeper ─> proposals, jobs, controls
//! proposals, decisions ─> release ─> notify
//! jobs ─> breakers ─> notify
//! controls ─> release
//! proposals, jobs, history, review ─> waiting (the one long-poll loop)
//! ```

mod audit_log;
mod breakers;
mod controls;
mod credentials;
mod decisions;
mod finishing;
mod history;
mod jobs;
mod notify;
mod people;
mod proposals;
mod receipts;
mod release;
mod review;
mod runs;
mod sweeper;
mod waiting;

pub use audit_log::VerifyReport;
pub use controls::{Banner, BannerKind};
pub use credentials::{Credential, NewKey};
pub use decisions::DecideRequest;
pub use history::{AuditLogPage, HistoryEntry, HistoryPage, HistoryQuery};
pub use jobs::{ClaimRequest, ClaimedJob, CompleteRequest, Completion, Heartbeat, PreviewReport};
pub use notify::{Delivery, EVENTS};
pub use people::{LoginOutcome, NewUser, Person, PersonRow, BAD_LOGIN};
pub use proposals::{ProposalOut, ProposeRequest};
pub use review::{QueueEntry, ReviewData};
pub use runs::{CheckOutcome, MintRequest, MintedRun};

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

/// Where the browser sessions live: beside the core's data.
pub enum SessionDatabase {
    Sqlite(Box<sqlx::sqlite::SqliteConnectOptions>),
    Postgres(sqlx::PgPool),
}

/// Counts read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub proposals_pending: i64,
    pub jobs_queued: i64,
    /// Write transactions this process committed (a counter).
    pub write_batches: u64,
}

pub struct Core {
    store: Store,
    passwords: Passwords,
    settings: Settings,
    policy: RwLock<Arc<Policy>>,
    keyring: RwLock<Keyring>,
    /// The key that signs approval receipts now.
    receipt_key: RwLock<Option<crate::receipts::ReceiptKey>>,
    /// Gathers executors' successes into shared writes.
    finisher: finishing::Finisher,
}

impl Core {
    /// Open (creating and migrating as needed) the database and build the
    /// core over it, making sure a signing key exists. The server then
    /// records the policy it loaded (`record_policy_load`).
    pub async fn open(db: StoreOptions, policy: Policy, settings: Settings) -> Result<Arc<Core>> {
        let store = Store::open(db).await?;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let core = Arc::new(Core {
            finisher: finishing::Finisher::start(store.clone()),
            store,
            passwords: Passwords::new(threads),
            settings,
            policy: RwLock::new(Arc::new(policy)),
            keyring: RwLock::new(Keyring::default()),
            receipt_key: RwLock::new(None),
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

    /// What waits: pending proposals and queued jobs.
    pub async fn gauges(&self) -> Result<Gauges> {
        let mut r = self.store.reader().await?;
        let mut c = r.conn();
        Ok(Gauges {
            proposals_pending: crate::store::queries::proposals::count_pending(&mut c).await?,
            jobs_queued: crate::store::queries::jobs::count_queued(&mut c).await?,
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
