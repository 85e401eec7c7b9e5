//! What the small models run by ONNX Runtime share — the voice-activity detector
//! ([`super::vad::silero`]) and the end-of-turn model ([`super::end_of_turn`]): their errors, their
//! files checked and ONNX Runtime loaded from `SPEECH_DIR`, a single-threaded session, and one
//! instance per folder for the whole process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::Session;

use super::stt::moonshine;

/// Why a model could not be loaded or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0} is missing (run scripts/install-speech)")]
    Missing(PathBuf),
    #[error(transparent)]
    Runtime(moonshine::MoonshineError),
    #[error("{path} cannot be used: {message}")]
    Model { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the model is shutting down")]
    Closed,
}

/// The session of the model at `dir/model`, once every one of `files` is in `dir` and ONNX
/// Runtime is loaded: one thread, as everything here runs one inference per thread.
pub(crate) fn session(dir: &Path, files: &[&str], model: &str) -> Result<Session, ModelError> {
    for file in files {
        if !dir.join(file).is_file() {
            return Err(ModelError::Missing(dir.join(file)));
        }
    }
    moonshine::load_runtime(&dir.join(moonshine::RUNTIME)).map_err(ModelError::Runtime)?;
    let path = dir.join(model);
    single_threaded(&path).map_err(|e| bad_model(&path, e.to_string()))
}

/// A session of the model in `path` that runs on the calling thread alone.
pub(crate) fn single_threaded(path: &Path) -> Result<Session, ort::Error> {
    Session::builder()?.with_intra_threads(1)?.with_inter_threads(1)?.commit_from_file(path)
}

pub(crate) fn bad_model(path: &Path, message: String) -> ModelError {
    ModelError::Model { path: path.to_owned(), message }
}

/// Models loaded in this process, by folder.
pub(crate) type Loaded<T> = Mutex<Option<HashMap<PathBuf, Arc<T>>>>;

/// The model of `dir` in `loaded`, loaded by `load` unless this process has loaded it already.
pub(crate) fn shared<T>(
    loaded: &Loaded<T>,
    dir: &Path,
    load: impl FnOnce() -> Result<T, ModelError>,
) -> Result<Arc<T>, ModelError> {
    let mut loaded = loaded.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(model) = loaded.get_or_insert_with(HashMap::new).get(dir) {
        return Ok(model.clone());
    }
    let model = Arc::new(load()?);
    loaded.get_or_insert_with(HashMap::new).insert(dir.to_owned(), model.clone());
    Ok(model)
}
