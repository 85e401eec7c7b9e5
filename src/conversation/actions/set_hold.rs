//! `action_set_hold`, the second half of a warm transfer: the person taken off hold (or put back
//! on hold) in the call's conference. Taken off hold once the third party is there, the person is
//! connected to them, and the call is handed over: the bot leaves it.

use serde_json::Value;

use super::{no_parameters, ActionKind, ActionRequest, Follow, Line, Offer, Outcome, Plan, Respond};

pub const SET_HOLD: &str = "action_set_hold";

const DESCRIPTION: &str = "Takes the person off hold (or puts them back on hold) in this call's conference. \
Taken off hold once the third party has joined, the person is connected to the third party and you leave the call.";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetHold;

impl ActionKind for SetHold {
    fn action_type(&self) -> &str {
        SET_HOLD
    }

    fn offer(&self) -> Option<Offer> {
        Some(Offer { description: DESCRIPTION.to_owned(), parameters: no_parameters(), respond: Respond::Sometimes })
    }

    fn attempt(&self, _params: &Value) -> String {
        "Attempting to change the hold".to_owned()
    }

    fn result(&self, _params: &Value, outcome: &Outcome) -> String {
        match outcome.success {
            true if outcome.response["on_hold"] == true => "Placed the person on hold".to_owned(),
            true => "Took the person off hold".to_owned(),
            false => format!("Did not change the hold: {}", outcome.error()),
        }
    }

    fn plan(&self, _params: &Value, _line: &Line) -> Plan {
        Plan::Outside(ActionRequest::Hold)
    }

    fn follow(&self, outcome: &Outcome, _by_model: bool) -> Follow {
        if outcome.response["handed_over"] == true {
            Follow::HandedOver
        } else {
            Follow::usual(outcome)
        }
    }
}
