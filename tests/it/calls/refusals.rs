//! Calls that must not be placed: bad requests (refused with FastAPI's 422 and nothing created
//! or dialled), another user's agent or number, a cancelled number, and a user over the usage
//! limit; and usage counted from finished calls.

use reqwest::StatusCode;
use serde_json::json;

use super::{create, outbound, sid, world, World, OUR_NUMBER};
use crate::support::{error_locs, on_both_backends};

on_both_backends!(world =>
    bad_call_requests_are_refused,
    usage_counts_finished_calls_and_limits_them,
);

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
