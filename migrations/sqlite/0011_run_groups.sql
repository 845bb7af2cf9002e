-- The review screen lists a run's proposals, decided ones too (parallel tool
-- calls of one agent are reviewed together), so the index of a run's open
-- proposals becomes one over all of them: revocation's lookup of the open
-- ones reads it as well.
DROP INDEX proposals_open_by_run;
CREATE INDEX proposals_by_run ON proposals (run_id, created_at, id);
