//! Everything that differs between SQLite and PostgreSQL, in one place.
//!
//! Both accept the same SQL for almost every statement (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`, `UPDATE … FROM (VALUES …)`); what does not is
//! asked of the backend here, never by testing which database a connection is.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// How a write transaction starts. IMMEDIATE takes SQLite's write lock up
    /// front, so a transaction that reads then writes never fails to upgrade.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// How a read that must see one moment of the database starts (a
    /// verification of the audit chain while others append to it): a
    /// snapshot for every statement until it ends.
    pub(crate) fn begin_snapshot(self) -> &'static str {
        match self {
            // A deferred read transaction in WAL mode reads one snapshot.
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    /// Appended to a SELECT whose rows the transaction will change: a row lock
    /// on PostgreSQL; nothing on SQLite, where the writer holds the database.
    pub(crate) fn lock_rows(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// As `lock_rows`, for a join: lock only the rows of `alias`.
    pub(crate) fn lock_rows_of(self, alias: &str) -> String {
        match self {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR UPDATE OF {alias}"),
        }
    }

    /// Appended to a claim's SELECT: lock, skipping rows other claimers hold
    /// (several processes claim from one PostgreSQL).
    pub(crate) fn lock_skipping_locked(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Whether several statements may go to the database as one call
    /// (SQLite's multi-statement execute; each call is a thread hand-off).
    pub(crate) fn combines_statements(self) -> bool {
        self == Backend::Sqlite
    }

    /// The most requests one write transaction carries. PostgreSQL keeps
    /// fewer: each request is a subtransaction, and past 64 its snapshot
    /// cache overflows.
    pub(crate) fn max_batch(self) -> usize {
        match self {
            Backend::Sqlite => 256,
            Backend::Postgres => 64,
        }
    }

    /// Whether notices reach other processes through the database (`NOTIFY`,
    /// sent inside the transaction) rather than only this process's channel.
    pub(crate) fn notifies_through_database(self) -> bool {
        self == Backend::Postgres
    }
}
