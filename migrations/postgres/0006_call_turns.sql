-- Each answered turn of a call's conversation and where its time went, in milliseconds: from
-- the person's last word to the end-of-turn decision, and from that decision to the model's
-- first token, the voice's first audio and the first frame sent to the call.

CREATE TABLE call_turns (
    call_id         UUID NOT NULL REFERENCES calls (id),
    turn            BIGINT NOT NULL,
    at              TIMESTAMPTZ NOT NULL,
    end_of_turn_ms  DOUBLE PRECISION NOT NULL,
    first_token_ms  DOUBLE PRECISION,
    first_audio_ms  DOUBLE PRECISION,
    first_frame_ms  DOUBLE PRECISION,
    PRIMARY KEY (call_id, turn)
);
