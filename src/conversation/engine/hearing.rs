//! What the engine does with what it hears: speech-to-text's words (a backchannel kept while the
//! bot goes on, or a barge-in that stops it), the keys the person presses, and the end of the
//! person's turn, which the model answers. Text that is not words (a recogniser looping, or what
//! it says over noise) is dropped; an interim stops the bot only on enough speech
//! ([`Dials::interim_counts`]). Each turn's latencies run from the end of the caller's speech. No
//! words are lost: what is said while the bot cannot be interrupted (its greeting) is answered once
//! it is over, and what the person said last before the call's audio ended is waited for, briefly,
//! and kept.

use std::time::Duration;

use tokio::time::Instant;

use super::{Engine, Speaker, TurnLatency};
use crate::conversation::llm::ChatMessage;
use crate::conversation::stt::{plausible, Spoken, SttEvent, SttSession};
use crate::conversation::turns::InterruptSensitivity;

/// How long, once the call's audio is gone, speech-to-text's last results are waited for: a
/// provider flushes what it was hearing in well under a second, the local recogniser on a busy
/// machine can take a second or two, and a stuck one is not waited on (Deepgram's own close
/// grace is as long).
pub(super) const LAST_WORDS: Duration = Duration::from_secs(3);

impl Engine {
    /// What speech-to-text heard: words push the end of the person's turn back, and while the bot
    /// speaks they interrupt it or are kept as a backchannel.
    pub(super) async fn heard_event(&mut self, event: SttEvent) {
        let now = Instant::now();
        match event {
            SttEvent::Interim { text, .. } | SttEvent::Final { text, .. } if text.trim().is_empty() => {}
            SttEvent::Interim { text, .. } | SttEvent::Final { text, .. } if !plausible::is_plausible(&text, None) => {
                tracing::debug!(%text, "not words: dropped");
                metrics::counter!("vocode_conversation_implausible_words_total").increment(1);
            }
            SttEvent::Interim { text, spoken } => {
                self.last_activity = now;
                self.interim = true;
                self.turn_began.get_or_insert(now);
                // A guessing recogniser's interim counts once the next one agrees with it.
                let guessed = self.providers.stt.interims_are_guesses() && !agrees(&self.last_interim, &text);
                self.last_interim.clone_from(&text);
                let low = self.config.dials.interrupt == InterruptSensitivity::Low;
                if self.config.dials.interim_counts(spoken.map(|s| s.length())) && !(low && guessed) {
                    self.maybe_barge_in(&text, false).await;
                }
                // Still speaking: the end of the turn waits (at most until the turn's longest).
                if self.turn_ends_at.is_some() {
                    self.end_turn_at(now + self.config.dials.endpointing().otherwise);
                } else if self.speaking.is_none() {
                    self.end_turn_at(now + self.config.dials.longest_turn());
                }
            }
            SttEvent::Final { text, speech_final, spoken } => {
                if self.held() && plausible::judge(&text, None).is_err() {
                    // No words after all: the bot held for nothing, and goes on when the wait ends.
                    return;
                }
                self.last_activity = now;
                self.interim = false;
                self.last_interim.clear();
                let interrupting = self.maybe_barge_in(&text, true).await;
                // Words that would have taken the turn from a bot that cannot be interrupted (its
                // greeting) are answered once it is over, not kept as a backchannel.
                let for_later = self.speaking.as_ref().is_some_and(|s| !s.interruptible)
                    && !self.config.dials.ignores_while_speaking(&text);
                if self.speaking.is_some() && !interrupting && !for_later {
                    // A backchannel: kept, and the bot goes on.
                    if self.heard.is_empty() {
                        self.turn_began = None;
                    }
                    self.record(Speaker::Human, text, false).await;
                    return;
                }
                if !self.heard.is_empty() {
                    self.heard.push(' ');
                }
                self.heard.push_str(text.trim());
                self.last_word = Some(now);
                self.recognized_at = Some(now);
                self.turn_began.get_or_insert(now);
                self.spoken_until(spoken, now);
                // The pause these words end at: where the detector heard the caller stop, if that
                // was where the words ended (their timings say so), and they are still silent.
                let words_end = spoken.and_then(|s| self.voice.as_ref()?.when_heard(s.end, now));
                let silent = self.voice.as_ref().filter(|v| !v.speaking()).filter(
                    |v| matches!((v.stopped_at, words_end), (Some(stop), Some(end)) if stop + WORDS_TO_STOP >= end),
                );
                let verdict = silent.and_then(|v| {
                    Some(super::voice::after_verdict(&self.config.dials, v.stopped_at?, v.verdict?, &self.heard))
                });
                let wait = if speech_final {
                    Duration::ZERO
                } else {
                    self.config.dials.endpointing().silence_needed(&self.heard)
                };
                // The end-of-turn model's verdict on the pause these words end at, when it came;
                // else the silence rule, its silence counted from where the detector heard the
                // caller stop (from now when it did not). While the bot goes on, its utterance's
                // end starts the wait (`after_playout`).
                if self.speaking.is_none() {
                    let silence_from = silent.and_then(|v| v.stopped_at).unwrap_or(now);
                    tracing::debug!(
                        heard = %self.heard,
                        verdict = ?self.voice.as_ref().and_then(|v| v.verdict),
                        at_stop = silent.is_some(),
                        since_stop_ms = now.saturating_duration_since(silence_from).as_millis() as u64,
                        answer_in_ms = verdict.unwrap_or(silence_from + wait).saturating_duration_since(now).as_millis() as u64,
                        "final words: the turn's end is set"
                    );
                    self.end_turn_at(verdict.map_or((silence_from + wait).max(now), |at| at.max(now)));
                }
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

    /// The recogniser's word timings date the end of the caller's speech (the latest of theirs and
    /// the detector's).
    fn spoken_until(&mut self, spoken: Option<Spoken>, now: Instant) {
        let Some(end) = spoken.and_then(|s| self.voice.as_ref()?.when_heard(s.end, now)) else { return };
        self.spoke_until = Some(self.spoke_until.map_or(end, |s| s.max(end)));
    }

    /// A key the person pressed: heard as if they had said it, their turn over once they pause.
    pub(super) fn heard_key(&mut self, digit: String) {
        self.last_activity = Instant::now();
        self.heard.push_str(&digit);
        self.turn_began.get_or_insert(Instant::now());
        self.end_turn_at(Instant::now() + self.config.dials.endpointing().otherwise);
    }

    /// Stops the bot if the person's words interrupt it; returns whether they did. At `high`,
    /// first guesses (`final_words` false) only hold the bot: its audio stops at once, and it is
    /// cut off when final words follow, or goes on from where it stopped when none do (a false
    /// start: a cough, a breath, a recogniser's guess at noise).
    async fn maybe_barge_in(&mut self, text: &str, final_words: bool) -> bool {
        let Some(speaking) = self.speaking.as_ref() else {
            return false;
        };
        if !speaking.interruptible || self.config.dials.ignores_while_speaking(text) {
            return false;
        }
        if !final_words && self.config.dials.interrupt == InterruptSensitivity::High {
            // A guess at noise neither holds the bot nor keeps it held longer.
            if plausible::judge(text, None).is_ok() {
                self.hold().await;
            }
            return true;
        }
        tracing::info!(%text, "the person interrupted the bot");
        metrics::counter!("vocode_conversation_interruptions_total").increment(1);
        self.cut_off().await;
        true
    }

    /// Whether the bot is holding, its audio stopped on the person's first guessed words.
    fn held(&self) -> bool {
        self.speaking.as_ref().is_some_and(|s| s.resume_at.is_some())
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
        if self.speaking.as_ref().is_some_and(|s| !s.interruptible) {
            // The bot cannot be interrupted: the words are answered once it is over.
            return;
        }
        let mut heard = std::mem::take(&mut self.heard);
        let longest = self.turn_began.is_some_and(|b| b.elapsed() >= self.config.dials.longest_turn());
        if heard.trim().is_empty() && longest {
            // A caller who never paused: what the recogniser has so far is answered.
            heard = std::mem::take(&mut self.last_interim);
        }
        if heard.trim().is_empty() {
            return;
        }
        let decided = Instant::now();
        // From the end of the caller's speech (the detector's offset, the last word's end), or,
        // when neither is known, from when the last words came in.
        let spoke_until = self.spoke_until.take().filter(|s| *s <= decided).or(self.last_word).unwrap_or(decided);
        let since = |at: Option<Instant>| at.map(|a| a.saturating_duration_since(spoke_until));
        let latency = TurnLatency {
            end_of_turn: decided.saturating_duration_since(spoke_until),
            recognized: since(self.recognized_at.take()),
            ..TurnLatency::default()
        };
        self.turn_began = None;
        if let Some(voice) = self.voice.as_mut() {
            voice.verdict = None;
        }
        self.history.push(ChatMessage::User(heard.clone()));
        self.record(Speaker::Human, heard, false).await;
        self.generate_turn(Some((spoke_until, latency)));
    }
}

impl Engine {
    /// The call's audio is gone (or the bot hung up): speech-to-text is closed, so that it
    /// finishes what it was hearing (Deepgram is sent `Finalize` and `CloseStream`, the local
    /// recogniser transcribes the utterance in progress), and its last results are waited for, up
    /// to [`LAST_WORDS`]. What the person said that was not answered is kept: nobody is left to
    /// answer it, but the transcript, its `event_message` and do-not-call detection have it, and
    /// it is the last user message of the conversation as it is kept.
    pub(super) async fn last_words(&mut self, stt: Option<SttSession>) {
        if self.transferred {
            // Handed over: what is said on the line now is not the bot's conversation.
            return;
        }
        if let Some(SttSession { audio, mut events }) = stt {
            drop(audio);
            let deadline = Instant::now() + LAST_WORDS;
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    // Noise is no more words at the end than during the call.
                    Ok(Some(SttEvent::Final { text, .. })) if plausible::is_plausible(&text, None) => {
                        if !self.heard.is_empty() {
                            self.heard.push(' ');
                        }
                        self.heard.push_str(text.trim());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(wait = ?LAST_WORDS, "speech-to-text did not finish after the call's audio ended");
                        break;
                    }
                }
            }
        }
        let heard = std::mem::take(&mut self.heard);
        if !heard.trim().is_empty() {
            self.history.push(ChatMessage::User(heard.clone()));
            self.record(Speaker::Human, heard, false).await;
        }
    }
}

/// Whether an interim agrees with the one before it: it goes on from what that one said (all of
/// it but its last word, which a recogniser revises), at least two words of it.
pub(super) fn agrees(before: &str, now: &str) -> bool {
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|w| w.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (before, now) = (words(before), words(now));
    let kept = before.len().saturating_sub(1);
    kept >= 2 && now.len() >= kept && before[..kept] == now[..kept]
}

/// How much later than the detector's stop a recogniser may date the words' end and still be
/// taken to end at that stop (its timings and the detector's differ by a window or two).
const WORDS_TO_STOP: Duration = Duration::from_millis(300);
