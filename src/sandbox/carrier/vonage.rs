//! The sandbox carrier's Vonage face: the Voice API and Numbers API requests the Vonage adapter
//! sends, answered as Vonage answers them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde_json::{json, Value};

use super::{Protocol, SandboxState, SimCall, Transfer, VONAGE_API_KEY, VONAGE_APPLICATION_ID};
use crate::domain::phone::PhoneNumber;
use crate::sandbox::people::Scenario;
use crate::sandbox::Sandbox;
use crate::telephony::vonage as vonage_api;

fn vonage_error(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        Json(json!({"type": "https://developer.nexmo.com/api-errors", "title": title, "detail": detail, "instance": uuid::Uuid::new_v4()})),
    )
        .into_response()
}

#[allow(clippy::result_large_err)]
fn vonage_auth(sb: &Sandbox, headers: &HeaderMap) -> Result<(), Response> {
    let unauthorized =
        || vonage_error(StatusCode::UNAUTHORIZED, "Unauthorized", "You did not provide correct credentials.");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<vonage_api::ApiClaims>(
        token,
        &DecodingKey::from_secret(&sb.carrier.accounts.vonage_jwt_secret),
        &validation,
    )
    .map_err(|_| unauthorized())?;
    if claims.claims.application_id != VONAGE_APPLICATION_ID {
        return Err(unauthorized());
    }
    Ok(())
}

pub async fn create_call(State(sb): SandboxState, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(r) = vonage_auth(&sb, &headers) {
        return r;
    }
    let to = body["to"][0]["number"].as_str().unwrap_or_default().to_owned();
    let from = body["from"]["number"].as_str().unwrap_or_default().to_owned();
    if PhoneNumber::parse(&to).is_err() || Scenario::of(&to) == Scenario::Invalid {
        return vonage_error(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "The request failed due to validation errors: invalid to number",
        );
    }
    let connect = body["ncco"]
        .as_array()
        .and_then(|actions| actions.iter().find(|a| a["action"] == "connect"))
        .map(|a| &a["endpoint"][0]);
    let ncco_stream = connect.and_then(|e| Some((e["uri"].as_str()?.to_owned(), e["headers"].clone())));
    let record = body["ncco"].as_array().is_some_and(|a| a.iter().any(|x| x["action"] == "record"));
    let call = SimCall {
        account_sid: VONAGE_API_KEY.into(),
        event_url: body["event_url"][0].as_str().map(str::to_owned),
        ncco_stream,
        machine_detection: body.get("machine_detection").is_some() || body.get("advanced_machine_detection").is_some(),
        record,
        ..SimCall::accepted(
            uuid::Uuid::new_v4().to_string(),
            Protocol::Vonage,
            to,
            from,
            "started",
            sb.people.new_line(),
        )
    };
    let answer = sb.place(call, |call| {
        json!({"uuid": call.id, "status": "started", "direction": "outbound", "conversation_uuid": format!("CON-{}", call.id)})
    });
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `GET /v1/calls`: the application's calls since `date_start`, newest first.
pub async fn list_calls(
    State(sb): SandboxState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = vonage_auth(&sb, &headers) {
        return r;
    }
    let since = query
        .get("date_start")
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&chrono::Utc));
    let size = query.get("page_size").and_then(|s| s.parse().ok()).unwrap_or(10usize).clamp(1, 100);
    let calls: Vec<Value> = sb
        .carrier
        .newest_calls(Protocol::Vonage)
        .into_iter()
        .filter(|c| since.is_none_or(|since| c.created >= since))
        .take(size)
        .map(|c| {
            json!({"uuid": c.id, "status": c.status(), "direction": "outbound",
                   "to": {"type": "phone", "number": c.to.trim_start_matches('+')},
                   "from": {"type": "phone", "number": c.from.trim_start_matches('+')},
                   "start_time": c.created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})
        })
        .collect();
    Json(json!({"count": calls.len(), "page_size": size, "_embedded": {"calls": calls}})).into_response()
}

pub async fn fetch_call(State(sb): SandboxState, Path(uuid): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = vonage_auth(&sb, &headers) {
        return r;
    }
    match sb.carrier.call(&uuid) {
        Some(call) => {
            let status = match call.status().as_str() {
                "in-progress" => "answered",
                "canceled" => "cancelled",
                "no-answer" => "timeout",
                other => other,
            }
            .to_owned();
            let duration = call.duration().map(|d| d.to_string());
            Json(json!({"uuid": call.id, "status": status, "duration": duration})).into_response()
        }
        None => vonage_error(StatusCode::NOT_FOUND, "Not Found", "No call with this uuid"),
    }
}

/// A request about one of the application's calls (`/v1/calls/{uuid}…`, with a JSON body), taken
/// in Vonage's order: the body must be JSON, then the credentials right, then the call there.
pub struct CallRequest {
    call: Arc<SimCall>,
    uuid: String,
    body: Value,
}

impl FromRequest<Arc<Sandbox>> for CallRequest {
    type Rejection = Response;

    async fn from_request(request: Request, sb: &Arc<Sandbox>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Path(uuid) =
            Path::<String>::from_request_parts(&mut parts, sb).await.map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let Json(body) = Json::<Value>::from_request(Request::from_parts(parts, body), sb)
            .await
            .map_err(IntoResponse::into_response)?;
        vonage_auth(sb, &headers)?;
        let call = sb
            .carrier
            .call(&uuid)
            .ok_or_else(|| vonage_error(StatusCode::NOT_FOUND, "Not Found", "No call with this uuid"))?;
        Ok(CallRequest { call, uuid, body })
    }
}

/// `PUT /v1/calls/{uuid}/dtmf`: the keys are played into the call (the person hears them).
pub async fn dtmf(CallRequest { call, uuid, body }: CallRequest) -> Response {
    let Some(digits) = body["digits"].as_str().filter(|d| !d.is_empty()) else {
        return vonage_error(StatusCode::BAD_REQUEST, "Bad Request", "digits is required");
    };
    tracing::info!(call = %call.id, digits, "sandbox: keys pressed on the call");
    call.line.pressed(digits);
    Json(json!({"message": "DTMF sent", "uuid": uuid})).into_response()
}

pub async fn modify_call(State(sb): SandboxState, CallRequest { call, body, .. }: CallRequest) -> Response {
    match body["action"].as_str() {
        Some("hangup") => {
            sb.hang_up(&call);
            StatusCode::NO_CONTENT.into_response()
        }
        // A transfer to an NCCO that connects a phone: the websocket's NCCO is replaced (the
        // stream ends), and the phone is dialled.
        Some("transfer") => {
            let ncco = &body["destination"]["ncco"];
            let connect = ncco.as_array().and_then(|actions| actions.iter().find(|a| a["action"] == "connect"));
            let phone = connect
                .and_then(|c| c["endpoint"].as_array())
                .and_then(|endpoints| endpoints.iter().find(|e| e["type"] == "phone"))
                .and_then(|e| e["number"].as_str());
            let (Some(connect), Some(phone)) = (connect, phone) else {
                return vonage_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    "The sandbox transfers only to an NCCO that connects a phone",
                );
            };
            let transfer = Transfer {
                to: phone.to_owned(),
                ended_url: connect["eventUrl"][0].as_str().map(str::to_owned),
                answered_url: None,
            };
            match sb.transfer(&call, transfer) {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(reason) => vonage_error(StatusCode::BAD_REQUEST, "Bad Request", &reason),
            }
        }
        _ => vonage_error(StatusCode::BAD_REQUEST, "Bad Request", "Unsupported action"),
    }
}

/// A request of the Numbers API, with its Basic auth (the API key and secret).
pub struct NumbersAuth;

impl FromRequestParts<Arc<Sandbox>> for NumbersAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, sb: &Arc<Sandbox>) -> Result<Self, Response> {
        let expected =
            format!("Basic {}", STANDARD.encode(format!("{VONAGE_API_KEY}:{}", sb.carrier.vonage_api_secret())));
        if parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
            return Ok(NumbersAuth);
        }
        Err((StatusCode::UNAUTHORIZED, Json(json!({"error-code": "401", "error-code-label": "authentication failed"})))
            .into_response())
    }
}

pub async fn search(Query(query): Query<HashMap<String, String>>, _: NumbersAuth) -> Response {
    let area = query
        .get("pattern")
        .and_then(|p| p.strip_prefix('1'))
        .filter(|a| a.len() == 3)
        .map(str::to_owned)
        .unwrap_or_else(|| "415".into());
    let msisdn = format!("1{area}555{}", rand::thread_rng().gen_range(2000..10000));
    Json(json!({"count": 1, "numbers": [{"country": "US", "msisdn": msisdn, "type": "landline", "features": ["VOICE"]}]})).into_response()
}

pub async fn numbers_ok(_: NumbersAuth) -> Response {
    Json(json!({"error-code": "200", "error-code-label": "success"})).into_response()
}
