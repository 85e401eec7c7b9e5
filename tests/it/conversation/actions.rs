//! The agent's actions end to end, on Twilio and on Vonage: the fake model calls them as tools,
//! the server carries them out — an external API called and signed exactly as
//! `external-actions.mdx` verifies (checked by running the guide's own Python snippet), keys
//! pressed as tones on the line, the call hung up after the goodbye — and each action's start and
//! result are in the transcript and go out as `event_action`.
//!
//! SQLite only, as `behaviours`: the actions run in the call's engine; their transcript lines and
//! webhooks go through the same writes as messages, tested on both backends in `conversation`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::line::Line;
use super::{transcript_has, world, World, GREETING};
use crate::support::fake_deepgram::results;
use crate::support::fake_openai::Script;
use crate::support::{eventually, Behaviour, Receiver};

macro_rules! on_both_lines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn twilio() {
                    if let Some(w) = super::world(crate::support::Backend::Sqlite).await {
                        super::$name(w, super::Line::Twilio).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn vonage() {
                    if let Some(w) = super::world(crate::support::Backend::Sqlite).await {
                        super::$name(w, super::Line::Vonage).await;
                    }
                }
            }
        )*
    };
}

on_both_lines!(
    an_external_action_is_signed_as_the_guide_checks_and_its_answer_is_said,
    keys_the_model_presses_are_played_and_kept,
    the_bot_hangs_up_after_its_goodbye,
    a_transfer_that_is_answered_succeeds,
    a_transfer_nobody_answers_ends_the_call_unanswered,
    a_transfer_the_person_leaves_while_it_rings_ends_disconnected,
    a_transfer_to_something_that_is_not_a_number_dials_nothing,
);

/// An agent with `actions` (ids), whose webhook takes every event.
fn agent_with(w: &World, actions: &[&Value]) -> Value {
    json!({
        "prompt": {"content": "You book tables."},
        "initial_message": GREETING,
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "actions": actions.iter().map(|a| a["id"].clone()).collect::<Vec<_>>(),
        "webhook": {"subscriptions": ["event_message", "event_action", "event_transcript"], "url": w.receiver.url},
    })
}

async fn create_action(w: &World, body: Value) -> Value {
    let (status, action) = w.app.post("/v1/actions/create", body).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{action}");
    action
}

/// The call is answered, the greeting played, and the person says `words`; returns the call's id.
async fn person_says(w: &World, line: Line, agent: Value, words: &str) -> (String, super::line::Carrier) {
    let call = line.call(w, agent).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let carrier = line.answer(w, &call).await;
    transcript_has(w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results(words, true, true)).await;
    (id, carrier)
}

/// Whether `external-actions.mdx`'s verification snippet, run by Python, accepts the request.
fn the_guides_snippet_accepts(signature: &str, secret: &str, body: &[u8]) -> bool {
    // The guide's function, verbatim but for its async wrapper, on the body the receiver parsed.
    const SNIPPET: &str = r#"
import base64, hashlib, hmac, json, sys
request_signature_value, signature_secret = sys.argv[1], sys.argv[2]
payload = json.loads(sys.stdin.read())
signature_secret_as_bytes = base64.b64decode(signature_secret)
decoded_digest = base64.b64decode(request_signature_value)
calculated_digest = hmac.new(signature_secret_as_bytes, json.dumps(payload).encode("utf-8"), hashlib.sha256).digest()
assert hmac.compare_digest(decoded_digest, calculated_digest) is True
"#;
    let mut python = Command::new("python3")
        .args(["-c", SNIPPET, signature, secret])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the guide's snippet");
    python.stdin.take().unwrap().write_all(body).unwrap();
    python.wait().unwrap().success()
}

async fn an_external_action_is_signed_as_the_guide_checks_and_its_answer_is_said(w: World, line: Line) {
    let api = Receiver::start().await;
    api.plan([Behaviour::Json(200, json!({"result": {"booked": true}, "agent_message": "You are booked for 10:30."}))]);
    let action = create_action(
        &w,
        json!({"type": "action_external", "config": {
            "name": "Book_Table", "description": "Book a table at a time.", "url": api.url,
            "input_schema": {"type": "object", "properties": {"time": {"type": "string"}, "guest": {"type": "string"}}},
            "speak_on_send": true, "speak_on_receive": false}}),
    )
    .await;
    let secret = action["config"]["signature_secret"].as_str().expect("a secret made for the action").to_owned();
    let arguments = r#"{"time": "10:30am", "guest": "Zoë", "user_message": "One moment, I am booking it."}"#;
    w.openai.then(Script::tool_calls(&[("call_1", "Book_Table", &[&arguments[..20], &arguments[20..]])]));
    let (id, _carrier) = person_says(&w, line, agent_with(&w, &[&action]), "Ten thirty for Zoë.").await;

    let text = transcript_has(&w, &id, "BOT: You are booked for 10:30.").await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!("BOT: {GREETING}").as_str(),
            "HUMAN: Ten thirty for Zoë.",
            "BOT: One moment, I am booking it.",
            r#"BOT_ACTION_START: !STARTING ACTION action_external WITH PARAMETERS {"time":"10:30am","guest":"Zoë"}!"#,
            r#"BOT_ACTION_FINISH: !ACTION action_external FINISHED WITH OUTPUT {"result":{"booked":true},"success":true}!"#,
            "BOT: You are booked for 10:30.",
        ]
    );
    // The model was offered the action as vocode offers it.
    let offered = &w.openai.received()[0].body["tools"][0]["function"];
    assert_eq!(
        (offered["name"].clone(), offered["description"].clone()),
        (json!("Book_Table"), json!("Book a table at a time."))
    );
    assert_eq!(offered["parameters"]["required"], json!(["user_message"]));

    // The request: the guide's body and headers, signed so that its own snippet accepts it.
    let got = api.got();
    assert_eq!(got.len(), 1);
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["accept"], "application/json");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, json!({"call_id": id, "payload": {"time": "10:30am", "guest": "Zoë"}}));
    let signature = &request.headers["x-vocode-signature"];
    assert!(the_guides_snippet_accepts(signature, &secret, &request.body), "the guide's check refuses {signature}");
    assert!(!the_guides_snippet_accepts(signature, &secret, br#"{"call_id": "other", "payload": {}}"#));

    // Both halves of the action went out as `event_action`, between the messages, in order.
    let kinds = eventually(Duration::from_secs(10), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let kinds: Vec<String> = w.receiver.got().iter().map(|r| r.kind()).collect();
        (kinds.len() >= 6).then_some(kinds)
    })
    .await;
    assert_eq!(
        kinds,
        ["event_message", "event_message", "event_message", "event_action", "event_action", "event_message"]
    );
    let got = w.receiver.got();
    let (started, finished) = (got[3].event()["payload"].clone(), got[4].event()["payload"].clone());
    assert_eq!(started["action_type"], "action_external");
    assert_eq!(started["action_output"], Value::Null);
    assert_eq!(finished["action_output"]["response"]["result"], json!({"booked": true}));
}

async fn keys_the_model_presses_are_played_and_kept(w: World, line: Line) {
    let action = create_action(&w, json!({"type": "action_dtmf", "config": {}})).await;
    w.openai.then(Script::tool_calls(&[("call_1", "action_dtmf", &[r#"{"buttons": "42"}"#])]));
    let (id, carrier) = person_says(&w, line, agent_with(&w, &[&action]), "For reservations, press four two.").await;
    let text = transcript_has(&w, &id, "BOT_ACTION_FINISH").await;
    let lines: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(
        lines,
        [
            "BOT_ACTION_START: Attempting to press numbers: ['4', '2']",
            "BOT_ACTION_FINISH: Pressed numbers ['4', '2'] successfully"
        ]
    );
    // On Vonage the keys go through its DTMF API.
    if line == Line::Vonage {
        let (_, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
        let placed = w.vonage.calls().into_iter().find(|c| Some(c.uuid.as_str()) == call["telephony_id"].as_str());
        assert_eq!(placed.unwrap().dtmf, ["42"]);
        return;
    }
    // On Twilio they went out as the last audio: 300 ms of 4 (770 + 1209 Hz), a rest, 300 ms of 2
    // (697 + 1336 Hz), a rest.
    let rate = 8_000.0;
    let samples = eventually(Duration::from_secs(5), || async {
        let samples = carrier.arrived_samples();
        let tail = (0.8 * rate) as usize;
        (samples.len() > tail).then(|| samples[samples.len() - tail..].to_vec())
    })
    .await;
    let per_ms = (rate / 1000.0) as usize;
    let (four, two) = (&samples[..300 * per_ms], &samples[400 * per_ms..700 * per_ms]);
    assert!(share(four, 770.0, rate) > 0.3 && share(four, 1209.0, rate) > 0.3, "the 4 key");
    assert!(share(two, 697.0, rate) > 0.3 && share(two, 1336.0, rate) > 0.3, "the 2 key");
    assert!(share(four, 1336.0, rate) < 0.05, "not the 2 key's");
}

/// The share of `samples`' energy at `frequency` (Goertzel).
fn share(samples: &[i16], frequency: f64, rate: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * frequency / rate).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let energy: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (energy * samples.len() as f64 / 2.0)
}

async fn the_bot_hangs_up_after_its_goodbye(w: World, line: Line) {
    let action = create_action(&w, json!({"type": "action_end_conversation", "config": {}})).await;
    let goodbye = r#"{"user_message": "Thank you, goodbye!"}"#;
    w.openai.then(Script::tool_calls(&[("call_1", "action_end_conversation", &[goodbye])]));
    let call = line.call(&w, agent_with(&w, &[&action])).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let _carrier = line.answer(&w, &call).await;
    transcript_has(&w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results("That is all, thanks.", true, true)).await;
    let text = transcript_has(&w, &id, "BOT_ACTION_FINISH").await;
    assert_eq!(
        text.lines().skip(2).collect::<Vec<_>>(),
        [
            "BOT: Thank you, goodbye!",
            "BOT_ACTION_START: Attempting to end conversation",
            "BOT_ACTION_FINISH: Successfully ended conversation"
        ]
    );
    eventually(Duration::from_secs(10), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        line.hung_up(&w, &call).then_some(())
    })
    .await;
}

/// The call's stage and outcome now.
async fn stage_of(w: &World, id: &str) -> (Value, Value) {
    let (_, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    (call["stage"].clone(), call["stage_outcome"].clone())
}

/// The model asks for a transfer to the action's number; returns the call once the carrier was
/// asked to carry it out, and what it was asked (Twilio's TwiML or Vonage's NCCO).
async fn transferred(w: &World, line: Line) -> (Value, Value) {
    let action =
        create_action(w, json!({"type": "action_transfer_call", "config": {"phone_number": "+1 650 555 0188"}})).await;
    w.openai.then(Script::tool_calls(&[(
        "call_1",
        "action_transfer_call",
        &[r#"{"user_message": "Transferring you now."}"#],
    )]));
    let call = line.call(w, agent_with(w, &[&action])).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let _carrier = line.answer(w, &call).await;
    transcript_has(w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.deepgram.send(results("Can I talk to a person?", true, true)).await;
    let text = transcript_has(w, &id, "BOT_ACTION_FINISH").await;
    assert_eq!(
        text.lines().skip(2).collect::<Vec<_>>(),
        [
            "BOT: Transferring you now.",
            "BOT_ACTION_START: Attempting to transfer call to +1 650 555 0188",
            "BOT_ACTION_FINISH: Successfully transferred call"
        ]
    );
    assert_eq!(stage_of(w, &id).await, (json!("transfer_started"), Value::Null));
    let telephony_id = call["telephony_id"].as_str().unwrap();
    let asked = match line {
        Line::Twilio => {
            let forms = w.twilio.requests("POST", &format!("/Calls/{telephony_id}"));
            let twiml = forms.iter().flatten().find(|(k, _)| k == "Twiml").expect("the call redirected").1.clone();
            json!(twiml)
        }
        Line::Vonage => {
            let placed = w.vonage.calls().into_iter().find(|c| c.uuid == telephony_id).unwrap();
            assert_eq!(placed.transfers.len(), 1, "one transfer");
            placed.transfers[0].clone()
        }
    };
    (call, asked)
}

/// The carrier's news of the third party's leg: it answered, or it did not.
async fn third_party(w: &World, line: Line, call: &Value, asked: &Value, answered: bool) {
    let telephony_id = call["telephony_id"].as_str().unwrap();
    match line {
        Line::Twilio => {
            let twiml = asked.as_str().unwrap();
            let attribute = |name: &str| {
                twiml.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&")
            };
            assert!(twiml.contains(">+16505550188</Number></Dial>"), "{twiml}");
            let token = w.twilio.state.auth_token.clone();
            let account = w.twilio.state.account_sid.clone();
            let form = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
                let mut form = vec![("AccountSid".to_owned(), account.clone())];
                form.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                form
            };
            if answered {
                let leg = form(&[
                    ("CallSid", "CAthirdparty"),
                    ("ParentCallSid", telephony_id),
                    ("CallStatus", "in-progress"),
                ]);
                let (status, _) = w.twilio.post_signed(&attribute("statusCallback"), &leg, Some(&token)).await;
                assert_eq!(status.as_u16(), 204);
                // Someone else's call cannot claim this one's transfer.
                let forged = form(&[("CallSid", "CAx"), ("ParentCallSid", "CAother"), ("CallStatus", "in-progress")]);
                let (status, _) = w.twilio.post_signed(&attribute("statusCallback"), &forged, Some(&token)).await;
                assert_eq!(status.as_u16(), 400);
            }
            let dial_status = if answered { "completed" } else { "no-answer" };
            let ended =
                form(&[("CallSid", telephony_id), ("DialCallStatus", dial_status), ("DialCallSid", "CAthirdparty")]);
            let (status, next) = w.twilio.post_signed(&attribute("action"), &ended, Some(&token)).await;
            assert_eq!(status.as_u16(), 200);
            assert!(next.contains("<Hangup/>"), "the call ends after its transfer: {next}");
            w.twilio.status(telephony_id, "completed", &[("CallDuration", "42")]).await;
        }
        Line::Vonage => {
            let connect = &asked[0];
            assert_eq!(connect["action"], "connect");
            assert_eq!(connect["endpoint"][0], json!({"type": "phone", "number": "16505550188"}));
            let event_url = connect["eventUrl"][0].as_str().unwrap();
            let secret = w.vonage.state.signature_secret.clone();
            let leg = if answered { "answered" } else { "timeout" };
            let status = w.vonage.post_event(event_url, "leg-2", json!({"status": leg}), Some(&secret)).await;
            assert_eq!(status.as_u16(), 204);
            let unsigned = w.vonage.post_event(event_url, "leg-2", json!({"status": "answered"}), None).await;
            assert_eq!(unsigned.as_u16(), 403, "an unsigned event changes nothing");
            w.vonage.event(telephony_id, json!({"status": "completed", "duration": "42"}), Some(&secret)).await;
        }
    }
}

async fn a_transfer_that_is_answered_succeeds(w: World, line: Line) {
    let (call, asked) = transferred(&w, line).await;
    let id = call["id"].as_str().unwrap();
    third_party(&w, line, &call, &asked, true).await;
    let (_, ended) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(
        (ended["status"].clone(), ended["stage"].clone(), ended["stage_outcome"].clone()),
        (json!("ended"), json!("transfer_successful"), json!("human_disconnected")),
        "{ended}"
    );
}

async fn a_transfer_nobody_answers_ends_the_call_unanswered(w: World, line: Line) {
    let (call, asked) = transferred(&w, line).await;
    let id = call["id"].as_str().unwrap();
    third_party(&w, line, &call, &asked, false).await;
    let (_, ended) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(
        (ended["status"].clone(), ended["stage"].clone(), ended["stage_outcome"].clone()),
        (json!("ended"), json!("transfer_started"), json!("transfer_unanswered")),
        "{ended}"
    );
}

async fn a_transfer_to_something_that_is_not_a_number_dials_nothing(w: World, line: Line) {
    // The API takes any string as the number (the spec's type): the action checks it when it runs.
    let action =
        create_action(&w, json!({"type": "action_transfer_call", "config": {"phone_number": "my manager"}})).await;
    let arguments = r#"{"user_message": "Let me get them."}"#;
    w.openai.then(Script::tool_calls(&[("call_1", "action_transfer_call", &[arguments])]));
    w.openai.then(Script::text(&["Sorry, I could not transfer you."]));
    let (id, _carrier) = person_says(&w, line, agent_with(&w, &[&action]), "Put my manager on.").await;
    let text = transcript_has(&w, &id, "BOT: Sorry, I could not transfer you.").await;
    let finish = text.lines().find(|l| l.starts_with("BOT_ACTION_FINISH")).expect("the action's result");
    assert!(
        finish.starts_with(r#"BOT_ACTION_FINISH: Did not transfer call: "my manager" is not a phone number"#),
        "{finish}"
    );
    assert_eq!(stage_of(&w, &id).await, (json!("picked_up"), Value::Null), "the call goes on with the bot");
    let (_, call) = w.app.get(&format!("/v1/calls?id={id}")).await;
    let telephony_id = call["telephony_id"].as_str().unwrap();
    match line {
        Line::Twilio => {
            assert!(w.twilio.requests("POST", &format!("/Calls/{telephony_id}")).is_empty(), "nothing dialled")
        }
        Line::Vonage => assert!(w.vonage.calls().iter().all(|c| c.transfers.is_empty()), "nothing dialled"),
    }
}

async fn a_transfer_the_person_leaves_while_it_rings_ends_disconnected(w: World, line: Line) {
    let (call, asked) = transferred(&w, line).await;
    let (id, telephony_id) = (call["id"].as_str().unwrap(), call["telephony_id"].as_str().unwrap());
    match line {
        Line::Twilio => {
            // Twilio's `<Dial>` ends `canceled` when the caller hangs up before the answer.
            let twiml = asked.as_str().unwrap();
            let action = twiml.split("action=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
            let form: Vec<(String, String)> = [
                ("AccountSid", w.twilio.state.account_sid.as_str()),
                ("CallSid", telephony_id),
                ("DialCallStatus", "canceled"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let (status, _) = w.twilio.post_signed(&action, &form, Some(&w.twilio.state.auth_token.clone())).await;
            assert_eq!(status.as_u16(), 200);
            w.twilio.status(telephony_id, "completed", &[("CallDuration", "12")]).await;
        }
        Line::Vonage => {
            let secret = w.vonage.state.signature_secret.clone();
            w.vonage.event(telephony_id, json!({"status": "completed", "duration": "12"}), Some(&secret)).await;
        }
    }
    let (_, ended) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(
        (ended["status"].clone(), ended["stage"].clone(), ended["stage_outcome"].clone()),
        (json!("ended"), json!("transfer_started"), json!("transfer_disconnected")),
        "{ended}"
    );
}
