//! Blast-radius controls as use-cases: kill switches turned on and off,
//! route breakers reset, break-glass started and ended, and the banners every
//! page shows while any of them is in force. The rules of what a switch
//! covers are pure (`crate::controls`).

use super::people::Person;
use super::release::release_held;
use super::Core;
use crate::audit::AuditDraft;
use crate::clock::rfc3339;
use crate::controls::{covering, Scope};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::store::queries::controls::{self, BreakGlassRow, BreakerRow, SwitchRow};
use crate::store::queries::users;
use crate::store::{Notice, Tx};
use serde_json::json;

pub const MAX_BREAK_GLASS_MINUTES: i64 = 60;

/// What a banner is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BannerKind {
    BreakGlass,
    Switch,
    Breaker,
}

impl BannerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BannerKind::BreakGlass => "breakglass",
            BannerKind::Switch => "switch",
            BannerKind::Breaker => "breaker",
        }
    }
}

/// A line every page shows at the top while a control is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    pub kind: BannerKind,
    pub text: String,
}

fn require_admin(p: &Person) -> Result<()> {
    super::Admin::person(p).map(|_| ())
}

async fn set_switch_in(tx: &mut Tx<'_>, row: SwitchRow) -> Result<()> {
    let mut row = row;
    row.changed_at = tx.now_ms();
    let prev = controls::put_switch(tx, &row).await?;
    let SwitchRow {
        scope,
        target,
        engaged,
        reason,
        changed_by: actor,
        ..
    } = row;
    let mut ev = AuditDraft::new(actor.clone(), if engaged { "switch.on" } else { "switch.off" })
        .subject(format!("{scope}:{target}"))
        .details(json!({ "reason": reason, "was_engaged": prev }));
    if scope == Scope::Tenant {
        ev.tenant = Some(target.clone());
    }
    tracing::warn!(scope = %scope, target = %target, engaged, "kill switch changed");
    tx.audit(ev);
    let data = json!({ "scope": scope, "target": target, "engaged": engaged, "reason": reason, "by": actor });
    super::notify::emit(tx, "switch.changed", data).await?;
    if !engaged {
        release_held(tx, 500).await?;
    }
    tx.notify(Notice::Controls);
    Ok(())
}

async fn reset_breaker_in(tx: &mut Tx<'_>, actor: String, route: String) -> Result<()> {
    if !controls::reset_breaker(tx, &route).await? {
        return Err(Error::InvalidTransition(format!(
            "route {route}'s breaker is not tripped"
        )));
    }
    tx.audit(AuditDraft::new(actor, "breaker.reset").subject(format!("route:{route}")));
    release_held(tx, 500).await?;
    tx.notify(Notice::Controls);
    Ok(())
}

/// A wrong password at break-glass, with the address it came from (the
/// session is an admin's: where it is used from is evidence).
async fn break_glass_refused_in(tx: &mut Tx<'_>, actor: String, user_id: String, addr: String) -> Result<()> {
    tx.audit(
        AuditDraft::new(actor, "breakglass.refused")
            .subject(user_id)
            .status("wrong password")
            .details(serde_json::json!({ "addr": addr })),
    );
    Ok(())
}

async fn start_break_glass_in(
    tx: &mut Tx<'_>,
    person: Person,
    row: BreakGlassRow,
    throttle: Vec<String>,
) -> Result<BreakGlassRow> {
    super::people::clear_throttle_in(tx, throttle).await?;
    let mut row = row;
    let now = tx.now_ms();
    if controls::active_break_glass(&mut tx.conn, now)
        .await?
        .iter()
        .any(|b| b.user_id == person.id)
    {
        return Err(Error::InvalidTransition("you already have break-glass on".into()));
    }
    let minutes = row.ends_at - row.started_at;
    row.started_at = now;
    row.ends_at = now + minutes;
    controls::insert_break_glass(&mut tx.conn, &row).await?;
    tracing::warn!(user = %row.username, incident = %row.incident, "BREAK-GLASS STARTED");
    tx.audit(
        AuditDraft::new(person.actor(), "breakglass.started")
            .subject(row.id.clone())
            .scope("session:break-glass")
            .details(json!({ "reason": row.reason, "incident": row.incident, "ends_at": row.ends_at })),
    );
    let data = json!({ "id": row.id, "by": row.username, "reason": row.reason, "incident": row.incident,
                       "ends_at": rfc3339(row.ends_at) });
    super::notify::emit(tx, "breakglass.started", data).await?;
    tx.notify(Notice::Controls);
    Ok(row)
}

/// Record a break-glass session's end (early, or because its time ran out).
async fn end_break_glass_in(tx: &mut Tx<'_>, id: String, by: String, how: &'static str) -> Result<()> {
    let now = tx.now_ms();
    if !controls::end_break_glass(&mut tx.conn, &id, now, &by).await? {
        return Err(Error::InvalidTransition(
            "that break-glass session has already ended".into(),
        ));
    }
    tracing::warn!(id, how, "break-glass ended");
    let actor = if by == super::SYSTEM_ACTOR {
        by.clone()
    } else {
        format!("user:{by}")
    };
    tx.audit(
        AuditDraft::new(actor, "breakglass.ended")
            .subject(id.clone())
            .details(json!({ "how": how })),
    );
    super::notify::emit(tx, "breakglass.ended", json!({ "id": id, "how": how, "by": by })).await?;
    tx.notify(Notice::Controls);
    Ok(())
}

/// Break-glass sessions whose time ran out end (the sweeper's part).
pub(super) async fn end_lapsed_break_glass(tx: &mut Tx<'_>) -> Result<usize> {
    let now = tx.now_ms();
    let lapsed = controls::lapsed_break_glass(&mut tx.conn, now).await?;
    for b in &lapsed {
        end_break_glass_in(tx, b.id.clone(), super::SYSTEM_ACTOR.into(), "its time ran out").await?;
    }
    Ok(lapsed.len())
}

impl Core {
    /// The engaged switch covering this work, if any (read outside a transaction).
    pub async fn switch_covering(&self, tenant: &str, route: &str, tool: &str) -> Result<Option<String>> {
        let switches = controls::engaged_switches(&mut self.store.reader().await?.conn()).await?;
        Ok(covering(&switches, tenant, route, tool))
    }

    /// What the pages show this person at the top while it lasts: only the
    /// controls that concern them. Nobody signed out sees any; a tenant's
    /// switch is shown to the people of that tenant; who holds break-glass,
    /// and for which incident, is told to admins only.
    pub async fn banners(&self, person: Option<&Person>) -> Result<Vec<Banner>> {
        let Some(person) = person else {
            return Ok(Vec::new());
        };
        let now = self.now_ms();
        let mut r = self.store.reader().await?;
        let mut out = Vec::new();
        for b in controls::active_break_glass(&mut r.conn(), now).await? {
            let text = if person.roles.admin {
                format!(
                    "Break-glass is on: {} may approve alone until {} (incident {}: {})",
                    b.username,
                    rfc3339(b.ends_at),
                    b.incident,
                    b.reason
                )
            } else {
                format!(
                    "Break-glass is on: an admin may approve alone until {}",
                    rfc3339(b.ends_at)
                )
            };
            out.push(Banner {
                kind: BannerKind::BreakGlass,
                text,
            });
        }
        for s in controls::engaged_switches(&mut r.conn()).await? {
            if s.scope == Scope::Tenant && !person.roles.admin && !person.sees_tenant(&s.target) {
                continue;
            }
            out.push(Banner {
                kind: BannerKind::Switch,
                text: match s.scope {
                    Scope::Global => format!("Kill switch on for everything: {}", s.reason),
                    scope => format!("Kill switch on for {scope} {}: {}", s.target, s.reason),
                },
            });
        }
        for b in controls::breakers(&mut r.conn()).await? {
            out.push(Banner {
                kind: BannerKind::Breaker,
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
        scope: Scope,
        target: &str,
        engaged: bool,
        reason: &str,
    ) -> Result<()> {
        let target = match scope {
            Scope::Global => String::new(),
            _ => target.trim().to_owned(),
        };
        if scope != Scope::Global && target.is_empty() {
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
        if scope == Scope::Tool && policy.tool(&target).is_none() {
            return Err(Error::BadRequest(format!("tool {target:?} is not in the policy")));
        }
        if scope == Scope::Route && policy.route(&target).is_none() {
            return Err(Error::BadRequest(format!("route {target:?} is not in the policy")));
        }
        if scope == Scope::Tenant && !controls::tenant_known(&mut self.store.reader().await?.conn(), &target).await? {
            return Err(Error::BadRequest(format!(
                "no person or key belongs to tenant {target:?}: a switch on it would cover nothing"
            )));
        }
        let row = SwitchRow {
            scope,
            target,
            engaged,
            reason,
            changed_by: by.actor().to_owned(),
            changed_at: 0,
        };
        self.store.write(move |tx| Box::pin(set_switch_in(tx, row))).await
    }

    /// Close a tripped route breaker; what it held is released.
    pub async fn reset_breaker(&self, by: &super::Admin, route: &str) -> Result<()> {
        let (actor, route) = (by.actor().to_owned(), route.to_owned());
        self.store
            .write(move |tx| Box::pin(reset_breaker_in(tx, actor, route)))
            .await
    }

    /// The break-glass this person holds now, if any: only in the session
    /// that started it (another session of theirs, a stolen cookie of an
    /// older one, gets none).
    pub async fn break_glass_of(&self, person: &Person) -> Result<Option<String>> {
        let Some(started_here) = person.break_glass_session.as_deref().filter(|_| person.roles.admin) else {
            return Ok(None);
        };
        let now = self.now_ms();
        let rows = controls::active_break_glass(&mut self.store.reader().await?.conn(), now).await?;
        Ok(rows
            .into_iter()
            .find(|b| b.user_id == person.id && b.id == started_here)
            .map(|b| b.id))
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
        addr: &str,
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
        let user = users::by_id(&mut self.store.reader().await?.conn(), &person.id)
            .await?
            .ok_or(Error::NotFound)?;
        // The password typed again is throttled like a sign-in, on keys of
        // its own (see `break_glass_keys`).
        let keys = super::people::break_glass_keys(&person.id, self.settings.login_free_failures);
        let cleared = super::people::cleared_on_success(&keys);
        self.store
            .write_or_refuse(move |tx| Box::pin(super::people::reserve_attempt_in(tx, keys)))
            .await?;
        if !self
            .passwords
            .verify_signed_in(password.to_owned(), user.password_hash)
            .await?
        {
            let (actor, id, addr) = (person.actor(), person.id.clone(), addr.to_owned());
            self.store
                .write(move |tx| Box::pin(break_glass_refused_in(tx, actor, id, addr)))
                .await?;
            tracing::warn!(user = %person.username, "break-glass refused: wrong password");
            return Err(Error::Forbidden(
                "the password is wrong: break-glass not started".into(),
            ));
        }
        let row = BreakGlassRow {
            id: new_id("brk"),
            user_id: person.id.clone(),
            username: person.username.clone(),
            reason,
            incident,
            started_at: 0,
            ends_at: minutes * 60_000,
            ended_at: None,
            ended_by: None,
        };
        let person = person.clone();
        self.store
            .write(move |tx| Box::pin(start_break_glass_in(tx, person, row, cleared)))
            .await
    }

    /// End a break-glass session early.
    pub async fn end_break_glass(&self, person: &Person, id: &str) -> Result<()> {
        require_admin(person)?;
        let (by, id) = (person.username.clone(), id.to_owned());
        self.store
            .write(move |tx| Box::pin(end_break_glass_in(tx, id, by, "ended early")))
            .await
    }
}
