//! The live call: everything that exists only while a call is talking, and the one place a
//! conversation starts and ends.
//!
//! Named *session* as the carriers and the providers name the same thing (a Twilio Media Streams
//! session, a Deepgram session): one call's audio, open, with a conversation running on it. It
//! sits between the carrier's media framing below ([`crate::telephony::media`], which knows
//! sockets and encodings) and the engine ([`crate::conversation`], which knows turns and
//! providers), and is the only code that knows both the call (its row, its agent, its carrier)
//! and its conversation:
//! - [`Sessions`], the registry of this process's live calls: each call's current stream, a
//!   stream waiting on standby to take over (a warm transfer's conference leg), and its running
//!   conversation with the outlet its audio goes through;
//! - [`stream`]: binding a carrier's stream to its call (the [`Binder`] the media loop asks) and
//!   the stream's end of the call (audio to the conversation and the recording);
//! - [`talk`]: what a call needs to talk — its agent resolved with this server's providers, its
//!   context filled into the prompt ([`context`]) — loaded once, beside the socket loop, never
//!   in it;
//! - [`converse`]: the conversation's start, and what it reports carried to the calls service
//!   until its end;
//! - [`actions`] and [`warm`]: what the conversation's actions ask of the world outside its audio
//!   (carriers, the users' APIs), including a warm transfer's standby and promotion;
//! - [`record`]: the recording this server makes of the call itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::conversation::engine::{FromCall, Outlet, ToCall};
use crate::telephony::media::{AudioFormat, Binder};

pub mod actions;
pub mod context;
pub mod converse;
pub mod record;
pub mod stream;
pub mod talk;
pub mod warm;

/// How many messages to a call may wait to be framed and sent.
const PORT_BUFFER: usize = 256;

/// A bound stream's sending side.
#[derive(Debug, Clone)]
pub struct MediaPort {
    pub format: AudioFormat,
    pub to_call: mpsc::Sender<ToCall>,
}

/// A live call on this process.
struct Live {
    /// The port of the call's current stream: where its conversation's audio goes.
    port: Option<MediaPort>,
    /// Streams bound so far (each stream's generation is its number).
    generations: u64,
    /// The generation of the current stream, read by each stream to know whether what it hears
    /// is the call's.
    current: Arc<AtomicU64>,
    /// A stream bound and waiting to take over (a warm transfer's conference leg).
    standby: Option<(u64, MediaPort)>,
    /// The call's running conversation: where its streams' audio goes, and where it sends audio.
    conversation: Option<(mpsc::Sender<FromCall>, Outlet)>,
}

impl Live {
    fn new() -> Self {
        Live { port: None, generations: 0, current: Arc::new(AtomicU64::new(0)), standby: None, conversation: None }
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

/// The live calls of this process, by call. A call is forgotten when its audio ends.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<Uuid, Live>>,
}

impl Sessions {
    fn with<T>(&self, call_id: Uuid, f: impl FnOnce(&mut Live) -> T) -> T {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(call_id).or_insert_with(Live::new))
    }

    /// Makes a stream the call's current one (a conversation already running on the call now
    /// talks through it), or, on `standby`, one that waits to take over until
    /// [`Sessions::promote`]; returns the receiving end for the stream.
    fn bind(&self, call_id: Uuid, format: AudioFormat, standby: bool) -> (mpsc::Receiver<ToCall>, Binding) {
        let (tx, rx) = mpsc::channel(PORT_BUFFER);
        let port = MediaPort { format, to_call: tx };
        self.with(call_id, |live| {
            live.generations += 1;
            let generation = live.generations;
            if standby {
                live.standby = Some((generation, port));
            } else {
                if let Some((_, outlet)) = &live.conversation {
                    outlet.redirect(port.to_call.clone());
                }
                live.port = Some(port);
                live.current.store(generation, Ordering::Relaxed);
            }
            (rx, Binding { generation, current: live.current.clone() })
        })
    }

    /// The stream waiting to take over becomes the call's current one; `false` when there is none.
    pub fn promote(&self, call_id: Uuid) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(live) = map.get_mut(&call_id) else {
            return false;
        };
        let Some((generation, port)) = live.standby.take() else {
            return false;
        };
        if let Some((_, outlet)) = &live.conversation {
            outlet.redirect(port.to_call.clone());
        }
        live.port = Some(port);
        live.current.store(generation, Ordering::Relaxed);
        true
    }

    /// A bound stream ended; returns whether it was the call's current one, whose end is the end
    /// of the call's audio (and of its conversation: nothing is kept of the call here then).
    fn close(&self, call_id: Uuid, binding: &Binding) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(live) = map.get_mut(&call_id) else {
            return false;
        };
        if live.standby.as_ref().is_some_and(|(g, _)| *g == binding.generation) {
            live.standby = None;
        }
        if !binding.is_current() {
            return false;
        }
        map.remove(&call_id);
        true
    }

    /// The port of a call's current stream on this process.
    pub fn port(&self, call_id: Uuid) -> Option<MediaPort> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id).and_then(|live| live.port.clone())
    }

    /// The call's conversation, while it runs.
    fn running(&self, call_id: Uuid) -> Option<mpsc::Sender<FromCall>> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&call_id)?.conversation.as_ref().map(|(tx, _)| tx.clone()).filter(|tx| !tx.is_closed())
    }

    /// The call's running conversation, or — when it has none — a place for the one about to
    /// start: its inbound side (to start it with) and the outlet to the call's current stream.
    fn conversation_for(&self, call_id: Uuid) -> Conversation {
        self.with(call_id, |live| {
            if let Some((tx, _)) = live.conversation.as_ref().filter(|(tx, _)| !tx.is_closed()) {
                return Conversation::Running(tx.clone());
            }
            let Some(port) = &live.port else {
                return Conversation::Silent;
            };
            let outlet = Outlet::new(port.to_call.clone());
            let (tx, rx) = mpsc::channel(converse::FROM_CALL_QUEUE);
            live.conversation = Some((tx.clone(), outlet.clone()));
            Conversation::New { from_call: tx, inbound: rx, outlet }
        })
    }
}

/// A bound stream's conversation.
enum Conversation {
    Running(mpsc::Sender<FromCall>),
    New { from_call: mpsc::Sender<FromCall>, inbound: mpsc::Receiver<FromCall>, outlet: Outlet },
    Silent,
}

/// What the media loop asks of the live call's layer; the application state is the binder.
impl Binder for crate::AppState {
    fn bind(
        &self,
        call_id: Uuid,
        line: crate::telephony::media::Line,
        hello: crate::telephony::media::Hello,
    ) -> futures_util::future::BoxFuture<'_, Result<crate::telephony::media::Bound, &'static str>> {
        Box::pin(stream::bind(self, call_id, line, hello))
    }
}
