//! Passkeys: a person registers and removes their own; a decision on a tool
//! or route with `require_passkey` is signed with one, in a ceremony bound to
//! the proposal, its content hash and the verdict (see [`crate::passkeys`]).
//!
//! The WebAuthn relying party is the server's public URL: its host is the
//! RP ID, so passkeys need a domain name (`localhost` will do for trials),
//! never a bare IP address, which browsers refuse.

use super::people::Person;
use super::Core;
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::lifecycle::Verdict;
use crate::passkeys::{decision_challenge, passkey_name, rebind};
use crate::store::queries::passkeys::{self as rows, CeremonyRow, PasskeyRow};
use crate::store::queries::proposals::{self, ProposalRow};
use crate::store::{Outcome, Tx};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

/// How long a started ceremony may be finished.
const CEREMONY_TTL_MS: i64 = 5 * 60 * 1000;
/// Passkeys one person may hold.
const MAX_PASSKEYS: usize = 10;
/// The largest credential a browser may send (JSON).
const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// The relying party for a public URL, or why there is none.
pub fn relying_party(public_url: &str) -> std::result::Result<Webauthn, String> {
    let url = Url::parse(public_url).map_err(|e| format!("the public URL does not parse: {e}"))?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(_) => {
            return Err(format!(
                "passkeys need the server's public URL to name a host, not an IP address ({public_url}): \
                 set --public-url to https://your.domain (or http://localhost:PORT to try it)"
            ))
        }
        None => return Err("the public URL has no host".into()),
    };
    WebauthnBuilder::new(&host, &url)
        .and_then(|b| b.rp_name("countersign").build())
        .map_err(|e| format!("passkeys cannot work with the public URL {public_url}: {e}"))
}

/// One of a person's passkeys, as their account page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyInfo {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

/// A ceremony started: its id, and the options for the browser's
/// `navigator.credentials` (JSON, as `PublicKeyCredential.parse…FromJSON`
/// reads them).
#[derive(Debug, Clone)]
pub struct PasskeyStart {
    pub ceremony: String,
    pub options: Value,
}

/// A decision's passkey signature as the browser sent it: the ceremony it
/// answers and the credential (`PublicKeyCredential.toJSON()`, as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyProof {
    pub ceremony: String,
    pub credential: String,
}

/// A verified passkey signature of a decision: the passkey, and the evidence
/// kept with the decision (the nonce of the bound challenge and the
/// assertion), which its public key verifies again.
#[derive(Debug, Clone)]
pub(super) struct Signed {
    pub passkey_id: String,
    pub evidence: String,
}

/// A stable WebAuthn user handle for a person, revealing nothing.
fn user_handle(user_id: &str) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("countersign user handle\0{user_id}"));
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(b)
}

fn parse_passkey(row: &PasskeyRow) -> Result<Passkey> {
    serde_json::from_str(&row.passkey).map_err(|e| Error::internal(format!("a stored passkey does not parse: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::internal(format!("encoding a passkey ceremony: {e}")))
}

pub(super) fn bounded_credential(credential: &str) -> Result<()> {
    if credential.len() > MAX_CREDENTIAL_BYTES {
        return Err(Error::BadRequest("that passkey credential is too large".into()));
    }
    Ok(())
}

/// Check a decision's passkey signature inside the decision's transaction:
/// the ceremony (taken, so it is used at most once) must be this person's,
/// for this proposal, this content and this verdict, unexpired, and the
/// assertion must verify against one of their passkeys. `Err(why)` is a
/// refusal to record.
pub(super) async fn verify_decision(
    tx: &mut Tx<'_>,
    webauthn: &Webauthn,
    person: &Person,
    p: &ProposalRow,
    verdict: Verdict,
    proof: &PasskeyProof,
) -> Result<std::result::Result<Signed, String>> {
    let again = "sign again with your passkey";
    let Some(c) = rows::take_ceremony(&mut tx.conn, &proof.ceremony, &person.id).await? else {
        return Ok(Err(format!(
            "That passkey signature is unknown or used already: {again}"
        )));
    };
    if c.purpose != "decide" {
        return Ok(Err(format!("That passkey ceremony is not a decision's: {again}")));
    }
    if c.expires_at <= tx.now_ms() {
        return Ok(Err(format!("That passkey signature is too old: {again}")));
    }
    if c.proposal_id.as_deref() != Some(p.id.as_str())
        || c.verdict.as_deref() != Some(verdict.as_str())
        || c.content_hash.as_deref() != Some(p.content_hash.as_str())
    {
        return Ok(Err(
            "That passkey signature was made for another decision: it signs one proposal, as shown, and one verdict"
                .into(),
        ));
    }
    let kept: Value = serde_json::from_str(&c.state)?;
    let state: PasskeyAuthentication = serde_json::from_value(kept["state"].clone())
        .map_err(|e| Error::internal(format!("a passkey ceremony's state does not parse: {e}")))?;
    let Ok(credential) = serde_json::from_str::<PublicKeyCredential>(&proof.credential) else {
        return Ok(Err(format!("That is not a passkey assertion: {again}")));
    };
    let result = match webauthn.finish_passkey_authentication(&credential, &state) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("The passkey signature does not verify ({e}): {again}"))),
    };
    let mine = rows::of_user(&mut tx.conn, &person.id).await?;
    let mut found = None;
    for row in mine {
        let mut key = parse_passkey(&row)?;
        if key.cred_id() == result.cred_id() {
            key.update_credential(&result);
            found = Some((row, key));
            break;
        }
    }
    let Some((row, key)) = found else {
        return Ok(Err("That passkey is not one of yours (was it removed?)".into()));
    };
    let now = tx.now_ms();
    rows::touch(&mut tx.conn, &row.id, &to_json(&key)?.to_string(), now).await?;
    let evidence = json!({
        "nonce": kept["nonce"],
        "assertion": serde_json::from_str::<Value>(&proof.credential)?,
    });
    Ok(Ok(Signed {
        passkey_id: row.id,
        evidence: evidence.to_string(),
    }))
}

async fn insert_ceremony_in(tx: &mut Tx<'_>, row: CeremonyRow) -> Result<()> {
    let now = tx.now_ms();
    rows::forget_expired(&mut tx.conn, now).await?;
    rows::insert_ceremony(&mut tx.conn, &row).await
}

#[derive(Clone)]
struct Registering {
    person: Person,
    ceremony: String,
    name: String,
    credential: String,
    webauthn: std::sync::Arc<Webauthn>,
}

async fn register_in(tx: &mut Tx<'_>, r: Registering) -> Result<Outcome<PasskeyInfo>> {
    let refuse = |why: &str| Ok(Outcome::Refused(Error::BadRequest(why.to_owned())));
    let Some(c) = rows::take_ceremony(&mut tx.conn, &r.ceremony, &r.person.id).await? else {
        return refuse("that registration is unknown or finished already: start again");
    };
    if c.purpose != "register" || c.expires_at <= tx.now_ms() {
        return refuse("that registration is too old: start again");
    }
    let state: PasskeyRegistration = serde_json::from_str(&c.state)
        .map_err(|e| Error::internal(format!("a passkey registration's state does not parse: {e}")))?;
    let Ok(credential) = serde_json::from_str::<RegisterPublicKeyCredential>(&r.credential) else {
        return refuse("that is not a passkey registration");
    };
    let key = match r.webauthn.finish_passkey_registration(&credential, &state) {
        Ok(k) => k,
        Err(e) => {
            return Ok(Outcome::Refused(Error::BadRequest(format!(
                "the passkey was not accepted: {e}"
            ))))
        }
    };
    let credential_id = URL_SAFE_NO_PAD.encode(key.cred_id().as_slice());
    if rows::credential_taken(&mut tx.conn, &credential_id).await? {
        return refuse("that passkey is registered already");
    }
    if rows::of_user(&mut tx.conn, &r.person.id).await?.len() >= MAX_PASSKEYS {
        return Ok(Outcome::Refused(Error::BadRequest(format!(
            "you have {MAX_PASSKEYS} passkeys already: remove one first"
        ))));
    }
    let now = tx.now_ms();
    let row = PasskeyRow {
        id: new_id("psk"),
        user_id: r.person.id.clone(),
        name: r.name,
        credential_id,
        passkey: to_json(&key)?.to_string(),
        created_at: now,
        last_used_at: None,
    };
    rows::insert(&mut tx.conn, &row).await?;
    tx.audit(
        AuditDraft::new(r.person.actor(), "passkey.added")
            .subject(row.id.clone())
            .scope("session")
            .details(json!({ "name": row.name })),
    );
    Ok(Outcome::Done(PasskeyInfo {
        id: row.id,
        name: row.name,
        created_at_ms: now,
        last_used_at_ms: None,
    }))
}

async fn remove_in(tx: &mut Tx<'_>, person: Person, id: String) -> Result<Outcome<()>> {
    if !rows::remove(&mut tx.conn, &person.id, &id).await? {
        return Ok(Outcome::Refused(Error::NotFound));
    }
    tx.audit(
        AuditDraft::new(person.actor(), "passkey.removed")
            .subject(id)
            .scope("session"),
    );
    Ok(Outcome::Done(()))
}

impl Core {
    /// The relying party, or why passkeys cannot be used on this server.
    pub(super) fn webauthn(&self) -> Result<std::sync::Arc<Webauthn>> {
        self.webauthn.clone().map_err(|why| Error::Unprocessable {
            code: "passkeys_off",
            message: format!("passkeys are off on this server: {why}"),
        })
    }

    /// Why passkeys cannot be used on this server, if they cannot.
    pub fn passkeys_off(&self) -> Option<String> {
        self.webauthn.as_ref().err().cloned()
    }

    /// The person's own passkeys, oldest first.
    pub async fn passkeys_of(&self, person: &Person) -> Result<Vec<PasskeyInfo>> {
        let rows = rows::of_user(&mut self.store.reader().await?.conn(), &person.id).await?;
        Ok(rows
            .into_iter()
            .map(|r| PasskeyInfo {
                id: r.id,
                name: r.name,
                created_at_ms: r.created_at,
                last_used_at_ms: r.last_used_at,
            })
            .collect())
    }

    /// Start registering a passkey for the person.
    pub async fn start_passkey_registration(&self, person: &Person) -> Result<PasskeyStart> {
        let webauthn = self.webauthn()?;
        let mut exclude = Vec::new();
        for row in rows::of_user(&mut self.store.reader().await?.conn(), &person.id).await? {
            exclude.push(parse_passkey(&row)?.cred_id().clone());
        }
        let (options, state) = webauthn
            .start_passkey_registration(
                user_handle(&person.id),
                &person.username,
                &person.username,
                Some(exclude),
            )
            .map_err(|e| Error::internal(format!("starting a passkey registration: {e}")))?;
        let row = CeremonyRow {
            id: new_id("pkc"),
            user_id: person.id.clone(),
            purpose: "register".into(),
            proposal_id: None,
            verdict: None,
            content_hash: None,
            state: to_json(&state)?.to_string(),
            expires_at: self.now_ms() + CEREMONY_TTL_MS,
        };
        let ceremony = row.id.clone();
        self.store
            .write(move |tx| Box::pin(insert_ceremony_in(tx, row)))
            .await?;
        Ok(PasskeyStart {
            ceremony,
            options: to_json(&options)?,
        })
    }

    /// Finish registering: verify what the browser made, keep the passkey.
    pub async fn finish_passkey_registration(
        &self,
        person: &Person,
        ceremony: &str,
        name: &str,
        credential: &str,
    ) -> Result<PasskeyInfo> {
        bounded_credential(credential)?;
        let r = Registering {
            person: person.clone(),
            ceremony: ceremony.to_owned(),
            name: passkey_name(name)?,
            credential: credential.to_owned(),
            webauthn: self.webauthn()?,
        };
        self.store.write_or_refuse(move |tx| Box::pin(register_in(tx, r))).await
    }

    /// Remove one of the person's own passkeys.
    pub async fn remove_passkey(&self, person: &Person, id: &str) -> Result<()> {
        let (person, id) = (person.clone(), id.to_owned());
        self.store
            .write_or_refuse(move |tx| Box::pin(remove_in(tx, person, id)))
            .await
    }

    /// Start signing one decision with a passkey: the challenge is bound to
    /// the proposal, the content hash the person was shown and the verdict.
    pub async fn start_passkey_decision(
        &self,
        person: &Person,
        proposal_id: &str,
        verdict: Verdict,
        content_hash: &str,
    ) -> Result<PasskeyStart> {
        let webauthn = self.webauthn()?;
        let mut r = self.store.reader().await?;
        let p = proposals::get(&mut r.conn(), proposal_id)
            .await?
            .filter(|p| person.sees_tenant(&p.tenant) && person.roles.reviewer)
            .ok_or(Error::NotFound)?;
        if p.content_hash != content_hash {
            return Err(Error::Forbidden(
                "What you were shown is not what would run: reload the page".into(),
            ));
        }
        let mut keys = Vec::new();
        for row in rows::of_user(&mut r.conn(), &person.id).await? {
            keys.push(parse_passkey(&row)?);
        }
        drop(r);
        if keys.is_empty() {
            return Err(Error::Forbidden(
                "You have no passkey yet: add one on your account page (/account)".into(),
            ));
        }
        let (options, state) = webauthn
            .start_passkey_authentication(&keys)
            .map_err(|e| Error::internal(format!("starting a passkey signature: {e}")))?;
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let challenge = decision_challenge(&nonce, &p.id, &p.content_hash, verdict.as_str());
        let mut options = to_json(&options)?;
        let mut state = to_json(&state)?;
        rebind(&mut options, &mut state, &challenge)?;
        let row = CeremonyRow {
            id: new_id("pkc"),
            user_id: person.id.clone(),
            purpose: "decide".into(),
            proposal_id: Some(p.id.clone()),
            verdict: Some(verdict.as_str().to_owned()),
            content_hash: Some(p.content_hash.clone()),
            state: json!({ "nonce": URL_SAFE_NO_PAD.encode(nonce), "state": state }).to_string(),
            expires_at: self.now_ms() + CEREMONY_TTL_MS,
        };
        let ceremony = row.id.clone();
        self.store
            .write(move |tx| Box::pin(insert_ceremony_in(tx, row)))
            .await?;
        Ok(PasskeyStart { ceremony, options })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_address_cannot_be_a_relying_party_and_a_domain_can() {
        assert!(relying_party("http://127.0.0.1:3000")
            .unwrap_err()
            .contains("IP address"));
        assert!(relying_party("http://localhost:3000").is_ok());
        assert!(relying_party("https://countersign.example.com").is_ok());
    }

    #[test]
    fn user_handles_are_stable_and_distinct() {
        assert_eq!(user_handle("usr_1"), user_handle("usr_1"));
        assert_ne!(user_handle("usr_1"), user_handle("usr_2"));
    }
}
