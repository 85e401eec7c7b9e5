//! A fake Deepgram: a real websocket server on a random port that speaks Deepgram's live
//! protocol (`/v1/listen`). It checks the `Authorization: Token …` header as Deepgram does
//! (refusing the handshake with Deepgram's error body), records each connection's query, header,
//! audio and control messages (`KeepAlive`, `CloseStream`, `Finalize`, and their order), answers
//! `Finalize` with what it was still hearing (`from_finalize: true`), `CloseStream` by flushing,
//! sending `Metadata` and hanging up — and nothing after `CloseStream`, as Deepgram takes nothing
//! after it — and sends what a test scripts: `Results`, `SpeechStarted`, `UtteranceEnd`, a
//! malformed message, a dropped or closed connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// What one connection carried.
#[derive(Debug, Clone, Default)]
pub struct DeepgramConnection {
    /// The query, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The query as it came, still encoded.
    pub raw_query: String,
    pub authorization: Option<String>,
    /// Every binary frame's bytes, in order.
    pub audio: Vec<u8>,
    pub keep_alives: usize,
    pub close_streams: usize,
    pub finalizes: usize,
    /// The control messages' types (`KeepAlive` aside), in the order they came.
    pub controls: Vec<String>,
    /// Text messages that were none of the above.
    pub other_texts: Vec<String>,
    /// Until either side ends it.
    pub open: bool,
}

impl DeepgramConnection {
    /// The values of a query parameter, in order.
    pub fn param(&self, name: &str) -> Vec<String> {
        self.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }
}

enum Command {
    Send(Message),
    /// Drop the TCP connection without a closing handshake.
    Drop,
    /// Close with a code and reason, as Deepgram does on `NET-0001` (1011).
    Close(u16, String),
}

#[derive(Default)]
struct DeepgramState {
    key: String,
    connections: Mutex<Vec<DeepgramConnection>>,
    commands: Mutex<Vec<mpsc::UnboundedSender<Command>>>,
    /// New handshakes are refused with this status and body while set.
    refusal: Mutex<Option<(u16, Value)>>,
    refused: Mutex<usize>,
    /// What is sent back on `CloseStream`, before the `Metadata`.
    flush: Mutex<Vec<Value>>,
    /// What is sent back on `Finalize`: the results of what it was still hearing.
    finalized: Mutex<Vec<Value>>,
}

pub struct FakeDeepgram {
    /// `ws://127.0.0.1:…/v1/listen`
    pub url: String,
    /// The key it accepts.
    pub key: String,
    state: Arc<DeepgramState>,
}

/// A `Results` message as Deepgram sends it.
pub fn results(transcript: &str, is_final: bool, speech_final: bool) -> Value {
    let words: Vec<Value> = transcript
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            let word = w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            json!({"word": word, "start": i as f64 * 0.4, "end": i as f64 * 0.4 + 0.3, "confidence": 0.98, "punctuated_word": w})
        })
        .collect();
    json!({
        "type": "Results", "channel_index": [0, 1], "duration": 1.2, "start": 0.0,
        "is_final": is_final, "speech_final": speech_final, "from_finalize": false,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.98, "words": words}]},
        "metadata": {"request_id": uuid::Uuid::new_v4(), "model_info": {"name": "general-nova-3", "version": "2025-01-01", "arch": "nova-3"}, "model_uuid": uuid::Uuid::new_v4()}
    })
}

pub fn speech_started() -> Value {
    json!({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.52})
}

pub fn utterance_end() -> Value {
    json!({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.31})
}

fn metadata() -> Value {
    json!({"type": "Metadata", "transaction_key": "deprecated", "request_id": uuid::Uuid::new_v4(),
           "sha256": "0".repeat(64), "created": "2026-01-01T12:00:00.000Z", "duration": 2.5, "channels": 1})
}

async fn listen(
    State(state): State<Arc<DeepgramState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let refusal = state.refusal.lock().unwrap().clone();
    if let Some((status, body)) = refusal {
        *state.refused.lock().unwrap() += 1;
        return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    }
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default().to_owned());
    if authorization.as_deref() != Some(format!("Token {}", state.key).as_str()) {
        *state.refused.lock().unwrap() += 1;
        let body =
            json!({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": uuid::Uuid::new_v4()});
        return (StatusCode::UNAUTHORIZED, [("dg-error", "Invalid credentials.")], Json(body)).into_response();
    }
    let raw_query = query.unwrap_or_default();
    let connection = DeepgramConnection {
        query: form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect(),
        raw_query,
        authorization,
        open: true,
        ..Default::default()
    };
    ws.on_upgrade(move |socket| serve(state, connection, socket))
}

async fn serve(state: Arc<DeepgramState>, connection: DeepgramConnection, mut socket: WebSocket) {
    let (commands_in, mut commands) = mpsc::unbounded_channel();
    let index = {
        let mut connections = state.connections.lock().unwrap();
        connections.push(connection);
        state.commands.lock().unwrap().push(commands_in);
        connections.len() - 1
    };
    let record =
        |change: &mut dyn FnMut(&mut DeepgramConnection)| change(&mut state.connections.lock().unwrap()[index]);
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(bytes))) => record(&mut |c| c.audio.extend_from_slice(&bytes)),
                Some(Ok(Message::Text(text))) => {
                    let kind = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
                    match kind.as_deref() {
                        Some("KeepAlive") => record(&mut |c| c.keep_alives += 1),
                        Some("Finalize") => {
                            record(&mut |c| {
                                c.finalizes += 1;
                                c.controls.push("Finalize".into());
                            });
                            let finalized = std::mem::take(&mut *state.finalized.lock().unwrap());
                            for mut message in finalized {
                                message["from_finalize"] = json!(true);
                                let _ = socket.send(Message::Text(message.to_string().into())).await;
                            }
                        }
                        Some("CloseStream") => {
                            record(&mut |c| {
                                c.close_streams += 1;
                                c.controls.push("CloseStream".into());
                            });
                            let flush = state.flush.lock().unwrap().clone();
                            for message in flush.into_iter().chain([metadata()]) {
                                let _ = socket.send(Message::Text(message.to_string().into())).await;
                            }
                            let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
                            break;
                        }
                        _ => record(&mut |c| c.other_texts.push(text.to_string())),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            command = commands.recv() => match command {
                Some(Command::Send(message)) => {
                    if socket.send(message).await.is_err() {
                        break;
                    }
                }
                Some(Command::Close(code, reason)) => {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
                Some(Command::Drop) | None => break,
            },
        }
    }
    record(&mut |c| c.open = false);
}

impl FakeDeepgram {
    pub async fn start() -> FakeDeepgram {
        let key = format!("dg-{}", uuid::Uuid::new_v4().simple());
        let state = Arc::new(DeepgramState { key: key.clone(), ..Default::default() });
        let router = Router::new().route("/v1/listen", get(listen)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/listen", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeDeepgram { url, key, state }
    }

    /// Every connection so far, in the order they were opened.
    pub fn connections(&self) -> Vec<DeepgramConnection> {
        self.state.connections.lock().unwrap().clone()
    }

    /// Waits until `n` connections have been opened; returns them.
    pub async fn wait_for_connections(&self, n: usize) -> Vec<DeepgramConnection> {
        super::eventually(Duration::from_secs(10), || async {
            let connections = self.connections();
            (connections.len() >= n).then_some(connections)
        })
        .await
    }

    /// How many handshakes were refused.
    pub fn refused(&self) -> usize {
        *self.state.refused.lock().unwrap()
    }

    /// Refuses new handshakes with `status` and Deepgram's error body (or accepts them again).
    pub fn refuse(&self, status: Option<u16>) {
        *self.state.refusal.lock().unwrap() = status.map(|s| {
            (s, json!({"err_code": "SERVICE_UNAVAILABLE", "err_msg": "Deepgram is unavailable.", "request_id": uuid::Uuid::new_v4()}))
        });
    }

    /// What is sent back on `CloseStream`, before the `Metadata`.
    pub fn on_close_stream(&self, messages: Vec<Value>) {
        *self.state.flush.lock().unwrap() = messages;
    }

    /// What is sent back on the next `Finalize`: the results of what it was still hearing.
    pub fn on_finalize(&self, messages: Vec<Value>) {
        *self.state.finalized.lock().unwrap() = messages;
    }

    /// The command channel of the newest open connection, once there is one.
    async fn newest(&self) -> (usize, mpsc::UnboundedSender<Command>) {
        super::eventually(Duration::from_secs(10), || async {
            let connections = self.state.connections.lock().unwrap();
            let index = connections.iter().rposition(|c| c.open)?;
            Some((index, self.state.commands.lock().unwrap()[index].clone()))
        })
        .await
    }

    /// Sends a JSON message on the newest open connection.
    pub async fn send(&self, message: Value) {
        self.send_raw(Message::Text(message.to_string().into())).await;
    }

    /// Sends a JSON message on the `index`th connection opened (0 for the first), once it is open.
    pub async fn send_on(&self, index: usize, message: Value) {
        let commands = super::eventually(Duration::from_secs(10), || async {
            let open = self.state.connections.lock().unwrap().get(index).is_some_and(|c| c.open);
            open.then(|| self.state.commands.lock().unwrap()[index].clone())
        })
        .await;
        let _ = commands.send(Command::Send(Message::Text(message.to_string().into())));
    }

    /// Sends a websocket message as it is (a malformed text, a binary frame).
    pub async fn send_raw(&self, message: Message) {
        let _ = self.newest().await.1.send(Command::Send(message));
    }

    /// Drops the newest open connection without a closing handshake.
    pub async fn drop_connection(&self) {
        self.end_newest(Command::Drop).await;
    }

    /// Closes the newest open connection with a code, as Deepgram does.
    pub async fn close_connection(&self, code: u16, reason: &str) {
        self.end_newest(Command::Close(code, reason.to_owned())).await;
    }

    async fn end_newest(&self, command: Command) {
        let (index, commands) = self.newest().await;
        // Not open from now on, so the next command waits for a new connection.
        self.state.connections.lock().unwrap()[index].open = false;
        let _ = commands.send(command);
    }
}
