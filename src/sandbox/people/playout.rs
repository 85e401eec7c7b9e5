//! The bot's audio as it plays at the person's end of the line: queued, and played out in real
//! time 20 ms at a time, as a carrier does. A mark comes back once the audio queued before it has
//! played (Twilio's `mark`, Vonage's `websocket:notify`); a `clear` drops the queued audio and
//! gives back the marks still pending.

use std::collections::VecDeque;

use serde_json::Value;

use super::FRAME;

/// At most this much of the bot's audio is kept queued; a carrier's buffer is bounded too.
const PLAYBACK_LIMIT: usize = 8_000 * 60;

/// Something queued to play: the bot's audio, or a mark to send back once reached.
enum Queued {
    Audio(VecDeque<i16>),
    Mark(Value),
}

#[derive(Default)]
pub struct Playout {
    queue: VecDeque<Queued>,
    queued_samples: usize,
}

impl Playout {
    /// Queues the bot's audio (8 kHz); beyond the limit it is dropped.
    pub fn enqueue(&mut self, samples: Vec<i16>) {
        if self.queued_samples + samples.len() > PLAYBACK_LIMIT {
            return;
        }
        self.queued_samples += samples.len();
        match self.queue.back_mut() {
            Some(Queued::Audio(audio)) => audio.extend(samples),
            _ => self.queue.push_back(Queued::Audio(samples.into())),
        }
    }

    /// Queues a mark, to come back once the audio before it has played.
    pub fn mark(&mut self, mark: Value) {
        self.queue.push_back(Queued::Mark(mark));
    }

    /// Drops the queued audio; the marks still pending come back at once.
    pub fn clear(&mut self) -> Vec<Value> {
        self.queued_samples = 0;
        std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|queued| match queued {
                Queued::Mark(mark) => Some(mark),
                Queued::Audio(_) => None,
            })
            .collect()
    }

    /// The next 20 ms to play (shorter when the audio runs out), and the marks reached on the
    /// way, in order.
    pub fn next_frame(&mut self) -> (Vec<i16>, Vec<Value>) {
        let mut frame: Vec<i16> = Vec::with_capacity(FRAME);
        let mut reached = Vec::new();
        loop {
            match self.queue.front_mut() {
                Some(Queued::Mark(_)) => {
                    let Some(Queued::Mark(mark)) = self.queue.pop_front() else { unreachable!() };
                    reached.push(mark);
                }
                Some(Queued::Audio(audio)) if frame.len() < FRAME => {
                    let take = audio.len().min(FRAME - frame.len());
                    frame.extend(audio.drain(..take));
                    self.queued_samples -= take;
                    if audio.is_empty() {
                        self.queue.pop_front();
                    }
                }
                _ => break,
            }
        }
        (frame, reached)
    }
}
