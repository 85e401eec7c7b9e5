//! A call's recording: both sides of the conversation on one timeline, 8 kHz 16-bit mono, mixed
//! as the audio arrives, bounded in length, and written out as a WAV file. The sandbox's simulated
//! line and the server's own recordings (`RECORD_ON_SERVER`) both use it.

use std::time::{Duration, Instant};

/// The recording's sample rate.
pub const RATE: u32 = 8_000;

/// Who made a sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The person on the line (the carrier's inbound audio).
    Person,
    /// The bot (the audio sent to the call).
    Bot,
}

/// Both sides of a call mixed on one timeline: each side's audio is placed where it arrived, and
/// after that side's audio before it (audio sent a little ahead of playback, or a simulation
/// running faster than real time, would otherwise overlap itself). One buffer holds the mix, so a
/// call costs 16 kB a second whatever the number of sides; past the limit, audio is dropped.
pub struct Recording {
    start: Option<Instant>,
    mixed: Vec<i16>,
    /// Where each side's audio so far ends.
    ends: [usize; 2],
    limit: usize,
}

impl Recording {
    /// A recording of at most `limit`.
    pub fn new(limit: Duration) -> Self {
        let limit = (limit.as_secs_f64() * f64::from(RATE)) as usize;
        Recording { start: None, mixed: Vec::new(), ends: [0; 2], limit }
    }

    /// Places `samples` (8 kHz) of `side`, heard at `at`.
    pub fn put(&mut self, side: Side, at: Instant, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let start = *self.start.get_or_insert(at);
        let end = &mut self.ends[side as usize];
        let position = (at.saturating_duration_since(start).as_secs_f64() * f64::from(RATE)) as usize;
        let position = position.max(*end);
        if position >= self.limit {
            return;
        }
        let samples = &samples[..samples.len().min(self.limit - position)];
        *end = position + samples.len();
        if self.mixed.len() < *end {
            self.mixed.resize(*end, 0);
        }
        for (mixed, sample) in self.mixed[position..].iter_mut().zip(samples) {
            *mixed = mixed.saturating_add(*sample);
        }
    }

    /// When the first sound was heard.
    pub fn started(&self) -> Option<Instant> {
        self.start
    }

    /// Nothing was heard.
    pub fn is_empty(&self) -> bool {
        self.mixed.is_empty()
    }

    /// The mix so far.
    pub fn samples(&self) -> &[i16] {
        &self.mixed
    }

    /// The recording as a WAV file.
    pub fn wav(&self) -> Vec<u8> {
        wav(&self.mixed, RATE)
    }
}

/// A WAV file of 16-bit mono PCM.
pub fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The samples of a WAV file of 16-bit mono PCM at `rate` (as [`wav`] writes them); `None` for
/// anything else.
pub fn samples_of_wav(wav: &[u8], rate: u32) -> Option<Vec<i16>> {
    if wav.get(..4)? != b"RIFF" || wav.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut format_ok = false;
    let mut rest = &wav[12..];
    while rest.len() >= 8 {
        let (id, size) = (&rest[..4], u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize);
        let body = rest.get(8..8 + size)?;
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate_of = u32::from_le_bytes(body[4..8].try_into().ok()?);
                format_ok = u16_at(0) == 1 && u16_at(2) == 1 && rate_of == rate && u16_at(14) == 16;
            }
            b"data" if format_ok => {
                return Some(body.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect())
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        rest = rest.get(8 + size + size % 2..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples_of(wav: &[u8]) -> Vec<i16> {
        wav[44..].chunks(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
    }

    #[test]
    fn a_recording_mixes_both_sides_where_they_were_heard() {
        let mut recording = Recording::new(Duration::from_secs(600));
        let start = Instant::now();
        assert!(recording.is_empty(), "nothing heard");
        recording.put(Side::Bot, start, &[1000; 800]);
        recording.put(Side::Person, start + Duration::from_millis(50), &[500; 800]);
        recording.put(Side::Person, start + Duration::from_millis(60), &[500; 10]);
        let wav = recording.wav();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8_000);
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize, wav.len() - 44);
        let samples = samples_of(&wav);
        assert_eq!(samples.len(), 400 + 810, "the person's second frame follows their first");
        assert_eq!((samples[0], samples[400], samples[900], samples[1205]), (1000, 1500, 500, 500));
    }

    #[test]
    fn a_wav_file_reads_back_as_its_samples() {
        let samples = [0, 1, -1, i16::MAX, i16::MIN, 1234];
        assert_eq!(samples_of_wav(&wav(&samples, RATE), RATE), Some(samples.to_vec()));
        assert_eq!(samples_of_wav(&wav(&[], RATE), RATE), Some(Vec::new()));
        assert_eq!(samples_of_wav(&wav(&samples, 16_000), RATE), None, "another rate");
        assert_eq!(samples_of_wav(b"RIFF....WAVEdata", RATE), None, "no format");
        assert_eq!(samples_of_wav(&wav(&samples, RATE)[..50], RATE), None, "cut short");
        assert_eq!(samples_of_wav(b"not a wav file at all, not at all", RATE), None);
    }

    #[test]
    fn loud_sides_saturate_rather_than_wrap() {
        let mut recording = Recording::new(Duration::from_secs(1));
        let start = Instant::now();
        recording.put(Side::Bot, start, &[30_000; 10]);
        recording.put(Side::Person, start, &[30_000; 10]);
        recording.put(Side::Bot, start, &[-30_000; 10]);
        recording.put(Side::Person, start, &[-30_000; 10]);
        assert_eq!(&recording.samples()[..10], &[i16::MAX; 10]);
        assert_eq!(&recording.samples()[10..], &[i16::MIN; 10]);
    }

    #[test]
    fn a_recording_keeps_no_more_than_its_limit() {
        let mut recording = Recording::new(Duration::from_millis(100));
        let start = Instant::now();
        recording.put(Side::Person, start, &[7; 600]);
        recording.put(Side::Bot, start + Duration::from_millis(50), &[1; 600]);
        recording.put(Side::Bot, start + Duration::from_secs(3600), &[1; 600]);
        recording.put(Side::Person, start + Duration::from_millis(90), &[7; 600]);
        let samples = recording.samples();
        assert_eq!(samples.len(), 800, "100 ms at 8 kHz");
        assert_eq!((samples[399], samples[400], samples[599], samples[600]), (7, 8, 8, 1));
    }
}
