//! Recordings this server makes itself (`RECORD_ON_SERVER`): a live Twilio call's media stream —
//! the person's audio and the bot's greeting — is mixed into a WAV file when the stream ends,
//! `recording_available` turns true, `event_recording` goes out, and `GET /v1/calls/recording`
//! serves the file to the call's owner only. A HIPAA-compliant call is never recorded.
//!
//! On SQLite only: the server's recording reaches the call through the same `calls.apply` as a
//! carrier's recording (tested on both backends in `calls::recordings`); nothing here is SQL.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vocode_server::conversation::audio::mulaw_decode;

use super::{answer_on_twilio, create, transcript_has, world_serving, Carrier, World, GREETING, OUR_NUMBER};
use crate::support::fake_tts::audio_chunks;
use crate::support::{eventually, Backend};

/// What the person says: 20 ms μ-law frames of one loud value, unlike any of the voice's.
const PERSON_BYTE: u8 = 0x0f;
const PERSON_FRAMES: usize = 25;

mod the_server_records_both_sides_and_never_a_hipaa_call {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let dir = std::env::temp_dir().join(format!("vocode-recordings-{}", uuid::Uuid::new_v4()));
        if let Some(world) = super::recording_world(crate::support::Backend::Sqlite, dir.clone()).await {
            super::the_server_records_both_sides_and_never_a_hipaa_call(world, dir.clone()).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

async fn recording_world(backend: Backend, dir: PathBuf) -> Option<World> {
    world_serving(
        backend,
        |_| {},
        |serve| {
            serve.telephony.record_on_server = true;
            serve.telephony.recordings_dir = Some(dir);
        },
    )
    .await
}

fn agent(w: &World) -> Value {
    let mut agent = super::agent(w);
    agent["webhook"]["subscriptions"] = json!(["event_recording"]);
    agent
}

/// The person speaks on the call, then the stream ends.
async fn speak_and_stop(carrier: &Carrier) {
    for chunk in 0..PERSON_FRAMES {
        let media = json!({"event": "media", "sequenceNumber": (chunk + 2).to_string(), "streamSid": "MZ1",
                           "media": {"track": "inbound", "payload": STANDARD.encode([PERSON_BYTE; 160])}});
        carrier.send(Message::text(media.to_string()));
    }
    carrier.send(Message::text(json!({"event": "stop", "streamSid": "MZ1"}).to_string()));
}

fn samples_of(wav: &[u8]) -> Vec<i16> {
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8_000);
    assert_eq!(u16::from_le_bytes([wav[34], wav[35]]), 16);
    assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize, wav.len() - 44);
    wav[44..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

async fn the_server_records_both_sides_and_never_a_hipaa_call(w: World, dir: PathBuf) {
    // A HIPAA-compliant call talks, and its stream ends first: it is never recorded.
    let body =
        json!({"from_number": OUR_NUMBER, "to_number": "16505550704", "agent": agent(&w), "hipaa_compliant": true});
    let hipaa = create(&w, body).await;
    let hipaa_id = hipaa["id"].as_str().unwrap().to_owned();
    let carrier = answer_on_twilio(&w, &hipaa).await;
    speak_and_stop(&carrier).await;

    let call = create(&w, json!({"from_number": OUR_NUMBER, "to_number": "16505550705", "agent": agent(&w)})).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let placed = w.twilio.call(call["telephony_id"].as_str().unwrap());
    assert_eq!(placed.field("Record"), None, "the carrier does not record a call the server records");
    let mut carrier = answer_on_twilio(&w, &call).await;
    transcript_has(&w, &id, GREETING).await;
    let greeting = audio_chunks("ulaw_8000").concat();
    let mut heard = Vec::new();
    eventually(Duration::from_secs(10), || {
        carrier.heard(&mut heard);
        let done = heard.len() >= greeting.len();
        async move { done.then_some(()) }
    })
    .await;
    // The person answers once the greeting (150 ms) has been played: the two do not overlap.
    tokio::time::sleep(Duration::from_millis(400)).await;
    speak_and_stop(&carrier).await;

    let got = eventually(Duration::from_secs(10), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let got = w.receiver.got();
        got.iter().any(|r| r.kind() == "event_recording").then_some(got)
    })
    .await;
    let recording = got.iter().find(|r| r.kind() == "event_recording").unwrap();
    assert_eq!(recording.call_id(), id);
    assert_eq!(
        recording.event()["payload"]["recording_url"],
        format!("{}/v1/calls/recording?id={id}", w.app.state.telephony.public_base)
    );
    let (_, view) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(view["recording_available"], true);

    let res =
        w.app.request(reqwest::Method::GET, &format!("/v1/calls/recording?id={id}"), Some(&w.app.key), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "audio/wav");
    let samples = samples_of(&res.bytes().await.unwrap());
    // The bot's greeting, 20 ms frame after 20 ms frame, as it was sent…
    let voice: Vec<i16> = greeting.iter().map(|b| mulaw_decode(*b)).collect();
    for frame in voice.chunks(160) {
        assert!(samples.windows(frame.len()).any(|w| w == frame), "the greeting is in the recording");
    }
    let greeting_at = samples.windows(160).position(|w| w == &voice[..160]).unwrap();
    // …and the person's words, after it.
    let person = mulaw_decode(PERSON_BYTE);
    let words = vec![person; PERSON_FRAMES * 160];
    let person_at = samples.windows(words.len()).position(|w| w == words).expect("the person is in the recording");
    assert!(person_at >= greeting_at + voice.len(), "the person spoke after the greeting");
    let (_, other_key) = w.app.new_user("nosy").await;
    let (status, _) = w.app.get_as(&other_key, &format!("/v1/calls/recording?id={id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only the call's owner reads its recording");

    // The HIPAA call: no file, no recording, no event.
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files, [std::ffi::OsString::from(format!("{id}.wav"))]);
    let (_, view) = w.app.get(&format!("/v1/calls?id={hipaa_id}")).await;
    assert_eq!(view["recording_available"], false);
    let (status, _) = w.app.get(&format!("/v1/calls/recording?id={hipaa_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(w.receiver.got().iter().all(|r| r.call_id() == id), "nothing is sent for the HIPAA call");
}
