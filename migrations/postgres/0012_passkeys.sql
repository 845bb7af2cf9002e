-- Passkeys (WebAuthn) of people: a decision on a tool or route with
-- `require_passkey = true` needs an assertion from one of them. `passkey`
-- is the credential as webauthn-rs keeps it (public key, counter): no secret.
CREATE TABLE passkeys (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id),
    name          TEXT NOT NULL,
    credential_id TEXT NOT NULL UNIQUE,
    passkey       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX passkeys_by_user ON passkeys (user_id);

-- A ceremony started and not yet finished: registering a passkey, or signing
-- one decision. A decision's ceremony is bound to the proposal, its content
-- hash and the verdict (its challenge is derived from them), and is used at
-- most once: finishing deletes it.
CREATE TABLE passkey_ceremonies (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    purpose      TEXT NOT NULL CHECK (purpose IN ('register', 'decide')),
    proposal_id  TEXT,
    verdict      TEXT,
    content_hash TEXT,
    state        TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX passkey_ceremonies_by_expiry ON passkey_ceremonies (expires_at);

-- The passkey a decision was signed with, and the evidence: the assertion as
-- the browser sent it (client data, authenticator data, signature), which
-- anyone holding the passkey's public key can verify again.
ALTER TABLE decisions ADD COLUMN passkey_id TEXT;
ALTER TABLE decisions ADD COLUMN passkey_assertion TEXT;
