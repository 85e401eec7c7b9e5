//! The bot's utterance: a turn begins (stopping whatever the last one was doing), its audio is
//! paced out to the call by playout, and once all of it has been played it goes into the
//! transcript and what it carried out follows (the model's tool calls, phrase triggers, an in-band
//! action). Each turn's latencies are reported with its first frame. An utterance can be held (its
//! audio stopped where the person stopped hearing it) and resumed from there, as LiveKit resumes
//! after a false interruption.

use serde_json::json;
use tokio::time::Instant;

use super::acting::Running;
use super::generating::{say, Generated};
use super::{Engine, Speaker, ToCall, TurnLatency};
use crate::conversation::actions::{Action, Outcome};
use crate::conversation::llm::{ChatMessage, ToolCall};
use crate::conversation::playout::{heard_text, Playout};
use crate::conversation::turns::FALSE_START;

/// The bot's current utterance.
pub(super) struct Speaking {
    pub(super) playout: Playout,
    /// What it has said so far, sentence by sentence.
    pub(super) text: String,
    pub(super) interruptible: bool,
    pub(super) generation_done: bool,
    /// The tools the model called this turn, run once it has been played.
    pub(super) tool_calls: Vec<ToolCall>,
    /// An action this utterance carries out (key presses), finished once it has been played.
    pub(super) action: Option<Running>,
    pub(super) latency: Option<(Instant, TurnLatency)>,
    /// Held: its audio stopped on the person's first guessed words; it goes on at this instant
    /// unless words follow.
    pub(super) resume_at: Option<Instant>,
}

impl Engine {
    /// Starts a new turn of the bot's (whatever the previous one was doing stops); returns its id.
    pub(super) fn begin_turn(&mut self, interruptible: bool, latency: Option<(Instant, TurnLatency)>) -> u64 {
        self.stop_child();
        self.turn += 1;
        self.speaking = Some(Speaking {
            playout: Playout::new(self.config.line.encoding, self.turn, self.config.line.echoes_marks),
            text: String::new(),
            interruptible,
            generation_done: false,
            tool_calls: Vec::new(),
            action: None,
            latency,
            resume_at: None,
        });
        self.turn
    }

    /// Says a fixed text (the greeting, the idle check-in) as its own turn.
    pub(super) async fn speak_fixed(&mut self, text: String, interruptible: bool) {
        let turn = self.begin_turn(interruptible, None);
        let (voice, encoding, out) =
            (self.providers.voice.clone(), self.config.line.encoding, self.generated.0.clone());
        self.child = Some(tokio::spawn(async move {
            say(&*voice, encoding, &text, turn, &out).await;
            let _ = out.send((turn, Generated::Done)).await;
        }));
    }

    /// Once the utterance has been played whole: it goes into the history and the transcript,
    /// and what it carries out runs.
    pub(super) async fn after_playout(&mut self) {
        let now = Instant::now();
        let finished = self.speaking.as_ref().is_some_and(|s| s.generation_done && s.playout.done(now));
        if !finished {
            return;
        }
        let speaking = self.speaking.take().expect("checked");
        self.last_activity = now;
        let said = (!speaking.text.is_empty()).then(|| speaking.text.clone());
        if said.is_some() || !speaking.tool_calls.is_empty() {
            self.history
                .push(ChatMessage::Assistant { content: said.clone(), tool_calls: speaking.tool_calls.clone() });
        }
        if let Some(text) = said.clone() {
            self.record(Speaker::Bot, text, false).await;
        }
        if let Some(running) = speaking.action {
            self.action_finished(running, Outcome::succeeded()).await;
        }
        for call in speaking.tool_calls {
            self.call_tool(call).await;
        }
        // Phrase triggers: after the turn, on what the bot said.
        if let Some(said) = said {
            let fired: Vec<Action> = self.config.actions.iter().filter(|a| a.fired_by(&said)).cloned().collect();
            for action in fired {
                let running = self.running(action, json!({}), None);
                self.start_action(running).await;
            }
        }
        // What the person said while the bot could not answer (an action ran, the greeting
        // played) is answered now, or once the silence after their last words has passed.
        if self.speaking.is_none()
            && self.outside.is_empty()
            && !self.heard.trim().is_empty()
            && self.turn_ends_at.is_none()
        {
            let silence = self.config.dials.endpointing().silence_needed(&self.heard);
            self.turn_ends_at = Some(self.last_word.map_or(now, |w| (w + silence).max(now)));
        }
        // A call taken over: what the person said before the move is answered now.
        if self.answer_after && self.speaking.is_none() && self.outside.is_empty() {
            self.answer_after = false;
            self.generate_turn(None);
        }
    }

    /// Stops what the bot is saying now: the audio queued at the carrier is cleared, and what the
    /// person heard of it is kept, cut off.
    pub(super) async fn cut_off(&mut self) {
        let Some(speaking) = self.speaking.take() else {
            return;
        };
        if speaking.resume_at.is_none() {
            let _ = self.to_call.send(ToCall::Clear).await;
        }
        let now = Instant::now();
        let heard_ms = speaking.playout.heard_ms(now);
        let said = heard_text(&speaking.text, heard_ms, speaking.playout.total_ms());
        self.stop_child();
        self.turn += 1;
        // Nothing heard, nothing said: the person spoke before the answer reached them.
        if !said.is_empty() {
            self.history.push(ChatMessage::Assistant { content: Some(format!("{said}-")), tool_calls: Vec::new() });
            self.record(Speaker::Bot, said, true).await;
        }
    }

    /// Holds what the bot is saying (or holds it longer): the audio queued at the carrier is
    /// cleared, the utterance (its generation still under way) waits where the person stopped
    /// hearing it, and goes on from there after [`FALSE_START`] unless words cut it off first.
    pub(super) async fn hold(&mut self) {
        let now = Instant::now();
        let Some(speaking) = self.speaking.as_mut() else {
            return;
        };
        let first = speaking.resume_at.is_none();
        speaking.resume_at = Some(now + FALSE_START);
        if first {
            speaking.playout.pause(now);
            metrics::counter!("vocode_conversation_holds_total").increment(1);
            let _ = self.to_call.send(ToCall::Clear).await;
        }
    }

    /// No words followed the start that held the bot: it goes on from where the person stopped
    /// hearing it, as if nothing had happened.
    pub(super) async fn resume(&mut self) {
        let Some(speaking) = self.speaking.as_mut() else {
            return;
        };
        if speaking.resume_at.take().is_none() {
            return;
        }
        speaking.playout.resume(Instant::now());
        self.interim = false;
        metrics::counter!("vocode_conversation_false_starts_total").increment(1);
        tracing::debug!("a false start: the bot goes on where it stopped");
        self.pump().await;
    }

    /// The call ended while the bot spoke: what the person heard of it is kept.
    pub(super) async fn hung_up_while_speaking(&mut self) {
        let Some(speaking) = self.speaking.take() else {
            return;
        };
        let now = Instant::now();
        let heard_ms = speaking.playout.heard_ms(now);
        let total_ms = speaking.playout.total_ms();
        let said = heard_text(&speaking.text, heard_ms, total_ms);
        if !said.is_empty() {
            let cut_off = !(speaking.generation_done && heard_ms >= total_ms);
            self.record(Speaker::Bot, said, cut_off).await;
        }
    }
}

pub(super) fn record_latency(latency: &TurnLatency) {
    tracing::debug!(?latency, "the turn's first frame is out");
    let stages = [
        ("end_of_turn", Some(latency.end_of_turn)),
        ("recognized", latency.recognized),
        ("first_token", latency.first_token),
        ("first_audio", latency.first_audio),
        ("first_frame", latency.first_frame),
    ];
    for (stage, value) in stages {
        if let Some(value) = value {
            metrics::histogram!("vocode_turn_latency_seconds", "stage" => stage).record(value.as_secs_f64());
        }
    }
}
