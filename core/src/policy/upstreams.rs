//! The MCP servers countersign calls for agents (`[upstreams.NAME]`), the
//! gateway's own settings (`[mcp]`), and the rules tying tools to them. The
//! credentials an upstream needs are never written in the policy: a header's
//! value names an environment variable of the server (`env:NAME`) or a file
//! (`file:/path`, such as a secret manager's mounted secret), read when the
//! upstream is called, so the file can be reviewed and shared freely.

use super::load::Problems;
use super::{Mcp, SecretRef, Upstream};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    url: Spanned<String>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    timeout_seconds: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    wait_seconds: Option<Spanned<i64>>,
}

pub const DEFAULT_UPSTREAM_TIMEOUT: i64 = 30;
pub const DEFAULT_MCP_WAIT: i64 = 120;

/// The prefix of a header value read from the environment.
pub const ENV_PREFIX: &str = "env:";
/// The prefix of a header value read from a file.
pub const FILE_PREFIX: &str = "file:";

/// An upstream's name: lowercase letters, digits, `-` and `_`.
fn is_upstream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A tool name as MCP allows it: 1 to 128 of `A-Z a-z 0-9 _ - .`.
pub fn is_mcp_tool_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An HTTP header name (RFC 9110 token characters).
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) fn check_upstreams(
    p: &mut Problems,
    raw: &BTreeMap<Spanned<String>, RawUpstream>,
) -> BTreeMap<String, Upstream> {
    let mut out = BTreeMap::new();
    for (name, u) in raw {
        if let Some(up) = check_upstream(p, name, u) {
            out.insert(name.get_ref().clone(), up);
        }
    }
    out
}

fn check_upstream(p: &mut Problems, name: &Spanned<String>, u: &RawUpstream) -> Option<Upstream> {
    let before = p.list.len();
    let mut report = |p: &mut Problems, span: Range<usize>, msg: String| {
        p.at(span, format!("upstream \"{}\": {msg}", name.get_ref()))
    };
    if !is_upstream_name(name.get_ref()) {
        report(
            p,
            name.span(),
            "an upstream name is lowercase letters, digits, '-' and '_', such as tickets".into(),
        );
    }
    match url::Url::parse(u.url.get_ref()) {
        Ok(parsed) if !matches!(parsed.scheme(), "http" | "https") => report(
            p,
            u.url.span(),
            format!("url must be http:// or https:// (got {}://)", parsed.scheme()),
        ),
        Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => report(p, u.url.span(), "url has no host".into()),
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => report(
            p,
            u.url.span(),
            "url must not carry credentials: put them in a header read from the environment, \
             such as headers = { Authorization = \"env:TICKETS_TOKEN\" }"
                .into(),
        ),
        Ok(_) => {}
        Err(e) => report(p, u.url.span(), format!("url is not a URL: {e}")),
    }
    let mut headers = BTreeMap::new();
    for (h, v) in &u.headers {
        if !is_header_name(h.get_ref()) {
            report(p, h.span(), format!("\"{}\" is not an HTTP header name", h.get_ref()));
        }
        // Never echo the value: if it is a literal, it may be the secret.
        let value = v.get_ref();
        if let Some(var) = value.strip_prefix(ENV_PREFIX) {
            if is_env_name(var) {
                headers.insert(h.get_ref().clone(), SecretRef::Env(var.to_owned()));
            } else {
                report(
                    p,
                    v.span(),
                    format!(
                        "header {}: after env: comes the name of an environment variable \
                         (letters, digits and '_')",
                        h.get_ref()
                    ),
                );
            }
        } else if let Some(path) = value.strip_prefix(FILE_PREFIX) {
            if path.starts_with('/') && !path.contains('\0') && path.len() > 1 {
                headers.insert(h.get_ref().clone(), SecretRef::File(path.into()));
            } else {
                report(
                    p,
                    v.span(),
                    format!(
                        "header {}: after file: comes an absolute path, such as file:/run/secrets/tickets",
                        h.get_ref()
                    ),
                );
            }
        } else {
            report(
                p,
                v.span(),
                format!(
                    "header {}: a value is read from the server's environment (env:NAME) or a file \
                     (file:/path); a credential written in the policy would reach everyone who reads the file",
                    h.get_ref()
                ),
            );
        }
    }
    let timeout_seconds = super::load::bounded(
        p,
        "timeout_seconds",
        u.timeout_seconds.as_ref(),
        1..=600,
        DEFAULT_UPSTREAM_TIMEOUT,
        &mut report,
    );
    if p.list.len() > before {
        return None;
    }
    Some(Upstream {
        name: name.get_ref().clone(),
        url: u.url.get_ref().clone(),
        headers,
        timeout_seconds,
    })
}

pub(super) fn check_mcp(p: &mut Problems, raw: Option<&RawMcp>) -> Mcp {
    let mut report = |p: &mut Problems, span: Range<usize>, msg: String| p.at(span, format!("mcp: {msg}"));
    Mcp {
        wait_seconds: super::load::bounded(
            p,
            "wait_seconds",
            raw.and_then(|m| m.wait_seconds.as_ref()),
            0..=3600,
            DEFAULT_MCP_WAIT,
            &mut report,
        ),
    }
}

/// How a tool reaches an upstream, checked against the declared upstreams.
pub(super) struct ToolUpstream<'a> {
    pub upstream: Option<&'a Spanned<String>>,
    pub upstream_tool: Option<&'a Spanned<String>>,
    pub executor_preview: Option<Range<usize>>,
}

/// The upstream and the upstream tool's name, or problems recorded.
pub(super) fn check_tool_upstream(
    report: &mut dyn FnMut(&mut Problems, Range<usize>, String),
    p: &mut Problems,
    tool: &str,
    t: ToolUpstream<'_>,
    upstreams: &BTreeMap<Spanned<String>, RawUpstream>,
) -> Option<(String, String)> {
    let Some(up) = t.upstream else {
        if let Some(ut) = t.upstream_tool {
            report(p, ut.span(), "upstream_tool needs upstream = \"…\" beside it".into());
        }
        return None;
    };
    if !upstreams.contains_key(up.get_ref().as_str()) {
        report(
            p,
            up.span(),
            format!(
                "upstream \"{0}\" is not declared: add an [upstreams.{0}] table with its url",
                up.get_ref()
            ),
        );
    }
    let remote = t.upstream_tool.map_or(tool, |u| u.get_ref().as_str());
    if !is_mcp_tool_name(remote) {
        let span = t.upstream_tool.map_or(up.span(), |u| u.span());
        report(
            p,
            span,
            format!("\"{remote}\" is not an MCP tool name (1 to 128 of letters, digits, '_', '-' and '.')"),
        );
    }
    if let Some(span) = t.executor_preview {
        report(
            p,
            span,
            "preview = \"executor\" needs an executor that computes dry runs; an upstream tool is only ever called"
                .into(),
        );
    }
    Some((up.get_ref().clone(), remote.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::{load_policy, Policy, SecretRef, UpstreamTool};

    const ROUTE: &str = r#"
[routes."r"]
allow_tools = ["ticket.close", "kb.search"]
require_approval = ["ticket.close"]
"#;

    fn with(upstreams: &str, close: &str) -> String {
        format!(
            r#"{upstreams}
[tools."kb.search"]
kind = "read"
upstream = "tickets"
upstream_tool = "search"
args.query = {{ type = "string", max_len = 200 }}

[tools."ticket.close"]
kind = "write"
undo = "Reopen with ticket.reopen"
blast_radius = "1 ticket of {{tenant}}"
args.ticket_id = {{ type = "string", pattern = "^T-[0-9]{{1,10}}$" }}
{close}
{ROUTE}"#
        )
    }

    const TICKETS: &str = r#"
[upstreams.tickets]
url = "http://127.0.0.1:9100/mcp"
headers = { Authorization = "env:TICKETS_TOKEN" }
"#;

    fn loads(src: &str) -> Policy {
        load_policy(src).unwrap_or_else(|e| panic!("policy should load: {e:?}"))
    }

    fn refused(src: &str, needle: &str) -> Vec<String> {
        let errs: Vec<String> = match load_policy(src) {
            Ok(_) => panic!("policy should have been refused (wanted {needle:?})"),
            Err(es) => es.iter().map(|e| e.to_string()).collect(),
        };
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "expected an error containing {needle:?}, got {errs:#?}"
        );
        errs
    }

    #[test]
    fn upstream_tools_load_with_their_remote_names_and_defaults() {
        let p = loads(&with(TICKETS, "upstream = \"tickets\""));
        let up = &p.upstreams["tickets"];
        assert_eq!(up.url, "http://127.0.0.1:9100/mcp");
        assert_eq!(up.timeout_seconds, 30);
        assert_eq!(
            up.headers.get("Authorization"),
            Some(&SecretRef::Env("TICKETS_TOKEN".into())),
            "the variable's name is kept, never a value"
        );
        assert_eq!(
            p.tools["ticket.close"].upstream,
            Some(UpstreamTool {
                upstream: "tickets".into(),
                tool: "ticket.close".into()
            }),
            "upstream_tool defaults to the tool's own name"
        );
        assert_eq!(p.tools["kb.search"].upstream.as_ref().unwrap().tool, "search");
        assert_eq!(p.mcp.wait_seconds, 120);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn a_tool_naming_an_undeclared_upstream_is_refused_at_its_line() {
        let errs = refused(
            &with(TICKETS, "upstream = \"billing\""),
            "upstream \"billing\" is not declared",
        );
        let line = with(TICKETS, "upstream = \"billing\"")
            .lines()
            .position(|l| l.contains("\"billing\""))
            .unwrap()
            + 1;
        assert!(errs.iter().any(|e| e.starts_with(&format!("line {line}:"))), "{errs:?}");
    }

    #[test]
    fn a_literal_header_value_is_refused_without_being_repeated() {
        let src = with(
            "[upstreams.tickets]\nurl = \"https://t.example/mcp\"\nheaders = { Authorization = \"Bearer s3cr3t-value\" }\n",
            "",
        );
        let errs = refused(
            &src,
            "header Authorization: a value is read from the server's environment (env:NAME) or a file",
        );
        assert!(
            errs.iter().all(|e| !e.contains("s3cr3t")),
            "the value was echoed: {errs:?}"
        );
        refused(
            &with(
                "[upstreams.tickets]\nurl = \"https://t.example/mcp\"\nheaders = { X-Key = \"env:not a name\" }\n",
                "",
            ),
            "after env: comes the name of an environment variable",
        );
    }

    #[test]
    fn a_header_may_be_read_from_a_file_named_by_its_absolute_path() {
        let p = loads(&with(
            "[upstreams.tickets]\nurl = \"https://t.example/mcp\"\nheaders = { Authorization = \"file:/run/secrets/tickets\" }\n",
            "",
        ));
        assert_eq!(
            p.upstreams["tickets"].headers.get("Authorization"),
            Some(&SecretRef::File("/run/secrets/tickets".into()))
        );
        assert_eq!(
            p.upstreams["tickets"].headers["Authorization"].to_string(),
            "file:/run/secrets/tickets",
            "shown as the reference it is"
        );
        for bad in ["file:secrets/tickets", "file:", "file:/"] {
            refused(
                &with(
                    &format!(
                        "[upstreams.tickets]\nurl = \"https://t.example/mcp\"\nheaders = {{ X-Key = \"{bad}\" }}\n"
                    ),
                    "",
                ),
                "after file: comes an absolute path",
            );
        }
    }

    #[test]
    fn upstream_urls_are_http_without_credentials() {
        for (url, needle) in [
            ("ftp://t.example/mcp", "url must be http:// or https://"),
            ("not a url", "url is not a URL"),
            ("https://user:pw@t.example/mcp", "url must not carry credentials"),
        ] {
            refused(&with(&format!("[upstreams.tickets]\nurl = \"{url}\"\n"), ""), needle);
        }
        refused(
            &with("[upstreams.Tickets]\nurl = \"http://t/mcp\"\n", ""),
            "an upstream name is lowercase",
        );
        refused(
            &with("[upstreams.tickets]\nurl = \"http://t/mcp\"\ntimeout_seconds = 0\n", ""),
            "timeout_seconds must be between 1 and 600",
        );
    }

    #[test]
    fn upstream_tool_rules() {
        refused(
            &with(TICKETS, "upstream_tool = \"close\""),
            "upstream_tool needs upstream = \"…\" beside it",
        );
        refused(
            &with(TICKETS, "upstream = \"tickets\"\nupstream_tool = \"close ticket\""),
            "\"close ticket\" is not an MCP tool name",
        );
        refused(
            &with(TICKETS, "upstream = \"tickets\"\npreview = \"executor\""),
            "preview = \"executor\" needs an executor that computes dry runs",
        );
    }

    #[test]
    fn a_read_tool_without_upstream_is_a_warning_once_upstreams_exist() {
        let src = with(TICKETS, "").replace("upstream = \"tickets\"\nupstream_tool = \"search\"\n", "");
        let p = loads(&src);
        assert!(
            p.warnings.iter().any(|w| w
                .message
                .contains("tool \"kb.search\": warning: a read tool without upstream")),
            "{:?}",
            p.warnings
        );
        let without = src.replace(TICKETS, "");
        assert!(
            loads(&without).warnings.is_empty(),
            "no upstreams, no gateway, no warning"
        );
    }

    #[test]
    fn mcp_wait_seconds_is_bounded() {
        let p = loads(&with(&format!("{TICKETS}\n[mcp]\nwait_seconds = 30\n"), ""));
        assert_eq!(p.mcp.wait_seconds, 30);
        refused(
            &with(&format!("{TICKETS}\n[mcp]\nwait_seconds = 5000\n"), ""),
            "mcp: wait_seconds must be between 0 and 3600",
        );
    }
}
