//! Approval receipts: what people approved, signed so an executor need not
//! trust the queue.
//!
//! A receipt is a JWS in compact form (RFC 7515), `alg: EdDSA` (Ed25519),
//! with the signing key's id in the header (`kid`). It is made with
//! `jsonwebtoken`; the keys are made with `ed25519-dalek` and published as a
//! JWKS (`OKP` / `Ed25519`). No format of our own: any JWT library verifies it.

use crate::error::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One approval in a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptApproval {
    pub user: String,
    /// RFC 3339.
    pub at: String,
    /// The approval was signed with a passkey.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passkey: bool,
}

/// The claims of a receipt: exactly what was approved, for which job, under
/// which policy, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptClaims {
    /// The server's public URL.
    pub iss: String,
    /// The job id.
    pub jti: String,
    /// The proposal id.
    pub sub: String,
    pub tenant: String,
    pub env: String,
    pub tool: String,
    /// The exact args; an executor acts on these and nothing else.
    pub args: Value,
    pub execution_key: String,
    pub approvals: Vec<ReceiptApproval>,
    pub auto_approved: bool,
    pub break_glass: bool,
    /// SHA-256 (hex) of the preview the reviewers saw, if any.
    pub preview_sha256: Option<String>,
    /// The executor's precondition for that preview, if it computed one.
    pub preview_state: Option<String>,
    /// SHA-256 (hex) of the policy file in force at approval.
    pub policy_sha256: String,
    /// Seconds since the epoch.
    pub iat: i64,
    /// The execute-by deadline, seconds since the epoch.
    pub exp: i64,
    /// For a tool performed on an upstream MCP server: the server (by its
    /// policy name) and the tool called there. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<ReceiptUpstream>,
}

/// The upstream MCP call a receipt approves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptUpstream {
    /// The `[upstreams.NAME]` of the policy.
    pub name: String,
    /// The tool's name on that server.
    pub tool: String,
}

/// A receipt signing key. The private half never leaves the server and never
/// appears in `Debug` output.
#[derive(Clone)]
pub struct ReceiptKey {
    pub id: String,
    /// PKCS#8 DER of the Ed25519 private key.
    private_pkcs8: Vec<u8>,
    /// The public key, base64url (the JWK's `x`).
    pub public_x: String,
}

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptKey")
            .field("id", &self.id)
            .field("public_x", &self.public_x)
            .finish_non_exhaustive()
    }
}

impl ReceiptKey {
    pub fn generate() -> Result<ReceiptKey> {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key
            .to_pkcs8_der()
            .map_err(|e| Error::internal(format!("encoding a receipt key: {e}")))?;
        Ok(ReceiptKey {
            id: crate::ids::new_id("rck"),
            private_pkcs8: der.as_bytes().to_vec(),
            public_x: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
        })
    }

    /// A key as stored: its id, the hex PKCS#8 private key, the public `x`.
    pub fn from_stored(id: &str, private_hex: &str, public_x: &str) -> Result<ReceiptKey> {
        let der = hex::decode(private_hex).map_err(|_| Error::internal("a receipt key is not hex"))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
            .map_err(|_| Error::internal("a receipt key does not decode"))?;
        if URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()) != public_x {
            return Err(Error::internal(
                "a receipt key's public half does not match its private half",
            ));
        }
        Ok(ReceiptKey {
            id: id.to_owned(),
            private_pkcs8: der,
            public_x: public_x.to_owned(),
        })
    }

    /// The private key as stored (hex PKCS#8).
    pub fn private_hex(&self) -> String {
        hex::encode(&self.private_pkcs8)
    }

    pub fn sign(&self, claims: &ReceiptClaims) -> Result<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.id.clone());
        let key = jsonwebtoken::EncodingKey::from_ed_der(&self.private_pkcs8);
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| Error::internal(format!("signing a receipt: {e}")))
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": self.public_x, "kid": self.id, "alg": "EdDSA", "use": "sig",
        })
    }
}

/// The execution key of an execute job: the same for every attempt, unique
/// across the deployment. An action with an idempotency key has one
/// execution key per idempotency scope (`tenant/env`) and key, so a replayed
/// proposal is the same action everywhere; one without (a read) is keyed by
/// its job.
pub fn execution_key(scope: Option<&str>, idempotency_key: Option<&str>, job_id: &str) -> String {
    match (scope, idempotency_key) {
        (Some(scope), Some(k)) => format!(
            "exk_{}",
            &crate::audit::hash_parts(&["countersign-execution-v1", scope, k])[..40]
        ),
        _ => format!("exk_{job_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ReceiptClaims {
        ReceiptClaims {
            iss: "http://127.0.0.1:3000".into(),
            jti: "job_1".into(),
            sub: "prp_1".into(),
            tenant: "acme".into(),
            env: "prod".into(),
            tool: "ticket.close".into(),
            args: serde_json::json!({"ticket_id": "T-1"}),
            execution_key: "exk_1".into(),
            approvals: vec![ReceiptApproval {
                user: "alice".into(),
                at: "2026-12-01T10:00:00Z".into(),
                passkey: false,
            }],
            auto_approved: false,
            break_glass: false,
            preview_sha256: None,
            preview_state: None,
            policy_sha256: "ab".into(),
            iat: 1_800_000_000,
            exp: 4_000_000_000,
            upstream: None,
        }
    }

    #[test]
    fn a_receipt_verifies_with_the_published_key_and_nothing_else() {
        let key = ReceiptKey::generate().unwrap();
        let token = key.sign(&claims()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.id.as_str()));
        let decoding = jsonwebtoken::DecodingKey::from_ed_components(&key.public_x).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_required_spec_claims(&["exp"]);
        let got = jsonwebtoken::decode::<ReceiptClaims>(&token, &decoding, &v).unwrap();
        assert_eq!(got.claims, claims());
        let other = ReceiptKey::generate().unwrap();
        let wrong = jsonwebtoken::DecodingKey::from_ed_components(&other.public_x).unwrap();
        let e = jsonwebtoken::decode::<ReceiptClaims>(&token, &wrong, &v).unwrap_err();
        assert_eq!(e.kind(), &jsonwebtoken::errors::ErrorKind::InvalidSignature);
    }

    #[test]
    fn a_stored_key_comes_back_whole_and_its_secret_is_not_in_debug() {
        let key = ReceiptKey::generate().unwrap();
        let back = ReceiptKey::from_stored(&key.id, &key.private_hex(), &key.public_x).unwrap();
        assert_eq!(back.public_x, key.public_x);
        assert!(!format!("{key:?}").contains(&key.private_hex()));
        let other = ReceiptKey::generate().unwrap();
        let e = ReceiptKey::from_stored(&key.id, &key.private_hex(), &other.public_x).unwrap_err();
        assert!(e.to_string().contains("does not match its private half"), "{e}");
    }

    #[test]
    fn execution_keys_differ_across_tenants_and_envs_and_repeat_for_one_action() {
        let a = execution_key(Some("acme/prod"), Some("k1"), "job_a");
        assert_eq!(a, execution_key(Some("acme/prod"), Some("k1"), "job_b"));
        assert_ne!(a, execution_key(Some("globex/prod"), Some("k1"), "job_a"));
        assert_ne!(a, execution_key(Some("acme/staging"), Some("k1"), "job_a"));
        assert_eq!(execution_key(Some("acme/prod"), None, "job_a"), "exk_job_a");
    }
}
