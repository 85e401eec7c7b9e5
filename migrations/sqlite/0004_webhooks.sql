-- Webhook deliveries: each user's signing secret (sealed, with the previous one kept for a while
-- after a rotation), and every delivery attempt.

ALTER TABLE users ADD COLUMN webhook_secret BLOB;
ALTER TABLE users ADD COLUMN webhook_secret_previous BLOB;
ALTER TABLE users ADD COLUMN webhook_secret_rotated_at TEXT;

CREATE TABLE webhook_attempts (
    id           BLOB PRIMARY KEY,
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
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, attempt);
CREATE INDEX webhook_attempts_user_created ON webhook_attempts (user_id, created_at);

-- The metrics count the calls not started or in progress.
CREATE INDEX calls_active ON calls (status) WHERE status IN ('not_started', 'in_progress');
