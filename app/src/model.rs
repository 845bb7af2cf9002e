//! View and wire types shared by pages, server functions and the core. They
//! cross the server-function boundary, so they are plain serde data.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiffTag {
    Equal,
    Delete,
    Insert,
}

/// A run of text in a diff line; `emph` marks the words that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSpan {
    pub emph: bool,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffLine {
    pub tag: DiffTag,
    pub old_no: Option<u32>,
    pub new_no: Option<u32>,
    pub spans: Vec<DiffSpan>,
}

/// The signed-in person, as pages see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub tenants: Vec<String>,
}

impl Me {
    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banner {
    /// `switch`, `breakglass` or `breaker`.
    pub kind: String,
    pub text: String,
}

/// Everything the shell needs: who is signed in, the CSRF token forms carry,
/// and the banners every page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SessionInfo {
    pub me: Option<Me>,
    pub csrf: String,
    pub banners: Vec<Banner>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRow {
    pub id: String,
    pub tool: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub created_at_ms: i64,
    pub approvals: i64,
    pub approvals_required: i64,
    pub destructive: bool,
    pub irreversible: bool,
    pub reason_short: String,
    pub run_id: String,
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub rows: Vec<QueueRow>,
    pub now_ms: i64,
}

impl Queue {
    /// The rows by run (an agent's parallel calls together), each run where
    /// its oldest proposal stands and its rows oldest first.
    pub fn by_run(&self) -> Vec<Vec<QueueRow>> {
        let mut groups: Vec<Vec<QueueRow>> = Vec::new();
        for row in &self.rows {
            match groups.iter_mut().find(|g| g[0].run_id == row.run_id) {
                Some(g) => g.push(row.clone()),
                None => groups.push(vec![row.clone()]),
            }
        }
        groups
    }
}

/// How a run's group is headed in the queue: "3 from run r_… for alice".
pub fn run_group_title(rows: &[QueueRow]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let run = shorten(&first.run_id, 14);
    match &first.on_behalf_of {
        Some(who) => format!("{} from run {run} for {who}", rows.len()),
        None => format!("{} from run {run}", rows.len()),
    }
}

/// One proposal of the reviewed one's run, as the review screen lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunItem {
    pub id: String,
    pub tool: String,
    pub status: String,
    pub created_at_ms: i64,
    pub approvals: i64,
    pub approvals_required: i64,
    pub destructive: bool,
}

/// What a decision did, and where the reviewer goes next: the next pending
/// proposal they may decide, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    pub status: String,
    pub next: Option<String>,
}

/// One arg as a table row; long values are shortened, with the whole value kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgRow {
    pub name: String,
    pub short: String,
    pub full: Option<String>,
    /// Personal data (policy `pii = true`): shown to reviewers, masked for
    /// anyone else.
    pub personal: bool,
}

/// The personal data of a proposal, as one reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalView {
    /// This reader sees the values (a reviewer of the tenant); else masks.
    pub shown: bool,
    /// When the values were erased.
    pub erased_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub username: String,
    pub verdict: String,
    pub comment: String,
    pub at_ms: i64,
    pub break_glass: bool,
    pub view_ms: Option<i64>,
    /// Decided in under two seconds: a possible rubber stamp.
    pub quick: bool,
    /// Signed with the decider's passkey.
    pub passkey: bool,
    /// This person was made a reviewer (or had their access or password
    /// changed) within the last day: "reviewer since 2 h, granted by adam".
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionView {
    pub status: String,
    pub attempts: i64,
    pub result: Option<String>,
    pub finished_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub id: String,
    pub tool: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub run_id: String,
    pub status: String,
    pub reason: String,
    pub on_behalf_of: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub now_ms: i64,
    pub approvals: i64,
    pub approvals_required: i64,
    pub destructive: bool,
    pub irreversible: bool,
    pub undo: String,
    pub blast_radius: String,
    pub diff: Option<Vec<DiffLine>>,
    /// Who described the change: `executor` (a dry run) or `agent` (not checked).
    pub preview_source: Option<String>,
    /// The executor that computed the preview, and when.
    pub preview_by: Option<String>,
    pub preview_at_ms: Option<i64>,
    pub args: Vec<ArgRow>,
    pub decisions: Vec<DecisionView>,
    /// What the reviewer is shown; a decision must carry it back.
    pub content_hash: String,
    /// None: this person may decide. Some: why not (shown by the buttons).
    pub why_not: Option<String>,
    /// Reviewers who could still decide, so a first approver knows whom to ask.
    pub eligible: Vec<String>,
    pub execution: Option<ExecutionView>,
    pub break_glass: bool,
    /// None: no arg is personal data.
    pub personal: Option<PersonalView>,
    /// The upstream MCP call it will make (a tool with `upstream`).
    pub upstream_call: Option<UpstreamCallView>,
    /// The proposals of the same run, this one included, oldest first.
    pub run: Vec<RunItem>,
    /// How long the reader's own latest decisions took, newest first.
    pub own_pace_ms: Vec<Option<i64>>,
    /// The reader decided their last few very fast, one after another.
    pub too_fast: bool,
    /// Every decision on it must be signed with a passkey.
    pub requires_passkey: bool,
}

/// The upstream MCP server and tool a proposal calls, and whether it came
/// through the MCP gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamCallView {
    pub upstream: String,
    pub tool: String,
    pub via_mcp: bool,
}

impl UpstreamCallView {
    /// "close_ticket on tickets, asked through the MCP gateway"
    pub fn describe(&self) -> String {
        let via = if self.via_mcp {
            ", asked through the MCP gateway"
        } else {
            ""
        };
        format!("{} on {}{via}", self.tool, self.upstream)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub id: String,
    pub tool: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub status: String,
    pub on_behalf_of: Option<String>,
    pub created_at_ms: i64,
    pub decisions: Vec<DecisionView>,
    pub execution: Option<ExecutionView>,
    pub destructive: bool,
    /// When its personal data was erased.
    pub pii_erased_at_ms: Option<i64>,
    pub upstream_call: Option<UpstreamCallView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HistoryQuery {
    pub tenant: Option<String>,
    pub tool: Option<String>,
    pub status: Option<String>,
    pub person: Option<String>,
    /// RFC 3339 or YYYY-MM-DD.
    pub from: Option<String>,
    pub to: Option<String>,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub rows: Vec<HistoryRow>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub tenant: Option<String>,
    pub subject: Option<String>,
    pub tool: Option<String>,
    pub result_status: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub rows: Vec<AuditRow>,
    pub next_before: Option<i64>,
    pub verified: bool,
    pub verify_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonView {
    pub id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub tenants: Vec<String>,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub scope: String,
    pub tools: String,
    pub hint: String,
    pub created_at_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchView {
    pub scope: String,
    pub target: String,
    pub engaged: bool,
    pub reason: String,
    pub changed_by: String,
    pub changed_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerView {
    pub route: String,
    pub reason: String,
    pub tripped_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassView {
    pub id: String,
    pub username: String,
    pub reason: String,
    pub incident: String,
    pub started_at_ms: i64,
    pub ends_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub mine: bool,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    pub id: String,
    pub tenant: String,
    pub env: String,
    pub route: String,
    pub created_at_ms: i64,
    pub revoked: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionView {
    pub id: String,
    pub hash: String,
    pub loaded_at_ms: i64,
    pub loaded_by: String,
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: String,
    pub format: String,
}

/// Everything the administration page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminView {
    pub now_ms: i64,
    pub people: Vec<PersonView>,
    pub keys: Vec<KeyView>,
    pub switches: Vec<SwitchView>,
    pub breakers: Vec<BreakerView>,
    pub break_glass: Vec<BreakGlassView>,
    pub runs: Vec<RunView>,
    pub policy: Vec<PolicyVersionView>,
    pub webhooks: Vec<WebhookView>,
    pub tools: Vec<String>,
    pub routes: Vec<String>,
    pub undelivered: i64,
}

/// Shorten to `max` characters with an ellipsis.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// "3 s", "4 min", "2 h", "5 d".
pub fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_keeps_short_text_and_marks_cut_text() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }

    fn row(id: &str, run: &str) -> QueueRow {
        QueueRow {
            id: id.into(),
            tool: "ticket.close".into(),
            tenant: "acme".into(),
            env: "prod".into(),
            route: "support/send".into(),
            created_at_ms: 0,
            approvals: 0,
            approvals_required: 1,
            destructive: false,
            irreversible: false,
            reason_short: String::new(),
            run_id: run.into(),
            on_behalf_of: Some("alice".into()),
        }
    }

    #[test]
    fn a_runs_proposals_are_grouped_where_its_oldest_stands() {
        let q = Queue {
            rows: vec![
                row("p1", "r_a"),
                row("p2", "r_b"),
                row("p3", "r_a"),
                row("p4", "r_c"),
                row("p5", "r_b"),
            ],
            now_ms: 0,
        };
        let groups = q.by_run();
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["p1", "p3"], vec!["p2", "p5"], vec!["p4"]]);
        assert_eq!(run_group_title(&groups[0]), "2 from run r_a for alice");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(5_000), "5 s");
        assert_eq!(age(125_000), "2 min");
        assert_eq!(age(7_200_000), "2 h");
        assert_eq!(age(-5), "0 s");
    }
}

/// One of the signed-in person's passkeys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyItem {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

/// The account page: the person's passkeys, and whether passkeys work here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub username: String,
    pub passkeys: Vec<PasskeyItem>,
    /// Why passkeys cannot be used on this server, if they cannot.
    pub passkeys_off: Option<String>,
}

/// A WebAuthn ceremony started on the server: its id, and the options for
/// the browser (JSON, for `PublicKeyCredential.parse…OptionsFromJSON`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyCeremony {
    pub ceremony: String,
    pub options: String,
}
