//! Use-cases. Each state change is one `Store::write` transaction that also
//! appends its audit event; the JSON API and the pages both call these
//! functions, so every rule is enforced here, once, below both doors.

mod audit_log;
mod controls;
mod credentials;
mod decisions;
mod finishing;
mod history;
mod jobs;
mod notify;
mod people;
mod proposals;
mod runs;
mod views;

pub use audit_log::VerifyReport;
pub use controls::covering;
pub use credentials::{Credential, NewKey};
pub use decisions::DecideRequest;
pub use jobs::{ClaimRequest, ClaimedJob, CompleteRequest, Completion};
pub use notify::{Delivery, EVENTS};
pub use people::{LoginOutcome, NewUser, Person, PersonRow, Roles, BAD_LOGIN};

/// The one message for a failed sign-in.
pub fn people_bad_login() -> &'static str {
    BAD_LOGIN
}
pub use proposals::{ProposalOut, ProposeRequest};
pub use runs::{CheckOutcome, MintRequest, MintedRun};

use crate::core::clock::SharedClock;
use crate::core::error::{Error, Result};
use crate::core::passwords::Passwords;
use crate::core::policy::Policy;
use crate::core::store::Store;
use crate::core::tokens::Keyring;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// Settings the use-cases need (the server maps flags and environment here).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where reviewers open proposals: `review_url` is built from it.
    pub public_url: String,
    /// The longest a run token lives, whatever is asked (API.md: default 900 s).
    pub max_run_ttl_secs: i64,
    /// Failed logins before an account or address is slowed down.
    pub login_free_failures: i64,
    /// Sessions idle this long end.
    pub session_idle_secs: i64,
    /// Sessions this old end, however active.
    pub session_absolute_secs: i64,
    /// Decisions faster than this are flagged as possible rubber stamps.
    pub quick_decision_ms: i64,
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
        }
    }
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

pub use crate::core::audit::{current_request_id, REQUEST_ID};

pub struct Core {
    pub store: Store,
    pub passwords: Passwords,
    pub settings: Settings,
    policy: RwLock<Arc<Policy>>,
    keyring: RwLock<Keyring>,
    /// Gathers executors' successes into shared writes.
    finisher: finishing::Finisher,
}

impl Core {
    /// Build the core over an open store, making sure a signing key exists.
    /// The server then records the policy it loaded (`record_policy_load`).
    pub async fn start(store: Store, policy: Policy, settings: Settings) -> Result<Arc<Core>> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let core = Arc::new(Core {
            finisher: finishing::Finisher::start(store.clone()),
            store,
            passwords: Passwords::new(threads),
            settings,
            policy: RwLock::new(Arc::new(policy)),
            keyring: RwLock::new(Keyring::default()),
        });
        core.load_keyring().await?;
        Ok(core)
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn clock(&self) -> &SharedClock {
        self.store.clock()
    }

    pub fn now_ms(&self) -> i64 {
        self.store.now_ms()
    }

    pub fn review_url(&self, id: &str) -> String {
        format!("{}/proposals/{id}", self.settings.public_url.trim_end_matches('/'))
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("a lock was poisoned")
}
