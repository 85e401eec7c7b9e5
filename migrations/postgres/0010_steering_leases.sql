-- The steering numbers leased to warm transfers (see `src/telephony/conference.rs`): one row per
-- number in use, so that a number is leased to one call at a time whatever the number of
-- replicas. A lease is taken by inserting its row (the primary key refuses a second), and given
-- back by deleting it when the bot leaves the conference; `expires_at` frees a number whose
-- holder died without giving it back. `bot_leg` is the carrier's id of the steering number's
-- inbound call (the bot's conference leg), written by whichever replica answers its webhook, so
-- that any replica recognises the leg's stream.

CREATE TABLE steering_leases (
    number      TEXT PRIMARY KEY,
    call_id     UUID NOT NULL UNIQUE,
    bot_leg     TEXT,
    leased_at   TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
