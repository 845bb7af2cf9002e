//! People's passkeys and the WebAuthn ceremonies under way.

use crate::error::Result;
use crate::store::on;
use crate::store::Conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PasskeyRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// base64url, as the browser names the credential.
    pub credential_id: String,
    /// webauthn-rs's `Passkey`, JSON: the public key and the counter.
    pub passkey: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

const PASSKEY_COLUMNS: &str = "id, user_id, name, credential_id, passkey, created_at, last_used_at";

pub async fn insert(conn: &mut Conn<'_>, k: &PasskeyRow) -> Result<()> {
    let sql = format!("INSERT INTO passkeys ({PASSKEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&k.id).bind(&k.user_id).bind(&k.name).bind(&k.credential_id).bind(&k.passkey)
            .bind(k.created_at).bind(k.last_used_at)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn of_user(conn: &mut Conn<'_>, user_id: &str) -> Result<Vec<PasskeyRow>> {
    let sql = format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, id");
    Ok(on!(conn, c => sqlx::query_as::<_, PasskeyRow>(&sql).bind(user_id).fetch_all(&mut **c).await?))
}

pub async fn credential_taken(conn: &mut Conn<'_>, credential_id: &str) -> Result<bool> {
    let n: i64 = on!(conn, c => sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE credential_id = $1")
        .bind(credential_id).fetch_one(&mut **c).await?);
    Ok(n > 0)
}

/// After a use: the new counter (in `passkey`) and when.
pub async fn touch(conn: &mut Conn<'_>, id: &str, passkey: &str, now: i64) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE passkeys SET passkey = $1, last_used_at = $2 WHERE id = $3")
            .bind(passkey).bind(now).bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

/// Remove one of the person's own passkeys; false when they have no such one.
pub async fn remove(conn: &mut Conn<'_>, user_id: &str, id: &str) -> Result<bool> {
    let n = on!(conn, c => sqlx::query("DELETE FROM passkeys WHERE id = $1 AND user_id = $2")
        .bind(id).bind(user_id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CeremonyRow {
    pub id: String,
    pub user_id: String,
    /// "register" or "decide".
    pub purpose: String,
    pub proposal_id: Option<String>,
    pub verdict: Option<String>,
    pub content_hash: Option<String>,
    /// webauthn-rs's registration or authentication state, JSON; for a
    /// decision, with the bound challenge in it.
    pub state: String,
    pub expires_at: i64,
}

const CEREMONY_COLUMNS: &str = "id, user_id, purpose, proposal_id, verdict, content_hash, state, expires_at";

pub async fn insert_ceremony(conn: &mut Conn<'_>, r: &CeremonyRow) -> Result<()> {
    let sql = format!("INSERT INTO passkey_ceremonies ({CEREMONY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&r.id).bind(&r.user_id).bind(&r.purpose).bind(&r.proposal_id).bind(&r.verdict)
            .bind(&r.content_hash).bind(&r.state).bind(r.expires_at)
            .execute(&mut **c).await?;
    });
    Ok(())
}

/// Take a ceremony of this person: it is deleted, so it is finished at most
/// once whatever the outcome.
pub async fn take_ceremony(conn: &mut Conn<'_>, id: &str, user_id: &str) -> Result<Option<CeremonyRow>> {
    let sql = format!("DELETE FROM passkey_ceremonies WHERE id = $1 AND user_id = $2 RETURNING {CEREMONY_COLUMNS}");
    Ok(on!(conn, c => sqlx::query_as::<_, CeremonyRow>(&sql).bind(id).bind(user_id).fetch_optional(&mut **c).await?))
}

/// Forget ceremonies nobody finished in time.
pub async fn forget_expired(conn: &mut Conn<'_>, now: i64) -> Result<u64> {
    Ok(
        on!(conn, c => sqlx::query("DELETE FROM passkey_ceremonies WHERE expires_at <= $1")
        .bind(now).execute(&mut **c).await?.rows_affected()),
    )
}
