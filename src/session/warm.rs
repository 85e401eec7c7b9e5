//! A warm transfer carried out (see [`crate::telephony::conference`] for its design): the steps
//! of `action_add_to_conference` and `action_set_hold` on a Twilio call, in order, each waiting
//! for the carrier's news before the next, and undoing what was done when a step fails before the
//! person's call moved.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::calls::News;
use crate::conversation::actions::Outcome;
use crate::domain::call::{Event, Provider, Stage};
use crate::domain::phone::PhoneNumber;
use crate::store::calls::CallRow;
use crate::telephony::conference::{creds, NoLease, ThirdParty};
use crate::telephony::twilio::{self, Credentials};
use crate::telephony::Carrier;
use crate::AppState;

/// How long the steering number's call may take to reach this server and open its stream.
const BOT_JOINS: Duration = Duration::from_secs(20);
/// How long the person's call may take to join the conference.
const PERSON_JOINS: Duration = Duration::from_secs(10);
/// How long the third party's phone rings.
const RINGS: Duration = Duration::from_secs(30);
/// Beyond the ringing, how long the carrier may take to say how it went.
const NEWS_GRACE: Duration = Duration::from_secs(15);

/// What was refused, as the action's output says it: the guide's 429 for a pool with no free
/// number.
fn refused(error: impl std::fmt::Display, status_code: u16) -> Outcome {
    Outcome {
        success: false,
        response: json!({"success": false, "error": error.to_string(), "status_code": status_code}),
        agent_message: None,
    }
}

async fn in_progress(state: &AppState, call_id: Uuid) -> Result<CallRow, String> {
    match state.calls.find(call_id).await {
        Ok(Some(row)) if row.telephony_provider != Provider::Twilio => {
            Err("warm transfers are for Twilio calls (the guide's limits)".into())
        }
        Ok(Some(row)) if !row.state.is_final() && row.state.stage != Stage::Created => Ok(row),
        Ok(_) => Err("the call is not in progress".into()),
        Err(e) => Err(format!("the call cannot be read: {e}")),
    }
}

async fn apply(state: &AppState, call_id: Uuid, event: Event) {
    match state.calls.apply(call_id, &News::api(event)).await {
        Ok(Some(applied)) => state.run_soon(applied.claimed),
        Ok(None) => {}
        Err(e) => tracing::warn!(%call_id, error = %e, "the warm transfer's progress could not be recorded"),
    }
}

/// `action_add_to_conference`: the call into a conference, the bot on a steering number's leg,
/// the person on hold (when asked), the third party dialled in from the steering number. Done
/// once the third party answers; when they do not, the person is taken off hold and the bot goes
/// on with them. When the bot's leg reaches another replica, the conversation moves there (it
/// takes the call's conversation over), and that replica carries the transfer on
/// ([`carry_on`]).
pub async fn add_to_conference(state: &AppState, call_id: Uuid, to: &str, hold: bool) -> Outcome {
    let to = match PhoneNumber::parse(to) {
        Ok(to) => to,
        Err(reason) => return Outcome::failed(format!("{to:?} is not a phone number: {reason}")),
    };
    let row = match in_progress(state, call_id).await {
        Ok(row) if row.state.stage == Stage::PickedUp => row,
        Ok(_) => return Outcome::failed("the call has already been transferred"),
        Err(reason) => return Outcome::failed(reason),
    };
    if row.state.telephony_id.is_none() {
        return Outcome::failed("the call has no carrier id yet");
    }
    let (carrier, pool) = match state.telephony.account_and_pool(&row).await {
        Ok(found) => found,
        Err(reason) => return Outcome::failed(reason),
    };
    let steering = match state.telephony.lease_steering(call_id, &pool).await {
        Ok(number) => number,
        Err(e @ NoLease::Exhausted) => return refused(e, 429),
        Err(e) => return refused(e, 409),
    };
    // The call's stream here stays until the carrier moves the person into the conference, even
    // if the conversation moves to the bot leg's replica first.
    state.sessions.warm_transfer(call_id);
    let name = crate::telephony::conference::conference_name(call_id);
    let bound_by = match bring_the_bot(state, &row, &carrier, &steering, &name).await {
        Ok(bound_by) => bound_by,
        Err(reason) => {
            state.telephony.forget_conference(call_id).await;
            tracing::warn!(%call_id, %reason, "the warm transfer could not start");
            return Outcome::failed(reason);
        }
    };
    if bound_by != state.replicas.id() {
        // The replica holding the bot's leg takes the conversation over and carries the transfer
        // on; this one's conversation lets go meanwhile, and what it would say is not written.
        tracing::info!(%call_id, replica = %bound_by, "the bot's conference leg is on another replica: the conversation moves there");
        tokio::time::sleep(PERSON_JOINS + RINGS + NEWS_GRACE).await;
        return Outcome::failed("the call's conversation moved to the replica holding the bot's conference leg");
    }
    carry_on(state, call_id, &to, hold).await
}

/// The warm transfer from the bot's leg on: the person's call moves into the conference (the
/// bot's leg takes over its conversation), is put on hold, and the third party is dialled in. Run
/// by the replica holding the bot's leg: the one that started the transfer, or the one that took
/// the conversation over when the leg reached it.
pub async fn carry_on(state: &AppState, call_id: Uuid, to: &PhoneNumber, hold: bool) -> Outcome {
    let row = match in_progress(state, call_id).await {
        Ok(row) => row,
        Err(reason) => return Outcome::failed(reason),
    };
    let Some(person) = row.state.telephony_id.clone() else {
        return Outcome::failed("the call has no carrier id yet");
    };
    let steering = match state.telephony.warm(call_id).await {
        Ok(Some(warm)) => warm.number.and_then(|n| PhoneNumber::parse(&n).ok()),
        Ok(None) => None,
        Err(reason) => return Outcome::failed(reason),
    };
    let Some(steering) = steering else {
        return Outcome::failed("the call's warm transfer is over");
    };
    let (carrier, _) = match state.telephony.account_and_pool(&row).await {
        Ok(found) => found,
        Err(reason) => return Outcome::failed(reason),
    };
    let creds = creds(&carrier);
    let name = crate::telephony::conference::conference_name(call_id);
    // The person's call moves into the conference; the bot's leg takes over its conversation.
    let events = state.telephony.url(&format!("/telephony/twilio/conference/{call_id}"));
    if let Err(e) = state.telephony.twilio.redirect(creds, &person, &twilio::conference_twiml(&name, &events)).await {
        leave(state, call_id, creds).await;
        let reason = format!("the call could not be moved into the conference: {e}");
        if !state.sessions.has_standby(call_id) {
            // No stream carries the conversation to the person any more: theirs ended (the
            // carrier ended it anyway) or is on a process that let the conversation go. The call
            // cannot go on, and ends as the server's doing (`bot_disconnected`), not stuck.
            tracing::warn!(%call_id, %reason, "the call cannot go on after its failed move: the server ends it");
            apply(state, call_id, Event::EndRequested).await;
        }
        return Outcome::failed(reason);
    }
    state.sessions.promote(call_id);
    if state.telephony.until_warm(call_id, PERSON_JOINS, |w| w.person_joined.then_some(())).await.is_none() {
        tracing::warn!(%call_id, "the carrier did not say the person joined the conference");
    }
    if hold {
        match state.telephony.hold_person(call_id, creds, &person, true).await {
            Ok(()) => {}
            Err(reason) => tracing::warn!(%call_id, %reason, "the person could not be put on hold"),
        }
    }
    apply(state, call_id, Event::TransferStarted).await;
    let news = match dial_third_party(state, call_id, creds, &steering, to, &name).await {
        Ok(news) => news,
        Err(reason) => ThirdParty::NotAnswered(reason),
    };
    match news {
        ThirdParty::Answered => {
            apply(state, call_id, Event::TransferAnswered).await;
            tracing::info!(%call_id, "the third party joined the conference");
            Outcome {
                success: true,
                response: json!({"success": true, "phone_number": to.e164(), "person_on_hold": hold}),
                agent_message: None,
            }
        }
        ThirdParty::NotAnswered(why) => {
            apply(state, call_id, Event::TransferFailed).await;
            if hold {
                if let Err(reason) = state.telephony.hold_person(call_id, creds, &person, false).await {
                    tracing::warn!(%call_id, %reason, "the person could not be taken off hold");
                }
            }
            Outcome::failed(format!("{} did not join the conference ({why})", to.e164()))
        }
    }
}

/// The conference calls the steering number, whose call comes back to a replica of this server
/// and binds its stream there; returns that replica's id. The number is pointed at this server
/// first (the pool may hold numbers linked with their own settings).
async fn bring_the_bot(
    state: &AppState,
    row: &CallRow,
    carrier: &Carrier<'_>,
    steering: &PhoneNumber,
    name: &str,
) -> Result<String, String> {
    let (call_id, creds) = (row.id, creds(carrier));
    match carrier.point_number_here(steering, true).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("the steering number {steering} is not a number of this Twilio account")),
        Err(e) => return Err(format!("the steering number {steering} could not be pointed at this server: {e}")),
    }
    let from = PhoneNumber::parse(&row.agent_phone_number).map_err(|e| format!("the call's number: {e}"))?;
    let options = [
        ("StartConferenceOnEnter", "true".to_owned()),
        ("EndConferenceOnExit", "false".to_owned()),
        ("Beep", "false".to_owned()),
        ("Timeout", BOT_JOINS.as_secs().to_string()),
    ];
    let participant = state
        .telephony
        .twilio
        .add_participant(creds, name, &from, steering, &options)
        .await
        .map_err(|e| format!("the conference could not be started: {e}"))?;
    let conference_sid = participant.conference_sid.as_deref();
    state.telephony.set_bot_participant(call_id, &participant.call_sid, conference_sid).await;
    match state.telephony.until_warm(call_id, BOT_JOINS, |w| w.bot_bound_by.clone()).await {
        Some(replica) => Ok(replica),
        None => {
            let _ = state.telephony.twilio.hang_up(creds, &participant.call_sid, true).await;
            Err(format!("the steering number {steering}'s call did not reach this server's media stream"))
        }
    }
}

/// Dials the third party into the conference from the steering number, and waits for its news
/// (which any replica may hear: it is read from the warm transfer's row).
async fn dial_third_party(
    state: &AppState,
    call_id: Uuid,
    creds: &Credentials,
    steering: &PhoneNumber,
    to: &PhoneNumber,
    name: &str,
) -> Result<ThirdParty, String> {
    let mut options = vec![
        ("StartConferenceOnEnter", "true".to_owned()),
        ("EndConferenceOnExit", "false".to_owned()),
        ("Beep", "false".to_owned()),
        ("Timeout", RINGS.as_secs().to_string()),
        ("StatusCallback", state.telephony.url(&format!("/telephony/twilio/conference/{call_id}/third_party"))),
        ("StatusCallbackMethod", "POST".to_owned()),
    ];
    for event in ["initiated", "ringing", "answered", "completed"] {
        options.push(("StatusCallbackEvent", event.to_owned()));
    }
    let participant = state
        .telephony
        .twilio
        .add_participant(creds, name, steering, to, &options)
        .await
        .map_err(|e| format!("the carrier did not dial it: {e}"))?;
    state.telephony.third_party_dialled(call_id, &participant.call_sid).await;
    let news = state.telephony.until_warm(call_id, RINGS + NEWS_GRACE, |w| match w.third_party_news.as_deref() {
        Some("answered") => Some(ThirdParty::Answered),
        Some(why) => Some(ThirdParty::NotAnswered(why.to_owned())),
        None => None,
    });
    match news.await {
        Some(news) => Ok(news),
        None => {
            let _ = state.telephony.twilio.hang_up(creds, &participant.call_sid, false).await;
            Err("the carrier gave no news of it".into())
        }
    }
}

/// The bot leaves the conference: its leg is hung up (its stream's end gives the steering number
/// back).
async fn leave(state: &AppState, call_id: Uuid, creds: &Credentials) {
    let participant = state.telephony.warm(call_id).await.ok().flatten().and_then(|w| w.bot_participant);
    match participant {
        Some(sid) => match state.telephony.twilio.hang_up(creds, &sid, true).await {
            // Its number goes back now (its stream's end, wherever it is, says so again).
            Ok(_) => state.telephony.bot_left(call_id).await,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "the bot's conference leg could not be hung up");
                state.telephony.forget_conference(call_id).await;
            }
        },
        None => state.telephony.forget_conference(call_id).await,
    }
}

/// `action_set_hold`: the person goes on hold, or comes off it. Taken off hold with the third
/// party in the conference, the person is handed over: the bot leaves.
pub async fn set_hold(state: &AppState, call_id: Uuid) -> Outcome {
    let warm = match state.telephony.warm(call_id).await {
        Ok(Some(warm)) => warm,
        Ok(None) => {
            return Outcome::failed("the call is not in a conference (action_add_to_conference puts it in one)")
        }
        Err(reason) => return Outcome::failed(reason),
    };
    let row = match in_progress(state, call_id).await {
        Ok(row) => row,
        Err(reason) => return Outcome::failed(reason),
    };
    let (Some(person), Ok((carrier, _))) =
        (row.state.telephony_id.clone(), state.telephony.account_and_pool(&row).await)
    else {
        return Outcome::failed("the call's Twilio account cannot be reached");
    };
    let creds = creds(&carrier);
    let hold = !warm.person_on_hold;
    if let Err(reason) = state.telephony.hold_person(call_id, creds, &person, hold).await {
        return Outcome::failed(format!("the person's hold could not be changed: {reason}"));
    }
    let handed_over = !hold && warm.third_party_answered;
    if handed_over {
        leave(state, call_id, creds).await;
    }
    Outcome {
        success: true,
        response: json!({"success": true, "on_hold": hold, "handed_over": handed_over}),
        agent_message: None,
    }
}
