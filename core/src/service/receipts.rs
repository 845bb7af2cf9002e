//! Receipt keys as use-cases: the current signing key, rotation, and the
//! JWKS that executors verify receipts against. Receipts themselves are
//! signed at release (`release`).

use super::{Admin, Core};
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::receipts::ReceiptKey;
use crate::store::queries::keys;
use crate::store::Tx;
use serde_json::{json, Value};

/// What a release needs to sign a receipt.
#[derive(Debug, Clone)]
pub(super) struct Signer {
    pub key: ReceiptKey,
    /// The server's public URL (`iss`).
    pub issuer: String,
}

/// How often a running process looks for a key rotated by another process
/// (`countersign receipt-key rotate`, or another server): until it does, it
/// signs with the key it has.
pub const RECEIPT_KEY_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a retired key stays published: as long as any receipt it signed
/// can still be valid. A receipt expires at most the longest execute-by a
/// policy allows after it is signed, and a process may sign with a retired
/// key until it next refreshes (`RECEIPT_KEY_REFRESH`); an hour covers that
/// with room for a process whose refresh failed a few times.
const RETIRED_KEY_SERVED_MS: i64 = (crate::policy::MAX_DEADLINE_SECONDS + 3600) * 1000;

async fn rotate_in(tx: &mut Tx<'_>, actor: String, key: ReceiptKey) -> Result<u64> {
    let now = tx.now_ms();
    keys::insert_receipt_key(&mut tx.conn, &key.id, &key.private_hex(), &key.public_x, now).await?;
    let retired = keys::retire_receipt_keys(&mut tx.conn, &key.id, now, now + RETIRED_KEY_SERVED_MS).await?;
    tx.audit(
        AuditDraft::new(actor, "receipt_key.rotated")
            .subject(key.id.clone())
            .details(json!({ "retired": retired, "public_key": key.public_x })),
    );
    Ok(retired)
}

impl Core {
    /// Load the receipt keys, making the first on a new database.
    pub(super) async fn load_receipt_keys(&self) -> Result<()> {
        let mut rows = keys::receipt_keys(&mut self.store.reader().await?.conn(), self.now_ms()).await?;
        if !rows.iter().any(|r| r.retired_at.is_none()) {
            self.make_receipt_key(&Admin::system()).await?;
            rows = keys::receipt_keys(&mut self.store.reader().await?.conn(), self.now_ms()).await?;
        }
        // Newest first: the first not retired signs.
        let current = rows
            .iter()
            .find(|r| r.retired_at.is_none())
            .map(|r| ReceiptKey::from_stored(&r.id, &r.private_key, &r.public_key))
            .transpose()?;
        *self.receipt_key.write().map_err(super::poisoned)? = current;
        Ok(())
    }

    /// Make a new current receipt key. Receipts signed with the previous
    /// ones still verify: those keys stay in the JWKS until they could no
    /// longer have signed a receipt that is valid.
    pub async fn rotate_receipt_key(&self, by: &Admin) -> Result<String> {
        let id = self.make_receipt_key(by).await?;
        self.load_receipt_keys().await?;
        tracing::info!(key = %id, "receipt key rotated");
        Ok(id)
    }

    async fn make_receipt_key(&self, by: &Admin) -> Result<String> {
        let key = ReceiptKey::generate()?;
        let id = key.id.clone();
        let actor = by.actor().to_owned();
        self.store.write(move |tx| Box::pin(rotate_in(tx, actor, key))).await?;
        Ok(id)
    }

    /// The public receipt keys as a JWKS (`{"keys": [...]}`), read from the
    /// database so a key another process made is published at once.
    pub async fn jwks(&self) -> Result<Value> {
        let rows = keys::receipt_keys(&mut self.store.reader().await?.conn(), self.now_ms()).await?;
        let keys: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "kty": "OKP", "crv": "Ed25519", "x": r.public_key, "kid": r.id, "alg": "EdDSA", "use": "sig",
                })
            })
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// Pick up a key another process rotated to; the server calls this every
    /// `RECEIPT_KEY_REFRESH`.
    pub async fn refresh_receipt_keys(&self) -> Result<()> {
        let before = self
            .receipt_key
            .read()
            .map_err(super::poisoned)?
            .as_ref()
            .map(|k| k.id.clone());
        self.load_receipt_keys().await?;
        let after = self
            .receipt_key
            .read()
            .map_err(super::poisoned)?
            .as_ref()
            .map(|k| k.id.clone());
        if before != after {
            tracing::info!(key = ?after, "receipts are now signed with a key rotated elsewhere");
        }
        Ok(())
    }

    pub(super) fn receipt_signer(&self) -> Result<Signer> {
        let key = self
            .receipt_key
            .read()
            .map_err(super::poisoned)?
            .clone()
            .ok_or_else(|| Error::internal("no receipt key is loaded"))?;
        Ok(Signer {
            key,
            issuer: self.settings.public_url.trim_end_matches('/').to_owned(),
        })
    }
}
