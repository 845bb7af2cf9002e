//! The audit log as a use-case: recording policy loads, verifying the chain,
//! exporting history.

use super::Core;
use crate::audit::{AuditDraft, AuditEvent, ChainBreak, ChainVerifier};
use crate::error::Result;
use crate::ids::new_id;
use crate::policy::Policy;
use crate::store::queries::{audit, policy as policy_q};
use crate::store::Tx;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub head_seq: i64,
    pub broken: Option<ChainBreak>,
    /// Where a verification that passed ended (seq, hash, events checked).
    #[serde(skip)]
    pub verified_to: Option<(i64, String, u64)>,
    /// Events read and hashed by this verification (less than `checked` when
    /// it resumed from an earlier one).
    #[serde(skip)]
    pub read_now: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
    pub fn message(&self) -> String {
        match &self.broken {
            None => format!(
                "the audit chain verifies: {} events, head at {}",
                self.checked, self.head_seq
            ),
            Some(b) => format!(
                "the audit chain is broken at event {}{}: {}",
                b.seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                b.event_id.as_ref().map(|i| format!(" ({i})")).unwrap_or_default(),
                b.reason
            ),
        }
    }
}

async fn verify_in_snapshot(r: &mut crate::store::ReadConn, mut v: ChainVerifier) -> Result<VerifyReport> {
    let resumed_at = v.checked;
    let (head_seq, head_hash) = audit::head(&mut r.conn()).await?;

    let mut after = v.position().0;
    loop {
        let page = audit::events_after(&mut r.conn(), after, 2000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if let Err(b) = v.check(e) {
                return Ok(VerifyReport {
                    checked: v.checked,
                    head_seq,
                    broken: Some(b),
                    verified_to: None,
                    read_now: v.checked - resumed_at,
                });
            }
        }
    }
    let broken = v.finish(head_seq, &head_hash).err();
    let (seq, hash) = v.position();
    Ok(VerifyReport {
        checked: v.checked,
        head_seq,
        broken,
        verified_to: Some((seq, hash.to_owned(), v.checked)),
        read_now: v.checked - resumed_at,
    })
}

/// A unified diff of two policy texts, for the audit log and the admin page.
pub fn policy_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header("previous", "loaded")
        .to_string()
}

async fn record_policy_in(tx: &mut Tx<'_>, p: Arc<Policy>, actor: String) -> Result<bool> {
    let last = policy_q::latest(&mut tx.conn).await?;
    if last.as_ref().is_some_and(|l| l.hash == p.hash) {
        return Ok(false);
    }
    let diff = policy_diff(last.as_ref().map_or("", |l| l.source.as_str()), &p.source);
    let row = policy_q::PolicyVersionRow {
        id: new_id("pol"),
        hash: p.hash.clone(),
        source: p.source.clone(),
        diff: diff.clone(),
        loaded_at: tx.now_ms(),
        loaded_by: actor.clone(),
    };
    policy_q::insert(&mut tx.conn, &row).await?;
    let previous_hash = last.map(|l| l.hash);
    tx.audit(
        AuditDraft::new(actor.clone(), "policy.loaded")
            .subject(row.id.clone())
            .details(serde_json::json!({
                "hash": p.hash,
                "previous_hash": previous_hash,
                "diff": diff,
            })),
    );
    if previous_hash.is_some() {
        // A change, not the first load: people who watch the gate hear of it.
        let data = serde_json::json!({ "hash": p.hash, "previous_hash": previous_hash, "by": actor });
        super::notify::emit(tx, "policy.changed", data).await?;
        // Args it newly marks as personal data are masked and erased on
        // proposals made before it, too.
        super::privacy::mark_newly_personal(tx, &p, &actor).await?;
    }
    Ok(true)
}

impl Core {
    /// Record the loaded policy when it differs from the last one recorded: its
    /// hash and its diff, in the audit log.
    pub async fn record_policy_load(&self, actor: &str) -> Result<bool> {
        let (policy, actor) = (self.policy(), actor.to_owned());
        self.store
            .write(move |tx| Box::pin(record_policy_in(tx, policy, actor)))
            .await
    }

    /// The loaded policy's versions, newest first.
    pub async fn policy_versions(&self, limit: i64) -> Result<Vec<policy_q::PolicyVersionRow>> {
        policy_q::all(&mut self.store.reader().await?.conn(), limit).await
    }

    /// Swap in a new policy (already checked) and record it.
    pub async fn replace_policy(&self, policy: Policy, actor: &str) -> Result<bool> {
        let hash = policy.hash.clone();
        *self.policy.write().map_err(super::poisoned)? = Arc::new(policy);
        self.policy_hash.send_if_modified(|h| {
            let changed = *h != hash;
            *h = hash;
            changed
        });
        self.record_policy_load(actor).await
    }

    /// Recompute the whole chain, page by page, and compare its end to the head.
    pub async fn verify_audit_chain(&self) -> Result<VerifyReport> {
        self.verify_chain_from(ChainVerifier::default()).await
    }

    /// Verify the events added since the last verification that passed (the
    /// audit page's check: a view costs the new events, not the whole log),
    /// and remember where it ended. `countersign audit verify` always
    /// verifies everything.
    pub async fn verify_audit_chain_since_last(&self) -> Result<VerifyReport> {
        let from = self
            .verified_to
            .lock()
            .map_err(super::poisoned)?
            .as_ref()
            .map(|(seq, hash, n)| ChainVerifier::resume(*seq, hash, *n))
            .unwrap_or_default();
        let report = self.verify_chain_from(from).await?;
        let ok = report.ok();
        if ok {
            if let Some(pos) = report.verified_to.clone() {
                *self.verified_to.lock().map_err(super::poisoned)? = Some(pos);
            }
            self.audit_verified_at
                .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        self.audit_broken.store(!ok, std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Verify from `v`'s position to the head, in one snapshot of the
    /// database: events appended meanwhile (by this or another process) are
    /// neither read nor mistaken for a head that does not match the log.
    async fn verify_chain_from(&self, v: ChainVerifier) -> Result<VerifyReport> {
        let mut r = self.store.reader().await?;
        let begin = r.conn().dialect().begin_snapshot();
        r.conn().exec(begin).await?;
        let report = verify_in_snapshot(&mut r, v).await;
        // Whatever happened, end the snapshot before the connection goes back.
        let ended = r.conn().exec("ROLLBACK").await;
        let report = report?;
        ended?;
        Ok(report)
    }

    /// Stream events with `at_ms >= since` to `sink`, oldest first.
    pub async fn export_audit(&self, since_ms: i64, mut sink: impl FnMut(&AuditEvent) -> Result<()>) -> Result<u64> {
        let mut r = self.store.reader().await?;
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = audit::events_after(&mut r.conn(), after, 2000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page.iter().filter(|e| e.at_ms >= since_ms) {
                sink(e)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
