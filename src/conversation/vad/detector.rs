//! A call stream's voice activity, as the engine uses it: frames in the line's encoding in,
//! the probability that the caller is speaking and clean onset and offset events out, each with
//! its position in the stream's audio (from its first sample), so that barge-in and the end of
//! speech are timed from the caller's ear, not from when a recogniser said so.
//!
//! The neural detector ([`super::silero`]) hears the line at its own rate (Twilio's μ-law at
//! 8 kHz, Vonage's PCM at 16 kHz: no resampling). Speech starts once the probability has stayed
//! at or over the threshold for [`DetectorSettings::min_speech`], and stops once it has stayed
//! under the threshold less 0.15 for [`DetectorSettings::min_silence`] (Silero's own hysteresis;
//! Pipecat's 0.2 s start and stop). Noise — a cough, a click, a breath, a door — scores low on
//! the model, so it starts nothing.
//!
//! The model's probability stays up for a window or two after the voice has stopped (its windows
//! are 32 ms, and its state carries over): on the shipped turn set its silence began 35–130 ms
//! (p50 72 ms) after the sound did. So where a silence begins is dated by the line's loudness
//! ([`Loudness`]): at the end of the last 10 ms that was louder than the line's noise, at most
//! [`BACKDATE`] before the model's silence. The stop, the pause the end-of-turn model hears, and
//! every wait after them count from there, as the caller hears the silence.
//!
//! Without the model (not installed, or it failed to load or to run) the line's loudness decides
//! ([`EnergyVad`]), with the same events; since loudness cannot tell a noise from a voice, it
//! only takes speech that lasts longer than a noise burst ([`ENERGY_MIN_SPEECH`]).

use std::sync::Arc;
use std::time::Duration;

use super::silero::{Rate, Silero, STATE};
use super::{EnergyVad, FRAME};
use crate::conversation::audio::{Encoding, Transcoder};

/// How the detector decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorSettings {
    /// The probability at which a window is speech.
    pub threshold: f32,
    /// How long speech must last before it starts (the onset is dated to its beginning).
    pub min_speech: Duration,
    /// How long a silence must last before speech stops (the offset is dated to its beginning).
    pub min_silence: Duration,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            threshold: 0.5,
            min_speech: Duration::from_millis(200),
            // Six of Silero's 32 ms windows: Pipecat's 0.2 s stop, as its analyser rounds it to
            // whole windows. (200 ms would take a seventh window: 224 ms of every pause.)
            min_silence: Duration::from_millis(192),
        }
    }
}

/// How much lower than the threshold the probability must fall to count as silence.
const HYSTERESIS: f32 = 0.15;

/// The shortest speech the loudness fallback takes: longer than a noise burst (300 ms).
pub const ENERGY_MIN_SPEECH: Duration = Duration::from_millis(320);

/// The stream's clock: positions count 16 kHz samples, whatever the line's rate.
const CLOCK_HZ: u64 = 16_000;

/// How much earlier than the neural detector's first silent window the line's loudness may date
/// the end of speech: three windows. A stop then still needs the model to have heard at least
/// [`DetectorSettings::min_silence`] less this of silence (96 ms: three windows).
pub const BACKDATE: Duration = Duration::from_millis(96);
/// The loudness steps: 10 ms.
const STEP_MS: u64 = 10;
/// How far back the line's noise floor is looked for (the quietest step).
const FLOOR_MEMORY_MS: u64 = 2_000;
/// A step is sound when it is this many times louder than the noise floor (6 dB: a voice's soft
/// tail still counts; a steady line's noise, within a few dB of its quietest step, does not).
const OVER_FLOOR: f32 = 2.0;
/// ... and louder than this, in [-1, 1] RMS (-60 dBFS): a line of digital silence has no floor.
const QUIETEST_SOUND: f32 = 0.001;

/// What a frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeechEvent {
    /// The caller started speaking at `at` (known [`DetectorSettings::min_speech`] later).
    Started { at: Duration },
    /// The caller stopped speaking at `at` (known [`DetectorSettings::min_silence`] later).
    Stopped { at: Duration },
}

/// The process's voice-activity detection: the shared neural model, or the loudness fallback.
#[derive(Clone)]
pub enum VoiceActivity {
    Silero(Arc<Silero>),
    Energy,
}

impl VoiceActivity {
    /// Which detector a stream gets: `silero` or `energy`.
    pub fn name(&self) -> &'static str {
        match self {
            VoiceActivity::Silero(_) => "silero",
            VoiceActivity::Energy => "energy",
        }
    }

    /// A detector for one call stream in `encoding`.
    pub fn detector(&self, encoding: Encoding, settings: DetectorSettings) -> SpeechDetector {
        let (hearing, min_speech) = match self {
            VoiceActivity::Silero(model) => {
                let rate = match encoding {
                    Encoding::Mulaw8k => Rate::Narrow,
                    Encoding::Linear16k => Rate::Wide,
                };
                let hearing = Hearing::Silero {
                    model: model.clone(),
                    rate,
                    pending: Vec::with_capacity(rate.window() * 2),
                    context: vec![0.0; rate.context()],
                    state: Box::new([0.0; STATE]),
                    loudness: Loudness::new(rate.hz()),
                };
                (hearing, settings.min_speech)
            }
            VoiceActivity::Energy => (Hearing::energy(encoding), settings.min_speech.max(ENERGY_MIN_SPEECH)),
        };
        SpeechDetector { encoding, hearing, onsets: Onsets::new(settings, min_speech), probability: 0.0 }
    }
}

/// One call stream's detector. Feed it every frame the caller sends, in order.
pub struct SpeechDetector {
    encoding: Encoding,
    hearing: Hearing,
    onsets: Onsets,
    probability: f32,
}

enum Hearing {
    Silero {
        model: Arc<Silero>,
        rate: Rate,
        /// Samples in [-1, 1] not yet a whole window.
        pending: Vec<f32>,
        /// The end of the window before.
        context: Vec<f32>,
        state: Box<[f32; STATE]>,
        loudness: Loudness,
    },
    Energy {
        to_16k: Transcoder,
        vad: EnergyVad,
        pending: Vec<i16>,
    },
}

impl Hearing {
    fn energy(encoding: Encoding) -> Hearing {
        Hearing::Energy {
            to_16k: Transcoder::to_pcm16k(encoding),
            // Its own end rule is not used: only whether each frame is loud.
            vad: EnergyVad::new(Duration::from_secs(1)),
            pending: Vec::with_capacity(FRAME * 2),
        }
    }
}

impl SpeechDetector {
    /// Hears `bytes` of the line's audio (any length; usually a 20 ms frame) and says what
    /// changed. The neural detector waits for the shared model's worker when a 32 ms window is
    /// complete (0.1 ms alone, a few ms when it is running every call's windows at once): await
    /// it in the audio handler, not as a `select!` branch that another branch may cancel.
    pub async fn push(&mut self, bytes: &[u8]) -> Vec<SpeechEvent> {
        let mut events = Vec::new();
        match &mut self.hearing {
            Hearing::Silero { model, rate, pending, context, state, loudness } => {
                let fresh = pending.len();
                pending.extend(self.encoding.decode(bytes).iter().map(|s| f32::from(*s) / 32768.0));
                loudness.hear(&pending[fresh..]);
                let (window, lead) = (rate.window(), rate.context());
                let ticks = (window as u64 * CLOCK_HZ / u64::from(rate.hz())) as usize;
                while pending.len() >= window {
                    let mut input = Vec::with_capacity(lead + window);
                    input.extend_from_slice(context);
                    input.extend(pending.drain(..window));
                    context.copy_from_slice(&input[window..]);
                    let carried = std::mem::replace(state, Box::new([0.0; STATE]));
                    match model.infer(*rate, input, carried).await {
                        Ok((probability, next)) => {
                            *state = next;
                            self.probability = probability;
                            let window = self.onsets.heard;
                            events.extend(self.onsets.hear(probability, ticks));
                            if self.onsets.silence == Some(window) {
                                // A silence begins with this window: as the loudness dates it.
                                let earliest = window.saturating_sub(ticks_of(BACKDATE)).max(self.onsets.began);
                                self.onsets.silence = Some(loudness.end_of_sound(window, earliest));
                            }
                        }
                        Err(e) => {
                            // Logged once for this stream, which goes on by loudness.
                            tracing::warn!(error = %e, "the voice-activity model failed: this call's detector falls back to loudness");
                            metrics::counter!("vocode_vad_failures_total").increment(1);
                            self.hearing = Hearing::energy(self.encoding);
                            self.onsets.min_speech = self.onsets.min_speech.max(ticks_of(ENERGY_MIN_SPEECH));
                            return events;
                        }
                    }
                }
            }
            Hearing::Energy { to_16k, vad, pending } => {
                pending.extend(to_16k.decode(bytes));
                let frames = pending.len() / FRAME;
                for frame in pending.drain(..frames * FRAME).collect::<Vec<_>>().chunks_exact(FRAME) {
                    let probability = if vad.loud(frame) { 1.0 } else { 0.0 };
                    self.probability = probability;
                    events.extend(self.onsets.hear(probability, FRAME));
                }
            }
        }
        events
    }

    /// The last window's probability of speech (the fallback says 0 or 1).
    pub fn probability(&self) -> f32 {
        self.probability
    }

    /// Whether the caller is speaking, as of the last event.
    pub fn speaking(&self) -> bool {
        self.onsets.speaking
    }

    /// While the caller is not speaking, how long the neural detector's windows have sounded like
    /// speech in a row (speech not yet [`DetectorSettings::min_speech`] long: maybe starting);
    /// `None` from the loudness fallback, for which any noise sounds like that.
    pub fn voiced_for(&self) -> Option<Duration> {
        if matches!(self.hearing, Hearing::Energy { .. }) {
            return None;
        }
        let from = self.onsets.candidate.filter(|_| !self.onsets.speaking)?;
        Some(duration_of(self.onsets.heard.saturating_sub(from)))
    }

    /// While the caller is speaking, where the silence they are in now began (`None` when they
    /// are not silent, or not speaking): a pause that may become [`SpeechEvent::Stopped`] at that
    /// position once it has lasted [`DetectorSettings::min_silence`].
    pub fn pausing_since(&self) -> Option<Duration> {
        self.onsets.silence.filter(|_| self.onsets.speaking).map(duration_of)
    }

    /// How much of the stream's audio has been heard (the positions' clock).
    pub fn heard(&self) -> Duration {
        duration_of(self.onsets.heard)
    }

    /// Which detector hears this stream: `silero`, or `energy` (the fallback).
    pub fn model(&self) -> &'static str {
        match self.hearing {
            Hearing::Silero { .. } => "silero",
            Hearing::Energy { .. } => "energy",
        }
    }
}

/// The positions' clock ticks (16 kHz samples) in `duration`.
pub(crate) fn ticks_of(duration: Duration) -> u64 {
    (duration.as_micros() as u64 * CLOCK_HZ).div_ceil(1_000_000)
}

fn duration_of(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / CLOCK_HZ)
}

/// The line's loudness, 10 ms at a time, over the last [`FLOOR_MEMORY_MS`]: where a sound ended,
/// to the step, against the line's own noise floor (its quietest step).
struct Loudness {
    /// Samples a step, at the line's rate.
    step: usize,
    /// Ticks of the stream's clock a step.
    ticks: u64,
    /// The step being heard: its sum of squares and samples.
    sum: f64,
    count: usize,
    /// Ticks of the steps heard whole.
    heard: u64,
    /// The steps heard: where each ended, and its RMS.
    levels: std::collections::VecDeque<(u64, f32)>,
}

impl Loudness {
    fn new(hz: u32) -> Loudness {
        let step = (u64::from(hz) * STEP_MS / 1000) as usize;
        Loudness {
            step,
            ticks: CLOCK_HZ * STEP_MS / 1000,
            sum: 0.0,
            count: 0,
            heard: 0,
            levels: std::collections::VecDeque::with_capacity((FLOOR_MEMORY_MS / STEP_MS) as usize + 1),
        }
    }

    /// Hears samples in [-1, 1], in order.
    fn hear(&mut self, samples: &[f32]) {
        for &s in samples {
            self.sum += f64::from(s) * f64::from(s);
            self.count += 1;
            if self.count == self.step {
                self.heard += self.ticks;
                let rms = (self.sum / self.step as f64).sqrt() as f32;
                if self.levels.len() == (FLOOR_MEMORY_MS / STEP_MS) as usize {
                    self.levels.pop_front();
                }
                self.levels.push_back((self.heard, rms));
                (self.sum, self.count) = (0.0, 0);
            }
        }
    }

    /// Where the sound heard before `silence` (a position) ended: the end of the last step before
    /// it that was louder than the noise floor, no earlier than `earliest` and no later than
    /// `silence`; `silence` itself when no step was (a line as loud as the voice: the loudness
    /// cannot tell).
    fn end_of_sound(&self, silence: u64, earliest: u64) -> u64 {
        let floor = self.levels.iter().map(|(_, rms)| *rms).fold(f32::INFINITY, f32::min);
        let sound = (floor * OVER_FLOOR).max(QUIETEST_SOUND);
        self.levels
            .iter()
            .rev()
            .filter(|(end, _)| end - self.ticks < silence)
            .find(|(_, rms)| *rms > sound)
            .map_or(silence, |(end, _)| (*end).clamp(earliest, silence))
    }
}

/// Onsets and offsets out of a stream of probabilities: the hysteresis and the minimum lengths.
#[derive(Debug, Clone)]
struct Onsets {
    threshold: f32,
    min_speech: u64,
    min_silence: u64,
    /// Ticks heard.
    heard: u64,
    speaking: bool,
    /// Where the current (or last) speech began.
    began: u64,
    /// Not speaking: where the run of speech-like windows began.
    candidate: Option<u64>,
    /// Speaking: where the run of silent windows began.
    silence: Option<u64>,
}

impl Onsets {
    fn new(settings: DetectorSettings, min_speech: Duration) -> Onsets {
        Onsets {
            threshold: settings.threshold,
            min_speech: ticks_of(min_speech),
            min_silence: ticks_of(settings.min_silence),
            heard: 0,
            speaking: false,
            began: 0,
            candidate: None,
            silence: None,
        }
    }

    /// One window of `ticks` with this probability.
    fn hear(&mut self, probability: f32, ticks: usize) -> Option<SpeechEvent> {
        let start = self.heard;
        self.heard += ticks as u64;
        let silent = probability < self.threshold - HYSTERESIS;
        if !self.speaking {
            if probability >= self.threshold {
                let from = *self.candidate.get_or_insert(start);
                if self.heard - from >= self.min_speech {
                    self.speaking = true;
                    self.began = from;
                    self.candidate = None;
                    self.silence = None;
                    return Some(SpeechEvent::Started { at: duration_of(from) });
                }
            } else if silent {
                self.candidate = None;
            }
        } else if probability >= self.threshold {
            self.silence = None;
        } else if silent {
            let from = *self.silence.get_or_insert(start);
            if self.heard - from >= self.min_silence {
                self.speaking = false;
                self.silence = None;
                return Some(SpeechEvent::Stopped { at: duration_of(from) });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 32 ms windows at 16 kHz, with these probabilities: the events and the window they came on.
    fn events(probabilities: &[f32], settings: DetectorSettings) -> Vec<(usize, SpeechEvent)> {
        let mut onsets = Onsets::new(settings, settings.min_speech);
        probabilities.iter().enumerate().filter_map(|(i, p)| onsets.hear(*p, 512).map(|e| (i, e))).collect()
    }

    const MS_32: Duration = Duration::from_millis(32);

    #[test]
    fn speech_starts_after_its_minimum_length_dated_to_its_first_window() {
        let mut p = vec![0.0; 10];
        p.extend([0.9; 20]);
        p.extend([0.0; 10]);
        let got = events(&p, DetectorSettings::default());
        // 200 ms is 7 windows of 32 ms: known on the 7th (index 16), begun on the first (10).
        // The silence: 192 ms, 6 windows, from index 30.
        assert_eq!(
            got,
            [(16, SpeechEvent::Started { at: MS_32 * 10 }), (35, SpeechEvent::Stopped { at: MS_32 * 30 }),]
        );
    }

    #[test]
    fn a_short_burst_starts_nothing_and_a_short_pause_stops_nothing() {
        let settings = DetectorSettings::default();
        let burst = [[0.0; 5].as_slice(), &[0.95; 6], &[0.0; 10]].concat();
        assert_eq!(events(&burst, settings), [], "192 ms of speech-like audio is not speech");
        let pause = [[0.9; 10].as_slice(), &[0.1; 5], &[0.9; 10]].concat();
        assert_eq!(events(&pause, settings), [(6, SpeechEvent::Started { at: Duration::ZERO })], "no stop");
    }

    #[test]
    fn probabilities_between_the_thresholds_keep_what_is_going_on() {
        // 0.4 is neither speech (< 0.5) nor silence (>= 0.35): a run of speech goes on through it.
        let p = [[0.9; 3].as_slice(), &[0.4; 3], &[0.9; 1]].concat();
        assert_eq!(events(&p, DetectorSettings::default()), [(6, SpeechEvent::Started { at: Duration::ZERO })]);
        let p = [[0.9; 8].as_slice(), &[0.4; 20]].concat();
        assert_eq!(events(&p, DetectorSettings::default()).len(), 1, "started, never stopped");
    }

    #[test]
    fn the_end_of_a_sound_is_dated_by_its_loudness_over_the_lines_noise() {
        // 10 ms steps of a telephone line (8 kHz): its noise, a voice, the voice's soft tail (five
        // times the noise), the noise again; the voice ends at 1 s.
        let level = |rms: f32, ms: usize| vec![rms; 8 * ms];
        let at = |ms: u64| ms * 16;
        let mut loudness = Loudness::new(8_000);
        for (rms, ms) in [(0.002, 500), (0.1, 450), (0.01, 50), (0.002, 200)] {
            loudness.hear(&level(rms, ms));
        }
        assert_eq!(loudness.end_of_sound(at(1_064), at(968)), at(1_000), "the model's silence began 64 ms late");
        assert_eq!(loudness.end_of_sound(at(1_150), at(1_054)), at(1_054), "never before the earliest allowed");
        assert_eq!(loudness.end_of_sound(at(980), at(884)), at(980), "never after the model's silence");

        // The same voice on a line as loud as its tail: the tail is noise, the voice ended at 950 ms.
        let mut loudness = Loudness::new(16_000);
        for (rms, ms) in [(0.01, 500), (0.1, 450), (0.01, 250)] {
            loudness.hear(&vec![rms; 16 * ms]);
        }
        assert_eq!(loudness.end_of_sound(at(1_000), at(904)), at(950));

        // A line as loud as the voice: the loudness cannot tell, the model's silence stands.
        let mut loudness = Loudness::new(8_000);
        loudness.hear(&level(0.1, 1_200));
        assert_eq!(loudness.end_of_sound(at(1_064), at(968)), at(1_064));
        // Only the last 2 s set the floor.
        let mut loudness = Loudness::new(8_000);
        for (rms, ms) in [(0.0001, 500), (0.05, 2_000), (0.1, 500)] {
            loudness.hear(&level(rms, ms));
        }
        assert_eq!(loudness.end_of_sound(at(3_064), at(2_968)), at(3_064), "the old quiet is forgotten");
    }

    #[tokio::test]
    async fn the_loudness_fallback_gives_the_same_events_and_ignores_a_300_ms_burst() {
        let tone = |ms: usize, amplitude: f32| -> Vec<i16> {
            (0..16 * ms).map(|i| (amplitude * (i as f32 * 0.3).sin()) as i16).collect()
        };
        let mut detector = VoiceActivity::Energy.detector(Encoding::Linear16k, DetectorSettings::default());
        assert_eq!(detector.model(), "energy");
        let mut got = Vec::new();
        let audio = [tone(500, 0.0), tone(300, 9_000.0), tone(1_000, 0.0), tone(800, 9_000.0), tone(600, 0.0)].concat();
        for frame in audio.chunks(FRAME) {
            got.extend(detector.push(&Encoding::Linear16k.encode(frame)).await);
        }
        assert_eq!(
            got,
            [
                SpeechEvent::Started { at: Duration::from_millis(1_800) },
                SpeechEvent::Stopped { at: Duration::from_millis(2_600) },
            ],
            "the 300 ms burst is not speech; the 800 ms that follows is"
        );
        assert_eq!(detector.heard(), Duration::from_millis(3_200));
        assert!(!detector.speaking());
    }

    #[tokio::test]
    async fn the_fallback_hears_a_telephone_line_on_the_same_clock() {
        let mut detector = VoiceActivity::Energy.detector(Encoding::Mulaw8k, DetectorSettings::default());
        let tone: Vec<i16> = (0..8 * 1_000).map(|i| (9_000.0 * (i as f32 * 0.6).sin()) as i16).collect();
        let mut got = Vec::new();
        for frame in [vec![0; 8 * 400], tone, vec![0; 8 * 600]].concat().chunks(160) {
            got.extend(detector.push(&Encoding::Mulaw8k.encode(frame)).await);
        }
        let Some(SpeechEvent::Started { at }) = got.first().copied() else { panic!("{got:?}") };
        assert!(at.abs_diff(Duration::from_millis(400)) <= Duration::from_millis(40), "{at:?}");
        assert!(matches!(got.get(1), Some(SpeechEvent::Stopped { .. })), "{got:?}");
    }
}
