//! The speech-to-text that stands in, on the sandbox carrier's simulated calls only, when no real
//! one is configured. It does not listen to the audio: the simulated person tells it, through a
//! side channel kept per call ([`SpokenLog`]), what they said and when their audio of it started
//! and ended, and it reports that as a live recogniser would — speech starting, growing interim
//! guesses word by word as the audio plays, and a final that ends the utterance once the
//! endpointing silence has passed — each at the time the audio actually reached the call.
//!
//! The side channels of all calls are kept in [`SpokenLogs`], shared by whoever plays the people
//! (the sandbox) and whoever hears them (this recogniser).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, Instant};

use super::{SpeechToText, SttConfig, SttError, SttEvent, SttSession, AUDIO_QUEUE_FRAMES, EVENT_QUEUE};

/// One utterance of a simulated person: its words, and when its audio started and ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    pub text: String,
    pub start: Instant,
    pub end: Instant,
}

#[derive(Default)]
struct Log {
    said: Mutex<Vec<Utterance>>,
    more: Notify,
}

/// One call's side channel: what its simulated person said, in order.
#[derive(Clone)]
pub struct SpokenLog {
    log: Arc<Log>,
    /// The simulated world's clock rate (its `time_scale`): the recogniser's own waits run on it.
    time_scale: f64,
}

impl SpokenLog {
    pub fn new(time_scale: f64) -> Self {
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 { time_scale } else { 1.0 };
        SpokenLog { log: Arc::default(), time_scale }
    }

    /// The person starts saying `text`, whose audio lasts until `end`.
    pub fn say(&self, text: &str, start: Instant, end: Instant) {
        let utterance = Utterance { text: text.to_owned(), start, end: end.max(start) };
        self.log.said.lock().unwrap_or_else(|e| e.into_inner()).push(utterance);
        self.log.more.notify_waiters();
    }

    /// The simulated world's clock rate: 1.0 when its audio plays in real time.
    pub fn time_scale(&self) -> f64 {
        self.time_scale
    }

    /// Everything said so far.
    pub fn said(&self) -> Vec<Utterance> {
        self.log.said.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn nth(&self, n: usize) -> Option<Utterance> {
        self.log.said.lock().unwrap_or_else(|e| e.into_inner()).get(n).cloned()
    }
}

/// The side channels of the calls in progress, by the server's call id.
#[derive(Default)]
pub struct SpokenLogs {
    calls: Mutex<HashMap<String, SpokenLog>>,
}

/// Side channels kept at most; the oldest calls' are long over.
const KEPT: usize = 10_000;

impl SpokenLogs {
    /// Keeps a call's side channel.
    pub fn insert(&self, call_id: &str, log: SpokenLog) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.len() >= KEPT {
            calls.clear();
        }
        calls.insert(call_id.to_owned(), log);
    }

    pub fn get(&self, call_id: &str) -> Option<SpokenLog> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).cloned()
    }

    pub fn remove(&self, call_id: &str) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).remove(call_id);
    }
}

/// The stand-in recogniser of one call.
pub struct SandboxStt {
    log: SpokenLog,
}

impl SandboxStt {
    pub fn new(log: SpokenLog) -> Self {
        SandboxStt { log }
    }
}

impl SpeechToText for SandboxStt {
    fn open(&self, config: SttConfig) -> BoxFuture<'_, Result<SttSession, SttError>> {
        let (audio, audio_rx) = mpsc::channel(AUDIO_QUEUE_FRAMES);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        // Only what is said from now on is heard.
        let from = self.log.said().len();
        let endpointing = Duration::from_millis(u64::from(config.endpointing_ms)).mul_f64(self.log.time_scale);
        tokio::spawn(hear(self.log.clone(), from, endpointing, audio_rx, events_tx));
        Box::pin(async move { Ok(SttSession { audio, events }) })
    }

    fn name(&self) -> &str {
        "sandbox"
    }
}

/// What a recogniser reports of one utterance, and when: speech starting, an interim guess as
/// each word's share of the audio has played, and the final once the endpointing silence after
/// the audio has passed.
pub fn events_of(utterance: &Utterance, endpointing: Duration) -> Vec<(Instant, SttEvent)> {
    let words: Vec<&str> = utterance.text.split_whitespace().collect();
    let length = utterance.end.saturating_duration_since(utterance.start);
    let mut events = vec![(utterance.start, SttEvent::SpeechStarted)];
    for n in 1..words.len() {
        let at = utterance.start + length.mul_f64(n as f64 / words.len() as f64);
        events.push((at, SttEvent::Interim { text: words[..n].join(" "), spoken: None }));
    }
    events.push((utterance.end, SttEvent::Interim { text: words.join(" "), spoken: None }));
    events.push((
        utterance.end + endpointing,
        SttEvent::Final { text: words.join(" "), speech_final: true, spoken: None },
    ));
    events
}

async fn hear(
    log: SpokenLog,
    mut next: usize,
    endpointing: Duration,
    mut audio: mpsc::Receiver<super::SttInput>,
    events: mpsc::Sender<SttEvent>,
) {
    let mut due: std::collections::VecDeque<(Instant, SttEvent)> = Default::default();
    loop {
        let more = log.log.more.notified();
        tokio::pin!(more);
        more.as_mut().enable();
        while let Some(utterance) = log.nth(next) {
            next += 1;
            due.extend(events_of(&utterance, endpointing));
        }
        let at = due.front().map(|(at, _)| *at);
        tokio::select! {
            frame = audio.recv() => {
                // The audio itself is not needed: the side channel says what it holds.
                if frame.is_none() {
                    return;
                }
            }
            _ = &mut more => {}
            _ = sleep_until(at.unwrap_or_else(Instant::now)), if at.is_some() => {
                let (_, event) = due.pop_front().expect("one is due");
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::audio::Encoding;

    #[test]
    fn an_utterance_is_heard_word_by_word_then_finalised_after_the_endpointing_silence() {
        let start = Instant::now();
        let utterance =
            Utterance { text: "Yes, this is Ajay.".into(), start, end: start + Duration::from_millis(1000) };
        let events = events_of(&utterance, Duration::from_millis(500));
        assert_eq!(events[0], (start, SttEvent::SpeechStarted));
        assert_eq!(
            events[1],
            (start + Duration::from_millis(250), SttEvent::Interim { text: "Yes,".into(), spoken: None })
        );
        assert_eq!(events[3].1, SttEvent::Interim { text: "Yes, this is".into(), spoken: None });
        assert_eq!(
            events.last().unwrap(),
            &(
                start + Duration::from_millis(1500),
                SttEvent::Final { text: "Yes, this is Ajay.".into(), speech_final: true, spoken: None }
            )
        );
    }

    #[tokio::test]
    async fn a_session_reports_what_is_said_after_it_opened_and_ends_with_its_audio() {
        let log = SpokenLog::new(0.1);
        let now = Instant::now();
        log.say("Before.", now, now);
        let stt = SandboxStt::new(log.clone());
        let mut config = SttConfig::new(Encoding::Mulaw8k);
        config.endpointing_ms = 500;
        let mut session = stt.open(config).await.unwrap();
        let now = Instant::now();
        log.say("Okay goodbye.", now, now + Duration::from_millis(20));
        let mut heard = Vec::new();
        while let Some(event) = session.events.recv().await {
            let last = matches!(event, SttEvent::Final { .. });
            heard.push(event);
            if last {
                break;
            }
        }
        // Scaled with the simulated world: 500 ms of endpointing at a tenth of the time.
        assert!(now.elapsed() >= Duration::from_millis(70), "{:?}", now.elapsed());
        assert_eq!(
            heard,
            vec![
                SttEvent::SpeechStarted,
                SttEvent::Interim { text: "Okay".into(), spoken: None },
                SttEvent::Interim { text: "Okay goodbye.".into(), spoken: None },
                SttEvent::Final { text: "Okay goodbye.".into(), speech_final: true, spoken: None },
            ]
        );
        drop(session.audio);
        assert_eq!(session.events.recv().await, None, "closing the audio ends the session");
    }
}
