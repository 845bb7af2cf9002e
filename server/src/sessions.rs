//! Browser sessions in the database (tower-sessions' sqlx stores), one type
//! over both backends so the rest of the server does not care which.

use async_trait::async_trait;
use countersign_core::service::{Core, SessionDatabase};
use sqlx::sqlite::SqlitePoolOptions;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, ExpiredDeletion, SessionStore};
use tower_sessions_sqlx_store::{PostgresStore, SqliteStore};

#[derive(Debug, Clone)]
pub enum DbSessions {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl DbSessions {
    /// The session store beside the core's data, its table created if missing.
    pub async fn open(core: &Core) -> Result<DbSessions, crate::startup::StartError> {
        let s = match core.session_database()? {
            SessionDatabase::Sqlite(opts) => {
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(*opts)
                    .await
                    .map_err(|e| tower_sessions::session_store::Error::Backend(e.to_string()))?;
                let s = SqliteStore::new(pool);
                s.migrate()
                    .await
                    .map_err(|e| tower_sessions::session_store::Error::Backend(e.to_string()))?;
                DbSessions::Sqlite(s)
            }
            SessionDatabase::Postgres(pool) => {
                let s = PostgresStore::new(pool);
                s.migrate()
                    .await
                    .map_err(|e| tower_sessions::session_store::Error::Backend(e.to_string()))?;
                DbSessions::Postgres(s)
            }
        };
        Ok(s)
    }
}

#[async_trait]
impl SessionStore for DbSessions {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        match self {
            DbSessions::Sqlite(s) => s.create(record).await,
            DbSessions::Postgres(s) => s.create(record).await,
        }
    }
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        match self {
            DbSessions::Sqlite(s) => s.save(record).await,
            DbSessions::Postgres(s) => s.save(record).await,
        }
    }
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self {
            DbSessions::Sqlite(s) => s.load(id).await,
            DbSessions::Postgres(s) => s.load(id).await,
        }
    }
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        match self {
            DbSessions::Sqlite(s) => s.delete(id).await,
            DbSessions::Postgres(s) => s.delete(id).await,
        }
    }
}

#[async_trait]
impl ExpiredDeletion for DbSessions {
    async fn delete_expired(&self) -> session_store::Result<()> {
        match self {
            DbSessions::Sqlite(s) => s.delete_expired().await,
            DbSessions::Postgres(s) => s.delete_expired().await,
        }
    }
}
