//! What carriers send this server: call progress, answering-machine detection, the TwiML or NCCO
//! an answered call asks for, inbound calls, and the media streams. No bearer auth: each request
//! is verified — Twilio's `X-Twilio-Signature` with the account's auth token, computed on the
//! public URL; Vonage's signed JWT over the body. A forged or unsigned request gets 403 and
//! changes nothing.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{streams, twilio, vonage, Provider};
use crate::domain::call::{transition, CallState, Event, NoHumanAnswer};
use crate::domain::phone::PhoneNumber;
use crate::error::ApiError;
use crate::jobs::calls::{
    apply, carry_out, new_call_row, spawn_claimed, twilio_credentials, write_state, NewCall, News,
};
use crate::store::calls::{self, CallRow};
use crate::store::{now, numbers};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/telephony/twilio/status/{call_id}", post(twilio_status))
        .route("/telephony/twilio/status", post(twilio_status_by_sid))
        .route("/telephony/twilio/amd/{call_id}", post(twilio_amd))
        .route("/telephony/twilio/twiml/{call_id}", post(twilio_twiml))
        .route("/telephony/twilio/inbound", post(twilio_inbound))
        .route("/telephony/twilio/stream/{call_id}", get(streams::twilio_stream))
        .route("/telephony/vonage/event/{call_id}", post(vonage_event))
        .route("/telephony/vonage/event", post(vonage_event_by_uuid))
        .route("/telephony/vonage/answer", get(vonage_answer_get).post(vonage_answer_post))
        .route("/telephony/vonage/stream/{call_id}", get(streams::vonage_stream))
}

fn forbidden(reason: &str) -> ApiError {
    tracing::warn!(reason, "refused a carrier callback");
    ApiError::Forbidden(format!("Forbidden: {reason}"))
}

fn xml(body: impl Into<String>) -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], body.into()).into_response()
}

/// A Twilio request: its parameters, and the URL Twilio signed.
struct TwilioRequest {
    url: String,
    params: Vec<(String, String)>,
    signature: Option<String>,
}

impl TwilioRequest {
    fn new(state: &AppState, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Self {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path());
        TwilioRequest {
            url: state.telephony.url(path),
            params: form_urlencoded::parse(body).into_owned().collect(),
            signature: headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).map(str::to_owned),
        }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Verifies the signature with the account's token, and that the request is that account's.
    fn verify(&self, creds: &twilio::Credentials) -> Result<(), ApiError> {
        let Some(signature) = &self.signature else {
            return Err(forbidden("the request is not signed"));
        };
        if !twilio::verify_signature(&creds.auth_token, &self.url, &self.params, signature) {
            return Err(forbidden("the signature does not match"));
        }
        if self.param("AccountSid").is_some_and(|sid| sid != creds.account_sid) {
            return Err(forbidden("the request is from another account"));
        }
        Ok(())
    }
}

async fn load_call(state: &AppState, call_id: Uuid) -> Result<CallRow, ApiError> {
    let mut handle = state.store.read().await?;
    calls::by_id(handle.conn(), call_id).await?.ok_or_else(|| ApiError::NotFound(format!("Call {call_id} not found")))
}

async fn credentials_of(state: &AppState, row: &CallRow) -> Result<twilio::Credentials, ApiError> {
    let mut handle = state.store.read().await?;
    twilio_credentials(state, &mut handle, row.user_id, row.telephony_account_connection_id)
        .await
        .map_err(|e| forbidden(&format!("the call's account cannot verify the request ({e})")))
}

/// A verified Twilio request about a known call.
async fn twilio_call_request(
    state: &AppState,
    call_id: Uuid,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(CallRow, TwilioRequest), ApiError> {
    let row = load_call(state, call_id).await?;
    if row.telephony_provider != Provider::Twilio.as_str() {
        return Err(forbidden("the call is not a Twilio call"));
    }
    let req = TwilioRequest::new(state, uri, headers, body);
    req.verify(&credentials_of(state, &row).await?)?;
    if let (Some(known), Some(given)) = (&row.telephony_id, req.param("CallSid")) {
        if known != given {
            return Err(ApiError::BadRequest("CallSid is not this call's".into()));
        }
    }
    Ok((row, req))
}

/// Applies news (after the carrier's id for the call, when this is the first word of it).
async fn apply_news(state: &AppState, row: &CallRow, carrier_id: Option<&str>, news: News) -> Result<(), ApiError> {
    if row.telephony_id.is_none() {
        if let Some(id) = carrier_id {
            let accepted = News::carrier(
                Event::Accepted { telephony_id: id.to_owned() },
                news.carrier_status.clone().unwrap_or_default(),
            );
            if let Some(applied) = apply(state, row.id, &accepted).await? {
                spawn_claimed(state, applied.claimed);
            }
        }
    }
    if let Some(applied) = apply(state, row.id, &news).await? {
        spawn_claimed(state, applied.claimed);
    }
    Ok(())
}

fn twilio_news(req: &TwilioRequest) -> Result<News, ApiError> {
    let status = req.param("CallStatus").ok_or_else(|| ApiError::BadRequest("CallStatus is missing".into()))?;
    let duration = req.param("CallDuration").and_then(|d| d.parse().ok());
    let event = twilio::status_event(status, duration)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown CallStatus '{status}'")))?;
    let mut news = News::carrier(event, status);
    news.recording_url = req.param("RecordingUrl").map(str::to_owned);
    Ok(news)
}

async fn twilio_status(
    State(state): State<AppState>,
    Path(call_id): Path<Uuid>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (row, req) = twilio_call_request(&state, call_id, &uri, &headers, &body).await?;
    let news = twilio_news(&req)?;
    apply_news(&state, &row, req.param("CallSid"), news).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Progress of inbound calls, which the number's status callback reports by `CallSid`.
async fn twilio_status_by_sid(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req = TwilioRequest::new(&state, &uri, &headers, &body);
    let sid = req.param("CallSid").ok_or_else(|| ApiError::BadRequest("CallSid is missing".into()))?;
    let row = {
        let mut handle = state.store.read().await?;
        calls::by_telephony_id(handle.conn(), Provider::Twilio.as_str(), sid)
            .await?
            .ok_or_else(|| ApiError::NotFound("no call has this CallSid".into()))?
    };
    req.verify(&credentials_of(&state, &row).await?)?;
    let news = twilio_news(&req)?;
    apply_news(&state, &row, None, news).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn twilio_amd(
    State(state): State<AppState>,
    Path(call_id): Path<Uuid>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (row, req) = twilio_call_request(&state, call_id, &uri, &headers, &body).await?;
    let answered_by = req.param("AnsweredBy").ok_or_else(|| ApiError::BadRequest("AnsweredBy is missing".into()))?;
    if let Some(result) = twilio::answered_by(answered_by) {
        let news = News::carrier(Event::MachineDetection(result), row.carrier_status.clone().unwrap_or_default());
        apply_news(&state, &row, req.param("CallSid"), news).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Twilio asks what to do once the call is answered: connect its audio to this server.
async fn twilio_twiml(
    State(state): State<AppState>,
    Path(call_id): Path<Uuid>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (row, req) = twilio_call_request(&state, call_id, &uri, &headers, &body).await?;
    if matches!(row.status.as_str(), "ended" | "error") {
        return Ok(xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Hangup/></Response>"));
    }
    apply_news(&state, &row, req.param("CallSid"), News::carrier(Event::Answered, "in-progress")).await?;
    Ok(xml(stream_twiml(&state, call_id)))
}

fn stream_twiml(state: &AppState, call_id: Uuid) -> String {
    let t = &state.telephony;
    twilio::connect_stream_twiml(
        &t.ws_url(&format!("/telephony/twilio/stream/{call_id}")),
        &call_id.to_string(),
        &t.stream_token(call_id),
    )
}

/// An inbound call to a number whose voice webhook points here.
async fn twilio_inbound(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = TwilioRequest::new(&state, &uri, &headers, &body);
    let (Some(to), Some(from), Some(sid)) = (req.param("To"), req.param("From"), req.param("CallSid")) else {
        return Err(ApiError::BadRequest("To, From and CallSid are required".into()));
    };
    let to = PhoneNumber::parse(to).map_err(ApiError::BadRequest)?;
    let holder = {
        let mut handle = state.store.read().await?;
        numbers::active_holder(handle.conn(), to.digits()).await?
    }
    .filter(|n| n.telephony_provider == Provider::Twilio.as_str())
    .ok_or_else(|| ApiError::NotFound(format!("{to} is not a number of this server")))?;
    let creds = {
        let mut handle = state.store.read().await?;
        twilio_credentials(&state, &mut handle, holder.user_id, holder.telephony_account_connection_id)
            .await
            .map_err(|e| forbidden(&format!("the number's account cannot verify the request ({e})")))?
    };
    req.verify(&creds)?;
    let Some(agent_id) = holder.inbound_agent_id.filter(|_| !holder.outbound_only) else {
        return Ok(xml(twilio::reject_twiml()));
    };
    let from = PhoneNumber::parse(from).map(|p| p.digits().to_owned()).unwrap_or_else(|_| from.to_owned());
    let call_id = start_inbound_call(&state, &holder, agent_id, Provider::Twilio, sid, &from, &to).await?;
    Ok(xml(stream_twiml(&state, call_id)))
}

/// Records an inbound call, answered by the number's agent (once, however often the carrier
/// asks), and returns its id.
async fn start_inbound_call(
    state: &AppState,
    number: &numbers::NumberRow,
    agent_id: Uuid,
    provider: Provider,
    carrier_id: &str,
    from: &str,
    to: &PhoneNumber,
) -> Result<Uuid, ApiError> {
    let mut tx = state.store.begin().await?;
    if let Some(existing) = calls::by_telephony_id(tx.conn(), provider.as_str(), carrier_id).await? {
        return Ok(existing.id);
    }
    let at = now();
    let mut row = new_call_row(
        NewCall {
            user_id: number.user_id,
            direction: "inbound",
            provider,
            to: to.digits().to_owned(),
            from: from.to_owned(),
            agent_phone_number: to.digits().to_owned(),
            agent_id,
            telephony_account_connection_id: number.telephony_account_connection_id,
            hipaa_compliant: false,
            on_no_human_answer: None,
            run_do_not_call_detection: None,
            context: number.example_context.as_ref().map(|c| c.0.clone()),
            telephony_params: None,
            record: false,
        },
        at,
    );
    let mut state_now = CallState::new(NoHumanAnswer::Continue);
    let mut effects = Vec::new();
    for event in [Event::Accepted { telephony_id: carrier_id.to_owned() }, Event::Answered] {
        let (next, more) = transition(&state_now, &event, at);
        state_now = next;
        effects.extend(more);
    }
    write_state(&mut row, &state_now);
    row.carrier_status = Some("in-progress".into());
    row.last_carrier_event_at = Some(at);
    match calls::insert(tx.conn(), &row).await {
        Err(err) if crate::store::is_unique_violation(&err) => {
            // The carrier asked twice at once: the other request recorded it.
            drop(tx);
            let mut handle = state.store.read().await?;
            let existing = calls::by_telephony_id(handle.conn(), provider.as_str(), carrier_id).await?;
            return existing.map(|r| r.id).ok_or_else(|| ApiError::Internal(err.into()));
        }
        other => other?,
    }
    let claimed = carry_out(state, &mut tx, &row, &effects, false).await?;
    tx.commit().await?;
    spawn_claimed(state, claimed);
    tracing::info!(call_id = %row.id, provider = provider.as_str(), "inbound call answered");
    Ok(row.id)
}

/// A verified Vonage callback body.
fn vonage_verified(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let Some(secret) = &state.telephony.vonage_signature_secret else {
        return Err(forbidden("VONAGE_SIGNATURE_SECRET is not set, so no Vonage callback can be verified"));
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    vonage::verify_callback(secret, authorization, body).map_err(forbidden)
}

fn vonage_news(event: &Value) -> Result<News, ApiError> {
    let recording_url = event["recording_url"].as_str().map(str::to_owned);
    let Some(status) = event["status"].as_str() else {
        // A `record` event carries the recording and no status.
        return match recording_url {
            Some(url) => Ok(News { event: None, carrier_status: None, recording_url: Some(url), from_carrier: true }),
            None => Err(ApiError::BadRequest("the event has no status".into())),
        };
    };
    let duration = event["duration"].as_i64().or_else(|| event["duration"].as_str().and_then(|d| d.parse().ok()));
    let mut news = match vonage::status_event(status, duration) {
        Some(e) => News::carrier(e, status),
        None if vonage::is_informational(status) => {
            News { event: None, carrier_status: None, recording_url: None, from_carrier: true }
        }
        None => return Err(ApiError::BadRequest(format!("unknown status '{status}'"))),
    };
    news.recording_url = recording_url;
    Ok(news)
}

/// The carrier's id of the call an event is about (`call_uuid` on machine-detection events).
fn vonage_call_uuid(event: &Value) -> Option<&str> {
    event["uuid"].as_str().or_else(|| event["call_uuid"].as_str())
}

async fn vonage_event(
    State(state): State<AppState>,
    Path(call_id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    vonage_verified(&state, &headers, &body)?;
    let event: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the event is not JSON: {e}")))?;
    let row = load_call(&state, call_id).await?;
    if row.telephony_provider != Provider::Vonage.as_str() {
        return Err(forbidden("the call is not a Vonage call"));
    }
    let uuid = vonage_call_uuid(&event);
    if let (Some(known), Some(given)) = (&row.telephony_id, uuid) {
        if known != given && event["recording_url"].is_null() {
            return Err(ApiError::BadRequest("uuid is not this call's".into()));
        }
    }
    let news = vonage_news(&event)?;
    apply_news(&state, &row, uuid, news).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The application's event URL: news of inbound calls, by the carrier's id.
async fn vonage_event_by_uuid(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    vonage_verified(&state, &headers, &body)?;
    let event: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the event is not JSON: {e}")))?;
    let Some(uuid) = vonage_call_uuid(&event) else {
        return Err(ApiError::BadRequest("the event names no call".into()));
    };
    let row = {
        let mut handle = state.store.read().await?;
        calls::by_telephony_id(handle.conn(), Provider::Vonage.as_str(), uuid)
            .await?
            .ok_or_else(|| ApiError::NotFound("no call has this uuid".into()))?
    };
    let news = vonage_news(&event)?;
    apply_news(&state, &row, None, news).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer webhook as a GET: Vonage signs the JSON object of its query parameters, in order.
async fn vonage_answer_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let object: Map<String, Value> = params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let signed = serde_json::to_vec(&object).expect("JSON");
    vonage_verified(&state, &headers, &signed)?;
    vonage_answer(&state, Value::Object(object)).await
}

async fn vonage_answer_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    vonage_verified(&state, &headers, &body)?;
    let request: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the request is not JSON: {e}")))?;
    vonage_answer(&state, request).await
}

async fn vonage_answer(state: &AppState, request: Value) -> Result<Response, ApiError> {
    let (Some(to), Some(from), Some(uuid)) =
        (request["to"].as_str(), request["from"].as_str(), request["uuid"].as_str())
    else {
        return Err(ApiError::BadRequest("to, from and uuid are required".into()));
    };
    let to = PhoneNumber::parse(to).map_err(ApiError::BadRequest)?;
    let holder = {
        let mut handle = state.store.read().await?;
        numbers::active_holder(handle.conn(), to.digits()).await?
    }
    .filter(|n| n.telephony_provider == Provider::Vonage.as_str())
    .ok_or_else(|| ApiError::NotFound(format!("{to} is not a number of this server")))?;
    let Some(agent_id) = holder.inbound_agent_id.filter(|_| !holder.outbound_only) else {
        return Ok(Json(vonage::reject_ncco()).into_response());
    };
    let from = PhoneNumber::parse(from).map(|p| p.digits().to_owned()).unwrap_or_else(|_| from.to_owned());
    let call_id = start_inbound_call(state, &holder, agent_id, Provider::Vonage, uuid, &from, &to).await?;
    let t = &state.telephony;
    let urls = t.vonage_call_urls(call_id);
    let headers = serde_json::json!({"call_id": call_id.to_string(), "token": t.stream_token(call_id)});
    Ok(Json(vonage::ncco(&urls.stream, &urls.event, headers, false)).into_response())
}
