//! The media-stream websockets that connect an answered call's audio to this server, one module
//! per carrier protocol ([`twilio`], [`vonage`]), behind one carrier-neutral port.
//!
//! A stream is bound to its call by the token this server gave the carrier for it (in the TwiML's
//! `<Parameter>` or the NCCO's headers). Once bound, the stream carries audio both ways: what the
//! carrier sends is counted in [`StreamStats`] (and is what the conversation engine will listen
//! to), and whatever is sent to the call's [`MediaPort`] — audio in the stream's own encoding,
//! marks, clears — is framed in the carrier's protocol and sent. Marks come back from the carrier
//! once the audio queued before them has played.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::AppState;

pub mod actions;
pub mod context;
pub mod converse;
pub mod record;
pub mod twilio;
pub mod vonage;
pub mod warm;

pub use crate::conversation::audio::Encoding as AudioFormat;
use crate::conversation::engine::FromCall;
use crate::conversation::engine::Outlet;
pub use crate::conversation::engine::ToCall;

/// A bound stream's sending side.
#[derive(Debug, Clone)]
pub struct MediaPort {
    pub format: AudioFormat,
    pub to_call: mpsc::Sender<ToCall>,
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

struct Entry {
    stats: StreamStats,
    /// The port of the call's current stream: where its conversation's audio goes.
    port: Option<MediaPort>,
    /// Streams bound so far (each stream's generation is its number).
    generations: u64,
    /// The generation of the current stream, read by each stream to know whether what it hears
    /// is the call's (a stream that is no longer current is heard by nobody).
    current: Arc<AtomicU64>,
    /// A stream bound and waiting to take over (a warm transfer's conference leg).
    standby: Option<(u64, MediaPort)>,
    /// The call's running conversation: where its streams' audio goes, and where it sends audio.
    conversation: Option<(mpsc::Sender<FromCall>, Outlet)>,
}

impl Entry {
    fn new() -> Self {
        Entry {
            stats: StreamStats::default(),
            port: None,
            generations: 0,
            current: Arc::new(AtomicU64::new(0)),
            standby: None,
            conversation: None,
        }
    }
}

/// A stream's place among its call's streams.
pub struct Binding {
    pub generation: u64,
    current: Arc<AtomicU64>,
}

impl Binding {
    /// Whether this is the call's current stream: only its audio is the call's.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Relaxed) == self.generation
    }
}

/// The streams of this process, by call. Finished streams are forgotten past a bound.
#[derive(Default)]
pub struct Streams {
    inner: Mutex<HashMap<Uuid, Entry>>,
}

const REMEMBERED: usize = 10_000;
/// How many messages to a call may wait to be framed and sent.
const PORT_BUFFER: usize = 256;

impl Streams {
    fn with<T>(&self, call_id: Uuid, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED {
            map.retain(|_, e| !e.stats.closed);
        }
        f(map.entry(call_id).or_insert_with(Entry::new))
    }

    fn update(&self, call_id: Uuid, f: impl FnOnce(&mut StreamStats)) {
        self.with(call_id, |e| f(&mut e.stats));
    }

    /// Marks the stream bound and makes it the call's current stream (a conversation already
    /// running on the call now talks through it); returns the receiving end for the session.
    fn bind(&self, call_id: Uuid, format: AudioFormat) -> (mpsc::Receiver<ToCall>, Binding) {
        self.bind_as(call_id, format, false)
    }

    /// Binds a stream that waits to take over the call's audio until [`Streams::promote`].
    fn bind_standby(&self, call_id: Uuid, format: AudioFormat) -> (mpsc::Receiver<ToCall>, Binding) {
        self.bind_as(call_id, format, true)
    }

    fn bind_as(&self, call_id: Uuid, format: AudioFormat, standby: bool) -> (mpsc::Receiver<ToCall>, Binding) {
        let (tx, rx) = mpsc::channel(PORT_BUFFER);
        let port = MediaPort { format, to_call: tx };
        self.with(call_id, |entry| {
            entry.stats.bound = true;
            entry.stats.closed = false;
            entry.generations += 1;
            let generation = entry.generations;
            if standby {
                entry.standby = Some((generation, port));
            } else {
                if let Some((_, outlet)) = &entry.conversation {
                    outlet.redirect(port.to_call.clone());
                }
                entry.port = Some(port);
                entry.current.store(generation, Ordering::Relaxed);
            }
            (rx, Binding { generation, current: entry.current.clone() })
        })
    }

    /// The stream waiting to take over becomes the call's current one; `false` when there is none.
    pub fn promote(&self, call_id: Uuid) -> bool {
        self.with(call_id, |entry| {
            let Some((generation, port)) = entry.standby.take() else {
                return false;
            };
            if let Some((_, outlet)) = &entry.conversation {
                outlet.redirect(port.to_call.clone());
            }
            entry.port = Some(port);
            entry.current.store(generation, Ordering::Relaxed);
            true
        })
    }

    /// A stream ended; returns whether it was the call's current one (whose end is the end of
    /// the call's audio).
    fn close(&self, call_id: Uuid, binding: &Binding) -> bool {
        self.with(call_id, |entry| {
            if entry.standby.as_ref().is_some_and(|(g, _)| *g == binding.generation) {
                entry.standby = None;
            }
            if !binding.is_current() {
                return false;
            }
            entry.stats.closed = true;
            entry.port = None;
            // The conversation ends with the call's audio: nothing is kept of it here.
            entry.conversation = None;
            true
        })
    }

    /// A stream ended (bound or not); when its end is the end of the call's audio, its
    /// conversation is told.
    fn finish(&self, call_id: Uuid, binding: Option<&Binding>, conversation: &Option<mpsc::Sender<FromCall>>) {
        let current = match binding {
            Some(binding) => self.close(call_id, binding),
            None => self.with(call_id, |entry| {
                if entry.port.is_none() {
                    entry.stats.closed = true;
                }
                true
            }),
        };
        if current {
            converse::offer(conversation, FromCall::Stopped);
        }
    }

    pub fn get(&self, call_id: Uuid) -> Option<StreamStats> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id).map(|e| e.stats.clone())
    }

    /// The port of a call's bound, open stream on this process.
    pub fn port(&self, call_id: Uuid) -> Option<MediaPort> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id).and_then(|e| e.port.clone())
    }

    /// The call's conversation, while it runs.
    pub(crate) fn running(&self, call_id: Uuid) -> Option<mpsc::Sender<FromCall>> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&call_id)?.conversation.as_ref().map(|(tx, _)| tx.clone()).filter(|tx| !tx.is_closed())
    }

    fn set_conversation(&self, call_id: Uuid, from_call: mpsc::Sender<FromCall>, outlet: Outlet) {
        self.with(call_id, |entry| entry.conversation = Some((from_call, outlet)));
    }
}

/// The conversation a newly bound stream carries: the call's running one (its audio moved to this
/// stream), or a new one.
async fn conversation_for(
    state: &AppState,
    call_id: Uuid,
    format: AudioFormat,
    carrier_echoes_marks: bool,
) -> Option<mpsc::Sender<FromCall>> {
    let streams = &state.telephony.streams;
    if let Some(running) = streams.running(call_id) {
        return Some(running);
    }
    let port = streams.port(call_id)?;
    let outlet = Outlet::new(port.to_call);
    let from_call = converse::start(state, call_id, format, outlet.clone(), carrier_echoes_marks).await?;
    streams.set_conversation(call_id, from_call.clone(), outlet);
    Some(from_call)
}

const POLICY_VIOLATION: u16 = 1008;

async fn refuse(mut socket: WebSocket, reason: &'static str) {
    tracing::warn!(reason, "refused a media stream");
    let _ = socket.send(Message::Close(Some(CloseFrame { code: POLICY_VIOLATION, reason: reason.into() }))).await;
}

/// Whether the call exists and (when the carrier names it) the carrier's id for it is the call's.
async fn call_matches(state: &AppState, call_id: Uuid, telephony_id: Option<&str>) -> bool {
    match state.calls.find(call_id).await {
        Ok(Some(row)) => match (&row.state.telephony_id, telephony_id) {
            (Some(known), Some(given)) => known == given,
            _ => true,
        },
        _ => false,
    }
}

/// Whether a token the carrier presents is the one this server gave it for the call.
fn token_ok(state: &AppState, call_id: Uuid, named_call: Option<&str>, token: Option<&str>) -> bool {
    named_call == Some(call_id.to_string().as_str())
        && token.is_some_and(|t| state.telephony.check_stream_token(call_id, t))
}
