-- Each answered turn of a call's conversation and where its time went, in milliseconds: from
-- the person's last word to the end-of-turn decision, and from that decision to the model's
-- first token, the voice's first audio and the first frame sent to the call.

CREATE TABLE call_turns (
    call_id         BLOB NOT NULL REFERENCES calls (id),
    turn            INTEGER NOT NULL,
    at              TEXT NOT NULL,
    end_of_turn_ms  REAL NOT NULL,
    first_token_ms  REAL,
    first_audio_ms  REAL,
    first_frame_ms  REAL,
    PRIMARY KEY (call_id, turn)
);
