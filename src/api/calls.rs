//! Calls: create (placed through the carrier at once), get, list, end, and the recording.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::agents::{agent_view, create_agent};
use super::auth::Caller;
use super::documents::{load, Document, IdQuery};
use super::extract::{ValidJson, ValidQuery};
use super::paging::{ListQuery, Page};
use super::routes::V1;
use crate::calls::create::{CallAgent, CreateError, IdempotencyKey, OutboundCall};
use crate::domain::agents::default_voice;
use crate::domain::call::Provider;
use crate::domain::documents::{ACCOUNT_CONNECTIONS, AGENTS};
use crate::domain::phone::PhoneNumber;
use crate::error::{ApiError, Issue, Loc, Result};
use crate::recordings::Served;
use crate::store::calls::{self as calls_store, CallRow};
use crate::store::records::{self, count_rows};
use crate::store::{Conn, Tx};
use crate::telephony::CarrierError;
use crate::AppState;

/// The columns a list of calls may be sorted by; the first is the default.
pub const SORT_COLUMNS: &[&str] = &["created_at", "start_time", "end_time", "updated_at", "id"];

/// What the prompt of a HIPAA-compliant call's agent shows.
pub const REDACTED: &str = "[redacted]";

pub fn router() -> V1 {
    V1::default()
        .get("/v1/calls", get_call)
        .get("/v1/calls/list", list_calls)
        .post("/v1/calls/create", create_call)
        .post("/v1/calls/end", end_call)
        .get("/v1/calls/recording", get_recording)
}

async fn user_call(c: &mut impl Conn, user_id: Uuid, id: Uuid) -> Result<CallRow> {
    calls_store::get(c.conn(), user_id, id).await?.ok_or_else(|| call_not_found(id))
}

fn call_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("Call {id} not found"))
}

async fn get_call(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Json<Value>> {
    let mut handle = state.store.read().await?;
    let row = user_call(&mut handle, caller.user_id, q.id).await?;
    Ok(Json(call_view(&state, &mut handle, &row).await?))
}

/// `GET /calls/latency` (this server's own): when each answered turn of the caller's call reached
/// each stage, from the end of the caller's speech, with each stage's median and 95th percentile.
pub async fn latency(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Json<Value>> {
    let mut handle = state.store.read().await?;
    let row = user_call(&mut handle, caller.user_id, q.id).await?;
    let turns = calls_store::turns(handle.conn(), row.id).await?;
    type Stage = fn(&calls_store::TurnRow) -> Option<f64>;
    let stages: [(&str, Stage); 5] = [
        ("recognition_ms", |t| t.recognition_ms),
        ("end_of_turn_ms", |t| Some(t.end_of_turn_ms)),
        ("first_token_ms", |t| t.first_token_ms),
        ("first_audio_ms", |t| t.first_audio_ms),
        ("first_frame_ms", |t| t.first_frame_ms),
    ];
    let summary: serde_json::Map<String, Value> = stages
        .iter()
        .map(|(name, stage)| {
            let mut values: Vec<f64> = turns.iter().filter_map(stage).collect();
            values.sort_by(f64::total_cmp);
            (name.to_string(), json!({"p50": percentile(&values, 50), "p95": percentile(&values, 95)}))
        })
        .collect();
    let turns: Vec<Value> = turns
        .iter()
        .map(|t| {
            json!({"turn": t.turn, "at": t.at, "recognition_ms": t.recognition_ms, "end_of_turn_ms": t.end_of_turn_ms,
                   "first_token_ms": t.first_token_ms, "first_audio_ms": t.first_audio_ms,
                   "first_frame_ms": t.first_frame_ms})
        })
        .collect();
    Ok(Json(json!({"call_id": row.id, "turns": turns, "summary": summary})))
}

/// `GET /calls/events` (this server's own): the caller's call's state timeline, from the times the
/// call's row keeps — created, the carrier took it (ringing), picked up, ended — in the API's
/// words for the status and stage each step moved it to. Steps not reached are left out; a call
/// picked up whose answer the carrier never reported has its `picked_up` step at `null`.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Json<Value>> {
    let mut handle = state.store.read().await?;
    let row = user_call(&mut handle, caller.user_id, q.id).await?;
    Ok(Json(timeline(&row)))
}

fn timeline(row: &CallRow) -> Value {
    let st = &row.state;
    let iso = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut events =
        vec![json!({"event": "created", "at": iso(row.created_at), "status": "not_started", "stage": "created"})];
    if let Some(at) = st.start_time {
        events.push(json!({"event": "ringing", "at": iso(at), "status": "in_progress", "stage": "created"}));
    }
    if st.stage != crate::domain::call::Stage::Created {
        events.push(
            json!({"event": "picked_up", "at": st.answered_at.map(iso), "status": "in_progress", "stage": "picked_up"}),
        );
    }
    if st.status.is_final() {
        events.push(json!({
            "event": st.status.as_str(),
            "at": st.end_time.map(iso),
            "status": st.status.as_str(),
            "stage": st.stage.as_str(),
            "stage_outcome": st.stage_outcome.map(|o| o.as_str()),
            "duration_seconds": st.duration_seconds,
        }));
    }
    json!({"call_id": row.id, "direction": row.direction.as_str(), "status": st.status.as_str(), "events": events})
}

/// The nearest-rank percentile of sorted values; `None` of none.
fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

async fn list_calls(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<Page<Value>>> {
    let req = q.check(SORT_COLUMNS)?;
    let mut handle = state.store.read().await?;
    let rows = calls_store::list(handle.conn(), caller.user_id, req.sort, req.limit(), req.offset()).await?;
    let total = count_rows(handle.conn(), "calls", caller.user_id).await?;
    Ok(Json(Page::new(&req, rows, total).map(|row| normalized_view(&row))))
}

#[derive(Debug, Deserialize)]
struct CreateCallRequest {
    from_number: String,
    to_number: String,
    agent: Value,
    on_no_human_answer: String,
    run_do_not_call_detection: Option<bool>,
    hipaa_compliant: bool,
    context: Option<Value>,
    telephony_params: Option<Value>,
}

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(Issue::new(
            vec!["header".into(), "Idempotency-Key".into()],
            "idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )));
    }
    Ok(Some(key.to_owned()))
}

fn reused_key() -> ApiError {
    ApiError::invalid(Issue::new(
        vec!["header".into(), "Idempotency-Key".into()],
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body: use a new key for a new call",
    ))
}

async fn create_call(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ValidJson(body): ValidJson<Value>,
) -> Result<Json<Value>> {
    let key = idempotency_key(&headers)?;
    // The validated body (fields in the schema's order, defaults filled in) is what the key binds.
    let request_hash = Sha256::digest(serde_json::to_vec(&body).expect("JSON")).to_vec();
    if let Some(key) = &key {
        let mut handle = state.store.read().await?;
        if let Some(seen) = calls_store::find_idempotency_key(handle.conn(), caller.user_id, key).await? {
            return replay(&state, &mut handle, caller.user_id, seen, &request_hash).await;
        }
    }
    let idempotency = key.map(|key| IdempotencyKey { key, request_hash: request_hash.clone() });
    let (call, agent) = outbound_call(caller.user_id, body, idempotency)?;
    let agent = match agent {
        Value::String(id) => CallAgent::Existing(Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.into()))?),
        params => CallAgent::New(async |tx: &mut Tx| create_call_agent(&state, tx, caller.user_id, params).await),
    };
    let created = match state.calls.create_outbound_call(call, agent).await {
        Ok(created) => created,
        Err(CreateError::AlreadyCreated(seen)) => {
            let mut handle = state.store.read().await?;
            return replay(&state, &mut handle, caller.user_id, seen, &request_hash).await;
        }
        Err(refused) => return Err(refusal(refused)),
    };
    state.run_now(created.dispatch).await;
    let mut handle = state.store.read().await?;
    let row = user_call(&mut handle, caller.user_id, created.call.id).await?;
    Ok(Json(call_view(&state, &mut handle, &row).await?))
}

/// The request, parsed: the call, and its `agent` (an id, or `CreateCallAgentParams`).
fn outbound_call(user_id: Uuid, body: Value, idempotency: Option<IdempotencyKey>) -> Result<(OutboundCall, Value)> {
    let req: CreateCallRequest = serde_json::from_value(body).map_err(|e| ApiError::Internal(e.into()))?;
    let call = OutboundCall {
        user_id,
        to: PhoneNumber::parse(&req.to_number)
            .map_err(|msg| ApiError::invalid(Issue::body(&["to_number"], "phone_number", msg)))?,
        from: PhoneNumber::parse(&req.from_number)
            .map_err(|msg| ApiError::invalid(Issue::body(&["from_number"], "phone_number", msg)))?,
        hipaa_compliant: req.hipaa_compliant,
        on_no_human_answer: req
            .on_no_human_answer
            .parse()
            .map_err(|e: String| ApiError::Internal(anyhow::anyhow!(e)))?,
        run_do_not_call_detection: req.run_do_not_call_detection,
        context: req.context,
        telephony_params: req.telephony_params,
        idempotency,
    };
    Ok((call, req.agent))
}

/// Where a call's `agent` is in the request.
const AGENT_LOC: [&str; 2] = ["body", "agent"];

/// The call's own agent, from `CreateCallAgentParams` (which make the voice optional), made in
/// the call's transaction.
async fn create_call_agent(state: &AppState, tx: &mut Tx, user_id: Uuid, mut params: Value) -> Result<Uuid> {
    if params.get("voice").is_none_or(Value::is_null) {
        params["voice"] = default_voice();
    }
    let loc = AGENT_LOC.map(Loc::from);
    Ok(create_agent(state, tx, user_id, params, &loc).await?.record.id)
}

/// Why a call was not created, as the client hears it.
fn refusal(err: CreateError<ApiError>) -> ApiError {
    match err {
        CreateError::UsageLimitReached { .. } => ApiError::Forbidden(err.to_string()),
        CreateError::NotYourNumber(_) => ApiError::invalid(Issue::body(&["from_number"], "not_found", err.to_string())),
        CreateError::AgentNotFound(_) => {
            ApiError::invalid(Issue::new(AGENT_LOC.map(Loc::from).to_vec(), "not_found", err.to_string()))
        }
        CreateError::MissingContext(missing) => ApiError::Validation(
            missing
                .iter()
                .map(|key| {
                    Issue::body(
                        &["context", key],
                        "missing",
                        format!("Field required: the agent's prompt template requires the context key {key:?}"),
                    )
                })
                .collect(),
        ),
        CreateError::CannotTalk(_) => ApiError::BadRequest(err.to_string()),
        CreateError::AlreadyCreated(seen) => {
            ApiError::Internal(anyhow::anyhow!("call {} was created first: its answer is a replay", seen.call_id))
        }
        CreateError::NewAgent(err) => err,
        CreateError::Calls(err) => err.into(),
    }
}

async fn replay(
    state: &AppState,
    c: &mut impl Conn,
    user_id: Uuid,
    seen: calls_store::IdempotencyRecord,
    request_hash: &[u8],
) -> Result<Json<Value>> {
    if seen.request_hash != request_hash {
        return Err(reused_key());
    }
    let row = user_call(c, user_id, seen.call_id).await?;
    Ok(Json(call_view(state, c, &row).await?))
}

async fn end_call(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Json<Value>> {
    let hang_up = state.calls.end(caller.user_id, q.id).await?.ok_or_else(|| call_not_found(q.id))?;
    // Hang up now, so that the answer shows the call ended; the job is durable if not.
    for job in hang_up {
        state.run_now(job).await;
    }
    let mut handle = state.store.read().await?;
    let row = user_call(&mut handle, caller.user_id, q.id).await?;
    Ok(Json(call_view(&state, &mut handle, &row).await?))
}

async fn get_recording(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Response> {
    let mut handle = state.store.read().await?;
    let row = user_call(&mut handle, caller.user_id, q.id).await?;
    let url = row
        .recording_url
        .clone()
        .filter(|_| !row.hipaa_compliant)
        .ok_or_else(|| ApiError::NotFound(format!("Call {} has no recording", row.id)))?;
    drop(handle);
    if url == crate::recordings::ON_SERVER {
        return recording_made_here(&state, row.id).await;
    }
    let carrier = state.telephony.carrier_of(&row).await.map_err(carrier_error)?;
    let fetched = carrier.fetch_recording(&url).await.map_err(carrier_error)?;
    let content_type =
        fetched.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("audio/mpeg").to_owned();
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(fetched.bytes_stream())).into_response())
}

/// A recording this server made of the call, from wherever its recordings are kept (on any
/// replica: a bucket, or a folder they share), its segments joined.
async fn recording_made_here(state: &AppState, call_id: Uuid) -> Result<Response> {
    let missing = || ApiError::NotFound(format!("Call {call_id}'s recording is no longer kept on this server"));
    let recordings = state.recordings.as_ref().ok_or_else(missing)?;
    let wav = match recordings.get(call_id).await {
        Ok(Some(wav)) => wav,
        Ok(None) => return Err(missing()),
        Err(e) => return Err(ApiError::Internal(e.context("reading a recording"))),
    };
    let wav_type = (header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    Ok(match wav {
        Served::Whole(wav) => ([wav_type], wav).into_response(),
        Served::Streamed { size, stream } => {
            ([wav_type, (header::CONTENT_LENGTH, HeaderValue::from(size))], Body::from_stream(stream)).into_response()
        }
    })
}

/// How a carrier's failure reaches the client of a request that needed it.
pub fn carrier_error(err: CarrierError) -> ApiError {
    match err {
        CarrierError::Rejected(reason) => ApiError::BadRequest(format!("The carrier refused: {reason}")),
        CarrierError::Transient(reason) => {
            ApiError::Unavailable(format!("The carrier is unavailable; try again shortly ({reason})"))
        }
    }
}

fn telephony_metadata(row: &CallRow) -> Value {
    match row.telephony_provider {
        Provider::Twilio => json!({
            "type": "telephony_metadata_twilio",
            "call_sid": row.state.telephony_id,
            "call_status": row.state.carrier_status,
            "transfer_call_sid": null,
            "transfer_call_status": null,
            "conference_sid": null,
        }),
        Provider::Vonage => json!({"type": "telephony_metadata_vonage"}),
    }
}

/// The fields `Call` and `NormalizedCall` share, in the spec's order; `start_time`, `end_time`,
/// `agent` and `telephony_account_connection` are filled in by each.
fn base_view(row: &CallRow) -> Value {
    let st = &row.state;
    json!({
        "id": row.id,
        "user_id": row.user_id,
        "status": st.status.as_str(),
        "error_message": st.error_message,
        "recording_available": row.recording_url.is_some() && !row.hipaa_compliant,
        "transcript": if row.hipaa_compliant { None } else { row.transcript.clone() },
        "human_detection_result": st.human_detection_result.map(|h| h.as_str()),
        "do_not_call_result": row.do_not_call_result,
        "telephony_id": st.telephony_id,
        "stage": st.stage.as_str(),
        "stage_outcome": st.stage_outcome.map(|o| o.as_str()),
        "telephony_metadata": telephony_metadata(row),
        "start_time": null,
        "end_time": null,
        "to_number": row.to_number,
        "from_number": row.from_number,
        "agent": row.agent_id,
        "telephony_provider": row.telephony_provider.as_str(),
        "agent_phone_number": row.agent_phone_number,
        "hipaa_compliant": row.hipaa_compliant,
        "on_no_human_answer": st.on_no_human_answer.map(|o| o.as_str()),
        "context": row.context.as_ref().map(|c| c.0.clone()),
        "run_do_not_call_detection": row.run_do_not_call_detection,
        "telephony_account_connection": row.telephony_account_connection_id,
        "telephony_params": row.telephony_params.as_ref().map(|c| c.0.clone()),
    })
}

/// `NormalizedCall`: times as epoch seconds, references as ids.
pub fn normalized_view(row: &CallRow) -> Value {
    let mut view = base_view(row);
    let epoch = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_micros() as f64 / 1e6);
    view["start_time"] = json!(epoch(row.state.start_time));
    view["end_time"] = json!(epoch(row.state.end_time));
    view
}

/// `Call`: times as ISO-8601 strings, the agent and the account connection in full.
pub async fn call_view(state: &AppState, c: &mut impl Conn, row: &CallRow) -> Result<Value> {
    let mut view = base_view(row);
    let iso =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    view["start_time"] = json!(iso(row.state.start_time));
    view["end_time"] = json!(iso(row.state.end_time));
    let agent = load(state, c.conn(), &AGENTS, row.user_id, row.agent_id).await?;
    let mut agent = agent_view(state, c, &agent).await?;
    if row.hipaa_compliant {
        agent["prompt"]["content"] = Value::String(REDACTED.into());
    }
    view["agent"] = agent;
    if let Some(id) = row.telephony_account_connection_id {
        let record = records::get(c.conn(), ACCOUNT_CONNECTIONS.table, row.user_id, id).await?;
        view["telephony_account_connection"] = match record {
            Some(r) => Document::open(state, &ACCOUNT_CONNECTIONS, r)?.view(&ACCOUNT_CONNECTIONS),
            None => Value::Null,
        };
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7.0], 95), Some(7.0));
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50), Some(10.0));
        assert_eq!(percentile(&values, 95), Some(19.0));
        assert_eq!(percentile(&values[..3], 95), Some(3.0));
    }
}
