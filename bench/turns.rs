//! The turn-taking benchmark: `bench/run turns [--quick] [--concurrency 4] [--modes off,on]
//! [--vad energy|silero] [--endpointing auto] [--kinds complete,paused,…]` (see [`Options`]).
//!
//! Turn-taking as the caller hears it. Real calls through the real media path of the release
//! binary (live carrier mode: a fake Twilio, and a fake Vonage for a quarter of the calls), heard
//! by the server's own recogniser (`SPEECH_DIR`, Moonshine) with a model and a voice that answer at
//! once (the fake voice's audio is a tone as long as the text: 60 ms a character). For each
//! scenario a call's client plays an utterance of the shipped set (`assets/turns`, made by
//! `scripts/make-turn-set`) into its stream in real time, 20 ms frames paced by the clock, over a
//! quiet line's noise, and listens to what the server sends back: the bot's audio frames (played
//! on a clock as a carrier plays them), its `clear`s, its marks (echoed once played).
//!
//! Everything is timed on the caller's side, from the audio itself: the end of the person's
//! speech is where the set's manifest says it is in the item (measured from the item's energy),
//! placed on the stream's timeline by the instant the frame holding it was sent (a frame is sent
//! as soon as its 20 ms have been said: an ideal carrier, no network); the bot's first audio is
//! when its first frame with sound starts to play at the caller. No server event is used.
//!
//! Scenarios (one call each, with a second of line noise before anything is said):
//! - **turn**: a complete or a paused sentence while the bot is silent. Scored: end of speech →
//!   first audio; a *false cutoff* when the bot's first audio starts before the speech ended
//!   (during a pause, or over the person); *unanswered* if nothing comes within 4 s.
//! - **idle**: a non-speech burst while the bot is silent: an *answer to noise* if the bot says
//!   anything within 4 s.
//! - **while speaking**, at `interrupt_sensitivity` low or high: the person says a complete
//!   sentence, the bot answers at length (about 12 s), and a second into its answer the person
//!   makes a burst, a backchannel or an interruption. Scored: whether the bot stopped (a `clear`,
//!   or its audio running dry long before the answer's end) and how long after the onset of the
//!   sound. Bursts that stop it, and backchannels that stop it at `low`, are *false barge-ins*; an
//!   interruption that does not stop it is a *missed barge-in*.
//!
//! The whole set runs twice, once per end-of-turn mode (`END_OF_TURN_MODEL=off`, the silence
//! rule, and `=on`, the model), with `VAD` as `--vad` says (default `energy`), each on a fresh
//! server and database; what the server's `/ready` says of its turn-taking is printed beside. A
//! server that ignores these variables gives two equal columns. Every trial's outcome and the
//! transcript the server kept are written to `target/bench-turns.json`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use vocode_server::conversation::audio::{mulaw_decode, rms, Encoding, Transcoder};

use super::media::{
    fake_elevenlabs, fake_openai, fake_twilio, open_twilio, place_and_answer, quiet_machine, twilio_mark, twilio_media,
    Carrier, Playback, Stream,
};
use super::speech::local_speech_loaded;
use super::{call_api, launch, percentile, serve, BenchDatabase, OUR_NUMBER};

/// The utterance set and its manifest.
const SET: &str = "assets/turns";
const RATE: usize = 16_000;
/// 20 ms at 16 kHz.
const FRAME_SAMPLES: usize = 320;
const FRAME_MS: f64 = 20.0;
/// The line before anything is said: long enough for a detector to learn its noise floor.
const LEAD_IN_FRAMES: usize = 50;
/// How far into the bot's answer a probe is played.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// How long after the end of a sentence (or a burst) the bot may take to answer it.
const ANSWER_WAIT: Duration = Duration::from_secs(4);
/// How long after the end of a probe the bot may take to stop.
const STOP_WAIT: Duration = Duration::from_millis(2500);
/// A gap in the bot's audio this long is the bot having stopped.
const GAP_MS: f64 = 400.0;
/// The fake voice speaks this long per character.
const MS_PER_CHAR: u64 = 60;
/// The fake model's answer, whatever it is asked: long (about 12 s of audio), so that the bot is
/// still speaking when a probe has been played and waited for.
const ANSWER: [&str; 3] = [
    "Of course, I can help you with that right away. ",
    "Let me look at what we have open for you this week and check the details on my side. ",
    "Please stay on the line while I go through the options one by one.",
];
/// A frame of the bot's with more than this RMS is sound.
const AUDIBLE_RMS: f32 = 100.0;
/// The caller's line noise, peak (a quiet line: about 40 RMS).
const LINE_NOISE: i32 = 70;

const TARGET_LATENCY_P50_MS: f64 = 350.0;
const TARGET_CLEAR_P95_MS: f64 = 250.0;

fn fake_voice_length(text: &str) -> Duration {
    Duration::from_millis(text.chars().count() as u64 * MS_PER_CHAR)
}

/// How long the bot's answer plays when nothing stops it.
fn answer_ms() -> f64 {
    ANSWER.iter().map(|s| fake_voice_length(s.trim()).as_secs_f64() * 1000.0).sum()
}

// ---------------------------------------------------------------- the set

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Complete,
    Paused,
    Backchannel,
    Interruption,
    Burst,
}

/// One utterance of the set, as the manifest describes it (positions are samples of its file).
#[derive(Debug, Clone, Deserialize)]
struct Item {
    id: String,
    kind: Kind,
    text: String,
    voice: String,
    file: String,
    samples: usize,
    /// The first sample of the sound, and one past its last.
    start: usize,
    end: usize,
    #[serde(default)]
    pauses: Vec<[usize; 2]>,
    /// For a paused sentence, the pause made at its phrase boundary.
    pause: Option<[usize; 2]>,
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    sample_rate: usize,
    items: Vec<Item>,
}

impl Manifest {
    fn load(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn item(&self, id: &str) -> &Item {
        self.items.iter().find(|i| i.id == id).unwrap_or_else(|| panic!("{id} is in {SET}/manifest.json"))
    }
}

/// The samples of a mono WAV file in 16-bit PCM or G.711 μ-law, and its rate.
fn wav_samples(bytes: &[u8]) -> Result<(usize, Vec<i16>), String> {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a WAV file".into());
    }
    let (mut at, mut format) = (12, None);
    while at + 8 <= bytes.len() {
        let (id, size) = (&bytes[at..at + 4], u32_at(at + 4) as usize);
        let body = at + 8;
        if body + size > bytes.len() {
            return Err("a chunk runs past the end of the file".into());
        }
        match id {
            b"fmt " if size >= 16 => {
                format = Some((u16_at(body), u16_at(body + 2), u32_at(body + 4), u16_at(body + 14)))
            }
            b"data" => {
                let data = &bytes[body..body + size];
                return match format {
                    Some((1, 1, rate, 16)) => {
                        Ok((rate as usize, data.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect()))
                    }
                    Some((7, 1, rate, 8)) => Ok((rate as usize, data.iter().map(|b| mulaw_decode(*b)).collect())),
                    other => Err(format!("not mono 16-bit PCM or μ-law: {other:?}")),
                };
            }
            _ => {}
        }
        at = body + size + size % 2;
    }
    Err("no data chunk".into())
}

/// The set, loaded: the manifest and each item's samples.
struct Set {
    manifest: Manifest,
    audio: HashMap<String, Arc<Vec<i16>>>,
}

impl Set {
    fn load(dir: &Path) -> Result<Set, String> {
        let manifest = Manifest::load(dir)?;
        let mut audio = HashMap::new();
        for item in &manifest.items {
            let path = dir.join(&item.file);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // The positions were measured on these very files.
            if hex::encode(Sha256::digest(&bytes)) != item.sha256 {
                return Err(format!(
                    "{} is not the file the manifest measured (run scripts/make-turn-set)",
                    path.display()
                ));
            }
            let (rate, samples) = wav_samples(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if rate != manifest.sample_rate || rate != RATE || samples.len() != item.samples {
                return Err(format!(
                    "{}: {} samples at {rate} Hz, not {} at {RATE}",
                    path.display(),
                    samples.len(),
                    item.samples
                ));
            }
            audio.insert(item.id.clone(), Arc::new(samples));
        }
        Ok(Set { manifest, audio })
    }
}

// ---------------------------------------------------------------- scoring (pure)

/// What the caller's side heard of a call, in ms from its stream's first frame.
#[derive(Debug, Clone, Default)]
struct Timeline {
    /// When each of the bot's frames with sound started to play (frames a `clear` dropped before
    /// they played are not here).
    audio: Vec<f64>,
    /// When each `clear` arrived.
    clears: Vec<f64>,
    /// When the call's stream ended.
    ended: f64,
}

impl Timeline {
    /// A frame of the bot's that starts to play at `at`.
    fn frame(&mut self, at: f64, audible: bool) {
        if audible {
            self.audio.push(at);
        }
    }

    /// A `clear` at `at`: what had not started playing is never heard.
    fn clear(&mut self, at: f64) {
        self.clears.push(at);
        self.audio.retain(|t| *t < at);
    }

    /// When the bot's first audio at or after `from` started.
    fn first_audio(&self, from: f64) -> Option<f64> {
        self.audio.iter().copied().find(|t| *t >= from)
    }

    /// When the bot's speech that started at `began` (and plays `length` ms unless stopped)
    /// stopped: at a `clear`, or where its audio ran dry well before its end.
    fn stopped(&self, began: f64, length: f64) -> Option<f64> {
        let clear = self.clears.iter().copied().find(|c| *c >= began);
        let frames: Vec<f64> = self.audio.iter().copied().filter(|t| *t >= began).collect();
        let gap = frames.windows(2).find(|w| w[1] - (w[0] + FRAME_MS) >= GAP_MS).map(|w| w[0] + FRAME_MS);
        let last = frames.last().map(|t| t + FRAME_MS).filter(|end| self.ended - end >= GAP_MS);
        let dry = gap.or(last).filter(|at| *at < began + length - 1000.0);
        match (clear, dry) {
            (Some(c), Some(d)) => Some(c.min(d)),
            (c, d) => c.or(d),
        }
    }
}

/// Where a sound was said on the stream's timeline, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Said {
    start: f64,
    end: f64,
}

/// When the stream's sample `at` (16 kHz) was said, from when each frame was sent (ms): a frame
/// goes out the moment its last sample has been said.
fn said_at(sent: &[f64], at: usize) -> Option<f64> {
    let frame = at / FRAME_SAMPLES;
    let later = ((frame + 1) * FRAME_SAMPLES - at) as f64 * 1000.0 / RATE as f64;
    sent.get(frame).map(|t| t - later)
}

/// How a sentence said while the bot was silent was answered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// The bot's first audio came this long after the end of the speech.
    After(f64),
    /// The bot's first audio came this long before the end of the speech: a false cutoff.
    CutOff(f64),
    Unanswered,
}

fn answer(timeline: &Timeline, said: Said) -> Answer {
    match timeline.first_audio(said.start) {
        Some(at) if at >= said.end => Answer::After(at - said.end),
        Some(at) => Answer::CutOff(said.end - at),
        None => Answer::Unanswered,
    }
}

/// What a sound made while the bot spoke did to it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Barge {
    /// The bot stopped this long after the sound's onset.
    Stopped(f64),
    KeptTalking,
}

fn barge(timeline: &Timeline, answer_began: f64, answer_length: f64, probe: Said) -> Barge {
    match timeline.stopped(answer_began, answer_length) {
        Some(at) => Barge::Stopped(at - probe.start),
        None => Barge::KeptTalking,
    }
}

// ---------------------------------------------------------------- scenarios

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sensitivity {
    Low,
    High,
}

impl Sensitivity {
    fn as_str(self) -> &'static str {
        match self {
            Sensitivity::Low => "low",
            Sensitivity::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scenario {
    /// Said while the bot is silent: when is it answered?
    Turn,
    /// A sound while the bot is silent: is it answered?
    Idle,
    /// Said or sounded while the bot speaks, at this sensitivity: does the bot stop?
    WhileSpeaking(Sensitivity),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Twilio,
    Vonage,
}

#[derive(Debug, Clone)]
struct Trial {
    scenario: Scenario,
    line: Line,
    /// The item scored.
    item: String,
    /// For `WhileSpeaking`: the sentence that gets the bot talking.
    prompt: Option<String>,
}

/// The trials of a run: every item in each scenario it belongs to (the quick run: a few of one
/// voice), interleaved so that calls at once mix scenarios; a quarter of each scenario's on
/// Vonage.
fn trials(manifest: &Manifest, quick: bool) -> Vec<Trial> {
    const QUICK: &[&str] = &[
        "complete-01-awb",
        "complete-02-awb",
        "paused-02-awb",
        "paused-03-awb",
        "burst-cough-180",
        "backchannel-06-awb",
        "interruption-01-awb",
    ];
    let prompt_of = |voice: &str| {
        let voice = if voice == "synthetic" { "awb" } else { voice };
        format!("complete-01-{voice}")
    };
    let mut groups: Vec<Vec<Trial>> = vec![Vec::new(); 6];
    for item in manifest.items.iter().filter(|i| !quick || QUICK.contains(&i.id.as_str())) {
        let trial = |scenario, group: usize| {
            let prompt = matches!(scenario, Scenario::WhileSpeaking(_)).then(|| prompt_of(&item.voice));
            (group, Trial { scenario, line: Line::Twilio, item: item.id.clone(), prompt })
        };
        let low = Scenario::WhileSpeaking(Sensitivity::Low);
        let high = Scenario::WhileSpeaking(Sensitivity::High);
        let planned = match item.kind {
            Kind::Complete | Kind::Paused => vec![trial(Scenario::Turn, 0)],
            Kind::Burst => vec![trial(Scenario::Idle, 1), trial(low, 2), trial(high, 3)],
            Kind::Backchannel => vec![trial(low, 4), trial(high, 5)],
            Kind::Interruption => vec![trial(high, 3), trial(low, 2)],
        };
        for (group, trial) in planned {
            // The quick run leaves out what the full run adds beyond the targets.
            if quick && item.kind == Kind::Interruption && trial.scenario == low {
                continue;
            }
            groups[group].push(trial);
        }
    }
    for group in &mut groups {
        for (i, trial) in group.iter_mut().enumerate() {
            if i % 4 == 1 {
                trial.line = Line::Vonage;
            }
        }
    }
    let mut out = Vec::new();
    while groups.iter().any(|g| !g.is_empty()) {
        for group in groups.iter_mut().filter(|g| !g.is_empty()) {
            out.push(group.remove(0));
        }
    }
    out
}

// ---------------------------------------------------------------- the fake Vonage

/// Vonage's Voice and Numbers APIs, answering at once, keeping each call's request (its NCCO and
/// event URL).
#[derive(Default)]
struct Vonage {
    calls: Mutex<HashMap<String, Value>>,
}

const VONAGE_API_KEY: &str = "benchkey";
const VONAGE_SIGNATURE_SECRET: &str = "bench-signature-secret";

async fn fake_vonage(vonage: Arc<Vonage>) -> String {
    async fn create(State(v): State<Arc<Vonage>>, Json(body): Json<Value>) -> impl IntoResponse {
        let uuid = uuid::Uuid::new_v4().to_string();
        v.calls.lock().unwrap().insert(uuid.clone(), body);
        let created = json!({"uuid": uuid, "status": "started", "direction": "outbound", "conversation_uuid": format!("CON-{uuid}")});
        (StatusCode::CREATED, Json(created))
    }
    let success = || async { Json(json!({"error-code": "200", "error-code-label": "success"})) };
    let router = Router::new()
        .route("/v1/calls", post(create))
        .route(
            "/v1/calls/{uuid}",
            get(|UrlPath(uuid): UrlPath<String>| async move { Json(json!({"uuid": uuid, "status": "answered"})) })
                .put(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/number/search",
            get(|| async {
                Json(json!({"count": 1, "numbers": [{"country": "US", "msisdn": "16465558888", "type": "landline", "features": ["VOICE"]}]}))
            }),
        )
        .route("/number/buy", post(success))
        .route("/number/update", post(success))
        .with_state(vonage);
    serve(router).await
}

/// Answers a Vonage call as Vonage would (a signed `answered` event) and opens its websocket.
async fn answer_on_vonage(client: &reqwest::Client, vonage: &Vonage, uuid: &str) -> Result<Stream, String> {
    let body = vonage.calls.lock().unwrap().get(uuid).cloned().ok_or("the call never reached Vonage")?;
    let event_url = body["event_url"][0].as_str().ok_or("no event_url")?.to_owned();
    let connect =
        body["ncco"].as_array().and_then(|a| a.iter().find(|x| x["action"] == "connect")).ok_or("no connect")?;
    let endpoint = &connect["endpoint"][0];
    let answered =
        serde_json::to_vec(&json!({"status": "answered", "uuid": uuid, "conversation_uuid": format!("CON-{uuid}"),
        "direction": "outbound", "timestamp": chrono::Utc::now().to_rfc3339()}))
        .unwrap();
    let token = vocode_server::telephony::vonage::sign_callback(VONAGE_SIGNATURE_SECRET, &answered, VONAGE_API_KEY);
    let res = client
        .post(event_url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(answered)
        .send()
        .await
        .map_err(|e| format!("the answered event: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("the answered event was refused: {}", res.status()));
    }
    let uri = endpoint["uri"].as_str().ok_or("no websocket uri")?;
    let (mut socket, _) = tokio_tungstenite::connect_async(uri).await.map_err(|e| format!("connect: {e}"))?;
    let mut connected = endpoint["headers"].clone();
    connected["event"] = json!("websocket:connected");
    connected["content-type"] = json!("audio/l16;rate=16000");
    socket.send(Message::text(connected.to_string())).await.map_err(|e| format!("websocket:connected: {e}"))?;
    Ok(socket)
}

// ---------------------------------------------------------------- one call

/// A call's media stream as its carrier frames it.
enum Wire {
    Twilio { sid: String, seq: u64, encoder: Transcoder },
    Vonage,
}

/// What the server sent, as the caller's side takes it.
enum Sent {
    /// Audio: for each 20 ms of it, whether it has sound.
    Audio(Vec<bool>),
    Mark(String),
    Clear,
    Closed,
    Other,
}

impl Wire {
    fn audio(&mut self, pcm16k: &[i16]) -> Message {
        match self {
            Wire::Twilio { sid, seq, encoder } => {
                *seq += 1;
                twilio_media(*seq, sid, &STANDARD.encode(encoder.encode(pcm16k)))
            }
            Wire::Vonage => Message::binary(pcm16k.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()),
        }
    }

    fn played(&mut self, mark: &str) -> Message {
        match self {
            Wire::Twilio { sid, seq, .. } => {
                *seq += 1;
                twilio_mark(*seq, sid, mark)
            }
            Wire::Vonage => Message::text(json!({"event": "websocket:notify", "payload": {"mark": mark}}).to_string()),
        }
    }

    fn stop(&mut self) -> Option<Message> {
        match self {
            Wire::Twilio { sid, seq, .. } => Some(Message::text(
                json!({"event": "stop", "sequenceNumber": (*seq + 1).to_string(), "streamSid": sid}).to_string(),
            )),
            Wire::Vonage => None,
        }
    }

    fn read(&self, message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Sent {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(pcm))) if matches!(self, Wire::Vonage) => {
                return Sent::Audio(audible(&Encoding::Linear16k.decode(&pcm), 320));
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Sent::Closed,
            Some(Ok(_)) => return Sent::Other,
        };
        let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        match (&self, event["event"].as_str(), event["action"].as_str()) {
            (Wire::Twilio { .. }, Some("media"), _) => {
                let payload =
                    STANDARD.decode(event["media"]["payload"].as_str().unwrap_or_default()).unwrap_or_default();
                Sent::Audio(audible(&Encoding::Mulaw8k.decode(&payload), 160))
            }
            (Wire::Twilio { .. }, Some("mark"), _) => {
                Sent::Mark(event["mark"]["name"].as_str().unwrap_or_default().into())
            }
            (Wire::Twilio { .. }, Some("clear"), _) | (Wire::Vonage, _, Some("clear")) => Sent::Clear,
            (Wire::Vonage, _, Some("notify")) => {
                Sent::Mark(event["payload"]["mark"].as_str().unwrap_or_default().into())
            }
            _ => Sent::Other,
        }
    }
}

/// Whether each 20 ms (`frame` samples) of the audio has sound.
fn audible(samples: &[i16], frame: usize) -> Vec<bool> {
    samples.chunks(frame).map(|piece| rms(piece) > AUDIBLE_RMS).collect()
}

/// What the caller's microphone picks up: the line's noise, and what they say, from a sample of
/// the stream on.
struct Mouth {
    noise: u32,
    said: Vec<(usize, Arc<Vec<i16>>)>,
}

impl Mouth {
    fn frame(&mut self, n: usize) -> Vec<i16> {
        let first = n * FRAME_SAMPLES;
        (first..first + FRAME_SAMPLES)
            .map(|at| {
                self.noise = self.noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = ((self.noise >> 16) as i32 % (2 * LINE_NOISE + 1)) - LINE_NOISE;
                let speech: i32 = self
                    .said
                    .iter()
                    .filter_map(|(from, audio)| at.checked_sub(*from).and_then(|i| audio.get(i)))
                    .map(|s| i32::from(*s))
                    .sum();
                (noise + speech).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
            })
            .collect()
    }
}

/// What a trial saw.
#[derive(Debug, Clone, Default)]
struct Record {
    timeline: Timeline,
    /// Where the scored item was said (ms of the stream).
    said: Option<Said>,
    /// When the bot's answer to the prompt began to play.
    answer_began: Option<f64>,
    call_id: String,
    failed: Option<String>,
}

/// One call: the trial's sounds played in real time, what the server sends heard.
async fn converse(trial: &Trial, set: &Set, socket: Stream, mut wire: Wire, seed: u32) -> Record {
    let mut record = Record::default();
    let (mut write, mut read) = socket.split();
    let item = set.manifest.item(&trial.item);
    let lead_in = LEAD_IN_FRAMES * FRAME_SAMPLES;
    // What is said first: the item itself, or the prompt that gets the bot talking.
    let first = trial.prompt.as_deref().map(|p| set.manifest.item(p)).unwrap_or(item);
    let mut mouth = Mouth { noise: seed, said: vec![(lead_in, set.audio[&first.id].clone())] };
    let first_end = lead_in + first.end;
    // Where the item is in the stream (samples), once it is placed.
    let mut item_at = trial.prompt.is_none().then_some(lead_in);
    let mut playback = Playback::new();
    let mut sent: Vec<f64> = Vec::new();
    let mut t0: Option<Instant> = None;
    let ms = |t0: Option<Instant>, at: Instant| {
        t0.map(|t0| at.saturating_duration_since(t0).as_secs_f64() * 1000.0).unwrap_or(0.0)
    };
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut stop_at: Option<f64> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = Instant::now();
                let t0_ = *t0.get_or_insert(now);
                let t = ms(Some(t0_), now);
                let n = sent.len();
                // The probe, a second into the bot's answer.
                if item_at.is_none() {
                    if let Some(began) = record.answer_began {
                        if t >= began + PROBE_AFTER.as_secs_f64() * 1000.0 {
                            if !record.timeline.clears.is_empty() {
                                record.failed = Some("the bot stopped before the probe".into());
                                break;
                            }
                            item_at = Some(n * FRAME_SAMPLES);
                            mouth.said.push((n * FRAME_SAMPLES, set.audio[&item.id].clone()));
                        }
                    } else if let Some(end) = said_at(&sent, first_end) {
                        if t > end + ANSWER_WAIT.as_secs_f64() * 1000.0 {
                            record.failed = Some("the prompt was not answered".into());
                            break;
                        }
                    }
                }
                if let Some(at) = item_at {
                    if let (Some(start), Some(end)) = (said_at(&sent, at + item.start), said_at(&sent, at + item.end)) {
                        record.said = Some(Said { start, end });
                        let wait = match trial.scenario {
                            Scenario::WhileSpeaking(_) => STOP_WAIT,
                            _ => ANSWER_WAIT,
                        };
                        let settled = match trial.scenario {
                            // Answered: once the bot spoke and the person is done.
                            Scenario::Turn | Scenario::Idle => record.timeline.first_audio(start).map(|a| a.max(end)),
                            // Stopped: once it did.
                            Scenario::WhileSpeaking(_) => record.timeline.clears.iter().copied().find(|c| *c >= start).map(|c| c.max(end)),
                        };
                        let done = settled.map(|s| s + 300.0).unwrap_or(end + wait.as_secs_f64() * 1000.0);
                        stop_at = Some(stop_at.map_or(done, |s: f64| s.min(done)));
                    }
                }
                if stop_at.is_some_and(|s| t >= s) {
                    break;
                }
                let mut out = vec![wire.audio(&mouth.frame(n))];
                sent.push(t);
                for mark in playback.played(now) {
                    out.push(wire.played(&mark));
                }
                for message in out {
                    if write.send(message).await.is_err() {
                        record.failed = Some("the server closed the stream".into());
                        return record;
                    }
                }
            }
            message = read.next() => {
                let now = Instant::now();
                match wire.read(message) {
                    Sent::Audio(pieces) => {
                        for audible in pieces {
                            let plays = ms(t0, playback.frame(now));
                            record.timeline.frame(plays, audible);
                            if audible && trial.prompt.is_some() && record.answer_began.is_none() {
                                record.answer_began = Some(plays);
                            }
                        }
                    }
                    Sent::Mark(name) => playback.mark(name, now),
                    Sent::Clear => {
                        playback.clear(now);
                        record.timeline.clear(ms(t0, now));
                    }
                    Sent::Closed => {
                        record.failed = Some("the server closed the stream".into());
                        return record;
                    }
                    Sent::Other => {}
                }
            }
        }
    }
    record.timeline.ended = sent.last().copied().unwrap_or(0.0);
    if let Some(stop) = wire.stop() {
        let _ = write.send(stop).await;
    }
    let _ = write.close().await;
    record
}

// ---------------------------------------------------------------- a mode

/// The server's world, shared by the trials of a mode.
struct World {
    base: String,
    key: String,
    client: reqwest::Client,
    carrier: Arc<Carrier>,
    vonage: Arc<Vonage>,
    vonage_number: String,
    agents: HashMap<Sensitivity, String>,
}

const TWILIO_ACCOUNT: (&str, &str) = ("AC00000000000000000000000000000000", "bench-auth-token");

async fn run_trial(world: Arc<World>, set: Arc<Set>, trial: Trial, index: usize) -> Record {
    let sensitivity = match trial.scenario {
        Scenario::WhileSpeaking(s) => s,
        Scenario::Turn | Scenario::Idle => Sensitivity::Low,
    };
    let agent = world.agents[&sensitivity].clone();
    let to = format!("1650555{:04}", index % 10_000);
    let seed = index as u32 * 7_919 + 1;
    let opened = match trial.line {
        Line::Twilio => {
            let answered =
                place_and_answer(&world.client, &world.base, &world.key, &agent, &world.carrier, TWILIO_ACCOUNT, to)
                    .await;
            let id = answered.call_id.clone();
            open_twilio(&answered, TWILIO_ACCOUNT.0).await.map(|(socket, sid)| {
                (socket, Wire::Twilio { sid, seq: 1, encoder: Transcoder::from_pcm16k(Encoding::Mulaw8k) }, id)
            })
        }
        Line::Vonage => {
            let body = json!({"from_number": world.vonage_number, "to_number": to, "agent": agent});
            let call = call_api(&world.client, format!("{}/v1/calls/create", world.base), &world.key, body).await;
            let uuid = call["telephony_id"].as_str().unwrap_or_default().to_owned();
            let id = call["id"].as_str().unwrap_or_default().to_owned();
            answer_on_vonage(&world.client, &world.vonage, &uuid).await.map(|socket| (socket, Wire::Vonage, id))
        }
    };
    match opened {
        Ok((socket, wire, call_id)) => {
            let mut record = converse(&trial, &set, socket, wire, seed).await;
            record.call_id = call_id;
            record
        }
        Err(reason) => Record { failed: Some(reason), ..Record::default() },
    }
}

struct Mode {
    /// `off` or `on`: `END_OF_TURN_MODEL`.
    end_of_turn_model: String,
    vad: String,
}

struct ModeRun {
    mode: Mode,
    /// What `/ready` said of the server's turn-taking.
    reported: String,
    load: String,
    results: Vec<(Trial, Record, Value)>,
}

/// What `/ready` says of turn-taking: any field whose name speaks of turns, endpointing or voice
/// activity (today's server says nothing).
fn turn_taking_fields(ready: &Value, path: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = ready {
        for (key, value) in map {
            let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            let lower = key.to_lowercase();
            let named = ["turn", "vad", "endpoint", "voice_activity"].iter().any(|w| lower.contains(w));
            match value {
                Value::Object(_) if !named => turn_taking_fields(value, &here, out),
                _ if named => out.push(format!("{here}={value}")),
                _ => {}
            }
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run_mode(mode: Mode, set: Arc<Set>, trials: &[Trial], options: &Options, fakes: &Fakes) -> ModeRun {
    let concurrency = options.concurrency;
    // Other work on these cores would be measured as the server's slowness (the quick run only
    // notes the load).
    if !options.quick {
        quiet_machine().await;
    }
    let load = load_average();
    let database = BenchDatabase::create().await;
    let key = "vk_bench_key_00000000000000000000000000000000".to_owned();
    let private_key = format!("{}/tests/fixtures/jwt-test-private.pem", env!("CARGO_MANIFEST_DIR"));
    let speech_dir = std::env::var("SPEECH_DIR").unwrap_or_else(|_| "data/speech".into());
    let server = launch(
        &database.url,
        &key,
        &[
            ("TWILIO_API_BASE_URL", fakes.twilio.as_str()),
            ("VONAGE_APPLICATION_ID", "00000000-0000-4000-8000-00000000be0c"),
            ("VONAGE_PRIVATE_KEY_PATH", &private_key),
            ("VONAGE_API_KEY", VONAGE_API_KEY),
            ("VONAGE_API_SECRET", "bench-api-secret"),
            ("VONAGE_SIGNATURE_SECRET", VONAGE_SIGNATURE_SECRET),
            ("VONAGE_API_BASE_URL", &fakes.vonage),
            ("VONAGE_NUMBERS_BASE_URL", &fakes.vonage),
            ("OPENAI_BASE_URL", &fakes.openai),
            ("OPENAI_API_KEY", "bench"),
            ("ELEVENLABS_BASE_URL", &fakes.elevenlabs),
            ("ELEVENLABS_API_KEY", "bench"),
            ("SPEECH_DIR", &speech_dir),
            ("END_OF_TURN_MODEL", &mode.end_of_turn_model),
            ("VAD", &mode.vad),
        ],
    );
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let ready = local_speech_loaded(&client, &base).await;
    let mut fields = Vec::new();
    turn_taking_fields(&ready, "", &mut fields);
    let reported = if fields.is_empty() { "nothing of its turn-taking".to_owned() } else { fields.join(", ") };
    eprintln!("turn-taking, END_OF_TURN_MODEL={} VAD={}: /ready says {reported}", mode.end_of_turn_model, mode.vad);

    let (account, token) = TWILIO_ACCOUNT;
    let conn = call_api(&client, format!("{base}/v1/account_connections/create"), &key,
        json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": account, "twilio_auth_token": token}})).await;
    let number = json!({"phone_number": OUR_NUMBER, "telephony_account_connection": conn["id"]});
    call_api(&client, format!("{base}/v1/numbers/link"), &key, number).await;
    let bought = json!({"telephony_provider": "vonage", "area_code": "646"});
    let vonage_number = call_api(&client, format!("{base}/v1/numbers/buy"), &key, bought).await["number"]
        .as_str()
        .expect("a Vonage number")
        .to_owned();
    let mut agents = HashMap::new();
    for sensitivity in [Sensitivity::Low, Sensitivity::High] {
        let agent = call_api(
            &client,
            format!("{base}/v1/agents/create"),
            &key,
            json!({"prompt": {"content": "You book tables at the bench restaurant."},
                   "voice": {"type": "voice_eleven_labs", "voice_id": "bench-voice"},
                   "interrupt_sensitivity": sensitivity.as_str(), "endpointing_sensitivity": options.endpointing}),
        )
        .await;
        agents.insert(sensitivity, agent["id"].as_str().unwrap().to_owned());
    }
    let world = Arc::new(World {
        base: base.clone(),
        key: key.clone(),
        client: client.clone(),
        carrier: fakes.carrier.clone(),
        vonage: fakes.vonage_state.clone(),
        vonage_number,
        agents,
    });

    // A few calls at once, their starts a little apart.
    let mut running = tokio::task::JoinSet::new();
    let mut results = Vec::new();
    let started = Instant::now();
    for (index, trial) in trials.iter().enumerate() {
        while running.len() >= concurrency {
            results.push(running.join_next().await.unwrap().expect("a trial"));
        }
        let (world, set, trial) = (world.clone(), set.clone(), trial.clone());
        running.spawn(async move {
            let record = run_trial(world, set, trial.clone(), index).await;
            (index, trial, record)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        if index % 10 == 9 {
            eprintln!("  {} of {} trials started ({:.0} s)", index + 1, trials.len(), started.elapsed().as_secs_f64());
        }
    }
    while let Some(done) = running.join_next().await {
        results.push(done.expect("a trial"));
    }
    results.sort_by_key(|(index, _, _)| *index);

    // What the server kept of each call: its transcript (written as the conversation ends).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut out = Vec::new();
    for (_, trial, record) in results {
        let call: Value = if record.call_id.is_empty() {
            Value::Null
        } else {
            match client.get(format!("{base}/v1/calls?id={}", record.call_id)).bearer_auth(&key).send().await {
                Ok(res) => res.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            }
        };
        out.push((trial, record, call["transcript"].clone()));
    }
    drop(server);
    database.drop().await;
    ModeRun { mode, reported, load, results: out }
}

// ---------------------------------------------------------------- scores

/// Counts of one kind of outcome, and the latencies that go with it.
#[derive(Debug, Default, Clone)]
struct Tally {
    hits: usize,
    of: usize,
    ms: Vec<f64>,
}

impl Tally {
    fn ratio(&self) -> String {
        format!("{}/{}", self.hits, self.of)
    }

    fn p(&self, p: f64) -> f64 {
        let mut sorted: Vec<Duration> =
            self.ms.iter().map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)).collect();
        sorted.sort();
        percentile(&sorted, p)
    }

    fn p50(&self) -> String {
        if self.ms.is_empty() {
            return "–".into();
        }
        format!("{:.0} ms", self.p(0.5))
    }

    fn p50_p95(&self) -> String {
        if self.ms.is_empty() {
            return "–".into();
        }
        format!("{:.0} / {:.0} ms", self.p(0.5), self.p(0.95))
    }
}

#[derive(Debug, Default)]
struct Scores {
    /// Complete sentences: latencies of those answered after the end; hits = false cutoffs.
    complete: Tally,
    paused: Tally,
    unanswered: Tally,
    /// Bursts while the bot is silent: hits = answered.
    noise_answered: Tally,
    /// Hits = the bot stopped; ms = onset → stop.
    bursts_low: Tally,
    bursts_high: Tally,
    backchannels_low: Tally,
    backchannels_high: Tally,
    interruptions_high: Tally,
    interruptions_low: Tally,
    /// End of speech → first audio on complete sentences, per line.
    twilio: Tally,
    vonage: Tally,
    failed: Vec<String>,
}

fn score(set: &Set, results: &[(Trial, Record, Value)]) -> Scores {
    let mut s = Scores::default();
    for (trial, record, _) in results {
        let kind = set.manifest.item(&trial.item).kind;
        if let Some(reason) = &record.failed {
            s.failed.push(format!("{} ({:?}): {reason}", trial.item, trial.scenario));
            continue;
        }
        let Some(said) = record.said else {
            s.failed.push(format!("{} ({:?}): never played", trial.item, trial.scenario));
            continue;
        };
        match trial.scenario {
            Scenario::Turn => {
                let tally = if kind == Kind::Paused { &mut s.paused } else { &mut s.complete };
                tally.of += 1;
                s.unanswered.of += 1;
                match answer(&record.timeline, said) {
                    Answer::After(ms) => {
                        tally.ms.push(ms);
                        if kind == Kind::Complete {
                            let line = if trial.line == Line::Vonage { &mut s.vonage } else { &mut s.twilio };
                            line.ms.push(ms);
                        }
                    }
                    Answer::CutOff(_) => tally.hits += 1,
                    Answer::Unanswered => s.unanswered.hits += 1,
                }
            }
            Scenario::Idle => {
                s.noise_answered.of += 1;
                if !matches!(answer(&record.timeline, said), Answer::Unanswered) {
                    s.noise_answered.hits += 1;
                }
            }
            Scenario::WhileSpeaking(sensitivity) => {
                let tally = match (kind, sensitivity) {
                    (Kind::Burst, Sensitivity::Low) => &mut s.bursts_low,
                    (Kind::Burst, Sensitivity::High) => &mut s.bursts_high,
                    (Kind::Backchannel, Sensitivity::Low) => &mut s.backchannels_low,
                    (Kind::Backchannel, Sensitivity::High) => &mut s.backchannels_high,
                    (_, Sensitivity::Low) => &mut s.interruptions_low,
                    (_, Sensitivity::High) => &mut s.interruptions_high,
                };
                tally.of += 1;
                let began = record.answer_began.unwrap_or(0.0);
                if let Barge::Stopped(ms) = barge(&record.timeline, began, answer_ms(), said) {
                    tally.hits += 1;
                    tally.ms.push(ms);
                }
            }
        }
    }
    s
}

/// The outcome of a trial in words, for the details file.
fn outcome(trial: &Trial, record: &Record) -> String {
    if let Some(reason) = &record.failed {
        return format!("failed: {reason}");
    }
    let Some(said) = record.said else {
        return "never played".into();
    };
    match trial.scenario {
        Scenario::Turn | Scenario::Idle => match answer(&record.timeline, said) {
            Answer::After(ms) => format!("answered {ms:.0} ms after the end"),
            Answer::CutOff(ms) => format!("answered {ms:.0} ms before the end (false cutoff)"),
            Answer::Unanswered => "unanswered".into(),
        },
        Scenario::WhileSpeaking(_) => {
            match barge(&record.timeline, record.answer_began.unwrap_or(0.0), answer_ms(), said) {
                Barge::Stopped(ms) => format!("the bot stopped {ms:.0} ms after the onset"),
                Barge::KeptTalking => "the bot kept talking".into(),
            }
        }
    }
}

// ---------------------------------------------------------------- the run

struct Fakes {
    twilio: String,
    carrier: Arc<Carrier>,
    vonage: String,
    vonage_state: Arc<Vonage>,
    openai: String,
    elevenlabs: String,
}

/// The command line: `bench/run turns [--quick] [--concurrency 4] [--modes off,on]
/// [--vad energy] [--endpointing auto] [--kinds complete,paused,backchannel,interruption,burst]`.
struct Options {
    /// A few items of one voice, the machine's load only noted: under a minute.
    quick: bool,
    /// Calls at once.
    concurrency: usize,
    /// `END_OF_TURN_MODEL` of each column.
    modes: Vec<String>,
    /// `VAD`, the same in every column.
    vad: String,
    /// The agents' `endpointing_sensitivity`.
    endpointing: String,
    /// Only the items of these kinds (all when absent).
    kinds: Option<Vec<Kind>>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        let list = |value: String| value.split(',').map(|m| m.trim().to_owned()).collect::<Vec<_>>();
        Options {
            quick: args.iter().any(|a| a == "--quick"),
            concurrency: option("--concurrency").and_then(|c| c.parse().ok()).unwrap_or(4).max(1),
            modes: list(option("--modes").unwrap_or_else(|| "off,on".into())),
            vad: option("--vad").unwrap_or_else(|| "energy".into()),
            endpointing: option("--endpointing").unwrap_or_else(|| "auto".into()),
            kinds: option("--kinds").map(|k| {
                list(k)
                    .iter()
                    .map(|k| serde_json::from_value(json!(k)).unwrap_or_else(|_| panic!("--kinds: no kind {k:?}")))
                    .collect()
            }),
        }
    }
}

pub async fn run() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let options = Options::parse(&args);
    let Options { concurrency, ref modes, ref vad, .. } = options;

    let set = Arc::new(Set::load(Path::new(SET)).unwrap_or_else(|e| panic!("the utterance set: {e}")));
    let mut plan = trials(&set.manifest, options.quick);
    if let Some(kinds) = &options.kinds {
        plan.retain(|t| kinds.contains(&set.manifest.item(&t.item).kind));
    }
    let carrier = Arc::new(Carrier::default());
    let vonage_state = Arc::new(Vonage::default());
    let fakes = Fakes {
        twilio: fake_twilio(carrier.clone()).await,
        carrier,
        vonage: fake_vonage(vonage_state.clone()).await,
        vonage_state,
        openai: fake_openai(&ANSWER).await,
        elevenlabs: fake_elevenlabs(fake_voice_length).await,
    };
    eprintln!(
        "turn-taking: {} trials a mode ({} items of {SET}), {concurrency} calls at once, modes {modes:?}, VAD={vad}",
        plan.len(),
        set.manifest.items.len()
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for end_of_turn_model in modes {
        let mode = Mode { end_of_turn_model: end_of_turn_model.clone(), vad: vad.clone() };
        runs.push(run_mode(mode, set.clone(), &plan, &options, &fakes).await);
    }
    let elapsed = started.elapsed();

    let scored: Vec<Scores> = runs.iter().map(|r| score(&set, &r.results)).collect();
    let table = table(&runs, &scored, &args, plan.len(), concurrency, elapsed);
    println!("{table}");
    let details: Vec<Value> = runs
        .iter()
        .map(|run| {
            let trials: Vec<Value> = run
                .results
                .iter()
                .map(|(trial, record, transcript)| {
                    let item = set.manifest.item(&trial.item);
                    let ms = |[from, to]: [usize; 2]| [from * 1000 / RATE, to * 1000 / RATE];
                    json!({"item": trial.item, "text": item.text, "pauses_ms": item.pauses.iter().copied().map(ms).collect::<Vec<_>>(), "pause_ms": item.pause.map(ms), "scenario": format!("{:?}", trial.scenario), "line": format!("{:?}", trial.line),
                           "prompt": trial.prompt, "outcome": outcome(trial, record), "said_ms": record.said.map(|s| [s.start, s.end]),
                           "bot_answer_began_ms": record.answer_began, "first_audio_ms": record.timeline.audio.first(),
                           "clears_ms": record.timeline.clears, "transcript": transcript})
                })
                .collect();
            json!({"end_of_turn_model": run.mode.end_of_turn_model, "vad": run.mode.vad, "ready": run.reported, "trials": trials})
        })
        .collect();
    let _ = std::fs::write("target/bench-turns.json", serde_json::to_string_pretty(&details).unwrap());
    let results = "bench/RESULTS.md";
    let mut text = std::fs::read_to_string(results).unwrap_or_default();
    text.push_str(&table);
    text.push('\n');
    std::fs::write(results, text).unwrap();
    eprintln!("appended to {results}; every trial in target/bench-turns.json");
}

fn git_commit() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let commit = out(&["rev-parse", "--short", "HEAD"]);
    let dirty = !out(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!("{commit}{}", if dirty { " (with uncommitted changes)" } else { "" })
}

fn table(
    runs: &[ModeRun],
    scored: &[Scores],
    args: &[String],
    trials: usize,
    concurrency: usize,
    elapsed: Duration,
) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let command = ["bench/run turns".to_owned()].into_iter().chain(args.iter().cloned()).collect::<Vec<_>>().join(" ");
    let mut t = format!(
        "### Turn-taking, {} — {cores} cores, commit {} (`{command}`: {trials} trials a mode, {concurrency} calls at once, {:.0} s)\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        git_commit(),
        elapsed.as_secs_f64(),
    );
    for run in runs {
        t.push_str(&format!(
            "- `END_OF_TURN_MODEL={}` `VAD={}`: load average {} before the run; `/ready` said {}.\n",
            run.mode.end_of_turn_model, run.mode.vad, run.load, run.reported
        ));
    }
    let column = |run: &ModeRun| match run.mode.end_of_turn_model.as_str() {
        "off" => "silence rule (`END_OF_TURN_MODEL=off`)".to_owned(),
        "on" => "model (`END_OF_TURN_MODEL=on`)".to_owned(),
        other => format!("`END_OF_TURN_MODEL={other}`"),
    };
    t.push_str("\n| measure (from the caller's side) |");
    for run in runs {
        t.push_str(&format!(" {} |", column(run)));
    }
    t.push_str(" target |\n|---|");
    for _ in runs {
        t.push_str("---|");
    }
    t.push_str("---|\n");
    let mut row = |name: &str, cell: &dyn Fn(&Scores) -> String, target: &str| {
        t.push_str(&format!("| {name} |"));
        for s in scored {
            t.push_str(&format!(" {} |", cell(s)));
        }
        t.push_str(&format!(" {target} |\n"));
    };
    row(
        "end of speech → bot's first audio, complete sentences, p50 / p95",
        &|s| s.complete.p50_p95(),
        &format!("p50 ≤ {TARGET_LATENCY_P50_MS:.0} ms"),
    );
    row("… on Twilio / on Vonage, p50", &|s| format!("{} / {}", s.twilio.p50(), s.vonage.p50()), "");
    row(
        "end of speech → first audio, paused sentences answered after their end, p50 / p95",
        &|s| s.paused.p50_p95(),
        "",
    );
    row("false cutoffs: complete sentences", &|s| s.complete.ratio(), "");
    row("false cutoffs: sentences paused 300–900 ms", &|s| s.paused.ratio(), "≤ the silence rule's");
    row("unanswered sentences (no audio within 4 s)", &|s| s.unanswered.ratio(), "");
    row("answers to noise (bursts while the bot is silent)", &|s| s.noise_answered.ratio(), "0");
    row("false barge-ins at `low`: backchannels", &|s| s.backchannels_low.ratio(), "0");
    row("false barge-ins at `low`: bursts", &|s| s.bursts_low.ratio(), "");
    row("false barge-ins at `high`: bursts", &|s| s.bursts_high.ratio(), "");
    row(
        "missed barge-ins: interruptions at `high`",
        &|s| format!("{}/{}", s.interruptions_high.of - s.interruptions_high.hits, s.interruptions_high.of),
        "",
    );
    row(
        "barge-in at `high`: interruption onset → bot stopped (`clear`), p50 / p95",
        &|s| s.interruptions_high.p50_p95(),
        &format!("p95 ≤ {TARGET_CLEAR_P95_MS:.0} ms"),
    );
    row(
        "backchannels at `high`: stopped the bot; onset → stopped p50 / p95",
        &|s| format!("{}; {}", s.backchannels_high.ratio(), s.backchannels_high.p50_p95()),
        "",
    );
    if scored.iter().any(|s| s.interruptions_low.of > 0) {
        row(
            "interruptions at `low`: stopped the bot; onset → stopped p50 / p95",
            &|s| format!("{}; {}", s.interruptions_low.ratio(), s.interruptions_low.p50_p95()),
            "",
        );
    }
    row("trials that could not be scored", &|s| s.failed.len().to_string(), "0");
    for (run, s) in runs.iter().zip(scored) {
        for failure in &s.failed {
            t.push_str(&format!("\n- `END_OF_TURN_MODEL={}`: {failure}", run.mode.end_of_turn_model));
        }
    }
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(SET)
    }

    #[test]
    fn the_set_loads_every_file_is_there_and_every_position_is_inside_it() {
        let dir = set_dir();
        // Every file there, the one the manifest measured (its sha256), of the length it says.
        let set = Set::load(&dir).unwrap();
        for item in &set.manifest.items {
            let samples = &set.audio[&item.id];
            assert!(item.start < item.end && item.end <= item.samples, "{}: the sound is inside the file", item.id);
            for [from, to] in item.pauses.iter().chain(&item.pause) {
                assert!(item.start < *from && from < to && *to < item.end, "{}: a pause inside the sound", item.id);
            }
            // The positions are where the sound is: silence before the start, sound just after.
            assert!(samples[..item.start].iter().all(|s| s.abs() < 64), "{}: quiet before its start", item.id);
            assert!(rms(&samples[item.start..item.start + 80]) > 20.0, "{}: sound at its start", item.id);
            assert!(rms(&samples[item.end - 80..item.end]) > 20.0, "{}: sound up to its end", item.id);
            if let Some([from, to]) = item.pause {
                assert!(rms(&samples[from..to]) < 50.0, "{}: the pause is quiet", item.id);
                let ms = (to - from) * 1000 / RATE;
                assert!((290..=910).contains(&ms), "{}: a pause of {ms} ms", item.id);
            }
        }
        let count = |kind| set.manifest.items.iter().filter(|i| i.kind == kind).count();
        assert!(count(Kind::Complete) >= 30 && count(Kind::Paused) >= 24 && count(Kind::Backchannel) >= 18);
        assert!(count(Kind::Burst) >= 4 && count(Kind::Interruption) >= 3);
        let voices: std::collections::HashSet<&str> =
            set.manifest.items.iter().filter(|i| i.kind != Kind::Burst).map(|i| i.voice.as_str()).collect();
        assert!(voices.len() >= 3, "{voices:?}");
        for quick in [false, true] {
            for trial in trials(&set.manifest, quick) {
                set.manifest.item(&trial.item);
                if let Some(prompt) = &trial.prompt {
                    assert_eq!(set.manifest.item(prompt).kind, Kind::Complete);
                }
            }
        }
    }

    #[test]
    fn a_sample_is_placed_by_when_its_frame_went_out() {
        // Frames went out at 0, 20.5, 41 ms: each the moment its last sample had been said.
        let sent = [0.0, 20.5, 41.0];
        assert_eq!(said_at(&sent, 319), Some(0.0 - 1000.0 / 16_000.0));
        assert_eq!(said_at(&sent, 320), Some(20.5 - 20.0));
        assert_eq!(said_at(&sent, 480), Some(20.5 - 10.0));
        assert_eq!(said_at(&sent, 960), None, "not sent yet");
    }

    fn speaking(from: f64, to: f64) -> Vec<f64> {
        let mut at = from;
        let mut out = Vec::new();
        while at < to {
            out.push(at);
            at += FRAME_MS;
        }
        out
    }

    #[test]
    fn an_answer_is_timed_from_the_end_of_the_speech_and_one_before_it_is_a_false_cutoff() {
        let said = Said { start: 1000.0, end: 3000.0 };
        let answered = Timeline { audio: speaking(3600.0, 5000.0), clears: vec![], ended: 5000.0 };
        assert_eq!(answer(&answered, said), Answer::After(600.0));
        // In the pause, before the person went on.
        let in_the_pause = Timeline { audio: speaking(2200.0, 2500.0), clears: vec![2500.0], ended: 4000.0 };
        assert_eq!(answer(&in_the_pause, said), Answer::CutOff(800.0));
        let silent = Timeline { audio: vec![], clears: vec![], ended: 7000.0 };
        assert_eq!(answer(&silent, said), Answer::Unanswered);
    }

    #[test]
    fn a_clear_stops_the_bot_and_what_had_not_played_is_never_heard() {
        let mut t = Timeline::default();
        for at in speaking(2000.0, 2600.0) {
            t.frame(at, true);
        }
        t.frame(2600.0, false);
        t.clear(2300.0);
        assert_eq!(t.audio.last(), Some(&2280.0), "frames due after the clear were dropped");
        t.ended = 5000.0;
        let probe = Said { start: 2100.0, end: 2500.0 };
        assert_eq!(barge(&t, 2000.0, 12_000.0, probe), Barge::Stopped(200.0));
    }

    #[test]
    fn audio_that_runs_dry_long_before_its_end_is_a_stop_and_a_bot_still_talking_is_not() {
        let probe = Said { start: 3000.0, end: 3500.0 };
        // Still talking when the trial ended.
        let talking = Timeline { audio: speaking(2000.0, 6000.0), clears: vec![], ended: 6000.0 };
        assert_eq!(barge(&talking, 2000.0, 12_000.0, probe), Barge::KeptTalking);
        // Stopped without a clear: the caller hears it stop where the audio ran out.
        let dry = Timeline { audio: speaking(2000.0, 3200.0), clears: vec![], ended: 6000.0 };
        assert_eq!(barge(&dry, 2000.0, 12_000.0, probe), Barge::Stopped(200.0));
        // And a gap, then more (the bot answering what interrupted it).
        let mut resumed = dry.clone();
        resumed.audio.extend(speaking(4500.0, 5000.0));
        assert_eq!(barge(&resumed, 2000.0, 12_000.0, probe), Barge::Stopped(200.0));
        // Its answer's natural end is no stop.
        let finished = Timeline { audio: speaking(2000.0, 4000.0), clears: vec![], ended: 6000.0 };
        assert_eq!(barge(&finished, 2000.0, 2000.0, probe), Barge::KeptTalking);
    }

    #[test]
    fn a_wav_file_reads_as_pcm_or_mu_law() {
        let wav = |tag: u16, bits: u16, data: &[u8]| {
            let mut fmt = Vec::new();
            for v in [tag, 1] {
                fmt.extend(v.to_le_bytes());
            }
            fmt.extend(16_000u32.to_le_bytes());
            fmt.extend((16_000u32 * u32::from(bits) / 8).to_le_bytes());
            fmt.extend((bits / 8).to_le_bytes());
            fmt.extend(bits.to_le_bytes());
            let mut chunks = b"fmt ".to_vec();
            chunks.extend((fmt.len() as u32).to_le_bytes());
            chunks.extend(fmt);
            chunks.extend(b"data");
            chunks.extend((data.len() as u32).to_le_bytes());
            chunks.extend(data);
            let mut out = b"RIFF".to_vec();
            out.extend((chunks.len() as u32 + 4).to_le_bytes());
            out.extend(b"WAVE");
            out.extend(chunks);
            out
        };
        assert_eq!(wav_samples(&wav(1, 16, &[1, 0, 0xff, 0xff])).unwrap(), (16_000, vec![1, -1]));
        assert_eq!(wav_samples(&wav(7, 8, &[0xff, 0x00])).unwrap(), (16_000, vec![0, mulaw_decode(0)]));
        assert!(wav_samples(b"RIFF....WAVEjunk").is_err());
    }
}
