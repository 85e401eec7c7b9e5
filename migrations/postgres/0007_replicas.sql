-- The server processes sharing this database, each with its heartbeat: a process whose heartbeat
-- is old is gone (crashed or stopped), and what it held (job claims, live calls) is taken over.
-- `draining` is set from SIGTERM on: the process takes no new work.

CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    started_at  TIMESTAMPTZ NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL,
    draining    BOOLEAN NOT NULL DEFAULT FALSE
);
