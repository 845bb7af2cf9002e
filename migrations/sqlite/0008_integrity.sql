-- Approval integrity: previews computed by executors, signed receipts,
-- execution keys, idempotency per tenant + env, revocation that cancels work,
-- and a trail of who was made a reviewer when.

-- Jobs of two kinds (a preview, then the execution) per proposal; each job
-- carries its execution key and, once released, its signed receipt. A
-- revoked run's unclaimed jobs end `cancelled`. SQLite cannot change a
-- table's constraints in place, so the table is rebuilt (nothing refers to it).
CREATE TABLE jobs_new (
    id               TEXT PRIMARY KEY,
    proposal_id      TEXT NOT NULL REFERENCES proposals(id),
    kind             TEXT NOT NULL DEFAULT 'execute' CHECK (kind IN ('execute', 'preview')),
    tenant           TEXT NOT NULL,
    env              TEXT NOT NULL,
    route            TEXT NOT NULL,
    tool             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('held', 'queued', 'leased', 'succeeded', 'failed', 'expired', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_id         TEXT,
    lease_expires_at INTEGER,
    leased_at        INTEGER,
    available_at     INTEGER NOT NULL,
    execute_by       INTEGER NOT NULL,
    result           TEXT,
    completion       TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    execution_key    TEXT NOT NULL,
    receipt          TEXT,
    UNIQUE (proposal_id, kind)
);
INSERT INTO jobs_new (id, proposal_id, kind, tenant, env, route, tool, state, attempt, max_attempts, lease_id,
                      lease_expires_at, leased_at, available_at, execute_by, result, completion, created_at,
                      finished_at, execution_key, receipt)
SELECT id, proposal_id, 'execute', tenant, env, route, tool, state, attempt, max_attempts, lease_id,
       lease_expires_at, leased_at, available_at, execute_by, result, completion, created_at,
       finished_at, 'exk_' || id, NULL
FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE UNIQUE INDEX jobs_execution_key ON jobs (execution_key);
CREATE INDEX jobs_claimable ON jobs (env, available_at, id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'leased';
CREATE INDEX jobs_due ON jobs (execute_by) WHERE state IN ('queued', 'held');
CREATE INDEX jobs_route_finished ON jobs (route, finished_at) WHERE finished_at IS NOT NULL;

-- What the executor said would change, who computed it and when, and the
-- precondition it re-checks before acting.
ALTER TABLE proposals ADD COLUMN preview_state TEXT;
ALTER TABLE proposals ADD COLUMN preview_by TEXT;
ALTER TABLE proposals ADD COLUMN preview_at INTEGER;

-- Idempotency keys are unique per tenant + env (`tenant/env`), not per run.
-- Earlier rows that reused a key in another run of the same tenant and env
-- keep their run as their scope, so every existing row stays valid.
ALTER TABLE proposals ADD COLUMN idempotency_scope TEXT;
UPDATE proposals SET idempotency_scope = 'run:' || run_id WHERE idempotency_key IS NOT NULL;
UPDATE proposals SET idempotency_scope = tenant || '/' || env
WHERE idempotency_key IS NOT NULL
  AND id IN (SELECT MIN(id) FROM proposals WHERE idempotency_key IS NOT NULL GROUP BY tenant, env, idempotency_key);
CREATE UNIQUE INDEX proposals_idempotency ON proposals (idempotency_scope, idempotency_key);
CREATE INDEX proposals_open_by_run ON proposals (run_id) WHERE status IN ('previewing', 'pending');

-- A run that replayed another run's proposal may read it.
CREATE TABLE proposal_replays (
    proposal_id TEXT NOT NULL REFERENCES proposals(id),
    run_id      TEXT NOT NULL REFERENCES runs(id),
    PRIMARY KEY (proposal_id, run_id)
);

-- Runs by the key that minted them (revoking a key ends them).
CREATE INDEX runs_by_service_key ON runs (service_key_id) WHERE revoked_at IS NULL;

-- Receipt signing keys (Ed25519). The private key never leaves the server;
-- a retired key is still published until the receipts it signed expire.
CREATE TABLE receipt_keys (
    id          TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,   -- hex PKCS#8
    public_key  TEXT NOT NULL,   -- base64url, 32 bytes
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER,
    serve_until INTEGER
);

-- The last change to who may review: shown beside that person's approvals
-- for a day, so a co-approver sees a reviewer made minutes ago.
ALTER TABLE users ADD COLUMN review_changed_at INTEGER;
ALTER TABLE users ADD COLUMN review_changed_by TEXT;
ALTER TABLE users ADD COLUMN review_change TEXT;
