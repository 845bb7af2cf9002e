-- The MCP gateway: what a proposal will call, and the built-in upstream
-- executor's record of each call it makes.

-- The upstream MCP server and its tool a proposal will call (from the policy
-- at creation, so reviewers see what runs), and the door it came through
-- ('mcp' for the gateway; NULL for the JSON API).
ALTER TABLE proposals ADD COLUMN upstream TEXT;
ALTER TABLE proposals ADD COLUMN upstream_tool TEXT;
ALTER TABLE proposals ADD COLUMN via TEXT;

-- One row per execution key, written just before the upstream is called and
-- finished with its outcome: an intent without an outcome after a crash
-- means the call may have happened, so it is never made again.
-- outcome: 'succeeded' | 'failed' (the upstream answered) | 'not_sent' (the
-- connection was refused: safe to try again) | 'unknown' (no answer).
CREATE TABLE upstream_calls (
    execution_key TEXT PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    proposal_id   TEXT NOT NULL REFERENCES proposals(id),
    upstream      TEXT NOT NULL,
    tool          TEXT NOT NULL,
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    outcome       TEXT CHECK (outcome IN ('succeeded', 'failed', 'not_sent', 'unknown')),
    result        TEXT
);
CREATE INDEX upstream_calls_by_proposal ON upstream_calls (proposal_id);
