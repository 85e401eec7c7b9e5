//! Silero VAD, the neural voice-activity detector: the probability that a window of audio is
//! speech. The model (`silero_vad.onnx` from the `silero-vad` 6.2.3 wheel, MIT; its licence is
//! installed beside it) is a file in `SPEECH_DIR` that `scripts/install-speech` puts there, run by
//! the ONNX Runtime the local recogniser already loads. It hears 8 kHz audio in windows of 256
//! samples and 16 kHz audio in windows of 512 (32 ms either way), each with the last 32 or 64
//! samples of the window before as context, and carries a recurrent state from one window to the
//! next: each call's stream keeps its own context and state ([`super::detector`]); the model is
//! shared.
//!
//! One run of the model per window costs about 100 µs, mostly ONNX Runtime's fixed cost per run;
//! the same run over the windows of many calls costs a fraction of that per window. So one worker
//! thread runs the model for every call of the process, taking each time every window that is
//! waiting (at most [`MAX_BATCH`]), one batch per sample rate: quiet, a call's window runs alone
//! at once; busy, the windows that queued during a run go together in the next. The async side
//! only sends a window and awaits its answer; the runtime never runs the model.

use std::path::Path;
use std::sync::{mpsc, Arc};

use ort::session::Session;
use ort::value::Tensor;
use tokio::sync::oneshot;

pub use crate::conversation::onnx::ModelError as SileroError;
use crate::conversation::onnx::{self, bad_model, Loaded};
use crate::conversation::stt::moonshine;

/// The model, in `SPEECH_DIR`.
pub const MODEL: &str = "silero/silero_vad.onnx";
/// The files the detector needs, relative to `SPEECH_DIR`.
pub const FILES: [&str; 2] = [moonshine::RUNTIME, MODEL];

/// The most windows run together.
pub const MAX_BATCH: usize = 512;

/// The recurrent state carried between a stream's windows: two layers of 128.
pub const STATE: usize = 2 * 128;

/// What a window gives: its probability of speech, and the stream's state after it.
pub type Heard = (f32, Box<[f32; STATE]>);

/// The sample rates the model hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rate {
    /// 8 kHz: a telephone line's μ-law, heard without upsampling.
    Narrow,
    /// 16 kHz.
    Wide,
}

impl Rate {
    pub fn hz(self) -> u32 {
        match self {
            Rate::Narrow => 8_000,
            Rate::Wide => 16_000,
        }
    }

    /// New samples in one window (32 ms).
    pub fn window(self) -> usize {
        match self {
            Rate::Narrow => 256,
            Rate::Wide => 512,
        }
    }

    /// Samples of the window before that the model hears with each window.
    pub fn context(self) -> usize {
        match self {
            Rate::Narrow => 32,
            Rate::Wide => 64,
        }
    }
}

/// A window to hear: the context and the window's samples in [-1, 1], and the stream's state.
struct Request {
    rate: Rate,
    input: Vec<f32>,
    state: Box<[f32; STATE]>,
    reply: oneshot::Sender<Result<Heard, String>>,
}

/// The shared detector: a queue to the worker thread that runs the model.
pub struct Silero {
    requests: mpsc::Sender<Request>,
}

/// Detectors loaded in this process, by folder.
static LOADED: Loaded<Silero> = Loaded::new(None);

impl Silero {
    /// The detector of `dir`, loaded (blocking: a few milliseconds) unless this process has
    /// loaded it already.
    pub fn shared(dir: &Path) -> Result<Arc<Silero>, SileroError> {
        onnx::shared(&LOADED, dir, || Silero::load(dir))
    }

    fn load(dir: &Path) -> Result<Silero, SileroError> {
        let mut session = onnx::session(dir, &FILES, MODEL)?;
        let path = dir.join(MODEL);
        let bad = |message: String| bad_model(&path, message);
        // A model that loads but does not answer (another model's file) is found out now.
        for rate in [Rate::Narrow, Rate::Wide] {
            let input = vec![0.0; rate.context() + rate.window()];
            run(&mut session, rate, &[(&input, &[0.0; STATE])]).map_err(|e| bad(format!("it does not run: {e}")))?;
        }
        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("silero-vad".into())
            .spawn(move || serve(session, queue))
            .map_err(|e| bad(format!("no thread to run it: {e}")))?;
        Ok(Silero { requests })
    }

    /// The probability that `input` (the context, then one window, at `rate`) is speech, and the
    /// stream's state after it. Waits for the worker, which may be running other calls' windows.
    pub async fn infer(&self, rate: Rate, input: Vec<f32>, state: Box<[f32; STATE]>) -> Result<Heard, SileroError> {
        assert_eq!(input.len(), rate.context() + rate.window(), "one window and its context");
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { rate, input, state, reply }).map_err(|_| SileroError::Closed)?;
        answer.await.map_err(|_| SileroError::Closed)?.map_err(SileroError::Inference)
    }
}

/// The worker: every window waiting, run together, until every [`Silero`] is dropped.
fn serve(mut session: Session, queue: mpsc::Receiver<Request>) {
    while let Ok(first) = queue.recv() {
        let mut waiting = vec![first];
        while waiting.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => waiting.push(request),
                Err(_) => break,
            }
        }
        metrics::histogram!("vocode_vad_batch_windows").record(waiting.len() as f64);
        for rate in [Rate::Narrow, Rate::Wide] {
            let (batch, rest): (Vec<Request>, Vec<Request>) = waiting.into_iter().partition(|r| r.rate == rate);
            waiting = rest;
            if batch.is_empty() {
                continue;
            }
            let windows: Vec<(&[f32], &[f32; STATE])> = batch.iter().map(|r| (&r.input[..], &*r.state)).collect();
            match run(&mut session, rate, &windows) {
                Ok(heard) => {
                    for (request, (probability, state)) in batch.into_iter().zip(heard) {
                        let _ = request.reply.send(Ok((probability, state)));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for request in batch {
                        let _ = request.reply.send(Err(message.clone()));
                    }
                }
            }
        }
    }
}

/// One run of the model over windows of one rate: each window's probability and new state.
fn run(session: &mut Session, rate: Rate, windows: &[(&[f32], &[f32; STATE])]) -> Result<Vec<Heard>, ort::Error> {
    let batch = windows.len();
    let width = rate.context() + rate.window();
    let mut input = Vec::with_capacity(batch * width);
    // The state's shape is [2, batch, 128]: each layer holds every stream's row.
    let mut state = vec![0.0f32; STATE * batch];
    for (i, (samples, own)) in windows.iter().enumerate() {
        input.extend_from_slice(samples);
        for layer in 0..2 {
            state[(layer * batch + i) * 128..][..128].copy_from_slice(&own[layer * 128..][..128]);
        }
    }
    let outputs = session.run(ort::inputs![
        "input" => Tensor::from_array(([batch, width], input))?,
        "state" => Tensor::from_array(([2usize, batch, 128], state))?,
        "sr" => Tensor::from_array(((), vec![i64::from(rate.hz())]))?,
    ])?;
    let (_, probabilities) = outputs["output"].try_extract_tensor::<f32>()?;
    let (_, states) = outputs["stateN"].try_extract_tensor::<f32>()?;
    if probabilities.len() != batch || states.len() != STATE * batch {
        return Err(ort::Error::new("the model's outputs have an unexpected shape"));
    }
    Ok((0..batch)
        .map(|i| {
            let mut own = Box::new([0.0f32; STATE]);
            for layer in 0..2 {
                own[layer * 128..][..128].copy_from_slice(&states[(layer * batch + i) * 128..][..128]);
            }
            (probabilities[i], own)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_32_ms_at_either_rate() {
        for rate in [Rate::Narrow, Rate::Wide] {
            assert_eq!(rate.window() * 1000 / rate.hz() as usize, 32);
            assert_eq!(rate.context() * 8, rate.window());
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("no-silero-{}", std::process::id()));
        let Err(err) = Silero::shared(&dir) else { panic!("loaded from nothing") };
        assert!(err.to_string().contains("install-speech"), "{err}");
    }
}
