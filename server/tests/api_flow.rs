//! The agent and orchestrator endpoints end to end, on SQLite and PostgreSQL.

mod common;
use common::*;
use countersign_core::lifecycle::Verdict;
use countersign_core::service::Admin;
use countersign_core::service::DecideRequest;
use countersign_core::testing::TestDb;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

async fn minting_a_run_returns_its_capabilities_with_scope_from_the_key(db: &TestDb) {
    let t = spawn(db).await;
    let key = t.service_key("acme", "staging").await;
    let r = t
        .post(
            "/api/v1/runs",
            &key,
            json!({ "route": "support/send", "ttl_seconds": 100_000, "on_behalf_of": "alice" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let b = &r.body;
    assert!(b["run_id"].as_str().unwrap().starts_with("run_"));
    assert!(b["token"].as_str().unwrap().starts_with("crt_"));
    assert_eq!(
        (b["tenant"].as_str(), b["env"].as_str()),
        (Some("acme"), Some("staging"))
    );
    assert_eq!(b["route"], "support/send");
    assert_eq!(b["budgets"], json!({ "steps": 25, "seconds": 300, "usd": 1.0 }));
    assert!(b["allow_tools"].as_array().unwrap().contains(&json!("email.send")));
    assert!(!b["allow_tools"].as_array().unwrap().contains(&json!("db.write")));
    assert_eq!(
        b["require_approval"],
        json!(["email.send", "refund.create", "ticket.assign", "ticket.close"])
    );
    // The TTL is capped at 900 seconds.
    let expires = countersign_core::clock::parse_rfc3339(b["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires - t.now_ms() <= 900_000 && expires - t.now_ms() > 890_000);
}

async fn check_allows_reads_and_gates_writes(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!(r.body, json!({ "tool": "kb.search", "decision": "allow" }));
    let r = t.post("/api/v1/check", &token, json!({ "tool": "email.send" })).await;
    assert_eq!(r.body["decision"], "require_approval");
}

async fn a_proposal_is_created_with_its_diff_and_can_be_read_back(db: &TestDb) {
    let t = spawn(db).await;
    let (run_id, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            close_ticket("req_9f2c:ticket.close:T-18421"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("prp_"));
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["approvals_required"], 1);
    assert_eq!(r.body["approvals"], json!([]));
    assert_eq!(r.body["run_id"], run_id.as_str());
    assert!(r.body["review_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/proposals/{id}")));
    let g = t.get(&format!("/api/v1/proposals/{id}"), &token).await;
    assert_eq!(g.body["id"], id.as_str());
    assert_eq!(g.body["decisions"], json!([]));
    assert_eq!(g.body["execution"], json!(null));
    // The server computed the diff.
    let stored = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert!(stored.diff.unwrap().contains("closed"));
}

async fn a_replay_returns_the_first_proposal_with_the_header(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let first = t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    let again = t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body["id"], first.body["id"]);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Same args in another key order are the same args.
    let mut reordered = close_ticket("k");
    reordered["args"] =
        json!({ "reason": "Issue resolved: reset auth token and verified login", "ticket_id": "T-18421" });
    assert_eq!(
        t.post("/api/v1/proposals", &token, reordered).await.status,
        StatusCode::OK
    );
}

async fn a_hundred_identical_concurrent_posts_make_one_proposal(db: &TestDb) {
    let t = spawn(db).await;
    let (run_id, token) = t.run("acme", "prod", "support/send", None).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (http, url, token) = (t.http.clone(), t.url("/api/v1/proposals"), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&close_ticket("once"))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body["id"].as_str().unwrap_or("").to_owned())
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (status, id) = task.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("unexpected {other}"),
        }
        ids.insert(id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    // Keys are unique per tenant and env: another run of the same tenant and
    // env replays it; another tenant's same key is its own proposal.
    let (_, other_run) = t.run("acme", "prod", "support/send", None).await;
    let (_, other_tenant) = t.run("globex", "prod", "support/send", None).await;
    assert_eq!(
        t.post("/api/v1/proposals", &other_run, close_ticket("once"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        t.post("/api/v1/proposals", &other_tenant, close_ticket("once"))
            .await
            .status,
        StatusCode::CREATED
    );
    let n = t.inspect().count_pending().await.unwrap();
    assert_eq!(n, 2, "run {run_id}");
}

async fn a_read_tool_proposal_is_approved_at_once_and_released(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/draft", None).await;
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            json!({ "tool": "email.draft", "args": { "to": "c@example.com", "subject": "Hi", "body": "Draft" }, "idempotency_key": "d1" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["execution"]["status"], "queued");
}

async fn wait_returns_when_a_reviewer_decides(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let p = t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    let id = p.body["id"].as_str().unwrap().to_owned();
    let hash = t.inspect().proposal(&id).await.unwrap().unwrap().content_hash;
    let waiter = {
        let (http, url, token) = (
            t.http.clone(),
            t.url(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=30")),
            token.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            (r.json::<serde_json::Value>().await.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let decided_at = Instant::now();
    t.core()
        .decide(
            &alice,
            DecideRequest {
                proposal_id: id.clone(),
                verdict: Verdict::Approve,
                comment: "ok".into(),
                content_hash: hash,
                view_ms: Some(5000),
                passkey: None,
            },
        )
        .await
        .unwrap();
    let (body, waited) = waiter.await.unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(body["approvals"][0]["by"], "alice");
    assert!(
        decided_at.elapsed() < Duration::from_secs(2),
        "woken by the decision, not the timeout"
    );
    assert!(waited < Duration::from_secs(10));
}

async fn wait_times_out_with_the_current_status(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let p = t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    let id = p.body["id"].as_str().unwrap();
    let started = Instant::now();
    let r = t
        .get(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=1"), &token)
        .await;
    assert_eq!(r.body["status"], "pending");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let r = t
        .get(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=61"), &token)
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "bad_request"));
    let r = t
        .get(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=soon"), &token)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

async fn the_run_breaker_revokes_after_five_denials_in_a_row(db: &TestDb) {
    let t = spawn(db).await;
    let (run_id, token) = t.run("acme", "prod", "support/send", None).await;
    for tool in ["admin.grant", "db.write", "admin.grant", "db.write"] {
        assert_eq!(
            t.post("/api/v1/check", &token, json!({ "tool": tool })).await.status,
            StatusCode::FORBIDDEN
        );
    }
    // A success in between resets the streak.
    assert_eq!(
        t.post("/api/v1/check", &token, json!({ "tool": "kb.search" }))
            .await
            .status,
        StatusCode::OK
    );
    for _ in 0..4 {
        assert_eq!(
            t.post("/api/v1/check", &token, json!({ "tool": "admin.grant" }))
                .await
                .status,
            StatusCode::FORBIDDEN
        );
    }
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            json!({ "tool": "ticket.close", "args": {}, "idempotency_key": "x" }),
        )
        .await;
    assert_eq!(r.code(), "invalid_args", "the fifth denial in a row");
    let r = t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated"),
        "{}",
        r.body
    );
    let row = t.inspect().run(&run_id).await.unwrap().unwrap();
    assert!(row.revoked_reason.unwrap().contains("circuit breaker"));
}

async fn an_admin_revoked_run_stops_at_once(db: &TestDb) {
    let t = spawn(db).await;
    let (run_id, token) = t.run("acme", "prod", "support/send", None).await;
    t.core().revoke_run(&Admin::cli(), &run_id, "looping").await.unwrap();
    let r = t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn a_run_revoked_in_another_process_is_refused_by_each_way_a_proposal_ends(db: &TestDb) {
    let t = spawn(db).await;
    // A second process over the same database, as behind a load balancer.
    let other = spawn(db).await;
    let cases = [
        ("a new proposal (refused by its charge)", close_ticket("k2")),
        ("a replay of the first", close_ticket("k1")),
        (
            "a denied tool (a refusal)",
            json!({ "tool": "db.write", "args": {}, "idempotency_key": "k3" }),
        ),
        (
            "a body that does not fit",
            json!({ "tool": "ticket.close", "no_such_field": 1 }),
        ),
    ];
    for (n, (what, mut body)) in cases.into_iter().enumerate() {
        // Keys are unique within a tenant and env: each case its own.
        let key = |k: &str| format!("case{n}-{k}");
        if body.get("idempotency_key").is_some() {
            body["idempotency_key"] = json!(key(body["idempotency_key"].as_str().unwrap()));
        }
        let (run_id, token) = t.run("acme", "prod", "support/send", None).await;
        let first = t.post("/api/v1/proposals", &token, close_ticket(&key("k1"))).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
        // This process has seen the run live; the other revokes it.
        other.core().revoke_run(&Admin::cli(), &run_id, "leaked").await.unwrap();
        let recorded = t.inspect().audit_events().await.unwrap().len();
        let r = t.post("/api/v1/proposals", &token, body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "unauthenticated"),
            "{what}: {}",
            r.body
        );
        assert_eq!(
            t.inspect().audit_events().await.unwrap().len(),
            recorded,
            "{what}: nothing recorded for a revoked run"
        );
        // Known ended now: refused before any read or write.
        let reads = t.core().run_rows_read();
        let again = t.post("/api/v1/proposals", &token, close_ticket(&key("k4"))).await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{what}: {}", again.body);
        assert_eq!(t.core().run_rows_read(), reads, "{what}");
    }
}

async fn a_known_runs_later_proposals_read_no_run_row(db: &TestDb) {
    let t = spawn(db).await;
    let (run_id, token) = t.run("acme", "prod", "support/send", None).await;
    let before = t.core().run_rows_read();
    for i in 0..5 {
        let r = t
            .post("/api/v1/proposals", &token, close_ticket(&format!("k{i}")))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    assert_eq!(t.core().run_rows_read() - before, 1, "read at the first proposal only");
    // Other calls still read the run each time.
    t.post("/api/v1/check", &token, json!({ "tool": "kb.search" })).await;
    assert_eq!(t.core().run_rows_read() - before, 2);
    // A revocation in this process is known here at once.
    t.core().revoke_run(&Admin::cli(), &run_id, "done").await.unwrap();
    let r = t.post("/api/v1/proposals", &token, close_ticket("k9")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    assert_eq!(t.core().run_rows_read() - before, 2);
    // And a run past its end is refused from what is known of it.
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t.post("/api/v1/proposals", &token, close_ticket("later-k1")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    t.advance(601);
    let r = t.post("/api/v1/proposals", &token, close_ticket("later-k2")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthenticated"));
}

async fn every_write_is_audited_and_the_chain_verifies(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    t.post("/api/v1/check", &token, json!({ "tool": "db.write" })).await;
    let mut actions = Vec::new();
    t.core()
        .export_audit(0, |e| {
            actions.push((e.action.clone(), e.request_id.is_some()));
            Ok(())
        })
        .await
        .unwrap();
    let names: Vec<&str> = actions.iter().map(|(a, _)| a.as_str()).collect();
    for want in ["policy.loaded", "run.minted", "proposal.created", "check"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        actions
            .iter()
            .filter(|(a, _)| a == "proposal.created")
            .all(|(_, rid)| *rid),
        "request ids recorded"
    );
    let report = t.core().verify_audit_chain().await.unwrap();
    assert!(report.ok(), "{}", report.message());
}

async fn the_openapi_document_and_the_router_name_the_same_operations(db: &TestDb) {
    let t = spawn(db).await;
    let r = t.send(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = r.body["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "x_1");
        for method in item.as_object().unwrap().keys() {
            // Every documented operation is served: without a credential it
            // answers 401, never the router's 404 or 405.
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let reply = t.send(m, &concrete, None, None).await;
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::UNAUTHORIZED, "unauthenticated"),
                "{method} {path}"
            );
            operations += 1;
        }
    }
    assert_eq!(operations, 9, "the API's nine operations, each documented once");
    // And an operation the router does not serve is not documented: the
    // router's answer to an unknown path is the API's own 404.
    let r = t.send(Method::GET, "/api/v1/no/such/endpoint", None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    assert!(!paths.contains_key("/api/v1/no/such/endpoint"));
    let post = &paths["/api/v1/proposals"]["post"];
    assert!(post["requestBody"].is_object());
    assert!(post["responses"]["422"].is_object());
    assert!(r.body.is_object());
    let doc = t.send(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert!(doc.body["components"]["schemas"]["ProposeBody"].is_object());
}

async fn health_readiness_and_metrics_answer(db: &TestDb) {
    let t = spawn(db).await;
    let r = t.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("x-request-id").is_some());
    let r = t.send(Method::GET, "/metrics", None, None).await;
    let text = r.body.as_str().unwrap().to_owned();
    assert!(text.contains("countersign_http_requests_total"), "{text}");
    assert!(text.contains("countersign_proposals_pending"), "{text}");
}

countersign_core::store_tests!(
    minting_a_run_returns_its_capabilities_with_scope_from_the_key,
    check_allows_reads_and_gates_writes,
    a_proposal_is_created_with_its_diff_and_can_be_read_back,
    a_replay_returns_the_first_proposal_with_the_header,
    a_hundred_identical_concurrent_posts_make_one_proposal,
    a_read_tool_proposal_is_approved_at_once_and_released,
    wait_returns_when_a_reviewer_decides,
    wait_times_out_with_the_current_status,
    the_run_breaker_revokes_after_five_denials_in_a_row,
    an_admin_revoked_run_stops_at_once,
    a_run_revoked_in_another_process_is_refused_by_each_way_a_proposal_ends,
    a_known_runs_later_proposals_read_no_run_row,
    every_write_is_audited_and_the_chain_verifies,
    the_openapi_document_and_the_router_name_the_same_operations,
    health_readiness_and_metrics_answer,
    concurrent_proposals_are_inserted_together_and_each_answered_as_if_alone,
);

/// How many proposals the writer has inserted together (`/metrics`).
async fn inserted_together(t: &TestApp) -> f64 {
    let r = t.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("countersign_proposals_inserted_together_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The writer inserts and charges the new proposals of a batch of requests
/// in one call (one statement on PostgreSQL, one hand-off to the
/// connection's thread on SQLite), and each request is answered as if its
/// proposal had been inserted alone.
async fn concurrent_proposals_are_inserted_together_and_each_answered_as_if_alone(db: &TestDb) {
    let t = spawn(db).await;
    let mut runs = Vec::new();
    for _ in 0..16 {
        runs.push(t.run("acme", "prod", "support/send", None).await);
    }
    let mut rounds = 0;
    let mut ids = std::collections::HashSet::new();
    // Bursts of one new proposal per run, each with the replays of the
    // previous burst's keys, until batches were inserted together.
    while rounds < 12 && (rounds < 2 || inserted_together(&t).await == 0.0) {
        let fresh = futures::future::join_all(runs.iter().enumerate().map(|(i, (_, token))| {
            // Keys are scoped to the tenant and environment, not the run.
            t.post("/api/v1/proposals", token, close_ticket(&format!("k{i}.{rounds}")))
        }));
        // The first burst has nothing to replay.
        let replaying = if rounds == 0 { &runs[..0] } else { &runs[..] };
        let app = &t;
        let replays = futures::future::join_all(replaying.iter().enumerate().map(|(i, (_, token))| {
            let key = format!("k{i}.{}", rounds - 1);
            async move { app.post("/api/v1/proposals", token, close_ticket(&key)).await }
        }));
        let (fresh, replays) = tokio::join!(fresh, replays);
        for (r, (_, token)) in fresh.iter().zip(&runs) {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            let id = r.body["id"].as_str().unwrap().to_owned();
            // The answer tells what was stored, times included.
            let g = t.get(&format!("/api/v1/proposals/{id}"), token).await;
            assert_eq!(g.status, StatusCode::OK, "a 201 proposal is stored: {}", g.body);
            assert_eq!(g.body["expires_at"], r.body["expires_at"], "{}", g.body);
            assert_eq!(g.body["status"], "pending");
            assert!(ids.insert(id), "each request its own proposal");
        }
        for r in &replays {
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            assert_eq!(r.headers.get("idempotent-replayed").unwrap(), "true");
            assert!(ids.contains(r.body["id"].as_str().unwrap()), "{}", r.body);
        }
        rounds += 1;
    }
    assert!(
        inserted_together(&t).await > 0.0,
        "{rounds} bursts of concurrent proposals never inserted two together"
    );
    // Each new proposal was charged to its run once; replays nothing.
    for (run_id, _) in &runs {
        let run = t.inspect().run(run_id).await.unwrap().unwrap();
        assert_eq!(run.steps_used, rounds, "{run_id}");
    }
}
