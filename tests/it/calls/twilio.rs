//! Outbound calls through Twilio: what the carrier is asked for, every row of the state machine's
//! table reached by the status callbacks that really produce it, machine detection, hanging up
//! and cancelling, callbacks late, early, twice or forged, and the adapter's call redirects.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{create, get, outbound, row, sid, world, World};
use crate::support::{eventually, on_both_backends, twilio_signature, Failure};

on_both_backends!(world =>
    a_call_is_placed_with_what_twilio_needs,
    every_row_of_the_table_through_twilio_callbacks,
    machine_detection_hangs_up_when_asked,
    calls_end_hangs_up_or_cancels,
    a_second_calls_end_retries_a_refused_hang_up,
    callbacks_out_of_order_and_twice_change_nothing,
    forged_and_garbage_callbacks_change_nothing,
    forged_and_replayed_resume_requests_change_nothing,
    the_twilio_adapter_redirects_calls,
    streams_racing_to_take_up_one_conversation_leave_exactly_one_holder,
);

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
    let hangups = eventually(Duration::from_secs(5), || async {
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

/// The carrier refuses the first hang-up: the call stays in progress, its end requested. A second
/// `calls/end` asks the carrier again, and this time the call ends.
async fn a_second_calls_end_retries_a_refused_hang_up(w: World) {
    let call = create(&w, outbound("16505554101")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    w.twilio.status(&sid(&call), "in-progress", &[]).await;
    // (Refused as `completed`, the adapter tries `canceled`: refused too.)
    w.twilio.fail_next(Failure::Reject(400, 21220, "Invalid call state"));
    w.twilio.fail_next(Failure::Reject(400, 21220, "Invalid call state"));
    let (status, first) = w.app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(row(&first), ("in_progress".into(), "picked_up".into(), Value::Null), "the hang-up was refused");
    let (status, second) = w.app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(row(&second), ("ended".into(), "picked_up".into(), json!("bot_disconnected")));
    let hang_ups = w.twilio.requests("POST", &format!("/Calls/{}", sid(&call)));
    assert_eq!(hang_ups.len(), 3, "asked again by the second calls/end");
    assert!(hang_ups[2].contains(&("Status".into(), "completed".into())));
    // Over now: a third asks nothing more of the carrier.
    w.app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(w.twilio.requests("POST", &format!("/Calls/{}", sid(&call))).len(), 3);
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
    let signature = twilio_signature(&token, &other_url, &params("completed", &account));
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

/// The resume path, where Twilio goes when a call's stream ends without the call (the `<Redirect>`
/// after `<Connect>`), answers a genuine request with a new stream and refuses a forged or
/// replayed one: unsigned, signed with another token, from another account, signed for another
/// call's resume URL. For a call that has ended, even a genuine request gets a hang-up, not a
/// stream. None of them changes the call.
async fn forged_and_replayed_resume_requests_change_nothing(w: World) {
    let call = create(&w, outbound("16505556011")).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let sid = sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    let (_, twiml) = w.twilio.twiml(&sid).await;
    let url = format!("{}/telephony/twilio/resume/{id}", w.app.base);
    assert!(twiml.contains(&format!("<Redirect method=\"POST\">{url}</Redirect>")), "{twiml}");
    let account = w.twilio.state.account_sid.clone();
    let token = w.twilio.state.auth_token.clone();
    let params = |account: &str| -> Vec<(String, String)> {
        vec![
            ("AccountSid".into(), account.into()),
            ("CallSid".into(), sid.clone()),
            ("CallStatus".into(), "in-progress".into()),
        ]
    };
    let before = get(&w, &id).await;
    for (params, token) in [
        (params(&account), Some("not-the-token")),
        (params(&account), None),
        (params("ACsomeoneelse"), Some(token.as_str())),
    ] {
        let (status, body) = w.twilio.post_signed(&url, &params, token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{params:?}: {body}");
        assert!(!body.contains("<Stream"), "no stream for a forged request: {body}");
    }
    // Signed for another call's resume URL, replayed on this one.
    let other = create(&w, outbound("16505556012")).await;
    let other_url = format!("{}/telephony/twilio/resume/{}", w.app.base, other["id"].as_str().unwrap());
    let res = reqwest::Client::new()
        .post(&url)
        .header("x-twilio-signature", twilio_signature(&token, &other_url, &params(&account)))
        .form(&params(&account))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Another call's genuine request, with this call's sid: not this call's.
    let (status, _) = w.twilio.post_signed(&other_url, &params(&account), Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "CallSid is not the other call's");
    assert_eq!(get(&w, &id).await, before, "nothing changed");

    // The genuine request: a new stream for this call (and the call as it was).
    let (status, resumed) = w.twilio.post_signed(&url, &params(&account), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert!(resumed.contains(&format!("/telephony/twilio/stream/{id}")), "{resumed}");
    assert_eq!(get(&w, &id).await, before, "a resume changes nothing of the call");

    // Once the call has ended, the same request, replayed, gets a hang-up and changes nothing.
    w.twilio.status(&sid, "completed", &[("CallDuration", "9")]).await;
    let ended = get(&w, &id).await;
    assert_eq!(ended["status"], "ended");
    let (status, replayed) = w.twilio.post_signed(&url, &params(&account), Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(replayed.contains("<Hangup") && !replayed.contains("<Stream"), "{replayed}");
    assert_eq!(get(&w, &id).await, ended);
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

/// Streams of one call bound on several replicas at once (a carrier retrying, a move racing a
/// reconnect) each take the conversation up; exactly one holds it in the end — the one with the
/// newest generation — and every other's writes are refused, so its stream lets go.
async fn streams_racing_to_take_up_one_conversation_leave_exactly_one_holder(w: World) {
    use futures_util::future::join_all;
    use vocode_server::calls::sessions::{Claim, Fence};

    let call = create(&w, outbound("16505556012")).await;
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let calls = &w.app.state.calls;
    for round in 0..3 {
        // The first round races for the call's first conversation; the next ones, for a kept one.
        let claims = join_all((0..8).map(|i| async move {
            let owner = format!("replica-{round}-{i}");
            calls.claim_conversation(id, &owner).await.unwrap_or_else(|e| panic!("{owner}: {e}"))
        }))
        .await;
        let fences: Vec<Fence> = claims
            .iter()
            .map(|claim| match claim {
                Claim::Fresh(fence) | Claim::Resume(fence, _) => fence.clone(),
                Claim::Over => panic!("round {round}: the conversation is not over"),
            })
            .collect();
        let mut generations: Vec<i64> = fences.iter().map(|f| f.generation).collect();
        generations.sort_unstable();
        generations.dedup();
        assert_eq!(generations.len(), fences.len(), "round {round}: one generation per claim: {fences:?}");
        if round == 0 {
            let fresh = claims.iter().filter(|c| matches!(c, Claim::Fresh(f) if f.generation == 1)).count();
            assert_eq!(fresh, 1, "round 0: one stream starts the conversation: {claims:?}");
        }
        let mut holders = Vec::new();
        for fence in &fences {
            if calls.holds(id, fence).await.unwrap() {
                holders.push(fence.clone());
            }
        }
        let newest = fences.iter().max_by_key(|f| f.generation).unwrap();
        assert_eq!(
            holders,
            std::slice::from_ref(newest),
            "round {round}: exactly the newest claim holds the conversation"
        );
        for fence in fences.iter().filter(|f| *f != newest) {
            let written = calls.record_message(id, fence, "HUMAN", "stale", &json!({})).await.unwrap();
            assert!(!written, "round {round}: {fence:?}'s write is refused");
        }
        assert!(calls.record_message(id, newest, "HUMAN", "kept", &json!({})).await.unwrap(), "the holder writes");
    }
    let transcript = get(&w, &id.to_string()).await["transcript"].as_str().unwrap_or_default().to_owned();
    assert_eq!(transcript.matches("HUMAN: kept").count(), 3, "{transcript}");
    assert!(!transcript.contains("stale"), "{transcript}");
}
