-- Measured at 1M proposals (benches/explain):
--
-- The queue reads pending rows in (created_at, id) order; with id in the
-- index both stores stream the first 200 in order instead of sorting every
-- pending row of the tenant (PostgreSQL took 24 ms with 40k pending).
DROP INDEX proposals_pending;
CREATE INDEX proposals_pending ON proposals (tenant, created_at, id) WHERE status = 'pending';

-- The history page's filters, found by index rather than by walking a
-- tenant's whole history backwards: a filter that matched little (a rare
-- status, a tool or person with few rows) read every row of the tenant
-- (0.3-3.5 s on SQLite, 0.7 s on PostgreSQL); with these, each is under a
-- millisecond. Tool and requester never change after insert.
--
-- Status changes on the hot path (queued, running, succeeded), so only the
-- statuses a proposal ends in when something went wrong are indexed: an
-- index over every status would be rewritten at each claim and completion,
-- inside the single writer that bounds their throughput. A filter
-- on a common status (succeeded) finds its page at once by walking the
-- tenant's history; pending has the queue's index; in-flight statuses
-- (approved, queued, running) are few and walk the history.
CREATE INDEX proposals_by_tool ON proposals (tenant, tool, created_at);
CREATE INDEX proposals_gone_wrong ON proposals (tenant, status, created_at)
    WHERE status IN ('failed', 'rejected', 'expired', 'cancelled');
CREATE INDEX proposals_by_requester ON proposals (on_behalf_of, created_at) WHERE on_behalf_of IS NOT NULL;
