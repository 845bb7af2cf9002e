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
        })
    }
}
