//! What the engine sends to a call's audio, whatever the carrier: the media streams frame these
//! in their carrier's protocol.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

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
