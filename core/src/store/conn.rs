//! One connection type over both databases. Queries are written once, against
//! `Conn`, with the `on!` macro expanding the same statement for each driver.

use super::{Backend, ReadPool};
use crate::error::Result;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection};

pub enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// Run the same expression against whichever connection `conn` holds:
/// `on!(conn, c => sqlx::query(SQL).bind(x).execute(&mut **c).await)`.
macro_rules! on {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::Conn::Sqlite($c) => $body,
            $crate::store::Conn::Postgres($c) => $body,
        }
    };
}
pub(crate) use on;

impl Conn<'_> {
    /// What SQL this connection speaks.
    pub fn dialect(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Run a statement with no parameters and no rows.
    pub async fn exec(&mut self, sql: &str) -> Result<()> {
        on!(self, c => { sqlx::query(sql).execute(&mut **c).await?; });
        Ok(())
    }
}

pub struct ReadConn(ReadInner);

enum ReadInner {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl ReadConn {
    pub(crate) async fn acquire(pool: &ReadPool) -> Result<Self> {
        Ok(ReadConn(match pool {
            ReadPool::Sqlite(p) => ReadInner::Sqlite(p.acquire().await?),
            ReadPool::Postgres(p) => ReadInner::Postgres(p.acquire().await?),
        }))
    }

    pub fn conn(&mut self) -> Conn<'_> {
        match &mut self.0 {
            ReadInner::Sqlite(c) => Conn::Sqlite(c),
            ReadInner::Postgres(c) => Conn::Postgres(c),
        }
    }
}
