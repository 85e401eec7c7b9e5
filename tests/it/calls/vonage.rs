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
    forged_and_replayed_disconnections_change_nothing,
);

/// A websocket's `disconnected` event (Vonage's word that a call's stream closed without the call
/// ending) gets the call transferred to a new stream only when it is signed and carries the
/// websocket's own headers (the call's stream token), and only while the call goes on: unsigned,
/// signed with another secret, without the token or with another call's, or once the call has
/// ended, it changes nothing and nothing is asked of Vonage.
async fn forged_and_replayed_disconnections_change_nothing(w: World) {
    let (_, number) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    let from = number["number"].as_str().unwrap().to_owned();
    let placed = |to: &'static str| {
        let (w, from) = (&w, &from);
        async move {
            let mut body = outbound(to);
            body["from_number"] = json!(from);
            create(w, body).await
        }
    };
    let (call, other) = (placed("16505550911").await, placed("16505550912").await);
    let (id, uuid) = (call["id"].as_str().unwrap().to_owned(), sid(&call));
    let secret = w.vonage.state.signature_secret.clone();
    for status in ["started", "ringing", "answered"] {
        assert_eq!(w.vonage.event(&uuid, json!({"status": status}), Some(&secret)).await, StatusCode::NO_CONTENT);
    }
    let headers = |call: &Value| {
        let placed = w.vonage.calls().into_iter().find(|c| c.uuid == sid(call)).unwrap();
        let connect = placed.body["ncco"].as_array().unwrap().iter().find(|a| a["action"] == "connect").cloned();
        connect.unwrap()["endpoint"][0]["headers"].clone()
    };
    let transfers = || w.vonage.calls().into_iter().find(|c| c.uuid == uuid).unwrap().transfers.len();
    let before = get(&w, &id).await;
    let disconnected = |headers: Value| json!({"status": "disconnected", "headers": headers});
    assert_eq!(w.vonage.event(&uuid, disconnected(headers(&call)), Some("wrong")).await, StatusCode::FORBIDDEN);
    assert_eq!(w.vonage.event(&uuid, disconnected(headers(&call)), None).await, StatusCode::FORBIDDEN);
    for forged in [json!({"call_id": id}), headers(&other), json!({"call_id": id, "token": "0".repeat(64)})] {
        let status = w.vonage.event(&uuid, disconnected(forged.clone()), Some(&secret)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{forged}");
    }
    assert_eq!(transfers(), 0, "nothing asked of Vonage");
    assert_eq!(get(&w, &id).await, before, "nothing changed");

    // The genuine event: the call is transferred to a new stream of its own.
    assert_eq!(w.vonage.event(&uuid, disconnected(headers(&call)), Some(&secret)).await, StatusCode::NO_CONTENT);
    assert_eq!(transfers(), 1);
    let ncco = w.vonage.calls().into_iter().find(|c| c.uuid == uuid).unwrap().transfers[0].clone();
    assert_eq!(
        ncco.as_array().unwrap().iter().find(|a| a["action"] == "connect").unwrap()["endpoint"][0]["headers"],
        headers(&call)
    );
    assert_eq!(get(&w, &id).await, before, "a resume changes nothing of the call");

    // Once the call has ended, the same event, replayed, asks nothing of Vonage.
    w.vonage.event(&uuid, json!({"status": "completed", "duration": "9"}), Some(&secret)).await;
    let ended = get(&w, &id).await;
    assert_eq!(ended["status"], "ended");
    assert_eq!(w.vonage.event(&uuid, disconnected(headers(&call)), Some(&secret)).await, StatusCode::NO_CONTENT);
    assert_eq!(transfers(), 1, "no transfer for an ended call");
    assert_eq!(get(&w, &id).await, ended);
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
