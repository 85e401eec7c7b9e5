//! An action of a type this server does not carry out: never offered to the model, and, fired
//! by a phrase, a failure the transcript and the model are told of.

use serde_json::Value;

use super::{ActionKind, Line, Offer, Outcome, Plan};

/// The type the agent names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl ActionKind for Unsupported {
    fn action_type(&self) -> &str {
        &self.0
    }

    fn offer(&self) -> Option<Offer> {
        None
    }

    fn plan(&self, _params: &Value, _line: &Line) -> Plan {
        Plan::Done(Outcome::failed(format!("{} is not supported by this server yet", self.0)))
    }
}
