-- On SQLite a PRIMARY KEY column accepts NULL unless it also says NOT NULL (a legacy of SQLite's
-- own); on Postgres a primary key never does. Every table whose id was declared without NOT NULL
-- is rebuilt with it, by SQLite's documented procedure for changing a table's definition: a new
-- table, the rows copied, the old table dropped, the new one renamed, the indexes made again. The
-- store runs SQLite's migrations with foreign keys off, as that procedure requires, and checks
-- them all (PRAGMA foreign_key_check) before it commits.

-- users
CREATE TABLE users_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
, monthly_usage_limit_minutes INTEGER, webhook_secret BLOB, webhook_secret_previous BLOB, webhook_secret_rotated_at TEXT);
INSERT INTO users_rebuilt (id, name, created_at, monthly_usage_limit_minutes, webhook_secret, webhook_secret_previous, webhook_secret_rotated_at) SELECT id, name, created_at, monthly_usage_limit_minutes, webhook_secret, webhook_secret_previous, webhook_secret_rotated_at FROM users;
DROP TABLE users;
ALTER TABLE users_rebuilt RENAME TO users;

-- api_keys
CREATE TABLE api_keys_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    -- the first characters of the key, safe to show; the key itself is never stored
    display     TEXT NOT NULL,
    key_hash    BLOB NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
INSERT INTO api_keys_rebuilt (id, user_id, display, key_hash, created_at, revoked_at) SELECT id, user_id, display, key_hash, created_at, revoked_at FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_rebuilt RENAME TO api_keys;
CREATE INDEX api_keys_user ON api_keys (user_id);

-- prompt_templates
CREATE TABLE prompt_templates_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO prompt_templates_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM prompt_templates;
DROP TABLE prompt_templates;
ALTER TABLE prompt_templates_rebuilt RENAME TO prompt_templates;
CREATE INDEX prompt_templates_user_created ON prompt_templates (user_id, created_at, id);

-- prompts
CREATE TABLE prompts_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO prompts_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM prompts;
DROP TABLE prompts;
ALTER TABLE prompts_rebuilt RENAME TO prompts;
CREATE INDEX prompts_user_created ON prompts (user_id, created_at, id);
CREATE INDEX prompts_user_updated ON prompts (user_id, updated_at, id);

-- voices
CREATE TABLE voices_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO voices_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM voices;
DROP TABLE voices;
ALTER TABLE voices_rebuilt RENAME TO voices;
CREATE INDEX voices_user_created ON voices (user_id, created_at, id);
CREATE INDEX voices_user_updated ON voices (user_id, updated_at, id);

-- webhooks
CREATE TABLE webhooks_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO webhooks_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM webhooks;
DROP TABLE webhooks;
ALTER TABLE webhooks_rebuilt RENAME TO webhooks;
CREATE INDEX webhooks_user_created ON webhooks (user_id, created_at, id);
CREATE INDEX webhooks_user_updated ON webhooks (user_id, updated_at, id);

-- vector_databases
CREATE TABLE vector_databases_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO vector_databases_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM vector_databases;
DROP TABLE vector_databases;
ALTER TABLE vector_databases_rebuilt RENAME TO vector_databases;
CREATE INDEX vector_databases_user_created ON vector_databases (user_id, created_at, id);
CREATE INDEX vector_databases_user_updated ON vector_databases (user_id, updated_at, id);

-- account_connections
CREATE TABLE account_connections_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO account_connections_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM account_connections;
DROP TABLE account_connections;
ALTER TABLE account_connections_rebuilt RENAME TO account_connections;
CREATE INDEX account_connections_user_created ON account_connections (user_id, created_at, id);
CREATE INDEX account_connections_user_updated ON account_connections (user_id, updated_at, id);

-- actions
CREATE TABLE actions_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO actions_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM actions;
DROP TABLE actions;
ALTER TABLE actions_rebuilt RENAME TO actions;
CREATE INDEX actions_user_created ON actions (user_id, created_at, id);
CREATE INDEX actions_user_updated ON actions (user_id, updated_at, id);

-- agents
CREATE TABLE agents_rebuilt (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
INSERT INTO agents_rebuilt (id, user_id, kind, created_at, updated_at, body, sealed) SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM agents;
DROP TABLE agents;
ALTER TABLE agents_rebuilt RENAME TO agents;
CREATE INDEX agents_user_created ON agents (user_id, created_at, id);
CREATE INDEX agents_user_updated ON agents (user_id, updated_at, id);

-- phone_numbers
CREATE TABLE phone_numbers_rebuilt (
    id                              BLOB PRIMARY KEY NOT NULL,
    user_id                         BLOB NOT NULL REFERENCES users (id),
    -- digits only, country code first
    number                          TEXT NOT NULL,
    active                          INTEGER NOT NULL,
    label                           TEXT NOT NULL,
    outbound_only                   INTEGER NOT NULL,
    example_context                 TEXT,
    telephony_provider              TEXT NOT NULL,
    telephony_account_connection_id BLOB REFERENCES account_connections (id),
    inbound_agent_id                BLOB REFERENCES agents (id),
    -- bought through this server (released at the carrier on cancel), or linked
    bought                          INTEGER NOT NULL,
    -- the carrier's id of the number (Twilio's PN… sid), when known
    carrier_ref                     TEXT,
    created_at                      TEXT NOT NULL,
    updated_at                      TEXT NOT NULL
);
INSERT INTO phone_numbers_rebuilt (id, user_id, number, active, label, outbound_only, example_context, telephony_provider, telephony_account_connection_id, inbound_agent_id, bought, carrier_ref, created_at, updated_at) SELECT id, user_id, number, active, label, outbound_only, example_context, telephony_provider, telephony_account_connection_id, inbound_agent_id, bought, carrier_ref, created_at, updated_at FROM phone_numbers;
DROP TABLE phone_numbers;
ALTER TABLE phone_numbers_rebuilt RENAME TO phone_numbers;
CREATE UNIQUE INDEX phone_numbers_user_number ON phone_numbers (user_id, number);
CREATE UNIQUE INDEX phone_numbers_active_number ON phone_numbers (number) WHERE active = 1;
CREATE INDEX phone_numbers_user_created ON phone_numbers (user_id, created_at, id);
CREATE INDEX phone_numbers_user_updated ON phone_numbers (user_id, updated_at, id);

-- calls
CREATE TABLE calls_rebuilt (
    id                              BLOB PRIMARY KEY NOT NULL,
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
INSERT INTO calls_rebuilt (id, user_id, direction, status, stage, stage_outcome, error_message, human_detection_result, do_not_call_result, transcript, telephony_provider, telephony_id, carrier_status, hangup, to_number, from_number, agent_phone_number, agent_id, telephony_account_connection_id, hipaa_compliant, on_no_human_answer, run_do_not_call_detection, context, telephony_params, record, recording_url, start_time, answered_at, end_time, duration_seconds, last_carrier_event_at, version, created_at, updated_at) SELECT id, user_id, direction, status, stage, stage_outcome, error_message, human_detection_result, do_not_call_result, transcript, telephony_provider, telephony_id, carrier_status, hangup, to_number, from_number, agent_phone_number, agent_id, telephony_account_connection_id, hipaa_compliant, on_no_human_answer, run_do_not_call_detection, context, telephony_params, record, recording_url, start_time, answered_at, end_time, duration_seconds, last_carrier_event_at, version, created_at, updated_at FROM calls;
DROP TABLE calls;
ALTER TABLE calls_rebuilt RENAME TO calls;
CREATE INDEX calls_user_created ON calls (user_id, created_at, id);
CREATE INDEX calls_user_updated ON calls (user_id, updated_at, id);
CREATE INDEX calls_user_start ON calls (user_id, start_time, id);
CREATE INDEX calls_user_end ON calls (user_id, end_time, id);
CREATE UNIQUE INDEX calls_telephony_id ON calls (telephony_provider, telephony_id);
CREATE INDEX calls_in_progress ON calls (last_carrier_event_at) WHERE status = 'in_progress';
CREATE INDEX calls_active ON calls (status) WHERE status IN ('not_started', 'in_progress');

-- jobs
CREATE TABLE jobs_rebuilt (
    id            BLOB PRIMARY KEY NOT NULL,
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
INSERT INTO jobs_rebuilt (id, kind, payload, ordering_key, state, run_at, attempts, max_attempts, locked_until, locked_by, last_error, created_at, updated_at) SELECT id, kind, payload, ordering_key, state, run_at, attempts, max_attempts, locked_until, locked_by, last_error, created_at, updated_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_rebuilt RENAME TO jobs;
CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE state = 'ready';
CREATE INDEX jobs_ordering ON jobs (ordering_key, created_at, id) WHERE state = 'ready';

-- webhook_attempts
CREATE TABLE webhook_attempts_rebuilt (
    id           BLOB PRIMARY KEY NOT NULL,
    -- the event's id, sent as the webhook-id header: the same on every attempt
    event_id     TEXT NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id),
    call_id      BLOB,
    webhook_id   BLOB,
    event_type   TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    status_code  INTEGER,
    latency_ms   INTEGER NOT NULL,
    error        TEXT,
    -- delivered | retry | failed
    outcome      TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
INSERT INTO webhook_attempts_rebuilt (id, event_id, user_id, call_id, webhook_id, event_type, attempt, status_code, latency_ms, error, outcome, created_at) SELECT id, event_id, user_id, call_id, webhook_id, event_type, attempt, status_code, latency_ms, error, outcome, created_at FROM webhook_attempts;
DROP TABLE webhook_attempts;
ALTER TABLE webhook_attempts_rebuilt RENAME TO webhook_attempts;
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, attempt);
CREATE INDEX webhook_attempts_user_created ON webhook_attempts (user_id, created_at);
