//! Notifications: events written to a database outbox in the same transaction
//! as the change they announce, then delivered to webhooks with retries, so a
//! restart or a receiver that is down loses nothing. Payloads never carry args
//! values.

use super::Core;
use crate::audit::AuditDraft;
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::store::queries::notify::{self, OutboxRow, WebhookRow};
use crate::store::Tx;
use serde_json::{json, Value};

pub const EVENTS: [&str; 10] = [
    "proposal.pending",
    "proposal.decided",
    "proposal.expired",
    "job.failed",
    "switch.changed",
    "breakglass.started",
    "breakglass.used",
    "breakglass.ended",
    "policy.changed",
    "reviewer.changed",
];

/// How long a delivery attempt may take before another process retries it.
const DELIVERY_LEASE_MS: i64 = 60_000;
const MAX_BACKOFF_SECS: i64 = 3600;

fn wants(hook: &WebhookRow, event: &str) -> bool {
    !hook.disabled
        && serde_json::from_str::<Vec<String>>(&hook.events)
            .map(|es| es.iter().any(|e| e == "*" || e == event))
            .unwrap_or(false)
}

/// One line a person reads in a chat channel: what happened, where, a link.
fn slack_text(event: &str, data: &Value) -> String {
    let s = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let link = match data.get("review_url").and_then(Value::as_str) {
        Some(u) => format!(" <{u}|Open the review>"),
        None => String::new(),
    };
    let what = match event {
        "proposal.pending" => format!("{} in {}/{} needs review.", s("tool"), s("tenant"), s("env")),
        "proposal.decided" => format!("{} in {}/{} was {}.", s("tool"), s("tenant"), s("env"), s("status")),
        "proposal.expired" => format!("{} in {}/{} expired.", s("tool"), s("tenant"), s("env")),
        "job.failed" => format!(
            "{} in {}/{} failed after {} attempt(s).",
            s("tool"),
            s("tenant"),
            s("env"),
            data["attempts"]
        ),
        "switch.changed" => format!(
            "Kill switch {} for {} {}: {}",
            if data["engaged"] == json!(true) { "ON" } else { "off" },
            s("scope"),
            s("target"),
            s("reason")
        ),
        "breakglass.started" => format!(
            "BREAK-GLASS started by {} ({}): {}",
            s("by"),
            s("incident"),
            s("reason")
        ),
        "breakglass.used" => format!("Break-glass approval by {} of {}.", s("by"), s("tool")),
        "breakglass.ended" => format!("Break-glass ended ({}).", s("how")),
        "reviewer.changed" => format!("{} was {} by {}.", s("user"), s("change"), s("by")),
        "policy.changed" => format!(
            "The loaded policy changed (sha256 {}).",
            s("hash").chars().take(12).collect::<String>()
        ),
        other => other.to_owned(),
    };
    format!("countersign: {what}{link}")
}

/// Queue `event` for every webhook that wants it, inside the caller's
/// transaction: it is announced if and only if the change commits.
pub(super) async fn emit(tx: &mut Tx<'_>, event: &str, data: Value) -> Result<()> {
    debug_assert!(EVENTS.contains(&event), "unknown event {event}");
    let hooks = match tx.caches().webhooks() {
        Some(h) => h,
        None => {
            let h = notify::webhooks(&mut tx.conn).await?;
            tx.caches().set_webhooks(h.clone());
            h
        }
    };
    let now = tx.now_ms();
    let id = new_id("evt");
    for hook in hooks.iter().filter(|h| wants(h, event)) {
        let payload = match hook.format.as_str() {
            "slack" => json!({ "text": slack_text(event, &data) }),
            _ => json!({ "id": id, "type": event, "created_at": rfc3339(now), "data": data }),
        };
        notify::enqueue(
            &mut tx.conn,
            &OutboxRow {
                id: new_id("dlv"),
                webhook_id: hook.id.clone(),
                event: event.to_owned(),
                payload: payload.to_string(),
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
                delivered_at: None,
                last_error: None,
            },
        )
        .await?;
    }
    if !hooks.is_empty() {
        tx.notify(crate::store::Notice::Outbox);
    }
    Ok(())
}

/// A delivery to make now: where, what, and the secret to sign it with
/// (neither the URL nor the secret appears in `Debug` output).
#[derive(Clone)]
pub struct Delivery {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub payload: String,
    pub attempt: i64,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("event", &self.event)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

async fn add_webhook_in(tx: &mut Tx<'_>, row: WebhookRow, events: Vec<String>) -> Result<()> {
    notify::insert_webhook(&mut tx.conn, &row).await?;
    tx.caches().forget_webhooks();
    tx.audit(
        AuditDraft::new(row.created_by.clone(), "webhook.added")
            .subject(row.id.clone())
            .details(json!({ "events": events, "format": row.format })),
    );
    Ok(())
}

async fn remove_webhook_in(tx: &mut Tx<'_>, actor: String, id: String) -> Result<()> {
    if !notify::delete_webhook(&mut tx.conn, &id).await? {
        return Err(Error::NotFound);
    }
    tx.caches().forget_webhooks();
    tx.audit(AuditDraft::new(actor, "webhook.removed").subject(id));
    Ok(())
}

/// Take the due deliveries for a minute each, so no other process sends them
/// meanwhile; answers those taken.
async fn take_deliveries_in(tx: &mut Tx<'_>, due: Vec<OutboxRow>) -> Result<Vec<Delivery>> {
    let now = tx.now_ms();
    let mut out = Vec::new();
    for d in due {
        if !notify::lease(&mut tx.conn, &d.id, now, now + DELIVERY_LEASE_MS).await? {
            continue;
        }
        let Some(hook) = notify::webhook(&mut tx.conn, &d.webhook_id).await? else {
            continue;
        };
        out.push(Delivery {
            id: d.id,
            url: hook.url,
            secret: hook.secret,
            event: d.event,
            payload: d.payload,
            attempt: d.attempts + 1,
        });
    }
    Ok(out)
}

async fn delivery_done_in(
    tx: &mut Tx<'_>,
    id: String,
    attempt: i64,
    outcome: std::result::Result<(), String>,
) -> Result<()> {
    let now = tx.now_ms();
    match outcome {
        Ok(()) => notify::delivered(&mut tx.conn, &id, now).await,
        Err(e) => {
            let backoff = (1i64 << attempt.clamp(0, 12)).min(MAX_BACKOFF_SECS);
            let error: String = e.chars().take(500).collect();
            notify::failed(&mut tx.conn, &id, now + backoff * 1000, &error).await
        }
    }
}

impl Core {
    /// Add a webhook; its signing secret is returned once.
    pub async fn add_webhook(
        &self,
        by: &super::Admin,
        url: &str,
        events: &[String],
        format: &str,
    ) -> Result<(String, String)> {
        let url = url.trim().to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.len() > 2000
            || url.contains(char::is_whitespace)
        {
            return Err(Error::BadRequest(
                "a webhook URL is http:// or https:// and has no spaces".into(),
            ));
        }
        if !matches!(format, "json" | "slack") {
            return Err(Error::BadRequest("format is json or slack".into()));
        }
        let mut events: Vec<String> = events
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if events.is_empty() {
            events.push("*".into());
        }
        if let Some(bad) = events.iter().find(|e| *e != "*" && !EVENTS.contains(&e.as_str())) {
            return Err(Error::BadRequest(format!(
                "unknown event {bad:?}: use * or {}",
                EVENTS.join(", ")
            )));
        }
        let secret = format!("whsec_{}", crate::tokens::random_token());
        let row = WebhookRow {
            id: new_id("whk"),
            url,
            secret: secret.clone(),
            events: serde_json::to_string(&events)?,
            format: format.to_owned(),
            created_at: self.now_ms(),
            created_by: by.actor().to_owned(),
            disabled: false,
        };
        let id = row.id.clone();
        self.store
            .write(move |tx| Box::pin(add_webhook_in(tx, row, events)))
            .await?;
        self.store.caches().forget_webhooks();
        Ok((id, secret))
    }

    pub async fn remove_webhook(&self, by: &super::Admin, id: &str) -> Result<()> {
        let (actor, id) = (by.actor().to_owned(), id.to_owned());
        self.store
            .write(move |tx| Box::pin(remove_webhook_in(tx, actor, id)))
            .await
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>> {
        notify::webhooks(&mut self.store.reader().await?.conn()).await
    }

    /// Deliveries due now, each taken for a minute so no other process sends it
    /// meanwhile.
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<Delivery>> {
        let now = self.now_ms();
        let due = notify::due(&mut self.store.reader().await?.conn(), now, limit).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        self.store.write(move |tx| Box::pin(take_deliveries_in(tx, due))).await
    }

    /// Record a delivery's outcome: done, or retried later with backoff.
    pub async fn delivery_done(&self, d: &Delivery, outcome: std::result::Result<(), String>) -> Result<()> {
        let (id, attempt) = (d.id.clone(), d.attempt);
        self.store
            .write(move |tx| Box::pin(delivery_done_in(tx, id, attempt, outcome)))
            .await
    }

    pub async fn undelivered(&self) -> Result<i64> {
        notify::pending_count(&mut self.store.reader().await?.conn()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_links_to_the_review_and_names_no_args() {
        let t = slack_text(
            "proposal.pending",
            &json!({ "tool": "refund.create", "tenant": "acme", "env": "prod", "review_url": "http://x/proposals/p" }),
        );
        assert_eq!(
            t,
            "countersign: refund.create in acme/prod needs review. <http://x/proposals/p|Open the review>"
        );
    }
}
