//! Whether the caller is done speaking, from how they sound: Smart Turn v3.2, the end-of-turn
//! model Pipecat ships (`smart-turn-v3.2-cpu.onnx` from the `pipecat-ai` 1.14.0 wheel,
//! BSD-2-Clause; its licence is installed beside it), run by the ONNX Runtime the local
//! recogniser already loads. At a pause, the engine asks for the probability that the turn is
//! complete given the last 8 s of the caller's audio; over [`THRESHOLD`] the caller is done.
//!
//! The model hears Whisper's log-mel features, computed here ([`log_mel`]) as Pipecat computes
//! them (its `_whisper_features.py`, a numpy port of Hugging Face Transformers'
//! `WhisperFeatureExtractor`, Apache-2.0): the last 8 s at 16 kHz, zeros before shorter audio, the
//! waveform normalised to zero mean and unit variance, a 400-point periodic Hann window every 160
//! samples (centred, reflect-padded), the power spectrum onto 80 Slaney mel bands, log10, floored
//! at 8 under the maximum, then `(x + 4) / 4`: 80 × 800 values.
//!
//! One inference costs about 80 ms of one core, so it runs on the blocking pool, at most
//! `workers` at once (one session each, one thread each), each holding one of the machine's cores
//! while it runs ([`onnx::core`], shared with the recogniser). A call that finds every worker busy
//! gets `None` from [`EndOfTurn::probability_if_free`] at once and uses the silence rule for that
//! pause: the model is an improvement, never a queue the conversation waits in.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session;
use ort::value::Tensor;
use realfft::RealFftPlanner;
use tokio::sync::Semaphore;

pub use crate::conversation::onnx::ModelError as EndOfTurnError;
use crate::conversation::onnx::{self, bad_model, Loaded};
use crate::conversation::stt::moonshine;

/// The model, in `SPEECH_DIR`.
pub const MODEL: &str = "smart-turn/smart-turn-v3.2-cpu.onnx";
/// The files the model needs, relative to `SPEECH_DIR`.
pub const FILES: [&str; 2] = [moonshine::RUNTIME, MODEL];

/// Over this probability the turn is complete (Pipecat's `prediction = probability > 0.5`).
pub const THRESHOLD: f32 = 0.5;

/// The rate the model hears.
pub const SAMPLE_RATE: usize = 16_000;
/// The audio the model hears: the last 8 s.
pub const WINDOW: usize = 8 * SAMPLE_RATE;

const N_FFT: usize = 400;
const HOP: usize = 160;
const N_MELS: usize = 80;
/// Frames of features: one per hop of the 8 s, the last dropped (as Whisper's extractor does).
pub const FRAMES: usize = WINDOW / HOP;

/// The shared model: a pool of sessions.
pub struct EndOfTurn {
    sessions: Mutex<Vec<Session>>,
    free: Arc<Semaphore>,
    workers: usize,
}

/// Models loaded in this process, by folder.
static LOADED: Loaded<EndOfTurn> = Loaded::new(None);

impl EndOfTurn {
    /// The model of `dir`, loaded (blocking: about 0.2 s per worker) unless this process has
    /// loaded it already.
    pub fn shared(dir: &Path, workers: usize) -> Result<Arc<EndOfTurn>, EndOfTurnError> {
        onnx::shared(&LOADED, dir, || EndOfTurn::load(dir, workers))
    }

    fn load(dir: &Path, workers: usize) -> Result<EndOfTurn, EndOfTurnError> {
        let workers = workers.max(1);
        let mut sessions: Vec<Session> =
            (0..workers).map(|_| onnx::session(dir, &FILES, MODEL)).collect::<Result<_, _>>()?;
        let path = dir.join(MODEL);
        let bad = |message: String| bad_model(&path, message);
        // A model that loads but does not answer (another model's file) is found out now, and
        // each session's first run, slower than later ones, is not a caller's.
        let features = log_mel(&[]);
        for session in &mut sessions {
            infer(session, &features).map_err(|e| bad(format!("it does not run: {e}")))?;
        }
        Ok(EndOfTurn { sessions: Mutex::new(sessions), free: Arc::new(Semaphore::new(workers)), workers })
    }

    /// How many inferences may run at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The probability that the caller's turn is complete, from their audio so far (16 kHz; only
    /// the last 8 s are heard). Waits for a free worker, then runs on the blocking pool.
    pub async fn probability(self: &Arc<Self>, audio_16k: &[i16]) -> Result<f32, EndOfTurnError> {
        let permit = self.free.clone().acquire_owned().await.map_err(|_| EndOfTurnError::Closed)?;
        self.run(permit, audio_16k).await
    }

    /// [`probability`](Self::probability) if a worker is free right now, else `None` at once
    /// (every worker is busy with other calls: use the silence rule for this pause).
    pub async fn probability_if_free(self: &Arc<Self>, audio_16k: &[i16]) -> Option<Result<f32, EndOfTurnError>> {
        let permit = self.free.clone().try_acquire_owned().ok()?;
        Some(self.run(permit, audio_16k).await)
    }

    async fn run(
        self: &Arc<Self>,
        permit: tokio::sync::OwnedSemaphorePermit,
        audio_16k: &[i16],
    ) -> Result<f32, EndOfTurnError> {
        let last = audio_16k[audio_16k.len().saturating_sub(WINDOW)..].to_vec();
        let core = onnx::core().await;
        let this = self.clone();
        // The permits go with the work: a caller that stops waiting does not free the worker early.
        tokio::task::spawn_blocking(move || {
            let probability = this.run_blocking(&last);
            drop((permit, core));
            probability
        })
        .await
        .map_err(|e| EndOfTurnError::Inference(format!("the inference stopped: {e}")))?
    }

    fn run_blocking(&self, audio_16k: &[i16]) -> Result<f32, EndOfTurnError> {
        let started = std::time::Instant::now();
        let samples: Vec<f32> = audio_16k.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let features = log_mel(&samples);
        let mut session = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.pop().ok_or(EndOfTurnError::Closed)?
        };
        let probability = infer(&mut session, &features);
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).push(session);
        metrics::histogram!("vocode_end_of_turn_seconds").record(started.elapsed().as_secs_f64());
        probability.map_err(|e| EndOfTurnError::Inference(e.to_string()))
    }
}

fn infer(session: &mut Session, features: &[f32]) -> Result<f32, ort::Error> {
    let input = Tensor::from_array(([1usize, N_MELS, FRAMES], features.to_vec()))?;
    let outputs = session.run(ort::inputs!["input_features" => input])?;
    let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
    // The model's output is already a probability (a sigmoid is its last layer).
    logits.first().copied().ok_or_else(|| ort::Error::new("the model gave no probability"))
}

/// Whisper's log-mel features of the last 8 s of 16 kHz audio in [-1, 1] (shorter audio is heard
/// after silence, as Pipecat pads it): `N_MELS` rows of `FRAMES`, row-major.
pub fn log_mel(audio: &[f32]) -> Vec<f32> {
    // The last 8 s, after zeros.
    let mut x = vec![0.0f32; WINDOW];
    let heard = &audio[audio.len().saturating_sub(WINDOW)..];
    x[WINDOW - heard.len()..].copy_from_slice(heard);

    // Zero mean, unit variance (in f32, as the reference does; the sums in f64).
    let mean = (x.iter().map(|&v| f64::from(v)).sum::<f64>() / WINDOW as f64) as f32;
    let variance = (x.iter().map(|&v| f64::from(v - mean).powi(2)).sum::<f64>() / WINDOW as f64) as f32;
    let scale = (variance + 1e-7).sqrt();
    let x: Vec<f64> = x.iter().map(|&v| f64::from((v - mean) / scale)).collect();

    // Centred frames: reflect-padded by half a window each side.
    let pad = N_FFT / 2;
    let mut padded = Vec::with_capacity(WINDOW + 2 * pad);
    padded.extend((1..=pad).rev().map(|i| x[i]));
    padded.extend_from_slice(&x);
    padded.extend((0..pad).map(|i| x[WINDOW - 2 - i]));

    let (window, filters) = constants();
    let mut planner = RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(N_FFT);
    let mut frame = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let bins = N_FFT / 2 + 1;
    let mut power = vec![0.0f64; bins];
    let mut features = vec![0.0f64; N_MELS * FRAMES];
    for t in 0..FRAMES {
        let start = t * HOP;
        for (i, slot) in frame.iter_mut().enumerate() {
            *slot = padded[start + i] * window[i];
        }
        fft.process_with_scratch(&mut frame, &mut spectrum, &mut scratch).expect("buffers of the planned length");
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.norm_sqr();
        }
        for (m, (first, weights)) in filters.iter().enumerate() {
            let energy: f64 = weights.iter().zip(&power[*first..]).map(|(f, p)| f * p).sum();
            features[m * FRAMES + t] = energy.max(1e-10).log10();
        }
    }
    let floor = features.iter().copied().fold(f64::NEG_INFINITY, f64::max) - 8.0;
    features.iter().map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32).collect()
}

/// A mel filter: its first frequency bin, and its weights from there (it is zero elsewhere).
type Filter = (usize, Vec<f64>);

/// The periodic Hann window and the Slaney mel filters.
fn constants() -> &'static (Vec<f64>, Vec<Filter>) {
    static CONSTANTS: OnceLock<(Vec<f64>, Vec<Filter>)> = OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let window =
            (0..N_FFT).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()).collect();
        (window, mel_filters())
    })
}

fn hertz_to_mel(hz: f64) -> f64 {
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * 27.0 / 6.4f64.ln()
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hertz(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * (6.4f64.ln() / 27.0 * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Triangular filters evenly spaced on the Slaney mel scale from 0 to 8 kHz, each normalised to
/// unit area (Transformers' `mel_filter_bank(norm="slaney", mel_scale="slaney")`), each kept as
/// the few bins it covers.
fn mel_filters() -> Vec<Filter> {
    let bins = N_FFT / 2 + 1;
    let (low, high) = (hertz_to_mel(0.0), hertz_to_mel(SAMPLE_RATE as f64 / 2.0));
    let edges: Vec<f64> =
        (0..N_MELS + 2).map(|i| mel_to_hertz(low + (high - low) * i as f64 / (N_MELS + 1) as f64)).collect();
    let nyquist = (SAMPLE_RATE / 2) as f64;
    (0..N_MELS)
        .map(|m| {
            let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
            let area = 2.0 / (right - left);
            let weights: Vec<f64> = (0..bins)
                .map(|k| {
                    let hz = nyquist * k as f64 / (bins - 1) as f64;
                    let down = (hz - left) / (centre - left);
                    let up = (right - hz) / (right - centre);
                    down.min(up).max(0.0) * area
                })
                .collect();
            let first = weights.iter().position(|w| *w > 0.0).unwrap_or(0);
            let last = weights.iter().rposition(|w| *w > 0.0).unwrap_or(0);
            (first, weights[first..=last.max(first)].to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test signal, made of integers only so that numpy makes exactly the same: a sawtooth
    /// with a little pseudo-random noise, 1.5 s at 16 kHz.
    fn signal() -> Vec<f32> {
        let mut seed: u32 = 12_345;
        (0..24_000u32)
            .map(|i| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let noise = ((seed >> 16) % 1_001) as i32 - 500;
                let saw = ((i * 37) % 400) as i32 * 40 - 8_000;
                (saw + noise) as f32 / 32768.0
            })
            .collect()
    }

    #[test]
    fn features_match_pipecats_numpy_extractor() {
        // From `compute_whisper_log_mel_features` (pipecat-ai 1.14.0's `_whisper_features.py`)
        // with numpy 2.4 on the same signal, padded at the front to 8 s as Pipecat does:
        // (mel band, frame) -> value.
        let features = log_mel(&signal());
        assert_eq!(features.len(), N_MELS * FRAMES);
        let at = |m: usize, t: usize| features[m * FRAMES + t];
        for ((m, t), expected) in REFERENCE {
            let got = at(m, t);
            assert!((got - expected).abs() < 2e-3, "band {m}, frame {t}: {got} != {expected}");
        }
        let mean = features.iter().sum::<f32>() / features.len() as f32;
        assert!((mean - REFERENCE_MEAN).abs() < 1e-3, "mean {mean} != {REFERENCE_MEAN}");
    }

    #[test]
    fn silence_is_features_without_nans() {
        let features = log_mel(&[]);
        assert!(features.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 300.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(hz)) - hz).abs() < 1e-6);
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("no-smart-turn-{}", std::process::id()));
        let Err(err) = EndOfTurn::shared(&dir, 1) else { panic!("loaded from nothing") };
        assert!(err.to_string().contains("install-speech"), "{err}");
    }

    const REFERENCE_MEAN: f32 = 0.029_999_154;
    const REFERENCE: [((usize, usize), f32); 15] = [
        ((0, 0), 0.2764223),
        ((0, 799), 0.597_988),
        ((5, 100), -0.2236417),
        ((10, 700), 0.9583771),
        ((20, 760), 0.8662896),
        ((30, 799), 1.2163515),
        ((40, 725), 1.2033244),
        ((50, 780), 0.9802154),
        ((60, 790), 0.9953575),
        ((70, 750), 1.094_327),
        ((79, 799), 1.0699678),
        ((79, 0), -0.2236417),
        ((3, 745), 0.9946725),
        ((45, 705), 1.0618684),
        ((25, 650), 1.1820578),
    ];
}
