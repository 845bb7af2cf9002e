//! What reviewers read: the queue of their tenants and the review screen of
//! one proposal, with who may still decide and why this person may not.

use super::people::Person;
use super::privacy::{mask_decision, mask_job, mask_proposal, personal_fields, reads_personal_data, PersonalData};
use super::Core;
use crate::diff;
use crate::error::{Error, Result};
use crate::lifecycle::{may_decide, Decider, DecisionFacts, Status, Verdict};
use crate::policy::render_template;
use crate::roles::Role;
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::proposals::{self, DecisionRow, ProposalRow};
use crate::store::queries::users::{self, ReviewChange};

const QUEUE_LIMIT: i64 = 200;
/// How many of a run's proposals the review screen lists.
pub const RUN_LIST_LIMIT: i64 = 50;
/// How many of their own latest decision times a reviewer is shown.
pub const OWN_PACE_SHOWN: i64 = 10;
/// This many quick decisions in a row and the reviewer is warned.
pub const QUICK_IN_A_ROW: usize = 5;

/// Whether the latest `QUICK_IN_A_ROW` decisions (newest first, how long each
/// page was open) were all decided faster than `quick_ms`: a reviewer
/// clicking through rather than reading.
pub fn deciding_too_fast(recent_view_ms: &[Option<i64>], quick_ms: i64) -> bool {
    recent_view_ms.len() >= QUICK_IN_A_ROW
        && recent_view_ms[..QUICK_IN_A_ROW]
            .iter()
            .all(|v| v.is_some_and(|ms| ms < quick_ms))
}

/// A pending proposal as the queue lists it.
pub type QueueEntry = ProposalRow;

/// Everything the review screen shows of one proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewData {
    pub proposal: ProposalRow,
    pub decisions: Vec<DecisionRow>,
    pub job: Option<JobRow>,
    /// How to reverse it, from the policy.
    pub undo: String,
    /// The tool's blast-radius template, filled with this proposal's args.
    pub blast_radius: String,
    pub diff: Option<Vec<diff::Line>>,
    /// None: this person may decide. Some: why not (shown by the buttons).
    pub why_not: Option<String>,
    /// Reviewers who could still decide, so a first approver knows whom to ask.
    pub eligible: Vec<String>,
    /// This person decides under break-glass.
    pub break_glass: bool,
    pub now_ms: i64,
    /// Who of those who decided became a reviewer (or had their access or
    /// password changed) within the last day: a co-approver should know.
    pub recent_review_changes: Vec<ReviewChange>,
    /// Which args are personal data, whether this person reads them or
    /// their masks, and when they were erased.
    pub personal: PersonalData,
    /// The proposals of the same run (this one included), oldest first: an
    /// agent's parallel calls, reviewed together but decided one by one.
    pub run: Vec<RunEntry>,
    /// How long this person's latest decisions took them (the page open),
    /// newest first; empty for someone who never decided.
    pub own_pace_ms: Vec<Option<i64>>,
    /// They decided their last few very fast, one after another.
    pub too_fast: bool,
    /// Every decision on it must be signed with a passkey.
    pub requires_passkey: bool,
}

/// One proposal of a run as the review screen lists it: no args, so nothing
/// personal.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEntry {
    pub id: String,
    pub tool: String,
    pub status: Status,
    pub created_at: i64,
    pub approvals: i64,
    pub approvals_required: i64,
    pub destructive: bool,
}

impl RunEntry {
    fn of(p: &ProposalRow) -> Self {
        Self {
            id: p.id.clone(),
            tool: p.tool.clone(),
            status: p.status,
            created_at: p.created_at,
            approvals: p.approvals,
            approvals_required: p.approvals_required,
            destructive: p.destructive,
        }
    }
}

/// How long a change to who may review stays marked beside their decisions.
pub const REVIEW_CHANGE_SHOWN_MS: i64 = 24 * 3600 * 1000;

impl Core {
    /// Pending proposals of the person's tenants, oldest first.
    pub async fn queue_for(&self, person: &Person) -> Result<Vec<QueueEntry>> {
        if !person.roles.reviewer {
            return Err(Error::Forbidden("the queue is for reviewers".into()));
        }
        proposals::pending(&mut self.store.reader().await?.conn(), &person.tenants, QUEUE_LIMIT).await
    }

    /// The review screen for one proposal, or not found when the person may not see it.
    pub async fn review_for(&self, person: &Person, id: &str) -> Result<ReviewData> {
        let break_glass = self.break_glass_of(person).await?.is_some();
        let mut r = self.store.reader().await?;
        let mut p: ProposalRow = proposals::get(&mut r.conn(), id)
            .await?
            .filter(|p| {
                break_glass || (person.sees_tenant(&p.tenant) && (person.roles.reviewer || person.roles.auditor))
            })
            .ok_or(Error::NotFound)?;
        let mut decisions = proposals::decisions_of(&mut r.conn(), &p.id).await?;
        let mut job = jobs::by_proposal(&mut r.conn(), &p.id).await?;
        let reviewers = users::with_role_in_tenant(&mut r.conn(), Role::Reviewer, &p.tenant).await?;
        let admins = users::ids_with_role(&mut r.conn(), Role::Admin).await?;
        let now = self.now_ms();
        let deciders: Vec<String> = decisions.iter().map(|d| d.user_id.clone()).collect();
        let recent_review_changes =
            users::review_changes_since(&mut r.conn(), &deciders, now - REVIEW_CHANGE_SHOWN_MS).await?;
        let run = proposals::of_run(&mut r.conn(), &p.run_id, RUN_LIST_LIMIT).await?;
        let own_pace_ms: Vec<Option<i64>> =
            proposals::recent_decisions_by(&mut r.conn(), &person.username, OWN_PACE_SHOWN)
                .await?
                .into_iter()
                .map(|d| d.view_ms)
                .collect();
        drop(r);
        let policy = self.policy();
        let tool = policy.tool(&p.tool);
        let decided: Vec<(String, Verdict)> = decisions.iter().map(|d| (d.user_id.clone(), d.verdict)).collect();
        let facts = DecisionFacts {
            status: p.status,
            tenant: &p.tenant,
            on_behalf_of: p.on_behalf_of.as_deref(),
            approvals_required: p.approvals_required,
            decisions: &decided,
        };
        let tenant = [p.tenant.clone()];
        let admin_reviewers = policy.people.admins_may_review;
        let may = |user_id: &str, username: &str| {
            may_decide(
                &facts,
                &Decider {
                    user_id,
                    username,
                    is_reviewer: true,
                    tenants: &tenant,
                    break_glass: false,
                    is_admin: admins.iter().any(|a| a == user_id),
                    admins_may_review: admin_reviewers,
                },
            )
            .is_ok()
        };
        let why_not = if p.status == Status::Pending && p.expires_at <= now {
            Some("This proposal has expired".to_owned())
        } else {
            may_decide(
                &facts,
                &Decider {
                    user_id: &person.id,
                    username: &person.username,
                    is_reviewer: person.roles.reviewer,
                    tenants: &person.tenants,
                    break_glass,
                    is_admin: person.roles.admin,
                    admins_may_review: admin_reviewers,
                },
            )
            .err()
            .map(|r| r.to_string())
        };
        let why_not = match why_not {
            None => self
                .switch_covering(&p.tenant, &p.route, &p.tool)
                .await?
                .map(|s| format!("A kill switch is on ({s}): approvals wait until it is off")),
            some => some,
        };
        let requires_passkey = policy.requires_passkey(&p.route, &p.tool);
        let why_not = match why_not {
            None if requires_passkey => match self.passkeys_off() {
                Some(off) => Some(format!("This tool needs a passkey, and passkeys are off here: {off}")),
                None => {
                    let mine =
                        crate::store::queries::passkeys::of_user(&mut self.store.reader().await?.conn(), &person.id)
                            .await?;
                    mine.is_empty().then(|| {
                        "This tool needs a decision signed with a passkey, and you have none yet: \
                         add one on your account page (/account)"
                            .to_owned()
                    })
                }
            },
            other => other,
        };
        let eligible = if p.status == Status::Pending {
            reviewers
                .iter()
                .filter(|u| u.id != person.id && may(&u.id, &u.username))
                .map(|u| u.username.clone())
                .collect()
        } else {
            Vec::new()
        };
        // The reviewers who decide read personal data; anyone else (an
        // auditor) reads it masked, here and in everything derived from it.
        let personal = PersonalData {
            fields: personal_fields(&policy, &p),
            shown: reads_personal_data(person, &p.tenant, break_glass),
            erased_at: p.pii_erased_at,
        };
        if !personal.shown && !personal.fields.is_empty() {
            let had_diff = p.diff.is_some();
            let r = mask_proposal(&mut p, &personal.fields);
            job.iter_mut().for_each(|j| mask_job(j, &r));
            decisions.iter_mut().for_each(|d| mask_decision(d, &r));
            // Masking dropped the stored diff (a value may straddle its
            // spans): the masked preview is diffed again.
            if let (Some(before), Some(after), true) = (&p.preview_before, &p.preview_after, had_diff) {
                p.diff = Some(super::previews::diff_json(&self.diffs, before.clone(), after.clone()).await?);
            }
        }
        let args: serde_json::Value = serde_json::from_str(&p.args).unwrap_or_default();
        Ok(ReviewData {
            undo: tool
                .map(|t| t.undo.clone())
                .unwrap_or_else(|| "unknown: the tool is no longer in the policy".into()),
            blast_radius: tool
                .map(|t| render_template(&t.blast_radius, &args, &p.tenant, &p.env, &p.route))
                .unwrap_or_else(|| "unknown".into()),
            diff: p.diff.as_deref().and_then(|d| serde_json::from_str(d).ok()),
            proposal: p,
            decisions,
            job,
            why_not,
            eligible,
            break_glass,
            now_ms: now,
            recent_review_changes,
            personal,
            run: run.iter().map(RunEntry::of).collect(),
            too_fast: deciding_too_fast(&own_pace_ms, self.settings().quick_decision_ms),
            own_pace_ms,
            requires_passkey,
        })
    }

    /// Where a reviewer goes after deciding `after`: the next pending
    /// proposal of their queue that they may still decide, the same run's
    /// first (parallel calls together), else the oldest. None: nothing waits
    /// for them.
    pub async fn next_for(&self, person: &Person, after: &str) -> Result<Option<String>> {
        if !person.roles.reviewer {
            return Ok(None);
        }
        let break_glass = self.break_glass_of(person).await?.is_some();
        let mut r = self.store.reader().await?;
        let run_id = proposals::get(&mut r.conn(), after).await?.map(|p| p.run_id);
        let now = self.now_ms();
        let queue: Vec<ProposalRow> = proposals::pending(&mut r.conn(), &person.tenants, QUEUE_LIMIT)
            .await?
            .into_iter()
            .filter(|p| p.id != after && p.expires_at > now)
            .collect();
        let ids: Vec<String> = queue.iter().map(|p| p.id.clone()).collect();
        let decisions = proposals::decisions_of_many(&mut r.conn(), &ids).await?;
        drop(r);
        let admins_may_review = self.policy().people.admins_may_review;
        let decidable = |p: &ProposalRow| {
            let decided: Vec<(String, Verdict)> = decisions
                .iter()
                .filter(|d| d.proposal_id == p.id)
                .map(|d| (d.user_id.clone(), d.verdict))
                .collect();
            let facts = DecisionFacts {
                status: p.status,
                tenant: &p.tenant,
                on_behalf_of: p.on_behalf_of.as_deref(),
                approvals_required: p.approvals_required,
                decisions: &decided,
            };
            let me = Decider {
                user_id: &person.id,
                username: &person.username,
                is_reviewer: person.roles.reviewer,
                tenants: &person.tenants,
                break_glass,
                is_admin: person.roles.admin,
                admins_may_review,
            };
            may_decide(&facts, &me).is_ok()
        };
        let same_run = |p: &&ProposalRow| Some(&p.run_id) == run_id.as_ref();
        let next = queue
            .iter()
            .filter(same_run)
            .find(|p| decidable(p))
            .or_else(|| queue.iter().find(|p| decidable(p)));
        Ok(next.map(|p| p.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_quick_decisions_in_a_row_are_too_fast_and_one_read_one_breaks_the_row() {
        let quick = Some(600);
        assert!(deciding_too_fast(&[quick; 5], 2000));
        assert!(deciding_too_fast(
            &[quick, quick, quick, quick, quick, Some(9000)],
            2000
        ));
        assert!(!deciding_too_fast(&[quick; 4], 2000), "four is not yet a habit");
        assert!(!deciding_too_fast(
            &[quick, quick, Some(9000), quick, quick, quick],
            2000
        ));
        assert!(
            !deciding_too_fast(&[quick, quick, None, quick, quick], 2000),
            "an unknown time is not quick"
        );
    }
}
