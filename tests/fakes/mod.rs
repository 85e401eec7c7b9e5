//! Fake carriers for the tests: real HTTP servers on random ports that speak Twilio's and
//! Vonage's documented protocols, check what the server sends them (auth, form fields or JSON,
//! JWT claims and signatures), answer as the real services do (their error bodies included), and
//! send the server real signed callbacks — in order, out of order, twice, or forged.
#![allow(dead_code)]
// The fakes answer with the carrier's error response itself.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
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
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// What a fake answers instead of success, once.
#[derive(Debug, Clone)]
pub enum Failure {
    /// HTTP 500.
    ServerError,
    /// No answer for this long.
    Hang(Duration),
    /// The carrier's refusal: status, code and message.
    Reject(u16, i64, &'static str),
}

// ---------------------------------------------------------------- Twilio

#[derive(Debug, Clone)]
pub struct TwilioCall {
    pub sid: String,
    pub form: Vec<(String, String)>,
    pub status: String,
    pub created: chrono::DateTime<chrono::Utc>,
}

impl TwilioCall {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.form.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// A request the fake received: method, path, form.
pub type Request = (String, String, Vec<(String, String)>);

#[derive(Default)]
pub struct TwilioState {
    pub account_sid: String,
    pub auth_token: String,
    /// The account's numbers: `+E164` → (sid, voice url).
    pub numbers: Mutex<HashMap<String, (String, Option<String>)>>,
    pub calls: Mutex<Vec<TwilioCall>>,
    /// Every request: method, path, form.
    pub requests: Mutex<Vec<Request>>,
    pub failures: Mutex<VecDeque<Failure>>,
    pub released: Mutex<Vec<String>>,
    /// How long creating a call takes to answer (the call exists from the start, as when a
    /// carrier has acted on a request whose answer is still on its way).
    pub create_latency: Mutex<Duration>,
    /// Create-call requests being answered now, and the most there ever were at once.
    pub creating: AtomicU32,
    pub most_creating: AtomicU32,
    sequence: AtomicU32,
}

pub struct FakeTwilio {
    pub base: String,
    pub state: Arc<TwilioState>,
    client: reqwest::Client,
}

pub fn twilio_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data += &k;
        data += &v;
    }
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn twilio_error(status: u16, code: i64, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status})),
    )
        .into_response()
}

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        let state = Arc::new(TwilioState {
            account_sid: format!("AC{}", uuid::Uuid::new_v4().simple()),
            auth_token: uuid::Uuid::new_v4().simple().to_string(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/2010-04-01/Accounts/{account}/Calls.json", get(t_list_calls).post(t_create_call))
            .route("/2010-04-01/Accounts/{account}/Calls/{file}", get(t_fetch_call).post(t_modify_call))
            .route("/2010-04-01/Accounts/{account}/AvailablePhoneNumbers/{country}/Local.json", get(t_available))
            .route("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json", get(t_numbers).post(t_buy))
            .route(
                "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{file}",
                post(t_update_number).delete(t_release),
            )
            .route("/2010-04-01/Accounts/{account}/Recordings/{file}", get(t_recording))
            .with_state(state.clone());
        FakeTwilio { base: serve(router).await, state, client: reqwest::Client::new() }
    }

    /// A number the account owns.
    pub fn own(&self, e164: &str) {
        let sid = format!("PN{}", uuid::Uuid::new_v4().simple());
        self.state.numbers.lock().unwrap().insert(e164.to_owned(), (sid, None));
    }

    pub fn voice_url(&self, e164: &str) -> Option<String> {
        self.state.numbers.lock().unwrap().get(e164).and_then(|(_, url)| url.clone())
    }

    pub fn fail_next(&self, failure: Failure) {
        self.state.failures.lock().unwrap().push_back(failure);
    }

    pub fn calls(&self) -> Vec<TwilioCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn call(&self, sid: &str) -> TwilioCall {
        self.calls().into_iter().find(|c| c.sid == sid).expect("a call the fake placed")
    }

    pub fn requests(&self, method: &str, path_part: &str) -> Vec<Vec<(String, String)>> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(path_part))
            .map(|(_, _, f)| f.clone())
            .collect()
    }

    fn base_params(&self, call: &TwilioCall, status: &str) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("AccountSid", self.state.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call.sid.as_str()),
            ("CallStatus", status),
            ("Direction", "outbound-api"),
            ("From", call.field("From").unwrap_or_default()),
            ("To", call.field("To").unwrap_or_default()),
            ("CallbackSource", "call-progress-events"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        params.push(("SequenceNumber".into(), self.state.sequence.fetch_add(1, Ordering::SeqCst).to_string()));
        params.push(("Timestamp".into(), chrono::Utc::now().to_rfc2822()));
        params
    }

    /// POSTs a form signed with `token` (the account's, unless the test forges one).
    pub async fn post_signed(
        &self,
        url: &str,
        params: &[(String, String)],
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = self.client.post(url).form(params);
        if let Some(token) = token {
            req = req.header("x-twilio-signature", twilio_signature(token, url, params));
        }
        let res = req.send().await.unwrap();
        (res.status(), res.text().await.unwrap())
    }

    /// A status callback about a call, signed by the account.
    pub async fn status(&self, sid: &str, status: &str, extra: &[(&str, &str)]) -> StatusCode {
        let call = self.call(sid);
        let mut params = self.base_params(&call, status);
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let url = call.field("StatusCallback").expect("a status callback URL").to_owned();
        self.post_signed(&url, &params, Some(&self.state.auth_token.clone())).await.0
    }

    /// The TwiML the server gives an answered call.
    pub async fn twiml(&self, sid: &str) -> (StatusCode, String) {
        let call = self.call(sid);
        let params = self.base_params(&call, "in-progress");
        let url = call.field("Url").expect("a TwiML URL").to_owned();
        self.post_signed(&url, &params, Some(&self.state.auth_token.clone())).await
    }

    pub async fn amd(&self, sid: &str, answered_by: &str) -> StatusCode {
        let call = self.call(sid);
        let mut params = self.base_params(&call, "in-progress");
        params.push(("AnsweredBy".into(), answered_by.into()));
        let url = call.field("AsyncAmdStatusCallback").expect("an AMD callback URL").to_owned();
        self.post_signed(&url, &params, Some(&self.state.auth_token.clone())).await.0
    }

    /// An inbound call to one of the account's numbers, as Twilio posts it to the voice URL.
    pub async fn inbound(&self, to: &str, from: &str, call_sid: &str) -> (StatusCode, String) {
        let url = self.voice_url(to).expect("the number's voice URL points somewhere");
        let params: Vec<(String, String)> = [
            ("AccountSid", self.state.account_sid.as_str()),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call_sid),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
            ("From", from),
            ("To", to),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        self.post_signed(&url, &params, Some(&self.state.auth_token.clone())).await
    }

    /// A status callback for an inbound call, to the number's status callback.
    pub async fn inbound_status(
        &self,
        status_url: &str,
        to: &str,
        from: &str,
        call_sid: &str,
        status: &str,
        duration: Option<&str>,
    ) -> StatusCode {
        let mut params: Vec<(String, String)> = [
            ("AccountSid", self.state.account_sid.as_str()),
            ("CallSid", call_sid),
            ("CallStatus", status),
            ("Direction", "inbound"),
            ("From", from),
            ("To", to),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(d) = duration {
            params.push(("CallDuration".into(), d.into()));
        }
        self.post_signed(status_url, &params, Some(&self.state.auth_token.clone())).await.0
    }
}

fn t_auth(state: &TwilioState, headers: &HeaderMap, account: &str) -> Result<(), Response> {
    let expected = format!("Basic {}", STANDARD.encode(format!("{}:{}", state.account_sid, state.auth_token)));
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) || account != state.account_sid {
        return Err(twilio_error(401, 20003, "Authenticate"));
    }
    Ok(())
}

fn t_record(state: &TwilioState, method: &str, path: String, form: &[(String, String)]) {
    state.requests.lock().unwrap().push((method.into(), path, form.to_vec()));
}

async fn t_failure(state: &TwilioState) -> Option<Response> {
    let failure = state.failures.lock().unwrap().pop_front();
    match failure? {
        Failure::ServerError => Some(twilio_error(500, 20500, "Internal Server Error")),
        Failure::Hang(d) => {
            tokio::time::sleep(d).await;
            Some(twilio_error(500, 20500, "Internal Server Error"))
        }
        Failure::Reject(status, code, message) => Some(twilio_error(status, code, message)),
    }
}

fn e164(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.starts_with('+') && v.len() > 8 && v[1..].bytes().all(|b| b.is_ascii_digit()))
}

async fn t_create_call(
    State(state): State<Arc<TwilioState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    t_record(&state, "POST", format!("/Accounts/{account}/Calls.json"), &form);
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    if headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) != Some("application/x-www-form-urlencoded") {
        return twilio_error(400, 20001, "The body must be form-encoded");
    }
    let call = TwilioCall {
        sid: format!("CA{}", uuid::Uuid::new_v4().simple()),
        form: form.clone(),
        status: "queued".into(),
        created: chrono::Utc::now(),
    };
    if !e164(call.field("To")) {
        return twilio_error(
            400,
            21211,
            &format!("The 'To' number {} is not a valid phone number.", call.field("To").unwrap_or("")),
        );
    }
    if !e164(call.field("From")) {
        return twilio_error(400, 21212, "Invalid From number");
    }
    let mut events = call.fields("StatusCallbackEvent");
    events.sort();
    if call.field("Url").is_none()
        || call.field("StatusCallback").is_none()
        || events != ["answered", "completed", "initiated", "ringing"]
    {
        return twilio_error(400, 21205, "Url, StatusCallback and every StatusCallbackEvent are expected by this test");
    }
    if let Some(r) = t_failure(&state).await {
        return r;
    }
    let answer = t_call_resource(&state, &call);
    state.calls.lock().unwrap().push(call);
    let now = state.creating.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_creating.fetch_max(now, Ordering::SeqCst);
    let latency = *state.create_latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    state.creating.fetch_sub(1, Ordering::SeqCst);
    (StatusCode::CREATED, Json(answer)).into_response()
}

fn t_call_resource(state: &TwilioState, call: &TwilioCall) -> Value {
    json!({"sid": call.sid, "account_sid": state.account_sid, "to": call.field("To"), "from": call.field("From"),
           "status": call.status, "direction": "outbound-api", "api_version": "2010-04-01", "start_time": null,
           "date_created": call.created.to_rfc2822(), "duration": null, "price": null,
           "uri": format!("/2010-04-01/Accounts/{}/Calls/{}.json", state.account_sid, call.sid)})
}

/// `GET Calls.json`: the account's calls, newest first, filtered by `To`, `From` and `Status`.
async fn t_list_calls(
    State(state): State<Arc<TwilioState>>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    t_record(&state, "GET", format!("/Accounts/{account}/Calls.json"), &query.clone().into_iter().collect::<Vec<_>>());
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    if let Some(r) = t_failure(&state).await {
        return r;
    }
    let size = query.get("PageSize").and_then(|s| s.parse().ok()).unwrap_or(50usize);
    let calls = state.calls.lock().unwrap();
    let mut listed: Vec<&TwilioCall> = calls
        .iter()
        .filter(|c| query.get("To").is_none_or(|to| c.field("To") == Some(to.as_str())))
        .filter(|c| query.get("From").is_none_or(|from| c.field("From") == Some(from.as_str())))
        .filter(|c| query.get("Status").is_none_or(|status| c.status == *status))
        .collect();
    listed.sort_by_key(|c| std::cmp::Reverse(c.created));
    let page: Vec<Value> = listed.into_iter().take(size).map(|c| t_call_resource(&state, c)).collect();
    Json(json!({"calls": page, "page": 0, "page_size": size, "next_page_uri": null})).into_response()
}

fn sid_of(file: &str) -> String {
    file.trim_end_matches(".json").trim_end_matches(".mp3").to_owned()
}

async fn t_fetch_call(
    State(state): State<Arc<TwilioState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let sid = sid_of(&file);
    let calls = state.calls.lock().unwrap();
    match calls.iter().find(|c| c.sid == sid) {
        Some(c) => Json(json!({"sid": c.sid, "status": c.status, "duration": if c.status == "completed" { Some("65") } else { None }})).into_response(),
        None => twilio_error(404, 20404, "The requested resource was not found"),
    }
}

async fn t_modify_call(
    State(state): State<Arc<TwilioState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    t_record(&state, "POST", format!("/Calls/{file}"), &form);
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    if let Some(r) = t_failure(&state).await {
        return r;
    }
    let sid = sid_of(&file);
    let mut calls = state.calls.lock().unwrap();
    let Some(call) = calls.iter_mut().find(|c| c.sid == sid) else {
        return twilio_error(404, 20404, "The requested resource was not found");
    };
    let status = form.iter().find(|(k, _)| k == "Status").map(|(_, v)| v.clone());
    if let Some(status) = status {
        call.status = status;
    }
    Json(json!({"sid": call.sid, "status": call.status})).into_response()
}

impl FakeTwilio {
    /// What the fake says a call's status is (the REST resource).
    pub fn set_status(&self, sid: &str, status: &str) {
        let mut calls = self.state.calls.lock().unwrap();
        if let Some(c) = calls.iter_mut().find(|c| c.sid == sid) {
            c.status = status.into();
        }
    }
}

async fn t_available(
    State(state): State<Arc<TwilioState>>,
    Path((account, _country)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let area = q.get("AreaCode").cloned().unwrap_or_else(|| "415".into());
    if area == "999" {
        return Json(json!({"available_phone_numbers": []})).into_response();
    }
    Json(json!({"available_phone_numbers": [{"phone_number": format!("+1{area}5557777"), "friendly_name": "x", "iso_country": "US"}]}))
        .into_response()
}

async fn t_numbers(
    State(state): State<Arc<TwilioState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let numbers = state.numbers.lock().unwrap();
    let found: Vec<Value> = q
        .get("PhoneNumber")
        .and_then(|n| numbers.get(n).map(|(sid, url)| json!({"sid": sid, "phone_number": n, "voice_url": url})))
        .into_iter()
        .collect();
    Json(json!({"incoming_phone_numbers": found})).into_response()
}

async fn t_buy(
    State(state): State<Arc<TwilioState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    t_record(&state, "POST", "/IncomingPhoneNumbers.json".into(), &form.clone().into_iter().collect::<Vec<_>>());
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let number = form.get("PhoneNumber").cloned().unwrap_or_default();
    let sid = format!("PN{}", uuid::Uuid::new_v4().simple());
    state.numbers.lock().unwrap().insert(number.clone(), (sid.clone(), form.get("VoiceUrl").cloned()));
    (
        StatusCode::CREATED,
        Json(json!({"sid": sid, "phone_number": number, "voice_url": form.get("VoiceUrl"), "status": "in-use"})),
    )
        .into_response()
}

async fn t_update_number(
    State(state): State<Arc<TwilioState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    t_record(&state, "POST", format!("/IncomingPhoneNumbers/{file}"), &form);
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let sid = sid_of(&file);
    let voice_url = form.iter().find(|(k, _)| k == "VoiceUrl").map(|(_, v)| v.clone());
    let mut numbers = state.numbers.lock().unwrap();
    match numbers.values_mut().find(|(s, _)| *s == sid) {
        Some(entry) => {
            entry.1 = voice_url;
            Json(json!({"sid": sid})).into_response()
        }
        None => twilio_error(404, 20404, "The requested resource was not found"),
    }
}

async fn t_release(
    State(state): State<Arc<TwilioState>>,
    Path((account, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let sid = sid_of(&file);
    state.released.lock().unwrap().push(sid.clone());
    state.numbers.lock().unwrap().retain(|_, (s, _)| *s != sid);
    StatusCode::NO_CONTENT.into_response()
}

pub const RECORDING_BYTES: &[u8] = b"ID3\x04fake mp3 recording bytes";

async fn t_recording(
    State(state): State<Arc<TwilioState>>,
    Path((account, _file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    ([(header::CONTENT_TYPE, "audio/mpeg")], RECORDING_BYTES).into_response()
}

// ---------------------------------------------------------------- Vonage

#[derive(Debug, Clone)]
pub struct VonageCall {
    pub uuid: String,
    pub body: Value,
    pub hung_up: bool,
    pub created: chrono::DateTime<chrono::Utc>,
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
    if body["action"] != "hangup" {
        return vonage_error(400, "Bad Request", "Unknown action");
    }
    call.hung_up = true;
    StatusCode::NO_CONTENT.into_response()
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
