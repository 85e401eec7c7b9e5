//! A sandbox call's line: what it carried, kept for the call's recording and for tests. The
//! carrier holds it with the call (the keys it played in, the recording it serves); the person on
//! it writes to it (what they said, into the stand-ins' side channel; both sides' audio; the marks
//! and clears; what they made out of the bot). [`LineReport`] is what tests and the curious read.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::TALKING_RMS;
use crate::conversation::audio::rms;
use crate::conversation::local::LocalSpeech;
use crate::conversation::recording::{Recording, Side};
use crate::conversation::stt::sandbox::SpokenLog;

/// A recording keeps at most this much.
const RECORDING_LIMIT: Duration = Duration::from_secs(600);

/// What a sandbox call's line has carried: the person's side channel, the recording, and the
/// counts tests check.
pub struct Line {
    pub spoken: SpokenLog,
    recording: Mutex<Recording>,
    /// Somebody made a sound: a silent line has no recording.
    loud: AtomicBool,
    clears: AtomicU32,
    marks: AtomicU32,
    /// The person's script is over.
    finished: Signal,
    /// The person is on the line: the call's media stream is open.
    opened: Signal,
    keys: Mutex<String>,
    /// The local recogniser the person listens with, when installed.
    pub(super) ears: Option<Arc<LocalSpeech>>,
    /// What the person understood of the bot, utterance by utterance.
    pub(super) understood: Mutex<Vec<String>>,
    /// Utterances of the bot still being transcribed.
    pub(super) understanding: AtomicU32,
    pub(super) understood_all: Notify,
    /// Times the bot's audio ran dry in the middle of its speech (a gap the person heard).
    underruns: AtomicU32,
}

/// What happened on a sandbox call's line, for tests and the curious.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineReport {
    /// What the person said, in order.
    pub said: Vec<String>,
    /// The `clear`s the server sent.
    pub clears: u32,
    /// The marks (or notifies) sent back as played.
    pub marks_played: u32,
    /// The keys the server pressed through the carrier's DTMF API.
    pub keys: String,
    /// What the person understood the bot to say, utterance by utterance (with the local
    /// recogniser installed; otherwise nothing).
    pub heard: Vec<String>,
    /// Times the bot's audio ran dry in the middle of its speech, and then went on.
    pub underruns: u32,
}

impl Line {
    pub fn new(time_scale: f64, ears: Option<Arc<LocalSpeech>>) -> Self {
        Line {
            spoken: SpokenLog::new(time_scale),
            recording: Mutex::new(Recording::new(RECORDING_LIMIT)),
            loud: AtomicBool::new(false),
            clears: AtomicU32::new(0),
            marks: AtomicU32::new(0),
            finished: Signal::default(),
            opened: Signal::default(),
            keys: Mutex::default(),
            ears,
            understood: Mutex::default(),
            understanding: AtomicU32::new(0),
            understood_all: Notify::new(),
            underruns: AtomicU32::new(0),
        }
    }

    pub fn report(&self) -> LineReport {
        LineReport {
            said: self.spoken.said().into_iter().map(|u| u.text).collect(),
            clears: self.clears.load(Ordering::SeqCst),
            marks_played: self.marks.load(Ordering::SeqCst),
            keys: self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            heard: self.understood.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            underruns: self.underruns.load(Ordering::SeqCst),
        }
    }

    /// The recording as a WAV file, if anybody made a sound.
    pub fn wav(&self) -> Option<Vec<u8>> {
        self.loud.load(Ordering::SeqCst).then(|| self.recording.lock().unwrap_or_else(|e| e.into_inner()).wav())
    }

    /// The person is on the line: the media stream is open.
    pub(super) fn open(&self) {
        self.opened.raise();
    }

    /// Waits until the person is on the line (the media stream is open).
    pub async fn opened(&self) {
        self.opened.raised().await;
    }

    /// The person's script is over.
    pub(super) fn finish(&self) {
        self.finished.raise();
    }

    /// Waits until the person's script is over.
    pub async fn finished(&self) {
        self.finished.raised().await;
    }

    /// The carrier played keys into the call.
    pub fn pressed(&self, keys: &str) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).push_str(keys);
    }

    /// A mark (or notify) went back to the server as played.
    pub(super) fn mark_played(&self) {
        self.marks.fetch_add(1, Ordering::SeqCst);
    }

    /// The server sent a `clear`.
    pub(super) fn cleared(&self) {
        self.clears.fetch_add(1, Ordering::SeqCst);
    }

    /// The bot's audio ran dry in the middle of its speech, and then went on.
    pub(super) fn underrun(&self) {
        self.underruns.fetch_add(1, Ordering::SeqCst);
        metrics::counter!("vocode_sandbox_underruns_total").increment(1);
    }

    /// Keeps what one side said, for the recording.
    pub(super) fn record(&self, side: Side, samples: &[i16]) {
        if rms(samples) > TALKING_RMS {
            self.loud.store(true, Ordering::SeqCst);
        }
        self.recording.lock().unwrap_or_else(|e| e.into_inner()).put(side, std::time::Instant::now(), samples);
    }
}

/// Something that happens once on a line, and can be waited for before or after it does.
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    notify: Notify,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            if self.raised.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}
