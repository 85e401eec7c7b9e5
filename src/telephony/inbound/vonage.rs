//! Vonage's requests: call events, and the answer webhook of inbound calls.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{answer_inbound, apply_news, forbidden, holder_of, load_call, load_call_by_carrier_id};
use crate::calls::News;
use crate::domain::call::{Event, Provider};
use crate::error::ApiError;
use crate::store::calls::CallRow;
use crate::telephony::vonage as protocol;
use crate::AppState;

/// A request Vonage signed: its body, verified against the signed JWT in `Authorization`. A GET's
/// body is the JSON object of its query parameters, in order, which is what Vonage signs then.
pub struct VerifiedVonage {
    pub body: Bytes,
}

impl FromRequest<AppState> for VerifiedVonage {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = if req.method() == Method::GET {
            let Query(params) =
                Query::<Vec<(String, String)>>::try_from_uri(req.uri()).map_err(IntoResponse::into_response)?;
            let object: Map<String, Value> = params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            Bytes::from(serde_json::to_vec(&object).expect("JSON"))
        } else {
            Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?
        };
        let Some(secret) = &state.telephony.vonage_signature_secret else {
            let reason = "VONAGE_SIGNATURE_SECRET is not set, so no Vonage callback can be verified";
            return Err(forbidden(reason).into_response());
        };
        protocol::verify_callback(secret, authorization.as_deref(), &body)
            .map_err(|reason| forbidden(reason).into_response())?;
        Ok(VerifiedVonage { body })
    }
}

impl VerifiedVonage {
    fn json(&self, what: &str) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::BadRequest(format!("the {what} is not JSON: {e}")))
    }
}

fn news(event: &Value) -> Result<News, ApiError> {
    let recording_url = event["recording_url"].as_str().map(str::to_owned);
    let Some(status) = event["status"].as_str() else {
        // A `record` event carries the recording and no status.
        return match recording_url {
            Some(url) => Ok(News::carrier_word(Some(url))),
            None => Err(ApiError::BadRequest("the event has no status".into())),
        };
    };
    let duration = event["duration"].as_i64().or_else(|| event["duration"].as_str().and_then(|d| d.parse().ok()));
    let mut news = match protocol::status_event(status, duration) {
        Some(e) => News::carrier(e, status),
        None if protocol::is_informational(status) => News::carrier_word(None),
        None => return Err(ApiError::BadRequest(format!("unknown status '{status}'"))),
    };
    news.recording_url = recording_url;
    Ok(news)
}

/// The carrier's id of the call an event is about (`call_uuid` on machine-detection events).
fn call_uuid(event: &Value) -> Option<&str> {
    event["uuid"].as_str().or_else(|| event["call_uuid"].as_str())
}

/// One of this server's Vonage calls, named in a callback's path.
async fn vonage_call(state: &AppState, call_id: Uuid) -> Result<CallRow, ApiError> {
    let row = load_call(state, call_id).await?;
    if row.telephony_provider != Provider::Vonage {
        return Err(forbidden("the call is not a Vonage call"));
    }
    Ok(row)
}

/// An event about one of this server's Vonage calls, named in the path.
pub async fn event(
    State(state): State<AppState>,
    Path(call_id): Path<Uuid>,
    signed: VerifiedVonage,
) -> Result<StatusCode, ApiError> {
    let event = signed.json("event")?;
    let row = vonage_call(&state, call_id).await?;
    if event["status"] == "disconnected" {
        // The websocket closed without the call ending (the server that held it stopped, or
        // moved the call): the call is pointed at a new stream, on whichever replica answers.
        reconnect(&state, &row, &event).await;
        return Ok(StatusCode::NO_CONTENT);
    }
    let uuid = call_uuid(&event);
    if let (Some(known), Some(given)) = (&row.state.telephony_id, uuid) {
        if known != given && event["recording_url"].is_null() {
            return Err(ApiError::BadRequest("uuid is not this call's".into()));
        }
    }
    apply_news(&state, &row, uuid, news(&event)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Points the call at a new media stream, when its conversation goes on: the websocket's own
/// headers must carry the call's stream token (Vonage echoes them back with the event).
async fn reconnect(state: &AppState, row: &CallRow, event: &Value) {
    let call_id = row.id;
    let token = event["headers"]["token"].as_str().or(event["token"].as_str());
    if !token.is_some_and(|t| state.telephony.check_stream_token(call_id, t)) {
        return tracing::warn!(%call_id, "a websocket's disconnection without the call's token: ignored");
    }
    match state.calls.conversation_is_over(call_id).await {
        Ok(false) if !row.state.is_final() => {}
        Ok(_) => return,
        Err(e) => return tracing::warn!(%call_id, error = %e, "cannot tell whether the call goes on"),
    }
    let result = match state.telephony.carrier_of(row).await {
        Ok(carrier) => carrier.reconnect(row).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::info!(%call_id, "the call's websocket closed: the call is pointed at a new stream"),
        Err(e) => tracing::warn!(%call_id, error = %e, "the call could not be pointed at a new stream"),
    }
}

/// The third party's leg of a transfer (the `connect` NCCO's event URL). `answered` makes the
/// transfer a success; a leg that was not answered makes it a failure, and the call ends (nothing
/// follows the `connect` in its NCCO).
pub async fn transfer_event(
    State(state): State<AppState>,
    Path(call_id): Path<Uuid>,
    signed: VerifiedVonage,
) -> Result<StatusCode, ApiError> {
    let event = signed.json("event")?;
    let row = vonage_call(&state, call_id).await?;
    let news = match event["status"].as_str() {
        Some("answered") => Event::TransferAnswered,
        Some("busy" | "timeout" | "unanswered" | "failed" | "rejected" | "cancelled") => Event::TransferFailed,
        _ => return Ok(StatusCode::NO_CONTENT),
    };
    apply_news(&state, &row, None, News::api(news)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The application's event URL: news of inbound calls, by the carrier's id.
pub async fn event_by_uuid(State(state): State<AppState>, signed: VerifiedVonage) -> Result<StatusCode, ApiError> {
    let event = signed.json("event")?;
    let Some(uuid) = call_uuid(&event) else {
        return Err(ApiError::BadRequest("the event names no call".into()));
    };
    let row = load_call_by_carrier_id(&state, Provider::Vonage, uuid, "uuid").await?;
    apply_news(&state, &row, None, news(&event)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer webhook (GET or POST): an inbound call to one of this server's Vonage numbers.
pub async fn answer(State(state): State<AppState>, signed: VerifiedVonage) -> Result<Response, ApiError> {
    let request = signed.json("request")?;
    let (Some(to), Some(from), Some(uuid)) =
        (request["to"].as_str(), request["from"].as_str(), request["uuid"].as_str())
    else {
        return Err(ApiError::BadRequest("to, from and uuid are required".into()));
    };
    let (to, holder) = holder_of(&state, to, Provider::Vonage).await?;
    match answer_inbound(&state, &holder, Provider::Vonage, uuid, from, &to).await? {
        Some(call_id) => Ok(Json(state.telephony.stream_ncco(call_id, false)).into_response()),
        None => Ok(Json(protocol::reject_ncco()).into_response()),
    }
}
