//! Outbound calls through Vonage: the NCCO it is given, the state machine driven by its signed
//! events (forged and unsigned ones refused), machine detection hanging up through the Voice API,
//! unanswered and refused calls.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{create, get, outbound, row, sid, world, World};
use crate::support::{eventually, on_both_backends, Failure};

on_both_backends!(world =>
    vonage_calls_through_their_events,
);

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
    eventually(Duration::from_secs(5), || async {
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
