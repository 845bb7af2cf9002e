//! Black-box test harness: the whole app on port 0 over a fresh database,
//! spoken to over HTTP, with a clock the test can move.
#![allow(dead_code)]

use countersign_core::clock::{Clock, ManualClock};
use countersign_core::policy::{load_policy, Policy};
use countersign_core::service::{Admin, NewKey, NewUser, Person};
use countersign_core::testing::Inspect;
use countersign_core::testing::TestDb;
use countersign_core::tokens::KeyKind;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use server::startup::{start, AppConfig, RunningApp};
use std::sync::{Arc, Mutex};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn example_policy() -> Policy {
    load_policy(include_str!("../../../examples/policy.toml")).expect("the example policy loads")
}

pub struct TestApp {
    pub app: RunningApp,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub db_url: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub async fn spawn(db: &TestDb) -> TestApp {
    spawn_with(db, example_policy(), |_| {}).await
}

pub async fn spawn_with(db: &TestDb, policy: Policy, tweak: impl FnOnce(&mut AppConfig)) -> TestApp {
    // Quiet unless asked: RUST_LOG=debug cargo test … shows the server's logs.
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let clock = Arc::new(ManualClock::new());
    let mut cfg = AppConfig::new(db.url.clone(), policy);
    cfg.clock = clock.clone();
    // Tests move the clock and call sweep() themselves; a long-poll is woken
    // only by its notice, so a test of waking fails if the notice is lost.
    cfg.sweep_every = std::time::Duration::from_secs(3600);
    cfg.wait_recheck = std::time::Duration::from_secs(3600);
    tweak(&mut cfg);
    let app = start(cfg).await.expect("the app starts");
    TestApp {
        app,
        clock,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(90))
            .build()
            .unwrap(),
        db_url: db.url.clone(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.url())
    }

    pub fn core(&self) -> &countersign_core::service::Core {
        &self.app.core
    }

    /// Reads of the stored records, for assertions.
    pub fn inspect(&self) -> Inspect {
        Inspect::of(&self.app.core)
    }

    /// `who` approves proposal `id` through the core, on its current
    /// content hash (what their review page would send), without a comment.
    pub async fn approve_as(
        &self,
        who: &Person,
        id: &str,
    ) -> Result<countersign_core::lifecycle::Status, countersign_core::Error> {
        let hash = self.inspect().proposal(id).await.unwrap().unwrap().content_hash;
        let req = countersign_core::service::DecideRequest {
            proposal_id: id.to_owned(),
            verdict: countersign_core::lifecycle::Verdict::Approve,
            comment: String::new(),
            content_hash: hash,
            view_ms: Some(5000),
            passkey: None,
        };
        self.core().decide(who, req).await
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, bearer: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("the request is answered");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, body, headers }
    }

    pub async fn post(&self, path: &str, bearer: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(bearer), Some(body)).await
    }

    pub async fn get(&self, path: &str, bearer: &str) -> Reply {
        self.send(reqwest::Method::GET, path, Some(bearer), None).await
    }

    pub async fn service_key(&self, tenant: &str, env: &str) -> String {
        self.core()
            .create_key(
                &Admin::cli(),
                NewKey {
                    kind: KeyKind::Service,
                    name: format!("{tenant}-{env}"),
                    tenant: Some(tenant.into()),
                    env: env.into(),
                    tools: vec![],
                },
            )
            .await
            .unwrap()
            .1
    }

    pub async fn executor_key(&self, env: &str, tools: &[&str]) -> String {
        self.core()
            .create_key(
                &Admin::cli(),
                NewKey {
                    kind: KeyKind::Executor,
                    name: format!("exec-{env}"),
                    tenant: None,
                    env: env.into(),
                    tools: tools.iter().map(|t| t.to_string()).collect(),
                },
            )
            .await
            .unwrap()
            .1
    }

    /// Mint a run on `route` with a new service key; returns (run id, token).
    pub async fn run(&self, tenant: &str, env: &str, route: &str, on_behalf_of: Option<&str>) -> (String, String) {
        let key = self.service_key(tenant, env).await;
        let mut body = json!({ "route": route, "ttl_seconds": 600 });
        if let Some(p) = on_behalf_of {
            body["on_behalf_of"] = json!(p);
        }
        let r = self.post("/api/v1/runs", &key, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (
            r.body["run_id"].as_str().unwrap().to_owned(),
            r.body["token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn person(&self, name: &str, roles: &[&str], tenants: &[&str]) -> Person {
        self.core()
            .add_user(
                &Admin::cli(),
                NewUser {
                    username: name.into(),
                    password: PASSWORD.into(),
                    roles: roles.iter().map(|r| r.to_string()).collect(),
                    tenants: tenants.iter().map(|t| t.to_string()).collect(),
                },
            )
            .await
            .unwrap()
    }

    pub fn advance(&self, secs: i64) {
        self.clock.advance_secs(secs);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// A proposal body for `ticket.close` with a fresh or given idempotency key.
pub fn close_ticket(key: &str) -> Value {
    json!({
        "tool": "ticket.close",
        "args": { "ticket_id": "T-18421", "reason": "Issue resolved: reset auth token and verified login" },
        "idempotency_key": key,
        "reason": "Customer confirmed the fix",
        "preview": { "before": "status: open\nassignee: bob", "after": "status: closed\nassignee: bob" }
    })
}

pub fn refund(key: &str) -> Value {
    json!({
        "tool": "refund.create",
        "args": { "customer_id": "C-42", "amount_cents": 2500, "currency": "EUR" },
        "idempotency_key": key,
        "reason": "Double charge on invoice 7731"
    })
}

/// A local webhook receiver that records what it is sent.
pub struct Receiver {
    pub got: Arc<Mutex<Vec<(String, String)>>>,
    pub task: tokio::task::JoinHandle<()>,
    pub port: u16,
}

impl Receiver {
    pub async fn start(port: u16) -> Receiver {
        let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let g = g.clone();
                async move {
                    let sig = headers
                        .get("x-countersign-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    g.lock().unwrap().push((sig, body));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { got, task, port }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
    pub async fn wait_for(&self, n: usize) -> Vec<(String, String)> {
        for _ in 0..200 {
            if self.got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.got.lock().unwrap().clone()
    }
}

/// A browser over HTTP: a cookie jar, no redirects followed.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
}

impl Browser {
    pub fn new(t: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(15))
                .build()
                .unwrap(),
            base: t.app.url(),
        }
    }

    pub async fn csrf(&self) -> String {
        let html = self
            .http
            .get(format!("{}/login", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at = html
            .find("name=\"csrf\" value=\"")
            .expect("the login form carries a CSRF token")
            + 19;
        html[at..].split('"').next().unwrap().to_owned()
    }

    /// The CSRF token of a signed-in session, as the app's shell reads it.
    pub async fn session_csrf(&self) -> String {
        let info: serde_json::Value = self.page("/api/session").await.json().await.unwrap();
        info["csrf"].as_str().expect("the session has a CSRF token").to_owned()
    }

    pub async fn form(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> (StatusCode, String) {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    pub async fn login(&self, user: &str, pw: &str) -> (StatusCode, String) {
        let csrf = self.csrf().await;
        self.form(
            <app::functions::session::Login as leptos::server_fn::ServerFn>::PATH,
            &[("username", user), ("password", pw), ("csrf", &csrf), ("next", "/")],
            Some(&self.base),
        )
        .await
    }

    pub async fn page(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }
}
