-- proposals and jobs are small-row, high-churn tables: every proposal moves
-- through several statuses and every job through several states. With the
-- default thresholds (20% dead rows, 10% changed) a table of a million rows
-- waits for 100k changes before its statistics are refreshed, and the planner
-- keeps choosing plans for a queue that no longer exists (measured: the queue
-- query chose a sort of 37k rows, 27 ms, over an ordered index scan, 1.6 ms).
ALTER TABLE proposals SET (autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE jobs SET (autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_scale_factor = 0.02);
