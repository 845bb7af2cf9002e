//! The executor queue: leases, fencing, retries, expiry and release, on
//! SQLite and PostgreSQL.

mod common;
use common::*;
use countersign_core::policy::load_policy;
use countersign_core::service::Admin;
use countersign_core::testing::TestDb;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The example policy plus a bulk route whose write tool is auto-approved, so
/// tests can release many jobs without clicking.
fn queue_policy() -> countersign_core::policy::Policy {
    let src = format!(
        "{}\n{}",
        include_str!("../../examples/policy.toml"),
        r#"
[tools."note.write"]
kind = "write"
undo = "Delete the note"
blast_radius = "1 note"
max_attempts = 3
execute_within_seconds = 600
args.text = { type = "string", max_len = 100 }

[routes."bulk"]
allow_tools = ["note.write"]
auto_approve = ["note.write"]
budgets = { steps = 100000, seconds = 86400, usd = 100.0 }
"#
    );
    load_policy(&src).unwrap()
}

async fn app(db: &TestDb) -> TestApp {
    spawn_with(db, queue_policy(), |_| {}).await
}

/// Release `n` jobs through the API; returns the run token and proposal ids.
async fn release(t: &TestApp, tenant: &str, n: usize) -> (String, Vec<String>) {
    let (_, token) = t.run(tenant, "prod", "bulk", None).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let r = t
            .post(
                "/api/v1/proposals",
                &token,
                json!({ "tool": "note.write", "args": { "text": format!("note {i}") }, "idempotency_key": format!("note-{i}") }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["status"], "queued");
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    (token, ids)
}

async fn claim(t: &TestApp, key: &str, body: Value) -> Vec<Value> {
    let r = t.post("/api/v1/jobs/claim", key, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["jobs"].as_array().unwrap().clone()
}

async fn complete(t: &TestApp, key: &str, job: &Value, status: &str, retryable: bool) -> common::Reply {
    t.post(
        &format!("/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap()),
        key,
        json!({ "lease_id": job["lease_id"], "status": status, "result": { "ok": status == "succeeded" }, "retryable": retryable }),
    )
    .await
}

async fn status_of(t: &TestApp, token: &str, id: &str) -> Value {
    t.get(&format!("/api/v1/proposals/{id}"), token).await.body
}

/// The status as stored (run tokens in these tests may have expired).
async fn stored_status(t: &TestApp, id: &str) -> String {
    t.inspect().proposal(id).await.unwrap().unwrap().status.to_string()
}

async fn two_hundred_jobs_sixteen_executors_each_completed_exactly_once(db: &TestDb) {
    let t = Arc::new(app(db).await);
    let (token, ids) = release(&t, "acme", 200).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let completions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let leases: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut executors = Vec::new();
    for _ in 0..16 {
        let (t, key, completions, leases) = (t.clone(), key.clone(), completions.clone(), leases.clone());
        executors.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 3 {
                let jobs = claim(&t, &key, json!({ "max": 5, "lease_seconds": 120, "wait_seconds": 0 })).await;
                if jobs.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                idle = 0;
                for job in jobs {
                    let id = job["job_id"].as_str().unwrap().to_owned();
                    leases
                        .lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .push(job["lease_id"].as_str().unwrap().to_owned());
                    let r = complete(&t, &key, &job, "succeeded", false).await;
                    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                    *completions.lock().unwrap().entry(id).or_default() += 1;
                }
            }
        }));
    }
    for e in executors {
        e.await.unwrap();
    }
    {
        let completions = completions.lock().unwrap();
        assert_eq!(completions.len(), 200, "none lost");
        assert!(completions.values().all(|n| *n == 1), "each completed once");
        let leases = leases.lock().unwrap();
        assert!(
            leases.values().all(|l| l.len() == 1),
            "no job handed to two live leases"
        );
    }
    for id in ids.iter().take(5) {
        assert_eq!(status_of(&t, &token, id).await["status"], "succeeded");
    }
    assert!(t.core().verify_audit_chain().await.unwrap().ok());
}

/// Successes reported at the same moment are finished together (see
/// `service::finishing`): each job still once, with its own audit event and
/// request id; repeats, stale leases and others' jobs still answered alike.
async fn successes_reported_at_once_each_finish_once_with_their_own_event(db: &TestDb) {
    let t = Arc::new(app(db).await);
    let (token, ids) = release(&t, "acme", 40).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let other_tool = t.executor_key("prod", &["ticket.close"]).await;
    let jobs = claim(&t, &key, json!({ "max": 40 })).await;
    assert_eq!(jobs.len(), 40);
    let mut stale = jobs[0].clone();
    stale["lease_id"] = json!("lse_not_the_lease");
    // Each job once, five of them twice with the same body, one with a stale
    // lease and one by a key that does not serve its tool, all at once.
    let mut sent: Vec<(&str, Value, &str)> = jobs.iter().map(|j| ("mine", j.clone(), "first")).collect();
    sent.extend(jobs.iter().take(5).map(|j| ("mine", j.clone(), "repeat")));
    sent.push(("mine", stale, "stale"));
    sent.push(("other", jobs[1].clone(), "foreign"));
    let replies = futures::future::join_all(sent.iter().map(|(who, job, _)| {
        let k = if *who == "mine" {
            key.clone()
        } else {
            other_tool.clone()
        };
        let t = t.clone();
        async move { complete(&t, &k, job, "succeeded", false).await }
    }))
    .await;
    for ((_, _, what), r) in sent.iter().zip(&replies) {
        match *what {
            "first" | "repeat" => {
                assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.body);
                assert_eq!(r.body["state"], "succeeded");
                assert_eq!(r.body["proposal_status"], "succeeded");
            }
            "stale" => assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_transition")),
            _ => assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body),
        }
    }
    let mut completed: HashMap<String, Vec<Option<String>>> = HashMap::new();
    t.core()
        .export_audit(0, |e| {
            if e.action == "job.completed" {
                completed
                    .entry(e.subject.clone().unwrap())
                    .or_default()
                    .push(e.request_id.clone());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(completed.len(), 40, "every job's completion audited");
    assert!(completed.values().all(|v| v.len() == 1), "each once");
    let request_ids: std::collections::HashSet<_> = completed.values().map(|v| v[0].clone().unwrap()).collect();
    assert_eq!(request_ids.len(), 40, "each event names its own request");
    for id in &ids {
        assert_eq!(stored_status(&t, id).await, "succeeded");
    }
    assert_eq!(status_of(&t, &token, &ids[0]).await["execution"]["attempts"], 1);
    assert!(t.core().verify_audit_chain().await.unwrap().ok());
}

async fn a_dead_executors_lease_runs_out_and_the_job_returns_with_the_next_attempt(db: &TestDb) {
    let t = app(db).await;
    let (token, ids) = release(&t, "acme", 1).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let first = claim(&t, &key, json!({ "lease_seconds": 30 })).await.remove(0);
    assert_eq!(first["attempt"], 1);
    assert_eq!(status_of(&t, &token, &ids[0]).await["status"], "running");
    // The holder dies: nothing completes, nothing heartbeats.
    assert!(
        claim(&t, &key, json!({})).await.is_empty(),
        "not offered while the lease lives"
    );
    t.advance(31);
    assert_eq!(t.core().sweep().await.unwrap(), 1);
    let second = claim(&t, &key, json!({ "lease_seconds": 30 })).await.remove(0);
    assert_eq!(second["job_id"], first["job_id"]);
    assert_eq!(second["idempotency_key"], first["idempotency_key"]);
    assert_eq!(second["attempt"], 2);
    assert_ne!(second["lease_id"], first["lease_id"]);
    // The dead holder's late word is refused by its stale lease.
    let r = complete(&t, &key, &first, "succeeded", false).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_transition"));
    let r = t
        .post(
            &format!("/api/v1/jobs/{}/heartbeat", first["job_id"].as_str().unwrap()),
            &key,
            json!({ "lease_id": first["lease_id"] }),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_transition"));
    assert_eq!(
        complete(&t, &key, &second, "succeeded", false).await.status,
        StatusCode::OK
    );
    let p = status_of(&t, &token, &ids[0]).await;
    assert_eq!(p["status"], "succeeded");
    assert_eq!(p["execution"]["attempts"], 2);
}

async fn completing_is_idempotent_for_the_same_body_only(db: &TestDb) {
    let t = app(db).await;
    release(&t, "acme", 1).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let job = claim(&t, &key, json!({})).await.remove(0);
    assert_eq!(
        complete(&t, &key, &job, "succeeded", false).await.status,
        StatusCode::OK
    );
    let again = complete(&t, &key, &job, "succeeded", false).await;
    assert_eq!(again.status, StatusCode::OK, "the same body again is answered alike");
    assert_eq!(again.body["state"], "succeeded");
    let r = complete(&t, &key, &job, "failed", false).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "invalid_transition"));
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("different outcome"));
}

async fn a_retryable_failure_returns_with_backoff_until_the_attempt_limit(db: &TestDb) {
    let t = app(db).await;
    let (token, ids) = release(&t, "acme", 1).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    for attempt in 1..=3 {
        let job = claim(&t, &key, json!({})).await.remove(0);
        assert_eq!(job["attempt"], attempt);
        let r = complete(&t, &key, &job, "failed", true).await;
        assert_eq!(r.status, StatusCode::OK);
        if attempt < 3 {
            assert_eq!(r.body["state"], "queued");
            assert_eq!(status_of(&t, &token, &ids[0]).await["status"], "queued");
            assert!(claim(&t, &key, json!({})).await.is_empty(), "backoff: not at once");
            t.advance(1 << attempt);
        } else {
            assert_eq!(r.body["state"], "failed", "max_attempts = 3");
        }
    }
    let p = status_of(&t, &token, &ids[0]).await;
    assert_eq!(p["status"], "failed");
    assert_eq!(p["execution"]["status"], "failed");
}

async fn heartbeats_extend_a_live_lease(db: &TestDb) {
    let t = app(db).await;
    release(&t, "acme", 1).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let job = claim(&t, &key, json!({ "lease_seconds": 10 })).await.remove(0);
    let hb = format!("/api/v1/jobs/{}/heartbeat", job["job_id"].as_str().unwrap());
    for _ in 0..3 {
        t.advance(8);
        let r = t
            .post(&hb, &key, json!({ "lease_id": job["lease_id"], "lease_seconds": 10 }))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        t.core().sweep().await.unwrap();
    }
    assert_eq!(
        complete(&t, &key, &job, "succeeded", false).await.status,
        StatusCode::OK,
        "24 s later, still held"
    );
}

async fn executors_see_only_their_env_and_tools(db: &TestDb) {
    let t = app(db).await;
    release(&t, "acme", 2).await;
    let staging = t.executor_key("staging", &["note.write"]).await;
    let other_tool = t.executor_key("prod", &["ticket.close"]).await;
    assert!(claim(&t, &staging, json!({ "max": 10 })).await.is_empty());
    assert!(claim(&t, &other_tool, json!({ "max": 10 })).await.is_empty());
    assert!(
        claim(&t, &other_tool, json!({ "tools": ["note.write"] }))
            .await
            .is_empty(),
        "the body narrows, never widens"
    );
    let key = t.executor_key("prod", &["note.write"]).await;
    let jobs = claim(&t, &key, json!({ "max": 10 })).await;
    assert_eq!(jobs.len(), 2);
    let r = complete(&t, &other_tool, &jobs[0], "succeeded", false).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another key's job is not visible");
    let r = t.post("/api/v1/jobs/claim", &key, json!({ "max": 0 })).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = t
        .post("/api/v1/jobs/claim", &key, json!({ "lease_seconds": 100000 }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

async fn pending_and_approved_but_unrun_proposals_expire(db: &TestDb) {
    let t = app(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let pending = t.post("/api/v1/proposals", &token, refund("r1")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (bulk_token, released) = release(&t, "acme", 1).await;
    // note.write: execute within 600 s; refund.create: expires after 3600 s.
    let _ = bulk_token;
    t.advance(601);
    t.core().sweep().await.unwrap();
    assert_eq!(stored_status(&t, &released[0]).await, "expired");
    let key = t.executor_key("prod", &["note.write"]).await;
    assert!(
        claim(&t, &key, json!({})).await.is_empty(),
        "an expired job is never claimed"
    );
    t.advance(3000);
    t.core().sweep().await.unwrap();
    assert_eq!(stored_status(&t, &pending).await, "expired");
    let e = t.approve_as(&alice, &pending).await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}

async fn a_kill_switch_holds_release_and_claims_until_it_is_off(db: &TestDb) {
    let t = app(db).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let (token, queued) = release(&t, "acme", 1).await;
    t.core()
        .set_switch(
            &Admin::cli(),
            countersign_core::controls::Scope::Tool,
            "note.write",
            true,
            "incident 7",
        )
        .await
        .unwrap();
    assert!(
        claim(&t, &key, json!({})).await.is_empty(),
        "queued jobs are not handed out"
    );
    // New work is refused while it is on.
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            json!({ "tool": "note.write", "args": { "text": "x" }, "idempotency_key": "later" }),
        )
        .await;
    assert_eq!(r.code(), "disabled");
    t.core()
        .set_switch(
            &Admin::cli(),
            countersign_core::controls::Scope::Tool,
            "note.write",
            false,
            "resolved",
        )
        .await
        .unwrap();
    let jobs = claim(&t, &key, json!({})).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["proposal_id"], queued[0].as_str());
}

async fn an_approval_while_a_route_switch_is_on_is_held_then_released(db: &TestDb) {
    let t = app(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let key = t.executor_key("prod", &["ticket.close"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("k")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another tenant's switch (a tenant someone has) covers nothing here.
    t.person("carol", &["reviewer"], &["globex"]).await;
    t.core()
        .set_switch(
            &Admin::cli(),
            countersign_core::controls::Scope::Tenant,
            "globex",
            true,
            "other tenant",
        )
        .await
        .unwrap();
    t.approve_as(&alice, &id).await.unwrap();
    assert_eq!(
        claim(&t, &key, json!({})).await.len(),
        1,
        "a switch on another tenant holds nothing here"
    );
}

async fn a_long_poll_wakes_when_a_job_is_released(db: &TestDb) {
    let t = Arc::new(app(db).await);
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let key = t.executor_key("prod", &["ticket.close"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("k")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let poller = {
        let (t, key) = (t.clone(), key.clone());
        tokio::spawn(async move {
            let jobs = claim(&t, &key, json!({ "wait_seconds": 30 })).await;
            (jobs, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.approve_as(&alice, &id).await.unwrap();
    let committed = Instant::now();
    let (jobs, returned) = poller.await.unwrap();
    assert_eq!(jobs.len(), 1);
    let latency = returned.duration_since(committed);
    println!(
        "approve -> claim latency: {:.1} ms ({})",
        latency.as_secs_f64() * 1000.0,
        t.core().backend().name()
    );
    assert!(
        latency < Duration::from_secs(2),
        "woken by the release, not a poll: {latency:?}"
    );
}

/// A metric's value in the Prometheus text (unlabelled series only).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_text(t: &TestApp) -> String {
    let r = t.send(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    r.body.as_str().unwrap().to_owned()
}

async fn metrics_show_leased_jobs_lost_leases_and_the_oldest_wait(db: &TestDb) {
    let t = app(db).await;
    // The chain is verified in the background from the start.
    let started = Instant::now();
    let text = loop {
        let text = metrics_text(&t).await;
        if metric(&text, "countersign_audit_verified_age_seconds").unwrap_or(-1.0) >= 0.0 {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never verified: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metric(&text, "countersign_audit_chain_broken"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "countersign_oldest_pending_seconds"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "countersign_breakers_tripped"), Some(0.0), "{text}");

    // A proposal waits for review; its wait shows in seconds.
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t.post("/api/v1/proposals", &token, close_ticket("wait")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    t.advance(90);
    let text = metrics_text(&t).await;
    assert_eq!(metric(&text, "countersign_proposals_pending"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "countersign_oldest_pending_seconds"),
        Some(90.0),
        "{text}"
    );

    // Two jobs: one held by an executor, one waiting.
    release(&t, "acme", 2).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    claim(&t, &key, json!({ "max": 1, "lease_seconds": 30 })).await;
    let text = metrics_text(&t).await;
    assert_eq!(metric(&text, "countersign_jobs_leased"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "countersign_jobs_queued"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "countersign_lease_expiries_total").unwrap_or(0.0),
        0.0,
        "{text}"
    );
    // Its holder dies: the lease runs out and is counted once.
    t.advance(31);
    assert_eq!(t.core().sweep().await.unwrap(), 1);
    t.core().sweep().await.unwrap();
    let text = metrics_text(&t).await;
    assert_eq!(metric(&text, "countersign_lease_expiries_total"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "countersign_jobs_leased"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "countersign_jobs_queued"), Some(2.0), "{text}");
}

/// An executor key made by `t`: (its id, its plaintext).
async fn executor_key_with_id(t: &TestApp, tools: &[&str]) -> (String, String) {
    t.core()
        .create_key(
            &Admin::cli(),
            countersign_core::service::NewKey {
                kind: countersign_core::tokens::KeyKind::Executor,
                name: "exec".into(),
                tenant: None,
                env: "prod".into(),
                tools: tools.iter().map(|t| t.to_string()).collect(),
            },
        )
        .await
        .unwrap()
}

/// A process admits an executor's key from what it knows of it (no read of
/// the key per call); a key revoked by another process is still refused at
/// its next call, whichever call it is, and nothing is done for it.
async fn an_executor_key_revoked_in_another_process_is_refused_by_each_executor_call(db: &TestDb) {
    let t = app(db).await;
    // A second process over the same database, as behind a load balancer.
    let other = app(db).await;
    release(&t, "acme", 10).await;
    let cases = [
        "a heartbeat",
        "a success (finished with others)",
        "a failure (finished one by one)",
        "a completion whose body does not fit",
        "a claim with jobs waiting",
        "a claim of tools it does not serve",
        "a long-poll claim with nothing to claim",
    ];
    for what in cases {
        let (id, key) = executor_key_with_id(&t, &["note.write"]).await;
        // This process has seen the key live, and leased a job to it.
        let job = claim(&t, &key, json!({ "max": 1 })).await.remove(0);
        other.core().revoke_key(&Admin::cli(), &id).await.unwrap();
        let recorded = t.inspect().audit_events().await.unwrap().len();
        let job_path = |verb: &str| format!("/api/v1/jobs/{}/{verb}", job["job_id"].as_str().unwrap());
        let started = Instant::now();
        let r = match what {
            "a heartbeat" => {
                t.post(&job_path("heartbeat"), &key, json!({ "lease_id": job["lease_id"] }))
                    .await
            }
            "a success (finished with others)" => complete(&t, &key, &job, "succeeded", false).await,
            "a failure (finished one by one)" => complete(&t, &key, &job, "failed", false).await,
            "a completion whose body does not fit" => {
                t.post(
                    &job_path("complete"),
                    &key,
                    json!({ "lease_id": job["lease_id"], "no_such_field": 1 }),
                )
                .await
            }
            "a claim with jobs waiting" => t.post("/api/v1/jobs/claim", &key, json!({ "max": 1 })).await,
            "a claim of tools it does not serve" => {
                t.post("/api/v1/jobs/claim", &key, json!({ "tools": ["ticket.close"] }))
                    .await
            }
            _ => {
                t.post(
                    "/api/v1/jobs/claim",
                    &key,
                    json!({ "kinds": ["preview"], "wait_seconds": 20 }),
                )
                .await
            }
        };
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "unauthenticated"),
            "{what}: {}",
            r.body
        );
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains("revoked"),
            "{what}: {}",
            r.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: refused at once, not after a wait"
        );
        assert_eq!(
            t.inspect().audit_events().await.unwrap().len(),
            recorded,
            "{what}: nothing done for a revoked key"
        );
        assert_eq!(
            stored_status(&t, job["proposal_id"].as_str().unwrap()).await,
            "running",
            "{what}"
        );
        // Known revoked now: refused before any read.
        let reads = t.core().executor_key_reads();
        let again = t.post("/api/v1/jobs/claim", &key, json!({ "max": 1 })).await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{what}: {}", again.body);
        assert_eq!(t.core().executor_key_reads(), reads, "{what}");
    }
    assert!(t.core().verify_audit_chain().await.unwrap().ok());
}

/// Revoked where it is known: refused at its next call, with no read.
async fn an_executor_key_revoked_in_this_process_is_refused_without_a_read(db: &TestDb) {
    let t = app(db).await;
    release(&t, "acme", 1).await;
    let (id, key) = executor_key_with_id(&t, &["note.write"]).await;
    let job = claim(&t, &key, json!({})).await.remove(0);
    t.core().revoke_key(&Admin::cli(), &id).await.unwrap();
    let reads = t.core().executor_key_reads();
    let r = complete(&t, &key, &job, "succeeded", false).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated"),
        "{}",
        r.body
    );
    assert_eq!(t.core().executor_key_reads(), reads);
    assert_eq!(stored_status(&t, job["proposal_id"].as_str().unwrap()).await, "running");
}

/// The drain's hot path: a known key's claims and completions read no key
/// row before they act (their transactions check it).
async fn a_known_executors_later_calls_read_no_key_row(db: &TestDb) {
    let t = app(db).await;
    let (_, ids) = release(&t, "acme", 6).await;
    let key = t.executor_key("prod", &["note.write"]).await;
    let jobs = claim(&t, &key, json!({ "max": 1 })).await;
    let reads = t.core().executor_key_reads();
    assert!(reads >= 1, "the first call reads the key");
    let mut jobs = jobs;
    for _ in 0..5 {
        let job = jobs.remove(0);
        let hb = t
            .post(
                &format!("/api/v1/jobs/{}/heartbeat", job["job_id"].as_str().unwrap()),
                &key,
                json!({ "lease_id": job["lease_id"] }),
            )
            .await;
        assert_eq!(hb.status, StatusCode::OK, "{}", hb.body);
        let r = complete(&t, &key, &job, "succeeded", false).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        jobs = claim(&t, &key, json!({ "max": 1 })).await;
    }
    let r = complete(&t, &key, &jobs[0], "succeeded", false).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(t.core().executor_key_reads(), reads, "no key read after the first");
    for id in &ids {
        assert_eq!(stored_status(&t, id).await, "succeeded");
    }
}

countersign_core::store_tests!(
    an_executor_key_revoked_in_another_process_is_refused_by_each_executor_call,
    an_executor_key_revoked_in_this_process_is_refused_without_a_read,
    a_known_executors_later_calls_read_no_key_row,
    two_hundred_jobs_sixteen_executors_each_completed_exactly_once,
    successes_reported_at_once_each_finish_once_with_their_own_event,
    a_dead_executors_lease_runs_out_and_the_job_returns_with_the_next_attempt,
    completing_is_idempotent_for_the_same_body_only,
    a_retryable_failure_returns_with_backoff_until_the_attempt_limit,
    heartbeats_extend_a_live_lease,
    executors_see_only_their_env_and_tools,
    pending_and_approved_but_unrun_proposals_expire,
    a_kill_switch_holds_release_and_claims_until_it_is_off,
    an_approval_while_a_route_switch_is_on_is_held_then_released,
    a_long_poll_wakes_when_a_job_is_released,
    metrics_show_leased_jobs_lost_leases_and_the_oldest_wait,
);
