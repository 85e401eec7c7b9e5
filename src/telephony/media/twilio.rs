//! Twilio Media Streams: JSON text messages — `connected`, `start` (with the custom parameters
//! that bind the stream to its call), `media` with base64 μ-law, `dtmf`, `mark`, `stop` — and, to
//! Twilio, `media`, `mark` and `clear`.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::converse::offer;
use super::record::Recorder;
use super::{call_matches, conversation_for, refuse, token_ok, AudioFormat, Binding, ToCall};
use crate::conversation::engine::FromCall;
use crate::AppState;

pub async fn stream(State(state): State<AppState>, Path(call_id): Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| session(state, call_id, socket))
}

/// A message to Twilio on stream `stream_sid`.
fn framed(stream_sid: &str, message: ToCall) -> Value {
    match message {
        ToCall::Audio(mulaw) => {
            json!({"event": "media", "streamSid": stream_sid, "media": {"payload": STANDARD.encode(mulaw)}})
        }
        ToCall::Mark(name) => json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}),
        ToCall::Clear => json!({"event": "clear", "streamSid": stream_sid}),
    }
}

async fn session(state: AppState, call_id: Uuid, mut socket: WebSocket) {
    let streams = &state.telephony.streams;
    streams.update(call_id, |s| s.protocol = "twilio");
    // Until `start` binds the stream, nothing can be sent to it.
    let mut bound: Option<(String, mpsc::Receiver<ToCall>)> = None;
    let mut binding: Option<Binding> = None;
    // The bot's leg of a warm transfer's conference, which takes over the call's conversation.
    let mut bot_leg = false;
    let mut conversation = None;
    let mut recorder: Option<Recorder> = None;
    loop {
        let outgoing = async {
            match bound.as_mut() {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            received = socket.recv() => match received {
                Some(Ok(message)) => message,
                _ => break,
            },
            Some(out) = outgoing => {
                let sid = bound.as_ref().map(|(sid, _)| sid.clone()).unwrap_or_default();
                if let ToCall::Audio(audio) = &out {
                    streams.update(call_id, |s| s.sent_bytes += audio.len() as u64);
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.said(audio);
                    }
                }
                if socket.send(Message::Text(framed(&sid, out).to_string().into())).await.is_err() {
                    break;
                }
                continue;
            }
        };
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
                let token = token_ok(&state, call_id, params["call_id"].as_str(), params["token"].as_str());
                let call_sid = start["callSid"].as_str();
                let conferences = &state.telephony.conferences;
                bot_leg = conferences.is_bot_leg(call_id, call_sid);
                if !token || !(bot_leg || call_matches(&state, call_id, call_sid).await) {
                    return refuse(socket, "this stream is not the call's").await;
                }
                let sid = start["streamSid"].as_str().or(event["streamSid"].as_str()).unwrap_or_default().to_owned();
                if bot_leg {
                    let (rx, standby) = streams.bind_standby(call_id, AudioFormat::Mulaw8k);
                    (bound, binding) = (Some((sid, rx)), Some(standby));
                    tracing::info!(%call_id, "the bot's conference leg connected");
                    conversation = streams.running(call_id);
                    conferences.bot_bound(call_id);
                } else {
                    let (rx, current) = streams.bind(call_id, AudioFormat::Mulaw8k);
                    (bound, binding) = (Some((sid, rx)), Some(current));
                    tracing::info!(%call_id, "media stream started (twilio)");
                    recorder = Recorder::for_call(&state, call_id, AudioFormat::Mulaw8k).await;
                    conversation = conversation_for(&state, call_id, AudioFormat::Mulaw8k, true).await;
                }
            }
            Some("media") if bound.is_some() => {
                let audio =
                    event["media"]["payload"].as_str().and_then(|p| STANDARD.decode(p).ok()).unwrap_or_default();
                streams.update(call_id, |s| {
                    s.media_frames += 1;
                    s.media_bytes += audio.len() as u64;
                });
                if !audio.is_empty() && binding.as_ref().is_some_and(Binding::is_current) {
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.heard(&audio);
                    }
                    offer(&conversation, FromCall::Audio(audio));
                }
            }
            Some("media") => return refuse(socket, "media before start").await,
            Some("mark") if bound.is_some() => {
                if let Some(name) =
                    event["mark"]["name"].as_str().filter(|_| binding.as_ref().is_some_and(Binding::is_current))
                {
                    streams.update(call_id, |s| s.marks_played.push(name.to_owned()));
                    offer(&conversation, FromCall::Played(name.to_owned()));
                }
            }
            Some("dtmf") if bound.is_some() => {
                if let Some(digit) = event["dtmf"]["digit"].as_str() {
                    streams.update(call_id, |s| s.dtmf.push_str(digit));
                    offer(&conversation, FromCall::Dtmf(digit.to_owned()));
                }
            }
            Some("stop") => break,
            _ => {}
        }
    }
    streams.finish(call_id, binding.as_ref(), &conversation);
    if bot_leg {
        state.telephony.conferences.bot_left(call_id);
    }
    if let Some(recorder) = recorder {
        recorder.finish(state.clone(), call_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_to_twilio_are_framed_as_its_protocol_says() {
        let media = framed("MZ1", ToCall::Audio(vec![0xff, 0x7f]));
        assert_eq!(media, json!({"event": "media", "streamSid": "MZ1", "media": {"payload": "/38="}}));
        let mark = framed("MZ1", ToCall::Mark("chunk-1".into()));
        assert_eq!(mark, json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "chunk-1"}}));
        assert_eq!(framed("MZ1", ToCall::Clear), json!({"event": "clear", "streamSid": "MZ1"}));
    }
}
