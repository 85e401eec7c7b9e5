//! The server's own voice: CMU flite (Debian's `flite` program, installed by
//! `scripts/install-speech`), one subprocess per sentence writing a WAV file to its standard
//! output, read with [`super::wav`] and brought to the call's encoding by the engine's
//! resampler. It never runs on the async runtime's threads: the program runs beside the server
//! (about 0.05 s of CPU per second of speech) while the call's task waits for it.
//!
//! Voices: flite's built-in `awb` (the default, and what `voice_vocode`'s `joe` speaks with),
//! `rms`, `slt`, `kal16` (16 kHz) and `kal` (8 kHz).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt};
use tokio::process::Command;

use super::wav::samples_of;
use super::{AudioStream, TtsError, Voice};
use crate::conversation::audio::{Encoding, Resampler, Transcoder};

/// The voices the local voice speaks with.
pub const VOICES: [&str; 5] = ["awb", "rms", "slt", "kal16", "kal"];
/// The default voice.
pub const DEFAULT_VOICE: &str = "awb";
const PROVIDER: &str = "flite";
/// The longest a sentence may take to synthesise.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The longest text given to one run (a sentence is far shorter).
const LONGEST_TEXT: usize = 4_000;
/// The audio comes in chunks of this many milliseconds.
const CHUNK_MS: u32 = 100;

/// The flite voice a `voice_vocode` voice id speaks with: a flite voice by its own name, and
/// Vocode's voices (`joe` and any other) with the default.
pub fn voice_for(voice_id: Option<&str>) -> &'static str {
    match voice_id {
        Some(id) => VOICES.iter().copied().find(|v| v.eq_ignore_ascii_case(id)).unwrap_or(DEFAULT_VOICE),
        None => DEFAULT_VOICE,
    }
}

#[derive(Debug, Clone)]
pub struct Flite {
    program: PathBuf,
    voice: &'static str,
}

impl Flite {
    /// `voice` must be one of [`VOICES`].
    pub fn new(program: &Path, voice: &str) -> Result<Flite, TtsError> {
        let voice = VOICES.iter().copied().find(|v| *v == voice).ok_or_else(|| TtsError::Settings {
            provider: PROVIDER,
            message: format!("flite has no voice {voice:?}; it has {}", VOICES.join(", ")),
        })?;
        Ok(Flite { program: program.to_owned(), voice })
    }

    pub fn voice(&self) -> &str {
        self.voice
    }

    fn rate(&self) -> u32 {
        if self.voice == "kal" {
            8_000
        } else {
            16_000
        }
    }

    /// The whole utterance of `text`, as 16 kHz samples.
    pub async fn speak(&self, text: &str) -> Result<Vec<i16>, TtsError> {
        let text: String = text.chars().filter(|c| !c.is_control()).take(LONGEST_TEXT).collect();
        let failed = |message: String| TtsError::Audio { provider: PROVIDER, message };
        let child = Command::new(&self.program)
            .args(["-voice", self.voice, "-o", "/dev/stdout", "-t"])
            .arg(&text)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TtsError::Settings {
                provider: PROVIDER,
                message: format!("{} cannot be run: {e}", self.program.display()),
            })?;
        let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| failed(format!("no speech after {TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(failed(format!("flite exited with {}: {}", output.status, stderr.trim())));
        }
        let samples = samples_of(&output.stdout, self.rate()).map_err(|e| e.of(PROVIDER))?;
        Ok(if self.rate() == 8_000 { Resampler::up().process(&samples) } else { samples })
    }
}

impl Voice for Flite {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let text = text.to_owned();
        Box::pin(async move {
            let samples = self.speak(&text).await?;
            let audio = Transcoder::from_pcm16k(encoding).encode(&samples);
            let chunk = encoding.bytes_for_ms(CHUNK_MS);
            let chunks: Vec<Result<Vec<u8>, TtsError>> = audio.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
            Ok(stream::iter(chunks).boxed())
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocodes_voices_map_to_flite_voices() {
        assert_eq!(voice_for(Some("joe")), "awb");
        assert_eq!(voice_for(None), "awb");
        assert_eq!(voice_for(Some("SLT")), "slt");
        assert!(Flite::new(Path::new("flite"), "nobody").unwrap_err().to_string().contains("awb, rms"));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let flite = Flite::new(Path::new("/nonexistent/flite"), "awb").unwrap();
        let err = flite.synthesize("Hello.", Encoding::Mulaw8k).await.err().unwrap().to_string();
        assert!(err.contains("/nonexistent/flite cannot be run"), "{err}");
    }
}
