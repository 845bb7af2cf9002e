//! The error table of docs/api.md, row by row, on SQLite and PostgreSQL.

mod common;
use common::*;
use countersign_core::service::Admin;
use countersign_core::testing::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn malformed_json_is_bad_request(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let res = t
        .http
        .post(t.url("/api/v1/proposals"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"tool\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
}

async fn unknown_fields_and_wrong_types_are_bad_requests_that_name_the_field(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let mut body = close_ticket("k1");
    body["admin"] = json!(true);
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("admin"),
        "{}",
        r.body
    );

    let r = t.post("/api/v1/check", &token, json!({ "tool": 5 })).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("tool"),
        "{}",
        r.body
    );

    let res = t
        .http
        .post(t.url("/api/v1/check"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{\"tool\":\"kb.search\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

async fn tenant_or_env_in_a_body_is_refused(db: &TestDb) {
    let t = spawn(db).await;
    let key = t.service_key("acme", "staging").await;
    for extra in [json!({"tenant": "globex"}), json!({"env": "prod"})] {
        let mut body = json!({ "route": "support/send" });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = t.post("/api/v1/runs", &key, body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{}",
            r.body
        );
    }
    let (_, token) = t.run("acme", "staging", "support/send", None).await;
    let mut body = close_ticket("k1");
    body["tenant"] = json!("globex");
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

async fn credentials_missing_malformed_tampered_or_expired_are_unauthenticated(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let check = json!({ "tool": "kb.search" });
    let r = t.send(Method::POST, "/api/v1/check", None, Some(check.clone())).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    for bad in ["garbage", "csk_nottherealkey", "crt_x.y.z", "cek_"] {
        let r = t.post("/api/v1/check", bad, check.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "unauthenticated"),
            "{bad}"
        );
    }
    // Tamper: flip one character in the claims.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let c = parts[1].pop().unwrap();
    parts[1].push(if c == 'A' { 'B' } else { 'A' });
    let r = t.post("/api/v1/check", &parts.join("."), check.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Works now, not after its TTL.
    assert_eq!(
        t.post("/api/v1/check", &token, check.clone()).await.status,
        StatusCode::OK
    );
    t.advance(601);
    let r = t.post("/api/v1/check", &token, check).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("expired"),
        "{}",
        r.body
    );
}

async fn a_revoked_key_is_unauthenticated(db: &TestDb) {
    let t = spawn(db).await;
    let key = t.service_key("acme", "prod").await;
    let id = t.core().list_keys().await.unwrap()[0].id.clone();
    t.core().revoke_key(&Admin::cli(), &id).await.unwrap();
    let r = t.post("/api/v1/runs", &key, json!({ "route": "support/send" })).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn each_credential_does_only_its_own_job(db: &TestDb) {
    let t = spawn(db).await;
    let svc = t.service_key("acme", "prod").await;
    let exec = t.executor_key("prod", &["ticket.close"]).await;
    let (_, run) = t.run("acme", "prod", "support/send", None).await;
    // A run token cannot mint or claim; an executor key cannot mint or propose;
    // a service key cannot propose or claim.
    let cases = [
        (&run, "/api/v1/runs", json!({ "route": "support/send" })),
        (&run, "/api/v1/jobs/claim", json!({})),
        (&exec, "/api/v1/runs", json!({ "route": "support/send" })),
        (&exec, "/api/v1/proposals", close_ticket("k")),
        (&exec, "/api/v1/check", json!({ "tool": "kb.search" })),
        (&svc, "/api/v1/proposals", close_ticket("k")),
        (&svc, "/api/v1/jobs/claim", json!({})),
    ];
    for (cred, path, body) in cases {
        let r = t.post(path, cred, body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}: {}",
            r.body
        );
    }
}

async fn denied_and_not_allowed_tools_are_403_with_their_codes(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t.post("/api/v1/check", &token, json!({ "tool": "db.write" })).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "tool_denied"));
    let r = t.post("/api/v1/check", &token, json!({ "tool": "admin.grant" })).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "tool_not_allowed"));
    assert_eq!(r.body["error"]["details"]["tool"], "admin.grant");
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            json!({ "tool": "db.write", "args": { "table": "users", "statement": "drop" }, "idempotency_key": "x" }),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "tool_denied"));
}

async fn another_tenants_proposal_is_not_found(db: &TestDb) {
    let t = spawn(db).await;
    let (_, a) = t.run("acme", "prod", "support/send", None).await;
    let (_, b) = t.run("globex", "prod", "support/send", None).await;
    let (_, a2) = t.run("acme", "prod", "support/send", None).await;
    let p = t.post("/api/v1/proposals", &a, close_ticket("k1")).await;
    let id = p.body["id"].as_str().unwrap();
    for other in [&b, &a2] {
        let r = t.get(&format!("/api/v1/proposals/{id}"), other).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
        let r = t
            .get(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=0"), other)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = t
            .post(&format!("/api/v1/proposals/{id}/cancel"), other, json!({}))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(
        t.get(&format!("/api/v1/proposals/{id}"), &a).await.status,
        StatusCode::OK
    );
    assert_eq!(
        t.get("/api/v1/proposals/prp_nope", &a).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn idempotency_conflict_is_409(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    assert_eq!(
        t.post("/api/v1/proposals", &token, close_ticket("same")).await.status,
        StatusCode::CREATED
    );
    let mut other = close_ticket("same");
    other["args"]["ticket_id"] = json!("T-99");
    let r = t.post("/api/v1/proposals", &token, other).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "idempotency_conflict"));
    let r = t.post("/api/v1/proposals", &token, refund("same")).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "idempotency_conflict"));
}

async fn invalid_transition_is_409(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let p = t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    let id = p.body["id"].as_str().unwrap();
    let cancel = format!("/api/v1/proposals/{id}/cancel");
    assert_eq!(t.post(&cancel, &token, json!({})).await.body["status"], "cancelled");
    let r = t.post(&cancel, &token, json!({})).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_transition"));
}

async fn oversized_bodies_are_413(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let mut body = close_ticket("k");
    body["preview"]["after"] = json!("x".repeat(70 * 1024));
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

async fn invalid_args_name_each_field(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            json!({ "tool": "refund.create", "args": { "customer_id": "42", "amount_cents": 0, "currency": "GBP", "note": "x" }, "idempotency_key": "k" }),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_args"));
    let fields = &r.body["error"]["details"]["fields"];
    for f in ["customer_id", "amount_cents", "currency", "note"] {
        assert!(fields[f].is_string(), "{f} missing from {fields}");
    }
    // A write tool without an idempotency key.
    let mut body = close_ticket("k");
    body.as_object_mut().unwrap().remove("idempotency_key");
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(r.code(), "invalid_args");
    assert!(r.body["error"]["details"]["fields"]["idempotency_key"].is_string());
}

async fn secrets_are_refused_and_never_echoed(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let secret = "sk_live_51HqLyjWDarjtT1zdp7dcABCDEFGH";
    let mut body = close_ticket("k");
    body["args"]["reason"] = json!(format!("use key {secret}"));
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "secret_in_args")
    );
    assert_eq!(r.body["error"]["details"]["field"], "args.reason");
    assert!(!r.body.to_string().contains(secret), "the value must not be echoed");
    let mut body = close_ticket("k2");
    body["preview"]["after"] = json!("-----BEGIN RSA PRIVATE KEY-----\nMIIE");
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(r.code(), "secret_in_args");
    // Nothing of it was stored or audited.
    let mut out = Vec::new();
    t.core()
        .export_audit(0, |e| {
            out.push(serde_json::to_string(e).unwrap());
            Ok(())
        })
        .await
        .unwrap();
    assert!(!out.join("\n").contains(secret));
}

async fn disabled_by_a_kill_switch_is_423(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    t.core()
        .set_switch(
            &Admin::cli(),
            countersign_core::controls::Scope::Tool,
            "ticket.close",
            true,
            "incident 12",
        )
        .await
        .unwrap();
    let r = t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "disabled"));
    assert_eq!(r.body["error"]["details"]["switch"], "tool:ticket.close");
    t.core()
        .set_switch(
            &Admin::cli(),
            countersign_core::controls::Scope::Tenant,
            "acme",
            true,
            "incident 13",
        )
        .await
        .unwrap();
    let r = t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "disabled"));
    assert_eq!(r.body["error"]["details"]["switch"], "tenant:acme");
}

async fn exhausted_budgets_are_429_naming_the_budget(db: &TestDb) {
    let t = spawn(db).await;
    // support/send: 25 steps.
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    for _ in 0..25 {
        assert_eq!(
            t.post("/api/v1/check", &token, json!({ "tool": "kb.search" }))
                .await
                .status,
            StatusCode::OK
        );
    }
    let r = t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "budget_exhausted")
    );
    assert_eq!(r.body["error"]["details"]["budget"], "steps");
    // support/draft: 60 seconds of run lifetime.
    let (_, token) = t.run("acme", "prod", "support/draft", None).await;
    t.advance(61);
    let r = t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!(r.body["error"]["details"]["budget"], "seconds", "{}", r.body);
}

async fn usd_budget_counts_tool_costs(db: &TestDb) {
    let src = include_str!("../../examples/policy.toml").replace(
        "budgets = { steps = 25, seconds = 300, usd = 1.0 }",
        "budgets = { steps = 25, seconds = 300, usd = 0.025 }",
    );
    let policy = countersign_core::policy::load_policy(&src).unwrap();
    let t = spawn_with(db, policy, |_| {}).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    assert_eq!(
        t.post("/api/v1/proposals", &token, refund("a")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        t.post("/api/v1/proposals", &token, refund("b")).await.status,
        StatusCode::CREATED
    );
    let r = t.post("/api/v1/proposals", &token, refund("c")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "budget_exhausted")
    );
    assert_eq!(r.body["error"]["details"]["budget"], "usd");
    // A replay spends nothing.
    assert_eq!(
        t.post("/api/v1/proposals", &token, refund("a")).await.status,
        StatusCode::OK
    );
}

async fn unknown_route_is_422(db: &TestDb) {
    let t = spawn(db).await;
    let key = t.service_key("acme", "prod").await;
    let r = t.post("/api/v1/runs", &key, json!({ "route": "no/such" })).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "unknown_route");
}

async fn unknown_api_paths_are_json_404s(db: &TestDb) {
    let t = spawn(db).await;
    let r = t.send(Method::GET, "/api/v1/nope", None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
}

countersign_core::store_tests!(
    malformed_json_is_bad_request,
    unknown_fields_and_wrong_types_are_bad_requests_that_name_the_field,
    tenant_or_env_in_a_body_is_refused,
    credentials_missing_malformed_tampered_or_expired_are_unauthenticated,
    a_revoked_key_is_unauthenticated,
    each_credential_does_only_its_own_job,
    denied_and_not_allowed_tools_are_403_with_their_codes,
    another_tenants_proposal_is_not_found,
    idempotency_conflict_is_409,
    invalid_transition_is_409,
    oversized_bodies_are_413,
    invalid_args_name_each_field,
    secrets_are_refused_and_never_echoed,
    disabled_by_a_kill_switch_is_423,
    exhausted_budgets_are_429_naming_the_budget,
    usd_budget_counts_tool_costs,
    unknown_route_is_422,
    unknown_api_paths_are_json_404s,
);
