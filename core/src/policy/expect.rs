//! Policy tests: a TOML file of `[[expect]]` tables stating what each route must
//! allow, deny and gate. Run by `countersign policy test` and in CI.

use super::{Decision, Policy};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    #[serde(default)]
    expect: Vec<Expectation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    route: String,
    #[serde(default)]
    allows: Vec<String>,
    #[serde(default)]
    denies: Vec<String>,
    #[serde(default)]
    requires_approval: Vec<String>,
    #[serde(default)]
    requires_two_approvers: Vec<String>,
}

/// An expectation list: its name, the tools it names, and what must hold.
type Check<'a> = (&'a str, &'a Vec<String>, fn(Decision) -> bool);

#[derive(Debug, Default)]
pub struct ExpectReport {
    pub checked: usize,
    pub failures: Vec<String>,
}

impl ExpectReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.checked > 0
    }
}

fn describe(d: Decision) -> String {
    match d {
        Decision::Allow => "allows it".into(),
        Decision::RequireApproval { approvals } => format!("requires {approvals} approval(s)"),
        Decision::Deny(super::Denial::Denied) => "denies it (deny_tools)".into(),
        Decision::Deny(super::Denial::NotAllowed) => "denies it (not allowed)".into(),
    }
}

/// Run the expectations in `source` against `policy`. A file that does not parse
/// or states nothing is an error, not a pass.
pub fn run_expectations(policy: &Policy, source: &str) -> Result<ExpectReport, String> {
    let file: ExpectFile = toml::from_str(source).map_err(|e| {
        let line = e
            .span()
            .map(|s| source[..s.start.min(source.len())].matches('\n').count() + 1);
        match line {
            Some(l) => format!("line {l}: {}", e.message().trim()),
            None => e.message().trim().to_owned(),
        }
    })?;
    if file.expect.is_empty() {
        return Err("the file has no [[expect]] tables: a policy test must state something".into());
    }
    let mut report = ExpectReport::default();
    for ex in &file.expect {
        let Some(route) = policy.route(&ex.route) else {
            report
                .failures
                .push(format!("route \"{}\" is not in the policy", ex.route));
            continue;
        };
        let checks: [Check; 4] = [
            ("allows", &ex.allows, |d| d == Decision::Allow),
            ("denies", &ex.denies, |d| matches!(d, Decision::Deny(_))),
            ("requires_approval", &ex.requires_approval, |d| {
                matches!(d, Decision::RequireApproval { .. })
            }),
            (
                "requires_two_approvers",
                &ex.requires_two_approvers,
                |d| matches!(d, Decision::RequireApproval { approvals } if approvals >= 2),
            ),
        ];
        for (what, tools, holds) in checks {
            for tool in tools {
                report.checked += 1;
                let d = policy.decide(route, tool);
                if !holds(d) {
                    report.failures.push(format!(
                        "route \"{}\" should satisfy {what} for \"{tool}\", but it {}",
                        ex.route,
                        describe(d)
                    ));
                }
            }
        }
    }
    Ok(report)
}
