//! What carriers send this server: call progress, answering-machine detection, the TwiML or NCCO
//! an answered call asks for, and inbound calls. No bearer auth: each request is verified by its
//! extractor — Twilio's `X-Twilio-Signature` with the account's auth token, computed on the public
//! URL ([`twilio::TwilioRequest`]); Vonage's signed JWT over the body ([`vonage::VerifiedVonage`]).
//! A forged or unsigned request gets 403 and changes nothing.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use uuid::Uuid;

use super::media;
use crate::calls::News;
use crate::domain::call::{Event, Provider, Stage};
use crate::domain::phone::PhoneNumber;
use crate::error::ApiError;
use crate::store::calls::CallRow;
use crate::store::numbers::{self, NumberRow};
use crate::AppState;

pub mod twilio;
pub mod vonage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/telephony/twilio/status/{call_id}", post(twilio::status))
        .route("/telephony/twilio/status", post(twilio::status_by_sid))
        .route("/telephony/twilio/amd/{call_id}", post(twilio::amd))
        .route("/telephony/twilio/twiml/{call_id}", post(twilio::twiml))
        .route("/telephony/twilio/resume/{call_id}", post(twilio::resume))
        .route("/telephony/twilio/transfer/{call_id}", post(twilio::transfer_ended))
        .route("/telephony/twilio/transfer/{call_id}/answered", post(twilio::transfer_answered))
        .route("/telephony/twilio/conference/{call_id}", post(twilio::conference_event))
        .route("/telephony/twilio/conference/{call_id}/third_party", post(twilio::third_party))
        .route("/telephony/vonage/transfer/{call_id}", post(vonage::transfer_event))
        .route("/telephony/twilio/inbound", post(twilio::inbound))
        .route("/telephony/twilio/stream/{call_id}", get(media::twilio_stream))
        .route("/telephony/vonage/event/{call_id}", post(vonage::event))
        .route("/telephony/vonage/event", post(vonage::event_by_uuid))
        .route("/telephony/vonage/answer", get(vonage::answer).post(vonage::answer))
        .route("/telephony/vonage/stream/{call_id}", get(media::vonage_stream))
}

fn forbidden(reason: &str) -> ApiError {
    tracing::warn!(reason, "refused a carrier callback");
    ApiError::Forbidden(format!("Forbidden: {reason}"))
}

fn xml(body: impl Into<String>) -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], body.into()).into_response()
}

async fn load_call(state: &AppState, call_id: Uuid) -> Result<CallRow, ApiError> {
    state.calls.find(call_id).await?.ok_or_else(|| ApiError::NotFound(format!("Call {call_id} not found")))
}

async fn load_call_by_carrier_id(
    state: &AppState,
    provider: Provider,
    carrier_id: &str,
    what: &str,
) -> Result<CallRow, ApiError> {
    state
        .calls
        .find_by_carrier_id(provider, carrier_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no call has this {what}")))
}

/// Applies news (after the carrier's id for the call, when this is the first word of it), and
/// runs what it causes.
async fn apply_news(state: &AppState, row: &CallRow, carrier_id: Option<&str>, news: News) -> Result<(), ApiError> {
    if row.state.telephony_id.is_none() {
        if let Some(id) = carrier_id {
            let accepted = News::carrier(
                Event::Accepted { telephony_id: id.to_owned() },
                news.carrier_status.clone().unwrap_or_default(),
            );
            if let Some(applied) = state.calls.apply(row.id, &accepted).await? {
                state.run_soon(applied.claimed);
            }
        }
    }
    if ends_a_talking_call(row, &news) && state.calls.conversation_lost(row.id, state.replicas.id()).await? {
        // The caller was left with silence (the process running the conversation died, or it
        // stopped and nobody took the call up): the end is the server's doing.
        tracing::warn!(call_id = %row.id, "the call ended while its conversation was lost with the server running it");
        metrics::counter!("vocode_calls_ended_with_conversation_lost_total").increment(1);
        state.calls.apply(row.id, &News::api(Event::ConversationLost)).await?;
    }
    if let Some(applied) = state.calls.apply(row.id, &news).await? {
        state.run_soon(applied.claimed);
    }
    Ok(())
}

/// Whether `news` is the carrier's end of a call that was picked up and that the server did not
/// ask to end.
fn ends_a_talking_call(row: &CallRow, news: &News) -> bool {
    let ends = matches!(news.event, Some(Event::Completed { .. } | Event::NotAnswered | Event::Failed));
    ends && news.from_carrier
        && !row.state.is_final()
        && row.state.stage == Stage::PickedUp
        && row.state.hangup.is_none()
}

/// The number an inbound call is to, when it is an active number of this server on `provider`.
async fn holder_of(state: &AppState, to: &str, provider: Provider) -> Result<(PhoneNumber, NumberRow), ApiError> {
    let to = PhoneNumber::parse(to).map_err(ApiError::BadRequest)?;
    let holder = {
        let mut handle = state.store.read().await?;
        numbers::active_holder(handle.conn(), to.digits()).await?
    }
    .filter(|n| n.telephony_provider == provider)
    .ok_or_else(|| ApiError::NotFound(format!("{to} is not a number of this server")))?;
    Ok((to, holder))
}

/// Records an inbound call to `holder`, answered by its agent; `None` when the number takes no
/// calls.
async fn answer_inbound(
    state: &AppState,
    holder: &NumberRow,
    provider: Provider,
    carrier_id: &str,
    from: &str,
    to: &PhoneNumber,
) -> Result<Option<Uuid>, ApiError> {
    let Some(agent_id) = holder.inbound_agent_id.filter(|_| !holder.outbound_only) else {
        return Ok(None);
    };
    let from = PhoneNumber::parse(from).map(|p| p.digits().to_owned()).unwrap_or_else(|_| from.to_owned());
    let (call_id, claimed) =
        state.calls.start_inbound(holder, agent_id, provider, carrier_id, &from, to.digits()).await?;
    state.run_soon(claimed);
    Ok(Some(call_id))
}
