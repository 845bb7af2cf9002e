//! The browser door over HTTP: sign-in, session cookies and timeouts, login
//! throttling, CSRF. (Playwright covers the same in a real browser.)

mod common;
use common::*;
use countersign_core::testing::TestDb;
use leptos::server_fn::ServerFn;
use reqwest::StatusCode;

async fn sign_in_sets_a_strict_httponly_cookie_and_rotates_the_session(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let b = Browser::new(&t);
    let r = b.page("/login").await;
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let before = cookie.split(';').next().unwrap().to_owned();
    let csrf = b.csrf().await;
    let r = b
        .http
        .post(format!("{}{}", b.base, app::functions::session::Login::PATH))
        .header("origin", &b.base)
        .form(&[
            ("username", "alice"),
            ("password", PASSWORD),
            ("csrf", &csrf),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_redirection(), "{}", r.status());
    let after = r
        .headers()
        .get("set-cookie")
        .expect("a new cookie at sign-in")
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(
        after.split(';').next().unwrap(),
        before,
        "the session id changes at sign-in"
    );
    assert_eq!(b.page("/").await.status(), StatusCode::OK);
}

async fn wrong_password_and_unknown_user_answer_alike(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let b = Browser::new(&t);
    let (s1, body1) = b.login("alice", "wrong password here").await;
    let (s2, body2) = b.login("mallory", "wrong password here").await;
    assert_eq!(s1, s2);
    assert_eq!(body1, body2);
    assert!(body1.contains("Wrong username or password."), "{body1}");
    assert_eq!(b.page("/").await.status(), StatusCode::SEE_OTHER);
}

async fn repeated_failures_slow_down_the_account_and_the_address(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    t.person("bob", &["reviewer"], &["acme"]).await;
    let core = t.core();
    for _ in 0..5 {
        assert!(matches!(
            core.login("alice", "wrong password here", "10.0.0.1").await,
            Err(countersign_core::Error::Unauthenticated(_))
        ));
    }
    // The sixth failure from that address starts a delay; while it lasts
    // even the right password from there waits.
    let _ = core.login("alice", "wrong password here", "10.0.0.1").await;
    assert!(matches!(
        core.login("alice", PASSWORD, "10.0.0.1").await,
        Err(countersign_core::Error::RateLimited { .. })
    ));
    // A guesser at one address cannot lock alice out from her own.
    assert!(
        core.login("alice", PASSWORD, "10.0.0.3").await.is_ok(),
        "alice from elsewhere is fine"
    );
    // Per address too: one address guessing many accounts is slowed down
    // after four accounts' worth of free failures.
    for i in 0..21 {
        let _ = core.login(&format!("u{i}"), "guess guess guess", "10.9.9.9").await;
    }
    assert!(matches!(
        core.login("bob", PASSWORD, "10.9.9.9").await,
        Err(countersign_core::Error::RateLimited { .. })
    ));
    assert!(
        core.login("bob", PASSWORD, "10.0.0.4").await.is_ok(),
        "bob from elsewhere is fine"
    );
    // The delay passes.
    t.advance(10);
    assert!(core.login("alice", PASSWORD, "10.0.0.1").await.is_ok());
}

async fn an_address_is_not_slowed_down_by_its_own_sign_ins(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let core = t.core();
    // An office behind one address: many right passwords, and the odd typo,
    // in one window. Each attempt is counted before its check; a right one
    // gives its count back, so only the typos stay on the address.
    for i in 0..60 {
        if i % 10 == 0 {
            let _ = core.login("alice", "a typo in the password", "10.7.7.7").await;
        }
        assert!(
            core.login("alice", PASSWORD, "10.7.7.7").await.is_ok(),
            "sign-in {i} from the office address"
        );
    }
}

async fn sessions_end_after_the_absolute_timeout(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    assert_eq!(b.page("/").await.status(), StatusCode::OK);
    t.advance(11 * 3600);
    assert_eq!(b.page("/").await.status(), StatusCode::OK);
    t.advance(3600 + 1);
    let r = b.page("/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/login"));
}

async fn state_changing_requests_need_the_sessions_csrf_token_and_our_origin(db: &TestDb) {
    let t = spawn(db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let b = Browser::new(&t);
    b.login("alice", PASSWORD).await;
    let path = app::functions::session::Logout::PATH;
    let (s, _) = b.form(path, &[], Some(&b.base)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no token");
    let (s, _) = b.form(path, &[("csrf", "forged-token")], Some(&b.base)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a wrong token");
    let csrf = {
        let html = b.page("/").await.text().await.unwrap();
        let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
        html[at..].split('"').next().unwrap().to_owned()
    };
    let (s, _) = b.form(path, &[("csrf", &csrf)], Some("https://evil.example")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another origin, even with the token");
    assert_eq!(b.page("/").await.status(), StatusCode::OK, "still signed in");
    let (s, _) = b.form(path, &[("csrf", &csrf)], Some(&b.base)).await;
    assert!(s.is_success() || s.is_redirection(), "{s}");
    assert_eq!(b.page("/").await.status(), StatusCode::SEE_OTHER, "signed out");
}

async fn a_bearer_credential_cannot_use_the_browser_door(db: &TestDb) {
    let t = spawn(db).await;
    let (_, token) = t.run("acme", "prod", "support/send", None).await;
    let r = t
        .http
        .post(t.url(app::functions::proposals::Decide::PATH))
        .bearer_auth(&token)
        .form(&[
            ("id", "prp_x"),
            ("verdict", "approve"),
            ("comment", ""),
            ("content_hash", "x"),
            ("csrf", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

countersign_core::store_tests!(
    sign_in_sets_a_strict_httponly_cookie_and_rotates_the_session,
    wrong_password_and_unknown_user_answer_alike,
    repeated_failures_slow_down_the_account_and_the_address,
    an_address_is_not_slowed_down_by_its_own_sign_ins,
    sessions_end_after_the_absolute_timeout,
    state_changing_requests_need_the_sessions_csrf_token_and_our_origin,
    a_bearer_credential_cannot_use_the_browser_door,
);

/// Many pages rendered at once by one server: none hangs or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_under_concurrent_load() {
    let db = TestDb::sqlite().await;
    let t = spawn(&db).await;
    t.person("alice", &["reviewer"], &["acme"]).await;
    let signed_in = Browser::new(&t);
    signed_in.login("alice", PASSWORD).await;
    // A visitor on the sign-in page (one session: an address may start only
    // so many a minute).
    let visitor = Browser::new(&t);
    visitor.csrf().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = if i % 2 == 0 {
            signed_in.http.clone()
        } else {
            visitor.http.clone()
        };
        let url = format!("{}{}", t.app.url(), if i % 2 == 0 { "/" } else { "/login" });
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(std::time::Duration::from_secs(30), http.get(url).send()).await;
            r.expect("rendered within 30 s").unwrap().status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}
