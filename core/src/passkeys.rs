//! Passkey-signed decisions: the WebAuthn challenge of a decision is derived
//! from what is decided, so the authenticator's signature covers it.
//!
//! The ceremonies themselves are `webauthn-rs`'s (kept by the kanidm project,
//! audited, no cryptography of our own). It draws a random challenge; for a
//! decision we replace it, in the options sent to the browser and in the
//! state kept server side, with
//!
//! ```text
//! SHA-256("countersign decision v1" 0 nonce 0 proposal 0 content_hash 0 verdict)
//! ```
//!
//! where `nonce` is 32 fresh random bytes. The browser signs client data
//! holding that challenge, so an assertion made for one proposal, one version
//! of its content or one verdict verifies for nothing else, and whoever holds
//! the decision's stored evidence (nonce and assertion) can recompute it.

use crate::error::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The challenge a decision's assertion must sign.
pub fn decision_challenge(nonce: &[u8], proposal_id: &str, content_hash: &str, verdict: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        b"countersign decision v1".as_slice(),
        nonce,
        proposal_id.as_bytes(),
        content_hash.as_bytes(),
        verdict.as_bytes(),
    ] {
        h.update(part);
        h.update([0u8]);
    }
    h.finalize().into()
}

/// Put `challenge` in the request options (`publicKey.challenge`) and the
/// authentication state (`ast.challenge`) webauthn-rs made, in place of the
/// random one it drew. Fails, rather than guessing, if either is not shaped
/// as expected.
pub fn rebind(options: &mut Value, state: &mut Value, challenge: &[u8]) -> Result<()> {
    let encoded = Value::String(URL_SAFE_NO_PAD.encode(challenge));
    for (doc, outer) in [(options, "publicKey"), (state, "ast")] {
        match doc.get_mut(outer).and_then(|o| o.get_mut("challenge")) {
            Some(c @ Value::String(_)) => *c = encoded.clone(),
            _ => {
                return Err(Error::internal(format!(
                    "a passkey ceremony has no {outer}.challenge to bind"
                )))
            }
        }
    }
    Ok(())
}

/// The challenge (base64url) the browser's client data says it signed.
pub fn signed_challenge(assertion: &Value) -> Option<String> {
    let client_data = assertion.get("response")?.get("clientDataJSON")?.as_str()?;
    let bytes = URL_SAFE_NO_PAD.decode(client_data.trim_end_matches('=')).ok()?;
    let data: Value = serde_json::from_slice(&bytes).ok()?;
    Some(data.get("challenge")?.as_str()?.trim_end_matches('=').to_owned())
}

/// Whether a person-chosen passkey name is acceptable; the trimmed name.
pub fn passkey_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok("Passkey".into());
    }
    if name.chars().count() > 60 || name.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "a passkey's name has at most 60 characters and no control characters".into(),
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_challenge_changes_with_each_thing_decided() {
        let n = [7u8; 32];
        let base = decision_challenge(&n, "prp_1", "h1", "approve");
        assert_eq!(base, decision_challenge(&n, "prp_1", "h1", "approve"));
        assert_ne!(base, decision_challenge(&n, "prp_2", "h1", "approve"));
        assert_ne!(base, decision_challenge(&n, "prp_1", "h2", "approve"));
        assert_ne!(base, decision_challenge(&n, "prp_1", "h1", "reject"));
        assert_ne!(base, decision_challenge(&[8u8; 32], "prp_1", "h1", "approve"));
        // Fields are separated: moving a character across a boundary changes it.
        assert_ne!(
            decision_challenge(&n, "prp_1a", "h1", "approve"),
            decision_challenge(&n, "prp_1", "ah1", "approve")
        );
    }

    #[test]
    fn rebinding_replaces_both_challenges_and_refuses_other_shapes() {
        let mut options = json!({ "publicKey": { "challenge": "random", "rpId": "localhost" } });
        let mut state = json!({ "ast": { "challenge": "random", "policy": "required" } });
        rebind(&mut options, &mut state, &[1, 2, 3]).unwrap();
        assert_eq!(options["publicKey"]["challenge"], "AQID");
        assert_eq!(state["ast"]["challenge"], "AQID");
        assert_eq!(options["publicKey"]["rpId"], "localhost");
        let mut odd = json!({ "ast": { "challenge": [1, 2] } });
        assert!(rebind(&mut options, &mut odd, &[1]).is_err());
    }

    #[test]
    fn the_signed_challenge_is_read_from_the_client_data() {
        let client_data = URL_SAFE_NO_PAD.encode(br#"{"type":"webauthn.get","challenge":"AQID","origin":"x"}"#);
        let a = json!({ "response": { "clientDataJSON": client_data } });
        assert_eq!(signed_challenge(&a).as_deref(), Some("AQID"));
        assert_eq!(signed_challenge(&json!({})), None);
    }

    #[test]
    fn passkey_names_are_short_and_printable() {
        assert_eq!(passkey_name("  phone ").unwrap(), "phone");
        assert_eq!(passkey_name("").unwrap(), "Passkey");
        assert!(passkey_name(&"x".repeat(61)).is_err());
        assert!(passkey_name("a\u{7}b").is_err());
    }
}
