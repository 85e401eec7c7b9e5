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
    // The keys went out as the last audio: 300 ms of 4 (770 + 1209 Hz), a rest, 300 ms of 2
    // (697 + 1336 Hz), a rest.
    let rate = match line {
        Line::Twilio => 8_000.0,
        Line::Vonage => 16_000.0,
    };
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
