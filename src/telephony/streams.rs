//! The media-stream websockets that connect an answered call's audio to this server, in each
//! carrier's protocol: Twilio's JSON events (`connected`, `start`, `media` with base64 μ-law,
//! `mark`, `stop`), and Vonage's first JSON text frame followed by binary 16-bit linear PCM.
//!
//! A stream is bound to its call by the token this server gave the carrier for it (in the TwiML's
//! `<Parameter>` or the NCCO's headers). The conversation engine that will speak on the stream
//! is not part of this server yet: calls connect and stay silent.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use uuid::Uuid;

use crate::store::calls;
use crate::AppState;

/// What a call's media stream has carried so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub protocol: &'static str,
    /// The carrier proved the stream is the call's.
    pub bound: bool,
    pub media_frames: u64,
    pub media_bytes: u64,
    pub closed: bool,
}

/// The streams of this process, by call. Finished streams are forgotten past a bound.
#[derive(Debug, Default)]
pub struct Streams {
    inner: Mutex<HashMap<Uuid, StreamStats>>,
}

const REMEMBERED: usize = 10_000;

impl Streams {
    fn update(&self, call_id: Uuid, f: impl FnOnce(&mut StreamStats)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED {
            map.retain(|_, s| !s.closed);
        }
        f(map.entry(call_id).or_default());
    }

    pub fn get(&self, call_id: Uuid) -> Option<StreamStats> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id).cloned()
    }
}

const POLICY_VIOLATION: u16 = 1008;

async fn refuse(mut socket: WebSocket, reason: &'static str) {
    tracing::warn!(reason, "refused a media stream");
    let _ = socket.send(Message::Close(Some(CloseFrame { code: POLICY_VIOLATION, reason: reason.into() }))).await;
}

pub async fn twilio_stream(State(state): State<AppState>, Path(call_id): Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| twilio_session(state, call_id, socket))
}

async fn twilio_session(state: AppState, call_id: Uuid, mut socket: WebSocket) {
    let streams = &state.telephony.streams;
    streams.update(call_id, |s| s.protocol = "twilio");
    let mut bound = false;
    while let Some(Ok(message)) = socket.recv().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
            return refuse(socket, "not a Twilio media-stream message").await;
        };
        match event["event"].as_str() {
            Some("connected") => {}
            Some("start") => {
                let start = &event["start"];
                let params = &start["customParameters"];
                let token_ok = params["call_id"].as_str() == Some(call_id.to_string().as_str())
                    && params["token"].as_str().is_some_and(|t| state.telephony.check_stream_token(call_id, t));
                if !token_ok || !call_matches(&state, call_id, start["callSid"].as_str()).await {
                    return refuse(socket, "this stream is not the call's").await;
                }
                bound = true;
                streams.update(call_id, |s| s.bound = true);
                tracing::info!(%call_id, "media stream started (twilio)");
            }
            Some("media") if bound => {
                let bytes = event["media"]["payload"]
                    .as_str()
                    .and_then(|p| STANDARD.decode(p).ok())
                    .map(|b| b.len())
                    .unwrap_or(0);
                streams.update(call_id, |s| {
                    s.media_frames += 1;
                    s.media_bytes += bytes as u64;
                });
            }
            Some("media") => return refuse(socket, "media before start").await,
            Some("stop") => break,
            Some("mark" | "dtmf") => {}
            _ => {}
        }
    }
    streams.update(call_id, |s| s.closed = true);
}

/// Whether the call exists and (when the carrier names it) the carrier's id for it is the call's.
async fn call_matches(state: &AppState, call_id: Uuid, telephony_id: Option<&str>) -> bool {
    let Ok(mut handle) = state.store.read().await else {
        return false;
    };
    match calls::by_id(handle.conn(), call_id).await {
        Ok(Some(row)) => match (&row.telephony_id, telephony_id) {
            (Some(known), Some(given)) => known == given,
            _ => true,
        },
        _ => false,
    }
}

pub async fn vonage_stream(State(state): State<AppState>, Path(call_id): Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| vonage_session(state, call_id, socket))
}

async fn vonage_session(state: AppState, call_id: Uuid, mut socket: WebSocket) {
    let streams = &state.telephony.streams;
    streams.update(call_id, |s| s.protocol = "vonage");
    let mut bound = false;
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(text) => {
                let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                    return refuse(socket, "not a Vonage websocket message").await;
                };
                match event["event"].as_str() {
                    Some("websocket:connected") => {
                        // The NCCO's headers arrive flattened into this first message.
                        let token_ok = event["call_id"].as_str() == Some(call_id.to_string().as_str())
                            && event["token"].as_str().is_some_and(|t| state.telephony.check_stream_token(call_id, t));
                        if !token_ok || !call_matches(&state, call_id, None).await {
                            return refuse(socket, "this stream is not the call's").await;
                        }
                        bound = true;
                        streams.update(call_id, |s| s.bound = true);
                        tracing::info!(%call_id, "media stream started (vonage)");
                    }
                    Some("websocket:dtmf") => {}
                    _ => {}
                }
            }
            Message::Binary(audio) if bound => {
                streams.update(call_id, |s| {
                    s.media_frames += 1;
                    s.media_bytes += audio.len() as u64;
                });
            }
            Message::Binary(_) => return refuse(socket, "audio before websocket:connected").await,
            Message::Close(_) => break,
            _ => {}
        }
    }
    streams.update(call_id, |s| s.closed = true);
}
