//! Passkey-signed decisions, on SQLite and PostgreSQL: a tool or route with
//! `require_passkey` cannot be decided with a session alone, and a ceremony
//! answers only the decision it was started for. A small software
//! authenticator (P-256, "none" attestation) plays the browser's part here;
//! end2end/tests/passkeys.spec.ts does the same with Chromium's.

mod common;
use common::*;
use countersign_core::lifecycle::Verdict;
use countersign_core::service::{DecideRequest, PasskeyProof};
use countersign_core::testing::TestDb;
use countersign_core::Error;
use serde_json::{json, Value};

const ORIGIN: &str = "http://localhost:3000";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// A CBOR byte string's head (lengths up to 65535).
fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes.len() {
        n if n < 24 => out.push(0x40 | n as u8),
        n if n < 256 => out.extend([0x58, n as u8]),
        n => out.extend([0x59, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(bytes);
}

/// A software passkey: one P-256 key, one credential id, a counter.
struct SoftPasskey {
    key: p256::ecdsa::SigningKey,
    id: Vec<u8>,
    counter: u32,
}

impl SoftPasskey {
    fn new(seed: u8) -> SoftPasskey {
        SoftPasskey {
            key: p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap(),
            id: vec![seed; 16],
            counter: 0,
        }
    }

    fn client_data(kind: &str, options: &Value) -> Vec<u8> {
        let challenge = options["publicKey"]["challenge"].as_str().unwrap();
        json!({ "type": kind, "challenge": challenge, "origin": ORIGIN, "crossOrigin": false })
            .to_string()
            .into_bytes()
    }

    /// `navigator.credentials.create()`, as `toJSON()` would answer it.
    fn register(&self, options: &Value) -> String {
        let rp_id = options["publicKey"]["rp"]["id"].as_str().unwrap();
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21];
        cbor_bytes(&mut cose, point.x().unwrap());
        cose.push(0x22);
        cbor_bytes(&mut cose, point.y().unwrap());
        let mut auth = sha256(rp_id.as_bytes());
        auth.push(0x45); // user present, user verified, attested credential data
        auth.extend(0u32.to_be_bytes());
        auth.extend([0u8; 16]); // AAGUID
        auth.extend((self.id.len() as u16).to_be_bytes());
        auth.extend(&self.id);
        auth.extend(cose);
        let mut att = vec![0xa3, 0x63];
        att.extend(b"fmt");
        att.push(0x64);
        att.extend(b"none");
        att.push(0x67);
        att.extend(b"attStmt");
        att.push(0xa0);
        att.push(0x68);
        att.extend(b"authData");
        cbor_bytes(&mut att, &auth);
        json!({
            "id": b64(&self.id), "rawId": b64(&self.id), "type": "public-key",
            "response": {
                "attestationObject": b64(&att),
                "clientDataJSON": b64(&Self::client_data("webauthn.create", options)),
            },
            "clientExtensionResults": {},
        })
        .to_string()
    }

    /// `navigator.credentials.get()`: sign the options' challenge.
    fn sign(&mut self, options: &Value) -> String {
        use p256::ecdsa::signature::Signer;
        let rp_id = options["publicKey"]["rpId"].as_str().unwrap();
        self.counter += 1;
        let mut auth = sha256(rp_id.as_bytes());
        auth.push(0x05); // user present, user verified
        auth.extend(self.counter.to_be_bytes());
        let client_data = Self::client_data("webauthn.get", options);
        let mut signed = auth.clone();
        signed.extend(sha256(&client_data));
        let sig: p256::ecdsa::Signature = self.key.sign(&signed);
        json!({
            "id": b64(&self.id), "rawId": b64(&self.id), "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth),
                "clientDataJSON": b64(&client_data),
                "signature": b64(sig.to_der().as_bytes()),
                "userHandle": null,
            },
            "clientExtensionResults": {},
        })
        .to_string()
    }
}

/// The example policy's passkey route, with the server's public URL a host
/// name (passkeys need one; an IP address turns them off).
async fn spawn_passkeys(db: &TestDb) -> TestApp {
    spawn_with(db, example_policy(), |c| {
        c.public_url = Some("http://localhost:3000".into())
    })
    .await
}

async fn propose_email_change(t: &TestApp, key: &str) -> (String, String) {
    let (_, token) = t.run("acme", "prod", "support/accounts", None).await;
    let body = json!({
        "tool": "customer.email.change",
        "args": { "customer_id": "C-42", "email": "new@example.com" },
        "idempotency_key": key,
        "reason": "The customer asked by phone",
    });
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let hash = t.inspect().proposal(&id).await.unwrap().unwrap().content_hash;
    (id, hash)
}

fn decide(id: &str, hash: &str, verdict: Verdict, passkey: Option<PasskeyProof>) -> DecideRequest {
    DecideRequest {
        proposal_id: id.into(),
        verdict,
        comment: if verdict == Verdict::Reject {
            "no".into()
        } else {
            String::new()
        },
        content_hash: hash.into(),
        view_ms: Some(6000),
        passkey,
    }
}

async fn a_require_passkey_tool_cannot_be_decided_with_the_session_alone(db: &TestDb) {
    let t = spawn_passkeys(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose_email_change(&t, "pk-1").await;

    // The page says why, and where to add a passkey, instead of offering Approve.
    let review = t.core().review_for(&alice, &id).await.unwrap();
    assert!(review.requires_passkey);
    let why = review.why_not.expect("no approve without a passkey");
    assert!(why.contains("/account"), "{why}");

    // A forged decision without a signature is refused, for either verdict,
    // and the refusal is audited.
    for verdict in [Verdict::Approve, Verdict::Reject] {
        match t.core().decide(&alice, decide(&id, &hash, verdict, None)).await {
            Err(Error::Forbidden(m)) => assert!(m.contains("passkey"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!((p.status.to_string(), p.approvals), ("pending".to_owned(), 0));

    // Without a registered passkey no ceremony starts.
    match t
        .core()
        .start_passkey_decision(&alice, &id, Verdict::Approve, &hash)
        .await
    {
        Err(Error::Forbidden(m)) => assert!(m.contains("no passkey"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn a_signature_that_answers_no_ceremony_of_this_person_is_refused(db: &TestDb) {
    let t = spawn_passkeys(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (id, hash) = propose_email_change(&t, "pk-2").await;
    let forged = PasskeyProof {
        ceremony: "pkc_made_up".into(),
        credential: json!({ "id": "x", "rawId": "eA", "type": "public-key",
            "response": { "authenticatorData": "AA", "clientDataJSON": "AA", "signature": "AA" } })
        .to_string(),
    };
    match t
        .core()
        .decide(&alice, decide(&id, &hash, Verdict::Approve, Some(forged)))
        .await
    {
        Err(Error::Forbidden(m)) => assert!(m.contains("unknown or used already"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(t.inspect().proposal(&id).await.unwrap().unwrap().approvals, 0);
}

async fn passkeys_are_off_when_the_public_url_is_an_ip_address(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    assert!(t.core().passkeys_off().unwrap().contains("IP address"));
    let (id, _) = propose_email_change(&t, "pk-3").await;
    let why = t.core().review_for(&alice, &id).await.unwrap().why_not.unwrap();
    assert!(why.contains("passkeys are off"), "{why}");
    assert!(t.core().start_passkey_registration(&alice).await.is_err());
}

/// Start a decision's ceremony and sign it with `key`.
async fn signed(
    t: &TestApp,
    who: &countersign_core::service::Person,
    key: &mut SoftPasskey,
    id: &str,
    hash: &str,
    verdict: Verdict,
) -> PasskeyProof {
    let start = t.core().start_passkey_decision(who, id, verdict, hash).await.unwrap();
    PasskeyProof {
        credential: key.sign(&start.options),
        ceremony: start.ceremony,
    }
}

async fn a_passkey_signs_exactly_one_decision_and_the_record_says_so(db: &TestDb) {
    let t = spawn_passkeys(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let mallory = t.person("mallory", &["reviewer"], &["acme"]).await;
    let mut key = SoftPasskey::new(7);
    let start = t.core().start_passkey_registration(&alice).await.unwrap();
    let added = t
        .core()
        .finish_passkey_registration(&alice, &start.ceremony, " laptop ", &key.register(&start.options))
        .await
        .unwrap();
    assert_eq!(added.name, "laptop");
    assert_eq!(t.core().passkeys_of(&alice).await.unwrap().len(), 1);
    // The same registration cannot be finished twice.
    assert!(t
        .core()
        .finish_passkey_registration(&alice, &start.ceremony, "again", &key.register(&start.options))
        .await
        .is_err());

    let (p1, h1) = propose_email_change(&t, "pk-s1").await;
    let (p2, h2) = propose_email_change(&t, "pk-s2").await;
    let refused = |r: Result<countersign_core::lifecycle::Status, Error>, needle: &str| match r {
        Err(Error::Forbidden(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected a refusal saying {needle:?}, got {other:?}"),
    };

    // Signed for p1's approval, sent as its rejection: refused.
    let proof = signed(&t, &alice, &mut key, &p1, &h1, Verdict::Approve).await;
    refused(
        t.core()
            .decide(&alice, decide(&p1, &h1, Verdict::Reject, Some(proof)))
            .await,
        "made for another decision",
    );
    // Signed for p1, sent for p2 (with p2's own content hash): refused.
    let proof = signed(&t, &alice, &mut key, &p1, &h1, Verdict::Approve).await;
    refused(
        t.core()
            .decide(&alice, decide(&p2, &h2, Verdict::Approve, Some(proof)))
            .await,
        "made for another decision",
    );
    // Alice's signature, sent by another reviewer: not their ceremony.
    let proof = signed(&t, &alice, &mut key, &p1, &h1, Verdict::Approve).await;
    refused(
        t.core()
            .decide(&mallory, decide(&p1, &h1, Verdict::Approve, Some(proof)))
            .await,
        "unknown or used already",
    );
    // A signature by a key that is not hers: refused.
    let mut stranger = SoftPasskey::new(9);
    let proof = signed(&t, &alice, &mut stranger, &p1, &h1, Verdict::Approve).await;
    refused(
        t.core()
            .decide(&alice, decide(&p1, &h1, Verdict::Approve, Some(proof)))
            .await,
        "passkey",
    );
    assert_eq!(t.inspect().proposal(&p1).await.unwrap().unwrap().approvals, 0);

    // The real thing: approved, recorded with the passkey and its evidence.
    let proof = signed(&t, &alice, &mut key, &p1, &h1, Verdict::Approve).await;
    t.core()
        .decide(&alice, decide(&p1, &h1, Verdict::Approve, Some(proof.clone())))
        .await
        .unwrap();
    let d = &t.inspect().decisions(&p1).await.unwrap()[0];
    assert_eq!(d.passkey_id.as_deref(), Some(added.id.as_str()));
    // The evidence lets anyone recompute the challenge the passkey signed.
    let evidence: Value = serde_json::from_str(d.passkey_assertion.as_deref().unwrap()).unwrap();
    let nonce = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(evidence["nonce"].as_str().unwrap())
            .unwrap()
    };
    let expected = countersign_core::passkeys::decision_challenge(&nonce, &p1, &h1, "approve");
    assert_eq!(
        countersign_core::passkeys::signed_challenge(&evidence["assertion"]).unwrap(),
        b64(&expected)
    );
    // The audit event names the passkey; the receipt says passkey-signed.
    let events = t.inspect().audit_events().await.unwrap();
    let approved = events
        .iter()
        .find(|e| {
            e.action == "decision.approve" && e.subject.as_deref() == Some(p1.as_str()) && e.result_status != "refused"
        })
        .expect("the approval is audited");
    let details: Value = serde_json::from_str(&approved.details).unwrap();
    assert_eq!(details["passkey"], json!(added.id));
    let job = t.inspect().job_of(&p1).await.unwrap().expect("released");
    let receipt = job.receipt.expect("a receipt");
    let claims: Value = {
        use base64::Engine;
        let payload = receipt.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["approvals"][0]["passkey"], json!(true));
    // The used signature once more, now on p2: its ceremony is gone.
    refused(
        t.core()
            .decide(&alice, decide(&p2, &h2, Verdict::Approve, Some(proof)))
            .await,
        "",
    );
    assert_eq!(t.inspect().proposal(&p2).await.unwrap().unwrap().approvals, 0);

    // Removed, the passkey signs nothing more.
    t.core().remove_passkey(&alice, &added.id).await.unwrap();
    assert!(t
        .core()
        .start_passkey_decision(&alice, &p2, Verdict::Approve, &h2)
        .await
        .is_err());
    assert!(matches!(
        t.core().remove_passkey(&mallory, &added.id).await,
        Err(Error::NotFound)
    ));
}

countersign_core::store_tests!(
    a_passkey_signs_exactly_one_decision_and_the_record_says_so,
    a_require_passkey_tool_cannot_be_decided_with_the_session_alone,
    a_signature_that_answers_no_ceremony_of_this_person_is_refused,
    passkeys_are_off_when_the_public_url_is_an_ip_address,
);
