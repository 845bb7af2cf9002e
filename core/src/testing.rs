//! For tests, here and in the crates above (feature `testing`): fresh
//! databases, one test per store (`store_tests!`), and reads of the raw
//! records a test asserts on, which no door offers.

pub use crate::store::testing::TestDb;

use crate::audit::AuditEvent;
use crate::error::Result;
use crate::records::{Decision, Job, Proposal, Run};
use crate::service::Core;
use crate::store::queries::{audit, jobs, proposals, runs};
use crate::store::{Store, StoreOptions};

/// Reads of what the store holds, for assertions.
pub struct Inspect {
    store: Store,
}

impl Inspect {
    /// Over a running core's store.
    pub fn of(core: &Core) -> Inspect {
        Inspect {
            store: core.store_for_tests(),
        }
    }

    /// Over the database at `url` (e.g. after its server was killed).
    pub async fn open(url: &str) -> Result<Inspect> {
        Ok(Inspect {
            store: Store::open(StoreOptions::new(url)).await?,
        })
    }

    pub async fn proposal(&self, id: &str) -> Result<Option<Proposal>> {
        proposals::get(&mut self.store.reader().await?.conn(), id).await
    }

    pub async fn decisions(&self, proposal_id: &str) -> Result<Vec<Decision>> {
        proposals::decisions_of(&mut self.store.reader().await?.conn(), proposal_id).await
    }

    pub async fn job_of(&self, proposal_id: &str) -> Result<Option<Job>> {
        jobs::by_proposal(&mut self.store.reader().await?.conn(), proposal_id).await
    }

    pub async fn run(&self, id: &str) -> Result<Option<Run>> {
        runs::get(&mut self.store.reader().await?.conn(), id).await
    }

    pub async fn count_pending(&self) -> Result<i64> {
        proposals::count_pending(&mut self.store.reader().await?.conn()).await
    }

    /// Every audit event, oldest first.
    pub async fn audit_events(&self) -> Result<Vec<AuditEvent>> {
        audit::events_after(&mut self.store.reader().await?.conn(), 0, i64::MAX).await
    }
}
