//! A call's media stream as the carrier holds it, on either carrier: how the carrier says a call
//! was answered and opens its stream, how the person's audio goes up the stream, whether the
//! carrier was told to hang up — and the carrier's side of the stream, which plays the server's
//! audio in real time, as a phone line does: it queues the audio, echoes each mark (Twilio's
//! `mark`, Vonage's `notify`) once the audio queued before it has played by the clock, and on a
//! clear drops what is queued and not yet played (Twilio then echoes the marks still pending, as
//! it documents; Vonage answers `websocket:cleared`). It records what it played, when, and every
//! clear.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::Message;

use super::{FakeTwilio, FakeVonage};

/// A client's websocket.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Twilio,
    Vonage,
}

pub const STREAM_SID: &str = "MZ1";

impl Line {
    /// How many bytes a millisecond of the stream's audio takes (μ-law at 8 kHz; 16-bit PCM at
    /// 16 kHz).
    pub fn bytes_per_ms(self) -> usize {
        match self {
            Line::Twilio => 8,
            Line::Vonage => 32,
        }
    }

    pub fn bytes(self, length: Duration) -> usize {
        self.bytes_per_ms() * length.as_millis() as usize
    }

    pub fn ms(self, bytes: usize) -> u64 {
        (bytes / self.bytes_per_ms()) as u64
    }

    /// The clear the server sends this carrier.
    pub fn clear_message(self) -> Value {
        match self {
            Line::Twilio => json!({"event": "clear", "streamSid": STREAM_SID}),
            Line::Vonage => json!({"action": "clear"}),
        }
    }

    /// The output format asked of Azure's voices for this carrier.
    pub fn azure_format(self) -> &'static str {
        match self {
            Line::Twilio => "raw-8khz-8bit-mono-mulaw",
            Line::Vonage => "raw-16khz-16bit-mono-pcm",
        }
    }

    /// The person picks up: the carrier (`twilio` or `vonage`) says so and opens the call's media
    /// stream.
    pub async fn pick_up(self, twilio: &FakeTwilio, vonage: &FakeVonage, call: &Value) -> Carrier {
        let telephony_id = call["telephony_id"].as_str().unwrap();
        match self {
            Line::Twilio => {
                twilio.status(telephony_id, "in-progress", &[]).await;
                let (_, twiml) = twilio.twiml(telephony_id).await;
                twilio_stream(twilio, &twiml, telephony_id).await
            }
            Line::Vonage => {
                let secret = vonage.state.signature_secret.clone();
                for status in ["started", "ringing", "answered"] {
                    let answered = vonage.event(telephony_id, json!({"status": status}), Some(&secret)).await;
                    assert_eq!(answered, StatusCode::NO_CONTENT);
                }
                let placed = vonage.calls().into_iter().find(|c| c.uuid == telephony_id).unwrap();
                vonage_stream(&placed.body["ncco"]).await
            }
        }
    }

    /// The call's stream closed without the call ending (the server holding it died): the carrier
    /// asks the server again, as it does, and opens the stream it is given. Twilio runs the verb
    /// after `<Connect>` in the TwiML that opened the stream (a signed `<Redirect>` POST);
    /// Vonage reports the websocket `disconnected` (signed, with the websocket's headers) to the
    /// event URL, and follows the transfer to a new NCCO that the server asks of it.
    pub async fn reconnect(self, twilio: &FakeTwilio, vonage: &FakeVonage, call: &Value, old: &Carrier) -> Carrier {
        let telephony_id = call["telephony_id"].as_str().unwrap();
        match self {
            Line::Twilio => {
                let (status, twiml) = twilio.redirect(telephony_id, &old.opened_by).await;
                assert_eq!(status, StatusCode::OK, "{twiml}");
                assert!(twiml.contains("<Stream"), "the resume path answers with a stream: {twiml}");
                twilio_stream(twilio, &twiml, telephony_id).await
            }
            Line::Vonage => {
                let transfers = |vonage: &FakeVonage| {
                    vonage.calls().into_iter().find(|c| c.uuid == telephony_id).unwrap().transfers
                };
                let before = transfers(vonage).len();
                let opened_by: Value = serde_json::from_str(&old.opened_by).unwrap();
                let headers = websocket(&opened_by)["headers"].clone();
                let secret = vonage.state.signature_secret.clone();
                let event = json!({"status": "disconnected", "headers": headers});
                assert_eq!(vonage.event(telephony_id, event, Some(&secret)).await, StatusCode::NO_CONTENT);
                let ncco = super::eventually(Duration::from_secs(10), || {
                    std::future::ready(transfers(vonage).get(before).cloned())
                })
                .await;
                vonage_stream(&ncco).await
            }
        }
    }

    /// Whether the server asked the carrier to hang the call up.
    pub fn asked_to_hang_up(self, twilio: &FakeTwilio, vonage: &FakeVonage, call: &Value) -> bool {
        let telephony_id = call["telephony_id"].as_str().unwrap();
        match self {
            Line::Twilio => twilio
                .requests("POST", &format!("/Calls/{telephony_id}"))
                .iter()
                .any(|form| form.contains(&("Status".into(), "completed".into()))),
            Line::Vonage => vonage.calls().iter().any(|c| c.uuid == telephony_id && c.hung_up),
        }
    }
}

/// The websocket endpoint of an NCCO's `connect` action.
fn websocket(ncco: &Value) -> &Value {
    &ncco.as_array().unwrap().iter().find(|a| a["action"] == "connect").unwrap()["endpoint"][0]
}

/// Vonage connects the websocket `ncco` (a `connect` action) asks for, and says so on it.
pub async fn vonage_stream(ncco: &Value) -> Carrier {
    let endpoint = websocket(ncco);
    let mut carrier = Carrier::connect(Line::Vonage, endpoint["uri"].as_str().unwrap()).await;
    carrier.opened_by = ncco.to_string();
    let mut connected = endpoint["headers"].clone();
    connected["event"] = json!("websocket:connected");
    connected["content-type"] = json!("audio/l16;rate=16000");
    carrier.send(connected);
    carrier
}

/// Twilio connects the stream `twiml` (`<Connect><Stream>`) asks for, for its call `call_sid`.
pub async fn twilio_stream(twilio: &FakeTwilio, twiml: &str, call_sid: &str) -> Carrier {
    let url = twiml.split("url=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let param = |name: &str| {
        twiml.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let mut carrier = Carrier::connect(Line::Twilio, &url).await;
    carrier.opened_by = twiml.to_owned();
    carrier.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
    carrier.send(json!({"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
        "start": {"accountSid": twilio.state.account_sid, "streamSid": STREAM_SID, "callSid": call_sid,
                  "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                  "customParameters": {"call_id": param("call_id"), "token": param("token")}}}));
    carrier
}

/// A clear, as the carrier got it.
#[derive(Debug, Clone)]
pub struct Cleared {
    pub at: Instant,
    pub message: Value,
    /// How many bytes of audio had been played by then.
    pub played: usize,
}

/// What is queued at the carrier, in order.
enum Queued {
    /// Audio, played to its end at `ends`.
    Audio { ends: Instant, bytes: Vec<u8> },
    /// A mark, echoed at `due` (the end of the audio queued before it).
    Mark { due: Instant, echo: Value },
}

#[derive(Default)]
struct Playback {
    queue: VecDeque<Queued>,
    /// When the audio queued so far will have played.
    tail: Option<Instant>,
    /// Every byte played, in order.
    played: Vec<u8>,
    /// Each piece of audio as it finished playing: when, and its bytes.
    finished: Vec<(Instant, Vec<u8>)>,
    /// Each piece of audio as it arrived: when, and its bytes.
    arrived: Vec<(Instant, Vec<u8>)>,
    clears: Vec<Cleared>,
}

impl Playback {
    /// Plays what is due by `now`: audio that has ended, marks whose audio has played.
    fn advance(&mut self, now: Instant, echo: &mpsc::UnboundedSender<Message>) {
        while let Some(front) = self.queue.front() {
            let due = match front {
                Queued::Audio { ends, .. } => *ends,
                Queued::Mark { due, .. } => *due,
            };
            if due > now {
                break;
            }
            match self.queue.pop_front().expect("a front") {
                Queued::Audio { ends, bytes } => {
                    self.played.extend_from_slice(&bytes);
                    self.finished.push((ends, bytes));
                }
                Queued::Mark { echo: message, .. } => {
                    let _ = echo.send(Message::text(message.to_string()));
                }
            }
        }
    }

    fn audio(&mut self, line: Line, now: Instant, bytes: Vec<u8>) {
        self.arrived.push((now, bytes.clone()));
        let starts = self.tail.filter(|t| *t > now).unwrap_or(now);
        let ends = starts + Duration::from_micros((bytes.len() * 1000 / line.bytes_per_ms()) as u64);
        self.tail = Some(ends);
        self.queue.push_back(Queued::Audio { ends, bytes });
    }

    fn mark(&mut self, now: Instant, echo: Value) {
        let due = self.tail.filter(|t| *t > now).unwrap_or(now);
        self.queue.push_back(Queued::Mark { due, echo });
    }

    fn clear(&mut self, line: Line, now: Instant, message: Value, echo: &mpsc::UnboundedSender<Message>) {
        self.advance(now, echo);
        self.clears.push(Cleared { at: now, message, played: self.played.len() });
        for queued in self.queue.drain(..) {
            if let (Line::Twilio, Queued::Mark { echo: message, .. }) = (line, queued) {
                let _ = echo.send(Message::text(message.to_string()));
            }
        }
        self.tail = None;
        if line == Line::Vonage {
            let _ = echo.send(Message::text(json!({"event": "websocket:cleared"}).to_string()));
        }
    }
}

/// The carrier's side of a call's media stream.
pub struct Carrier {
    line: Line,
    send: mpsc::UnboundedSender<Message>,
    playback: Arc<Mutex<Playback>>,
    /// The headers of the answer to the websocket handshake (where a proxy may say which server
    /// took the stream).
    pub handshake: HeaderMap,
    /// What asked the carrier for this stream: the TwiML, or the NCCO as JSON.
    pub opened_by: String,
    /// When the stream closed (from either end), once it has.
    closed: Arc<Mutex<Option<Instant>>>,
}

impl Carrier {
    /// Opens the stream at `url` and plays it.
    pub async fn connect(line: Line, url: &str) -> Carrier {
        let (socket, answer) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut carrier = Carrier::start(line, socket);
        carrier.handshake = answer.headers().clone();
        carrier
    }

    fn start(line: Line, socket: Socket) -> Carrier {
        let (mut write, mut read) = socket.split();
        let (send, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if write.send(message).await.is_err() {
                    return;
                }
            }
        });
        let playback = Arc::new(Mutex::new(Playback::default()));
        let (echo, state) = (send.clone(), playback.clone());
        let closed = Arc::new(Mutex::new(None));
        let closing = closed.clone();
        tokio::spawn(async move {
            let mut clock = tokio::time::interval(Duration::from_millis(5));
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let message = tokio::select! {
                    message = read.next() => match message {
                        Some(Ok(message)) => message,
                        _ => break,
                    },
                    _ = clock.tick() => {
                        state.lock().unwrap().advance(Instant::now(), &echo);
                        continue;
                    }
                };
                let now = Instant::now();
                let mut playback = state.lock().unwrap();
                playback.advance(now, &echo);
                match message {
                    Message::Text(text) => {
                        let event: Value = serde_json::from_str(text.as_str()).unwrap();
                        match (line, event["event"].as_str(), event["action"].as_str()) {
                            (Line::Twilio, Some("media"), _) => {
                                let payload = event["media"]["payload"].as_str().unwrap();
                                playback.audio(line, now, STANDARD.decode(payload).unwrap());
                            }
                            (Line::Twilio, Some("mark"), _) => {
                                let echo = json!({"event": "mark", "streamSid": STREAM_SID, "mark": event["mark"]});
                                playback.mark(now, echo);
                            }
                            (Line::Vonage, _, Some("notify")) => {
                                playback.mark(now, json!({"event": "websocket:notify", "payload": event["payload"]}));
                            }
                            (Line::Twilio, Some("clear"), _) | (Line::Vonage, _, Some("clear")) => {
                                playback.clear(line, now, event, &echo)
                            }
                            _ => panic!("{line:?} does not know {event}"),
                        }
                    }
                    Message::Binary(frame) if line == Line::Vonage => {
                        assert_eq!(frame.len(), 640, "Vonage takes whole 20 ms frames");
                        playback.audio(line, now, frame.to_vec());
                    }
                    Message::Binary(_) => panic!("Twilio takes no binary messages"),
                    _ => {}
                }
            }
            *closing.lock().unwrap() = Some(Instant::now());
        });
        Carrier { line, send, playback, handshake: HeaderMap::new(), opened_by: String::new(), closed }
    }

    /// When the stream closed, once it has (the server closed it, or its connection broke).
    pub fn closed_at(&self) -> Option<Instant> {
        *self.closed.lock().unwrap()
    }

    pub fn send(&self, message: Value) {
        self.send.send(Message::text(message.to_string())).unwrap();
    }

    /// Twilio ends the stream (the call hung up, or moved on to other TwiML).
    pub fn stop(&self) {
        assert_eq!(self.line, Line::Twilio);
        self.send(json!({"event": "stop", "sequenceNumber": "99", "streamSid": STREAM_SID,
                         "stop": {"accountSid": "AC", "callSid": "CA"}}));
    }

    /// The carrier closes the stream (a websocket close), as it does when the call ends.
    pub fn close(&self) {
        let _ = self.send.send(Message::Close(None));
    }

    /// A frame of the person's voice, 20 ms in the stream's encoding, sent up the stream.
    pub fn speak(&self, frame: &[u8]) {
        match self.line {
            Line::Twilio => self.send(json!({"event": "media", "streamSid": STREAM_SID,
                "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": STANDARD.encode(frame)}})),
            Line::Vonage => self.send.send(Message::Binary(frame.to_vec().into())).unwrap(),
        }
    }

    /// How much of the audio made of `byte` (the fake voice's lasting audio) was played, in ms.
    pub fn played_ms_of(&self, byte: u8) -> u64 {
        self.line.ms(self.playback.lock().unwrap().played.iter().filter(|b| **b == byte).count())
    }

    /// How much of the audio made of `byte` had been played when `clear` came, in ms.
    pub fn played_ms_of_before(&self, byte: u8, clear: &Cleared) -> u64 {
        let playback = self.playback.lock().unwrap();
        self.line.ms(playback.played[..clear.played].iter().filter(|b| **b == byte).count())
    }

    /// When the last piece of audio containing `byte` finished playing.
    pub fn finished_playing(&self, byte: u8) -> Option<Instant> {
        let playback = self.playback.lock().unwrap();
        playback.finished.iter().rev().find(|(_, bytes)| bytes.contains(&byte)).map(|(at, _)| *at)
    }

    /// Every byte of audio the server sent, in order, decoded to samples (at the line's rate).
    pub fn arrived_samples(&self) -> Vec<i16> {
        let playback = self.playback.lock().unwrap();
        let bytes: Vec<u8> = playback.arrived.iter().flat_map(|(_, bytes)| bytes.iter().copied()).collect();
        match self.line {
            Line::Twilio => vocode_server::conversation::audio::Encoding::Mulaw8k.decode(&bytes),
            Line::Vonage => vocode_server::conversation::audio::Encoding::Linear16k.decode(&bytes),
        }
    }

    /// When the first piece of audio (containing `byte`, if given) arrived.
    pub fn first_arrived(&self, byte: Option<u8>) -> Option<Instant> {
        let playback = self.playback.lock().unwrap();
        let mut arrived = playback.arrived.iter();
        arrived.find(|(_, bytes)| byte.is_none_or(|b| bytes.contains(&b))).map(|(at, _)| *at)
    }

    /// When the last piece of audio arrived.
    pub fn last_arrived(&self) -> Option<Instant> {
        self.playback.lock().unwrap().arrived.last().map(|(at, _)| *at)
    }

    pub fn clears(&self) -> Vec<Cleared> {
        self.playback.lock().unwrap().clears.clone()
    }
}
