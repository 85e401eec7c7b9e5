//! Running the agent's actions: a tool the model called checked, an action's start and result put
//! in the transcript and given to the model, the action carried out as its kind plans it (at once,
//! as tones on the call's audio, or outside the audio by the call's runner), and what its outcome
//! means for the conversation.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Engine, Event, InFlight, Speaker};
use crate::conversation::actions::{self, Action, ActionRequest, Follow, Outcome, Plan};
use crate::conversation::llm::{ChatMessage, ToolCall};

/// An action under way: which, with what, and the tool call it answers (`None` when a phrase
/// fired it).
#[derive(Debug, Clone)]
pub(super) struct Running {
    /// The action's number in this conversation.
    pub(super) id: u64,
    pub(super) action: Action,
    pub(super) params: Value,
    pub(super) tool_call_id: Option<String>,
}

/// How long, once the call's audio is gone, the results of actions still running outside it are
/// waited for.
const RESULTS_AFTER_THE_CALL: Duration = Duration::from_secs(10);

/// An action that ran outside the call's audio, and how it ended.
pub(super) type Finished = (Running, Outcome);

impl Engine {
    /// A tool the model called: the action it names, with its arguments checked. What cannot run
    /// is said in the transcript and to the model, and the call goes on.
    pub(super) async fn call_tool(&mut self, call: ToolCall) {
        let action = self.config.actions.iter().find(|a| a.tool().is_some() && a.name() == call.name).cloned();
        let checked = match action {
            Some(action) => actions::arguments(&action, &call.arguments).map(|(params, _said)| (action, params)),
            None => Err(format!("there is no action {:?}", call.name)),
        };
        match checked {
            Ok((action, params)) => {
                let running = self.running(action, Value::Object(params), Some(call.id));
                self.start_action(running).await;
            }
            Err(reason) => {
                tracing::warn!(tool = %call.name, %reason, "the model called a tool that cannot run");
                metrics::counter!("vocode_conversation_action_failures_total").increment(1);
                let line = format!("BOT_ACTION_FINISH: !ACTION {} FAILED: {reason}!", call.name);
                let payload = json!({"action_type": call.name, "action_input": {"params": call.arguments},
                                     "action_output": {"success": false, "error": reason}});
                let content = json!({"success": false, "error": reason}).to_string();
                self.history.push(ChatMessage::Tool { tool_call_id: call.id, content });
                self.report(line, payload).await;
            }
        }
    }

    /// An action about to start, numbered.
    pub(super) fn running(&mut self, action: Action, params: Value, tool_call_id: Option<String>) -> Running {
        self.actions_started += 1;
        Running { id: self.actions_started, action, params, tool_call_id }
    }

    /// An action's line for the transcript and its `event_action`, with the conversation as it
    /// stands.
    async fn report(&mut self, line: String, payload: Value) {
        let state = Box::new(self.durable());
        let _ = self.events.send(Event::Action { line, payload, state }).await;
    }

    /// Starts an action: its start goes into the transcript, then it runs as its kind plans.
    pub(super) async fn start_action(&mut self, running: Running) {
        let plan = running.action.kind.plan(&running.params, &self.config.line);
        if let Plan::Outside(_) = &plan {
            // Kept with its start: a process that takes the call over knows it was under way.
            self.outside.push(InFlight {
                id: running.id,
                action_type: running.action.action_type().to_owned(),
                name: running.action.name().to_owned(),
                params: running.params.clone(),
                tool_call_id: running.tool_call_id.clone(),
            });
        }
        let line = running.action.attempt_line(&running.params);
        let payload = json!({"action_type": running.action.action_type(), "action_input": {"params": running.params},
                             "action_output": null});
        self.report(line, payload).await;
        match plan {
            Plan::Done(outcome) => self.action_finished(running, outcome).await,
            Plan::EndConversation => {
                self.ending = true;
                self.action_finished(running, Outcome::succeeded()).await;
            }
            Plan::PlayInBand(audio) => {
                // A turn of its own nobody can interrupt; the action is done once it has been
                // played.
                let turn = self.begin_turn(false, None);
                let speaking = self.speaking.as_mut().expect("a turn just began");
                speaking.playout.push(&audio);
                speaking.playout.finish();
                speaking.generation_done = true;
                speaking.action = Some(running);
                debug_assert_eq!(turn, self.turn);
                // The conversation's loop plays it out from here, as any utterance.
            }
            Plan::Outside(request) => self.run_outside(running, request),
        }
    }

    /// Runs an action outside the call's audio: the bot answers nothing meanwhile, and the result
    /// comes back to the conversation's loop.
    fn run_outside(&mut self, running: Running, request: ActionRequest) {
        let (runner, done) = (self.providers.actions.clone(), self.finished.0.clone());
        tokio::spawn(async move {
            let outcome = runner.run(request).await;
            let _ = done.send((running, outcome)).await;
        });
    }

    /// The call's audio is gone while actions still run outside it (a transfer: the carrier ends
    /// the stream as it carries it out, before its answer is back here): their results still go
    /// into the transcript, if they come within a while. Nobody is left to hear more.
    pub(super) async fn results_after_the_call(&mut self) {
        let deadline = Instant::now() + RESULTS_AFTER_THE_CALL;
        while !self.outside.is_empty() {
            let Ok(Some((running, outcome))) = tokio::time::timeout_at(deadline, self.finished.1.recv()).await else {
                let running = self.outside.len();
                tracing::warn!(running, "the call ended before its actions did: their results are lost");
                return;
            };
            self.outside.retain(|a| a.id != running.id);
            self.report_result(&running, &outcome).await;
        }
    }

    /// An action's result, into the transcript and to the model.
    async fn report_result(&mut self, running: &Running, outcome: &Outcome) {
        if !outcome.success {
            metrics::counter!("vocode_conversation_action_failures_total").increment(1);
        }
        let line = running.action.result_line(&running.params, outcome);
        let payload = json!({"action_type": running.action.action_type(), "action_input": {"params": running.params},
                             "action_output": {"response": outcome.response}});
        if let Some(id) = &running.tool_call_id {
            self.history.push(ChatMessage::Tool { tool_call_id: id.clone(), content: outcome.response.to_string() });
        }
        self.report(line, payload).await;
    }

    /// An action that was under way in the process that ran the conversation before: its result
    /// went with that process. The transcript says so, and the model is told (a tool call always
    /// has its result).
    pub(super) async fn action_lost(&mut self, lost: InFlight) {
        let error = super::durable::LOST;
        metrics::counter!("vocode_conversation_action_failures_total").increment(1);
        let line = format!("BOT_ACTION_FINISH: !ACTION {} FAILED: {error}!", lost.name);
        let payload = json!({"action_type": lost.action_type, "action_input": {"params": lost.params},
                             "action_output": {"response": {"success": false, "error": error}}});
        if let Some(id) = lost.tool_call_id {
            let content = json!({"success": false, "error": error}).to_string();
            self.history.push(ChatMessage::Tool { tool_call_id: id, content });
        }
        self.report(line, payload).await;
    }

    /// An action is over: its result goes into the transcript and to the model, and the
    /// conversation goes on as its kind says it follows.
    pub(super) async fn action_finished(&mut self, running: Running, outcome: Outcome) {
        self.report_result(&running, &outcome).await;
        match running.action.kind.follow(&outcome, running.tool_call_id.is_some()) {
            Follow::Quiet => {}
            Follow::HandedOver => self.transferred = true,
            // Nobody is left for the bot to speak to.
            Follow::Failed | Follow::ModelSpeaks if self.transferred || self.ending => {}
            Follow::Failed => {
                // A phrase trigger's failure is told to the model, as it asked for nothing.
                if running.tool_call_id.is_none() {
                    let note = format!("{} failed: {}", running.action.action_type(), outcome.error());
                    self.history.push(ChatMessage::System(note));
                }
                self.generate_turn(None);
            }
            Follow::ModelSpeaks => self.generate_turn(None),
            Follow::Answer { speak_on_receive } => {
                if let Some(message) = outcome.agent_message.filter(|m| !m.trim().is_empty()) {
                    // The API's own words for the person, as a canned answer.
                    self.speak_fixed(message, true).await;
                } else if speak_on_receive || !self.heard.trim().is_empty() {
                    // The model answers with the result in hand (and what the person said meanwhile).
                    let heard = std::mem::take(&mut self.heard);
                    if !heard.trim().is_empty() {
                        self.history.push(ChatMessage::User(heard.clone()));
                        self.record(Speaker::Human, heard, false).await;
                    }
                    self.generate_turn(None);
                }
            }
        }
    }
}
