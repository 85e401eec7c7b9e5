//! What the engine does with what it hears: speech-to-text's words (a backchannel kept while the
//! bot goes on, or a barge-in that stops it), the keys the person presses, and the end of the
//! person's turn, which the model answers.

use std::time::Duration;

use tokio::time::Instant;

use super::{Engine, Speaker, TurnLatency};
use crate::conversation::llm::ChatMessage;
use crate::conversation::stt::SttEvent;

impl Engine {
    /// What speech-to-text heard: words push the end of the person's turn back, and while the bot
    /// speaks they interrupt it or are kept as a backchannel.
    pub(super) async fn heard_event(&mut self, event: SttEvent) {
        let now = Instant::now();
        match event {
            SttEvent::Interim { text } | SttEvent::Final { text, .. } if text.trim().is_empty() => {}
            SttEvent::Interim { text } => {
                self.last_activity = now;
                self.interim = true;
                self.maybe_barge_in(&text).await;
                // Still speaking: the end of the turn waits.
                if self.turn_ends_at.is_some() {
                    self.turn_ends_at = Some(now + self.config.dials.endpointing().otherwise);
                }
            }
            SttEvent::Final { text, speech_final } => {
                self.last_activity = now;
                self.interim = false;
                let interrupting = self.maybe_barge_in(&text).await;
                if self.speaking.is_some() && !interrupting {
                    // A backchannel: kept, and the bot goes on.
                    self.record(Speaker::Human, text, false).await;
                    return;
                }
                if !self.heard.is_empty() {
                    self.heard.push(' ');
                }
                self.heard.push_str(text.trim());
                self.last_word = Some(now);
                let wait = if speech_final {
                    Duration::ZERO
                } else {
                    self.config.dials.endpointing().silence_needed(&self.heard)
                };
                self.turn_ends_at = Some(now + wait);
            }
            SttEvent::UtteranceEnd => {
                if !self.heard.is_empty() && !self.interim {
                    self.turn_ends_at = Some(now);
                }
            }
            SttEvent::SpeechStarted => self.last_activity = now,
            SttEvent::Reconnected => tracing::info!("speech-to-text reconnected"),
            SttEvent::Failed(reason) => tracing::warn!(%reason, "speech-to-text failed"),
        }
    }

    /// A key the person pressed: heard as if they had said it, their turn over once they pause.
    pub(super) fn heard_key(&mut self, digit: String) {
        self.last_activity = Instant::now();
        self.heard.push_str(&digit);
        self.turn_ends_at = Some(Instant::now() + self.config.dials.endpointing().otherwise);
    }

    /// Stops the bot if the person's words interrupt it; returns whether they did.
    async fn maybe_barge_in(&mut self, text: &str) -> bool {
        let Some(speaking) = self.speaking.as_ref() else {
            return false;
        };
        if !speaking.interruptible || self.config.dials.ignores_while_speaking(text) {
            return false;
        }
        metrics::counter!("vocode_conversation_interruptions_total").increment(1);
        self.cut_off().await;
        true
    }

    /// The person's turn is over: answer it.
    pub(super) async fn respond(&mut self) {
        if self.transferred {
            return;
        }
        if !self.outside.is_empty() {
            // Muted while an external action runs: the person's words wait for its result.
            return;
        }
        let heard = std::mem::take(&mut self.heard);
        if heard.trim().is_empty() {
            return;
        }
        let decided = Instant::now();
        let end_of_turn = self.last_word.map(|w| decided.saturating_duration_since(w)).unwrap_or_default();
        self.history.push(ChatMessage::User(heard.clone()));
        self.record(Speaker::Human, heard, false).await;
        self.generate_turn(Some((decided, TurnLatency { end_of_turn, ..TurnLatency::default() })));
    }
}
