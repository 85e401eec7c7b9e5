//! A fake Vonage: a real HTTP server on a random port that speaks Vonage's documented Voice API
//! (application JWTs checked against the application's public key, NCCOs) and Numbers API
//! (Basic auth, forms), answers as Vonage does (its error bodies included), and sends the server
//! events signed as Vonage signs them (an HS256 JWT with the body's hash).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::fake_carrier::{serve, Failure, RECORDING_BYTES};

#[derive(Debug, Clone)]
pub struct VonageCall {
    pub uuid: String,
    pub body: Value,
    pub hung_up: bool,
    pub created: chrono::DateTime<chrono::Utc>,
    /// The NCCOs the call was transferred to, in order.
    pub transfers: Vec<Value>,
    /// The keys pressed through the DTMF API, in order.
    pub dtmf: Vec<String>,
}

#[derive(Default)]
pub struct VonageState {
    pub application_id: String,
    pub public_key_pem: String,
    pub signature_secret: String,
    pub api_key: String,
    pub api_secret: String,
    pub calls: Mutex<Vec<VonageCall>>,
    pub jtis: Mutex<Vec<String>>,
    pub numbers: Mutex<Vec<(String, HashMap<String, String>)>>,
    pub failures: Mutex<VecDeque<Failure>>,
    /// How long creating a call takes to answer (the call exists from the start).
    pub create_latency: Mutex<Duration>,
}

pub struct FakeVonage {
    pub base: String,
    pub state: Arc<VonageState>,
    client: reqwest::Client,
}

fn vonage_error(status: u16, title: &str, detail: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"type": "https://developer.nexmo.com/api-errors#bad-request", "title": title, "detail": detail, "instance": uuid::Uuid::new_v4()})),
    )
        .into_response()
}

impl FakeVonage {
    pub async fn start(public_key_pem: &str) -> FakeVonage {
        let state = Arc::new(VonageState {
            application_id: uuid::Uuid::new_v4().to_string(),
            public_key_pem: public_key_pem.to_owned(),
            signature_secret: uuid::Uuid::new_v4().simple().to_string(),
            api_key: "abcd1234".into(),
            api_secret: uuid::Uuid::new_v4().simple().to_string(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/v1/calls", get(v_list_calls).post(v_create_call))
            .route("/v1/calls/{uuid}", get(v_fetch_call).put(v_modify_call))
            .route("/v1/calls/{uuid}/dtmf", axum::routing::put(v_dtmf))
            .route("/number/search", get(v_search))
            .route("/number/buy", post(v_number_op))
            .route("/number/update", post(v_number_op))
            .route("/number/cancel", post(v_number_op))
            .route("/recordings/{id}", get(v_recording))
            .with_state(state.clone());
        FakeVonage { base: serve(router).await, state, client: reqwest::Client::new() }
    }

    pub fn calls(&self) -> Vec<VonageCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn fail_next(&self, failure: Failure) {
        self.state.failures.lock().unwrap().push_back(failure);
    }

    /// A signed event about a call, to its event URL (or `url`).
    pub async fn event(&self, uuid: &str, fields: Value, secret: Option<&str>) -> StatusCode {
        let call = self.calls().into_iter().find(|c| c.uuid == uuid).expect("a call the fake placed");
        let url = call.body["event_url"][0].as_str().unwrap().to_owned();
        self.post_event(&url, uuid, fields, secret).await
    }

    pub async fn post_event(&self, url: &str, uuid: &str, mut fields: Value, secret: Option<&str>) -> StatusCode {
        fields["uuid"] = json!(uuid);
        fields["conversation_uuid"] = json!(format!("CON-{uuid}"));
        fields["timestamp"] = json!("2026-01-01T12:00:00.000Z");
        let body = serde_json::to_vec(&fields).unwrap();
        let mut req = self.client.post(url).header(header::CONTENT_TYPE, "application/json");
        if let Some(secret) = secret {
            let claims = json!({"iat": chrono::Utc::now().timestamp(), "jti": uuid::Uuid::new_v4(), "iss": "Vonage",
                                "payload_hash": hex::encode(Sha256::digest(&body)), "api_key": self.state.api_key});
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap();
            req = req.bearer_auth(token);
        }
        req.body(body).send().await.unwrap().status()
    }
}

#[derive(serde::Deserialize)]
struct AppClaims {
    application_id: String,
    jti: String,
    iat: i64,
    exp: i64,
}

// A refusal is Vonage's error response itself, ready to return.
#[allow(clippy::result_large_err)]
fn v_auth(state: &VonageState, headers: &HeaderMap) -> Result<(), Response> {
    let unauthorized = || vonage_error(401, "Unauthorized", "You did not provide correct credentials.");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(state.public_key_pem.as_bytes()).unwrap();
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    let data = jsonwebtoken::decode::<AppClaims>(token, &key, &validation).map_err(|_| unauthorized())?;
    let c = data.claims;
    let mut jtis = state.jtis.lock().unwrap();
    if c.application_id != state.application_id || c.jti.is_empty() || jtis.contains(&c.jti) || c.exp <= c.iat {
        return Err(unauthorized());
    }
    jtis.push(c.jti);
    Ok(())
}

async fn v_failure(state: &VonageState) -> Option<Response> {
    let failure = state.failures.lock().unwrap().pop_front();
    match failure? {
        Failure::ServerError => Some(vonage_error(500, "Internal Server Error", "Something went wrong")),
        Failure::Hang(d) => {
            tokio::time::sleep(d).await;
            Some(vonage_error(500, "Internal Server Error", "Something went wrong"))
        }
        Failure::Reject(status, _, message) => Some(vonage_error(status, "Bad Request", message)),
        Failure::Late(d) => {
            tokio::time::sleep(d).await;
            None
        }
    }
}

async fn v_create_call(State(state): State<Arc<VonageState>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(r) = v_auth(&state, &headers) {
        return r;
    }
    let digits = |v: &Value| v.as_str().is_some_and(|s| s.len() >= 7 && s.bytes().all(|b| b.is_ascii_digit()));
    if body["to"][0]["type"] != "phone" || !digits(&body["to"][0]["number"]) || !digits(&body["from"]["number"]) {
        return vonage_error(400, "Bad Request", "Invalid to or from number");
    }
    let endpoint = body["ncco"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["action"] == "connect"))
        .map(|a| a["endpoint"][0].clone());
    if endpoint
        .as_ref()
        .is_none_or(|e| e["type"] != "websocket" || !e["uri"].as_str().unwrap_or_default().starts_with("ws"))
    {
        return vonage_error(400, "Bad Request", "The NCCO must connect a websocket");
    }
    if body["event_url"][0].as_str().is_none() {
        return vonage_error(400, "Bad Request", "event_url is required");
    }
    if let Some(r) = v_failure(&state).await {
        return r;
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    state.calls.lock().unwrap().push(VonageCall {
        uuid: uuid.clone(),
        body,
        hung_up: false,
        created: chrono::Utc::now(),
        transfers: Vec::new(),
        dtmf: Vec::new(),
    });
    let latency = *state.create_latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    (StatusCode::CREATED, Json(json!({"uuid": uuid, "status": "started", "direction": "outbound", "conversation_uuid": format!("CON-{uuid}")}))).into_response()
}

/// `GET /v1/calls`: the application's calls since `date_start`, in the order asked for.
async fn v_list_calls(
    State(state): State<Arc<VonageState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = v_auth(&state, &headers) {
        return r;
    }
    let Some(since) = query.get("date_start").map(|d| chrono::DateTime::parse_from_rfc3339(d)) else {
        return vonage_error(400, "Bad Request", "date_start is expected by this test");
    };
    let Ok(since) = since else {
        return vonage_error(400, "Bad Request", "date_start must be ISO 8601");
    };
    let calls = state.calls.lock().unwrap();
    let mut listed: Vec<&VonageCall> = calls.iter().filter(|c| c.created >= since).collect();
    listed.sort_by_key(|c| c.created);
    if query.get("order").map(String::as_str) == Some("desc") {
        listed.reverse();
    }
    let size = query.get("page_size").and_then(|s| s.parse().ok()).unwrap_or(10usize).min(100);
    let page: Vec<Value> = listed
        .into_iter()
        .take(size)
        .map(|c| {
            json!({"uuid": c.uuid, "status": if c.hung_up { "completed" } else { "started" }, "direction": "outbound",
                   "to": c.body["to"][0], "from": c.body["from"],
                   "start_time": c.created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})
        })
        .collect();
    Json(json!({"count": page.len(), "page_size": size, "record_index": 0, "_embedded": {"calls": page}}))
        .into_response()
}

async fn v_fetch_call(State(state): State<Arc<VonageState>>, Path(uuid): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = v_auth(&state, &headers) {
        return r;
    }
    let calls = state.calls.lock().unwrap();
    match calls.iter().find(|c| c.uuid == uuid) {
        Some(c) => {
            Json(json!({"uuid": c.uuid, "status": if c.hung_up { "completed" } else { "answered" }, "duration": "30"}))
                .into_response()
        }
        None => vonage_error(404, "Not Found", "No such call"),
    }
}

async fn v_modify_call(
    State(state): State<Arc<VonageState>>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = v_auth(&state, &headers) {
        return r;
    }
    let mut calls = state.calls.lock().unwrap();
    let Some(call) = calls.iter_mut().find(|c| c.uuid == uuid) else {
        return vonage_error(404, "Not Found", "No such call");
    };
    match body["action"].as_str() {
        Some("hangup") => call.hung_up = true,
        Some("transfer") if body["destination"]["type"] == "ncco" && body["destination"]["ncco"].is_array() => {
            call.transfers.push(body["destination"]["ncco"].clone());
        }
        _ => return vonage_error(400, "Bad Request", "Unknown action"),
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `PUT /v1/calls/{uuid}/dtmf` `{"digits"}`, as Vonage's Voice API takes it.
async fn v_dtmf(
    State(state): State<Arc<VonageState>>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = v_auth(&state, &headers) {
        return r;
    }
    let mut calls = state.calls.lock().unwrap();
    let Some(call) = calls.iter_mut().find(|c| c.uuid == uuid) else {
        return vonage_error(404, "Not Found", "No such call");
    };
    let Some(digits) = body["digits"].as_str() else {
        return vonage_error(400, "Bad Request", "digits is required");
    };
    call.dtmf.push(digits.to_owned());
    Json(json!({"message": "DTMF sent", "uuid": uuid})).into_response()
}

fn v_numbers_auth(state: &VonageState, headers: &HeaderMap) -> bool {
    let expected = format!("Basic {}", STANDARD.encode(format!("{}:{}", state.api_key, state.api_secret)));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

async fn v_search(
    State(state): State<Arc<VonageState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !v_numbers_auth(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error-code": "401", "error-code-label": "authentication failed"})),
        )
            .into_response();
    }
    let pattern = q.get("pattern").cloned().unwrap_or_else(|| "1415".into());
    Json(json!({"count": 1, "numbers": [{"country": "US", "msisdn": format!("{pattern}5558888"), "type": "landline", "features": ["VOICE"]}]})).into_response()
}

async fn v_number_op(
    State(state): State<Arc<VonageState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !v_numbers_auth(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error-code": "401", "error-code-label": "authentication failed"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    state.numbers.lock().unwrap().push((uri.path().to_owned(), form));
    Json(json!({"error-code": "200", "error-code-label": "success"})).into_response()
}

async fn v_recording(State(state): State<Arc<VonageState>>, headers: HeaderMap) -> Response {
    if let Err(r) = v_auth(&state, &headers) {
        return r;
    }
    ([(header::CONTENT_TYPE, "audio/mpeg")], RECORDING_BYTES).into_response()
}
