//! Webhook events: what a call's changes mean for its agent's webhook, queued in the transaction
//! of the change (so a change and its event are never separated) and delivered by the
//! `deliver_webhook` jobs — at least once, signed, a call's events in order.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::domain::call::{billable_minutes, Effect};
use crate::domain::documents::{AGENTS, WEBHOOKS};
use crate::jobs::{Enqueue, Queue};
use crate::store::calls::CallRow;
use crate::store::{records, Tx};

pub mod deliver;
pub mod signing;

pub use deliver::{DeliverWebhook, Webhooks};

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

/// The events a call's change means, with their payloads. `public_base` is where this server is
/// reached (the recording's URL is on it).
pub fn events_for(
    public_base: &str,
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
            Effect::HumanDetected(result) => {
                events.push((EventType::HumanDetection, json!({"result": result.as_str()})))
            }
            Effect::EndedAfterPickUp => {
                let seconds = row.state.duration_seconds.unwrap_or(0);
                let outcome = row.state.stage_outcome.map(|o| o.as_str());
                events.push((
                    EventType::PhoneCallEnded,
                    json!({"minutes": billable_minutes(seconds), "duration_seconds": seconds, "stage_outcome": outcome}),
                ))
            }
            Effect::DidNotConnect => events.push((
                EventType::PhoneCallDidNotConnect,
                json!({
                    "telephony_status": row.state.carrier_status,
                    "stage_outcome": row.state.stage_outcome.map(|o| o.as_str()),
                    "error_message": row.state.error_message,
                }),
            )),
            Effect::HangUp | Effect::CancelDispatch => {}
        }
    }
    if recording_now_available {
        events.push((
            EventType::Recording,
            json!({"recording_url": format!("{public_base}/v1/calls/recording?id={}", row.id)}),
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
pub async fn enqueue(
    queue: &Queue,
    tx: &mut Tx,
    row: &CallRow,
    events: Vec<(EventType, Value)>,
) -> sqlx::Result<usize> {
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
    let mut queued = 0;
    for (kind, payload) in events {
        if !subscriptions.contains(&Value::from(kind.as_str())) {
            continue;
        }
        let job = DeliverWebhook {
            event_id: format!("msg_{}", Uuid::now_v7().simple()),
            user_id: row.user_id,
            call_id: Some(row.id),
            webhook_id: Some(webhook.id),
            url: webhook.body.0["url"].as_str().unwrap_or_default().to_owned(),
            method: webhook.body.0["method"].as_str().unwrap_or("POST").to_owned(),
            body: json!({"type": kind.as_str(), "call_id": row.id, "payload": payload}),
        };
        queue.enqueue(tx, &job, Enqueue::now(MAX_ATTEMPTS).ordered_by(ordering_key(row.id))).await?;
        queued += 1;
    }
    Ok(queued)
}
