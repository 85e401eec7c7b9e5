//! `action_transfer_call`: the call handed to another number through its carrier (a cold
//! transfer); once the carrier has it, the bot leaves the call.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{no_parameters, ActionKind, ActionRequest, Follow, Line, Offer, Outcome, Plan, Respond};
use crate::domain::phone::PhoneNumber;

pub const TRANSFER_CALL: &str = "action_transfer_call";

const DESCRIPTION: &str = "Transfers the call to a new number. This is never used while on hold.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferCall {
    /// The configured number; without one, the model gives it.
    pub phone_number: Option<String>,
}

pub(super) fn parse(config: &Value) -> Option<Arc<dyn ActionKind>> {
    let phone_number = config["phone_number"].as_str().filter(|n| !n.trim().is_empty()).map(str::to_owned);
    Some(Arc::new(TransferCall { phone_number }))
}

impl TransferCall {
    /// The number the call goes to: the configured one, else the model's.
    pub fn to(&self, params: &Value) -> Option<String> {
        match &self.phone_number {
            Some(number) => Some(number.clone()),
            None => params["phone_number"].as_str().map(str::to_owned),
        }
    }
}

impl ActionKind for TransferCall {
    fn action_type(&self) -> &str {
        TRANSFER_CALL
    }

    fn offer(&self) -> Option<Offer> {
        let parameters = match self.phone_number {
            Some(_) => no_parameters(),
            None => json!({"type": "object", "properties": {"phone_number": {"type": "string",
                           "description": "The phone number to transfer the call to"}}, "required": ["phone_number"]}),
        };
        Some(Offer { description: DESCRIPTION.to_owned(), parameters, respond: Respond::Always })
    }

    fn attempt(&self, params: &Value) -> String {
        format!("Attempting to transfer call to {}", self.to(params).unwrap_or_default())
    }

    fn result(&self, _params: &Value, outcome: &Outcome) -> String {
        if outcome.success {
            "Successfully transferred call".to_owned()
        } else {
            format!("Did not transfer call: {}", outcome.error())
        }
    }

    fn plan(&self, params: &Value, _line: &Line) -> Plan {
        let to = self.to(params).unwrap_or_default();
        match PhoneNumber::parse(&to) {
            // Nothing is dialled.
            Err(reason) => {
                Plan::Done(Outcome::failed(format!("{to:?} is not a phone number to transfer to: {reason}")))
            }
            Ok(number) => Plan::Outside(ActionRequest::Transfer { to: number.digits().to_owned() }),
        }
    }

    fn follow(&self, outcome: &Outcome, _by_model: bool) -> Follow {
        if outcome.success {
            Follow::HandedOver
        } else {
            Follow::Failed
        }
    }
}
