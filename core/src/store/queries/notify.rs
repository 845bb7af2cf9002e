use crate::error::Result;
use crate::store::on;
use crate::store::Conn;

/// A webhook. Its URL (a Slack URL is itself a credential) and its secret
/// never appear in `Debug` output.
#[derive(Clone, PartialEq, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub events: String,
    pub format: String,
    pub created_at: i64,
    pub created_by: String,
    pub disabled: bool,
}

impl std::fmt::Debug for WebhookRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRow")
            .field("id", &self.id)
            .field("events", &self.events)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

const HOOK_COLUMNS: &str = "id, url, secret, events, format, created_at, created_by, disabled";

pub async fn insert_webhook(conn: &mut Conn<'_>, w: &WebhookRow) -> Result<()> {
    let sql = format!("INSERT INTO webhooks ({HOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&w.id).bind(&w.url).bind(&w.secret).bind(&w.events).bind(&w.format)
            .bind(w.created_at).bind(&w.created_by).bind(w.disabled)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn webhooks(conn: &mut Conn<'_>) -> Result<Vec<WebhookRow>> {
    let sql = format!("SELECT {HOOK_COLUMNS} FROM webhooks ORDER BY created_at");
    Ok(on!(conn, c => sqlx::query_as::<_, WebhookRow>(&sql).fetch_all(&mut **c).await?))
}

pub async fn webhook(conn: &mut Conn<'_>, id: &str) -> Result<Option<WebhookRow>> {
    let sql = format!("SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = $1");
    Ok(on!(conn, c => sqlx::query_as::<_, WebhookRow>(&sql).bind(id).fetch_optional(&mut **c).await?))
}

pub async fn delete_webhook(conn: &mut Conn<'_>, id: &str) -> Result<bool> {
    let n = on!(conn, c => sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
}

const OUTBOX_COLUMNS: &str =
    "id, webhook_id, event, payload, created_at, attempts, next_attempt_at, delivered_at, last_error";

pub async fn enqueue(conn: &mut Conn<'_>, o: &OutboxRow) -> Result<()> {
    let sql = format!("INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    on!(conn, c => {
        sqlx::query(&sql)
            .bind(&o.id).bind(&o.webhook_id).bind(&o.event).bind(&o.payload).bind(o.created_at)
            .bind(o.attempts).bind(o.next_attempt_at).bind(o.delivered_at).bind(&o.last_error)
            .execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn due(conn: &mut Conn<'_>, now: i64, limit: i64) -> Result<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2"
    );
    Ok(on!(conn, c => sqlx::query_as::<_, OutboxRow>(&sql).bind(now).bind(limit).fetch_all(&mut **c).await?))
}

/// Take a delivery for `until`: another process will not try it meanwhile.
pub async fn lease(conn: &mut Conn<'_>, id: &str, now: i64, until: i64) -> Result<bool> {
    let n = on!(conn, c => sqlx::query(
        "UPDATE outbox SET next_attempt_at = $1, attempts = attempts + 1 WHERE id = $2 AND delivered_at IS NULL AND next_attempt_at <= $3")
        .bind(until).bind(id).bind(now).execute(&mut **c).await?.rows_affected());
    Ok(n == 1)
}

pub async fn delivered(conn: &mut Conn<'_>, id: &str, at: i64) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE outbox SET delivered_at = $1, last_error = NULL WHERE id = $2").bind(at).bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn failed(conn: &mut Conn<'_>, id: &str, retry_at: i64, error: &str) -> Result<()> {
    on!(conn, c => {
        sqlx::query("UPDATE outbox SET next_attempt_at = $1, last_error = $2 WHERE id = $3")
            .bind(retry_at).bind(error).bind(id).execute(&mut **c).await?;
    });
    Ok(())
}

pub async fn pending_count(conn: &mut Conn<'_>) -> Result<i64> {
    Ok(
        on!(conn, c => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetch_one(&mut **c).await?),
    )
}
