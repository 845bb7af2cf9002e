//! The built-in upstream executor's record of its calls, one row per
//! execution key: the intent, written just before the call, and its outcome.

use crate::error::Result;
use crate::store::on;
use crate::store::Conn;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UpstreamCallRow {
    pub execution_key: String,
    pub job_id: String,
    pub proposal_id: String,
    pub upstream: String,
    pub tool: String,
    pub attempt: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `succeeded`, `failed`, `not_sent`, `unknown`, or None while the call
    /// is under way (or was cut off by a crash).
    pub outcome: Option<String>,
    /// The upstream's answer (an MCP `CallToolResult`, JSON).
    pub result: Option<String>,
}

const COLUMNS: &str =
    "execution_key, job_id, proposal_id, upstream, tool, attempt, started_at, finished_at, outcome, result";

/// The row of an execution key, locked for this transaction where the
/// database locks rows.
pub async fn get_for_update(conn: &mut Conn<'_>, execution_key: &str) -> Result<Option<UpstreamCallRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM upstream_calls WHERE execution_key = $1{}",
        conn.dialect().lock_rows()
    );
    Ok(on!(conn, c => sqlx::query_as::<_, UpstreamCallRow>(&sql).bind(execution_key).fetch_optional(&mut **c).await?))
}

/// The call of a proposal, if one was recorded.
pub async fn of_proposal(conn: &mut Conn<'_>, proposal_id: &str) -> Result<Option<UpstreamCallRow>> {
    let sql = format!("SELECT {COLUMNS} FROM upstream_calls WHERE proposal_id = $1 ORDER BY started_at DESC LIMIT 1");
    Ok(on!(conn, c => sqlx::query_as::<_, UpstreamCallRow>(&sql).bind(proposal_id).fetch_optional(&mut **c).await?))
}

/// Record the intent to call. False if the key already has a row.
pub async fn insert_intent(conn: &mut Conn<'_>, r: &UpstreamCallRow) -> Result<bool> {
    let sql = format!(
        "INSERT INTO upstream_calls ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL) \
         ON CONFLICT DO NOTHING"
    );
    let n = on!(conn, c => sqlx::query(&sql)
        .bind(&r.execution_key).bind(&r.job_id).bind(&r.proposal_id).bind(&r.upstream).bind(&r.tool)
        .bind(r.attempt).bind(r.started_at)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Arm a call that was never sent again, for a new attempt. False unless its
/// last outcome was `not_sent`.
pub async fn rearm_not_sent(
    conn: &mut Conn<'_>,
    execution_key: &str,
    job_id: &str,
    attempt: i64,
    now: i64,
) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE upstream_calls SET job_id = $2, attempt = $3, started_at = $4, finished_at = NULL, outcome = NULL, \
         result = NULL WHERE execution_key = $1 AND outcome = 'not_sent'")
        .bind(execution_key).bind(job_id).bind(attempt).bind(now)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Record how a call ended. False if it had ended already.
pub async fn finish(
    conn: &mut Conn<'_>,
    execution_key: &str,
    outcome: &str,
    result: Option<&str>,
    now: i64,
) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE upstream_calls SET outcome = $2, result = $3, finished_at = $4 \
         WHERE execution_key = $1 AND outcome IS NULL")
        .bind(execution_key).bind(outcome).bind(result).bind(now)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Drop the upstream's answers kept for a proposal's calls (its personal
/// data is erased): the agent already had them. The outcome stays, so a
/// call is never made again. Answers how many were dropped.
pub async fn erase_results(conn: &mut Conn<'_>, proposal_id: &str) -> Result<u64> {
    Ok(on!(conn, c => sqlx::query(
        "UPDATE upstream_calls SET result = NULL WHERE proposal_id = $1 AND result IS NOT NULL")
        .bind(proposal_id)
        .execute(&mut **c).await?.rows_affected()))
}
