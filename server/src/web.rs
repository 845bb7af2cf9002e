//! The browser door's edges: sign-in required for pages, CSRF protection on
//! every state-changing request, the live-update stream and history exports.

use app::functions::ssr::{csrf_token, person_of, SESSION_CSRF};
use app::functions::views::history_row;
use app::model::HistoryRow;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use countersign_core::service::{Core, HistoryQuery, Person};
use countersign_core::tokens::ct_eq;
use countersign_core::Notice;
use futures::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower_sessions::Session;

/// Pages that need a signed-in person; anyone else is sent to sign in.
fn is_protected_page(path: &str) -> bool {
    matches!(path, "/" | "/history" | "/audit" | "/admin") || path.starts_with("/proposals/")
}

/// Paths that are not the browser's: the JSON API (bearer credentials),
/// health, metrics and static assets.
fn is_machine_path(path: &str) -> bool {
    path.starts_with("/api/v1/")
        || path == "/api/v1"
        || path == "/mcp"
        || matches!(
            path,
            "/healthz" | "/readyz" | "/metrics" | "/favicon.ico" | "/.well-known/jwks.json"
        )
        || path.starts_with("/pkg/")
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.to_owned(),
    )
        .into_response()
}

/// Is this request from our own pages? `Origin` when the browser sends one,
/// else `Sec-Fetch-Site`, else `Referer`. Requests with none of these are not
/// from a browser page (CSRF needs a browser); the token still applies.
fn same_origin(headers: &HeaderMap, public_origin: &str) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let matches = |origin: &str| {
        let origin = origin.trim_end_matches('/');
        origin == public_origin
            || origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
    };
    if let Some(o) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        return o != "null" && matches(o);
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    if let Some(r) = headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
        let origin: String = r.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        return matches(&origin);
    }
    true
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[derive(Clone)]
pub struct GuardState {
    pub core: Arc<Core>,
    pub public_origin: String,
    /// How many sign-in sessions an address may start.
    pub new_sessions: Arc<crate::limits::PerAddress>,
}

/// The address a request came from (the connection's peer).
fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Sign-in for pages; same-origin and a session-bound CSRF token for every
/// state-changing browser request.
pub async fn browser_guard(State(g): State<GuardState>, session: Session, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if is_machine_path(&path) {
        return next.run(req).await;
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if safe {
        if is_protected_page(&path) {
            match person_of(&g.core, &session).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let next_url = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    let target = format!(
                        "/login?next={}",
                        url::form_urlencoded::byte_serialize(next_url.as_bytes()).collect::<String>()
                    );
                    return Redirect::to(&target).into_response();
                }
                Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "session store unavailable"),
            }
        }
        // A session is made only where one is needed: the sign-in page (its
        // form carries a CSRF token), and for people signed in. A visitor's
        // other requests (a 404, a scan) write nothing; and an address may
        // start only so many sign-in sessions a minute.
        let signed_in = matches!(person_of(&g.core, &session).await, Ok(Some(_)));
        if path == "/login" && !signed_in && session.id().is_none() {
            if let Some(ip) = peer(&req) {
                if !g.new_sessions.allow(ip) {
                    return refuse(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many sign-in pages from this address: wait a minute",
                    );
                }
            }
        }
        if (path == "/login" || signed_in) && !path.starts_with("/api/") && csrf_token(&session).await.is_err() {
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "session store unavailable");
        }
        return next.run(req).await;
    }

    if !same_origin(req.headers(), &g.public_origin) {
        tracing::warn!(path = %path, "cross-origin state-changing request refused");
        return refuse(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    // A session store that cannot answer (the database failing over) is a
    // 500 to try again, never a 403 that tells the person to reload.
    let expected: Option<String> = match session.get(SESSION_CSRF).await {
        Ok(v) => v,
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "session store unavailable"),
    };
    let Some(expected) = expected else {
        return refuse(StatusCode::FORBIDDEN, "missing CSRF token: reload the page");
    };
    let (parts, body) = req.into_parts();
    let header_token = parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let bytes: Bytes = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 64 KiB"),
    };
    let provided = header_token.or_else(|| if is_form { form_field(&bytes, "csrf") } else { None });
    if !provided.is_some_and(|p| ct_eq(&p, &expected)) {
        tracing::warn!(path = %path, "state-changing request without the right CSRF token refused");
        return refuse(StatusCode::FORBIDDEN, "CSRF token missing or wrong: reload the page");
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

async fn signed_in(core: &Core, session: &Session) -> Result<Person, Response> {
    match person_of(core, session).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, "sign in first")),
        Err(_) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, "session store unavailable")),
    }
}

/// What the live stream needs: the core, the session store (to see a
/// session end), and how many streams each person holds.
#[derive(Clone)]
pub struct StreamState {
    pub core: Arc<Core>,
    pub sessions: crate::sessions::DbSessions,
    pub open: Arc<countersign_core::limits::Slots>,
}

/// At most this many live streams per person (tabs, devices).
const STREAMS_PER_PERSON: usize = 4;
/// How often a stream checks that its session is still good.
const STREAM_RECHECK: Duration = Duration::from_secs(5);

/// Server-sent events: "changed" whenever a proposal of one of the person's
/// tenants (or a control) changes. Pages refetch on each. The stream ends
/// when the session does (sign-out, disabled, password reset, the absolute
/// timeout), and follows changes to the person's tenants.
pub async fn events(State(s): State<StreamState>, session: Session) -> Response {
    let person = match signed_in(&s.core, &session).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(slot) = s.open.take(&person.id, STREAMS_PER_PERSON) else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live streams open for this person",
        );
    };
    let login_at: i64 = session
        .get(app::functions::ssr::SESSION_LOGIN_AT)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let Some(id) = session.id() else {
        return refuse(StatusCode::UNAUTHORIZED, "sign in first");
    };
    let check = SessionCheck {
        core: s.core.clone(),
        sessions: s.sessions.clone(),
        id,
        login_at,
    };
    Sse::new(change_stream(s.core, person, check, slot))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Whether a stream's session is still good, and as whom.
struct SessionCheck {
    core: Arc<Core>,
    sessions: crate::sessions::DbSessions,
    id: tower_sessions::session::Id,
    login_at: i64,
}

impl SessionCheck {
    async fn person(&self, user_id: &str) -> Option<Person> {
        use tower_sessions::SessionStore;
        let absolute = self.core.settings().session_absolute_secs * 1000;
        if self.core.now_ms() - self.login_at > absolute {
            return None;
        }
        // Signed out (the record deleted) or expired: the stream ends.
        self.sessions.load(&self.id).await.ok().flatten()?;
        self.core
            .person_for_session(user_id, self.login_at)
            .await
            .ok()
            .flatten()
    }
}

/// What a page hears on the live stream: a proposal changed, the controls
/// changed, or some changes were missed (refetch everything).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Change {
    Proposal {
        proposal: String,
        status: countersign_core::lifecycle::Status,
    },
    Controls {
        controls: bool,
    },
    Lagged {
        lagged: bool,
    },
}

fn change_event(c: &Change) -> Event {
    Event::default()
        .event("message")
        .json_data(c)
        .unwrap_or_else(|_| Event::default().event("message").data("{\"lagged\":true}"))
}

fn change_stream(
    core: Arc<Core>,
    person: Person,
    check: SessionCheck,
    slot: countersign_core::limits::Slot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut rx = core.subscribe();
    let mut person = person;
    let mut recheck = tokio::time::interval(STREAM_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    async_stream::stream! {
        let _slot = slot;
        loop {
            let notice = tokio::select! {
                n = rx.recv() => n,
                _ = recheck.tick() => {
                    match check.person(&person.id).await {
                        Some(p) => { person = p; continue; }
                        None => break,
                    }
                }
            };
            let change = match notice {
                Ok(Notice::Proposal { tenant, id, status }) if person.roles.admin || person.sees_tenant(&tenant) => {
                    Change::Proposal { proposal: id, status }
                }
                Ok(Notice::Controls) => Change::Controls { controls: true },
                // Changes made elsewhere may have been missed: refetch.
                Ok(Notice::Missed) => Change::Lagged { lagged: true },
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Change::Lagged { lagged: true },
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            yield Ok(change_event(&change));
        }
    }
}

fn csv_row(r: &HistoryRow) -> Vec<String> {
    let decisions = r
        .decisions
        .iter()
        .map(|d| {
            format!(
                "{} {}{}{}",
                d.username,
                d.verdict,
                if d.break_glass { " (break-glass)" } else { "" },
                if d.quick { " (quick)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    vec![
        r.id.clone(),
        countersign_core::clock::rfc3339(r.created_at_ms),
        r.tenant.clone(),
        r.env.clone(),
        r.route.clone(),
        r.tool.clone(),
        r.status.clone(),
        r.on_behalf_of.clone().unwrap_or_default(),
        decisions,
        r.execution.as_ref().map(|x| x.status.clone()).unwrap_or_default(),
        r.execution.as_ref().map(|x| x.attempts.to_string()).unwrap_or_default(),
        r.pii_erased_at_ms
            .map(countersign_core::clock::rfc3339)
            .unwrap_or_default(),
    ]
}

/// `/export/history.csv` and `/export/history.jsonl`: the filtered history.
pub async fn export_history(
    State(core): State<Arc<Core>>,
    session: Session,
    uri: Uri,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let person = match signed_in(&core, &session).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let csv = uri.path().ends_with(".csv");
    let quick = core.settings().quick_decision_ms;
    let mut out: Vec<u8> = Vec::new();
    let result = if csv {
        let mut w = csv::Writer::from_writer(&mut out);
        let _ = w.write_record([
            "id",
            "created_at",
            "tenant",
            "env",
            "route",
            "tool",
            "status",
            "on_behalf_of",
            "decisions",
            "execution",
            "attempts",
            "pii_erased_at",
        ]);
        let r = core
            .history_export(&person, &q, |e| {
                w.write_record(csv_row(&history_row(e, quick)))
                    .map_err(countersign_core::Error::internal)
            })
            .await;
        let _ = w.flush();
        drop(w);
        r
    } else {
        core.history_export(&person, &q, |e| {
            serde_json::to_writer(&mut out, &history_row(e, quick))?;
            out.push(b'\n');
            Ok(())
        })
        .await
    };
    match result {
        Ok(n) => {
            tracing::info!(rows = n, user = %person.username, "history exported");
            let (ct, name) = if csv {
                ("text/csv; charset=utf-8", "history.csv")
            } else {
                ("application/x-ndjson", "history.jsonl")
            };
            (
                [
                    (header::CONTENT_TYPE, ct.to_owned()),
                    (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
                ],
                out,
            )
                .into_response()
        }
        Err(countersign_core::Error::Forbidden(m)) => refuse(StatusCode::FORBIDDEN, &m),
        Err(countersign_core::Error::BadRequest(m)) => refuse(StatusCode::BAD_REQUEST, &m),
        Err(e) => {
            tracing::error!(error = %e, "export failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "export failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn origin_must_be_ours() {
        let ours = "http://127.0.0.1:3000";
        assert!(same_origin(
            &h(&[("host", "127.0.0.1:3000"), ("origin", "http://127.0.0.1:3000")]),
            ours
        ));
        assert!(!same_origin(
            &h(&[("host", "127.0.0.1:3000"), ("origin", "http://evil.example")]),
            ours
        ));
        assert!(!same_origin(
            &h(&[("host", "127.0.0.1:3000"), ("origin", "null")]),
            ours
        ));
        assert!(!same_origin(
            &h(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "cross-site")]),
            ours
        ));
        assert!(same_origin(
            &h(&[("host", "127.0.0.1:3000"), ("sec-fetch-site", "same-origin")]),
            ours
        ));
        assert!(!same_origin(
            &h(&[("host", "127.0.0.1:3000"), ("referer", "https://evil.example/page")]),
            ours
        ));
        assert!(same_origin(
            &h(&[
                ("host", "127.0.0.1:3000"),
                ("referer", "http://127.0.0.1:3000/proposals/x")
            ]),
            ours
        ));
    }

    #[test]
    fn csrf_field_is_read_from_forms() {
        assert_eq!(form_field(b"a=1&csrf=abc%2Bd&b=2", "csrf").as_deref(), Some("abc+d"));
        assert_eq!(form_field(b"a=1", "csrf"), None);
    }
}
