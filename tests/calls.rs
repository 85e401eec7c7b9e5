//! Calls against a fake Twilio and a fake Vonage, on SQLite and on Postgres: every row of the
//! state machine's table reached by the callbacks that really produce it, forged callbacks,
//! retries, idempotency, inbound calls, media streams, numbers bought and released, recordings
//! and usage.

mod common;
mod fakes;

use std::time::Duration;

use common::{error_locs, Backend, Options, TestApp};
use fakes::{Failure, FakeTwilio, FakeVonage};
use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::{CarrierMode, TelephonyArgs};

const PRIVATE_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt-test-private.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/jwt-test-public.pem");
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
    let vonage = FakeVonage::start(PUBLIC_KEY).await;
    let telephony = TelephonyArgs {
        carrier_mode: CarrierMode::Live,
        twilio_api_base_url: Some(twilio.base.clone()),
        vonage_application_id: Some(vonage.state.application_id.clone()),
        vonage_private_key_path: Some(PRIVATE_KEY.into()),
        vonage_api_key: Some(vonage.state.api_key.clone()),
        vonage_api_secret: Some(vonage.state.api_secret.clone()),
        vonage_signature_secret: Some(vonage.state.signature_secret.clone()),
        vonage_api_base_url: Some(vonage.base.clone()),
        vonage_numbers_base_url: Some(vonage.base.clone()),
        carrier_timeout_secs: 1,
        dispatch_max_attempts: 3,
        ..TelephonyArgs::default()
    };
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

on_both_backends!(world =>
    a_call_is_placed_with_what_twilio_needs,
    every_row_of_the_table_through_twilio_callbacks,
    machine_detection_hangs_up_when_asked,
    calls_end_hangs_up_or_cancels,
    callbacks_out_of_order_and_twice_change_nothing,
    forged_and_garbage_callbacks_change_nothing,
    carrier_refusals_and_outages,
    idempotency_keys_never_dial_twice,
    bad_call_requests_are_refused,
    inbound_calls_are_answered_by_the_numbers_agent,
    media_streams_bind_to_their_call,
    numbers_are_bought_linked_and_released,
    recordings_and_hipaa,
    usage_counts_finished_calls_and_limits_them,
    vonage_calls_through_their_events,
    stale_calls_are_reconciled_with_the_carrier,
    vonage_inbound_calls,
    the_twilio_adapter_redirects_calls,
    a_dispatch_that_timed_out_is_found_not_dialled_again,
);

/// The carrier takes the call but its answer comes after our timeout: the retry finds the call
/// among the carrier's own and takes it, instead of dialling a second one. Twilio and Vonage.
async fn a_dispatch_that_timed_out_is_found_not_dialled_again(w: World) {
    *w.twilio.state.create_latency.lock().unwrap() = Duration::from_millis(1500);
    let (status, call) = w.app.post("/v1/calls/create", outbound("16505550911")).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["status"], "not_started", "the first attempt timed out: {call}");
    *w.twilio.state.create_latency.lock().unwrap() = Duration::ZERO;
    assert_eq!(w.app.drain_jobs(Duration::from_secs(120)).await, 1);
    let placed = w.twilio.calls();
    assert_eq!(placed.len(), 1, "dialled once");
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(after["telephony_id"], json!(placed[0].sid));
    assert_eq!(after["status"], "in_progress");
    assert_eq!(w.twilio.requests("GET", "/Calls.json").len(), 1, "the retry looked before dialling");

    let (_, number) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    *w.vonage.state.create_latency.lock().unwrap() = Duration::from_millis(1500);
    let mut body = outbound("16505550912");
    body["from_number"] = number["number"].clone();
    let (status, call) = w.app.post("/v1/calls/create", body).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["status"], "not_started");
    *w.vonage.state.create_latency.lock().unwrap() = Duration::ZERO;
    assert_eq!(w.app.drain_jobs(Duration::from_secs(120)).await, 1);
    let placed = w.vonage.calls();
    assert_eq!(placed.len(), 1, "dialled once");
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(after["telephony_id"], json!(placed[0].uuid));
    assert_eq!(after["status"], "in_progress");
}

async fn create(w: &World, body: Value) -> Value {
    let (status, call) = w.app.post("/v1/calls/create", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}: {call}");
    call
}

fn outbound(to: &str) -> Value {
    json!({"from_number": OUR_NUMBER, "to_number": to, "agent": {"prompt": {"content": "Ask Ajay if his refrigerator is running"}}})
}

async fn get(w: &World, id: &str) -> Value {
    let (status, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(status, StatusCode::OK);
    call
}

fn row(call: &Value) -> (String, String, Value) {
    (
        call["status"].as_str().unwrap().to_owned(),
        call["stage"].as_str().unwrap().to_owned(),
        call["stage_outcome"].clone(),
    )
}

fn sid(call: &Value) -> String {
    call["telephony_id"].as_str().expect("a telephony id").to_owned()
}

async fn a_call_is_placed_with_what_twilio_needs(w: World) {
    let call = create(
        &w,
        json!({"from_number": "1 (415) 555-0100", "to_number": "+1 650 555 1234",
               "agent": {"prompt": {"content": "hi"}, "webhook": {"subscriptions": ["event_human_detection"], "url": "https://h.example"}},
               "context": {"name": "Ajay"}, "telephony_params": {"Timeout": "30", "To": "+19999999999"}}),
    )
    .await;
    assert_eq!(row(&call), ("in_progress".into(), "created".into(), Value::Null));
    assert!(call["start_time"].as_str().is_some(), "start_time is set once the carrier accepts");
    assert_eq!(call["to_number"], "16505551234");
    assert_eq!(call["from_number"], "14155550100");
    assert_eq!(call["agent_phone_number"], "14155550100");
    assert_eq!(call["telephony_provider"], "twilio");
    assert_eq!(call["on_no_human_answer"], "continue");
    assert_eq!(call["hipaa_compliant"], false);
    assert_eq!(call["context"], json!({"name": "Ajay"}));
    assert_eq!(call["agent"]["voice"]["type"], "voice_vocode", "an inline agent without a voice gets the default one");
    assert_eq!(call["telephony_account_connection"]["id"], json!(w.connection));
    assert_eq!(call["telephony_account_connection"]["credentials"]["twilio_auth_token"].as_str().unwrap().len(), 12);
    assert_eq!(call["telephony_metadata"]["type"], "telephony_metadata_twilio");
    assert_eq!(call["telephony_metadata"]["call_sid"], call["telephony_id"]);

    let placed = w.twilio.call(&sid(&call));
    assert_eq!(placed.field("To"), Some("+16505551234"), "telephony_params cannot redirect the call");
    assert_eq!(placed.field("From"), Some("+14155550100"));
    assert_eq!(placed.field("Timeout"), Some("30"), "telephony_params reach the carrier");
    let id = call["id"].as_str().unwrap();
    assert_eq!(placed.field("StatusCallback").unwrap(), format!("{}/telephony/twilio/status/{id}", w.app.base));
    assert_eq!(placed.field("Url").unwrap(), format!("{}/telephony/twilio/twiml/{id}", w.app.base));
    assert_eq!(placed.field("MachineDetection"), Some("Enable"), "the agent's webhook wants human detection");
    assert_eq!(placed.field("AsyncAmd"), Some("true"));
    assert_eq!(placed.field("Record"), Some("true"));

    // Without a webhook that asks and with on_no_human_answer continue: no detection.
    let plain = create(&w, outbound("16505551235")).await;
    assert_eq!(w.twilio.call(&sid(&plain)).field("MachineDetection"), None);
    let (_, page) = w.app.get("/v1/calls/list?sort_column=start_time&sort_desc=true").await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"][0]["id"], plain["id"]);
    assert!(page["items"][0]["start_time"].is_f64(), "NormalizedCall times are epoch seconds");
    assert_eq!(page["items"][0]["agent"], plain["agent"]["id"]);
    assert_eq!(page["items"][0]["telephony_account_connection"], json!(w.connection));
}

async fn every_row_of_the_table_through_twilio_callbacks(w: World) {
    // (callbacks in order, expected (status, stage, stage_outcome))
    type Callbacks<'a> = Vec<(&'a str, Vec<(&'a str, &'a str)>)>;
    let rows: Vec<(Callbacks, (&str, &str, Value))> = vec![
        (vec![("initiated", vec![]), ("ringing", vec![])], ("in_progress", "created", Value::Null)),
        (vec![("ringing", vec![]), ("in-progress", vec![])], ("in_progress", "picked_up", Value::Null)),
        (
            vec![("ringing", vec![]), ("in-progress", vec![]), ("completed", vec![("CallDuration", "42")])],
            ("ended", "picked_up", json!("human_disconnected")),
        ),
        (vec![("ringing", vec![]), ("busy", vec![])], ("ended", "created", json!("human_unanswered"))),
        (vec![("ringing", vec![]), ("no-answer", vec![])], ("ended", "created", json!("human_unanswered"))),
        (vec![("ringing", vec![]), ("canceled", vec![])], ("ended", "created", json!("human_unanswered"))),
        (vec![("failed", vec![])], ("ended", "created", json!("call_did_not_connect"))),
    ];
    for (i, (callbacks, expected)) in rows.into_iter().enumerate() {
        let call = create(&w, outbound(&format!("1650555{:04}", 2000 + i))).await;
        let sid = sid(&call);
        for (status, extra) in &callbacks {
            assert_eq!(w.twilio.status(&sid, status, extra).await, StatusCode::NO_CONTENT, "{status}");
        }
        let after = get(&w, call["id"].as_str().unwrap()).await;
        assert_eq!(row(&after), (expected.0.into(), expected.1.into(), expected.2.clone()), "{callbacks:?}");
        assert_eq!(after["telephony_metadata"]["call_status"], json!(callbacks.last().unwrap().0));
        if expected.0 == "ended" {
            assert!(after["end_time"].as_str().is_some());
        }
    }
}

async fn machine_detection_hangs_up_when_asked(w: World) {
    let mut body = outbound("16505553001");
    body["on_no_human_answer"] = json!("hangup");
    let call = create(&w, body).await;
    let sid = sid(&call);
    assert_eq!(w.twilio.call(&sid).field("MachineDetection"), Some("Enable"));
    w.twilio.status(&sid, "in-progress", &[]).await;
    assert_eq!(w.twilio.amd(&sid, "machine_start").await, StatusCode::NO_CONTENT);
    // The server hangs the call up at once: Status=completed reaches the carrier.
    let hangups = common::eventually(Duration::from_secs(5), || async {
        let found = w.twilio.requests("POST", &format!("/Calls/{sid}"));
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert!(hangups[0].contains(&("Status".into(), "completed".into())));
    w.twilio.status(&sid, "completed", &[("CallDuration", "4")]).await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("ended".into(), "picked_up".into(), json!("human_unanswered")));
    assert_eq!(after["human_detection_result"], "no_human");

    // A person answering keeps the call going.
    let mut body = outbound("16505553002");
    body["on_no_human_answer"] = json!("hangup");
    let call = create(&w, body).await;
    let sid = self::sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.amd(&sid, "human").await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(
        (after["human_detection_result"].clone(), after["status"].clone()),
        (json!("human"), json!("in_progress"))
    );
    assert!(w.twilio.requests("POST", &format!("/Calls/{sid}")).is_empty());
}

async fn calls_end_hangs_up_or_cancels(w: World) {
    // Answered: hung up with Status=completed, ending as bot_disconnected.
    let call = create(&w, outbound("16505554001")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    w.twilio.status(&sid(&call), "in-progress", &[]).await;
    let (status, ended) = w.app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row(&ended), ("ended".into(), "picked_up".into(), json!("bot_disconnected")));
    let modify = w.twilio.requests("POST", &format!("/Calls/{}", sid(&call)));
    assert_eq!(modify.len(), 1);
    assert!(modify[0].contains(&("Status".into(), "completed".into())));
    // Twilio's own completed callback afterwards changes nothing; ending again returns it unchanged.
    w.twilio.status(&sid(&call), "completed", &[("CallDuration", "12")]).await;
    let (status, again) = w.app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, get(&w, &id).await);
    assert_eq!(row(&again), ("ended".into(), "picked_up".into(), json!("bot_disconnected")));
    assert_eq!(w.twilio.requests("POST", &format!("/Calls/{}", sid(&call))).len(), 1, "no second hang-up");

    // Ringing: canceled.
    let call = create(&w, outbound("16505554002")).await;
    w.twilio.status(&sid(&call), "ringing", &[]).await;
    let (_, ended) = w.app.post(&format!("/v1/calls/end?id={}", call["id"].as_str().unwrap()), json!(null)).await;
    assert_eq!(row(&ended), ("ended".into(), "created".into(), json!("human_unanswered")));
    assert!(
        w.twilio.requests("POST", &format!("/Calls/{}", sid(&call)))[0].contains(&("Status".into(), "canceled".into()))
    );

    // Not placed yet (the carrier is down): ended here, and never placed afterwards.
    w.twilio.fail_next(Failure::ServerError);
    let call = create(&w, outbound("16505554003")).await;
    assert_eq!(row(&call), ("not_started".into(), "created".into(), Value::Null));
    let (_, ended) = w.app.post(&format!("/v1/calls/end?id={}", call["id"].as_str().unwrap()), json!(null)).await;
    assert_eq!(row(&ended), ("ended".into(), "created".into(), json!("call_did_not_connect")));
    let placed_before = w.twilio.calls().len();
    w.app.drain_jobs(Duration::from_secs(3600)).await;
    assert_eq!(w.twilio.calls().len(), placed_before, "the pending dispatch was dropped");

    let (status, _) = w.app.post(&format!("/v1/calls/end?id={}", uuid::Uuid::new_v4()), json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn callbacks_out_of_order_and_twice_change_nothing(w: World) {
    let call = create(&w, outbound("16505555001")).await;
    let sid = sid(&call);
    let id = call["id"].as_str().unwrap().to_owned();
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.status(&sid, "completed", &[("CallDuration", "30")]).await;
    let done = get(&w, &id).await;
    assert_eq!(row(&done), ("ended".into(), "picked_up".into(), json!("human_disconnected")));
    for (late, extra) in
        [("ringing", vec![]), ("in-progress", vec![]), ("completed", vec![("CallDuration", "99")]), ("busy", vec![])]
    {
        assert_eq!(w.twilio.status(&sid, late, &extra).await, StatusCode::NO_CONTENT);
        let after = get(&w, &id).await;
        assert_eq!(row(&after), row(&done), "{late} after the end");
        assert_eq!(after["end_time"], done["end_time"]);
    }
    // `completed` (with a duration) before `in-progress`: the pick-up still counts.
    let call = create(&w, outbound("16505555002")).await;
    let sid = self::sid(&call);
    w.twilio.status(&sid, "completed", &[("CallDuration", "8")]).await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    assert_eq!(
        row(&get(&w, call["id"].as_str().unwrap()).await),
        ("ended".into(), "picked_up".into(), json!("human_disconnected"))
    );
    // The same callback twice.
    let call = create(&w, outbound("16505555003")).await;
    let sid = self::sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    let once = get(&w, call["id"].as_str().unwrap()).await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    assert_eq!(get(&w, call["id"].as_str().unwrap()).await, once);
}

async fn forged_and_garbage_callbacks_change_nothing(w: World) {
    let call = create(&w, outbound("16505556001")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let sid = sid(&call);
    let placed = w.twilio.call(&sid);
    let url = placed.field("StatusCallback").unwrap().to_owned();
    let params = |status: &str, account: &str| -> Vec<(String, String)> {
        vec![
            ("AccountSid".into(), account.into()),
            ("CallSid".into(), sid.clone()),
            ("CallStatus".into(), status.into()),
        ]
    };
    let account = w.twilio.state.account_sid.clone();
    let token = w.twilio.state.auth_token.clone();
    let before = get(&w, &id).await;
    for (params, token, expected) in [
        (params("completed", &account), Some("not-the-token"), StatusCode::FORBIDDEN),
        (params("completed", &account), None, StatusCode::FORBIDDEN),
        (params("completed", "ACsomeoneelse"), Some(token.as_str()), StatusCode::FORBIDDEN),
        (params("exploded", &account), Some(token.as_str()), StatusCode::BAD_REQUEST),
    ] {
        let (status, body) = w.twilio.post_signed(&url, &params, token).await;
        assert_eq!(status, expected, "{params:?}: {body}");
    }
    // Signed for another URL (another call's), replayed here.
    let other = create(&w, outbound("16505556002")).await;
    let other_url = w.twilio.call(&self::sid(&other)).field("StatusCallback").unwrap().to_owned();
    let signature = fakes::twilio_signature(&token, &other_url, &params("completed", &account));
    let res = reqwest::Client::new()
        .post(&url)
        .header("x-twilio-signature", signature)
        .form(&params("completed", &account))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(get(&w, &id).await, before, "nothing changed");

    // A callback for a call that does not exist.
    let unknown = format!("{}/telephony/twilio/status/{}", w.app.base, uuid::Uuid::new_v4());
    let (status, _) = w.twilio.post_signed(&unknown, &params("completed", &account), Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) =
        w.twilio.post_signed(&format!("{}/telephony/twilio/status/not-a-uuid", w.app.base), &[], Some(&token)).await;
    assert!(status.is_client_error());

    // Vonage events for a Twilio call, and unsigned ones, are refused too.
    let vonage_url = format!("{}/telephony/vonage/event/{id}", w.app.base);
    let status = w.vonage.post_event(&vonage_url, &sid, json!({"status": "completed"}), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = w
        .vonage
        .post_event(&vonage_url, &sid, json!({"status": "completed"}), Some(&w.vonage.state.signature_secret))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a Twilio call takes no Vonage news");
    assert_eq!(get(&w, &id).await, before);
}

async fn carrier_refusals_and_outages(w: World) {
    // A refusal: kept as an error with the carrier's reason, answered 200.
    w.twilio.fail_next(Failure::Reject(400, 21211, "The 'To' number +16505557001 is not a valid phone number."));
    let call = create(&w, outbound("16505557001")).await;
    assert_eq!(row(&call), ("error".into(), "created".into(), json!("call_did_not_connect")));
    assert!(call["error_message"].as_str().unwrap().contains("21211"), "{call}");
    assert_eq!(call["telephony_id"], Value::Null);

    // 5xx twice, then it works: retried in the background.
    w.twilio.fail_next(Failure::ServerError);
    w.twilio.fail_next(Failure::ServerError);
    let call = create(&w, outbound("16505557002")).await;
    assert_eq!(row(&call), ("not_started".into(), "created".into(), Value::Null));
    let placed = w.twilio.calls().len();
    w.app.drain_jobs(Duration::from_secs(3600)).await;
    w.app.drain_jobs(Duration::from_secs(3600)).await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("in_progress".into(), "created".into(), Value::Null));
    assert_eq!(w.twilio.calls().len(), placed + 1, "placed exactly once");

    // A carrier that never answers in time: bounded retries, then an error.
    for _ in 0..3 {
        w.twilio.fail_next(Failure::Hang(Duration::from_secs(3)));
    }
    let call = create(&w, outbound("16505557003")).await;
    assert_eq!(call["status"], "not_started");
    for _ in 0..3 {
        w.app.drain_jobs(Duration::from_secs(3600)).await;
    }
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("error".into(), "created".into(), json!("call_did_not_connect")));
    assert!(after["error_message"].as_str().unwrap().contains("after 3 attempts"), "{after}");
}

async fn idempotency_keys_never_dial_twice(w: World) {
    let body = outbound("16505558001");
    let send = |key: &'static str, body: Value| {
        let client = w.app.client.clone();
        let url = format!("{}/v1/calls/create", w.app.base);
        let auth = w.app.key.clone();
        async move {
            let res =
                client.post(url).bearer_auth(auth).header("Idempotency-Key", key).json(&body).send().await.unwrap();
            common::read(res).await
        }
    };
    let placed = w.twilio.calls().len();
    let (s1, first) = send("order-42", body.clone()).await;
    let (s2, second) = send("order-42", body.clone()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first["id"], second["id"], "the same call");
    assert_eq!(w.twilio.calls().len(), placed + 1, "dialled once");
    let mut other = body.clone();
    other["to_number"] = json!("16505558002");
    let (status, err) = send("order-42", other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&err), ["header.Idempotency-Key"]);

    // Retries racing each other still dial once.
    let results = futures_util::future::join_all((0..6).map(|_| send("race-7", outbound("16505558003")))).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, StatusCode::OK, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(w.twilio.calls().iter().filter(|c| c.field("To") == Some("+16505558003")).count(), 1);
    let (_, page) = w.app.get("/v1/calls/list?size=100").await;
    assert_eq!(page["total"], 2);
}

async fn bad_call_requests_are_refused(w: World) {
    let (_, other_key) = w.app.new_user("mallory").await;
    let (_, others_agent) = w
        .app
        .post_as(
            &other_key,
            "/v1/agents/create",
            json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}),
        )
        .await;
    let cases = [
        (
            json!({"from_number": "14155550177", "to_number": "16505551234", "agent": {"prompt": {}}}),
            "body.from_number",
        ),
        (json!({"from_number": OUR_NUMBER, "to_number": "1650abc1234", "agent": {"prompt": {}}}), "body.to_number"),
        (json!({"from_number": OUR_NUMBER, "to_number": "1".repeat(30), "agent": {"prompt": {}}}), "body.to_number"),
        (json!({"from_number": OUR_NUMBER, "to_number": "16505551234", "agent": uuid::Uuid::new_v4()}), "body.agent"),
        (json!({"from_number": OUR_NUMBER, "to_number": "16505551234", "agent": others_agent["id"]}), "body.agent"),
        (
            json!({"from_number": OUR_NUMBER, "to_number": "16505551234", "agent": {"prompt": {}}, "on_no_human_answer": "panic"}),
            "body.on_no_human_answer",
        ),
        (json!({"from_number": OUR_NUMBER, "to_number": "16505551234"}), "body.agent"),
        (
            json!({"from_number": OUR_NUMBER, "to_number": "16505551234", "agent": {"prompt": {}, "conversation_speed": 9}}),
            "body.agent.conversation_speed",
        ),
    ];
    for (body, loc) in cases {
        let (status, answer) = w.app.post("/v1/calls/create", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(error_locs(&answer), [loc.to_owned()], "{body}");
    }
    // A cancelled number places no calls; another user cannot use ours.
    let (_, their_calls) = w
        .app
        .post_as(
            &other_key,
            "/v1/calls/create",
            json!({"from_number": OUR_NUMBER, "to_number": "16505551234", "agent": {"prompt": {}}}),
        )
        .await;
    assert_eq!(error_locs(&their_calls), ["body.from_number"]);
    w.app.post(&format!("/v1/numbers/cancel?phone_number={}", &OUR_NUMBER[1..]), json!(null)).await;
    let (status, _) = w.app.post("/v1/calls/create", outbound("16505551234")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(w.twilio.calls().is_empty(), "nothing was dialled");
    let (_, page) = w.app.get("/v1/calls/list").await;
    assert_eq!(page["total"], 0, "nothing was created");
    let (_, agents) = w.app.get("/v1/agents/list").await;
    assert_eq!(agents["total"], 1, "only the number's default agent: no inline agent half-created");
}

async fn inbound_calls_are_answered_by_the_numbers_agent(w: World) {
    let voice_url = w.twilio.voice_url(OUR_NUMBER).expect("linking pointed the number here");
    assert_eq!(voice_url, format!("{}/telephony/twilio/inbound", w.app.base));
    let (_, number) = w.app.get("/v1/numbers?phone_number=14155550100").await;
    w.app.post("/v1/numbers/update?phone_number=14155550100", json!({"example_context": {"name": "Kian"}})).await;

    let (status, twiml) = w.twilio.inbound(OUR_NUMBER, "+16505559001", "CAinbound0001").await;
    assert_eq!(status, StatusCode::OK);
    assert!(twiml.contains("<Connect><Stream url=\"ws://"), "{twiml}");
    let (_, page) = w.app.get("/v1/calls/list").await;
    assert_eq!(page["total"], 1);
    let call = get(&w, page["items"][0]["id"].as_str().unwrap()).await;
    assert_eq!(row(&call), ("in_progress".into(), "picked_up".into(), Value::Null));
    assert_eq!((call["from_number"].clone(), call["to_number"].clone()), (json!("16505559001"), json!("14155550100")));
    assert_eq!(call["agent"]["id"], number["inbound_agent"]["id"]);
    assert_eq!(call["context"], json!({"name": "Kian"}), "the number's example_context is the call's");
    assert_eq!(call["telephony_id"], "CAinbound0001");
    // Twilio asking twice creates one call.
    w.twilio.inbound(OUR_NUMBER, "+16505559001", "CAinbound0001").await;
    assert_eq!(w.app.get("/v1/calls/list").await.1["total"], 1);
    // Its progress reaches the number's status callback.
    let status_url = format!("{}/telephony/twilio/status", w.app.base);
    let s = w
        .twilio
        .inbound_status(&status_url, OUR_NUMBER, "+16505559001", "CAinbound0001", "completed", Some("33"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        row(&get(&w, call["id"].as_str().unwrap()).await),
        ("ended".into(), "picked_up".into(), json!("human_disconnected"))
    );

    // An outbound-only number turns callers away politely.
    w.app.post("/v1/numbers/update?phone_number=14155550100", json!({"outbound_only": true})).await;
    let (status, twiml) = w.twilio.inbound(OUR_NUMBER, "+16505559002", "CAinbound0002").await;
    assert_eq!(status, StatusCode::OK);
    assert!(twiml.contains("<Reject"), "{twiml}");
    assert_eq!(w.app.get("/v1/calls/list").await.1["total"], 1);

    // A forged inbound webhook creates nothing.
    let params: Vec<(String, String)> = vec![
        ("AccountSid".into(), w.twilio.state.account_sid.clone()),
        ("CallSid".into(), "CAforged".into()),
        ("From".into(), "+16505559003".into()),
        ("To".into(), OUR_NUMBER.into()),
    ];
    w.app.post("/v1/numbers/update?phone_number=14155550100", json!({"outbound_only": false})).await;
    let (status, _) = w.twilio.post_signed(&voice_url, &params, Some("wrong-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(w.app.get("/v1/calls/list").await.1["total"], 1);
}

async fn media_streams_bind_to_their_call(w: World) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let call = create(&w, outbound("16505550601")).await;
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let sid = sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    let (status, twiml) = w.twilio.twiml(&sid).await;
    assert_eq!(status, StatusCode::OK);
    let url = twiml.split("url=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let param = |name: &str| {
        twiml.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let (token, call_param) = (param("token"), param("call_id"));
    assert_eq!(call_param, id.to_string());

    // Speaks Twilio's protocol: connected, start, media (base64 μ-law), stop.
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                       "start": {"accountSid": w.twilio.state.account_sid, "streamSid": "MZ1", "callSid": sid, "tracks": ["inbound"],
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 "customParameters": {"call_id": call_param, "token": token}}});
    socket
        .send(Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()))
        .await
        .unwrap();
    socket.send(Message::text(start.to_string())).await.unwrap();
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xFFu8; 160]);
    for chunk in 1..=5 {
        let media = json!({"event": "media", "sequenceNumber": (chunk + 1).to_string(), "streamSid": "MZ1",
                           "media": {"track": "inbound", "chunk": chunk.to_string(), "timestamp": (chunk * 20).to_string(), "payload": payload}});
        socket.send(Message::text(media.to_string())).await.unwrap();
    }
    socket
        .send(Message::text(
            json!({"event": "stop", "sequenceNumber": "7", "streamSid": "MZ1", "stop": {"callSid": sid}}).to_string(),
        ))
        .await
        .unwrap();
    let stats = common::eventually(Duration::from_secs(5), || async {
        w.app.state.telephony.streams.get(id).filter(|s| s.closed)
    })
    .await;
    assert!(stats.bound);
    assert_eq!((stats.media_frames, stats.media_bytes), (5, 800));

    // A stream with a wrong token, or another call's sid, is closed without carrying anything.
    for (token, call_sid) in [("forged".to_owned(), sid.clone()), (token.clone(), "CAotherwise".to_owned())] {
        let other = create(&w, outbound("16505550602")).await;
        let other_id = uuid::Uuid::parse_str(other["id"].as_str().unwrap()).unwrap();
        let other_sid = self::sid(&other);
        let url = url.replace(&id.to_string(), &other_id.to_string());
        let call_sid = if call_sid == sid { other_sid } else { call_sid };
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let mut start = start.clone();
        start["start"]["callSid"] = json!(call_sid);
        start["start"]["customParameters"] = json!({"call_id": other_id.to_string(), "token": token});
        socket.send(Message::text(start.to_string())).await.unwrap();
        let closed = socket.next().await;
        assert!(matches!(closed, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 1008), "{closed:?}");
        assert!(!w.app.state.telephony.streams.get(other_id).unwrap_or_default().bound);
    }
}

async fn numbers_are_bought_linked_and_released(w: World) {
    // Twilio, through the account connection.
    let (status, bought) = w
        .app
        .post(
            "/v1/numbers/buy",
            json!({"telephony_provider": "twilio", "area_code": "212", "telephony_account_connection": w.connection}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bought}");
    assert_eq!(bought["number"], "12125557777");
    assert_eq!((bought["active"].clone(), bought["telephony_provider"].clone()), (json!(true), json!("twilio")));
    assert_eq!(w.twilio.voice_url("+12125557777").unwrap(), format!("{}/telephony/twilio/inbound", w.app.base));
    let (_, cancelled) = w.app.post("/v1/numbers/cancel?phone_number=12125557777", json!(null)).await;
    assert_eq!(cancelled["active"], false);
    assert_eq!(w.twilio.state.released.lock().unwrap().len(), 1, "a bought number is released at the carrier");
    // A linked number is only unlinked.
    let (_, _) = w.app.post("/v1/numbers/cancel?phone_number=14155550100", json!(null)).await;
    assert_eq!(w.twilio.state.released.lock().unwrap().len(), 1);

    // Vonage (the default provider), through the server's account.
    let (status, vonage) = w.app.post("/v1/numbers/buy", json!({"area_code": "646", "inbound_agent": "default"})).await;
    assert_eq!(status, StatusCode::OK, "{vonage}");
    assert_eq!(
        (vonage["number"].clone(), vonage["telephony_provider"].clone()),
        (json!("16465558888"), json!("vonage"))
    );
    assert_eq!(vonage["telephony_account_connection"], Value::Null);
    let ops: Vec<String> = w.vonage.state.numbers.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(ops, ["/number/buy", "/number/update"]);
    let app_id = w.vonage.state.numbers.lock().unwrap()[1].1.get("app_id").cloned();
    assert_eq!(app_id, Some(w.vonage.state.application_id.clone()), "attached to the application");
    w.app.post("/v1/numbers/cancel?phone_number=16465558888", json!(null)).await;
    assert_eq!(w.vonage.state.numbers.lock().unwrap().last().unwrap().0, "/number/cancel");

    // Refusals and bad input.
    let (status, body) = w
        .app
        .post(
            "/v1/numbers/buy",
            json!({"telephony_provider": "twilio", "area_code": "999", "telephony_account_connection": w.connection}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no numbers there: {body}");
    let (status, body) = w.app.post("/v1/numbers/buy", json!({"area_code": "41"})).await;
    assert_eq!((status, error_locs(&body)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["body.area_code".to_owned()]));
    let (status, _) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "sprint"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = w
        .app
        .post(
            "/v1/numbers/buy",
            json!({"telephony_provider": "twilio", "telephony_account_connection": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(
        (status, error_locs(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, vec!["body.telephony_account_connection".to_owned()])
    );
    // Twilio without a connection needs the server's own account, which this server lacks.
    let (status, body) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("TWILIO_ACCOUNT_SID"));
    // Linking a number the Twilio account does not have.
    let (status, body) = w
        .app
        .post("/v1/numbers/link", json!({"phone_number": "14155550999", "telephony_account_connection": w.connection}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("not a number of this Twilio account"));
}

async fn recordings_and_hipaa(w: World) {
    let call = create(&w, outbound("16505550701")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let (status, body) = w.app.get(&format!("/v1/calls/recording?id={id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no recording yet: {body}");
    let sid = sid(&call);
    let recording_url = format!("{}/2010-04-01/Accounts/{}/Recordings/RE1", w.twilio.base, w.twilio.state.account_sid);
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio
        .status(&sid, "completed", &[("CallDuration", "20"), ("RecordingUrl", &recording_url), ("RecordingSid", "RE1")])
        .await;
    assert_eq!(get(&w, &id).await["recording_available"], true);
    let res =
        w.app.request(reqwest::Method::GET, &format!("/v1/calls/recording?id={id}"), Some(&w.app.key), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "audio/mpeg");
    assert_eq!(res.bytes().await.unwrap().as_ref(), fakes::RECORDING_BYTES);
    let (_, other_key) = w.app.new_user("nosy").await;
    let (status, _) = w.app.get_as(&other_key, &format!("/v1/calls/recording?id={id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // HIPAA: not recorded, no recording kept even if the carrier offers one, prompt redacted.
    let mut body = outbound("16505550702");
    body["hipaa_compliant"] = json!(true);
    let call = create(&w, body).await;
    assert_eq!(call["agent"]["prompt"]["content"], "[redacted]");
    assert_eq!(call["hipaa_compliant"], true);
    let sid = self::sid(&call);
    assert_eq!(w.twilio.call(&sid).field("Record"), None);
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.status(&sid, "completed", &[("CallDuration", "20"), ("RecordingUrl", &recording_url)]).await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!((after["recording_available"].clone(), after["transcript"].clone()), (json!(false), Value::Null));
    let (status, _) = w.app.get(&format!("/v1/calls/recording?id={}", call["id"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The agent itself keeps its prompt.
    let (_, agent) = w.app.get(&format!("/v1/agents?id={}", call["agent"]["id"].as_str().unwrap())).await;
    assert_eq!(agent["prompt"]["content"], "Ask Ajay if his refrigerator is running");
}

async fn usage_counts_finished_calls_and_limits_them(w: World) {
    for (to, duration) in [("16505550801", "61"), ("16505550802", "5")] {
        let call = create(&w, outbound(to)).await;
        w.twilio.status(&sid(&call), "in-progress", &[]).await;
        w.twilio.status(&sid(&call), "completed", &[("CallDuration", duration)]).await;
    }
    let unanswered = create(&w, outbound("16505550803")).await;
    w.twilio.status(&sid(&unanswered), "busy", &[]).await;
    let (_, usage) = w.app.get("/v1/usage").await;
    assert_eq!(usage["monthly_usage_minutes"], 3, "61 s is 2 minutes, 5 s is 1, a busy call none");

    let user_id = uuid::Uuid::parse_str(usage["user_id"].as_str().unwrap()).unwrap();
    let mut tx = w.app.store().begin().await.unwrap();
    vocode_server::store::users::set_usage_limit(tx.conn(), user_id, Some(3)).await.unwrap();
    tx.commit().await.unwrap();
    let placed = w.twilio.calls().len();
    let (status, body) = w.app.post("/v1/calls/create", outbound("16505550804")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");
    assert_eq!(w.twilio.calls().len(), placed);
}

async fn vonage_calls_through_their_events(w: World) {
    let (_, number) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    let from = number["number"].as_str().unwrap().to_owned();
    let mut body = outbound("16505550901");
    body["from_number"] = json!(from);
    body["on_no_human_answer"] = json!("hangup");
    let call = create(&w, body).await;
    assert_eq!(row(&call), ("in_progress".into(), "created".into(), Value::Null));
    assert_eq!(call["telephony_metadata"], json!({"type": "telephony_metadata_vonage"}));
    let uuid = sid(&call);
    let placed = w.vonage.calls().into_iter().find(|c| c.uuid == uuid).unwrap();
    assert_eq!(placed.body["to"][0]["number"], "16505550901");
    assert_eq!(placed.body["machine_detection"], "continue");
    let connect = placed.body["ncco"].as_array().unwrap().iter().find(|a| a["action"] == "connect").unwrap().clone();
    assert_eq!(connect["endpoint"][0]["headers"]["call_id"], call["id"]);
    let secret = w.vonage.state.signature_secret.clone();
    for status in ["started", "ringing", "answered"] {
        assert_eq!(w.vonage.event(&uuid, json!({"status": status}), Some(&secret)).await, StatusCode::NO_CONTENT);
    }
    assert_eq!(row(&get(&w, call["id"].as_str().unwrap()).await).1, "picked_up");
    // Forged and unsigned events change nothing.
    assert_eq!(w.vonage.event(&uuid, json!({"status": "completed"}), Some("wrong")).await, StatusCode::FORBIDDEN);
    assert_eq!(w.vonage.event(&uuid, json!({"status": "completed"}), None).await, StatusCode::FORBIDDEN);
    assert_eq!(w.vonage.event(&uuid, json!({"status": "nonsense"}), Some(&secret)).await, StatusCode::BAD_REQUEST);
    // A machine: the server hangs up through the Voice API.
    assert_eq!(
        w.vonage.event(&uuid, json!({"status": "machine", "call_uuid": uuid}), Some(&secret)).await,
        StatusCode::NO_CONTENT
    );
    common::eventually(Duration::from_secs(5), || async {
        w.vonage.calls().iter().any(|c| c.uuid == uuid && c.hung_up).then_some(())
    })
    .await;
    w.vonage.event(&uuid, json!({"status": "completed", "duration": "6"}), Some(&secret)).await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("ended".into(), "picked_up".into(), json!("human_unanswered")));
    assert_eq!(after["human_detection_result"], "no_human");

    // Not answered.
    let mut body = outbound("16505550902");
    body["from_number"] = json!(from);
    let call = create(&w, body).await;
    w.vonage.event(&sid(&call), json!({"status": "timeout"}), Some(&secret)).await;
    assert_eq!(
        row(&get(&w, call["id"].as_str().unwrap()).await),
        ("ended".into(), "created".into(), json!("human_unanswered"))
    );
    // Refused by Vonage.
    w.vonage.fail_next(Failure::Reject(400, 0, "Invalid number"));
    let mut body = outbound("16505550903");
    body["from_number"] = json!(from);
    let call = create(&w, body).await;
    assert_eq!(row(&call), ("error".into(), "created".into(), json!("call_did_not_connect")));
    assert!(call["error_message"].as_str().unwrap().contains("Invalid number"));
}

async fn stale_calls_are_reconciled_with_the_carrier(w: World) {
    let call = create(&w, outbound("16505550951")).await;
    let sid = sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    // The carrier's completed callback is lost; the carrier knows the call is over.
    w.twilio.set_status(&sid, "completed");
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let long_ago = vocode_server::store::now() - chrono::Duration::hours(1);
    let mut tx = w.app.store().begin().await.unwrap();
    vocode_server::store::calls::touch(tx.conn(), id, long_ago).await.unwrap();
    tx.commit().await.unwrap();
    vocode_server::jobs::calls::reconcile(&w.app.state).await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("ended".into(), "picked_up".into(), json!("human_disconnected")));
    // A call with recent news is left alone.
    let fresh = create(&w, outbound("16505550952")).await;
    w.twilio.set_status(&self::sid(&fresh), "completed");
    vocode_server::jobs::calls::reconcile(&w.app.state).await;
    assert_eq!(get(&w, fresh["id"].as_str().unwrap()).await["status"], "in_progress");
}

async fn vonage_inbound_calls(w: World) {
    let (_, number) = w.app.post("/v1/numbers/buy", json!({"area_code": "646", "inbound_agent": "default"})).await;
    let to = number["number"].as_str().unwrap().to_owned();
    let answer_url = format!("{}/telephony/vonage/answer", w.app.base);
    let secret = w.vonage.state.signature_secret.clone();
    let post = |body: Value, secret: Option<String>| {
        let url = answer_url.clone();
        async move {
            let bytes = serde_json::to_vec(&body).unwrap();
            let mut req = reqwest::Client::new().post(url).header("content-type", "application/json");
            if let Some(secret) = secret {
                use sha2::Digest;
                let claims = json!({"iat": chrono::Utc::now().timestamp(), "jti": uuid::Uuid::new_v4(), "iss": "Vonage",
                                    "payload_hash": hex::encode(sha2::Sha256::digest(&bytes))});
                let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
                req = req.bearer_auth(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap());
            }
            common::read(req.body(bytes).send().await.unwrap()).await
        }
    };
    let request = json!({"to": to, "from": "16505550911", "uuid": "vonage-inbound-1", "conversation_uuid": "CON-1"});
    let (status, _) = post(request.clone(), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "unsigned");
    let (status, _) = post(request.clone(), Some("wrong".into())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "forged");
    assert_eq!(w.app.get("/v1/calls/list").await.1["total"], 0);
    let (status, ncco) = post(request.clone(), Some(secret.clone())).await;
    assert_eq!(status, StatusCode::OK, "{ncco}");
    assert_eq!(ncco[0]["action"], "connect");
    assert_eq!(ncco[0]["endpoint"][0]["type"], "websocket");
    assert!(ncco[0]["endpoint"][0]["uri"].as_str().unwrap().contains("/telephony/vonage/stream/"));
    let (_, page) = w.app.get("/v1/calls/list").await;
    assert_eq!(page["total"], 1);
    let call = get(&w, page["items"][0]["id"].as_str().unwrap()).await;
    assert_eq!((call["telephony_provider"].clone(), call["stage"].clone()), (json!("vonage"), json!("picked_up")));
    // Its events reach the application's event URL, by the call's uuid.
    let event_url = format!("{}/telephony/vonage/event", w.app.base);
    let s = w
        .vonage
        .post_event(&event_url, "vonage-inbound-1", json!({"status": "completed", "duration": "9"}), Some(&secret))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("ended".into(), "picked_up".into(), json!("human_disconnected")));
    // A number without an agent says so, and takes no call.
    w.app.post(&format!("/v1/numbers/update?phone_number={to}"), json!({"inbound_agent": null})).await;
    let (status, ncco) = post(json!({"to": to, "from": "16505550912", "uuid": "vonage-inbound-2"}), Some(secret)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ncco[0]["action"], "talk");
    assert_eq!(w.app.get("/v1/calls/list").await.1["total"], 1);
}

async fn the_twilio_adapter_redirects_calls(w: World) {
    let call = create(&w, outbound("16505550961")).await;
    let sid = sid(&call);
    let creds = vocode_server::telephony::twilio::Credentials {
        account_sid: w.twilio.state.account_sid.clone(),
        auth_token: w.twilio.state.auth_token.clone(),
    };
    let twiml = "<Response><Say>One moment</Say></Response>";
    let twilio = &w.app.state.telephony.twilio;
    twilio.redirect(&creds, &sid, twiml).await.unwrap();
    let sent = w.twilio.requests("POST", &format!("/Calls/{sid}"));
    assert_eq!(sent.last().unwrap(), &vec![("Twiml".to_owned(), twiml.to_owned())]);
    let wrong = vocode_server::telephony::twilio::Credentials { auth_token: "nope".into(), ..creds };
    let refused = twilio.redirect(&wrong, &sid, twiml).await.unwrap_err();
    assert!(
        matches!(refused, vocode_server::telephony::CarrierError::Rejected(ref r) if r.contains("20003")),
        "{refused:?}"
    );
}
