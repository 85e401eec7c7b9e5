//! Noise suppression (`noise_suppression: true` on an agent): the caller's audio cleaned before
//! recognition by RNNoise's algorithm (the pure-Rust `nnnoiseless` port), whichever recogniser
//! hears it. RNNoise works on 10 ms frames at 48 kHz; the call's audio goes to 16 kHz with the
//! engine's resampler, up to 48 kHz by interpolation, through the network, back down by
//! averaging (a low-pass at the 16 kHz band's edge), and out in the call's own encoding. It costs
//! about 10 ms of delay and a few percent of a core per call.

use nnnoiseless::DenoiseState;

use super::audio::{Encoding, Transcoder};

/// Samples of a 10 ms frame at 48 kHz.
const FRAME_48K: usize = DenoiseState::FRAME_SIZE;
/// Samples of a 10 ms frame at 16 kHz.
const FRAME_16K: usize = FRAME_48K / 3;

pub struct Denoiser {
    state: Box<DenoiseState<'static>>,
    decode: Transcoder,
    encode: Transcoder,
    pending: Vec<i16>,
    /// The last 16 kHz sample of the previous frame, for interpolating across frames.
    previous: f32,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl Denoiser {
    /// For audio in `encoding`, both ways.
    pub fn new(encoding: Encoding) -> Denoiser {
        Denoiser {
            state: DenoiseState::new(),
            decode: Transcoder::to_pcm16k(encoding),
            encode: Transcoder::from_pcm16k(encoding),
            pending: Vec::new(),
            previous: 0.0,
            input: vec![0.0; FRAME_48K],
            output: vec![0.0; FRAME_48K],
        }
    }

    /// Cleans carrier audio; what is returned lags what came in by up to 10 ms.
    pub fn process(&mut self, bytes: &[u8]) -> Vec<u8> {
        let pcm = self.decode.decode(bytes);
        let cleaned = self.process_pcm16k(&pcm);
        self.encode.encode(&cleaned)
    }

    /// Cleans 16 kHz samples.
    pub fn process_pcm16k(&mut self, pcm: &[i16]) -> Vec<i16> {
        self.pending.extend_from_slice(pcm);
        let frames = self.pending.len() / FRAME_16K;
        let mut cleaned = Vec::with_capacity(frames * FRAME_16K);
        for n in 0..frames {
            let frame = &self.pending[n * FRAME_16K..(n + 1) * FRAME_16K];
            let mut previous = self.previous;
            for (i, &sample) in frame.iter().enumerate() {
                let sample = f32::from(sample);
                for k in 0..3 {
                    let t = (k + 1) as f32 / 3.0;
                    self.input[i * 3 + k] = previous + (sample - previous) * t;
                }
                previous = sample;
            }
            self.previous = previous;
            self.state.process_frame(&mut self.output, &self.input);
            cleaned.extend(
                self.output.chunks_exact(3).map(|c| ((c[0] + c[1] + c[2]) / 3.0).clamp(-32768.0, 32767.0) as i16),
            );
        }
        self.pending.drain(..frames * FRAME_16K);
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::audio::rms;

    fn noise(samples: usize, amplitude: f32) -> Vec<i16> {
        let mut seed = 12_345u32;
        (0..samples)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (((seed >> 16) as f32 / 65_536.0 - 0.5) * 2.0 * amplitude) as i16
            })
            .collect()
    }

    #[test]
    fn steady_noise_is_turned_down() {
        let mut denoiser = Denoiser::new(Encoding::Linear16k);
        let noisy = noise(16_000 * 3, 3_000.0);
        let cleaned = denoiser.process_pcm16k(&noisy);
        assert_eq!(cleaned.len(), noisy.len(), "whole frames in, whole frames out");
        let tail = &cleaned[16_000 * 2..];
        let (before, after) = (rms(&noisy[16_000 * 2..]), rms(tail));
        assert!(after < before / 3.0, "noise {before} → {after}");
    }

    #[test]
    fn carrier_audio_comes_back_in_its_encoding() {
        let mut denoiser = Denoiser::new(Encoding::Mulaw8k);
        let mut out = Vec::new();
        for _ in 0..10 {
            out.extend(denoiser.process(&[0xFF; 160]));
        }
        // 200 ms in; all of it out but the last partial 10 ms at most.
        assert!((1_440..=1_600).contains(&out.len()), "{}", out.len());
    }
}
