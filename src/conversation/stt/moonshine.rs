//! Moonshine tiny-en, the server's own recogniser: 16 kHz speech in, its words out. The models
//! (ONNX Runtime's `.ort` format, from the `moonshine-voice` 0.0.4 wheel), their tokenizer and
//! ONNX Runtime itself are files in `SPEECH_DIR` that `scripts/install-speech` puts there; ONNX
//! Runtime is loaded from that folder at run time (the `ort` crate's `load-dynamic`), never
//! downloaded.
//!
//! A [`Recognizer`] is loaded once per process and shared by every call. It holds one encoder and
//! decoder pair per worker (each pair is used by one transcription at a time, with one thread),
//! and transcriptions wait for a free pair on the async side and run on the blocking pool: the
//! async runtime never does the inference, and at most as many run at once as there are workers,
//! each holding one of the machine's cores while it runs (`onnx::core`, shared with the
//! end-of-turn model).
//!
//! The decoding is greedy with the decoder's key/value cache, as the reference implementation
//! (`useful-moonshine-onnx`'s `model.py`) does it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::{DynValue, Tensor};
use tokio::sync::Semaphore;

/// The models' files, in `SPEECH_DIR`.
pub const ENCODER: &str = "tiny-en/encoder_model.ort";
pub const DECODER: &str = "tiny-en/decoder_model_merged.ort";
pub const TOKENIZER: &str = "tiny-en/tokenizer.json";
/// ONNX Runtime, in `SPEECH_DIR`.
pub const RUNTIME: &str = "libonnxruntime.so.1.32.0";

/// The files a recogniser needs, relative to `SPEECH_DIR`.
pub const FILES: [&str; 4] = [RUNTIME, ENCODER, DECODER, TOKENIZER];

/// The sample rate the model hears.
pub const SAMPLE_RATE: usize = 16_000;
/// Moonshine takes 0.1 s to 64 s of audio at once.
const SHORTEST: usize = SAMPLE_RATE / 10;
pub const LONGEST: usize = SAMPLE_RATE * 64;

// tiny-en's shape (the reference's constants).
const LAYERS: usize = 6;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 36;
const START_TOKEN: i64 = 1;
const END_TOKEN: i64 = 2;
/// The reference allows 6.5 tokens per second of audio (more is the decoder looping).
const TOKENS_PER_SECOND: f64 = 6.5;

/// Why the recogniser could not be loaded or could not transcribe.
#[derive(Debug, thiserror::Error)]
pub enum MoonshineError {
    #[error("{0} is missing (run scripts/install-speech)")]
    Missing(PathBuf),
    #[error("ONNX Runtime could not be loaded from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("{path} cannot be used: {message}")]
    Model { path: PathBuf, message: String },
    #[error("the tokenizer {path} cannot be read: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the recogniser is shutting down")]
    Closed,
}

fn inference(e: ort::Error) -> MoonshineError {
    MoonshineError::Inference(e.to_string())
}

/// Token ids back to text: the tokenizer's byte-fallback BPE decoder (`▁` is a space, `<0xNN>`
/// tokens are raw bytes, the special tokens are dropped, one leading space is stripped).
pub struct Tokenizer {
    pieces: Vec<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("pieces", &self.pieces.len()).finish()
    }
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Tokenizer, MoonshineError> {
        let bad = |message: String| MoonshineError::Tokenizer { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Tokenizer::from_json(&text).map_err(bad)
    }

    pub fn from_json(text: &str) -> Result<Tokenizer, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let vocab = json["model"]["vocab"].as_object().ok_or("it has no model.vocab")?;
        let mut pieces: Vec<Option<Vec<u8>>> = Vec::new();
        for (piece, id) in vocab {
            let id = id.as_u64().ok_or_else(|| format!("{piece} has no numeric id"))? as usize;
            if id >= 1 << 20 {
                return Err(format!("{piece} has an id out of range: {id}"));
            }
            if pieces.len() <= id {
                pieces.resize(id + 1, None);
            }
            pieces[id] = Some(Self::bytes_of(piece));
        }
        if pieces.len() < 3 {
            return Err("its vocabulary is empty".into());
        }
        // The special tokens say nothing.
        for special in &mut pieces[..3] {
            *special = None;
        }
        Ok(Tokenizer { pieces })
    }

    fn bytes_of(piece: &str) -> Vec<u8> {
        let hex = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')).filter(|h| h.len() == 2);
        if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            return vec![byte];
        }
        piece.replace('\u{2581}', " ").into_bytes()
    }

    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(Some(piece)) = usize::try_from(id).ok().and_then(|id| self.pieces.get(id)) {
                bytes.extend_from_slice(piece);
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        text.strip_prefix(' ').unwrap_or(&text).trim_end().to_owned()
    }
}

/// One encoder and decoder pair: what one transcription at a time uses.
struct Model {
    encoder: Session,
    decoder: Session,
}

impl Model {
    fn load(dir: &Path) -> Result<Model, MoonshineError> {
        let session = |file: &str| -> Result<Session, MoonshineError> {
            let path = dir.join(file);
            crate::conversation::onnx::single_threaded(&path)
                .map_err(|e| MoonshineError::Model { path: path.clone(), message: e.to_string() })
        };
        Ok(Model { encoder: session(ENCODER)?, decoder: session(DECODER)? })
    }

    /// Greedy decoding of 16 kHz samples in [-1, 1]: the token ids, without the start token.
    fn generate(&mut self, audio: &[f32]) -> Result<Vec<i64>, MoonshineError> {
        let samples = audio.len();
        let shape = [1usize, samples];
        let mask = || Tensor::from_array((shape, vec![1i64; samples])).map_err(inference);
        let input = Tensor::from_array((shape, audio.to_vec())).map_err(inference)?;
        let mut encoded =
            self.encoder.run(ort::inputs!["input_values" => input, "attention_mask" => mask()?]).map_err(inference)?;
        let hidden: DynValue =
            encoded.remove("last_hidden_state").ok_or_else(|| inference_missing("last_hidden_state"))?;
        drop(encoded);

        let names: Vec<String> = (0..LAYERS)
            .flat_map(|i| {
                ["decoder", "encoder"]
                    .into_iter()
                    .flat_map(move |a| ["key", "value"].into_iter().map(move |b| format!("{i}.{a}.{b}")))
            })
            .collect();
        let mut cache: Vec<DynValue> = Vec::with_capacity(names.len());
        for _ in &names {
            let empty = Tensor::from_array(([1usize, KV_HEADS, 0, HEAD_DIM], Vec::<f32>::new())).map_err(inference)?;
            cache.push(empty.into_dyn());
        }
        let most = ((samples as f64 / SAMPLE_RATE as f64) * TOKENS_PER_SECOND).ceil() as usize + 10;
        let mut tokens = Vec::new();
        let mut next = START_TOKEN;
        for step in 0..most {
            let with_cache = step > 0;
            let mut inputs: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> = vec![
                ("input_ids".into(), Tensor::from_array(([1usize, 1], vec![next])).map_err(inference)?.into()),
                ("encoder_hidden_states".into(), (&hidden).into()),
                ("encoder_attention_mask".into(), mask()?.into()),
                (
                    "use_cache_branch".into(),
                    Tensor::from_array(([1usize], vec![with_cache])).map_err(inference)?.into(),
                ),
            ];
            for (name, value) in names.iter().zip(&cache) {
                inputs.push((format!("past_key_values.{name}").into(), value.into()));
            }
            let mut outputs = self.decoder.run(inputs).map_err(inference)?;
            let token = {
                let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>().map_err(inference)?;
                let vocabulary = *shape.last().unwrap_or(&0) as usize;
                let last = logits.len().checked_sub(vocabulary).ok_or_else(|| inference_missing("logits"))?;
                argmax(&logits[last..]) as i64
            };
            // The encoder's part of the cache is computed on the first step only.
            for (name, slot) in names.iter().zip(cache.iter_mut()) {
                if !with_cache || name.contains("decoder") {
                    *slot = outputs.remove(format!("present.{name}")).ok_or_else(|| inference_missing(name))?;
                }
            }
            if token == END_TOKEN {
                break;
            }
            tokens.push(token);
            next = token;
        }
        Ok(tokens)
    }
}

fn inference_missing(what: &str) -> MoonshineError {
    MoonshineError::Inference(format!("the model gave no {what}"))
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// ONNX Runtime, loaded once per process (a process has one): from which file, and whether it
/// worked.
static RUNTIME_LOADED: Mutex<Option<(PathBuf, Result<(), String>)>> = Mutex::new(None);

/// Also what the voice-activity and end-of-turn models load ONNX Runtime with.
pub(crate) fn load_runtime(path: &Path) -> Result<(), MoonshineError> {
    let mut loaded = RUNTIME_LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = loaded.get_or_insert_with(|| {
        let outcome = ort::init_from(path).map(|env| {
            env.with_name("vocode-server").commit();
        });
        (path.to_owned(), outcome.map_err(|e| e.to_string()))
    });
    match &outcome.1 {
        Ok(()) => Ok(()),
        Err(message) => Err(MoonshineError::Runtime { path: outcome.0.clone(), message: message.clone() }),
    }
}

/// The shared recogniser: a pool of model pairs.
pub struct Recognizer {
    models: Mutex<Vec<Model>>,
    /// One permit per model pair: held until the pair is back in `models`.
    free: Arc<Semaphore>,
    tokenizer: Tokenizer,
    workers: usize,
}

/// Recognisers loaded in this process, by folder: every call (and every server of a test
/// process) shares one.
static LOADED: Mutex<Option<HashMap<PathBuf, Arc<Recognizer>>>> = Mutex::new(None);

impl Recognizer {
    /// The recogniser of `dir`, loaded (blocking: about a second per worker) unless this process
    /// has loaded it already.
    pub fn shared(dir: &Path, workers: usize) -> Result<Arc<Recognizer>, MoonshineError> {
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(recognizer) = loaded.get_or_insert_with(HashMap::new).get(dir) {
            return Ok(recognizer.clone());
        }
        let recognizer = Arc::new(Recognizer::load(dir, workers)?);
        loaded.get_or_insert_with(HashMap::new).insert(dir.to_owned(), recognizer.clone());
        Ok(recognizer)
    }

    fn load(dir: &Path, workers: usize) -> Result<Recognizer, MoonshineError> {
        for file in FILES {
            if !dir.join(file).is_file() {
                return Err(MoonshineError::Missing(dir.join(file)));
            }
        }
        load_runtime(&dir.join(RUNTIME))?;
        let tokenizer = Tokenizer::load(&dir.join(TOKENIZER))?;
        let workers = workers.max(1);
        let mut models = (0..workers).map(|_| Model::load(dir)).collect::<Result<Vec<_>, _>>()?;
        // A session's first run sets up its memory, and is slower than every later one: done
        // now, not on a caller's first words.
        let warm_up: Vec<f32> = (0..SAMPLE_RATE).map(|i| 0.1 * (i as f32 * 0.07).sin()).collect();
        for model in &mut models {
            model.generate(&warm_up)?;
        }
        Ok(Recognizer { models: Mutex::new(models), free: Arc::new(Semaphore::new(workers)), tokenizer, workers })
    }

    /// How many transcriptions may run at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The words of 16 kHz speech (longer than 64 s: its first 64 s). Waits for a free worker,
    /// then runs on the blocking pool.
    pub async fn transcribe(self: &Arc<Self>, pcm16k: Vec<i16>) -> Result<String, MoonshineError> {
        let permit = self.free.clone().acquire_owned().await.map_err(|_| MoonshineError::Closed)?;
        let core = crate::conversation::onnx::core().await;
        let this = self.clone();
        // The permits go with the work: a caller that stops waiting does not free the pair early.
        tokio::task::spawn_blocking(move || {
            let text = this.transcribe_blocking(&pcm16k);
            drop((permit, core));
            text
        })
        .await
        .map_err(|e| MoonshineError::Inference(format!("the transcription stopped: {e}")))?
    }

    /// [`transcribe`](Self::transcribe) if a worker and a core are free right now, else `None` at
    /// once: for interim results, which must not hold up the finals of other calls when the recogniser is
    /// saturated.
    pub async fn transcribe_if_free(self: &Arc<Self>, pcm16k: Vec<i16>) -> Option<Result<String, MoonshineError>> {
        let permit = self.free.clone().try_acquire_owned().ok()?;
        let core = crate::conversation::onnx::core_if_free()?;
        let this = self.clone();
        let text = tokio::task::spawn_blocking(move || {
            let text = this.transcribe_blocking(&pcm16k);
            drop((permit, core));
            text
        })
        .await
        .map_err(|e| MoonshineError::Inference(format!("the transcription stopped: {e}")));
        Some(text.and_then(|t| t))
    }

    /// [`transcribe`](Self::transcribe), on this thread, holding a permit.
    fn transcribe_blocking(&self, pcm16k: &[i16]) -> Result<String, MoonshineError> {
        if pcm16k.len() < SHORTEST {
            return Ok(String::new());
        }
        let audio: Vec<f32> = pcm16k.iter().take(LONGEST).map(|&s| f32::from(s) / 32768.0).collect();
        let mut model = {
            let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            models.pop().ok_or(MoonshineError::Closed)?
        };
        let tokens = model.generate(&audio);
        self.models.lock().unwrap_or_else(|e| e.into_inner()).push(model);
        Ok(self.tokenizer.decode(&tokens?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_decode_with_byte_fallback_and_without_special_tokens() {
        let json = r#"{"model": {"vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x21>": 3, "<0xC3>": 4, "<0xA9>": 5,
                       "▁Hello": 6, ",": 7, "▁caf": 8, "▁world": 9}}}"#;
        let tokenizer = Tokenizer::from_json(json).unwrap();
        assert_eq!(tokenizer.decode(&[1, 6, 7, 9, 3, 2]), "Hello, world!");
        assert_eq!(tokenizer.decode(&[8, 4, 5]), "café", "bytes fuse into one character");
        assert_eq!(tokenizer.decode(&[0, 99_999, -1]), "", "unknown ids say nothing");
    }

    #[test]
    fn a_bad_tokenizer_is_refused_with_its_reason() {
        assert!(Tokenizer::from_json("{").is_err());
        assert!(Tokenizer::from_json(r#"{"model": {}}"#).unwrap_err().contains("vocab"));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("no-speech-{}", std::process::id()));
        let Err(err) = Recognizer::shared(&dir, 1) else { panic!("loaded from nothing") };
        let err = err.to_string();
        assert!(err.contains("libonnxruntime") && err.contains("install-speech"), "{err}");
    }

    #[test]
    fn argmax_finds_the_largest() {
        assert_eq!(argmax(&[0.1, 3.0, -2.0, 2.9]), 1);
    }
}
