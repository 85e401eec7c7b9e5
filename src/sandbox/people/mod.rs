//! The sandbox's people: whoever answers a sandbox call, on the line of its media stream.
//!
//! - **Who.** The number dialled chooses the scenario ([`scenario`]): a machine, a person who
//!   talks, barges in, backchannels, asks for a person, or stays silent.
//! - **Speaking** ([`mouth`]). Recorded phrases ([`phrases`]) sent as 20 ms frames paced by the
//!   clock (scaled by the sandbox's `time_scale`), silence in between; Vonage streams get them as
//!   16 kHz L16 through the engine's own codecs and resampler. What the person says, and when its
//!   audio starts and ends, goes into the call's side channel, which the stand-in speech-to-text
//!   reads and tests can inspect. A scripted person ([`Sandbox::script`]) says their sentences
//!   with the local flite voice instead, with background noise on their line (`SANDBOX_NOISE`).
//! - **Listening** ([`ears`], [`playout`]). The bot's audio is queued and played out in real
//!   time, as a carrier does; marks come back once the audio before them has played, a `clear`
//!   drops what is queued. What plays tells when the bot talks and when it stopped, which the
//!   person's script waits on; with the local recogniser installed, they make out what it said.
//! - **The line** ([`line`]). Both sides, as heard on it, go into the call's recording; what
//!   happened on it is the [`LineReport`].
//!
//! [`converse`] runs one person on one call, step by step.
//!
//! [`Sandbox::script`]: crate::sandbox::Sandbox::script

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::conversation::local::LocalSpeech;
use crate::conversation::tts::flite::{self, Flite};

mod converse;
mod ears;
mod line;
mod mouth;
mod phrases;
mod playout;
mod scenario;

pub use converse::converse;
use ears::Heard;
pub use line::{Line, LineReport};
pub use mouth::Mouth;
pub use scenario::Scenario;

/// A 20 ms frame at 8 kHz.
const FRAME: usize = 160;
/// A frame louder than this (RMS, of 32767) is somebody talking.
const TALKING_RMS: f32 = 300.0;
/// How long after the bot stopped the person answers (scaled).
const ANSWER_AFTER_S: f64 = 0.3;

/// The people of a sandbox: how they speak and listen, what some of them are scripted to say,
/// and the lines of the calls they are on.
pub struct People {
    time_scale: f64,
    /// The local recogniser and voice, when installed: the people listen and speak with them.
    local: Arc<LocalSpeech>,
    /// Whether the people make out the bot with the local recogniser.
    listen: bool,
    /// Background noise on the people's lines (RMS).
    noise: f32,
    /// What the people at some numbers say instead of their scenario's phrases, by the number's
    /// digits.
    scripts: Mutex<HashMap<String, Vec<String>>>,
    /// The lines of calls, by the server's call id.
    lines: Mutex<HashMap<String, Arc<Line>>>,
}

impl People {
    /// People who speak their recorded phrases and make out nothing of the bot.
    pub fn new(time_scale: f64) -> People {
        People {
            time_scale,
            local: Arc::new(LocalSpeech::none()),
            listen: false,
            noise: 0.0,
            scripts: Mutex::default(),
            lines: Mutex::default(),
        }
    }

    /// The people speak (scripted sentences) with the local voice and, when `listen`, make out
    /// the bot with the local recogniser; `noise` (RMS) is mixed into what they send.
    pub fn with_speech(self, local: Arc<LocalSpeech>, listen: bool, noise: f32) -> People {
        let noise = if noise.is_finite() { noise.clamp(0.0, 10_000.0) } else { 0.0 };
        People { local, listen, noise, ..self }
    }

    /// A new call's line; the person on it listens with the local recogniser if they can.
    pub fn new_line(&self) -> Arc<Line> {
        let ears = (self.listen && self.local.recognizer_available()).then(|| self.local.clone());
        Arc::new(Line::new(self.time_scale, ears))
    }

    /// From now on, the person who answers `number` says `sentences`.
    pub fn script(&self, number: &str, sentences: Vec<String>) {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        self.scripts.lock().unwrap_or_else(|e| e.into_inner()).insert(digits, sentences);
    }

    /// How the person who answers `number` speaks: their script with the local voice, when they
    /// have one and it is installed.
    pub fn mouth(&self, number: &str, call_id: &str) -> Mouth {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        let script = self.scripts.lock().unwrap_or_else(|e| e.into_inner()).get(&digits).cloned();
        let voice = match (&script, self.local.flite()) {
            (Some(_), Some(program)) => Flite::new(program, flite::DEFAULT_VOICE).ok(),
            (Some(_), None) => {
                tracing::warn!(call = %call_id, "no local voice installed: the person says their scenario's lines instead");
                None
            }
            _ => None,
        };
        Mouth { noise: self.noise, script: script.filter(|_| voice.is_some()), voice }
    }

    /// Keeps a call's line under the server's id of the call, for [`line`](Self::line).
    pub fn keep_line(&self, server_call_id: &str, line: Arc<Line>) {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).insert(server_call_id.to_owned(), line);
    }

    /// The line of a call, by the server's id of the call.
    pub fn line(&self, server_call_id: &str) -> Option<Arc<Line>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).get(server_call_id).cloned()
    }
}

/// A person on a call: what they are about to say, what they hear, and their part.
struct Person {
    /// The audio (8 kHz) of what they are saying, still to go out.
    to_say: Mutex<VecDeque<i16>>,
    heard: watch::Sender<Heard>,
    line: Arc<Line>,
    time_scale: f64,
    script: Option<Vec<String>>,
    voice: Option<Flite>,
}

impl Person {
    fn scaled(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds * self.time_scale)
    }

    /// How long the person waits for a greeting (there may be none): the scenario's time, but
    /// never so little that a server in a hurry-up test has no time to speak at all.
    fn patience(&self, seconds: f64) -> Duration {
        self.scaled(seconds).max(Duration::from_millis(2_500))
    }

    /// How long the person waits for the bot to answer them: it will, so the wait is generous
    /// (a busy machine may take a while), and it ends as soon as the bot speaks.
    fn patience_for_answer(&self, seconds: f64) -> Duration {
        self.scaled(seconds).max(Duration::from_secs(8))
    }
}
