-- Warm transfers (see `src/telephony/conference.rs`), one row per call, so that any replica
-- finds a transfer and its news: the steering number leased to it (`number`, unique: a number is
-- one call's at a time whatever the number of replicas; taken by inserting the row, given back by
-- setting it NULL when the bot leaves the conference; `expires_at` frees a number whose holder died
-- without giving it back), the steering number's inbound call (`bot_leg`, the bot's conference leg)
-- and the replica that bound its stream, the conference's call to the steering number
-- (`bot_participant`), the carrier's news of the conference and of the third party's leg, and the
-- action's outcome, written by whichever replica carried it out, for a conversation that moved to
-- the bot leg's replica meanwhile.

CREATE TABLE warm_transfers (
    call_id               BLOB PRIMARY KEY NOT NULL,
    number                TEXT UNIQUE,
    bot_leg               TEXT,
    bot_bound_by          TEXT,
    bot_participant       TEXT,
    conference_sid        TEXT,
    person_joined         INTEGER NOT NULL DEFAULT 0,
    person_on_hold        INTEGER NOT NULL DEFAULT 0,
    third_party           TEXT,
    third_party_news      TEXT,
    third_party_answered  INTEGER NOT NULL DEFAULT 0,
    bot_left              INTEGER NOT NULL DEFAULT 0,
    outcome               TEXT,
    leased_at             TEXT NOT NULL,
    expires_at            TEXT NOT NULL
);
