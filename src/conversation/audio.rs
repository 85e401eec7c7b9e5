//! Audio as the engine handles it: the carriers' two encodings, codecs between them and 16-bit
//! linear PCM, resampling between 8 and 16 kHz, and framing.

/// How a call's audio is encoded, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// G.711 μ-law, 8 kHz, mono (Twilio).
    Mulaw8k,
    /// 16-bit linear PCM, little-endian, 16 kHz, mono (Vonage).
    Linear16k,
}

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
}
