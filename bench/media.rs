//! The media-plane benchmark: `bench/run media [--levels 25,50,100] [--seconds 20]`.
//!
//! N concurrent Twilio calls on this machine, against the release binary, each one a real call:
//! created through the API in live carrier mode (the Twilio REST API is a fake here that records
//! each call's callback URLs), answered with a signed status callback and a signed TwiML fetch,
//! then a Twilio media stream that sends 20 ms μ-law frames in real time for the whole call, plays
//! what the server sends on a play clock of its own and echoes each mark once the audio before it
//! has played, as Twilio does. The providers answer at once, all in this process on 127.0.0.1: a
//! Deepgram websocket, an OpenAI-compatible chat-completions endpoint (SSE) and ElevenLabs
//! (streamed μ-law). A turn: every few seconds a call's client, while the bot is quiet, sends a
//! cue frame in its audio; the fake Deepgram, seeing it in the audio the server forwards, sends
//! a final `speech_final` result at once; the server asks the model, the voice says the answer
//! (two sentences, a second each) and the client receives it.
//!
//! Measured in a window that starts once every call is connected and has been greeted:
//! - server-added latency per turn: the fake Deepgram sending the final → the first media frame of
//!   the answer at the client (this includes the fake model's and voice's own time, which is a
//!   few hundred microseconds of this process on the same cores);
//! - frame jitter: |gap − 20 ms| between consecutive media frames of the bot's speech, after the
//!   first 300 ms of each utterance (which playout sends ahead at once, by design); and underruns,
//!   frames that reached the client after its play clock had run dry (a gap the person hears);
//! - CPU per call per 20 ms frame: the server's CPU time (/proc/PID/stat) over the window ÷ (calls ×
//!   frames); beside it the CPU share of the server, of this process and of the rest (Postgres);
//! - resident memory per call: the server's peak RSS in the window minus its RSS before the calls,
//!   ÷ calls;
//! - the server's own per-stage turn latencies (its Prometheus histograms' means).
//!
//! Each level runs on a fresh server process (so that one level's memory does not hide the
//! next's), on one database. The ladder stops once a level clearly misses the targets.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{call_api, launch, percentile, rss_mb, serve, BenchDatabase, Server, OUR_NUMBER};

const FRAME: Duration = Duration::from_millis(20);
/// μ-law bytes in a 20 ms frame at 8 kHz.
const FRAME_BYTES: usize = 160;
/// What playout sends ahead at the start of an utterance (the server's `LOOKAHEAD`, 300 ms).
const BURST_FRAMES: usize = 15;
/// A cue frame starts with this, then the call's index and the turn, little-endian u32s.
const CUE: &[u8; 8] = b"BENCHCUE";
const GREETING: &str = "Hello, thanks for calling the bench restaurant.";
/// The fake model's answer: two sentences, so two requests to the voice.
const ANSWER: [&str; 2] = ["Sure, a table for two at seven. ", "Anything else?"];
/// Audio per sentence from the fake voice.
const SENTENCE_AUDIO: Duration = Duration::from_secs(1);
/// A turn that has no answer after this is counted as missed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

const TARGET_CALLS: usize = 200;
const TARGET_P50_MS: f64 = 15.0;
const TARGET_P95_MS: f64 = 40.0;
const TARGET_JITTER_MS: f64 = 20.0;
const TARGET_MB_PER_CALL: f64 = 2.0;

struct Settings {
    levels: Vec<usize>,
    /// The measured window of each level.
    window: Duration,
    /// A call's turns come this far apart.
    turn_every: Duration,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    let levels = value("--levels")
        .map(|l| l.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| if quick { vec![10, 25] } else { vec![25, 50, 100, 200, 300] });
    let seconds = value("--seconds").and_then(|s| s.parse().ok()).unwrap_or(if quick { 10 } else { 20 });
    Settings { levels, window: Duration::from_secs(seconds), turn_every: Duration::from_secs(5) }
}

// ---------------------------------------------------------------- the fakes

/// When the fake Deepgram sent each (call, turn)'s final words.
#[derive(Default)]
struct Cues {
    sent: Mutex<HashMap<(u32, u32), Instant>>,
}

/// Twilio's REST API, answering at once and keeping each call's form (its callback URLs).
#[derive(Default)]
pub(super) struct Carrier {
    calls: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl Carrier {
    fn field(&self, sid: &str, name: &str) -> String {
        let calls = self.calls.lock().unwrap();
        calls[sid].iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }
}

pub(super) async fn fake_twilio(carrier: Arc<Carrier>) -> String {
    async fn create_call(State(c): State<Arc<Carrier>>, Form(form): Form<Vec<(String, String)>>) -> impl IntoResponse {
        let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
        c.calls.lock().unwrap().insert(sid.clone(), form);
        (StatusCode::CREATED, Json(json!({"sid": sid, "status": "queued"})))
    }
    let router = Router::new()
        .route("/2010-04-01/Accounts/{account}/Calls.json", post(create_call))
        .route(
            "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json",
            get(|| async { Json(json!({"incoming_phone_numbers": [{"sid": "PN00000000000000000000000000000001"}]})) }),
        )
        .route("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{file}", post(|| async { Json(json!({})) }))
        .route(
            "/2010-04-01/Accounts/{account}/Calls/{file}",
            post(|Path(_): Path<(String, String)>| async { Json(json!({"status": "completed"})) }),
        )
        .with_state(carrier);
    serve(router).await
}

/// Deepgram's live websocket: it swallows the audio and, when a cue frame goes by, sends a final
/// `speech_final` result at once.
async fn fake_deepgram(cues: Arc<Cues>) -> String {
    async fn listen(State(cues): State<Arc<Cues>>, ws: WebSocketUpgrade) -> Response {
        ws.on_upgrade(move |socket| deepgram_session(cues, socket))
    }
    let base = serve(Router::new().route("/v1/listen", get(listen)).with_state(cues)).await;
    format!("{}/v1/listen", base.replacen("http://", "ws://", 1))
}

fn final_words() -> String {
    let transcript = "I would like a table for two at seven please.";
    json!({
        "type": "Results", "channel_index": [0, 1], "duration": 2.0, "start": 0.0,
        "is_final": true, "speech_final": true, "from_finalize": false,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.98, "words": []}]},
        "metadata": {"request_id": "bench", "model_info": {"name": "general-nova-3", "version": "2025-01-01", "arch": "nova-3"}, "model_uuid": "bench"}
    })
    .to_string()
}

async fn deepgram_session(cues: Arc<Cues>, mut socket: WebSocket) {
    let words = final_words();
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            WsMessage::Binary(audio) => {
                let Some(at) = audio.windows(CUE.len()).position(|w| w == CUE) else {
                    continue;
                };
                let ids = &audio[at + CUE.len()..];
                if ids.len() < 8 {
                    continue;
                }
                let call = u32::from_le_bytes(ids[..4].try_into().unwrap());
                let turn = u32::from_le_bytes(ids[4..8].try_into().unwrap());
                cues.sent.lock().unwrap().insert((call, turn), Instant::now());
                if socket.send(WsMessage::Text(words.clone().into())).await.is_err() {
                    return;
                }
            }
            WsMessage::Text(text) if text.as_str().contains("CloseStream") => return,
            WsMessage::Close(_) => return,
            _ => {}
        }
    }
}

/// An OpenAI-compatible chat-completions endpoint that streams `answer` whole, at once, whatever
/// it is asked.
pub(super) async fn fake_openai(answer: &[&str]) -> String {
    fn chunk(delta: Value, finish: Value) -> String {
        let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    }
    let mut body = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for text in answer {
        body.push_str(&chunk(json!({"content": text}), Value::Null));
    }
    body.push_str(&chunk(json!({}), json!("stop")));
    body.push_str("data: [DONE]\n\n");
    let body: &'static str = body.leak();
    let answer = move || async move { ([(header::CONTENT_TYPE, "text/event-stream")], body) };
    let base = serve(Router::new().route("/v1/chat/completions", post(answer))).await;
    format!("{base}/v1")
}

/// ElevenLabs' streaming endpoint: for any text, `length(text)` of a tone in the format asked for
/// (`ulaw_8000` or `pcm_16000`), in four chunks, at once.
pub(super) async fn fake_elevenlabs(length: fn(&str) -> Duration) -> String {
    #[derive(serde::Deserialize)]
    struct Format {
        output_format: Option<String>,
    }
    let speak = move |Path(_voice): Path<String>, Query(format): Query<Format>, Json(body): Json<Value>| async move {
        let ms = length(body["text"].as_str().unwrap_or_default()).as_millis() as usize;
        // A quiet vowel-like tone: anything but silence will do.
        let tone =
            |rate: usize| (0..ms * rate / 1000).map(move |i| (2500.0 * (i as f32 * 1100.0 / rate as f32).sin()) as i16);
        let audio: Vec<u8> = match format.output_format.as_deref() {
            Some("pcm_16000") => tone(16_000).flat_map(i16::to_le_bytes).collect(),
            _ => tone(8_000).map(vocode_server::conversation::audio::mulaw_encode).collect(),
        };
        let audio = Bytes::from(audio);
        let quarter = audio.len() / 4 / 2 * 2;
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..4)
            .map(|i| Ok(audio.slice(i * quarter..if i == 3 { audio.len() } else { (i + 1) * quarter })))
            .collect();
        ([(header::CONTENT_TYPE, "audio/basic")], Body::from_stream(futures_util::stream::iter(chunks)))
    };
    serve(Router::new().route("/v1/text-to-speech/{voice}/stream", post(speak))).await
}

// ---------------------------------------------------------------- the server and /proc

struct Fakes {
    twilio: String,
    deepgram: String,
    openai: String,
    elevenlabs: String,
}

fn start_server(database_url: &str, fakes: &Fakes, key: &str) -> Server {
    launch(
        database_url,
        key,
        &[
            ("TWILIO_API_BASE_URL", fakes.twilio.as_str()),
            ("DEEPGRAM_URL", &fakes.deepgram),
            ("DEEPGRAM_API_KEY", "bench"),
            ("OPENAI_BASE_URL", &fakes.openai),
            ("OPENAI_API_KEY", "bench"),
            ("ELEVENLABS_BASE_URL", &fakes.elevenlabs),
            ("ELEVENLABS_API_KEY", "bench"),
        ],
    )
}

/// CPU time of a process (user + system, all threads), in seconds.
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command's `)`: state is field 3, utime 14, stime 15 (1-based, in `man proc`).
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's (busy, total) CPU time, in seconds, from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

/// The server's own mean per-stage turn latency (ms), from its Prometheus histograms.
fn server_stages(text: &str) -> Vec<(String, f64)> {
    let value = |name: &str, stage: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("stage=\"{stage}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    ["recognized", "end_of_turn", "first_token", "first_audio", "first_frame"]
        .iter()
        .filter_map(|stage| {
            let sum = value("vocode_turn_latency_seconds_sum", stage)?;
            let count = value("vocode_turn_latency_seconds_count", stage)?;
            (count > 0.0).then(|| (stage.to_string(), sum / count * 1000.0))
        })
        .collect()
}

fn counter(text: &str, name: &str) -> f64 {
    let values = text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    values.fold(0.0, |sum, v| sum + v)
}

// ---------------------------------------------------------------- one call

/// A call answered by the fake carrier: where its media stream goes, and how it proves itself.
pub(super) struct Answered {
    sid: String,
    stream_url: String,
    pub(super) call_id: String,
    token: String,
}

/// Creates a call through the API and answers it as Twilio would (status callback, TwiML).
pub(super) async fn place_and_answer(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    agent: &str,
    carrier: &Carrier,
    (account, token): (&str, &str),
    to: String,
) -> Answered {
    let call = call_api(
        client,
        format!("{base}/v1/calls/create"),
        key,
        json!({"from_number": OUR_NUMBER, "to_number": to, "agent": agent}),
    )
    .await;
    let sid = call["telephony_id"].as_str().expect("the call was dialled").to_owned();
    let params: Vec<(String, String)> = vec![
        ("AccountSid".into(), account.into()),
        ("CallSid".into(), sid.clone()),
        ("CallStatus".into(), "in-progress".into()),
        ("Direction".into(), "outbound-api".into()),
    ];
    let signed = |url: String| {
        let signature = vocode_server::telephony::twilio::signature(token, &url, &params);
        client.post(url).header("x-twilio-signature", signature).form(&params).send()
    };
    let status = signed(carrier.field(&sid, "StatusCallback")).await.expect("the status callback");
    assert!(status.status().is_success(), "the status callback was refused: {}", status.status());
    let twiml = signed(carrier.field(&sid, "Url")).await.expect("the TwiML").text().await.unwrap();
    let attribute = |after: &str| {
        twiml.split(after).nth(1).and_then(|rest| rest.split('"').next()).map(|v| v.replace("&amp;", "&"))
    };
    Answered {
        stream_url: attribute("url=\"").unwrap_or_else(|| panic!("a <Stream> in {twiml}")),
        call_id: attribute("name=\"call_id\" value=\"").expect("the call_id parameter"),
        token: attribute("name=\"token\" value=\"").expect("the token parameter"),
        sid,
    }
}

/// When a level's calls start, are measured and stop.
struct Plan {
    window_start: Instant,
    window_end: Instant,
    stop_at: Instant,
    turn_every: Duration,
}

impl Plan {
    fn measured(&self, at: Instant) -> bool {
        at >= self.window_start && at < self.window_end
    }
}

/// What one call saw.
#[derive(Default)]
struct CallStats {
    latencies: Vec<Duration>,
    jitter: Vec<Duration>,
    max_gap: Duration,
    /// Paced gaps of 30 ms or more, and of 10 ms or less (two frames at once).
    long_gaps: u64,
    short_gaps: u64,
    underruns: u64,
    frames_in: u64,
    turns: u64,
    answered: u64,
    missed: u64,
    /// How late this client's own 20 ms ticks fired (the load generator's health).
    tick_late: Vec<Duration>,
    failed: Option<String>,
}

/// A Twilio `media` message: the `seq`th of the stream.
pub(super) fn twilio_media(seq: u64, sid: &str, payload: &str) -> Message {
    let ts = (seq - 2) * 20;
    Message::text(format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"{sid}","media":{{"track":"inbound","chunk":"{}","timestamp":"{ts}","payload":"{payload}"}}}}"#,
        seq - 1
    ))
}

/// A Twilio `mark` message: the audio before the mark `name` has played.
pub(super) fn twilio_mark(seq: u64, sid: &str, name: &str) -> Message {
    Message::text(
        json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": sid, "mark": {"name": name}})
            .to_string(),
    )
}

pub(super) type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the call's Twilio media stream as Twilio does (`connected`, then `start` with the call's
/// custom parameters); returns it and its stream sid.
pub(super) async fn open_twilio(call: &Answered, account: &str) -> Result<(Stream, String), String> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(call.stream_url.as_str()).await.map_err(|e| format!("connect: {e}"))?;
    let stream_sid = format!("MZ{}", uuid::Uuid::new_v4().simple());
    let connected = json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
    let start = json!({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                       "start": {"accountSid": account, "streamSid": stream_sid, "callSid": call.sid, "tracks": ["inbound"],
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                 "customParameters": {"call_id": call.call_id, "token": call.token}}});
    for message in [connected, start] {
        socket
            .send(Message::text(message.to_string()))
            .await
            .map_err(|_| "the server closed the stream at its start".to_owned())?;
    }
    Ok((socket, stream_sid))
}

/// The carrier's playback of what the server sends: 20 ms a frame from when it arrives or when
/// the frames before it have played, whichever is later; the marks (Twilio) or notifies (Vonage)
/// the server asked to hear back, each due once the audio before it has played; a `clear` drops
/// what has not played and makes every pending mark due at once (as Twilio does).
pub(super) struct Playback {
    /// Where the playback of what was sent ends.
    pub(super) end: Instant,
    marks: VecDeque<(Instant, String)>,
}

impl Playback {
    pub(super) fn new() -> Playback {
        Playback { end: Instant::now(), marks: VecDeque::new() }
    }

    /// A frame arrived at `now`: returns when it starts to play.
    pub(super) fn frame(&mut self, now: Instant) -> Instant {
        let starts = self.end.max(now);
        self.end = starts + FRAME;
        starts
    }

    pub(super) fn mark(&mut self, name: String, now: Instant) {
        self.marks.push_back((self.end.max(now), name));
    }

    pub(super) fn clear(&mut self, now: Instant) {
        self.end = now;
        for (due, _) in self.marks.iter_mut() {
            *due = now;
        }
    }

    /// The marks whose audio has played by `now`, to echo.
    pub(super) fn played(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while self.marks.front().is_some_and(|(due, _)| *due <= now) {
            out.push(self.marks.pop_front().unwrap().1);
        }
        out
    }

    pub(super) fn idle(&self) -> bool {
        self.marks.is_empty()
    }
}

fn cue_payload(call: u32, turn: u32) -> String {
    let mut frame = vec![0xffu8; FRAME_BYTES];
    frame[..8].copy_from_slice(CUE);
    frame[8..12].copy_from_slice(&call.to_le_bytes());
    frame[12..16].copy_from_slice(&turn.to_le_bytes());
    STANDARD.encode(frame)
}

/// A Twilio media stream for the whole call: frames out every 20 ms, the bot's audio in.
async fn talk(index: u32, call: Answered, account: String, plan: Arc<Plan>, cues: Arc<Cues>) -> CallStats {
    let mut stats = CallStats::default();
    let (socket, stream_sid) = match open_twilio(&call, &account).await {
        Ok(opened) => opened,
        Err(reason) => {
            stats.failed = Some(reason);
            return stats;
        }
    };
    let (mut write, mut read) = socket.split();
    // Silence, give or take the least significant bit.
    let silence = STANDARD.encode((0..FRAME_BYTES).map(|i| if i % 3 == 0 { 0xfe } else { 0xff }).collect::<Vec<u8>>());
    let mut ticks = tokio::time::interval(FRAME);
    let mut seq = 1u64;
    // The first turn at a point of its own in the first period, so that calls do not turn in step.
    let offset = plan.turn_every.mul_f64(f64::from(index.wrapping_mul(2_654_435_761) % 1000) / 1000.0);
    let mut next_turn = plan.window_start + offset;
    let mut turn = 0u32;
    // The turn awaiting its answer, and when its cue went out.
    let mut awaiting: Option<(u32, Instant)> = None;
    let mut last_media: Option<Instant> = None;
    let mut utterance_frames = 0usize;
    let mut playback = Playback::new();
    loop {
        tokio::select! {
            scheduled = ticks.tick() => {
                let now = Instant::now();
                if plan.measured(now) {
                    stats.tick_late.push(now.saturating_duration_since(scheduled.into_std()));
                }
                if now >= plan.stop_at {
                    let _ = write.send(Message::text(json!({"event": "stop", "sequenceNumber": (seq + 1).to_string(), "streamSid": stream_sid}).to_string())).await;
                    let _ = write.close().await;
                    break;
                }
                let mut out = Vec::new();
                for name in playback.played(now) {
                    seq += 1;
                    out.push(twilio_mark(seq, &stream_sid, &name));
                }
                if let Some((_, sent)) = awaiting {
                    if now - sent > ANSWER_TIMEOUT {
                        if plan.measured(sent) {
                            stats.missed += 1;
                        }
                        awaiting = None;
                    }
                }
                let quiet = awaiting.is_none()
                    && playback.idle()
                    && playback.end + Duration::from_millis(300) <= now
                    && last_media.is_none_or(|t| now - t > Duration::from_millis(500));
                seq += 1;
                if quiet && now >= next_turn && now + ANSWER_TIMEOUT < plan.window_end {
                    turn += 1;
                    awaiting = Some((turn, now));
                    stats.turns += 1;
                    next_turn = now + plan.turn_every;
                    out.push(twilio_media(seq, &stream_sid, &cue_payload(index, turn)));
                } else {
                    out.push(twilio_media(seq, &stream_sid, &silence));
                }
                for message in out {
                    if write.send(message).await.is_err() {
                        stats.failed = Some("the server closed the stream".into());
                        return stats;
                    }
                }
            }
            received = read.next() => {
                let text = match received {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        stats.failed = Some("the server closed the stream".into());
                        return stats;
                    }
                    Some(Ok(_)) => continue,
                };
                let now = Instant::now();
                if text.as_str().starts_with(r#"{"event":"media""#) {
                    let new_utterance = match awaiting.take() {
                        Some((answered_turn, sent)) => {
                            let said = cues.sent.lock().unwrap().remove(&(index, answered_turn));
                            if let (Some(said), true) = (said, plan.measured(sent)) {
                                stats.latencies.push(now - said);
                                stats.answered += 1;
                            }
                            true
                        }
                        // (After a missed turn's late answer, too: a second of silence is no gap.)
                        None => last_media.is_none_or(|t| now - t > Duration::from_secs(1)),
                    };
                    if new_utterance {
                        utterance_frames = 0;
                    } else if let Some(previous) = last_media {
                        let gap = now - previous;
                        if plan.measured(now) {
                            if utterance_frames >= BURST_FRAMES {
                                stats.jitter.push(gap.abs_diff(FRAME));
                                stats.max_gap = stats.max_gap.max(gap);
                                stats.long_gaps += u64::from(gap >= Duration::from_millis(30));
                                stats.short_gaps += u64::from(gap <= Duration::from_millis(10));
                            }
                            if playback.end + Duration::from_millis(1) < now {
                                stats.underruns += 1;
                            }
                        }
                    }
                    if plan.measured(now) {
                        stats.frames_in += 1;
                    }
                    utterance_frames += 1;
                    last_media = Some(now);
                    playback.frame(now);
                } else if text.as_str().starts_with(r#"{"event":"mark""#) {
                    let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    let name = event["mark"]["name"].as_str().unwrap_or_default().to_owned();
                    playback.mark(name, now);
                } else if text.as_str().starts_with(r#"{"event":"clear""#) {
                    playback.clear(now);
                }
            }
        }
    }
    stats
}

// ---------------------------------------------------------------- a level

struct Level {
    calls: usize,
    connected: usize,
    setup: Duration,
    latency_p50: f64,
    latency_p95: f64,
    latency_p99: f64,
    turns: u64,
    answered: u64,
    missed: u64,
    jitter_p99: f64,
    max_gap_ms: f64,
    paced_gaps: usize,
    long_gaps: u64,
    short_gaps: u64,
    underruns: u64,
    frames_in: u64,
    cpu_us_per_frame: f64,
    server_share: f64,
    bench_share: f64,
    other_share: f64,
    idle_share: f64,
    idle_rss: f64,
    peak_rss: f64,
    tick_late_p99: f64,
    stages: Vec<(String, f64)>,
    dropped_frames: f64,
}

impl Level {
    fn holds(&self) -> bool {
        self.connected == self.calls
            && self.latency_p50 <= TARGET_P50_MS
            && self.latency_p95 <= TARGET_P95_MS
            && self.jitter_p99 <= TARGET_JITTER_MS
            && self.mb_per_call() <= TARGET_MB_PER_CALL
            && self.missed == 0
    }

    /// Far enough past the targets that a bigger level is not worth running.
    fn clearly_fails(&self) -> bool {
        self.connected < self.calls
            || self.latency_p95 > 2.0 * TARGET_P95_MS
            || self.jitter_p99 > 2.0 * TARGET_JITTER_MS
            || self.missed as f64 > 0.05 * self.turns as f64
    }

    fn mb_per_call(&self) -> f64 {
        (self.peak_rss - self.idle_rss) / self.calls as f64
    }
}

struct World<'a> {
    database_url: &'a str,
    fakes: &'a Fakes,
    carrier: &'a Arc<Carrier>,
    cues: &'a Arc<Cues>,
    key: &'a str,
}

/// Waits (a minute and a half at most) for the machine to be quiet: other work on these two cores
/// would be measured as the server's slowness.
pub(super) async fn quiet_machine() {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let before = machine_cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = machine_cpu();
        let busy = (after.0 - before.0) / (after.1 - before.1).max(0.001);
        if busy < 0.15 || Instant::now() > deadline {
            if busy >= 0.15 {
                eprintln!("  the machine is still {:.0}% busy with other work: measuring anyway", busy * 100.0);
            }
            return;
        }
    }
}

async fn level(w: &World<'_>, calls: usize, s: &Settings, agent: &mut Option<String>) -> Level {
    quiet_machine().await;
    let server = start_server(w.database_url, w.fakes, w.key);
    let pid = server.child.id().to_string();
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let (account, token) = ("AC00000000000000000000000000000000", "bench-auth-token");
    // The account, our number and the agent, made on the first level's server (the levels share
    // the database).
    let agent = match agent {
        Some(agent) => agent.clone(),
        None => {
            let conn = call_api(&client, format!("{base}/v1/account_connections/create"), w.key,
                json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": account, "twilio_auth_token": token}})).await;
            let number = json!({"phone_number": OUR_NUMBER, "telephony_account_connection": conn["id"]});
            call_api(&client, format!("{base}/v1/numbers/link"), w.key, number).await;
            let made = call_api(
                &client,
                format!("{base}/v1/agents/create"),
                w.key,
                json!({"prompt": {"content": "You book tables at the bench restaurant."},
                       "initial_message": GREETING,
                       "voice": {"type": "voice_eleven_labs", "voice_id": "bench-voice"}}),
            )
            .await;
            let id = made["id"].as_str().unwrap().to_owned();
            *agent = Some(id.clone());
            id
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mb(server.child.id());

    // Create and answer every call, a few at a time.
    let setup_started = Instant::now();
    let mut answered = Vec::with_capacity(calls);
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    while answered.len() < calls {
        while next < calls && pending.len() < 8 {
            let (client, base, key, agent, carrier) =
                (client.clone(), base.clone(), w.key.to_owned(), agent.clone(), w.carrier.clone());
            let to = format!("1650555{:04}", next % 10_000);
            pending.spawn(async move {
                (next, place_and_answer(&client, &base, &key, &agent, &carrier, (account, token), to).await)
            });
            next += 1;
        }
        answered.push(pending.join_next().await.unwrap().expect("a call was placed and answered"));
    }
    answered.sort_by_key(|(i, _)| *i);
    let setup = setup_started.elapsed();

    // Streams open over a ramp; the window starts once every call has been greeted.
    let ramp = Duration::from_millis((calls as u64 * 15).clamp(500, 4000));
    let now = Instant::now();
    let window_start = now + ramp + Duration::from_millis(2500);
    let plan = Arc::new(Plan {
        window_start,
        window_end: window_start + s.window,
        stop_at: window_start + s.window + Duration::from_millis(200),
        turn_every: s.turn_every,
    });
    let mut talking = tokio::task::JoinSet::new();
    for (i, call) in answered {
        let (plan, cues, account) = (plan.clone(), w.cues.clone(), account.to_owned());
        let opens_at = now + ramp.mul_f64(i as f64 / calls as f64);
        talking.spawn(async move {
            tokio::time::sleep_until(opens_at.into()).await;
            talk(i as u32, call, account, plan, cues).await
        });
    }

    // The window: CPU at both ends, memory sampled through it.
    tokio::time::sleep_until(window_start.into()).await;
    let (server0, bench0, machine0) = (cpu_seconds(&pid), cpu_seconds("self"), machine_cpu());
    let mut peak_rss = rss_mb(server.child.id());
    while Instant::now() < plan.window_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(rss_mb(server.child.id()));
    }
    let (server1, bench1, machine1) = (cpu_seconds(&pid), cpu_seconds("self"), machine_cpu());
    let seconds = s.window.as_secs_f64();

    let mut all = CallStats::default();
    let mut connected = 0;
    while let Some(stats) = talking.join_next().await {
        let stats = stats.expect("a call's client");
        match &stats.failed {
            Some(reason) => eprintln!("  a call failed: {reason}"),
            None => connected += 1,
        }
        all.latencies.extend(stats.latencies);
        all.jitter.extend(stats.jitter);
        all.tick_late.extend(stats.tick_late);
        all.max_gap = all.max_gap.max(stats.max_gap);
        all.underruns += stats.underruns;
        all.long_gaps += stats.long_gaps;
        all.short_gaps += stats.short_gaps;
        all.frames_in += stats.frames_in;
        all.turns += stats.turns;
        all.answered += stats.answered;
        all.missed += stats.missed;
    }
    let metrics = client.get(format!("{base}/metrics")).bearer_auth(w.key).send().await;
    let metrics = match metrics {
        Ok(res) => res.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let stages = server_stages(&metrics);
    drop(server);
    w.cues.sent.lock().unwrap().clear();

    all.latencies.sort();
    all.jitter.sort();
    all.tick_late.sort();
    let frames = calls as f64 * seconds / FRAME.as_secs_f64();
    let (machine_busy, machine_total) = (machine1.0 - machine0.0, (machine1.1 - machine0.1).max(0.001));
    let (server_cpu, bench_cpu) = (server1 - server0, bench1 - bench0);
    Level {
        calls,
        connected,
        setup,
        latency_p50: percentile(&all.latencies, 0.5),
        latency_p95: percentile(&all.latencies, 0.95),
        latency_p99: percentile(&all.latencies, 0.99),
        turns: all.turns,
        answered: all.answered,
        missed: all.missed,
        jitter_p99: percentile(&all.jitter, 0.99),
        max_gap_ms: all.max_gap.as_secs_f64() * 1000.0,
        paced_gaps: all.jitter.len(),
        long_gaps: all.long_gaps,
        short_gaps: all.short_gaps,
        underruns: all.underruns,
        frames_in: all.frames_in,
        cpu_us_per_frame: server_cpu / frames * 1e6,
        server_share: server_cpu / machine_total,
        bench_share: bench_cpu / machine_total,
        other_share: ((machine_busy - server_cpu - bench_cpu) / machine_total).max(0.0),
        idle_share: 1.0 - machine_busy / machine_total,
        idle_rss,
        peak_rss,
        tick_late_p99: percentile(&all.tick_late, 0.99),
        stages,
        dropped_frames: counter(&metrics, "vocode_media_frames_dropped_total")
            + counter(&metrics, "vocode_conversation_audio_dropped_total"),
    }
}

// ---------------------------------------------------------------- the run

pub async fn run() {
    let s = settings();
    let database = BenchDatabase::create().await;
    let database_url = database.url.clone();

    let (carrier, cues) = (Arc::new(Carrier::default()), Arc::new(Cues::default()));
    let fakes = Fakes {
        twilio: fake_twilio(carrier.clone()).await,
        deepgram: fake_deepgram(cues.clone()).await,
        openai: fake_openai(&ANSWER).await,
        elevenlabs: fake_elevenlabs(|_| SENTENCE_AUDIO).await,
    };
    let key = "vk_bench_key_00000000000000000000000000000000";
    let world = World { database_url: &database_url, fakes: &fakes, carrier: &carrier, cues: &cues, key };

    let mut levels = Vec::new();
    let mut agent = None;
    for &calls in &s.levels {
        eprintln!("media plane: {calls} concurrent calls…");
        let result = level(&world, calls, &s, &mut agent).await;
        eprintln!(
            "  {calls} calls: latency p50 {:.1} ms p95 {:.1} ms, jitter p99 {:.1} ms, {:.1} µs CPU/call/frame, {:.2} MB/call, \
             {}/{} turns answered ({} missed); server {:.0}% / bench {:.0}% / other {:.0}% / idle {:.0}% of the machine",
            result.latency_p50,
            result.latency_p95,
            result.jitter_p99,
            result.cpu_us_per_frame,
            result.mb_per_call(),
            result.answered,
            result.turns,
            result.missed,
            result.server_share * 100.0,
            result.bench_share * 100.0,
            result.other_share * 100.0,
            result.idle_share * 100.0,
        );
        let stop = result.clearly_fails();
        levels.push(result);
        if stop {
            eprintln!("  the targets are clearly missed: the ladder stops here");
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    database.drop().await;

    let table = table(&levels, &s);
    println!("{table}");
    let results = "bench/RESULTS.md";
    let mut text = std::fs::read_to_string(results).unwrap_or_default();
    text.push_str(&table);
    text.push('\n');
    std::fs::write(results, text).unwrap();
    eprintln!("appended to {results}");
}

fn table(levels: &[Level], s: &Settings) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let held = levels.iter().filter(|l| l.holds()).map(|l| l.calls).max();
    let mut t = format!(
        "### Media plane, {} — {cores} cores, {memory_gb:.0} GiB (`bench/run media`: {} s measured per level, a turn every {} s per call)\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        s.window.as_secs(),
        s.turn_every.as_secs(),
    );
    t.push_str(&format!(
        "Largest N that holds every target: **{}** (target ≥ {TARGET_CALLS}).\n\n",
        held.map(|n| n.to_string()).unwrap_or_else(|| "none of the levels run".into())
    ));
    t.push_str(
        "| concurrent calls | turn latency p50 / p95 (p99) | frame jitter p99 (largest gap, underruns) | CPU per call per frame | memory per call | turns answered | machine: server / bench / other / idle | bench tick lateness p99 |\n",
    );
    t.push_str("|---|---|---|---|---|---|---|---|\n");
    t.push_str(&format!(
        "| target | ≤ {TARGET_P50_MS} / ≤ {TARGET_P95_MS} ms | ≤ {TARGET_JITTER_MS} ms | | ≤ {TARGET_MB_PER_CALL} MB | all | | |\n"
    ));
    for l in levels {
        t.push_str(&format!(
            "| {}{} | {:.1} / {:.1} ms ({:.1}) | {:.1} ms ({:.0} ms, {} of {} frames) | {:.0} µs | {:.2} MB ({:.0} → {:.0} MB) | {}/{}{} | {:.0}% / {:.0}% / {:.0}% / {:.0}% | {:.1} ms |\n",
            l.calls,
            if l.connected < l.calls { format!(" ({} connected)", l.connected) } else { String::new() },
            l.latency_p50,
            l.latency_p95,
            l.latency_p99,
            l.jitter_p99,
            l.max_gap_ms,
            l.underruns,
            l.frames_in,
            l.cpu_us_per_frame,
            l.mb_per_call(),
            l.idle_rss,
            l.peak_rss,
            l.answered,
            l.turns,
            if l.missed > 0 { format!(" ({} missed)", l.missed) } else { String::new() },
            l.server_share * 100.0,
            l.bench_share * 100.0,
            l.other_share * 100.0,
            l.idle_share * 100.0,
            l.tick_late_p99,
        ));
    }
    t.push_str("\nThe server's own view of a turn (means from its `vocode_turn_latency_seconds` histograms, each from the end of the caller's speech), and setup:\n\n");
    t.push_str("| concurrent calls | first token | first audio | first frame | paced gaps ≥ 30 ms / ≤ 10 ms | frames dropped | create + answer all calls |\n|---|---|---|---|---|---|---|\n");
    for l in levels {
        let stage = |name: &str| {
            l.stages.iter().find(|(s, _)| s == name).map(|(_, ms)| format!("{ms:.1} ms")).unwrap_or_else(|| "–".into())
        };
        let share = |n: u64| n as f64 / l.paced_gaps.max(1) as f64 * 100.0;
        t.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% / {:.1}% of {} | {:.0} | {:.1} s |\n",
            l.calls,
            stage("first_token"),
            stage("first_audio"),
            stage("first_frame"),
            share(l.long_gaps),
            share(l.short_gaps),
            l.paced_gaps,
            l.dropped_frames,
            l.setup.as_secs_f64()
        ));
    }
    t
}
