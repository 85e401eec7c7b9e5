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
//! - [`converse`]: the conversation's start — fresh, or taken over from the state another process
//!   kept — and what it reports carried to the calls service (each message with the conversation
//!   as it stands, fenced: a process that lost the call writes nothing) until its end;
//! - [`moving`]: a conversation moved to another process (the carrier pointed at the resume path;
//!   the process that binds the new stream takes it over), the drain of a stopping process, and
//!   hearing that another process took one of this process's calls over;
//! - [`actions`] and [`warm`]: what the conversation's actions ask of the world outside its audio
//!   (carriers, the users' APIs), including a warm transfer's standby and promotion;
//! - [`record`]: the recording this server makes of the call itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use crate::conversation::engine::{FromCall, Outlet, ToCall};
use crate::telephony::media::{AudioFormat, Binder};

pub mod actions;
pub mod context;
pub mod converse;
pub mod moving;
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

/// What the streams of a call and its conversation's task share of the conversation.
#[derive(Default)]
pub struct Control {
    /// The generation this process holds the conversation under (0 until it is claimed).
    generation: AtomicI64,
    /// Another process took the conversation over: this one stops and writes nothing more.
    lost: AtomicBool,
    lost_now: Notify,
    /// The last stream broke (the carrier did not end it): the call may come back elsewhere.
    dropped: AtomicBool,
    /// This process is handing the conversation to another.
    moving: AtomicBool,
    /// The conversation's task is over (its writes are done).
    finished: AtomicBool,
    finished_now: Notify,
}

impl Control {
    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.lost_now.notify_waiters();
        self.lost_now.notify_one();
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.finished_now.notify_waiters();
    }

    /// Waits until the conversation's task has finished writing.
    async fn finished(&self) {
        loop {
            let notified = self.finished_now.notified();
            if self.finished.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// A call's running conversation on this process.
#[derive(Clone)]
struct Running {
    from_call: mpsc::Sender<FromCall>,
    outlet: Outlet,
    control: Arc<Control>,
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
    conversation: Option<Running>,
    /// Where each open stream is closed from, by its generation.
    closers: HashMap<u64, oneshot::Sender<&'static str>>,
    /// A warm transfer is moving the call: its stream here goes when the carrier moves the person
    /// into the conference, even if the conversation moved first.
    warm: bool,
}

impl Live {
    fn new() -> Self {
        Live {
            port: None,
            generations: 0,
            current: Arc::new(AtomicU64::new(0)),
            standby: None,
            conversation: None,
            closers: HashMap::new(),
            warm: false,
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

/// The live calls of this process, by call. A call is forgotten when its audio ends.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<Uuid, Live>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Live>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a stream the call's current one (a conversation already running on the call now
    /// talks through it), or, on `standby`, one that waits to take over until
    /// [`Sessions::promote`]; returns the receiving end for the stream, and where to close it from.
    fn bind(
        &self,
        call_id: Uuid,
        format: AudioFormat,
        standby: bool,
    ) -> (mpsc::Receiver<ToCall>, Binding, oneshot::Receiver<&'static str>) {
        let (tx, rx) = mpsc::channel(PORT_BUFFER);
        let (close, closing) = oneshot::channel();
        let port = MediaPort { format, to_call: tx };
        let mut map = self.lock();
        let live = map.entry(call_id).or_insert_with(Live::new);
        live.generations += 1;
        let generation = live.generations;
        live.closers.insert(generation, close);
        if standby {
            live.standby = Some((generation, port));
        } else {
            if let Some(running) = &live.conversation {
                running.outlet.redirect(port.to_call.clone());
            }
            live.port = Some(port);
            live.current.store(generation, Ordering::Relaxed);
        }
        (rx, Binding { generation, current: live.current.clone() }, closing)
    }

    /// The stream waiting to take over becomes the call's current one; `false` when there is none.
    pub fn promote(&self, call_id: Uuid) -> bool {
        let mut map = self.lock();
        let Some(live) = map.get_mut(&call_id) else {
            return false;
        };
        let Some((generation, port)) = live.standby.take() else {
            return false;
        };
        if let Some(running) = &live.conversation {
            running.outlet.redirect(port.to_call.clone());
        }
        live.port = Some(port);
        live.current.store(generation, Ordering::Relaxed);
        true
    }

    /// A bound stream ended; returns whether it was the call's current one, whose end is the end
    /// of the call's audio here (and of its conversation: nothing is kept of the call here then).
    fn close(&self, call_id: Uuid, binding: &Binding) -> bool {
        let mut map = self.lock();
        let Some(live) = map.get_mut(&call_id) else {
            return false;
        };
        if live.standby.as_ref().is_some_and(|(g, _)| *g == binding.generation) {
            live.standby = None;
        }
        live.closers.remove(&binding.generation);
        if !binding.is_current() {
            return false;
        }
        if let Some((generation, port)) = live.standby.take() {
            // A warm transfer's conference leg is waiting to take over (the carrier ended the
            // person's stream before the move into the conference was answered): the
            // conversation goes on through it.
            if let Some(running) = &live.conversation {
                running.outlet.redirect(port.to_call.clone());
            }
            live.port = Some(port);
            live.current.store(generation, Ordering::Relaxed);
            tracing::info!(%call_id, "the call's stream ended with its conference leg waiting: the leg takes over");
            return false;
        }
        map.remove(&call_id);
        true
    }

    /// Whether a stream waits on standby to take the call over (a warm transfer's conference leg,
    /// while the call's own stream here still carries it).
    pub fn has_standby(&self, call_id: Uuid) -> bool {
        self.lock().get(&call_id).is_some_and(|live| live.standby.is_some())
    }

    /// A warm transfer is moving the call (see [`Live::warm`]).
    pub fn warm_transfer(&self, call_id: Uuid) {
        if let Some(live) = self.lock().get_mut(&call_id) {
            live.warm = true;
        }
    }

    /// The port of a call's current stream on this process.
    pub fn port(&self, call_id: Uuid) -> Option<MediaPort> {
        self.lock().get(&call_id).and_then(|live| live.port.clone())
    }

    /// The call's conversation, while it runs here.
    fn running(&self, call_id: Uuid) -> Option<Running> {
        let map = self.lock();
        map.get(&call_id)?.conversation.clone().filter(|r| !r.from_call.is_closed())
    }

    /// The calls whose conversation runs on this process now.
    pub fn live_calls(&self) -> Vec<Uuid> {
        let map = self.lock();
        map.iter()
            .filter(|(_, live)| live.conversation.as_ref().is_some_and(|r| !r.from_call.is_closed()))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The call's running conversation, or — when it has none — a place for the one about to
    /// start: its inbound side (to start it with) and the outlet to the call's current stream.
    fn conversation_for(&self, call_id: Uuid) -> Conversation {
        let mut map = self.lock();
        let Some(live) = map.get_mut(&call_id) else {
            return Conversation::Silent;
        };
        if let Some(running) = live.conversation.as_ref().filter(|r| !r.from_call.is_closed()) {
            return Conversation::Running(running.from_call.clone());
        }
        let Some(port) = &live.port else {
            return Conversation::Silent;
        };
        let outlet = Outlet::new(port.to_call.clone());
        let (tx, rx) = mpsc::channel(converse::FROM_CALL_QUEUE);
        let control = Arc::new(Control::default());
        live.conversation = Some(Running { from_call: tx.clone(), outlet: outlet.clone(), control: control.clone() });
        Conversation::New { from_call: tx, inbound: rx, outlet, control }
    }

    /// Another process runs the call's conversation under `generation` now: if this one ran it
    /// under an older one, it stops (and its stream is closed).
    pub fn taken_over(&self, call_id: Uuid, generation: i64) {
        let Some(running) = self.running(call_id) else { return };
        let held = running.control.generation.load(Ordering::SeqCst);
        if held != 0 && held < generation {
            tracing::info!(%call_id, held, generation, "another process took the call's conversation over: letting go");
            self.lose(call_id, &running.control);
        }
    }

    /// The call's conversation is another process's now: this one's stops and writes nothing
    /// more, and the call's stream here is closed — unless a warm transfer is moving the call (its
    /// stream here goes when the carrier moves the person into the conference).
    fn lose(&self, call_id: Uuid, control: &Control) {
        control.lose();
        let mut map = self.lock();
        let Some(live) = map.get_mut(&call_id) else { return };
        if live.standby.is_some() || live.warm {
            return;
        }
        let current = live.current.load(Ordering::Relaxed);
        if let Some(close) = live.closers.remove(&current) {
            let _ = close.send("the call's conversation is run by another server now");
        }
    }
}

/// A bound stream's conversation.
enum Conversation {
    Running(mpsc::Sender<FromCall>),
    New { from_call: mpsc::Sender<FromCall>, inbound: mpsc::Receiver<FromCall>, outlet: Outlet, control: Arc<Control> },
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
