//! Webhook delivery: take due deliveries from the outbox, POST them signed,
//! record the outcome. Woken by new events; a slow tick retries failures.

use countersign_core::service::{Core, Delivery};
use countersign_core::tokens::sign_webhook;
use countersign_core::Notice;
use std::sync::Arc;
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "x-countersign-signature";

/// Send what is due now; returns how many were delivered.
pub async fn deliver_due(core: &Core, http: &reqwest::Client) -> usize {
    let batch = match core.due_deliveries(50).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "reading the outbox failed");
            return 0;
        }
    };
    let mut delivered = 0;
    for d in batch {
        let outcome = send(core, http, &d).await;
        match &outcome {
            Ok(()) => {
                delivered += 1;
                metrics::counter!("countersign_webhook_deliveries_total", "result" => "ok").increment(1);
            }
            Err(e) => {
                metrics::counter!("countersign_webhook_deliveries_total", "result" => "failed").increment(1);
                tracing::warn!(delivery = %d.id, attempt = d.attempt, error = %e, "webhook delivery failed; will retry");
            }
        }
        if let Err(e) = core.delivery_done(&d, outcome).await {
            tracing::error!(error = %e, "recording a delivery failed");
        }
    }
    delivered
}

/// The error is text on purpose: it is stored as the delivery's last error
/// and shown to admins, never matched on.
async fn send(core: &Core, http: &reqwest::Client, d: &Delivery) -> Result<(), String> {
    let signature = sign_webhook(&d.secret, core.now_ms() / 1000, &d.payload);
    let res = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("x-countersign-event", &d.event)
        .header("x-countersign-delivery", &d.id)
        .header(SIGNATURE_HEADER, signature)
        .body(d.payload.clone())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", res.status()))
    }
}

pub fn spawn_worker(core: Arc<Core>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let mut notices = core.subscribe();
        loop {
            deliver_due(&core, &http).await;
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = &mut tick => break,
                    n = notices.recv() => match n {
                        Ok(Notice::Outbox | Notice::Missed) | Err(_) => break,
                        Ok(_) => continue,
                    },
                }
            }
        }
    })
}
