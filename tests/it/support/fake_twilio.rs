//! A fake Twilio: a real HTTP server on a random port that speaks Twilio's documented REST API
//! (calls, numbers, recordings), checks what the server sends it (Basic auth, form fields),
//! answers as Twilio does (its error bodies included), and sends the server real signed callbacks
//! (`X-Twilio-Signature`, computed here independently of the server's code) — in order, out of
//! order, twice, or forged.

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

use super::fake_carrier::{serve, Failure, RECORDING_BYTES};

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

/// A conference the fake holds: created by its first participant.
#[derive(Debug, Clone, Default)]
pub struct Conference {
    pub sid: String,
    /// Participants added through the API, in order: their call's sid.
    pub added: Vec<String>,
    /// Calls in the conference: those added, and those that joined by TwiML (once the test,
    /// playing Twilio, says so with [`FakeTwilio::conference_event`]).
    pub joined: Vec<String>,
    /// Participants on hold.
    pub on_hold: Vec<String>,
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
    /// Conferences by friendly name: their sid, and each participant's call and hold.
    pub conferences: Mutex<HashMap<String, Conference>>,
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
            .route("/2010-04-01/Accounts/{account}/Conferences/{conference}/Participants.json", post(t_add_participant))
            .route(
                "/2010-04-01/Accounts/{account}/Conferences/{conference}/Participants/{file}",
                post(t_update_participant),
            )
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

    /// What the fake says a call's status is (the REST resource).
    pub fn set_status(&self, sid: &str, status: &str) {
        let mut calls = self.state.calls.lock().unwrap();
        if let Some(c) = calls.iter_mut().find(|c| c.sid == sid) {
            c.status = status.into();
        }
    }

    /// The conference named `name`, once its first participant was added.
    pub fn conference(&self, name: &str) -> Option<Conference> {
        self.state.conferences.lock().unwrap().get(name).cloned()
    }

    /// A conference's `statusCallback`, about a participant's call, signed by the account.
    pub async fn conference_event(&self, url: &str, conference_sid: &str, call_sid: &str, event: &str) -> StatusCode {
        if event == "participant-join" {
            let mut conferences = self.state.conferences.lock().unwrap();
            if let Some(c) = conferences.values_mut().find(|c| c.sid == conference_sid) {
                c.joined.push(call_sid.to_owned());
            }
        }
        let params: Vec<(String, String)> = [
            ("AccountSid", self.state.account_sid.as_str()),
            ("ConferenceSid", conference_sid),
            ("FriendlyName", "conference"),
            ("CallSid", call_sid),
            ("StatusCallbackEvent", event),
            ("Timestamp", &chrono::Utc::now().to_rfc2822()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        self.post_signed(url, &params, Some(&self.state.auth_token.clone())).await.0
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

    /// Twilio runs the `<Redirect>` that follows `<Connect>` in `twiml` (the stream ended without
    /// the call ending): a signed POST to its URL; the TwiML it answers with.
    pub async fn redirect(&self, sid: &str, twiml: &str) -> (StatusCode, String) {
        let url = twiml.split("<Redirect").nth(1).expect("a <Redirect>").split('>').nth(1).unwrap();
        let url = url.split('<').next().unwrap().replace("&amp;", "&");
        let params = self.base_params(&self.call(sid), "in-progress");
        self.post_signed(&url, &params, Some(&self.state.auth_token.clone())).await
    }

    /// The TwiML the server last pointed a call at through the REST API (its `Twiml` field), if any.
    pub fn redirected_to(&self, sid: &str) -> Option<String> {
        let posts = self.requests("POST", &format!("/Calls/{sid}"));
        posts.iter().rev().find_map(|form| form.iter().find(|(k, _)| k == "Twiml").map(|(_, v)| v.clone()))
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

    /// Twilio's own record of an inbound call (which its REST API then finds, to redirect it).
    pub fn track_inbound(&self, sid: &str, from: &str, to: &str) {
        let form = vec![("From".to_owned(), from.to_owned()), ("To".to_owned(), to.to_owned())];
        let call = TwilioCall { sid: sid.into(), form, status: "in-progress".into(), created: chrono::Utc::now() };
        self.state.calls.lock().unwrap().push(call);
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

// A refusal is Twilio's error response itself, ready to return.
#[allow(clippy::result_large_err)]
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
        Failure::Late(d) => {
            tokio::time::sleep(d).await;
            None
        }
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

/// `POST Conferences/{name or sid}/Participants.json`: dials `To` from `From` into the conference,
/// creating it (by its friendly name) with its first participant, as Twilio documents.
async fn t_add_participant(
    State(state): State<Arc<TwilioState>>,
    Path((account, conference)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    t_record(&state, "POST", format!("/Conferences/{conference}/Participants.json"), &form);
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let call = TwilioCall {
        sid: format!("CA{}", uuid::Uuid::new_v4().simple()),
        form: form.clone(),
        status: "queued".into(),
        created: chrono::Utc::now(),
    };
    if !e164(call.field("To")) || !e164(call.field("From")) {
        return twilio_error(400, 21211, "From and To must be phone numbers");
    }
    if call.field("To") == call.field("From") {
        return twilio_error(400, 21266, "'To' and 'From' cannot be the same");
    }
    if let Some(r) = t_failure(&state).await {
        return r;
    }
    let conference_sid = {
        let mut conferences = state.conferences.lock().unwrap();
        let entry = conferences.entry(conference.clone()).or_insert_with(|| Conference {
            sid: format!("CF{}", uuid::Uuid::new_v4().simple()),
            ..Conference::default()
        });
        entry.added.push(call.sid.clone());
        entry.joined.push(call.sid.clone());
        entry.sid.clone()
    };
    let answer = json!({"account_sid": state.account_sid, "call_sid": call.sid, "conference_sid": conference_sid,
                        "hold": false, "muted": false, "status": "queued", "label": null,
                        "start_conference_on_enter": call.field("StartConferenceOnEnter") == Some("true"),
                        "end_conference_on_exit": call.field("EndConferenceOnExit") == Some("true")});
    state.calls.lock().unwrap().push(call);
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// `POST Conferences/{sid}/Participants/{call}.json`: `Hold` puts a participant on hold or takes
/// them off it. Only a conference's sid names it here, and only its participants are found.
async fn t_update_participant(
    State(state): State<Arc<TwilioState>>,
    Path((account, conference, file)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    t_record(&state, "POST", format!("/Conferences/{conference}/Participants/{file}"), &form);
    if let Err(r) = t_auth(&state, &headers, &account) {
        return r;
    }
    let call = sid_of(&file);
    let mut conferences = state.conferences.lock().unwrap();
    let Some(found) = conferences.values_mut().find(|c| c.sid == conference) else {
        return twilio_error(404, 20404, "The requested resource was not found");
    };
    if !found.joined.contains(&call) {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    let hold = form.iter().find(|(k, _)| k == "Hold").map(|(_, v)| v.as_str());
    match hold {
        Some("true") if !found.on_hold.contains(&call) => found.on_hold.push(call.clone()),
        Some("false") => found.on_hold.retain(|c| *c != call),
        _ => {}
    }
    let on_hold = found.on_hold.contains(&call);
    Json(json!({"call_sid": call, "conference_sid": conference, "hold": on_hold})).into_response()
}
