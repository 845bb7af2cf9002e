-- A proposal's status changes at every step of its life (approved, queued,
-- running, succeeded), and each change was a full new row version on
-- PostgreSQL with an entry in every index of the table (about eight),
-- because `status` appeared in three index predicates: an update is HOT
-- (heap-only, no index entries) only if no indexed or predicate column
-- changes. Measured while draining the queue: the proposals' updates were
-- the largest part of each write transaction.
--
-- The indexes now key on generated columns that change only when a proposal
-- enters or leaves the states they find: `pending_tenant` (the tenant while
-- pending, else NULL) and `gone_wrong` (the status once it is failed,
-- rejected, expired or cancelled, else NULL). PostgreSQL compares an
-- indexed column's old and new values, not the SET list, so queued →
-- running → succeeded leaves both NULL, and those updates can be HOT.
--
-- HOT also needs room on the row's page: a fillfactor of 70 leaves 30% of
-- each page free when rows are inserted, for their next versions (pruned
-- pages are reused). Adding a stored column rewrites the table once, with
-- the new fillfactor.
ALTER TABLE proposals SET (fillfactor = 70);
ALTER TABLE proposals ADD COLUMN pending_tenant TEXT
    GENERATED ALWAYS AS (CASE WHEN status = 'pending' THEN tenant END) STORED;
ALTER TABLE proposals ADD COLUMN gone_wrong TEXT
    GENERATED ALWAYS AS (CASE WHEN status IN ('failed', 'rejected', 'expired', 'cancelled') THEN status END) STORED;

DROP INDEX proposals_pending;
DROP INDEX proposals_pending_expiry;
DROP INDEX proposals_gone_wrong;
CREATE INDEX proposals_pending ON proposals (pending_tenant, created_at, id) WHERE pending_tenant IS NOT NULL;
CREATE INDEX proposals_pending_expiry ON proposals (expires_at) WHERE pending_tenant IS NOT NULL;
CREATE INDEX proposals_gone_wrong ON proposals (tenant, gone_wrong, created_at) WHERE gone_wrong IS NOT NULL;
