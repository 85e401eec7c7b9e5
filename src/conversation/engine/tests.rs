//! The engine against providers that answer at once, a carrier that plays audio in (virtual) real
//! time and echoes marks as Twilio does, and a person whose words arrive as speech-to-text events.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::stream;

use serde_json::{json, Value};

use super::generating::sentence_end;
use super::*;
use crate::conversation::actions::{ActionRequest, Outcome, DTMF};
use crate::conversation::audio::Encoding;
use crate::conversation::knowledge::{KnowledgeError, Passage};
use crate::conversation::llm::{ChatRequest, DeltaStream, LlmDelta, LlmError, ToolCall};
use crate::conversation::stt::{Spoken, SttError, SttEvent, SttInput};
use crate::conversation::tts::{AudioStream, TtsError};
use crate::conversation::turns::InterruptSensitivity;

#[test]
fn sentences_are_cut_after_three_words_at_their_end() {
    assert_eq!(sentence_end("Hi. How are"), None);
    assert_eq!(sentence_end("Sure, I can. Then"), Some(12));
    assert_eq!(sentence_end("Is it three? "), Some(12));
    assert_eq!(sentence_end("It costs 3.50 dollars"), None, "a decimal point is not an end");
}

/// Speech-to-text whose events the test sends.
#[derive(Default)]
struct FakeStt {
    events: Mutex<Option<mpsc::Receiver<SttEvent>>>,
    audio: Mutex<Option<mpsc::Receiver<SttInput>>>,
    /// How long connecting takes.
    connect: Duration,
}

impl SpeechToText for FakeStt {
    fn open(&self, _config: SttConfig) -> BoxFuture<'_, Result<SttSession, SttError>> {
        Box::pin(async move {
            tokio::time::sleep(self.connect).await;
            let (audio, audio_rx) = mpsc::channel(1024);
            *self.audio.lock().unwrap() = Some(audio_rx);
            let events = self.events.lock().unwrap().take().expect("one session");
            Ok(SttSession { audio, events })
        })
    }

    fn name(&self) -> &str {
        "fake-stt"
    }

    /// Like the local recogniser: the call's detector runs for it even on loudness alone.
    fn cuts_by_voice_activity(&self) -> bool {
        true
    }
}

/// A model that answers each request with the next scripted reply (an empty one fails at once),
/// and remembers the requests.
struct FakeLlm {
    replies: Mutex<VecDeque<Vec<LlmDelta>>>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl FakeLlm {
    fn new(replies: Vec<Vec<LlmDelta>>) -> Arc<Self> {
        Arc::new(FakeLlm { replies: Mutex::new(replies.into()), requests: Mutex::default() })
    }
}

impl LanguageModel for FakeLlm {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
        self.requests.lock().unwrap().push(request);
        let reply = self.replies.lock().unwrap().pop_front().unwrap_or_default();
        Box::pin(async move {
            if reply.is_empty() {
                return Ok(Box::pin(stream::iter(vec![Err(LlmError::Stalled(Duration::from_secs(10)))])) as DeltaStream);
            }
            let items: Vec<Result<LlmDelta, LlmError>> = reply.into_iter().map(Ok).collect();
            Ok(Box::pin(stream::iter(items)) as DeltaStream)
        })
    }

    fn name(&self) -> &str {
        "fake-llm"
    }
}

/// A voice that speaks 100 ms of audio per word.
struct FakeVoice;

impl Voice for FakeVoice {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let words = text.split_whitespace().count() as u32;
        Box::pin(async move {
            let audio = vec![encoding.silence_byte(); encoding.bytes_for_ms(100 * words)];
            Ok(Box::pin(stream::iter(vec![Ok(audio)])) as AudioStream)
        })
    }

    fn name(&self) -> &str {
        "fake-voice"
    }
}

fn words(n: usize) -> String {
    (0..n).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ") + "."
}

fn reply(text: &str) -> Vec<LlmDelta> {
    let mut deltas: Vec<LlmDelta> = text.split_inclusive(' ').map(|w| LlmDelta::Text(w.to_owned())).collect();
    deltas.push(LlmDelta::Done { finish_reason: Some("stop".into()) });
    deltas
}

/// The user's API behind every external action: it echoes the payload back as the result, and
/// asks the bot to say what it did.
struct FakeRunner;

impl ActionRunner for FakeRunner {
    fn run(&self, request: ActionRequest) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let (action, payload) = match request {
                ActionRequest::External { action, payload } => (action, payload),
                ActionRequest::Keys { keys } => {
                    return Outcome {
                        success: true,
                        response: json!({"success": true, "keys": keys}),
                        agent_message: None,
                    };
                }
                // The third party answers after three seconds, unless it is the number that never does.
                ActionRequest::Conference { to, hold } => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    if to == "14155550000" {
                        return Outcome::failed("+14155550000 did not join the conference (no-answer)");
                    }
                    return Outcome {
                        success: true,
                        response: json!({"success": true, "phone_number": to, "person_on_hold": hold}),
                        agent_message: None,
                    };
                }
                ActionRequest::Hold => {
                    return Outcome {
                        success: true,
                        response: json!({"success": true, "on_hold": false, "handed_over": true}),
                        agent_message: None,
                    };
                }
                // The carrier takes a second to accept a transfer.
                ActionRequest::Transfer { to } => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return Outcome {
                        success: true,
                        response: json!({"success": true, "phone_number": to}),
                        agent_message: None,
                    };
                }
            };
            tokio::time::sleep(Duration::from_secs(3)).await;
            let agent_message = (action.name == "Book").then(|| "Booked for ten thirty.".to_owned());
            Outcome { success: true, response: json!({"result": payload, "success": true}), agent_message }
        })
    }
}

fn tool_call(text: &str, name: &str, arguments: &str) -> Vec<LlmDelta> {
    let mut deltas = reply(text);
    let at = deltas.len() - 1;
    deltas.insert(at, LlmDelta::ToolCallStart { index: 0, id: "call_1".into(), name: name.into() });
    deltas.insert(at + 1, LlmDelta::ToolCallArgs { index: 0, fragment: arguments.into() });
    deltas
}

/// What the carrier (and so the person) got, as it got it.
#[derive(Debug, Default)]
struct Played {
    audio_ms: u64,
    clears: usize,
    marks: Vec<String>,
    /// How much audio had been sent when each clear came.
    sent_at_clears: Vec<u64>,
}

struct Call {
    person: mpsc::Sender<SttEvent>,
    stt: Arc<FakeStt>,
    stream: mpsc::Sender<FromCall>,
    events: mpsc::Receiver<Event>,
    played: Arc<Mutex<Played>>,
    llm: Arc<FakeLlm>,
    engine: JoinHandle<Vec<Message>>,
    /// The turns' latencies reported so far.
    latencies: Vec<TurnLatency>,
    /// Action lines seen while waiting for messages.
    actions: Vec<String>,
}

fn config(dials: Dials) -> EngineConfig {
    EngineConfig {
        line: Line::TWILIO,
        dials,
        prompt: "You book tables.".into(),
        initial_message: Some("Hello, this is the restaurant.".into()),
        model: "test-model".into(),
        temperature: Some(0.0),
        language: None,
        keywords: Vec::new(),
        actions: vec![Action::from_document(&json!({"type": "action_end_conversation"})).unwrap()],
        noise_suppression: false,
    }
}

/// Starts a call: the engine, and a carrier that plays audio in real time and echoes each mark
/// once the audio before it has played (a clear drops what is queued, marks included).
fn start(config: EngineConfig, replies: Vec<Vec<LlmDelta>>) -> Call {
    start_with_stt_connect(config, replies, Duration::ZERO)
}

fn start_with_stt_connect(config: EngineConfig, replies: Vec<Vec<LlmDelta>>, connect: Duration) -> Call {
    start_with(config, replies, connect, None)
}

fn start_with(
    config: EngineConfig,
    replies: Vec<Vec<LlmDelta>>,
    connect: Duration,
    knowledge: Option<Arc<dyn Knowledge>>,
) -> Call {
    start_from(None, config, replies, connect, knowledge)
}

fn start_from(
    kept: Option<Durable>,
    config: EngineConfig,
    replies: Vec<Vec<LlmDelta>>,
    connect: Duration,
    knowledge: Option<Arc<dyn Knowledge>>,
) -> Call {
    let (person, person_rx) = mpsc::channel(16);
    let stt = Arc::new(FakeStt { events: Mutex::new(Some(person_rx)), audio: Mutex::default(), connect });
    let llm = FakeLlm::new(replies);
    let providers = Providers {
        stt: stt.clone(),
        llm: llm.clone(),
        voice: Arc::new(FakeVoice),
        actions: Arc::new(FakeRunner),
        knowledge,
        turn_models: TurnModels::default(),
    };
    let (stream, from_call) = mpsc::channel(64);
    let (to_call, mut carrier) = mpsc::channel::<ToCall>(64);
    let (events_tx, events) = mpsc::channel(64);
    let played = Arc::new(Mutex::new(Played::default()));
    let encoding = config.line.encoding;
    let engine = tokio::spawn(run_from(kept, config, providers, from_call, to_call, events_tx));
    let (echo, played_by_carrier) = (stream.clone(), played.clone());
    tokio::spawn(async move {
        let mut queue_ends = Instant::now();
        let mut marks: VecDeque<(Instant, String)> = VecDeque::new();
        loop {
            let next_mark = marks.front().map(|(at, _)| *at);
            tokio::select! {
                item = carrier.recv() => match item {
                    Some(ToCall::Audio(audio)) => {
                        let ms = encoding.ms_of(audio.len());
                        queue_ends = queue_ends.max(Instant::now()) + Duration::from_millis(ms);
                        played_by_carrier.lock().unwrap().audio_ms += ms;
                    }
                    Some(ToCall::Mark(name)) => marks.push_back((queue_ends, name)),
                    Some(ToCall::Clear) => {
                        marks.clear();
                        queue_ends = Instant::now();
                        let mut played = played_by_carrier.lock().unwrap();
                        played.clears += 1;
                        let sent = played.audio_ms;
                        played.sent_at_clears.push(sent);
                    }
                    None => return,
                },
                _ = sleep_until(next_mark.unwrap_or_else(Instant::now)), if next_mark.is_some() => {
                    let (_, name) = marks.pop_front().expect("a mark");
                    played_by_carrier.lock().unwrap().marks.push(name.clone());
                    let _ = echo.send(FromCall::Played(name)).await;
                }
            }
        }
    });
    Call { person, stt, stream, events, played, llm, engine, latencies: Vec::new(), actions: Vec::new() }
}

impl Call {
    async fn says(&self, text: &str) {
        self.person.send(SttEvent::Final { text: text.into(), speech_final: false, spoken: None }).await.unwrap();
    }

    async fn next_message(&mut self) -> Message {
        self.next_message_kept().await.0
    }

    /// The next message, with the conversation as it was kept with it.
    async fn next_message_kept(&mut self) -> (Message, Durable) {
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.events.recv()).await {
                Ok(Some(Event::Message(m, kept))) => return (m, *kept),
                Ok(Some(Event::Latency(latency))) => self.latencies.push(latency),
                Ok(Some(Event::Action { line, .. })) => self.actions.push(line),
                Ok(Some(_)) => continue,
                other => panic!("no message: {other:?}"),
            }
        }
    }

    /// The next action line (start or result), with its `event_action` payload.
    async fn next_action(&mut self) -> (String, Value) {
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.events.recv()).await {
                Ok(Some(Event::Action { line, payload, .. })) => return (line, payload),
                Ok(Some(Event::Latency(latency))) => self.latencies.push(latency),
                Ok(Some(_)) => continue,
                other => panic!("no action: {other:?}"),
            }
        }
    }

    async fn end(self) -> Vec<Message> {
        let _ = self.stream.send(FromCall::Stopped).await;
        self.engine.await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn the_greeting_waits_for_its_delay_and_is_played_whole() {
    let dials = Dials { initial_message_delay: Duration::from_secs(2), ..Dials::default() };
    let mut call = start(config(dials), vec![]);
    tokio::time::sleep(Duration::from_millis(1_900)).await;
    assert_eq!(call.played.lock().unwrap().audio_ms, 0, "nothing before the delay");
    let greeting = call.next_message().await;
    assert_eq!(
        greeting,
        Message { speaker: Speaker::Bot, text: "Hello, this is the restaurant.".into(), cut_off: false }
    );
    // Five words at 100 ms each, every one played (the message is recorded once its marks came back).
    let played = call.played.lock().unwrap().audio_ms;
    assert_eq!(played, 500);
    assert!(call.played.lock().unwrap().marks.last().is_some_and(|m| m.ends_with("-500")));
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_turn_is_answered_once_the_person_has_finished_and_its_latency_is_reported() {
    let mut call = start(config(Dials::default()), vec![reply("Sure, for what time? ")]);
    call.next_message().await;
    call.says("A table for two.").await;
    let heard = call.next_message().await;
    assert_eq!((heard.speaker, heard.text.as_str()), (Speaker::Human, "A table for two."));
    let answer = call.next_message().await;
    assert_eq!((answer.speaker, answer.text.as_str(), answer.cut_off), (Speaker::Bot, "Sure, for what time?", false));
    let request = call.llm.requests.lock().unwrap()[0].clone();
    assert_eq!(request.model, "test-model");
    assert!(matches!(&request.messages[0], ChatMessage::System(p) if p == "You book tables."));
    assert!(matches!(&request.messages[1], ChatMessage::Assistant { content: Some(c), .. } if c.starts_with("Hello")));
    assert!(matches!(&request.messages[2], ChatMessage::User(u) if u == "A table for two."));
    assert!(request.tools.iter().any(|t| t.name == END_CONVERSATION));
    // The sentence ended with a full stop: the turn ended 500 ms after the last word (nothing
    // dated the speech: the words' arrival stands for its end), and the instant providers added
    // nothing after that. Every stage is counted from the end of the speech.
    let latency = call.latencies.last().copied().expect("the turn's latency");
    assert_eq!(latency.end_of_turn, Duration::from_millis(500));
    assert_eq!(latency.recognized, Some(Duration::ZERO));
    let ms_500 = Some(Duration::from_millis(500));
    assert_eq!((latency.first_token, latency.first_audio, latency.first_frame), (ms_500, ms_500, ms_500));
    let transcript = call.end().await;
    assert_eq!(transcript.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn speech_to_text_is_asked_for_interims_only_while_the_bot_speaks() {
    let mut call = start(config(Dials::default()), vec![reply("Sure, for what time? ")]);
    call.next_message().await;
    call.says("A table for two.").await;
    call.next_message().await;
    call.next_message().await;
    let stt = call.stt.clone();
    call.end().await;
    let mut received = stt.audio.lock().unwrap().take().expect("a session");
    let mut told = Vec::new();
    while let Ok(input) = received.try_recv() {
        if let SttInput::Interims(wanted) = input {
            told.push(wanted);
        }
    }
    // Speaking the greeting (under way when the session opened), silent while the person speaks,
    // speaking the answer, silent after it: each change told once.
    assert_eq!(told, [true, false, true, false]);
}

#[tokio::test(start_paused = true)]
async fn the_end_of_a_turn_waits_longer_after_an_unfinished_sentence() {
    let mut call = start(config(Dials::default()), vec![reply("Okay then, noted. ")]);
    call.next_message().await;
    let before = Instant::now();
    call.person.send(SttEvent::Final { text: "I would like".into(), speech_final: false, spoken: None }).await.unwrap();
    call.next_message().await;
    let waited = Instant::now() - before;
    assert!(waited >= Duration::from_millis(1_000) && waited < Duration::from_millis(1_100), "{waited:?}");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn barging_in_clears_the_carrier_and_keeps_what_was_heard() {
    let mut call = start(config(Dials::default()), vec![reply(&format!("{} ", words(40))), reply("Three then. ")]);
    call.next_message().await;
    call.says("Book me a table please.").await;
    call.next_message().await;
    // Four seconds of answer; the person interrupts after about one.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    call.person.send(SttEvent::Interim { text: "wait, actually make it three".into(), spoken: None }).await.unwrap();
    let cut = call.next_message().await;
    assert_eq!((cut.speaker, cut.cut_off), (Speaker::Bot, true));
    let heard_words = cut.text.split_whitespace().count();
    assert!((8..=12).contains(&heard_words), "about a second's worth of words: {:?}", cut.text);
    assert_eq!(call.played.lock().unwrap().clears, 1);
    call.person
        .send(SttEvent::Final { text: "wait, actually make it three".into(), speech_final: true, spoken: None })
        .await
        .unwrap();
    let human = call.next_message().await;
    assert_eq!(human.text, "wait, actually make it three");
    let answer = call.next_message().await;
    assert_eq!(answer.text, "Three then.");
    // The model was told the bot was cut off.
    let second = call.llm.requests.lock().unwrap()[1].clone();
    assert!(second
        .messages
        .iter()
        .any(|m| matches!(m, ChatMessage::Assistant { content: Some(c), .. } if c.ends_with('-'))));
    call.end().await;
}

async fn backchannel_during_an_answer(interrupt: InterruptSensitivity) -> (Vec<Message>, usize) {
    let dials = Dials { interrupt, ..Dials::default() };
    let mut call = start(config(dials), vec![reply(&format!("{} ", words(20)))]);
    call.next_message().await;
    call.says("What do you have?").await;
    call.next_message().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    call.says("mhm").await;
    let mut messages = Vec::new();
    while messages.len() < 2 {
        messages.push(call.next_message().await);
    }
    let clears = call.played.lock().unwrap().clears;
    call.end().await;
    (messages, clears)
}

#[tokio::test(start_paused = true)]
async fn a_backchannel_is_ignored_at_low_sensitivity_and_interrupts_at_high() {
    let (low, clears) = backchannel_during_an_answer(InterruptSensitivity::Low).await;
    assert_eq!(clears, 0);
    assert_eq!((low[0].speaker, low[0].text.as_str()), (Speaker::Human, "mhm"), "kept in the transcript");
    assert_eq!((low[1].speaker, low[1].cut_off), (Speaker::Bot, false), "the bot went on to the end");
    assert_eq!(low[1].text.split_whitespace().count(), 20);

    let (high, clears) = backchannel_during_an_answer(InterruptSensitivity::High).await;
    assert_eq!(clears, 1);
    assert_eq!((high[0].speaker, high[0].cut_off), (Speaker::Bot, true));
}

#[tokio::test(start_paused = true)]
async fn a_silent_call_is_checked_on_once_then_ended() {
    let dials = Dials { idle: Duration::from_secs(5), ask_if_human_present_on_idle: true, ..Dials::default() };
    let mut call = start(config(dials), vec![]);
    call.next_message().await;
    let check = call.next_message().await;
    assert_eq!((check.speaker, check.text.as_str()), (Speaker::Bot, CHECK_IN));
    let checked_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(Event::HangUp) = call.events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("the call ends");
    // The check-in is played (0.4 s), then the idle time passes once more.
    let waited = Instant::now() - checked_at;
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6), "{waited:?}");
    let transcript = call.engine.await.unwrap();
    assert_eq!(transcript.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_model_ends_the_conversation_after_its_goodbye_is_played() {
    let mut goodbye = reply("Goodbye, see you soon! ");
    goodbye.insert(
        goodbye.len() - 1,
        LlmDelta::ToolCallStart { index: 0, id: "call_1".into(), name: END_CONVERSATION.into() },
    );
    goodbye.insert(goodbye.len() - 1, LlmDelta::ToolCallArgs { index: 0, fragment: "{}".into() });
    let mut call = start(config(Dials::default()), vec![goodbye]);
    call.next_message().await;
    call.says("That's all, bye.").await;
    call.next_message().await;
    let bye = call.next_message().await;
    assert_eq!(bye.text, "Goodbye, see you soon!");
    let audio_when_done = call.played.lock().unwrap().audio_ms;
    loop {
        if let Some(Event::HangUp) = call.events.recv().await {
            break;
        }
    }
    assert_eq!(audio_when_done, 500 + 400, "the goodbye was played whole before the hang-up");
    call.engine.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_model_that_fails_before_a_word_gets_an_apology_not_silence() {
    let mut call = start(config(Dials::default()), vec![vec![]]);
    call.next_message().await;
    call.says("Are you there?").await;
    call.next_message().await;
    let answer = call.next_message().await;
    assert_eq!((answer.speaker, answer.text.as_str()), (Speaker::Bot, APOLOGY));
    assert!(call.played.lock().unwrap().audio_ms > 500, "the apology was spoken");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_speech_to_text_connection_does_not_delay_the_greeting() {
    let started = Instant::now();
    let mut call = start_with_stt_connect(config(Dials::default()), vec![], Duration::from_secs(5));
    let greeting = call.next_message().await;
    assert_eq!(greeting.speaker, Speaker::Bot);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_interrupted_before_a_word_was_heard_leaves_no_message() {
    let mut call = start(config(Dials::default()), vec![reply(&format!("{} ", words(30))), reply("Go on. ")]);
    call.next_message().await;
    call.says("Tell me about the menu.").await;
    call.next_message().await;
    // The answer's first frames are out, but no mark has come back yet.
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.person
        .send(SttEvent::Final { text: "no wait, the wine list".into(), speech_final: true, spoken: None })
        .await
        .unwrap();
    let next = call.next_message().await;
    assert_eq!((next.speaker, next.text.as_str()), (Speaker::Human, "no wait, the wine list"));
    tokio::task::yield_now().await;
    assert_eq!(call.played.lock().unwrap().clears, 1, "the carrier's buffer was cleared");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn when_the_call_ends_mid_answer_what_was_heard_is_kept() {
    let mut call = start(config(Dials::default()), vec![reply(&format!("{} ", words(30)))]);
    call.next_message().await;
    call.says("Tell me everything.").await;
    call.next_message().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let transcript = call.end().await;
    let last = transcript.last().unwrap();
    assert_eq!((last.speaker, last.cut_off), (Speaker::Bot, true));
    let words_heard = last.text.split_whitespace().count();
    assert!((5..=12).contains(&words_heard), "about a second of it: {:?}", last.text);
}

#[tokio::test(start_paused = true)]
async fn a_sentence_said_during_the_greeting_is_answered_once_it_is_over() {
    let mut config = config(Dials::default());
    config.initial_message = Some(words(20));
    let mut call = start(config, vec![reply("We open at six. ")]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    call.says("What time do you open tonight?").await;
    let greeting = call.next_message().await;
    assert_eq!((greeting.speaker, greeting.cut_off), (Speaker::Bot, false), "the greeting was not interrupted");
    assert_eq!(greeting.text.split_whitespace().count(), 20, "all of it");
    let greeted = Instant::now();
    let heard = call.next_message().await;
    assert_eq!((heard.speaker, heard.text.as_str()), (Speaker::Human, "What time do you open tonight?"));
    // The words were over long before the greeting was: answered at once.
    assert_eq!(Instant::now(), greeted, "answered as soon as the greeting was over");
    let answer = call.next_message().await;
    assert_eq!((answer.speaker, answer.text.as_str()), (Speaker::Bot, "We open at six."));
    assert_eq!(call.played.lock().unwrap().clears, 0);
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_backchannel_during_the_greeting_is_kept_and_not_answered() {
    let mut config = config(Dials::default());
    config.initial_message = Some(words(20));
    let mut call = start(config, vec![reply("Unexpected. ")]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    call.says("mhm").await;
    let heard = call.next_message().await;
    assert_eq!((heard.speaker, heard.text.as_str()), (Speaker::Human, "mhm"));
    let greeting = call.next_message().await;
    assert_eq!((greeting.speaker, greeting.cut_off), (Speaker::Bot, false));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(call.llm.requests.lock().unwrap().is_empty(), "a backchannel is not a turn");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn the_last_words_before_a_hang_up_are_waited_for_and_kept() {
    let mut call = start(config(Dials::default()), vec![]);
    call.next_message().await;
    // Words heard, their turn not yet over (an unfinished sentence waits a second)...
    call.says("Please take me off").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    call.stream.send(FromCall::Stopped).await.unwrap();
    // ...and the recogniser's last result, which comes once it is closed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(call.audio_closed(), "speech-to-text was closed when the call's audio ended");
    call.person.send(SttEvent::Final { text: "your list.".into(), speech_final: true, spoken: None }).await.unwrap();
    call.person.send(SttEvent::Final { text: "You".into(), speech_final: true, spoken: None }).await.unwrap();
    drop(call.person);
    let last = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let Some(Event::Message(message, kept)) = call.events.recv().await {
                return (message, kept);
            }
        }
    })
    .await
    .expect("the last words, before the conversation ends");
    assert_eq!(
        last.0,
        Message { speaker: Speaker::Human, text: "Please take me off your list.".into(), cut_off: false }
    );
    assert!(matches!(last.1.history.last(), Some(ChatMessage::User(u)) if u == "Please take me off your list."));
    let transcript = call.engine.await.unwrap();
    assert_eq!(transcript.last().unwrap().text, "Please take me off your list.");
    assert!(call.llm.requests.lock().unwrap().is_empty(), "nobody is left to answer");
}

impl Call {
    /// Whether the engine closed speech-to-text's audio.
    fn audio_closed(&self) -> bool {
        let mut audio = self.stt.audio.lock().unwrap();
        let audio = audio.as_mut().expect("a session");
        loop {
            match audio.try_recv() {
                Ok(_) => continue,
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_recogniser_that_never_finishes_is_waited_for_a_bounded_time() {
    let mut call = start(config(Dials::default()), vec![]);
    call.next_message().await;
    call.says("I would like").await;
    call.stream.send(FromCall::Stopped).await.unwrap();
    let stopped = Instant::now();
    let transcript = call.engine.await.unwrap();
    assert_eq!(Instant::now() - stopped, super::hearing::LAST_WORDS, "waited for the recogniser, and no longer");
    assert_eq!(transcript.last().unwrap().text, "I would like", "what was heard is kept");
    drop(call.person);
}

/// The person's first guessed words at `high` stop the bot four seconds' answer about a second
/// in; returns the call, when it stopped, and how much of the answer the person had heard (by the
/// last mark the carrier echoed).
async fn held_at_high() -> (Call, Instant, u64) {
    let dials = Dials { interrupt: InterruptSensitivity::High, ..Dials::default() };
    let mut call = start(config(dials), vec![reply(&format!("{} ", words(40))), reply("Sure. ")]);
    call.next_message().await;
    call.says("Tell me about the menu.").await;
    call.next_message().await;
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    call.person.send(SttEvent::Interim { text: "uh".into(), spoken: None }).await.unwrap();
    let held = Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let played = call.played.lock().unwrap();
    assert_eq!(played.clears, 1, "the bot's audio stopped at the first guess");
    let last = played.marks.last().expect("marks came back before the stop").clone();
    let heard = last.rsplit_once('-').unwrap().1.parse::<u64>().unwrap();
    assert!((900..=1_100).contains(&heard), "{last}");
    drop(played);
    (call, held, heard)
}

#[tokio::test(start_paused = true)]
async fn a_false_start_at_high_sensitivity_resumes_the_bot_where_it_stopped() {
    let (mut call, held, heard_at_clear) = held_at_high().await;
    // No words follow: the bot goes on after the wait, and its message is whole.
    let answer = call.next_message().await;
    let rest = Duration::from_millis(4_000 - heard_at_clear);
    assert_eq!(Instant::now() - held, crate::conversation::turns::FALSE_START + rest, "resumed after the wait");
    assert_eq!((answer.speaker, answer.cut_off), (Speaker::Bot, false), "{answer:?}");
    assert_eq!(answer.text.split_whitespace().count(), 40, "the whole answer, once");
    {
        let played = call.played.lock().unwrap();
        assert_eq!(played.clears, 1);
        let sent_after = played.audio_ms - played.sent_at_clears[0];
        assert_eq!(sent_after, 4_000 - heard_at_clear, "it went on from what was heard, repeating nothing heard");
        assert!(played.marks.iter().any(|m| m.contains(".1-")), "the resumed audio's marks are its own");
    }
    assert_eq!(call.llm.requests.lock().unwrap().len(), 1, "the false start was not answered");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_false_start_waits_for_words_then_resumes_after_the_wait() {
    let (mut call, held, heard_at_clear) = held_at_high().await;
    // Words still being guessed keep it held; a guess at noise does not, and a final of noise
    // does not cut it off.
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.person.send(SttEvent::Interim { text: "uh so".into(), spoken: None }).await.unwrap();
    let guessed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.person.send(SttEvent::Interim { text: "you".into(), spoken: None }).await.unwrap();
    call.person.send(SttEvent::Final { text: "you".into(), speech_final: true, spoken: None }).await.unwrap();
    let answer = call.next_message().await;
    assert_eq!((answer.speaker, answer.cut_off), (Speaker::Bot, false), "{answer:?}");
    let rest = Duration::from_millis(4_000 - heard_at_clear);
    assert_eq!(Instant::now() - guessed, crate::conversation::turns::FALSE_START + rest, "held from the last guess");
    assert!(Instant::now() - held > crate::conversation::turns::FALSE_START + rest);
    assert_eq!(call.llm.requests.lock().unwrap().len(), 1, "nothing was answered");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn words_after_a_hold_make_it_an_interruption() {
    let (mut call, _, _) = held_at_high().await;
    call.person.send(SttEvent::Interim { text: "uh wait".into(), spoken: None }).await.unwrap();
    call.person
        .send(SttEvent::Final { text: "uh wait, what about wine?".into(), speech_final: true, spoken: None })
        .await
        .unwrap();
    let cut = call.next_message().await;
    assert_eq!((cut.speaker, cut.cut_off), (Speaker::Bot, true));
    let heard_words = cut.text.split_whitespace().count();
    assert!((8..=12).contains(&heard_words), "about a second's worth: {:?}", cut.text);
    let human = call.next_message().await;
    assert_eq!(human.text, "uh wait, what about wine?");
    let answer = call.next_message().await;
    assert_eq!(answer.text, "Sure.");
    assert_eq!(call.played.lock().unwrap().clears, 1, "one clear: the hold's");
    call.end().await;
}

fn with_actions(documents: &[Value]) -> EngineConfig {
    let mut config = config(Dials::default());
    config.actions = documents.iter().map(|d| Action::from_document(d).unwrap()).collect();
    config
}

#[tokio::test(start_paused = true)]
async fn keys_the_model_presses_are_played_as_tones_after_what_it_says() {
    let config = with_actions(&[json!({"type": "action_dtmf"})]);
    let mut call = start(config, vec![tool_call("Pressing two now. ", DTMF, r#"{"buttons": "2#"}"#), reply("Done.")]);
    call.next_message().await;
    call.says("Press two for sales.").await;
    call.next_message().await;
    assert_eq!(call.next_message().await.text, "Pressing two now.");
    let (start, payload) = call.next_action().await;
    assert_eq!(start, "BOT_ACTION_START: Attempting to press numbers: ['2', '#']");
    assert_eq!(
        payload,
        json!({"action_type": "action_dtmf", "action_input": {"params": {"buttons": "2#"}}, "action_output": null})
    );
    let (finish, payload) = call.next_action().await;
    assert_eq!(finish, "BOT_ACTION_FINISH: Pressed numbers ['2', '#'] successfully");
    assert_eq!(payload["action_output"]["response"]["success"], true);
    // The greeting (500 ms) and the sentence (300 ms), then two keys: 2 × (300 ms tone + 100 ms rest).
    assert_eq!(call.played.lock().unwrap().audio_ms, 500 + 300 + 800);
    let tools: Vec<String> = call.llm.requests.lock().unwrap()[0].tools.iter().map(|t| t.name.clone()).collect();
    assert_eq!(tools, [DTMF]);
    call.says("Thanks.").await;
    call.next_message().await;
    call.next_message().await;
    // The model saw its call and the result.
    let history = call.llm.requests.lock().unwrap()[1].messages.clone();
    assert!(history.iter().any(|m| matches!(m, ChatMessage::Assistant { tool_calls, .. } if tool_calls.len() == 1)));
    assert!(history.iter().any(|m| matches!(m, ChatMessage::Tool { tool_call_id, .. } if tool_call_id == "call_1")));
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn an_external_action_runs_muted_and_its_agent_message_is_said() {
    let book = json!({"type": "action_external", "config": {"name": "Book", "description": "Book a table.",
        "url": "https://example.com/book", "input_schema": {"type": "object", "properties": {"time": {"type": "string"}}},
        "speak_on_send": true, "speak_on_receive": false, "signature_secret": "c2VjcmV0"}});
    let args = r#"{"time": "10:30", "user_message": "One moment while I book it."}"#;
    let mut call = start(with_actions(&[book]), vec![tool_call("", "Book", args), reply("Anything else?")]);
    call.next_message().await;
    call.says("Book ten thirty please.").await;
    call.next_message().await;
    assert_eq!(call.next_message().await.text, "One moment while I book it.", "said before the action runs");
    let (start, _) = call.next_action().await;
    assert!(start.starts_with("BOT_ACTION_START: !STARTING ACTION action_external WITH PARAMETERS"), "{start}");
    // Muted: what the person says while the API works is answered once its result is in.
    call.says("Is it done?").await;
    let (finish, payload) = call.next_action().await;
    assert_eq!(payload["action_output"]["response"]["result"], json!({"time": "10:30"}));
    assert!(finish.starts_with("BOT_ACTION_FINISH: !ACTION action_external FINISHED WITH OUTPUT"), "{finish}");
    assert_eq!(call.next_message().await.text, "Booked for ten thirty.", "the API's own words");
    // The person's question waited for the result, and is answered now, the result in hand.
    assert_eq!(call.next_message().await.text, "Is it done?");
    assert_eq!(call.next_message().await.text, "Anything else?");
    let asked = call.llm.requests.lock().unwrap()[1].messages.clone();
    assert!(
        matches!(&asked[asked.len() - 3], ChatMessage::Tool { content, .. } if content.contains("10:30")),
        "{asked:?}"
    );
    assert_eq!(asked.last(), Some(&ChatMessage::User("Is it done?".into())));
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_transfer_that_ends_the_stream_still_reports_its_result() {
    let transfer = json!({"type": "action_transfer_call", "config": {"phone_number": "+14155550199"}});
    let args = r#"{"user_message": "Sure, transferring you now."}"#;
    let mut call = start(with_actions(&[transfer]), vec![tool_call("", "action_transfer_call", args)]);
    call.next_message().await;
    call.says("Can I speak to a person, please?").await;
    call.next_message().await;
    assert_eq!(call.next_message().await.text, "Sure, transferring you now.");
    assert_eq!(call.next_action().await.0, "BOT_ACTION_START: Attempting to transfer call to +14155550199");
    // The carrier carries the transfer out: the call's stream ends before the runner's answer is back.
    call.stream.send(FromCall::Stopped).await.unwrap();
    let (finish, payload) = call.next_action().await;
    assert_eq!(finish, "BOT_ACTION_FINISH: Successfully transferred call");
    assert_eq!(payload["action_output"]["response"]["phone_number"], "14155550199");
    let transcript = call.engine.await.unwrap();
    assert_eq!(transcript.last().map(|m| m.text.as_str()), Some("Sure, transferring you now."), "nothing more is said");
}

#[tokio::test(start_paused = true)]
async fn a_tool_that_cannot_run_is_a_failure_in_the_transcript_and_the_call_goes_on() {
    let config = with_actions(&[json!({"type": "action_dtmf"})]);
    let replies = vec![
        tool_call("Let me see. ", "action_transfer_call", "{}"),
        tool_call("", DTMF, "{\"buttons\": 5"),
        reply("Sorry."),
    ];
    let mut call = start(config, replies);
    call.next_message().await;
    call.says("Transfer me.").await;
    call.next_message().await;
    call.next_message().await;
    let (line, _) = call.next_action().await;
    assert_eq!(
        line,
        "BOT_ACTION_FINISH: !ACTION action_transfer_call FAILED: there is no action \"action_transfer_call\"!"
    );
    call.says("Press five.").await;
    call.next_message().await;
    let (line, payload) = call.next_action().await;
    assert!(line.contains("FAILED: the arguments of action_dtmf are not JSON"), "{line}");
    assert_eq!(payload["action_output"]["success"], false);
    call.says("Hm.").await;
    call.next_message().await;
    assert_eq!(call.next_message().await.text, "Sorry.", "the call went on");
    assert_eq!(call.played.lock().unwrap().clears, 0);
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_phrase_the_bot_says_fires_its_action() {
    let end = json!({"type": "action_end_conversation", "action_trigger": {"type": "action_trigger_phrase_based",
        "config": {"phrase_triggers": [{"phrase": "have a great day", "conditions": ["phrase_condition_type_contains"]}]}}});
    let mut call = start(with_actions(&[end]), vec![reply("Thanks, have a GREAT day! ")]);
    call.next_message().await;
    assert!(call.llm.requests.lock().unwrap().is_empty());
    call.says("Bye.").await;
    call.next_message().await;
    assert_eq!(call.next_message().await.text, "Thanks, have a GREAT day!");
    assert!(call.llm.requests.lock().unwrap()[0].tools.is_empty(), "a phrase-triggered action is not the model's tool");
    assert_eq!(call.next_action().await.0, "BOT_ACTION_START: Attempting to end conversation");
    assert_eq!(call.next_action().await.0, "BOT_ACTION_FINISH: Successfully ended conversation");
    loop {
        if let Some(Event::HangUp) = call.events.recv().await {
            break;
        }
    }
    call.engine.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn once_transferred_the_bot_neither_answers_nor_hangs_up() {
    let transfer = json!({"type": "action_transfer_call", "config": {"phone_number": "+14155550199"}});
    let args = r#"{"user_message": "Transferring."}"#;
    let mut call =
        start(with_actions(&[transfer]), vec![tool_call("", "action_transfer_call", args), reply("Hi again!")]);
    call.next_message().await;
    call.says("A person, please.").await;
    call.next_message().await;
    call.next_message().await;
    call.next_action().await;
    assert_eq!(call.next_action().await.0, "BOT_ACTION_FINISH: Successfully transferred call");
    // The stream stays open a while (the carrier is connecting the third party): words on it are
    // not the bot's to answer, and a long silence is not the bot's to end.
    call.says("Hello? Who is this?").await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(call.llm.requests.lock().unwrap().len(), 1, "no answer after the transfer");
    let _ = call.stream.send(FromCall::Stopped).await;
    let mut hung_up = false;
    while let Some(event) = call.events.recv().await {
        hung_up |= event == Event::HangUp;
    }
    assert!(!hung_up, "the bot never hangs up a transferred call");
    let transcript = call.engine.await.unwrap();
    assert_eq!(transcript.last().map(|m| m.text.as_str()), Some("Transferring."));
}

/// The warm-transfer guide's agent: both actions fired by phrases the bot says.
fn warm_transfer_actions(number: &str) -> Vec<Value> {
    let phrase = |p: &str| {
        json!({"type": "action_trigger_phrase_based",
               "config": {"phrase_triggers": [{"phrase": p, "conditions": ["phrase_condition_type_contains"]}]}})
    };
    vec![
        json!({"type": "action_set_hold", "config": {}, "action_trigger": phrase("Removing participant from hold")}),
        json!({"type": "action_add_to_conference", "config": {"phone_number": number},
               "action_trigger": phrase("I connect you now please hold")}),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_warm_transfer_by_phrases_talks_to_the_third_party_then_hands_the_person_over() {
    let replies = vec![
        reply("Sure, I connect you now, please hold."),
        reply("Hi, I have a customer who wants a refund. Removing participant from hold."),
        reply("Should not be said."),
    ];
    let mut config = with_actions(&warm_transfer_actions("+14155550199"));
    // Shorter than the ring: nobody is idle while the third party's phone rings.
    config.dials.idle = Duration::from_secs(2);
    let mut call = start(config, replies);
    call.next_message().await;
    call.says("I want to talk to your manager.").await;
    call.next_message().await;
    assert_eq!(call.next_message().await.text, "Sure, I connect you now, please hold.");
    assert_eq!(call.next_action().await.0, "BOT_ACTION_START: Attempting to add +14155550199 to the conference");
    // While the third party's phone rings, nothing is answered.
    call.says("Hello?").await;
    let (finish, payload) = call.next_action().await;
    assert_eq!(finish, "BOT_ACTION_FINISH: Added +14155550199 to the conference");
    assert_eq!(payload["action_output"]["response"]["person_on_hold"], true);
    assert_eq!(call.llm.requests.lock().unwrap().len(), 1, "muted while it rang");
    // The third party speaks; the bot introduces the call, and its phrase takes the person off hold.
    call.says("This is the manager.").await;
    call.next_message().await;
    let said = call.next_message().await.text;
    assert!(said.ends_with("Removing participant from hold."), "{said}");
    assert_eq!(call.next_action().await.0, "BOT_ACTION_START: Attempting to change the hold");
    assert_eq!(call.next_action().await.0, "BOT_ACTION_FINISH: Took the person off hold");
    // Handed over: the bot answers no more.
    call.says("Thanks, I'll take it from here.").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(call.llm.requests.lock().unwrap().len(), 2, "the bot left the conversation");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_warm_transfer_nobody_answers_is_told_to_the_model_and_the_bot_goes_on() {
    let replies =
        vec![reply("I connect you now, please hold."), reply("I'm sorry, the manager did not answer. Anything else?")];
    let mut call = start(with_actions(&warm_transfer_actions("+14155550000")), replies);
    call.next_message().await;
    call.says("Manager, please.").await;
    call.next_message().await;
    call.next_message().await;
    call.next_action().await;
    let (finish, _) = call.next_action().await;
    assert!(finish.starts_with("BOT_ACTION_FINISH: Did not add +14155550000 to the conference"), "{finish}");
    assert_eq!(call.next_message().await.text, "I'm sorry, the manager did not answer. Anything else?");
    let asked = call.llm.requests.lock().unwrap()[1].messages.clone();
    assert!(
        matches!(asked.last(), Some(ChatMessage::System(note)) if note.starts_with("action_add_to_conference failed")),
        "the model is told: {asked:?}"
    );
    call.end().await;
}

/// An index that finds one passage about opening hours, after `delay`.
struct FakeKnowledge {
    delay: Duration,
    queries: Mutex<Vec<String>>,
}

impl Knowledge for FakeKnowledge {
    fn search<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<Passage>, KnowledgeError>> {
        self.queries.lock().unwrap().push(query.to_owned());
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(vec![Passage { text: "Open 9 to 5.".into(), source: "hours.md".into(), score: 0.9 }])
        })
    }
}

/// The person asks; returns how long after their turn ended the model was asked, and what.
async fn asked_with_knowledge(delay: Duration) -> (Duration, ChatRequest, Vec<String>) {
    let knowledge = Arc::new(FakeKnowledge { delay, queries: Mutex::default() });
    let mut call =
        start_with(config(Dials::default()), vec![reply("We open at nine. ")], Duration::ZERO, Some(knowledge.clone()));
    call.next_message().await;
    call.person
        .send(SttEvent::Final { text: "When are you open?".into(), speech_final: true, spoken: None })
        .await
        .unwrap();
    call.next_message().await;
    let answer = call.next_message().await;
    assert_eq!((answer.speaker, answer.text.as_str()), (Speaker::Bot, "We open at nine."));
    let latency = call.latencies.last().copied().expect("the turn's latency");
    let request = call.llm.requests.lock().unwrap()[0].clone();
    let queries = knowledge.queries.lock().unwrap().clone();
    call.end().await;
    (latency.first_token.expect("a first token"), request, queries)
}

#[tokio::test(start_paused = true)]
async fn the_model_is_shown_what_the_index_found_before_the_persons_words() {
    let (waited, request, queries) = asked_with_knowledge(Duration::from_millis(300)).await;
    assert_eq!(queries, ["When are you open?"]);
    assert_eq!(waited, Duration::from_millis(300));
    let n = request.messages.len();
    assert!(
        matches!(&request.messages[n - 2], ChatMessage::User(m)
            if m == "Found 1 similar documents:\nDocument: hours.md (Confidence: 0.9)\nOpen 9 to 5."),
        "{:?}",
        request.messages
    );
    assert!(matches!(&request.messages[n - 1], ChatMessage::User(m) if m == "When are you open?"));
}

#[tokio::test(start_paused = true)]
async fn a_slow_index_delays_the_answer_by_the_bound_at_most() {
    let (waited, request, _) = asked_with_knowledge(Duration::from_secs(30)).await;
    assert_eq!(waited, crate::conversation::knowledge::LOOKUP_BOUND);
    assert!(!request.messages.iter().any(|m| matches!(m, ChatMessage::User(u) if u.starts_with("Found"))));
}

/// A conversation kept at a turn boundary goes on in another engine (another process, after a
/// crash or a move): the bot says it lost the person for a moment, does not greet again, and
/// answers what was left unanswered, with the whole history.
#[tokio::test(start_paused = true)]
async fn a_conversation_kept_at_a_turn_boundary_goes_on_in_another_engine() {
    let mut first = start(config(Dials::default()), vec![reply("Sure, for what time? ")]);
    let (greeting, _) = first.next_message_kept().await;
    assert_eq!(greeting.speaker, Speaker::Bot);
    first.says("A table for two.").await;
    let (heard, kept) = first.next_message_kept().await;
    assert_eq!(heard.text, "A table for two.");
    // The process running it dies before the answer is played.
    first.engine.abort();
    assert!(kept.greeted && kept.unanswered(), "{kept:?}");
    assert!(matches!(kept.history.last(), Some(ChatMessage::User(u)) if u == "A table for two."));
    // What is kept survives the database as JSON.
    let stored = serde_json::to_value(&kept).unwrap();
    assert_eq!(stored["history"][2], json!({"role": "user", "content": "A table for two."}));
    let kept: Durable = serde_json::from_value(stored).unwrap();

    let mut second =
        start_from(Some(kept), config(Dials::default()), vec![reply("Sure, for what time? ")], Duration::ZERO, None);
    let sorry = second.next_message().await;
    assert_eq!((sorry.speaker, sorry.text.as_str()), (Speaker::Bot, RESUME_LINE));
    let answer = second.next_message().await;
    assert_eq!((answer.speaker, answer.text.as_str()), (Speaker::Bot, "Sure, for what time?"));
    let request = second.llm.requests.lock().unwrap()[0].clone();
    assert!(matches!(&request.messages[1], ChatMessage::Assistant { content: Some(c), .. } if c.starts_with("Hello")));
    assert!(matches!(&request.messages[2], ChatMessage::User(u) if u == "A table for two."));
    assert!(matches!(&request.messages[3], ChatMessage::Assistant { content: Some(c), .. } if c == RESUME_LINE));
    let transcript = second.end().await;
    assert_eq!(transcript.len(), 2, "no greeting again: {transcript:?}");
}

/// A tool call under way in the process that stopped: its result went with it. The new engine says
/// so in the transcript and to the model (every tool call has its result), and goes on.
#[tokio::test(start_paused = true)]
async fn an_action_under_way_when_the_call_moved_is_reported_lost() {
    let kept = Durable {
        history: vec![
            ChatMessage::System("You book tables.".into()),
            ChatMessage::User("Book it.".into()),
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![ToolCall { id: "call_9".into(), name: "Book".into(), arguments: "{}".into() }],
            },
        ],
        turn: 3,
        greeted: true,
        in_flight: vec![InFlight {
            id: 1,
            action_type: "action_external".into(),
            name: "Book".into(),
            params: json!({}),
            tool_call_id: Some("call_9".into()),
        }],
        ..Durable::default()
    };
    let mut call = start_from(Some(kept), config(Dials::default()), vec![], Duration::ZERO, None);
    let (line, payload) = call.next_action().await;
    assert!(line.starts_with("BOT_ACTION_FINISH: !ACTION Book FAILED:"), "{line}");
    assert_eq!(payload["action_output"]["response"]["success"], false);
    let (sorry, kept) = call.next_message_kept().await;
    assert_eq!(sorry.text, RESUME_LINE);
    assert!(kept.in_flight.is_empty(), "nothing is under way here");
    assert!(kept
        .history
        .iter()
        .any(|m| matches!(m, ChatMessage::Tool { tool_call_id, .. } if tool_call_id == "call_9")));
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn text_that_is_not_words_never_becomes_a_turn() {
    let mut call = start(config(Dials::default()), vec![reply("Of course. ")]);
    call.next_message().await;
    // A recogniser looping on a syllable, and what it makes of a cough.
    for text in ["We, we, we, we, we, we,", "You", "[BLANK_AUDIO]"] {
        call.person.send(SttEvent::Final { text: text.into(), speech_final: true, spoken: None }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    call.says("A table for two.").await;
    let heard = call.next_message().await;
    assert_eq!((heard.speaker, heard.text.as_str()), (Speaker::Human, "A table for two."), "nothing before it");
    assert_eq!(call.llm.requests.lock().unwrap().len(), 1, "only the sentence was answered");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn at_low_an_interim_stops_the_bot_only_on_enough_speech() {
    let mut call = start(config(Dials::default()), vec![reply(&format!("{} ", words(40)))]);
    call.next_message().await;
    call.says("What do you have?").await;
    call.next_message().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on = |ms: u64| Some(Spoken { start: Duration::ZERO, end: Duration::from_millis(ms) });
    // Four words guessed on a syllable: not evidence yet.
    let text = "hey man you are";
    call.person.send(SttEvent::Interim { text: text.into(), spoken: on(250) }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call.played.lock().unwrap().clears, 0, "the bot goes on");
    call.person.send(SttEvent::Interim { text: "sorry what was the price".into(), spoken: on(900) }).await.unwrap();
    let cut = call.next_message().await;
    assert_eq!((cut.speaker, cut.cut_off), (Speaker::Bot, true));
    assert_eq!(call.played.lock().unwrap().clears, 1);
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_never_pauses_is_answered_at_the_longest_turn() {
    let dials = Dials { speed: 2.0, ..Dials::default() };
    let longest = dials.longest_turn();
    let mut call = start(config(dials), vec![reply("Let me stop you there. ")]);
    call.next_message().await;
    let began = Instant::now();
    let person = call.person.clone();
    // Interims every 400 ms, never a final (a radio behind the caller).
    let talker = tokio::spawn(async move {
        for i in 0..100 {
            let text = format!("and then {i} more things");
            if person.send(SttEvent::Interim { text, spoken: None }).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
    let heard = call.next_message().await;
    let waited = Instant::now() - began;
    assert_eq!(heard.speaker, Speaker::Human);
    assert!(heard.text.starts_with("and then"), "{heard:?}");
    assert!(waited >= longest && waited < longest + Duration::from_secs(1), "{waited:?}");
    talker.abort();
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn latency_is_dated_from_where_the_recogniser_says_the_speech_ended() {
    let mut call = start(config(Dials::default()), vec![reply("Sure. ")]);
    call.next_message().await;
    // Two seconds of the caller's audio reach speech-to-text...
    for _ in 0..100 {
        call.stream.send(FromCall::Audio(vec![0xff; 160])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...whose last word ended 300 ms before the end of it (the session opened before any audio).
    let end = Duration::from_millis(1_700);
    let spoken = Some(Spoken { start: end.saturating_sub(Duration::from_millis(800)), end });
    call.person.send(SttEvent::Final { text: "A table for two.".into(), speech_final: true, spoken }).await.unwrap();
    call.next_message().await;
    call.next_message().await;
    let latency = call.latencies.last().copied().expect("the turn's latency");
    // The final came 300 ms after the speech ended (give or take a frame), and the turn ended
    // with it (speech_final); everything after is counted from there too.
    let near = |d: Duration, ms: u64| d.abs_diff(Duration::from_millis(ms)) <= Duration::from_millis(40);
    assert!(near(latency.end_of_turn, 300), "{latency:?}");
    assert!(latency.recognized.is_some_and(|r| near(r, 300)), "{latency:?}");
    assert!(latency.first_frame.is_some_and(|f| f >= latency.end_of_turn), "{latency:?}");
    call.end().await;
}

#[tokio::test(start_paused = true)]
async fn the_detector_tells_speech_to_text_where_speech_starts_and_stops_and_a_burst_is_nothing() {
    let (_person, heard) = mpsc::channel(4);
    let stt = Arc::new(FakeStt { events: Mutex::new(Some(heard)), ..FakeStt::default() });
    let (stream, from_call) = mpsc::channel(64);
    let (to_call, _carrier) = mpsc::channel(64);
    let (events, _events) = mpsc::channel(64);
    let providers = Providers {
        stt: stt.clone(),
        llm: FakeLlm::new(vec![]),
        voice: Arc::new(FakeVoice),
        actions: Arc::new(FakeRunner),
        knowledge: None,
        turn_models: TurnModels::default(),
    };
    let engine = tokio::spawn(run(config(Dials::default()), providers, from_call, to_call, events));
    let tone = |ms: usize, amplitude: f32| -> Vec<i16> {
        (0..8 * ms).map(|i| (amplitude * (i as f32 * 0.6).sin()) as i16).collect()
    };
    // Silence, a 200 ms burst, silence, a second of loud speech, silence.
    let audio = [tone(600, 0.0), tone(200, 9_000.0), tone(800, 0.0), tone(1_000, 9_000.0), tone(800, 0.0)].concat();
    for frame in audio.chunks(160) {
        stream.send(FromCall::Audio(Encoding::Mulaw8k.encode(frame))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stream.send(FromCall::Stopped).await;
    engine.await.unwrap();
    let mut received = stt.audio.lock().unwrap().take().expect("a session");
    let mut voice = Vec::new();
    while let Ok(input) = received.try_recv() {
        if let SttInput::Voice(event) = input {
            voice.push(event);
        }
    }
    use crate::conversation::vad::detector::SpeechEvent;
    let [SpeechEvent::Started { at: started }, SpeechEvent::Stopped { at: stopped }] = voice[..] else {
        panic!("one utterance, not the burst: {voice:?}")
    };
    let near = |d: Duration, ms: u64| d.abs_diff(Duration::from_millis(ms)) <= Duration::from_millis(60);
    assert!(near(started, 1_600) && near(stopped, 2_600), "{voice:?}");
}

/// An engine as its task holds it, with the call's voice heard by loudness and no model (the
/// model's verdicts are given by the test).
async fn engine_hearing(dials: Dials) -> Engine {
    let providers = Providers {
        stt: Arc::new(FakeStt::default()),
        llm: FakeLlm::new(vec![]),
        voice: Arc::new(FakeVoice),
        actions: Arc::new(FakeRunner),
        knowledge: None,
        turn_models: TurnModels::default(),
    };
    let (to_call, _) = mpsc::channel(1);
    let (events, _) = mpsc::channel(1);
    let mut engine = Engine::new(config(dials), providers, Outlet::new(to_call), events);
    let (voice, _) = voice::Voice::new(&TurnModels::default(), Encoding::Mulaw8k, true)
        .await
        .expect("loudness, for a recogniser that needs it");
    engine.voice = Some(voice);
    engine
}

#[tokio::test(start_paused = true)]
async fn the_models_verdict_on_a_pause_sets_the_wait_from_when_the_caller_stopped() {
    let mut engine = engine_hearing(Dials::default()).await;
    let waits = Dials::default().end_of_turn_waits();
    let stopped = Instant::now();
    let pause = {
        let voice = engine.voice.as_mut().unwrap();
        voice.pause = 3;
        voice.stopped_at = Some(stopped);
        voice.pause
    };
    engine.heard = "I would like a table.".into();
    engine.verdict(pause, 0.9);
    assert_eq!(engine.turn_ends_at, Some(stopped + waits.complete), "done: the short wait");
    engine.heard = "I would like a".into();
    engine.verdict(pause, 0.9);
    let (finished, unfinished) =
        (Dials::default().endpointing().after_punctuation, Dials::default().endpointing().otherwise);
    assert_eq!(
        engine.turn_ends_at,
        Some(stopped + unfinished),
        "done, say the sounds; not the words: the silence rule after unfinished words"
    );
    engine.heard = "I would like a table.".into();
    engine.verdict(pause, 0.1);
    assert_eq!(
        engine.turn_ends_at,
        Some(stopped + unfinished),
        "not done, say the sounds; done, the words: longer than the silence rule after a sentence"
    );
    assert!(unfinished > finished && waits.incomplete > unfinished);
    engine.heard = "I would like a".into();
    engine.verdict(pause, 0.1);
    assert_eq!(engine.turn_ends_at, Some(stopped + waits.incomplete), "not done, say both: the long wait");
    engine.turn_ends_at = None;
    engine.verdict(pause - 1, 0.9);
    assert_eq!(engine.turn_ends_at, None, "a verdict on a pause the caller spoke through is dropped");

    // Words still to come (the local recogniser's final follows the pause): the verdict waits for
    // them, and the words end the turn at the verdict's time.
    engine.heard.clear();
    engine.verdict(pause, 0.9);
    assert_eq!(engine.turn_ends_at, None);
    engine.voice.as_mut().unwrap().session_opened();
    let spoken = Some(Spoken { start: Duration::ZERO, end: Duration::ZERO });
    engine.heard_event(SttEvent::Final { text: "A table for two.".into(), speech_final: true, spoken }).await;
    assert_eq!(engine.turn_ends_at, Some(stopped + waits.complete));
}

#[tokio::test(start_paused = true)]
async fn the_model_hears_a_pause_before_the_detector_is_sure_and_its_verdict_is_used_at_the_stop() {
    let mut engine = engine_hearing(Dials::default()).await;
    let tone: Vec<i16> = (0..8 * 600).map(|i| (9_000.0 * (i as f32 * 0.6).sin()) as i16).collect();
    let quiet = |frames: usize| std::iter::repeat_n(&[0i16; 160][..], frames);
    async fn hear(engine: &mut Engine, frames: Vec<&[i16]>) {
        for frame in frames {
            engine.hear_voice(&Encoding::Mulaw8k.encode(frame), None).await;
            tokio::time::advance(Duration::from_millis(20)).await;
        }
    }
    // Speech, then a pause of 120 ms: past the probe, short of the detector's stop.
    hear(&mut engine, quiet(10).chain(tone.chunks(160)).chain(quiet(6)).collect()).await;
    let voice = engine.voice.as_ref().unwrap();
    assert!(voice.speaking(), "the detector is not sure yet");
    assert!(voice.probing.is_some(), "the model hears the pause already");
    let probed = voice.pause;

    // The caller speaks on: the pause was between words, and its verdict is stale.
    hear(&mut engine, tone.chunks(160).chain(quiet(6)).collect()).await;
    let voice = engine.voice.as_ref().unwrap();
    assert!(voice.pause > probed, "a new pause");
    engine.verdict(probed, 0.9);
    assert_eq!(engine.voice.as_ref().unwrap().verdict, None, "a verdict on a pause spoken through is dropped");

    // This pause's verdict comes before the stop: kept, and used when the detector stops.
    let pause = engine.voice.as_ref().unwrap().pause;
    engine.heard = "A table for two.".into();
    engine.verdict(pause, 0.9);
    assert_eq!(engine.turn_ends_at, None, "not before the detector is sure the caller stopped");
    hear(&mut engine, quiet(10).collect()).await;
    let voice = engine.voice.as_ref().unwrap();
    assert!(!voice.speaking());
    assert_eq!(voice.pause, pause, "the stop is the pause the model heard");
    let stopped = voice.stopped_at.expect("stopped");
    let ends = engine.turn_ends_at.expect("the verdict ends the turn");
    let dials = Dials::default();
    assert!(ends >= stopped + dials.end_of_turn_waits().complete, "{:?}", ends - stopped);
    assert!(
        ends < stopped + dials.endpointing().after_punctuation,
        "sooner than the silence rule: {:?}",
        ends - stopped
    );
}

#[test]
fn a_pause_heard_ahead_of_the_stop_is_heard_as_long_as_the_stops() {
    // 1 s of speech, then 64 ms of the pause (its line noise: 1, 2, 3, 1, 2, 3, ...).
    let speech = vec![9_000i16; 16_000];
    let pause: Vec<i16> = (0..1_024).map(|i| (i % 3 + 1) as i16).collect();
    let heard = voice::as_at_the_stop([speech.clone(), pause.clone()].concat(), Duration::from_millis(64));
    // 192 ms of pause in all: its own 64 ms three times over.
    assert_eq!(heard.len(), 16_000 + 3_072);
    assert_eq!(&heard[..16_000], &speech[..]);
    assert_eq!(heard[16_000..], [pause.clone(), pause.clone(), pause].concat());
    // A pause as long as the stop's, or no pause at all: as heard.
    let long = [speech.clone(), vec![1; 3_200]].concat();
    assert_eq!(voice::as_at_the_stop(long.clone(), Duration::from_millis(200)), long);
    assert_eq!(voice::as_at_the_stop(speech.clone(), Duration::ZERO), speech);
}

#[tokio::test(start_paused = true)]
async fn no_wait_runs_past_the_longest_turn() {
    let dials = Dials { speed: 2.0, ..Dials::default() };
    let mut engine = engine_hearing(dials.clone()).await;
    let began = Instant::now();
    engine.turn_began = Some(began);
    tokio::time::advance(dials.longest_turn() - Duration::from_millis(100)).await;
    let stopped = Instant::now();
    {
        let voice = engine.voice.as_mut().unwrap();
        voice.pause = 1;
        voice.stopped_at = Some(stopped);
    }
    engine.heard = "and another thing".into();
    engine.verdict(1, 0.1);
    assert_eq!(engine.turn_ends_at, Some(began + dials.longest_turn()), "capped, not two seconds on");
}

#[tokio::test(start_paused = true)]
async fn a_noise_long_ago_does_not_shorten_a_later_turn() {
    let dials = Dials::default();
    let mut engine = engine_hearing(dials.clone()).await;
    // Quiet, then 400 ms of a loud line (the detector hears speech), which stops with nothing said.
    let tone: Vec<i16> = (0..8 * 400).map(|i| (9_000.0 * (i as f32 * 0.6).sin()) as i16).collect();
    let quiet = || std::iter::repeat_n(&[0i16; 160][..], 40);
    for frame in quiet().chain(tone.chunks(160)).chain(quiet()) {
        engine.hear_voice(&Encoding::Mulaw8k.encode(frame), None).await;
        tokio::time::advance(Duration::from_millis(20)).await;
    }
    assert!(engine.spoke_until.is_some(), "the detector heard it stop");
    assert_eq!(engine.turn_began, None, "no words: no turn began");
    tokio::time::advance(dials.longest_turn()).await;
    let spoken = Some(Spoken { start: Duration::ZERO, end: Duration::ZERO });
    engine.heard_event(SttEvent::Final { text: "I would like".into(), speech_final: false, spoken }).await;
    let wait = engine.turn_ends_at.unwrap() - Instant::now();
    assert_eq!(wait, dials.endpointing().otherwise, "the silence rule's whole wait");
}

#[tokio::test(start_paused = true)]
async fn the_silence_rule_counts_from_where_the_caller_stopped() {
    let dials = Dials::default();
    let mut engine = engine_hearing(dials.clone()).await;
    engine.voice.as_mut().unwrap().session_opened();
    let tone: Vec<i16> = (0..8 * 800).map(|i| (9_000.0 * (i as f32 * 0.6).sin()) as i16).collect();
    let quiet = || std::iter::repeat_n(&[0i16; 160][..], 25);
    for frame in quiet().chain(tone.chunks(160)).chain(quiet()) {
        engine.hear_voice(&Encoding::Mulaw8k.encode(frame), None).await;
        tokio::time::advance(Duration::from_millis(20)).await;
    }
    let stopped = engine.voice.as_ref().unwrap().stopped_at.expect("the detector heard the caller stop");
    // The words end where the speech did (500 ms of quiet, then 800 ms of it).
    let spoken = Some(Spoken { start: Duration::from_millis(500), end: Duration::from_millis(1_300) });
    engine.heard_event(SttEvent::Final { text: "I would like".into(), speech_final: false, spoken }).await;
    assert_eq!(engine.turn_ends_at, Some(stopped + dials.endpointing().otherwise));
    // Words that end elsewhere (a recogniser without timings): from when they came.
    engine.turn_ends_at = None;
    engine.heard_event(SttEvent::Final { text: "a table".into(), speech_final: false, spoken: None }).await;
    assert_eq!(engine.turn_ends_at, Some(Instant::now() + dials.endpointing().otherwise));
}

#[test]
fn an_interim_agrees_with_the_one_before_when_it_goes_on_from_it() {
    use super::hearing::agrees;
    assert!(agrees("Sorry, what was the", "sorry what was the price"));
    assert!(agrees("sorry what wa", "Sorry, what was the price?"), "the last word revised");
    assert!(!agrees("And I'm each and em,", "Mm hmm, yeah."));
    assert!(!agrees("", "sorry what was the price"), "the first interim agrees with nothing");
    assert!(!agrees("sorry", "sorry what was the price"), "one word is too little to agree on");
}

#[tokio::test]
async fn a_recogniser_with_its_own_endpointing_gets_no_loudness_detector() {
    // Without the neural detector, loudness runs only for a recogniser that needs it: a cloud one
    // would pay for it on every frame and have turns held while the line is loud.
    assert!(voice::Voice::new(&TurnModels::default(), Encoding::Mulaw8k, false).await.is_none());
    assert!(voice::Voice::new(&TurnModels::default(), Encoding::Mulaw8k, true).await.is_some());
}
