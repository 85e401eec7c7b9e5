//! Agents: the dials users rely on, checked beyond their types, and the agent a number gets
//! when it asks for the `default` one.

use serde_json::{json, Value};

use crate::domain::issue::{Issue, Loc};

/// The fields of an agent that refer to other objects, and the resource each refers to.
pub const REFERENCES: &[(&str, Reference)] = &[
    ("prompt", Reference::Prompt),
    ("voice", Reference::Voice),
    ("webhook", Reference::Webhook),
    ("vector_database", Reference::VectorDatabase),
    ("openai_account_connection", Reference::OpenAiConnection),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    Prompt,
    Voice,
    Webhook,
    VectorDatabase,
    OpenAiConnection,
}

/// Ranges the guides promise (`conversation_speed` from 0.5 to 2, see the conversational-dials
/// guide), non-negative delays and idle times, and the temperatures OpenAI accepts.
pub fn check_dials(agent: &Value, loc: &[Loc]) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut range = |field: &str, low: f64, high: Option<f64>| {
        let Some(v) = agent.get(field).and_then(Value::as_f64) else {
            return;
        };
        let at = || {
            let mut at = loc.to_vec();
            at.push(Loc::from(field));
            at
        };
        if v < low {
            issues.push(Issue::new(
                at(),
                "greater_than_equal",
                format!("Input should be greater than or equal to {low}"),
            ));
        } else if let Some(high) = high.filter(|h| v > *h) {
            issues.push(Issue::new(at(), "less_than_equal", format!("Input should be less than or equal to {high}")));
        }
    };
    range("conversation_speed", 0.5, Some(2.0));
    range("initial_message_delay", 0.0, None);
    range("idle_time_seconds", 0.0, None);
    range("llm_temperature", 0.0, Some(2.0));
    issues
}

/// The voice of an agent that names none: Vocode's own `joe`.
pub fn default_voice() -> Value {
    json!({"type": "voice_vocode", "voice_id": "joe"})
}

/// The params of the agent created for `inbound_agent: "default"`.
pub fn default_agent_params() -> Value {
    json!({
        "name": "Default agent",
        "prompt": {
            "content": "You are a helpful assistant answering the phone. Keep your answers short and friendly.",
        },
        "voice": default_voice(),
        "initial_message": "Hello! How can I help you today?",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dials_outside_their_ranges_are_named() {
        let loc = vec![Loc::from("body")];
        assert!(check_dials(&json!({"conversation_speed": 1.0, "initial_message_delay": 0}), &loc).is_empty());
        let issues = check_dials(
            &json!({"conversation_speed": 2.5, "initial_message_delay": -1, "idle_time_seconds": -5, "llm_temperature": 0.4}),
            &loc,
        );
        let fields: Vec<String> = issues.iter().map(|i| serde_json::to_string(&i.loc).unwrap()).collect();
        assert_eq!(
            fields,
            [
                r#"["body","conversation_speed"]"#,
                r#"["body","initial_message_delay"]"#,
                r#"["body","idle_time_seconds"]"#
            ]
        );
        assert_eq!(issues[0].kind, "less_than_equal");
        assert!(check_dials(&json!({"conversation_speed": 0.4}), &loc)[0].msg.contains("0.5"));
        assert!(check_dials(&json!({"idle_time_seconds": null}), &loc).is_empty());
    }
}
