//! countersign's core: the system itself, with no UI.
//!
//! - Pure parts, tested without a database: [`policy`] (tools, routes, args
//!   schemas, decisions), [`lifecycle`] (proposal and job states, the legal
//!   moves, who may decide), [`controls`] (which kill switch or breaker
//!   covers what), [`diff`], [`secrets`], [`privacy`] (masking and erasing
//!   personal data), [`audit`] (the hash chain).
//! - Credentials: [`tokens`] (run tokens, API keys), [`passwords`],
//!   [`passkeys`] (the challenge that binds a passkey to one decision).
//! - The store (private): one set of queries over SQLite and PostgreSQL,
//!   written through a single writer per process.
//! - [`service`]: the use-cases. The JSON API and the pages both call
//!   [`service::Core`], so every rule is enforced here, once, below both doors.

#[macro_use]
mod text;

pub mod audit;
pub mod clock;
pub mod controls;
pub mod diff;
pub mod error;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod passkeys;
pub mod passwords;
pub mod policy;
pub mod privacy;
pub mod receipts;
pub mod roles;
pub mod secrets;
pub mod service;
mod store;
pub mod tokens;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
pub use store::{Backend, Notice, DEFAULT_DATABASE_URL};

/// The records the core keeps, as the use-cases answer them. Doors map them
/// to their own views; none of them reaches the store.
pub mod records {
    pub use crate::audit::AuditEvent;
    pub use crate::store::queries::controls::{
        BreakGlassRow as BreakGlass, BreakerRow as Breaker, SwitchRow as Switch,
    };
    pub use crate::store::queries::jobs::JobRow as Job;
    pub use crate::store::queries::keys::KeyRow as Key;
    pub use crate::store::queries::notify::WebhookRow as Webhook;
    pub use crate::store::queries::policy::PolicyVersionRow as PolicyVersion;
    pub use crate::store::queries::proposals::{DecisionRow as Decision, ProposalRow as Proposal};
    pub use crate::store::queries::runs::RunRow as Run;
    pub use crate::store::queries::upstream_calls::UpstreamCallRow as UpstreamCallRecord;
}
