//! `countersign-bench --attacks`: what an attacker's bursts get from a
//! running server, as figures to compare between builds (`--server-bin`):
//!
//! - a burst of 40 parallel wrong guesses at one account: how many were
//!   really checked (anything but 429) and how many throttled;
//! - 39 wrong guesses and the right one in parallel: did the right one win;
//! - another person's sign-in, from another address, while an account is
//!   flooded;
//!
//! Each scenario comes from its own loopback address (127.0.0.x), as
//! different machines would, so one's throttling does not decide another's.
//! - 8 agents sending worst-case 32 KB previews (every line different): how
//!   many got through, and `/healthz` latency meanwhile against a quiet
//!   baseline;
//! - a flood of anonymous page requests: sessions written (cookies set) and
//!   the server's peak RSS.

use super::{mint, row, sign_in_as, Latencies, Row, Server, PASSWORD};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(server: &Server, key: &str, seconds: u64) -> Result<Vec<Row>, String> {
    let base = server.url.clone();
    let mut rows = Vec::new();

    eprintln!("• 40 parallel wrong guesses at one account");
    let (checked, throttled, _) = guesses(&base, "gus", None, 3).await?;
    rows.push(row(
        "40 parallel wrong guesses: checked · throttled",
        format!("{checked} · {throttled}"),
        "checked ≤ 6",
    ));
    eprintln!("• 39 wrong guesses and the right one, in parallel");
    // Runs of it: how often the right guess, somewhere in the burst, wins.
    let (mut checked_all, mut won) = (Vec::new(), 0);
    for (i, user) in ["vic", "val", "vin", "viv", "vera"].iter().enumerate() {
        let (checked, _, signed_in) = guesses(&base, user, Some(20), 10 + i as u8).await?;
        checked_all.push(checked.to_string());
        won += u64::from(signed_in);
    }
    rows.push(row(
        "39 wrong + the right one, 5 bursts: checked each · bursts the right one won",
        format!("{} · {won} of 5", checked_all.join(", ")),
        "checked ≤ 6",
    ));
    eprintln!("• another person signs in while an account is flooded");
    let flood = {
        let base = base.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                let _ = guesses(&base, "gus", None, 6).await;
            }
        })
    };
    let t0 = Instant::now();
    let other = sign_in_as(&base, "rita", PASSWORD, from(7)).await;
    let took = t0.elapsed();
    let _ = flood.await;
    rows.push(row(
        "another person's sign-in during the flood",
        match other {
            Ok(_) => format!("signed in, {:.0} ms", took.as_secs_f64() * 1e3),
            Err(e) => format!("failed: {e}"),
        },
        "signed in",
    ));

    let after_guesses = server.peak_rss_mb();
    eprintln!("• 8 agents sending worst-case previews for {seconds} s");
    let quiet = healthz(&base, Duration::from_secs(1)).await?;
    let (accepted, refused, busy) = preview_flood(&base, key, Duration::from_secs(seconds)).await?;
    rows.push(row(
        "/healthz p50 / max (ms): quiet · under the preview flood",
        format!(
            "{:.1} / {:.1} · {:.1} / {:.1}",
            quiet.pct(0.5),
            quiet.max(),
            busy.pct(0.5),
            busy.max()
        ),
        "flood p50 < 50",
    ));
    rows.push(row(
        "worst-case previews accepted · refused",
        format!("{accepted} · {refused}"),
        "",
    ));

    let after_previews = server.peak_rss_mb();
    eprintln!("• anonymous page requests");
    let (requests, cookies) = anonymous_flood(&base, 4000).await?;
    rows.push(row(
        "anonymous page requests · sessions started",
        format!("{requests} · {cookies}"),
        "≤ 30 at once, then 1 per 2 s",
    ));
    rows.push(row(
        "server peak RSS (MB) after guesses · previews · anonymous flood",
        format!("{after_guesses:.0} · {after_previews:.0} · {:.0}", server.peak_rss_mb()),
        "≤ 150",
    ));
    Ok(rows)
}

/// The loopback address 127.0.0.`n`, as a client's source.
pub fn from(n: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
}

/// 40 sign-ins in parallel on one sign-in session (its CSRF token) from
/// 127.0.0.`addr`, all wrong but `right`; (checked, throttled, signed in)
/// by the answers' status.
async fn guesses(base: &str, user: &str, right: Option<usize>, addr: u8) -> Result<(u64, u64, bool), String> {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(from(addr))
        .build()
        .map_err(|e| e.to_string())?;
    let csrf = super::login_csrf(&http, base).await?;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (http, base, csrf, user) = (http.clone(), base.to_owned(), csrf.clone(), user.to_owned());
            let pw = if right == Some(i) {
                PASSWORD
            } else {
                "a wrong guess, again"
            };
            tokio::spawn(async move {
                http.post(format!("{base}/api/login"))
                    .header("origin", &base)
                    .form(&[
                        ("username", user.as_str()),
                        ("password", pw),
                        ("csrf", &csrf),
                        ("next", "/"),
                    ])
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let (mut checked, mut throttled, mut signed_in) = (0, 0, false);
    for t in tasks {
        match t.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())? {
            429 | 503 => throttled += 1,
            s => {
                checked += 1;
                signed_in |= (200..400).contains(&s);
            }
        }
    }
    Ok((checked, throttled, signed_in))
}

/// `/healthz` every 20 ms for `d`.
async fn healthz(base: &str, d: Duration) -> Result<Latencies, String> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    let started = Instant::now();
    while started.elapsed() < d {
        let t0 = Instant::now();
        let r = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("/healthz: {}", r.status()));
        }
        out.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Latencies::new(out))
}

/// 8 agents, each with a run, proposing with previews of 4,800 lines a side
/// (under 32 KiB each, the body under 64 KiB) in which no line matches (the
/// line diff's worst case), while `/healthz` is sampled. (accepted, refused,
/// healthz latencies).
async fn preview_flood(base: &str, key: &str, d: Duration) -> Result<(u64, u64, Latencies), String> {
    let side = |tag: char| (0..4800u32).map(|i| format!("{tag}{i:x}\n")).collect::<String>();
    let (before, after) = (Arc::new(side('a')), Arc::new(side('b')));
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut agents = Vec::new();
    for a in 0..8 {
        let token = mint(&http, base, key, "bench/intake").await?;
        let (http, url) = (http.clone(), format!("{base}/api/v1/proposals"));
        let (before, after, stop, accepted, refused) = (
            before.clone(),
            after.clone(),
            stop.clone(),
            accepted.clone(),
            refused.clone(),
        );
        agents.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({
                    "tool": "bench.write",
                    "args": { "record": format!("R-{i}"), "note": "big" },
                    "idempotency_key": format!("big{a}-{i}"),
                    "preview": { "before": *before, "after": *after },
                });
                i += 1;
                match http.post(&url).bearer_auth(&token).json(&body).send().await {
                    Ok(r) if r.status().as_u16() == 201 => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lat = healthz(base, d).await;
    stop.store(true, Ordering::Relaxed);
    for a in agents {
        let _ = a.await;
    }
    Ok((accepted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed), lat?))
}

/// `n` page requests without a cookie from 8 clients: (requests, cookies set).
async fn anonymous_flood(base: &str, n: u64) -> Result<(u64, u64), String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicU64::new(0));
    let cookies = Arc::new(AtomicU64::new(0));
    let paths = ["/", "/login", "/no/such/page", "/history", "/api/session"];
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (http, base, next, cookies) = (http.clone(), base.to_owned(), next.clone(), cookies.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let path = paths[i as usize % paths.len()];
                    if let Ok(r) = http.get(format!("{base}{path}?q={i}")).send().await {
                        if r.headers().contains_key("set-cookie") {
                            cookies.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = r.bytes().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    Ok((n, cookies.load(Ordering::Relaxed)))
}
