use super::runs::bind_spend;
use crate::error::{Error, Result};
use crate::lifecycle::{can_transition, Status};
use crate::store::on;
use crate::store::Conn;
use std::sync::LazyLock;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProposalRow {
    pub id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub run_id: String,
    pub tool: String,
    pub args: String,
    pub args_hash: String,
    pub content_hash: String,
    pub idempotency_key: Option<String>,
    pub reason: String,
    pub preview_before: Option<String>,
    pub preview_after: Option<String>,
    pub diff: Option<String>,
    pub on_behalf_of: Option<String>,
    pub status: Status,
    pub approvals_required: i64,
    pub approvals: i64,
    pub destructive: bool,
    pub irreversible: bool,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: Option<i64>,
    pub execute_by: Option<i64>,
    /// The executor's precondition for its preview (`preview = "executor"`).
    pub preview_state: Option<String>,
    /// The executor (key name) that computed the preview, and when; None: the
    /// agent described it (or nobody did).
    pub preview_by: Option<String>,
    pub preview_at: Option<i64>,
    /// Where the idempotency key is unique: `tenant/env`.
    pub idempotency_scope: Option<String>,
    /// The args that were personal data when it was proposed (a JSON array
    /// of names); None: none were.
    pub pii_fields: Option<String>,
    /// When its personal data was erased.
    pub pii_erased_at: Option<i64>,
    /// The upstream MCP server and tool it will call (`upstream` tools).
    pub upstream: Option<String>,
    pub upstream_tool: Option<String>,
    /// The door it came through: `mcp` (the gateway), or None (the API).
    pub via: Option<String>,
}

pub const PROPOSAL_COLUMNS: &str = "id, tenant, env, route, run_id, tool, args, args_hash, content_hash, \
     idempotency_key, reason, preview_before, preview_after, diff, on_behalf_of, status, approvals_required, \
     approvals, destructive, irreversible, created_at, expires_at, decided_at, execute_by, preview_state, \
     preview_by, preview_at, idempotency_scope, pii_fields, pii_erased_at, upstream, upstream_tool, via";

/// How many values a proposal row binds (`bind_proposal!`), `$1` to `$33`.
const PROPOSAL_VALUES: usize = 33;

/// The insert of a proposal unless its idempotency key was used in its scope
/// (or, for rows older than the tenant + env scope, in its run); written
/// once, not at every request.
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let values: Vec<String> = (1..=PROPOSAL_VALUES).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO proposals ({PROPOSAL_COLUMNS}) VALUES ({}) ON CONFLICT DO NOTHING",
        values.join(", ")
    )
});

/// The insert, then the charge of its run (values from `$34` on) only if the
/// insert added the row.
static INSERT_AND_SPEND_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}; {} AND changes() = 1",
        *INSERT_SQL,
        super::runs::spend_sql(PROPOSAL_VALUES + 1)
    )
});

/// The same on PostgreSQL, as one statement (one round trip): the charge is
/// a data-modifying `WITH` that runs only if the insert returned its row,
/// and the statement answers the sum of both counts.
static INSERT_AND_SPEND_WITH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ins AS ({} RETURNING 1), spent AS ({} AND EXISTS (SELECT 1 FROM ins) RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM ins) + (SELECT COUNT(*) FROM spent)",
        *INSERT_SQL,
        super::runs::spend_sql(PROPOSAL_VALUES + 1)
    )
});

/// Bind a proposal's 33 values onto a query, in `PROPOSAL_COLUMNS` order.
macro_rules! bind_proposal {
    ($query:expr, $p:expr) => {
        $query
            .bind(&$p.id)
            .bind(&$p.tenant)
            .bind(&$p.env)
            .bind(&$p.route)
            .bind(&$p.run_id)
            .bind(&$p.tool)
            .bind(&$p.args)
            .bind(&$p.args_hash)
            .bind(&$p.content_hash)
            .bind(&$p.idempotency_key)
            .bind(&$p.reason)
            .bind(&$p.preview_before)
            .bind(&$p.preview_after)
            .bind(&$p.diff)
            .bind(&$p.on_behalf_of)
            .bind($p.status)
            .bind($p.approvals_required)
            .bind($p.approvals)
            .bind($p.destructive)
            .bind($p.irreversible)
            .bind($p.created_at)
            .bind($p.expires_at)
            .bind($p.decided_at)
            .bind($p.execute_by)
            .bind(&$p.preview_state)
            .bind(&$p.preview_by)
            .bind($p.preview_at)
            .bind(&$p.idempotency_scope)
            .bind(&$p.pii_fields)
            .bind($p.pii_erased_at)
            .bind(&$p.upstream)
            .bind(&$p.upstream_tool)
            .bind(&$p.via)
    };
}

/// What `insert_and_spend` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The run already used the idempotency key: nothing inserted or spent.
    Repeat,
    /// Inserted, but the run could not pay for it (revoked, expired or over
    /// a budget): nothing spent. The caller takes the row back.
    Unpaid,
    /// Inserted and paid for.
    Paid,
}

/// Insert `p` unless its run already used the idempotency key and, only if
/// it was inserted, charge the run `spend`, in one call to the database. On
/// SQLite the two statements go to the connection's thread as one call:
/// every call is a hand-off to that thread and back, which costs the single
/// writer more than either statement (intake measured +10% to +30% without
/// the second hand-off); the charge runs only when `changes()`, the insert's
/// count, is 1, and the call reports the sum of both counts. On PostgreSQL
/// one statement does both (`INSERT_AND_SPEND_WITH_SQL`): every statement
/// is a round trip that the writer waits for.
pub async fn insert_and_spend(
    conn: &mut Conn<'_>,
    p: &ProposalRow,
    spend: &super::runs::Spend<'_>,
) -> Result<Inserted> {
    let changed = if conn.dialect().combines_statements() {
        on!(conn, c => bind_spend!(bind_proposal!(sqlx::query(INSERT_AND_SPEND_SQL.as_str()), p), spend)
            .execute(&mut **c)
            .await?
            .rows_affected())
    } else {
        let sql = INSERT_AND_SPEND_WITH_SQL.as_str();
        on!(conn, c => bind_spend!(bind_proposal!(sqlx::query_scalar::<_, i64>(sql), p), spend)
            .fetch_one(&mut **c)
            .await?) as u64
    };
    Ok(match changed {
        0 => Inserted::Repeat,
        1 => Inserted::Unpaid,
        _ => Inserted::Paid,
    })
}

/// A proposal to insert and charge as one of several (`insert_and_spend_many`).
#[derive(Debug, Clone)]
pub struct ToInsert {
    pub row: ProposalRow,
    pub steps: i64,
    pub usd: f64,
    pub budgets: crate::policy::Budgets,
}

/// `insert_and_spend` for several proposals in one call: each row as the
/// one-row statement would treat it, all at `now`. The runs must be distinct
/// (one statement updates a row at most once) and so must the idempotency
/// keys of a scope (which row would win is not defined); the caller ensures
/// both. Answers what happened to each, in order. On PostgreSQL one
/// statement over arrays; on SQLite by the writer's own thread
/// (`insert_and_spend_many_sqlite`).
pub async fn insert_and_spend_many<R: std::borrow::Borrow<ToInsert>>(
    conn: &mut Conn<'_>,
    rows: &[R],
    now: i64,
) -> Result<Vec<Inserted>> {
    if let Conn::Sqlite(c) = conn {
        return insert_and_spend_many_sqlite(c, rows, now).await;
    }
    // The arrays are bound below in `PROPOSAL_COLUMNS` order, then the charge.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let types = [
            "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT",
            "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BOOLEAN", "BOOLEAN", "BIGINT", "BIGINT", "BIGINT", "BIGINT",
            "TEXT", "TEXT", "BIGINT", "TEXT", "TEXT", "BIGINT", "TEXT", "TEXT", "TEXT", "BIGINT", "FLOAT8", "BIGINT",
            "FLOAT8", "BIGINT",
        ];
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}[]", i + 1))
            .collect();
        let now = format!("${}", types.len() + 1);
        format!(
            "WITH i AS (SELECT * FROM UNNEST({}) AS t({PROPOSAL_COLUMNS}, steps, usd, max_steps, max_usd, max_ms)), \
             ins AS (INSERT INTO proposals ({PROPOSAL_COLUMNS}) SELECT {PROPOSAL_COLUMNS} FROM i \
             ON CONFLICT DO NOTHING RETURNING id), \
             spent AS (UPDATE runs r SET steps_used = r.steps_used + i.steps, usd_used = r.usd_used + i.usd, \
             denials_in_row = 0 FROM i JOIN ins ON ins.id = i.id WHERE r.id = i.run_id AND r.revoked_at IS NULL \
             AND r.expires_at > {now} AND r.steps_used + i.steps <= i.max_steps AND r.usd_used + i.usd <= i.max_usd \
             AND {now} - r.created_at <= i.max_ms RETURNING r.id) \
             SELECT i.id, (ins.id IS NOT NULL)::INT4 + (spent.id IS NOT NULL)::INT4 \
             FROM i LEFT JOIN ins ON ins.id = i.id LEFT JOIN spent ON spent.id = i.run_id",
            arrays.join(", ")
        )
    });
    fn col<R: std::borrow::Borrow<ToInsert>, T>(rows: &[R], f: impl Fn(&ToInsert) -> T) -> Vec<T> {
        rows.iter().map(|r| f(r.borrow())).collect()
    }
    let Conn::Postgres(c) = conn else {
        return Err(Error::internal("SQLite is answered above"));
    };
    let answered: Vec<(String, i32)> = sqlx::query_as(SQL.as_str())
        .bind(col(rows, |t| t.row.id.clone()))
        .bind(col(rows, |t| t.row.tenant.clone()))
        .bind(col(rows, |t| t.row.env.clone()))
        .bind(col(rows, |t| t.row.route.clone()))
        .bind(col(rows, |t| t.row.run_id.clone()))
        .bind(col(rows, |t| t.row.tool.clone()))
        .bind(col(rows, |t| t.row.args.clone()))
        .bind(col(rows, |t| t.row.args_hash.clone()))
        .bind(col(rows, |t| t.row.content_hash.clone()))
        .bind(col(rows, |t| t.row.idempotency_key.clone()))
        .bind(col(rows, |t| t.row.reason.clone()))
        .bind(col(rows, |t| t.row.preview_before.clone()))
        .bind(col(rows, |t| t.row.preview_after.clone()))
        .bind(col(rows, |t| t.row.diff.clone()))
        .bind(col(rows, |t| t.row.on_behalf_of.clone()))
        .bind(col(rows, |t| t.row.status.as_str()))
        .bind(col(rows, |t| t.row.approvals_required))
        .bind(col(rows, |t| t.row.approvals))
        .bind(col(rows, |t| t.row.destructive))
        .bind(col(rows, |t| t.row.irreversible))
        .bind(col(rows, |t| t.row.created_at))
        .bind(col(rows, |t| t.row.expires_at))
        .bind(col(rows, |t| t.row.decided_at))
        .bind(col(rows, |t| t.row.execute_by))
        .bind(col(rows, |t| t.row.preview_state.clone()))
        .bind(col(rows, |t| t.row.preview_by.clone()))
        .bind(col(rows, |t| t.row.preview_at))
        .bind(col(rows, |t| t.row.idempotency_scope.clone()))
        .bind(col(rows, |t| t.row.pii_fields.clone()))
        .bind(col(rows, |t| t.row.pii_erased_at))
        .bind(col(rows, |t| t.row.upstream.clone()))
        .bind(col(rows, |t| t.row.upstream_tool.clone()))
        .bind(col(rows, |t| t.row.via.clone()))
        .bind(col(rows, |t| t.steps))
        .bind(col(rows, |t| t.usd))
        .bind(col(rows, |t| t.budgets.steps))
        .bind(col(rows, |t| t.budgets.usd + 1e-9))
        .bind(col(rows, |t| t.budgets.seconds * 1000))
        .bind(now)
        .fetch_all(&mut **c)
        .await?;
    let by_id: std::collections::HashMap<String, i32> = answered.into_iter().collect();
    rows.iter()
        .map(|t| match by_id.get(&t.borrow().row.id) {
            Some(0) => Ok(Inserted::Repeat),
            Some(1) => Ok(Inserted::Unpaid),
            Some(_) => Ok(Inserted::Paid),
            None => Err(Error::internal("a proposal of a many-row insert went unanswered")),
        })
        .collect()
}

/// `insert_and_spend_many` on SQLite. Every statement sqlx runs is a
/// hand-off to the connection's thread and back (and every row or result a
/// message back), which costs the single writer more than SQLite's own work;
/// so the rows are inserted and charged here by the writer's own thread,
/// through the raw handle sqlx lends while its thread waits
/// (`lock_handle`), with rusqlite: one hand-off for the batch. Each row is
/// the one-row pair of `INSERT_AND_SPEND_SQL`: the insert unless its key was
/// used, then, only if it inserted, the charge (a lookup by primary key).
async fn insert_and_spend_many_sqlite<R: std::borrow::Borrow<ToInsert>>(
    c: &mut sqlx::SqliteConnection,
    rows: &[R],
    now: i64,
) -> Result<Vec<Inserted>> {
    super::on_sqlite_directly(c, |conn| insert_and_spend_rows(conn, rows, now)).await
}

/// The rows of `insert_and_spend_many_sqlite`, on the writer's thread.
fn insert_and_spend_rows<R: std::borrow::Borrow<ToInsert>>(
    conn: &rusqlite::Connection,
    rows: &[R],
    now: i64,
) -> rusqlite::Result<Vec<Inserted>> {
    // The one-row statements, as written once: their parameters, numbered
    // in order of first use, are bound by position below.
    static SPEND: LazyLock<String> = LazyLock::new(|| super::runs::spend_sql(1));
    let mut insert = conn.prepare(&INSERT_SQL)?;
    let mut spend = conn.prepare(&SPEND)?;
    let mut out = Vec::with_capacity(rows.len());
    for t in rows {
        let t = t.borrow();
        let p = &t.row;
        let inserted = insert.execute(rusqlite::params![
            p.id,
            p.tenant,
            p.env,
            p.route,
            p.run_id,
            p.tool,
            p.args,
            p.args_hash,
            p.content_hash,
            p.idempotency_key,
            p.reason,
            p.preview_before,
            p.preview_after,
            p.diff,
            p.on_behalf_of,
            p.status.as_str(),
            p.approvals_required,
            p.approvals,
            p.destructive,
            p.irreversible,
            p.created_at,
            p.expires_at,
            p.decided_at,
            p.execute_by,
            p.preview_state,
            p.preview_by,
            p.preview_at,
            p.idempotency_scope,
            p.pii_fields,
            p.pii_erased_at,
            p.upstream,
            p.upstream_tool,
            p.via,
        ])? == 1;
        out.push(match inserted {
            false => Inserted::Repeat,
            true => {
                let charged = spend.execute(rusqlite::params![
                    t.steps,
                    t.usd,
                    p.run_id,
                    now,
                    t.budgets.steps,
                    t.budgets.usd + 1e-9,
                    t.budgets.seconds * 1000,
                ])?;
                if charged == 1 {
                    Inserted::Paid
                } else {
                    Inserted::Unpaid
                }
            }
        });
    }
    Ok(out)
}

pub async fn delete(conn: &mut Conn<'_>, id: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("DELETE FROM proposals WHERE id = $1").bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn get(conn: &mut Conn<'_>, id: &str) -> Result<Option<ProposalRow>> {
    let sql = format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

/// The proposal row, locked for this transaction where the database locks rows.
pub async fn get_for_update(conn: &mut Conn<'_>, id: &str) -> Result<Option<ProposalRow>> {
    let sql = format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1{}",
        conn.dialect().lock_rows()
    );
    Ok(on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

/// The proposal that used `key` in `scope` (or, for rows older than the
/// tenant + env scope, in `run_id`).
pub async fn by_idempotency_key(
    conn: &mut Conn<'_>,
    scope: &str,
    run_id: &str,
    key: &str,
) -> Result<Option<ProposalRow>> {
    let sql = format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE idempotency_key = $1 AND (idempotency_scope = $2 OR run_id = $3) \
         ORDER BY created_at LIMIT 1"
    );
    Ok(
        on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(key).bind(scope).bind(run_id)
        .fetch_optional(&mut **c).await?),
    )
}

/// Let `run_id` read a proposal of another run it replayed.
pub async fn record_replay(conn: &mut Conn<'_>, proposal_id: &str, run_id: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("INSERT INTO proposal_replays (proposal_id, run_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(proposal_id).bind(run_id).execute(&mut **c).await?;
    });
    Ok(())
}

/// Whether `run_id` replayed the proposal (and so may read it).
pub async fn replayed_by(conn: &mut Conn<'_>, proposal_id: &str, run_id: &str) -> Result<bool> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM proposal_replays WHERE proposal_id = $1 AND run_id = $2")
        .bind(proposal_id).bind(run_id).fetch_one(&mut **c).await?)
        > 0)
}

/// A run's proposals still open: previewing or pending.
pub async fn open_of_run(conn: &mut Conn<'_>, run_id: &str) -> Result<Vec<ProposalRow>> {
    let sql =
        format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE run_id = $1 AND status IN ('previewing', 'pending')");
    Ok(on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(run_id).fetch_all(&mut **c).await?))
}

/// A run's proposals, oldest first, at most `limit` (the review screen's
/// list of an agent's parallel calls).
pub async fn of_run(conn: &mut Conn<'_>, run_id: &str, limit: i64) -> Result<Vec<ProposalRow>> {
    let sql = format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE run_id = $1 ORDER BY created_at, id LIMIT $2");
    Ok(on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(run_id).bind(limit).fetch_all(&mut **c).await?))
}

/// What an executor's preview says, recorded on a previewing proposal, which
/// becomes pending (decidable). False if it was no longer previewing.
#[derive(Debug, Clone)]
pub struct PreviewDone<'a> {
    pub before: &'a str,
    pub after: &'a str,
    pub state: &'a str,
    pub diff: &'a str,
    pub content_hash: &'a str,
    pub by: &'a str,
    pub at: i64,
}

pub async fn record_preview(conn: &mut Conn<'_>, id: &str, p: &PreviewDone<'_>) -> Result<bool> {
    check_move(Status::Previewing, Status::Pending)?;
    let n = on!(conn, c => sqlx::query(
        "UPDATE proposals SET status = 'pending', preview_before = $1, preview_after = $2, preview_state = $3, \
         diff = $4, content_hash = $5, preview_by = $6, preview_at = $7 WHERE id = $8 AND status = 'previewing'")
        .bind(p.before).bind(p.after).bind(p.state).bind(p.diff).bind(p.content_hash).bind(p.by).bind(p.at).bind(id)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Refuse a move the lifecycle does not have: a bug, never an input.
fn check_move(from: Status, to: Status) -> Result<()> {
    if can_transition(from, to) {
        Ok(())
    } else {
        Err(Error::internal(format!("illegal proposal move {from} -> {to}")))
    }
}

/// End an undecided proposal (`from` previewing or pending; `to`: rejected,
/// cancelled, expired or failed), recording when; false if it had moved on.
pub async fn close(conn: &mut Conn<'_>, id: &str, from: Status, to: Status, now: i64) -> Result<bool> {
    check_move(from, to)?;
    let n = on!(conn, c => sqlx::query(
        "UPDATE proposals SET status = $1, decided_at = COALESCE(decided_at, $2) WHERE id = $3 AND status = $4")
        .bind(to).bind(now).bind(id).bind(from).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Move `id` from `from` to `to`; false if it was no longer in `from`.
pub async fn transition(conn: &mut Conn<'_>, id: &str, from: Status, to: Status) -> Result<bool> {
    check_move(from, to)?;
    let n = on!(conn, c => sqlx::query("UPDATE proposals SET status = $1 WHERE id = $2 AND status = $3")
        .bind(to).bind(id).bind(from).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// What an executor gets of a proposal it runs.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunFacts {
    pub id: String,
    pub args: String,
    pub args_hash: String,
    pub idempotency_key: Option<String>,
    pub preview_state: Option<String>,
}

const RUN_FACTS: &str = "id, args, args_hash, idempotency_key, preview_state";

fn run_facts_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunFacts> {
    Ok(RunFacts {
        id: r.get(0)?,
        args: r.get(1)?,
        args_hash: r.get(2)?,
        idempotency_key: r.get(3)?,
        preview_state: r.get(4)?,
    })
}

/// SQLite, on the writer's thread: the run facts of each of `ids` found,
/// the one-row select prepared once.
fn run_facts_sqlite<'a>(
    db: &rusqlite::Connection,
    ids: impl IntoIterator<Item = &'a String>,
) -> rusqlite::Result<Vec<RunFacts>> {
    static ONE: LazyLock<String> = LazyLock::new(|| format!("SELECT {RUN_FACTS} FROM proposals WHERE id = $1"));
    super::rows_by_id(db, &ONE, ids, run_facts_of)
}

/// SQLite, on the writer's thread: move each of `ids` from `from` to `to`
/// with the one-row update, prepared once; answers those moved. (Without
/// `RETURNING`, which SQLite answers through a temporary table opened and
/// closed at every run.)
fn move_each_sqlite<'a>(
    db: &rusqlite::Connection,
    ids: &'a [String],
    from: Status,
    to: Status,
) -> rusqlite::Result<Vec<&'a String>> {
    static ONE: LazyLock<String> = LazyLock::new(|| status_update_sql(" = $3"));
    let mut update = db.prepare(&ONE)?;
    let mut moved = Vec::with_capacity(ids.len());
    for id in ids {
        if update.execute(rusqlite::params![to, from, id])? == 1 {
            moved.push(id);
        }
    }
    Ok(moved)
}

/// The run facts of proposals whose status does not change at claim
/// (previews).
pub async fn run_facts(conn: &mut Conn<'_>, ids: &[String]) -> Result<Vec<RunFacts>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        Conn::Sqlite(c) => super::on_sqlite_directly(c, |db| run_facts_sqlite(db, ids)).await,
        Conn::Postgres(c) => Ok(
            sqlx::query_as(&format!("SELECT {RUN_FACTS} FROM proposals WHERE id = ANY($1)"))
                .bind(ids)
                .fetch_all(&mut **c)
                .await?,
        ),
    }
}

/// `UPDATE proposals SET status = $1 WHERE status = $2 AND id` and then
/// `tail` (the ids' match, from `$3`).
fn status_update_sql(tail: &str) -> String {
    format!("UPDATE proposals SET status = $1 WHERE status = $2 AND id{tail}")
}

/// Move many proposals from `from` to `to`, answering what their executors
/// need of those moved.
pub async fn transition_many_returning(
    conn: &mut Conn<'_>,
    ids: &[String],
    from: Status,
    to: Status,
) -> Result<Vec<RunFacts>> {
    check_move(from, to)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        Conn::Sqlite(c) => {
            super::on_sqlite_directly(c, |db| {
                let moved = move_each_sqlite(db, ids, from, to)?;
                run_facts_sqlite(db, moved)
            })
            .await
        }
        Conn::Postgres(c) => {
            static MANY: LazyLock<String> =
                LazyLock::new(|| status_update_sql(&format!(" = ANY($3) RETURNING {RUN_FACTS}")));
            Ok(sqlx::query_as(MANY.as_str())
                .bind(to)
                .bind(from)
                .bind(ids)
                .fetch_all(&mut **c)
                .await?)
        }
    }
}

/// Move many proposals from `from` to `to`; answers how many. PostgreSQL:
/// one statement; SQLite: the one-row statement for each, on the writer's
/// thread.
pub async fn transition_many(conn: &mut Conn<'_>, ids: &[String], from: Status, to: Status) -> Result<u64> {
    check_move(from, to)?;
    if ids.is_empty() {
        return Ok(0);
    }
    match conn {
        Conn::Sqlite(c) => {
            super::on_sqlite_directly(c, |db| Ok(move_each_sqlite(db, ids, from, to)?.len() as u64)).await
        }
        Conn::Postgres(c) => {
            static MANY: LazyLock<String> = LazyLock::new(|| status_update_sql(" = ANY($3)"));
            Ok(sqlx::query(MANY.as_str())
                .bind(to)
                .bind(from)
                .bind(ids)
                .execute(&mut **c)
                .await?
                .rows_affected())
        }
    }
}

/// What an execution's audit event and answer need of its proposal.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StatusFacts {
    pub id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub tool: String,
    pub status: Status,
    pub args_hash: String,
    pub idempotency_key: Option<String>,
}

/// Move from `from` to `to` and answer the facts, in one statement; None if
/// it was no longer in `from`.
pub async fn transition_returning(
    conn: &mut Conn<'_>,
    id: &str,
    from: Status,
    to: Status,
) -> Result<Option<StatusFacts>> {
    check_move(from, to)?;
    Ok(on!(conn, c => sqlx::query_as::<_, StatusFacts>(
        "UPDATE proposals SET status = $1 WHERE id = $2 AND status = $3 \
         RETURNING id, tenant, env, route, tool, status, args_hash, idempotency_key")
        .bind(to).bind(id).bind(from).fetch_optional(&mut **c).await?))
}

/// A pending proposal approved: its count, its new status (approved, i.e.
/// held, or queued), when, and its execute-by deadline.
pub async fn approve(
    conn: &mut Conn<'_>,
    id: &str,
    approvals: i64,
    to: Status,
    now: i64,
    execute_by: i64,
) -> Result<bool> {
    check_move(Status::Pending, to)?;
    let n = on!(conn, c => sqlx::query(
        "UPDATE proposals SET approvals = $1, status = $2, decided_at = $3, execute_by = $4 \
         WHERE id = $5 AND status = 'pending'")
        .bind(approvals).bind(to).bind(now).bind(execute_by).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn set_approvals(conn: &mut Conn<'_>, id: &str, approvals: i64) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE proposals SET approvals = $1 WHERE id = $2").bind(approvals).bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

/// Pending proposals of `tenants`, oldest first. `pending_tenant` is the
/// tenant of a pending proposal and NULL otherwise (migration 0013: status
/// is in no index, so its other changes can be HOT updates on PostgreSQL);
/// `IS NOT NULL` spelled out, as in the index's WHERE, so both planners see
/// that the partial index applies.
pub async fn pending(conn: &mut Conn<'_>, tenants: &[String], limit: i64) -> Result<Vec<ProposalRow>> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new(format!(
            "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE pending_tenant IS NOT NULL AND pending_tenant IN ("));
        let mut sep = qb.separated(", ");
        for t in tenants {
            sep.push_bind(t.clone());
        }
        sep.push_unseparated(") ORDER BY created_at, id LIMIT ");
        qb.push_bind(limit);
        qb.build_query_as::<ProposalRow>().fetch_all(&mut **c).await?
    }))
}

/// Pending proposals whose time is up. Both terms of the expiry index's
/// WHERE are spelled out (migration 0014), so SQLite sees that it applies.
pub async fn pending_expired(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<ProposalRow>> {
    let sql = format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE pending_tenant IS NOT NULL AND expires_at IS NOT NULL \
         AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(now).bind(limit).fetch_all(&mut **c).await?))
}

/// The statuses migration 0013's `gone_wrong` column holds (NULL for the
/// others), which the `proposals_gone_wrong` index covers.
const GONE_WRONG: [Status; 4] = [Status::Failed, Status::Rejected, Status::Expired, Status::Cancelled];

#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// None: every tenant (admins); Some(empty): nothing.
    pub tenants: Option<Vec<String>>,
    pub tenant: Option<String>,
    pub tool: Option<String>,
    pub status: Option<Status>,
    /// Someone who decided it, or whom it was for.
    pub person: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Keyset pagination: rows created before this (created_at, id).
    pub before: Option<(i64, String)>,
}

/// Newest first.
pub async fn history(conn: &mut Conn<'_>, f: &HistoryFilter, limit: i64) -> Result<Vec<ProposalRow>> {
    if f.tenants.as_ref().is_some_and(|t| t.is_empty()) {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE 1 = 1"));
        if let Some(ts) = &f.tenants {
            qb.push(" AND tenant IN (");
            let mut sep = qb.separated(", ");
            for t in ts {
                sep.push_bind(t.clone());
            }
            sep.push_unseparated(")");
        }
        if let Some(t) = &f.tenant {
            qb.push(" AND tenant = ").push_bind(t.clone());
        }
        if let Some(t) = &f.tool {
            qb.push(" AND tool = ").push_bind(t.clone());
        }
        if let Some(s) = f.status {
            if GONE_WRONG.contains(&s) {
                // `IS NOT NULL` spelled out as in the partial index's WHERE,
                // so SQLite sees that the index applies.
                qb.push(" AND gone_wrong IS NOT NULL AND gone_wrong = ").push_bind(s);
            } else {
                qb.push(" AND status = ").push_bind(s);
            }
        }
        if let Some(p) = &f.person {
            // A set of ids from two indexed lookups: an OR across the two
            // made both stores walk the tenant's whole history.
            qb.push(" AND id IN (SELECT id FROM proposals WHERE on_behalf_of = ").push_bind(p.clone());
            qb.push(" UNION SELECT proposal_id FROM decisions WHERE username = ").push_bind(p.clone());
            qb.push(")");
        }
        if let Some(from) = f.from_ms {
            qb.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(to) = f.to_ms {
            qb.push(" AND created_at < ").push_bind(to);
        }
        if let Some((at, id)) = &f.before {
            qb.push(" AND (created_at < ").push_bind(*at);
            qb.push(" OR (created_at = ").push_bind(*at);
            qb.push(" AND id < ").push_bind(id.clone());
            qb.push("))");
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit);
        qb.build_query_as::<ProposalRow>().fetch_all(&mut **c).await?
    }))
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DecisionRow {
    pub id: String,
    pub proposal_id: String,
    pub user_id: String,
    pub username: String,
    pub verdict: crate::lifecycle::Verdict,
    pub comment: String,
    pub content_hash: String,
    pub view_ms: Option<i64>,
    pub break_glass: bool,
    pub decided_at: i64,
    /// The passkey that signed it, if one did.
    pub passkey_id: Option<String>,
    /// The signature's evidence (the bound challenge's nonce and the
    /// assertion), JSON.
    pub passkey_assertion: Option<String>,
}

const DECISION_COLUMNS: &str = "id, proposal_id, user_id, username, verdict, comment, content_hash, view_ms, \
     break_glass, decided_at, passkey_id, passkey_assertion";

pub async fn insert_decision(conn: &mut Conn<'_>, d: &DecisionRow) -> Result<()> {
    let sql = format!(
        "INSERT INTO decisions ({DECISION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    );
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&d.id).bind(&d.proposal_id).bind(&d.user_id).bind(&d.username).bind(d.verdict)
            .bind(&d.comment).bind(&d.content_hash).bind(d.view_ms).bind(d.break_glass).bind(d.decided_at)
            .bind(&d.passkey_id).bind(&d.passkey_assertion)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn decisions_of(conn: &mut Conn<'_>, proposal_id: &str) -> Result<Vec<DecisionRow>> {
    let sql = format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE proposal_id = $1 ORDER BY decided_at, id");
    Ok(on!(conn, c => sqlx::query_as::<_, DecisionRow>(&sql).bind(proposal_id).fetch_all(&mut **c).await?))
}

/// A person's latest decisions, newest first (how fast they have been deciding).
pub async fn recent_decisions_by(conn: &mut Conn<'_>, username: &str, limit: i64) -> Result<Vec<DecisionRow>> {
    let sql = format!(
        "SELECT {DECISION_COLUMNS} FROM decisions WHERE username = $1 ORDER BY decided_at DESC, id DESC LIMIT $2"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, DecisionRow>(&sql).bind(username).bind(limit).fetch_all(&mut **c).await?))
}

/// Decisions of many proposals at once (history pages).
pub async fn decisions_of_many(conn: &mut Conn<'_>, ids: &[String]) -> Result<Vec<DecisionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE proposal_id IN ("));
        let mut sep = qb.separated(", ");
        for id in ids {
            sep.push_bind(id.clone());
        }
        sep.push_unseparated(") ORDER BY decided_at, id");
        qb.build_query_as::<DecisionRow>().fetch_all(&mut **c).await?
    }))
}

/// Pending proposals: how many, and when the oldest was made.
pub async fn pending_count_and_oldest(conn: &mut Conn<'_>) -> Result<(i64, Option<i64>)> {
    Ok(on!(conn, c => sqlx::query_as::<_, (i64, Option<i64>)>(
        "SELECT COUNT(*), MIN(created_at) FROM proposals WHERE pending_tenant IS NOT NULL")
        .fetch_one(&mut **c).await?))
}

/// The statuses a proposal ends in, as SQL: `'succeeded', 'failed', …`.
fn terminal_statuses() -> String {
    Status::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finished proposals that still hold personal data and finished at or
/// before `cutoff` (their last job's end, else their decision), oldest
/// first. Reads `proposals_pii_kept`: a proposal finishes after it was made,
/// so only rows made by `cutoff` are looked at.
pub async fn erasable(conn: &mut Conn<'_>, cutoff: i64, limit: i64) -> Result<Vec<ProposalRow>> {
    let sql = format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals p WHERE p.pii_fields IS NOT NULL AND p.pii_erased_at IS NULL \
         AND p.created_at <= $1 AND p.status IN ({}) \
         AND COALESCE((SELECT MAX(j.finished_at) FROM jobs j WHERE j.proposal_id = p.id), p.decided_at, p.created_at) <= $1 \
         ORDER BY p.created_at, p.id LIMIT $2",
        terminal_statuses()
    );
    Ok(on!(conn, c => sqlx::query_as::<_, ProposalRow>(&sql).bind(cutoff).bind(limit).fetch_all(&mut **c).await?))
}

/// A proposal with its personal data replaced (args, reason, preview,
/// precondition), marked erased at `at`. The args hash and content hash
/// stay. False if it was already erased.
#[derive(Debug, Clone)]
pub struct Erased<'a> {
    pub args: &'a str,
    pub reason: &'a str,
    pub preview_before: Option<&'a str>,
    pub preview_after: Option<&'a str>,
    pub preview_state: Option<&'a str>,
    pub pii_fields: &'a str,
    pub at: i64,
}

pub async fn erase(conn: &mut Conn<'_>, id: &str, e: &Erased<'_>) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE proposals SET args = $1, reason = $2, preview_before = $3, preview_after = $4, preview_state = $5, \
         diff = NULL, pii_fields = $6, pii_erased_at = $7 WHERE id = $8 AND pii_erased_at IS NULL")
        .bind(e.args).bind(e.reason).bind(e.preview_before).bind(e.preview_after).bind(e.preview_state)
        .bind(e.pii_fields).bind(e.at).bind(id)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Record `fields` as personal data on the proposals of `tool` that
/// recorded none and were not erased: those made before the policy marked
/// them. Answers how many. (A scan of the table: run when the loaded policy
/// changes, and by an on-demand purge.)
pub async fn mark_personal(conn: &mut Conn<'_>, tool: &str, fields: &str) -> Result<u64> {
    Ok(on!(conn, c => sqlx::query(
        "UPDATE proposals SET pii_fields = $1 WHERE tool = $2 AND pii_fields IS NULL AND pii_erased_at IS NULL")
        .bind(fields).bind(tool).execute(&mut **c).await?.rows_affected()))
}

/// Replace a decision's comment (personal data erased from it).
pub async fn set_comment(conn: &mut Conn<'_>, decision_id: &str, comment: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE decisions SET comment = $1 WHERE id = $2")
            .bind(comment).bind(decision_id).execute(&mut **c).await?;
    });
    Ok(())
}
