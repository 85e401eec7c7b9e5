//! The sandbox carrier's Twilio face: the REST requests the Twilio adapter sends (calls, numbers),
//! answered as Twilio answers them.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::Rng;
use serde_json::{json, Value};

use super::twiml::{parse_dial_twiml, start_tag};
use super::{random_hex, Protocol, SandboxState, SimCall};
use crate::domain::phone::PhoneNumber;
use crate::sandbox::people::Scenario;
use crate::sandbox::Sandbox;

fn twilio_error(status: StatusCode, code: i64, message: String) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()})),
    )
        .into_response()
}

/// A request with Twilio's Basic auth: the username is the account in the path; any token is
/// accepted (the callbacks are signed with it, so a wrong one fails there, as with the real
/// carrier).
pub struct TwilioAuth {
    account: String,
    token: String,
}

impl<S: Send + Sync> FromRequestParts<S> for TwilioAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(path) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let account = path.get("account").cloned().unwrap_or_default();
        let unauthorized = || twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate".into());
        let value = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
        let decoded = value
            .strip_prefix("Basic ")
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(unauthorized)?;
        match decoded.split_once(':') {
            Some((user, token)) if user == account && !token.is_empty() => {
                Ok(TwilioAuth { token: token.to_owned(), account })
            }
            _ => Err(unauthorized()),
        }
    }
}

fn call_resource(call: &SimCall) -> Value {
    let duration = call.duration().map(|d| d.to_string());
    json!({"sid": call.id, "account_sid": call.account_sid, "to": call.to, "from": call.from, "status": call.status(),
           "direction": "outbound-api", "duration": duration, "answered_by": null, "api_version": "2010-04-01",
           "uri": format!("/2010-04-01/Accounts/{}/Calls/{}.json", call.account_sid, call.id)})
}

pub async fn create_call(State(sb): SandboxState, auth: TwilioAuth, body: Bytes) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(to) = field("To") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21201, "No 'To' number is specified".into());
    };
    let Some(from) = field("From") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21213, "No 'From' number is specified".into());
    };
    if PhoneNumber::parse(&to).is_err() || Scenario::of(&to) == Scenario::Invalid {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    let call = SimCall {
        account_sid: auth.account,
        auth_token: auth.token,
        events: form.iter().filter(|(k, _)| k == "StatusCallbackEvent").map(|(_, v)| v.clone()).collect(),
        status_url: field("StatusCallback"),
        amd_url: field("AsyncAmdStatusCallback"),
        twiml_url: field("Url"),
        machine_detection: field("MachineDetection").is_some(),
        record: field("Record").as_deref() == Some("true"),
        ..SimCall::accepted(format!("CA{}", random_hex(32)), Protocol::Twilio, to, from, "queued", sb.people.new_line())
    };
    let resource = sb.place(call, call_resource);
    (StatusCode::CREATED, Json(resource)).into_response()
}

/// `GET Calls.json`: the account's calls, newest first, filtered by `To` and `From`.
pub async fn list_calls(
    State(sb): SandboxState,
    Query(query): Query<HashMap<String, String>>,
    auth: TwilioAuth,
) -> Response {
    let size = query.get("PageSize").and_then(|s| s.parse().ok()).unwrap_or(50usize).clamp(1, 1000);
    let calls: Vec<Value> = sb
        .carrier
        .newest_calls(Protocol::Twilio)
        .into_iter()
        .filter(|c| c.account_sid == auth.account)
        .filter(|c| query.get("To").is_none_or(|to| *to == c.to))
        .filter(|c| query.get("From").is_none_or(|from| *from == c.from))
        .take(size)
        .map(|c| {
            let mut resource = call_resource(&c);
            resource["date_created"] = json!(c.created.to_rfc2822());
            resource
        })
        .collect();
    Json(json!({"calls": calls, "page": 0, "page_size": size})).into_response()
}

fn sid_of(file: &str) -> &str {
    file.trim_end_matches(".json").trim_end_matches(".mp3").trim_end_matches(".wav")
}

pub async fn fetch_call(State(sb): SandboxState, Path((_, file)): Path<(String, String)>, _: TwilioAuth) -> Response {
    match sb.carrier.call(sid_of(&file)) {
        Some(call) => Json(call_resource(&call)).into_response(),
        None => twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found".into()),
    }
}

pub async fn modify_call(
    State(sb): SandboxState,
    Path((_, file)): Path<(String, String)>,
    _: TwilioAuth,
    body: Bytes,
) -> Response {
    let Some(call) = sb.carrier.call(sid_of(&file)) else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found".into());
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let status = call.status();
    let answered = status == "in-progress";
    let over = matches!(status.as_str(), "completed" | "canceled" | "busy" | "failed" | "no-answer");
    match (form.get("Status").map(String::as_str), form.get("Twiml")) {
        (Some(_), _) | (None, Some(_)) if over => {
            twilio_error(StatusCode::BAD_REQUEST, 21220, "Call is not in-progress. Cannot redirect.".into())
        }
        (Some("completed"), _) if answered => {
            sb.hang_up(&call);
            let mut resource = call_resource(&call);
            resource["status"] = json!("completed");
            Json(resource).into_response()
        }
        (Some("canceled"), _) if !answered => {
            sb.hang_up(&call);
            let mut resource = call_resource(&call);
            resource["status"] = json!("canceled");
            Json(resource).into_response()
        }
        (Some(_), _) => {
            twilio_error(StatusCode::BAD_REQUEST, 21220, format!("The call is {status}: it cannot take this status."))
        }
        (None, Some(twiml)) => redirect(&sb, &call, twiml),
        (None, None) => Json(call_resource(&call)).into_response(),
    }
}

/// New TwiML for a call in progress, of which the sandbox plays a transfer (`<Dial><Number>`:
/// the call's `<Connect><Stream>` ends, and the number is dialled) and `<Hangup/>`.
fn redirect(sb: &Sandbox, call: &SimCall, twiml: &str) -> Response {
    if let Some(transfer) = parse_dial_twiml(twiml) {
        return match sb.transfer(call, transfer) {
            Ok(()) => Json(call_resource(call)).into_response(),
            Err(reason) => twilio_error(StatusCode::BAD_REQUEST, 21220, format!("Cannot redirect: {reason}.")),
        };
    }
    if start_tag(twiml, "Hangup").is_some() {
        sb.hang_up(call);
        let mut resource = call_resource(call);
        resource["status"] = json!("completed");
        return Json(resource).into_response();
    }
    tracing::warn!(call = %call.id, %twiml, "the sandbox does not play this TwiML");
    twilio_error(
        StatusCode::BAD_REQUEST,
        12100,
        "The sandbox plays only <Dial><Number> and <Hangup/> on a call in progress.".into(),
    )
}

pub async fn available(Query(query): Query<HashMap<String, String>>, _: TwilioAuth) -> Response {
    let area = query.get("AreaCode").filter(|a| a.len() == 3).cloned().unwrap_or_else(|| "415".into());
    let numbers: Vec<Value> = (0..3)
        .map(|_| {
            let n = format!("+1{area}555{}", rand::thread_rng().gen_range(2000..10000));
            json!({"phone_number": n, "friendly_name": n, "iso_country": "US", "capabilities": {"voice": true}})
        })
        .collect();
    Json(json!({"available_phone_numbers": numbers})).into_response()
}

fn number_sid(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    format!("PN{:0>32}", digits)
}

pub async fn list_numbers(Query(query): Query<HashMap<String, String>>, _: TwilioAuth) -> Response {
    // Every number is the sandbox account's.
    let numbers: Vec<Value> =
        query.get("PhoneNumber").map(|n| vec![json!({"sid": number_sid(n), "phone_number": n})]).unwrap_or_default();
    Json(json!({"incoming_phone_numbers": numbers})).into_response()
}

pub async fn buy_number(_: TwilioAuth, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let Some(number) = form.get("PhoneNumber") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21421, "PhoneNumber is required".into());
    };
    (
        StatusCode::CREATED,
        Json(json!({"sid": number_sid(number), "phone_number": number, "voice_url": form.get("VoiceUrl"), "status": "in-use"})),
    )
        .into_response()
}

pub async fn update_number(Path((_, file)): Path<(String, String)>, _: TwilioAuth) -> Response {
    Json(json!({"sid": sid_of(&file)})).into_response()
}

pub async fn release_number(_: TwilioAuth) -> Response {
    StatusCode::NO_CONTENT.into_response()
}
