//! Policy as code: the tools and route policies of docs/policy.md, loaded from TOML
//! into typed values (`load`), the decision function (`Policy::decide`) and
//! policy tests (`expect`). Pure: no I/O beyond reading the text it is given.

mod expect;
mod load;
pub mod schema;
mod upstreams;

pub use expect::{run_expectations, ExpectReport};
pub use load::{load_policy, PolicyError, MAX_SECONDS as MAX_DEADLINE_SECONDS};
pub use upstreams::{is_mcp_tool_name, DEFAULT_MCP_WAIT, DEFAULT_UPSTREAM_TIMEOUT, ENV_PREFIX, FILE_PREFIX};

use schema::ArgsSchema;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    Read,
    Write,
}

/// Who describes the change a reviewer approves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewBy {
    /// The agent sends `preview`; reviewers see it marked as not checked.
    #[default]
    Agent,
    /// The executor computes it in a dry run before review, and re-checks its
    /// precondition before acting (`stale_preview`).
    Executor,
}

#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub kind: ToolKind,
    pub destructive: bool,
    /// How to reverse it, or "irreversible".
    pub undo: String,
    /// A short template such as "1 ticket of {tenant}".
    pub blast_radius: String,
    pub expires_after_seconds: i64,
    pub execute_within_seconds: i64,
    pub max_attempts: i64,
    pub cost_usd: f64,
    /// Distinct approvals needed (1 for writes; at least 2 for destructive tools).
    pub approvals: i64,
    pub preview: PreviewBy,
    /// A preview not delivered by then expires the proposal.
    pub preview_within_seconds: i64,
    pub args: ArgsSchema,
    /// Performed by countersign's upstream executor on an MCP server (policy
    /// `upstream` and `upstream_tool`), not by an executor holding a key.
    pub upstream: Option<UpstreamTool>,
    /// Every decision on it must be signed with a passkey.
    pub require_passkey: bool,
}

/// The MCP tool a policy tool is performed as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTool {
    /// The `[upstreams.NAME]` it is called on.
    pub upstream: String,
    /// Its name there (by default the policy tool's own).
    pub tool: String,
}

/// An MCP server countersign calls for agents (policy `[upstreams.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// Its Streamable HTTP endpoint.
    pub url: String,
    /// Header name → where its value is read from when the upstream is
    /// called. The value itself is never in the policy.
    pub headers: BTreeMap<String, SecretRef>,
    pub timeout_seconds: i64,
}

/// Where a credential is read from, at the moment it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: an environment variable of the server.
    Env(String),
    /// `file:/path`: a file, such as a secret manager's mounted secret; one
    /// trailing newline is not part of the value.
    File(std::path::PathBuf),
}

impl std::fmt::Display for SecretRef {
    /// The reference, never the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "{ENV_PREFIX}{name}"),
            SecretRef::File(path) => write!(f, "{FILE_PREFIX}{}", path.display()),
        }
    }
}

/// The MCP gateway's settings (policy `[mcp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mcp {
    /// How long a `tools/call` of a write waits for people before it answers
    /// that the proposal is still pending.
    pub wait_seconds: i64,
}

impl Default for Mcp {
    fn default() -> Self {
        Self {
            wait_seconds: DEFAULT_MCP_WAIT,
        }
    }
}

impl Tool {
    pub fn is_irreversible(&self) -> bool {
        self.undo.trim().eq_ignore_ascii_case("irreversible")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budgets {
    pub steps: i64,
    pub seconds: i64,
    pub usd: f64,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub allow_tools: BTreeSet<String>,
    pub deny_tools: BTreeSet<String>,
    pub require_approval: BTreeSet<String>,
    pub auto_approve: BTreeSet<String>,
    pub budgets: Budgets,
    pub audit_enabled: bool,
    /// Every decision on any tool of this route must be signed with a passkey.
    pub require_passkey: bool,
}

/// Circuit-breaker thresholds (policy `[breakers]`, all optional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breakers {
    /// Denials in a row after which a run is revoked.
    pub run_denials: i64,
    /// A route stops releasing when more than this share of its last
    /// `route_window` executions failed.
    pub route_failure_share: f64,
    pub route_window: i64,
}

impl Default for Breakers {
    fn default() -> Self {
        Self {
            run_denials: 5,
            route_failure_share: 0.5,
            route_window: 20,
        }
    }
}

/// Who may do what among people (policy `[people]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct People {
    /// Whether a person holding admin may also approve or reject. Off by
    /// default: an admin can make accounts, so could approve as two people.
    pub admins_may_review: bool,
}

/// What happens to personal data (policy `[privacy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privacy {
    /// Days after a proposal finished that its `pii` args are erased.
    pub retain_pii_days: i64,
}

impl Default for Privacy {
    fn default() -> Self {
        Self { retain_pii_days: 30 }
    }
}

impl Privacy {
    pub fn retain_ms(&self) -> i64 {
        self.retain_pii_days * 24 * 3600 * 1000
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub tools: BTreeMap<String, Tool>,
    pub routes: BTreeMap<String, Route>,
    pub breakers: Breakers,
    pub people: People,
    pub upstreams: BTreeMap<String, Upstream>,
    pub mcp: Mcp,
    pub privacy: Privacy,
    /// Things allowed but worth a second look (`policy check` prints them).
    pub warnings: Vec<PolicyError>,
    /// SHA-256 of the source text, hex.
    pub hash: String,
    pub source: String,
}

/// Why a tool is refused on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Listed in `deny_tools` (beats everything).
    Denied,
    /// Not in `allow_tools`, or not declared at all (deny by default).
    NotAllowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    RequireApproval { approvals: i64 },
    Deny(Denial),
}

impl Policy {
    /// A policy with no tools and no routes: everything is denied. For
    /// commands that need no policy.
    pub fn empty() -> Policy {
        Policy {
            tools: BTreeMap::new(),
            routes: BTreeMap::new(),
            breakers: Breakers::default(),
            people: People::default(),
            upstreams: BTreeMap::new(),
            mcp: Mcp::default(),
            privacy: Privacy::default(),
            warnings: Vec::new(),
            hash: String::new(),
            source: String::new(),
        }
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }

    /// Whether a decision on `tool` proposed on `route` must be signed with
    /// a passkey (either says so).
    pub fn requires_passkey(&self, route: &str, tool: &str) -> bool {
        self.tool(tool).is_some_and(|t| t.require_passkey) || self.route(route).is_some_and(|r| r.require_passkey)
    }

    /// The args of `tool` this policy marks as personal data (none for a
    /// tool it does not declare).
    pub fn personal_fields(&self, tool: &str) -> BTreeSet<String> {
        self.tools
            .get(tool)
            .map(|t| t.args.personal_fields())
            .unwrap_or_default()
    }

    /// What the gate does with `tool` on `route`. The rules, in order:
    /// `deny_tools` wins; then deny by default (not allowed or not declared);
    /// a destructive tool always needs its (≥ 2) approvals; a write tool needs
    /// one unless the route auto-approves it; a read tool needs approval only
    /// when the route says so.
    pub fn decide(&self, route: &Route, tool: &str) -> Decision {
        if route.deny_tools.contains(tool) {
            return Decision::Deny(Denial::Denied);
        }
        let Some(t) = self.tools.get(tool) else {
            return Decision::Deny(Denial::NotAllowed);
        };
        if !route.allow_tools.contains(tool) {
            return Decision::Deny(Denial::NotAllowed);
        }
        if t.destructive {
            return Decision::RequireApproval {
                approvals: t.approvals.max(2),
            };
        }
        match t.kind {
            ToolKind::Write if route.auto_approve.contains(tool) => Decision::Allow,
            ToolKind::Write => Decision::RequireApproval {
                approvals: t.approvals.max(1),
            },
            ToolKind::Read if route.require_approval.contains(tool) => Decision::RequireApproval {
                approvals: t.approvals.max(1),
            },
            ToolKind::Read => Decision::Allow,
        }
    }
}

/// Fill a blast-radius template: `{field}` takes the arg's value, `{tenant}`,
/// `{env}` and `{route}` the proposal's. Unknown names stay as written.
pub fn render_template(template: &str, args: &Value, tenant: &str, env: &str, route: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        let value = match name {
            "tenant" => Some(tenant.to_owned()),
            "env" => Some(env.to_owned()),
            "route" => Some(route.to_owned()),
            _ => args.get(name).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
