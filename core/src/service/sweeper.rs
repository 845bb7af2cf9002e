//! The sweeper: one pass ends whatever ran out of time, asking each module
//! for its own expiry, and erases personal data past its retention. Safe to
//! run in several processes at once: every move is conditional on the state
//! it leaves.

use super::{controls, jobs, proposals, Core};
use crate::error::Result;
use crate::policy::Policy;
use crate::store::queries::{self, controls as control_rows};
use crate::store::Tx;
use std::sync::Arc;

#[derive(Clone)]
struct Sweep {
    policy: Arc<Policy>,
    public_url: String,
}

async fn sweep_in(tx: &mut Tx<'_>, s: Sweep) -> Result<usize> {
    Ok(proposals::expire_pending(tx, &s.public_url).await?
        + jobs::expire_overdue(tx, &s.public_url).await?
        + jobs::reoffer_lost(tx, &s.policy, &s.public_url).await?
        + controls::end_lapsed_break_glass(tx).await?)
}

/// How often the sweeper forgets sign-in throttle records whose window has
/// passed (so a flood of made-up names does not grow the table for ever).
const FORGET_ATTEMPTS_EVERY_MS: i64 = 60_000;

impl Core {
    /// One pass of the sweeper; answers how many things moved (personal
    /// data erased counts one a proposal).
    pub async fn sweep(&self) -> Result<usize> {
        let forgotten = self.forget_old_attempts().await?;
        // Its own transactions: erasure is no expiry, and a failure of one
        // must not hold the other back.
        let erased = self.erase_past_retention().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "erasing personal data failed; the sweeper tries again in a minute");
            0
        });
        if !self.anything_to_sweep().await? {
            return Ok(forgotten + erased);
        }
        let s = Sweep {
            policy: self.policy(),
            public_url: self.settings.public_url.clone(),
        };
        Ok(forgotten + erased + self.store.write(move |tx| Box::pin(sweep_in(tx, s))).await?)
    }

    /// At most once a minute: forget throttle records that block nothing.
    async fn forget_old_attempts(&self) -> Result<usize> {
        use std::sync::atomic::Ordering;
        let now = self.now_ms();
        let last = self.throttles_forgotten_at.load(Ordering::Relaxed);
        if now - last < FORGET_ATTEMPTS_EVERY_MS
            || self
                .throttles_forgotten_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(0);
        }
        self.store
            .write(|tx| Box::pin(super::people::forget_old_attempts(tx)))
            .await
    }

    /// A cheap read first, so an idle sweeper does not take the write lock.
    async fn anything_to_sweep(&self) -> Result<bool> {
        let now = self.now_ms();
        let mut r = self.store.reader().await?;
        let mut c = r.conn();
        Ok(!queries::proposals::pending_expired(&mut c, now, 1).await?.is_empty()
            || !queries::jobs::overdue(&mut c, now, 1).await?.is_empty()
            || !queries::jobs::leases_lost(&mut c, now, 1).await?.is_empty()
            || !control_rows::lapsed_break_glass(&mut c, now).await?.is_empty())
    }
}
