//! A fake ElevenLabs, Azure Speech, Rime and Play.ht on one real HTTP server on a random port.
//! Each checks a request as its provider does (the key header, the output format, the body) and
//! answers with its provider's error bodies, or with audio in the asked-for format: streamed back
//! in several chunks, with pauses between them (or held until the test releases them); for Rime, a
//! WAV file in base64 JSON; for Play.ht, a streamed WAV file whose header is split across the first
//! two chunks. Every request is recorded, so tests can check what was sent.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// One request the fake got.
#[derive(Debug, Clone)]
pub struct TtsRequest {
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Names lowercased.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl TtsRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// How the fake answers a valid request (`Audio` unless planned otherwise).
#[derive(Debug, Clone)]
pub enum TtsBehaviour {
    /// The audio, in chunks with pauses between them.
    Audio,
    /// The first chunk, then the rest only once the test calls [`FakeTts::release`].
    Gated,
    /// Audio of this length, every byte this byte (so a test can tell how much of it was played),
    /// in chunks of 250 ms with the same pauses: for ElevenLabs and Azure.
    Lasting(Duration, u8),
    /// This status with this body.
    Status(u16, String),
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct TtsState {
    elevenlabs_key: String,
    azure_key: String,
    rime_key: String,
    playht_key: String,
    playht_user_id: String,
    requests: Mutex<Vec<TtsRequest>>,
    plan: Mutex<VecDeque<TtsBehaviour>>,
    gate: Notify,
}

pub struct FakeTts {
    /// The base URL of both providers (`http://127.0.0.1:…`).
    pub base: String,
    pub elevenlabs_key: String,
    pub azure_key: String,
    pub rime_key: String,
    pub playht_key: String,
    pub playht_user_id: String,
    state: Arc<TtsState>,
}

/// A quarter of a second of a 440 Hz tone at `rate`: what Rime and Play.ht say.
pub fn tone(rate: u32) -> Vec<i16> {
    (0..rate / 4)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / f64::from(rate)).sin()) as i16)
        .collect()
}

/// A 16-bit mono PCM WAV file of `samples`, with a `LIST` chunk between `fmt ` and `data` as
/// ffmpeg writes one. A `streamed` file leaves its sizes unknown (`0xFFFFFFFF`), as a file
/// written while it is being sent does.
pub fn wav_file(rate: u32, samples: &[i16], streamed: bool) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let list = b"INFOISFT\x0e\0\0\0Lavf61.7.100\0\0";
    let mut file = Vec::new();
    let riff_size = 4 + (8 + 16) + (8 + list.len()) + (8 + data.len());
    file.extend_from_slice(b"RIFF");
    file.extend_from_slice(&(if streamed { u32::MAX } else { riff_size as u32 }).to_le_bytes());
    file.extend_from_slice(b"WAVEfmt ");
    file.extend_from_slice(&16u32.to_le_bytes());
    file.extend_from_slice(&1u16.to_le_bytes()); // PCM
    file.extend_from_slice(&1u16.to_le_bytes()); // mono
    file.extend_from_slice(&rate.to_le_bytes());
    file.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    file.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    file.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    file.extend_from_slice(b"LIST");
    file.extend_from_slice(&(list.len() as u32).to_le_bytes());
    file.extend_from_slice(list);
    file.extend_from_slice(b"data");
    file.extend_from_slice(&(if streamed { u32::MAX } else { data.len() as u32 }).to_le_bytes());
    file.extend_from_slice(&data);
    file
}

/// How the fake streams Play.ht's WAV file: the first chunk ends inside the `fmt ` chunk, the
/// second holds the rest of the header and an odd number of sample bytes, the rest follow in
/// odd-sized chunks.
pub fn playht_chunks(rate: u32) -> Vec<Vec<u8>> {
    let file = wav_file(rate, &tone(rate), true);
    let mut chunks = vec![file[..20].to_vec(), file[20..201].to_vec()];
    chunks.extend(file[201..].chunks(1001).map(<[u8]>::to_vec));
    chunks
}

/// The audio the fake streams for an output format, chunk by chunk: distinct per format, so a
/// test sees the format it asked for was the one produced.
pub fn audio_chunks(format: &str) -> Vec<Vec<u8>> {
    let size = if format.contains("8000") || format.contains("8khz") { 400 } else { 800 };
    let seed = format.bytes().fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..3u8)
        .map(|chunk| {
            (0..size).map(|i| seed.wrapping_add(chunk.wrapping_mul(101)).wrapping_add((i % 251) as u8)).collect()
        })
        .collect()
}

const ELEVENLABS_FORMATS: &[&str] =
    &["ulaw_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "mp3_44100_128", "mp3_22050_32"];
const AZURE_FORMATS: &[&str] = &[
    "raw-8khz-8bit-mono-mulaw",
    "riff-8khz-8bit-mono-mulaw",
    "raw-16khz-16bit-mono-pcm",
    "riff-16khz-16bit-mono-pcm",
    "raw-24khz-16bit-mono-pcm",
    "audio-16khz-32kbitrate-mono-mp3",
];

fn record(state: &TtsState, path: String, query: Option<String>, headers: &HeaderMap, body: &Bytes) {
    state.requests.lock().unwrap().push(TtsRequest {
        path,
        query: form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    });
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn elevenlabs(
    State(state): State<Arc<TtsState>>,
    Path(voice_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, format!("/v1/text-to-speech/{voice_id}/stream"), query.clone(), &headers, &body);
    if header(&headers, "xi-api-key") != Some(state.elevenlabs_key.as_str()) {
        let body = json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let format = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "output_format")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| "mp3_44100_128".into());
    if !ELEVENLABS_FORMATS.contains(&format.as_str()) {
        let body = json!({"detail": [{"loc": ["query", "output_format"], "msg": "value is not a valid enumeration member", "type": "type_error.enum"}]});
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
    }
    let text = serde_json::from_slice::<Value>(&body).ok().and_then(|b| b["text"].as_str().map(str::to_owned));
    if text.is_none_or(|t| t.trim().is_empty()) {
        let body =
            json!({"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]});
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
    }
    answer(&state, &format).await
}

async fn azure(State(state): State<Arc<TtsState>>, headers: HeaderMap, body: Bytes) -> Response {
    record(&state, "/cognitiveservices/v1".into(), None, &headers, &body);
    if header(&headers, "ocp-apim-subscription-key") != Some(state.azure_key.as_str()) {
        let body = json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    // The speech service answers a bad request with an empty body.
    let format = header(&headers, "x-microsoft-outputformat").unwrap_or_default().to_owned();
    let valid = header(&headers, "content-type") == Some("application/ssml+xml")
        && header(&headers, "user-agent").is_some_and(|ua| !ua.is_empty() && ua.len() < 255)
        && AZURE_FORMATS.contains(&format.as_str())
        && std::str::from_utf8(&body).is_ok_and(|ssml| ssml.starts_with("<speak") && ssml.ends_with("</speak>"));
    if !valid {
        return StatusCode::BAD_REQUEST.into_response();
    }
    answer(&state, &format).await
}

/// The sampling rates Rime and Play.ht offer.
const SAMPLE_RATES: &[u64] = &[8000, 16000, 22050, 24000, 44100, 48000];

async fn rime(State(state): State<Arc<TtsState>>, headers: HeaderMap, body: Bytes) -> Response {
    record(&state, "/v1/rime-tts".into(), None, &headers, &body);
    let error = |status: StatusCode, message: &str| (status, axum::Json(json!({"message": message}))).into_response();
    if header(&headers, "authorization") != Some(format!("Bearer {}", state.rime_key).as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized: the API key is invalid");
    }
    let body = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    if body["text"].as_str().is_none_or(|t| t.trim().is_empty()) {
        return error(StatusCode::BAD_REQUEST, "text is required");
    }
    if body["speaker"].as_str().is_none_or(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "speaker is required");
    }
    let Some(rate) = body["samplingRate"].as_u64().filter(|r| SAMPLE_RATES.contains(r)) else {
        return error(StatusCode::BAD_REQUEST, "samplingRate is not supported");
    };
    let behaviour = state.plan.lock().unwrap().pop_front().unwrap_or(TtsBehaviour::Audio);
    match behaviour {
        TtsBehaviour::Audio | TtsBehaviour::Gated | TtsBehaviour::Lasting(..) => {
            let wav = wav_file(rate as u32, &tone(rate as u32), false);
            let content = base64::engine::general_purpose::STANDARD.encode(wav);
            axum::Json(json!({"audioContent": content})).into_response()
        }
        other => misbehave(other).await,
    }
}

async fn playht(State(state): State<Arc<TtsState>>, headers: HeaderMap, body: Bytes) -> Response {
    record(&state, "/api/v2/tts/stream".into(), None, &headers, &body);
    let error = |status: StatusCode, id: &str, message: &str| {
        (status, axum::Json(json!({"error_message": message, "error_id": id}))).into_response()
    };
    if header(&headers, "authorization") != Some(state.playht_key.as_str())
        || header(&headers, "x-user-id") != Some(state.playht_user_id.as_str())
    {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid API key or user id");
    }
    let body = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    if body["text"].as_str().is_none_or(|t| t.trim().is_empty()) || body["voice"].as_str().is_none_or(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST", "text and voice are required");
    }
    if body["output_format"] != "wav" || header(&headers, "accept") != Some("audio/wav") {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST", "this fake streams only WAV");
    }
    let Some(rate) = body["sample_rate"].as_u64().filter(|r| SAMPLE_RATES.contains(r)) else {
        return error(StatusCode::BAD_REQUEST, "BAD_REQUEST", "sample_rate is not supported");
    };
    stream(&state, playht_chunks(rate as u32), "audio/wav").await
}

/// How many bytes a millisecond of audio takes in one of the raw formats the carriers use.
fn bytes_per_ms(format: &str) -> usize {
    match format {
        "ulaw_8000" | "raw-8khz-8bit-mono-mulaw" => 8,
        "pcm_16000" | "raw-16khz-16bit-mono-pcm" => 32,
        other => panic!("no lasting audio in {other}"),
    }
}

async fn answer(state: &Arc<TtsState>, format: &str) -> Response {
    let behaviour = state.plan.lock().unwrap().pop_front().unwrap_or(TtsBehaviour::Audio);
    let audio = match behaviour {
        TtsBehaviour::Lasting(length, byte) => {
            let audio = vec![byte; bytes_per_ms(format) * length.as_millis() as usize];
            audio.chunks(bytes_per_ms(format) * 250).map(<[u8]>::to_vec).collect()
        }
        _ => audio_chunks(format),
    };
    stream_as(state, behaviour, audio, "application/octet-stream").await
}

/// An answer other than audio.
async fn misbehave(behaviour: TtsBehaviour) -> Response {
    match behaviour {
        TtsBehaviour::Status(status, body) => {
            (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body).into_response()
        }
        TtsBehaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        TtsBehaviour::Audio | TtsBehaviour::Gated | TtsBehaviour::Lasting(..) => {
            unreachable!("audio is answered by each provider")
        }
    }
}

/// `audio` in chunks with pauses between them, as the plan says.
async fn stream(state: &Arc<TtsState>, audio: Vec<Vec<u8>>, content_type: &'static str) -> Response {
    let behaviour = state.plan.lock().unwrap().pop_front().unwrap_or(TtsBehaviour::Audio);
    stream_as(state, behaviour, audio, content_type).await
}

async fn stream_as(
    state: &Arc<TtsState>,
    behaviour: TtsBehaviour,
    audio: Vec<Vec<u8>>,
    content_type: &'static str,
) -> Response {
    let gated = match behaviour {
        TtsBehaviour::Audio | TtsBehaviour::Lasting(..) => false,
        TtsBehaviour::Gated => true,
        other => return misbehave(other).await,
    };
    let (chunks_in, chunks) = mpsc::channel::<Vec<u8>>(1);
    let state = state.clone();
    tokio::spawn(async move {
        for (i, chunk) in audio.into_iter().enumerate() {
            if i > 0 {
                if gated && i == 1 {
                    state.gate.notified().await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            if chunks_in.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (Ok::<_, Infallible>(Bytes::from(chunk)), chunks))
    });
    (StatusCode::OK, [("content-type", content_type)], Body::from_stream(body)).into_response()
}

impl FakeTts {
    pub async fn start() -> FakeTts {
        let elevenlabs_key = format!("xi-{}", uuid::Uuid::new_v4().simple());
        let azure_key = uuid::Uuid::new_v4().simple().to_string();
        let rime_key = format!("rime-{}", uuid::Uuid::new_v4().simple());
        let playht_key = format!("ph-{}", uuid::Uuid::new_v4().simple());
        let playht_user_id = uuid::Uuid::new_v4().simple().to_string();
        let state = Arc::new(TtsState {
            elevenlabs_key: elevenlabs_key.clone(),
            azure_key: azure_key.clone(),
            rime_key: rime_key.clone(),
            playht_key: playht_key.clone(),
            playht_user_id: playht_user_id.clone(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/v1/text-to-speech/{voice_id}/stream", post(elevenlabs))
            .route("/cognitiveservices/v1", post(azure))
            .route("/v1/rime-tts", post(rime))
            .route("/api/v2/tts/stream", post(playht))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeTts { base, elevenlabs_key, azure_key, rime_key, playht_key, playht_user_id, state }
    }

    /// How the next valid requests are answered, in turn.
    pub fn plan(&self, behaviours: impl IntoIterator<Item = TtsBehaviour>) {
        self.state.plan.lock().unwrap().extend(behaviours);
    }

    /// Lets a [`TtsBehaviour::Gated`] answer send the rest of its audio.
    pub fn release(&self) {
        self.state.gate.notify_one();
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<TtsRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}
