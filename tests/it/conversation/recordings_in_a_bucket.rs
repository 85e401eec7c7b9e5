//! Recordings this server makes, kept in S3-compatible object storage (`RECORDINGS_URL`) against
//! a real S3 server (moto's, [`crate::support::S3Server`]): a live Twilio call's recording is an
//! object under the bucket's prefix, served by `GET /v1/calls/recording`; a call whose audio came
//! through two streams — its connection dropped and the next stream went on with the conversation,
//! on the same process or on another on one Postgres — keeps one recording of the whole call, its two segments joined in time, with one
//! `event_recording`; a replica serves what another recorded; bad settings stop the server at
//! start-up with one line.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vocode_server::conversation::audio::mulaw_decode;

use super::{create, world_serving, World, OUR_NUMBER};
use crate::support::fake_deepgram::FakeDeepgram;
use crate::support::fake_openai::FakeOpenAi;
use crate::support::fake_tts::FakeTts;
use crate::support::{
    eventually, hex_key, link_twilio_number, on_both_backends, post_ok, Backend, FakeTwilio, Receiver, S3Server,
    ServerProcess, TestDb,
};

/// What the person says on the first stream and on the second: 20 ms μ-law frames of one loud
/// value each, told apart in the recording.
const FIRST: u8 = 0x0f;
const SECOND: u8 = 0x2f;
const FRAMES: usize = 25;
/// How long the person is quiet between the two streams, at the least.
const BETWEEN: Duration = Duration::from_millis(300);

struct BucketWorld {
    w: World,
    s3: S3Server,
}

async fn bucket_world(backend: Backend) -> Option<BucketWorld> {
    let s3 = S3Server::start("recordings in a bucket").await?;
    let w = world_serving(backend, |_| {}, |serve| s3.configure(&mut serve.telephony, "calls/recordings")).await?;
    Some(BucketWorld { w, s3 })
}

/// An agent that listens and says nothing unless spoken to (the fake Deepgram hears no one), so
/// the recording holds the person's audio alone.
fn quiet_agent(webhook: &str) -> Value {
    json!({
        "prompt": {"content": "You listen."},
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "webhook": {"subscriptions": ["event_recording"], "url": webhook},
    })
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where and how the carrier opens the call's media stream, from the TwiML of the answered call.
struct StreamTarget {
    url: String,
    start: Value,
}

async fn stream_target(twilio: &FakeTwilio, sid: &str) -> StreamTarget {
    let (status, twiml) = twilio.twiml(sid).await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    let url = twiml.split("url=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let param = |name: &str| {
        twiml.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                       "start": {"accountSid": twilio.state.account_sid, "streamSid": "MZ1", "callSid": sid,
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 "customParameters": {"call_id": param("call_id"), "token": param("token")}}});
    StreamTarget { url, start }
}

/// How a stream of the call ends.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// The connection drops (a crash, a network cut): the call goes on, and its next stream takes
    /// the conversation over.
    Drops,
    /// The carrier says `stop`.
    Stops,
}

/// One media stream of the call, as Twilio opens it to `url`: the person says `frames` frames of
/// `byte`, one every 20 ms as a carrier sends them, and the stream ends as `end` says.
/// Returns once the server has let go of it — by then the stream's segment is written.
async fn speak_once(url: &str, start: &Value, byte: u8, frames: usize, end: End) {
    let (mut socket, _): (Socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(Message::text(start.to_string())).await.unwrap();
    let mut every_frame = tokio::time::interval(Duration::from_millis(20));
    for chunk in 0..frames {
        every_frame.tick().await;
        let media = json!({"event": "media", "sequenceNumber": (chunk + 2).to_string(), "streamSid": "MZ1",
                           "media": {"track": "inbound", "payload": STANDARD.encode([byte; 160])}});
        socket.send(Message::text(media.to_string())).await.unwrap();
    }
    match end {
        End::Drops => drop(socket),
        End::Stops => {
            socket.send(Message::text(json!({"event": "stop", "streamSid": "MZ1"}).to_string())).await.unwrap();
            let closed = async { while let Some(Ok(_)) = socket.next().await {} };
            tokio::time::timeout(Duration::from_secs(20), closed).await.expect("the server ends the stream");
        }
    }
}

fn samples_of(wav: &[u8]) -> Vec<i16> {
    assert_eq!((&wav[..4], &wav[8..16]), (&b"RIFF"[..], &b"WAVEfmt "[..]));
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 8_000);
    assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize, wav.len() - 44);
    wav[44..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// Where the person's run of `byte` begins in the recording.
fn run_of(samples: &[i16], byte: u8) -> usize {
    let run = vec![mulaw_decode(byte); FRAMES * 160];
    samples.windows(run.len()).position(|w| w == run).unwrap_or_else(|| {
        let mut values: Vec<(i16, usize)> = Vec::new();
        for s in samples {
            match values.last_mut() {
                Some((v, n)) if v == s => *n += 1,
                _ => values.push((*s, 1)),
            }
        }
        panic!("{byte:#x} is in the recording: {} samples, runs {:?}", samples.len(), &values[..values.len().min(40)])
    })
}

/// The call's recording through the API of the server at `base`: its content type and bytes.
async fn recording(base: &str, key: &str, id: &str) -> (StatusCode, String, Vec<u8>) {
    let res =
        reqwest::Client::new().get(format!("{base}/v1/calls/recording?id={id}")).bearer_auth(key).send().await.unwrap();
    let content_type = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (res.status(), content_type, res.bytes().await.unwrap().to_vec())
}

/// Waits until the server at `base` has the call's recording (its stream ended without a word to
/// the test, so the test cannot know when its segment is kept).
async fn recorded(base: &str, key: &str, id: &str) {
    eventually(Duration::from_secs(20), || async {
        (recording(base, key, id).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// Checks that `wav` holds the first stream's words, then, at least `BETWEEN` later, the
/// second's (the quiet agent has said nothing, so the stream that goes on with the conversation
/// has nothing to say either): one recording of the whole call.
fn assert_both_streams_in_order(wav: &[u8]) {
    let samples = samples_of(wav);
    let (first, second) = (run_of(&samples, FIRST), run_of(&samples, SECOND));
    let gap = (BETWEEN.as_millis() as usize) * 8;
    assert!(second >= first + FRAMES * 160 + gap, "the second stream's words follow the first's: {first}, {second}");
    assert_eq!(samples.len(), second + FRAMES * 160, "the recording ends with the second stream");
    assert!(samples[first + FRAMES * 160..second].iter().all(|s| *s == 0), "silence between the streams");
}

on_both_backends!(bucket_world =>
    a_call_recorded_in_a_bucket_is_served_whole_through_its_reconnect,
);

async fn a_call_recorded_in_a_bucket_is_served_whole_through_its_reconnect(bw: BucketWorld) {
    let BucketWorld { w, s3 } = bw;
    let body = json!({"from_number": OUR_NUMBER, "to_number": "16505550706", "agent": quiet_agent(&w.receiver.url)});
    let call = create(&w, body).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let sid = call["telephony_id"].as_str().unwrap();
    assert_eq!(w.twilio.call(sid).field("Record"), None, "the carrier does not record a call the server records");
    w.twilio.status(sid, "in-progress", &[]).await;
    let target = stream_target(&w.twilio, sid).await;

    speak_once(&target.url, &target.start, FIRST, FRAMES, End::Drops).await;
    // The recording is an object under the bucket's prefix, and the API serves it.
    recorded(&w.app.base, &w.app.key, &id).await;
    assert_eq!(s3.keys("calls/").await, [format!("calls/recordings/{id}.wav")]);
    let stored = s3.object(&format!("calls/recordings/{id}.wav")).await.unwrap();
    let (status, content_type, served) = recording(&w.app.base, &w.app.key, &id).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "audio/wav"));
    assert_eq!(served, stored);
    run_of(&samples_of(&served), FIRST);
    let (_, view) = w.app.get(&format!("/v1/calls?id={id}")).await;
    assert_eq!(view["recording_available"], true);

    // The carrier reconnects: the call's second stream is a second segment of one recording.
    tokio::time::sleep(BETWEEN).await;
    speak_once(&target.url, &target.start, SECOND, FRAMES, End::Stops).await;
    assert_eq!(s3.keys("calls/").await, [format!("calls/recordings/{id}.2.wav"), format!("calls/recordings/{id}.wav")]);
    let (status, content_type, served) = recording(&w.app.base, &w.app.key, &id).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "audio/wav"));
    assert_both_streams_in_order(&served);

    // One event_recording, at the first segment: the second is not news.
    let got = eventually(Duration::from_secs(10), || async {
        w.app.drain_jobs(Duration::ZERO).await;
        let got = w.receiver.got();
        (!got.is_empty()).then_some(got)
    })
    .await;
    let kinds: Vec<String> = got.iter().map(|r| r.kind()).collect();
    assert_eq!(kinds, ["event_recording"]);
    assert_eq!(got[0].call_id(), id);

    let (_, other_key) = w.app.new_user("nosy").await;
    let (status, _) = w.app.get_as(&other_key, &format!("/v1/calls/recording?id={id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only the call's owner reads its recording");
}

/// Two replicas on one Postgres and one bucket; the call's first stream reaches one, and its
/// second stream (the call moved) the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_moved_between_replicas_has_one_recording_that_either_serves() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let Some(s3) = S3Server::start("recordings shared by replicas").await else { return };
    let (twilio, receiver) = (FakeTwilio::start().await, Receiver::start().await);
    let (deepgram, openai, tts) = (FakeDeepgram::start().await, FakeOpenAi::start().await, FakeTts::start().await);
    let (secrets_key, key) = (hex_key(), "vk_recordings_replicas_0123456");
    let mut env: Vec<(&str, String)> = vec![
        ("SECRETS_KEY", secrets_key),
        ("VOCODE_API_KEY", key.into()),
        ("CARRIER_MODE", "live".into()),
        ("TWILIO_API_BASE_URL", twilio.base.clone()),
        ("ALLOW_PRIVATE_TARGETS", "true".into()),
        ("DEEPGRAM_API_KEY", deepgram.key.clone()),
        ("DEEPGRAM_URL", deepgram.url.clone()),
        ("OPENAI_API_KEY", "sk-test-recordings".into()),
        ("OPENAI_BASE_URL", openai.base.clone()),
        ("ELEVENLABS_API_KEY", tts.elevenlabs_key.clone()),
        ("ELEVENLABS_BASE_URL", tts.base.clone()),
        ("RUST_LOG", "warn,vocode_server::session=info".into()),
    ];
    env.extend(s3.env("replicas"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (ServerProcess::start(&db.url, &env), ServerProcess::start(&db.url, &env));

    twilio.own(OUR_NUMBER);
    link_twilio_number(&a.base, key, &twilio.state.account_sid, &twilio.state.auth_token, OUR_NUMBER).await;
    let body = json!({"from_number": OUR_NUMBER, "to_number": "16505550707", "agent": quiet_agent(&receiver.url)});
    let call = post_ok(&a.base, key, "/v1/calls/create", body).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let sid = call["telephony_id"].as_str().unwrap();
    twilio.status(sid, "in-progress", &[]).await;
    let target = stream_target(&twilio, sid).await;
    let host = |base: &str| base.trim_start_matches("http://").to_owned();
    assert!(target.url.contains(&host(&a.base)), "the carrier streams to the process that answered: {}", target.url);

    // The first stream, on A; B serves its recording.
    speak_once(&target.url, &target.start, FIRST, FRAMES, End::Drops).await;
    recorded(&a.base, key, &id).await;
    let (status, content_type, served) = recording(&b.base, key, &id).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "audio/wav"), "{}", String::from_utf8_lossy(&served));
    run_of(&samples_of(&served), FIRST);

    // The call moves: its second stream reaches B. Either replica serves the whole call.
    tokio::time::sleep(BETWEEN).await;
    let on_b = target.url.replace(&host(&a.base), &host(&b.base));
    speak_once(&on_b, &target.start, SECOND, FRAMES, End::Stops).await;
    assert_eq!(s3.keys("replicas/").await, [format!("replicas/{id}.2.wav"), format!("replicas/{id}.wav")]);
    let (_, _, from_a) = recording(&a.base, key, &id).await;
    let (_, _, from_b) = recording(&b.base, key, &id).await;
    assert_both_streams_in_order(&from_a);
    assert_eq!(from_a, from_b);
    let recorded = |logs: String| logs.contains("recording written");
    assert!(recorded(a.logs()) && recorded(b.logs()), "each replica wrote its segment");
}

/// The recordings settings are checked before the server listens; a bad one is one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recordings_settings_stop_the_server_at_start_up() {
    let Some(db) = TestDb::create(Backend::Sqlite).await else { return };
    let refused = |env: &[(&str, &str)]| {
        let mut all = vec![("RECORD_ON_SERVER", "true")];
        all.extend_from_slice(env);
        let err = ServerProcess::try_start(&db.url, "127.0.0.1:0", &all, |_| {}).err().expect("the server refuses");
        err.trim().lines().last().unwrap().to_owned()
    };
    let line = refused(&[("RECORDINGS_URL", "gs://calls/recordings")]);
    assert!(line.starts_with("error: RECORDINGS_URL \"gs://calls/recordings\" is not an s3:// URL"), "{line}");
    let line = refused(&[("RECORDINGS_URL", "s3:///recordings")]);
    assert!(line.starts_with("error: RECORDINGS_URL \"s3:///recordings\" names no bucket"), "{line}");
    // Even when the server does not record, a bad URL is a mistake to say at once.
    let line = refused(&[("RECORD_ON_SERVER", "false"), ("RECORDINGS_URL", "/srv/recordings")]);
    assert!(line.contains("RECORDINGS_URL \"/srv/recordings\" is not an s3:// URL"), "{line}");
    let plain_http = [("RECORDINGS_URL", "s3://calls"), ("AWS_ENDPOINT_URL", "http://127.0.0.1:9")];
    let line = refused(&plain_http);
    assert!(line.contains("AWS_ENDPOINT_URL http://127.0.0.1:9 is plain http: set AWS_ALLOW_HTTP=true"), "{line}");
    let line = refused(&[("RECORDINGS_URL", "s3://calls"), ("AWS_ACCESS_KEY_ID", "AKIAONLY")]);
    assert!(line.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together"), "{line}");

    // A bucket that is not there, on a real S3 server.
    let Some(s3) = S3Server::start("a missing bucket refused").await else { return };
    let mut env = s3.env("x");
    env.retain(|(k, _)| *k != "RECORDINGS_URL");
    env.push(("RECORDINGS_URL", "s3://no-such-bucket/x".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let line = refused(&env);
    assert!(line.starts_with("error: RECORDINGS_URL s3://no-such-bucket/x cannot be used: "), "{line}");
}
