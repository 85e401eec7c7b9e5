//! The server's own speech, on the machine itself: what `scripts/install-speech` installed, found
//! at start-up. The recogniser (Moonshine, [`super::stt::moonshine`]), the voice-activity model
//! (Silero, [`super::vad::silero`]) and the end-of-turn model (Smart Turn,
//! [`super::end_of_turn`]) are in `SPEECH_DIR`; the voice is Debian's `flite` program
//! ([`super::tts::flite`]). None is needed: without them the server runs as before (voice
//! activity by loudness, the end of a turn by the silence rule), and says (in the start-up log and
//! on `/ready`) what is active and how to install the rest. A model whose files are present but
//! unusable (truncated, tampered) is disabled with one log line when it fails to load; it never
//! takes the server down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::end_of_turn::{self, EndOfTurn};
use super::stt::moonshine::{self, Recognizer};
use super::vad::detector::VoiceActivity;
use super::vad::silero::{self, Silero};

/// How to install the local speech, for the messages that mention it.
pub const INSTALL: &str = "scripts/install-speech";

/// What this server has of its own speech.
pub struct LocalSpeech {
    dir: Option<PathBuf>,
    /// Why the recogniser's files are not all there, if they are not.
    absent: Option<String>,
    recognizer: OnceCell<Result<Arc<Recognizer>, String>>,
    failed: AtomicBool,
    workers: usize,
    flite: Option<PathBuf>,
    /// The voice-activity model: why its files are not all there, and the model once loaded.
    vad_absent: Option<String>,
    vad: OnceCell<Result<Arc<Silero>, String>>,
    /// The end-of-turn model, likewise.
    turn_absent: Option<String>,
    turn: OnceCell<Result<Arc<EndOfTurn>, String>>,
}

/// Why some of `files` are not in `dir`, if they are not.
fn lacking(dir: &Path, files: &[&str]) -> Option<String> {
    let missing: Vec<&str> = files.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    (!missing.is_empty()).then(|| format!("{} lacks {}", dir.display(), missing.join(", ")))
}

impl LocalSpeech {
    /// No local speech (tests of the rest, and servers told not to look).
    pub fn none() -> LocalSpeech {
        LocalSpeech {
            dir: None,
            absent: Some("no SPEECH_DIR".into()),
            recognizer: OnceCell::new(),
            failed: AtomicBool::new(false),
            workers: 1,
            flite: None,
            vad_absent: Some("no SPEECH_DIR".into()),
            vad: OnceCell::new(),
            turn_absent: Some("no SPEECH_DIR".into()),
            turn: OnceCell::new(),
        }
    }

    /// What `dir` holds, and whether `flite` is on the `PATH`; cheap (no model is loaded yet).
    /// `workers`: how many transcriptions may run at once.
    pub fn discover(dir: Option<&Path>, workers: usize) -> LocalSpeech {
        let Some(dir) = dir else { return LocalSpeech::none() };
        LocalSpeech {
            dir: Some(dir.to_owned()),
            absent: lacking(dir, &moonshine::FILES),
            recognizer: OnceCell::new(),
            failed: AtomicBool::new(false),
            workers: workers.max(1),
            flite: find_program("flite"),
            vad_absent: lacking(dir, &silero::FILES),
            vad: OnceCell::new(),
            turn_absent: lacking(dir, &end_of_turn::FILES),
            turn: OnceCell::new(),
        }
    }

    /// As if installed in `dir` (recogniser files present, not yet loaded) with `flite` at this
    /// path: for tests of provider selection, which never load the models.
    pub fn assumed(dir: &Path, flite: Option<&Path>) -> LocalSpeech {
        LocalSpeech { absent: None, flite: flite.map(Path::to_owned), ..LocalSpeech::discover(Some(dir), 1) }
    }

    /// Whether the local recogniser can be used: installed, and not found broken.
    pub fn recognizer_available(&self) -> bool {
        self.absent.is_none() && !self.failed.load(Ordering::SeqCst)
    }

    /// The `flite` program, when installed.
    pub fn flite(&self) -> Option<&Path> {
        self.flite.as_deref()
    }

    /// The shared recogniser, loaded on first use (on the blocking pool). A failure is logged
    /// once, and disables it for the rest of the process's life.
    pub async fn recognizer(&self) -> Result<Arc<Recognizer>, String> {
        if let Some(absent) = &self.absent {
            return Err(format!("the local speech-to-text is not installed ({absent}): run {INSTALL}"));
        }
        let dir = self.dir.clone().expect("a folder when installed");
        let workers = self.workers;
        self.recognizer
            .get_or_init(|| async move {
                let loaded = tokio::task::spawn_blocking(move || Recognizer::shared(&dir, workers))
                    .await
                    .map_err(|e| format!("loading stopped: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match &loaded {
                    Ok(_) => tracing::info!(workers, "local speech-to-text loaded (Moonshine tiny-en)"),
                    Err(reason) => {
                        self.failed.store(true, Ordering::SeqCst);
                        tracing::error!(%reason, "the local speech-to-text is disabled: reinstall it with {INSTALL}");
                    }
                }
                loaded
            })
            .await
            .clone()
    }

    /// How each call stream tells speech from the rest: the Silero model (loaded on first use, on
    /// the blocking pool), or loudness when it is not installed or failed to load (said once: in
    /// the start-up log when it is not installed, when it fails otherwise).
    pub async fn voice_activity(&self) -> VoiceActivity {
        if self.vad_absent.is_some() {
            return VoiceActivity::Energy;
        }
        let dir = self.dir.clone().expect("a folder when installed");
        let loaded =
            load_once(&self.vad, "voice-activity detection (Silero VAD)", "loudness decides instead", move || {
                Silero::shared(&dir)
            })
            .await;
        match loaded {
            Ok(model) => VoiceActivity::Silero(model.clone()),
            Err(_) => VoiceActivity::Energy,
        }
    }

    /// The end-of-turn model (loaded on first use, on the blocking pool), or `None` when it is not
    /// installed or failed to load: then the silence rule ends turns (said once, as for
    /// [`voice_activity`](Self::voice_activity)).
    pub async fn end_of_turn(&self) -> Option<Arc<EndOfTurn>> {
        if self.turn_absent.is_some() {
            return None;
        }
        let dir = self.dir.clone().expect("a folder when installed");
        let workers = self.workers;
        let loaded = load_once(
            &self.turn,
            "the end-of-turn model (Smart Turn v3.2)",
            "the silence rule ends turns",
            move || EndOfTurn::shared(&dir, workers),
        )
        .await;
        loaded.as_ref().ok().cloned()
    }

    /// Loads the models now, in the background, so that the first call does not wait (and a
    /// broken install shows in the log at start-up).
    pub fn warm_up(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            if this.absent.is_none() {
                let _ = this.recognizer().await;
            }
            this.voice_activity().await;
            this.end_of_turn().await;
        });
    }

    /// One line for the start-up log.
    pub fn log_startup(&self, deepgram: bool) {
        let stt = match (deepgram, self.recognizer_available()) {
            (true, _) => "Deepgram".to_owned(),
            (false, true) => "local (Moonshine tiny-en)".to_owned(),
            (false, false) => format!("none (set DEEPGRAM_API_KEY, or run {INSTALL} for the local one)"),
        };
        let voice = match &self.flite {
            Some(path) => format!("local flite ({}) for voice_vocode, plus any configured cloud voice", path.display()),
            None => format!("cloud voices only (run {INSTALL} for the local flite voice)"),
        };
        tracing::info!(speech_to_text = %stt, voices = %voice, "speech providers");
        let vad = match &self.vad_absent {
            None => "Silero VAD".to_owned(),
            Some(absent) => format!("loudness ({absent}: run {INSTALL} for Silero VAD)"),
        };
        let turn = match &self.turn_absent {
            None => "Smart Turn v3.2, the silence rule as fallback".to_owned(),
            Some(absent) => format!("the silence rule ({absent}: run {INSTALL} for Smart Turn v3.2)"),
        };
        tracing::info!(voice_activity = %vad, end_of_turn = %turn, "turn-taking models");
    }

    /// What `/ready` says of the local speech, as the server's settings use it: `VAD=energy` and
    /// `END_OF_TURN_MODEL=off` turn installed models off, and it says so.
    pub fn status_as_set(&self, deepgram: bool, silero_vad: bool, end_of_turn_model: bool) -> Value {
        let mut status = self.status(deepgram);
        if !silero_vad {
            status["voice_activity"] = json!({"detector": "energy", "reason": "turned off (VAD=energy)"});
        }
        if !end_of_turn_model {
            status["end_of_turn"] =
                json!({"active": false, "rule": "silence", "reason": "turned off (END_OF_TURN_MODEL=off)"});
        }
        status
    }

    /// What `/ready` says of the local speech, with every installed model in use.
    pub fn status(&self, deepgram: bool) -> Value {
        let recognizer = if self.failed.load(Ordering::SeqCst) {
            json!({"active": false, "reason": format!("its files failed to load: reinstall with {INSTALL}")})
        } else if let Some(absent) = &self.absent {
            json!({"active": false, "reason": format!("not installed ({absent}): run {INSTALL}")})
        } else {
            json!({"active": !deepgram, "installed": true, "model": "moonshine tiny-en",
                   "loaded": self.recognizer.get().is_some_and(Result::is_ok)})
        };
        let voice = match &self.flite {
            Some(_) => json!({"active": true, "engine": "flite", "voices": super::tts::flite::VOICES}),
            None => json!({"active": false, "reason": format!("flite is not installed: run {INSTALL}")}),
        };
        fn failed<T>(cell: &OnceCell<Result<T, String>>) -> bool {
            cell.get().is_some_and(Result::is_err)
        }
        fn loaded<T>(cell: &OnceCell<Result<T, String>>) -> bool {
            cell.get().is_some_and(Result::is_ok)
        }
        let voice_activity = match &self.vad_absent {
            _ if failed(&self.vad) => json!({"detector": "energy",
                "reason": format!("the Silero model failed to load: reinstall with {INSTALL}")}),
            Some(absent) => {
                json!({"detector": "energy", "reason": format!("Silero is not installed ({absent}): run {INSTALL}")})
            }
            None => {
                json!({"detector": "silero", "installed": true, "model": "silero vad 6.2.3", "loaded": loaded(&self.vad)})
            }
        };
        let end_of_turn = match &self.turn_absent {
            _ if failed(&self.turn) => json!({"active": false, "rule": "silence",
                "reason": format!("its model failed to load: reinstall with {INSTALL}")}),
            Some(absent) => {
                json!({"active": false, "rule": "silence", "reason": format!("not installed ({absent}): run {INSTALL}")})
            }
            None => json!({"active": true, "installed": true, "model": "smart-turn v3.2", "loaded": loaded(&self.turn),
                           "threshold": end_of_turn::THRESHOLD}),
        };
        json!({"speech_to_text": if deepgram { "deepgram" } else if self.recognizer_available() { "local" } else { "none" },
               "local_speech_to_text": recognizer, "local_voice": voice,
               "voice_activity": voice_activity, "end_of_turn": end_of_turn})
    }
}

/// A turn-taking model in `cell`, loaded on the blocking pool the first time; its failure logged
/// once, with what takes its place.
async fn load_once<'a, T: Send + Sync + 'static>(
    cell: &'a OnceCell<Result<Arc<T>, String>>,
    what: &'static str,
    instead: &'static str,
    load: impl FnOnce() -> Result<Arc<T>, super::onnx::ModelError> + Send + 'static,
) -> &'a Result<Arc<T>, String> {
    cell.get_or_init(|| async move {
        let loaded = tokio::task::spawn_blocking(load)
            .await
            .map_err(|e| format!("loading stopped: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match &loaded {
            Ok(_) => tracing::info!("{what} loaded"),
            Err(reason) => tracing::error!(%reason, "{what} is disabled, {instead}: reinstall it with {INSTALL}"),
        }
        loaded
    })
    .await
}

/// A program on the `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_the_files_the_recogniser_is_unavailable_and_says_how_to_install_it() {
        let speech = LocalSpeech::discover(Some(Path::new("/nonexistent/speech")), 2);
        assert!(!speech.recognizer_available());
        let err = speech.recognizer().await.err().unwrap();
        assert!(err.contains(INSTALL) && err.contains("tiny-en/encoder_model.ort"), "{err}");
        let status = speech.status(false);
        assert_eq!(status["speech_to_text"], "none");
        assert_eq!(status["local_speech_to_text"]["active"], false);
        assert!(!LocalSpeech::none().recognizer_available());
    }

    #[tokio::test]
    async fn a_corrupt_model_disables_the_recogniser_without_a_crash() {
        let dir = std::env::temp_dir().join(format!("corrupt-speech-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tiny-en")).unwrap();
        for file in moonshine::FILES {
            std::fs::write(dir.join(file), b"not what it should be").unwrap();
        }
        let speech = LocalSpeech::discover(Some(&dir), 1);
        assert!(speech.recognizer_available(), "the files are there");
        assert!(speech.recognizer().await.is_err());
        assert!(!speech.recognizer_available(), "found broken: disabled");
        assert_eq!(speech.status(false)["local_speech_to_text"]["active"], false);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn without_the_turn_taking_models_loudness_and_the_silence_rule_take_over() {
        let speech = LocalSpeech::discover(Some(Path::new("/nonexistent/speech")), 2);
        assert_eq!(speech.voice_activity().await.name(), "energy");
        assert!(speech.end_of_turn().await.is_none());
        let status = speech.status(true);
        assert_eq!(status["voice_activity"]["detector"], "energy", "{status}");
        assert!(status["voice_activity"]["reason"].as_str().unwrap().contains(INSTALL), "{status}");
        assert_eq!(status["end_of_turn"]["active"], false, "{status}");
        assert_eq!(status["end_of_turn"]["rule"], "silence", "{status}");
        assert_eq!(LocalSpeech::none().voice_activity().await.name(), "energy");
    }

    #[test]
    fn models_turned_off_are_reported_off_installed_or_not() {
        let dir = std::env::temp_dir().join(format!("installed-turn-models-{}", std::process::id()));
        for file in silero::FILES.iter().chain(&end_of_turn::FILES) {
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(dir.join(file), b"present").unwrap();
        }
        let speech = LocalSpeech::discover(Some(&dir), 1);
        let on = speech.status_as_set(false, true, true);
        assert_eq!(on["voice_activity"]["detector"], "silero", "{on}");
        assert_eq!(on["end_of_turn"]["active"], true, "{on}");
        let off = speech.status_as_set(false, false, false);
        assert_eq!(off["voice_activity"]["detector"], "energy", "{off}");
        assert!(off["voice_activity"]["reason"].as_str().unwrap().contains("VAD=energy"), "{off}");
        assert_eq!(off["end_of_turn"]["active"], false, "{off}");
        assert_eq!(off["end_of_turn"]["rule"], "silence", "{off}");
        assert!(off["end_of_turn"]["reason"].as_str().unwrap().contains("END_OF_TURN_MODEL=off"), "{off}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn corrupt_turn_taking_models_are_disabled_without_a_crash() {
        let dir = std::env::temp_dir().join(format!("corrupt-turn-models-{}", std::process::id()));
        for file in silero::FILES.iter().chain(&end_of_turn::FILES) {
            std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
            std::fs::write(dir.join(file), b"not what it should be").unwrap();
        }
        let speech = LocalSpeech::discover(Some(&dir), 1);
        assert_eq!(speech.status(false)["voice_activity"]["detector"], "silero", "installed, not yet loaded");
        assert_eq!(speech.voice_activity().await.name(), "energy");
        assert!(speech.end_of_turn().await.is_none());
        let status = speech.status(false);
        assert!(status["voice_activity"]["reason"].as_str().unwrap().contains("failed to load"), "{status}");
        assert!(status["end_of_turn"]["reason"].as_str().unwrap().contains("failed to load"), "{status}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
