use crate::error::Result;
use crate::store::on;
use crate::store::Conn;
use std::collections::HashSet;
use std::sync::LazyLock;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub kind: crate::tokens::KeyKind,
    pub name: String,
    pub tenant: Option<String>,
    pub env: String,
    pub tools: String,
    pub key_hash: String,
    pub hint: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
}

const KEY_COLUMNS: &str = "id, kind, name, tenant, env, tools, key_hash, hint, created_at, created_by, revoked_at";

pub async fn insert(conn: &mut Conn<'_>, k: &KeyRow) -> Result<()> {
    let sql = format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&k.id).bind(k.kind).bind(&k.name).bind(&k.tenant).bind(&k.env).bind(&k.tools)
            .bind(&k.key_hash).bind(&k.hint).bind(k.created_at).bind(&k.created_by).bind(k.revoked_at)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn by_hash(conn: &mut Conn<'_>, hash: &str) -> Result<Option<KeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, KeyRow>(&sql).bind(hash).fetch_optional(&mut **c).await?))
}

pub async fn by_id(conn: &mut Conn<'_>, id: &str) -> Result<Option<KeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, KeyRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

pub async fn all(conn: &mut Conn<'_>) -> Result<Vec<KeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC");
    Ok(on!(conn, c => sqlx::query_as::<_, KeyRow>(&sql).fetch_all(&mut **c).await?))
}

pub async fn revoke(conn: &mut Conn<'_>, id: &str, now: i64) -> Result<bool> {
    let n = on!(conn, c => sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now).bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

/// Which of the keys `ids` are live (not revoked), read in the caller's
/// transaction: a write that acts for an executor checks its key here. On
/// SQLite by the one-row statement on the writer's thread, on PostgreSQL in
/// one statement.
pub async fn live_among(conn: &mut Conn<'_>, ids: &[String]) -> Result<HashSet<String>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    const LIVE: &str = "SELECT id FROM api_keys WHERE revoked_at IS NULL AND id";
    let live: Vec<String> = match conn {
        Conn::Sqlite(c) => {
            static ONE: LazyLock<String> = LazyLock::new(|| format!("{LIVE} = $1"));
            super::on_sqlite_directly(c, |db| super::rows_by_id(db, &ONE, ids, |r| r.get(0))).await?
        }
        Conn::Postgres(c) => {
            static MANY: LazyLock<String> = LazyLock::new(|| format!("{LIVE} = ANY($1)"));
            sqlx::query_scalar(MANY.as_str()).bind(ids).fetch_all(&mut **c).await?
        }
    };
    Ok(live.into_iter().collect())
}

/// A run-token signing key; its secret never appears in `Debug` output.
#[derive(Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub id: String,
    pub secret: String,
    pub created_at: i64,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Signing keys not retired, newest first.
pub async fn signing_keys(conn: &mut Conn<'_>) -> Result<Vec<SigningKeyRow>> {
    Ok(on!(conn, c => sqlx::query_as::<_, SigningKeyRow>(
        "SELECT id, secret, created_at FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, id DESC")
        .fetch_all(&mut **c).await?))
}

pub async fn insert_signing_key(conn: &mut Conn<'_>, id: &str, secret_hex: &str, now: i64) -> Result<()> {
    on!(conn, c => {
        sqlx::query("INSERT INTO signing_keys (id, secret, created_at) VALUES ($1, $2, $3)")
            .bind(id).bind(secret_hex).bind(now).execute(&mut **c).await?;
    });
    Ok(())
}

/// Retire every key but `keep_id` created before `before`.
pub async fn retire_signing_keys_before(conn: &mut Conn<'_>, keep_id: &str, before: i64, now: i64) -> Result<u64> {
    Ok(on!(conn, c => sqlx::query(
        "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND id <> $2 AND created_at < $3")
        .bind(now).bind(keep_id).bind(before).execute(&mut **c).await?.rows_affected()))
}

/// A receipt signing key as stored; the private key never appears in `Debug`.
#[derive(Clone, sqlx::FromRow)]
pub struct ReceiptKeyRow {
    pub id: String,
    pub private_key: String,
    pub public_key: String,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for ReceiptKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptKeyRow")
            .field("id", &self.id)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// The current key and the retired ones still published at `now`, newest first.
pub async fn receipt_keys(conn: &mut Conn<'_>, now: i64) -> Result<Vec<ReceiptKeyRow>> {
    Ok(on!(conn, c => sqlx::query_as::<_, ReceiptKeyRow>(
        "SELECT id, private_key, public_key, retired_at FROM receipt_keys \
         WHERE retired_at IS NULL OR serve_until > $1 ORDER BY created_at DESC, id DESC")
        .bind(now).fetch_all(&mut **c).await?))
}

pub async fn insert_receipt_key(
    conn: &mut Conn<'_>,
    id: &str,
    private_hex: &str,
    public_x: &str,
    now: i64,
) -> Result<()> {
    on!(conn, c => {
        sqlx::query("INSERT INTO receipt_keys (id, private_key, public_key, created_at) VALUES ($1, $2, $3, $4)")
            .bind(id).bind(private_hex).bind(public_x).bind(now).execute(&mut **c).await?;
    });
    Ok(())
}

/// Retire every current key but `keep`; each stays published until `serve_until`.
pub async fn retire_receipt_keys(conn: &mut Conn<'_>, keep: &str, now: i64, serve_until: i64) -> Result<u64> {
    Ok(on!(conn, c => sqlx::query(
        "UPDATE receipt_keys SET retired_at = $1, serve_until = $2 WHERE retired_at IS NULL AND id <> $3")
        .bind(now).bind(serve_until).bind(keep).execute(&mut **c).await?.rows_affected()))
}
