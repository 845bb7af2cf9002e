//! The upstream MCP servers countersign calls for agents: one client session
//! per upstream (rmcp's Streamable HTTP client), opened when first needed and
//! opened again when it breaks or when a credential changes. Credentials are
//! read from their `env:` or `file:` reference at each use and go nowhere
//! but the upstream's request headers: not into errors, logs or audit.

use countersign_core::audit::hash_parts;
use countersign_core::policy::{Policy, SecretRef, Upstream};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, JsonObject,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an upstream's own tool descriptions are reused.
const DESCRIPTIONS_TTL: Duration = Duration::from_secs(60);
/// How long an upstream that did not answer its tools list is left alone.
const DESCRIPTIONS_RETRY: Duration = Duration::from_secs(10);

/// Why an upstream could not be used. Messages name the upstream and the
/// reference of a credential, never its value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} is not declared in the policy")]
    Unknown { upstream: String },
    #[error("upstream {upstream}: header {header} is read from {reference}, which {problem}")]
    Credential {
        upstream: String,
        header: String,
        reference: String,
        problem: String,
    },
    #[error("upstream {upstream} does not answer: {detail}")]
    Unreachable { upstream: String, detail: String },
    #[error("upstream {upstream} did not answer within {seconds} s")]
    Timeout { upstream: String, seconds: i64 },
    #[error("upstream {upstream} refused the call: {detail}")]
    Protocol { upstream: String, detail: String },
}

impl UpstreamError {
    /// What an agent, and the job's result that reviewers read, are told:
    /// which upstream and what went wrong, never where its credential is
    /// kept (that is in the server's log, for its operator).
    pub fn for_agent(&self) -> String {
        match self {
            UpstreamError::Credential { upstream, .. } => format!(
                "upstream {upstream} cannot be called: a credential the server needs for it is missing or \
                 unreadable (the server's log says which)"
            ),
            other => other.to_string(),
        }
    }
}

/// An error's text from the HTTP stack, with every URL in it hidden: an
/// upstream's address may carry a credential in its query, and agents
/// have no business knowing where upstreams live.
fn without_urls(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(at) = ["http://", "https://"].iter().filter_map(|p| rest.find(p)).min() {
        out.push_str(&rest[..at]);
        out.push_str("<url>");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// How a call that got no result failed, for the at-most-once record.
#[derive(Debug, Clone)]
pub enum CallFailure {
    /// It never left: no connection, no session, a missing credential.
    NotSent(UpstreamError),
    /// It left and no answer came: it may have happened.
    NoAnswer(UpstreamError),
    /// The upstream answered with a protocol error instead of a result.
    Refused(UpstreamError),
}

impl CallFailure {
    pub fn error(&self) -> &UpstreamError {
        match self {
            CallFailure::NotSent(e) | CallFailure::NoAnswer(e) | CallFailure::Refused(e) => e,
        }
    }
}

struct Session {
    service: RunningService<RoleClient, ClientConfig>,
    /// A hash of the url and header values the session was opened with.
    fingerprint: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Session>>>>;
/// Tool name → description, of one upstream.
type Descriptions = Arc<HashMap<String, String>>;

/// What `mcp check` and the start-up line report of one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamReport {
    pub name: String,
    pub url: String,
    /// The tools it offers, or why it did not answer.
    pub offered: Result<Vec<String>, String>,
    /// Tools the policy performs on it that it does not offer.
    pub missing: Vec<String>,
}

pub struct Upstreams {
    http: reqwest013::Client,
    slots: Mutex<HashMap<String, Slot>>,
    /// By upstream: when its list was asked for, and what it said (None: no answer).
    descriptions: Mutex<HashMap<String, (Instant, Option<Descriptions>)>>,
}

/// A secret's value, read now.
async fn read_secret(r: &SecretRef) -> Result<String, String> {
    match r {
        SecretRef::Env(name) => std::env::var(name).map_err(|_| "is not set in the server's environment".to_owned()),
        SecretRef::File(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot be read ({})", e.kind()))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
        }
    }
}

/// Whether a reqwest connect error (nothing was sent) is among the causes.
fn never_connected(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<reqwest013::Error>() {
            if r.is_connect() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

impl Upstreams {
    pub fn new() -> Upstreams {
        // TLS to https upstreams: rustls on ring, the system's roots.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest013::Client::builder()
            // An upstream's redirect is not followed: the policy names where calls go.
            .redirect(reqwest013::redirect::Policy::none())
            // As rmcp's own client: a connection reused before the last
            // response was read to its end stalls ~40 ms on delayed ACKs
            // (measured: a pass-through read took 50 ms, 1.4 ms without).
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        Upstreams {
            http,
            slots: Mutex::default(),
            descriptions: Mutex::default(),
        }
    }

    fn slot(&self, name: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(name.to_owned()).or_default().clone()
    }

    /// The headers of `up`, their values read now.
    async fn headers(up: &Upstream) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, UpstreamError> {
        let mut out = Vec::with_capacity(up.headers.len());
        for (name, reference) in &up.headers {
            let problem = |problem: String| UpstreamError::Credential {
                upstream: up.name.clone(),
                header: name.clone(),
                reference: reference.to_string(),
                problem,
            };
            let value = read_secret(reference).await.map_err(problem)?;
            let header = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| problem("names a header HTTP does not allow".into()))?;
            let mut value = http::HeaderValue::from_str(&value)
                .map_err(|_| problem("holds characters a header value cannot carry".into()))?;
            value.set_sensitive(true);
            out.push((header, value));
        }
        Ok(out)
    }

    /// The session of `up`, opened (or opened again) as needed. Failing here
    /// means nothing was sent.
    async fn session(&self, up: &Upstream) -> Result<Arc<Session>, UpstreamError> {
        let headers = Self::headers(up).await?;
        let mut parts: Vec<String> = vec![up.url.clone()];
        for (n, v) in &headers {
            parts.push(n.as_str().to_owned());
            parts.push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let fingerprint = hash_parts(&refs);
        let slot = self.slot(&up.name);
        let mut held = slot.lock().await;
        if let Some(s) = held.as_ref() {
            if s.fingerprint == fingerprint && !s.service.is_transport_closed() {
                return Ok(s.clone());
            }
        }
        *held = None;
        let config =
            StreamableHttpClientTransportConfig::with_uri(up.url.clone()).custom_headers(headers.into_iter().collect());
        let transport = StreamableHttpClientTransport::with_client(self.http.clone(), config);
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("countersign", env!("CARGO_PKG_VERSION")),
        );
        let secs = up.timeout_seconds;
        let service = match tokio::time::timeout(Duration::from_secs(secs as u64), info.serve(transport)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(UpstreamError::Unreachable {
                    upstream: up.name.clone(),
                    detail: without_urls(&e.to_string()),
                })
            }
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    upstream: up.name.clone(),
                    seconds: secs,
                })
            }
        };
        tracing::info!(upstream = %up.name, "upstream session opened");
        let s = Arc::new(Session { service, fingerprint });
        *held = Some(s.clone());
        Ok(s)
    }

    /// Forget a session that failed, so the next use opens a new one.
    async fn drop_session(&self, up: &Upstream) {
        let slot = self.slot(&up.name);
        *slot.lock().await = None;
    }

    /// Make sure `up` answers before anything is recorded: open (or reopen)
    /// its session. An error means nothing was sent.
    pub async fn ready(&self, up: &Upstream) -> Result<(), UpstreamError> {
        self.session(up).await.map(|_| ())
    }

    /// Call `tool` on `up` once, with `meta` in the request's `_meta`.
    pub async fn call(
        &self,
        up: &Upstream,
        tool: &str,
        args: JsonObject,
        meta: Option<JsonObject>,
    ) -> Result<CallToolResult, CallFailure> {
        let session = self.session(up).await.map_err(CallFailure::NotSent)?;
        let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
        if let Some(m) = meta {
            params.meta = Some(rmcp::model::RequestMetaObject(rmcp::model::MetaObject(m)));
        }
        let secs = up.timeout_seconds;
        let answer = tokio::time::timeout(
            Duration::from_secs(secs as u64),
            session.service.peer().call_tool(params),
        )
        .await;
        let failure = match answer {
            Ok(Ok(result)) => return Ok(result),
            Ok(Err(ServiceError::McpError(e))) => {
                return Err(CallFailure::Refused(UpstreamError::Protocol {
                    upstream: up.name.clone(),
                    detail: without_urls(&e.message),
                }))
            }
            Ok(Err(e)) => {
                let err = UpstreamError::Unreachable {
                    upstream: up.name.clone(),
                    detail: without_urls(&e.to_string()),
                };
                if never_connected(&e) {
                    CallFailure::NotSent(err)
                } else {
                    CallFailure::NoAnswer(err)
                }
            }
            Err(_) => CallFailure::NoAnswer(UpstreamError::Timeout {
                upstream: up.name.clone(),
                seconds: secs,
            }),
        };
        self.drop_session(up).await;
        Err(failure)
    }

    /// The tools `up` offers, by name, with their descriptions.
    async fn list(&self, up: &Upstream) -> Result<HashMap<String, String>, UpstreamError> {
        let session = self.session(up).await?;
        let secs = up.timeout_seconds;
        match tokio::time::timeout(
            Duration::from_secs(secs as u64),
            session.service.peer().list_all_tools(),
        )
        .await
        {
            Ok(Ok(tools)) => Ok(tools
                .into_iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        t.description.map(|d| d.to_string()).unwrap_or_default(),
                    )
                })
                .collect()),
            Ok(Err(e)) => {
                self.drop_session(up).await;
                Err(UpstreamError::Unreachable {
                    upstream: up.name.clone(),
                    detail: without_urls(&e.to_string()),
                })
            }
            Err(_) => {
                self.drop_session(up).await;
                Err(UpstreamError::Timeout {
                    upstream: up.name.clone(),
                    seconds: secs,
                })
            }
        }
    }

    /// The upstream's own tool descriptions, from its tools list, cached;
    /// None while it does not answer (the gateway lists its tools anyway).
    pub async fn descriptions(&self, up: &Upstream) -> Option<Descriptions> {
        {
            let cache = self.descriptions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, got)) = cache.get(&up.name) {
                let ttl = if got.is_some() {
                    DESCRIPTIONS_TTL
                } else {
                    DESCRIPTIONS_RETRY
                };
                if at.elapsed() < ttl {
                    return got.clone();
                }
            }
        }
        let got = match self.list(up).await {
            Ok(tools) => Some(Arc::new(tools)),
            Err(e) => {
                tracing::warn!(upstream = %up.name, error = %e, "upstream tools list unavailable");
                None
            }
        };
        let mut cache = self.descriptions.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(up.name.clone(), (Instant::now(), got.clone()));
        got
    }

    /// Which upstreams answer, and which tools the policy performs on each
    /// that it does not offer.
    pub async fn check(&self, policy: &Policy) -> Vec<UpstreamReport> {
        let mut wanted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for t in policy.tools.values() {
            if let Some(u) = &t.upstream {
                wanted.entry(u.upstream.as_str()).or_default().push(u.tool.clone());
            }
        }
        let mut out = Vec::new();
        for up in policy.upstreams.values() {
            let offered = self.list(up).await.map_err(|e| e.to_string());
            let mut missing: Vec<String> = match &offered {
                Ok(tools) => wanted
                    .get(up.name.as_str())
                    .map(|w| w.iter().filter(|t| !tools.contains_key(*t)).cloned().collect())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            missing.sort();
            missing.dedup();
            let mut offered: Result<Vec<String>, String> = offered.map(|t| t.into_keys().collect());
            if let Ok(t) = &mut offered {
                t.sort();
            }
            out.push(UpstreamReport {
                name: up.name.clone(),
                url: up.url.clone(),
                offered,
                missing,
            });
        }
        out
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_from_the_http_stack_never_tells_an_upstreams_url() {
        let detail = "error sending request for url (https://tickets.internal:8443/mcp?key=s3cr3t): \
                      connection refused; then http://10.0.0.7/mcp, \"http://x/y\"";
        let shown = without_urls(detail);
        assert_eq!(
            shown,
            "error sending request for url (<url>): connection refused; then <url>, \"<url>\""
        );
        assert!(!shown.contains("s3cr3t") && !shown.contains("10.0.0.7"));
        assert_eq!(without_urls("no address here"), "no address here");
    }

    #[test]
    fn an_agent_is_not_told_where_a_credential_is_kept() {
        let e = UpstreamError::Credential {
            upstream: "tickets".into(),
            header: "Authorization".into(),
            reference: "file:/run/secrets/tickets-token".into(),
            problem: "cannot be read (NotFound)".into(),
        };
        assert!(
            e.to_string().contains("/run/secrets/tickets-token"),
            "the operator's log names it"
        );
        let told = e.for_agent();
        assert!(told.contains("tickets") && !told.contains("/run/secrets") && !told.contains("Authorization"));
    }
}
