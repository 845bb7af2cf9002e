//! The writer task: group commit with a savepoint per request, the audit chain
//! advanced in memory across the batch and its head written once per batch.

use super::{Conn, Notice, Work};
use crate::audit::{AuditDraft, AuditEvent};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use futures::FutureExt;
use sqlx::{Connection, PgConnection, SqliteConnection};
use std::panic::AssertUnwindSafe;
use tokio::sync::{broadcast, mpsc};

/// A write transaction as a use-case sees it: the connection, the clock, the
/// audit chain, and notices to publish after commit.
pub struct Tx<'c> {
    pub conn: Conn<'c>,
    clock: SharedClock,
    head_seq: i64,
    head_hash: String,
    notices: Vec<Notice>,
    /// Metric counters to add once (and only if) this transaction commits.
    counts: Vec<(&'static str, u64)>,
    request_id: Option<String>,
    /// Events appended in this transaction, inserted together at commit.
    pending: Vec<AuditEvent>,
    caches: std::sync::Arc<super::Caches>,
    /// Clear the old bytes of what this transaction overwrote from the
    /// write-ahead log once it commits (erased personal data).
    reclaim: bool,
    /// The switches and breakers in force, once read in this transaction:
    /// every request of a batch asks, one read answers them all. Forgotten
    /// when a request changes them or is rolled back.
    controls: Option<std::sync::Arc<crate::controls::Controls>>,
    /// Proposals the writer inserted (or found already used) ahead of their
    /// requests, by id, until each request takes its own.
    inserted: std::collections::HashMap<String, InsertedAhead>,
}

/// What the writer did with a proposal ahead of its request (`Tx::inserted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InsertedAhead {
    pub created_at: i64,
    pub expires_at: i64,
    pub outcome: super::queries::proposals::Inserted,
}

impl<'c> Tx<'c> {
    /// Once this transaction commits, leave no earlier copy of what it
    /// overwrote in the database's files: on SQLite (`secure_delete` has
    /// zeroed the pages themselves) the write-ahead log is checkpointed
    /// into the database and truncated, by this same connection. On
    /// PostgreSQL earlier row versions wait for VACUUM (docs/operations.md).
    pub fn reclaim_after_commit(&mut self) {
        self.reclaim = true;
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Append an event to the audit chain, in this transaction. The chain
    /// advances in memory; the events are inserted together at commit.
    pub fn audit(&mut self, mut draft: AuditDraft) {
        if draft.request_id.is_none() {
            draft.request_id = self.request_id.clone();
        }
        let e = AuditEvent::from_draft(draft, self.head_seq + 1, self.now_ms(), &self.head_hash);
        self.head_seq = e.seq;
        self.head_hash = e.hash.clone();
        self.pending.push(e);
    }

    /// Name the request the next audit events belong to (work that serves
    /// several requests at once); answers the one named before.
    pub fn set_request_id(&mut self, id: Option<String>) -> Option<String> {
        std::mem::replace(&mut self.request_id, id)
    }

    /// Publish `n` once (and only if) this transaction commits.
    pub fn notify(&mut self, n: Notice) {
        if !self.notices.contains(&n) {
            self.notices.push(n);
        }
    }

    /// Add `n` to the counter `metric` once (and only if) this transaction
    /// commits: a batch run again carefully does not count twice.
    pub fn count(&mut self, metric: &'static str, n: u64) {
        self.counts.push((metric, n));
    }

    /// Caches shared by the process's transactions.
    pub fn caches(&self) -> &super::Caches {
        &self.caches
    }

    /// The proposal `id`, if the writer inserted it (or found its key used)
    /// ahead of the request: with it, the request must not insert it again.
    /// Answered once.
    pub(crate) fn inserted(&mut self, id: &str) -> Option<InsertedAhead> {
        self.inserted.remove(id)
    }

    /// The controls this transaction read, if it read them and has not
    /// changed them since (`queries::controls::in_force`).
    pub(crate) fn known_controls(&self) -> Option<std::sync::Arc<crate::controls::Controls>> {
        self.controls.clone()
    }

    /// Remember the controls read (`Some`), or forget them after a change.
    pub(crate) fn know_controls(&mut self, c: Option<std::sync::Arc<crate::controls::Controls>>) {
        self.controls = c;
    }
}

pub(crate) enum WriterConn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriterConn {
    fn dialect(&self) -> super::Backend {
        match self {
            WriterConn::Sqlite(_) => super::Backend::Sqlite,
            WriterConn::Postgres(_) => super::Backend::Postgres,
        }
    }
    fn conn(&mut self) -> Conn<'_> {
        match self {
            WriterConn::Sqlite(c) => Conn::Sqlite(c),
            WriterConn::Postgres(c) => Conn::Postgres(c),
        }
    }
    async fn ping(&mut self) -> bool {
        match self {
            WriterConn::Sqlite(c) => c.ping().await.is_ok(),
            WriterConn::Postgres(c) => c.ping().await.is_ok(),
        }
    }
}

/// How the writer gets a fresh connection after losing one.
pub(crate) type Reconnect = Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<WriterConn>> + Send + Sync>;

pub(crate) async fn run(
    mut conn: WriterConn,
    reconnect: Reconnect,
    mut rx: mpsc::Receiver<Work>,
    notices: broadcast::Sender<Notice>,
    clock: SharedClock,
    caches: std::sync::Arc<super::Caches>,
    batches: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let max_batch = conn.dialect().max_batch();
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let n = batch.len();
        metrics::histogram!("countersign_write_batch_size").record(n as f64);
        let outcome = run_batch(&mut conn, batch, &notices, &clock, &caches, &batches).await;
        if let Err(e) = outcome {
            tracing::error!(error = %e, batch = n, "write batch failed");
            if !conn.ping().await {
                match reconnect().await {
                    Ok(c) => conn = c,
                    Err(e) => tracing::error!(error = %e, "reconnecting the writer failed"),
                }
            }
        }
    }
}

/// Run a batch: first optimistically, with no savepoints; if any request
/// fails, roll the whole batch back and run it again carefully, with a
/// savepoint per request, so the failure leaves no trace and the others
/// commit. Requests almost never fail once validated, so almost every batch
/// costs one statement less per request.
async fn run_batch(
    wc: &mut WriterConn,
    mut batch: Vec<Work>,
    notices: &broadcast::Sender<Notice>,
    clock: &SharedClock,
    caches: &std::sync::Arc<super::Caches>,
    committed: &std::sync::atomic::AtomicU64,
) -> Result<()> {
    let local_notices = !wc.dialect().notifies_through_database();
    let result = match attempt(wc, &mut batch, clock, caches, false).await {
        Ok(Some(published)) => Ok(published),
        Ok(None) => {
            let _ = wc.conn().exec("ROLLBACK").await;
            metrics::counter!("countersign_write_batch_retries_total").increment(1);
            match attempt(wc, &mut batch, clock, caches, true).await {
                Ok(Some(published)) => Ok(published),
                Ok(None) => Err(Error::internal("a careful batch reported a failure")),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((published, reclaim, counts)) => {
            for (metric, n) in counts {
                metrics::counter!(metric).increment(n);
            }
            if reclaim && wc.dialect() == super::Backend::Sqlite {
                // Outside any transaction, before the callers are answered:
                // when they hear it is done, it is.
                if let Err(e) = wc.conn().exec("PRAGMA wal_checkpoint(TRUNCATE)").await {
                    tracing::warn!(error = %e, "could not truncate the write-ahead log after an erasure");
                }
            }
            // Counted before anyone hears of the commit: a caller that reads
            // the count after its write sees its own batch in it.
            committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for w in batch {
                (w.deliver)(Ok(()));
            }
            if local_notices {
                for n in published {
                    let _ = notices.send(n);
                }
            }
            Ok(())
        }
        Err(e) => {
            let _ = wc.conn().exec("ROLLBACK").await;
            for w in batch {
                (w.deliver)(Err(e.clone()));
            }
            Err(e)
        }
    }
}

/// One pass over the batch in a transaction. `careful`: a savepoint per
/// request, failures rolled back alone. Otherwise the first failure stops the
/// pass (`Ok(None)`: the caller rolls back and retries carefully). On success
/// the transaction is committed and its notices returned.
async fn attempt(
    wc: &mut WriterConn,
    batch: &mut [Work],
    clock: &SharedClock,
    caches: &std::sync::Arc<super::Caches>,
    careful: bool,
) -> Result<Option<(Vec<Notice>, bool, Vec<(&'static str, u64)>)>> {
    let (head_seq, head_hash) = begin(&mut wc.conn()).await?;
    let started = std::time::Instant::now();
    let mut tx = Tx {
        conn: wc.conn(),
        clock: clock.clone(),
        head_seq,
        head_hash,
        notices: Vec::new(),
        counts: Vec::new(),
        request_id: None,
        pending: Vec::new(),
        caches: caches.clone(),
        reclaim: false,
        controls: None,
        inserted: std::collections::HashMap::new(),
    };
    if !careful {
        // Any failure here: the batch runs again carefully, one row at a time.
        if let Err(e) = insert_ahead(&mut tx, &mut *batch).await {
            tracing::warn!(error = %e, "inserting a batch's proposals together failed; running it one by one");
            return Ok(None);
        }
    }
    for w in batch.iter_mut() {
        tx.request_id = w.request_id.clone();
        let ok = run_item(&mut tx, &mut w.run, careful).await?;
        if !ok && !careful {
            return Ok(None);
        }
    }
    if !tx.inserted.is_empty() {
        // A request did not take the proposal inserted for it: whatever it
        // did instead, that row must not commit. One by one, it will not be.
        tracing::warn!("a proposal inserted ahead of its request was not taken; running the batch one by one");
        return Ok(None);
    }
    metrics::histogram!("countersign_write_batch_run_seconds").record(started.elapsed().as_secs_f64());
    let committing = std::time::Instant::now();
    finish(&mut tx, head_seq).await?;
    metrics::histogram!("countersign_write_batch_commit_seconds").record(committing.elapsed().as_secs_f64());
    Ok(Some((
        std::mem::take(&mut tx.notices),
        tx.reclaim,
        std::mem::take(&mut tx.counts),
    )))
}

/// Insert and charge the proposals of the batch's leading proposal requests
/// in one call, instead of a round trip (PostgreSQL) or a hand-off to the
/// connection's thread (SQLite) each, and leave
/// each request its outcome (`Tx::inserted`). Only as long as nothing can
/// depend on the order of the rows: the run of requests stops at the first
/// that is not a new proposal, shares a run or an idempotency key with an
/// earlier one, or that a kill switch refuses (it inserts nothing). The rows
/// are inserted in the requests' order, before any of them runs: as they
/// would be, one by one, since the requests between change nothing they read.
async fn insert_ahead(tx: &mut Tx<'_>, batch: &mut [Work]) -> Result<()> {
    use super::queries::proposals::{insert_and_spend_many, ToInsert};
    let leading = batch.iter().take_while(|w| w.insert.is_some()).count();
    if leading < 2 {
        return Ok(());
    }
    let controls = super::queries::controls::in_force(tx).await?;
    let now = tx.now_ms();
    let mut runs = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut rows: Vec<&ToInsert> = Vec::with_capacity(leading);
    for i in batch.iter_mut().map_while(|w| w.insert.as_mut()) {
        // The times are the writer's; a row not inserted here is not used.
        i.charge.row.created_at = now;
        i.charge.row.expires_at = now + i.expires_after_ms;
        let i: &super::Insert = i;
        let r = &i.charge.row;
        let key_free = match (&r.idempotency_scope, &r.idempotency_key) {
            (Some(scope), Some(key)) => keys.insert((scope.as_str(), key.as_str())),
            _ => true,
        };
        if !key_free
            || !runs.insert(r.run_id.as_str())
            || controls.refusing(&r.tenant, &r.route, &i.tool_asked).is_some()
        {
            break;
        }
        rows.push(&i.charge);
    }
    if rows.len() < 2 {
        return Ok(());
    }
    let outcomes = insert_and_spend_many(&mut tx.conn, &rows, now).await?;
    metrics::histogram!("countersign_proposals_inserted_together").record(rows.len() as f64);
    // Counted once the batch commits, as the other counts of a transaction.
    tx.count("countersign_proposals_inserted_together_total", rows.len() as u64);
    for (t, outcome) in rows.iter().zip(outcomes) {
        let ahead = InsertedAhead {
            created_at: t.row.created_at,
            expires_at: t.row.expires_at,
            outcome,
        };
        tx.inserted.insert(t.row.id.clone(), ahead);
    }
    Ok(())
}

async fn begin(conn: &mut Conn<'_>) -> Result<(i64, String)> {
    // On PostgreSQL the head row lock serialises writers across processes; it
    // is always the first lock taken, so writers cannot deadlock on each other.
    super::queries::audit::begin_and_head(conn).await
}

/// Run one request; true if it succeeded. Careful: inside its own savepoint
/// (never released: COMMIT ends them all), rolled back to it on failure.
async fn run_item(tx: &mut Tx<'_>, run: &mut super::WorkFn, careful: bool) -> Result<bool> {
    if careful {
        tx.conn.exec("SAVEPOINT item").await?;
    }
    let seq = tx.head_seq;
    let hash = tx.head_hash.clone();
    let n_notices = tx.notices.len();
    let n_counts = tx.counts.len();
    let n_pending = tx.pending.len();
    let ok = match AssertUnwindSafe(run(tx)).catch_unwind().await {
        Ok(ok) => ok,
        Err(_) => {
            tracing::error!("a write panicked; its changes are rolled back");
            false
        }
    };
    if !ok && careful {
        tx.conn.exec("ROLLBACK TO SAVEPOINT item").await?;
        tx.head_seq = seq;
        tx.head_hash = hash;
        tx.notices.truncate(n_notices);
        tx.counts.truncate(n_counts);
        tx.pending.truncate(n_pending);
        // It may have changed the controls, and the memo seen the change.
        tx.controls = None;
    }
    Ok(ok)
}

async fn finish(tx: &mut Tx<'_>, start_seq: i64) -> Result<()> {
    let events = std::mem::take(&mut tx.pending);
    match &mut tx.conn {
        Conn::Postgres(_) => {
            // Events, head and notices in one statement. NOTIFY payloads
            // are limited to 8000 bytes: notices go in small groups.
            let payloads = tx
                .notices
                .chunks(16)
                .map(serde_json::to_string)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if !events.is_empty() || !payloads.is_empty() {
                super::queries::audit::append_and_notify(&mut tx.conn, &events, tx.head_seq, &tx.head_hash, &payloads)
                    .await?;
            }
            tx.conn.exec("COMMIT").await
        }
        Conn::Sqlite(c) => {
            // Events, head and commit in one hand-off, on this thread.
            let head = (tx.head_seq != start_seq).then_some((tx.head_seq, tx.head_hash.as_str()));
            super::queries::audit::append_and_commit_sqlite(c, &events, head).await
        }
    }
}
