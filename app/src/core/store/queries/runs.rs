use crate::core::error::Result;
use crate::core::store::Conn;
use crate::on;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub on_behalf_of: Option<String>,
    pub service_key_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub steps_used: i64,
    pub usd_used: f64,
    pub denials_in_row: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

const RUN_COLUMNS: &str = "id, tenant, env, route, on_behalf_of, service_key_id, created_at, expires_at, \
     steps_used, usd_used, denials_in_row, revoked_at, revoked_reason";

pub async fn insert(conn: &mut Conn<'_>, r: &RunRow) -> Result<()> {
    let sql =
        format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&r.id).bind(&r.tenant).bind(&r.env).bind(&r.route).bind(&r.on_behalf_of)
            .bind(&r.service_key_id).bind(r.created_at).bind(r.expires_at).bind(r.steps_used)
            .bind(r.usd_used).bind(r.denials_in_row).bind(r.revoked_at).bind(&r.revoked_reason)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn get(conn: &mut Conn<'_>, id: &str) -> Result<Option<RunRow>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, RunRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

/// Spend `steps` and `usd` if the run is live and within its budgets, in one
/// statement; false if not (the caller reads the run to say why).
pub async fn try_spend(
    conn: &mut Conn<'_>,
    id: &str,
    steps: i64,
    usd: f64,
    now: i64,
    budgets: &crate::core::policy::Budgets,
) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE runs SET steps_used = steps_used + $1, usd_used = usd_used + $2, denials_in_row = 0 \
         WHERE id = $3 AND revoked_at IS NULL AND expires_at > $4 AND steps_used + $1 <= $5 \
         AND usd_used + $2 <= $6 AND $4 - created_at <= $7")
        .bind(steps).bind(usd).bind(id).bind(now).bind(budgets.steps).bind(budgets.usd + 1e-9).bind(budgets.seconds * 1000)
        .execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// One more denial in a row; returns the new streak.
pub async fn add_denial(conn: &mut Conn<'_>, id: &str) -> Result<i64> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, i64>(
        "UPDATE runs SET denials_in_row = denials_in_row + 1 WHERE id = $1 RETURNING denials_in_row")
        .bind(id).fetch_one(&mut **c).await?))
}

pub async fn revoke(conn: &mut Conn<'_>, id: &str, now: i64, reason: &str) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE runs SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL")
        .bind(now).bind(reason).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn recent(conn: &mut Conn<'_>, limit: i64) -> Result<Vec<RunRow>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC LIMIT $1");
    Ok(on!(conn, c => sqlx::query_as::<_, RunRow>(&sql).bind(limit).fetch_all(&mut **c).await?))
}
