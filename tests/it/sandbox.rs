//! The built-in sandbox carrier: with no carrier account at all, a number is bought and every
//! documented scenario plays out to its documented outcome, through the real callback
//! verification and media-stream paths.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::{ConversationArgs, TelephonyArgs};

use crate::support::{eventually, on_both_backends, Backend, Options, TestApp};

on_both_backends!(sandbox => every_documented_scenario_ends_as_documented, buying_and_cancelling_sandbox_numbers,
    sandbox_people_talk_with_the_stand_ins, sandbox_calls_are_transferred);

async fn sandbox(backend: Backend) -> Option<TestApp> {
    let telephony = TelephonyArgs { sandbox_time_scale: 0.05, ..TelephonyArgs::default() };
    // No speech or model provider at all: sandbox calls talk with the stand-ins.
    let conversation = ConversationArgs::default();
    TestApp::spawn_with(backend, Options { telephony, conversation, workers: 2, ..Options::default() }).await
}

async fn ended(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, call) = app.get(&format!("/v1/calls?id={id}")).await;
        if matches!(call["status"].as_str(), Some("ended" | "error")) {
            return call;
        }
        if tokio::time::Instant::now() >= deadline {
            // How far it got: on the line (what the person said, marks) and on the stream.
            let line = app.state.sandbox.as_ref().and_then(|sandbox| sandbox.line(id));
            let stream = app.state.telephony.streams.get(uuid::Uuid::parse_str(id).unwrap());
            panic!("the call did not end within 20 s: {call}\nline: {line:?}\nstream: {stream:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        // A machine the call hangs up on may be heard before its stream binds (a loaded machine
        // answers the detection first): only calls that went on talk.
        if expected.1 == "picked_up" && *on_no_human_answer == "continue" {
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
    // The person talked (with the server's stand-ins): both sides are in a WAV recording.
    assert_eq!(res.headers()["content-type"], "audio/wav");
    assert!(res.bytes().await.unwrap().starts_with(b"RIFF"));
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

/// The call's transcript, line by line, once the call has ended.
async fn transcript_of(app: &TestApp, id: &str) -> (Value, Vec<String>) {
    let call = ended(app, id).await;
    let lines = call["transcript"].as_str().unwrap_or_default().lines().map(str::to_owned).collect();
    (call, lines)
}

/// How many 50 ms windows of a recording are the bot's tone alone, and how many are loud but
/// not the tone (the person's speech).
fn sides_of(wav: &[u8]) -> (usize, usize) {
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8_000);
    assert_eq!(u16::from_le_bytes([wav[34], wav[35]]), 16);
    let samples: Vec<f64> = wav[44..].chunks_exact(2).map(|b| f64::from(i16::from_le_bytes([b[0], b[1]]))).collect();
    let (mut tone, mut speech) = (0, 0);
    for window in samples.chunks_exact(400) {
        let energy: f64 = window.iter().map(|x| x * x).sum();
        if (energy / 400.0).sqrt() < 300.0 {
            continue;
        }
        // Goertzel at the stand-in voice's 440 Hz (bin 22 of 400 at 8 kHz).
        let coeff = 2.0 * (2.0 * std::f64::consts::PI * 22.0 / 400.0).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for x in window {
            let s0 = x + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let share = power / (energy * 400.0 / 2.0);
        if share > 0.6 {
            tone += 1;
        } else if share < 0.3 {
            speech += 1;
        }
    }
    (tone, speech)
}

/// With no speech or model provider configured, sandbox calls still talk: the sandbox's person
/// speaks recorded speech, the server hears it through the stand-in speech-to-text, answers with
/// the scripted model and speaks with the tone voice, and each scenario's person behaves as
/// documented.
async fn sandbox_people_talk_with_the_stand_ins(app: TestApp) {
    let sandbox = app.state.sandbox.clone().expect("sandbox mode");
    let (_, twilio) = app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"})).await;
    let (_, vonage) = app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "212"})).await;
    let greeting = "Hi, it's Ana.";
    let agent = json!({"prompt": {"content": "Ask Ajay if his refrigerator is running"}, "initial_message": greeting});
    let silent_agent = json!({"prompt": {"content": "Wait."}, "initial_message": greeting,
                              "idle_time_seconds": 1, "ask_if_human_present_on_idle": true});
    // Every scenario on both carriers: Twilio's μ-law 8 kHz and Vonage's 16 kHz PCM.
    let scenarios =
        [("14155550199", &agent), ("14155550110", &agent), ("14155550111", &agent), ("14155550112", &silent_agent)];
    let mut ids = Vec::new();
    for (to, agent) in scenarios {
        let mut pair = Vec::new();
        for number in [&twilio, &vonage] {
            let (status, call) = app
                .post("/v1/calls/create", json!({"from_number": number["number"], "to_number": to, "agent": agent}))
                .await;
            assert_eq!(status, StatusCode::OK, "{call}");
            pair.push(call["id"].as_str().unwrap().to_owned());
        }
        ids.push(pair);
    }
    let hanging_up_agent = json!({"prompt": {"content": "Ask Ajay if his refrigerator is running"},
                                  "initial_message": greeting, "actions": [{"type": "action_end_conversation"}]});
    let (status, call) = app
        .post(
            "/v1/calls/create",
            json!({"from_number": twilio["number"], "to_number": "14155550199", "agent": hanging_up_agent}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{call}");
    ids.push(vec![call["id"].as_str().unwrap().to_owned()]);
    let bot_greets = format!("BOT: {greeting}");

    // A person who hears the greeting, says one thing, hears the answer, says goodbye, hangs up.
    for id in &ids[0] {
        let (call, lines) = transcript_of(&app, id).await;
        assert_eq!(
            lines,
            [
                bot_greets.as_str(),
                "HUMAN: Yes, this is Ajay speaking.",
                "BOT: Got it: Yes, this is Ajay speaking.",
                "HUMAN: Okay, thank you. Goodbye.",
                "BOT: Goodbye, and thanks for calling!",
            ],
            "{call}"
        );
        assert_eq!(call["stage_outcome"], "human_disconnected", "{call}");
        let line = sandbox.line(id).expect("the call's line");
        assert_eq!(line.said, ["Yes, this is Ajay speaking.", "Okay, thank you. Goodbye."]);
        assert_eq!(line.clears, 0, "nobody interrupted");
        assert!(line.marks_played >= 10, "marks came back as the bot's audio played: {line:?}");
        // When each answered turn reached each stage, from the end of the person's speech: both
        // answers, each stage after the one before.
        let (status, latency) = app.get(&format!("/calls/latency?id={id}")).await;
        assert_eq!(status, StatusCode::OK, "{latency}");
        assert_eq!(latency["call_id"], json!(id));
        let turns = latency["turns"].as_array().unwrap();
        assert_eq!(turns.iter().map(|t| t["turn"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2], "{latency}");
        for turn in turns {
            let stage = |name: &str| turn[name].as_f64().unwrap_or_else(|| panic!("{name} in {turn}"));
            assert!(stage("recognition_ms") >= 0.0, "{turn}");
            assert!(stage("recognition_ms") <= stage("end_of_turn_ms"), "{turn}");
            assert!(stage("end_of_turn_ms") <= stage("first_token_ms"), "{turn}");
            assert!(stage("first_token_ms") <= stage("first_audio_ms"), "{turn}");
            assert!(stage("first_audio_ms") <= stage("first_frame_ms"), "{turn}");
        }
        let p95 = latency["summary"]["first_frame_ms"]["p95"].as_f64().unwrap();
        let slowest = turns.iter().map(|t| t["first_frame_ms"].as_f64().unwrap()).fold(0.0, f64::max);
        assert_eq!(p95, slowest, "two turns: the 95th percentile is the slower one");
        // Its recording holds both sides.
        let res =
            app.request(reqwest::Method::GET, &format!("/v1/calls/recording?id={id}"), Some(&app.key), None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "audio/wav");
        let (tone, speech) = sides_of(&res.bytes().await.unwrap());
        // The bot spoke ~4.5 s of tone (90 windows), the person ~3 s of speech (60).
        assert!(tone >= 20 && speech >= 10, "{call}: bot windows {tone}, person windows {speech}");
    }

    // The latencies are the caller's own, as the call is.
    let (_, other) = app.new_user("someone-else").await;
    let (status, refused) = app.get_as(&other, &format!("/calls/latency?id={}", ids[0][0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
    assert_eq!(refused["detail"], format!("Call {} not found", ids[0][0]));
    let res = app.request(reqwest::Method::GET, &format!("/calls/latency?id={}", ids[0][0]), None, None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, invalid) = app.get("/calls/latency?id=not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");

    // Barging in one second into the bot's answer: the server clears the carrier's buffer, and
    // the bot's message is cut to what the person heard.
    for id in &ids[1] {
        let (call, lines) = transcript_of(&app, id).await;
        let answer = "Got it: Yes, this is Ajay speaking.";
        assert_eq!(lines.len(), 5, "{call}");
        assert_eq!(lines[..2], [bot_greets.clone(), "HUMAN: Yes, this is Ajay speaking.".to_owned()], "{call}");
        let cut = lines[2].strip_prefix("BOT: ").expect("the bot's cut-off answer");
        assert!(!cut.is_empty() && cut.len() < answer.len() && answer.starts_with(cut), "{cut:?} of {answer:?}");
        assert_eq!(lines[3..], ["HUMAN: Sorry, I have to go now. Goodbye.", "BOT: Goodbye, and thanks for calling!"]);
        assert!(sandbox.line(id).unwrap().clears >= 1, "a clear reached the carrier: {call}");
    }

    // Backchannels while the bot talks (at the default low sensitivity) leave its message whole.
    for id in &ids[2] {
        let (call, lines) = transcript_of(&app, id).await;
        let at = |line: &str| lines.iter().position(|l| l == line).unwrap_or_else(|| panic!("{line:?} in {call}"));
        let asked = at("HUMAN: Tell me about the offer you have for me.");
        let answered = at("BOT: Got it: Tell me about the offer you.");
        assert!(asked < at("HUMAN: Mhm.") && at("HUMAN: Mhm.") < answered, "{lines:?}");
        assert_eq!(lines.last().unwrap(), "BOT: Goodbye, and thanks for calling!");
        let line = sandbox.line(id).unwrap();
        assert!(line.said.contains(&"Mhm.".to_owned()), "{line:?}");
        assert_eq!(line.clears, 0, "the bot was not interrupted: {call}");
    }

    // An agent that may end the conversation says goodbye and hangs up itself.
    let (call, lines) = transcript_of(&app, &ids[4][0]).await;
    assert_eq!(
        lines[3..],
        [
            "HUMAN: Okay, thank you. Goodbye.",
            "BOT: Goodbye, and thanks for calling!",
            "BOT_ACTION_START: Attempting to end conversation",
            "BOT_ACTION_FINISH: Successfully ended conversation",
        ],
        "{call}"
    );
    assert_eq!(call["stage_outcome"], "bot_disconnected", "the bot hung up: {call}");

    // Silence: the bot checks on the person once after the idle time, then hangs up.
    for id in &ids[3] {
        let (call, lines) = transcript_of(&app, id).await;
        assert_eq!(lines, [bot_greets.as_str(), "BOT: Are you still there?"], "{call}");
        assert_eq!(call["stage_outcome"], "bot_disconnected", "{call}");
        assert!(sandbox.line(id).unwrap().said.is_empty());
    }
}

/// A person who asks for a person, on an agent that may transfer the call: the scripted model
/// transfers it, the sandbox ends the call's stream and plays the third party, on Twilio and on
/// Vonage — one that answers (the transfer succeeds, and the call ends once the third party hangs
/// up) and one that never does (the call ends with the transfer unanswered).
async fn sandbox_calls_are_transferred(app: TestApp) {
    let sandbox = app.state.sandbox.clone().expect("sandbox mode");
    let (_, twilio) = app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"})).await;
    let (_, vonage) = app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "212"})).await;
    let greeting = "Hi, it's Ana.";
    let expected = [
        ("+14155550199", ("transfer_successful", "human_disconnected")),
        ("+14155550103", ("transfer_started", "transfer_unanswered")),
    ];
    let mut calls = Vec::new();
    for (transfer_to, outcome) in expected {
        let agent = json!({"prompt": {"content": "Put the caller through when they ask."}, "initial_message": greeting,
                           "actions": [{"type": "action_transfer_call", "config": {"phone_number": transfer_to}}]});
        for number in [&twilio, &vonage] {
            let (status, call) = app
                .post(
                    "/v1/calls/create",
                    json!({"from_number": number["number"], "to_number": "14155550113", "agent": agent}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{call}");
            let provider = number["telephony_provider"].as_str().unwrap().to_owned();
            calls.push((transfer_to, outcome, provider, call["id"].as_str().unwrap().to_owned()));
        }
    }
    for (transfer_to, (stage, outcome), provider, id) in &calls {
        let (call, lines) = transcript_of(&app, id).await;
        assert_eq!(
            lines,
            [
                format!("BOT: {greeting}"),
                "HUMAN: Can I speak to a person, please?".to_owned(),
                "BOT: Sure, transferring you now.".to_owned(),
                format!("BOT_ACTION_START: Attempting to transfer call to {transfer_to}"),
                "BOT_ACTION_FINISH: Successfully transferred call".to_owned(),
            ],
            "{provider} to {transfer_to}: {call}"
        );
        assert_eq!(
            (call["status"].as_str(), call["stage"].as_str(), call["stage_outcome"].as_str()),
            (Some("ended"), Some(*stage), Some(*outcome)),
            "{provider} to {transfer_to}: {call}"
        );
        assert_eq!(call["telephony_metadata"]["type"], format!("telephony_metadata_{provider}"), "{call}");
        // The person asked once and waited on the line; the stream to the server ended with the
        // transfer, and the person said nothing more.
        let line = sandbox.line(id).expect("the call's line");
        assert_eq!(line.said, ["Can I speak to a person, please?"], "{provider} to {transfer_to}");
        let stream = app.state.telephony.streams.get(uuid::Uuid::parse_str(id).unwrap()).expect("a media stream");
        assert!(stream.bound && stream.media_frames > 0, "{provider} to {transfer_to}: {stream:?}");
    }
}

/// Sandbox calls live in the process that placed them, so a sandbox server does not share a
/// Postgres database with another live server process: the second one exits at once, non-zero,
/// with one line saying why; once the first has stopped, another starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_server_refuses_to_share_its_database_with_another_live_one() {
    use crate::support::{hex_key, ServerProcess, TestDb};

    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let secrets_key = hex_key();
    let env = [
        ("SECRETS_KEY", secrets_key.as_str()),
        ("VOCODE_API_KEY", "vk_sandbox_replicas_key_0123"),
        ("CARRIER_MODE", "sandbox"),
        ("RUST_LOG", "warn"),
    ];
    let mut first = ServerProcess::start(&db.url, &env);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_vocode-server"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("SPEECH_DIR", "target/no-speech")
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second sandbox server started on the same database");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = second.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!status.success(), "{status:?}");
    assert!(!stdout.contains("listening"), "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("sandbox")
            && errors[0].contains("another live server process")
            && errors[0].contains("CARRIER_MODE=live"),
        "{}",
        errors[0]
    );
    let ready = reqwest::get(format!("{}/ready", first.base)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "the first one serves on");

    // The first stops (SIGTERM: it leaves at once); a new one starts without waiting.
    let pid = first.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(first.child.wait().unwrap().success());
    let started = std::time::Instant::now();
    let _third = ServerProcess::start(&db.url, &env);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
