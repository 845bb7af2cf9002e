-- PostgreSQL only (autovacuum thresholds for proposals and jobs); SQLite's
-- planner keeps no such statistics between ANALYZE runs. Kept so both stores
-- have the same migration numbers.
SELECT 1;
