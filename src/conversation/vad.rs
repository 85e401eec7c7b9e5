//! Voice activity, told from the loudness of 20 ms frames against the line's own noise floor:
//! enough to cut a telephone caller's speech into utterances for a recogniser that hears whole
//! utterances (the local one). Speech starts after a few loud frames in a row and ends after the
//! endpointing silence. The floor is the quietest frame of the last 1.5 s (speech always pauses
//! within that), so steady background noise (or what noise suppression leaves of it) does not
//! count as speech, from its first frame on.
//!
//! The neural detector ([`silero`]) and the per-call detector the engine uses
//! ([`detector::SpeechDetector`], with this one as its fallback) are in the modules below.

pub mod detector;
pub mod silero;

use std::collections::VecDeque;
use std::time::Duration;

use super::audio::rms;

/// A frame: 20 ms at 16 kHz.
pub const FRAME: usize = 320;

/// What a frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech started; it began `lead` frames ago (those frames are part of it).
    Started { lead: usize },
    /// The silence after speech lasted the endpointing time.
    Ended,
}

#[derive(Debug, Clone)]
pub struct EnergyVad {
    /// The levels of the last [`FLOOR_FRAMES`] frames.
    recent: VecDeque<f32>,
    loud_run: usize,
    quiet_run: usize,
    speaking: bool,
    end_after: usize,
}

/// The frames whose quietest is the floor (1.5 s).
const FLOOR_FRAMES: usize = 75;
/// Loud frames in a row that start speech (60 ms).
const START_FRAMES: usize = 3;
/// The quietest a floor is taken to be (RMS of 32767): digital silence is not a noise floor.
const MIN_FLOOR: f32 = 60.0;
/// A frame this many times the floor is speech.
const OVER_FLOOR: f32 = 3.0;
/// And never quieter than this.
const MIN_SPEECH: f32 = 250.0;

impl EnergyVad {
    /// Speech ends after `endpointing` of quiet (at least 100 ms).
    pub fn new(endpointing: Duration) -> EnergyVad {
        let end_after = (endpointing.as_millis() as usize / 20).max(5);
        EnergyVad {
            recent: VecDeque::with_capacity(FLOOR_FRAMES),
            loud_run: 0,
            quiet_run: 0,
            speaking: false,
            end_after,
        }
    }

    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Hears one 20 ms frame of 16 kHz audio.
    pub fn push(&mut self, frame: &[i16]) -> Option<VadEvent> {
        if self.loud(frame) {
            self.loud_run += 1;
            self.quiet_run = 0;
        } else {
            self.loud_run = 0;
            self.quiet_run += 1;
        }
        if !self.speaking && self.loud_run >= START_FRAMES {
            self.speaking = true;
            return Some(VadEvent::Started { lead: START_FRAMES });
        }
        if self.speaking && self.quiet_run >= self.end_after {
            self.speaking = false;
            return Some(VadEvent::Ended);
        }
        None
    }

    /// Whether one 20 ms frame of 16 kHz audio is loud over the line's floor (the floor learns
    /// from it); [`push`](Self::push) without the start and end rules.
    pub fn loud(&mut self, frame: &[i16]) -> bool {
        let level = rms(frame);
        if self.recent.len() == FLOOR_FRAMES {
            self.recent.pop_front();
        }
        self.recent.push_back(level);
        let floor = self.recent.iter().copied().fold(f32::INFINITY, f32::min).max(MIN_FLOOR);
        level > (floor * OVER_FLOOR).max(MIN_SPEECH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amplitude: f32) -> Vec<i16> {
        (0..FRAME).map(|i| (amplitude * (i as f32 * 0.3).sin()) as i16).collect()
    }

    fn noise(amplitude: f32, seed: &mut u32) -> Vec<i16> {
        (0..FRAME)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (((*seed >> 16) as f32 / 65536.0 - 0.5) * 2.0 * amplitude) as i16
            })
            .collect()
    }

    #[test]
    fn speech_starts_after_three_loud_frames_and_ends_after_the_endpointing_silence() {
        let mut vad = EnergyVad::new(Duration::from_millis(200));
        let mut events = Vec::new();
        for i in 0..5 {
            events.extend(vad.push(&tone(0.0)).map(|e| (i, e)));
        }
        for i in 5..30 {
            events.extend(vad.push(&tone(8_000.0)).map(|e| (i, e)));
        }
        for i in 30..50 {
            events.extend(vad.push(&tone(0.0)).map(|e| (i, e)));
        }
        assert_eq!(events, vec![(7, VadEvent::Started { lead: 3 }), (39, VadEvent::Ended)]);
    }

    #[test]
    fn steady_noise_is_not_speech_but_speech_over_it_is() {
        let mut vad = EnergyVad::new(Duration::from_millis(500));
        let mut seed = 7;
        for _ in 0..200 {
            assert_eq!(vad.push(&noise(1_500.0, &mut seed)), None, "noise alone");
        }
        let started = (0..10).filter_map(|_| vad.push(&tone(9_000.0))).next();
        assert_eq!(started, Some(VadEvent::Started { lead: 3 }));
    }
}
