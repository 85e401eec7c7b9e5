//! What the small models run by ONNX Runtime share — the voice-activity detector
//! ([`super::vad::silero`]) and the end-of-turn model ([`super::end_of_turn`]): their errors, their
//! files checked and ONNX Runtime loaded from `SPEECH_DIR`, a single-threaded session, and one
//! instance per folder for the whole process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// One of the machine's cores, held by an inference of the recogniser or of the end-of-turn model
/// while it runs: at most as many run at once as there are cores, and the rest wait their turn
/// (in order). Two calls that pause together have four inferences to run; sharing two cores, each
/// would take twice as long, and both calls would wait for all four; in turn, the first call has
/// its words and verdict in the time of one.
pub(crate) async fn core() -> OwnedSemaphorePermit {
    cores().clone().acquire_owned().await.expect("the cores are never closed")
}

/// [`core`] if one is free now.
pub(crate) fn core_if_free() -> Option<OwnedSemaphorePermit> {
    cores().clone().try_acquire_owned().ok()
}

fn cores() -> &'static Arc<Semaphore> {
    static CORES: OnceLock<Arc<Semaphore>> = OnceLock::new();
    CORES.get_or_init(|| {
        Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inferences_hold_the_machines_cores_one_each() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let mut held = Vec::new();
        for _ in 0..cores {
            held.push(core().await);
        }
        assert!(core_if_free().is_none(), "every core is held");
        let waiting = tokio::spawn(core());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the next waits its turn");
        held.pop();
        let next = waiting.await.expect("it gets the core given back");
        drop(next);
        assert!(core_if_free().is_some());
    }
}
