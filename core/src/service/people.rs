//! People: adding and changing users, signing in (with throttling), and
//! checking that a session still belongs to an active person.

use super::Core;
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::ids::{new_id, parse_slug, parse_username};
use crate::passwords::check_password_rules;
use crate::roles::Roles;
use crate::store::queries::users::{self, ThrottleRow, UserRow};
use crate::store::{Outcome, Tx};

/// A signed-in person. Only sessions make these: no API credential can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    pub username: String,
    pub roles: Roles,
    pub tenants: Vec<String>,
    /// The break-glass this person's session started, if it did (the door
    /// that holds the session says so; break-glass is of a session, not of
    /// the person).
    pub break_glass_session: Option<String>,
}

impl Person {
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }
    pub fn sees_tenant(&self, t: &str) -> bool {
        self.tenants.iter().any(|x| x == t)
    }
    fn from_row(u: UserRow, roles: Roles, tenants: Vec<String>) -> Person {
        Person {
            id: u.id,
            username: u.username,
            roles,
            tenants,
            break_glass_session: None,
        }
    }
}

#[derive(Clone)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub roles: Vec<String>,
    pub tenants: Vec<String>,
}

/// Written by hand: the password is never printed.
impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("roles", &self.roles)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub person: Person,
    pub at_ms: i64,
}

/// A person as the admin page lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRow {
    pub id: String,
    pub username: String,
    pub roles: Roles,
    pub tenants: Vec<String>,
    pub disabled: bool,
}

/// Failures counted within this window; older ones are forgotten.
const THROTTLE_WINDOW_MS: i64 = 15 * 60 * 1000;
const MAX_BLOCK_SECS: i64 = 300;
/// One message for both wrong password and unknown user.
pub const BAD_LOGIN: &str = "Wrong username or password.";

/// Tenant names from a list whose items may be comma-separated; sorted, once each.
fn parse_tenants(list: &[String]) -> Result<Vec<String>> {
    let mut tenants = list
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| parse_slug("tenant", t))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::BadRequest)?;
    tenants.sort();
    tenants.dedup();
    Ok(tenants)
}

/// Reviewers and auditors see only their tenants, so they need at least one.
fn check_access(roles: &Roles, tenants: &[String]) -> Result<()> {
    if (roles.reviewer || roles.auditor) && tenants.is_empty() {
        return Err(Error::BadRequest(
            "reviewers and auditors see only their tenants: give at least one tenant".into(),
        ));
    }
    Ok(())
}

/// Record a change to who may review, tell the webhooks (`reviewer.changed`),
/// and keep it on the person for the review page to show for a day.
async fn reviewer_changed(tx: &mut Tx<'_>, user: &UserRow, actor: &str, what: &str, tenants: &[String]) -> Result<()> {
    let change = users::ReviewChange {
        user_id: user.id.clone(),
        at: tx.now_ms(),
        by: actor.strip_prefix("user:").unwrap_or(actor).to_owned(),
        what: what.to_owned(),
    };
    users::mark_review_change(&mut tx.conn, &change).await?;
    tracing::warn!(user = %user.username, by = %change.by, what, "who may review changed");
    super::notify::emit(
        tx,
        "reviewer.changed",
        serde_json::json!({ "user": user.username, "by": change.by, "change": what, "tenants": tenants }),
    )
    .await
}

async fn add_user_in(tx: &mut Tx<'_>, actor: String, row: UserRow, roles: Roles, tenants: Vec<String>) -> Result<()> {
    if users::by_name(&mut tx.conn, &row.username).await?.is_some() {
        return Err(Error::BadRequest(format!("user {} already exists", row.username)));
    }
    users::insert_user(&mut tx.conn, &row).await?;
    users::set_roles(&mut tx.conn, &row.id, &roles).await?;
    users::set_tenants(&mut tx.conn, &row.id, &tenants).await?;
    tx.audit(
        AuditDraft::new(actor.clone(), "user.added")
            .subject(row.id.clone())
            .details(serde_json::json!({ "username": row.username, "roles": roles.names(), "tenants": tenants })),
    );
    if roles.reviewer {
        reviewer_changed(tx, &row, &actor, "added as a reviewer", &tenants).await?;
    }
    Ok(())
}

/// Failures of one account, from anywhere, before it is slowed: the
/// ceiling NIST SP 800-63B sets. High, so that a stranger flooding a name
/// from one address (held to `free` there) cannot lock its owner out.
const ACCOUNT_WIDE_FREE: i64 = 100;

/// One thing a password attempt is counted against, with its allowance of
/// free failures in the window.
pub(super) type ThrottleKey = (String, i64);

/// What a sign-in is counted against: this account from this address (the
/// tight one), any account from this address (a sprayer), and this account
/// from anywhere (a distributed guesser). A stranger flooding alice's name
/// from one address is stopped there, and alice signs in from hers.
pub(super) fn sign_in_keys(username: &str, addr: &str, free: i64) -> Vec<ThrottleKey> {
    let name = throttled_name(username);
    vec![
        (format!("user:{name}@{addr}"), free),
        (format!("addr:{addr}"), free * 4),
        (format!("user:{name}"), ACCOUNT_WIDE_FREE),
    ]
}

/// The typed name as a throttle key: a name no account could have (longer
/// than any username) is kept as its hash, so a key stays short whatever is
/// typed.
fn throttled_name(username: &str) -> String {
    use sha2::{Digest, Sha256};
    let name = username.trim().to_lowercase();
    if name.len() <= 64 {
        name
    } else {
        format!("#{}", &hex::encode(Sha256::digest(name.as_bytes()))[..32])
    }
}

/// Throttle records whose window has passed and that block nothing are
/// forgotten (the sweeper calls this, at most once a minute).
pub(super) async fn forget_old_attempts(tx: &mut Tx<'_>) -> Result<usize> {
    let now = tx.now_ms();
    users::forget_throttles(&mut tx.conn, now - THROTTLE_WINDOW_MS, now).await
}

/// What re-entering the password for break-glass is counted against: the
/// signed-in person alone, apart from sign-in, so a flood of sign-ins in an
/// admin's name cannot stop that admin's break-glass.
pub(super) fn break_glass_keys(user_id: &str, free: i64) -> Vec<ThrottleKey> {
    vec![(format!("breakglass:{user_id}"), free)]
}

/// After a right password: the keys to settle. The attempt was counted
/// before the check, so every key gets it back (see `clear_throttle_in`).
pub(super) fn cleared_on_success(keys: &[ThrottleKey]) -> Vec<String> {
    keys.iter().map(|(k, _)| k.clone()).collect()
}

/// Settle the keys of a right password. The ones that belong to this person
/// start again. The address-wide one only loses the attempt counted in
/// advance: a guesser who also holds an account must not wipe their
/// address's record by signing in to their own, and an office behind one
/// address must not be slowed down by its own sign-ins.
pub(super) async fn clear_throttle_in(tx: &mut Tx<'_>, keys: Vec<String>) -> Result<()> {
    for k in &keys {
        if k.starts_with("addr:") {
            if let Some(mut t) = users::throttle(&mut tx.conn, k).await? {
                t.failures = (t.failures - 1).max(0);
                users::put_throttle(&mut tx.conn, &t).await?;
            }
        } else {
            users::clear_throttle(&mut tx.conn, k).await?;
        }
    }
    Ok(())
}

/// Count a password attempt before it is checked, in one write: if either
/// key is blocked the attempt is refused without a check; otherwise it is
/// counted as a failure now (a success clears it). So a burst of parallel
/// guesses gets at most `free` + 1 real checks, never one each.
pub(super) async fn reserve_attempt_in(tx: &mut Tx<'_>, keys: Vec<ThrottleKey>) -> Result<Outcome<()>> {
    let now = tx.now_ms();
    let mut rows = Vec::with_capacity(keys.len());
    for (k, free) in &keys {
        let t = match users::throttle(&mut tx.conn, k).await? {
            Some(t) if t.blocked_until > now => {
                return Ok(Outcome::Refused(Error::RateLimited {
                    retry_after_secs: ((t.blocked_until - now) as u64).div_ceil(1000),
                }))
            }
            Some(t) if now - t.first_failure_at < THROTTLE_WINDOW_MS => t,
            _ => ThrottleRow {
                key: k.clone(),
                failures: 0,
                first_failure_at: now,
                blocked_until: 0,
            },
        };
        rows.push((t, *free));
    }
    for (mut t, free) in rows {
        t.failures += 1;
        if t.failures > free {
            let secs = 1i64 << (t.failures - free - 1).min(9);
            t.blocked_until = now + secs.min(MAX_BLOCK_SECS) * 1000;
        }
        users::put_throttle(&mut tx.conn, &t).await?;
    }
    Ok(Outcome::Done(()))
}

async fn login_succeeded_in(tx: &mut Tx<'_>, keys: Vec<String>, user_id: String, username: String) -> Result<()> {
    clear_throttle_in(tx, keys).await?;
    tx.audit(AuditDraft::new(format!("user:{username}"), "login.succeeded").subject(user_id));
    Ok(())
}

/// A failed sign-in, already counted. The typed name is recorded only when
/// it names a real account: people type passwords into the wrong field.
async fn login_failed_in(tx: &mut Tx<'_>, account: Option<String>) -> Result<()> {
    tx.audit(
        AuditDraft::new("anonymous", "login.failed")
            .status("refused")
            .details(serde_json::json!({ "account": account })),
    );
    Ok(())
}

async fn record_logout_in(tx: &mut Tx<'_>, actor: String, id: String) -> Result<()> {
    tx.audit(AuditDraft::new(actor, "logout").subject(id));
    Ok(())
}

/// The person and whether (and where) they review now.
async fn reviewer_now(tx: &mut Tx<'_>, id: &str) -> Result<(UserRow, Option<Vec<String>>)> {
    let user = users::by_id(&mut tx.conn, id).await?.ok_or(Error::NotFound)?;
    let (roles, tenants) = users::access_of(&mut tx.conn, id).await?;
    Ok((user, roles.reviewer.then_some(tenants)))
}

async fn set_disabled_in(tx: &mut Tx<'_>, actor: String, id: String, disabled: bool) -> Result<()> {
    let now = tx.now_ms();
    let (user, reviews) = reviewer_now(tx, &id).await?;
    if !users::set_disabled(&mut tx.conn, &id, disabled, now).await? {
        return Err(Error::NotFound);
    }
    tx.audit(AuditDraft::new(actor.clone(), if disabled { "user.disabled" } else { "user.enabled" }).subject(id));
    if let (false, true, Some(tenants)) = (disabled, user.disabled, reviews) {
        reviewer_changed(tx, &user, &actor, "re-enabled", &tenants).await?;
    }
    Ok(())
}

async fn reset_password_in(tx: &mut Tx<'_>, actor: String, id: String, hash: String) -> Result<()> {
    let now = tx.now_ms();
    let (user, reviews) = reviewer_now(tx, &id).await?;
    if !users::set_password(&mut tx.conn, &id, &hash, now).await? {
        return Err(Error::NotFound);
    }
    tx.audit(AuditDraft::new(actor.clone(), "user.password_reset").subject(id));
    // Whoever knows the new password can now approve as this person.
    if let Some(tenants) = reviews {
        reviewer_changed(tx, &user, &actor, "password reset", &tenants).await?;
    }
    Ok(())
}

async fn set_access_in(tx: &mut Tx<'_>, actor: String, id: String, roles: Roles, tenants: Vec<String>) -> Result<()> {
    let (user, before) = reviewer_now(tx, &id).await?;
    users::set_roles(&mut tx.conn, &id, &roles).await?;
    users::set_tenants(&mut tx.conn, &id, &tenants).await?;
    tx.audit(
        AuditDraft::new(actor.clone(), "user.access_changed")
            .subject(id)
            .details(serde_json::json!({ "roles": roles.names(), "tenants": tenants })),
    );
    let gained = match &before {
        _ if !roles.reviewer => None,
        None => Some("granted the reviewer role"),
        Some(had) if tenants.iter().any(|t| !had.contains(t)) => Some("granted a tenant to review"),
        Some(_) => None,
    };
    if let Some(what) = gained {
        reviewer_changed(tx, &user, &actor, what, &tenants).await?;
    }
    Ok(())
}

impl Core {
    pub async fn add_user(&self, by: &super::Admin, u: NewUser) -> Result<Person> {
        let username = parse_username(u.username.trim()).map_err(Error::BadRequest)?;
        check_password_rules(&u.password).map_err(Error::BadRequest)?;
        let roles = Roles::parse(&u.roles).map_err(Error::BadRequest)?;
        let tenants = parse_tenants(&u.tenants)?;
        check_access(&roles, &tenants)?;
        let hash = self.passwords.hash(u.password).await?;
        let row = UserRow {
            id: new_id("usr"),
            username,
            password_hash: hash,
            disabled: false,
            sessions_valid_after: 0,
            created_at: self.now_ms(),
        };
        let person = Person::from_row(row.clone(), roles, tenants.clone());
        let actor = by.actor().to_owned();
        self.store
            .write(move |tx| Box::pin(add_user_in(tx, actor, row, roles, tenants)))
            .await?;
        Ok(person)
    }

    /// Check a password. Unknown users, disabled users and wrong passwords all
    /// fail alike; repeated failures per account and per address are slowed.
    pub async fn login(&self, username: &str, password: &str, addr: &str) -> Result<LoginOutcome> {
        let now = self.now_ms();
        let keys = sign_in_keys(username, addr, self.settings.login_free_failures);
        let cleared = cleared_on_success(&keys);
        self.store
            .write_or_refuse(move |tx| Box::pin(reserve_attempt_in(tx, keys)))
            .await?;
        let user = users::by_name(&mut self.store.reader().await?.conn(), username.trim()).await?;
        let ok = self
            .passwords
            .verify(password.to_owned(), user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        match user {
            Some(u) if ok && !u.disabled => {
                let (uid, name) = (u.id.clone(), u.username.clone());
                self.store
                    .write(move |tx| Box::pin(login_succeeded_in(tx, cleared, uid, name)))
                    .await?;
                let (roles, tenants) = users::access_of(&mut self.store.reader().await?.conn(), &u.id).await?;
                Ok(LoginOutcome {
                    person: Person::from_row(u, roles, tenants),
                    at_ms: now,
                })
            }
            _ => {
                let account = user.map(|u| u.username);
                self.store
                    .write(move |tx| Box::pin(login_failed_in(tx, account)))
                    .await?;
                Err(Error::Unauthenticated(BAD_LOGIN.into()))
            }
        }
    }

    /// The person a session belongs to, if the session is still good: the user
    /// exists, is not disabled, and nothing voided sessions since `login_at`.
    pub async fn person_for_session(&self, user_id: &str, login_at: i64) -> Result<Option<Person>> {
        let mut r = self.store.reader().await?;
        let mut c = r.conn();
        let Some(u) = users::by_id(&mut c, user_id).await? else {
            return Ok(None);
        };
        if u.disabled || u.sessions_valid_after > login_at {
            return Ok(None);
        }
        let (roles, tenants) = users::access_of(&mut c, &u.id).await?;
        Ok(Some(Person::from_row(u, roles, tenants)))
    }

    pub async fn record_logout(&self, p: &Person) -> Result<()> {
        let (actor, id) = (p.actor(), p.id.clone());
        self.store
            .write(move |tx| Box::pin(record_logout_in(tx, actor, id)))
            .await
    }

    pub async fn count_users(&self) -> Result<i64> {
        users::count(&mut self.store.reader().await?.conn()).await
    }

    pub async fn people(&self) -> Result<Vec<PersonRow>> {
        let mut r = self.store.reader().await?;
        let mut out = Vec::new();
        for u in users::all(&mut r.conn()).await? {
            let (roles, tenants) = users::access_of(&mut r.conn(), &u.id).await?;
            out.push(PersonRow {
                roles,
                id: u.id,
                username: u.username,
                tenants,
                disabled: u.disabled,
            });
        }
        Ok(out)
    }

    /// Disable (or enable) a person. Disabling ends their sessions at once.
    pub async fn set_disabled(&self, by: &super::Admin, user_id: &str, disabled: bool) -> Result<()> {
        if by.actor() == format!("user:{}", self.username_of(user_id).await?) && disabled {
            return Err(Error::BadRequest("you cannot disable yourself".into()));
        }
        let (actor, id) = (by.actor().to_owned(), user_id.to_owned());
        self.store
            .write(move |tx| Box::pin(set_disabled_in(tx, actor, id, disabled)))
            .await
    }

    /// Set a new password; the person's sessions end.
    pub async fn reset_password(&self, by: &super::Admin, user_id: &str, password: String) -> Result<()> {
        check_password_rules(&password).map_err(Error::BadRequest)?;
        let hash = self.passwords.hash(password).await?;
        let (actor, id) = (by.actor().to_owned(), user_id.to_owned());
        self.store
            .write(move |tx| Box::pin(reset_password_in(tx, actor, id, hash)))
            .await
    }

    /// Replace a person's roles and tenants.
    pub async fn set_access(
        &self,
        by: &super::Admin,
        user_id: &str,
        roles: &[String],
        tenants: &[String],
    ) -> Result<()> {
        let roles = Roles::parse(roles).map_err(Error::BadRequest)?;
        let tenants = parse_tenants(tenants)?;
        check_access(&roles, &tenants)?;
        let (actor, id) = (by.actor().to_owned(), user_id.to_owned());
        self.store
            .write(move |tx| Box::pin(set_access_in(tx, actor, id, roles, tenants)))
            .await
    }

    async fn username_of(&self, user_id: &str) -> Result<String> {
        Ok(users::by_id(&mut self.store.reader().await?.conn(), user_id)
            .await?
            .ok_or(Error::NotFound)?
            .username)
    }
}
