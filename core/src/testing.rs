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

    /// A run's proposals still previewing or pending.
    pub async fn open_proposals_of_run(&self, run_id: &str) -> Result<Vec<Proposal>> {
        proposals::open_of_run(&mut self.store.reader().await?.conn(), run_id).await
    }

    /// The upstream executor's record of a proposal's call.
    pub async fn upstream_call(&self, proposal_id: &str) -> Result<Option<crate::records::UpstreamCallRecord>> {
        crate::store::queries::upstream_calls::of_proposal(&mut self.store.reader().await?.conn(), proposal_id).await
    }

    pub async fn count_pending(&self) -> Result<i64> {
        Ok(
            proposals::pending_count_and_oldest(&mut self.store.reader().await?.conn())
                .await?
                .0,
        )
    }

    /// The receipt key that signs now, private half included: tests sign
    /// receipts a server would never issue (expired ones) with it.
    pub async fn current_receipt_key(&self) -> Result<crate::receipts::ReceiptKey> {
        let now = self.store.now_ms();
        let rows = crate::store::queries::keys::receipt_keys(&mut self.store.reader().await?.conn(), now).await?;
        let r = rows
            .iter()
            .find(|r| r.retired_at.is_none())
            .ok_or_else(|| crate::Error::internal("no current receipt key"))?;
        crate::receipts::ReceiptKey::from_stored(&r.id, &r.private_key, &r.public_key)
    }

    /// Change a job's receipt, as someone who broke into the queue would.
    pub async fn tamper_receipt(&self, job_id: &str, receipt: &str) -> Result<()> {
        let (job_id, receipt) = (job_id.to_owned(), receipt.to_owned());
        self.store
            .write(move |tx| {
                Box::pin(async move { crate::store::queries::jobs::set_receipt(&mut tx.conn, &job_id, &receipt).await })
            })
            .await
    }

    /// Every audit event, oldest first.
    pub async fn audit_events(&self) -> Result<Vec<AuditEvent>> {
        audit::events_after(&mut self.store.reader().await?.conn(), 0, i64::MAX).await
    }
}
