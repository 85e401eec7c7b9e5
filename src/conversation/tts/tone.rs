//! The voice that stands in, on the sandbox carrier's simulated calls only, when no real voice is
//! configured: a plainly synthetic tone as long as the text would take to say, so that playout,
//! marks, barge-in and the truncation of a message to what was heard all run as they would with a
//! real voice, and the simulated person can hear when the bot talks. Each word is a stretch of
//! the tone at full level, the gaps between words a softer one (never silence: the bot is talking
//! until its sentence is over).

use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt};

use super::{AudioStream, TtsError, Voice};
use crate::conversation::audio::Encoding;

/// The tone's pitch.
pub const TONE_HZ: f32 = 440.0;
/// How long each character of the text takes to "say".
pub const MS_PER_CHAR: u32 = 60;
const LEVEL: f32 = 8_000.0;
const BETWEEN_WORDS: f32 = 0.4;
/// The audio comes in chunks of this many milliseconds.
const CHUNK_MS: u32 = 100;

#[derive(Debug, Default, Clone, Copy)]
pub struct Tone;

impl Tone {
    /// The whole utterance of `text`, in `encoding`.
    pub fn audio(text: &str, encoding: Encoding) -> Vec<u8> {
        let rate = encoding.sample_rate() as usize;
        let per_char = rate * MS_PER_CHAR as usize / 1000;
        let text = text.trim();
        let chars: Vec<char> = if text.is_empty() { vec![' '] } else { text.chars().collect() };
        let fade = rate / 200; // 5 ms at each end, so it starts and stops without a click
        let total = chars.len() * per_char;
        let samples: Vec<i16> = (0..total)
            .map(|i| {
                let level = if chars[i / per_char].is_whitespace() { BETWEEN_WORDS } else { 1.0 };
                let edge = (i.min(total - 1 - i) as f32 / fade as f32).min(1.0);
                let phase = 2.0 * std::f32::consts::PI * TONE_HZ * i as f32 / rate as f32;
                (LEVEL * level * edge * phase.sin()) as i16
            })
            .collect();
        encoding.encode(&samples)
    }
}

impl Voice for Tone {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let audio = Tone::audio(text, encoding);
        let chunk = encoding.bytes_for_ms(CHUNK_MS);
        let chunks: Vec<Result<Vec<u8>, TtsError>> = audio.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
        Box::pin(async move { Ok(stream::iter(chunks).boxed()) })
    }

    fn name(&self) -> &str {
        "tone"
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;
    use crate::conversation::audio::rms;

    #[tokio::test]
    async fn the_tone_lasts_as_long_as_the_text_and_is_never_silent() {
        for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
            let chunks: Vec<Vec<u8>> =
                Tone.synthesize("Hi there.", encoding).await.unwrap().try_collect().await.unwrap();
            let audio = chunks.concat();
            assert_eq!(encoding.ms_of(audio.len()), 9 * u64::from(MS_PER_CHAR), "{encoding:?}");
            let samples = encoding.decode(&audio);
            let frame = encoding.sample_rate() as usize / 50;
            // Every 20 ms frame but the very edges is loud enough to be heard as talking.
            for window in samples[frame..samples.len() - frame].chunks(frame) {
                assert!(rms(window) > 1_000.0, "{encoding:?}: {}", rms(window));
            }
        }
    }
}
