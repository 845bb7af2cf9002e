use crate::error::Result;
use crate::store::on;
use crate::store::Conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyVersionRow {
    pub id: String,
    pub hash: String,
    pub source: String,
    pub diff: String,
    pub loaded_at: i64,
    pub loaded_by: String,
}

const COLUMNS: &str = "id, hash, source, diff, loaded_at, loaded_by";

pub async fn latest(conn: &mut Conn<'_>) -> Result<Option<PolicyVersionRow>> {
    let sql = format!("SELECT {COLUMNS} FROM policy_versions ORDER BY loaded_at DESC, id DESC LIMIT 1");
    Ok(on!(conn, c => sqlx::query_as::<_, PolicyVersionRow>(&sql).fetch_optional(&mut **c).await?))
}

pub async fn insert(conn: &mut Conn<'_>, v: &PolicyVersionRow) -> Result<()> {
    let sql = format!("INSERT INTO policy_versions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
    on!(conn, c => {
        sqlx::query(&sql).bind(&v.id).bind(&v.hash).bind(&v.source).bind(&v.diff).bind(v.loaded_at).bind(&v.loaded_by)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn all(conn: &mut Conn<'_>, limit: i64) -> Result<Vec<PolicyVersionRow>> {
    let sql = format!("SELECT {COLUMNS} FROM policy_versions ORDER BY loaded_at DESC, id DESC LIMIT $1");
    Ok(on!(conn, c => sqlx::query_as::<_, PolicyVersionRow>(&sql).bind(limit).fetch_all(&mut **c).await?))
}
