//! The built-in sandbox carrier: with no carrier account at all, a number is bought and every
//! documented scenario plays out to its documented outcome, through the real callback
//! verification and media-stream paths.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::TelephonyArgs;

use crate::support::{eventually, on_both_backends, Backend, Options, TestApp};

on_both_backends!(sandbox => every_documented_scenario_ends_as_documented, buying_and_cancelling_sandbox_numbers);

async fn sandbox(backend: Backend) -> Option<TestApp> {
    let telephony = TelephonyArgs { sandbox_time_scale: 0.05, ..TelephonyArgs::default() };
    TestApp::spawn_with(backend, Options { telephony, workers: 2, ..Options::default() }).await
}

async fn ended(app: &TestApp, id: &str) -> Value {
    eventually(Duration::from_secs(20), || async {
        let (_, call) = app.get(&format!("/v1/calls?id={id}")).await;
        matches!(call["status"].as_str(), Some("ended" | "error")).then_some(call)
    })
    .await
}

async fn every_documented_scenario_ends_as_documented(app: TestApp) {
    let (_, ready) = app.get("/ready").await;
    assert_eq!(ready["carrier_mode"], "sandbox");
    let (status, number) =
        app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"})).await;
    assert_eq!(status, StatusCode::OK, "{number}");
    let from = number["number"].as_str().unwrap().to_owned();
    let scenarios = [
        ("14155550199", "continue", ("ended", "picked_up", json!("human_disconnected"))),
        ("14155550101", "hangup", ("ended", "picked_up", json!("human_unanswered"))),
        ("14155550101", "continue", ("ended", "picked_up", json!("human_disconnected"))),
        ("14155550102", "continue", ("ended", "created", json!("human_unanswered"))),
        ("14155550103", "continue", ("ended", "created", json!("human_unanswered"))),
        ("14155550104", "continue", ("ended", "created", json!("call_did_not_connect"))),
        ("14155550106", "continue", ("error", "created", json!("call_did_not_connect"))),
    ];
    let mut created = Vec::new();
    for (to, on_no_human_answer, _) in &scenarios {
        let (status, call) = app
            .post(
                "/v1/calls/create",
                json!({"from_number": from, "to_number": to, "on_no_human_answer": on_no_human_answer,
                       "agent": {"prompt": {"content": "Ask Ajay if his refrigerator is running"}}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{call}");
        assert_ne!(call["status"], "not_started", "the sandbox takes the call at once");
        created.push(call["id"].as_str().unwrap().to_owned());
    }
    for ((to, on_no_human_answer, expected), id) in scenarios.iter().zip(&created) {
        let call = ended(&app, id).await;
        let got = (call["status"].as_str().unwrap(), call["stage"].as_str().unwrap(), call["stage_outcome"].clone());
        assert_eq!(got, (expected.0, expected.1, expected.2.clone()), "{to} ({on_no_human_answer}): {call}");
        if expected.1 == "picked_up" {
            let stream = app.state.telephony.streams.get(uuid::Uuid::parse_str(id).unwrap()).expect("a media stream");
            assert!(stream.bound && stream.media_frames > 0, "{to}: {stream:?}");
            assert_eq!(call["recording_available"], true, "{to}");
        }
    }
    let machine = ended(&app, &created[1]).await;
    assert_eq!(machine["human_detection_result"], "no_human");

    // Someone who stays on the line until the call is ended through the API.
    let (_, call) = app
        .post("/v1/calls/create", json!({"from_number": from, "to_number": "14155550105", "agent": {"prompt": {}}}))
        .await;
    let id = call["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), || async {
        let (_, c) = app.get(&format!("/v1/calls?id={id}")).await;
        (c["stage"] == "picked_up").then_some(())
    })
    .await;
    let (status, call) = app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((call["status"].clone(), call["stage_outcome"].clone()), (json!("ended"), json!("bot_disconnected")));

    let res = app
        .request(reqwest::Method::GET, &format!("/v1/calls/recording?id={}", created[0]), Some(&app.key), None)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "audio/mpeg");
    assert!(res.bytes().await.unwrap().starts_with(&[0xFF, 0xFB]));
    let (_, usage) = app.get("/v1/usage").await;
    // At least the person who talked 3 s and the machine that talked 5 s: a minute each.
    assert!(usage["monthly_usage_minutes"].as_i64().unwrap() >= 2, "{usage}");
}

async fn buying_and_cancelling_sandbox_numbers(app: TestApp) {
    // The spec's default provider is Vonage: the sandbox sells those too, and places calls on them.
    let (status, number) = app.post("/v1/numbers/buy", json!({"area_code": "212"})).await;
    assert_eq!(status, StatusCode::OK, "{number}");
    assert_eq!(number["telephony_provider"], "vonage");
    assert!(number["number"].as_str().unwrap().starts_with("1212"));
    let from = number["number"].as_str().unwrap().to_owned();
    let (_, call) = app
        .post("/v1/calls/create", json!({"from_number": from, "to_number": "14155550177", "agent": {"prompt": {}}}))
        .await;
    let call = ended(&app, call["id"].as_str().unwrap()).await;
    assert_eq!(
        (call["stage"].clone(), call["stage_outcome"].clone()),
        (json!("picked_up"), json!("human_disconnected"))
    );
    assert_eq!(call["telephony_metadata"]["type"], "telephony_metadata_vonage");

    // Linking works against the sandbox's Twilio account as well.
    let (_, conn) = app
        .post(
            "/v1/account_connections/create",
            json!({"type": "account_connection_twilio",
            "credentials": {"twilio_account_sid": "ACsandbox", "twilio_auth_token": "anything-goes"}}),
        )
        .await;
    let (status, linked) = app
        .post("/v1/numbers/link", json!({"phone_number": "14155550150", "telephony_account_connection": conn["id"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    let (_, cancelled) = app.post(&format!("/v1/numbers/cancel?phone_number={from}"), json!(null)).await;
    assert_eq!(cancelled["active"], false);
    let (status, _) = app
        .post("/v1/calls/create", json!({"from_number": from, "to_number": "14155550177", "agent": {"prompt": {}}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a cancelled number places no calls");
}
