use crate::controls::{Controls, Scope};
use crate::error::Result;
use crate::lifecycle::JobState;
use crate::store::on;
use crate::store::{Conn, Tx};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SwitchRow {
    pub scope: Scope,
    pub target: String,
    pub engaged: bool,
    pub reason: String,
    pub changed_by: String,
    pub changed_at: i64,
}

pub async fn engaged_switches(conn: &mut Conn<'_>) -> Result<Vec<SwitchRow>> {
    Ok(on!(conn, c => sqlx::query_as::<_, SwitchRow>(
        "SELECT scope, target, engaged, reason, changed_by, changed_at FROM switches WHERE engaged = TRUE ORDER BY scope, target")
        .fetch_all(&mut **c).await?))
}

pub async fn all_switches(conn: &mut Conn<'_>) -> Result<Vec<SwitchRow>> {
    Ok(on!(conn, c => sqlx::query_as::<_, SwitchRow>(
        "SELECT scope, target, engaged, reason, changed_by, changed_at FROM switches ORDER BY scope, target")
        .fetch_all(&mut **c).await?))
}

/// Set a switch; returns its previous state.
/// Whether anyone or anything belongs to `tenant`: a person who sees it, or
/// a key of it. A switch on a tenant nobody has would do nothing.
pub async fn tenant_known(conn: &mut Conn<'_>, tenant: &str) -> Result<bool> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, i64>(
        "SELECT (SELECT COUNT(*) FROM user_tenants WHERE tenant = $1) + (SELECT COUNT(*) FROM api_keys WHERE tenant = $1)")
        .bind(tenant).fetch_one(&mut **c).await?)
        > 0)
}

/// The switches and breakers in force, read once per write transaction:
/// every request of a batch that asks after the first is answered from
/// memory, until one changes them (the changes below forget the memo).
pub async fn in_force(tx: &mut Tx<'_>) -> Result<Arc<Controls>> {
    if let Some(c) = tx.known_controls() {
        return Ok(c);
    }
    let c = Arc::new(Controls {
        switches: engaged_switches(&mut tx.conn).await?,
        breakers: breakers(&mut tx.conn).await?,
    });
    tx.know_controls(Some(c.clone()));
    Ok(c)
}

pub async fn put_switch(tx: &mut Tx<'_>, s: &SwitchRow) -> Result<Option<bool>> {
    tx.know_controls(None);
    let conn = &mut tx.conn;
    let prev = on!(conn, c => sqlx::query_scalar::<_, bool>("SELECT engaged FROM switches WHERE scope = $1 AND target = $2")
        .bind(s.scope).bind(&s.target).fetch_optional(&mut **c).await?);
    on!(conn, c => {
        sqlx::query(
            "INSERT INTO switches (scope, target, engaged, reason, changed_by, changed_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (scope, target) DO UPDATE SET engaged = excluded.engaged, reason = excluded.reason, \
             changed_by = excluded.changed_by, changed_at = excluded.changed_at")
            .bind(s.scope).bind(&s.target).bind(s.engaged).bind(&s.reason).bind(&s.changed_by).bind(s.changed_at)
            .execute(&mut **c).await?;
    });
    Ok(prev)
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BreakerRow {
    pub route: String,
    pub tripped_at: i64,
    pub reason: String,
}

pub async fn breakers(conn: &mut Conn<'_>) -> Result<Vec<BreakerRow>> {
    Ok(
        on!(conn, c => sqlx::query_as::<_, BreakerRow>("SELECT route, tripped_at, reason FROM route_breakers ORDER BY route")
        .fetch_all(&mut **c).await?),
    )
}

/// Trip a route's breaker; false if it was already tripped.
pub async fn trip_breaker(tx: &mut Tx<'_>, b: &BreakerRow) -> Result<bool> {
    tx.know_controls(None);
    let conn = &mut tx.conn;
    let n = on!(conn, c => sqlx::query(
        "INSERT INTO route_breakers (route, tripped_at, reason) VALUES ($1, $2, $3) ON CONFLICT (route) DO NOTHING")
        .bind(&b.route).bind(b.tripped_at).bind(&b.reason).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn reset_breaker(tx: &mut Tx<'_>, route: &str) -> Result<bool> {
    tx.know_controls(None);
    let conn = &mut tx.conn;
    let n = on!(conn, c => sqlx::query("DELETE FROM route_breakers WHERE route = $1")
        .bind(route).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// The outcomes of a route's most recent finished jobs, newest first.
pub async fn recent_outcomes(conn: &mut Conn<'_>, route: &str, limit: i64) -> Result<Vec<JobState>> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, JobState>(
        "SELECT state FROM jobs WHERE route = $1 AND finished_at IS NOT NULL AND state IN ('succeeded', 'failed') AND kind = 'execute' \
         ORDER BY finished_at DESC LIMIT $2")
        .bind(route).bind(limit).fetch_all(&mut **c).await?))
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct BreakGlassRow {
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub reason: String,
    pub incident: String,
    pub started_at: i64,
    pub ends_at: i64,
    pub ended_at: Option<i64>,
    pub ended_by: Option<String>,
}

const BG_COLUMNS: &str = "id, user_id, username, reason, incident, started_at, ends_at, ended_at, ended_by";

pub async fn insert_break_glass(conn: &mut Conn<'_>, b: &BreakGlassRow) -> Result<()> {
    let sql = format!("INSERT INTO break_glass ({BG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&b.id).bind(&b.user_id).bind(&b.username).bind(&b.reason).bind(&b.incident)
            .bind(b.started_at).bind(b.ends_at).bind(b.ended_at).bind(&b.ended_by)
            .execute(&mut **c).await?;
    });
    Ok(())
}

/// Break-glass sessions not ended and not past their end, at `now`.
pub async fn active_break_glass(conn: &mut Conn<'_>, now: i64) -> Result<Vec<BreakGlassRow>> {
    let sql =
        format!("SELECT {BG_COLUMNS} FROM break_glass WHERE ended_at IS NULL AND ends_at > $1 ORDER BY started_at");
    Ok(on!(conn, c => sqlx::query_as::<_, BreakGlassRow>(&sql).bind(now).fetch_all(&mut **c).await?))
}

/// Sessions whose time ran out but whose end is not yet recorded.
pub async fn lapsed_break_glass(conn: &mut Conn<'_>, now: i64) -> Result<Vec<BreakGlassRow>> {
    let sql = format!("SELECT {BG_COLUMNS} FROM break_glass WHERE ended_at IS NULL AND ends_at <= $1 ORDER BY ends_at");
    Ok(on!(conn, c => sqlx::query_as::<_, BreakGlassRow>(&sql).bind(now).fetch_all(&mut **c).await?))
}

pub async fn recent_break_glass(conn: &mut Conn<'_>, limit: i64) -> Result<Vec<BreakGlassRow>> {
    let sql = format!("SELECT {BG_COLUMNS} FROM break_glass ORDER BY started_at DESC LIMIT $1");
    Ok(on!(conn, c => sqlx::query_as::<_, BreakGlassRow>(&sql).bind(limit).fetch_all(&mut **c).await?))
}

pub async fn end_break_glass(conn: &mut Conn<'_>, id: &str, at: i64, by: &str) -> Result<bool> {
    let n = on!(conn, c => sqlx::query("UPDATE break_glass SET ended_at = $1, ended_by = $2 WHERE id = $3 AND ended_at IS NULL")
        .bind(at).bind(by).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Route breakers tripped now.
pub async fn count_breakers(conn: &mut Conn<'_>) -> Result<i64> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM route_breakers").fetch_one(&mut **c).await?))
}
