//! Passkey-signed decisions, on SQLite and PostgreSQL: a tool or route with
//! `require_passkey` cannot be decided with a session alone, and a ceremony
//! answers only the decision it was started for. (The ceremony with a real
//! authenticator is in end2end/tests/passkeys.spec.ts.)

mod common;
use common::*;
use countersign_core::lifecycle::Verdict;
use countersign_core::service::{DecideRequest, PasskeyProof};
use countersign_core::testing::TestDb;
use countersign_core::Error;
use serde_json::json;

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

countersign_core::store_tests!(
    a_require_passkey_tool_cannot_be_decided_with_the_session_alone,
    a_signature_that_answers_no_ceremony_of_this_person_is_refused,
    passkeys_are_off_when_the_public_url_is_an_ip_address,
);
