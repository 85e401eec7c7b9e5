-- A call's conversation, durable: who runs it now (`owner`, a replica's id; NULL once it has
-- ended), the fencing number of that ownership (`generation`, raised at every takeover: a write
-- from an older owner changes nothing), and what the conversation is so far (`state`, JSON:
-- history as the model sees it, turn counter, words not yet answered, clocks, actions in flight),
-- written at every turn boundary in the transaction that records the turn's message.
-- `transcript_sent` makes `event_transcript` go out once, whoever sees the end last (the
-- conversation's end or the call's).

CREATE TABLE call_sessions (
    call_id          BLOB PRIMARY KEY NOT NULL REFERENCES calls (id),
    owner            TEXT,
    generation       INTEGER NOT NULL,
    state            TEXT NOT NULL,
    ended            INTEGER NOT NULL DEFAULT 0,
    transcript_sent  INTEGER NOT NULL DEFAULT 0,
    updated_at       TEXT NOT NULL
);

CREATE INDEX call_sessions_owner ON call_sessions (owner) WHERE owner IS NOT NULL;
