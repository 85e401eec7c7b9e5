-- The segments of each call's recording made on this server (RECORD_ON_SERVER). Every stream that
-- carried the call's audio, on whichever process, writes one when it ends (a call that moved
-- between processes, or whose stream reconnected, has several); they are numbered here in the
-- order they are written, and `started_at` (the wall-clock time of the segment's first sample)
-- places each on the call's timeline when they are joined. Segment 1 is the object
-- `{call_id}.wav`, segment n `{call_id}.{n}.wav`.

CREATE TABLE recording_segments (
    call_id     UUID NOT NULL REFERENCES calls (id),
    segment     BIGINT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (call_id, segment)
);
