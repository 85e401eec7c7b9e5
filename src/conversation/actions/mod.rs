//! The agent's actions, as the conversation uses them: each action of the agent offered to the
//! model as a tool (exactly as vocode-core's `get_openai_function` builds it, with the optional
//! `user_message` the bot says before the action runs), or fired by a phrase the bot said; what
//! the transcript says of its start and its result (vocode's wording); and the requests the
//! engine cannot carry out itself, which go to an [`ActionRunner`] (external APIs, carriers).
//!
//! Supported here: `action_end_conversation`, `action_dtmf` (tones played on the call's audio, or
//! the carrier's DTMF API), `action_transfer_call` (through the call's carrier), the warm-transfer
//! pair `action_add_to_conference` and `action_set_hold` (Twilio conferences), and
//! `action_external`.

use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::llm::Tool;

pub mod dtmf;
pub mod external;

pub const END_CONVERSATION: &str = "action_end_conversation";
pub const TRANSFER_CALL: &str = "action_transfer_call";
pub const DTMF: &str = "action_dtmf";
pub const EXTERNAL: &str = "action_external";
pub const SET_HOLD: &str = "action_set_hold";
pub const ADD_TO_CONFERENCE: &str = "action_add_to_conference";

/// vocode-core's words for the `user_message` parameter.
const USER_MESSAGE: &str =
    "A message to reply to the user with BEFORE we make the function call.\n                    \
     Essentially a live response informing them that the function is about to happen.\n                    \
     Eg Let me check the weather in San Francisco CA for you ";

const END_CONVERSATION_DESCRIPTION: &str =
    "\nEnds the current conversation; use this when we should hang up. Use this\n\
when: someone has indicated they expect the call to finish, and there are no further objectives\n\
to accomplish on the call. Do not use this when a human interrupts you or asks to speak to you\n";
const DTMF_DESCRIPTION: &str = "Presses a string numbers using DTMF tones.";
const TRANSFER_DESCRIPTION: &str = "Transfers the call to a new number. This is never used while on hold.";
const ADD_TO_CONFERENCE_DESCRIPTION: &str = "Dials a third party into this call as a conference, placing the person \
on hold while you speak with the third party first (unless configured not to). Once they answer, introduce the call \
to them; then take the person off hold with action_set_hold to connect them.";
const SET_HOLD_DESCRIPTION: &str = "Takes the person off hold (or puts them back on hold) in this call's conference. \
Taken off hold once the third party has joined, the person is connected to the third party and you leave the call.";

/// When an action runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// When the model calls it (the default).
    FunctionCall,
    /// After a bot turn that contains one of these phrases (case-insensitive, punctuation aside).
    Phrases(Vec<String>),
}

/// An external action's configuration (`ExternalActionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct External {
    pub name: String,
    pub description: String,
    pub url: String,
    pub input_schema: Value,
    pub speak_on_send: bool,
    pub speak_on_receive: bool,
    /// Base64 of the HMAC key the request is signed with.
    pub signature_secret: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    EndConversation,
    Dtmf,
    /// To the configured number, or (without one) the number the model gives.
    TransferCall {
        phone_number: Option<String>,
    },
    External(External),
    /// Warm transfer: dial `phone_number` into the call's conference.
    AddToConference {
        phone_number: String,
        place_primary_on_hold: bool,
    },
    /// Warm transfer: the person off hold (or on hold).
    SetHold,
    /// Not an action this server knows.
    Unsupported(String),
}

/// Whether the model says something before the action runs (vocode's `should_respond`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Respond {
    Never,
    Sometimes,
    Always,
}

/// One action of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub kind: Kind,
    pub trigger: Trigger,
}

impl Action {
    /// An action from its stored document (`{"type", "config", "action_trigger"}`).
    pub fn from_document(doc: &Value) -> Option<Action> {
        let kind = match doc["type"].as_str()? {
            END_CONVERSATION => Kind::EndConversation,
            DTMF => Kind::Dtmf,
            TRANSFER_CALL => Kind::TransferCall {
                phone_number: doc["config"]["phone_number"]
                    .as_str()
                    .filter(|n| !n.trim().is_empty())
                    .map(str::to_owned),
            },
            EXTERNAL => {
                let config = &doc["config"];
                Kind::External(External {
                    name: config["name"].as_str()?.to_owned(),
                    description: config["description"].as_str().unwrap_or_default().to_owned(),
                    url: config["url"].as_str()?.to_owned(),
                    input_schema: config["input_schema"].clone(),
                    speak_on_send: config["speak_on_send"].as_bool().unwrap_or(false),
                    speak_on_receive: config["speak_on_receive"].as_bool().unwrap_or(false),
                    signature_secret: config["signature_secret"].as_str().unwrap_or_default().to_owned(),
                })
            }
            ADD_TO_CONFERENCE => Kind::AddToConference {
                phone_number: doc["config"]["phone_number"].as_str().unwrap_or_default().to_owned(),
                place_primary_on_hold: doc["config"]["place_primary_on_hold"].as_bool().unwrap_or(true),
            },
            SET_HOLD => Kind::SetHold,
            other => Kind::Unsupported(other.to_owned()),
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

    /// The action's type, as the API names it.
    pub fn action_type(&self) -> &str {
        match &self.kind {
            Kind::EndConversation => END_CONVERSATION,
            Kind::Dtmf => DTMF,
            Kind::TransferCall { .. } => TRANSFER_CALL,
            Kind::External(_) => EXTERNAL,
            Kind::AddToConference { .. } => ADD_TO_CONFERENCE,
            Kind::SetHold => SET_HOLD,
            Kind::Unsupported(kind) => kind,
        }
    }

    /// The tool's name: the action's type, or an external action's own name.
    pub fn name(&self) -> &str {
        match &self.kind {
            Kind::External(external) => &external.name,
            _ => self.action_type(),
        }
    }

    pub fn respond(&self) -> Respond {
        match &self.kind {
            Kind::EndConversation => Respond::Sometimes,
            Kind::Dtmf => Respond::Never,
            Kind::TransferCall { .. } => Respond::Always,
            Kind::External(e) if e.speak_on_send => Respond::Always,
            Kind::External(_) => Respond::Never,
            Kind::AddToConference { .. } => Respond::Always,
            Kind::SetHold => Respond::Sometimes,
            Kind::Unsupported(_) => Respond::Never,
        }
    }

    /// The action as the model's tool; `None` when the model does not call it (a phrase
    /// triggers it, or the server cannot carry it out).
    pub fn tool(&self) -> Option<Tool> {
        if self.trigger != Trigger::FunctionCall {
            return None;
        }
        let (description, mut parameters) = match &self.kind {
            Kind::EndConversation => {
                (END_CONVERSATION_DESCRIPTION.to_owned(), json!({"type": "object", "properties": {}}))
            }
            Kind::Dtmf => (
                DTMF_DESCRIPTION.to_owned(),
                json!({"type": "object", "properties": {"buttons": {"type": "string", "description": "The buttons to press."}},
                       "required": ["buttons"]}),
            ),
            Kind::TransferCall { phone_number: Some(_) } => {
                (TRANSFER_DESCRIPTION.to_owned(), json!({"type": "object", "properties": {}}))
            }
            Kind::TransferCall { phone_number: None } => (
                TRANSFER_DESCRIPTION.to_owned(),
                json!({"type": "object", "properties": {"phone_number": {"type": "string",
                       "description": "The phone number to transfer the call to"}}, "required": ["phone_number"]}),
            ),
            Kind::External(e) => (e.description.clone(), without_titles(&e.input_schema)),
            Kind::AddToConference { .. } => {
                (ADD_TO_CONFERENCE_DESCRIPTION.to_owned(), json!({"type": "object", "properties": {}}))
            }
            Kind::SetHold => (SET_HOLD_DESCRIPTION.to_owned(), json!({"type": "object", "properties": {}})),
            Kind::Unsupported(_) => return None,
        };
        if !parameters["properties"].is_object() {
            parameters["properties"] = json!({});
        }
        if self.respond() != Respond::Never {
            parameters["properties"]["user_message"] = json!({"type": "string", "description": USER_MESSAGE});
            if self.respond() == Respond::Always {
                let required = parameters["required"].as_array().cloned().unwrap_or_default();
                let mut required: Vec<Value> = required.into_iter().filter(|r| r != "user_message").collect();
                required.push(json!("user_message"));
                parameters["required"] = Value::Array(required);
            }
        }
        Some(Tool { name: self.name().to_owned(), description, parameters })
    }

    /// The transcript's line for the action's start (vocode's `action_attempt_to_string`).
    pub fn attempt_line(&self, params: &Value) -> String {
        let text = match &self.kind {
            Kind::EndConversation => "Attempting to end conversation".to_owned(),
            Kind::Dtmf => {
                format!("Attempting to press numbers: {}", python_list(params["buttons"].as_str().unwrap_or("")))
            }
            Kind::TransferCall { .. } => {
                format!("Attempting to transfer call to {}", self.transfer_to(params).unwrap_or_default())
            }
            Kind::AddToConference { phone_number, .. } => {
                format!("Attempting to add {phone_number} to the conference")
            }
            Kind::SetHold => "Attempting to change the hold".to_owned(),
            _ => format!("!STARTING ACTION {} WITH PARAMETERS {}!", self.action_type(), params),
        };
        format!("BOT_ACTION_START: {text}")
    }

    /// The transcript's line for the action's result (vocode's `action_result_to_string`).
    pub fn result_line(&self, params: &Value, outcome: &Outcome) -> String {
        let text = match (&self.kind, outcome.success) {
            (Kind::EndConversation, true) => "Successfully ended conversation".to_owned(),
            (Kind::EndConversation, false) => "Did not end call because user interrupted".to_owned(),
            (Kind::Dtmf, true) => {
                format!("Pressed numbers {} successfully", python_list(params["buttons"].as_str().unwrap_or("")))
            }
            (Kind::Dtmf, false) => {
                format!("Failed to press numbers {}", python_list(params["buttons"].as_str().unwrap_or("")))
            }
            (Kind::TransferCall { .. }, true) => "Successfully transferred call".to_owned(),
            (Kind::TransferCall { .. }, false) => {
                format!("Did not transfer call: {}", outcome.response["error"].as_str().unwrap_or("it failed"))
            }
            (Kind::AddToConference { phone_number, .. }, true) => format!("Added {phone_number} to the conference"),
            (Kind::SetHold, true) if outcome.response["on_hold"] == true => "Placed the person on hold".to_owned(),
            (Kind::SetHold, true) => "Took the person off hold".to_owned(),
            (Kind::AddToConference { phone_number, .. }, false) => format!(
                "Did not add {phone_number} to the conference: {}",
                outcome.response["error"].as_str().unwrap_or("it failed")
            ),
            (Kind::SetHold, false) => {
                format!("Did not change the hold: {}", outcome.response["error"].as_str().unwrap_or("it failed"))
            }
            _ => format!("!ACTION {} FINISHED WITH OUTPUT {}!", self.action_type(), outcome.response),
        };
        format!("BOT_ACTION_FINISH: {text}")
    }

    /// The number a transfer goes to: the configured one, else the model's.
    pub fn transfer_to(&self, params: &Value) -> Option<String> {
        match &self.kind {
            Kind::TransferCall { phone_number: Some(number) } => Some(number.clone()),
            Kind::TransferCall { phone_number: None } => params["phone_number"].as_str().map(str::to_owned),
            _ => None,
        }
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

/// `['1', '2']`: how vocode writes the keys pressed.
fn python_list(buttons: &str) -> String {
    let items: Vec<String> = buttons.chars().map(|c| format!("'{c}'")).collect();
    format!("[{}]", items.join(", "))
}

/// A JSON schema without its `title`s (as vocode sends them), keeping `properties` named `title`.
fn without_titles(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                if key == "title" && !value.is_object() {
                    continue;
                }
                out.insert(key.clone(), without_titles(value));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(without_titles).collect()),
        other => other.clone(),
    }
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
    pub fn failed(reason: impl Into<String>) -> Self {
        Outcome { success: false, response: json!({"success": false, "error": reason.into()}), agent_message: None }
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
    if matches!(action.kind, Kind::Dtmf) {
        let buttons = params.get("buttons").and_then(Value::as_str).unwrap_or_default();
        if buttons.is_empty() || !buttons.chars().all(dtmf::is_key) {
            return Err(format!("{buttons:?} are not keys of a phone (0-9, *, #, A-D)"));
        }
    }
    Ok((params, user_message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(doc: Value) -> Action {
        Action::from_document(&doc).expect("an action")
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
            add.kind,
            Kind::AddToConference { phone_number: "+14155550199".into(), place_primary_on_hold: true }
        );
        let tool = add.tool().unwrap();
        assert_eq!(tool.name, "action_add_to_conference");
        assert_eq!(tool.parameters["required"], json!(["user_message"]), "it says something before it dials");
        let quiet = action(json!({"type": "action_add_to_conference",
                                  "config": {"phone_number": "+14155550199", "place_primary_on_hold": false}}));
        assert!(matches!(quiet.kind, Kind::AddToConference { place_primary_on_hold: false, .. }));
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
