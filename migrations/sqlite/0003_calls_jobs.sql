-- Calls, the idempotency keys of calls/create, and the durable job queue that carries out
-- everything touching the outside world (carrier requests, webhook deliveries…).

CREATE TABLE calls (
    id                              BLOB PRIMARY KEY,
    user_id                         BLOB NOT NULL REFERENCES users (id),
    direction                       TEXT NOT NULL,          -- outbound | inbound
    status                          TEXT NOT NULL,
    stage                           TEXT NOT NULL,
    stage_outcome                   TEXT,
    error_message                   TEXT,
    human_detection_result          TEXT,
    do_not_call_result              INTEGER,
    transcript                      TEXT,
    telephony_provider              TEXT NOT NULL,
    telephony_id                    TEXT,
    carrier_status                  TEXT,                   -- the carrier's last word, as it said it
    hangup                          TEXT,                   -- why we hung up, when we did
    to_number                       TEXT NOT NULL,
    from_number                     TEXT NOT NULL,
    agent_phone_number              TEXT NOT NULL,
    agent_id                        BLOB NOT NULL REFERENCES agents (id),
    telephony_account_connection_id BLOB REFERENCES account_connections (id),
    hipaa_compliant                 INTEGER NOT NULL,
    on_no_human_answer              TEXT,
    run_do_not_call_detection       INTEGER,
    context                         TEXT,
    telephony_params                TEXT,
    record                          INTEGER NOT NULL,
    recording_url                   TEXT,                   -- where the carrier keeps the recording
    start_time                      TEXT,
    answered_at                     TEXT,
    end_time                        TEXT,
    duration_seconds                INTEGER,
    last_carrier_event_at           TEXT,
    -- a counter bumped by every change, for compare-and-set updates
    version                         INTEGER NOT NULL,
    created_at                      TEXT NOT NULL,
    updated_at                      TEXT NOT NULL
);
CREATE INDEX calls_user_created ON calls (user_id, created_at, id);
CREATE INDEX calls_user_updated ON calls (user_id, updated_at, id);
CREATE INDEX calls_user_start ON calls (user_id, start_time, id);
CREATE INDEX calls_user_end ON calls (user_id, end_time, id);
CREATE UNIQUE INDEX calls_telephony_id ON calls (telephony_provider, telephony_id);
CREATE INDEX calls_in_progress ON calls (last_carrier_event_at) WHERE status = 'in_progress';

CREATE TABLE idempotency_keys (
    user_id      BLOB NOT NULL REFERENCES users (id),
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    call_id      BLOB NOT NULL REFERENCES calls (id),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE TABLE jobs (
    id            BLOB PRIMARY KEY,
    kind          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    -- jobs with the same key run one at a time, oldest first (a call's webhooks, in order)
    ordering_key  TEXT,
    state         TEXT NOT NULL,          -- ready | failed
    run_at        TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    locked_until  TEXT,
    locked_by     TEXT,
    last_error    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE state = 'ready';
CREATE INDEX jobs_ordering ON jobs (ordering_key, created_at, id) WHERE state = 'ready';
