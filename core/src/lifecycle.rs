//! Proposal states, the legal moves between them, and who may decide. Pure:
//! the service asks these functions and then writes what they allow.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for the executor's dry run (tools whose policy says
    /// `preview = "executor"`): not yet decidable.
    Previewing,
    Pending,
    /// Approved but held (kill switch, breaker): not yet on the queue.
    Approved,
    Queued,
    Running,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Previewing,
        Status::Pending,
        Status::Approved,
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Rejected,
        Status::Expired,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Previewing => "previewing",
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Rejected | Status::Expired | Status::Cancelled
        )
    }
}

stored_as_text!(Status);

/// Every legal transition of the proposal lifecycle. The store refuses any
/// other move, so a bug cannot skip a state.
pub fn can_transition(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Previewing, Pending)
            | (Previewing, Failed)
            | (Previewing, Expired)
            | (Previewing, Cancelled)
            | (Pending, Approved)
            | (Pending, Queued)
            | (Pending, Rejected)
            | (Pending, Expired)
            | (Pending, Cancelled)
            | (Approved, Queued)
            | (Approved, Expired)
            // a revoked run's work not yet claimed
            | (Approved, Cancelled)
            | (Queued, Cancelled)
            | (Queued, Running)
            | (Queued, Expired)
            | (Running, Succeeded)
            | (Running, Failed)
            // a retryable failure or a lost lease is offered again
            | (Running, Queued)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

stored_as_text!(Verdict);

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "approve" => Some(Verdict::Approve),
            "reject" => Some(Verdict::Reject),
            _ => None,
        }
    }
}

/// Where a released job stands. Its proposal's status follows it
/// ([`JobState::proposal_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Approved while a kill switch or breaker covered it: not claimable.
    Held,
    Queued,
    /// Claimed under a live lease.
    Leased,
    Succeeded,
    Failed,
    Expired,
    /// Its run was revoked before an executor claimed it.
    Cancelled,
}

stored_as_text!(JobState);

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Held,
        JobState::Queued,
        JobState::Leased,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Expired,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Held => "held",
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Expired => "expired",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The status of the proposal whose job is in this state.
    pub fn proposal_status(self) -> Status {
        match self {
            JobState::Held => Status::Approved,
            JobState::Queued => Status::Queued,
            JobState::Leased => Status::Running,
            JobState::Succeeded => Status::Succeeded,
            JobState::Failed => Status::Failed,
            JobState::Expired => Status::Expired,
            JobState::Cancelled => Status::Cancelled,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Expired | JobState::Cancelled
        )
    }
}

/// What a job does: compute the preview (a dry run), or act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    Preview,
    Execute,
}

stored_as_text!(JobKind);

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Preview => "preview",
            JobKind::Execute => "execute",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        [JobKind::Preview, JobKind::Execute]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Every legal move of an execute job; each is also a legal move of its
/// proposal (a preview job's moves are its own: its proposal stays
/// `previewing` until the preview is in).
pub fn job_can_transition(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        (Held, Queued)
            | (Held, Expired)
            | (Held, Cancelled)
            | (Queued, Leased)
            | (Queued, Expired)
            | (Queued, Cancelled)
            | (Leased, Succeeded)
            | (Leased, Failed)
            // a retryable failure or a lost lease is offered again
            | (Leased, Queued)
    )
}

/// What the approver rules need to know about a proposal.
pub struct DecisionFacts<'a> {
    pub status: Status,
    pub tenant: &'a str,
    pub on_behalf_of: Option<&'a str>,
    pub approvals_required: i64,
    /// (user id, verdict) of decisions so far.
    pub decisions: &'a [(String, Verdict)],
}

/// Who is trying to decide.
pub struct Decider<'a> {
    pub user_id: &'a str,
    pub username: &'a str,
    pub is_reviewer: bool,
    pub tenants: &'a [String],
    /// Break-glass lets an admin decide alone (blast-radius controls).
    pub break_glass: bool,
    /// Holds the admin role too: an admin who reviews could approve as two
    /// people (make a second account), so by default they may not.
    pub is_admin: bool,
    /// The policy's `[people] admins_may_review`.
    pub admins_may_review: bool,
}

/// Why a person may not decide; the text is shown beside disabled buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotVisible,
    NotReviewer,
    /// An admin who is also a reviewer, where the policy keeps the duties apart.
    AdminMayNotReview,
    /// The executor has not yet described the change.
    Previewing,
    NotPending(Status),
    Requester,
    AlreadyApproved {
        needs_another: bool,
    },
    AlreadyRejected,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotVisible => f.write_str("Not found"),
            Refusal::NotReviewer => f.write_str("Only reviewers of this tenant decide"),
            Refusal::AdminMayNotReview => f.write_str(
                "You hold the admin role: admins do not approve or reject (an admin could approve as two people). \
                 Use break-glass in an emergency.",
            ),
            Refusal::Previewing => {
                f.write_str("The executor is still computing what will change: wait for its preview")
            }
            Refusal::NotPending(s) => write!(f, "Already {s}: nothing left to decide"),
            Refusal::Requester => f.write_str("You requested this"),
            Refusal::AlreadyApproved { needs_another: true } => f.write_str("Needs a second reviewer: not you"),
            Refusal::AlreadyApproved { needs_another: false } => f.write_str("You already approved"),
            Refusal::AlreadyRejected => f.write_str("You already rejected"),
        }
    }
}

/// The approver rules: reviewers of the tenant only; a pending proposal only;
/// never the person it is for; each person once.
pub fn may_decide(p: &DecisionFacts<'_>, who: &Decider<'_>) -> Result<(), Refusal> {
    if !who.break_glass && !who.tenants.iter().any(|t| t == p.tenant) {
        return Err(Refusal::NotVisible);
    }
    if !who.is_reviewer && !who.break_glass {
        return Err(Refusal::NotReviewer);
    }
    if who.is_admin && !who.admins_may_review && !who.break_glass {
        return Err(Refusal::AdminMayNotReview);
    }
    if p.on_behalf_of.is_some_and(|r| r.eq_ignore_ascii_case(who.username)) {
        return Err(Refusal::Requester);
    }
    if let Some((_, v)) = p.decisions.iter().find(|(id, _)| id == who.user_id) {
        return Err(match v {
            Verdict::Approve => Refusal::AlreadyApproved {
                needs_another: p.status == Status::Pending,
            },
            Verdict::Reject => Refusal::AlreadyRejected,
        });
    }
    match p.status {
        Status::Pending => Ok(()),
        Status::Previewing => Err(Refusal::Previewing),
        other => Err(Refusal::NotPending(other)),
    }
}

/// The status after an approval brings the count to `approvals`.
pub fn after_approval(approvals: i64, required: i64, break_glass: bool) -> Status {
    if break_glass || approvals >= required {
        Status::Approved
    } else {
        Status::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(decisions: &'a [(String, Verdict)], on_behalf_of: Option<&'a str>) -> DecisionFacts<'a> {
        DecisionFacts {
            status: Status::Pending,
            tenant: "acme",
            on_behalf_of,
            approvals_required: 2,
            decisions,
        }
    }

    fn who<'a>(id: &'a str, name: &'a str, tenants: &'a [String]) -> Decider<'a> {
        Decider {
            user_id: id,
            username: name,
            is_reviewer: true,
            tenants,
            break_glass: false,
            is_admin: false,
            admins_may_review: false,
        }
    }

    #[test]
    fn status_round_trips_and_terminal_states_are_final() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            if s.is_terminal() {
                for t in Status::ALL {
                    assert!(!can_transition(s, t), "{s} -> {t} must be illegal");
                }
            }
        }
        assert_eq!(Status::parse("bogus"), None);
    }

    #[test]
    fn every_job_move_is_a_move_of_its_proposal() {
        for from in JobState::ALL {
            assert_eq!(JobState::parse(from.as_str()), Some(from));
            for to in JobState::ALL {
                if job_can_transition(from, to) {
                    assert!(
                        can_transition(from.proposal_status(), to.proposal_status()),
                        "job {from} -> {to} has no proposal move"
                    );
                }
                if from.is_final() {
                    assert!(!job_can_transition(from, to), "{from} is final");
                }
            }
        }
    }

    #[test]
    fn lifecycle_moves_only_forward() {
        assert!(can_transition(Status::Pending, Status::Approved));
        assert!(can_transition(Status::Approved, Status::Queued));
        assert!(can_transition(Status::Queued, Status::Running));
        assert!(can_transition(Status::Running, Status::Succeeded));
        assert!(!can_transition(Status::Queued, Status::Pending));
        assert!(!can_transition(Status::Rejected, Status::Approved));
        assert!(!can_transition(Status::Pending, Status::Running));
        assert!(
            !can_transition(Status::Running, Status::Cancelled),
            "running work finishes"
        );
        assert!(
            can_transition(Status::Queued, Status::Cancelled),
            "a revoked run's unclaimed job"
        );
    }

    #[test]
    fn requester_cannot_approve_own_action() {
        let t = vec!["acme".to_string()];
        let d = [];
        assert_eq!(
            may_decide(&facts(&d, Some("Alice")), &who("u1", "alice", &t)),
            Err(Refusal::Requester)
        );
        assert_eq!(Refusal::Requester.to_string(), "You requested this");
    }

    #[test]
    fn second_approver_must_differ_from_first() {
        let t = vec!["acme".to_string()];
        let d = [("u1".to_string(), Verdict::Approve)];
        let r = may_decide(&facts(&d, None), &who("u1", "alice", &t)).unwrap_err();
        assert_eq!(r.to_string(), "Needs a second reviewer: not you");
        assert_eq!(may_decide(&facts(&d, None), &who("u2", "bob", &t)), Ok(()));
    }

    #[test]
    fn reviewers_of_other_tenants_cannot_see_it() {
        let t = vec!["globex".to_string()];
        assert_eq!(
            may_decide(&facts(&[], None), &who("u1", "alice", &t)),
            Err(Refusal::NotVisible)
        );
    }

    #[test]
    fn auditors_and_admins_without_review_role_cannot_decide() {
        let t = vec!["acme".to_string()];
        let mut w = who("u1", "alice", &t);
        w.is_reviewer = false;
        assert_eq!(may_decide(&facts(&[], None), &w), Err(Refusal::NotReviewer));
    }

    #[test]
    fn an_admin_reviewer_is_refused_unless_the_policy_allows_it_or_break_glass() {
        let t = vec!["acme".to_string()];
        let mut w = who("u1", "adam", &t);
        w.is_admin = true;
        assert_eq!(may_decide(&facts(&[], None), &w), Err(Refusal::AdminMayNotReview));
        w.admins_may_review = true;
        assert_eq!(may_decide(&facts(&[], None), &w), Ok(()));
        w.admins_may_review = false;
        w.break_glass = true;
        assert_eq!(may_decide(&facts(&[], None), &w), Ok(()));
    }

    #[test]
    fn a_proposal_still_previewing_cannot_be_decided() {
        let t = vec!["acme".to_string()];
        let mut f = facts(&[], None);
        f.status = Status::Previewing;
        let r = may_decide(&f, &who("u1", "alice", &t)).unwrap_err();
        assert_eq!(r, Refusal::Previewing);
        assert!(r.to_string().contains("still computing"));
    }

    #[test]
    fn decided_proposals_take_no_more_decisions() {
        let t = vec!["acme".to_string()];
        let mut f = facts(&[], None);
        f.status = Status::Rejected;
        assert_eq!(
            may_decide(&f, &who("u1", "alice", &t)),
            Err(Refusal::NotPending(Status::Rejected))
        );
    }

    #[test]
    fn threshold_moves_to_approved() {
        assert_eq!(after_approval(1, 2, false), Status::Pending);
        assert_eq!(after_approval(2, 2, false), Status::Approved);
        assert_eq!(after_approval(1, 1, false), Status::Approved);
        assert_eq!(after_approval(1, 2, true), Status::Approved);
    }
}
