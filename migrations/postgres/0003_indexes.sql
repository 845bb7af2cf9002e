-- A route's recent outcomes (its circuit breaker) without scanning its jobs.
CREATE INDEX jobs_route_finished ON jobs (route, finished_at) WHERE finished_at IS NOT NULL;
