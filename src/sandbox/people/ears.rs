//! How a person listens: an energy threshold on the bot's audio as it plays tells when the bot
//! talks and when it has stopped ([`Heard`]), which is what the person's script waits on; and,
//! with the local recogniser installed, each stretch of the bot's speech the person heard is
//! transcribed (Moonshine, as the server's own speech-to-text does), so that what the bot said, as
//! heard on the line, can be compared with the call's transcript.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::line::Line;
use super::{Person, ANSWER_AFTER_S, FRAME, TALKING_RMS};
use crate::conversation::audio::{rms, Resampler};

/// How long the bot must have been quiet to have stopped: longer than a gap between its words,
/// and than a stall of the server's playout on a busy machine (it runs 300 ms ahead).
const HANGOVER: Duration = Duration::from_millis(400);

/// What the person hears of the bot right now.
#[derive(Debug, Clone, Copy)]
pub struct Heard {
    pub talking: bool,
    /// When the bot started talking (while it talks), or stopped (while it is quiet).
    pub since: Instant,
}

/// The person's ears on the bot's audio as it plays: whether the bot talks, the stretch of its
/// speech heard so far, and gaps in it.
pub struct Hearing {
    bot_speech: Vec<i16>,
    /// The bot's audio ran out while it was talking: if more comes before it stops, a gap.
    ran_dry: bool,
    last_loud: Option<Instant>,
    to_understand: mpsc::UnboundedSender<Vec<i16>>,
}

impl Hearing {
    /// Starts listening on `line`; what the bot says is made out in the background.
    pub fn new(line: &Arc<Line>) -> Hearing {
        let (to_understand, understanding) = mpsc::unbounded_channel();
        tokio::spawn(line.clone().listen(understanding));
        Hearing { bot_speech: Vec::new(), ran_dry: false, last_loud: None, to_understand }
    }

    /// More of the bot's audio reached the line: after running dry while the bot talked, a gap.
    pub fn audio_arrived(&mut self, person: &Person) {
        if std::mem::take(&mut self.ran_dry) && person.heard.borrow().talking {
            person.line.underrun();
        }
    }

    /// The person hears a frame of the bot's audio played at `now` (short when the audio ran out).
    pub fn hear(&mut self, person: &Person, frame: &[i16], now: Instant) {
        let talking_before = person.heard.borrow().talking;
        if talking_before && frame.len() < FRAME {
            self.ran_dry = true;
        }
        let loud = rms(frame) > TALKING_RMS;
        if talking_before || loud {
            self.bot_speech.extend_from_slice(frame);
        }
        if loud {
            self.last_loud = Some(now);
            person.heard.send_if_modified(|h| {
                let changed = !h.talking;
                if changed {
                    *h = Heard { talking: true, since: now };
                }
                changed
            });
        } else if let Some(loud) = self.last_loud.filter(|loud| now.saturating_duration_since(*loud) >= HANGOVER) {
            let stopped = person.heard.send_if_modified(|h| {
                let changed = h.talking;
                if changed {
                    *h = Heard { talking: false, since: loud };
                }
                changed
            });
            if stopped {
                self.ran_dry = false;
                person.line.understand(std::mem::take(&mut self.bot_speech), &self.to_understand);
            }
        }
    }

    /// The call is over: what the bot said last is made out too.
    pub fn stop(self, line: &Line) {
        line.understand(self.bot_speech, &self.to_understand);
    }
}

impl Line {
    /// Waits until every stretch of the bot's speech heard so far is transcribed.
    pub async fn understood(&self) {
        loop {
            let done = self.understood_all.notified();
            if self.understanding.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    /// Transcribes a stretch of the bot's speech (8 kHz) in the background, in order.
    fn understand(&self, speech: Vec<i16>, queue: &mpsc::UnboundedSender<Vec<i16>>) {
        if self.ears.is_some() && !speech.is_empty() {
            self.understanding.fetch_add(1, Ordering::SeqCst);
            let _ = queue.send(speech);
        }
    }

    async fn listen(self: Arc<Self>, mut speech: mpsc::UnboundedReceiver<Vec<i16>>) {
        let Some(ears) = self.ears.clone() else { return };
        while let Some(stretch) = speech.recv().await {
            let pcm16k = Resampler::up().process(&stretch);
            let text = match ears.recognizer().await {
                Ok(recognizer) => recognizer.transcribe(pcm16k).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the sandbox person could not make out the bot");
                    String::new()
                }),
                Err(_) => String::new(),
            };
            if !text.is_empty() {
                self.understood.lock().unwrap_or_else(|e| e.into_inner()).push(text);
            }
            self.understanding.fetch_sub(1, Ordering::SeqCst);
            self.understood_all.notify_waiters();
        }
    }
}

impl Person {
    /// Waits until `ready` holds of what is heard, at most `limit`; whether it did.
    async fn until(&self, limit: Duration, ready: impl Fn(&Heard) -> bool) -> bool {
        let mut heard = self.heard.subscribe();
        tokio::time::timeout(limit, heard.wait_for(|h| ready(h))).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits for the bot to talk (at most `limit`), then until it has been quiet long enough to
    /// answer. Whether the bot said anything.
    pub async fn hear_out(&self, limit: Duration) -> bool {
        if !self.until(limit, |h| h.talking).await {
            return false;
        }
        let answer_after = self.scaled(ANSWER_AFTER_S);
        let mut heard = self.heard.subscribe();
        loop {
            let now = *heard.borrow_and_update();
            if now.talking {
                if heard.changed().await.is_err() {
                    return true;
                }
                continue;
            }
            tokio::select! {
                _ = sleep_until(now.since + answer_after) => return true,
                changed = heard.changed() => if changed.is_err() { return true },
            }
        }
    }

    /// Waits until the bot has been talking for `talked` without a pause, at most `limit`.
    pub async fn after_bot_talked(&self, talked: Duration, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut heard = self.heard.subscribe();
        loop {
            let now = *heard.borrow_and_update();
            if now.talking && now.since + talked <= Instant::now() {
                return true;
            }
            let wake = if now.talking { now.since + talked } else { deadline };
            tokio::select! {
                _ = sleep_until(wake.min(deadline)) => if Instant::now() >= deadline { return false },
                changed = heard.changed() => if changed.is_err() { return false },
            }
        }
    }
}
