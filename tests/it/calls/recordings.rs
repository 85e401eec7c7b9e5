//! Recordings: fetched from the carrier for their owner only; and HIPAA calls, neither recorded
//! nor keeping a recording, their prompt redacted.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{create, get, outbound, sid, world, World};
use crate::support::{on_both_backends, RECORDING_BYTES};

on_both_backends!(world =>
    recordings_and_hipaa,
);

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
    assert_eq!(res.bytes().await.unwrap().as_ref(), RECORDING_BYTES);
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
