-- countersign core schema (PostgreSQL). Times are epoch milliseconds from the
-- application clock; ids are prefixed ULIDs; JSON is stored as TEXT so both
-- stores share their queries.

CREATE TABLE users (
    id                   TEXT PRIMARY KEY,
    username             TEXT NOT NULL UNIQUE,
    password_hash        TEXT NOT NULL,
    roles                TEXT NOT NULL,
    disabled             BOOLEAN NOT NULL DEFAULT FALSE,
    sessions_valid_after BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL
);

CREATE TABLE user_tenants (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    tenant  TEXT NOT NULL,
    PRIMARY KEY (user_id, tenant)
);
CREATE INDEX user_tenants_by_tenant ON user_tenants (tenant, user_id);

CREATE TABLE login_throttle (
    key              TEXT PRIMARY KEY,
    failures         BIGINT NOT NULL,
    first_failure_at BIGINT NOT NULL,
    blocked_until    BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('service', 'executor')),
    name       TEXT NOT NULL,
    tenant     TEXT,
    env        TEXT NOT NULL,
    tools      TEXT NOT NULL DEFAULT '[]',
    key_hash   TEXT NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE signing_keys (
    id         TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

CREATE TABLE runs (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    env            TEXT NOT NULL,
    route          TEXT NOT NULL,
    on_behalf_of   TEXT,
    service_key_id TEXT NOT NULL REFERENCES api_keys(id),
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    steps_used     BIGINT NOT NULL DEFAULT 0,
    usd_used       DOUBLE PRECISION NOT NULL DEFAULT 0,
    denials_in_row BIGINT NOT NULL DEFAULT 0,
    revoked_at     BIGINT,
    revoked_reason TEXT
);

CREATE TABLE proposals (
    id                 TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    env                TEXT NOT NULL,
    route              TEXT NOT NULL,
    run_id             TEXT NOT NULL REFERENCES runs(id),
    tool               TEXT NOT NULL,
    args               TEXT NOT NULL,
    args_hash          TEXT NOT NULL,
    content_hash       TEXT NOT NULL,
    idempotency_key    TEXT,
    reason             TEXT NOT NULL,
    preview_before     TEXT,
    preview_after      TEXT,
    diff               TEXT,
    on_behalf_of       TEXT,
    status             TEXT NOT NULL,
    approvals_required BIGINT NOT NULL,
    approvals          BIGINT NOT NULL DEFAULT 0,
    destructive        BOOLEAN NOT NULL,
    irreversible       BOOLEAN NOT NULL,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    decided_at         BIGINT,
    execute_by         BIGINT,
    UNIQUE (run_id, idempotency_key)
);
CREATE INDEX proposals_by_status ON proposals (status, tenant, created_at);
CREATE INDEX proposals_by_tenant ON proposals (tenant, created_at);
CREATE INDEX proposals_pending_expiry ON proposals (expires_at) WHERE status = 'pending';

CREATE TABLE decisions (
    id           TEXT PRIMARY KEY,
    proposal_id  TEXT NOT NULL REFERENCES proposals(id),
    user_id      TEXT NOT NULL REFERENCES users(id),
    username     TEXT NOT NULL,
    verdict      TEXT NOT NULL CHECK (verdict IN ('approve', 'reject')),
    comment      TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    view_ms      BIGINT,
    break_glass  BOOLEAN NOT NULL DEFAULT FALSE,
    decided_at   BIGINT NOT NULL,
    UNIQUE (proposal_id, user_id)
);
CREATE INDEX decisions_by_user ON decisions (username, decided_at);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    proposal_id      TEXT NOT NULL UNIQUE REFERENCES proposals(id),
    tenant           TEXT NOT NULL,
    env              TEXT NOT NULL,
    route            TEXT NOT NULL,
    tool             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('held', 'queued', 'leased', 'succeeded', 'failed', 'expired')),
    attempt          BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    lease_id         TEXT,
    lease_expires_at BIGINT,
    leased_at        BIGINT,
    available_at     BIGINT NOT NULL,
    execute_by       BIGINT NOT NULL,
    result           TEXT,
    completion       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT
);
CREATE INDEX jobs_claimable ON jobs (env, state, available_at);
CREATE INDEX jobs_leases ON jobs (state, lease_expires_at);

CREATE TABLE audit_events (
    seq              BIGINT PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    at_ms            BIGINT NOT NULL,
    request_id       TEXT,
    tenant           TEXT,
    actor            TEXT NOT NULL,
    action           TEXT NOT NULL,
    subject          TEXT,
    tool             TEXT,
    args_hash        TEXT,
    idempotency_key  TEXT,
    credential_scope TEXT,
    approval_ids     TEXT NOT NULL,
    result_status    TEXT NOT NULL,
    duration_ms      BIGINT,
    details          TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit_events (tenant, seq);
CREATE INDEX audit_by_subject ON audit_events (subject, seq);

CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE policy_versions (
    id        TEXT PRIMARY KEY,
    hash      TEXT NOT NULL,
    source    TEXT NOT NULL,
    diff      TEXT NOT NULL,
    loaded_at BIGINT NOT NULL,
    loaded_by TEXT NOT NULL
);
CREATE INDEX policy_versions_by_time ON policy_versions (loaded_at);

-- Kill switches: while engaged, new work they cover is refused and release held.
CREATE TABLE switches (
    scope      TEXT NOT NULL CHECK (scope IN ('global', 'tool', 'tenant', 'route')),
    target     TEXT NOT NULL,                      -- '' for the global switch
    engaged    BOOLEAN NOT NULL,
    reason     TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
);
