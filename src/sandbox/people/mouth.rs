//! How a person speaks: their scenario's recorded phrases, or a script's sentences with the local
//! flite voice, sent as 20 ms frames paced by the world's clock with silence in between, over the
//! background noise of their line. What they say, and when its audio starts and ends, goes into
//! the call's side channel for the stand-in speech-to-text.

use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::phrases::Phrase;
use super::{Person, FRAME};
use crate::conversation::audio::{Encoding, Resampler};
use crate::conversation::recording::Side;
use crate::conversation::tts::flite::Flite;

/// How a person speaks: the background noise of their line, and what they say with the local
/// voice instead of their scenario's recorded phrases.
pub struct Mouth {
    pub noise: f32,
    pub script: Option<Vec<String>>,
    pub voice: Option<Flite>,
}

impl Person {
    /// Says `phrase`, and returns once its audio has gone out.
    pub async fn say(&self, phrase: Phrase) {
        self.say_samples(phrase.text, Encoding::Mulaw8k.decode(phrase.audio)).await;
    }

    /// Says `text` with the local voice.
    pub async fn say_text(&self, voice: &Flite, text: &str) {
        match voice.speak(text).await {
            Ok(pcm16k) => self.say_samples(text, Resampler::down().process(&pcm16k)).await,
            Err(e) => tracing::warn!(error = %e, "the sandbox person could not speak"),
        }
    }

    /// Says `text`, whose audio (8 kHz) is `samples`.
    async fn say_samples(&self, text: &str, samples: Vec<i16>) {
        let length = self.scaled(samples.len() as f64 / 8_000.0);
        let start = Instant::now();
        self.line.spoken.say(text, start, start + length);
        self.to_say.lock().unwrap_or_else(|e| e.into_inner()).extend(samples);
        sleep(length).await;
    }
}

/// The person's audio as it goes out, frame by frame.
///
/// It runs on the world's clock (`time_scale`): 20 ms of it every 20 ms × scale. Sped up, the
/// frames of each 20 ms of the server's time go out as one message of one frame, time-compressed
/// (every n-th sample): a fast world then sends exactly what a real carrier sends, in rate and
/// size, and many sped-up calls at once load the server no more than as many real ones. (The
/// stand-in speech-to-text takes its words from the side channel, not from the samples; the
/// recording keeps the person's speech whole.)
pub struct Speaking {
    background: Background,
    /// How many of the world's frames go into one message.
    compression: usize,
    /// How often a message goes out.
    pub every: Duration,
}

impl Speaking {
    pub fn new(time_scale: f64, noise: f32) -> Speaking {
        let frame_every = Duration::from_secs_f64(0.02 * time_scale);
        let every = frame_every.max(Duration::from_millis(20));
        let compression = (every.as_secs_f64() / frame_every.as_secs_f64()).round().max(1.0) as usize;
        Speaking { background: Background::new(noise), compression, every }
    }

    /// The next message's worth of what the person says (silence when they say nothing), over the
    /// line's noise; recorded whole, sent compressed.
    pub fn next_frame(&mut self, person: &Person) -> Vec<i16> {
        let per_message = FRAME * self.compression;
        let frame: Vec<i16> = {
            let mut to_say = person.to_say.lock().unwrap_or_else(|e| e.into_inner());
            let take = to_say.len().min(per_message);
            let mut frame: Vec<i16> = to_say.drain(..take).collect();
            frame.resize(per_message, 0);
            frame
        };
        let frame = self.background.mix(frame);
        person.line.record(Side::Person, &frame);
        frame.into_iter().step_by(self.compression).collect()
    }
}

/// Background noise on the person's line: white noise, low-passed a little (a street, a fan).
struct Background {
    level: f32,
    seed: u32,
    last: f32,
}

impl Background {
    fn new(rms: f32) -> Background {
        // Uniform noise in [-a, a] has an RMS of a/√3; the low-pass takes off about a third.
        Background { level: rms * 3f32.sqrt() * 1.4, seed: 0x2545_f491, last: 0.0 }
    }

    fn mix(&mut self, mut frame: Vec<i16>) -> Vec<i16> {
        if self.level <= 0.0 {
            return frame;
        }
        for sample in &mut frame {
            self.seed = self.seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let white = ((self.seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * self.level;
            self.last = 0.5 * self.last + 0.5 * white;
            *sample = (f32::from(*sample) + self.last).clamp(-32768.0, 32767.0) as i16;
        }
        frame
    }
}
