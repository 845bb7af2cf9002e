//! Route circuit breakers: a route whose recent executions failed too often
//! stops releasing until an admin resets it.

use crate::audit::AuditDraft;
use crate::error::Result;
use crate::lifecycle::JobState;
use crate::policy::Policy;
use crate::store::queries::controls::{self, BreakerRow};
use crate::store::{Notice, Tx};

/// After a job's final failure: trip its route's breaker when more than the
/// policy's share of the route's last executions failed.
pub(super) async fn check_route(tx: &mut Tx<'_>, policy: &Policy, route: &str) -> Result<()> {
    let b = policy.breakers;
    let outcomes = controls::recent_outcomes(&mut tx.conn, route, b.route_window).await?;
    if (outcomes.len() as i64) < b.route_window {
        return Ok(());
    }
    let failed = outcomes.iter().filter(|s| **s == JobState::Failed).count();
    let share = failed as f64 / outcomes.len() as f64;
    if share <= b.route_failure_share {
        return Ok(());
    }
    let reason = format!(
        "{failed} of the last {} executions failed (more than {:.0}%)",
        outcomes.len(),
        b.route_failure_share * 100.0
    );
    let row = BreakerRow {
        route: route.to_owned(),
        tripped_at: tx.now_ms(),
        reason: reason.clone(),
    };
    if controls::trip_breaker(tx, &row).await? {
        tracing::warn!(route, %reason, "route breaker tripped: release stops until an admin resets it");
        tx.count("countersign_breaker_trips_total", 1);
        tx.audit(
            AuditDraft::new("system", "breaker.tripped")
                .subject(format!("route:{route}"))
                .status("tripped")
                .details(serde_json::json!({ "reason": reason })),
        );
        tx.notify(Notice::Controls);
    }
    Ok(())
}
