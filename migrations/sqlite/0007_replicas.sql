-- The server processes sharing this database, each with its heartbeat: a process whose heartbeat
-- is old is gone (crashed or stopped), and what it held (job claims, live calls) is taken over.
-- `draining` is set from SIGTERM on: the process takes no new work.

CREATE TABLE replicas (
    id          TEXT PRIMARY KEY NOT NULL,
    started_at  TEXT NOT NULL,
    seen_at     TEXT NOT NULL,
    draining    INTEGER NOT NULL DEFAULT 0
);
