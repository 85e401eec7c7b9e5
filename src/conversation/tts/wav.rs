//! WAV answers (Rime, Play.ht) turned into raw audio in the call's encoding. The RIFF chunks are
//! walked to the `data` chunk — providers put `LIST` and other chunks before it, so its offset is
//! not always 44 — and the header may arrive split across any number of network chunks. The
//! samples must be what was asked for: 16-bit mono PCM at the call's rate.

use futures_util::StreamExt;

use super::{AudioStream, TtsError};
use crate::conversation::audio::Encoding;

/// The longest header (everything before the samples) read before giving up on an answer.
const HEADER_LIMIT: usize = 1024 * 1024;

/// `WAVE_FORMAT_PCM` and `WAVE_FORMAT_EXTENSIBLE` (whose sub-format we take to be PCM too).
const FORMAT_PCM: u16 = 1;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Why a WAV answer cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a WAV file (no RIFF/WAVE header)")]
    NotWav,
    #[error("the WAV file has no fmt chunk before its data")]
    NoFormat,
    #[error("the WAV file's fmt chunk is too short")]
    BadFormat,
    #[error(
        "the audio is {bits}-bit, {channels} channel(s) at {rate} Hz in format {tag:#06x}; expected 16-bit mono PCM \
         at {expected} Hz"
    )]
    Unsupported { tag: u16, channels: u16, rate: u32, bits: u16, expected: u32 },
    #[error("the WAV file ended before its audio began")]
    Truncated,
    #[error("the WAV file's header is longer than {HEADER_LIMIT} bytes")]
    HeaderTooLong,
}

impl WavError {
    pub fn of(self, provider: &'static str) -> TtsError {
        TtsError::Audio { provider, message: self.to_string() }
    }
}

/// Reads a WAV file as it arrives: the header first (buffered until the `data` chunk starts),
/// then the samples, a chunk at a time. An odd trailing byte waits for the next chunk.
#[derive(Debug)]
pub struct WavReader {
    expected_rate: u32,
    /// The header so far, or the odd byte left of the samples.
    pending: Vec<u8>,
    /// `None` while reading the header; then the bytes of sample data still to come (`None`
    /// inside: until the end, for a streamed file whose size was not known when it began).
    data: Option<Option<u64>>,
}

impl WavReader {
    pub fn new(expected_rate: u32) -> WavReader {
        WavReader { expected_rate, pending: Vec::new(), data: None }
    }

    /// The samples in `bytes`, once the header is behind.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<i16>, WavError> {
        let Some(remaining) = self.data else {
            self.pending.extend_from_slice(bytes);
            let Some((offset, size)) = self.header()? else {
                if self.pending.len() > HEADER_LIMIT {
                    return Err(WavError::HeaderTooLong);
                }
                return Ok(Vec::new());
            };
            let header = std::mem::take(&mut self.pending);
            // Streamed files leave the size at 0 or the maximum, to be filled in afterwards.
            self.data = Some(Some(u64::from(size)).filter(|&s| s != 0 && s != u64::from(u32::MAX)));
            return self.push(&header[offset..]);
        };
        let mut bytes = bytes;
        if let Some(remaining) = remaining {
            let take = bytes.len().min(remaining as usize);
            bytes = &bytes[..take];
            self.data = Some(Some(remaining - take as u64));
        }
        let mut samples = Vec::with_capacity((self.pending.len() + bytes.len()) / 2);
        if let (Some(&low), Some(&high)) = (self.pending.first(), bytes.first()) {
            samples.push(i16::from_le_bytes([low, high]));
            bytes = &bytes[1..];
            self.pending.clear();
        }
        let pairs = bytes.chunks_exact(2);
        self.pending.extend_from_slice(pairs.remainder());
        samples.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
        Ok(samples)
    }

    /// At the end of the answer: an error if the samples never began.
    pub fn finish(&self) -> Result<(), WavError> {
        match self.data {
            Some(_) => Ok(()),
            None if self.pending.is_empty() => Err(WavError::Truncated),
            None => Err(self.header().err().unwrap_or(WavError::Truncated)),
        }
    }

    /// Where the samples start and how many bytes they take, once the header is complete; an
    /// error as soon as what has arrived cannot be a WAV file we can play.
    fn header(&self) -> Result<Option<(usize, u32)>, WavError> {
        let buf = &self.pending;
        let prefix = |range: std::ops::Range<usize>, tag: &[u8]| buf.len() < range.end || &buf[range] == tag;
        if !prefix(0..4, b"RIFF") || !prefix(8..12, b"WAVE") {
            return Err(WavError::NotWav);
        }
        let mut pos = 12;
        let mut format_seen = false;
        while pos + 8 <= buf.len() {
            let id = &buf[pos..pos + 4];
            let size = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
            let body = pos + 8;
            if id == b"data" {
                return if format_seen { Ok(Some((body, size))) } else { Err(WavError::NoFormat) };
            }
            // A chunk's body is padded to an even length.
            let end = body + size as usize + (size as usize & 1);
            if id == b"fmt " {
                if size < 16 {
                    return Err(WavError::BadFormat);
                }
                if buf.len() < body + 16 {
                    return Ok(None);
                }
                let u16_at = |at: usize| u16::from_le_bytes([buf[body + at], buf[body + at + 1]]);
                let (tag, channels, bits) = (u16_at(0), u16_at(2), u16_at(14));
                let rate = u32::from_le_bytes([buf[body + 4], buf[body + 5], buf[body + 6], buf[body + 7]]);
                let pcm = tag == FORMAT_PCM || tag == FORMAT_EXTENSIBLE;
                if !pcm || channels != 1 || bits != 16 || rate != self.expected_rate {
                    return Err(WavError::Unsupported { tag, channels, rate, bits, expected: self.expected_rate });
                }
                format_seen = true;
            }
            pos = end;
        }
        Ok(None)
    }
}

/// The samples of a whole WAV file.
pub fn samples_of(wav: &[u8], expected_rate: u32) -> Result<Vec<i16>, WavError> {
    let mut reader = WavReader::new(expected_rate);
    let samples = reader.push(wav)?;
    reader.finish()?;
    Ok(samples)
}

/// The samples of a whole WAV file, in `encoding`.
pub fn audio_of_file(provider: &'static str, wav: &[u8], encoding: Encoding) -> Result<Vec<u8>, TtsError> {
    let samples = samples_of(wav, encoding.sample_rate()).map_err(|e| e.of(provider))?;
    Ok(encoding.encode(&samples))
}

/// A streamed WAV file as raw audio in `encoding`, converted chunk by chunk as it arrives.
pub fn audio_of_stream(provider: &'static str, wav: AudioStream, encoding: Encoding) -> AudioStream {
    let reader = WavReader::new(encoding.sample_rate());
    futures_util::stream::unfold(Some((wav, reader)), move |state| async move {
        let (mut wav, mut reader) = state?;
        loop {
            match wav.next().await {
                Some(Ok(chunk)) => match reader.push(&chunk) {
                    Ok(samples) if samples.is_empty() => continue,
                    Ok(samples) => return Some((Ok(encoding.encode(&samples)), Some((wav, reader)))),
                    Err(e) => return Some((Err(e.of(provider)), None)),
                },
                Some(Err(e)) => return Some((Err(e), None)),
                None => return reader.finish().err().map(|e| (Err(e.of(provider)), None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV file written field by field: `chunks` go between `fmt ` and `data`.
    fn wav(rate: u32, channels: u16, chunks: &[(&[u8; 4], &[u8])], samples: &[i16]) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        let mut chunk = |id: &[u8; 4], data: &[u8]| {
            body.extend_from_slice(id);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        };
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&1u16.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        fmt.extend_from_slice(&(2 * channels).to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        chunk(b"fmt ", &fmt);
        for (id, data) in chunks {
            chunk(id, data);
        }
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        chunk(b"data", &data);
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        file
    }

    const SAMPLES: [i16; 5] = [0, 1000, -1000, i16::MAX, i16::MIN];

    #[test]
    fn the_samples_follow_whatever_chunks_precede_them() {
        assert_eq!(samples_of(&wav(8000, 1, &[], &SAMPLES), 8000).unwrap(), SAMPLES);
        let with_list = wav(16000, 1, &[(b"LIST", b"INFOISFT\x05\0\0\0Lavf\0"), (b"fact", b"\x05\0\0\0")], &SAMPLES);
        assert!(with_list.len() > 44 + 10);
        assert_eq!(samples_of(&with_list, 16000).unwrap(), SAMPLES);
    }

    #[test]
    fn a_header_split_anywhere_and_odd_chunks_give_the_same_samples() {
        let file = wav(8000, 1, &[(b"LIST", b"odd")], &SAMPLES);
        for size in 1..file.len() {
            let mut reader = WavReader::new(8000);
            let samples: Vec<i16> = file.chunks(size).flat_map(|c| reader.push(c).unwrap()).collect();
            reader.finish().unwrap();
            assert_eq!(samples, SAMPLES, "chunks of {size}");
        }
    }

    #[test]
    fn nothing_after_the_data_chunk_is_played() {
        let mut file = wav(8000, 1, &[], &SAMPLES);
        file.extend_from_slice(b"LIST\x04\0\0\0abcd");
        assert_eq!(samples_of(&file, 8000).unwrap(), SAMPLES);
    }

    #[test]
    fn a_streamed_file_of_unknown_size_plays_to_its_end() {
        let mut file = wav(8000, 1, &[], &[]);
        let at = file.len() - 4;
        file[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        file.extend(SAMPLES.iter().flat_map(|s| s.to_le_bytes()));
        assert_eq!(samples_of(&file, 8000).unwrap(), SAMPLES);
    }

    #[test]
    fn what_cannot_be_played_is_an_error() {
        let file = wav(8000, 1, &[(b"LIST", b"0123456789")], &SAMPLES);
        assert_eq!(samples_of(&file[..30], 8000), Err(WavError::Truncated), "cut inside the fmt chunk");
        assert_eq!(samples_of(&file[..50], 8000), Err(WavError::Truncated), "cut inside the LIST chunk");
        assert_eq!(samples_of(&[], 8000), Err(WavError::Truncated));
        assert_eq!(samples_of(b"ID3\x04 an mp3", 8000), Err(WavError::NotWav));
        assert_eq!(samples_of(br#"{"error":"no"}"#, 8000), Err(WavError::NotWav));
        let error = samples_of(&wav(22050, 1, &[], &SAMPLES), 8000).unwrap_err();
        assert!(matches!(error, WavError::Unsupported { rate: 22050, expected: 8000, .. }), "{error}");
        assert!(matches!(samples_of(&wav(8000, 2, &[], &SAMPLES), 8000), Err(WavError::Unsupported { .. })));
        let mut no_format = b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\0\0".to_vec();
        assert_eq!(samples_of(&no_format, 8000), Err(WavError::NoFormat));
        no_format.truncate(4);
        assert_eq!(samples_of(&no_format, 8000), Err(WavError::Truncated));
    }

    #[test]
    fn the_samples_come_out_in_the_calls_encoding() {
        let file = wav(8000, 1, &[], &SAMPLES);
        assert_eq!(audio_of_file("rime", &file, Encoding::Mulaw8k).unwrap(), Encoding::Mulaw8k.encode(&SAMPLES));
        let file = wav(16000, 1, &[], &SAMPLES);
        let pcm: Vec<u8> = SAMPLES.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(audio_of_file("rime", &file, Encoding::Linear16k).unwrap(), pcm);
        let error = audio_of_file("rime", &file, Encoding::Mulaw8k).unwrap_err();
        assert!(matches!(error, TtsError::Audio { provider: "rime", .. }), "{error}");
    }
}
