//! A fake ElevenLabs and a fake Azure Speech on one real HTTP server on a random port. Each
//! checks a request as its provider does (the key header, the output format, the body) and answers
//! with its provider's error bodies, or streams audio in the asked-for format back in several
//! chunks, with pauses between them (or held until the test releases them). Every request is
//! recorded, so tests can check what was sent.

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
    /// This status with this body.
    Status(u16, String),
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct TtsState {
    elevenlabs_key: String,
    azure_key: String,
    requests: Mutex<Vec<TtsRequest>>,
    plan: Mutex<VecDeque<TtsBehaviour>>,
    gate: Notify,
}

pub struct FakeTts {
    /// The base URL of both providers (`http://127.0.0.1:…`).
    pub base: String,
    pub elevenlabs_key: String,
    pub azure_key: String,
    state: Arc<TtsState>,
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

async fn answer(state: &Arc<TtsState>, format: &str) -> Response {
    let behaviour = state.plan.lock().unwrap().pop_front().unwrap_or(TtsBehaviour::Audio);
    let gated = match behaviour {
        TtsBehaviour::Audio => false,
        TtsBehaviour::Gated => true,
        TtsBehaviour::Status(status, body) => {
            return (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body)
                .into_response()
        }
        TtsBehaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::OK.into_response();
        }
    };
    let (chunks_in, chunks) = mpsc::channel::<Vec<u8>>(1);
    let state = state.clone();
    let audio = audio_chunks(format);
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
    (StatusCode::OK, [("content-type", "application/octet-stream")], Body::from_stream(body)).into_response()
}

impl FakeTts {
    pub async fn start() -> FakeTts {
        let elevenlabs_key = format!("xi-{}", uuid::Uuid::new_v4().simple());
        let azure_key = uuid::Uuid::new_v4().simple().to_string();
        let state = Arc::new(TtsState {
            elevenlabs_key: elevenlabs_key.clone(),
            azure_key: azure_key.clone(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/v1/text-to-speech/{voice_id}/stream", post(elevenlabs))
            .route("/cognitiveservices/v1", post(azure))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeTts { base, elevenlabs_key, azure_key, state }
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
