//! The sandbox's Twilio: the REST requests the Twilio adapter sends (calls, numbers), answered
//! as Twilio answers them.

use super::*;

fn twilio_error(status: StatusCode, code: i64, message: String) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()})),
    )
        .into_response()
}

// (The error is the response to send, at once.)
#[allow(clippy::result_large_err)]
/// Twilio's Basic auth: the username is the account in the path; any token is accepted (the
/// callbacks are signed with it, so a wrong one fails there, as with the real carrier).
fn twilio_auth(headers: &HeaderMap, account: &str) -> Result<String, Response> {
    let unauthorized = || twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate".into());
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let decoded = value
        .strip_prefix("Basic ")
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(unauthorized)?;
    match decoded.split_once(':') {
        Some((user, token)) if user == account && !token.is_empty() => Ok(token.to_owned()),
        _ => Err(unauthorized()),
    }
}

fn call_resource(call: &SimCall) -> Value {
    let status = call.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let duration = call.duration.lock().unwrap_or_else(|e| e.into_inner()).map(|d| d.to_string());
    json!({"sid": call.id, "account_sid": call.account_sid, "to": call.to, "from": call.from, "status": status,
           "direction": "outbound-api", "duration": duration, "answered_by": null, "api_version": "2010-04-01",
           "uri": format!("/2010-04-01/Accounts/{}/Calls/{}.json", call.account_sid, call.id)})
}

pub(super) async fn create_call(
    State(sb): SandboxState,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = match twilio_auth(&headers, &account) {
        Ok(t) => t,
        Err(r) => return r,
    };
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
    let call = Arc::new(SimCall {
        id: format!("CA{}", random_hex(32)),
        protocol: Protocol::Twilio,
        account_sid: account,
        auth_token: token,
        to,
        from,
        status: Mutex::new("queued".into()),
        answered_at: Mutex::new(None),
        hung_up: AtomicBool::new(false),
        hang_up: Notify::new(),
        media_stop: Notify::new(),
        sequence: AtomicU32::new(0),
        events: form.iter().filter(|(k, _)| k == "StatusCallbackEvent").map(|(_, v)| v.clone()).collect(),
        status_url: field("StatusCallback"),
        amd_url: field("AsyncAmdStatusCallback"),
        twiml_url: field("Url"),
        event_url: None,
        ncco_stream: None,
        machine_detection: field("MachineDetection").is_some(),
        record: field("Record").as_deref() == Some("true"),
        duration: Mutex::new(None),
        created: chrono::Utc::now(),
        wire: sb.new_wire(),
        transfer: Mutex::new(None),
        transferred: Notify::new(),
    });
    let resource = call_resource(&call);
    sb.calls.lock().unwrap_or_else(|e| e.into_inner()).insert(call.id.clone(), call.clone());
    tokio::spawn(sb.clone().play(call));
    (StatusCode::CREATED, Json(resource)).into_response()
}

/// `GET Calls.json`: the account's calls, newest first, filtered by `To` and `From`.
pub(super) async fn list_calls(
    State(sb): SandboxState,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
    let size = query.get("PageSize").and_then(|s| s.parse().ok()).unwrap_or(50usize).clamp(1, 1000);
    let calls: Vec<Value> = newest_calls(&sb, Protocol::Twilio)
        .into_iter()
        .filter(|c| c.account_sid == account)
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

pub(super) async fn fetch_call(
    State(sb): SandboxState,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
    match sb.call(sid_of(&file)) {
        Some(call) => Json(call_resource(&call)).into_response(),
        None => twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found".into()),
    }
}

pub(super) async fn modify_call(
    State(sb): SandboxState,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
    let Some(call) = sb.call(sid_of(&file)) else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found".into());
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let status = call.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
fn redirect(sb: &Arc<Sandbox>, call: &SimCall, twiml: &str) -> Response {
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

pub(super) async fn available(
    Path((account, _country)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
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

pub(super) async fn list_numbers(
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
    // Every number is the sandbox account's.
    let numbers: Vec<Value> =
        query.get("PhoneNumber").map(|n| vec![json!({"sid": number_sid(n), "phone_number": n})]).unwrap_or_default();
    Json(json!({"incoming_phone_numbers": numbers})).into_response()
}

pub(super) async fn buy_number(Path(account): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
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

pub(super) async fn update_number(Path((account, file)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
    Json(json!({"sid": sid_of(&file)})).into_response()
}

pub(super) async fn release_number(Path((account, _file)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if let Err(r) = twilio_auth(&headers, &account) {
        return r;
    }
    StatusCode::NO_CONTENT.into_response()
}
