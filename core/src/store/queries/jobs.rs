//! Jobs: the queue, leases and outcomes.
//!
//! A statement that names its jobs by id checks their state as
//! `state || '' = …`, not `state = …`. The queue's partial indexes
//! (`jobs_claimable`, `jobs_due`, `jobs_leases`) are defined by `state = …`,
//! and a condition that implies an index's predicate lets PostgreSQL read
//! that whole index instead of (or as well as) the ids' primary-key
//! entries. It does so when its statistics were taken while few jobs were in
//! that state, as right after a burst: every claim then read every queued
//! job. Through an expression the check stays, and the primary key is the
//! only way in (`store::conformance::plans`).

use crate::error::{Error, Result};
use crate::lifecycle::{job_can_transition, JobKind, JobState};
use crate::store::on;
use crate::store::Conn;
use std::sync::LazyLock;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub proposal_id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub tool: String,
    pub state: JobState,
    pub attempt: i64,
    pub max_attempts: i64,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub leased_at: Option<i64>,
    pub available_at: i64,
    pub execute_by: i64,
    pub result: Option<String>,
    pub completion: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub kind: JobKind,
    /// The same for every attempt, unique across the deployment.
    pub execution_key: String,
    /// The signed receipt of what was approved (execute jobs).
    pub receipt: Option<String>,
}

const JOB_COLUMNS: &str = "id, proposal_id, tenant, env, route, tool, state, attempt, max_attempts, lease_id, \
     lease_expires_at, leased_at, available_at, execute_by, result, completion, created_at, finished_at, kind, \
     execution_key, receipt";

pub async fn insert(conn: &mut Conn<'_>, j: &JobRow) -> Result<()> {
    let sql = format!(
        "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18, $19, $20, $21)"
    );
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&j.id).bind(&j.proposal_id).bind(&j.tenant).bind(&j.env).bind(&j.route).bind(&j.tool)
            .bind(j.state).bind(j.attempt).bind(j.max_attempts).bind(&j.lease_id).bind(j.lease_expires_at).bind(j.leased_at)
            .bind(j.available_at).bind(j.execute_by).bind(&j.result).bind(&j.completion).bind(j.created_at)
            .bind(j.finished_at).bind(j.kind).bind(&j.execution_key).bind(&j.receipt)
            .execute(&mut **c).await?;
    });
    Ok(())
}

/// The job, locked for this transaction where the database locks rows.
pub async fn get_for_update(conn: &mut Conn<'_>, id: &str) -> Result<Option<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{}",
        conn.dialect().lock_rows()
    );
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

/// Every job of a proposal (its preview and its execution).
pub async fn of_proposal(conn: &mut Conn<'_>, proposal_id: &str) -> Result<Vec<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE proposal_id = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(proposal_id).fetch_all(&mut **c).await?))
}

/// A proposal's job: the execution once there is one, else its preview.
pub async fn by_proposal(conn: &mut Conn<'_>, proposal_id: &str) -> Result<Option<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE proposal_id = $1 ORDER BY CASE kind WHEN 'execute' THEN 0 ELSE 1 END LIMIT 1"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(proposal_id).fetch_optional(&mut **c).await?))
}

pub async fn by_proposals(conn: &mut Conn<'_>, ids: &[String]) -> Result<Vec<JobRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE proposal_id IN ("));
        let mut sep = qb.separated(", ");
        for id in ids {
            sep.push_bind(id.clone());
        }
        // Previews first: a caller keeping one job per proposal keeps the execution.
        sep.push_unseparated(") ORDER BY CASE kind WHEN 'execute' THEN 1 ELSE 0 END");
        qb.build_query_as::<JobRow>().fetch_all(&mut **c).await?
    }))
}

/// A claimable job: what deciding on holds and leasing it needs.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ClaimableRow {
    pub id: String,
    pub proposal_id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub tool: String,
    pub attempt: i64,
    pub kind: JobKind,
    pub execution_key: String,
    pub receipt: Option<String>,
}

/// Queued jobs of `env`, `tools` and `kinds` that may run now and are not yet
/// past their deadline (the sweeper expires those), oldest first, from the
/// queue's index. PostgreSQL locks them and skips rows other claimers hold.
pub async fn claimable_rows(
    conn: &mut Conn<'_>,
    env: &str,
    tools: &[String],
    kinds: &[JobKind],
    now: i64,
    limit: i64,
) -> Result<Vec<ClaimableRow>> {
    if tools.is_empty() || kinds.is_empty() {
        return Ok(Vec::new());
    }
    // Parameters in order of first use (SQLite numbers `$n` so): the env,
    // the time, the kind if only one, the tools, the limit.
    let kind = (kinds.len() == 1).then_some(kinds[0]);
    let first_tool = if kind.is_some() { 4 } else { 3 };
    let tool_list = (first_tool..first_tool + tools.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT id, proposal_id, tenant, env, route, tool, attempt, kind, execution_key, receipt FROM jobs \
         WHERE state = 'queued' AND env = $1 AND available_at <= $2 AND execute_by > $2{} AND tool IN ({tool_list}) \
         ORDER BY available_at, id LIMIT ${}{}",
        if kind.is_some() { " AND kind = $3" } else { "" },
        first_tool + tools.len(),
        conn.dialect().lock_skipping_locked(),
    );
    match conn {
        Conn::Sqlite(c) => {
            super::on_sqlite_directly(c, |db| {
                let mut params: Vec<&dyn rusqlite::ToSql> = vec![&env, &now];
                if let Some(k) = &kind {
                    params.push(k);
                }
                params.extend(tools.iter().map(|t| t as &dyn rusqlite::ToSql));
                params.push(&limit);
                let mut select = db.prepare(&sql)?;
                let rows = select.query_map(params.as_slice(), |r| {
                    Ok(ClaimableRow {
                        id: r.get(0)?,
                        proposal_id: r.get(1)?,
                        tenant: r.get(2)?,
                        env: r.get(3)?,
                        route: r.get(4)?,
                        tool: r.get(5)?,
                        attempt: r.get(6)?,
                        kind: r.get(7)?,
                        execution_key: r.get(8)?,
                        receipt: r.get(9)?,
                    })
                })?;
                rows.collect()
            })
            .await
        }
        Conn::Postgres(c) => {
            let mut q = sqlx::query_as::<_, ClaimableRow>(&sql).bind(env).bind(now);
            if let Some(k) = kind {
                q = q.bind(k);
            }
            for t in tools {
                q = q.bind(t);
            }
            Ok(q.bind(limit).fetch_all(&mut **c).await?)
        }
    }
}

/// What a lease sets (`lease_many`): parameters `$1` the claim, `$2` the
/// lease's end, `$3` the time.
const LEASE_SET: &str = "state = 'leased', lease_id = 'lse_' || $1 || '_' || id, \
     lease_expires_at = CASE WHEN execute_by < $2 THEN execute_by ELSE $2 END, leased_at = $3, attempt = attempt + 1";

/// Lease many queued jobs in one call. Each gets the lease id
/// `lse_<claim>_<job id>`: new at every claim. A lease ends at `until` or at
/// the job's execute-by deadline, whichever comes first: work may not be
/// done after it. Returns (job id, lease id, lease end) of those leased.
/// PostgreSQL: one statement over the ids. SQLite: the one-row statement,
/// prepared once and run for each id, on the writer's thread.
pub async fn lease_many(
    conn: &mut Conn<'_>,
    ids: &[String],
    claim: &str,
    now: i64,
    until: i64,
) -> Result<Vec<(String, String, i64)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    check_move(JobState::Queued, JobState::Leased)?;
    const RETURNING: &str = " RETURNING id, lease_id, lease_expires_at";
    match conn {
        Conn::Sqlite(c) => {
            // The update, then its lease read back by primary key: SQLite
            // answers `RETURNING` through a temporary table, opened and
            // closed at every run.
            static ONE: LazyLock<String> =
                LazyLock::new(|| format!("UPDATE jobs SET {LEASE_SET} WHERE id = $4 AND state || '' = 'queued'"));
            super::on_sqlite_directly(c, |db| {
                let mut lease = db.prepare(&ONE)?;
                let mut read = db.prepare("SELECT lease_id, lease_expires_at FROM jobs WHERE id = $1")?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if lease.execute(rusqlite::params![claim, until, now, id])? == 1 {
                        let (lease_id, ends) = read.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                        out.push((id.clone(), lease_id, ends));
                    }
                }
                Ok(out)
            })
            .await
        }
        Conn::Postgres(c) => {
            static MANY: LazyLock<String> = LazyLock::new(|| {
                format!("UPDATE jobs SET {LEASE_SET} WHERE state || '' = 'queued' AND id = ANY($4){RETURNING}")
            });
            Ok(sqlx::query_as(MANY.as_str())
                .bind(claim)
                .bind(until)
                .bind(now)
                .bind(ids)
                .fetch_all(&mut **c)
                .await?)
        }
    }
}

/// Extend a live lease; false if the lease is no longer held.
pub async fn extend_lease(conn: &mut Conn<'_>, id: &str, lease_id: &str, now: i64, until: i64) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_id = $3 AND state || '' = 'leased' AND lease_expires_at > $4")
        .bind(until).bind(id).bind(lease_id).bind(now).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Record a final outcome for a job whose lease `lease_id` is live.
pub async fn finish(
    conn: &mut Conn<'_>,
    id: &str,
    lease_id: &str,
    state: JobState,
    result: &str,
    completion: &str,
    now: i64,
) -> Result<bool> {
    check_move(JobState::Leased, state)?;
    let n = on!(conn, c => sqlx::query(
        "UPDATE jobs SET state = $1, result = $2, completion = $3, finished_at = $4, lease_expires_at = NULL \
         WHERE id = $5 AND lease_id = $6 AND state || '' = 'leased'")
        .bind(state).bind(result).bind(completion).bind(now).bind(id).bind(lease_id)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// A job and what its audit event needs of its proposal, as a completion
/// finds them.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Finishable {
    pub id: String,
    pub proposal_id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub tool: String,
    pub state: JobState,
    pub attempt: i64,
    pub lease_id: Option<String>,
    pub leased_at: Option<i64>,
    pub lease_expires_at: Option<i64>,
    pub args_hash: String,
    pub idempotency_key: Option<String>,
}

/// The jobs `ids` with their proposals' facts: on PostgreSQL in one
/// statement, locked until the transaction ends; on SQLite by the one-row
/// statement run for each id on the writer's thread.
pub async fn finishable(conn: &mut Conn<'_>, ids: &[String]) -> Result<Vec<Finishable>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    const SELECT: &str = "SELECT j.id, j.proposal_id, j.tenant, j.env, j.route, j.tool, j.state, j.attempt, \
         j.lease_id, j.leased_at, j.lease_expires_at, p.args_hash, p.idempotency_key \
         FROM jobs j JOIN proposals p ON p.id = j.proposal_id WHERE j.kind = 'execute' AND j.id";
    match conn {
        Conn::Sqlite(c) => {
            static ONE: LazyLock<String> = LazyLock::new(|| format!("{SELECT} = $1"));
            super::on_sqlite_directly(c, |db| {
                super::rows_by_id(db, &ONE, ids, |r| {
                    Ok(Finishable {
                        id: r.get(0)?,
                        proposal_id: r.get(1)?,
                        tenant: r.get(2)?,
                        env: r.get(3)?,
                        route: r.get(4)?,
                        tool: r.get(5)?,
                        state: r.get(6)?,
                        attempt: r.get(7)?,
                        lease_id: r.get(8)?,
                        leased_at: r.get(9)?,
                        lease_expires_at: r.get(10)?,
                        args_hash: r.get(11)?,
                        idempotency_key: r.get(12)?,
                    })
                })
            })
            .await
        }
        Conn::Postgres(c) => {
            static MANY: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "{SELECT} = ANY($1){}",
                    crate::store::Backend::Postgres.lock_rows_of("j")
                )
            });
            Ok(sqlx::query_as(MANY.as_str()).bind(ids).fetch_all(&mut **c).await?)
        }
    }
}

/// A leased job to mark succeeded: its id, result and accepted body.
#[derive(Clone, Copy)]
pub struct Success<'a> {
    pub id: &'a str,
    pub result: &'a str,
    pub completion: &'a str,
}

/// Mark many leased jobs succeeded; answers how many were. PostgreSQL: one
/// statement over arrays. SQLite: the one-row statement, prepared once and
/// run for each job, on the writer's thread.
pub async fn succeed_many(conn: &mut Conn<'_>, done: &[Success<'_>], now: i64) -> Result<u64> {
    if done.is_empty() {
        return Ok(0);
    }
    check_move(JobState::Leased, JobState::Succeeded)?;
    const SET: &str = "UPDATE jobs SET state = 'succeeded', finished_at = $1, lease_expires_at = NULL, ";
    match conn {
        Conn::Sqlite(c) => {
            static ONE: LazyLock<String> =
                LazyLock::new(|| format!("{SET}result = $2, completion = $3 WHERE id = $4 AND state || '' = 'leased'"));
            super::on_sqlite_directly(c, |db| {
                let mut succeed = db.prepare(&ONE)?;
                let mut n = 0;
                for s in done {
                    n += succeed.execute(rusqlite::params![now, s.result, s.completion, s.id])? as u64;
                }
                Ok(n)
            })
            .await
        }
        Conn::Postgres(c) => {
            static MANY: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "{SET}result = v.result, completion = v.completion \
                     FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[]) AS v (id, result, completion) \
                     WHERE jobs.id = v.id AND jobs.state || '' = 'leased'"
                )
            });
            let ids: Vec<&str> = done.iter().map(|s| s.id).collect();
            let results: Vec<&str> = done.iter().map(|s| s.result).collect();
            let completions: Vec<&str> = done.iter().map(|s| s.completion).collect();
            Ok(sqlx::query(MANY.as_str())
                .bind(now)
                .bind(ids)
                .bind(results)
                .bind(completions)
                .execute(&mut **c)
                .await?
                .rows_affected())
        }
    }
}

/// Offer a leased job again after `available_at` (retry with backoff, or a
/// lost lease); false if it was no longer leased.
pub async fn requeue(
    conn: &mut Conn<'_>,
    id: &str,
    available_at: i64,
    result: Option<&str>,
    completion: Option<&str>,
) -> Result<bool> {
    check_move(JobState::Leased, JobState::Queued)?;
    let n = on!(conn, c => sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_id = NULL, lease_expires_at = NULL, available_at = $1, \
         result = COALESCE($2, result), completion = COALESCE($3, completion) WHERE id = $4 AND state || '' = 'leased'")
        .bind(available_at).bind(result).bind(completion).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Replace a job's receipt (tests of an executor that must refuse a forged one).
#[cfg(any(test, feature = "testing"))]
pub async fn set_receipt(conn: &mut Conn<'_>, id: &str, receipt: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE jobs SET receipt = $1 WHERE id = $2").bind(receipt).bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

/// Jobs of a run not yet claimed (held or queued), with their proposal's status.
pub async fn unclaimed_of_run(conn: &mut Conn<'_>, run_id: &str) -> Result<Vec<JobRow>> {
    let cols = JOB_COLUMNS
        .split(", ")
        .map(|c| format!("j.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cols} FROM jobs j JOIN proposals p ON p.id = j.proposal_id \
         WHERE p.run_id = $1 AND j.state IN ('held', 'queued')"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(run_id).fetch_all(&mut **c).await?))
}

/// Whether the run behind a job was revoked (its holder should stop).
pub async fn run_revoked(conn: &mut Conn<'_>, job_id: &str) -> Result<bool> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, Option<i64>>(
        "SELECT r.revoked_at FROM jobs j JOIN proposals p ON p.id = j.proposal_id JOIN runs r ON r.id = p.run_id \
         WHERE j.id = $1")
        .bind(job_id).fetch_optional(&mut **c).await?)
    .flatten()
    .is_some())
}

pub async fn held(conn: &mut Conn<'_>, limit: i64) -> Result<Vec<JobRow>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'held' ORDER BY created_at LIMIT $1");
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(limit).fetch_all(&mut **c).await?))
}

/// Move a job from `from` to `to` (a lifecycle move); false if it was no
/// longer in `from`.
pub async fn set_state(conn: &mut Conn<'_>, id: &str, from: JobState, to: JobState, now: i64) -> Result<bool> {
    check_move(from, to)?;
    let n = on!(conn, c => sqlx::query(
        "UPDATE jobs SET state = $1, finished_at = CASE WHEN $1 IN ('succeeded', 'failed', 'expired') THEN $2 ELSE finished_at END \
         WHERE id = $3 AND state || '' = $4")
        .bind(to).bind(now).bind(id).bind(from).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn leases_lost(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'leased' AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT $2"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(now).bind(limit).fetch_all(&mut **c).await?))
}

/// Released but not run in time (queued or held past `execute_by`).
pub async fn overdue(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<JobRow>> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'held') AND execute_by <= $1 ORDER BY execute_by LIMIT $2"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, JobRow>(&sql).bind(now).bind(limit).fetch_all(&mut **c).await?))
}

/// Jobs waiting on the queue, and jobs an executor holds.
pub async fn count_queued_and_leased(conn: &mut Conn<'_>) -> Result<(i64, i64)> {
    Ok(on!(conn, c => sqlx::query_as::<_, (i64, i64)>(
        "SELECT COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN state = 'leased' THEN 1 ELSE 0 END), 0) FROM jobs WHERE state IN ('queued', 'leased')")
        .fetch_one(&mut **c).await?))
}

/// Refuse a move the lifecycle does not have: a bug, never an input.
fn check_move(from: JobState, to: JobState) -> Result<()> {
    if job_can_transition(from, to) {
        Ok(())
    } else {
        Err(Error::internal(format!("illegal job move {from} -> {to}")))
    }
}

/// A job with its personal data erased: its result and accepted completion
/// body replaced, its receipt (which signs the args) removed.
pub async fn erase(conn: &mut Conn<'_>, id: &str, result: Option<&str>, completion: Option<&str>) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE jobs SET result = $1, completion = $2, receipt = NULL WHERE id = $3")
            .bind(result).bind(completion).bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

/// The envs that have queued jobs of `tools` (the built-in upstream
/// executor claims per env, as any executor does).
pub async fn envs_with_queued(conn: &mut Conn<'_>, tools: &[String]) -> Result<Vec<String>> {
    if tools.is_empty() {
        return Ok(Vec::new());
    }
    Ok(on!(conn, c => {
        let mut qb = sqlx::QueryBuilder::new("SELECT DISTINCT env FROM jobs WHERE state = 'queued' AND tool IN (");
        let mut sep = qb.separated(", ");
        for t in tools {
            sep.push_bind(t.clone());
        }
        sep.push_unseparated(")");
        qb.build_query_scalar::<String>().fetch_all(&mut **c).await?
    }))
}
