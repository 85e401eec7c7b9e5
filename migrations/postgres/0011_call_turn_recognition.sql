-- Each turn's stages are dated from the end of the caller's speech (the voice-activity
-- detector's offset, or the recogniser's last word's end): this adds the stage at which the
-- recogniser's final words came in. NULL for turns kept before it was measured.

ALTER TABLE call_turns ADD COLUMN recognition_ms DOUBLE PRECISION;
