-- Agents (documents whose references to prompts, voices, actions… are ids), phone numbers, and
-- the operator's monthly usage limit per user.

ALTER TABLE users ADD COLUMN monthly_usage_limit_minutes BIGINT;

CREATE TABLE agents (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX agents_user_created ON agents (user_id, created_at, id);
CREATE INDEX agents_user_updated ON agents (user_id, updated_at, id);

CREATE TABLE phone_numbers (
    id                              UUID PRIMARY KEY,
    user_id                         UUID NOT NULL REFERENCES users (id),
    -- digits only, country code first
    number                          TEXT NOT NULL,
    active                          BOOLEAN NOT NULL,
    label                           TEXT NOT NULL,
    outbound_only                   BOOLEAN NOT NULL,
    example_context                 JSONB,
    telephony_provider              TEXT NOT NULL,
    telephony_account_connection_id UUID REFERENCES account_connections (id),
    inbound_agent_id                UUID REFERENCES agents (id),
    -- bought through this server (released at the carrier on cancel), or linked
    bought                          BOOLEAN NOT NULL,
    -- the carrier's id of the number (Twilio's PN… sid), when known
    carrier_ref                     TEXT,
    created_at                      TIMESTAMPTZ NOT NULL,
    updated_at                      TIMESTAMPTZ NOT NULL
);
-- A user has one row per number; an active number belongs to one user only.
CREATE UNIQUE INDEX phone_numbers_user_number ON phone_numbers (user_id, number);
CREATE UNIQUE INDEX phone_numbers_active_number ON phone_numbers (number) WHERE active;
CREATE INDEX phone_numbers_user_created ON phone_numbers (user_id, created_at, id);
CREATE INDEX phone_numbers_user_updated ON phone_numbers (user_id, updated_at, id);
