//! Decisions by people: the approver rules, the count decided inside one
//! transaction, the decision bound to what the reviewer was shown.

use super::passkeys::{self, PasskeyProof, Signed};
use super::people::Person;
use super::receipts::Signer;
use super::release::{release_approved, Approved};
use super::{review_url, Core};
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::lifecycle::{after_approval, may_decide, Decider, DecisionFacts, Status, Verdict};
use crate::policy::Policy;
use crate::secrets::secret_kind;
use crate::store::queries::controls;
use crate::store::queries::proposals::{self, DecisionRow, ProposalRow};
use crate::store::{Notice, Outcome, Tx};
use std::sync::Arc;

pub const MAX_COMMENT_CHARS: usize = 2000;

#[derive(Debug, Clone)]
pub struct DecideRequest {
    pub proposal_id: String,
    pub verdict: Verdict,
    pub comment: String,
    /// The content hash of what the reviewer was shown.
    pub content_hash: String,
    /// How long the review page was open before the click.
    pub view_ms: Option<i64>,
    /// The decision signed with a passkey: required where the policy says
    /// `require_passkey`, and recorded as signed wherever it is given.
    pub passkey: Option<PasskeyProof>,
}

/// A decision, with what was checked before the transaction.
#[derive(Clone)]
struct Deciding {
    policy: Arc<Policy>,
    person: Person,
    req: DecideRequest,
    comment: String,
    break_glass_id: Option<String>,
    public_url: String,
    signer: Signer,
    webauthn: Option<Arc<webauthn_rs::Webauthn>>,
}

/// Why this person may not decide this proposal now, if they may not.
async fn refusal(
    tx: &mut Tx<'_>,
    d: &Deciding,
    p: &ProposalRow,
    decided: &[(String, Verdict)],
) -> Result<Option<String>> {
    let now = tx.now_ms();
    let facts = DecisionFacts {
        status: p.status,
        tenant: &p.tenant,
        on_behalf_of: p.on_behalf_of.as_deref(),
        approvals_required: p.approvals_required,
        decisions: decided,
    };
    let who = Decider {
        user_id: &d.person.id,
        username: &d.person.username,
        is_reviewer: d.person.roles.reviewer,
        tenants: &d.person.tenants,
        break_glass: d.break_glass_id.is_some(),
        is_admin: d.person.roles.admin,
        admins_may_review: d.policy.people.admins_may_review,
    };
    Ok(if p.status == Status::Pending && p.expires_at <= now {
        Some("This proposal has expired".to_owned())
    } else if let Err(r) = may_decide(&facts, &who) {
        Some(r.to_string())
    } else if d.req.content_hash != p.content_hash {
        Some("What you were shown is not what would run: reload the page".to_owned())
    } else if d.req.verdict == Verdict::Approve {
        controls::in_force(tx)
            .await?
            .refusing(&p.tenant, &p.route, &p.tool)
            .map(|s| format!("A kill switch is on ({s}): approvals wait until it is off"))
    } else {
        None
    })
}

/// The decision's passkey signature, checked: `Ok(None)` when none is given
/// and none is needed, `Err(why)` for a refusal.
async fn signature(
    tx: &mut Tx<'_>,
    d: &Deciding,
    p: &ProposalRow,
) -> Result<std::result::Result<Option<Signed>, String>> {
    let needed = d.policy.requires_passkey(&p.route, &p.tool);
    let Some(proof) = &d.req.passkey else {
        return Ok(if needed {
            Err("A decision on this tool must be signed with your passkey".to_owned())
        } else {
            Ok(None)
        });
    };
    let Some(webauthn) = &d.webauthn else {
        return Ok(Err(
            "Passkeys are off on this server (its public URL is not a domain name)".to_owned(),
        ));
    };
    Ok(
        passkeys::verify_decision(tx, webauthn, &d.person, p, d.req.verdict, proof)
            .await?
            .map(Some),
    )
}

async fn decide_in(tx: &mut Tx<'_>, d: Deciding) -> Result<Outcome<Status>> {
    let Some(mut p) = proposals::get_for_update(&mut tx.conn, &d.req.proposal_id).await? else {
        return Ok(Outcome::Refused(Error::NotFound));
    };
    let break_glass = d.break_glass_id.is_some();
    if !break_glass && !d.person.sees_tenant(&p.tenant) {
        return Ok(Outcome::Refused(Error::NotFound));
    }
    let existing = proposals::decisions_of(&mut tx.conn, &p.id).await?;
    let decided: Vec<(String, Verdict)> = existing.iter().map(|x| (x.user_id.clone(), x.verdict)).collect();
    let verdict = d.req.verdict;
    let action = format!("decision.{verdict}");
    let mut why = refusal(tx, &d, &p, &decided).await?;
    let mut signed: Option<Signed> = None;
    if why.is_none() {
        match signature(tx, &d, &p).await? {
            Ok(s) => signed = s,
            Err(w) => why = Some(w),
        }
    }
    if let Some(why) = why {
        tracing::warn!(user = %d.person.username, proposal = %p.id, why = %why, "decision refused");
        tx.audit(
            AuditDraft::new(d.person.actor(), action)
                .tenant(p.tenant.clone())
                .tool(p.tool.clone())
                .subject(p.id.clone())
                .scope("session")
                .status("refused")
                .details(serde_json::json!({ "why": why })),
        );
        return Ok(Outcome::Refused(Error::Forbidden(why)));
    }
    let now = tx.now_ms();
    let row = DecisionRow {
        id: new_id("dcn"),
        proposal_id: p.id.clone(),
        user_id: d.person.id.clone(),
        username: d.person.username.clone(),
        verdict,
        comment: d.comment.clone(),
        content_hash: p.content_hash.clone(),
        view_ms: d.req.view_ms,
        break_glass,
        decided_at: now,
        passkey_id: signed.as_ref().map(|s| s.passkey_id.clone()),
        passkey_assertion: signed.map(|s| s.evidence),
    };
    proposals::insert_decision(&mut tx.conn, &row).await?;
    let mut approvals: Vec<DecisionRow> = existing
        .iter()
        .filter(|x| x.verdict == Verdict::Approve)
        .cloned()
        .collect();
    let mut ev = AuditDraft::new(d.person.actor(), action)
        .tenant(p.tenant.clone())
        .tool(p.tool.clone())
        .subject(p.id.clone())
        .scope(if break_glass { "session:break-glass" } else { "session" })
        .details(serde_json::json!({
            "decision": row.id, "view_ms": d.req.view_ms, "break_glass": d.break_glass_id,
            "passkey": row.passkey_id,
        }));
    ev.args_hash = Some(p.args_hash.clone());
    ev.idempotency_key = p.idempotency_key.clone();
    ev.duration_ms = d.req.view_ms;
    match verdict {
        Verdict::Reject => {
            proposals::close(&mut tx.conn, &p.id, Status::Pending, Status::Rejected, now).await?;
            p.status = Status::Rejected;
            ev.approval_ids = approvals.iter().map(|a| a.id.clone()).collect();
            tx.audit(ev);
        }
        Verdict::Approve => {
            approvals.push(row.clone());
            p.approvals += 1;
            ev.approval_ids = approvals.iter().map(|a| a.id.clone()).collect();
            tx.audit(ev);
            if after_approval(p.approvals, p.approvals_required, break_glass) == Status::Approved {
                let why = if break_glass {
                    "break-glass approval"
                } else {
                    "approvals reached"
                };
                let approved = Approved {
                    why,
                    approvals: &approvals,
                    break_glass,
                };
                release_approved(tx, &d.policy, &d.signer, &mut p, approved).await?;
            } else {
                proposals::set_approvals(&mut tx.conn, &p.id, p.approvals).await?;
            }
        }
    }
    let data = serde_json::json!({
        "proposal": p.id, "tool": p.tool, "tenant": p.tenant, "env": p.env, "status": p.status,
        "by": d.person.username, "break_glass": break_glass,
        "review_url": review_url(&d.public_url, &p.id),
    });
    if break_glass {
        tracing::warn!(user = %d.person.username, proposal = %p.id, "break-glass decision");
        super::notify::emit(tx, "breakglass.used", data.clone()).await?;
    }
    if p.status != Status::Pending {
        super::notify::emit(tx, "proposal.decided", data).await?;
    }
    tx.notify(Notice::Proposal {
        id: p.id.clone(),
        tenant: p.tenant.clone(),
        status: p.status,
    });
    Ok(Outcome::Done(p.status))
}

impl Core {
    /// Approve or reject. Returns the proposal's status afterwards.
    pub async fn decide(&self, person: &Person, req: DecideRequest) -> Result<Status> {
        let comment = req.comment.trim().to_owned();
        if req.verdict == Verdict::Reject && comment.is_empty() {
            return Err(Error::BadRequest("a rejection needs a comment saying why".into()));
        }
        if comment.chars().count() > MAX_COMMENT_CHARS {
            return Err(Error::BadRequest(format!(
                "a comment has at most {MAX_COMMENT_CHARS} characters"
            )));
        }
        if secret_kind(&comment).is_some() {
            return Err(Error::BadRequest(
                "the comment looks like it contains a secret; leave it out".into(),
            ));
        }
        let mut req = req;
        req.view_ms = req.view_ms.filter(|v| *v >= 0);
        if let Some(proof) = &req.passkey {
            passkeys::bounded_credential(&proof.credential)?;
        }
        let d = Deciding {
            policy: self.policy(),
            break_glass_id: self.break_glass_of(person).await?,
            person: person.clone(),
            req,
            comment,
            public_url: self.settings.public_url.clone(),
            signer: self.receipt_signer()?,
            webauthn: self.webauthn().ok(),
        };
        self.store.write_or_refuse(move |tx| Box::pin(decide_in(tx, d))).await
    }
}
