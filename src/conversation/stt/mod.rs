//! Speech-to-text: what the caller says, as it is said. A provider opens a streaming session per
//! call; the engine pushes the call's audio frames in (with what the call's voice-activity
//! detector heard in them) and reads transcription events out, each dated in the session's audio
//! when the provider says where its words were. The session's background task owns the provider
//! connection (keep-alives, reconnects, closing), so the engine's loop never waits on the network.
//!
//! Implementations: [`deepgram`] (Deepgram's live websocket); [`sandbox`], which stands in on the
//! sandbox carrier's simulated calls when no provider is configured; [`local`], the server's own
//! recogniser ([`moonshine`]), used when no cloud provider is configured and it is installed.

pub mod deepgram;
pub mod local;
pub mod moonshine;
pub mod plausible;
pub mod sandbox;

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::audio::Encoding;
use super::vad::detector::SpeechEvent;

pub use deepgram::{Deepgram, DeepgramSettings};

/// How many audio frames may wait for the connection (20 ms frames: about 5 s).
pub const AUDIO_QUEUE_FRAMES: usize = 256;
/// How many events may wait for the engine.
pub const EVENT_QUEUE: usize = 256;

/// What a session listens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttConfig {
    /// The encoding of the frames the engine sends (the carrier's, passed through untouched).
    pub encoding: Encoding,
    /// A BCP-47 language (`en-US`); the provider's default when absent.
    pub language: Option<String>,
    /// Words to listen harder for (Vocode's `keywords`; `word` or `word:boost`).
    pub keywords: Vec<String>,
    /// Silence after speech, in milliseconds, that ends an utterance (`speech_final`); 0 turns
    /// the provider's endpointing off.
    pub endpointing_ms: u32,
    /// The gap after the last finalised word that ends an utterance even in background noise
    /// ([`SttEvent::UtteranceEnd`]).
    pub utterance_end_ms: u32,
    /// The session is told where the caller's speech starts and stops ([`SttInput::Voice`]): a
    /// recogniser that cuts utterances itself (the local one) cuts them there instead.
    pub voice_events: bool,
}

impl SttConfig {
    /// Vocode's defaults: endpointing after 500 ms of silence, utterance end after 1 s.
    pub fn new(encoding: Encoding) -> SttConfig {
        SttConfig {
            encoding,
            language: None,
            keywords: Vec::new(),
            endpointing_ms: 500,
            utterance_end_ms: 1000,
            voice_events: false,
        }
    }
}

/// What a session is given, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttInput {
    /// Audio in the config's encoding.
    Audio(Vec<u8>),
    /// The call's voice-activity detector heard the caller start or stop speaking (positions in
    /// the session's audio, from its first frame). A cloud recogniser is asked to finish the
    /// words it has when the caller stops; the local one cuts its utterances here.
    Voice(SpeechEvent),
    /// The caller, still speaking as the detector has it, has been silent since `at` for a while
    /// (the engine's end-of-turn model hears this pause): a recogniser that can may finish the
    /// words up to here ahead of the stop that may follow at `at` (the local one transcribes
    /// them, and sends them as the final if the stop comes there). Others ignore it.
    Pausing { at: std::time::Duration },
    /// Whether the engine needs interim results now: while the bot speaks (they decide a
    /// barge-in), not while it is silent, when its detector and the finals decide the turn. A
    /// recogniser whose interims cost the machine's CPU (the local one) makes them only when
    /// needed; others ignore it.
    Interims(bool),
}

impl From<Vec<u8>> for SttInput {
    fn from(frame: Vec<u8>) -> Self {
        SttInput::Audio(frame)
    }
}

/// Where words were said in the session's audio (from its first frame): where their speech
/// started and ended. A recogniser that does not say leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spoken {
    pub start: Duration,
    pub end: Duration,
}

impl Spoken {
    /// How much speech the words were said in.
    pub fn length(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// What a session hears, in the order it hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttEvent {
    /// The provider's voice activity detector heard speech begin.
    SpeechStarted,
    /// A guess at the words of the current stretch of audio; later events revise it.
    Interim { text: String, spoken: Option<Spoken> },
    /// Words that will not be revised. Consecutive finals make up an utterance;
    /// `speech_final` marks the one after which the speaker paused (the endpoint).
    Final { text: String, speech_final: bool, spoken: Option<Spoken> },
    /// The gap after the last final word has passed: the utterance is over even if no
    /// `speech_final` came (background noise can keep the endpointer from firing).
    UtteranceEnd,
    /// The connection dropped and a new one was opened; audio sent in between was lost and an
    /// utterance in progress may have been cut.
    Reconnected,
    /// The connection dropped and could not be reopened; the session is over (its event channel
    /// closes after this).
    Failed(String),
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error("{provider}: could not connect: {source}")]
    Connect {
        provider: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{provider}: timed out connecting")]
    Timeout { provider: &'static str },
    #[error("{provider} refused the connection ({status}): {message}")]
    Refused { provider: &'static str, status: u16, message: String },
    #[error("{provider}: {message}")]
    Settings { provider: &'static str, message: String },
}

/// A speech-to-text provider.
pub trait SpeechToText: Send + Sync {
    /// Opens a streaming session: connected when this returns `Ok`.
    fn open(&self, config: SttConfig) -> BoxFuture<'_, Result<SttSession, SttError>>;

    /// The provider's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Whether its interim results are guesses that may have nothing to do with the final words
    /// (a small recogniser transcribing part of an utterance): then an interim counts only once
    /// the next one agrees with it.
    fn interims_are_guesses(&self) -> bool {
        false
    }

    /// Whether it needs the call's voice-activity detector to hear at all (it transcribes the
    /// utterances the detector cuts), so that the loudness fallback runs for it; a recogniser
    /// with its own endpointing only gains from the neural detector.
    fn cuts_by_voice_activity(&self) -> bool {
        false
    }
}

/// One open streaming session. Dropping it (or just closing `audio`) closes the provider
/// connection cleanly: what the provider still had to say arrives on `events` (if it is still
/// read) before the channel closes.
#[derive(Debug)]
pub struct SttSession {
    /// Audio frames in the config's encoding, in order, and what the call's detector heard in
    /// them. Frames sent while the session is reconnecting are dropped.
    pub audio: mpsc::Sender<SttInput>,
    /// What the provider hears; closes when the session ends. Read it promptly: while it is
    /// full the session stops reading the provider, and then `audio` fills up too.
    pub events: mpsc::Receiver<SttEvent>,
}
