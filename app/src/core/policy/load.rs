//! Loading a policy file: TOML → raw serde structs (syntax, types, unknown keys)
//! → typed `Policy` after every rule of POLICY.md is checked. All problems are
//! reported at once, each with the line it is about where that can be found.

use super::schema::{ArgsSchema, FieldSchema, FieldType, HARD_MAX_STRING};
use super::{Breakers, Budgets, Policy, Route, Tool, ToolKind};
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

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
    tools: BTreeMap<String, RawTool>,
    #[serde(default)]
    routes: BTreeMap<String, RawRoute>,
    #[serde(default)]
    breakers: Option<RawBreakers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawKind {
    Read,
    Write,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    kind: RawKind,
    #[serde(default)]
    destructive: bool,
    undo: Option<String>,
    blast_radius: Option<String>,
    expires_after_seconds: Option<i64>,
    execute_within_seconds: Option<i64>,
    max_attempts: Option<i64>,
    cost_usd: Option<f64>,
    approvals: Option<i64>,
    #[serde(default)]
    args: BTreeMap<String, RawField>,
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
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    allow_tools: Vec<String>,
    #[serde(default)]
    deny_tools: Vec<String>,
    #[serde(default)]
    require_approval: Vec<String>,
    #[serde(default)]
    auto_approve: Vec<String>,
    budgets: Option<RawBudgets>,
    audit: Option<RawAudit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    steps: Option<i64>,
    seconds: Option<i64>,
    usd: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakers {
    run_denials: Option<i64>,
    route_failure_share: Option<f64>,
    route_window: Option<i64>,
}

pub const DEFAULT_BUDGETS: Budgets = Budgets {
    steps: 25,
    seconds: 300,
    usd: 1.0,
};
const DEFAULT_EXPIRES_AFTER: i64 = 24 * 3600;
const DEFAULT_EXECUTE_WITHIN: i64 = 3600;
const DEFAULT_MAX_ATTEMPTS: i64 = 3;
const MAX_SECONDS: i64 = 30 * 24 * 3600;

/// Finds the line a problem is about, so the message can name it.
struct Locator<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Locator<'a> {
    fn new(source: &'a str) -> Self {
        Self {
            lines: source.lines().collect(),
        }
    }

    /// The 1-based line of the table header `[table."name"]` (quotes and spaces ignored).
    fn header(&self, table: &str, name: &str) -> Option<usize> {
        let want = format!("{table}.{name}");
        self.lines.iter().position(|l| {
            let t = l.trim();
            t.starts_with('[') && normalise(t.trim_matches(|c| c == '[' || c == ']')) == want
        })
    }

    /// The first line at or after the header of `[table."name"]` (up to the next
    /// header of another table) that mentions `needle`; else the header's line.
    fn within(&self, table: &str, name: &str, needle: &str) -> Option<usize> {
        let start = self.header(table, name)?;
        let prefix = format!("{table}.{name}");
        for (i, l) in self.lines.iter().enumerate().skip(start) {
            let t = l.trim();
            if i > start && t.starts_with('[') {
                let h = normalise(t.trim_matches(|c| c == '[' || c == ']'));
                if !h.starts_with(&prefix) {
                    break;
                }
            }
            if l.contains(needle) {
                return Some(i + 1);
            }
        }
        Some(start + 1)
    }
}

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\'' && !c.is_whitespace())
        .collect()
}

struct Problems<'a> {
    loc: Locator<'a>,
    list: Vec<PolicyError>,
}

impl Problems<'_> {
    fn tool(&mut self, tool: &str, needle: &str, msg: String) {
        let line = self.loc.within("tools", tool, needle);
        self.list.push(PolicyError {
            line,
            message: format!("tool \"{tool}\": {msg}"),
        });
    }
    fn route(&mut self, route: &str, needle: &str, msg: String) {
        let line = self.loc.within("routes", route, needle);
        self.list.push(PolicyError {
            line,
            message: format!("route \"{route}\": {msg}"),
        });
    }
    fn general(&mut self, needle: &str, msg: String) {
        let line = self.loc.lines.iter().position(|l| l.contains(needle)).map(|i| i + 1);
        self.list.push(PolicyError { line, message: msg });
    }
}

fn is_tool_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$").expect("static regex"))
        .is_match(s)
        && s.len() <= 100
}

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
        loc: Locator::new(source),
        list: Vec::new(),
    };

    if raw.routes.is_empty() {
        p.list.push(PolicyError {
            line: None,
            message: "the policy declares no routes: add at least one [routes.\"name\"] table".into(),
        });
    }

    let mut tools = BTreeMap::new();
    for (name, t) in &raw.tools {
        if let Some(tool) = check_tool(&mut p, name, t) {
            tools.insert(name.clone(), tool);
        }
    }

    let mut routes = BTreeMap::new();
    for (name, r) in &raw.routes {
        if let Some(route) = check_route(&mut p, name, r, &raw.tools) {
            routes.insert(name.clone(), route);
        }
    }

    let breakers = check_breakers(&mut p, raw.breakers.as_ref());

    if !p.list.is_empty() {
        p.list.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        return Err(p.list);
    }
    Ok(Policy {
        tools,
        routes,
        breakers,
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

fn check_tool(p: &mut Problems, name: &str, t: &RawTool) -> Option<Tool> {
    let before = p.list.len();
    if !is_tool_name(name) {
        p.tool(
            name,
            name,
            "a tool name is lowercase words joined by dots, such as ticket.close".into(),
        );
    }
    let kind = match t.kind {
        RawKind::Read => ToolKind::Read,
        RawKind::Write => ToolKind::Write,
    };
    if t.destructive && kind == ToolKind::Read {
        p.tool(
            name,
            "destructive",
            "a destructive tool must have kind = \"write\"".into(),
        );
    }
    let undo = t.undo.clone().unwrap_or_default();
    let blast = t.blast_radius.clone().unwrap_or_default();
    if kind == ToolKind::Write {
        if undo.trim().is_empty() {
            p.tool(
                name,
                "kind",
                "a write tool must say how to undo it: undo = \"…\" or undo = \"irreversible\"".into(),
            );
        }
        if blast.trim().is_empty() {
            p.tool(
                name,
                "kind",
                "a write tool must describe its blast_radius, such as \"1 ticket of {tenant}\"".into(),
            );
        }
    }
    let approvals = match (t.approvals, t.destructive) {
        (Some(n), true) if n < 2 => {
            p.tool(
                name,
                "approvals",
                format!("a destructive tool needs at least 2 approvals, never {n}"),
            );
            2
        }
        (Some(n), _) if !(1..=10).contains(&n) => {
            p.tool(
                name,
                "approvals",
                format!("approvals must be between 1 and 10 (got {n})"),
            );
            1
        }
        (Some(n), _) => n,
        (None, true) => 2,
        (None, false) => 1,
    };
    let mut secs = |key: &str, v: Option<i64>, default: i64| -> i64 {
        match v {
            Some(s) if !(1..=MAX_SECONDS).contains(&s) => {
                p.tool(
                    name,
                    key,
                    format!("{key} must be between 1 and {MAX_SECONDS} (got {s})"),
                );
                default
            }
            Some(s) => s,
            None => default,
        }
    };
    let expires_after_seconds = secs("expires_after_seconds", t.expires_after_seconds, DEFAULT_EXPIRES_AFTER);
    let execute_within_seconds = secs(
        "execute_within_seconds",
        t.execute_within_seconds,
        DEFAULT_EXECUTE_WITHIN,
    );
    let max_attempts = match t.max_attempts {
        Some(n) if !(1..=20).contains(&n) => {
            p.tool(
                name,
                "max_attempts",
                format!("max_attempts must be between 1 and 20 (got {n})"),
            );
            1
        }
        Some(n) => n,
        None => DEFAULT_MAX_ATTEMPTS,
    };
    let cost_usd = match t.cost_usd {
        Some(c) if !(c.is_finite() && c >= 0.0) => {
            p.tool(
                name,
                "cost_usd",
                "cost_usd must be a number of dollars, 0 or more".into(),
            );
            0.0
        }
        Some(c) => c,
        None => 0.0,
    };

    let mut fields = BTreeMap::new();
    for (fname, f) in &t.args {
        if let Some(fs) = check_field(p, name, fname, f) {
            fields.insert(fname.clone(), fs);
        }
    }
    for placeholder in placeholders(&blast) {
        if !matches!(placeholder.as_str(), "tenant" | "env" | "route") && !t.args.contains_key(&placeholder) {
            p.tool(
                name,
                "blast_radius",
                format!("blast_radius names {{{placeholder}}}, which is neither an arg nor tenant, env or route"),
            );
        }
    }
    if p.list.len() > before {
        return None;
    }
    Some(Tool {
        name: name.to_owned(),
        kind,
        destructive: t.destructive,
        undo: if undo.is_empty() { "not stated".into() } else { undo },
        blast_radius: if blast.is_empty() { "reads only".into() } else { blast },
        expires_after_seconds,
        execute_within_seconds,
        max_attempts,
        cost_usd,
        approvals,
        args: ArgsSchema { fields },
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

fn check_field(p: &mut Problems, tool: &str, fname: &str, f: &RawField) -> Option<FieldSchema> {
    let before = p.list.len();
    let mut bad = |msg: String| p.tool(tool, fname, format!("arg \"{fname}\": {msg}"));
    if !is_field_name(fname) {
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
    })
}

fn check_route(p: &mut Problems, name: &str, r: &RawRoute, tools: &BTreeMap<String, RawTool>) -> Option<Route> {
    let before = p.list.len();
    if !is_route_name(name) {
        p.route(
            name,
            name,
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
            let quoted = format!("\"{t}\"");
            if !tools.contains_key(t) {
                p.route(
                    name,
                    &quoted,
                    format!("{list} names \"{t}\", which is not a declared tool"),
                );
            }
            if !seen.insert(t) {
                p.route(name, &quoted, format!("{list} names \"{t}\" twice"));
            }
        }
    }
    let allow: BTreeSet<String> = r.allow_tools.iter().cloned().collect();
    let deny: BTreeSet<String> = r.deny_tools.iter().cloned().collect();
    let require: BTreeSet<String> = r.require_approval.iter().cloned().collect();
    let auto: BTreeSet<String> = r.auto_approve.iter().cloned().collect();

    for t in &require {
        if !allow.contains(t) || deny.contains(t) {
            p.route(
                name,
                &format!("\"{t}\""),
                format!("require_approval names \"{t}\", which the route does not allow: remove it or add it to allow_tools"),
            );
        }
    }
    for t in &auto {
        let quoted = format!("\"{t}\"");
        let Some(tool) = tools.get(t) else { continue };
        if tool.destructive {
            p.route(
                name,
                &quoted,
                format!("auto_approve names \"{t}\", but a destructive tool can never be auto-approved"),
            );
        } else if matches!(tool.kind, RawKind::Read) {
            p.route(
                name,
                &quoted,
                format!("auto_approve names \"{t}\", a read tool: only write tools are auto-approved"),
            );
        }
        if require.contains(t) {
            p.route(
                name,
                &quoted,
                format!("\"{t}\" is in both require_approval and auto_approve"),
            );
        }
        if !allow.contains(t) {
            p.route(
                name,
                &quoted,
                format!("auto_approve names \"{t}\", which is not in allow_tools"),
            );
        }
    }
    for t in allow.difference(&deny) {
        let Some(tool) = tools.get(t) else { continue };
        if matches!(tool.kind, RawKind::Write) && !require.contains(t) && !auto.contains(t) {
            p.route(
                name,
                &format!("\"{t}\""),
                format!(
                    "allows write tool \"{t}\" without approval: add it to require_approval (or, deliberately, to auto_approve)"
                ),
            );
        }
    }

    let b = r.budgets.as_ref();
    let budgets = Budgets {
        steps: b.and_then(|b| b.steps).unwrap_or(DEFAULT_BUDGETS.steps),
        seconds: b.and_then(|b| b.seconds).unwrap_or(DEFAULT_BUDGETS.seconds),
        usd: b.and_then(|b| b.usd).unwrap_or(DEFAULT_BUDGETS.usd),
    };
    if !(1..=100_000).contains(&budgets.steps) {
        p.route(
            name,
            "steps",
            format!("budgets.steps must be between 1 and 100000 (got {})", budgets.steps),
        );
    }
    if !(1..=MAX_SECONDS).contains(&budgets.seconds) {
        p.route(
            name,
            "seconds",
            format!(
                "budgets.seconds must be between 1 and {MAX_SECONDS} (got {})",
                budgets.seconds
            ),
        );
    }
    if !(budgets.usd.is_finite() && budgets.usd >= 0.0) {
        p.route(name, "usd", "budgets.usd must be 0 or more".into());
    }
    if p.list.len() > before {
        return None;
    }
    Some(Route {
        name: name.to_owned(),
        allow_tools: allow,
        deny_tools: deny,
        require_approval: require,
        auto_approve: auto,
        budgets,
        audit_enabled: r.audit.as_ref().is_none_or(|a| a.enabled),
    })
}

fn check_breakers(p: &mut Problems, raw: Option<&RawBreakers>) -> Breakers {
    let d = Breakers::default();
    let Some(raw) = raw else { return d };
    let b = Breakers {
        run_denials: raw.run_denials.unwrap_or(d.run_denials),
        route_failure_share: raw.route_failure_share.unwrap_or(d.route_failure_share),
        route_window: raw.route_window.unwrap_or(d.route_window),
    };
    if !(1..=1000).contains(&b.run_denials) {
        p.general(
            "run_denials",
            format!(
                "breakers.run_denials must be between 1 and 1000 (got {})",
                b.run_denials
            ),
        );
    }
    if !(b.route_failure_share > 0.0 && b.route_failure_share <= 1.0) {
        p.general(
            "route_failure_share",
            "breakers.route_failure_share must be more than 0 and at most 1".into(),
        );
    }
    if !(1..=10_000).contains(&b.route_window) {
        p.general(
            "route_window",
            format!(
                "breakers.route_window must be between 1 and 10000 (got {})",
                b.route_window
            ),
        );
    }
    b
}
