//! What a reviewer reads of a change, whoever described it (the agent in its
//! proposal, or the executor in a dry run): its size limit, its diff and the
//! hash that binds a decision to it. A leaf: proposals and jobs both use it.

use super::review_url;
use crate::audit::hash_parts;
use crate::error::Result;
use crate::store::queries::proposals::ProposalRow;
use crate::store::Tx;

pub const MAX_PREVIEW_BYTES: usize = 32 * 1024;

/// Previews up to this size (before and after together) are diffed where
/// they arrive: that takes microseconds, less than the hop to the diff thread.
pub(super) const INLINE_DIFF_BYTES: usize = 2 * 1024;

/// Whether this preview is small enough to diff in place.
pub(super) fn diffs_inline(before: &str, after: &str) -> bool {
    before.len() + after.len() <= INLINE_DIFF_BYTES
}

/// The diff, as stored. A larger preview is computed on the diff thread (one
/// at a time, off the async workers, so it does not stall other requests; a
/// full line is `RateLimited`).
pub(super) async fn diff_json(workers: &crate::limits::Workers, before: String, after: String) -> Result<String> {
    let lines = if diffs_inline(&before, &after) {
        crate::diff::compute(&before, &after)
    } else {
        workers.run(move || crate::diff::compute(&before, &after)).await?
    };
    Ok(serde_json::to_string(&lines)?)
}

/// What a reviewer approves, as one hash: the tool, the exact args, the
/// preview shown and the executor's precondition for it. A decision carries
/// it back; anything changed since is refused.
pub(super) fn content_hash(
    tool: &str,
    args: &str,
    before: Option<&str>,
    after: Option<&str>,
    state: Option<&str>,
) -> String {
    hash_parts(&[
        tool,
        args,
        before.unwrap_or("\u{0}"),
        after.unwrap_or("\u{0}"),
        state.unwrap_or("\u{0}"),
    ])
}

/// Tell the people who review the tenant that a proposal waits for them.
pub(super) async fn announce_pending(tx: &mut Tx<'_>, r: &ProposalRow, public_url: &str) -> Result<()> {
    super::notify::emit(
        tx,
        "proposal.pending",
        serde_json::json!({
            "proposal": r.id, "tool": r.tool, "tenant": r.tenant, "env": r.env, "route": r.route,
            "approvals_required": r.approvals_required, "destructive": r.destructive,
            "review_url": review_url(public_url, &r.id),
        }),
    )
    .await
}
