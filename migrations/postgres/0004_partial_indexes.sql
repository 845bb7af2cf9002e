-- Index only the rows each hot query looks for, so the updates that move a
-- proposal or job along its lifecycle touch fewer indexes.
DROP INDEX proposals_by_status;
CREATE INDEX proposals_pending ON proposals (tenant, created_at) WHERE status = 'pending';

DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (env, available_at, id) WHERE state = 'queued';

DROP INDEX jobs_leases;
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'leased';
CREATE INDEX jobs_due ON jobs (execute_by) WHERE state IN ('queued', 'held');
