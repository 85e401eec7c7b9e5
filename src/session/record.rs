//! Recordings this server makes itself (`RECORD_ON_SERVER`), from a call's media stream: what
//! the carrier sends (the person) and what is sent to the call (the bot), brought to 8 kHz and
//! mixed by arrival time, then written as `{call_id}.wav` in the recordings folder when the stream
//! ends, and recorded on the call — which makes `recording_available` true and sends
//! `event_recording`, as a carrier's recording does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::calls::News;
use crate::conversation::audio::Resampler;
use crate::conversation::recording::{Recording, Side};
use crate::store::calls::CallRow;
use crate::telephony::media::AudioFormat;
use crate::AppState;

/// The `recording_url` of a call this server recorded: the file is `{call_id}.wav` in the
/// recordings folder (the URL names no path, so a stored value can never point elsewhere).
pub const ON_SERVER: &str = "server:recording";

/// The longest recording kept (8 kHz, 16-bit: 57.6 MB).
const LIMIT: Duration = Duration::from_secs(3600);

/// A call's recording in the making.
pub struct Recorder {
    format: AudioFormat,
    recording: Recording,
    /// 16 kHz to 8 kHz, one per side (each keeps its own filter state).
    person: Resampler,
    bot: Resampler,
}

impl Recorder {
    /// A recorder for the call, when this server records it: recordings on, the call to be
    /// recorded (`RECORD_CALLS`), and not HIPAA-compliant.
    pub fn for_call(state: &AppState, row: &CallRow, format: AudioFormat) -> Option<Recorder> {
        state.telephony.recordings.as_ref()?;
        (row.record && !row.hipaa_compliant).then(|| Recorder {
            format,
            recording: Recording::new(LIMIT),
            person: Resampler::down(),
            bot: Resampler::down(),
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

    /// Writes the recording (off the async runtime) and records it on the call.
    pub async fn finish(self, state: AppState, call_id: Uuid) {
        let Some(dir) = state.telephony.recordings.clone() else { return };
        if self.recording.is_empty() {
            return;
        }
        let recording = self.recording;
        let written = tokio::task::spawn_blocking(move || write(&dir, call_id, &recording.wav())).await;
        match written {
            Ok(Ok(path)) => tracing::info!(%call_id, path = %path.display(), "recording written"),
            Ok(Err(e)) => return tracing::warn!(%call_id, error = %e, "the recording could not be written"),
            Err(e) => return tracing::warn!(%call_id, error = %e, "the recording could not be written"),
        }
        match state.calls.apply(call_id, &News::recording(ON_SERVER.to_owned())).await {
            Ok(Some(applied)) => state.run_soon(applied.claimed),
            Ok(None) => {}
            Err(e) => tracing::warn!(%call_id, error = %e, "the recording could not be recorded on the call"),
        }
    }
}

/// Where a call's recording made here is kept.
pub fn path(dir: &Path, call_id: Uuid) -> PathBuf {
    dir.join(format!("{call_id}.wav"))
}

/// Writes the file whole, or not at all: a reader never sees half of it.
fn write(dir: &Path, call_id: Uuid, wav: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = path(dir, call_id);
    let partial = dir.join(format!("{call_id}.wav.partial"));
    std::fs::write(&partial, wav)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_is_written_whole_under_the_calls_id() {
        let dir = std::env::temp_dir().join(format!("vocode-recordings-{}", Uuid::new_v4()));
        let call_id = Uuid::new_v4();
        let written = write(&dir, call_id, b"RIFF....").unwrap();
        assert_eq!(written, dir.join(format!("{call_id}.wav")));
        assert_eq!(std::fs::read(&written).unwrap(), b"RIFF....");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no partial file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
