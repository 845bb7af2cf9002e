//! The store: SQLite (embedded default) or PostgreSQL (scale-out), behind one
//! type with one set of queries.
//!
//! Writes go through a single writer task per process that groups concurrent
//! requests into one transaction (group commit): each request runs inside its
//! own savepoint, so a failing request leaves no trace while the others in its
//! batch commit; every caller is answered only after its batch is durable. The
//! audit chain is appended inside the same transaction as the change it
//! records. Reads use a separate pool and never wait for the writer.
//!
//! The SQL is shared: both databases accept `$n` placeholders, `ON CONFLICT`,
//! and `RETURNING`; the few differences are asked of `Backend` (dialect.rs).
//!
//! Private to the core: the doors reach data only through `service`.

mod conn;
mod dialect;
mod open;
pub(crate) mod queries;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod writer;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod schema_parity;

pub(crate) use conn::on;
pub use conn::{Conn, ReadConn};
pub use dialect::Backend;
pub use open::{sqlite_options, StoreOptions, DEFAULT_DATABASE_URL};
pub use writer::Tx;

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// What a use-case that may refuse answers. A refusal is still a write: its
/// audit event (and, for agents, the run breaker's count) is recorded in the
/// same transaction, which commits; the caller then answers the error.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    Refused(Error),
}

impl<T> Outcome<T> {
    pub fn into_result(self) -> Result<T> {
        match self {
            Outcome::Done(t) => Ok(t),
            Outcome::Refused(e) => Err(e),
        }
    }
}

/// The PostgreSQL channel notices travel on between processes.
pub(crate) const NOTICE_CHANNEL: &str = "countersign";

/// Something changed that waiting readers may care about. Published after the
/// commit (SQLite: in process; PostgreSQL: `NOTIFY`, so every process hears it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A proposal was created or changed status.
    Proposal {
        id: String,
        tenant: String,
        status: crate::lifecycle::Status,
    },
    /// A job became claimable in this env.
    JobReady { env: String },
    /// Kill switches, break-glass or breakers changed: banners and holds.
    Controls,
    /// Webhook deliveries are waiting.
    Outbox,
    /// This process may have missed other processes' notices (its
    /// PostgreSQL listener lost its connection and is back): whoever waits
    /// looks again, live pages refetch. Published only in process.
    Missed,
}

/// What the process keeps in memory between transactions. Webhooks are
/// re-read when changed here, or after a few seconds (another process may
/// have changed them).
#[derive(Default)]
pub struct Caches {
    webhooks: std::sync::Mutex<Option<(std::time::Instant, Vec<queries::notify::WebhookRow>)>>,
}

const WEBHOOK_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl Caches {
    /// The webhooks, if known and fresh.
    pub fn webhooks(&self) -> Option<Vec<queries::notify::WebhookRow>> {
        let g = self.webhooks.lock().ok()?;
        g.as_ref()
            .filter(|(at, _)| at.elapsed() < WEBHOOK_CACHE_TTL)
            .map(|(_, w)| w.clone())
    }
    pub fn set_webhooks(&self, hooks: Vec<queries::notify::WebhookRow>) {
        if let Ok(mut g) = self.webhooks.lock() {
            *g = Some((std::time::Instant::now(), hooks));
        }
    }
    pub fn forget_webhooks(&self) {
        if let Ok(mut g) = self.webhooks.lock() {
            *g = None;
        }
    }
}

pub(crate) enum ReadPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A new proposal as the writer inserts it ahead of its request: the row
/// and the charge to its run (the row's times set by the writer), the
/// kill-switch name it is checked against, and how long it stays decidable.
#[derive(Debug, Clone)]
pub(crate) struct Insert {
    pub charge: queries::proposals::ToInsert,
    pub tool_asked: String,
    pub expires_after_ms: i64,
}

/// A unit of work for the writer, with its answer channel.
/// Runs the use-case (again, if its batch is retried), keeps its result, and
/// says whether it succeeded.
type WorkFn = Box<dyn for<'a, 'c> FnMut(&'a mut Tx<'c>) -> BoxFuture<'a, bool> + Send>;

pub(crate) struct Work {
    run: WorkFn,
    /// A new proposal the writer may insert and charge together with the
    /// batch's others, before `run` (which then finds it done: `Tx::inserted`).
    insert: Option<Insert>,
    /// The request that submitted it, for its audit events.
    request_id: Option<String>,
    /// Answers the caller once its batch committed (or did not).
    deliver: Box<dyn FnOnce(Result<()>) + Send>,
}

struct Inner {
    backend: Backend,
    read: ReadPool,
    writer: mpsc::Sender<Work>,
    notices: broadcast::Sender<Notice>,
    clock: SharedClock,
    /// Keeps the writer (and, on PostgreSQL, the listener) alive with the store.
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The URL, for helpers (sessions) that need their own pool.
    url: String,
    caches: Arc<Caches>,
    /// Write transactions committed by this process's writer.
    batches: Arc<std::sync::atomic::AtomicU64>,
}

/// Cheap to clone: all clones share the pools and the writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn caches(&self) -> &Caches {
        &self.inner.caches
    }

    /// How many write transactions this process has committed: fewer than
    /// the writes submitted when concurrent writes were grouped.
    pub fn batches_committed(&self) -> u64 {
        self.inner.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A pooled read connection.
    pub async fn reader(&self) -> Result<ReadConn> {
        ReadConn::acquire(&self.inner.read).await
    }

    /// The PostgreSQL pool, for components that need one (sessions).
    pub fn pg_pool(&self) -> Option<sqlx::PgPool> {
        match &self.inner.read {
            ReadPool::Postgres(p) => Some(p.clone()),
            ReadPool::Sqlite(_) => None,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// `write` for a use-case that may refuse: a refusal commits what it
    /// recorded and is answered as the error.
    pub async fn write_or_refuse<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> FnOnce(&'a mut Tx<'c>) -> BoxFuture<'a, Result<Outcome<T>>> + Clone + Send + 'static,
    {
        self.write(f).await?.into_result()
    }

    /// `write_or_refuse` for a use-case that inserts the new proposal of
    /// `insert` as its first change, through `Tx::inserted` or else one
    /// row at a time: the writer may insert and charge the proposals of
    /// several such requests in one statement before running them.
    pub(crate) async fn write_or_refuse_inserting<T, F>(&self, insert: Insert, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> FnOnce(&'a mut Tx<'c>) -> BoxFuture<'a, Result<Outcome<T>>> + Clone + Send + 'static,
    {
        self.submit(Some(insert), f).await?.into_result()
    }

    /// Run `f` in a write transaction, grouped with other concurrent writes.
    /// `Err` leaves no trace of what `f` did; `Ok` is answered once the batch
    /// it joined has committed. `f` may run twice (see the writer), so it is
    /// `Clone` and must have no effects outside the transaction.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> FnOnce(&'a mut Tx<'c>) -> BoxFuture<'a, Result<T>> + Clone + Send + 'static,
    {
        self.submit(None, f).await
    }

    async fn submit<T, F>(&self, insert: Option<Insert>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> FnOnce(&'a mut Tx<'c>) -> BoxFuture<'a, Result<T>> + Clone + Send + 'static,
    {
        let slot: Arc<std::sync::Mutex<Option<Result<T>>>> = Arc::new(std::sync::Mutex::new(None));
        let kept = slot.clone();
        let run: WorkFn = Box::new(move |tx: &mut Tx<'_>| {
            let f = f.clone();
            let kept = kept.clone();
            Box::pin(async move {
                let out = f(tx).await;
                let ok = out.is_ok();
                if let Ok(mut k) = kept.lock() {
                    *k = Some(out);
                }
                ok
            })
        });
        let (answer_tx, answer_rx) = oneshot::channel::<Result<T>>();
        let deliver = Box::new(move |committed: Result<()>| {
            let out = slot.lock().ok().and_then(|mut s| s.take());
            let answer = match (committed, out) {
                (Ok(()), Some(out)) => out,
                // The request failed on its own: its error is the answer.
                (Err(_), Some(Err(e))) => Err(e),
                (Err(e), _) => Err(e),
                (Ok(()), None) => Err(Error::internal("a write ended without a result (it panicked)")),
            };
            let _ = answer_tx.send(answer);
        });
        self.inner
            .writer
            .send(Work {
                run,
                insert,
                request_id: crate::audit::current_request_id(),
                deliver,
            })
            .await
            .map_err(|_| Error::internal("the store's writer has stopped"))?;
        answer_rx
            .await
            .map_err(|_| Error::internal("the store's writer dropped a request"))?
    }
}
