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
use std::sync::Mutex;

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

pub use crate::conversation::audio::Encoding as AudioFormat;
pub use crate::conversation::media::ToCall;

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
    port: Option<MediaPort>,
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
    fn update(&self, call_id: Uuid, f: impl FnOnce(&mut StreamStats)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED {
            map.retain(|_, e| !e.stats.closed);
        }
        let entry = map.entry(call_id).or_insert_with(|| Entry { stats: StreamStats::default(), port: None });
        f(&mut entry.stats);
    }

    /// Marks the stream bound and opens its port; returns the receiving end for the session.
    fn bind(&self, call_id: Uuid, format: AudioFormat) -> mpsc::Receiver<ToCall> {
        let (tx, rx) = mpsc::channel(PORT_BUFFER);
        self.update(call_id, |s| s.bound = true);
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&call_id) {
            entry.port = Some(MediaPort { format, to_call: tx });
        }
        rx
    }

    fn close(&self, call_id: Uuid) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&call_id) {
            entry.stats.closed = true;
            entry.port = None;
        }
    }

    pub fn get(&self, call_id: Uuid) -> Option<StreamStats> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id).map(|e| e.stats.clone())
    }

    /// The port of a call's bound, open stream on this process.
    pub fn port(&self, call_id: Uuid) -> Option<MediaPort> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id).and_then(|e| e.port.clone())
    }
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
