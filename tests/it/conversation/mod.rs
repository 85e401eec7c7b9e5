//! The agent on a live call, end to end: the real server, a fake carrier's media stream on one
//! side, fake Deepgram, OpenAI-compatible and ElevenLabs servers on the other. The agent greets,
//! hears what the person says (audio reaches Deepgram; Deepgram's words come back), answers with
//! the model's words in the voice's audio, keeps the transcript readable through the API, and sends
//! `event_message`s and the `event_transcript` in order — on Twilio and on Vonage, on SQLite and
//! Postgres. The engine's turn-taking itself is tested in `src/conversation/engine/tests.rs`, and
//! end to end, dial by dial, on both carriers, in `behaviours`.

mod actions;
mod behaviours;
mod knowledge;
mod line;
mod recordings_in_a_bucket;
mod recordings_made_here;
mod turn_taking;
mod warm_transfer;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vocode_server::config::{ConversationArgs, ServeArgs};

use crate::support::fake_deepgram::{results, FakeDeepgram};
use crate::support::fake_openai::{FakeOpenAi, Script};
use crate::support::fake_tts::{audio_chunks, FakeTts};
use crate::support::line::Socket;
use crate::support::{
    eventually, live_telephony, on_both_backends, Backend, FakeTwilio, FakeVonage, Options, Receiver, TestApp,
    PUBLIC_KEY_PEM,
};

const OUR_NUMBER: &str = "+14155550100";
const GREETING: &str = "Hello from the restaurant.";

struct World {
    app: TestApp,
    twilio: FakeTwilio,
    vonage: FakeVonage,
    deepgram: FakeDeepgram,
    openai: FakeOpenAi,
    tts: FakeTts,
    receiver: Receiver,
    /// A Vonage number of the account, bought when a test first needs one.
    vonage_number: tokio::sync::OnceCell<String>,
}

/// A world whose server's provider settings `adjust` changes.
async fn world_with(backend: Backend, adjust: impl FnOnce(&mut ConversationArgs)) -> Option<World> {
    world_serving(backend, adjust, |_| {}).await
}

/// A world whose server's provider settings `adjust` changes, and any other setting `tweak`.
async fn world_serving(
    backend: Backend,
    adjust: impl FnOnce(&mut ConversationArgs),
    tweak: impl FnOnce(&mut ServeArgs),
) -> Option<World> {
    let (twilio, vonage) = (FakeTwilio::start().await, FakeVonage::start(PUBLIC_KEY_PEM).await);
    let (deepgram, openai, tts) = (FakeDeepgram::start().await, FakeOpenAi::start().await, FakeTts::start().await);
    let receiver = Receiver::start().await;
    let telephony = live_telephony(&twilio, &vonage);
    let mut conversation = ConversationArgs {
        deepgram_api_key: Some(deepgram.key.clone()),
        deepgram_url: Some(deepgram.url.clone()),
        openai_api_key: Some("sk-test-conversation".into()),
        openai_base_url: Some(openai.base.clone()),
        elevenlabs_api_key: Some(tts.elevenlabs_key.clone()),
        elevenlabs_base_url: Some(tts.base.clone()),
        azure_speech_key: Some(tts.azure_key.clone()),
        azure_speech_base_url: Some(tts.base.clone()),
        ..ConversationArgs::default()
    };
    adjust(&mut conversation);
    let options = Options { telephony, conversation, ..Options::default() };
    let app = TestApp::spawn_with_serve(backend, options, |serve| {
        serve.allow_private_targets = true;
        tweak(serve);
    })
    .await?;
    twilio.own(OUR_NUMBER);
    let (status, conn) = app
        .post(
            "/v1/account_connections/create",
            json!({"type": "account_connection_twilio",
                   "credentials": {"twilio_account_sid": twilio.state.account_sid, "twilio_auth_token": twilio.state.auth_token}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{conn}");
    let (status, number) = app
        .post("/v1/numbers/link", json!({"phone_number": OUR_NUMBER, "telephony_account_connection": conn["id"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{number}");
    Some(World { app, twilio, vonage, deepgram, openai, tts, receiver, vonage_number: Default::default() })
}

async fn world(backend: Backend) -> Option<World> {
    world_with(backend, |_| {}).await
}

fn agent(w: &World) -> Value {
    json!({
        "prompt": {"content": "You book tables."},
        "initial_message": GREETING,
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "webhook": {"subscriptions": ["event_message", "event_transcript"], "url": w.receiver.url},
    })
}

async fn create(w: &World, body: Value) -> Value {
    let (status, call) = w.app.post("/v1/calls/create", body).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    call
}

async fn transcript(w: &World, id: &str) -> Value {
    let (status, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(status, StatusCode::OK);
    call["transcript"].clone()
}

async fn transcript_has(w: &World, id: &str, line: &str) -> String {
    eventually(Duration::from_secs(10), || async {
        transcript(w, id).await.as_str().filter(|t| t.contains(line)).map(str::to_owned)
    })
    .await
}

/// The carrier's side of a media stream: it plays what the server sends — audio into `audio`,
/// each mark echoed back as the carrier does once the audio before it has played (here, at once)
/// — and sends what the test gives it.
struct Carrier {
    send: tokio::sync::mpsc::UnboundedSender<Message>,
    audio: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Carrier {
    fn play(socket: Socket) -> Carrier {
        let (mut write, mut read) = socket.split();
        let (send, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (audio_tx, audio) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if write.send(message).await.is_err() {
                    return;
                }
            }
        });
        let echo = send.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = read.next().await {
                match message {
                    Message::Text(text) => {
                        let event: Value = serde_json::from_str(text.as_str()).unwrap();
                        if event["event"] == "media" {
                            let _ =
                                audio_tx.send(STANDARD.decode(event["media"]["payload"].as_str().unwrap()).unwrap());
                        } else if event["event"] == "mark" {
                            let mark = json!({"event": "mark", "streamSid": "MZ1", "mark": event["mark"]});
                            let _ = echo.send(Message::text(mark.to_string()));
                        } else if event["action"] == "notify" {
                            let notify = json!({"event": "websocket:notify", "payload": event["payload"]});
                            let _ = echo.send(Message::text(notify.to_string()));
                        }
                    }
                    Message::Binary(frame) => {
                        let _ = audio_tx.send(frame.to_vec());
                    }
                    _ => {}
                }
            }
        });
        Carrier { send, audio }
    }

    fn send(&self, message: Message) {
        self.send.send(message).unwrap();
    }

    /// Everything played so far.
    fn heard(&mut self, into: &mut Vec<u8>) {
        while let Ok(chunk) = self.audio.try_recv() {
            into.extend(chunk);
        }
    }
}

/// A Twilio media client on an answered call.
async fn answer_on_twilio(w: &World, call: &Value) -> Carrier {
    let sid = call["telephony_id"].as_str().unwrap();
    w.twilio.status(sid, "in-progress", &[]).await;
    let (_, twiml) = w.twilio.twiml(sid).await;
    let url = twiml.split("url=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let param = |name: &str| {
        twiml.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let carrier = Carrier::play(socket);
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                       "start": {"accountSid": w.twilio.state.account_sid, "streamSid": "MZ1", "callSid": sid,
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 "customParameters": {"call_id": param("call_id"), "token": param("token")}}});
    carrier.send(Message::text(start.to_string()));
    carrier
}

on_both_backends!(world =>
    an_agent_greets_hears_and_answers_on_twilio,
    an_agent_greets_hears_and_answers_on_vonage,
    a_hipaa_call_talks_and_keeps_no_transcript,
);

async fn an_agent_greets_hears_and_answers_on_twilio(w: World) {
    let call = create(&w, json!({"from_number": OUR_NUMBER, "to_number": "16505550701", "agent": agent(&w)})).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let mut carrier = answer_on_twilio(&w, &call).await;

    // The greeting: synthesized by the voice in Twilio's encoding, played on the stream, kept.
    let text = transcript_has(&w, &id, "BOT: Hello from the restaurant.").await;
    assert_eq!(text, format!("BOT: {GREETING}\n"));
    let greeting_request = &w.tts.requests()[0];
    assert_eq!(greeting_request.param("output_format"), Some("ulaw_8000"));
    assert_eq!(greeting_request.json()["text"], GREETING);
    let mut heard = Vec::new();
    carrier.heard(&mut heard);
    assert_eq!(heard, audio_chunks("ulaw_8000").concat(), "the voice's audio reached the carrier as it came");

    // Deepgram hears the call's audio in Twilio's encoding, untouched.
    let connection = &w.deepgram.wait_for_connections(1).await[0];
    assert_eq!(
        (connection.param("encoding"), connection.param("sample_rate")),
        (vec!["mulaw".into()], vec!["8000".into()])
    );
    assert_eq!(connection.authorization.as_deref(), Some(format!("Token {}", w.deepgram.key).as_str()));
    let spoken = vec![0x55u8; 160];
    let media = json!({"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": STANDARD.encode(&spoken)}});
    carrier.send(Message::text(media.to_string()));
    eventually(Duration::from_secs(5), || async { w.deepgram.connections()[0].audio.ends_with(&spoken).then_some(()) })
        .await;

    // The person's words come back from Deepgram; the model answers; the answer is spoken.
    w.openai.then(Script::text(&["Sure, ", "for what ", "time?"]));
    w.deepgram.send(results("A table for two.", true, true)).await;
    let text = transcript_has(&w, &id, "BOT: Sure, for what time?").await;
    assert_eq!(text, format!("BOT: {GREETING}\nHUMAN: A table for two.\nBOT: Sure, for what time?\n"));
    let asked = &w.openai.received()[0];
    assert_eq!(asked.header("authorization"), Some("Bearer sk-test-conversation"));
    assert_eq!(asked.body["model"], "gpt-4o-mini");
    assert_eq!(
        asked.body["messages"],
        json!([{"role": "system", "content": "You book tables."},
               {"role": "assistant", "content": GREETING},
               {"role": "user", "content": "A table for two."}])
    );
    assert_eq!(w.tts.requests()[1].json()["text"], "Sure, for what time?");

    // The stream ends: the transcript goes out after every message, in order.
    carrier.send(Message::text(json!({"event": "stop", "streamSid": "MZ1"}).to_string()));
    eventually(Duration::from_secs(10), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let kinds: Vec<String> = w.receiver.got().iter().map(|r| r.kind()).collect();
        (kinds.len() >= 4).then_some(kinds)
    })
    .await;
    let got = w.receiver.got();
    let kinds: Vec<String> = got.iter().map(|r| r.kind()).collect();
    assert_eq!(kinds, ["event_message", "event_message", "event_message", "event_transcript"]);
    let senders: Vec<Value> = got[..3].iter().map(|r| r.event()["payload"]["sender"].clone()).collect();
    assert_eq!(senders, [json!("bot"), json!("human"), json!("bot")]);
    assert_eq!(got[1].event()["payload"]["text"], "A table for two.");
    assert_eq!(got[3].event()["payload"]["transcript"], json!(text));
    assert!(got.iter().all(|r| r.call_id() == id));
}

async fn an_agent_greets_hears_and_answers_on_vonage(w: World) {
    let (_, number) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    let body = json!({"from_number": number["number"], "to_number": "16505550702", "agent": agent(&w)});
    let call = create(&w, body).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let placed = w.vonage.calls().into_iter().find(|c| Some(c.uuid.as_str()) == call["telephony_id"].as_str()).unwrap();
    let connect = placed.body["ncco"].as_array().unwrap().iter().find(|a| a["action"] == "connect").unwrap().clone();
    let endpoint = &connect["endpoint"][0];
    let (socket, _) = tokio_tungstenite::connect_async(endpoint["uri"].as_str().unwrap()).await.unwrap();
    let mut carrier = Carrier::play(socket);
    let mut connected = endpoint["headers"].clone();
    connected["event"] = json!("websocket:connected");
    carrier.send(Message::text(connected.to_string()));

    transcript_has(&w, &id, "BOT: Hello from the restaurant.").await;
    assert_eq!(w.tts.requests()[0].param("output_format"), Some("pcm_16000"));
    let mut heard = Vec::new();
    carrier.heard(&mut heard);
    let voice = audio_chunks("pcm_16000").concat();
    assert_eq!(heard.len() % 640, 0, "whole 640-byte frames");
    assert_eq!(&heard[..voice.len()], &voice[..], "the voice's audio, then silence to fill the last frame");

    let connection = &w.deepgram.wait_for_connections(1).await[0];
    assert_eq!(
        (connection.param("encoding"), connection.param("sample_rate")),
        (vec!["linear16".into()], vec!["16000".into()])
    );
    carrier.send(Message::Binary(vec![7u8; 640].into()));
    eventually(Duration::from_secs(5), || async {
        w.deepgram.connections()[0].audio.ends_with(&[7u8; 640]).then_some(())
    })
    .await;
    w.openai.then(Script::text(&["Of course, ", "see you then."]));
    w.deepgram.send(results("Seven tonight.", true, true)).await;
    let text = transcript_has(&w, &id, "BOT: Of course, see you then.").await;
    assert_eq!(text, format!("BOT: {GREETING}\nHUMAN: Seven tonight.\nBOT: Of course, see you then.\n"));
}

async fn a_hipaa_call_talks_and_keeps_no_transcript(w: World) {
    let body =
        json!({"from_number": OUR_NUMBER, "to_number": "16505550703", "agent": agent(&w), "hipaa_compliant": true});
    let call = create(&w, body).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let mut carrier = answer_on_twilio(&w, &call).await;
    // The agent still greets…
    let greeting = audio_chunks("ulaw_8000").concat();
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while heard.len() < greeting.len() {
        assert!(tokio::time::Instant::now() < deadline, "the greeting is played");
        tokio::time::sleep(Duration::from_millis(20)).await;
        carrier.heard(&mut heard);
    }
    w.openai.then(Script::text(&["Noted."]));
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results("My date of birth is May first.", true, true)).await;
    eventually(Duration::from_secs(10), || async { (w.tts.requests().len() >= 2).then_some(()) }).await;
    carrier.send(Message::text(json!({"event": "stop", "streamSid": "MZ1"}).to_string()));
    // …but nothing of what was said is kept or sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.app.drain_jobs(Duration::ZERO).await;
    assert_eq!(transcript(&w, &id).await, Value::Null);
    assert!(w.receiver.got().is_empty(), "{:?}", w.receiver.got().iter().map(|r| r.kind()).collect::<Vec<_>>());
}

async fn unconfigured(backend: Backend) -> Option<World> {
    world_with(backend, |settings| *settings = ConversationArgs::default()).await
}

on_both_backends!(unconfigured =>
    a_live_call_whose_agent_cannot_talk_is_refused_and_nothing_is_written,
);

async fn a_live_call_whose_agent_cannot_talk_is_refused_and_nothing_is_written(w: World) {
    let body = json!({"from_number": OUR_NUMBER, "to_number": "16505550704", "agent": agent(&w)});
    let (status, refused) = w.app.post("/v1/calls/create", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("DEEPGRAM_API_KEY"), "{refused}");
    let (_, calls) = w.app.get("/v1/calls/list").await;
    assert_eq!(calls["total"], 0);
    let (_, agents) = w.app.get("/v1/agents/list").await;
    assert_eq!(agents["total"], 0, "the inline agent was not kept either");
    assert!(w.twilio.calls().is_empty(), "nothing was dialled");
}
