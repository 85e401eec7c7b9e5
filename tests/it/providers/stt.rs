//! Deepgram's live transcription against a fake Deepgram: what a session asks for, the audio it
//! passes through, the events it reports, keep-alives, reconnects and a clean close.

use std::time::Duration;

use axum::extract::ws::Message;
use serde_json::json;
use vocode_server::conversation::audio::Encoding;
use vocode_server::conversation::stt::{
    Deepgram, DeepgramSettings, SpeechToText, SttConfig, SttError, SttEvent, SttSession,
};

use crate::support::eventually;
use crate::support::fake_deepgram::{results, speech_started, utterance_end, FakeDeepgram};

const WAIT: Duration = Duration::from_secs(10);

fn settings(fake: &FakeDeepgram) -> DeepgramSettings {
    let mut settings = DeepgramSettings::new(fake.key.clone());
    settings.url = fake.url.clone();
    // Out of the way unless a test is about it.
    settings.keep_alive = Duration::from_secs(60);
    settings.reconnect_backoff = Duration::from_millis(10);
    settings
}

async fn open(fake: &FakeDeepgram, config: SttConfig) -> SttSession {
    Deepgram::new(settings(fake)).open(config).await.unwrap()
}

async fn next_event(session: &mut SttSession) -> SttEvent {
    let event = tokio::time::timeout(WAIT, session.events.recv())
        .await
        .expect("an event in time")
        .expect("the session is open");
    undated(event)
}

/// The event without where its words were (the dating has tests of its own).
fn undated(event: SttEvent) -> SttEvent {
    match event {
        SttEvent::Interim { text, .. } => SttEvent::Interim { text, spoken: None },
        SttEvent::Final { text, speech_final, .. } => SttEvent::Final { text, speech_final, spoken: None },
        other => other,
    }
}

/// Audio that is not the same byte over and over, so order and loss show.
fn frames(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|f| (0..size).map(|i| ((f * 7 + i * 13) % 256) as u8).collect()).collect()
}

#[tokio::test]
async fn a_session_asks_for_what_the_config_says() {
    let fake = FakeDeepgram::start().await;
    let mut config = SttConfig::new(Encoding::Mulaw8k);
    config.language = Some("en-US".into());
    config.keywords = vec!["Vocode".into(), "R&D team:2".into()];
    config.endpointing_ms = 300;
    let _session = open(&fake, config).await;
    let connection = fake.wait_for_connections(1).await.remove(0);
    assert_eq!(connection.authorization.as_deref(), Some(format!("Token {}", fake.key).as_str()));
    for (name, value) in [
        ("encoding", "mulaw"),
        ("sample_rate", "8000"),
        ("channels", "1"),
        ("model", "nova-3"),
        ("language", "en-US"),
        ("punctuate", "true"),
        ("smart_format", "true"),
        ("interim_results", "true"),
        ("endpointing", "300"),
        ("utterance_end_ms", "1000"),
        ("vad_events", "true"),
    ] {
        assert_eq!(connection.param(name), [value], "{name} in {:?}", connection.query);
    }
    // Nova-3 takes keyterms, URL-encoded, without the boost older models understand.
    assert_eq!(connection.param("keyterm"), ["Vocode", "R&D team"]);
    assert!(connection.raw_query.contains("keyterm=R%26D+team"), "{}", connection.raw_query);
    assert!(connection.param("keywords").is_empty(), "{:?}", connection.query);

    let mut settings = settings(&fake);
    settings.model = "nova-2-phonecall".into();
    let mut config = SttConfig::new(Encoding::Linear16k);
    config.keywords = vec!["Vocode:1.5".into()];
    let _session = Deepgram::new(settings).open(config).await.unwrap();
    let connection = fake.wait_for_connections(2).await.remove(1);
    assert_eq!(connection.param("encoding"), ["linear16"]);
    assert_eq!(connection.param("sample_rate"), ["16000"]);
    assert_eq!(connection.param("model"), ["nova-2-phonecall"]);
    assert_eq!(connection.param("keywords"), ["Vocode:1.5"]);
    assert!(connection.param("language").is_empty(), "{:?}", connection.query);
}

#[tokio::test]
async fn audio_reaches_deepgram_byte_for_byte() {
    let fake = FakeDeepgram::start().await;
    let session = open(&fake, SttConfig::new(Encoding::Linear16k)).await;
    let frames = frames(50, 640);
    for frame in &frames {
        session.audio.send(frame.clone().into()).await.unwrap();
    }
    let expected = frames.concat();
    let audio = eventually(WAIT, || async {
        let audio = fake.connections()[0].audio.clone();
        (audio.len() >= expected.len()).then_some(audio)
    })
    .await;
    assert!(audio == expected, "{} bytes arrived, not the {} sent in order", audio.len(), expected.len());
}

#[tokio::test]
async fn events_come_out_in_the_order_deepgram_sends_them() {
    let fake = FakeDeepgram::start().await;
    let mut session = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    for message in [
        speech_started(),
        results("hel", false, false),
        results("", false, false),
        results("Hello there,", true, false),
        results("how are", false, false),
        results("how are you?", true, true),
        json!({"type": "Metadata", "request_id": "r", "duration": 1.0, "channels": 1}),
        utterance_end(),
    ] {
        fake.send(message).await;
    }
    let mut events = Vec::new();
    for _ in 0..6 {
        events.push(next_event(&mut session).await);
    }
    assert_eq!(
        events,
        [
            SttEvent::SpeechStarted,
            SttEvent::Interim { text: "hel".into(), spoken: None },
            SttEvent::Final { text: "Hello there,".into(), speech_final: false, spoken: None },
            SttEvent::Interim { text: "how are".into(), spoken: None },
            SttEvent::Final { text: "how are you?".into(), speech_final: true, spoken: None },
            SttEvent::UtteranceEnd,
        ]
    );
}

#[tokio::test]
async fn keep_alives_are_sent_only_while_no_audio_flows() {
    let fake = FakeDeepgram::start().await;
    let mut settings = settings(&fake);
    settings.keep_alive = Duration::from_millis(400);
    let session = Deepgram::new(settings).open(SttConfig::new(Encoding::Mulaw8k)).await.unwrap();
    // A second of audio in 20 ms frames: never a pause as long as the keep-alive interval.
    for frame in frames(50, 160) {
        session.audio.send(frame.into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connection = eventually(WAIT, || async {
        let connection = fake.connections().remove(0);
        (connection.audio.len() == 50 * 160).then_some(connection)
    })
    .await;
    assert_eq!(connection.keep_alives, 0, "keep-alives while audio flowed");
    // Then a hold: keep-alives, as long as it lasts.
    let keep_alives = eventually(WAIT, || async {
        let keep_alives = fake.connections()[0].keep_alives;
        (keep_alives >= 2).then_some(keep_alives)
    })
    .await;
    assert!(keep_alives >= 2);
    assert!(fake.connections()[0].other_texts.is_empty(), "{:?}", fake.connections()[0].other_texts);
}

#[tokio::test]
async fn a_dropped_connection_is_reopened_and_events_keep_flowing() {
    let fake = FakeDeepgram::start().await;
    let mut session = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    fake.send(results("before", true, true)).await;
    assert_eq!(
        next_event(&mut session).await,
        SttEvent::Final { text: "before".into(), speech_final: true, spoken: None }
    );

    fake.drop_connection().await;
    assert_eq!(next_event(&mut session).await, SttEvent::Reconnected);
    let connections = fake.wait_for_connections(2).await;
    assert_eq!(connections[1].query, connections[0].query);
    assert_eq!(connections[1].authorization, connections[0].authorization);

    session.audio.send(vec![1, 2, 3].into()).await.unwrap();
    fake.send(results("after", true, false)).await;
    assert_eq!(
        next_event(&mut session).await,
        SttEvent::Final { text: "after".into(), speech_final: false, spoken: None }
    );
    eventually(WAIT, || async { (fake.connections()[1].audio == [1, 2, 3]).then_some(()) }).await;

    // A close from Deepgram's side (as on NET-0001) is reopened too.
    fake.close_connection(1011, "NET-0001").await;
    assert_eq!(next_event(&mut session).await, SttEvent::Reconnected);
    fake.send(utterance_end()).await;
    assert_eq!(next_event(&mut session).await, SttEvent::UtteranceEnd);
    assert_eq!(fake.connections().len(), 3);
}

#[tokio::test]
async fn a_session_gives_up_when_deepgram_stays_away() {
    let fake = FakeDeepgram::start().await;
    let mut session = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    fake.wait_for_connections(1).await;
    fake.refuse(Some(503));
    fake.drop_connection().await;
    let SttEvent::Failed(reason) = next_event(&mut session).await else { panic!("not a failure") };
    assert!(reason.contains("503") && reason.contains("Deepgram is unavailable."), "{reason}");
    assert!(!reason.contains(&fake.key), "{reason}");
    assert_eq!(fake.refused(), 3, "three attempts");
    // Then the session is over, both ways.
    assert_eq!(tokio::time::timeout(WAIT, session.events.recv()).await.unwrap(), None);
    eventually(WAIT, || async { session.audio.send(vec![0; 160].into()).await.is_err().then_some(()) }).await;
}

#[tokio::test]
async fn a_malformed_message_is_ignored() {
    let fake = FakeDeepgram::start().await;
    let mut session = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    fake.send_raw(Message::Text("this is not json".into())).await;
    fake.send_raw(Message::Binary(vec![0xff, 0x00].into())).await;
    fake.send(json!({"type": "Results", "is_final": true})).await;
    fake.send(json!({"type": "Results", "channel": {"alternatives": [{"transcript": 42}]}})).await;
    fake.send(json!({"type": "SomethingNew", "value": 1})).await;
    fake.send(json!(["type", "Results"])).await;
    fake.send(results("still listening", true, true)).await;
    assert_eq!(
        next_event(&mut session).await,
        SttEvent::Final { text: "still listening".into(), speech_final: true, spoken: None }
    );
    assert_eq!(fake.connections().len(), 1, "no reconnect");
    assert!(fake.connections()[0].open);
}

#[tokio::test]
async fn dropping_the_session_sends_close_stream() {
    let fake = FakeDeepgram::start().await;
    let session = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    fake.wait_for_connections(1).await;
    assert_eq!(fake.connections()[0].close_streams, 0);
    drop(session);
    let connection = eventually(WAIT, || async {
        let connection = fake.connections().remove(0);
        (!connection.open).then_some(connection)
    })
    .await;
    assert_eq!(connection.close_streams, 1);
    assert_eq!(fake.connections().len(), 1, "no reconnect after a close");
}

#[tokio::test]
async fn closing_the_audio_delivers_the_last_results_then_ends() {
    let fake = FakeDeepgram::start().await;
    fake.on_finalize(vec![results("Please call me back", true, false)]);
    fake.on_close_stream(vec![results("goodbye", true, true)]);
    let SttSession { audio, mut events } = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    audio.send(vec![7; 160].into()).await.unwrap();
    drop(audio);
    // What it was still hearing (Finalize), then what was left (CloseStream), then the end.
    let next = tokio::time::timeout(WAIT, events.recv()).await.unwrap().map(undated);
    assert_eq!(next, Some(SttEvent::Final { text: "Please call me back".into(), speech_final: false, spoken: None }));
    let next = tokio::time::timeout(WAIT, events.recv()).await.unwrap().map(undated);
    assert_eq!(next, Some(SttEvent::Final { text: "goodbye".into(), speech_final: true, spoken: None }));
    assert_eq!(tokio::time::timeout(WAIT, events.recv()).await.unwrap(), None);
    let connection = fake.connections().remove(0);
    assert_eq!((connection.finalizes, connection.close_streams), (1, 1));
    assert_eq!(connection.controls, ["Finalize", "CloseStream"], "finalized, then closed");
    assert_eq!(connection.audio, vec![7; 160], "the audio sent before the close arrived first");
}

#[tokio::test]
async fn a_refused_key_is_an_error_that_does_not_show_it() {
    let fake = FakeDeepgram::start().await;
    let mut settings = settings(&fake);
    settings.api_key = "dg-wrong-key".into();
    let error = Deepgram::new(settings).open(SttConfig::new(Encoding::Mulaw8k)).await.unwrap_err();
    assert!(matches!(error, SttError::Refused { status: 401, .. }), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("Invalid credentials."), "{shown}");
    assert!(!shown.contains("dg-wrong-key"), "{shown}");
    assert_eq!(fake.refused(), 1);

    // And nothing listening is a connection error, in time.
    let mut settings = self::settings(&fake);
    settings.url = "ws://127.0.0.1:9/v1/listen".into();
    let error = Deepgram::new(settings).open(SttConfig::new(Encoding::Mulaw8k)).await.unwrap_err();
    assert!(matches!(error, SttError::Connect { .. }), "{error:?}");
}

#[tokio::test]
async fn the_callers_voice_stopping_asks_deepgram_to_finalise_and_words_are_dated_in_the_session() {
    use vocode_server::conversation::stt::{Spoken, SttInput};
    use vocode_server::conversation::vad::detector::SpeechEvent;
    let fake = FakeDeepgram::start().await;
    let mut session = open(&fake, SttConfig::new(Encoding::Mulaw8k)).await;
    session.audio.send(vec![0xff; 160].into()).await.unwrap();
    let at = Duration::from_millis(20);
    session.audio.send(SttInput::Voice(SpeechEvent::Started { at: Duration::ZERO })).await.unwrap();
    session.audio.send(SttInput::Voice(SpeechEvent::Stopped { at })).await.unwrap();
    eventually(WAIT, || async { (fake.connections()[0].finalizes == 1).then_some(()) }).await;
    assert_eq!(fake.connections()[0].finalizes, 1, "only the stop asks");
    fake.send(results("a table", true, false)).await;
    let SttEvent::Final { spoken: Some(spoken), .. } =
        tokio::time::timeout(WAIT, session.events.recv()).await.unwrap().unwrap()
    else {
        panic!("a final with its words dated")
    };
    // "a" from 0 to 0.3 s, "table" from 0.4 to 0.7 s of the first connection's audio.
    assert_eq!(spoken, Spoken { start: Duration::ZERO, end: Duration::from_millis(700) });
}
