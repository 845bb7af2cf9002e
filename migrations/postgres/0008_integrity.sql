-- Approval integrity: previews computed by executors, signed receipts,
-- execution keys, idempotency per tenant + env, revocation that cancels work,
-- and a trail of who was made a reviewer when.

-- Jobs of two kinds (a preview, then the execution) per proposal; each job
-- carries its execution key and, once released, its signed receipt. A
-- revoked run's unclaimed jobs end `cancelled`.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'execute' CHECK (kind IN ('execute', 'preview'));
ALTER TABLE jobs ADD COLUMN execution_key TEXT;
UPDATE jobs SET execution_key = 'exk_' || id;
ALTER TABLE jobs ALTER COLUMN execution_key SET NOT NULL;
ALTER TABLE jobs ADD COLUMN receipt TEXT;
ALTER TABLE jobs DROP CONSTRAINT jobs_proposal_id_key;
ALTER TABLE jobs ADD CONSTRAINT jobs_proposal_id_kind_key UNIQUE (proposal_id, kind);
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('held', 'queued', 'leased', 'succeeded', 'failed', 'expired', 'cancelled'));
CREATE UNIQUE INDEX jobs_execution_key ON jobs (execution_key);

-- What the executor said would change, who computed it and when, and the
-- precondition it re-checks before acting.
ALTER TABLE proposals ADD COLUMN preview_state TEXT;
ALTER TABLE proposals ADD COLUMN preview_by TEXT;
ALTER TABLE proposals ADD COLUMN preview_at BIGINT;

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
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT,
    serve_until BIGINT
);

-- The last change to who may review: shown beside that person's approvals
-- for a day, so a co-approver sees a reviewer made minutes ago.
ALTER TABLE users ADD COLUMN review_changed_at BIGINT;
ALTER TABLE users ADD COLUMN review_changed_by TEXT;
ALTER TABLE users ADD COLUMN review_change TEXT;
