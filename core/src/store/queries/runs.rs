use crate::error::Result;
use crate::store::on;
use crate::store::Conn;
use std::sync::LazyLock;

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

/// A charge to a run: `steps` and `usd` more, taken only if the run is live
/// and stays within `budgets`.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    pub run_id: &'a str,
    pub steps: i64,
    pub usd: f64,
    pub now: i64,
    pub budgets: &'a crate::policy::Budgets,
}

/// The charge's UPDATE, its values bound from `$first` on, in the order
/// `bind_spend!` binds them.
pub(super) fn spend_sql(first: usize) -> String {
    let [steps, usd, id, now, max_steps, max_usd, max_ms] = std::array::from_fn(|i| format!("${}", first + i));
    format!(
        "UPDATE runs SET steps_used = steps_used + {steps}, usd_used = usd_used + {usd}, denials_in_row = 0 \
         WHERE id = {id} AND revoked_at IS NULL AND expires_at > {now} AND steps_used + {steps} <= {max_steps} \
         AND usd_used + {usd} <= {max_usd} AND {now} - created_at <= {max_ms}"
    )
}

/// Bind a `Spend`'s values onto a query, in `spend_sql`'s order.
macro_rules! bind_spend {
    ($query:expr, $s:expr) => {
        $query
            .bind($s.steps)
            .bind($s.usd)
            .bind($s.run_id)
            .bind($s.now)
            .bind($s.budgets.steps)
            .bind($s.budgets.usd + 1e-9)
            .bind($s.budgets.seconds * 1000)
    };
}
pub(super) use bind_spend;

/// Charge the run in one statement; false if it could not pay (the caller
/// reads the run to say why).
pub async fn try_spend(conn: &mut Conn<'_>, s: &Spend<'_>) -> Result<bool> {
    static SQL: LazyLock<String> = LazyLock::new(|| spend_sql(1));
    let n = on!(conn, c => bind_spend!(sqlx::query(SQL.as_str()), s).execute(&mut **c).await?.rows_affected());
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

/// Runs a service key minted that are not revoked.
pub async fn live_of_key(conn: &mut Conn<'_>, key_id: &str) -> Result<Vec<String>> {
    Ok(on!(conn, c => sqlx::query_scalar::<_, String>(
        "SELECT id FROM runs WHERE service_key_id = $1 AND revoked_at IS NULL")
        .bind(key_id).fetch_all(&mut **c).await?))
}

pub async fn recent(conn: &mut Conn<'_>, limit: i64) -> Result<Vec<RunRow>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC LIMIT $1");
    Ok(on!(conn, c => sqlx::query_as::<_, RunRow>(&sql).bind(limit).fetch_all(&mut **c).await?))
}
