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

use super::audio::Encoding;
use super::llm::{ChatMessage, ChatRequest, LanguageModel, LlmDelta, Tool, ToolCallAccumulator};
use super::media::ToCall;
use super::playout::{heard_text, Playout};
use super::stt::{SpeechToText, SttConfig, SttEvent, SttSession};
use super::tts::Voice;
use super::turns::{Dials, CHECK_IN};

/// What the bot says when its model fails before saying anything.
pub const APOLOGY: &str = "Sorry, I'm having trouble right now.";

/// The tool the model calls to end the conversation (Vocode's `action_end_conversation`).
pub const END_CONVERSATION: &str = "action_end_conversation";

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
    /// Whether the model may end the conversation (the agent has `action_end_conversation`).
    pub end_conversation_tool: bool,
    /// Whether the carrier echoes marks (Twilio does; without echoes the clock tells what was
    /// played).
    pub carrier_echoes_marks: bool,
}

/// The providers a call talks to.
#[derive(Clone)]
pub struct Providers {
    pub stt: Arc<dyn SpeechToText>,
    pub llm: Arc<dyn LanguageModel>,
    pub voice: Arc<dyn Voice>,
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
    /// The conversation is over: hang up.
    HangUp,
}

/// A turn's generation, as its child task reports it.
enum Generated {
    /// A sentence the voice is about to say.
    Sentence(String),
    FirstToken,
    Audio(Vec<u8>),
    /// The model asked to end the conversation (after what it says now).
    EndConversation,
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
    /// Hang up once it has been played.
    then_hang_up: bool,
    latency: Option<(Instant, TurnLatency)>,
}

/// Runs the conversation until the stream ends or the bot hangs up; returns the transcript.
pub async fn run(
    config: EngineConfig,
    providers: Providers,
    mut from_call: mpsc::Receiver<FromCall>,
    to_call: mpsc::Sender<ToCall>,
    events: mpsc::Sender<Event>,
) -> Vec<Message> {
    let mut engine = Engine::new(config, providers, to_call, events);
    engine.conversation(&mut from_call).await;
    engine.stop_child();
    engine.transcript
}

struct Engine {
    config: EngineConfig,
    providers: Providers,
    to_call: mpsc::Sender<ToCall>,
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
}

impl Engine {
    fn new(
        config: EngineConfig,
        providers: Providers,
        to_call: mpsc::Sender<ToCall>,
        events: mpsc::Sender<Event>,
    ) -> Self {
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
        let greeting_at =
            self.config.initial_message.as_ref().map(|_| Instant::now() + self.config.dials.initial_message_delay);
        let mut greeting_at = greeting_at;
        self.last_activity = Instant::now();
        loop {
            let now = Instant::now();
            let playout_at = self.speaking.as_ref().and_then(|s| s.playout.next_due(now));
            let idle_at = (self.speaking.is_none() && self.child.is_none() && greeting_at.is_none())
                .then(|| self.last_activity + self.config.dials.idle);
            let far = now + Duration::from_secs(86_400);
            tokio::select! {
                biased;
                message = from_call.recv() => match message {
                    Some(FromCall::Audio(frame)) => {
                        if let Some(session) = &stt {
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
        let heard = std::mem::take(&mut self.heard);
        if heard.trim().is_empty() {
            return;
        }
        let decided = Instant::now();
        let end_of_turn = self.last_word.map(|w| decided.saturating_duration_since(w)).unwrap_or_default();
        self.history.push(ChatMessage::User(heard.clone()));
        self.record(Speaker::Human, heard, false).await;
        let turn = self.begin_turn(true, Some((decided, TurnLatency { end_of_turn, ..TurnLatency::default() })));
        let request = ChatRequest {
            model: self.config.model.clone(),
            messages: self.history.clone(),
            tools: self.tools(),
            temperature: self.config.temperature,
            max_tokens: Some(256),
        };
        let (llm, voice, encoding, out) =
            (self.providers.llm.clone(), self.providers.voice.clone(), self.config.encoding, self.generated.0.clone());
        self.child = Some(tokio::spawn(generate(llm, voice, encoding, request, turn, out)));
    }

    fn tools(&self) -> Vec<Tool> {
        let mut tools = Vec::new();
        if self.config.end_conversation_tool {
            tools.push(Tool {
                name: END_CONVERSATION.to_owned(),
                description: "End the conversation and hang up, once you have said goodbye.".to_owned(),
                parameters: serde_json::json!({"type": "object", "properties": {}}),
            });
        }
        tools
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
            then_hang_up: false,
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
            Generated::EndConversation => speaking.then_hang_up = true,
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
        if !speaking.text.is_empty() {
            self.history.push(ChatMessage::Assistant { content: Some(speaking.text.clone()), tool_calls: Vec::new() });
            self.record(Speaker::Bot, speaking.text, false).await;
        }
        if speaking.then_hang_up {
            self.ending = true;
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
    if let Some(failure) = failure {
        tracing::warn!(%failure, model = llm.name(), "the model failed this turn");
        metrics::counter!("vocode_conversation_model_failures_total").increment(1);
        // Never a silent turn: if the model said nothing, the bot says why it cannot answer.
        if !spoke {
            say(&*voice, encoding, APOLOGY, turn, &out).await;
        }
    }
    if tools.finish().iter().any(|call| call.name == END_CONVERSATION) {
        let _ = out.send((turn, Generated::EndConversation)).await;
    }
    let _ = out.send((turn, Generated::Done)).await;
}

#[cfg(test)]
mod tests;
