//! Loading a policy file: TOML → raw serde structs (syntax, types, unknown keys)
//! → typed `Policy` after every rule of docs/policy.md is checked. All problems are
//! reported at once, each with the line it is about where that can be found.

use super::schema::{ArgsSchema, FieldSchema, FieldType, HARD_MAX_STRING};
use super::upstreams::{check_mcp, check_tool_upstream, check_upstreams, RawMcp, RawUpstream, ToolUpstream};
use super::{Breakers, Budgets, People, Policy, PreviewBy, Privacy, Route, Tool, ToolKind, UpstreamTool};
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    tools: BTreeMap<Spanned<String>, RawTool>,
    #[serde(default)]
    routes: BTreeMap<Spanned<String>, RawRoute>,
    #[serde(default)]
    breakers: Option<RawBreakers>,
    #[serde(default)]
    people: Option<RawPeople>,
    #[serde(default)]
    upstreams: BTreeMap<Spanned<String>, RawUpstream>,
    #[serde(default)]
    mcp: Option<RawMcp>,
    #[serde(default)]
    privacy: Option<RawPrivacy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    retain_pii_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeople {
    admins_may_review: Option<Spanned<bool>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawPreview {
    Agent,
    Executor,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawKind {
    Read,
    Write,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    kind: Spanned<RawKind>,
    destructive: Option<Spanned<bool>>,
    undo: Option<Spanned<String>>,
    blast_radius: Option<Spanned<String>>,
    expires_after_seconds: Option<Spanned<i64>>,
    execute_within_seconds: Option<Spanned<i64>>,
    max_attempts: Option<Spanned<i64>>,
    cost_usd: Option<Spanned<f64>>,
    approvals: Option<Spanned<i64>>,
    preview: Option<Spanned<RawPreview>>,
    preview_within_seconds: Option<Spanned<i64>>,
    upstream: Option<Spanned<String>>,
    upstream_tool: Option<Spanned<String>>,
    #[serde(default)]
    require_passkey: bool,
    #[serde(default)]
    args: BTreeMap<Spanned<String>, RawField>,
}

impl RawTool {
    fn destructive(&self) -> bool {
        self.destructive.as_ref().is_some_and(|d| *d.get_ref())
    }
    fn kind(&self) -> RawKind {
        *self.kind.get_ref()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: String,
    max_len: Option<i64>,
    pattern: Option<String>,
    min: Option<i64>,
    max: Option<i64>,
    values: Option<Vec<String>>,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default)]
    pii: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    allow_tools: Vec<Spanned<String>>,
    #[serde(default)]
    deny_tools: Vec<Spanned<String>>,
    #[serde(default)]
    require_approval: Vec<Spanned<String>>,
    #[serde(default)]
    auto_approve: Vec<Spanned<String>>,
    budgets: Option<RawBudgets>,
    audit: Option<RawAudit>,
    #[serde(default)]
    require_passkey: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    steps: Option<Spanned<i64>>,
    seconds: Option<Spanned<i64>>,
    usd: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakers {
    run_denials: Option<Spanned<i64>>,
    route_failure_share: Option<Spanned<f64>>,
    route_window: Option<Spanned<i64>>,
}

pub const DEFAULT_BUDGETS: Budgets = Budgets {
    steps: 25,
    seconds: 300,
    usd: 1.0,
};
const DEFAULT_EXPIRES_AFTER: i64 = 24 * 3600;
const DEFAULT_EXECUTE_WITHIN: i64 = 3600;
const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// The longest any deadline in a policy may be (`expires_after_seconds`,
/// `execute_within_seconds`).
pub const MAX_SECONDS: i64 = 30 * 24 * 3600;
const DEFAULT_PREVIEW_WITHIN: i64 = 60;

/// Every problem found, each at the place in the source it is about (toml's
/// spans give the exact bytes), reported by line.
pub(super) struct Problems<'a> {
    source: &'a str,
    pub(super) list: Vec<PolicyError>,
}

impl Problems<'_> {
    pub(super) fn at(&mut self, span: Range<usize>, message: String) {
        let line = self.source[..span.start.min(self.source.len())].matches('\n').count() + 1;
        self.list.push(PolicyError {
            line: Some(line),
            message,
        });
    }
    fn tool(&mut self, tool: &Spanned<String>, span: Range<usize>, msg: String) {
        self.at(span, format!("tool \"{}\": {msg}", tool.get_ref()));
    }
    fn route(&mut self, route: &Spanned<String>, span: Range<usize>, msg: String) {
        self.at(span, format!("route \"{}\": {msg}", route.get_ref()));
    }
}

use crate::ids::is_tool_name;

fn is_route_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-z0-9][a-z0-9_./-]*$").expect("static regex"))
        .is_match(s)
        && s.len() <= 100
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parse and check a policy file. On failure, every problem found, in file order.
pub fn load_policy(source: &str) -> Result<Policy, Vec<PolicyError>> {
    let raw: RawPolicy = toml::from_str(source).map_err(|e| vec![toml_error(source, &e)])?;
    let mut p = Problems {
        source,
        list: Vec::new(),
    };

    if raw.routes.is_empty() {
        p.list.push(PolicyError {
            line: None,
            message: "the policy declares no routes: add at least one [routes.\"name\"] table".into(),
        });
    }

    let upstreams = check_upstreams(&mut p, &raw.upstreams);
    let mcp = check_mcp(&mut p, raw.mcp.as_ref());
    let mut tools = BTreeMap::new();
    for (name, t) in &raw.tools {
        if let Some(tool) = check_tool(&mut p, name, t, &raw.upstreams) {
            tools.insert(name.get_ref().clone(), tool);
        }
    }

    let mut routes = BTreeMap::new();
    for (name, r) in &raw.routes {
        if let Some(route) = check_route(&mut p, name, r, &raw.tools) {
            routes.insert(name.get_ref().clone(), route);
        }
    }

    let breakers = check_breakers(&mut p, raw.breakers.as_ref());
    let privacy = check_privacy(&mut p, raw.privacy.as_ref());
    let mut warnings = Vec::new();
    if !raw.upstreams.is_empty() {
        // The gateway forwards reads to an upstream; a read tool without one
        // has nothing to forward to.
        let mut w = Problems {
            source,
            list: Vec::new(),
        };
        for (name, t) in raw
            .tools
            .iter()
            .filter(|(_, t)| t.kind() == RawKind::Read && t.upstream.is_none())
        {
            w.tool(
                name,
                t.kind.span(),
                "warning: a read tool without upstream is not offered to MCP clients; it is reachable only \
                 through the API"
                    .into(),
            );
        }
        warnings.extend(w.list);
    }
    let people = People {
        admins_may_review: match raw.people.as_ref().and_then(|r| r.admins_may_review.as_ref()) {
            Some(a) if *a.get_ref() => {
                let mut w = Problems {
                    source,
                    list: Vec::new(),
                };
                w.at(
                    a.span(),
                    "warning: admins_may_review = true lets a person who holds admin also approve; an admin can \
                     make accounts, so one person could approve a destructive action as two"
                        .into(),
                );
                warnings.extend(w.list);
                true
            }
            _ => false,
        },
    };

    if !p.list.is_empty() {
        p.list.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        return Err(p.list);
    }
    Ok(Policy {
        tools,
        routes,
        breakers,
        people,
        upstreams,
        mcp,
        privacy,
        warnings,
        hash: hex::encode(Sha256::digest(source.as_bytes())),
        source: source.to_owned(),
    })
}

fn toml_error(source: &str, e: &toml::de::Error) -> PolicyError {
    let line = e
        .span()
        .map(|s| source[..s.start.min(source.len())].matches('\n').count() + 1);
    PolicyError {
        line,
        message: e.message().trim().to_owned(),
    }
}

/// A checked number in a range, or `default` with the problem recorded.
pub(super) fn bounded<T: PartialOrd + Copy + fmt::Display>(
    p: &mut Problems,
    what: &str,
    v: Option<&Spanned<T>>,
    range: std::ops::RangeInclusive<T>,
    default: T,
    report: &mut dyn FnMut(&mut Problems, Range<usize>, String),
) -> T {
    match v {
        Some(s) if !range.contains(s.get_ref()) => {
            report(
                p,
                s.span(),
                format!(
                    "{what} must be between {} and {} (got {})",
                    range.start(),
                    range.end(),
                    s.get_ref()
                ),
            );
            default
        }
        Some(s) => *s.get_ref(),
        None => default,
    }
}

fn check_tool(
    p: &mut Problems,
    name: &Spanned<String>,
    t: &RawTool,
    upstreams: &BTreeMap<Spanned<String>, RawUpstream>,
) -> Option<Tool> {
    let before = p.list.len();
    let mut report = |p: &mut Problems, span: Range<usize>, msg: String| p.tool(name, span, msg);
    if !is_tool_name(name.get_ref()) {
        report(
            p,
            name.span(),
            "a tool name is lowercase words joined by dots, such as ticket.close".into(),
        );
    }
    let kind = match t.kind() {
        RawKind::Read => ToolKind::Read,
        RawKind::Write => ToolKind::Write,
    };
    if let Some(d) = t
        .destructive
        .as_ref()
        .filter(|d| *d.get_ref() && kind == ToolKind::Read)
    {
        report(p, d.span(), "a destructive tool must have kind = \"write\"".into());
    }
    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default();
    let undo = text(&t.undo);
    let blast = text(&t.blast_radius);
    if kind == ToolKind::Write {
        if undo.trim().is_empty() {
            report(
                p,
                t.undo.as_ref().map_or(t.kind.span(), |u| u.span()),
                "a write tool must say how to undo it: undo = \"…\" or undo = \"irreversible\"".into(),
            );
        }
        if blast.trim().is_empty() {
            report(
                p,
                t.blast_radius.as_ref().map_or(t.kind.span(), |b| b.span()),
                "a write tool must describe its blast_radius, such as \"1 ticket of {tenant}\"".into(),
            );
        }
    }
    let approvals = match (&t.approvals, t.destructive()) {
        (Some(n), true) if *n.get_ref() < 2 => {
            let msg = format!("a destructive tool needs at least 2 approvals, never {}", n.get_ref());
            report(p, n.span(), msg);
            2
        }
        (n, destructive) => {
            bounded(p, "approvals", n.as_ref(), 1..=10, 1, &mut report).max(if destructive { 2 } else { 1 })
        }
    };
    let expires_after_seconds = bounded(
        p,
        "expires_after_seconds",
        t.expires_after_seconds.as_ref(),
        1..=MAX_SECONDS,
        DEFAULT_EXPIRES_AFTER,
        &mut report,
    );
    let execute_within_seconds = bounded(
        p,
        "execute_within_seconds",
        t.execute_within_seconds.as_ref(),
        1..=MAX_SECONDS,
        DEFAULT_EXECUTE_WITHIN,
        &mut report,
    );
    let preview = match t.preview.as_ref().map(|p| *p.get_ref()) {
        Some(RawPreview::Executor) => PreviewBy::Executor,
        _ => PreviewBy::Agent,
    };
    if let Some(pv) = t
        .preview
        .as_ref()
        .filter(|_| preview == PreviewBy::Executor && kind == ToolKind::Read)
    {
        report(
            p,
            pv.span(),
            "preview = \"executor\" is for write tools: a read changes nothing to preview".into(),
        );
    }
    let preview_within_seconds = bounded(
        p,
        "preview_within_seconds",
        t.preview_within_seconds.as_ref(),
        1..=3600,
        DEFAULT_PREVIEW_WITHIN,
        &mut report,
    );
    let max_attempts = bounded(
        p,
        "max_attempts",
        t.max_attempts.as_ref(),
        1..=20,
        DEFAULT_MAX_ATTEMPTS,
        &mut report,
    );
    let cost_usd = match &t.cost_usd {
        Some(c) if !(c.get_ref().is_finite() && *c.get_ref() >= 0.0) => {
            report(p, c.span(), "cost_usd must be a number of dollars, 0 or more".into());
            0.0
        }
        Some(c) => *c.get_ref(),
        None => 0.0,
    };

    let mut fields = BTreeMap::new();
    for (fname, f) in &t.args {
        if let Some(fs) = check_field(p, name, fname, f) {
            fields.insert(fname.get_ref().clone(), fs);
        }
    }
    for placeholder in placeholders(&blast) {
        if !matches!(placeholder.as_str(), "tenant" | "env" | "route") && !t.args.contains_key(placeholder.as_str()) {
            let span = t.blast_radius.as_ref().map_or(t.kind.span(), |b| b.span());
            report(
                p,
                span,
                format!("blast_radius names {{{placeholder}}}, which is neither an arg nor tenant, env or route"),
            );
        }
    }
    let upstream = check_tool_upstream(
        &mut report,
        p,
        name.get_ref(),
        ToolUpstream {
            upstream: t.upstream.as_ref(),
            upstream_tool: t.upstream_tool.as_ref(),
            executor_preview: t
                .preview
                .as_ref()
                .filter(|_| preview == PreviewBy::Executor)
                .map(|pv| pv.span()),
        },
        upstreams,
    )
    .map(|(upstream, tool)| UpstreamTool { upstream, tool });
    if p.list.len() > before {
        return None;
    }
    Some(Tool {
        name: name.get_ref().clone(),
        kind,
        destructive: t.destructive(),
        undo: if undo.is_empty() { "not stated".into() } else { undo },
        blast_radius: if blast.is_empty() { "reads only".into() } else { blast },
        expires_after_seconds,
        execute_within_seconds,
        max_attempts,
        cost_usd,
        approvals,
        preview,
        preview_within_seconds,
        args: ArgsSchema { fields },
        upstream,
        require_passkey: t.require_passkey,
    })
}

fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        out.push(after[..close].to_owned());
        rest = &after[close + 1..];
    }
    out
}

fn check_field(p: &mut Problems, tool: &Spanned<String>, fname: &Spanned<String>, f: &RawField) -> Option<FieldSchema> {
    let before = p.list.len();
    let name = fname.get_ref();
    let mut bad = |msg: String| p.tool(tool, fname.span(), format!("arg \"{name}\": {msg}"));
    if !is_field_name(name) {
        bad("an arg name is lowercase letters, digits and '_'".into());
    }
    let not_for = |key: &str, present: bool, ty: &str, bad: &mut dyn FnMut(String)| {
        if present {
            bad(format!("{key} does not apply to type \"{ty}\""));
        }
    };
    let ty = match f.ty.as_str() {
        "string" => {
            not_for("min", f.min.is_some(), "string", &mut bad);
            not_for("max", f.max.is_some(), "string", &mut bad);
            not_for("values", f.values.is_some(), "string", &mut bad);
            let max_len = match f.max_len {
                Some(n) if !(1..=HARD_MAX_STRING as i64).contains(&n) => {
                    bad(format!("max_len must be between 1 and {HARD_MAX_STRING} (got {n})"));
                    HARD_MAX_STRING
                }
                Some(n) => n as usize,
                None => HARD_MAX_STRING,
            };
            let pattern = match &f.pattern {
                Some(pat) if !(pat.starts_with('^') && pat.ends_with('$')) => {
                    bad(format!(
                        "pattern {pat:?} must be anchored with ^ and $ so it bounds the whole value"
                    ));
                    None
                }
                Some(pat) => match Regex::new(pat) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        bad(format!(
                            "pattern {pat:?} does not compile: {}",
                            e.to_string().lines().last().unwrap_or("invalid")
                        ));
                        None
                    }
                },
                None => None,
            };
            if f.max_len.is_none() && f.pattern.is_none() {
                bad("a string must be bounded: give max_len or an anchored pattern".into());
            }
            FieldType::String { max_len, pattern }
        }
        "integer" => {
            not_for("max_len", f.max_len.is_some(), "integer", &mut bad);
            not_for("pattern", f.pattern.is_some(), "integer", &mut bad);
            not_for("values", f.values.is_some(), "integer", &mut bad);
            match (f.min, f.max) {
                (Some(min), Some(max)) if min <= max => FieldType::Integer { min, max },
                (Some(min), Some(max)) => {
                    bad(format!("min ({min}) is greater than max ({max})"));
                    FieldType::Integer { min, max }
                }
                _ => {
                    bad("an integer must be bounded: give both min and max".into());
                    FieldType::Integer { min: 0, max: 0 }
                }
            }
        }
        "enum" => {
            not_for("max_len", f.max_len.is_some(), "enum", &mut bad);
            not_for("pattern", f.pattern.is_some(), "enum", &mut bad);
            not_for("min", f.min.is_some(), "enum", &mut bad);
            not_for("max", f.max.is_some(), "enum", &mut bad);
            let values = f.values.clone().unwrap_or_default();
            if values.is_empty() || values.iter().any(|v| v.is_empty() || v.len() > 200) {
                bad("an enum needs values = [\"…\", …], each 1 to 200 characters".into());
            }
            let distinct: BTreeSet<_> = values.iter().collect();
            if distinct.len() != values.len() {
                bad("enum values must be distinct".into());
            }
            FieldType::Enum { values }
        }
        "boolean" => {
            for (k, present) in [
                ("max_len", f.max_len.is_some()),
                ("pattern", f.pattern.is_some()),
                ("min", f.min.is_some()),
                ("max", f.max.is_some()),
                ("values", f.values.is_some()),
            ] {
                not_for(k, present, "boolean", &mut bad);
            }
            FieldType::Boolean
        }
        other => {
            bad(format!("unknown type {other:?}: use string, integer, enum or boolean"));
            return None;
        }
    };
    if p.list.len() > before {
        return None;
    }
    Some(FieldSchema {
        ty,
        required: f.required,
        pii: f.pii,
    })
}

fn check_route(
    p: &mut Problems,
    name: &Spanned<String>,
    r: &RawRoute,
    tools: &BTreeMap<Spanned<String>, RawTool>,
) -> Option<Route> {
    let before = p.list.len();
    if !is_route_name(name.get_ref()) {
        p.route(
            name,
            name.span(),
            "a route name is lowercase words joined by '/', such as support/send".into(),
        );
    }
    let lists = [
        ("allow_tools", &r.allow_tools),
        ("deny_tools", &r.deny_tools),
        ("require_approval", &r.require_approval),
        ("auto_approve", &r.auto_approve),
    ];
    for (list, names) in lists {
        let mut seen = BTreeSet::new();
        for t in names.iter() {
            if !tools.contains_key(t.get_ref().as_str()) {
                let msg = format!("{list} names \"{}\", which is not a declared tool", t.get_ref());
                p.route(name, t.span(), msg);
            }
            if !seen.insert(t.get_ref()) {
                p.route(name, t.span(), format!("{list} names \"{}\" twice", t.get_ref()));
            }
        }
    }
    let set = |v: &Vec<Spanned<String>>| -> BTreeSet<String> { v.iter().map(|t| t.get_ref().clone()).collect() };
    let allow = set(&r.allow_tools);
    let deny = set(&r.deny_tools);
    let require = set(&r.require_approval);
    let auto = set(&r.auto_approve);

    for t in &r.require_approval {
        let n = t.get_ref();
        if !allow.contains(n) || deny.contains(n) {
            p.route(
                name,
                t.span(),
                format!("require_approval names \"{n}\", which the route does not allow: remove it or add it to allow_tools"),
            );
        }
    }
    for t in &r.auto_approve {
        let n = t.get_ref();
        let Some(tool) = tools.get(n.as_str()) else { continue };
        if tool.destructive() {
            p.route(
                name,
                t.span(),
                format!("auto_approve names \"{n}\", but a destructive tool can never be auto-approved"),
            );
        } else if tool.require_passkey || r.require_passkey {
            p.route(
                name,
                t.span(),
                format!("auto_approve names \"{n}\", but a decision that needs a passkey is never automatic"),
            );
        } else if tool.kind() == RawKind::Read {
            p.route(
                name,
                t.span(),
                format!("auto_approve names \"{n}\", a read tool: only write tools are auto-approved"),
            );
        }
        if require.contains(n) {
            p.route(
                name,
                t.span(),
                format!("\"{n}\" is in both require_approval and auto_approve"),
            );
        }
        if !allow.contains(n) {
            p.route(
                name,
                t.span(),
                format!("auto_approve names \"{n}\", which is not in allow_tools"),
            );
        }
    }
    for t in &r.allow_tools {
        let n = t.get_ref();
        let Some(tool) = tools.get(n.as_str()) else { continue };
        if tool.kind() == RawKind::Write && !deny.contains(n) && !require.contains(n) && !auto.contains(n) {
            p.route(
                name,
                t.span(),
                format!(
                    "allows write tool \"{n}\" without approval: add it to require_approval (or, deliberately, to auto_approve)"
                ),
            );
        }
    }

    let b = r.budgets.as_ref();
    let mut report = |p: &mut Problems, span: Range<usize>, msg: String| p.route(name, span, msg);
    let budgets = Budgets {
        steps: bounded(
            p,
            "budgets.steps",
            b.and_then(|b| b.steps.as_ref()),
            1..=100_000,
            DEFAULT_BUDGETS.steps,
            &mut report,
        ),
        seconds: bounded(
            p,
            "budgets.seconds",
            b.and_then(|b| b.seconds.as_ref()),
            1..=MAX_SECONDS,
            DEFAULT_BUDGETS.seconds,
            &mut report,
        ),
        usd: match b.and_then(|b| b.usd.as_ref()) {
            Some(u) if !(u.get_ref().is_finite() && *u.get_ref() >= 0.0) => {
                report(p, u.span(), "budgets.usd must be 0 or more".into());
                DEFAULT_BUDGETS.usd
            }
            Some(u) => *u.get_ref(),
            None => DEFAULT_BUDGETS.usd,
        },
    };
    if p.list.len() > before {
        return None;
    }
    Some(Route {
        name: name.get_ref().clone(),
        allow_tools: allow,
        deny_tools: deny,
        require_approval: require,
        auto_approve: auto,
        budgets,
        audit_enabled: r.audit.as_ref().is_none_or(|a| a.enabled),
        require_passkey: r.require_passkey,
    })
}

/// The longest personal data may be kept after a proposal finished: ten years.
const MAX_RETAIN_PII_DAYS: i64 = 3650;

fn check_privacy(p: &mut Problems, raw: Option<&RawPrivacy>) -> Privacy {
    let d = Privacy::default();
    let Some(raw) = raw else { return d };
    let mut report = |p: &mut Problems, span: Range<usize>, msg: String| p.at(span, format!("privacy: {msg}"));
    Privacy {
        retain_pii_days: bounded(
            p,
            "retain_pii_days",
            raw.retain_pii_days.as_ref(),
            1..=MAX_RETAIN_PII_DAYS,
            d.retain_pii_days,
            &mut report,
        ),
    }
}

fn check_breakers(p: &mut Problems, raw: Option<&RawBreakers>) -> Breakers {
    let d = Breakers::default();
    let Some(raw) = raw else { return d };
    let mut report = |p: &mut Problems, span: Range<usize>, msg: String| p.at(span, format!("breakers: {msg}"));
    let route_failure_share = match &raw.route_failure_share {
        Some(s) if !(*s.get_ref() > 0.0 && *s.get_ref() <= 1.0) => {
            report(
                p,
                s.span(),
                "route_failure_share must be more than 0 and at most 1".into(),
            );
            d.route_failure_share
        }
        Some(s) => *s.get_ref(),
        None => d.route_failure_share,
    };
    Breakers {
        run_denials: bounded(
            p,
            "run_denials",
            raw.run_denials.as_ref(),
            1..=1000,
            d.run_denials,
            &mut report,
        ),
        route_failure_share,
        route_window: bounded(
            p,
            "route_window",
            raw.route_window.as_ref(),
            1..=10_000,
            d.route_window,
            &mut report,
        ),
    }
}
