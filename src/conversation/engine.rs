//! One call's conversation: a single task that owns all of its state and reacts, in order, to
//! what the call's audio brings (frames, played marks, the stream's end), to what speech-to-text
//! hears, to what the current turn's generation produces, and to its timers (the greeting's
//! delay, the end of the person's turn, playout pacing, idleness). Provider I/O runs in child
//! tasks that report back tagged with their turn id; anything from a turn that is no longer
//! current is dropped, so an interrupted turn's output is never played late.
//!
//! The task never blocks: audio for speech-to-text is offered without waiting (a full queue drops
//! the frame and counts it), and everything it sends to the call goes through a bounded channel
//! whose consumer is the carrier's socket.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use serde_json::{json, Value};

use super::actions::{self, dtmf, Action, ActionRequest, ActionRunner, Kind, Outcome};
use super::audio::Encoding;
use super::knowledge::Knowledge;
use super::llm::{ChatMessage, ChatRequest, LanguageModel, LlmDelta, Tool, ToolCall, ToolCallAccumulator};
use super::playout::{heard_text, Playout};
use super::stt::{SpeechToText, SttConfig, SttEvent, SttSession};
use super::tts::Voice;
use super::turns::{Dials, CHECK_IN};

/// What the bot says when its model fails before saying anything.
pub const APOLOGY: &str = "Sorry, I'm having trouble right now.";

pub use super::actions::END_CONVERSATION;
// The port types, where the rest of the crate finds them.
pub use super::media::{Outlet, ToCall};

/// What the engine needs to know of the call and its agent.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub encoding: Encoding,
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
    /// Whether keys are pressed as tones on the call's audio (Twilio, the sandbox), or sent through
    /// the carrier's own API (Vonage's DTMF endpoint).
    pub keys_in_band: bool,
    /// Whether the carrier echoes marks (Twilio does; without echoes the clock tells what was
    /// played).
    pub carrier_echoes_marks: bool,
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
}

/// What the call's audio stream brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromCall {
    /// Audio in the call's encoding.
    Audio(Vec<u8>),
    /// A key the person pressed.
    Dtmf(String),
    /// The carrier played up to this mark.
    Played(String),
    /// The stream ended.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Bot,
    Human,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Bot => "BOT",
            Speaker::Human => "HUMAN",
        }
    }
}

/// One message of the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub speaker: Speaker,
    pub text: String,
    /// The bot was interrupted: `text` is what the person heard.
    pub cut_off: bool,
}

/// How long each stage of a turn took, from the end of the person's speech.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnLatency {
    /// Last word heard → the engine decides the turn is over.
    pub end_of_turn: Duration,
    /// Decision → the model's first token.
    pub first_token: Option<Duration>,
    /// Decision → the voice's first audio.
    pub first_audio: Option<Duration>,
    /// Decision → the first frame sent to the call.
    pub first_frame: Option<Duration>,
}

/// What the engine reports as the conversation goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A finished message (the bot's once it was played, or cut off).
    Message(Message),
    /// A turn's latencies, once its first frame went out.
    Latency(TurnLatency),
    /// An action started (`output` is `None`) or finished: its transcript line, and the
    /// `event_action` payload.
    Action { line: String, payload: Value },
    /// The conversation is over: hang up.
    HangUp,
}

/// A turn's generation, as its child task reports it.
enum Generated {
    /// A sentence the voice is about to say.
    Sentence(String),
    FirstToken,
    Audio(Vec<u8>),
    /// The model called these tools (they run once what it says now has been played).
    ToolCalls(Vec<ToolCall>),
    /// Nothing more will come.
    Done,
}

type Reports = mpsc::Sender<(u64, Generated)>;

/// The bot's current utterance.
struct Speaking {
    playout: Playout,
    /// What it has said so far, sentence by sentence.
    text: String,
    interruptible: bool,
    generation_done: bool,
    /// The tools the model called this turn, run once it has been played.
    tool_calls: Vec<ToolCall>,
    /// An action this utterance carries out (key presses), finished once it has been played.
    action: Option<Running>,
    latency: Option<(Instant, TurnLatency)>,
}

/// An action under way: which, with what, and the tool call it answers (`None` when a phrase
/// fired it).
#[derive(Debug, Clone)]
struct Running {
    action: Action,
    params: Value,
    tool_call_id: Option<String>,
}

/// How long, once the call's audio is gone, the results of actions still running outside it are
/// waited for.
const RESULTS_AFTER_THE_CALL: Duration = Duration::from_secs(10);

/// An action that ran outside the call's audio, and how it ended.
type Finished = (Running, Outcome);

/// Runs the conversation until the stream ends or the bot hangs up; returns the transcript.
pub async fn run(
    config: EngineConfig,
    providers: Providers,
    mut from_call: mpsc::Receiver<FromCall>,
    to_call: impl Into<Outlet>,
    events: mpsc::Sender<Event>,
) -> Vec<Message> {
    let mut engine = Engine::new(config, providers, to_call.into(), events);
    engine.conversation(&mut from_call).await;
    engine.stop_child();
    engine.transcript
}

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
    last_word: Option<Instant>,
    turn_ends_at: Option<Instant>,
    last_activity: Instant,
    checked_in: bool,
    ending: bool,
    /// Actions that run outside the call's audio report here when they finish (never dropped:
    /// an action's result is kept whatever the turn).
    finished: (mpsc::Sender<Finished>, mpsc::Receiver<Finished>),
    /// External actions under way: the agent is muted meanwhile (`processing_mode: muted`), and
    /// answers what the person said once their result is in.
    outside: usize,
    /// The call was handed to a third party: the bot says nothing more, and never hangs up.
    transferred: bool,
}

impl Engine {
    fn new(config: EngineConfig, providers: Providers, to_call: Outlet, events: mpsc::Sender<Event>) -> Self {
        let history = vec![ChatMessage::System(config.prompt.clone())];
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
            last_word: None,
            turn_ends_at: None,
            last_activity: Instant::now(),
            checked_in: false,
            ending: false,
            finished: mpsc::channel(16),
            outside: 0,
            transferred: false,
        }
    }

    /// Opens speech-to-text in a child task, so that connecting never delays the greeting.
    fn open_stt(&self) -> oneshot::Receiver<Option<SttSession>> {
        let mut stt = SttConfig::new(self.config.encoding);
        stt.language = self.config.language.clone();
        stt.keywords = self.config.keywords.clone();
        let endpointing = self.config.dials.endpointing();
        stt.endpointing_ms = endpointing.after_punctuation.as_millis() as u32;
        stt.utterance_end_ms = (endpointing.otherwise.as_millis() as u32).max(1000);
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

    async fn conversation(&mut self, from_call: &mut mpsc::Receiver<FromCall>) {
        let mut opening = Some(self.open_stt());
        let mut stt: Option<SttSession> = None;
        let mut denoiser = self.config.noise_suppression.then(|| super::denoise::Denoiser::new(self.config.encoding));
        let greeting_at =
            self.config.initial_message.as_ref().map(|_| Instant::now() + self.config.dials.initial_message_delay);
        let mut greeting_at = greeting_at;
        self.last_activity = Instant::now();
        loop {
            let now = Instant::now();
            let playout_at = self.speaking.as_ref().and_then(|s| s.playout.next_due(now));
            // Nobody is idle while an action runs (a third party's phone ringing, a slow API).
            let idle_at = (self.speaking.is_none()
                && self.child.is_none()
                && greeting_at.is_none()
                && !self.transferred
                && self.outside == 0)
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
                        if let Some(session) = stt.as_ref().filter(|_| !frame.is_empty()) {
                            if session.audio.try_send(frame).is_err() {
                                metrics::counter!("vocode_conversation_audio_dropped_total").increment(1);
                            }
                        }
                    }
                    Some(FromCall::Played(mark)) => {
                        if let Some(speaking) = self.speaking.as_mut() {
                            speaking.playout.played(&mark);
                        }
                        self.after_playout().await;
                    }
                    Some(FromCall::Dtmf(digit)) => {
                        self.last_activity = Instant::now();
                        self.heard.push_str(&digit);
                        self.turn_ends_at = Some(Instant::now() + self.config.dials.endpointing().otherwise);
                    }
                    Some(FromCall::Stopped) | None => {
                        self.hung_up_while_speaking().await;
                        self.results_after_the_call().await;
                        return;
                    }
                },
                opened = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => {
                    opening = None;
                    // Audio that came while it connected was not heard.
                    stt = opened.ok().flatten();
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
                Some((running, outcome)) = self.finished.1.recv() => {
                    self.outside = self.outside.saturating_sub(1);
                    self.last_activity = Instant::now();
                    self.action_finished(running, outcome).await;
                }
                _ = sleep_until(greeting_at.unwrap_or(far)), if greeting_at.is_some() => {
                    greeting_at = None;
                    let text = self.config.initial_message.clone().unwrap_or_default();
                    self.speak_fixed(text, false).await;
                }
                _ = sleep_until(self.turn_ends_at.unwrap_or(far)), if self.turn_ends_at.is_some() => {
                    self.turn_ends_at = None;
                    self.respond().await;
                }
                _ = sleep_until(playout_at.unwrap_or(far)), if playout_at.is_some() => {
                    self.pump().await;
                }
                _ = sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    if self.config.dials.ask_if_human_present_on_idle && !self.checked_in {
                        self.checked_in = true;
                        self.speak_fixed(CHECK_IN.to_owned(), true).await;
                    } else {
                        tracing::info!("nobody spoke for the idle time: ending the call");
                        let _ = self.events.send(Event::HangUp).await;
                        return;
                    }
                }
            }
            if self.ending && self.speaking.is_none() {
                let _ = self.events.send(Event::HangUp).await;
                return;
            }
        }
    }

    async fn heard_event(&mut self, event: SttEvent) {
        let now = Instant::now();
        match event {
            SttEvent::Interim { text } | SttEvent::Final { text, .. } if text.trim().is_empty() => {}
            SttEvent::Interim { text } => {
                self.last_activity = now;
                self.interim = true;
                self.maybe_barge_in(&text).await;
                // Still speaking: the end of the turn waits.
                if self.turn_ends_at.is_some() {
                    self.turn_ends_at = Some(now + self.config.dials.endpointing().otherwise);
                }
            }
            SttEvent::Final { text, speech_final } => {
                self.last_activity = now;
                self.interim = false;
                let interrupting = self.maybe_barge_in(&text).await;
                if self.speaking.is_some() && !interrupting {
                    // A backchannel: kept, and the bot goes on.
                    self.record(Speaker::Human, text, false).await;
                    return;
                }
                if !self.heard.is_empty() {
                    self.heard.push(' ');
                }
                self.heard.push_str(text.trim());
                self.last_word = Some(now);
                let wait = if speech_final {
                    Duration::ZERO
                } else {
                    self.config.dials.endpointing().silence_needed(&self.heard)
                };
                self.turn_ends_at = Some(now + wait);
            }
            SttEvent::UtteranceEnd => {
                if !self.heard.is_empty() && !self.interim {
                    self.turn_ends_at = Some(now);
                }
            }
            SttEvent::SpeechStarted => self.last_activity = now,
            SttEvent::Reconnected => tracing::info!("speech-to-text reconnected"),
            SttEvent::Failed(reason) => tracing::warn!(%reason, "speech-to-text failed"),
        }
    }

    /// Stops the bot if the person's words interrupt it; returns whether they did.
    async fn maybe_barge_in(&mut self, text: &str) -> bool {
        let Some(speaking) = self.speaking.as_ref() else {
            return false;
        };
        if !speaking.interruptible || self.config.dials.ignores_while_speaking(text) {
            return false;
        }
        let speaking = self.speaking.take().expect("checked");
        let _ = self.to_call.send(ToCall::Clear).await;
        let now = Instant::now();
        let heard_ms = speaking.playout.heard_ms(now);
        let said = heard_text(&speaking.text, heard_ms, speaking.playout.total_ms());
        metrics::counter!("vocode_conversation_interruptions_total").increment(1);
        self.stop_child();
        self.turn += 1;
        // Nothing heard, nothing said: the person spoke before the answer reached them.
        if !said.is_empty() {
            self.history.push(ChatMessage::Assistant { content: Some(format!("{said}-")), tool_calls: Vec::new() });
            self.record(Speaker::Bot, said, true).await;
        }
        true
    }

    /// The call ended while the bot spoke: what the person heard of it is kept.
    async fn hung_up_while_speaking(&mut self) {
        let Some(speaking) = self.speaking.take() else {
            return;
        };
        let now = Instant::now();
        let heard_ms = speaking.playout.heard_ms(now);
        let total_ms = speaking.playout.total_ms();
        let said = heard_text(&speaking.text, heard_ms, total_ms);
        if !said.is_empty() {
            let cut_off = !(speaking.generation_done && heard_ms >= total_ms);
            self.record(Speaker::Bot, said, cut_off).await;
        }
    }

    /// The person's turn is over: answer it.
    async fn respond(&mut self) {
        if self.transferred {
            return;
        }
        if self.outside > 0 {
            // Muted while an external action runs: the person's words wait for its result.
            return;
        }
        let heard = std::mem::take(&mut self.heard);
        if heard.trim().is_empty() {
            return;
        }
        let decided = Instant::now();
        let end_of_turn = self.last_word.map(|w| decided.saturating_duration_since(w)).unwrap_or_default();
        self.history.push(ChatMessage::User(heard.clone()));
        self.record(Speaker::Human, heard, false).await;
        self.generate_turn(Some((decided, TurnLatency { end_of_turn, ..TurnLatency::default() })));
    }

    /// A turn of the model's on the conversation so far, spoken as it streams.
    fn generate_turn(&mut self, latency: Option<(Instant, TurnLatency)>) {
        let turn = self.begin_turn(true, latency);
        let request = ChatRequest {
            model: self.config.model.clone(),
            messages: self.history.clone(),
            tools: self.tools(),
            temperature: self.config.temperature,
            max_tokens: Some(256),
        };
        let (llm, voice, encoding, out) =
            (self.providers.llm.clone(), self.providers.voice.clone(), self.config.encoding, self.generated.0.clone());
        let knowledge = self.providers.knowledge.clone();
        self.child = Some(tokio::spawn(async move {
            let mut request = request;
            // In the child, bounded: this task never waits on the index.
            if let Some(knowledge) = knowledge {
                super::knowledge::consult(&*knowledge, &mut request).await;
            }
            generate(llm, voice, encoding, request, turn, out).await
        }));
    }

    fn tools(&self) -> Vec<Tool> {
        self.config.actions.iter().filter_map(Action::tool).collect()
    }

    /// Starts a new turn of the bot's (whatever the previous one was doing stops); returns its id.
    fn begin_turn(&mut self, interruptible: bool, latency: Option<(Instant, TurnLatency)>) -> u64 {
        self.stop_child();
        self.turn += 1;
        self.speaking = Some(Speaking {
            playout: Playout::new(self.config.encoding, self.turn, self.config.carrier_echoes_marks),
            text: String::new(),
            interruptible,
            generation_done: false,
            tool_calls: Vec::new(),
            action: None,
            latency,
        });
        self.turn
    }

    /// Says a fixed text (the greeting, the idle check-in) as its own turn.
    async fn speak_fixed(&mut self, text: String, interruptible: bool) {
        let turn = self.begin_turn(interruptible, None);
        let (voice, encoding, out) = (self.providers.voice.clone(), self.config.encoding, self.generated.0.clone());
        self.child = Some(tokio::spawn(async move {
            say(&*voice, encoding, &text, turn, &out).await;
            let _ = out.send((turn, Generated::Done)).await;
        }));
    }

    async fn generation(&mut self, generated: Generated) {
        let now = Instant::now();
        let Some(speaking) = self.speaking.as_mut() else {
            return;
        };
        match generated {
            Generated::FirstToken => {
                if let Some((at, latency)) = speaking.latency.as_mut() {
                    latency.first_token.get_or_insert(now - *at);
                }
            }
            Generated::Sentence(sentence) => {
                if !speaking.text.is_empty() {
                    speaking.text.push(' ');
                }
                speaking.text.push_str(&sentence);
            }
            Generated::Audio(audio) => {
                if let Some((at, latency)) = speaking.latency.as_mut() {
                    latency.first_audio.get_or_insert(now - *at);
                }
                speaking.playout.push(&audio);
                self.pump().await;
            }
            Generated::ToolCalls(calls) => speaking.tool_calls.extend(calls),
            Generated::Done => {
                speaking.generation_done = true;
                speaking.playout.finish();
                self.child = None;
                self.pump().await;
            }
        }
    }

    /// Sends what playout has due, and finishes the utterance once it has been played.
    async fn pump(&mut self) {
        let now = Instant::now();
        let Some(speaking) = self.speaking.as_mut() else {
            return;
        };
        let due = speaking.playout.due(now);
        if due.iter().any(|d| matches!(d, ToCall::Audio(_))) {
            self.last_activity = now;
            if let Some((at, mut latency)) = speaking.latency.take() {
                latency.first_frame = Some(now - at);
                record_latency(&latency);
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

    async fn after_playout(&mut self) {
        let now = Instant::now();
        let finished = self.speaking.as_ref().is_some_and(|s| s.generation_done && s.playout.done(now));
        if !finished {
            return;
        }
        let speaking = self.speaking.take().expect("checked");
        self.last_activity = now;
        let said = (!speaking.text.is_empty()).then(|| speaking.text.clone());
        if said.is_some() || !speaking.tool_calls.is_empty() {
            self.history
                .push(ChatMessage::Assistant { content: said.clone(), tool_calls: speaking.tool_calls.clone() });
        }
        if let Some(text) = said.clone() {
            self.record(Speaker::Bot, text, false).await;
        }
        if let Some(running) = speaking.action {
            let outcome = Outcome { success: true, response: json!({"success": true}), agent_message: None };
            self.action_finished(running, outcome).await;
        }
        for call in speaking.tool_calls {
            self.call_tool(call).await;
        }
        // Phrase triggers: after the turn, on what the bot said.
        if let Some(said) = said {
            let fired: Vec<Action> = self.config.actions.iter().filter(|a| a.fired_by(&said)).cloned().collect();
            for action in fired {
                self.start_action(Running { action, params: json!({}), tool_call_id: None }).await;
            }
        }
        // What the person said while the bot could not answer (an action ran) is answered now.
        if self.speaking.is_none() && self.outside == 0 && !self.heard.trim().is_empty() && self.turn_ends_at.is_none()
        {
            self.turn_ends_at = Some(now);
        }
    }

    /// A tool the model called: the action it names, with its arguments checked. What cannot run
    /// is said in the transcript and to the model, and the call goes on.
    async fn call_tool(&mut self, call: ToolCall) {
        let action = self.config.actions.iter().find(|a| a.tool().is_some() && a.name() == call.name).cloned();
        let checked = match action {
            Some(action) => actions::arguments(&action, &call.arguments).map(|(params, _said)| (action, params)),
            None => Err(format!("there is no action {:?}", call.name)),
        };
        match checked {
            Ok((action, params)) => {
                let running = Running { action, params: Value::Object(params), tool_call_id: Some(call.id) };
                self.start_action(running).await;
            }
            Err(reason) => {
                tracing::warn!(tool = %call.name, %reason, "the model called a tool that cannot run");
                metrics::counter!("vocode_conversation_action_failures_total").increment(1);
                let line = format!("BOT_ACTION_FINISH: !ACTION {} FAILED: {reason}!", call.name);
                let payload = json!({"action_type": call.name, "action_input": {"params": call.arguments},
                                     "action_output": {"success": false, "error": reason}});
                let _ = self.events.send(Event::Action { line, payload }).await;
                let content = json!({"success": false, "error": reason}).to_string();
                self.history.push(ChatMessage::Tool { tool_call_id: call.id, content });
            }
        }
    }

    /// Starts an action: its start goes into the transcript, then it runs.
    async fn start_action(&mut self, running: Running) {
        let line = running.action.attempt_line(&running.params);
        let payload = json!({"action_type": running.action.action_type(), "action_input": {"params": running.params},
                             "action_output": null});
        let _ = self.events.send(Event::Action { line, payload }).await;
        match running.action.kind.clone() {
            Kind::EndConversation => {
                self.ending = true;
                let outcome = Outcome { success: true, response: json!({"success": true}), agent_message: None };
                self.action_finished(running, outcome).await;
            }
            Kind::Dtmf if !self.config.keys_in_band => {
                let keys = running.params["buttons"].as_str().unwrap_or_default().to_owned();
                self.run_outside(running, ActionRequest::Keys { keys });
            }
            Kind::Dtmf => {
                // The keys are played on the call's audio, as a turn of their own nobody can
                // interrupt; the action is done once they have been played.
                let keys = running.params["buttons"].as_str().unwrap_or_default().to_owned();
                let turn = self.begin_turn(false, None);
                let speaking = self.speaking.as_mut().expect("a turn just began");
                speaking.playout.push(&dtmf::tones(&keys, self.config.encoding));
                speaking.playout.finish();
                speaking.generation_done = true;
                speaking.action = Some(running);
                debug_assert_eq!(turn, self.turn);
                // The conversation's loop plays them out from here, as any utterance.
            }
            Kind::TransferCall { .. } => {
                let to = running.action.transfer_to(&running.params).unwrap_or_default();
                match crate::domain::phone::PhoneNumber::parse(&to) {
                    Err(reason) => {
                        // Nothing is dialled.
                        let outcome = Outcome::failed(format!("{to:?} is not a phone number to transfer to: {reason}"));
                        self.action_finished(running, outcome).await;
                    }
                    Ok(number) => self.run_outside(running, ActionRequest::Transfer { to: number.digits().to_owned() }),
                }
            }
            Kind::AddToConference { phone_number, place_primary_on_hold } => {
                match crate::domain::phone::PhoneNumber::parse(&phone_number) {
                    Err(reason) => {
                        let outcome =
                            Outcome::failed(format!("{phone_number:?} is not a phone number to dial in: {reason}"));
                        self.action_finished(running, outcome).await;
                    }
                    Ok(number) => {
                        let request =
                            ActionRequest::Conference { to: number.digits().to_owned(), hold: place_primary_on_hold };
                        self.run_outside(running, request);
                    }
                }
            }
            Kind::SetHold => self.run_outside(running, ActionRequest::Hold),
            Kind::External(external) => {
                let payload = running.params.clone();
                self.run_outside(running, ActionRequest::External { action: external, payload });
            }
            Kind::Unsupported(kind) => {
                let outcome = Outcome::failed(format!("{kind} is not supported by this server yet"));
                self.action_finished(running, outcome).await;
            }
        }
    }

    /// Runs an action outside the call's audio: the bot answers nothing meanwhile, and the result
    /// comes back to the conversation's loop.
    fn run_outside(&mut self, running: Running, request: ActionRequest) {
        self.outside += 1;
        let (runner, done) = (self.providers.actions.clone(), self.finished.0.clone());
        tokio::spawn(async move {
            let outcome = runner.run(request).await;
            let _ = done.send((running, outcome)).await;
        });
    }

    /// The call's audio is gone while actions still run outside it (a transfer: the carrier ends
    /// the stream as it carries it out, before its answer is back here): their results still go
    /// into the transcript, if they come within a while. Nobody is left to hear more.
    async fn results_after_the_call(&mut self) {
        let deadline = Instant::now() + RESULTS_AFTER_THE_CALL;
        while self.outside > 0 {
            let Ok(Some((running, outcome))) = tokio::time::timeout_at(deadline, self.finished.1.recv()).await else {
                tracing::warn!(running = self.outside, "the call ended before its actions did: their results are lost");
                return;
            };
            self.outside -= 1;
            self.report_result(&running, &outcome).await;
        }
    }

    /// An action's result, into the transcript and to the model.
    async fn report_result(&mut self, running: &Running, outcome: &Outcome) {
        if !outcome.success {
            metrics::counter!("vocode_conversation_action_failures_total").increment(1);
        }
        let line = running.action.result_line(&running.params, outcome);
        let payload = json!({"action_type": running.action.action_type(), "action_input": {"params": running.params},
                             "action_output": {"response": outcome.response}});
        let _ = self.events.send(Event::Action { line, payload }).await;
        if let Some(id) = &running.tool_call_id {
            self.history.push(ChatMessage::Tool { tool_call_id: id.clone(), content: outcome.response.to_string() });
        }
    }

    /// An action is over: its result goes into the transcript and to the model, and the agent
    /// says what it should.
    async fn action_finished(&mut self, running: Running, outcome: Outcome) {
        self.report_result(&running, &outcome).await;
        let handed_over = match &running.action.kind {
            Kind::TransferCall { .. } => outcome.success,
            Kind::SetHold => outcome.response["handed_over"] == true,
            _ => false,
        };
        if handed_over {
            self.transferred = true;
        }
        let Kind::External(external) = &running.action.kind else {
            if self.transferred || self.ending {
                return;
            }
            if !outcome.success {
                // An action that failed (a transfer the carrier refused, a number that is not
                // one): the model says so rather than leave the person in silence. A phrase
                // trigger's failure is told to it, as it asked for nothing.
                if running.tool_call_id.is_none() {
                    let error = outcome.response["error"].as_str().unwrap_or("it failed");
                    let note = format!("{} failed: {error}", running.action.action_type());
                    self.history.push(ChatMessage::System(note));
                }
                self.generate_turn(None);
            } else if matches!(running.action.kind, Kind::AddToConference { .. }) && running.tool_call_id.is_some() {
                // The third party is on the line: the model speaks to them.
                self.generate_turn(None);
            }
            return;
        };
        if let Some(message) = outcome.agent_message.filter(|m| !m.trim().is_empty()) {
            // The API's own words for the person, as a canned answer.
            self.speak_fixed(message, true).await;
        } else if external.speak_on_receive || !self.heard.trim().is_empty() {
            // The model answers with the result in hand (and what the person said meanwhile).
            let heard = std::mem::take(&mut self.heard);
            if !heard.trim().is_empty() {
                self.history.push(ChatMessage::User(heard.clone()));
                self.record(Speaker::Human, heard, false).await;
            }
            self.generate_turn(None);
        }
    }

    async fn record(&mut self, speaker: Speaker, text: String, cut_off: bool) {
        let message = Message { speaker, text, cut_off };
        self.transcript.push(message.clone());
        let _ = self.events.send(Event::Message(message)).await;
    }

    fn stop_child(&mut self) {
        if let Some(child) = self.child.take() {
            child.abort();
        }
    }
}

fn record_latency(latency: &TurnLatency) {
    let stages = [
        ("end_of_turn", Some(latency.end_of_turn)),
        ("first_token", latency.first_token),
        ("first_audio", latency.first_audio),
        ("first_frame", latency.first_frame),
    ];
    for (stage, value) in stages {
        if let Some(value) = value {
            metrics::histogram!("vocode_turn_latency_seconds", "stage" => stage).record(value.as_secs_f64());
        }
    }
}

/// Synthesizes one sentence into the turn's audio.
async fn say(
    voice: &dyn Voice,
    encoding: Encoding,
    text: &str,
    turn: u64,
    out: &mpsc::Sender<(u64, Generated)>,
) -> bool {
    if out.send((turn, Generated::Sentence(text.to_owned()))).await.is_err() {
        return false;
    }
    let mut last_error = None;
    // A voice that fails is tried once more before the sentence is given up.
    for _ in 0..2 {
        match voice.synthesize(text, encoding).await {
            Ok(mut audio) => {
                while let Some(chunk) = audio.next().await {
                    match chunk {
                        Ok(bytes) => {
                            if out.send((turn, Generated::Audio(bytes))).await.is_err() {
                                return false;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the voice failed mid-sentence");
                            return true;
                        }
                    }
                }
                return true;
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    tracing::warn!(error = last_error.as_deref().unwrap_or(""), "the voice failed twice: the sentence stays text only");
    true
}

/// Where a model's streamed text may be cut into a sentence to synthesize: after `.`, `!` or `?`
/// followed by a space, once there are at least three words (vocode's rule).
fn sentence_end(buffer: &str) -> Option<usize> {
    let mut words = 0;
    let mut previous_space = true;
    let bytes = buffer.as_bytes();
    for (i, c) in buffer.char_indices() {
        if c.is_whitespace() {
            previous_space = true;
        } else {
            if previous_space {
                words += 1;
            }
            previous_space = false;
        }
        if matches!(c, '.' | '!' | '?') && words >= 3 && bytes.get(i + 1).is_some_and(|b| b.is_ascii_whitespace()) {
            return Some(i + 1);
        }
    }
    None
}

/// A turn's generation: the model's stream cut into sentences, each synthesized as soon as it is
/// complete.
async fn generate(
    llm: Arc<dyn LanguageModel>,
    voice: Arc<dyn Voice>,
    encoding: Encoding,
    request: ChatRequest,
    turn: u64,
    out: mpsc::Sender<(u64, Generated)>,
) {
    let mut failure = None;
    let mut spoke = false;
    let mut buffer = String::new();
    let mut tools = ToolCallAccumulator::default();
    match llm.stream(request).await {
        Ok(mut stream) => {
            let mut first = true;
            while let Some(delta) = stream.next().await {
                let delta = match delta {
                    Ok(delta) => delta,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                };
                if first {
                    first = false;
                    let _ = out.send((turn, Generated::FirstToken)).await;
                }
                tools.push(&delta);
                if let LlmDelta::Text(text) = &delta {
                    buffer.push_str(text);
                    while let Some(end) = sentence_end(&buffer) {
                        let sentence: String = buffer.drain(..end).collect();
                        if !say(&*voice, encoding, sentence.trim(), turn, &out).await {
                            return;
                        }
                        spoke = true;
                    }
                }
            }
        }
        Err(e) => failure = Some(e.to_string()),
    }
    if !buffer.trim().is_empty() {
        say(&*voice, encoding, buffer.trim(), turn, &out).await;
        spoke = true;
    }
    let failed = failure.is_some();
    if let Some(failure) = failure {
        tracing::warn!(%failure, model = llm.name(), "the model failed this turn");
        metrics::counter!("vocode_conversation_model_failures_total").increment(1);
        // Never a silent turn: if the model said nothing, the bot says why it cannot answer.
        if !spoke {
            say(&*voice, encoding, APOLOGY, turn, &out).await;
        }
    }
    let calls: Vec<ToolCall> = if failed { Vec::new() } else { tools.finish() };
    // What the model wants said before its actions run (vocode's `user_message`).
    for call in &calls {
        let said = serde_json::from_str::<Value>(&call.arguments).ok();
        if let Some(message) = said.as_ref().and_then(|a| a["user_message"].as_str()).filter(|m| !m.trim().is_empty()) {
            if !say(&*voice, encoding, message.trim(), turn, &out).await {
                return;
            }
        }
    }
    if !calls.is_empty() {
        let _ = out.send((turn, Generated::ToolCalls(calls))).await;
    }
    let _ = out.send((turn, Generated::Done)).await;
}

#[cfg(test)]
mod tests;
