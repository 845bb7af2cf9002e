//! Opening a store: choosing the database from the URL, connecting the writer
//! and the read pool, applying the embedded migrations, and (PostgreSQL)
//! listening for other processes' notices.

use super::writer::{self, Reconnect, WriterConn};
use super::{Backend, Inner, Notice, ReadPool, Store, NOTICE_CHANNEL};
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/countersign.db";

pub struct StoreOptions {
    pub url: String,
    pub clock: SharedClock,
    /// Read connections (SQLite) / pool size (PostgreSQL).
    pub read_connections: u32,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            clock: Arc::new(SystemClock),
            read_connections: 8,
        }
    }
    pub fn clock(mut self, c: SharedClock) -> Self {
        self.clock = c;
        self
    }
}

pub fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(Error::BadRequest(format!(
            "DATABASE_URL must start with sqlite: or postgres:// (got {:?})",
            url.split(':').next().unwrap_or("")
        )))
    }
}

/// The file a `sqlite:` URL names, if any (not `:memory:`).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// A pooled PostgreSQL connection idle this long is pinged before reuse.
const PG_PING_AFTER_IDLE: Duration = Duration::from_secs(10);

pub fn sqlite_options(url: &str) -> Result<SqliteConnectOptions> {
    if let Some(dir) = sqlite_path(url).as_deref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        }
    }
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::BadRequest(format!("DATABASE_URL is not a valid SQLite URL: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Every acknowledged write is on disk: group commit pays for this.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        // A deleted or overwritten value (erased personal data, a row
        // removed) is overwritten with zeros in the page, not left in its
        // free space; `Tx::reclaim_after_commit` clears the write-ahead log.
        .pragma("secure_delete", "ON")
        .busy_timeout(Duration::from_secs(10))
        .log_statements(tracing::log::LevelFilter::Trace))
}

fn pg_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|e| Error::BadRequest(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}")))?
        .log_statements(tracing::log::LevelFilter::Trace))
}

impl Store {
    /// Open (creating and migrating as needed) the database at `opts.url`.
    pub async fn open(opts: StoreOptions) -> Result<Store> {
        let backend = backend_of(&opts.url)?;
        let (notices, _) = broadcast::channel::<Notice>(4096);
        let (tx, rx) = mpsc::channel(8192);
        let caches = Arc::new(super::Caches::default());
        let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        let read = match backend {
            Backend::Sqlite => {
                let o = sqlite_options(&opts.url)?;
                let mut conn = o.connect().await.map_err(|e| connect_error(&opts.url, e))?;
                sqlx::migrate!("../migrations/sqlite").run(&mut conn).await?;
                let read = SqlitePoolOptions::new()
                    .max_connections(opts.read_connections.max(1))
                    .min_connections(1)
                    // A connection to a local file does not go stale: skip the
                    // ping round trip to its worker thread on every acquire.
                    .test_before_acquire(false)
                    .connect_with(o.clone().read_only(true))
                    .await?;
                drop(conn);
                let reconnect: Reconnect = Box::new(move || {
                    let o = o.clone();
                    Box::pin(async move { Ok(WriterConn::Sqlite(o.connect().await?)) })
                });
                spawn_writer(
                    reconnect,
                    rx,
                    notices.clone(),
                    opts.clock.clone(),
                    caches.clone(),
                    batches.clone(),
                )
                .await?;
                ReadPool::Sqlite(read)
            }
            Backend::Postgres => {
                let o = pg_options(&opts.url)?;
                let mut conn = sqlx::PgConnection::connect_with(&o)
                    .await
                    .map_err(|e| connect_error(&opts.url, e))?;
                sqlx::migrate!("../migrations/postgres").run(&mut conn).await?;
                let read = PgPoolOptions::new()
                    .max_connections(opts.read_connections.max(2))
                    .acquire_timeout(Duration::from_secs(10))
                    // Ping only a connection that sat idle (the server may have
                    // closed it meanwhile), not one in steady use: a round trip
                    // per read otherwise.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PG_PING_AFTER_IDLE {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(o.clone())
                    .await?;
                let mut listener = PgListener::connect_with(&read).await?;
                listener.listen(NOTICE_CHANNEL).await?;
                tasks.push(tokio::spawn(forward_pg_notices(listener, notices.clone())));
                drop(conn);
                let reconnect: Reconnect = Box::new(move || {
                    let o = o.clone();
                    Box::pin(async move { Ok(WriterConn::Postgres(sqlx::PgConnection::connect_with(&o).await?)) })
                });
                spawn_writer(
                    reconnect,
                    rx,
                    notices.clone(),
                    opts.clock.clone(),
                    caches.clone(),
                    batches.clone(),
                )
                .await?;
                ReadPool::Postgres(read)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                read,
                writer: tx,
                notices,
                clock: opts.clock,
                _tasks: tasks,
                url: opts.url,
                caches,
                batches,
            }),
        })
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        let Ok(mut r) = self.reader().await else { return false };
        r.conn().exec("SELECT 1").await.is_ok()
    }
}

/// Run the writer on a thread of its own, with its own single-threaded
/// runtime: each of its statements completes without waiting for a turn
/// behind the request handlers on the shared workers. It stops when the
/// store (the last sender) is dropped.
async fn spawn_writer(
    connect: Reconnect,
    rx: mpsc::Receiver<super::Work>,
    notices: broadcast::Sender<Notice>,
    clock: SharedClock,
    caches: Arc<super::Caches>,
    batches: Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("countersign-writer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::internal(format!("starting the writer: {e}"))));
                    return;
                }
            };
            rt.block_on(async move {
                match connect().await {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        writer::run(conn, connect, rx, notices, clock, caches, batches).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| Error::internal(format!("starting the writer thread: {e}")))?;
    ready_rx
        .await
        .map_err(|_| Error::internal("the writer thread died while starting"))?
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self._tasks {
            t.abort();
        }
    }
}

fn connect_error(url: &str, e: sqlx::Error) -> Error {
    // Never print the URL whole: it may carry a password.
    let shown = url.split('@').next_back().unwrap_or(url);
    Error::internal(format!("cannot open the database at {shown}: {e}"))
}

async fn forward_pg_notices(mut listener: PgListener, out: broadcast::Sender<Notice>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => match serde_json::from_str::<Vec<Notice>>(n.payload()) {
                Ok(list) => {
                    for notice in list {
                        let _ = out.send(notice);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable notice"),
            },
            // The connection was lost (None) or failed: notices sent
            // meanwhile are gone. Listen again now, then tell everyone
            // waiting here to look for themselves.
            lost => {
                let why = lost.err().map(|e| e.to_string()).unwrap_or_else(|| "closed".into());
                tracing::warn!(error = %why, "lost the PostgreSQL listener; reconnecting");
                metrics::counter!("countersign_listener_reconnects_total").increment(1);
                relisten(&mut listener).await;
                tracing::info!("the PostgreSQL listener is back");
                let _ = out.send(Notice::Missed);
            }
        }
    }
}

/// Reconnect the listener (sqlx reconnects on its next use and listens to
/// its channels again) until the database answers.
async fn relisten(listener: &mut PgListener) {
    loop {
        // Unlisten then listen: the channel is listened to once, however
        // many times this runs.
        match listener.unlisten(NOTICE_CHANNEL).await {
            Ok(()) => match listener.listen(NOTICE_CHANNEL).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "listening again"),
            },
            Err(e) => tracing::debug!(error = %e, "reconnecting the listener"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
