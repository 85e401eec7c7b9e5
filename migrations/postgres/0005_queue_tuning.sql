-- The job queue churns (every job is inserted, updated and deleted): keep its statistics and
-- its dead rows in check, so that claims stay cheap through bursts. (Postgres only.)
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 500
);
