//! `action_add_to_conference`, the first half of a warm transfer: a third party dialled into the
//! call's conference, the person on hold meanwhile (unless configured not to be), so that the bot
//! introduces the call to them before `action_set_hold` connects the person.

use std::sync::Arc;

use serde_json::Value;

use super::{no_parameters, ActionKind, ActionRequest, Follow, Line, Offer, Outcome, Plan, Respond};
use crate::domain::phone::PhoneNumber;

pub const ADD_TO_CONFERENCE: &str = "action_add_to_conference";

const DESCRIPTION: &str = "Dials a third party into this call as a conference, placing the person \
on hold while you speak with the third party first (unless configured not to). Once they answer, introduce the call \
to them; then take the person off hold with action_set_hold to connect them.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddToConference {
    /// Who is dialled in, as configured.
    pub phone_number: String,
    pub place_primary_on_hold: bool,
}

pub(super) fn parse(config: &Value) -> Option<Arc<dyn ActionKind>> {
    Some(Arc::new(AddToConference {
        phone_number: config["phone_number"].as_str().unwrap_or_default().to_owned(),
        place_primary_on_hold: config["place_primary_on_hold"].as_bool().unwrap_or(true),
    }))
}

impl ActionKind for AddToConference {
    fn action_type(&self) -> &str {
        ADD_TO_CONFERENCE
    }

    fn offer(&self) -> Option<Offer> {
        Some(Offer { description: DESCRIPTION.to_owned(), parameters: no_parameters(), respond: Respond::Always })
    }

    fn attempt(&self, _params: &Value) -> String {
        format!("Attempting to add {} to the conference", self.phone_number)
    }

    fn result(&self, _params: &Value, outcome: &Outcome) -> String {
        if outcome.success {
            format!("Added {} to the conference", self.phone_number)
        } else {
            format!("Did not add {} to the conference: {}", self.phone_number, outcome.error())
        }
    }

    fn plan(&self, _params: &Value, _line: &Line) -> Plan {
        match PhoneNumber::parse(&self.phone_number) {
            Err(reason) => Plan::Done(Outcome::failed(format!(
                "{:?} is not a phone number to dial in: {reason}",
                self.phone_number
            ))),
            Ok(number) => Plan::Outside(ActionRequest::Conference {
                to: number.digits().to_owned(),
                hold: self.place_primary_on_hold,
            }),
        }
    }

    fn follow(&self, outcome: &Outcome, by_model: bool) -> Follow {
        match Follow::usual(outcome) {
            // The third party is on the line: the model that dialled them speaks to them.
            Follow::Quiet if by_model => Follow::ModelSpeaks,
            usual => usual,
        }
    }
}
