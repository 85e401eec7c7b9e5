//! The sandbox's Vonage: the Voice API and Numbers API requests the Vonage adapter sends,
//! answered as Vonage answers them.

use super::*;

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
        &DecodingKey::from_secret(&sb.vonage_jwt_secret),
        &validation,
    )
    .map_err(|_| unauthorized())?;
    if claims.claims.application_id != VONAGE_APPLICATION_ID {
        return Err(unauthorized());
    }
    Ok(())
}

pub(super) async fn create_call(State(sb): SandboxState, headers: HeaderMap, Json(body): Json<Value>) -> Response {
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
    let call = Arc::new(SimCall {
        id: uuid::Uuid::new_v4().to_string(),
        protocol: Protocol::Vonage,
        account_sid: VONAGE_API_KEY.into(),
        auth_token: String::new(),
        to,
        from,
        status: Mutex::new("started".into()),
        answered_at: Mutex::new(None),
        hung_up: AtomicBool::new(false),
        hang_up: Notify::new(),
        media_stop: Notify::new(),
        sequence: AtomicU32::new(0),
        events: Vec::new(),
        status_url: None,
        amd_url: None,
        twiml_url: None,
        event_url: body["event_url"][0].as_str().map(str::to_owned),
        ncco_stream,
        machine_detection: body.get("machine_detection").is_some() || body.get("advanced_machine_detection").is_some(),
        record,
        duration: Mutex::new(None),
        created: chrono::Utc::now(),
        wire: sb.new_wire(),
        transfer: Mutex::new(None),
        transferred: Notify::new(),
    });
    let answer = json!({"uuid": call.id, "status": "started", "direction": "outbound", "conversation_uuid": format!("CON-{}", call.id)});
    sb.calls.lock().unwrap_or_else(|e| e.into_inner()).insert(call.id.clone(), call.clone());
    tokio::spawn(sb.clone().play(call));
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `GET /v1/calls`: the application's calls since `date_start`, newest first.
pub(super) async fn list_calls(
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
    let calls: Vec<Value> = newest_calls(&sb, Protocol::Vonage)
        .into_iter()
        .filter(|c| since.is_none_or(|since| c.created >= since))
        .take(size)
        .map(|c| {
            let status = c.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            json!({"uuid": c.id, "status": status, "direction": "outbound",
                   "to": {"type": "phone", "number": c.to.trim_start_matches('+')},
                   "from": {"type": "phone", "number": c.from.trim_start_matches('+')},
                   "start_time": c.created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})
        })
        .collect();
    Json(json!({"count": calls.len(), "page_size": size, "_embedded": {"calls": calls}})).into_response()
}

pub(super) async fn fetch_call(State(sb): SandboxState, Path(uuid): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = vonage_auth(&sb, &headers) {
        return r;
    }
    match sb.call(&uuid) {
        Some(call) => {
            let status = call.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let status = match status.as_str() {
                "in-progress" => "answered",
                "canceled" => "cancelled",
                "no-answer" => "timeout",
                other => other,
            }
            .to_owned();
            let duration = call.duration.lock().unwrap_or_else(|e| e.into_inner()).map(|d| d.to_string());
            Json(json!({"uuid": call.id, "status": status, "duration": duration})).into_response()
        }
        None => vonage_error(StatusCode::NOT_FOUND, "Not Found", "No call with this uuid"),
    }
}

/// A call of the request's own application, or Vonage's refusal.
#[allow(clippy::result_large_err)] // the refusal is the response itself, ready to return
fn authorized_call(sb: &Sandbox, headers: &HeaderMap, uuid: &str) -> Result<Arc<SimCall>, Response> {
    vonage_auth(sb, headers)?;
    sb.call(uuid).ok_or_else(|| vonage_error(StatusCode::NOT_FOUND, "Not Found", "No call with this uuid"))
}

/// `PUT /v1/calls/{uuid}/dtmf`: the keys are played into the call (the person hears them).
pub(super) async fn dtmf(
    State(sb): SandboxState,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let call = match authorized_call(&sb, &headers, &uuid) {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let Some(digits) = body["digits"].as_str().filter(|d| !d.is_empty()) else {
        return vonage_error(StatusCode::BAD_REQUEST, "Bad Request", "digits is required");
    };
    tracing::info!(call = %call.id, digits, "sandbox: keys pressed on the call");
    call.wire.pressed(digits);
    Json(json!({"message": "DTMF sent", "uuid": uuid})).into_response()
}

pub(super) async fn modify_call(
    State(sb): SandboxState,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let call = match authorized_call(&sb, &headers, &uuid) {
        Ok(call) => call,
        Err(refused) => return refused,
    };
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

fn vonage_numbers_auth(sb: &Sandbox, headers: &HeaderMap) -> bool {
    let expected = format!("Basic {}", STANDARD.encode(format!("{VONAGE_API_KEY}:{}", sb.vonage_api_secret)));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

pub(super) async fn search(
    State(sb): SandboxState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !vonage_numbers_auth(&sb, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error-code": "401", "error-code-label": "authentication failed"})),
        )
            .into_response();
    }
    let area = query
        .get("pattern")
        .and_then(|p| p.strip_prefix('1'))
        .filter(|a| a.len() == 3)
        .map(str::to_owned)
        .unwrap_or_else(|| "415".into());
    let msisdn = format!("1{area}555{}", rand::thread_rng().gen_range(2000..10000));
    Json(json!({"count": 1, "numbers": [{"country": "US", "msisdn": msisdn, "type": "landline", "features": ["VOICE"]}]})).into_response()
}

pub(super) async fn numbers_ok(State(sb): SandboxState, headers: HeaderMap) -> Response {
    if !vonage_numbers_auth(&sb, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error-code": "401", "error-code-label": "authentication failed"})),
        )
            .into_response();
    }
    Json(json!({"error-code": "200", "error-code-label": "success"})).into_response()
}
