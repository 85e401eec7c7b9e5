//! The media-stream websockets that carry an answered call's audio: one socket loop ([`serve`]) for
//! every carrier, a [`Protocol`] per carrier ([`twilio`], [`vonage`]) that decodes what the
//! carrier sends and encodes what we send, and the carrier's [`Line`] (decided, for every
//! carrier, in `crate::conversation::line`).
//!
//! A stream is nobody's until it says whose it is: its first meaningful message (Twilio's `start`,
//! Vonage's `websocket:connected`) names the call and carries the token this server gave the
//! carrier for it. The loop hands that [`Hello`] to a [`Binder`] (the live call's layer,
//! the layer above this one implements it), which checks it and returns the stream's [`Bound`] ends.
//! A socket that has not said whose it is within [`BIND_WITHIN`], or says something else first,
//! or is refused by the binder, is closed with a policy-violation close code and logged: an
//! unbound socket never holds a task and a file descriptor for long.
//!
//! Ordering guarantees, once bound:
//! - what is sent to the call goes out in the order it was queued on the port: one task reads the
//!   port's channel and writes the socket, so a mark (Twilio's `mark`, Vonage's `notify`) always
//!   follows every byte of the audio queued before it, and a `clear` follows what it clears;
//! - what the carrier sends reaches the [`StreamEnd`] in the order the carrier sent it, without
//!   waiting: the end offers it on (a full queue drops a frame and counts it) so that a slow
//!   consumer can never stall the socket;
//! - the end hears [`StreamEnd::ended`] exactly once, after the last message, whatever ended the
//!   stream (a `stop`, a close, an error, the server).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub mod twilio;
pub mod vonage;

pub use crate::conversation::audio::Encoding as AudioFormat;
pub use crate::conversation::engine::{FromCall, ToCall};
pub use crate::conversation::line::Line;
use crate::AppState;

/// How long a new socket may take to say which call it is.
pub const BIND_WITHIN: Duration = Duration::from_secs(10);

/// The first message of a stream that says whose it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The call this server named in the stream's parameters (or headers).
    pub call_id: Option<String>,
    /// The token this server gave the carrier for the call's stream.
    pub token: Option<String>,
    /// The carrier's id of the call the stream carries, when it says it.
    pub carrier_call_id: Option<String>,
    /// The carrier's id of the stream, which what we send must name.
    pub stream_id: String,
}

/// A carrier's message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Hello(Hello),
    /// Audio in the line's encoding.
    Audio(Vec<u8>),
    /// A key the person pressed.
    Dtmf(String),
    /// The audio before this mark has played.
    Played(String),
    /// The carrier ends the stream.
    Stop,
    /// Nothing for us (a `connected`, an event we do not use).
    Nothing,
}

/// A carrier's media-stream protocol: its line, and its framing both ways.
pub trait Protocol: Send + 'static {
    /// The protocol's name, in logs and stream statistics.
    const NAME: &'static str;
    const LINE: Line;
    /// Why a stream that sends audio before it says whose it is gets refused, in the protocol's
    /// words.
    const AUDIO_FIRST: &'static str;

    /// What a websocket message from the carrier means; `Err` with the refusal's reason when it is
    /// not one of the protocol's messages.
    fn decode(message: Message) -> Result<Inbound, &'static str>;

    /// Appends the websocket messages that send `out` on the stream `stream_id`.
    fn encode(stream_id: &str, out: ToCall, messages: &mut Vec<Message>);
}

/// A bound stream's other end: where what the call sends goes, and who hears of what is sent to
/// it. Its methods never wait.
pub trait StreamEnd: Send {
    /// Something the call sent; returns whether it is the call's (a stream that is not its call's
    /// current one is heard by nobody).
    fn heard(&mut self, message: FromCall) -> bool;

    /// Audio is about to be sent to the call.
    fn sent(&mut self, audio: &[u8]);

    /// The stream is over: `clean` when the carrier ended it (its `stop`, a close), not when it
    /// broke.
    fn ended(self: Box<Self>, clean: bool) -> BoxFuture<'static, ()>;
}

/// A stream the binder accepted: what to send to the call, and where what it sends goes.
pub struct Bound {
    pub to_call: mpsc::Receiver<ToCall>,
    pub end: Box<dyn StreamEnd>,
    /// Closes the stream from this side, saying why (the call's conversation went elsewhere).
    pub closing: oneshot::Receiver<&'static str>,
}

/// Who takes a stream that said whose it is.
pub trait Binder: Send + Sync {
    /// Checks `hello` against the call and binds the stream; `Err` with the reason refuses it.
    fn bind(&self, call_id: Uuid, line: Line, hello: Hello) -> BoxFuture<'_, Result<Bound, &'static str>>;
}

/// A call's media stream on Twilio's protocol.
pub async fn twilio_stream(state: State<AppState>, call_id: Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    upgrade::<twilio::Twilio>(state, call_id, ws)
}

/// A call's media stream on Vonage's protocol.
pub async fn vonage_stream(state: State<AppState>, call_id: Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    upgrade::<vonage::Vonage>(state, call_id, ws)
}

fn upgrade<P: Protocol>(State(state): State<AppState>, Path(call_id): Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    let binder: Arc<dyn Binder> = Arc::new(state.clone());
    let stats = state.telephony.streams.open(call_id, P::NAME);
    ws.on_upgrade(move |socket| serve::<P>(socket, call_id, binder, stats))
}

const POLICY_VIOLATION: u16 = 1008;

async fn refuse(mut socket: WebSocket, call_id: Uuid, reason: &'static str) {
    tracing::warn!(%call_id, reason, "refused a media stream");
    let _ = socket.send(Message::Close(Some(CloseFrame { code: POLICY_VIOLATION, reason: reason.into() }))).await;
}

/// Waits for the stream to say whose it is; `Err` with why it is refused.
async fn hello<P: Protocol>(socket: &mut WebSocket) -> Result<Hello, &'static str> {
    let waiting = async {
        loop {
            let message = match socket.recv().await {
                Some(Ok(message)) => message,
                _ => return Err(None),
            };
            if matches!(message, Message::Close(_)) {
                return Err(None);
            }
            match P::decode(message) {
                Ok(Inbound::Hello(hello)) => return Ok(hello),
                // Marks and keys of nobody's stream are nobody's news.
                Ok(Inbound::Nothing | Inbound::Played(_) | Inbound::Dtmf(_)) => continue,
                Ok(Inbound::Stop) => return Err(None),
                Ok(Inbound::Audio(_)) => return Err(Some(P::AUDIO_FIRST)),
                Err(reason) => return Err(Some(reason)),
            }
        }
    };
    match tokio::time::timeout(BIND_WITHIN, waiting).await {
        Ok(Ok(hello)) => Ok(hello),
        Ok(Err(Some(reason))) => Err(reason),
        // The carrier went away before it said anything: nothing to refuse.
        Ok(Err(None)) => Err(""),
        Err(_) => Err("the stream did not say which call it is in time"),
    }
}

/// The socket loop, the same for every carrier.
async fn serve<P: Protocol>(mut socket: WebSocket, call_id: Uuid, binder: Arc<dyn Binder>, stats: Stats) {
    let hello = match hello::<P>(&mut socket).await {
        Ok(hello) => hello,
        Err("") => return stats.close(false),
        Err(reason) => {
            stats.close(false);
            return refuse(socket, call_id, reason).await;
        }
    };
    let stream_id = hello.stream_id.clone();
    let Bound { mut to_call, mut end, closing } = match binder.bind(call_id, P::LINE, hello).await {
        Ok(bound) => bound,
        Err(reason) => {
            stats.close(false);
            return refuse(socket, call_id, reason).await;
        }
    };
    stats.bound();
    tracing::info!(%call_id, protocol = P::NAME, "media stream started");
    let mut outgoing = Vec::new();
    // Whether the carrier ended the stream (rather than the connection breaking).
    let mut clean = false;
    let mut closing = Some(closing);
    'stream: loop {
        let message = tokio::select! {
            received = socket.recv() => match received {
                Some(Ok(message)) => message,
                _ => break,
            },
            closed = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => {
                closing = None;
                // A dropped closer asks nothing.
                if let Ok(reason) = closed {
                    tracing::info!(%call_id, reason, "closing a media stream");
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: reason.into() }))).await;
                    clean = true;
                    break;
                }
                continue;
            }
            Some(out) = to_call.recv() => {
                if let ToCall::Audio(audio) = &out {
                    stats.update(|s| s.sent_bytes += audio.len() as u64);
                    end.sent(audio);
                }
                P::encode(&stream_id, out, &mut outgoing);
                for message in outgoing.drain(..) {
                    if socket.send(message).await.is_err() {
                        break 'stream;
                    }
                }
                continue;
            }
        };
        if matches!(message, Message::Close(_)) {
            clean = true;
            break;
        }
        let inbound = match P::decode(message) {
            Ok(inbound) => inbound,
            Err(reason) => {
                end.ended(true).await;
                stats.close(true);
                return refuse(socket, call_id, reason).await;
            }
        };
        match inbound {
            Inbound::Audio(audio) => {
                stats.update(|s| {
                    s.media_frames += 1;
                    s.media_bytes += audio.len() as u64;
                });
                if !audio.is_empty() {
                    end.heard(FromCall::Audio(audio));
                }
            }
            Inbound::Played(mark) => {
                if end.heard(FromCall::Played(mark.clone())) {
                    stats.update(|s| s.marks_played.push(mark));
                }
            }
            Inbound::Dtmf(digit) => {
                stats.update(|s| s.dtmf.push_str(&digit));
                end.heard(FromCall::Dtmf(digit));
            }
            Inbound::Stop => {
                clean = true;
                break;
            }
            Inbound::Hello(_) | Inbound::Nothing => {}
        }
    }
    end.ended(clean).await;
    stats.close(true);
}

/// What a call's media stream has carried so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub protocol: &'static str,
    /// The carrier proved the stream is the call's.
    pub bound: bool,
    pub media_frames: u64,
    pub media_bytes: u64,
    /// Audio bytes sent to the call.
    pub sent_bytes: u64,
    /// The marks the carrier reported played, in order.
    pub marks_played: Vec<String>,
    /// The keys the person pressed, in order.
    pub dtmf: String,
    pub closed: bool,
}

/// A call's stream statistics, written by its streams' loops without taking the table's lock;
/// with how many of its streams are bound and open (the call's audio is over when none is).
#[derive(Clone)]
struct Stats(Arc<Mutex<(StreamStats, usize)>>);

impl Stats {
    fn update(&self, f: impl FnOnce(&mut StreamStats)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()).0);
    }

    fn bound(&self) {
        let mut stats = self.0.lock().unwrap_or_else(|e| e.into_inner());
        stats.0.bound = true;
        stats.0.closed = false;
        stats.1 += 1;
    }

    /// A stream ended: bound (`was_bound`) or not. The call's audio is closed once no bound
    /// stream of it is open.
    fn close(&self, was_bound: bool) {
        let mut stats = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if was_bound {
            stats.1 = stats.1.saturating_sub(1);
        }
        if stats.1 == 0 {
            stats.0.closed = true;
        }
    }
}

/// What the media streams of this process have carried, by call (the latest stream of each).
/// Finished streams are forgotten past a bound.
#[derive(Default)]
pub struct Streams {
    inner: Mutex<HashMap<Uuid, Stats>>,
}

const REMEMBERED: usize = 10_000;

impl Streams {
    /// A socket opened for the call: it counts as the call's stream from now on.
    fn open(&self, call_id: Uuid, protocol: &'static str) -> Stats {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED {
            map.retain(|_, stats| !stats.0.lock().unwrap_or_else(|e| e.into_inner()).0.closed);
        }
        let stats = map.entry(call_id).or_insert_with(|| Stats(Arc::default())).clone();
        stats.update(|s| s.protocol = protocol);
        stats
    }

    /// How many bound streams are open on this process, their ends not yet done (a stream's
    /// recording is written as it ends).
    pub fn bound_open(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|stats| stats.0.lock().unwrap_or_else(|e| e.into_inner()).1).sum()
    }

    pub fn get(&self, call_id: Uuid) -> Option<StreamStats> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&call_id).map(|stats| stats.0.lock().unwrap_or_else(|e| e.into_inner()).0.clone())
    }
}
