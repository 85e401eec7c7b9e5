//! The work that drives calls at their carrier: placing a call (`dispatch_call`), ending it
//! (`hang_up_call`), and asking the carrier about calls that have gone quiet. Each runs with no
//! transaction open and reports what the carrier said to the calls service as news.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::{Carrier, CarrierError, Dial, Dialed, PlacedCall};
use crate::calls::{DispatchCall, HangUpCall, News};
use crate::domain::call::{CallStatus, Event, NoHumanAnswer, Stage};
use crate::domain::documents::{AGENTS, WEBHOOKS};
use crate::domain::phone::PhoneNumber;
use crate::jobs::{Attempt, Outcome, Ran};
use crate::replicas::GONE_AFTER;
use crate::store::calls::CallRow;
use crate::store::records;
use crate::webhooks::EventType;
use crate::AppState;

/// Whether the call's agent wants to know if a person answered (its webhook subscribes to it).
async fn wants_human_detection(state: &AppState, row: &CallRow) -> sqlx::Result<bool> {
    let mut handle = state.store.read().await?;
    let Some(agent) = records::get(handle.conn(), AGENTS.table, row.user_id, row.agent_id).await? else {
        return Ok(false);
    };
    let Some(webhook_id) = agent.body.0["webhook"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
        return Ok(false);
    };
    let webhook = records::get(handle.conn(), WEBHOOKS.table, row.user_id, webhook_id).await?;
    Ok(webhook.is_some_and(|w| {
        w.body.0["subscriptions"]
            .as_array()
            .is_some_and(|s| s.contains(&Value::from(EventType::HumanDetection.as_str())))
    }))
}

fn retry_later(attempt: Attempt, error: impl ToString) -> Outcome {
    Outcome::retry_with_backoff(attempt, Duration::from_secs(2), Duration::from_secs(60), error)
}

/// Applies news from a job and runs what it causes; retries the job if the database is
/// unavailable.
async fn settle(state: &AppState, call_id: Uuid, news: News) -> Outcome {
    match state.calls.apply(call_id, &news).await {
        Ok(applied) => {
            if let Some(applied) = applied {
                state.run_soon(applied.claimed);
            }
            Outcome::Done
        }
        Err(e) => Outcome::Retry { after: Duration::from_secs(5), error: e.to_string() },
    }
}

/// The `dispatch_call` job: asks the carrier to place the call.
pub async fn dispatch(state: AppState, job: DispatchCall, attempt: Attempt) -> Ran {
    dispatch_inner(&state, job.call_id, attempt).await.into()
}

async fn dispatch_inner(state: &AppState, call_id: Uuid, attempt: Attempt) -> Outcome {
    let row = match state.calls.find(call_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Outcome::Done,
        Err(e) => return retry_later(attempt, e),
    };
    if row.state.status != CallStatus::NotStarted || row.state.telephony_id.is_some() {
        return Outcome::Done;
    }
    let machine_detection = match wants_human_detection(state, &row).await {
        Ok(wants) => wants || row.state.on_no_human_answer == Some(NoHumanAnswer::Hangup),
        Err(e) => return retry_later(attempt, e),
    };
    let (Ok(to), Ok(from)) = (PhoneNumber::parse(&row.to_number), PhoneNumber::parse(&row.from_number)) else {
        let reason = "the call's numbers are not valid".into();
        return settle(state, call_id, News::api(Event::Refused { reason })).await;
    };
    let dial = Dial {
        call_id,
        to,
        from,
        machine_detection,
        // A call this server records itself is not recorded twice.
        record: row.record && state.recordings.is_none(),
        extra: row
            .telephony_params
            .as_ref()
            .and_then(|p| p.0.as_object().cloned())
            .map(|m| m.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default(),
    };
    let placed = match state.telephony.carrier_of(&row).await {
        Ok(carrier) => place(state, &carrier, attempt, &row, &dial).await.map(|placed| (carrier, placed)),
        Err(e) => Err(e),
    };
    match placed {
        Ok((carrier, (dialed, adopted))) => {
            let status = dialed.carrier_status.clone();
            let news = News::carrier(Event::Accepted { telephony_id: dialed.telephony_id }, dialed.carrier_status);
            match state.calls.apply(call_id, &news).await {
                Ok(applied) => {
                    if let Some(applied) = applied {
                        state.run_soon(applied.claimed);
                    }
                    if adopted {
                        // What the carrier says of the call it found, too (it may be over).
                        if let Some(event) = carrier.status_event(&status, None) {
                            return settle(state, call_id, News::carrier(event, status)).await;
                        }
                    }
                    Outcome::Done
                }
                // Another call took that carrier call meanwhile: look again.
                Err(e) if adopted => Outcome::Retry { after: Duration::from_secs(1), error: e.to_string() },
                // The call is placed: recording that must not make it be placed again.
                Err(e) => Outcome::Fail(format!("the call was placed but could not be recorded: {e}")),
            }
        }
        Err(CarrierError::Rejected(reason)) => {
            tracing::info!(%call_id, %reason, "the carrier refused the call");
            settle(state, call_id, News::api(Event::Refused { reason })).await
        }
        Err(CarrierError::Transient(reason)) if attempt.is_last() => {
            let reason = format!("the carrier could not be reached after {} attempts: {reason}", attempt.number);
            settle(state, call_id, News::api(Event::GaveUp { reason })).await
        }
        Err(CarrierError::Transient(reason)) => retry_later(attempt, reason),
    }
}

/// Asks the carrier to place the call — unless an earlier attempt already did. An attempt whose
/// outcome was never recorded (its process died) or that timed out may have reached the carrier:
/// before dialing again, the carrier's recent calls between the same numbers are searched for one
/// no call of ours has. Returns what the carrier said, and whether the call was found that way.
async fn place(
    state: &AppState,
    carrier: &Carrier<'_>,
    attempt: Attempt,
    row: &CallRow,
    dial: &Dial,
) -> Result<(Dialed, bool), CarrierError> {
    if attempt.number > 1 {
        match placed_earlier(state, carrier, row, dial).await {
            Ok(Some(found)) => {
                tracing::info!(call_id = %row.id, "found the call an earlier attempt placed; not dialing again");
                metrics::counter!("vocode_calls_found_after_retry_total").increment(1);
                return Ok((Dialed { telephony_id: found.id, carrier_status: found.status }, true));
            }
            Ok(None) => {}
            Err(CarrierError::Rejected(reason)) => {
                tracing::warn!(call_id = %row.id, %reason, "cannot search the carrier's calls; placing the call")
            }
            Err(e) => return Err(e),
        }
    }
    Ok((carrier.place(dial).await?, false))
}

/// The oldest carrier call between the call's numbers, made since shortly before the call was
/// created, that no call of ours has.
async fn placed_earlier(
    state: &AppState,
    carrier: &Carrier<'_>,
    row: &CallRow,
    dial: &Dial,
) -> Result<Option<PlacedCall>, CarrierError> {
    let since = row.created_at - chrono::Duration::minutes(1);
    let listed = carrier.recent_calls(&dial.to, &dial.from, since).await?;
    for candidate in listed {
        let held = state
            .calls
            .find_by_carrier_id(carrier.provider(), &candidate.id)
            .await
            .map_err(|e| CarrierError::Transient(format!("the database is unavailable: {e}")))?;
        if held.is_none() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// The `hang_up_call` job: ends the call at the carrier, and records the end it reports.
pub async fn hang_up(state: AppState, job: HangUpCall, attempt: Attempt) -> Ran {
    hang_up_inner(&state, job.call_id, attempt).await.into()
}

async fn hang_up_inner(state: &AppState, call_id: Uuid, attempt: Attempt) -> Outcome {
    let row = match state.calls.find(call_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Outcome::Done,
        Err(e) => return retry_later(attempt, e),
    };
    let Some(telephony_id) = row.state.telephony_id.clone() else {
        return Outcome::Done;
    };
    if row.state.is_final() {
        return Outcome::Done;
    }
    let answered = row.state.stage != Stage::Created;
    let result = match state.telephony.carrier_of(&row).await {
        Ok(carrier) => carrier.hang_up(&telephony_id, answered).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(status) => {
            let event = if status == "completed" || answered {
                Event::Completed { duration_seconds: None }
            } else {
                Event::NotAnswered
            };
            settle(state, call_id, News::carrier(event, status)).await
        }
        Err(CarrierError::Transient(reason)) => {
            Outcome::retry_with_backoff(attempt, Duration::from_secs(1), Duration::from_secs(30), reason)
        }
        Err(CarrierError::Rejected(reason)) => {
            // Most often the call is already over: ask the carrier what became of it.
            tracing::info!(%call_id, %reason, "the carrier refused to hang up; checking the call");
            check_with_carrier(state, &row).await;
            Outcome::Done
        }
    }
}

/// Asks the carrier what became of a call and applies the answer.
pub async fn check_with_carrier(state: &AppState, row: &CallRow) {
    check(state, row, false).await;
}

/// [`check_with_carrier`]; `lost`: the call's conversation was lost with the process that ran it,
/// so an end the carrier reports is the server's doing (`bot_disconnected`), not the person's.
async fn check(state: &AppState, row: &CallRow, lost: bool) {
    let Some(telephony_id) = row.state.telephony_id.clone() else {
        return;
    };
    let reported = match state.telephony.carrier_of(row).await {
        Ok(carrier) => carrier.fetch_call(&telephony_id).await,
        Err(CarrierError::Transient(_)) => return,
        Err(e) => Err(e),
    };
    match reported {
        Ok(reported) => match reported.event {
            Some(event) => {
                let over = matches!(event, Event::Completed { .. } | Event::NotAnswered | Event::Failed);
                if lost && over {
                    tracing::info!(call_id = %row.id, "the call ended after the process that ran its conversation was lost");
                    if let Err(e) = state.calls.apply(row.id, &News::api(Event::ConversationLost)).await {
                        tracing::warn!(call_id = %row.id, error = %e, "cannot record that a call's conversation was lost");
                        return;
                    }
                }
                if let Ok(Some(applied)) = state.calls.apply(row.id, &News::carrier(event, reported.status)).await {
                    state.run_soon(applied.claimed);
                }
            }
            None => {
                tracing::warn!(call_id = %row.id, status = %reported.status, "the carrier reports an unknown status")
            }
        },
        Err(e) => tracing::warn!(call_id = %row.id, error = %e, "cannot ask the carrier about a call"),
    }
    if let Err(e) = state.calls.touch(row.id).await {
        tracing::debug!(call_id = %row.id, error = %e, "cannot mark a call as checked");
    }
}

/// How long a call whose conversation's owner is gone may go without carrier news before its
/// carrier is asked about it (and then again, until it ends or another process takes it over).
pub const ORPHAN_QUIET: Duration = Duration::from_secs(20);
/// How long a call in progress whose conversation no process runs (it ended, or none was
/// recorded) may go without carrier news before its carrier is asked about it.
pub const UNOWNED_QUIET: Duration = Duration::from_secs(60);
/// The longest time between two rounds of [`reconcile`]: with [`ORPHAN_QUIET`] and
/// [`GONE_AFTER`], a call whose owner dies is asked about within a minute.
pub const RECONCILE_AT_LEAST_EVERY: Duration = Duration::from_secs(15);

/// How often [`reconcile`] runs, for calls quiet for `reconcile_after`.
pub fn reconcile_every(reconcile_after: Duration) -> Duration {
    (reconcile_after / 4).min(RECONCILE_AT_LEAST_EVERY)
}

/// Calls in progress that nobody looks after, or that have had no news from their carrier for a
/// while, are checked with the carrier, so that none stays `in_progress` forever: a call whose
/// conversation's owner is gone (its process crashed or stopped) after [`ORPHAN_QUIET`], one whose
/// conversation no process runs after [`UNOWNED_QUIET`], any other after `RECONCILE_AFTER_SECS`.
pub async fn reconcile(state: AppState) {
    let orphans = state.calls.orphaned(GONE_AFTER, ORPHAN_QUIET, UNOWNED_QUIET, 50).await;
    let quiet = state.calls.quiet(state.telephony.reconcile_after, 50).await;
    let (orphans, quiet) = match (orphans, quiet) {
        (Ok(orphans), Ok(quiet)) => (orphans, quiet),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot look for stale calls");
            return;
        }
    };
    let mut seen = std::collections::HashSet::new();
    let rounds = [(orphans.lost, true), (orphans.unowned, false), (quiet, false)];
    for (rows, lost) in rounds {
        for row in rows {
            if seen.insert(row.id) {
                check(&state, &row, lost).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_whose_owner_died_is_asked_about_within_a_minute() {
        // Its owner is taken for gone GONE_AFTER after its last heartbeat; the call is due once
        // quiet for ORPHAN_QUIET (its last news came at the latest when the owner died); the next
        // round of reconciliation comes within a period, whatever RECONCILE_AFTER_SECS says.
        for reconcile_after in [Duration::from_secs(300), Duration::from_secs(3600), Duration::from_secs(20)] {
            let every = reconcile_every(reconcile_after);
            assert!(every <= reconcile_after / 4);
            assert!(GONE_AFTER.max(ORPHAN_QUIET) + every <= Duration::from_secs(60), "{reconcile_after:?}");
        }
    }
}
