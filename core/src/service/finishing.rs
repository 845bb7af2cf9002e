//! Successful completions, many to a statement.
//!
//! Executors report most jobs as succeeded, one request per job. Run one by
//! one, each is two statements in the writer, and on SQLite the writer's
//! statements are what bound how many jobs a second can finish. So the
//! successes waiting at one moment are gathered and finished together: one
//! read of their jobs, one update of the jobs, one of their proposals, and an
//! audit event each, in one write. Anything that is not a live lease of the
//! caller's (a repeat, a stale lease, a job it does not serve, a key revoked
//! since the caller was admitted) is handed back untaken, to the one-by-one
//! path that answers those cases.

use super::ExecutorPrincipal;
use crate::audit::AuditDraft;
use crate::error::{Error, Result};
use crate::lifecycle::{JobState, Status};
use crate::store::queries::{jobs, keys, proposals};
use crate::store::{Notice, Store, Tx};
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

/// How a completion left the job and its proposal, as the executor is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub job_id: String,
    pub state: JobState,
    pub proposal_status: Status,
    pub attempt: i64,
    pub next_attempt_at_ms: Option<i64>,
}

/// The most successes one write takes (3 bound values each).
const MAX_GATHERED: usize = 256;

/// A success an executor reported, with the request that reported it.
#[derive(Debug, Clone)]
pub(super) struct Success {
    pub exec: ExecutorPrincipal,
    pub job_id: String,
    pub lease_id: String,
    pub retryable: bool,
    /// The canonical result and the canonical body, as stored.
    pub result: String,
    pub body: String,
    pub request_id: Option<String>,
}

type Answer = oneshot::Sender<Result<Option<Completion>>>;

/// Hands successes to the task that gathers them.
pub(super) struct Finisher {
    queue: mpsc::Sender<(Success, Answer)>,
}

impl Finisher {
    /// Start the gathering task; it ends when the finisher is dropped.
    pub fn start(store: Store) -> Finisher {
        let (queue, rx) = mpsc::channel(4 * MAX_GATHERED);
        tokio::spawn(gather(store, rx));
        Finisher { queue }
    }

    /// Finish `s` if its lease is live and its job the executor's: the
    /// completion, once committed; `None` if it was not taken (or its group
    /// failed), for the caller to answer one by one.
    pub async fn finish(&self, s: Success) -> Result<Option<Completion>> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((s, answer))
            .await
            .map_err(|_| Error::internal("the completion task has stopped"))?;
        answered
            .await
            .map_err(|_| Error::internal("the completion task dropped a request"))?
    }
}

/// Take what waits, finish it in one write, answer each; repeat. While a write
/// is in flight the next group gathers, so groups grow with the load.
async fn gather(store: Store, mut rx: mpsc::Receiver<(Success, Answer)>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GATHERED {
            match rx.try_recv() {
                Ok(item) => group.push(item),
                Err(_) => break,
            }
        }
        let (successes, answers): (Vec<Success>, Vec<Answer>) = group.into_iter().unzip();
        metrics::histogram!("countersign_completions_per_write").record(successes.len() as f64);
        let outcome = store.write(move |tx| Box::pin(finish_many(tx, successes))).await;
        match outcome {
            Ok(done) => {
                for (answer, d) in answers.into_iter().zip(done) {
                    let _ = answer.send(Ok(d));
                }
            }
            Err(e) => {
                // The write left no trace (its savepoint rolled back); each
                // success goes the one-by-one way, which answers for itself,
                // so one bad report cannot fail the others gathered with it.
                tracing::warn!(error = %e, n = answers.len(), "finishing a group failed; finishing one by one");
                for answer in answers {
                    let _ = answer.send(Ok(None));
                }
            }
        }
    }
}

/// Finish the successes whose leases are live, in order; `None` for the rest.
async fn finish_many(tx: &mut Tx<'_>, successes: Vec<Success>) -> Result<Vec<Option<Completion>>> {
    let ids: Vec<String> = successes.iter().map(|s| s.job_id.clone()).collect();
    let found: HashMap<String, jobs::Finishable> = jobs::finishable(&mut tx.conn, &ids)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    // Only for executors whose keys are live now; the others go the
    // one-by-one way, which refuses them.
    let mut key_ids: Vec<String> = successes
        .iter()
        .filter(|s| !s.exec.is_upstream_executor())
        .map(|s| s.exec.key_id.clone())
        .collect();
    key_ids.sort_unstable();
    key_ids.dedup();
    let live_keys = keys::live_among(&mut tx.conn, &key_ids).await?;
    // A job reported twice in one group is taken once; the repeat goes the
    // one-by-one way, which answers it as the repeat it is.
    let now = tx.now_ms();
    let mut seen = HashSet::new();
    let taken: Vec<Option<&jobs::Finishable>> = successes
        .iter()
        .map(|s| {
            found.get(&s.job_id).filter(|j| {
                j.state == JobState::Leased
                    && j.lease_id.as_deref() == Some(s.lease_id.as_str())
                    && j.lease_expires_at.is_some_and(|t| t > now)
                    && j.env == s.exec.env
                    && s.exec.tools.contains(&j.tool)
                    && (s.exec.is_upstream_executor() || live_keys.contains(&s.exec.key_id))
                    && seen.insert(j.id.clone())
            })
        })
        .collect();
    let rows: Vec<jobs::Success<'_>> = successes
        .iter()
        .zip(&taken)
        .filter(|(_, j)| j.is_some())
        .map(|(s, _)| jobs::Success {
            id: &s.job_id,
            result: &s.result,
            completion: &s.body,
        })
        .collect();
    if rows.is_empty() {
        return Ok(vec![None; successes.len()]);
    }
    let now = tx.now_ms();
    let updated = jobs::succeed_many(&mut tx.conn, &rows, now).await?;
    let proposal_ids: Vec<String> = taken.iter().flatten().map(|j| j.proposal_id.clone()).collect();
    let moved = proposals::transition_many(&mut tx.conn, &proposal_ids, Status::Running, Status::Succeeded).await?;
    if updated != rows.len() as u64 || moved != rows.len() as u64 {
        return Err(Error::internal(format!(
            "finishing {} jobs changed {updated} jobs and {moved} proposals",
            rows.len()
        )));
    }
    let mut out = Vec::with_capacity(successes.len());
    for (s, j) in successes.iter().zip(taken) {
        let Some(j) = j else {
            out.push(None);
            continue;
        };
        let outer = tx.set_request_id(s.request_id.clone());
        let mut ev = AuditDraft::new(s.exec.actor(), "job.completed")
            .tenant(j.tenant.clone())
            .tool(j.tool.clone())
            .subject(j.proposal_id.clone())
            .scope(s.exec.scope())
            .status("succeeded")
            .details(
                serde_json::json!({ "job": j.id, "lease": s.lease_id, "attempt": j.attempt, "retryable": s.retryable }),
            );
        ev.duration_ms = j.leased_at.map(|t| now - t);
        ev.args_hash = Some(j.args_hash.clone());
        ev.idempotency_key = j.idempotency_key.clone();
        tx.audit(ev);
        tx.set_request_id(outer);
        tx.notify(Notice::Proposal {
            id: j.proposal_id.clone(),
            tenant: j.tenant.clone(),
            status: Status::Succeeded,
        });
        out.push(Some(Completion {
            job_id: j.id.clone(),
            state: JobState::Succeeded,
            proposal_status: Status::Succeeded,
            attempt: j.attempt,
            next_attempt_at_ms: None,
        }));
    }
    Ok(out)
}
