//! Credentials: run tokens (short-lived capabilities signed with a server
//! secret) and API keys (random, shown once, stored as SHA-256 hashes).
//!
//! A run token is `crt_<key id>.<claims>.<mac>`: the claims are base64url JSON,
//! the MAC is HMAC-SHA256 (RustCrypto `hmac`) over the key id and claims, and is
//! checked with `Mac::verify_slice`, which compares in constant time. The
//! algorithm is fixed here; nothing in the token chooses it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

type HmacSha256 = Hmac<Sha256>;

pub const RUN_TOKEN_PREFIX: &str = "crt_";
pub const SERVICE_KEY_PREFIX: &str = "csk_";
pub const EXECUTOR_KEY_PREFIX: &str = "cek_";

/// The two kinds of API key; never interchangeable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// One tenant + env; it can only mint runs.
    Service,
    /// One env and some tools; it can only claim and complete jobs.
    Executor,
}

stored_as_text!(KeyKind);

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Service => "service",
            KeyKind::Executor => "executor",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        [KeyKind::Service, KeyKind::Executor]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// How a key of this kind starts, so a key names its kind.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Service => SERVICE_KEY_PREFIX,
            KeyKind::Executor => EXECUTOR_KEY_PREFIX,
        }
    }

    /// The kind a bearer value claims by its prefix.
    pub fn of_key(key: &str) -> Option<KeyKind> {
        [KeyKind::Service, KeyKind::Executor]
            .into_iter()
            .find(|k| key.starts_with(k.prefix()))
    }
}

/// What a run token grants. Tenant and env come from here, never from a body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunClaims {
    pub run: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub tools: Vec<String>,
    /// Expiry, epoch milliseconds.
    pub exp: i64,
}

/// A signing secret and its id. The secret never leaves the server.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn generate() -> Self {
        let mut secret = vec![0u8; 32];
        rand::rngs::OsRng.fill(&mut secret[..]);
        Self {
            id: crate::ids::new_id("sgk"),
            secret,
        }
    }
}

/// The keys a server signs with (the newest) and accepts (all not retired).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    current: Option<SigningKey>,
    by_id: HashMap<String, SigningKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    UnknownKey(String),
    BadSignature,
    Expired,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "the run token is malformed",
            TokenError::UnknownKey(_) => "the run token was signed with an unknown or retired key",
            TokenError::BadSignature => "the run token's signature does not verify",
            TokenError::Expired => "the run token has expired",
        })
    }
}

impl Keyring {
    /// `keys` newest first; the first signs.
    pub fn new(keys: Vec<SigningKey>) -> Self {
        let current = keys.first().cloned();
        let by_id = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        Self { current, by_id }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    fn mac(key: &SigningKey, kid: &str, claims_b64: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&key.secret).expect("HMAC takes any key length");
        mac.update(b"countersign-run-token-v1.");
        mac.update(kid.as_bytes());
        mac.update(b".");
        mac.update(claims_b64.as_bytes());
        mac
    }

    pub fn sign(&self, claims: &RunClaims) -> Option<String> {
        let key = self.current.as_ref()?;
        let claims_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).ok()?);
        let tag = Self::mac(key, &key.id, &claims_b64).finalize().into_bytes();
        Some(format!(
            "{RUN_TOKEN_PREFIX}{}.{claims_b64}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// The key id a token claims to be signed with, without verifying anything.
    pub fn key_id_of(token: &str) -> Option<&str> {
        token.strip_prefix(RUN_TOKEN_PREFIX)?.split('.').next()
    }

    /// Verify signature then expiry; the claims are only trusted after both.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<RunClaims, TokenError> {
        let rest = token.strip_prefix(RUN_TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        let mut parts = rest.split('.');
        let (Some(kid), Some(claims_b64), Some(tag_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let key = self
            .by_id
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
        let tag = URL_SAFE_NO_PAD.decode(tag_b64).map_err(|_| TokenError::Malformed)?;
        Self::mac(key, kid, claims_b64)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let raw = URL_SAFE_NO_PAD.decode(claims_b64).map_err(|_| TokenError::Malformed)?;
        let claims: RunClaims = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// A new API key: `prefix` and 43 random alphanumerics (≈ 256 bits).
pub fn generate_key(prefix: &str) -> String {
    let body: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(43)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

/// Keys are long and random, so a fast hash is the right store: nothing to
/// brute-force, and lookups by hash stay O(1).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The signature header value of a webhook delivery: `t=<unix seconds>,v1=<hex
/// HMAC-SHA256 of "<t>.<body>">`. Receivers recompute it with the secret and
/// refuse old timestamps.
pub fn sign_webhook(secret: &str, unix_secs: i64, body: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={unix_secs},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Check a webhook signature header in constant time.
pub fn verify_webhook(secret: &str, header: &str, body: &str) -> bool {
    let Some(t) = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return false;
    };
    ct_eq(&sign_webhook(secret, t, body), header)
}

/// A random value for CSRF tokens and the like.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Constant-time equality for secrets compared in the clear (CSRF tokens).
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> RunClaims {
        RunClaims {
            run: "run_x".into(),
            tenant: "acme".into(),
            env: "prod".into(),
            route: "support/send".into(),
            tools: vec!["email.send".into()],
            exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_yields_its_claims() {
        let ring = Keyring::new(vec![SigningKey::generate()]);
        let t = ring.sign(&claims(2_000)).unwrap();
        assert!(t.starts_with("crt_sgk_"));
        assert_eq!(ring.verify(&t, 1_000).unwrap(), claims(2_000));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let ring = Keyring::new(vec![SigningKey::generate()]);
        let t = ring.sign(&claims(2_000)).unwrap();
        assert_eq!(ring.verify(&t, 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let ring = Keyring::new(vec![SigningKey::generate()]);
        let t = ring.sign(&claims(2_000)).unwrap();
        // Swap in claims for another tenant, keeping the old MAC.
        let mut other = claims(2_000);
        other.tenant = "globex".into();
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(ring.verify(&forged, 1_000), Err(TokenError::BadSignature));
        // Change the MAC's first character: any other one still decodes
        // (the last carries padding bits, and some changes there do not).
        let (head, mac) = t.rsplit_once('.').unwrap();
        let first = mac.chars().next().unwrap();
        let bad = format!("{head}.{}{}", if first == 'A' { 'B' } else { 'A' }, &mac[1..]);
        assert_eq!(ring.verify(&bad, 1_000), Err(TokenError::BadSignature));
        assert_eq!(ring.verify("crt_nope", 1_000), Err(TokenError::Malformed));
        assert_eq!(ring.verify("Bearer x", 1_000), Err(TokenError::Malformed));
    }

    #[test]
    fn a_token_from_another_secret_is_refused() {
        let a = Keyring::new(vec![SigningKey::generate()]);
        let b = Keyring::new(vec![SigningKey::generate()]);
        let t = a.sign(&claims(2_000)).unwrap();
        assert!(matches!(b.verify(&t, 1_000), Err(TokenError::UnknownKey(_))));
        // Same id, different secret: the MAC fails.
        let mut k = SigningKey::generate();
        k.id = Keyring::key_id_of(&t).unwrap().to_owned();
        assert_eq!(Keyring::new(vec![k]).verify(&t, 1_000), Err(TokenError::BadSignature));
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
        let old = SigningKey::generate();
        let t_old = Keyring::new(vec![old.clone()]).sign(&claims(2_000)).unwrap();
        let new = SigningKey::generate();
        let ring = Keyring::new(vec![new.clone(), old]);
        assert!(ring.verify(&t_old, 1_000).is_ok());
        let t_new = ring.sign(&claims(2_000)).unwrap();
        assert_eq!(Keyring::key_id_of(&t_new), Some(new.id.as_str()));
    }

    #[test]
    fn keys_are_random_prefixed_and_hashed() {
        let a = generate_key(SERVICE_KEY_PREFIX);
        let b = generate_key(SERVICE_KEY_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("csk_") && a.len() == 47);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(
            crate::secrets::secret_kind(&a).is_some(),
            "our own keys count as secrets"
        );
    }

    #[test]
    fn ct_eq_compares_exactly() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}
