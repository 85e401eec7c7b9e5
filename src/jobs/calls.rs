//! Calls in motion: news applied to a call through the state machine (by compare-and-set, with
//! the jobs it causes written in the same transaction), placing calls with the carrier, hanging
//! them up, and asking the carrier about calls that have gone quiet.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::{backoff, Outcome};
use crate::domain::call::{transition, CallState, Effect, Event, Hangup, NoHumanAnswer, Stage};
use crate::domain::documents::{unseal, ACCOUNT_CONNECTIONS, AGENTS, WEBHOOKS};
use crate::domain::phone::PhoneNumber;
use crate::error::ApiError;
use crate::store::calls::{self, CallRow};
use crate::store::jobs::{self, Job, NewJob};
use crate::store::records;
use crate::store::{now, Conn, Tx};
use crate::telephony::{twilio, CarrierError, Dial, Dialed, PlacedCall, Provider};
use crate::webhooks;
use crate::AppState;

pub const DISPATCH: &str = "dispatch_call";
pub const HANG_UP: &str = "hang_up_call";

/// The ordering key of a call's dispatch job (to drop it when the call ends first).
pub fn dispatch_key(call_id: Uuid) -> String {
    format!("dispatch:{call_id}")
}

pub fn state_of(row: &CallRow) -> CallState {
    let mut state = CallState::new(
        row.on_no_human_answer.as_deref().and_then(|s| s.parse().ok()).unwrap_or(NoHumanAnswer::Continue),
    );
    state.status = row.status.parse().unwrap_or(state.status);
    state.stage = row.stage.parse().unwrap_or(state.stage);
    state.stage_outcome = row.stage_outcome.as_deref().and_then(|s| s.parse().ok());
    state.human_detection_result = row.human_detection_result.as_deref().and_then(|s| s.parse().ok());
    state.telephony_id = row.telephony_id.clone();
    state.carrier_status = row.carrier_status.clone();
    state.error_message = row.error_message.clone();
    state.hangup = row.hangup.as_deref().and_then(|s| s.parse().ok());
    state.start_time = row.start_time;
    state.answered_at = row.answered_at;
    state.end_time = row.end_time;
    state.duration_seconds = row.duration_seconds;
    state
}

pub fn write_state(row: &mut CallRow, s: &CallState) {
    row.status = s.status.as_str().to_owned();
    row.stage = s.stage.as_str().to_owned();
    row.stage_outcome = s.stage_outcome.map(|o| o.as_str().to_owned());
    row.human_detection_result = s.human_detection_result.map(|h| h.as_str().to_owned());
    row.telephony_id = s.telephony_id.clone();
    row.carrier_status = s.carrier_status.clone();
    row.error_message = s.error_message.clone();
    row.hangup = s.hangup.map(|h| h.as_str().to_owned());
    row.start_time = s.start_time;
    row.answered_at = s.answered_at;
    row.end_time = s.end_time;
    row.duration_seconds = s.duration_seconds;
}

/// What a new call row is made of.
pub struct NewCall {
    pub user_id: Uuid,
    pub direction: &'static str,
    pub provider: Provider,
    pub to: String,
    pub from: String,
    pub agent_phone_number: String,
    pub agent_id: Uuid,
    pub telephony_account_connection_id: Option<Uuid>,
    pub hipaa_compliant: bool,
    pub on_no_human_answer: Option<String>,
    pub run_do_not_call_detection: Option<bool>,
    pub context: Option<Value>,
    pub telephony_params: Option<Value>,
    pub record: bool,
}

/// A call as it is first written: not started, at the `created` stage.
pub fn new_call_row(n: NewCall, at: chrono::DateTime<chrono::Utc>) -> CallRow {
    let mut row = CallRow {
        id: Uuid::now_v7(),
        user_id: n.user_id,
        direction: n.direction.to_owned(),
        status: String::new(),
        stage: String::new(),
        stage_outcome: None,
        error_message: None,
        human_detection_result: None,
        do_not_call_result: None,
        transcript: None,
        telephony_provider: n.provider.as_str().to_owned(),
        telephony_id: None,
        carrier_status: None,
        hangup: None,
        to_number: n.to,
        from_number: n.from,
        agent_phone_number: n.agent_phone_number,
        agent_id: n.agent_id,
        telephony_account_connection_id: n.telephony_account_connection_id,
        hipaa_compliant: n.hipaa_compliant,
        on_no_human_answer: n.on_no_human_answer.clone(),
        run_do_not_call_detection: n.run_do_not_call_detection,
        context: n.context.map(sqlx::types::Json),
        telephony_params: n.telephony_params.map(sqlx::types::Json),
        record: n.record && !n.hipaa_compliant,
        recording_url: None,
        start_time: None,
        answered_at: None,
        end_time: None,
        duration_seconds: None,
        last_carrier_event_at: None,
        version: 0,
        created_at: at,
        updated_at: at,
    };
    let on_no_human_answer =
        n.on_no_human_answer.as_deref().and_then(|s| s.parse().ok()).unwrap_or(NoHumanAnswer::Continue);
    write_state(&mut row, &CallState::new(on_no_human_answer));
    row
}

/// News about a call.
#[derive(Debug, Clone)]
pub struct News {
    /// What happened, if anything did (a recording's URL alone is news too).
    pub event: Option<Event>,
    /// The carrier's own word for the call's status, as it said it.
    pub carrier_status: Option<String>,
    /// Where the carrier keeps the call's recording, when it says so.
    pub recording_url: Option<String>,
    /// Whether the news came from the carrier (rather than from the API).
    pub from_carrier: bool,
}

impl News {
    pub fn api(event: Event) -> Self {
        News { event: Some(event), carrier_status: None, recording_url: None, from_carrier: false }
    }

    pub fn carrier(event: Event, carrier_status: impl Into<String>) -> Self {
        News {
            event: Some(event),
            carrier_status: Some(carrier_status.into()),
            recording_url: None,
            from_carrier: true,
        }
    }
}

/// A call after news, and the jobs the news caused that this process claimed to run at once.
pub struct Applied {
    pub row: CallRow,
    pub claimed: Vec<Job>,
}

/// Applies news to a call: reads it, moves it through the state machine, and writes it back if
/// nobody changed it meanwhile (otherwise reads it again and retries). The jobs its effects cause
/// are written in the same transaction.
pub async fn apply(state: &AppState, call_id: Uuid, news: &News) -> Result<Option<Applied>, ApiError> {
    for _ in 0..20 {
        let mut tx = state.store.begin().await?;
        let Some(row) = calls::by_id(tx.conn(), call_id).await? else {
            return Ok(None);
        };
        let at = now();
        let (next, effects) = match &news.event {
            Some(event) => transition(&state_of(&row), event, at),
            None => (state_of(&row), Vec::new()),
        };
        let mut updated = row.clone();
        write_state(&mut updated, &next);
        if news.from_carrier {
            if !row_is_final(&row) {
                if let Some(status) = &news.carrier_status {
                    updated.carrier_status = Some(status.clone());
                }
            }
            updated.last_carrier_event_at = Some(at);
        }
        if let Some(url) = &news.recording_url {
            if updated.record && !updated.hipaa_compliant {
                updated.recording_url = Some(url.clone());
            }
        }
        let changed = updated.duration_seconds != row.duration_seconds
            || updated.status != row.status
            || updated.stage != row.stage
            || updated.stage_outcome != row.stage_outcome
            || updated.human_detection_result != row.human_detection_result
            || updated.telephony_id != row.telephony_id
            || updated.carrier_status != row.carrier_status
            || updated.hangup != row.hangup
            || updated.recording_url != row.recording_url
            || updated.error_message != row.error_message;
        if !changed && updated.last_carrier_event_at == row.last_carrier_event_at {
            return Ok(Some(Applied { row, claimed: Vec::new() }));
        }
        updated.version = row.version + 1;
        updated.updated_at = at;
        if !calls::update_if_version(tx.conn(), &updated, row.version).await? {
            continue;
        }
        let recording_now_available = updated.recording_url.is_some() && row.recording_url.is_none();
        let claimed = carry_out(state, &mut tx, &updated, &effects, recording_now_available).await?;
        tx.commit().await?;
        if updated.status != row.status && row_is_final(&updated) {
            let (status, outcome) = (updated.status.clone(), updated.stage_outcome.clone().unwrap_or_default());
            metrics::counter!("vocode_calls_finished_total", "status" => status, "stage_outcome" => outcome)
                .increment(1);
        }
        return Ok(Some(Applied { row: updated, claimed }));
    }
    Err(ApiError::Internal(anyhow::anyhow!("call {call_id} kept changing under concurrent updates")))
}

fn row_is_final(row: &CallRow) -> bool {
    matches!(row.status.as_str(), "ended" | "error")
}

/// Writes what a transition's effects require, in the transaction of the transition. Jobs to run
/// at once are claimed by this process and returned.
pub async fn carry_out(
    state: &AppState,
    tx: &mut Tx,
    row: &CallRow,
    effects: &[Effect],
    recording_now_available: bool,
) -> sqlx::Result<Vec<Job>> {
    let at = now();
    let mut claimed = Vec::new();
    for effect in effects {
        match effect {
            Effect::HangUp => {
                let job = NewJob {
                    kind: HANG_UP,
                    payload: json!({"call_id": row.id}),
                    ordering_key: None,
                    run_at: at,
                    max_attempts: 8,
                };
                let lease = state.lease_until(at);
                let id = jobs::enqueue_claimed(tx.conn(), &job, at, &state.worker_id, lease).await?;
                claimed.push(Job {
                    id,
                    kind: HANG_UP.into(),
                    payload: sqlx::types::Json(job.payload),
                    ordering_key: None,
                    attempts: 1,
                    max_attempts: job.max_attempts,
                });
            }
            Effect::CancelDispatch => {
                jobs::cancel(tx.conn(), &dispatch_key(row.id)).await?;
            }
            // Webhook events: queued below, for the webhook jobs.
            Effect::Connected | Effect::HumanDetected(_) | Effect::EndedAfterPickUp | Effect::DidNotConnect => {}
        }
    }
    let events = webhooks::events_for(state, row, effects, recording_now_available);
    if webhooks::enqueue(tx, row, events).await? > 0 || !claimed.is_empty() {
        // Wake this process's workers (a permit is kept if none is waiting).
        state.jobs_queued.notify_one();
    }
    Ok(claimed)
}

/// Runs jobs this process claimed, in the background.
pub fn spawn_claimed(state: &AppState, claimed: Vec<Job>) {
    for job in claimed {
        let state = state.clone();
        tokio::spawn(crate::store::as_worker(async move { super::run_claimed(&state, job).await }));
    }
}

fn call_id_of(job: &Job) -> Option<Uuid> {
    job.payload.0["call_id"].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// The Twilio account a call or a number goes through: its account connection's, or the server's.
pub async fn twilio_credentials(
    state: &AppState,
    c: &mut impl Conn,
    user_id: Uuid,
    connection_id: Option<Uuid>,
) -> Result<twilio::Credentials, CarrierError> {
    let Some(id) = connection_id else {
        return state.telephony.server_twilio.clone().ok_or_else(|| {
            CarrierError::Rejected(
                "no Twilio account is configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN".into(),
            )
        });
    };
    let record = records::get(c.conn(), ACCOUNT_CONNECTIONS.table, user_id, id)
        .await
        .map_err(|e| CarrierError::Transient(format!("the database is unavailable: {e}")))?
        .ok_or_else(|| CarrierError::Rejected(format!("account connection {id} no longer exists")))?;
    let clear =
        unseal(ACCOUNT_CONNECTIONS.table, &record.kind, record.body.0, record.sealed.as_deref(), &state.secrets)
            .map_err(|e| CarrierError::Rejected(format!("the account connection's secret cannot be read: {e}")))?;
    Ok(twilio::Credentials {
        account_sid: clear["credentials"]["twilio_account_sid"].as_str().unwrap_or_default().to_owned(),
        auth_token: clear["credentials"]["twilio_auth_token"].as_str().unwrap_or_default().to_owned(),
    })
}

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
        w.body.0["subscriptions"].as_array().is_some_and(|s| s.contains(&Value::from("event_human_detection")))
    }))
}

/// The `dispatch_call` job: asks the carrier to place the call.
pub async fn dispatch(state: &AppState, job: &Job) -> Outcome {
    let Some(call_id) = call_id_of(job) else {
        return Outcome::Fail("the job names no call".into());
    };
    let row = match read_call(state, call_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Outcome::Done,
        Err(e) => return retry_later(job, e),
    };
    if row.status != "not_started" || row.telephony_id.is_some() {
        return Outcome::Done;
    }
    let machine_detection = match wants_human_detection(state, &row).await {
        Ok(wants) => wants || row.on_no_human_answer.as_deref() == Some("hangup"),
        Err(e) => return retry_later(job, e.to_string()),
    };
    let (Ok(to), Ok(from)) = (PhoneNumber::parse(&row.to_number), PhoneNumber::parse(&row.from_number)) else {
        return settle(state, call_id, Event::Refused { reason: "the call's numbers are not valid".into() }).await;
    };
    let dial = Dial {
        call_id,
        to,
        from,
        machine_detection,
        record: row.record,
        extra: row
            .telephony_params
            .as_ref()
            .and_then(|p| p.0.as_object().cloned())
            .map(|m| m.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default(),
    };
    let Some(provider) = Provider::parse(&row.telephony_provider) else {
        let reason = format!("unknown telephony provider {}", row.telephony_provider);
        return settle(state, call_id, Event::Refused { reason }).await;
    };
    let account = match provider {
        Provider::Twilio => {
            let mut handle = match state.store.read().await {
                Ok(h) => h,
                Err(e) => return retry_later(job, e.to_string()),
            };
            twilio_credentials(state, &mut handle, row.user_id, row.telephony_account_connection_id)
                .await
                .map(Account::Twilio)
        }
        Provider::Vonage => Ok(Account::Vonage),
    };
    let placed = match account {
        Ok(account) => place(state, job, &row, &dial, &account).await,
        Err(e) => Err(e),
    };
    match placed {
        Ok((dialed, adopted)) => {
            let status = dialed.carrier_status.clone();
            let news = News::carrier(Event::Accepted { telephony_id: dialed.telephony_id }, dialed.carrier_status);
            match apply(state, call_id, &news).await {
                Ok(applied) => {
                    if let Some(applied) = applied {
                        spawn_claimed(state, applied.claimed);
                    }
                    if adopted {
                        // What the carrier says of the call it found, too (it may be over).
                        let event = match provider {
                            Provider::Twilio => twilio::status_event(&status, None),
                            Provider::Vonage => crate::telephony::vonage::status_event(&status, None),
                        };
                        if let Some(event) = event {
                            return settle_news(state, call_id, News::carrier(event, status)).await;
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
            settle(state, call_id, Event::Refused { reason }).await
        }
        Err(CarrierError::Transient(reason)) if job.attempts >= job.max_attempts => {
            let reason = format!("the carrier could not be reached after {} attempts: {reason}", job.attempts);
            settle(state, call_id, Event::GaveUp { reason }).await
        }
        Err(CarrierError::Transient(reason)) => Outcome::Retry {
            after: backoff(job.attempts, Duration::from_secs(2), Duration::from_secs(60)),
            error: reason,
        },
    }
}

/// The carrier account a call goes through.
enum Account {
    Twilio(twilio::Credentials),
    /// The server's Vonage application.
    Vonage,
}

impl Account {
    fn provider(&self) -> Provider {
        match self {
            Account::Twilio(_) => Provider::Twilio,
            Account::Vonage => Provider::Vonage,
        }
    }
}

/// Asks the carrier to place the call — unless an earlier attempt already did. An attempt whose
/// outcome was never recorded (its process died) or that timed out may have reached the carrier:
/// before dialing again, the carrier's recent calls between the same numbers are searched for one
/// no call of ours has. Returns what the carrier said, and whether the call was found that way.
async fn place(
    state: &AppState,
    job: &Job,
    row: &CallRow,
    dial: &Dial,
    account: &Account,
) -> Result<(Dialed, bool), CarrierError> {
    let telephony = &state.telephony;
    if job.attempts > 1 {
        match placed_earlier(state, row, dial, account).await {
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
    let dialed = match account {
        Account::Twilio(creds) => telephony.twilio.create_call(creds, dial, &telephony.twilio_call_urls(row.id)).await,
        Account::Vonage => {
            let headers = json!({"call_id": row.id.to_string(), "token": telephony.stream_token(row.id)});
            telephony.vonage.create_call(dial, &telephony.vonage_call_urls(row.id), headers).await
        }
    }?;
    Ok((dialed, false))
}

/// The oldest carrier call between the call's numbers, made since shortly before the call was
/// created, that no call of ours has.
async fn placed_earlier(
    state: &AppState,
    row: &CallRow,
    dial: &Dial,
    account: &Account,
) -> Result<Option<PlacedCall>, CarrierError> {
    let since = row.created_at - chrono::Duration::minutes(1);
    let mut listed = match account {
        Account::Twilio(creds) => state.telephony.twilio.find_calls(creds, &dial.to, &dial.from).await?,
        Account::Vonage => state.telephony.vonage.find_calls(&dial.to, &dial.from, since).await?,
    };
    listed.retain(|c| c.created.is_none_or(|created| created >= since));
    listed.sort_by_key(|c| c.created);
    let unavailable = |e: sqlx::Error| CarrierError::Transient(format!("the database is unavailable: {e}"));
    let mut handle = state.store.read().await.map_err(unavailable)?;
    let provider = account.provider().as_str();
    for candidate in listed {
        if calls::by_telephony_id(handle.conn(), provider, &candidate.id).await.map_err(unavailable)?.is_none() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Applies final news from a job, or retries the job if the database is unavailable.
async fn settle(state: &AppState, call_id: Uuid, event: Event) -> Outcome {
    match apply(state, call_id, &News::api(event)).await {
        Ok(applied) => {
            if let Some(applied) = applied {
                spawn_claimed(state, applied.claimed);
            }
            Outcome::Done
        }
        Err(e) => Outcome::Retry { after: Duration::from_secs(5), error: e.to_string() },
    }
}

fn retry_later(job: &Job, error: impl ToString) -> Outcome {
    Outcome::Retry {
        after: backoff(job.attempts, Duration::from_secs(2), Duration::from_secs(60)),
        error: error.to_string(),
    }
}

async fn read_call(state: &AppState, call_id: Uuid) -> Result<Option<CallRow>, String> {
    let mut handle = state.store.read().await.map_err(|e| e.to_string())?;
    calls::by_id(handle.conn(), call_id).await.map_err(|e| e.to_string())
}

/// The `hang_up_call` job: ends the call at the carrier, and records the end it reports.
pub async fn hang_up(state: &AppState, job: &Job) -> Outcome {
    let Some(call_id) = call_id_of(job) else {
        return Outcome::Fail("the job names no call".into());
    };
    let row = match read_call(state, call_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Outcome::Done,
        Err(e) => return retry_later(job, e),
    };
    let Some(telephony_id) = row.telephony_id.clone() else {
        return Outcome::Done;
    };
    if row_is_final(&row) {
        return Outcome::Done;
    }
    let answered = row.stage != Stage::Created.as_str();
    let result = match Provider::parse(&row.telephony_provider) {
        Some(Provider::Twilio) => {
            let creds = match state.store.read().await {
                Ok(mut handle) => {
                    twilio_credentials(state, &mut handle, row.user_id, row.telephony_account_connection_id).await
                }
                Err(e) => return retry_later(job, e),
            };
            match creds {
                Ok(creds) => {
                    // Twilio ends a call in progress with `completed` and a ringing one with
                    // `canceled`; the carrier may know better than we do which one it is.
                    let first = state.telephony.twilio.hang_up(&creds, &telephony_id, answered).await;
                    match first {
                        Err(CarrierError::Rejected(_)) => {
                            state.telephony.twilio.hang_up(&creds, &telephony_id, !answered).await
                        }
                        other => other,
                    }
                    .map(|resource| Some(resource.status))
                }
                Err(e) => Err(e),
            }
        }
        Some(Provider::Vonage) => state.telephony.vonage.hang_up(&telephony_id).await.map(|_| None),
        None => Err(CarrierError::Rejected("unknown telephony provider".into())),
    };
    match result {
        Ok(reported) => {
            let status = reported.unwrap_or_else(|| if answered { "completed".into() } else { "canceled".into() });
            let event = if status == "completed" || answered {
                Event::Completed { duration_seconds: None }
            } else {
                Event::NotAnswered
            };
            settle_news(state, call_id, News::carrier(event, status)).await
        }
        Err(CarrierError::Transient(reason)) => Outcome::Retry {
            after: backoff(job.attempts, Duration::from_secs(1), Duration::from_secs(30)),
            error: reason,
        },
        Err(CarrierError::Rejected(reason)) => {
            // Most often the call is already over: ask the carrier what became of it.
            tracing::info!(%call_id, %reason, "the carrier refused to hang up; checking the call");
            check_with_carrier(state, &row).await;
            Outcome::Done
        }
    }
}

async fn settle_news(state: &AppState, call_id: Uuid, news: News) -> Outcome {
    match apply(state, call_id, &news).await {
        Ok(applied) => {
            if let Some(applied) = applied {
                spawn_claimed(state, applied.claimed);
            }
            Outcome::Done
        }
        Err(e) => Outcome::Retry { after: Duration::from_secs(5), error: e.to_string() },
    }
}

/// Asks the carrier what became of a call and applies the answer.
pub async fn check_with_carrier(state: &AppState, row: &CallRow) {
    let Some(telephony_id) = row.telephony_id.clone() else {
        return;
    };
    let reported = match Provider::parse(&row.telephony_provider) {
        Some(Provider::Twilio) => {
            let creds = match state.store.read().await {
                Ok(mut handle) => {
                    twilio_credentials(state, &mut handle, row.user_id, row.telephony_account_connection_id).await
                }
                Err(_) => return,
            };
            match creds {
                Ok(creds) => state.telephony.twilio.fetch_call(&creds, &telephony_id).await.map(|c| {
                    let duration = c.duration.and_then(|d| d.parse().ok());
                    (twilio::status_event(&c.status, duration), c.status)
                }),
                Err(e) => Err(e),
            }
        }
        Some(Provider::Vonage) => state
            .telephony
            .vonage
            .fetch_call(&telephony_id)
            .await
            .map(|c| (crate::telephony::vonage::status_event(&c.status, c.duration), c.status)),
        None => return,
    };
    let at = now();
    match reported {
        Ok((Some(event), status)) => {
            if let Ok(Some(applied)) = apply(state, row.id, &News::carrier(event, status)).await {
                spawn_claimed(state, applied.claimed);
            }
        }
        Ok((None, status)) => {
            tracing::warn!(call_id = %row.id, %status, "the carrier reports an unknown status")
        }
        Err(e) => {
            tracing::warn!(call_id = %row.id, error = %e, "cannot ask the carrier about a call")
        }
    }
    if let Ok(mut tx) = state.store.begin().await {
        if calls::touch(tx.conn(), row.id, at).await.is_ok() {
            let _ = tx.commit().await;
        }
    }
}

/// Calls in progress with no news from their carrier for a while are checked with the carrier,
/// so that none stays `in_progress` forever.
pub async fn reconcile(state: &AppState) {
    let before = now() - chrono::Duration::from_std(state.telephony.reconcile_after).unwrap_or_default();
    let stale = match state.store.read().await {
        Ok(mut handle) => calls::stale(handle.conn(), before, 50).await,
        Err(e) => Err(e),
    };
    match stale {
        Ok(rows) => {
            for row in rows {
                check_with_carrier(state, &row).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot look for stale calls"),
    }
}

/// Whether a call's hang-up was asked for (by `calls/end` or the agent).
pub fn hangup_requested(row: &CallRow) -> bool {
    row.hangup.as_deref() == Some(Hangup::Requested.as_str())
}
