//! The bot's utterance: a turn begins (stopping whatever the last one was doing), its audio is
//! paced out to the call by playout, and once all of it has been played it goes into the
//! transcript and what it carried out follows (the model's tool calls, phrase triggers, an in-band
//! action). Each turn's latencies are reported with its first frame.

use serde_json::json;
use tokio::time::Instant;

use super::acting::Running;
use super::generating::{say, Generated};
use super::{Engine, Speaker, ToCall, TurnLatency};
use crate::conversation::actions::{Action, Outcome};
use crate::conversation::llm::{ChatMessage, ToolCall};
use crate::conversation::playout::{heard_text, Playout};

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
        // What the person said while the bot could not answer (an action ran) is answered now.
        if self.speaking.is_none()
            && self.outside.is_empty()
            && !self.heard.trim().is_empty()
            && self.turn_ends_at.is_none()
        {
            self.turn_ends_at = Some(now);
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
        let _ = self.to_call.send(ToCall::Clear).await;
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
