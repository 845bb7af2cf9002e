//! Blast-radius controls: kill switches, breakers, break-glass, admin
//! operations and webhooks, on SQLite and PostgreSQL.

mod common;
use common::*;
use countersign_core::controls::Scope;
use countersign_core::lifecycle::Status;
use countersign_core::lifecycle::Verdict;
use countersign_core::policy::load_policy;
use countersign_core::service::{Admin, DecideRequest};
use countersign_core::service::{BannerKind, HistoryQuery};
use countersign_core::testing::TestDb;
use countersign_core::Error;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn policy_with_bulk(extra: &str) -> countersign_core::policy::Policy {
    let src = format!(
        "{}\n{}\n{extra}",
        include_str!("../../examples/policy.toml").replace(
            "[breakers]\nrun_denials = 5            # denials in a row that revoke a run\nroute_failure_share = 0.5  # a route stops releasing above this failure share…\nroute_window = 20          # …of its last 20 executions",
            "[breakers]\nrun_denials = 5\nroute_failure_share = 0.5\nroute_window = 4",
        ),
        r#"
[tools."note.write"]
kind = "write"
undo = "Delete the note"
blast_radius = "1 note"
max_attempts = 1
args.text = { type = "string", max_len = 100 }

[routes."bulk"]
allow_tools = ["note.write"]
auto_approve = ["note.write"]
budgets = { steps = 100000, seconds = 86400, usd = 100.0 }
"#
    );
    load_policy(&src).unwrap()
}

async fn hash_of(t: &TestApp, id: &str) -> String {
    t.inspect().proposal(id).await.unwrap().unwrap().content_hash
}

async fn status_of(t: &TestApp, id: &str) -> String {
    t.inspect().proposal(id).await.unwrap().unwrap().status.to_string()
}

fn approve(id: &str, hash: &str) -> DecideRequest {
    DecideRequest {
        proposal_id: id.into(),
        verdict: Verdict::Approve,
        comment: String::new(),
        content_hash: hash.into(),
        view_ms: Some(5000),
        passkey: None,
    }
}

async fn every_switch_kind_refuses_new_work_blocks_approvals_holds_claims_and_releases(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let exec = t.executor_key("prod", &["ticket.close"]).await;
    let admin = Admin::cli();
    for (scope, target, expect) in [
        (Scope::Tool, "ticket.close", "tool:ticket.close"),
        (Scope::Tenant, "acme", "tenant:acme"),
        (Scope::Route, "support/send", "route:support/send"),
        (Scope::Global, "", "global"),
    ] {
        let (_, token) = t.run("acme", "prod", "support/send", None).await;
        // One proposal made before the switch: it waits.
        let before = t
            .post("/api/v1/proposals", &token, close_ticket(&format!("{scope}-before")))
            .await;
        let id = before.body["id"].as_str().unwrap().to_owned();
        t.core()
            .set_switch(&admin, scope, target, true, "incident")
            .await
            .unwrap();
        let r = t
            .post("/api/v1/proposals", &token, close_ticket(&format!("{scope}-during")))
            .await;
        assert_eq!((r.status, r.code()), (StatusCode::LOCKED, "disabled"), "{scope}");
        assert_eq!(r.body["error"]["details"]["switch"], expect);
        let e = t
            .core()
            .decide(&alice, approve(&id, &hash_of(&t, &id).await))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Forbidden(m) if m.contains("kill switch")),
            "{scope}: {e:?}"
        );
        let banners = t.core().banners(Some(&alice)).await.unwrap();
        assert!(banners.iter().any(|b| b.kind == BannerKind::Switch), "{scope}");
        t.core()
            .set_switch(&admin, scope, target, false, "resolved")
            .await
            .unwrap();
        assert_eq!(
            t.core()
                .decide(&alice, approve(&id, &hash_of(&t, &id).await))
                .await
                .unwrap(),
            Status::Queued
        );
        let r = t.post("/api/v1/jobs/claim", &exec, json!({})).await;
        assert_eq!(r.body["jobs"].as_array().unwrap().len(), 1, "{scope}");
        let job = &r.body["jobs"][0];
        t.post(
            &format!("/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap()),
            &exec,
            json!({ "lease_id": job["lease_id"], "status": "succeeded" }),
        )
        .await;
    }
    // Queued work is held from executors while a switch covers it.
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("held")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.core()
        .decide(&alice, approve(&id, &hash_of(&t, &id).await))
        .await
        .unwrap();
    t.core()
        .set_switch(&admin, Scope::Global, "", true, "stop everything")
        .await
        .unwrap();
    assert_eq!(
        t.post("/api/v1/jobs/claim", &exec, json!({})).await.body["jobs"],
        json!([])
    );
    t.core()
        .set_switch(&admin, Scope::Global, "", false, "go")
        .await
        .unwrap();
    assert_eq!(
        t.post("/api/v1/jobs/claim", &exec, json!({})).await.body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Every change is in the audit log.
    let mut switched = 0;
    t.core()
        .export_audit(0, |e| {
            if e.action.starts_with("switch.") {
                switched += 1;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(switched, 10);
    assert_eq!(
        t.core()
            .set_switch(&admin, Scope::Tool, "no.such.tool", true, "x")
            .await,
        Err(Error::BadRequest("tool \"no.such.tool\" is not in the policy".into()))
    );
    assert_eq!(
        t.core()
            .set_switch(&admin, Scope::Tool, "ticket.close", true, " ")
            .await,
        Err(Error::BadRequest(
            "a switch needs a reason of 1 to 500 characters".into()
        )),
        "a reason is required"
    );
}

async fn a_failing_route_trips_its_breaker_until_an_admin_resets_it(db: &TestDb) {
    let t = spawn_with(db, policy_with_bulk(""), |_| {}).await;
    let exec = t.executor_key("prod", &["note.write"]).await;
    let (_, token) = t.run("acme", "prod", "bulk", None).await;
    let propose = |i: usize| {
        let (t, token) = (&t, token.clone());
        async move {
            t.post(
                "/api/v1/proposals",
                &token,
                json!({ "tool": "note.write", "args": { "text": "x" }, "idempotency_key": format!("n{i}") }),
            )
            .await
            .body["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    for i in 0..4 {
        propose(i).await;
    }
    let jobs = t.post("/api/v1/jobs/claim", &exec, json!({ "max": 4 })).await.body["jobs"]
        .as_array()
        .unwrap()
        .clone();
    for (i, job) in jobs.iter().enumerate() {
        let status = if i == 0 { "succeeded" } else { "failed" };
        t.post(
            &format!("/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap()),
            &exec,
            json!({ "lease_id": job["lease_id"], "status": status }),
        )
        .await;
    }
    // 3 of the last 4 failed (> 50%): the route stops releasing.
    let breakers = t.core().breakers().await.unwrap();
    assert_eq!(breakers.len(), 1, "{breakers:?}");
    assert!(t
        .core()
        .banners(Some(&t.person("watcher", &["reviewer"], &["acme"]).await))
        .await
        .unwrap()
        .iter()
        .any(|b| b.kind == BannerKind::Breaker));
    let held = propose(10).await;
    assert_eq!(status_of(&t, &held).await, "approved", "approved but held, not queued");
    assert_eq!(
        t.post("/api/v1/jobs/claim", &exec, json!({})).await.body["jobs"],
        json!([])
    );
    t.core().reset_breaker(&Admin::cli(), "bulk").await.unwrap();
    assert_eq!(status_of(&t, &held).await, "queued");
    assert_eq!(
        t.post("/api/v1/jobs/claim", &exec, json!({})).await.body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn break_glass_lets_an_admin_approve_a_destructive_action_alone_and_says_so(db: &TestDb) {
    let t = spawn(db).await;
    let root = t.person("root", &["admin"], &[]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, refund("r1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Without break-glass an admin (of no tenant) cannot even see it.
    assert_eq!(
        t.core().decide(&root, approve(&id, &hash_of(&t, &id).await)).await,
        Err(Error::NotFound)
    );
    let b = t
        .core()
        .start_break_glass(&root, PASSWORD, "payment provider outage", "INC-42", 30, "127.0.0.1")
        .await
        .unwrap();
    // Break-glass is of the session that started it.
    assert!(
        t.core().break_glass_of(&root).await.unwrap().is_none(),
        "another session has none"
    );
    let root = countersign_core::service::Person {
        break_glass_session: Some(b.id.clone()),
        ..root
    };
    assert!(
        t.core()
            .banners(Some(&root))
            .await
            .unwrap()
            .iter()
            .any(|b| b.kind == BannerKind::BreakGlass),
        "the banner says so"
    );
    assert_eq!(
        t.core()
            .decide(&root, approve(&id, &hash_of(&t, &id).await))
            .await
            .unwrap(),
        Status::Queued,
        "one approval released it"
    );
    let page = t.core().history(&audrey, &HistoryQuery::default()).await.unwrap();
    let entry = page.entries.iter().find(|e| e.proposal.id == id).unwrap();
    assert!(entry.decisions[0].break_glass, "marked in history");
    let mut actions = Vec::new();
    t.core()
        .export_audit(0, |e| {
            actions.push((e.action.clone(), e.credential_scope.clone()));
            Ok(())
        })
        .await
        .unwrap();
    assert!(actions.contains(&("breakglass.started".into(), Some("session:break-glass".into()))));
    assert!(
        actions.contains(&("decision.approve".into(), Some("session:break-glass".into()))),
        "marked in the audit log"
    );
    t.core().end_break_glass(&root, &b.id).await.unwrap();
    assert!(t.core().break_glass_of(&root).await.unwrap().is_none());
}

async fn break_glass_needs_the_password_an_admin_and_at_most_an_hour(db: &TestDb) {
    let t = spawn(db).await;
    let root = t.person("root", &["admin"], &[]).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let e = t
        .core()
        .start_break_glass(
            &root,
            "not my password",
            "payment provider outage",
            "INC-1",
            10,
            "127.0.0.1",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(m) if m.contains("password")));
    assert_eq!(
        t.core()
            .start_break_glass(&alice, PASSWORD, "payment provider outage", "INC-1", 10, "127.0.0.1")
            .await
            .map(|_| ()),
        Err(Error::Forbidden("only admins may do this".into()))
    );
    assert_eq!(
        t.core()
            .start_break_glass(&root, PASSWORD, "payment provider outage", "INC-1", 61, "127.0.0.1")
            .await
            .map(|_| ()),
        Err(Error::BadRequest("break-glass lasts 1 to 60 minutes".into()))
    );
    assert_eq!(
        t.core()
            .start_break_glass(&root, PASSWORD, "short", "INC-1", 10, "127.0.0.1")
            .await
            .map(|_| ()),
        Err(Error::BadRequest("say why, in 10 to 500 characters".into())),
        "a real reason"
    );
    assert_eq!(
        t.core()
            .start_break_glass(&root, PASSWORD, "payment provider outage", "", 10, "127.0.0.1")
            .await
            .map(|_| ()),
        Err(Error::BadRequest(
            "give the incident reference (1 to 100 characters)".into()
        )),
        "an incident"
    );
    let mut refused = 0;
    t.core()
        .export_audit(0, |e| {
            if e.action == "breakglass.refused" {
                refused += 1;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(refused, 1, "a wrong password is recorded");
}

async fn break_glass_ends_by_itself(db: &TestDb) {
    let t = spawn(db).await;
    let root = t.person("root", &["admin"], &[]).await;
    let b = t
        .core()
        .start_break_glass(&root, PASSWORD, "payment provider outage", "INC-2", 5, "127.0.0.1")
        .await
        .unwrap();
    let root = countersign_core::service::Person {
        break_glass_session: Some(b.id),
        ..root
    };
    t.advance(4 * 60);
    assert!(t.core().break_glass_of(&root).await.unwrap().is_some());
    t.advance(61);
    assert!(
        t.core().break_glass_of(&root).await.unwrap().is_none(),
        "over after 5 minutes"
    );
    assert_eq!(t.core().sweep().await.unwrap(), 1, "the sweeper records the end");
    assert!(!t
        .core()
        .banners(Some(&root))
        .await
        .unwrap()
        .iter()
        .any(|b| b.kind == BannerKind::BreakGlass));
    let mut ended = Vec::new();
    t.core()
        .export_audit(0, |e| {
            if e.action == "breakglass.ended" {
                ended.push(e.details.clone());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(ended.len(), 1);
    assert!(ended[0].contains("its time ran out"));
}

async fn break_glass_is_not_reachable_with_an_api_credential(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let svc = t.service_key("acme", "prod").await;
    for cred in [&token, &svc] {
        let r = t.post("/api/v1/breakglass", cred, json!({})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = t
            .http
            .post(t.url("/api/admin/breakglass/start"))
            .bearer_auth(cred)
            .form(&[
                ("password", PASSWORD),
                ("reason", "payment provider outage"),
                ("incident", "INC"),
                ("minutes", "10"),
                ("csrf", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}

async fn disabling_a_person_ends_their_sessions_and_admin_ops_are_audited(db: &TestDb) {
    let t = spawn(db).await;
    let root = t.person("root", &["admin"], &[]).await;
    let bob = t.person("bob", &["reviewer"], &["acme"]).await;
    let login = t.core().login("bob", PASSWORD, "1.2.3.4").await.unwrap();
    assert!(t
        .core()
        .person_for_session(&bob.id, login.at_ms)
        .await
        .unwrap()
        .is_some());
    let admin = Admin::person(&root).unwrap();
    assert_eq!(
        Admin::person(&bob),
        Err(Error::Forbidden("only admins may do this".into())),
        "a reviewer is not an admin"
    );
    t.advance(1);
    t.core().set_disabled(&admin, &bob.id, true).await.unwrap();
    assert!(
        t.core()
            .person_for_session(&bob.id, login.at_ms)
            .await
            .unwrap()
            .is_none(),
        "the open session stops"
    );
    assert_eq!(
        t.core().login("bob", PASSWORD, "1.2.3.4").await.map(|_| ()),
        Err(Error::Unauthenticated("Wrong username or password.".into())),
        "and no new one starts"
    );
    assert_eq!(
        t.core().set_disabled(&admin, &root.id, true).await,
        Err(Error::BadRequest("you cannot disable yourself".into())),
        "not yourself"
    );
    t.core().set_disabled(&admin, &bob.id, false).await.unwrap();
    t.core()
        .set_access(
            &admin,
            &bob.id,
            &["reviewer".into(), "auditor".into()],
            &["acme".into(), "globex".into()],
        )
        .await
        .unwrap();
    t.advance(1);
    let again = t.core().login("bob", PASSWORD, "1.2.3.4").await.unwrap();
    assert_eq!(again.person.tenants, vec!["acme".to_owned(), "globex".to_owned()]);
    t.advance(1);
    t.core()
        .reset_password(&admin, &bob.id, "a brand new password".into())
        .await
        .unwrap();
    assert!(
        t.core()
            .person_for_session(&bob.id, again.at_ms)
            .await
            .unwrap()
            .is_none(),
        "a reset ends sessions"
    );
    assert!(t.core().login("bob", "a brand new password", "1.2.3.4").await.is_ok());
    let mut actions = Vec::new();
    t.core()
        .export_audit(0, |e| {
            actions.push(e.action.clone());
            Ok(())
        })
        .await
        .unwrap();
    for a in [
        "user.disabled",
        "user.enabled",
        "user.access_changed",
        "user.password_reset",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a}");
    }
}

async fn webhooks_receive_signed_events_without_args_values(db: &TestDb) {
    let t = spawn(db).await;
    let rx = Receiver::start(0).await;
    let (_, secret) = t
        .core()
        .add_webhook(&Admin::cli(), &rx.url(), &["proposal.pending".into()], "json")
        .await
        .unwrap();
    let slack = Receiver::start(0).await;
    t.core()
        .add_webhook(&Admin::cli(), &slack.url(), &["*".into()], "slack")
        .await
        .unwrap();
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, refund("r1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let (sig, body) = &got[0];
    assert!(
        countersign_core::tokens::verify_webhook(&secret, sig, body),
        "the signature verifies"
    );
    assert!(!countersign_core::tokens::verify_webhook("whsec_wrong", sig, body));
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["type"], "proposal.pending");
    assert_eq!(v["data"]["proposal"], id.as_str());
    assert!(
        !body.contains("C-42") && !body.contains("2500"),
        "no args values: {body}"
    );
    let s = slack.wait_for(1).await;
    let text: Value = serde_json::from_str(&s[0].1).unwrap();
    let text = text["text"].as_str().unwrap();
    assert!(text.contains(&format!("/proposals/{id}|Open the review>")), "{text}");
    assert!(!text.contains("C-42"));
    rx.task.abort();
    slack.task.abort();
}

async fn webhooks_to_a_down_receiver_arrive_after_it_returns_across_a_restart(db: &TestDb) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = spawn(db).await;
    let url = format!("http://127.0.0.1:{port}/hook");
    t.core()
        .add_webhook(&Admin::cli(), &url, &["switch.changed".into()], "json")
        .await
        .unwrap();
    t.core()
        .set_switch(&Admin::cli(), Scope::Tool, "email.send", true, "spam wave")
        .await
        .unwrap();
    // Nobody listens: the attempt fails and is kept.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(t.core().undelivered().await.unwrap(), 1);
    t.app.stop().await;
    // The server restarts; the receiver comes back.
    let rx = Receiver::start(port).await;
    let t2 = spawn(db).await;
    t2.advance(3600);
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1, "delivered after the restart");
    assert!(got[0].1.contains("spam wave"));
    // The receiver has the body before the server records the delivery: wait, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t2.core().undelivered().await.unwrap() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery is recorded within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rx.task.abort();
}

countersign_core::store_tests!(
    every_switch_kind_refuses_new_work_blocks_approvals_holds_claims_and_releases,
    a_failing_route_trips_its_breaker_until_an_admin_resets_it,
    break_glass_lets_an_admin_approve_a_destructive_action_alone_and_says_so,
    break_glass_needs_the_password_an_admin_and_at_most_an_hour,
    break_glass_ends_by_itself,
    break_glass_is_not_reachable_with_an_api_credential,
    disabling_a_person_ends_their_sessions_and_admin_ops_are_audited,
    webhooks_receive_signed_events_without_args_values,
    webhooks_to_a_down_receiver_arrive_after_it_returns_across_a_restart,
);
