//! Every door tried as an attacker would, on SQLite and PostgreSQL: where
//! sign-in may send a person, how many guesses a burst gets, who sees which
//! banner, how long a live stream lives, what an anonymous request may write,
//! what one caller can make the server hold or compute, and leases.

mod common;
use common::*;
use countersign_core::controls::Scope;
use countersign_core::lifecycle::Status;
use countersign_core::service::Admin;
use countersign_core::testing::TestDb;
use countersign_core::Error;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const LOGIN: &str = "/api/login";

async fn sign_in_never_sends_a_person_off_site(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    for next in [
        "/\\evil.example",
        "/\t/evil.example",
        "//evil.example",
        "/\n",
        "https://evil.example/",
        "/%0a",
    ] {
        let b = Browser::new(&t);
        let csrf = b.csrf().await;
        let r = b
            .http
            .post(format!("{}{LOGIN}", b.base))
            .header("origin", &b.base)
            .form(&[
                ("username", "alice"),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_redirection() || r.status().is_success(),
            "{next:?}: {}",
            r.status()
        );
        let to = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            !to.contains("evil") && !to.starts_with("//") && !to.contains('\\'),
            "{next:?} -> {to}"
        );
    }
    // A path of this app is followed.
    let b = Browser::new(&t);
    let csrf = b.csrf().await;
    let r = b
        .http
        .post(format!("{}{LOGIN}", b.base))
        .header("origin", &b.base)
        .form(&[
            ("username", "alice"),
            ("password", PASSWORD),
            ("csrf", &csrf),
            ("next", "/history?tool=x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get("location").unwrap(), "/history?tool=x");
}

async fn a_burst_of_parallel_guesses_gets_a_handful_of_checks(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let core = t.app.core.clone();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let core = core.clone();
            tokio::spawn(async move { core.login("alice", "not the password at all", "10.0.0.9").await })
        })
        .collect();
    let (mut checked, mut throttled) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => checked += 1,
            Err(Error::Unauthenticated(_)) => checked += 1,
            Err(Error::RateLimited { .. }) => throttled += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // Five free failures and the one that trips the block: at most six real checks.
    assert!(checked <= 6, "{checked} of 40 guesses were checked");
    assert_eq!(checked + throttled, 40);
    // The account stays blocked for a while from that address, right password or not.
    let e = t.core().login("alice", PASSWORD, "10.0.0.9").await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { .. }), "{e:?}");
    // From her own address alice still signs in: the flood locked out the
    // flooder, not her.
    t.core().login("alice", PASSWORD, "10.0.0.10").await.unwrap();
}

async fn banners_are_shown_only_to_the_people_they_concern(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let carol = t.person("carol", &["reviewer"], &["globex"]).await;
    let root = t.person("root", &["admin"], &[]).await;
    t.core()
        .set_switch(&Admin::cli(), Scope::Tenant, "acme", true, "acme's billing incident")
        .await
        .unwrap();
    t.core()
        .start_break_glass(&root, PASSWORD, "payment provider outage", "INC-77", 30, "127.0.0.1")
        .await
        .unwrap();
    assert!(t.core().banners(None).await.unwrap().is_empty(), "a stranger sees none");
    let text =
        |ps: Vec<countersign_core::service::Banner>| ps.into_iter().map(|b| b.text).collect::<Vec<_>>().join(" | ");
    let for_alice = text(t.core().banners(Some(&alice)).await.unwrap());
    assert!(for_alice.contains("acme's billing incident"), "{for_alice}");
    assert!(
        !for_alice.contains("INC-77") && !for_alice.contains("root"),
        "{for_alice}"
    );
    let for_carol = text(t.core().banners(Some(&carol)).await.unwrap());
    assert!(
        !for_carol.contains("acme"),
        "another tenant's switch is not carol's business: {for_carol}"
    );
    let for_root = text(t.core().banners(Some(&root)).await.unwrap());
    assert!(for_root.contains("INC-77") && for_root.contains("acme"), "{for_root}");
    // Over HTTP, a visitor who is not signed in gets no banners at all.
    let r = t.send(reqwest::Method::GET, "/api/session", None, None).await;
    assert_eq!(r.body["banners"], json!([]), "{}", r.body);
}

/// Read a live stream until it ends; true if it ended within `limit`.
async fn stream_ends_within(b: &Browser, limit: Duration, meanwhile: impl std::future::Future<Output = ()>) -> bool {
    let mut r = b.page("/events").await;
    assert_eq!(r.status(), StatusCode::OK);
    meanwhile.await;
    tokio::time::timeout(limit, async { while let Ok(Some(_)) = r.chunk().await {} })
        .await
        .is_ok()
}

async fn the_live_stream_ends_with_the_session(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let disable = async {
        t.advance(1);
        t.core().set_disabled(&Admin::cli(), &alice.id, true).await.unwrap();
    };
    assert!(
        stream_ends_within(&b, Duration::from_secs(15), disable).await,
        "disabling ends the stream"
    );

    t.core().set_disabled(&Admin::cli(), &alice.id, false).await.unwrap();
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let sign_out = async {
        let other = Browser {
            http: b.http.clone(),
            base: b.base.clone(),
        };
        let csrf = other.session_csrf().await;
        other.form("/api/logout", &[("csrf", &csrf)], Some(&other.base)).await;
    };
    assert!(
        stream_ends_within(&b, Duration::from_secs(15), sign_out).await,
        "signing out ends the stream"
    );
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let reset = async {
        t.advance(1);
        t.core()
            .reset_password(&Admin::cli(), &alice.id, "a brand new password 123".into())
            .await
            .unwrap();
    };
    assert!(
        stream_ends_within(&b, Duration::from_secs(15), reset).await,
        "a password reset ends the stream"
    );

    t.core()
        .reset_password(&Admin::cli(), &alice.id, PASSWORD.into())
        .await
        .unwrap();
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let absolute = t.core().settings().session_absolute_secs;
    let timeout = async { t.advance(absolute + 1) };
    assert!(
        stream_ends_within(&b, Duration::from_secs(15), timeout).await,
        "the absolute timeout ends the stream"
    );

    // A person holds at most four streams at once; the fifth is refused.
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let r = b.page("/events").await;
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    assert_eq!(b.page("/events").await.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(open);
}

/// Read the live stream until `until` appears in it (or `limit` passes);
/// answers everything read.
async fn read_stream_until(r: &mut reqwest::Response, until: &str, limit: Duration) -> String {
    let mut text = String::new();
    let _ = tokio::time::timeout(limit, async {
        while let Ok(Some(chunk)) = r.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(until) {
                break;
            }
        }
    })
    .await;
    text
}

async fn a_live_stream_stops_telling_of_a_tenant_taken_away(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme", "globex"]).await;
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let mut stream = b.page("/events").await;
    assert_eq!(stream.status(), StatusCode::OK);
    let (_, acme) = t.run("acme", "prod", "support/send", None).await;
    let (_, globex) = t.run("globex", "prod", "support/send", None).await;
    let propose = |token: String, key: &'static str| {
        let t = &t;
        async move {
            t.post("/api/v1/proposals", &token, close_ticket(key)).await.body["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let told = propose(acme.clone(), "before").await;
    let seen = read_stream_until(&mut stream, &told, Duration::from_secs(10)).await;
    assert!(
        seen.contains(&told),
        "acme's change is told while alice reviews acme: {seen}"
    );

    t.core()
        .set_access(&Admin::cli(), &alice.id, &["reviewer".into()], &["globex".into()])
        .await
        .unwrap();
    // Within its recheck (five seconds) the stream learns what alice may see.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hidden = propose(acme, "after").await;
    let shown = propose(globex, "globex").await;
    let seen = read_stream_until(&mut stream, &shown, Duration::from_secs(10)).await;
    assert!(seen.contains(&shown), "globex's change is still told: {seen}");
    assert!(
        !seen.contains(&hidden),
        "acme's change was told after acme was taken away: {seen}"
    );
}

async fn anonymous_requests_write_no_session(db: &TestDb) {
    let t = spawn(db).await;
    let count = || async {
        let sql = if db.is_postgres() {
            "SELECT COUNT(*) FROM tower_sessions.session"
        } else {
            "SELECT COUNT(*) FROM tower_sessions"
        };
        sqlx_count(&t.db_url, sql).await
    };
    let before = count().await;
    let visitor = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in [
        "/",
        "/no/such/page",
        "/history",
        "/proposals/prp_x",
        "/audit",
        "/pkg/none.js",
        "/favicon.ico",
        "/api/session",
    ] {
        let r = visitor.get(t.url(path)).send().await.unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{path} set a cookie");
    }
    assert_eq!(count().await, before, "no session was written");
    // The sign-in page makes one, and an address may make only so many.
    let mut made = 0;
    let mut refused = 0;
    for _ in 0..40 {
        let r = reqwest::Client::new().get(t.url("/login")).send().await.unwrap();
        match r.status() {
            StatusCode::OK => made += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            s => panic!("{s}"),
        }
    }
    assert_eq!((made, refused), (30, 10));
    assert_eq!(count().await, before + 30);
}

async fn sqlx_count(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

async fn old_sign_in_attempts_are_forgotten_and_typed_names_kept_short(db: &TestDb) {
    let t = spawn(db).await;
    let typed = "a name nobody has ".repeat(300);
    let _ = t.core().login(&typed, "some password", "10.1.1.1").await;
    let _ = t.core().login("nobody", "some password", "10.1.1.2").await;
    let count = "SELECT COUNT(*) FROM login_throttle";
    assert!(sqlx_count(&t.db_url, count).await >= 4);
    let longest = sqlx_count(
        &t.db_url,
        "SELECT CAST(COALESCE(MAX(LENGTH(key)), 0) AS BIGINT) FROM login_throttle",
    )
    .await;
    assert!(longest <= 100, "a throttle key of {longest} characters");
    // Within the window they are kept; after it, the sweeper forgets them.
    t.advance(60);
    t.core().sweep().await.unwrap();
    assert!(sqlx_count(&t.db_url, count).await >= 4);
    t.advance(15 * 60);
    t.core().sweep().await.unwrap();
    assert_eq!(sqlx_count(&t.db_url, count).await, 0);
}

async fn a_flood_of_huge_previews_does_not_stall_other_requests(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    // The worst case for a line diff: 4,800 lines a side, none alike.
    let lines = |tag: &str| (0..4800).map(|i| format!("{tag}{i:x}")).collect::<Vec<_>>().join("\n");
    let (before, after) = (lines("a"), lines("b"));
    assert!(before.len() < 32 * 1024 && after.len() < 32 * 1024);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let (http, url, token, stop) = (t.http.clone(), t.url("/api/v1/proposals"), token.clone(), stop.clone());
            let (before, after) = (before.clone(), after.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut body = close_ticket(&format!("big-{i}-{n}"));
                    body["preview"] = json!({ "before": before, "after": after });
                    let _ = http.post(&url).bearer_auth(&token).json(&body).send().await;
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = reqwest::Client::new().get(t.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "healthz under a flood of 4,000-line previews: median {median:?}, max {:?}",
        times.last().unwrap()
    );
    assert!(median < Duration::from_millis(250), "median {median:?}");
    // And the diff stored is bounded.
    let pending = t
        .core()
        .history(&t.person("audrey", &["auditor"], &["acme"]).await, &Default::default())
        .await
        .unwrap();
    let any = pending.entries.first().expect("some proposals got through");
    let diff: Vec<Value> = serde_json::from_str(any.proposal.diff.as_deref().unwrap()).unwrap();
    assert!(diff.len() <= 2001, "{}", diff.len());
}

async fn bogus_run_tokens_do_not_reload_the_keys_each_time(db: &TestDb) {
    let t = spawn(db).await;
    let metric = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("countersign_keyring_reloads_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = metric(
        t.send(reqwest::Method::GET, "/metrics", None, None)
            .await
            .body
            .as_str()
            .unwrap(),
    );
    for i in 0..50 {
        let bogus = format!("crt_sgk_{i:026}.eyJydW4iOiJ4In0.AAAA");
        let r = t.post("/api/v1/check", &bogus, json!({ "tool": "kb.search" })).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let after = metric(
        t.send(reqwest::Method::GET, "/metrics", None, None)
            .await
            .body
            .as_str()
            .unwrap(),
    );
    // The recorder is per process and tests run in their own; allow the
    // test's own second.
    assert!(after - before <= 2.0, "{before} -> {after} reloads for 50 bogus tokens");
    // And the counter is real: an unknown key id did make the keyring look again.
    assert!(after >= 1.0, "{before} -> {after}: no reload counted at all");
}

async fn an_idle_waiting_executor_writes_nothing(db: &TestDb) {
    let t = spawn(db).await;
    let exec = t.executor_key("prod", &["ticket.close"]).await;
    let before = t.core().gauges().await.unwrap().write_batches;
    let r = t.post("/api/v1/jobs/claim", &exec, json!({ "wait_seconds": 3 })).await;
    assert_eq!(r.body["jobs"], json!([]));
    assert_eq!(
        t.core().gauges().await.unwrap().write_batches,
        before,
        "waiting took no turn of the writer"
    );
}

async fn one_credential_cannot_hold_unbounded_long_polls(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("k")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let waits: Vec<_> = (0..countersign_core::service::MAX_LONG_POLLS_PER_HOLDER)
        .map(|_| {
            let (http, url, token) = (
                t.http.clone(),
                t.url(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=5")),
                token.clone(),
            );
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = t
        .get(&format!("/api/v1/proposals/{id}/wait?timeout_seconds=5"), &token)
        .await;
    assert_eq!(extra.status, StatusCode::TOO_MANY_REQUESTS, "{}", extra.body);
    for w in waits {
        assert_eq!(w.await.unwrap(), StatusCode::OK);
    }
}

async fn a_lease_that_ran_out_cannot_complete_and_a_heartbeat_cannot_outlast_the_deadline(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let exec = t.executor_key("prod", &["ticket.close"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, close_ticket("k")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.approve_as(&alice, &id).await.unwrap();
    let job = t
        .post("/api/v1/jobs/claim", &exec, json!({ "lease_seconds": 10 }))
        .await
        .body["jobs"][0]
        .clone();
    let path = format!("/api/v1/jobs/{}", job["job_id"].as_str().unwrap());
    let heartbeat = format!("{path}/heartbeat");
    let beat = |secs: i64| {
        t.post(
            &heartbeat,
            &exec,
            json!({ "lease_id": job["lease_id"], "lease_seconds": secs }),
        )
    };
    // The job must run within an hour of its approval (the default): a lease
    // reaching past that is refused, one within it is granted.
    t.advance(5);
    let r = beat(3600).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition"),
        "{}",
        r.body
    );
    let r = beat(3000).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    t.advance(2900);
    let r = beat(1000).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition"),
        "{}",
        r.body
    );
    // The lease ran out; the deadline has not passed and the sweeper has not
    // re-offered the job yet: the stale holder still cannot complete it.
    t.advance(200);
    let r = t
        .post(
            &format!("{path}/complete"),
            &exec,
            json!({ "lease_id": job["lease_id"], "status": "succeeded" }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "invalid_transition"),
        "{}",
        r.body
    );
    assert_eq!(
        t.inspect().proposal(&id).await.unwrap().unwrap().status,
        Status::Running
    );
}

fn ms_of(rfc3339: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

async fn a_claim_never_leases_past_the_deadline(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let exec = t.executor_key("prod", &["ticket.close"]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let mut ids = Vec::new();
    for key in ["late", "too-late"] {
        let id = t.post("/api/v1/proposals", &token, close_ticket(key)).await.body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        t.approve_as(&alice, &id).await.unwrap();
        ids.push(id);
    }
    // Approved now: each must run within the hour (the default).
    let deadline = t.now_ms() + 3600 * 1000;
    t.advance(3590);
    let r = t
        .post("/api/v1/jobs/claim", &exec, json!({ "lease_seconds": 600, "max": 1 }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let job = &r.body["jobs"][0];
    // (The API's times are whole seconds.)
    assert_eq!(
        ms_of(&job["lease_expires_at"]),
        deadline / 1000 * 1000,
        "a 600 s lease ten seconds before the deadline ends at the deadline: {job}"
    );
    // Past the deadline, before any sweep: the other job is not offered.
    t.advance(11);
    let r = t
        .post("/api/v1/jobs/claim", &exec, json!({ "lease_seconds": 60, "max": 10 }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["jobs"], json!([]), "a job past its deadline was offered");
    t.core().sweep().await.unwrap();
    assert_eq!(
        t.inspect().proposal(&ids[1]).await.unwrap().unwrap().status,
        Status::Expired
    );
}

async fn small_doors_are_shut(db: &TestDb) {
    let t = spawn(db).await;
    // A tenant switch on a tenant nobody has.
    let e = t
        .core()
        .set_switch(&Admin::cli(), Scope::Tenant, "ACME", true, "typo")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::BadRequest(m) if m.contains("no person or key")),
        "{e:?}"
    );
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    // A tool name that could forge a log line is refused before it goes anywhere.
    let r = t
        .post("/api/v1/check", &token, json!({ "tool": "kb.search\nINFO forged" }))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "bad_request"));
    // A secret in the idempotency key.
    let mut body = close_ticket("sk_live_abcdefghijklmnopqrstuvwxyz012345");
    body["idempotency_key"] = json!("sk_live_abcdefghijklmnopqrstuvwxyz012345");
    let r = t.post("/api/v1/proposals", &token, body).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "secret_in_args")
    );
    assert_eq!(r.body["error"]["details"]["field"], "idempotency_key");
    // A client's request id of an unsafe shape (spaces that forge a log
    // field, or one too long) is not trusted into the log or audit: the
    // server gives the request its own id.
    for unsafe_id in ["forged id=1 level=ERROR".to_owned(), "a".repeat(101)] {
        let res = t
            .http
            .post(t.url("/api/v1/check"))
            .bearer_auth(&token)
            .header("x-request-id", unsafe_id.as_str())
            .json(&json!({ "tool": "kb.search" }))
            .send()
            .await
            .unwrap();
        let id = res.headers().get("x-request-id").unwrap().to_str().unwrap().to_owned();
        assert!(id.starts_with("req_"), "{unsafe_id:?} came back as {id}");
    }
    let mut ids = Vec::new();
    t.core()
        .export_audit(0, |e| {
            ids.push(e.request_id.clone());
            Ok(())
        })
        .await
        .unwrap();
    assert!(
        !ids.iter()
            .flatten()
            .any(|i| i.contains("forged") || i.starts_with("aaaa")),
        "{ids:?}"
    );
    let res = t
        .http
        .post(t.url("/api/v1/check"))
        .bearer_auth(&token)
        .header("x-request-id", "trace-7.a:b_c")
        .json(&json!({ "tool": "kb.search" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), "trace-7.a:b_c");
}

async fn an_executor_result_carrying_a_secret_is_refused(db: &TestDb) {
    let t = spawn(db).await;
    let exec = t.executor_key("prod", &["kb.search"]).await;
    let (_, token) = t.run("acme", "prod", "support/draft", None).await;
    let r = t
        .post(
            "/api/v1/proposals",
            &token,
            json!({ "tool": "kb.search", "args": { "query": "x" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let job = t.post("/api/v1/jobs/claim", &exec, json!({})).await.body["jobs"][0].clone();
    let r = t
        .post(
            &format!("/api/v1/jobs/{}/complete", job["job_id"].as_str().unwrap()),
            &exec,
            json!({ "lease_id": job["lease_id"], "status": "succeeded", "result": { "token": "ghp_abcdefghijklmnopqrstuvwxyz0123456789" } }),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "secret_in_args")
    );
    assert_eq!(r.body["error"]["details"]["field"], "result.token");
}

/// The review page's Approve, posted as the page's form would.
async fn approve_in_browser(b: &Browser, id: &str, hash: &str) -> (StatusCode, String) {
    use leptos::server_fn::ServerFn;
    let csrf = b.session_csrf().await;
    b.form(
        app::functions::proposals::Decide::PATH,
        &[
            ("id", id),
            ("verdict", "approve"),
            ("comment", "outage: refund now"),
            ("content_hash", hash),
            ("csrf", &csrf),
        ],
        Some(&b.base),
    )
    .await
}

async fn break_glass_belongs_to_the_browser_session_that_started_it(db: &TestDb) {
    use leptos::server_fn::ServerFn;
    let t = spawn(db).await;
    t.person("root", &["admin"], &[]).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let id = t.post("/api/v1/proposals", &token, refund("r-glass")).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = t.inspect().proposal(&id).await.unwrap().unwrap().content_hash;
    let (started_here, elsewhere) = (Browser::new(&t), Browser::new(&t));
    for b in [&started_here, &elsewhere] {
        b.login("root", PASSWORD).await;
    }
    let csrf = started_here.session_csrf().await;
    started_here
        .form(
            app::functions::admin::StartBreakGlass::PATH,
            &[
                ("password", PASSWORD),
                ("reason", "payment provider outage"),
                ("incident", "INC-7"),
                ("minutes", "10"),
                ("csrf", &csrf),
            ],
            Some(&started_here.base),
        )
        .await;
    assert_eq!(
        t.core().break_glass_sessions().await.unwrap().len(),
        1,
        "break-glass started"
    );
    // The same admin in another browser is an admin without break-glass:
    // refused, nothing recorded.
    approve_in_browser(&elsewhere, &id, &hash).await;
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(p.status, Status::Pending);
    // In the session that broke the glass, the admin approves alone.
    approve_in_browser(&started_here, &id, &hash).await;
    let p = t.inspect().proposal(&id).await.unwrap().unwrap();
    assert_eq!(
        p.status,
        Status::Queued,
        "break-glass approves a destructive action alone"
    );
}

async fn break_glass_is_throttled_and_bound_to_its_session(db: &TestDb) {
    let t = spawn(db).await;
    let root = t.person("root", &["admin"], &[]).await;
    // A stranger floods sign-in in root's name: root's break-glass (and
    // root's own sign-in from elsewhere) stay usable.
    for _ in 0..12 {
        let _ = t.core().login("root", "a guess at root", "203.0.113.5").await;
    }
    let started = t
        .core()
        .start_break_glass(&root, PASSWORD, "payment provider outage", "INC-0", 10, "10.1.1.1")
        .await
        .unwrap();
    t.core().end_break_glass(&root, &started.id).await.unwrap();
    t.core().login("root", PASSWORD, "10.1.1.1").await.unwrap();
    // A right password starts the count again: four mistakes, a success,
    // then four more mistakes are not throttled.
    for round in 0..2 {
        for _ in 0..4 {
            let e = t
                .core()
                .start_break_glass(
                    &root,
                    "wrong password here",
                    "payment provider outage",
                    "INC-1",
                    10,
                    "10.1.1.1",
                )
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Forbidden(_)), "round {round}: {e:?}");
        }
        if round == 0 {
            let b = t
                .core()
                .start_break_glass(&root, PASSWORD, "payment provider outage", "INC-1", 10, "10.1.1.1")
                .await
                .unwrap();
            t.core().end_break_glass(&root, &b.id).await.unwrap();
        }
    }
    let mut throttled = false;
    for _ in 0..8 {
        match t
            .core()
            .start_break_glass(
                &root,
                "wrong password here",
                "payment provider outage",
                "INC-1",
                10,
                "10.1.1.1",
            )
            .await
        {
            Err(Error::RateLimited { .. }) => {
                throttled = true;
                break;
            }
            Err(Error::Forbidden(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(throttled, "password guesses at break-glass are throttled like sign-in");
}

async fn failed_sign_ins_record_a_name_only_if_it_is_an_account(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let _ = t.core().login("correct horse battery staple", "x", "10.2.2.2").await;
    let _ = t.core().login("alice", "wrong password!!", "10.2.2.3").await;
    let mut details = Vec::new();
    t.core()
        .export_audit(0, |e| {
            if e.action == "login.failed" {
                details.push(e.details.clone());
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(details.len(), 2);
    assert!(
        !details.iter().any(|d| d.contains("horse")),
        "a password typed as a name is not recorded: {details:?}"
    );
    assert!(details.iter().any(|d| d.contains("\"alice\"")), "{details:?}");
}

async fn a_policy_change_is_announced_and_auditors_see_events_of_no_tenant(db: &TestDb) {
    let t = spawn(db).await;
    let rx = Receiver::start(0).await;
    t.core()
        .add_webhook(&Admin::cli(), &rx.url(), &["policy.changed".into()], "json")
        .await
        .unwrap();
    let changed = format!(
        "{}\n# a comment makes a new version\n",
        include_str!("../../examples/policy.toml")
    );
    let p = countersign_core::policy::load_policy(&changed).unwrap();
    assert!(t.core().replace_policy(p, "cli").await.unwrap());
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].1.contains("policy.changed"), "{}", got[0].1);
    // The auditor of acme sees the policy loads (no tenant) in the audit log.
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let page = t.core().audit_page(&audrey, None).await.unwrap();
    assert!(
        page.events.iter().any(|e| e.action == "policy.loaded"),
        "policy loads are shown"
    );
    assert!(page
        .events
        .iter()
        .all(|e| e.tenant.is_none() || e.tenant.as_deref() == Some("acme")));
    // The webhook's URL (a Slack URL is a secret) is not in the audit log:
    // its id and events are.
    let mut exported = String::new();
    t.core()
        .export_audit(0, |e| {
            exported.push_str(&serde_json::to_string(e)?);
            Ok(())
        })
        .await
        .unwrap();
    assert!(exported.contains("webhook."), "the webhook was audited: {exported}");
    let host_and_port = rx.url().trim_start_matches("http://").to_owned();
    assert!(!exported.contains(&host_and_port), "{exported}");
}

async fn auditors_see_people_of_no_tenant_only_when_they_are_their_own(db: &TestDb) {
    let t = spawn(db).await;
    let alice = t.person("alice", &["reviewer"], &["acme"]).await;
    let gina = t.person("gina", &["reviewer"], &["globex"]).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    for (who, password) in [
        ("alice", "wrong password 1"),
        ("gina", "wrong password 2"),
        ("gina", PASSWORD),
    ] {
        let _ = t.core().login(who, password, "10.0.0.9").await;
    }
    let page = t.core().audit_page(&audrey, None).await.unwrap();
    let about = |id: &str, action: &str| {
        page.events
            .iter()
            .any(|e| e.action == action && e.subject.as_deref() == Some(id))
    };
    assert!(about(&alice.id, "user.added"), "acme's own reviewer is shown");
    assert!(
        !about(&gina.id, "user.added"),
        "globex's reviewer (and the name globex) is not"
    );
    assert!(!about(&gina.id, "login.succeeded"));
    let failed: Vec<&str> = page
        .events
        .iter()
        .filter(|e| e.action == "login.failed")
        .map(|e| e.details.as_str())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("alice"), "{failed:?}");
    let everything = page
        .events
        .iter()
        .map(|e| format!("{} {}", e.details, e.credential_scope.as_deref().unwrap_or("")))
        .collect::<String>();
    assert!(!everything.contains("globex"), "{everything}");
    // What concerns the whole deployment stays in view, and admins see all.
    assert!(page.events.iter().any(|e| e.action == "policy.loaded"));
    let admin = t.person("adam", &["admin"], &[]).await;
    let all = t.core().audit_page(&admin, None).await.unwrap();
    assert!(all
        .events
        .iter()
        .any(|e| e.action == "user.added" && e.subject.as_deref() == Some(gina.id.as_str())));
}

async fn the_audit_page_verifies_only_what_is_new_and_the_command_line_everything(db: &TestDb) {
    let t = spawn(db).await;
    let audrey = t.person("audrey", &["auditor"], &["acme"]).await;
    let first = t.core().audit_page(&audrey, None).await.unwrap();
    assert!(first.report.ok());
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    t.post("/api/v1/proposals", &token, close_ticket("k")).await;
    let second = t.core().audit_page(&audrey, None).await.unwrap();
    assert!(second.report.ok());
    assert!(second.report.checked > first.report.checked, "new events are checked");
    assert_eq!(
        second.report.checked as i64, second.report.head_seq,
        "the report covers the whole chain"
    );
    assert_eq!(
        second.report.read_now,
        second.report.checked - first.report.checked,
        "but reads only the new events"
    );
    let third = t.core().audit_page(&audrey, None).await.unwrap();
    assert_eq!(
        (third.report.read_now, third.report.checked),
        (0, second.report.checked)
    );
    assert!(t.core().verify_audit_chain().await.unwrap().ok());
}

countersign_core::store_tests!(
    sign_in_never_sends_a_person_off_site,
    a_burst_of_parallel_guesses_gets_a_handful_of_checks,
    banners_are_shown_only_to_the_people_they_concern,
    the_live_stream_ends_with_the_session,
    a_live_stream_stops_telling_of_a_tenant_taken_away,
    anonymous_requests_write_no_session,
    old_sign_in_attempts_are_forgotten_and_typed_names_kept_short,
    a_flood_of_huge_previews_does_not_stall_other_requests,
    bogus_run_tokens_do_not_reload_the_keys_each_time,
    an_idle_waiting_executor_writes_nothing,
    one_credential_cannot_hold_unbounded_long_polls,
    a_lease_that_ran_out_cannot_complete_and_a_heartbeat_cannot_outlast_the_deadline,
    a_claim_never_leases_past_the_deadline,
    small_doors_are_shut,
    an_executor_result_carrying_a_secret_is_refused,
    break_glass_is_throttled_and_bound_to_its_session,
    break_glass_belongs_to_the_browser_session_that_started_it,
    failed_sign_ins_record_a_name_only_if_it_is_an_account,
    a_policy_change_is_announced_and_auditors_see_events_of_no_tenant,
    auditors_see_people_of_no_tenant_only_when_they_are_their_own,
    the_audit_page_verifies_only_what_is_new_and_the_command_line_everything,
);

/// PostgreSQL only: what a page hears when its process's LISTEN connection is
/// cut and nothing else is (a proxy dropping one idle connection).
mod listener {
    mod postgres {
        use super::super::*;
        use sqlx::Connection;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_cut_listen_connection_tells_live_pages_to_refetch() {
            let db = TestDb::postgres().await;
            let t = spawn(&db).await;
            t.person("alice", &["reviewer"], &["acme"]).await;
            let b = Browser::new(&t);
            b.login("alice", PASSWORD).await;
            let mut stream = b.page("/events").await;
            assert_eq!(stream.status(), StatusCode::OK);
            let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
            // The listener's connection is the one whose last statement was
            // LISTEN; the writer and the read pool are left alone.
            let mut cut = 0;
            for _ in 0..100 {
                cut = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND query LIKE 'LISTEN%') AS t",
                )
                .fetch_one(&mut admin)
                .await
                .unwrap();
                if cut > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(cut, 1, "one listening connection, and it was cut");
            let seen = read_stream_until(&mut stream, "lagged", Duration::from_secs(15)).await;
            assert!(
                seen.contains(r#"{"lagged":true}"#),
                "the page is told to refetch: {seen}"
            );
            // Live updates flow again afterwards: a new proposal is told.
            let (_, token) = t.run("acme", "prod", "support/send", None).await;
            let id = t
                .post("/api/v1/proposals", &token, close_ticket("after-cut"))
                .await
                .body["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let seen = read_stream_until(&mut stream, &id, Duration::from_secs(10)).await;
            assert!(seen.contains(&id), "a change after the cut is told: {seen}");
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            assert_eq!(n, 1, "the process listens again, once");
        }
    }
}
