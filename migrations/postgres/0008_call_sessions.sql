-- A call's conversation, durable: who runs it now (`owner`, a replica's id; NULL once it has
-- ended), the fencing number of that ownership (`generation`, raised at every takeover: a write
-- from an older owner changes nothing), and what the conversation is so far (`state`, JSON:
-- history as the model sees it, turn counter, words not yet answered, clocks, actions in flight),
-- written at every turn boundary in the transaction that records the turn's message.
-- `transcript_sent` makes `event_transcript` go out once, whoever sees the end last (the
-- conversation's end or the call's).

CREATE TABLE call_sessions (
    call_id          UUID PRIMARY KEY REFERENCES calls (id),
    owner            TEXT,
    generation       BIGINT NOT NULL,
    state            JSONB NOT NULL,
    ended            BOOLEAN NOT NULL DEFAULT FALSE,
    transcript_sent  BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX call_sessions_owner ON call_sessions (owner) WHERE owner IS NOT NULL;
