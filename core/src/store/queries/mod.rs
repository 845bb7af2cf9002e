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
use std::borrow::Cow;

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

fn sqlite_error(e: rusqlite::Error) -> Error {
    Error::internal(format!("sqlite: {e}"))
}

/// `= ANY(list)`, appended to a column in a query being built, for lists of
/// any length as one statement text: on PostgreSQL the list is one array
/// value (`= ANY($n)`), so the statement is prepared once whatever its
/// length; on SQLite, which has no arrays, an `IN (…)` list of bound values,
/// padded (`padded`) so its texts stay few.
pub(crate) trait PushAny {
    fn push_any(&mut self, items: &[String]);
    /// Rows of three text values as a table `v (column1, column2, column3)`,
    /// to follow `FROM`: on PostgreSQL three arrays unnested side by side,
    /// on SQLite a padded `VALUES` list (a repeated row changes nothing
    /// where rows are matched by their first column).
    fn push_rows_v(&mut self, rows: &[[&str; 3]]);
}

impl PushAny for sqlx::QueryBuilder<'_, sqlx::Sqlite> {
    fn push_any(&mut self, items: &[String]) {
        self.push(" IN (");
        let mut sep = self.separated(", ");
        for item in padded(items, true).iter() {
            sep.push_bind(item.clone());
        }
        sep.push_unseparated(")");
    }
    fn push_rows_v(&mut self, rows: &[[&str; 3]]) {
        self.push("(");
        self.push_values(padded(rows, true).iter(), |mut b, r| {
            for v in r {
                b.push_bind(v.to_string());
            }
        });
        self.push(") AS v");
    }
}

impl PushAny for sqlx::QueryBuilder<'_, sqlx::Postgres> {
    fn push_any(&mut self, items: &[String]) {
        self.push(" = ANY(").push_bind(items.to_vec()).push(")");
    }
    fn push_rows_v(&mut self, rows: &[[&str; 3]]) {
        let column = |i: usize| rows.iter().map(|r| r[i].to_owned()).collect::<Vec<String>>();
        self.push("UNNEST(")
            .push_bind(column(0))
            .push("::TEXT[], ")
            .push_bind(column(1))
            .push("::TEXT[], ")
            .push_bind(column(2))
            .push("::TEXT[]) AS v (column1, column2, column3)");
    }
}

/// The longest list one padded statement takes.
const MAX_PADDED: usize = 256;

/// `items` lengthened to the next power of two by repeating its last item,
/// for statements where a repeat changes nothing (an `IN` list; identical
/// rows of an `UPDATE … FROM (VALUES …)`). Prepared statements are cached by
/// their text, and a list of every length from 1 to 256 would have its own
/// text, prepared anew at almost every write (preparing a statement of a few
/// hundred bound values costs about as much as running it); padded, a handful
/// of texts per statement serve every write. SQLite only (`pad`): on
/// PostgreSQL it measured slower (claim + complete 1,741 -> 1,357 jobs/s),
/// so lists keep their length there.
pub(crate) fn padded<T: Clone>(items: &[T], pad: bool) -> Cow<'_, [T]> {
    let n = items.len();
    match items.last() {
        Some(last) if pad && !n.is_power_of_two() && n < MAX_PADDED => {
            let mut v = items.to_vec();
            v.resize(n.next_power_of_two(), last.clone());
            Cow::Owned(v)
        }
        _ => Cow::Borrowed(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_lists_repeat_the_last_item_up_to_a_power_of_two() {
        assert_eq!(padded(&[1, 2, 3], true).as_ref(), &[1, 2, 3, 3]);
        assert_eq!(padded(&[1, 2, 3, 4, 5], true).as_ref(), &[1, 2, 3, 4, 5, 5, 5, 5]);
        assert!(matches!(padded(&[1, 2, 3, 4], true), Cow::Borrowed(_)));
        assert!(padded::<i32>(&[], true).is_empty());
        let long: Vec<i32> = (0..300).collect();
        assert_eq!(
            padded(&long, true).len(),
            300,
            "past the largest padded length, a list is left as it is"
        );
        assert_eq!(
            padded(&[1, 2, 3], false).as_ref(),
            &[1, 2, 3],
            "PostgreSQL lists keep their length"
        );
    }
}
