//! `action_end_conversation`: the bot hangs up, once what it is saying (its goodbye) has been
//! played.

use serde_json::Value;

use super::{no_parameters, ActionKind, Line, Offer, Outcome, Plan, Respond};

pub const END_CONVERSATION: &str = "action_end_conversation";

const DESCRIPTION: &str = "\nEnds the current conversation; use this when we should hang up. Use this\n\
when: someone has indicated they expect the call to finish, and there are no further objectives\n\
to accomplish on the call. Do not use this when a human interrupts you or asks to speak to you\n";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndConversation;

impl ActionKind for EndConversation {
    fn action_type(&self) -> &str {
        END_CONVERSATION
    }

    fn offer(&self) -> Option<Offer> {
        Some(Offer { description: DESCRIPTION.to_owned(), parameters: no_parameters(), respond: Respond::Sometimes })
    }

    fn attempt(&self, _params: &Value) -> String {
        "Attempting to end conversation".to_owned()
    }

    fn result(&self, _params: &Value, outcome: &Outcome) -> String {
        if outcome.success {
            "Successfully ended conversation".to_owned()
        } else {
            "Did not end call because user interrupted".to_owned()
        }
    }

    fn plan(&self, _params: &Value, _line: &Line) -> Plan {
        Plan::EndConversation
    }
}
