//! Decisions by people: the approver rules, the count decided inside one
//! transaction, the decision bound to what the reviewer was shown.

use super::people::Person;
use super::proposals::release_approved;
use super::Core;
use crate::core::audit::AuditDraft;
use crate::core::error::{Error, Result};
use crate::core::ids::new_id;
use crate::core::lifecycle::{after_approval, may_decide, Decider, DecisionFacts, Status, Verdict};
use crate::core::secrets::secret_kind;
use crate::core::store::queries::proposals::{self, DecisionRow};
use crate::core::store::Notice;

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
}

impl Core {
    /// Approve or reject. Returns the proposal's status afterwards.
    pub async fn decide(&self, person: &Person, req: DecideRequest) -> Result<String> {
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
        let policy = self.policy();
        let person = person.clone();
        let break_glass_id = self.break_glass_of(&person).await?;
        let view_ms = req.view_ms.filter(|v| *v >= 0);
        let base = self.settings.public_url.clone();
        self.store
            .write(move |tx| {
                Box::pin(async move {
                    let Some(mut p) = proposals::get_for_update(&mut tx.conn, &req.proposal_id).await? else {
                        return Ok(Err(Error::NotFound));
                    };
                    let break_glass = break_glass_id.is_some();
                    if !break_glass && !person.sees_tenant(&p.tenant) {
                        return Ok(Err(Error::NotFound));
                    }
                    let status = Status::parse(&p.status).ok_or_else(|| Error::internal("unknown status"))?;
                    let existing = proposals::decisions_of(&mut tx.conn, &p.id).await?;
                    let decided: Vec<(String, Verdict)> = existing
                        .iter()
                        .filter_map(|d| Some((d.user_id.clone(), Verdict::parse(&d.verdict)?)))
                        .collect();
                    let now = tx.now_ms();
                    let facts = DecisionFacts {
                        status,
                        tenant: &p.tenant,
                        on_behalf_of: p.on_behalf_of.as_deref(),
                        approvals_required: p.approvals_required,
                        decisions: &decided,
                    };
                    let who = Decider {
                        user_id: &person.id,
                        username: &person.username,
                        is_reviewer: person.roles.reviewer,
                        tenants: &person.tenants,
                        break_glass,
                    };
                    let refusal = if status == Status::Pending && p.expires_at <= now {
                        Some("This proposal has expired".to_owned())
                    } else if let Err(r) = may_decide(&facts, &who) {
                        Some(r.to_string())
                    } else if req.content_hash != p.content_hash {
                        Some("What you were shown is not what would run: reload the page".to_owned())
                    } else if req.verdict == Verdict::Approve {
                        super::controls::switch_in(&mut tx.conn, &p.tenant, &p.route, &p.tool)
                            .await?
                            .map(|s| format!("A kill switch is on ({s}): approvals wait until it is off"))
                    } else {
                        None
                    };
                    if let Some(why) = refusal {
                        tracing::warn!(user = %person.username, proposal = %p.id, why = %why, "decision refused");
                        tx.audit(
                            AuditDraft::new(person.actor(), format!("decision.{}", req.verdict.as_str()))
                                .tenant(p.tenant.clone())
                                .tool(p.tool.clone())
                                .subject(p.id.clone())
                                .scope("session")
                                .status("refused")
                                .details(serde_json::json!({ "why": why })),
                        )
                        .await?;
                        return Ok(Err(Error::Forbidden(why)));
                    }
                    let d = DecisionRow {
                        id: new_id("dcn"),
                        proposal_id: p.id.clone(),
                        user_id: person.id.clone(),
                        username: person.username.clone(),
                        verdict: req.verdict.as_str().into(),
                        comment,
                        content_hash: p.content_hash.clone(),
                        view_ms,
                        break_glass,
                        decided_at: now,
                    };
                    proposals::insert_decision(&mut tx.conn, &d).await?;
                    let mut approval_ids: Vec<String> = existing
                        .iter()
                        .filter(|x| x.verdict == "approve")
                        .map(|x| x.id.clone())
                        .collect();
                    let mut ev = AuditDraft::new(person.actor(), format!("decision.{}", req.verdict.as_str()))
                        .tenant(p.tenant.clone())
                        .tool(p.tool.clone())
                        .subject(p.id.clone())
                        .scope(if break_glass { "session:break-glass" } else { "session" })
                        .details(serde_json::json!({
                            "decision": d.id, "view_ms": view_ms, "break_glass": break_glass_id,
                        }));
                    ev.args_hash = Some(p.args_hash.clone());
                    ev.idempotency_key = p.idempotency_key.clone();
                    ev.duration_ms = view_ms;
                    match req.verdict {
                        Verdict::Reject => {
                            proposals::transition(&mut tx.conn, &p.id, "pending", "rejected", now).await?;
                            p.status = Status::Rejected.as_str().into();
                            ev.approval_ids = approval_ids;
                            tx.audit(ev).await?;
                        }
                        Verdict::Approve => {
                            approval_ids.push(d.id.clone());
                            p.approvals += 1;
                            ev.approval_ids = approval_ids.clone();
                            tx.audit(ev).await?;
                            if after_approval(p.approvals, p.approvals_required, break_glass) == Status::Approved {
                                let why = if break_glass {
                                    "break-glass approval"
                                } else {
                                    "approvals reached"
                                };
                                release_approved(tx, &policy, &mut p, why, approval_ids).await?;
                            } else {
                                proposals::set_approvals(&mut tx.conn, &p.id, p.approvals).await?;
                            }
                        }
                    }
                    let data = serde_json::json!({
                        "proposal": p.id, "tool": p.tool, "tenant": p.tenant, "env": p.env, "status": p.status,
                        "by": person.username, "break_glass": break_glass,
                        "review_url": format!("{}/proposals/{}", base.trim_end_matches('/'), p.id),
                    });
                    if break_glass {
                        tracing::warn!(user = %person.username, proposal = %p.id, "break-glass decision");
                        super::notify::emit(tx, "breakglass.used", data.clone()).await?;
                    }
                    if p.status != Status::Pending.as_str() {
                        super::notify::emit(tx, "proposal.decided", data).await?;
                    }
                    tx.notify(Notice::Proposal {
                        id: p.id.clone(),
                        tenant: p.tenant.clone(),
                        status: p.status.clone(),
                    });
                    Ok(Ok(p.status))
                })
            })
            .await?
    }
}
