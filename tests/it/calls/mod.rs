//! Calls against a fake Twilio and a fake Vonage, on SQLite and on Postgres: every row of the
//! state machine's table reached by the callbacks that really produce it, forged callbacks,
//! retries, idempotency, inbound calls, media streams, numbers bought and released, recordings
//! and usage. Each module's tests start from the same world (`world`).

mod dispatch;
mod inbound;
mod media;
mod numbers;
mod recordings;
mod refusals;
mod twilio;
mod vonage;

use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::TelephonyArgs;

use crate::support::{live_telephony, Backend, FakeTwilio, FakeVonage, Options, TestApp, PUBLIC_KEY_PEM};

const OUR_NUMBER: &str = "+14155550100";

/// The server wired to both fakes, with a Twilio number linked through an account connection.
struct World {
    app: TestApp,
    twilio: FakeTwilio,
    vonage: FakeVonage,
    connection: String,
}

async fn world(backend: Backend) -> Option<World> {
    let twilio = FakeTwilio::start().await;
    let vonage = FakeVonage::start(PUBLIC_KEY_PEM).await;
    let telephony =
        TelephonyArgs { carrier_timeout_secs: 1, dispatch_max_attempts: 3, ..live_telephony(&twilio, &vonage) };
    let app = TestApp::spawn_with(backend, Options { telephony, ..Options::default() }).await?;
    twilio.own(OUR_NUMBER);
    let (status, conn) = app
        .post(
            "/v1/account_connections/create",
            json!({"type": "account_connection_twilio",
                   "credentials": {"twilio_account_sid": twilio.state.account_sid, "twilio_auth_token": twilio.state.auth_token}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let connection = conn["id"].as_str().unwrap().to_owned();
    let (status, number) = app
        .post(
            "/v1/numbers/link",
            json!({"phone_number": OUR_NUMBER, "telephony_account_connection": connection, "inbound_agent": "default"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{number}");
    Some(World { app, twilio, vonage, connection })
}

/// Creates a call; the answer must be a 200.
async fn create(w: &World, body: Value) -> Value {
    let (status, call) = w.app.post("/v1/calls/create", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}: {call}");
    call
}

/// The body of a call from our number to `to`, with an inline agent.
fn outbound(to: &str) -> Value {
    json!({"from_number": OUR_NUMBER, "to_number": to, "agent": {"prompt": {"content": "Ask Ajay if his refrigerator is running"}}})
}

/// The call as `GET /v1/calls` shows it.
async fn get(w: &World, id: &str) -> Value {
    let (status, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(status, StatusCode::OK);
    call
}

/// A call's (status, stage, stage_outcome): a row of the state machine's table.
fn row(call: &Value) -> (String, String, Value) {
    (
        call["status"].as_str().unwrap().to_owned(),
        call["stage"].as_str().unwrap().to_owned(),
        call["stage_outcome"].clone(),
    )
}

/// The carrier's id of a call (Twilio's call sid, Vonage's uuid).
fn sid(call: &Value) -> String {
    call["telephony_id"].as_str().expect("a telephony id").to_owned()
}
