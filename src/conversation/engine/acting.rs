//! Running the agent's actions: a tool the model called checked, an action's start and result put
//! in the transcript and given to the model, the action carried out as its kind plans it (at once,
//! as tones on the call's audio, or outside the audio by the call's runner), and what its outcome
//! means for the conversation.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Engine, Event, Speaker};
use crate::conversation::actions::{self, dtmf, Action, ActionRequest, Kind, Outcome};
use crate::conversation::llm::{ChatMessage, ToolCall};

/// An action under way: which, with what, and the tool call it answers (`None` when a phrase
/// fired it).
#[derive(Debug, Clone)]
pub(super) struct Running {
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
                let running = Running { action, params: Value::Object(params), tool_call_id: Some(call.id) };
                self.start_action(running).await;
            }
            Err(reason) => {
                tracing::warn!(tool = %call.name, %reason, "the model called a tool that cannot run");
                metrics::counter!("vocode_conversation_action_failures_total").increment(1);
                let line = format!("BOT_ACTION_FINISH: !ACTION {} FAILED: {reason}!", call.name);
                let payload = json!({"action_type": call.name, "action_input": {"params": call.arguments},
                                     "action_output": {"success": false, "error": reason}});
                let _ = self.events.send(Event::Action { line, payload }).await;
                let content = json!({"success": false, "error": reason}).to_string();
                self.history.push(ChatMessage::Tool { tool_call_id: call.id, content });
            }
        }
    }

    /// Starts an action: its start goes into the transcript, then it runs.
    pub(super) async fn start_action(&mut self, running: Running) {
        let line = running.action.attempt_line(&running.params);
        let payload = json!({"action_type": running.action.action_type(), "action_input": {"params": running.params},
                             "action_output": null});
        let _ = self.events.send(Event::Action { line, payload }).await;
        match running.action.kind.clone() {
            Kind::EndConversation => {
                self.ending = true;
                let outcome = Outcome { success: true, response: json!({"success": true}), agent_message: None };
                self.action_finished(running, outcome).await;
            }
            Kind::Dtmf if !self.config.keys_in_band => {
                let keys = running.params["buttons"].as_str().unwrap_or_default().to_owned();
                self.run_outside(running, ActionRequest::Keys { keys });
            }
            Kind::Dtmf => {
                // The keys are played on the call's audio, as a turn of their own nobody can
                // interrupt; the action is done once they have been played.
                let keys = running.params["buttons"].as_str().unwrap_or_default().to_owned();
                let turn = self.begin_turn(false, None);
                let speaking = self.speaking.as_mut().expect("a turn just began");
                speaking.playout.push(&dtmf::tones(&keys, self.config.encoding));
                speaking.playout.finish();
                speaking.generation_done = true;
                speaking.action = Some(running);
                debug_assert_eq!(turn, self.turn);
                // The conversation's loop plays them out from here, as any utterance.
            }
            Kind::TransferCall { .. } => {
                let to = running.action.transfer_to(&running.params).unwrap_or_default();
                match crate::domain::phone::PhoneNumber::parse(&to) {
                    Err(reason) => {
                        // Nothing is dialled.
                        let outcome = Outcome::failed(format!("{to:?} is not a phone number to transfer to: {reason}"));
                        self.action_finished(running, outcome).await;
                    }
                    Ok(number) => self.run_outside(running, ActionRequest::Transfer { to: number.digits().to_owned() }),
                }
            }
            Kind::AddToConference { phone_number, place_primary_on_hold } => {
                match crate::domain::phone::PhoneNumber::parse(&phone_number) {
                    Err(reason) => {
                        let outcome =
                            Outcome::failed(format!("{phone_number:?} is not a phone number to dial in: {reason}"));
                        self.action_finished(running, outcome).await;
                    }
                    Ok(number) => {
                        let request =
                            ActionRequest::Conference { to: number.digits().to_owned(), hold: place_primary_on_hold };
                        self.run_outside(running, request);
                    }
                }
            }
            Kind::SetHold => self.run_outside(running, ActionRequest::Hold),
            Kind::External(external) => {
                let payload = running.params.clone();
                self.run_outside(running, ActionRequest::External { action: external, payload });
            }
            Kind::Unsupported(kind) => {
                let outcome = Outcome::failed(format!("{kind} is not supported by this server yet"));
                self.action_finished(running, outcome).await;
            }
        }
    }

    /// Runs an action outside the call's audio: the bot answers nothing meanwhile, and the result
    /// comes back to the conversation's loop.
    fn run_outside(&mut self, running: Running, request: ActionRequest) {
        self.outside += 1;
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
        while self.outside > 0 {
            let Ok(Some((running, outcome))) = tokio::time::timeout_at(deadline, self.finished.1.recv()).await else {
                tracing::warn!(running = self.outside, "the call ended before its actions did: their results are lost");
                return;
            };
            self.outside -= 1;
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
        let _ = self.events.send(Event::Action { line, payload }).await;
        if let Some(id) = &running.tool_call_id {
            self.history.push(ChatMessage::Tool { tool_call_id: id.clone(), content: outcome.response.to_string() });
        }
    }

    /// An action is over: its result goes into the transcript and to the model, and the agent
    /// says what it should.
    pub(super) async fn action_finished(&mut self, running: Running, outcome: Outcome) {
        self.report_result(&running, &outcome).await;
        let handed_over = match &running.action.kind {
            Kind::TransferCall { .. } => outcome.success,
            Kind::SetHold => outcome.response["handed_over"] == true,
            _ => false,
        };
        if handed_over {
            self.transferred = true;
        }
        let Kind::External(external) = &running.action.kind else {
            if self.transferred || self.ending {
                return;
            }
            if !outcome.success {
                // An action that failed (a transfer the carrier refused, a number that is not
                // one): the model says so rather than leave the person in silence. A phrase
                // trigger's failure is told to it, as it asked for nothing.
                if running.tool_call_id.is_none() {
                    let error = outcome.response["error"].as_str().unwrap_or("it failed");
                    let note = format!("{} failed: {error}", running.action.action_type());
                    self.history.push(ChatMessage::System(note));
                }
                self.generate_turn(None);
            } else if matches!(running.action.kind, Kind::AddToConference { .. }) && running.tool_call_id.is_some() {
                // The third party is on the line: the model speaks to them.
                self.generate_turn(None);
            }
            return;
        };
        if let Some(message) = outcome.agent_message.filter(|m| !m.trim().is_empty()) {
            // The API's own words for the person, as a canned answer.
            self.speak_fixed(message, true).await;
        } else if external.speak_on_receive || !self.heard.trim().is_empty() {
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
