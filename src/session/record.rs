//! The recording this server makes of a call's stream (`RECORD_ON_SERVER`): what the carrier
//! sends (the person) and what is sent to the call (the bot), brought to 8 kHz and mixed by
//! arrival time, then written when the stream ends as a segment of the call's recording
//! ([`crate::recordings`]: a call whose audio passed through several streams, on one process or
//! several, has a segment from each) and recorded on the call — which makes
//! `recording_available` true and sends `event_recording` once, at the first segment, as a
//! carrier's recording does.

use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::calls::News;
use crate::conversation::audio::Resampler;
use crate::conversation::recording::{Recording, Side};
use crate::recordings::{LIMIT, ON_SERVER};
use crate::store::calls::CallRow;
use crate::telephony::media::AudioFormat;
use crate::AppState;

/// A call's recording in the making.
pub struct Recorder {
    format: AudioFormat,
    recording: Recording,
    /// 16 kHz to 8 kHz, one per side (each keeps its own filter state).
    person: Resampler,
    bot: Resampler,
    /// The wall clock beside the monotonic one, when the recorder was made: the segment's start
    /// on the call's timeline, which other processes' segments share.
    made: (Instant, DateTime<Utc>),
}

impl Recorder {
    /// A recorder for the call, when this server records it: recordings on, the call to be
    /// recorded (`RECORD_CALLS`), and not HIPAA-compliant.
    pub fn for_call(state: &AppState, row: &CallRow, format: AudioFormat) -> Option<Recorder> {
        state.recordings.as_ref()?;
        (row.record && !row.hipaa_compliant).then(|| Recorder {
            format,
            recording: Recording::new(LIMIT),
            person: Resampler::down(),
            bot: Resampler::down(),
            made: (Instant::now(), Utc::now()),
        })
    }

    /// Audio from the call, in the stream's encoding.
    pub fn heard(&mut self, audio: &[u8]) {
        self.put(Side::Person, audio);
    }

    /// Audio sent to the call, in the stream's encoding.
    pub fn said(&mut self, audio: &[u8]) {
        self.put(Side::Bot, audio);
    }

    fn put(&mut self, side: Side, audio: &[u8]) {
        let samples = self.format.decode(audio);
        let samples = match self.format {
            AudioFormat::Mulaw8k => samples,
            AudioFormat::Linear16k => match side {
                Side::Person => self.person.process(&samples),
                Side::Bot => self.bot.process(&samples),
            },
        };
        self.recording.put(side, Instant::now(), &samples);
    }

    /// Writes the recording as a segment of the call's and records it on the call (which sends
    /// `event_recording` only if it is the call's first).
    pub async fn finish(self, state: AppState, call_id: Uuid) {
        let Some(recordings) = state.recordings.clone() else { return };
        let Some(started) = self.recording.started() else { return };
        let (made, made_at) = self.made;
        let started_at = made_at + started.saturating_duration_since(made);
        // Milliseconds place a segment to 8 samples, and both databases keep them alike.
        let started_at = started_at.trunc_subsecs(3);
        match recordings.put(call_id, started_at, self.recording).await {
            Ok(place) => tracing::info!(%call_id, %place, "recording written"),
            Err(e) => return tracing::warn!(%call_id, error = format!("{e:#}"), "the recording could not be written"),
        }
        match state.calls.apply(call_id, &News::recording(ON_SERVER.to_owned())).await {
            Ok(Some(applied)) => state.run_soon(applied.claimed),
            Ok(None) => {}
            Err(e) => tracing::warn!(%call_id, error = %e, "the recording could not be recorded on the call"),
        }
    }
}
