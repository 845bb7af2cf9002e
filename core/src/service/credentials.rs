//! Credentials: who is calling, from the bearer value alone; API keys (made,
//! listed, revoked) and the server's signing keys.

use super::known::Known;
use super::runs::{LiveRun, ProposingRun};
use super::{Core, ExecutorPrincipal, RunPrincipal, ServicePrincipal};
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::ids::{new_id, parse_slug};
use crate::store::queries::{keys, runs};
use crate::store::Tx;
use crate::tokens::{generate_key, hash_key, KeyKind, Keyring, RunClaims, SigningKey, TokenError, RUN_TOKEN_PREFIX};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    Service(ServicePrincipal),
    Run(RunPrincipal),
    Executor(ExecutorPrincipal),
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Service(_) => "service key",
            Credential::Run(_) => "run token",
            Credential::Executor(_) => "executor key",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub kind: KeyKind,
    pub name: String,
    pub tenant: Option<String>,
    pub env: String,
    pub tools: Vec<String>,
}

/// What a caller whose key was revoked is told.
pub(super) const KEY_REVOKED: &str = "this key was revoked";

fn unauth(msg: &str) -> Error {
    Error::Unauthenticated(msg.to_owned())
}

impl Core {
    /// Load the signing keys, creating the first on a new database.
    pub(super) async fn load_keyring(&self) -> Result<()> {
        let rows = keys::signing_keys(&mut self.store.reader().await?.conn()).await?;
        if rows.is_empty() {
            self.rotate_signing_key(&super::Admin::system()).await?;
            return Ok(());
        }
        self.load_keyring_rows().await
    }

    /// Make a new signing key current. Tokens signed with the previous key stay
    /// valid until they expire; older keys are retired, so rotating twice in a
    /// row invalidates every outstanding run token.
    pub async fn rotate_signing_key(&self, by: &super::Admin) -> Result<String> {
        let key = SigningKey::generate();
        let (id, secret) = (key.id.clone(), hex::encode(&key.secret));
        let actor = by.actor().to_owned();
        let kid = id.clone();
        self.store
            .write(move |tx| Box::pin(rotate_in(tx, actor, kid, secret)))
            .await?;
        self.load_keyring_rows().await?;
        Ok(id)
    }

    async fn load_keyring_rows(&self) -> Result<()> {
        let rows = keys::signing_keys(&mut self.store.reader().await?.conn()).await?;
        let ring = rows
            .into_iter()
            .filter_map(|r| {
                Some(SigningKey {
                    id: r.id,
                    secret: hex::decode(&r.secret).ok()?,
                })
            })
            .collect();
        *self.keyring.write().map_err(super::poisoned)? = Keyring::new(ring);
        Ok(())
    }

    pub(super) fn sign_run_token(&self, claims: &crate::tokens::RunClaims) -> Result<String> {
        self.keyring
            .read()
            .map_err(super::poisoned)?
            .sign(claims)
            .ok_or_else(|| Error::internal("no signing key is loaded"))
    }

    /// Who is calling, from an `Authorization: Bearer` value. Errors are 401s.
    pub async fn authenticate(&self, bearer: &str) -> Result<Credential> {
        if bearer.starts_with(RUN_TOKEN_PREFIX) {
            return self.authenticate_run(bearer).await.map(Credential::Run);
        }
        let Some(claimed) = KeyKind::of_key(bearer) else {
            return Err(unauth("the credential is not a countersign key or run token"));
        };
        let row = keys::by_hash(&mut self.store.reader().await?.conn(), &hash_key(bearer))
            .await?
            .filter(|k| k.kind == claimed)
            .ok_or_else(|| unauth("unknown key"))?;
        if row.revoked_at.is_some() {
            return Err(unauth(KEY_REVOKED));
        }
        Ok(match row.kind {
            KeyKind::Service => Credential::Service(ServicePrincipal {
                key_id: row.id,
                name: row.name,
                tenant: row.tenant.unwrap_or_default(),
                env: row.env,
            }),
            KeyKind::Executor => Credential::Executor(ExecutorPrincipal {
                key_id: row.id,
                name: row.name,
                env: row.env,
                tools: serde_json::from_str::<BTreeSet<String>>(&row.tools).unwrap_or_default(),
            }),
        })
    }

    /// An executor key, for the executor's own calls (claim, heartbeat,
    /// complete), admitted from what this process knows of it: read once,
    /// at its first call here. Its revocation is checked by each of those
    /// calls in the transaction that acts (`executor_live_in`), and an
    /// answer other than that transaction's success is given only after a
    /// read of the key (`Core::confirm_executor`), so a key revoked by any
    /// process is refused at its next call. A key seen revoked is refused
    /// at once. Any other credential is authenticated as every call is.
    pub async fn authenticate_executor(&self, bearer: &str) -> Result<Credential> {
        if KeyKind::of_key(bearer) != Some(KeyKind::Executor) {
            return self.authenticate(bearer).await;
        }
        let hash = hash_key(bearer);
        match self.known_keys.get(&hash) {
            Some(Known::Live(exec)) => Ok(Credential::Executor(exec)),
            Some(Known::Ended(why)) => Err(unauth(&why)),
            None => {
                self.known_keys.count_read();
                let found = self.authenticate(bearer).await;
                match &found {
                    Ok(Credential::Executor(exec)) => self.known_keys.learn(&hash, Known::Live(exec.clone())),
                    Err(Error::Unauthenticated(why)) if why == KEY_REVOKED => self.known_keys.ended(&hash, why),
                    _ => {}
                }
                found
            }
        }
    }

    /// Whether an executor's key is live, read now; refused (401) if not.
    pub async fn confirm_executor(&self, exec: &ExecutorPrincipal) -> Result<()> {
        if exec.is_upstream_executor() {
            return Ok(());
        }
        self.known_keys.count_read();
        let row = keys::by_id(&mut self.store.reader().await?.conn(), &exec.key_id).await?;
        if row.is_some_and(|k| k.revoked_at.is_none()) {
            return Ok(());
        }
        self.executor_ended(&exec.key_id);
        Err(unauth(KEY_REVOKED))
    }

    /// An executor's call answered as its key stands now: a refusal of the
    /// key by the call's own transaction is remembered, and any other
    /// failure is answered only after a read of the key, so a revoked key
    /// hears 401 whatever else was wrong with its call.
    pub(super) async fn answer_executor<T>(&self, exec: &ExecutorPrincipal, done: Result<T>) -> Result<T> {
        match done {
            Ok(v) => Ok(v),
            Err(Error::Unauthenticated(why)) => {
                if why == KEY_REVOKED {
                    self.executor_ended(&exec.key_id);
                }
                Err(Error::Unauthenticated(why))
            }
            Err(e) => {
                self.confirm_executor(exec).await?;
                Err(e)
            }
        }
    }

    /// The executor's key was found revoked (or gone): its next call here
    /// is refused without a read.
    pub(super) fn executor_ended(&self, key_id: &str) {
        self.known_keys.ended_where(|k| k.key_id == key_id, KEY_REVOKED);
    }

    /// How many times this process read an executor's key to admit or
    /// confirm it; its later calls are admitted from what it learned then.
    pub fn executor_key_reads(&self) -> u64 {
        self.known_keys.reads()
    }

    async fn authenticate_run(&self, token: &str) -> Result<RunPrincipal> {
        let claims = self.verify_run_token(token).await?;
        self.read_run(claims).await
    }

    /// A run token for `propose`: verified, and its run admitted from what
    /// this process knows of it (read once, at its first call here); its
    /// revocation is checked in the transaction that inserts the proposal
    /// (`ProposingRun`). A run known to have ended is refused at once.
    pub async fn authenticate_proposer(&self, token: &str) -> Result<ProposingRun> {
        let claims = self.verify_run_token(token).await?;
        match self.known_runs.get(&claims.run) {
            Some(known) => known.admit(claims, self.now_ms()),
            None => self.read_run(claims).await,
        }
        .map(ProposingRun::new)
    }

    /// The signed claims of a run token, checked: a key of ours, not expired.
    async fn verify_run_token(&self, token: &str) -> Result<RunClaims> {
        let now = self.now_ms();
        let verified = self.keyring.read().map_err(super::poisoned)?.verify(token, now);
        match verified {
            Err(TokenError::UnknownKey(_)) if self.may_reload_keyring() => {
                // Another process may have rotated: reload and retry. Not at
                // every request: a flood of tokens naming made-up keys would
                // otherwise be a read of the keys each.
                metrics::counter!("countersign_keyring_reloads_total").increment(1);
                self.load_keyring_rows().await?;
                self.keyring.read().map_err(super::poisoned)?.verify(token, now)
            }
            other => other,
        }
        .map_err(|e| unauth(&e.to_string()))
    }

    /// The caller, from its run's row as the store has it now.
    async fn read_run(&self, claims: RunClaims) -> Result<RunPrincipal> {
        self.known_runs.count_read();
        let row = runs::get(&mut self.store.reader().await?.conn(), &claims.run)
            .await?
            .ok_or_else(|| unauth("the run does not exist"))?;
        let known = Known::<LiveRun>::of(row);
        self.known_runs.learn(&claims.run, known.clone());
        known.admit(claims, self.now_ms())
    }

    /// Make a key; the plaintext is returned once and never stored.
    pub async fn create_key(&self, by: &super::Admin, k: NewKey) -> Result<(String, String)> {
        let env = parse_slug("env", &k.env).map_err(Error::BadRequest)?;
        let name = k.name.trim().to_owned();
        if name.is_empty() || name.len() > 100 {
            return Err(Error::BadRequest("a key needs a name of 1 to 100 characters".into()));
        }
        let (tenant, tools) = match k.kind {
            KeyKind::Service => {
                let t = k
                    .tenant
                    .as_deref()
                    .ok_or_else(|| Error::BadRequest("a service key needs --tenant".into()))?;
                if !k.tools.is_empty() {
                    return Err(Error::BadRequest(
                        "a service key takes no --tools: it only mints runs".into(),
                    ));
                }
                (Some(parse_slug("tenant", t).map_err(Error::BadRequest)?), vec![])
            }
            KeyKind::Executor => {
                if k.tenant.is_some() {
                    return Err(Error::BadRequest("an executor key serves one env, not a tenant".into()));
                }
                if k.tools.is_empty() {
                    return Err(Error::BadRequest("an executor key needs --tools a,b".into()));
                }
                let policy = self.policy();
                if let Some(t) = k.tools.iter().find(|t| policy.tool(t).is_none()) {
                    return Err(Error::BadRequest(format!("tool {t:?} is not declared in the policy")));
                }
                // Such a key would never be offered the tool's jobs (`claim`).
                if let Some(t) = k
                    .tools
                    .iter()
                    .find_map(|t| policy.tool(t).filter(|t| t.upstream.is_some()))
                {
                    return Err(Error::BadRequest(format!(
                        "tool {:?} is performed by countersign's upstream executor on upstream {:?}: no key performs it",
                        t.name,
                        t.upstream.as_ref().map_or("", |u| u.upstream.as_str())
                    )));
                }
                (None, k.tools.clone())
            }
        };
        let plaintext = generate_key(k.kind.prefix());
        let row = keys::KeyRow {
            id: new_id("key"),
            kind: k.kind,
            name,
            tenant,
            env,
            tools: serde_json::to_string(&tools)?,
            key_hash: hash_key(&plaintext),
            hint: plaintext.chars().take(8).collect(),
            created_at: 0,
            created_by: by.actor().to_owned(),
            revoked_at: None,
        };
        let id = row.id.clone();
        self.store.write(move |tx| Box::pin(create_key_in(tx, row))).await?;
        Ok((id, plaintext))
    }

    pub async fn revoke_key(&self, by: &super::Admin, id: &str) -> Result<()> {
        let (actor, key_id) = (by.actor().to_owned(), id.to_owned());
        self.store
            .write(move |tx| Box::pin(revoke_key_in(tx, actor, key_id)))
            .await?;
        self.executor_ended(id);
        Ok(())
    }

    pub async fn list_keys(&self) -> Result<Vec<keys::KeyRow>> {
        keys::all(&mut self.store.reader().await?.conn()).await
    }
}

/// In a write that acts for `exec`: refused (401) unless its key is live
/// now, as this transaction reads it.
pub(super) async fn executor_live_in(tx: &mut Tx<'_>, exec: &ExecutorPrincipal) -> Result<()> {
    if exec.is_upstream_executor()
        || !keys::live_among(&mut tx.conn, std::slice::from_ref(&exec.key_id))
            .await?
            .is_empty()
    {
        return Ok(());
    }
    Err(unauth(KEY_REVOKED))
}

async fn rotate_in(tx: &mut Tx<'_>, actor: String, id: String, secret_hex: String) -> Result<()> {
    let now = tx.now_ms();
    let previous = keys::signing_keys(&mut tx.conn).await?;
    keys::insert_signing_key(&mut tx.conn, &id, &secret_hex, now).await?;
    let mut retired = 0;
    if let Some(prev) = previous.first() {
        retired = keys::retire_signing_keys_before(&mut tx.conn, &prev.id, prev.created_at + 1, now).await?;
    }
    tx.audit(
        AuditDraft::new(actor, "signing_key.rotated")
            .subject(id)
            .details(serde_json::json!({ "retired": retired })),
    );
    Ok(())
}

async fn create_key_in(tx: &mut Tx<'_>, row: keys::KeyRow) -> Result<()> {
    let mut row = row;
    row.created_at = tx.now_ms();
    keys::insert(&mut tx.conn, &row).await?;
    let mut ev = AuditDraft::new(row.created_by.clone(), format!("key.created.{}", row.kind))
        .subject(row.id.clone())
        .scope(format!(
            "{}:{}/{}",
            row.kind,
            row.tenant.clone().unwrap_or_default(),
            row.env
        ))
        .details(
            serde_json::json!({ "name": row.name, "tools": serde_json::from_str::<serde_json::Value>(&row.tools)? }),
        );
    ev.tenant = row.tenant.clone();
    tx.audit(ev);
    Ok(())
}

async fn revoke_key_in(tx: &mut Tx<'_>, actor: String, id: String) -> Result<()> {
    let row = keys::by_id(&mut tx.conn, &id).await?.ok_or(Error::NotFound)?;
    let now_ms = tx.now_ms();
    if !keys::revoke(&mut tx.conn, &id, now_ms).await? {
        return Err(Error::InvalidTransition(format!("key {id} is already revoked")));
    }
    let mut ev = AuditDraft::new(actor.clone(), "key.revoked").subject(id.clone());
    ev.tenant = row.tenant.clone();
    tx.audit(ev);
    // The runs it minted end with it: their tokens stop, their open work is cancelled.
    let reason = format!("the service key {id} that minted it was revoked");
    for run_id in runs::live_of_key(&mut tx.conn, &id).await? {
        let tenant = row.tenant.clone().unwrap_or_default();
        super::runs::revoke_cascade(tx, &run_id, &tenant, &actor, &reason).await?;
    }
    Ok(())
}
