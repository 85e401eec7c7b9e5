//! One call's conversation: a single task that owns all of its state and reacts, in order, to
//! what the call's audio brings (frames, keys, played marks, the stream's end), to what
//! speech-to-text hears, to what the current turn's generation produces, to the results of
//! actions, and to its timers (the greeting's delay, the end of the person's turn, playout pacing,
//! the end of a hold on a false start, idleness). Because one task owns it all, a call's state
//! needs no lock and its turns cannot race. Provider I/O runs in child tasks that report back
//! tagged with their turn id; anything from a turn that is no longer current is dropped, so an
//! interrupted turn's output is never played late. When the call's audio ends, the engine waits,
//! bounded, for speech-to-text's last words before it returns.
//!
//! The task never blocks: audio for speech-to-text is offered without waiting (a full queue drops
//! the frame and counts it), and everything it sends to the call goes through a bounded channel
//! whose consumer is the carrier's socket.
//!
//! The engine by concern, each an `impl Engine` of its own: `ports` (what comes from the call,
//! what goes to it, what the engine reports), `voice` (the caller's voice before any word: the
//! voice-activity detector, the end-of-turn model's verdict on each pause, the turn's longest),
//! `hearing` (the person's words and keys, barge-in, the end of their turn), `speaking` (the bot's utterance, paced out and finished once played),
//! `generating` (the model's turn, cut into sentences and voiced) and `acting` (actions, run as
//! each kind plans them). Here: the configuration, and the loop — the call's audio in (to
//! speech-to-text) and out (what playout has due, to the call) — that hands everything else to them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::actions::{Action, ActionRunner};
use super::knowledge::Knowledge;
use super::line::Line;
use super::llm::{ChatMessage, LanguageModel};
use super::stt::{SpeechToText, SttConfig, SttInput, SttSession};
use super::tts::Voice;
use super::turns::{Dials, CHECK_IN};

mod acting;
mod durable;
mod generating;
mod hearing;
mod ports;
mod speaking;
mod voice;

use acting::Finished;
use generating::{Generated, Reports};
use speaking::Speaking;

pub use super::actions::END_CONVERSATION;
pub use durable::{Durable, InFlight, RESUME_LINE};
pub use generating::APOLOGY;
pub use ports::{Event, FromCall, Message, Outlet, Speaker, ToCall, TurnLatency};
pub use voice::TurnModels;

/// What the engine needs to know of the call and its agent.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The carrier's line: its audio's encoding, whether it echoes marks (without echoes the clock
    /// tells what was played), whether keys are pressed in band.
    pub line: Line,
    pub dials: Dials,
    /// The agent's prompt (the system message).
    pub prompt: String,
    /// Said first, after `initial_message_delay`; the person cannot interrupt it.
    pub initial_message: Option<String>,
    pub model: String,
    pub temperature: Option<f32>,
    pub language: Option<String>,
    pub keywords: Vec<String>,
    /// The agent's actions: offered to the model as tools, or fired by phrases the bot says.
    pub actions: Vec<Action>,
    /// The agent's `noise_suppression`: the caller's audio is cleaned before recognition.
    pub noise_suppression: bool,
}

/// The providers a call talks to.
#[derive(Clone)]
pub struct Providers {
    pub stt: Arc<dyn SpeechToText>,
    pub llm: Arc<dyn LanguageModel>,
    pub voice: Arc<dyn Voice>,
    /// Carries out what actions ask of the world outside the call's audio.
    pub actions: Arc<dyn ActionRunner>,
    /// The agent's `vector_database`, consulted before each answer to the person.
    pub knowledge: Option<Arc<dyn Knowledge>>,
    /// How the caller's voice is heard (voice activity) and their turn's end judged.
    pub turn_models: TurnModels,
}

/// Runs the conversation until the stream ends or the bot hangs up; returns the transcript.
pub async fn run(
    config: EngineConfig,
    providers: Providers,
    from_call: mpsc::Receiver<FromCall>,
    to_call: impl Into<Outlet>,
    events: mpsc::Sender<Event>,
) -> Vec<Message> {
    run_from(None, config, providers, from_call, to_call, events).await
}

/// [`run`], going on from a conversation kept elsewhere (`kept`) when there is one.
pub async fn run_from(
    kept: Option<Durable>,
    config: EngineConfig,
    providers: Providers,
    mut from_call: mpsc::Receiver<FromCall>,
    to_call: impl Into<Outlet>,
    events: mpsc::Sender<Event>,
) -> Vec<Message> {
    let mut engine = Engine::new(config, providers, to_call.into(), events);
    let resumed = match kept {
        Some(kept) => {
            engine.take_over(kept).await;
            true
        }
        None => false,
    };
    engine.conversation(&mut from_call, resumed).await;
    engine.stop_child();
    engine.transcript
}

/// A call's conversation, as its task holds it.
struct Engine {
    config: EngineConfig,
    providers: Providers,
    to_call: Outlet,
    events: mpsc::Sender<Event>,
    transcript: Vec<Message>,
    history: Vec<ChatMessage>,
    turn: u64,
    child: Option<JoinHandle<()>>,
    /// The current turn's child reports here, each report tagged with its turn.
    generated: (Reports, mpsc::Receiver<(u64, Generated)>),
    speaking: Option<Speaking>,
    /// What the person has said this turn (finals), and when they last spoke.
    heard: String,
    interim: bool,
    /// The last interim's words: what is answered when a turn reaches its longest without a final.
    last_interim: String,
    /// Whether speech-to-text was last told that interims are needed ([`SttInput::Interims`]).
    interims_told: Option<bool>,
    last_word: Option<Instant>,
    /// When the caller's speech ended, as the detector or the recogniser's word timings say.
    spoke_until: Option<Instant>,
    /// When this turn's final words came in.
    recognized_at: Option<Instant>,
    /// When the person began this turn (it ends at the longest turn after).
    turn_began: Option<Instant>,
    turn_ends_at: Option<Instant>,
    /// The call's voice activity and end-of-turn model (from the conversation's start).
    voice: Option<voice::Voice>,
    last_activity: Instant,
    checked_in: bool,
    ending: bool,
    /// The greeting was said (or there is none to say).
    greeted: bool,
    /// Answer what the person said once what the bot is saying now has been played (after the
    /// line it says when it takes a call over).
    answer_after: bool,
    /// Actions that run outside the call's audio report here when they finish (never dropped:
    /// an action's result is kept whatever the turn).
    finished: (mpsc::Sender<Finished>, mpsc::Receiver<Finished>),
    /// Actions under way outside the call's audio: the agent is muted meanwhile
    /// (`processing_mode: muted`), and answers what the person said once their result is in.
    outside: Vec<InFlight>,
    /// The last action's id.
    actions_started: u64,
    /// The call was handed to a third party: the bot says nothing more, and never hangs up.
    transferred: bool,
}

impl Engine {
    fn new(config: EngineConfig, providers: Providers, to_call: Outlet, events: mpsc::Sender<Event>) -> Self {
        let history = vec![ChatMessage::System(config.prompt.clone())];
        let config_greets_nothing = config.initial_message.is_none();
        Engine {
            config,
            providers,
            to_call,
            events,
            transcript: Vec::new(),
            history,
            turn: 0,
            child: None,
            generated: mpsc::channel(64),
            speaking: None,
            heard: String::new(),
            interim: false,
            last_interim: String::new(),
            interims_told: None,
            last_word: None,
            spoke_until: None,
            recognized_at: None,
            turn_began: None,
            turn_ends_at: None,
            voice: None,
            last_activity: Instant::now(),
            checked_in: false,
            ending: false,
            greeted: config_greets_nothing,
            answer_after: false,
            finished: mpsc::channel(16),
            outside: Vec::new(),
            actions_started: 0,
            transferred: false,
        }
    }

    /// Opens speech-to-text in a child task, so that connecting never delays the greeting.
    fn open_stt(&self) -> oneshot::Receiver<Option<SttSession>> {
        let mut stt = SttConfig::new(self.config.line.encoding);
        stt.language = self.config.language.clone();
        stt.keywords = self.config.keywords.clone();
        let endpointing = self.config.dials.endpointing();
        stt.endpointing_ms = endpointing.after_punctuation.as_millis() as u32;
        stt.utterance_end_ms = (endpointing.otherwise.as_millis() as u32).max(1000);
        // The engine's detector says where speech starts and stops.
        stt.voice_events = true;
        let provider = self.providers.stt.clone();
        let (opened, session) = oneshot::channel();
        tokio::spawn(async move {
            let session = match provider.open(stt).await {
                Ok(session) => Some(session),
                Err(e) => {
                    tracing::warn!(error = %e, "speech-to-text could not be opened: the bot cannot hear this call");
                    None
                }
            };
            let _ = opened.send(session);
        });
        session
    }

    /// Hands each input, in the order it comes, to the concern it belongs to, until the call's
    /// audio is gone or the bot hangs up.
    async fn conversation(&mut self, from_call: &mut mpsc::Receiver<FromCall>, resumed: bool) {
        let mut opening = Some(self.open_stt());
        let mut stt: Option<SttSession> = None;
        let mut denoiser =
            self.config.noise_suppression.then(|| super::denoise::Denoiser::new(self.config.line.encoding));
        let mut greeting_at = (!self.greeted).then(|| Instant::now() + self.config.dials.initial_message_delay);
        let stt_needs_voice = self.providers.stt.cuts_by_voice_activity();
        let (_no_verdicts, mut verdicts) = mpsc::channel(1);
        match voice::Voice::new(&self.providers.turn_models, self.config.line.encoding, stt_needs_voice).await {
            Some((voice, its_verdicts)) => {
                tracing::debug!(
                    detector = voice.detector(),
                    end_of_turn_model = voice.judges(),
                    "the call's turn-taking"
                );
                self.voice = Some(voice);
                verdicts = its_verdicts;
            }
            None => tracing::debug!("the call's turn-taking: speech-to-text's own endpointing and the silence rule"),
        }
        if resumed {
            // The person heard silence: the bot says so at once, then answers what is unanswered.
            self.answer_after =
                self.heard.trim().is_empty() && matches!(self.history.last(), Some(ChatMessage::User(_)));
            // (Not while an action it carries on runs outside the audio: the bot is muted then.)
            if !self.transferred && self.outside.is_empty() {
                self.speak_fixed(RESUME_LINE.to_owned(), true).await;
            }
        } else {
            self.last_activity = Instant::now();
        }
        loop {
            let now = Instant::now();
            let playout_at = self.speaking.as_ref().and_then(|s| s.playout.next_due(now));
            let resume_at = self.speaking.as_ref().and_then(|s| s.resume_at);
            // Nobody is idle while an action runs (a third party's phone ringing, a slow API).
            let idle_at = (self.speaking.is_none()
                && self.child.is_none()
                && greeting_at.is_none()
                && !self.transferred
                && self.outside.is_empty())
            .then(|| self.last_activity + self.config.dials.idle);
            let far = now + Duration::from_secs(86_400);
            tokio::select! {
                biased;
                message = from_call.recv() => match message {
                    Some(FromCall::Audio(frame)) => {
                        // Cleaned even while nobody listens, so the filter keeps up with the line.
                        let frame = match denoiser.as_mut() {
                            Some(denoiser) => denoiser.process(&frame),
                            None => frame,
                        };
                        let session = stt.as_ref().map(|s| s.audio.clone());
                        self.hear_voice(&frame, session.as_ref()).await;
                    }
                    Some(FromCall::Played(mark)) => {
                        if let Some(speaking) = self.speaking.as_mut() {
                            speaking.playout.played(&mark);
                        }
                        self.after_playout().await;
                    }
                    Some(FromCall::Dtmf(digit)) => self.heard_key(digit),
                    Some(FromCall::Leave) => {
                        self.hung_up_while_speaking().await;
                        return;
                    }
                    Some(FromCall::Goodbye(words)) => {
                        greeting_at = None;
                        self.cut_off().await;
                        self.stop_child();
                        self.transferred = false;
                        self.speak_fixed(words, false).await;
                        self.ending = true;
                    }
                    Some(FromCall::Stopped) | None => {
                        self.hung_up_while_speaking().await;
                        self.last_words(stt.take()).await;
                        self.results_after_the_call().await;
                        return;
                    }
                },
                opened = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => {
                    opening = None;
                    // Audio that came while it connected was not heard.
                    stt = opened.ok().flatten();
                    self.interims_told = None;
                    if let Some(voice) = self.voice.as_mut().filter(|_| stt.is_some()) {
                        voice.session_opened();
                    }
                }
                event = async { stt.as_mut().expect("guarded").events.recv().await }, if stt.is_some() => match event {
                    Some(event) => self.heard_event(event).await,
                    None => {
                        tracing::warn!("speech-to-text ended: the bot no longer hears this call");
                        stt = None;
                    }
                },
                Some((turn, generated)) = self.generated.1.recv() => {
                    if turn == self.turn {
                        self.generation(generated).await;
                    }
                }
                Some((pause, probability)) = verdicts.recv() => {
                    self.verdict(pause, probability);
                }
                Some((running, outcome)) = self.finished.1.recv() => {
                    self.outside.retain(|a| a.id != running.id);
                    self.last_activity = Instant::now();
                    self.action_finished(running, outcome).await;
                }
                _ = sleep_until(greeting_at.unwrap_or(far)), if greeting_at.is_some() => {
                    greeting_at = None;
                    self.greeted = true;
                    let text = self.config.initial_message.clone().unwrap_or_default();
                    self.speak_fixed(text, false).await;
                }
                _ = sleep_until(self.turn_ends_at.unwrap_or(far)), if self.turn_ends_at.is_some() => {
                    self.turn_ends_at = None;
                    if self.voice.as_ref().is_some_and(voice::Voice::sounds_like_speech) {
                        // The caller may be speaking again (the detector is not sure yet): not
                        // while they do (at most until the turn's longest).
                        self.end_turn_at(Instant::now() + voice::RECHECK);
                    } else {
                        self.respond().await;
                    }
                }
                _ = sleep_until(playout_at.unwrap_or(far)), if playout_at.is_some() => {
                    self.pump().await;
                }
                _ = sleep_until(resume_at.unwrap_or(far)), if resume_at.is_some() => {
                    if self.voice.as_ref().is_some_and(voice::Voice::speaking) {
                        // The caller is still speaking: no false start yet.
                        self.hold().await;
                    } else {
                        self.resume().await;
                    }
                }
                _ = sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    if self.config.dials.ask_if_human_present_on_idle && !self.checked_in {
                        self.checked_in = true;
                        self.speak_fixed(CHECK_IN.to_owned(), true).await;
                    } else {
                        tracing::info!("nobody spoke for the idle time: ending the call");
                        let _ = self.events.send(Event::HangUp).await;
                        self.last_words(stt.take()).await;
                        return;
                    }
                }
            }
            self.tell_interims(stt.as_ref());
            if self.ending && self.speaking.is_none() {
                let _ = self.events.send(Event::HangUp).await;
                self.last_words(stt.take()).await;
                return;
            }
        }
    }

    /// Tells speech-to-text when interims start or stop being needed: while the bot speaks (or
    /// is held) they decide a barge-in; while it is silent the detector and the finals decide the
    /// turn, and a recogniser on the machine's own CPU need not make them. Told again when the
    /// session's queue was full.
    fn tell_interims(&mut self, stt: Option<&SttSession>) {
        let Some(stt) = stt else { return };
        let wanted = self.speaking.is_some();
        if self.interims_told != Some(wanted) && stt.audio.try_send(SttInput::Interims(wanted)).is_ok() {
            self.interims_told = Some(wanted);
        }
    }

    /// Sends what playout has due, and finishes the utterance once it has been played.
    pub(super) async fn pump(&mut self) {
        let now = Instant::now();
        let Some(speaking) = self.speaking.as_mut() else {
            return;
        };
        let due = speaking.playout.due(now);
        if due.iter().any(|d| matches!(d, ToCall::Audio(_))) {
            self.last_activity = now;
            if let Some((at, mut latency)) = speaking.latency.take() {
                latency.first_frame = Some(now - at);
                speaking::record_latency(&latency);
                let _ = self.events.send(Event::Latency(latency)).await;
            }
        }
        for item in due {
            if self.to_call.send(item).await.is_err() {
                return;
            }
        }
        self.after_playout().await;
    }

    /// A finished message: into the transcript, and reported with the conversation as it stands.
    async fn record(&mut self, speaker: Speaker, text: String, cut_off: bool) {
        let message = Message { speaker, text, cut_off };
        self.transcript.push(message.clone());
        let _ = self.events.send(Event::Message(message, Box::new(self.durable()))).await;
    }

    /// Stops the current turn's generation, if it is still under way.
    fn stop_child(&mut self) {
        if let Some(child) = self.child.take() {
            child.abort();
        }
    }
}

#[cfg(test)]
mod tests;
