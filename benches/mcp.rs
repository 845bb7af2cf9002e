//! `countersign-bench --mcp`: what the MCP gateway adds to a read it passes
//! through. One rmcp client calls an upstream MCP server directly, another
//! calls the same tool through countersign's `/mcp` (run token, policy
//! check, audit event, one step of the run's budget, forward); the calls
//! alternate, and the table gives each one's p50 / p99 and the difference,
//! beside the same check made through the JSON API: the policy's part of it.

use super::{cli, mint, row, start_server, Db, Latencies, Opts, Row};
use crate::mcp_upstream::TestUpstream;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-upstream-token";

fn policy(upstream_url: &str) -> String {
    format!(
        r#"
[upstreams.tickets]
url = "{upstream_url}"
headers = {{ Authorization = "env:COUNTERSIGN_BENCH_UPSTREAM_AUTH" }}

[tools."ticket.search"]
kind = "read"
upstream = "tickets"
upstream_tool = "search"
args.query = {{ type = "string", max_len = 100 }}

[routes."bench/mcp"]
allow_tools = ["ticket.search"]
budgets = {{ steps = 100000, seconds = 86400, usd = 1000.0 }}
"#
    )
}

async fn client(url: &str, bearer: &str) -> Result<RunningService<RoleClient, ClientConfig>, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(bearer);
    ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))
}

pub async fn run(o: &Opts, db: &Db, backend: &str) -> Result<Vec<Row>, String> {
    let up = TestUpstream::start(0, TOKEN).await;
    // The server reads the upstream's credential from its environment.
    std::env::set_var("COUNTERSIGN_BENCH_UPSTREAM_AUTH", format!("Bearer {TOKEN}"));
    let path = db.dir.join("mcp-policy.toml");
    std::fs::write(&path, policy(&up.url())).map_err(|e| e.to_string())?;
    cli(o, db, &["migrate"], None)?;
    let key = cli(
        o,
        db,
        &[
            "key", "create", "service", "--tenant", "acme", "--env", "prod", "--name", "bench",
        ],
        None,
    )?;
    let server = start_server(o, db, &path).await?;
    let http = reqwest::Client::new();
    let token = mint(&http, &server.url, &key, "bench/mcp").await?;
    let direct = client(&up.url(), TOKEN).await?;
    let gated = client(&format!("{}/mcp", server.url), &token).await?;
    let samples = if o.smoke { 50 } else { o.samples.max(2000) };
    let warmup = if o.smoke { 10 } else { 200 };
    let call = |c: &RunningService<RoleClient, ClientConfig>, name: &'static str, i: usize| {
        let mut args = rmcp::model::JsonObject::new();
        args.insert("query".into(), format!("printer {i}").into());
        let req = CallToolRequestParams::new(name).with_arguments(args);
        let peer = c.peer().clone();
        async move {
            let t = Instant::now();
            let r = peer.call_tool(req).await.map_err(|e| e.to_string())?;
            if r.is_error == Some(true) {
                return Err(format!("{name} answered an error: {r:?}"));
            }
            Ok::<Duration, String>(t.elapsed())
        }
    };
    eprintln!("• MCP pass-through read: {samples} calls each, direct and through the gateway");
    for i in 0..warmup {
        call(&direct, "search", i).await?;
        call(&gated, "ticket.search", i).await?;
    }
    // The same check the gateway makes, through the JSON API: the part of
    // the added time that is the policy's (a write: audit event, budget step).
    let check = |i: usize| {
        let (http, url, token) = (http.clone(), format!("{}/api/v1/check", server.url), token.clone());
        async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "tool": "ticket.search" }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("check {i}: {}", r.status()));
            }
            Ok::<Duration, String>(t.elapsed())
        }
    };
    for i in 0..warmup {
        check(i).await?;
    }
    let (mut d, mut g, mut c) = (
        Vec::with_capacity(samples),
        Vec::with_capacity(samples),
        Vec::with_capacity(samples),
    );
    for i in 0..samples {
        d.push(call(&direct, "search", i).await?);
        g.push(call(&gated, "ticket.search", i).await?);
        c.push(check(i).await?);
    }
    let (d, g, c) = (Latencies::new(d), Latencies::new(g), Latencies::new(c));
    let forwarded = up.state.calls_of("search").len();
    if forwarded != 2 * (samples + warmup) {
        return Err(format!(
            "the upstream saw {forwarded} calls, not {}",
            2 * (samples + warmup)
        ));
    }
    let _ = direct.cancel().await;
    let _ = gated.cancel().await;
    drop(server);
    Ok(vec![
        row("store", backend, ""),
        row(
            "MCP read, direct to the upstream p50 / p99 (ms)",
            format!("{:.2} / {:.2}", d.pct(0.5), d.pct(0.99)),
            "",
        ),
        row(
            "MCP read, through the gateway p50 / p99 (ms)",
            format!("{:.2} / {:.2}", g.pct(0.5), g.pct(0.99)),
            "",
        ),
        row(
            "added by the gateway p50 / p99 (ms)",
            format!("{:.2} / {:.2}", g.pct(0.5) - d.pct(0.5), g.pct(0.99) - d.pct(0.99)),
            "",
        ),
        row(
            "of which the check alone (POST /api/v1/check) p50 / p99 (ms)",
            format!("{:.2} / {:.2}", c.pct(0.5), c.pct(0.99)),
            "",
        ),
    ])
}
