//! A fake OpenAI-compatible chat-completions server: a real HTTP server on a random port that
//! records every request it gets (path, headers, JSON body) and answers each one as the test
//! scripted it, writing the server-sent events by hand. It can answer in the following ways:
//! - text in chunks;
//! - tool calls whose arguments come in fragments;
//! - OpenAI's error statuses and JSON;
//! - a chunk that is not JSON;
//! - a stream cut before its end;
//! - a first chunk that comes late.
//!
//! It also makes embeddings (`POST /v1/embeddings`): [`EMBEDDING`] for any text.
//!
//! The events can also be packed several to a TCP write, or split in the middle of a line.
//!
//! Every streamed answer carries what real servers add around it:
//! - a role-only first delta;
//! - a keep-alive comment;
//! - a usage chunk with no choices;
//! - `data: [DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The pause between two writes of a streamed answer, so that each reaches the client as a read
/// of its own rather than coalesced with the next.
const WRITE_GAP: Duration = Duration::from_millis(3);

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Where it came from: one address for requests on one connection.
    pub peer: SocketAddr,
    pub path: String,
    pub headers: HeaderMap,
    /// The JSON body (a JSON string of the raw text if it was not JSON).
    pub body: Value,
    /// When it came.
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
enum Reply {
    /// Text, one chunk per event, then `finish_reason: "stop"`.
    Text(Vec<String>),
    /// Tool calls, in order: (id, name, argument fragments); then `finish_reason: "tool_calls"`.
    ToolCalls(Vec<(String, String, Vec<String>)>),
    /// An error status with OpenAI's error JSON.
    Error { status: u16, message: String },
    /// 401 with OpenAI's message, naming the key it was given in full (as a careless gateway
    /// would; OpenAI itself masks the middle).
    Unauthorized,
    /// Text, then an event that is not JSON, then a correct end.
    Malformed(Vec<String>),
    /// Text, then the body ends: no `finish_reason`, no `[DONE]`.
    Truncated(Vec<String>),
}

/// How the fake answers one request.
#[derive(Debug, Clone)]
pub struct Script {
    reply: Reply,
    events_per_write: usize,
    split_mid_line: bool,
    first_chunk_delay: Duration,
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Script {
    fn new(reply: Reply) -> Script {
        Script { reply, events_per_write: 1, split_mid_line: false, first_chunk_delay: Duration::ZERO }
    }

    pub fn text(chunks: &[&str]) -> Script {
        Script::new(Reply::Text(owned(chunks)))
    }

    /// Tool calls `(id, name, argument fragments)`, numbered 0, 1… in order.
    pub fn tool_calls(calls: &[(&str, &str, &[&str])]) -> Script {
        let calls = calls.iter().map(|(id, name, fragments)| (id.to_string(), name.to_string(), owned(fragments)));
        Script::new(Reply::ToolCalls(calls.collect()))
    }

    pub fn error(status: u16, message: &str) -> Script {
        Script::new(Reply::Error { status, message: message.into() })
    }

    pub fn unauthorized() -> Script {
        Script::new(Reply::Unauthorized)
    }

    pub fn malformed_after(chunks: &[&str]) -> Script {
        Script::new(Reply::Malformed(owned(chunks)))
    }

    pub fn truncated_after(chunks: &[&str]) -> Script {
        Script::new(Reply::Truncated(owned(chunks)))
    }

    /// Packs `n` events into each TCP write.
    pub fn events_per_write(mut self, n: usize) -> Script {
        self.events_per_write = n.max(1);
        self
    }

    /// Splits every write in two, in the middle of a line.
    pub fn split_mid_line(mut self) -> Script {
        self.split_mid_line = true;
        self
    }

    /// Waits this long after the headers before the first chunk.
    pub fn first_chunk_after(mut self, delay: Duration) -> Script {
        self.first_chunk_delay = delay;
        self
    }
}

#[derive(Default)]
struct FakeState {
    received: Mutex<Vec<Received>>,
    scripts: Mutex<VecDeque<Script>>,
}

pub struct FakeOpenAi {
    /// The base URL, as OpenAI's SDKs take it: `http://127.0.0.1:port/v1`.
    pub base: String,
    state: Arc<FakeState>,
}

impl FakeOpenAi {
    pub async fn start() -> FakeOpenAi {
        let state = Arc::new(FakeState::default());
        let router = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
        FakeOpenAi { base: format!("http://{addr}/v1"), state }
    }

    /// Queues the answer to a request: one script per request, in order. With none queued, the
    /// fake answers "Hello from the fake." in three chunks.
    pub fn then(&self, script: Script) {
        self.state.scripts.lock().unwrap().push_back(script);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

fn openai_error(status: u16, message: &str) -> Response {
    let (kind, code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", None),
        429 => ("requests", Some("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn answer(
    State(state): State<Arc<FakeState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    let model = json["model"].as_str().unwrap_or("unknown").to_owned();
    state.received.lock().unwrap().push(Received {
        peer,
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: json,
        at: std::time::Instant::now(),
    });
    if uri.path() == "/v1/embeddings" {
        return embeddings(&serde_json::from_slice(&body).unwrap_or(Value::Null));
    }
    if uri.path() != "/v1/chat/completions" {
        return openai_error(404, &format!("Invalid URL (POST {})", uri.path()));
    }
    let script = state.scripts.lock().unwrap().pop_front();
    let script = script.unwrap_or_else(|| Script::text(&["Hello", " from", " the fake."]));
    let events = match &script.reply {
        Reply::Error { status, message } => return openai_error(*status, message),
        Reply::Unauthorized => {
            let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let key = bearer.strip_prefix("Bearer ").unwrap_or(bearer);
            let message = format!(
                "Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."
            );
            return openai_error(401, &message);
        }
        reply => events(reply, &model),
    };
    let mut writes: Vec<Vec<u8>> =
        events.chunks(script.events_per_write).map(|group| group.concat().into_bytes()).collect();
    if script.split_mid_line {
        writes = writes
            .into_iter()
            .flat_map(|write| {
                let (a, b) = write.split_at(write.len() / 2);
                [a.to_vec(), b.to_vec()]
            })
            .collect();
    }
    let first_delay = script.first_chunk_delay;
    let body = futures_util::stream::iter(writes.into_iter().enumerate()).then(move |(i, write)| async move {
        tokio::time::sleep(if i == 0 { first_delay } else { WRITE_GAP }).await;
        Ok::<_, Infallible>(Bytes::from(write))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

/// `POST /v1/embeddings`: `{"model", "input"}` (a string) answered with one embedding, the same
/// for any text.
fn embeddings(body: &Value) -> Response {
    let (Some(model), Some(_input)) = (body["model"].as_str(), body["input"].as_str()) else {
        return openai_error(400, "'model' and 'input' are required");
    };
    let body = json!({"object": "list", "model": model,
        "data": [{"object": "embedding", "index": 0, "embedding": EMBEDDING}],
        "usage": {"prompt_tokens": 5, "total_tokens": 5}});
    Json(body).into_response()
}

/// What the fake embeds any text as.
pub const EMBEDDING: [f32; 4] = [0.25, -0.5, 0.125, 1.0];

/// The events of a streamed answer, each ending in its blank line.
fn events(reply: &Reply, model: &str) -> Vec<String> {
    let chunk = |delta: Value, finish_reason: Option<&str>| {
        let chunk = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        format!("data: {chunk}\n\n")
    };
    let texts = |chunks: &[String]| -> Vec<String> {
        chunks.iter().map(|text| chunk(json!({"content": text}), None)).collect()
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": "", "refusal": null}), None)];
    out.push(": keep-alive\n\n".into());
    let finish_reason = match reply {
        Reply::Text(chunks) => {
            out.extend(texts(chunks));
            "stop"
        }
        Reply::ToolCalls(calls) => {
            for (index, (id, name, fragments)) in calls.iter().enumerate() {
                out.push(chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                for fragment in fragments {
                    out.push(chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                        None,
                    ));
                }
            }
            "tool_calls"
        }
        Reply::Malformed(chunks) => {
            out.extend(texts(chunks));
            out.push("data: {\"id\":\"chatcmpl-fake\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\n\n".into());
            out.extend(texts(&["never read".to_owned()]));
            "stop"
        }
        Reply::Truncated(chunks) => {
            out.extend(texts(chunks));
            return out;
        }
        Reply::Error { .. } | Reply::Unauthorized => unreachable!("errors are not streamed"),
    };
    out.push(chunk(json!({}), Some(finish_reason)));
    let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}});
    out.push(format!("data: {usage}\n\n"));
    out.push("data: [DONE]\n\n".into());
    out
}
