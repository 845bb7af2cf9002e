-- Blast-radius controls and notifications: route breakers, break-glass,
-- webhooks and their delivery outbox.

CREATE TABLE route_breakers (
    route      TEXT PRIMARY KEY,
    tripped_at INTEGER NOT NULL,
    reason     TEXT NOT NULL
);

CREATE TABLE break_glass (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    username   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    incident   TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ends_at    INTEGER NOT NULL,
    ended_at   INTEGER,
    ended_by   TEXT
);
CREATE INDEX break_glass_open ON break_glass (ended_at, ends_at);

CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,                      -- signs deliveries; shown once at creation
    events     TEXT NOT NULL,                      -- JSON array of event types, or ["*"]
    format     TEXT NOT NULL CHECK (format IN ('json', 'slack')),
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    disabled   BOOLEAN NOT NULL DEFAULT FALSE
);

-- Written in the same transaction as the event; delivered with retries, so a
-- restart or a receiver that is down loses nothing.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (delivered_at, next_attempt_at);
