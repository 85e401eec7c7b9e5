-- Agents (documents whose references to prompts, voices, actions… are ids), phone numbers, and
-- the operator's monthly usage limit per user.

ALTER TABLE users ADD COLUMN monthly_usage_limit_minutes INTEGER;

CREATE TABLE agents (
    id          BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body        TEXT NOT NULL,
    sealed      BLOB
);
CREATE INDEX agents_user_created ON agents (user_id, created_at, id);
CREATE INDEX agents_user_updated ON agents (user_id, updated_at, id);

CREATE TABLE phone_numbers (
    id                              BLOB PRIMARY KEY,
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
-- A user has one row per number; an active number belongs to one user only.
CREATE UNIQUE INDEX phone_numbers_user_number ON phone_numbers (user_id, number);
CREATE UNIQUE INDEX phone_numbers_active_number ON phone_numbers (number) WHERE active = 1;
CREATE INDEX phone_numbers_user_created ON phone_numbers (user_id, created_at, id);
CREATE INDEX phone_numbers_user_updated ON phone_numbers (user_id, updated_at, id);
