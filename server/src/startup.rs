//! Building the process: store, core, sessions, router, background tasks.
//! `start` binds (port 0 in tests) and serves in the background.

use crate::sessions::DbSessions;
use crate::{api, ops, web};
use app::{shell, App};
use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::{middleware, Router};
use countersign_core::clock::{SharedClock, SystemClock};
use countersign_core::policy::Policy;
use countersign_core::service::{Core, Settings, StoreOptions, SYSTEM_ACTOR};
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] countersign_core::Error),
    #[error("the session store: {0}")]
    Sessions(#[from] tower_sessions::session_store::Error),
}

#[derive(Clone)]
pub struct AppConfig {
    pub addr: SocketAddr,
    pub database_url: String,
    pub policy: Policy,
    pub public_url: Option<String>,
    pub site_root: PathBuf,
    pub max_run_ttl: i64,
    pub session_idle: i64,
    pub session_absolute: i64,
    pub secure_cookies: bool,
    pub read_connections: u32,
    /// Sign-in sessions one address may start a minute.
    pub sign_in_sessions_per_minute: u32,
    pub clock: SharedClock,
    /// How often the sweeper expires and re-offers.
    pub sweep_every: Duration,
    /// How often a long-poll looks again without a notice (a safety net).
    pub wait_recheck: Duration,
    /// The lease the built-in upstream executor takes on each job (renewed
    /// by heartbeats while it calls).
    pub upstream_lease: Duration,
    /// Whether to log at start-up which upstreams answer (off in tests).
    pub check_upstreams_at_start: bool,
    /// How often to look for a receipt key rotated by another process.
    pub receipt_key_refresh: Duration,
    /// How often to verify the audit events added since the last check
    /// (`countersign_audit_verified_age_seconds`).
    pub audit_verify_every: Duration,
}

impl AppConfig {
    pub fn new(database_url: impl Into<String>, policy: Policy) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            policy,
            public_url: None,
            site_root: PathBuf::from("target/site"),
            max_run_ttl: 900,
            session_idle: 1800,
            session_absolute: 43_200,
            secure_cookies: false,
            read_connections: 8,
            sign_in_sessions_per_minute: 30,
            clock: Arc::new(SystemClock),
            sweep_every: Duration::from_secs(1),
            wait_recheck: Duration::from_secs(5),
            upstream_lease: Duration::from_secs(60),
            check_upstreams_at_start: true,
            receipt_key_refresh: countersign_core::service::RECEIPT_KEY_REFRESH,
            audit_verify_every: Duration::from_secs(60),
        }
    }
}

pub struct RunningApp {
    pub addr: SocketAddr,
    pub core: Arc<Core>,
    /// The upstream MCP sessions, shared by the gateway and its executor.
    pub upstreams: Arc<crate::mcp::upstream::Upstreams>,
    mcp_stop: tokio_util::sync::CancellationToken,
    /// The built-in upstream executor, drained on stop.
    upstream_executor: Option<crate::mcp::executor::Executor>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a stopping server waits for upstream calls in flight.
const UPSTREAM_DRAIN: Duration = Duration::from_secs(15);

impl RunningApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving and wait for in-flight requests to finish.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    async fn halt(&mut self) {
        for t in self.background.drain(..) {
            t.abort();
        }
        self.mcp_stop.cancel();
        if let Some(e) = self.upstream_executor.take() {
            e.drain(UPSTREAM_DRAIN).await;
        }
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.server.take() {
            let _ = t.await;
        }
    }

    /// Serve until the process is told to stop (Ctrl-C or SIGTERM).
    pub async fn wait_for_signal(mut self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.halt().await;
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
        if let Some(e) = &self.upstream_executor {
            e.abort();
        }
        self.mcp_stop.cancel();
        if let Some(t) = &self.server {
            t.abort();
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Open the database and build the core, recording the loaded policy.
pub async fn open_core(cfg: &AppConfig, public_url: String) -> Result<Arc<Core>, StartError> {
    let db = StoreOptions {
        read_connections: cfg.read_connections,
        ..StoreOptions::new(cfg.database_url.clone())
    }
    .clock(cfg.clock.clone());
    let settings = Settings {
        public_url,
        max_run_ttl_secs: cfg.max_run_ttl,
        session_idle_secs: cfg.session_idle,
        session_absolute_secs: cfg.session_absolute,
        wait_recheck_ms: cfg.wait_recheck.as_millis() as u64,
        ..Settings::default()
    };
    let core = Core::open(db, cfg.policy.clone(), settings).await?;
    for w in &cfg.policy.warnings {
        tracing::warn!(line = w.line, "policy: {}", w.message);
    }
    core.record_policy_load(SYSTEM_ACTOR).await?;
    Ok(core)
}

/// The whole HTTP surface over `core`.
pub async fn router(cfg: &AppConfig, core: Arc<Core>, public_url: &str, mcp: Router) -> Result<Router, StartError> {
    let leptos_options = LeptosOptions::builder()
        .output_name("countersign")
        .site_root(cfg.site_root.to_string_lossy().to_string())
        .site_pkg_dir("pkg")
        .site_addr(cfg.addr)
        .build();
    let routes = generate_route_list(App);
    let ctx_core = core.clone();
    let context = move || provide_context(ctx_core.clone());
    let pages = Router::new()
        .leptos_routes_with_context(&leptos_options, routes, context.clone(), {
            let o = leptos_options.clone();
            move || shell(o.clone())
        })
        .fallback(leptos_axum::file_and_error_handler_with_context(context, shell))
        .with_state(leptos_options);

    let edges = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route("/metrics", get(ops::metrics_text))
        .route("/export/history.csv", get(web::export_history))
        .route("/export/history.jsonl", get(web::export_history))
        .with_state(core.clone());

    let assets = ServeDir::new(cfg.site_root.join("pkg"))
        .precompressed_br()
        .precompressed_gzip();

    let sessions = DbSessions::open(&core).await?;
    let sessions_for_streams = sessions.clone();
    let deleter = sessions.clone();
    tokio::spawn(async move {
        use tower_sessions::session_store::ExpiredDeletion;
        let _ = deleter.continuously_delete_expired(Duration::from_secs(300)).await;
    });
    let session_layer = SessionManagerLayer::new(sessions)
        .with_name("cs_session")
        .with_http_only(true)
        .with_same_site(SameSite::Strict)
        .with_secure(cfg.secure_cookies)
        .with_expiry(Expiry::OnInactivity(time::Duration::seconds(cfg.session_idle)));

    let origin = public_url.split('/').take(3).collect::<Vec<_>>().join("/");
    let guard = web::GuardState {
        core: core.clone(),
        public_origin: origin,
        new_sessions: Arc::new(crate::limits::PerAddress::per_minute(cfg.sign_in_sessions_per_minute)),
    };
    let stream = Router::new()
        .route("/events", get(web::events))
        .with_state(web::StreamState {
            core: core.clone(),
            sessions: sessions_for_streams,
            open: Arc::default(),
        });

    Ok(Router::new()
        .merge(api::router(core.clone()))
        .merge(mcp)
        .merge(edges)
        .merge(stream)
        .nest_service("/pkg", assets)
        .merge(pages)
        .layer(middleware::from_fn_with_state(guard, web::browser_guard))
        .layer(session_layer)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(middleware::from_fn(ops::request_context))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(ops::MakeRequestId))
        .layer(middleware::from_fn(ops::drop_unsafe_request_id))
        .layer(CatchPanicLayer::custom(ops::panic_response)))
}

/// Build everything and serve on `cfg.addr` in the background.
pub async fn start(cfg: AppConfig) -> Result<RunningApp, StartError> {
    ops::metrics_handle();
    let listen_error = |source| StartError::Listen { addr: cfg.addr, source };
    let listener = tokio::net::TcpListener::bind(cfg.addr).await.map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let public_url = cfg.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let cfg = AppConfig { addr, ..cfg };
    let core = open_core(&cfg, public_url.clone()).await?;
    let upstreams = Arc::new(crate::mcp::upstream::Upstreams::new());
    let mcp_stop = tokio_util::sync::CancellationToken::new();
    let mcp = crate::mcp::router(core.clone(), upstreams.clone(), mcp_stop.clone());
    let app = router(&cfg, core.clone(), &public_url, mcp).await?;
    let executor = crate::mcp::executor::spawn(
        core.clone(),
        upstreams.clone(),
        crate::mcp::executor::ExecutorSettings {
            lease: cfg.upstream_lease,
        },
    );
    if cfg.check_upstreams_at_start && !cfg.policy.upstreams.is_empty() {
        // Said once, in the background: the server does not wait for upstreams.
        let (upstreams, policy) = (upstreams.clone(), cfg.policy.clone());
        tokio::spawn(async move {
            for r in upstreams.check(&policy).await {
                match &r.offered {
                    Ok(_) if r.missing.is_empty() => {
                        tracing::info!(upstream = %r.name, url = %r.url, "upstream answers")
                    }
                    Ok(_) => tracing::warn!(
                        upstream = %r.name, url = %r.url, missing = ?r.missing,
                        "upstream answers but lacks tools the policy performs on it"
                    ),
                    Err(e) => tracing::warn!(upstream = %r.name, url = %r.url, error = %e, "upstream does not answer"),
                }
            }
        });
    }

    let sweeper = {
        let core = core.clone();
        let every = cfg.sweep_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match core.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(moved = n, "sweeper expired or re-offered work"),
                    Err(e) => tracing::error!(error = %e, "sweeper failed"),
                }
            }
        })
    };

    // A key rotated by the command line or another server process signs
    // this one's receipts too, before the retired key leaves the JWKS.
    let receipt_keys = {
        let core = core.clone();
        let every = cfg.receipt_key_refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = core.refresh_receipt_keys().await {
                    tracing::error!(error = %e, "could not look for a rotated receipt key");
                }
            }
        })
    };

    // The chain checked as it grows (only the new events each time): a
    // break is logged and shows in /metrics, not only when someone looks.
    let audit_verifier = {
        let core = core.clone();
        let every = cfg.audit_verify_every;
        tokio::spawn(async move {
            loop {
                match core.verify_audit_chain_since_last().await {
                    Ok(r) if r.ok() => {}
                    Ok(r) => tracing::error!("{}", r.message()),
                    Err(e) => tracing::warn!(error = %e, "could not verify the audit chain; trying again later"),
                }
                tokio::time::sleep(every).await;
            }
        })
    };

    let webhooks = crate::notify::spawn_worker(core.clone());

    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the server stopped");
        }
    });
    Ok(RunningApp {
        addr,
        core,
        upstreams,
        mcp_stop,
        upstream_executor: Some(executor),
        shutdown: Some(tx),
        server: Some(server),
        background: vec![sweeper, receipt_keys, audit_verifier, webhooks],
    })
}
