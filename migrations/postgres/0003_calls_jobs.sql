-- Calls, the idempotency keys of calls/create, and the durable job queue that carries out
-- everything touching the outside world (carrier requests, webhook deliveries…).

CREATE TABLE calls (
    id                              UUID PRIMARY KEY,
    user_id                         UUID NOT NULL REFERENCES users (id),
    direction                       TEXT NOT NULL,          -- outbound | inbound
    status                          TEXT NOT NULL,
    stage                           TEXT NOT NULL,
    stage_outcome                   TEXT,
    error_message                   TEXT,
    human_detection_result          TEXT,
    do_not_call_result              BOOLEAN,
    transcript                      TEXT,
    telephony_provider              TEXT NOT NULL,
    telephony_id                    TEXT,
    carrier_status                  TEXT,                   -- the carrier's last word, as it said it
    hangup                          TEXT,                   -- why we hung up, when we did
    to_number                       TEXT NOT NULL,
    from_number                     TEXT NOT NULL,
    agent_phone_number              TEXT NOT NULL,
    agent_id                        UUID NOT NULL REFERENCES agents (id),
    telephony_account_connection_id UUID REFERENCES account_connections (id),
    hipaa_compliant                 BOOLEAN NOT NULL,
    on_no_human_answer              TEXT,
    run_do_not_call_detection       BOOLEAN,
    context                         JSONB,
    telephony_params                JSONB,
    record                          BOOLEAN NOT NULL,
    recording_url                   TEXT,                   -- where the carrier keeps the recording
    start_time                      TIMESTAMPTZ,
    answered_at                     TIMESTAMPTZ,
    end_time                        TIMESTAMPTZ,
    duration_seconds                BIGINT,
    last_carrier_event_at           TIMESTAMPTZ,
    -- a counter bumped by every change, for compare-and-set updates
    version                         BIGINT NOT NULL,
    created_at                      TIMESTAMPTZ NOT NULL,
    updated_at                      TIMESTAMPTZ NOT NULL
);
CREATE INDEX calls_user_created ON calls (user_id, created_at, id);
CREATE INDEX calls_user_updated ON calls (user_id, updated_at, id);
CREATE INDEX calls_user_start ON calls (user_id, start_time, id);
CREATE INDEX calls_user_end ON calls (user_id, end_time, id);
CREATE UNIQUE INDEX calls_telephony_id ON calls (telephony_provider, telephony_id);
CREATE INDEX calls_in_progress ON calls (last_carrier_event_at) WHERE status = 'in_progress';

CREATE TABLE idempotency_keys (
    user_id      UUID NOT NULL REFERENCES users (id),
    key          TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    call_id      UUID NOT NULL REFERENCES calls (id),
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE TABLE jobs (
    id            UUID PRIMARY KEY,
    kind          TEXT NOT NULL,
    payload       JSONB NOT NULL,
    -- jobs with the same key run one at a time, oldest first (a call's webhooks, in order)
    ordering_key  TEXT,
    state         TEXT NOT NULL,          -- ready | failed
    run_at        TIMESTAMPTZ NOT NULL,
    attempts      INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    locked_until  TIMESTAMPTZ,
    locked_by     TEXT,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE state = 'ready';
CREATE INDEX jobs_ordering ON jobs (ordering_key, created_at, id) WHERE state = 'ready';
