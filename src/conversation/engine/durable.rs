//! The conversation as it stands at a turn boundary, kept with every message and action line the
//! engine reports, so that another process can take the call over and go on where it was: the
//! history as the model sees it (tool calls and their results included), the turn counter, what
//! the person said that is not answered yet, the idle clock, the actions under way outside the
//! audio, and where the conversation is (greeted, checked in, ending, handed over).
//!
//! Taking over: the engine starts from it instead of from the prompt, says [`RESUME_LINE`] (the
//! person heard silence, or half a sentence) and goes on — answering what was left unanswered.
//! Actions that were under way elsewhere are over for this engine: their results are lost, and
//! the model is told so (a tool call must always have its result).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::acting::Running;
use super::Engine;
use crate::conversation::actions::Plan;
use crate::conversation::llm::ChatMessage;

/// What the bot says when it takes a call over: a moment of silence (or half a sentence) has
/// just gone by for the person.
pub const RESUME_LINE: &str = "Sorry, I lost you for a second.";

/// Why an action under way in another process has no result here.
pub(super) const LOST: &str = "the server running the call stopped before this action's result came back";

/// An action under way outside the call's audio, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub id: u64,
    pub action_type: String,
    /// The tool's name (the action type, or an external action's own name).
    pub name: String,
    pub params: Value,
    /// The tool call it answers; `None` when a phrase fired it.
    pub tool_call_id: Option<String>,
}

/// The conversation at a turn boundary. (A HIPAA-compliant call keeps none of its words: its
/// history, words heard and actions' parameters may be missing.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Durable {
    pub history: Vec<ChatMessage>,
    pub turn: u64,
    /// What the person said that has not been answered yet.
    pub heard: String,
    /// The greeting was said (or there is none).
    pub greeted: bool,
    pub checked_in: bool,
    /// The bot is saying its last words.
    pub ending: bool,
    /// The call was handed to a third party: the bot says nothing more.
    pub transferred: bool,
    /// How long nobody had spoken when it was kept.
    pub idle_ms: u64,
    pub in_flight: Vec<InFlight>,
}

impl Durable {
    /// Whether the last thing said is the person's, waiting for an answer.
    pub fn unanswered(&self) -> bool {
        matches!(self.history.last(), Some(ChatMessage::User(_))) || !self.heard.trim().is_empty()
    }
}

impl Engine {
    /// Carries on here an action another process started, when the call's runner can; gives it
    /// back when it cannot.
    fn carry_on(&mut self, kept: InFlight) -> Option<InFlight> {
        let Some(action) = self.config.actions.iter().find(|a| a.name() == kept.name).cloned() else {
            return Some(kept);
        };
        let Plan::Outside(request) = action.kind.plan(&kept.params, &self.config.line) else {
            return Some(kept);
        };
        if !self.providers.actions.resumes(&request) {
            return Some(kept);
        }
        tracing::info!(action = %kept.name, "carrying on an action another process started");
        self.actions_started = self.actions_started.max(kept.id);
        let running =
            Running { id: kept.id, action, params: kept.params.clone(), tool_call_id: kept.tool_call_id.clone() };
        self.outside.push(kept);
        let (runner, done) = (self.providers.actions.clone(), self.finished.0.clone());
        tokio::spawn(async move {
            let outcome = runner.resume(request).await;
            let _ = done.send((running, outcome)).await;
        });
        None
    }

    /// The conversation as it stands now.
    pub(super) fn durable(&self) -> Durable {
        Durable {
            history: self.history.clone(),
            turn: self.turn,
            heard: self.heard.clone(),
            greeted: self.greeted,
            checked_in: self.checked_in,
            ending: self.ending,
            transferred: self.transferred,
            idle_ms: Instant::now().saturating_duration_since(self.last_activity).as_millis() as u64,
            in_flight: self.outside.clone(),
        }
    }

    /// Takes over a conversation kept elsewhere. What actions were under way there ended with
    /// that process — each is reported failed (to the transcript and, for a tool call, to the
    /// model) — unless the call's runner can carry it on here (a warm transfer that moved the
    /// conversation to its conference leg): then it runs on, and its result comes as any.
    pub(super) async fn take_over(&mut self, kept: Durable) {
        if !kept.history.is_empty() {
            self.history = kept.history;
        }
        self.turn = kept.turn;
        self.heard = kept.heard;
        self.greeted = kept.greeted;
        self.checked_in = kept.checked_in;
        self.ending = kept.ending;
        self.transferred = kept.transferred;
        self.last_activity = Instant::now() - Duration::from_millis(kept.idle_ms);
        // A tool call kept without its result and not under way (the process stopped between the
        // two): its result is lost too.
        let answered: Vec<String> = self
            .history
            .iter()
            .filter_map(|m| match m {
                ChatMessage::Tool { tool_call_id, .. } => Some(tool_call_id.clone()),
                _ => None,
            })
            .chain(kept.in_flight.iter().filter_map(|a| a.tool_call_id.clone()))
            .collect();
        let dangling: Vec<String> = self
            .history
            .iter()
            .flat_map(|m| match m {
                ChatMessage::Assistant { tool_calls, .. } => tool_calls.iter().map(|c| c.id.clone()).collect(),
                _ => Vec::new(),
            })
            .filter(|id| !answered.contains(id))
            .collect();
        for tool_call_id in dangling {
            let content = serde_json::json!({"success": false, "error": LOST}).to_string();
            self.history.push(ChatMessage::Tool { tool_call_id, content });
        }
        for kept in kept.in_flight {
            if let Some(lost) = self.carry_on(kept) {
                self.action_lost(lost).await;
            }
        }
    }
}
