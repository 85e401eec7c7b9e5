//! What a call's actions ask of the world outside its audio, carried out where the call's state
//! and carrier are known: transfers, keys and warm transfers ([`super::warm`]) through the call's
//! carrier account; everything else (the users' APIs) through [`HttpRunner`].

use futures_util::future::BoxFuture;
use serde_json::json;
use uuid::Uuid;

use crate::calls::News;
use crate::conversation::actions::{ActionRequest, ActionRunner, HttpRunner, Outcome};
use crate::domain::call::{Event, Stage};
use crate::domain::phone::PhoneNumber;
use crate::AppState;

pub struct CallRunner {
    pub http: HttpRunner,
    pub state: AppState,
    pub call_id: Uuid,
}

impl ActionRunner for CallRunner {
    fn run(&self, request: ActionRequest) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            match request {
                ActionRequest::Transfer { to } => transfer(&self.state, self.call_id, &to).await,
                ActionRequest::Keys { keys } => press(&self.state, self.call_id, &keys).await,
                ActionRequest::Conference { to, hold } => {
                    super::warm::add_to_conference(&self.state, self.call_id, &to, hold).await
                }
                ActionRequest::Hold => super::warm::set_hold(&self.state, self.call_id).await,
                other => self.http.run(other).await,
            }
        })
    }

    fn resumes(&self, request: &ActionRequest) -> bool {
        matches!(request, ActionRequest::Conference { .. })
    }

    fn resume(&self, request: ActionRequest) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            match request {
                ActionRequest::Conference { to, hold } => match PhoneNumber::parse(&to) {
                    Ok(to) => super::warm::carry_on(&self.state, self.call_id, &to, hold).await,
                    Err(reason) => Outcome::failed(format!("{to:?} is not a phone number: {reason}")),
                },
                other => self.run(other).await,
            }
        })
    }
}

/// Presses keys on the call through its carrier's DTMF API.
async fn press(state: &AppState, call_id: Uuid, keys: &str) -> Outcome {
    let row = match state.calls.find(call_id).await {
        Ok(Some(row)) if !row.state.is_final() => row,
        Ok(_) => return Outcome::failed("the call is not in progress"),
        Err(e) => return Outcome::failed(format!("the call cannot be read: {e}")),
    };
    let carrier = match state.telephony.carrier_of(&row).await {
        Ok(carrier) => carrier,
        Err(e) => return Outcome::failed(e.to_string()),
    };
    match carrier.press(&row, keys).await {
        Ok(()) => Outcome { success: true, response: json!({"success": true}), agent_message: None },
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "the carrier did not press the keys");
            Outcome::failed(format!("the carrier did not press the keys: {e}"))
        }
    }
}

/// Asks the call's carrier to connect the call to `to`, then moves the call to
/// `transfer_started` (the carrier's news of the third party moves it on from there). A carrier
/// that refuses leaves the call as it was, with the bot still on it.
async fn transfer(state: &AppState, call_id: Uuid, to: &str) -> Outcome {
    let to = match PhoneNumber::parse(to) {
        Ok(to) => to,
        Err(reason) => return Outcome::failed(format!("{to:?} is not a phone number: {reason}")),
    };
    let row = match state.calls.find(call_id).await {
        Ok(Some(row)) if row.state.stage == Stage::PickedUp && !row.state.is_final() => row,
        Ok(_) => return Outcome::failed("the call is not in progress"),
        Err(e) => return Outcome::failed(format!("the call cannot be read: {e}")),
    };
    let carrier = match state.telephony.carrier_of(&row).await {
        Ok(carrier) => carrier,
        Err(e) => return Outcome::failed(e.to_string()),
    };
    if let Err(e) = carrier.transfer(&row, &to).await {
        tracing::warn!(%call_id, error = %e, "the carrier did not transfer the call");
        return Outcome::failed(format!("the carrier did not transfer the call: {e}"));
    }
    match state.calls.apply(call_id, &News::api(Event::TransferStarted)).await {
        Ok(Some(applied)) => state.run_soon(applied.claimed),
        Ok(None) => {}
        Err(e) => tracing::warn!(%call_id, error = %e, "the transfer's start could not be recorded"),
    }
    tracing::info!(%call_id, "call transferred");
    Outcome { success: true, response: json!({"success": true, "phone_number": to.e164()}), agent_message: None }
}
