//! Vonage's websocket: a first JSON text message (`websocket:connected`, with the NCCO's headers
//! flattened into it, which bind the stream to its call), then binary 16-bit linear PCM at 16 kHz
//! both ways, in messages of 640 bytes (20 ms); `websocket:dtmf` events; and, to Vonage,
//! `{"action":"clear"}` and `{"action":"notify"}` (answered with `websocket:notify` once the audio
//! before it has played: the equivalent of Twilio's marks).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::converse::offer;
use super::record::Recorder;
use super::{call_matches, conversation_for, refuse, token_ok, AudioFormat, Binding, ToCall};
use crate::conversation::engine::FromCall;
use crate::AppState;

/// The size of one audio message: 20 ms of 16-bit PCM at 16 kHz.
pub const FRAME_BYTES: usize = 640;

pub async fn stream(State(state): State<AppState>, Path(call_id): Path<Uuid>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| session(state, call_id, socket))
}

/// The messages to Vonage for one thing sent to the call: audio split into 640-byte frames (the
/// last one padded with silence, since Vonage takes whole frames only).
fn framed(message: ToCall) -> Vec<Message> {
    match message {
        ToCall::Audio(pcm) => pcm
            .chunks(FRAME_BYTES)
            .map(|chunk| {
                let mut frame = chunk.to_vec();
                frame.resize(FRAME_BYTES, 0);
                Message::Binary(frame.into())
            })
            .collect(),
        ToCall::Mark(name) => {
            vec![Message::Text(json!({"action": "notify", "payload": {"mark": name}}).to_string().into())]
        }
        ToCall::Clear => vec![Message::Text(json!({"action": "clear"}).to_string().into())],
    }
}

async fn session(state: AppState, call_id: Uuid, mut socket: WebSocket) {
    let streams = &state.telephony.streams;
    streams.update(call_id, |s| s.protocol = "vonage");
    let mut outgoing: Option<mpsc::Receiver<ToCall>> = None;
    let mut binding: Option<Binding> = None;
    let mut conversation = None;
    let mut recorder: Option<Recorder> = None;
    'session: loop {
        let next_out = async {
            match outgoing.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            received = socket.recv() => match received {
                Some(Ok(message)) => message,
                _ => break,
            },
            Some(out) = next_out => {
                if let ToCall::Audio(audio) = &out {
                    streams.update(call_id, |s| s.sent_bytes += audio.len() as u64);
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.said(audio);
                    }
                }
                for message in framed(out) {
                    if socket.send(message).await.is_err() {
                        break 'session;
                    }
                }
                continue;
            }
        };
        match message {
            Message::Text(text) => {
                let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
                    return refuse(socket, "not a Vonage websocket message").await;
                };
                match event["event"].as_str() {
                    Some("websocket:connected") => {
                        let token = token_ok(&state, call_id, event["call_id"].as_str(), event["token"].as_str());
                        if !token || !call_matches(&state, call_id, None).await {
                            return refuse(socket, "this stream is not the call's").await;
                        }
                        let (rx, bound) = streams.bind(call_id, AudioFormat::Linear16k);
                        (outgoing, binding) = (Some(rx), Some(bound));
                        tracing::info!(%call_id, "media stream started (vonage)");
                        recorder = Recorder::for_call(&state, call_id, AudioFormat::Linear16k).await;
                        // Vonage's `notify` echoes are not confirmed: the clock tells what was played.
                        conversation = conversation_for(&state, call_id, AudioFormat::Linear16k, false).await;
                    }
                    Some("websocket:dtmf") if outgoing.is_some() => {
                        let digit = event["digit"].as_str().or(event["dtmf"]["digit"].as_str());
                        if let Some(digit) = digit {
                            streams.update(call_id, |s| s.dtmf.push_str(digit));
                            offer(&conversation, FromCall::Dtmf(digit.to_owned()));
                        }
                    }
                    Some("websocket:notify") if outgoing.is_some() => {
                        if let Some(name) = event["payload"]["mark"].as_str() {
                            streams.update(call_id, |s| s.marks_played.push(name.to_owned()));
                            offer(&conversation, FromCall::Played(name.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            Message::Binary(audio) if outgoing.is_some() => {
                streams.update(call_id, |s| {
                    s.media_frames += 1;
                    s.media_bytes += audio.len() as u64;
                });
                if let Some(recorder) = recorder.as_mut() {
                    recorder.heard(&audio);
                }
                offer(&conversation, FromCall::Audio(audio.to_vec()));
            }
            Message::Binary(_) => return refuse(socket, "audio before websocket:connected").await,
            Message::Close(_) => break,
            _ => {}
        }
    }
    streams.finish(call_id, binding.as_ref(), &conversation);
    if let Some(recorder) = recorder {
        recorder.finish(state.clone(), call_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_to_vonage_goes_in_whole_640_byte_frames() {
        let frames = framed(ToCall::Audio(vec![1; FRAME_BYTES + 3]));
        assert_eq!(frames.len(), 2);
        let Message::Binary(last) = &frames[1] else { panic!("binary audio") };
        assert_eq!(last.len(), FRAME_BYTES);
        assert_eq!(&last[..3], &[1, 1, 1]);
        assert!(last[3..].iter().all(|b| *b == 0), "padded with silence");
        let Message::Text(clear) = &framed(ToCall::Clear)[0] else { panic!("text") };
        assert_eq!(serde_json::from_str::<Value>(clear.as_str()).unwrap(), json!({"action": "clear"}));
    }
}
