//! The agent's actions, as the conversation uses them. Each kind of action is a file that knows
//! all there is to it ([`ActionKind`]): its type and its configuration; how the model is offered
//! it as a tool (exactly as vocode-core's `get_openai_function` builds it, with the optional
//! `user_message` the bot says before the action runs); what the transcript says of its start
//! and its result (vocode's wording); how it runs ([`Plan`]); and what its outcome means for the
//! conversation ([`Follow`]). An action is offered as a tool, or fired by a phrase the bot said.
//! The engine carries out plans and follows outcomes without knowing any kind; the requests it
//! cannot carry out itself go to an [`ActionRunner`] (external APIs, carriers).
//!
//! Supported here ([`KINDS`]): `action_end_conversation`, `action_dtmf` (tones played on the
//! call's audio, or the carrier's DTMF API), `action_transfer_call` (through the call's carrier),
//! the warm-transfer pair `action_add_to_conference` and `action_set_hold` (Twilio conferences),
//! and `action_external`; any other type is kept as [`Unsupported`]. A new kind is a file with a
//! type that implements [`ActionKind`], and its line in [`KINDS`].

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

pub use super::line::Line;
use super::llm::Tool;

pub mod add_to_conference;
pub mod dtmf;
pub mod end_conversation;
pub mod external;
pub mod set_hold;
pub mod transfer_call;
pub mod unsupported;

pub use add_to_conference::{AddToConference, ADD_TO_CONFERENCE};
pub use dtmf::{Dtmf, DTMF};
pub use end_conversation::{EndConversation, END_CONVERSATION};
pub use external::{External, EXTERNAL};
pub use set_hold::{SetHold, SET_HOLD};
pub use transfer_call::{TransferCall, TRANSFER_CALL};
pub use unsupported::Unsupported;

/// How a kind is read from an action's stored `config`; `None` when the configuration lacks what
/// the kind needs (the action is left out).
pub type Parse = fn(&Value) -> Option<Arc<dyn ActionKind>>;

/// Every kind of action this server carries out, by the type the API names it.
pub const KINDS: &[(&str, Parse)] = &[
    (END_CONVERSATION, plain::<EndConversation>),
    (DTMF, plain::<Dtmf>),
    (TRANSFER_CALL, transfer_call::parse),
    (EXTERNAL, external::parse),
    (ADD_TO_CONFERENCE, add_to_conference::parse),
    (SET_HOLD, plain::<SetHold>),
];

/// A kind that has no configuration.
fn plain<K: ActionKind + Default>(_config: &Value) -> Option<Arc<dyn ActionKind>> {
    Some(Arc::new(K::default()))
}

/// vocode-core's words for the `user_message` parameter.
const USER_MESSAGE: &str =
    "A message to reply to the user with BEFORE we make the function call.\n                    \
     Essentially a live response informing them that the function is about to happen.\n                    \
     Eg Let me check the weather in San Francisco CA for you ";

/// A kind of action: what it is, and what it does before, while and after it runs.
pub trait ActionKind: Any + fmt::Debug + Send + Sync {
    /// The action's type, as the API names it.
    fn action_type(&self) -> &str;

    /// The name the model calls it by.
    fn name(&self) -> &str {
        self.action_type()
    }

    /// How the model is offered it; `None` when it cannot be.
    fn offer(&self) -> Option<Offer>;

    /// Checks the model's arguments beyond the parameters the offer requires.
    fn check(&self, _params: &Map<String, Value>) -> Result<(), String> {
        Ok(())
    }

    /// What the transcript says of its start (vocode's `action_attempt_to_string`).
    fn attempt(&self, params: &Value) -> String {
        format!("!STARTING ACTION {} WITH PARAMETERS {}!", self.action_type(), params)
    }

    /// What the transcript says of its result (vocode's `action_result_to_string`).
    fn result(&self, _params: &Value, outcome: &Outcome) -> String {
        format!("!ACTION {} FINISHED WITH OUTPUT {}!", self.action_type(), outcome.response)
    }

    /// What the engine does to run it with `params` on the call's `line`.
    fn plan(&self, params: &Value, line: &Line) -> Plan;

    /// What its outcome means for the conversation; `by_model` when the model called it (rather
    /// than a phrase firing it).
    fn follow(&self, outcome: &Outcome, _by_model: bool) -> Follow {
        Follow::usual(outcome)
    }
}

/// How the model is offered an action as a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub description: String,
    /// The JSON schema of its parameters; `user_message` is added as `respond` says.
    pub parameters: Value,
    pub respond: Respond,
}

/// An offer's parameters when the model gives none.
pub fn no_parameters() -> Value {
    json!({"type": "object", "properties": {}})
}

/// Whether the model says something before the action runs (vocode's `should_respond`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Respond {
    Never,
    Sometimes,
    Always,
}

/// What the engine does to run an action.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to carry out: it is over at once, with this outcome.
    Done(Outcome),
    /// The conversation ends once what the bot is saying has been played; the action succeeds.
    EndConversation,
    /// This audio is played on the call as a turn of its own that nobody can interrupt; the
    /// action succeeds once it has been played.
    PlayInBand(Vec<u8>),
    /// The call's [`ActionRunner`] carries it out, outside the call's audio; the agent answers
    /// nothing until its outcome is back.
    Outside(ActionRequest),
}

/// What follows an action's outcome in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// The conversation goes on as it was.
    Quiet,
    /// The action did not do what it was for: the model is told (a phrase trigger's failure as a
    /// note, as the model asked for nothing) and answers, rather than leave the person in
    /// silence. Not once the call is handed over or ending.
    Failed,
    /// The model speaks (to a warm transfer's third party, who has just answered). Not once the
    /// call is handed over or ending.
    ModelSpeaks,
    /// The call is someone else's now: the bot says nothing more, and never hangs up.
    HandedOver,
    /// The bot answers with the result in hand: the outcome's `agent_message` said as it is, else
    /// the model's answer, when `speak_on_receive` or when the person spoke meanwhile.
    Answer { speak_on_receive: bool },
}

impl Follow {
    /// What follows most actions' outcomes: nothing, unless they failed.
    pub fn usual(outcome: &Outcome) -> Follow {
        if outcome.success {
            Follow::Quiet
        } else {
            Follow::Failed
        }
    }
}

/// When an action runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// When the model calls it (the default).
    FunctionCall,
    /// After a bot turn that contains one of these phrases (case-insensitive, punctuation aside).
    Phrases(Vec<String>),
}

/// One action of the agent.
#[derive(Debug, Clone)]
pub struct Action {
    pub kind: Arc<dyn ActionKind>,
    pub trigger: Trigger,
}

impl Action {
    /// An action from its stored document (`{"type", "config", "action_trigger"}`).
    pub fn from_document(doc: &Value) -> Option<Action> {
        let action_type = doc["type"].as_str()?;
        let kind = match KINDS.iter().find(|(known, _)| *known == action_type) {
            Some((_, parse)) => parse(&doc["config"])?,
            None => Arc::new(Unsupported(action_type.to_owned())),
        };
        let trigger = match doc["action_trigger"]["type"].as_str() {
            Some("action_trigger_phrase_based") => Trigger::Phrases(
                doc["action_trigger"]["config"]["phrase_triggers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["phrase"].as_str())
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => Trigger::FunctionCall,
        };
        Some(Action { kind, trigger })
    }

    /// The action's kind as the type it is, when it is a `K`.
    pub fn kind_as<K: ActionKind>(&self) -> Option<&K> {
        let kind: &dyn Any = self.kind.as_ref();
        kind.downcast_ref()
    }

    /// The action's type, as the API names it.
    pub fn action_type(&self) -> &str {
        self.kind.action_type()
    }

    /// The tool's name: the action's type, or an external action's own name.
    pub fn name(&self) -> &str {
        self.kind.name()
    }

    pub fn respond(&self) -> Respond {
        self.kind.offer().map_or(Respond::Never, |offer| offer.respond)
    }

    /// The action as the model's tool; `None` when the model does not call it (a phrase
    /// triggers it, or the server cannot carry it out).
    pub fn tool(&self) -> Option<Tool> {
        if self.trigger != Trigger::FunctionCall {
            return None;
        }
        let Offer { description, mut parameters, respond } = self.kind.offer()?;
        if !parameters["properties"].is_object() {
            parameters["properties"] = json!({});
        }
        if respond != Respond::Never {
            parameters["properties"]["user_message"] = json!({"type": "string", "description": USER_MESSAGE});
            if respond == Respond::Always {
                let required = parameters["required"].as_array().cloned().unwrap_or_default();
                let mut required: Vec<Value> = required.into_iter().filter(|r| r != "user_message").collect();
                required.push(json!("user_message"));
                parameters["required"] = Value::Array(required);
            }
        }
        Some(Tool { name: self.name().to_owned(), description, parameters })
    }

    /// The transcript's line for the action's start.
    pub fn attempt_line(&self, params: &Value) -> String {
        format!("BOT_ACTION_START: {}", self.kind.attempt(params))
    }

    /// The transcript's line for the action's result.
    pub fn result_line(&self, params: &Value, outcome: &Outcome) -> String {
        format!("BOT_ACTION_FINISH: {}", self.kind.result(params, outcome))
    }

    /// The number a transfer goes to: the configured one, else the model's.
    pub fn transfer_to(&self, params: &Value) -> Option<String> {
        self.kind_as::<TransferCall>().and_then(|transfer| transfer.to(params))
    }

    /// Whether the bot's finished turn fires this action's phrase trigger.
    pub fn fired_by(&self, said: &str) -> bool {
        let Trigger::Phrases(phrases) = &self.trigger else {
            return false;
        };
        let said = normalized(said);
        phrases.iter().map(|p| normalized(p)).any(|p| !p.is_empty() && said.contains(&p))
    }
}

/// Lowercase words without punctuation, single-spaced: what phrase triggers compare.
fn normalized(text: &str) -> String {
    let kept: String = text.chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' }).collect();
    kept.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How an action ended: whether it did what it was for, its response (the action's output, given
/// to the model as the tool's result) and, for an external action, what the bot should say.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub success: bool,
    pub response: Value,
    pub agent_message: Option<String>,
}

impl Outcome {
    pub fn succeeded() -> Self {
        Outcome { success: true, response: json!({"success": true}), agent_message: None }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Outcome { success: false, response: json!({"success": false, "error": reason.into()}), agent_message: None }
    }

    /// Why it failed, as the transcript and the model are told.
    pub fn error(&self) -> &str {
        self.response["error"].as_str().unwrap_or("it failed")
    }
}

/// What the engine asks of the world outside the call's audio.
// (One request per action run: its size does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ActionRequest {
    /// POST the model's arguments to the user's API.
    External { action: External, payload: Value },
    /// Transfer the call to `to` (a plausible phone number, digits).
    Transfer { to: String },
    /// Press `keys` through the carrier's DTMF API.
    Keys { keys: String },
    /// Dial `to` (digits) into the call's conference; the person on hold while it rings when
    /// `hold`.
    Conference { to: String, hold: bool },
    /// The person off hold (or on hold) in the call's conference.
    Hold,
}

/// Carries out the requests the engine cannot: the user's APIs, the carrier.
pub trait ActionRunner: Send + Sync {
    fn run(&self, request: ActionRequest) -> BoxFuture<'_, Outcome>;

    /// Whether an action that was under way when another process ran the conversation can be
    /// carried on here (a warm transfer whose conference leg brought the conversation here).
    fn resumes(&self, _request: &ActionRequest) -> bool {
        false
    }

    /// Carries on an action another process started (see [`ActionRunner::resumes`]).
    fn resume(&self, request: ActionRequest) -> BoxFuture<'_, Outcome> {
        self.run(request)
    }
}

/// A runner for a call with nowhere to send requests: every request fails, saying so.
pub struct NoRunner;

impl ActionRunner for NoRunner {
    fn run(&self, _request: ActionRequest) -> BoxFuture<'_, Outcome> {
        Box::pin(async { Outcome::failed("this call cannot reach outside services") })
    }
}

/// The runner of a call's actions: external APIs through [`crate::egress`]'s client.
pub struct HttpRunner {
    pub client: reqwest::Client,
    pub allow_private: bool,
    pub call_id: String,
}

impl ActionRunner for HttpRunner {
    fn run(&self, request: ActionRequest) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            match request {
                ActionRequest::External { action, payload } => {
                    external::request(&self.client, self.allow_private, &action, &self.call_id, &payload).await
                }
                ActionRequest::Transfer { .. } => Outcome::failed("this call's carrier cannot transfer it"),
                ActionRequest::Keys { .. } => Outcome::failed("this call's carrier cannot press keys"),
                ActionRequest::Conference { .. } | ActionRequest::Hold => {
                    Outcome::failed("this call's carrier has no conferences")
                }
            }
        })
    }
}

/// The model's arguments for a call of `action`: a JSON object, `user_message` taken out.
/// `Err` says why they cannot be used.
pub fn arguments(action: &Action, raw: &str) -> Result<(Map<String, Value>, Option<String>), String> {
    let raw = if raw.trim().is_empty() { "{}" } else { raw };
    let mut params = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(format!("the arguments of {} are not a JSON object", action.name())),
        Err(e) => return Err(format!("the arguments of {} are not JSON: {e}", action.name())),
    };
    let user_message = match params.remove("user_message") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    };
    if let Some(tool) = action.tool() {
        for required in tool.parameters["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if required != "user_message" && !params.contains_key(required) {
                return Err(format!("{} needs `{required}`", action.name()));
            }
        }
    }
    action.kind.check(&params)?;
    Ok((params, user_message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(doc: Value) -> Action {
        Action::from_document(&doc).expect("an action")
    }

    #[test]
    fn each_kind_is_registered_under_its_own_type() {
        for (action_type, _) in KINDS {
            let config = json!({"name": "Book", "url": "https://example.com/b"});
            let registered = action(json!({"type": action_type, "config": config}));
            assert_eq!(registered.action_type(), *action_type);
            assert!(registered.kind_as::<Unsupported>().is_none(), "{action_type}");
        }
    }

    #[test]
    fn actions_are_offered_as_vocode_offers_them() {
        let end = action(json!({"type": "action_end_conversation", "config": {}}));
        let tool = end.tool().unwrap();
        assert_eq!(tool.name, "action_end_conversation");
        assert!(tool.description.contains("Ends the current conversation"));
        assert_eq!(tool.parameters["properties"]["user_message"]["type"], "string");
        assert!(tool.parameters.get("required").is_none(), "the goodbye is optional");

        let dtmf = action(json!({"type": "action_dtmf"}));
        let tool = dtmf.tool().unwrap();
        assert_eq!(tool.parameters["required"], json!(["buttons"]));
        assert!(tool.parameters["properties"].get("user_message").is_none(), "never says anything first");

        let external = action(json!({"type": "action_external", "config": {
            "name": "Book", "description": "Book a meeting.", "url": "https://example.com/b",
            "input_schema": {"type": "object", "title": "X", "properties": {"title": {"type": "string", "title": "T"}},
                             "required": ["title"]},
            "speak_on_send": true, "speak_on_receive": false, "signature_secret": "c2VjcmV0"}}));
        let tool = external.tool().unwrap();
        assert_eq!((tool.name.as_str(), tool.description.as_str()), ("Book", "Book a meeting."));
        assert_eq!(tool.parameters["required"], json!(["title", "user_message"]));
        assert_eq!(tool.parameters["properties"]["title"], json!({"type": "string"}), "titles dropped, not fields");
        assert!(tool.parameters.get("title").is_none());
    }

    #[test]
    fn phrase_triggered_and_unsupported_actions_are_not_tools() {
        let phrased = action(json!({"type": "action_end_conversation", "action_trigger": {
            "type": "action_trigger_phrase_based",
            "config": {"phrase_triggers": [{"phrase": "Have a great day", "conditions": ["phrase_condition_type_contains"]}]}}}));
        assert_eq!(phrased.tool(), None);
        assert!(phrased.fired_by("Thanks! HAVE a great   day."));
        assert!(!phrased.fired_by("Have a day"));
        let unknown = action(json!({"type": "action_teleport"}));
        assert_eq!(unknown.tool(), None, "an action this server does not know is not offered");
        assert!(!unknown.fired_by("anything"));
    }

    #[test]
    fn the_warm_transfer_pair_is_offered_with_its_configuration() {
        let add = action(json!({"type": "action_add_to_conference", "config": {"phone_number": "+14155550199"}}));
        assert_eq!(
            add.kind_as::<AddToConference>(),
            Some(&AddToConference { phone_number: "+14155550199".into(), place_primary_on_hold: true })
        );
        let tool = add.tool().unwrap();
        assert_eq!(tool.name, "action_add_to_conference");
        assert_eq!(tool.parameters["required"], json!(["user_message"]), "it says something before it dials");
        let quiet = action(json!({"type": "action_add_to_conference",
                                  "config": {"phone_number": "+14155550199", "place_primary_on_hold": false}}));
        assert!(matches!(
            quiet.kind_as::<AddToConference>(),
            Some(AddToConference { place_primary_on_hold: false, .. })
        ));
        let hold = action(json!({"type": "action_set_hold", "config": {}}));
        assert_eq!(hold.tool().unwrap().name, "action_set_hold");
        let off = Outcome { success: true, response: json!({"success": true, "on_hold": false}), agent_message: None };
        assert_eq!(hold.result_line(&json!({}), &off), "BOT_ACTION_FINISH: Took the person off hold");
        let on = Outcome { success: true, response: json!({"success": true, "on_hold": true}), agent_message: None };
        assert_eq!(hold.result_line(&json!({}), &on), "BOT_ACTION_FINISH: Placed the person on hold");
        let busy = Outcome::failed("every number of the account connection's steering pool is in use");
        assert_eq!(
            add.result_line(&json!({}), &busy),
            "BOT_ACTION_FINISH: Did not add +14155550199 to the conference: every number of the account connection's \
             steering pool is in use"
        );
    }

    #[test]
    fn a_transfer_goes_to_its_number_or_to_the_models() {
        let fixed = action(json!({"type": "action_transfer_call", "config": {"phone_number": "+14155550100"}}));
        let tool = fixed.tool().unwrap();
        assert_eq!(
            tool.parameters["properties"],
            json!({"user_message": {"type": "string", "description": USER_MESSAGE}})
        );
        assert_eq!(tool.parameters["required"], json!(["user_message"]));
        assert_eq!(fixed.transfer_to(&json!({"phone_number": "+1999"})).as_deref(), Some("+14155550100"));
        assert_eq!(fixed.attempt_line(&json!({})), "BOT_ACTION_START: Attempting to transfer call to +14155550100");
        let open = action(json!({"type": "action_transfer_call", "config": {}}));
        assert_eq!(open.tool().unwrap().parameters["required"], json!(["phone_number", "user_message"]));
        assert_eq!(open.transfer_to(&json!({"phone_number": "+1 650 555 0100"})).as_deref(), Some("+1 650 555 0100"));
    }

    #[test]
    fn arguments_are_checked_and_the_user_message_taken_out() {
        let dtmf = action(json!({"type": "action_dtmf"}));
        let (params, said) = arguments(&dtmf, r#"{"buttons": "12#"}"#).unwrap();
        assert_eq!((Value::Object(params), said), (json!({"buttons": "12#"}), None));
        assert!(arguments(&dtmf, r#"{"buttons": "12x"}"#).unwrap_err().contains("not keys"));
        assert!(arguments(&dtmf, "{}").unwrap_err().contains("needs `buttons`"));
        assert!(arguments(&dtmf, "[1]").unwrap_err().contains("not a JSON object"));
        assert!(arguments(&dtmf, "{\"buttons\": ").unwrap_err().contains("not JSON"));
        let end = action(json!({"type": "action_end_conversation"}));
        let (params, said) = arguments(&end, r#"{"user_message": "Bye now!"}"#).unwrap();
        assert!(params.is_empty());
        assert_eq!(said.as_deref(), Some("Bye now!"));
        assert!(arguments(&end, "").is_ok(), "no arguments at all is an empty object");
    }

    #[test]
    fn the_transcript_says_what_vocode_says() {
        let dtmf = action(json!({"type": "action_dtmf"}));
        let params = json!({"buttons": "12"});
        assert_eq!(dtmf.attempt_line(&params), "BOT_ACTION_START: Attempting to press numbers: ['1', '2']");
        let ok = Outcome { success: true, response: json!({"success": true}), agent_message: None };
        assert_eq!(dtmf.result_line(&params, &ok), "BOT_ACTION_FINISH: Pressed numbers ['1', '2'] successfully");
        let end = action(json!({"type": "action_end_conversation"}));
        assert_eq!(end.result_line(&json!({}), &ok), "BOT_ACTION_FINISH: Successfully ended conversation");
    }
}
