//! Blast-radius controls: kill switches (global, per tool, tenant or route),
//! route circuit breakers, and break-glass. While a switch is on, new work it
//! covers is refused and release is held; while a route's breaker is tripped,
//! its release is held; during break-glass an admin may approve alone.

use super::people::Person;
use super::Core;
use crate::core::audit::AuditDraft;
use crate::core::error::{Error, Result};
use crate::core::ids::new_id;
use crate::core::store::queries::controls::{self, BreakGlassRow, BreakerRow, SwitchRow};
use crate::core::store::{Conn, Notice, Tx};
use crate::model::Banner;
use serde_json::json;

pub const SCOPES: [&str; 4] = ["global", "tool", "tenant", "route"];
pub const MAX_BREAK_GLASS_MINUTES: i64 = 60;

/// The first engaged switch covering this work, as `scope:target` (or `global`).
pub fn covering(switches: &[SwitchRow], tenant: &str, route: &str, tool: &str) -> Option<String> {
    switches.iter().filter(|s| s.engaged).find_map(|s| {
        let hit = match s.scope.as_str() {
            "global" => true,
            "tool" => s.target == tool,
            "tenant" => s.target == tenant,
            "route" => s.target == route,
            _ => false,
        };
        hit.then(|| {
            if s.scope == "global" {
                "global".to_owned()
            } else {
                format!("{}:{}", s.scope, s.target)
            }
        })
    })
}

/// Switches and breakers in force, read once per transaction.
pub(super) struct Controls {
    switches: Vec<SwitchRow>,
    breakers: Vec<BreakerRow>,
}

impl Controls {
    pub(super) async fn load(conn: &mut Conn<'_>) -> Result<Controls> {
        Ok(Controls {
            switches: controls::engaged_switches(conn).await?,
            breakers: controls::breakers(conn).await?,
        })
    }

    /// What refuses new work: a kill switch.
    pub(super) fn refusing(&self, tenant: &str, route: &str, tool: &str) -> Option<String> {
        covering(&self.switches, tenant, route, tool)
    }

    /// What holds release and claims: a kill switch or a tripped route breaker.
    pub(super) fn holding(&self, tenant: &str, route: &str, tool: &str) -> Option<String> {
        self.refusing(tenant, route, tool).or_else(|| {
            self.breakers
                .iter()
                .find(|b| b.route == route)
                .map(|b| format!("breaker:{}", b.route))
        })
    }
}

pub(super) async fn switch_in(conn: &mut Conn<'_>, tenant: &str, route: &str, tool: &str) -> Result<Option<String>> {
    Ok(covering(&controls::engaged_switches(conn).await?, tenant, route, tool))
}

/// After a job's final outcome: trip its route's breaker when too many of the
/// route's recent executions failed.
pub(super) async fn check_route_breaker(
    tx: &mut Tx<'_>,
    core_policy: &crate::core::policy::Policy,
    route: &str,
) -> Result<()> {
    let b = core_policy.breakers;
    let outcomes = controls::recent_outcomes(&mut tx.conn, route, b.route_window).await?;
    if (outcomes.len() as i64) < b.route_window {
        return Ok(());
    }
    let failed = outcomes.iter().filter(|s| *s == "failed").count();
    let share = failed as f64 / outcomes.len() as f64;
    if share <= b.route_failure_share {
        return Ok(());
    }
    let reason = format!(
        "{failed} of the last {} executions failed (more than {:.0}%)",
        outcomes.len(),
        b.route_failure_share * 100.0
    );
    let now = tx.now_ms();
    let row = BreakerRow {
        route: route.to_owned(),
        tripped_at: now,
        reason: reason.clone(),
    };
    if controls::trip_breaker(&mut tx.conn, &row).await? {
        tracing::warn!(route, %reason, "route breaker tripped: release stops until an admin resets it");
        tx.audit(
            AuditDraft::new("system", "breaker.tripped")
                .subject(format!("route:{route}"))
                .status("tripped")
                .details(json!({ "reason": reason })),
        )
        .await?;
        tx.notify(Notice::Controls);
    }
    Ok(())
}

fn require_admin(p: &Person) -> Result<()> {
    if p.roles.admin {
        Ok(())
    } else {
        Err(Error::Forbidden("only admins may do this".into()))
    }
}

impl Core {
    /// The engaged switch covering this work, if any (read outside a transaction).
    pub async fn switch_covering(&self, tenant: &str, route: &str, tool: &str) -> Result<Option<String>> {
        switch_in(&mut self.store.reader().await?.conn(), tenant, route, tool).await
    }

    /// What every page shows at the top while it lasts.
    pub async fn banners(&self) -> Result<Vec<Banner>> {
        let now = self.now_ms();
        let mut r = self.store.reader().await?;
        let mut out = Vec::new();
        for b in controls::active_break_glass(&mut r.conn(), now).await? {
            out.push(Banner {
                kind: "breakglass".into(),
                text: format!(
                    "Break-glass is on: {} may approve alone until {} (incident {}: {})",
                    b.username,
                    crate::core::clock::rfc3339(b.ends_at),
                    b.incident,
                    b.reason
                ),
            });
        }
        for s in controls::engaged_switches(&mut r.conn()).await? {
            out.push(Banner {
                kind: "switch".into(),
                text: if s.scope == "global" {
                    format!("Kill switch on for everything: {}", s.reason)
                } else {
                    format!("Kill switch on for {} {}: {}", s.scope, s.target, s.reason)
                },
            });
        }
        for b in controls::breakers(&mut r.conn()).await? {
            out.push(Banner {
                kind: "breaker".into(),
                text: format!("Route {} is not releasing: {}", b.route, b.reason),
            });
        }
        Ok(out)
    }

    pub async fn switches(&self) -> Result<Vec<SwitchRow>> {
        controls::all_switches(&mut self.store.reader().await?.conn()).await
    }

    pub async fn breakers(&self) -> Result<Vec<BreakerRow>> {
        controls::breakers(&mut self.store.reader().await?.conn()).await
    }

    /// Turn a switch on or off, with a reason. Turning one off releases what it held.
    pub async fn set_switch(
        &self,
        by: &super::Admin,
        scope: &str,
        target: &str,
        engaged: bool,
        reason: &str,
    ) -> Result<()> {
        if !SCOPES.contains(&scope) {
            return Err(Error::BadRequest(format!(
                "unknown switch scope {scope:?}: use global, tool, tenant or route"
            )));
        }
        let target = if scope == "global" {
            String::new()
        } else {
            target.trim().to_owned()
        };
        if scope != "global" && target.is_empty() {
            return Err(Error::BadRequest(format!(
                "a {scope} switch needs the {scope} it covers"
            )));
        }
        let reason = reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(Error::BadRequest(
                "a switch needs a reason of 1 to 500 characters".into(),
            ));
        }
        let policy = self.policy();
        if scope == "tool" && policy.tool(&target).is_none() {
            return Err(Error::BadRequest(format!("tool {target:?} is not in the policy")));
        }
        if scope == "route" && policy.route(&target).is_none() {
            return Err(Error::BadRequest(format!("route {target:?} is not in the policy")));
        }
        let (actor, scope) = (by.actor().to_owned(), scope.to_owned());
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let row = SwitchRow {
                        scope: scope.clone(),
                        target: target.clone(),
                        engaged,
                        reason: reason.clone(),
                        changed_by: actor.clone(),
                        changed_at: tx.now_ms(),
                    };
                    let prev = controls::put_switch(&mut tx.conn, &row).await?;
                    let mut ev = AuditDraft::new(actor.clone(), if engaged { "switch.on" } else { "switch.off" })
                        .subject(format!("{scope}:{target}"))
                        .details(json!({ "reason": reason, "was_engaged": prev }));
                    if scope == "tenant" {
                        ev.tenant = Some(target.clone());
                    }
                    tracing::warn!(scope = %scope, target = %target, engaged, "kill switch changed");
                    tx.audit(ev).await?;
                    super::notify::emit(
                        tx,
                        "switch.changed",
                        json!({ "scope": scope, "target": target, "engaged": engaged, "reason": reason, "by": actor }),
                    )
                    .await?;
                    if !engaged {
                        super::jobs::release_held(tx, 500).await?;
                    }
                    tx.notify(Notice::Controls);
                    Ok(())
                })
            })
            .await
    }

    /// Close a tripped route breaker; what it held is released.
    pub async fn reset_breaker(&self, by: &super::Admin, route: &str) -> Result<()> {
        let (actor, route) = (by.actor().to_owned(), route.to_owned());
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    if !controls::reset_breaker(&mut tx.conn, &route).await? {
                        return Err(Error::InvalidTransition(format!(
                            "route {route}'s breaker is not tripped"
                        )));
                    }
                    tx.audit(AuditDraft::new(actor, "breaker.reset").subject(format!("route:{route}")))
                        .await?;
                    super::jobs::release_held(tx, 500).await?;
                    tx.notify(Notice::Controls);
                    Ok(())
                })
            })
            .await
    }

    /// The break-glass session this person holds now, if any.
    pub async fn break_glass_of(&self, person: &Person) -> Result<Option<String>> {
        if !person.roles.admin {
            return Ok(None);
        }
        let now = self.now_ms();
        let rows = controls::active_break_glass(&mut self.store.reader().await?.conn(), now).await?;
        Ok(rows.into_iter().find(|b| b.user_id == person.id).map(|b| b.id))
    }

    pub async fn break_glass_sessions(&self) -> Result<Vec<BreakGlassRow>> {
        controls::recent_break_glass(&mut self.store.reader().await?.conn(), 20).await
    }

    /// Start break-glass: a signed-in admin, who types their password again,
    /// says why and for which incident, for at most an hour.
    pub async fn start_break_glass(
        &self,
        person: &Person,
        password: &str,
        reason: &str,
        incident: &str,
        minutes: i64,
    ) -> Result<BreakGlassRow> {
        require_admin(person)?;
        let reason = reason.trim().to_owned();
        let incident = incident.trim().to_owned();
        if reason.chars().count() < 10 || reason.chars().count() > 500 {
            return Err(Error::BadRequest("say why, in 10 to 500 characters".into()));
        }
        if incident.is_empty() || incident.chars().count() > 100 {
            return Err(Error::BadRequest(
                "give the incident reference (1 to 100 characters)".into(),
            ));
        }
        if !(1..=MAX_BREAK_GLASS_MINUTES).contains(&minutes) {
            return Err(Error::BadRequest(format!(
                "break-glass lasts 1 to {MAX_BREAK_GLASS_MINUTES} minutes"
            )));
        }
        let user = crate::core::store::queries::users::by_id(&mut self.store.reader().await?.conn(), &person.id)
            .await?
            .ok_or(Error::NotFound)?;
        if !self
            .passwords
            .verify(password.to_owned(), Some(user.password_hash))
            .await
        {
            let (actor, id) = (person.actor(), person.id.clone());
            self.store
                .write(move |tx| {
                    Box::pin(async move {
                        tx.audit(
                            AuditDraft::new(actor, "breakglass.refused")
                                .subject(id)
                                .status("wrong password"),
                        )
                        .await?;
                        Ok(())
                    })
                })
                .await?;
            tracing::warn!(user = %person.username, "break-glass refused: wrong password");
            return Err(Error::Forbidden(
                "the password is wrong: break-glass not started".into(),
            ));
        }
        let person = person.clone();
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let now = tx.now_ms();
                    if controls::active_break_glass(&mut tx.conn, now)
                        .await?
                        .iter()
                        .any(|b| b.user_id == person.id)
                    {
                        return Err(Error::InvalidTransition("you already have break-glass on".into()));
                    }
                    let row = BreakGlassRow {
                        id: new_id("brk"),
                        user_id: person.id.clone(),
                        username: person.username.clone(),
                        reason,
                        incident,
                        started_at: now,
                        ends_at: now + minutes * 60_000,
                        ended_at: None,
                        ended_by: None,
                    };
                    controls::insert_break_glass(&mut tx.conn, &row).await?;
                    tracing::warn!(user = %row.username, incident = %row.incident, minutes, "BREAK-GLASS STARTED");
                    tx.audit(
                        AuditDraft::new(person.actor(), "breakglass.started")
                            .subject(row.id.clone())
                            .scope("session:break-glass")
                            .details(json!({ "reason": row.reason, "incident": row.incident, "ends_at": row.ends_at })),
                    )
                    .await?;
                    super::notify::emit(
                        tx,
                        "breakglass.started",
                        json!({ "id": row.id, "by": row.username, "reason": row.reason, "incident": row.incident,
                                "ends_at": crate::core::clock::rfc3339(row.ends_at) }),
                    )
                    .await?;
                    tx.notify(Notice::Controls);
                    Ok(row)
                })
            })
            .await
    }

    /// End a break-glass session early.
    pub async fn end_break_glass(&self, person: &Person, id: &str) -> Result<()> {
        require_admin(person)?;
        let (by, id) = (person.username.clone(), id.to_owned());
        self.store
            .write(move |tx| Box::pin(async move { end_break_glass_in(tx, &id, &by, "ended early").await.map(|_| ()) }))
            .await
    }
}

/// Record a break-glass session's end (early, or because its time ran out).
pub(super) async fn end_break_glass_in(tx: &mut Tx<'_>, id: &str, by: &str, how: &str) -> Result<bool> {
    let now = tx.now_ms();
    if !controls::end_break_glass(&mut tx.conn, id, now, by).await? {
        return Err(Error::InvalidTransition(
            "that break-glass session has already ended".into(),
        ));
    }
    tracing::warn!(id, how, "break-glass ended");
    tx.audit(
        AuditDraft::new(
            if by == "system" {
                "system".to_owned()
            } else {
                format!("user:{by}")
            },
            "breakglass.ended",
        )
        .subject(id.to_owned())
        .details(json!({ "how": how })),
    )
    .await?;
    super::notify::emit(tx, "breakglass.ended", json!({ "id": id, "how": how, "by": by })).await?;
    tx.notify(Notice::Controls);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw(scope: &str, target: &str, engaged: bool) -> SwitchRow {
        SwitchRow {
            scope: scope.into(),
            target: target.into(),
            engaged,
            reason: "r".into(),
            changed_by: "a".into(),
            changed_at: 0,
        }
    }

    #[test]
    fn each_scope_covers_only_its_target() {
        let s = [sw("tool", "email.send", true), sw("tenant", "acme", false)];
        assert_eq!(
            covering(&s, "acme", "support/send", "email.send").as_deref(),
            Some("tool:email.send")
        );
        assert_eq!(
            covering(&s, "acme", "support/send", "ticket.close"),
            None,
            "an off switch covers nothing"
        );
        let s = [sw("route", "ops/triage", true)];
        assert_eq!(
            covering(&s, "acme", "ops/triage", "x").as_deref(),
            Some("route:ops/triage")
        );
        assert_eq!(covering(&s, "acme", "support/send", "x"), None);
        let s = [sw("global", "", true)];
        assert_eq!(covering(&s, "t", "r", "x").as_deref(), Some("global"));
    }

    #[test]
    fn a_tripped_breaker_holds_release_but_refuses_nothing() {
        let c = Controls {
            switches: vec![],
            breakers: vec![BreakerRow {
                route: "ops/triage".into(),
                tripped_at: 0,
                reason: "r".into(),
            }],
        };
        assert_eq!(c.refusing("acme", "ops/triage", "alert.ack"), None);
        assert_eq!(
            c.holding("acme", "ops/triage", "alert.ack").as_deref(),
            Some("breaker:ops/triage")
        );
        assert_eq!(c.holding("acme", "support/send", "alert.ack"), None);
    }
}
