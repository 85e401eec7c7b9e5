-- Users, their API keys, and the resources that agents are made of.
-- Every row belongs to a user; every query is scoped by user_id.

CREATE TABLE users (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    -- the first characters of the key, safe to show; the key itself is never stored
    display     TEXT NOT NULL,
    key_hash    BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- The resources below share one layout: the fields a list sorts or filters by are columns,
-- the validated document is `body`, and its secrets are sealed (AES-GCM) in `sealed`.

CREATE TABLE prompt_templates (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX prompt_templates_user_created ON prompt_templates (user_id, created_at, id);

CREATE TABLE prompts (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX prompts_user_created ON prompts (user_id, created_at, id);
CREATE INDEX prompts_user_updated ON prompts (user_id, updated_at, id);

CREATE TABLE voices (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX voices_user_created ON voices (user_id, created_at, id);
CREATE INDEX voices_user_updated ON voices (user_id, updated_at, id);

CREATE TABLE webhooks (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX webhooks_user_created ON webhooks (user_id, created_at, id);
CREATE INDEX webhooks_user_updated ON webhooks (user_id, updated_at, id);

CREATE TABLE vector_databases (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX vector_databases_user_created ON vector_databases (user_id, created_at, id);
CREATE INDEX vector_databases_user_updated ON vector_databases (user_id, updated_at, id);

CREATE TABLE account_connections (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX account_connections_user_created ON account_connections (user_id, created_at, id);
CREATE INDEX account_connections_user_updated ON account_connections (user_id, updated_at, id);

CREATE TABLE actions (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    body        JSONB NOT NULL,
    sealed      BYTEA
);
CREATE INDEX actions_user_created ON actions (user_id, created_at, id);
CREATE INDEX actions_user_updated ON actions (user_id, updated_at, id);
