//! The one long-poll loop: look, and if there is nothing yet, sleep until a
//! notice that may change the answer arrives (or the deadline). Waiting costs
//! nothing while nothing happens; a slow recheck covers a notice lost on the
//! way (a lagging receiver, a PostgreSQL listener reconnecting).

use crate::store::Notice;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

pub(super) struct Waiter {
    notices: broadcast::Receiver<Notice>,
    deadline: Instant,
    recheck: Duration,
}

impl Waiter {
    /// Subscribe before the first look, so a change between the look and the
    /// wait is not missed.
    pub fn new(notices: broadcast::Receiver<Notice>, timeout: Duration, recheck: Duration) -> Waiter {
        Waiter {
            notices,
            deadline: Instant::now() + timeout,
            recheck,
        }
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Sleep until a notice `wakes` accepts, the recheck interval, or the
    /// deadline, whichever comes first.
    pub async fn sleep(&mut self, wakes: impl Fn(&Notice) -> bool) {
        let until = self.deadline.min(Instant::now() + self.recheck);
        loop {
            match tokio::time::timeout_at(until, self.notices.recv()).await {
                Err(_) => return,
                Ok(Ok(n)) if wakes(&n) => return,
                // Other processes' notices may have been missed: look again.
                Ok(Ok(Notice::Missed)) => return,
                Ok(Ok(_)) => continue,
                // Notices were dropped: one of them may have been ours.
                Ok(Err(RecvError::Lagged(_))) => return,
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep_until(until).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_matching_notice_wakes_the_waiter_long_before_the_recheck() {
        let (tx, rx) = broadcast::channel(8);
        let mut w = Waiter::new(rx, Duration::from_secs(30), Duration::from_secs(30));
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Notice::Outbox);
            let _ = tx.send(Notice::JobReady { env: "prod".into() });
        });
        w.sleep(|n| matches!(n, Notice::JobReady { env } if env == "prod"))
            .await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(!w.expired());
    }

    #[tokio::test]
    async fn other_notices_do_not_wake_it_and_the_deadline_ends_it() {
        let (tx, rx) = broadcast::channel(8);
        let mut w = Waiter::new(rx, Duration::from_millis(200), Duration::from_secs(30));
        let _ = tx.send(Notice::Outbox);
        w.sleep(|n| matches!(n, Notice::JobReady { .. })).await;
        assert!(w.expired(), "only the deadline ended the sleep");
    }
}
