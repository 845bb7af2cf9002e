-- The same columns and indexes as PostgreSQL's 0013, so the queries that
-- find pending and gone-wrong proposals are written once. On PostgreSQL they
-- let status changes be heap-only (HOT) updates; SQLite already rewrites
-- only the index entries whose columns change. The columns are VIRTUAL
-- here: SQLite cannot add a STORED column to a table, and needs none.
ALTER TABLE proposals ADD COLUMN pending_tenant TEXT
    GENERATED ALWAYS AS (CASE WHEN status = 'pending' THEN tenant END) VIRTUAL;
ALTER TABLE proposals ADD COLUMN gone_wrong TEXT
    GENERATED ALWAYS AS (CASE WHEN status IN ('failed', 'rejected', 'expired', 'cancelled') THEN status END) VIRTUAL;

DROP INDEX proposals_pending;
DROP INDEX proposals_pending_expiry;
DROP INDEX proposals_gone_wrong;
CREATE INDEX proposals_pending ON proposals (pending_tenant, created_at, id) WHERE pending_tenant IS NOT NULL;
CREATE INDEX proposals_pending_expiry ON proposals (expires_at) WHERE pending_tenant IS NOT NULL;
CREATE INDEX proposals_gone_wrong ON proposals (tenant, gone_wrong, created_at) WHERE gone_wrong IS NOT NULL;
