//! Warm transfers on Twilio, end to end, with the warm-transfer guide's own agent (both actions
//! fired by phrases the bot says) and the fake Twilio's conference API: the conference dials a
//! number of the account connection's steering pool, whose call comes back to the server and
//! takes over the call's conversation; the person's call moves into the conference and is put on
//! hold; the third party is dialled in from the steering number; the bot speaks with them, then
//! takes the person off hold and leaves. Also: a third party who does not answer, and a pool
//! with no free number (the guide's 429).

use std::time::Duration;

use serde_json::{json, Value};

use super::line::{twilio_stream, Carrier, Line};
use super::{transcript_has, world, World, GREETING, OUR_NUMBER};
use crate::support::fake_deepgram::results;
use crate::support::fake_openai::Script;
use crate::support::{eventually, Backend, Failure};

const STEERING: &str = "+14155550150";
const MANAGER: &str = "+16505550177";

fn phrase(p: &str) -> Value {
    json!({"type": "action_trigger_phrase_based",
           "config": {"phrase_triggers": [{"phrase": p, "conditions": ["phrase_condition_type_contains"]}]}})
}

/// The guide's agent, and a steering pool of `pool` on the world's Twilio account connection.
async fn warm_agent(w: &World, pool: &[&str]) -> Value {
    let (_, connections) = w.app.get("/v1/account_connections/list").await;
    let connection = connections["items"][0]["id"].as_str().unwrap().to_owned();
    for number in pool {
        w.twilio.own(number);
        let path = format!("/v1/account_connections/add_to_steering_pool?id={connection}");
        let (status, body) = w.app.post(&path, json!({"phone_number": number})).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
    let mut ids = Vec::new();
    for action in [
        json!({"type": "action_set_hold", "config": {}, "action_trigger": phrase("Removing participant from hold")}),
        json!({"type": "action_add_to_conference", "config": {"phone_number": MANAGER},
               "action_trigger": phrase("I connect you now please hold")}),
    ] {
        let (status, action) = w.app.post("/v1/actions/create", action).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{action}");
        ids.push(action["id"].clone());
    }
    json!({
        "prompt": {"content": "You help customers."},
        "initial_message": GREETING,
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "actions": ids,
        "webhook": {"subscriptions": ["event_action"], "url": w.receiver.url},
    })
}

async fn stage_of(w: &World, id: &str) -> (Value, Value, Value) {
    let (_, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    (call["status"].clone(), call["stage"].clone(), call["stage_outcome"].clone())
}

/// A warm transfer under way: the third party's phone rings.
struct Ringing {
    id: String,
    /// The person's call at the carrier.
    person: String,
    conference: String,
    /// The conference's call to the steering number (the bot's participant).
    bot_participant: String,
    /// The stream of the steering number's call, which carries the bot from now on.
    bot: Carrier,
    third_party: String,
}

/// An outbound call to the person, answered: its id, its carrier id and its stream.
async fn outbound(w: &World, agent: Value) -> (String, String, Carrier) {
    let call = Line::Twilio.call(w, agent).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let person = call["telephony_id"].as_str().unwrap().to_owned();
    let stream = Line::Twilio.answer(w, &call).await;
    (id, person, stream)
}

/// The person asks for the manager on an outbound call; see [`warm`].
async fn ringing(w: &World, agent: Value) -> Ringing {
    let (id, person, stream) = outbound(w, agent).await;
    warm(w, id, person, stream).await
}

/// The person asks for the manager; the bot's phrase starts the warm transfer, and the test,
/// playing Twilio, carries out what the server asks, checking each request.
async fn warm(w: &World, id: String, person: String, person_stream: Carrier) -> Ringing {
    warm_answering(w, id, person, person_stream, None).await
}

/// As [`warm`]; with `late`, Twilio's answer to the request moving the person's call into the
/// conference comes that late, and the person's stream ends before it (as Twilio does).
async fn warm_answering(
    w: &World,
    id: String,
    person: String,
    person_stream: Carrier,
    late: Option<Duration>,
) -> Ringing {
    transcript_has(w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results("Can I talk to the manager?", true, true)).await;
    transcript_has(w, &id, "BOT_ACTION_START: Attempting to add +16505550177 to the conference").await;

    // The conference calls the steering number, pointed at this server first.
    let conference = format!("vocode-{id}");
    let bot_participant = eventually(Duration::from_secs(10), || async {
        w.twilio.conference(&conference).and_then(|c| c.added.first().cloned())
    })
    .await;
    let dialled = w.twilio.call(&bot_participant);
    assert_eq!((dialled.field("From"), dialled.field("To")), (Some(OUR_NUMBER), Some(STEERING)));
    assert_eq!(dialled.field("StartConferenceOnEnter"), Some("true"));
    if let Some(late) = late {
        // The next request to Twilio is the move of the person's call into the conference.
        w.twilio.fail_next(Failure::Late(late));
    }
    let voice_url = w.twilio.voice_url(STEERING).expect("the steering number points somewhere");
    assert!(voice_url.ends_with("/telephony/twilio/inbound"), "{voice_url}");
    // A forged call to the steering number (not signed with the account's token) is refused, and
    // carries no bot.
    let forged: Vec<(String, String)> = [
        ("AccountSid", w.twilio.state.account_sid.as_str()),
        ("CallSid", "CAforged"),
        ("From", OUR_NUMBER),
        ("To", STEERING),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (status, body) = w.twilio.post_signed(&voice_url, &forged, Some("not-the-auth-token")).await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert!(body.contains("detail"), "{body}");
    // Its call arrives here, and its stream connects.
    let (status, twiml) = w.twilio.inbound(STEERING, OUR_NUMBER, "CAbotleg").await;
    assert_eq!(status.as_u16(), 200, "{twiml}");
    assert!(twiml.contains("<Connect><Stream"), "{twiml}");
    let bot = twilio_stream(w, &twiml, "CAbotleg").await;

    // Then the person's call moves into the conference, which ends its stream.
    let twiml = eventually(Duration::from_secs(10), || async {
        let forms = w.twilio.requests("POST", &format!("/Calls/{person}"));
        forms.iter().flatten().find(|(k, v)| k == "Twiml" && v.contains("<Conference")).map(|(_, v)| v.clone())
    })
    .await;
    assert!(twiml.contains(&format!(">{conference}</Conference>")), "{twiml}");
    assert!(twiml.contains("endConferenceOnExit=\"true\""), "{twiml}");
    person_stream.stop();
    let events = twiml.split("statusCallback=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let sid = w.twilio.conference(&conference).unwrap().sid;
    assert_eq!(w.twilio.conference_event(&events, &sid, &person, "participant-join").await.as_u16(), 204);

    // The person is put on hold, and the manager dialled in from the steering number.
    eventually(Duration::from_secs(10), || async {
        w.twilio.conference(&conference).filter(|c| c.on_hold.contains(&person)).map(|_| ())
    })
    .await;
    let third_party = eventually(Duration::from_secs(10), || async {
        w.twilio.conference(&conference).and_then(|c| c.added.get(1).cloned())
    })
    .await;
    let leg = w.twilio.call(&third_party);
    assert_eq!((leg.field("From"), leg.field("To")), (Some(STEERING), Some(MANAGER)));
    assert!(leg.field("StatusCallback").is_some_and(|u| u.ends_with(&format!("/conference/{id}/third_party"))));
    eventually(Duration::from_secs(10), || async { (stage_of(w, &id).await.1 == "transfer_started").then_some(()) })
        .await;
    Ringing { id, person, conference, bot_participant, bot, third_party }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_transfer_talks_to_the_third_party_then_hands_the_person_over() {
    talks_then_hands_over(None).await;
}

/// Twilio ends the person's stream before it answers the request moving the call into the
/// conference: the conversation goes on through the bot's conference leg, as when the answer
/// comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_transfer_goes_on_when_the_persons_stream_ends_before_the_move_is_answered() {
    talks_then_hands_over(Some(Duration::from_secs(3))).await;
}

/// Twilio ends the person's stream, then refuses to move the call into the conference: no stream
/// carries the conversation to the person any more, so the call is ended as the server's doing
/// (`bot_disconnected`), not left `in_progress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_transfer_whose_move_fails_after_the_persons_stream_ended_ends_the_call_truthfully() {
    let Some(w) = world(Backend::Sqlite).await else { return };
    let agent = warm_agent(&w, &[STEERING]).await;
    w.openai.then(Script::text(&["Sure, I connect you now, please hold."]));
    w.openai.then(Script::text(&["Sorry, I could not connect you."]));
    let (id, person, person_stream) = outbound(&w, agent).await;
    transcript_has(&w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results("Can I talk to the manager?", true, true)).await;
    let conference = format!("vocode-{id}");
    eventually(Duration::from_secs(10), || async {
        w.twilio.conference(&conference).and_then(|c| c.added.first().cloned())
    })
    .await;
    // The move into the conference hangs, then fails; the person's stream ends meanwhile.
    w.twilio.fail_next(Failure::Hang(Duration::from_secs(2)));
    let (status, twiml) = w.twilio.inbound(STEERING, OUR_NUMBER, "CAbotleg").await;
    assert_eq!(status.as_u16(), 200, "{twiml}");
    let bot = twilio_stream(&w, &twiml, "CAbotleg").await;
    eventually(Duration::from_secs(10), || async {
        let forms = w.twilio.requests("POST", &format!("/Calls/{person}"));
        forms.iter().flatten().any(|(k, v)| k == "Twiml" && v.contains("<Conference")).then_some(())
    })
    .await;
    person_stream.stop();
    let text = transcript_has(&w, &id, "BOT_ACTION_FINISH: Did not add +16505550177 to the conference").await;
    assert!(text.contains("could not be moved into the conference"), "{text}");
    // The server hangs the call up, and the bot's leg.
    eventually(Duration::from_secs(10), || async {
        let forms = w.twilio.requests("POST", &format!("/Calls/{person}"));
        forms.iter().any(|f| f.contains(&("Status".into(), "completed".into()))).then_some(())
    })
    .await;
    bot.stop();
    w.twilio.status(&person, "completed", &[("CallDuration", "30")]).await;
    let ended = eventually(Duration::from_secs(10), || async {
        let now = stage_of(&w, &id).await;
        (now.0 == "ended").then_some(now)
    })
    .await;
    assert_eq!(ended, (json!("ended"), json!("picked_up"), json!("bot_disconnected")));
}

async fn talks_then_hands_over(late: Option<Duration>) {
    let Some(w) = world(Backend::Sqlite).await else { return };
    let agent = warm_agent(&w, &[STEERING]).await;
    w.openai.then(Script::text(&["Sure, I connect you now, please hold."]));
    w.openai.then(Script::text(&["Hi, a customer wants a refund. ", "Removing participant from hold."]));
    let (id, person, stream) = outbound(&w, agent).await;
    let r = warm_answering(&w, id, person, stream, late).await;

    // The manager answers: the transfer succeeded, and the bot hears them on its own leg.
    assert_eq!(w.twilio.status(&r.third_party, "in-progress", &[]).await.as_u16(), 204);
    transcript_has(&w, &r.id, "BOT_ACTION_FINISH: Added +16505550177 to the conference").await;
    assert_eq!(stage_of(&w, &r.id).await.1, "transfer_successful");
    w.deepgram.send(results("Hi, this is the manager.", true, true)).await;
    let text = transcript_has(&w, &r.id, "BOT_ACTION_FINISH: Took the person off hold").await;
    assert!(
        text.contains(
            "HUMAN: Hi, this is the manager.\nBOT: Hi, a customer wants a refund. Removing participant from hold.\n\
             BOT_ACTION_START: Attempting to change the hold"
        ),
        "{text}"
    );
    assert!(!r.bot.arrived_samples().is_empty(), "the bot spoke on the conference leg");
    // The person is off hold, and the bot leaves the conference.
    let conference = w.twilio.conference(&r.conference).unwrap();
    assert!(!conference.on_hold.contains(&r.person));
    eventually(Duration::from_secs(10), || async {
        let forms = w.twilio.requests("POST", &format!("/Calls/{}", r.bot_participant));
        forms.iter().any(|f| f.contains(&("Status".into(), "completed".into()))).then_some(())
    })
    .await;
    r.bot.stop();

    // When the manager hangs up, the person is not left alone in the conference.
    assert_eq!(w.twilio.status(&r.third_party, "completed", &[]).await.as_u16(), 204);
    eventually(Duration::from_secs(10), || async {
        let forms = w.twilio.requests("POST", &format!("/Calls/{}", r.person));
        forms.iter().any(|f| f.contains(&("Status".into(), "completed".into()))).then_some(())
    })
    .await;
    w.twilio.status(&r.person, "completed", &[("CallDuration", "95")]).await;
    eventually(Duration::from_secs(10), || async {
        let (status, stage, outcome) = stage_of(&w, &r.id).await;
        (status == "ended").then_some((stage, outcome))
    })
    .await;
    assert_eq!(stage_of(&w, &r.id).await, (json!("ended"), json!("transfer_successful"), json!("human_disconnected")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_transfer_nobody_answers_takes_the_person_off_hold_and_the_bot_says_so() {
    let Some(w) = world(Backend::Sqlite).await else { return };
    let agent = warm_agent(&w, &[STEERING]).await;
    w.openai.then(Script::text(&["I connect you now, please hold."]));
    w.openai.then(Script::text(&["Sorry, the manager is not available right now."]));
    let r = ringing(&w, agent).await;
    assert_eq!(w.twilio.status(&r.third_party, "no-answer", &[]).await.as_u16(), 204);
    let text = transcript_has(&w, &r.id, "BOT: Sorry, the manager is not available right now.").await;
    assert!(
        text.contains("BOT_ACTION_FINISH: Did not add +16505550177 to the conference: +16505550177 did not join the conference (no-answer)"),
        "{text}"
    );
    assert!(!w.twilio.conference(&r.conference).unwrap().on_hold.contains(&r.person), "off hold again");
    assert!(!r.bot.arrived_samples().is_empty(), "the bot says so on its conference leg");
    let model = w.openai.received().last().unwrap().body.clone();
    let last = model["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "system");
    assert!(last["content"].as_str().unwrap().starts_with("action_add_to_conference failed"), "{last}");
    // The person hangs up: the transfer was not answered.
    w.twilio.status(&r.person, "completed", &[("CallDuration", "40")]).await;
    let ended = eventually(Duration::from_secs(10), || async {
        let now = stage_of(&w, &r.id).await;
        (now.0 == "ended").then_some(now)
    })
    .await;
    assert_eq!(ended, (json!("ended"), json!("transfer_started"), json!("transfer_unanswered")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steering_pool_with_no_free_number_refuses_and_the_bot_says_so() {
    let Some(w) = world(Backend::Sqlite).await else { return };
    let agent = warm_agent(&w, &[STEERING]).await;
    // The first call takes the pool's only number (its conference is still being set up)…
    w.openai.then(Script::text(&["I connect you now, please hold."]));
    let first = Line::Twilio.call(&w, agent.clone()).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    let _first_stream = Line::Twilio.answer(&w, &first).await;
    transcript_has(&w, &first_id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results("The manager, please.", true, true)).await;
    let name = format!("vocode-{first_id}");
    eventually(Duration::from_secs(10), || async { w.twilio.conference(&name).map(|_| ()) }).await;

    // …so the second call's warm transfer is refused, and its bot says so.
    w.openai.then(Script::text(&["I connect you now, please hold."]));
    w.openai.then(Script::text(&["Sorry, every line is busy."]));
    let second = Line::Twilio.call(&w, agent).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let _second_stream = Line::Twilio.answer(&w, &second).await;
    transcript_has(&w, &second_id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(2).await;
    w.deepgram.send_on(1, results("The manager, please.", true, true)).await;
    let text = transcript_has(&w, &second_id, "BOT: Sorry, every line is busy.").await;
    assert!(
        text.contains(
            "BOT_ACTION_FINISH: Did not add +16505550177 to the conference: every number of the account \
             connection's steering pool is in use by another warm transfer"
        ),
        "{text}"
    );
    // The action's output says 429, as the guide says the API does when the pool is used up.
    let refused = eventually(Duration::from_secs(10), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let events = w.receiver.got().into_iter().filter(|r| r.call_id() == second_id).map(|r| r.event());
        events.map(|e| e["payload"].clone()).find(|p| !p["action_output"].is_null())
    })
    .await;
    assert_eq!(refused["action_type"], "action_add_to_conference");
    assert_eq!(refused["action_output"]["response"]["status_code"], 429, "{refused}");
    assert_eq!(refused["action_output"]["response"]["success"], false);
    assert!(w.twilio.conference(&format!("vocode-{second_id}")).is_none(), "nothing was dialled");
    let second_telephony_id = second["telephony_id"].as_str().unwrap();
    assert!(w.twilio.requests("POST", &format!("/Calls/{second_telephony_id}")).is_empty(), "the call stayed put");
    assert_eq!(stage_of(&w, &second_id).await.1, "picked_up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_call_is_warm_transferred_too() {
    let Some(w) = world(Backend::Sqlite).await else { return };
    let agent = warm_agent(&w, &[STEERING]).await;
    let (status, body) =
        w.app.post("/v1/numbers/update?phone_number=14155550100", json!({"inbound_agent": agent})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    w.openai.then(Script::text(&["I connect you now, please hold."]));
    // Someone calls the number; Twilio answers with the server's TwiML and opens the stream.
    let (caller, person) = ("+16505559100", "CAinboundperson");
    w.twilio.track_inbound(person, caller, OUR_NUMBER);
    let (status, twiml) = w.twilio.inbound(OUR_NUMBER, caller, person).await;
    assert_eq!(status.as_u16(), 200, "{twiml}");
    let stream = twilio_stream(&w, &twiml, person).await;
    let (_, page) = w.app.get("/v1/calls/list").await;
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let r = warm(&w, id, person.to_owned(), stream).await;
    // The bot's leg calls the steering number from the number the person called.
    let dialled = w.twilio.call(&r.bot_participant);
    assert_eq!(dialled.field("From"), Some(OUR_NUMBER));
    assert_eq!(w.twilio.status(&r.third_party, "in-progress", &[]).await.as_u16(), 204);
    transcript_has(&w, &r.id, "BOT_ACTION_FINISH: Added +16505550177 to the conference").await;
    assert_eq!(stage_of(&w, &r.id).await.1, "transfer_successful");
}
