//! Every SQL statement the system runs, grouped by what it touches. Each is
//! written once for both databases (see `on!`).

pub mod audit;
pub mod controls;
pub mod jobs;
pub mod keys;
pub mod notify;
pub mod passkeys;
pub mod policy;
pub mod proposals;
pub mod runs;
pub mod upstream_calls;
pub mod users;

use crate::error::{Error, Result};

/// Run `f` on a SQLite connection directly, on this thread: sqlx lends its
/// raw handle while its own thread waits (`lock_handle`), and rusqlite runs
/// the statements. One hand-off for everything `f` does, where through sqlx
/// each statement is a hand-off to the connection's thread and back, and
/// each row or result a message. For the writer's hot statements
/// (docs/architecture.md); the rest go through sqlx.
pub(crate) async fn on_sqlite_directly<T>(
    c: &mut sqlx::SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    let mut locked = c.lock_handle().await?;
    // SAFETY: the handle is sqlx's open connection, and while `locked` lives
    // sqlx's thread does not touch it: it is ours alone. The rusqlite
    // connection made from it does not own it (it never closes it), is used
    // on this thread only, and is dropped, with its statements, before
    // `locked` gives the handle back.
    let conn = unsafe { rusqlite::Connection::from_handle(locked.as_raw_handle().as_ptr()) }.map_err(sqlite_error)?;
    let done = f(&conn);
    drop(conn);
    drop(locked);
    done.map_err(sqlite_error)
}

/// SQLite, on the writer's thread (`on_sqlite_directly`): `sql`, which
/// reads at most one row by `$1`, prepared once and run for each of `ids`;
/// the rows found, mapped, in the order of `ids`.
pub(crate) fn rows_by_id<'a, T>(
    db: &rusqlite::Connection,
    sql: &str,
    ids: impl IntoIterator<Item = &'a String>,
    mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut select = db.prepare(sql)?;
    let mut out = Vec::new();
    for id in ids {
        let mut rows = select.query([id])?;
        if let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
    }
    Ok(out)
}

fn sqlite_error(e: rusqlite::Error) -> Error {
    Error::internal(format!("sqlite: {e}"))
}
