//! The engine's ports: what the call's audio brings it, what it sends to the call's audio, and
//! what it reports of the conversation. The media streams frame these in their carrier's
//! protocol; the calls service keeps what is reported.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::Durable;

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
    /// The conversation goes on in another process: stop now, keeping what the person heard of
    /// what the bot was saying (the actions under way are left to that process).
    Leave,
    /// The server is going away and no other process can take the call: the bot says this and
    /// hangs up.
    Goodbye(String),
}

/// What can be sent to a call's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCall {
    /// Audio in the stream's encoding, played after what is queued.
    Audio(Vec<u8>),
    /// Reported back (as played) once the audio queued before it has played.
    Mark(String),
    /// Drops the audio queued and not yet played.
    Clear,
}

/// Where the engine's audio goes: the call's current media stream. A call whose audio moves to
/// another stream (a warm transfer puts the bot on a conference leg of its own) keeps its
/// conversation; the outlet is pointed at the new stream. Sending takes no lock across an await.
#[derive(Debug, Clone)]
pub struct Outlet(Arc<Mutex<mpsc::Sender<ToCall>>>);

impl Outlet {
    pub fn new(to_call: mpsc::Sender<ToCall>) -> Self {
        Outlet(Arc::new(Mutex::new(to_call)))
    }

    /// From now on, what the engine sends goes to `to_call`.
    pub fn redirect(&self, to_call: mpsc::Sender<ToCall>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to_call;
    }

    /// Sends to the current stream; `Err` when it is gone.
    pub async fn send(&self, item: ToCall) -> Result<(), ()> {
        let to_call = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        to_call.send(item).await.map_err(|_| ())
    }
}

impl From<mpsc::Sender<ToCall>> for Outlet {
    fn from(to_call: mpsc::Sender<ToCall>) -> Self {
        Outlet::new(to_call)
    }
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

/// When each stage of a turn was reached, from the end of the caller's speech (the detector's
/// offset or the recogniser's last word's end, whichever is later; the last words' arrival when
/// neither is known).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnLatency {
    /// → the engine decides the turn is over.
    pub end_of_turn: Duration,
    /// → the recogniser's final words came in.
    pub recognized: Option<Duration>,
    /// → the model's first token.
    pub first_token: Option<Duration>,
    /// → the voice's first audio.
    pub first_audio: Option<Duration>,
    /// → the first frame sent to the call.
    pub first_frame: Option<Duration>,
}

/// What the engine reports as the conversation goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A finished message (the bot's once it was played, or cut off), and the conversation as it
    /// stands with it, to keep with the message.
    Message(Message, Box<Durable>),
    /// A turn's latencies, once its first frame went out.
    Latency(TurnLatency),
    /// An action started (`output` is `None`) or finished: its transcript line, the
    /// `event_action` payload, and the conversation as it stands with it.
    Action { line: String, payload: Value, state: Box<Durable> },
    /// The conversation is over: hang up.
    HangUp,
}
