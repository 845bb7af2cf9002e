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

/// How long a retired key stays published: as long as any receipt it signed
/// can still be valid (the longest execute-by any policy allows).
const RETIRED_KEY_SERVED_MS: i64 = 30 * 24 * 3600 * 1000;

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

    /// Pick up a key another process rotated to (the sweeper calls this).
    pub async fn refresh_receipt_keys(&self) -> Result<()> {
        self.load_receipt_keys().await
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
