//! Personal data in args (policy `pii = true`). Which args of a proposal are
//! personal data is recorded when it is made (and added to when a later
//! policy marks more); the reviewers who decide read the values, the
//! executor that acts receives them; everyone else reads them masked
//! (`mask_*`, used by the review screen and history). `retain_pii_days` after
//! a proposal finished, its values are erased (`erase_in`: by the sweeper, or
//! on demand): from its args, reason, preview, jobs (results, accepted
//! completions, receipts) and decision comments, each replaced by a marker;
//! the upstream's answers the MCP gateway kept for the agent are dropped.
//! The args hash, the decisions and the audit chain stay, and the chain,
//! which never held a value, still verifies.

use super::{Admin, Core, SYSTEM_ACTOR};
use crate::audit::{canonical_json, AuditDraft};
use crate::clock::rfc3339;
use crate::error::Result;
use crate::policy::Policy;
use crate::privacy::{erased_args, masked_args, Redactor, ERASED};
use crate::store::queries::jobs::{self, JobRow};
use crate::store::queries::proposals::{self, DecisionRow, ProposalRow};
use crate::store::queries::upstream_calls;
use crate::store::{Notice, Tx};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Proposals erased in one transaction.
const ERASE_BATCH: i64 = 200;

/// How often the sweeper looks for personal data past its retention (by
/// the application clock): retention is counted in days.
const ERASURE_CHECK_EVERY_MS: i64 = 60_000;

/// What one reader may see of a proposal's personal data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersonalData {
    /// The args that are personal data.
    pub fields: BTreeSet<String>,
    /// Whether this reader sees the values (a reviewer of the tenant, or
    /// under break-glass); else they are masked.
    pub shown: bool,
    /// When the values were erased.
    pub erased_at: Option<i64>,
}

/// The args recorded as personal data when the proposal was made.
fn recorded(p: &ProposalRow) -> BTreeSet<String> {
    p.pii_fields
        .as_deref()
        .and_then(|f| serde_json::from_str::<BTreeSet<String>>(f).ok())
        .unwrap_or_default()
}

/// The args of `p` that are personal data: those recorded when it was made,
/// and those the loaded policy marks now.
pub(super) fn personal_fields(policy: &Policy, p: &ProposalRow) -> BTreeSet<String> {
    let mut fields = recorded(p);
    fields.extend(policy.personal_fields(&p.tool));
    fields
}

/// How a set of personal fields is stored: a JSON array, or None for none.
pub(super) fn stored_fields(fields: &BTreeSet<String>) -> Option<String> {
    (!fields.is_empty()).then(|| serde_json::to_string(fields).unwrap_or_else(|_| "[]".into()))
}

/// What finds `p`'s personal values in free text, to mask them.
fn masker(p: &ProposalRow, fields: &BTreeSet<String>) -> (Value, Redactor) {
    let args: Value = serde_json::from_str(&p.args).unwrap_or(Value::Null);
    let r = Redactor::masking(&args, fields);
    (args, r)
}

/// `p` as a reader who may not see its personal data sees it: personal args
/// masked, and every personal value masked where free text repeats it. The
/// stored diff is dropped (a value may straddle its spans); a reader that
/// shows one diffs the masked preview again. Answers what masks the
/// proposal's job and decisions alike.
pub(super) fn mask_proposal(p: &mut ProposalRow, fields: &BTreeSet<String>) -> Redactor {
    if fields.is_empty() {
        return Redactor::default();
    }
    let (args, r) = masker(p, fields);
    p.args = canonical_json(&masked_args(&args, fields));
    p.reason = r.text(&p.reason);
    p.preview_before = p.preview_before.as_deref().map(|t| r.text(t));
    p.preview_after = p.preview_after.as_deref().map(|t| r.text(t));
    p.preview_state = p.preview_state.as_deref().map(|t| r.text(t));
    if p.preview_before.is_some() || p.preview_after.is_some() {
        p.diff = None;
    }
    r
}

/// A job as a reader who may not see personal data sees it. Its receipt
/// (which signs the args) is for the executor alone.
pub(super) fn mask_job(j: &mut JobRow, r: &Redactor) {
    j.result = j.result.as_deref().map(|t| r.json_text(t));
    j.completion = j.completion.as_deref().map(|t| r.json_text(t));
    j.receipt = None;
}

pub(super) fn mask_decision(d: &mut DecisionRow, r: &Redactor) {
    d.comment = r.text(&d.comment);
}

/// Whether `person` reads personal values of proposals of `tenant`: the
/// reviewers who decide there, and a person under break-glass.
pub(super) fn reads_personal_data(person: &super::Person, tenant: &str, break_glass: bool) -> bool {
    break_glass || (person.roles.reviewer && person.sees_tenant(tenant))
}

/// An accepted completion body with its personal data erased: a dry run's
/// preview whole (free text may say a value otherwise), everything else
/// where a value is found.
fn erased_completion(body: &str, r: &Redactor) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(mut v) => {
            if let Some(p) = v.get_mut("preview").and_then(Value::as_object_mut) {
                for key in ["before", "after"] {
                    if p.contains_key(key) {
                        p.insert(key.into(), Value::String(ERASED.into()));
                    }
                }
            }
            canonical_json(&r.json(&v))
        }
        Err(_) => r.text(body),
    }
}

/// Why personal data was erased, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// `retain_pii_days` after the proposal finished (the sweeper).
    Retention,
    /// `countersign privacy purge`, or an admin.
    OnDemand,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Retention => "retention",
            Why::OnDemand => "on demand",
        }
    }
}

#[derive(Clone)]
struct Erasure {
    policy: Arc<Policy>,
    /// Proposals finished at or before this are erased.
    cutoff: i64,
    actor: String,
    why: Why,
}

/// Erase the personal data of one batch of proposals finished by the
/// cutoff, each with its audit event; answers how many.
async fn erase_in(tx: &mut Tx<'_>, e: Erasure) -> Result<usize> {
    let now = tx.now_ms();
    let due = proposals::erasable(&mut tx.conn, e.cutoff, ERASE_BATCH).await?;
    let mut erased_now = 0;
    for p in &due {
        let fields = personal_fields(&e.policy, p);
        let args: Value = serde_json::from_str(&p.args)?;
        let r = Redactor::erasing(&args, &fields);
        let args = canonical_json(&erased_args(&args, &fields));
        let reason = r.text(&p.reason);
        let state = p.preview_state.as_deref().map(|s| r.text(s));
        let stored = stored_fields(&fields).unwrap_or_else(|| "[]".into());
        let erased = proposals::Erased {
            args: &args,
            reason: &reason,
            preview_before: p.preview_before.as_ref().map(|_| ERASED),
            preview_after: p.preview_after.as_ref().map(|_| ERASED),
            preview_state: state.as_deref(),
            pii_fields: &stored,
            at: now,
        };
        if !proposals::erase(&mut tx.conn, &p.id, &erased).await? {
            continue;
        }
        for j in jobs::of_proposal(&mut tx.conn, &p.id).await? {
            let result = j.result.as_deref().map(|t| r.json_text(t));
            let completion = j.completion.as_deref().map(|t| erased_completion(t, &r));
            jobs::erase(&mut tx.conn, &j.id, result.as_deref(), completion.as_deref()).await?;
        }
        for d in proposals::decisions_of(&mut tx.conn, &p.id).await? {
            if r.finds(&d.comment) {
                proposals::set_comment(&mut tx.conn, &d.id, &r.text(&d.comment)).await?;
            }
        }
        // Dropped whole, not searched: an upstream may answer in words no
        // search finds ("sent to Dana"), and nobody but the agent, which
        // had it, ever read it.
        upstream_calls::erase_results(&mut tx.conn, &p.id).await?;
        let mut ev = AuditDraft::new(e.actor.clone(), "privacy.erased")
            .tenant(p.tenant.clone())
            .tool(p.tool.clone())
            .subject(p.id.clone())
            .details(serde_json::json!({
                "fields": fields,
                "why": e.why.as_str(),
                "finished_by": rfc3339(e.cutoff),
                "retain_pii_days": (e.why == Why::Retention).then_some(e.policy.privacy.retain_pii_days),
            }));
        // The hash of the args as they were: what every earlier event of
        // this proposal carries.
        ev.args_hash = Some(p.args_hash.clone());
        ev.idempotency_key = p.idempotency_key.clone();
        tx.audit(ev);
        tx.notify(Notice::Proposal {
            id: p.id.clone(),
            tenant: p.tenant.clone(),
            status: p.status,
        });
        erased_now += 1;
    }
    if erased_now > 0 {
        // Deleted bytes may linger in the write-ahead log.
        tx.reclaim_after_commit();
    }
    Ok(erased_now)
}

/// Record the loaded policy's personal fields on the proposals made before
/// it marked them, so that they are masked and erased like new ones.
pub(super) async fn mark_newly_personal(tx: &mut Tx<'_>, policy: &Policy, actor: &str) -> Result<u64> {
    let mut total = 0;
    for (name, tool) in &policy.tools {
        let fields = tool.args.personal_fields();
        let Some(stored) = stored_fields(&fields) else { continue };
        let n = proposals::mark_personal(&mut tx.conn, name, &stored).await?;
        if n > 0 {
            tx.audit(
                AuditDraft::new(actor, "privacy.fields_marked")
                    .tool(name.clone())
                    .details(serde_json::json!({ "fields": fields, "proposals": n })),
            );
        }
        total += n;
    }
    Ok(total)
}

async fn mark_in(tx: &mut Tx<'_>, policy: Arc<Policy>, actor: String) -> Result<u64> {
    mark_newly_personal(tx, &policy, &actor).await
}

/// What an on-demand purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    /// Proposals whose personal data was erased.
    pub erased: usize,
    /// Those finished at or before this were erased.
    pub finished_by: i64,
}

impl Core {
    /// Erase, now, the personal data of proposals that finished at or
    /// before `before` (default: `retain_pii_days` ago, as the sweeper
    /// would). Proposals made before the policy marked their args are
    /// included.
    pub async fn purge_personal_data(&self, by: &Admin, before: Option<i64>) -> Result<PurgeReport> {
        let policy = self.policy();
        let now = self.now_ms();
        let cutoff = before.unwrap_or(now - policy.privacy.retain_ms()).min(now);
        let actor = by.actor().to_owned();
        let (p, a) = (policy.clone(), actor.clone());
        self.store.write(move |tx| Box::pin(mark_in(tx, p, a))).await?;
        let erased = self.erase_finished_by(policy, cutoff, actor, Why::OnDemand).await?;
        Ok(PurgeReport {
            erased,
            finished_by: cutoff,
        })
    }

    /// The sweeper's part: erase what is past its retention, looking at
    /// most once a minute.
    pub(super) async fn erase_past_retention(&self) -> Result<usize> {
        let now = self.now_ms();
        let last = self.erasure_checked_at.load(std::sync::atomic::Ordering::Relaxed);
        if now - last < ERASURE_CHECK_EVERY_MS {
            return Ok(0);
        }
        self.erasure_checked_at.store(now, std::sync::atomic::Ordering::Relaxed);
        let policy = self.policy();
        let cutoff = now - policy.privacy.retain_ms();
        let due = {
            let mut r = self.store.reader().await?;
            !proposals::erasable(&mut r.conn(), cutoff, 1).await?.is_empty()
        };
        if !due {
            return Ok(0);
        }
        self.erase_finished_by(policy, cutoff, SYSTEM_ACTOR.into(), Why::Retention)
            .await
    }

    async fn erase_finished_by(&self, policy: Arc<Policy>, cutoff: i64, actor: String, why: Why) -> Result<usize> {
        let mut total = 0;
        loop {
            let e = Erasure {
                policy: policy.clone(),
                cutoff,
                actor: actor.clone(),
                why,
            };
            let n = self.store.write(move |tx| Box::pin(erase_in(tx, e))).await?;
            total += n;
            if n < ERASE_BATCH as usize {
                break;
            }
        }
        if total > 0 {
            tracing::info!(proposals = total, why = why.as_str(), "personal data erased");
        }
        Ok(total)
    }
}
