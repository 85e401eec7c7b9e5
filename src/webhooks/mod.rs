//! Webhook events: what a call's changes mean for its agent's webhook, queued in the transaction
//! of the change (so a change and its event are never separated) and delivered by the
//! `deliver_webhook` jobs — at least once, signed, a call's events in order.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::call::{billable_minutes, Effect};
use crate::domain::documents::{AGENTS, WEBHOOKS};
use crate::store::calls::CallRow;
use crate::store::jobs::{self, NewJob};
use crate::store::{now, records, Tx};
use crate::AppState;

pub mod deliver;
pub mod guard;
pub mod signing;

pub const DELIVER: &str = "deliver_webhook";

/// The spec's `EventType`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    // These three come from the conversation engine, which is not part of this server yet:
    // nothing emits them, and the delivery path is the same as for the others.
    Message,
    Action,
    Transcript,
    PhoneCallConnected,
    PhoneCallEnded,
    PhoneCallDidNotConnect,
    Recording,
    HumanDetection,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Message => "event_message",
            EventType::Action => "event_action",
            EventType::Transcript => "event_transcript",
            EventType::PhoneCallConnected => "event_phone_call_connected",
            EventType::PhoneCallEnded => "event_phone_call_ended",
            EventType::PhoneCallDidNotConnect => "event_phone_call_did_not_connect",
            EventType::Recording => "event_recording",
            EventType::HumanDetection => "event_human_detection",
        }
    }
}

/// The events a call's change means, with their payloads.
pub fn events_for(
    state: &AppState,
    row: &CallRow,
    effects: &[Effect],
    recording_now_available: bool,
) -> Vec<(EventType, Value)> {
    let mut events = Vec::new();
    for effect in effects {
        match effect {
            Effect::Connected => events.push((
                EventType::PhoneCallConnected,
                json!({"to_number": row.to_number, "from_number": row.from_number}),
            )),
            Effect::HumanDetected(result) => events.push((EventType::HumanDetection, json!({"result": result.as_str()}))),
            Effect::EndedAfterPickUp => {
                let seconds = row.duration_seconds.unwrap_or(0);
                events.push((
                    EventType::PhoneCallEnded,
                    json!({"minutes": billable_minutes(seconds), "duration_seconds": seconds, "stage_outcome": row.stage_outcome}),
                ))
            }
            Effect::DidNotConnect => events.push((
                EventType::PhoneCallDidNotConnect,
                json!({"telephony_status": row.carrier_status, "stage_outcome": row.stage_outcome, "error_message": row.error_message}),
            )),
            Effect::HangUp | Effect::CancelDispatch => {}
        }
    }
    if recording_now_available {
        events.push((
            EventType::Recording,
            json!({"recording_url": state.telephony.url(&format!("/v1/calls/recording?id={}", row.id))}),
        ));
    }
    events
}

/// The ordering key of a call's deliveries: they go out one at a time, in order.
pub fn ordering_key(call_id: Uuid) -> String {
    format!("webhook:{call_id}")
}

/// How many times a delivery is tried (see [`deliver::SCHEDULE`]).
pub const MAX_ATTEMPTS: i32 = deliver::SCHEDULE.len() as i32 + 1;

/// Queues, in the transaction of the call's change, the events its agent's webhook subscribes to.
pub async fn enqueue(tx: &mut Tx, row: &CallRow, events: Vec<(EventType, Value)>) -> sqlx::Result<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let Some(agent) = records::get(tx.conn(), AGENTS.table, row.user_id, row.agent_id).await? else {
        return Ok(0);
    };
    let Some(webhook_id) = agent.body.0["webhook"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
        return Ok(0);
    };
    let Some(webhook) = records::get(tx.conn(), WEBHOOKS.table, row.user_id, webhook_id).await? else {
        return Ok(0);
    };
    let subscriptions = webhook.body.0["subscriptions"].as_array().cloned().unwrap_or_default();
    let at = now();
    let mut queued = 0;
    for (kind, payload) in events {
        if !subscriptions.contains(&Value::from(kind.as_str())) {
            continue;
        }
        let event_id = format!("msg_{}", Uuid::now_v7().simple());
        let job = NewJob {
            kind: DELIVER,
            payload: json!({
                "event_id": event_id,
                "user_id": row.user_id,
                "call_id": row.id,
                "webhook_id": webhook.id,
                "url": webhook.body.0["url"],
                "method": webhook.body.0["method"],
                "body": {"type": kind.as_str(), "call_id": row.id, "payload": payload},
            }),
            ordering_key: Some(ordering_key(row.id)),
            run_at: at,
            max_attempts: MAX_ATTEMPTS,
        };
        jobs::enqueue(tx.conn(), &job, at).await?;
        queued += 1;
    }
    Ok(queued)
}
