//! Audio as the engine handles it: the carriers' two encodings, the codecs between them and
//! 16-bit linear PCM (G.711 μ-law, little-endian L16), resampling between 8 and 16 kHz, and frame
//! arithmetic. Everything here is plain CPU work on small buffers — a 20 ms frame costs
//! microseconds — so it runs inline on the call's task.

/// How a call's audio is encoded, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// G.711 μ-law, 8 kHz, mono (Twilio).
    Mulaw8k,
    /// 16-bit linear PCM, little-endian, 16 kHz, mono (Vonage).
    Linear16k,
}

/// The length of one frame on the wire.
pub const FRAME_MS: u32 = 20;

impl Encoding {
    pub fn sample_rate(self) -> u32 {
        match self {
            Encoding::Mulaw8k => 8_000,
            Encoding::Linear16k => 16_000,
        }
    }

    /// Bytes of one second of audio.
    pub fn bytes_per_second(self) -> usize {
        match self {
            Encoding::Mulaw8k => 8_000,
            Encoding::Linear16k => 32_000,
        }
    }

    /// Bytes of `ms` milliseconds of audio (whole samples).
    pub fn bytes_for_ms(self, ms: u32) -> usize {
        let bytes = self.bytes_per_second() * ms as usize / 1000;
        match self {
            Encoding::Mulaw8k => bytes,
            Encoding::Linear16k => bytes & !1,
        }
    }

    /// How long `bytes` of audio last, in milliseconds.
    pub fn ms_of(self, bytes: usize) -> u64 {
        (bytes as u64 * 1000) / self.bytes_per_second() as u64
    }

    /// The byte of silence (μ-law's zero is 0xFF; L16's is 0).
    pub fn silence_byte(self) -> u8 {
        match self {
            Encoding::Mulaw8k => 0xFF,
            Encoding::Linear16k => 0,
        }
    }

    /// 16-bit samples from bytes in this encoding (an odd trailing byte of L16 is dropped).
    pub fn decode(self, bytes: &[u8]) -> Vec<i16> {
        match self {
            Encoding::Mulaw8k => bytes.iter().map(|b| mulaw_decode(*b)).collect(),
            Encoding::Linear16k => bytes.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect(),
        }
    }

    /// Bytes in this encoding from 16-bit samples.
    pub fn encode(self, samples: &[i16]) -> Vec<u8> {
        match self {
            Encoding::Mulaw8k => samples.iter().map(|s| mulaw_encode(*s)).collect(),
            Encoding::Linear16k => samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }
}

const MULAW_BIAS: i32 = 0x84;
const MULAW_CLIP: i32 = 32_635;

/// G.711 μ-law encoding of one sample.
pub fn mulaw_encode(sample: i16) -> u8 {
    let mut value = i32::from(sample);
    let sign = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    value = value.min(MULAW_CLIP) + MULAW_BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (31 - (value as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (value >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// G.711 μ-law decoding of one byte.
pub fn mulaw_decode(byte: u8) -> i16 {
    let byte = !byte;
    let sign = byte & 0x80;
    let exponent = i32::from((byte >> 4) & 0x07);
    let mantissa = i32::from(byte & 0x0F);
    let magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// A half-band low-pass filter: a windowed sinc cut at a quarter of the sample rate, which is
/// what both doubling (to remove the images) and halving (to remove what would alias) need.
/// Odd length, symmetric, every other tap zero but the centre one.
fn half_band_taps() -> &'static [f32] {
    use std::sync::OnceLock;
    static TAPS: OnceLock<Vec<f32>> = OnceLock::new();
    TAPS.get_or_init(|| {
        const N: usize = 47;
        let centre = (N / 2) as f32;
        let mut taps: Vec<f32> = (0..N)
            .map(|i| {
                let x = i as f32 - centre;
                let sinc =
                    if x == 0.0 { 0.5 } else { (std::f32::consts::PI * x / 2.0).sin() / (std::f32::consts::PI * x) };
                // Blackman window.
                let w = 0.42 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (N - 1) as f32).cos()
                    + 0.08 * (4.0 * std::f32::consts::PI * i as f32 / (N - 1) as f32).cos();
                sinc * w
            })
            .collect();
        let sum: f32 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= sum);
        taps
    })
}

fn clamp(x: f32) -> i16 {
    x.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// Streaming resampling between 8 and 16 kHz, keeping the filter's history across frames so that
/// a call's audio resampled frame by frame is the same as resampled whole.
#[derive(Debug, Clone)]
pub struct Resampler {
    up: bool,
    /// The last input (doubling: zero-stuffed) samples the filter still needs.
    history: Vec<f32>,
    /// Halving: whether the next filtered sample is kept.
    keep_next: bool,
}

impl Resampler {
    /// 8 kHz → 16 kHz.
    pub fn up() -> Self {
        Resampler { up: true, history: vec![0.0; half_band_taps().len() - 1], keep_next: true }
    }

    /// 16 kHz → 8 kHz.
    pub fn down() -> Self {
        Resampler { up: false, history: vec![0.0; half_band_taps().len() - 1], keep_next: true }
    }

    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let taps = half_band_taps();
        let mut signal = std::mem::take(&mut self.history);
        if self.up {
            // Zero-stuffing halves the energy of the band kept: a gain of 2 restores it.
            signal.reserve(input.len() * 2);
            for s in input {
                signal.push(f32::from(*s) * 2.0);
                signal.push(0.0);
            }
        } else {
            signal.extend(input.iter().map(|s| f32::from(*s)));
        }
        let produced = signal.len() - (taps.len() - 1);
        let mut out = Vec::with_capacity(if self.up { produced } else { produced / 2 + 1 });
        for start in 0..produced {
            if !self.up {
                let keep = self.keep_next;
                self.keep_next = !keep;
                if !keep {
                    continue;
                }
            }
            let window = &signal[start..start + taps.len()];
            let acc: f32 = window.iter().zip(taps).map(|(x, t)| x * t).sum();
            out.push(clamp(acc));
        }
        self.history = signal[produced..].to_vec();
        out
    }
}

/// Converts a call's audio (in its carrier's encoding) to 16 kHz linear PCM, and back.
#[derive(Debug, Clone)]
pub struct Transcoder {
    encoding: Encoding,
    resampler: Option<Resampler>,
}

impl Transcoder {
    /// From the carrier's encoding to 16 kHz samples.
    pub fn to_pcm16k(encoding: Encoding) -> Self {
        Transcoder { encoding, resampler: (encoding == Encoding::Mulaw8k).then(Resampler::up) }
    }

    /// From 16 kHz samples to the carrier's encoding.
    pub fn from_pcm16k(encoding: Encoding) -> Self {
        Transcoder { encoding, resampler: (encoding == Encoding::Mulaw8k).then(Resampler::down) }
    }

    /// Carrier bytes → 16 kHz samples.
    pub fn decode(&mut self, bytes: &[u8]) -> Vec<i16> {
        let samples = self.encoding.decode(bytes);
        match &mut self.resampler {
            Some(r) => r.process(&samples),
            None => samples,
        }
    }

    /// 16 kHz samples → carrier bytes.
    pub fn encode(&mut self, samples: &[i16]) -> Vec<u8> {
        match &mut self.resampler {
            Some(r) => self.encoding.encode(&r.process(samples)),
            None => self.encoding.encode(samples),
        }
    }
}

/// The root-mean-square level of samples, 0 to 32767.
pub fn rms(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|s| f64::from(*s).powi(2)).sum();
    (sum / samples.len() as f64).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, n: usize, amplitude: f32) -> Vec<i16> {
        (0..n)
            .map(|i| (amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    /// How much of `signal` is a sine of `freq` (its amplitude, by correlation).
    fn amplitude_at(signal: &[i16], freq: f32, rate: u32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, s) in signal.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * f64::from(freq) * i as f64 / f64::from(rate);
            re += f64::from(*s) * phase.cos();
            im += f64::from(*s) * phase.sin();
        }
        (2.0 * (re * re + im * im).sqrt() / signal.len() as f64) as f32
    }

    #[test]
    fn mulaw_matches_g711() {
        // Reference points of G.711 μ-law.
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(mulaw_encode(-1), 0x7F);
        assert_eq!(mulaw_encode(i16::MAX), 0x80);
        assert_eq!(mulaw_encode(i16::MIN), 0x00);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_decode(0x80), 32_124);
        assert_eq!(mulaw_decode(0x00), -32_124);
        // Every byte decodes to a value that encodes back to it (0x7F and 0xFF are both zero).
        for b in 0..=255u8 {
            let back = mulaw_encode(mulaw_decode(b));
            assert!(back == b || (b == 0x7F && back == 0xFF), "{b:#x} -> {back:#x}");
        }
        // The quantisation error stays within μ-law's steps (about 3% of the value).
        for s in (-32_000i32..32_000).step_by(97) {
            let back = i32::from(mulaw_decode(mulaw_encode(s as i16)));
            assert!((back - s).abs() <= (s.abs() / 16).max(8), "{s} -> {back}");
        }
    }

    #[test]
    fn linear16_is_little_endian_and_exact() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN, 12_345];
        let bytes = Encoding::Linear16k.encode(&samples);
        assert_eq!(&bytes[..6], &[0, 0, 1, 0, 0xFF, 0xFF]);
        assert_eq!(Encoding::Linear16k.decode(&bytes), samples);
        assert_eq!(Encoding::Linear16k.decode(&bytes[..3]), vec![0], "an odd byte is dropped");
    }

    #[test]
    fn frame_arithmetic() {
        assert_eq!(Encoding::Mulaw8k.bytes_for_ms(20), 160);
        assert_eq!(Encoding::Linear16k.bytes_for_ms(20), 640);
        assert_eq!(Encoding::Linear16k.ms_of(640), 20);
        assert_eq!(Encoding::Mulaw8k.ms_of(8_000), 1000);
    }

    #[test]
    fn doubling_keeps_the_tone_and_removes_the_image() {
        let input = sine(1_000.0, 8_000, 8_000, 10_000.0);
        let mut up = Resampler::up();
        let out: Vec<i16> = input.chunks(160).flat_map(|f| up.process(f)).collect();
        assert_eq!(out.len(), 16_000, "twice the samples (the filter delays them, it drops none)");
        let body = &out[200..];
        let kept = amplitude_at(body, 1_000.0, 16_000);
        let image = amplitude_at(body, 7_000.0, 16_000);
        assert!((kept - 10_000.0).abs() < 300.0, "the tone: {kept}");
        assert!(image < 100.0, "the image at 7 kHz: {image}");
    }

    #[test]
    fn halving_keeps_the_band_and_stops_aliasing() {
        let tone = sine(1_000.0, 16_000, 16_000, 10_000.0);
        let high = sine(6_000.0, 16_000, 16_000, 10_000.0);
        let mut down = Resampler::down();
        let out: Vec<i16> = tone.chunks(320).flat_map(|f| down.process(f)).collect();
        assert!((out.len() as i32 - 8_000).abs() <= 24, "{}", out.len());
        let kept = amplitude_at(&out[100..], 1_000.0, 8_000);
        assert!((kept - 10_000.0).abs() < 300.0, "{kept}");
        // A 6 kHz tone would fold to 2 kHz at 8 kHz: the filter must have removed it first.
        let mut down = Resampler::down();
        let aliased: Vec<i16> = high.chunks(320).flat_map(|f| down.process(f)).collect();
        let folded = amplitude_at(&aliased[100..], 2_000.0, 8_000);
        assert!(folded < 150.0, "aliased energy at 2 kHz: {folded}");
    }

    #[test]
    fn frame_by_frame_is_the_same_as_whole() {
        let input = sine(440.0, 16_000, 3_200, 8_000.0);
        let whole = Resampler::down().process(&input);
        let mut r = Resampler::down();
        let framed: Vec<i16> = input.chunks(317).flat_map(|f| r.process(f)).collect();
        assert_eq!(whole, framed);
    }

    #[test]
    fn a_twilio_call_round_trips_through_16k() {
        let tone = sine(700.0, 8_000, 8_000, 6_000.0);
        let wire = Encoding::Mulaw8k.encode(&tone);
        let mut inbound = Transcoder::to_pcm16k(Encoding::Mulaw8k);
        let pcm: Vec<i16> = wire.chunks(160).flat_map(|f| inbound.decode(f)).collect();
        let mut outbound = Transcoder::from_pcm16k(Encoding::Mulaw8k);
        let back: Vec<u8> = pcm.chunks(320).flat_map(|f| outbound.encode(f)).collect();
        let decoded = Encoding::Mulaw8k.decode(&back);
        let level = amplitude_at(&decoded[200..], 700.0, 8_000);
        assert!((level - 6_000.0).abs() < 400.0, "{level}");
        assert!(rms(&decoded[200..]) > 3_800.0);
    }
}
