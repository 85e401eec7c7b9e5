//! Inbound calls: a caller dials one of our numbers, Twilio posts to its voice URL or Vonage to
//! the application's answer URL (signed, or refused), and the number's agent answers — or the
//! caller is turned away.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{get, row, world, World, OUR_NUMBER};
use crate::support::{on_both_backends, read};

on_both_backends!(world =>
    inbound_calls_are_answered_by_the_numbers_agent,
    vonage_inbound_calls,
);

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
            read(req.body(bytes).send().await.unwrap()).await
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
