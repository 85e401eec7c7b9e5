//! A bound media stream's conversation: the call's agent, resolved with the server's providers,
//! run by the conversation engine on the stream's audio. What the engine reports goes to the
//! calls service — each finished message into the transcript (with its `event_message`), the
//! hang-up the bot asks for, each answered turn's latencies, and `event_transcript` once the
//! conversation is over.

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::calls::News;
use std::sync::Arc;

use super::actions::CallRunner;
use crate::conversation::actions::HttpRunner;
use crate::conversation::agent::{resolve_with, Fallbacks};
use crate::conversation::audio::Encoding;
use crate::conversation::engine::Outlet;
use crate::conversation::engine::{self, Event, FromCall};
use crate::domain::call::Event as CallEvent;
use crate::domain::call::Provider;
use crate::store::calls::TurnRow;
use crate::AppState;

/// How many frames from the carrier may wait for the engine (20 ms each: about 5 s).
const FROM_CALL_QUEUE: usize = 256;

/// Starts the call's conversation on its stream, and returns where the stream's inbound side goes;
/// `None` when the call's agent cannot talk on this server (it says why in the log).
pub async fn start(
    state: &AppState,
    call_id: Uuid,
    encoding: Encoding,
    to_call: Outlet,
    carrier_echoes_marks: bool,
) -> Option<mpsc::Sender<FromCall>> {
    let row = match state.calls.find(call_id).await {
        Ok(Some(row)) => row,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "cannot read the call: it stays silent");
            return None;
        }
    };
    let docs = match state.store.read().await {
        Ok(mut handle) => crate::calls::agent::documents(&mut handle, &state.secrets, row.user_id, row.agent_id).await,
        Err(e) => Err(e.into()),
    };
    let docs = match docs {
        Ok(Some(docs)) => docs,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "cannot read the call's agent: the call stays silent");
            return None;
        }
    };
    // The call's context in the prompt (`${name}` placeholders, context endpoint, collect_fields).
    let docs = super::context::apply(state, &row, docs).await;
    // A sandbox call's simulated person tells the sandbox's stand-in speech-to-text what it says.
    let fallbacks = match state.sandbox_speech.as_ref().and_then(|calls| calls.get(&call_id.to_string())) {
        Some(spoken) => Fallbacks::sandbox(spoken),
        None => Fallbacks::none(),
    };
    let resolved = {
        let _call = tracing::info_span!("conversation", %call_id).entered();
        resolve_with(&docs, &state.conversation, &state.local_speech, encoding, carrier_echoes_marks, &fallbacks)
    };
    let (mut config, mut providers) = match resolved {
        Ok(resolved) => resolved,
        Err(missing) => {
            tracing::warn!(%call_id, %missing, "the call's agent cannot talk on this server: the call stays silent");
            return None;
        }
    };
    // Vonage presses keys through its DTMF API; Twilio (and the sandbox's) hear them as tones.
    config.keys_in_band = row.telephony_provider != Provider::Vonage;
    let http = HttpRunner {
        client: state.webhooks.client.clone(),
        allow_private: state.webhooks.allow_private,
        call_id: call_id.to_string(),
    };
    providers.actions = Arc::new(CallRunner { http, state: state.clone(), call_id });
    let (from_call, from_call_rx) = mpsc::channel(FROM_CALL_QUEUE);
    let (events, mut events_rx) = mpsc::channel(64);
    tokio::spawn(engine::run(config, providers, from_call_rx, to_call, events));
    let state = state.clone();
    tokio::spawn(async move {
        let mut turns = 0;
        while let Some(event) = events_rx.recv().await {
            match event {
                Event::Message(message) => {
                    if let Err(e) = state.calls.record_message(call_id, message.speaker.as_str(), &message.text).await {
                        tracing::warn!(%call_id, error = %e, "a message could not be kept");
                    }
                }
                Event::HangUp => match state.calls.apply(call_id, &News::api(CallEvent::EndRequested)).await {
                    Ok(Some(applied)) => state.run_soon(applied.claimed),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%call_id, error = %e, "the bot's hang-up could not be recorded"),
                },
                Event::Action { line, payload } => {
                    if let Err(e) = state.calls.record_action(call_id, &line, payload).await {
                        tracing::warn!(%call_id, error = %e, "an action could not be kept");
                    }
                }
                Event::Latency(latency) => {
                    turns += 1;
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                    let turn = TurnRow {
                        turn: turns,
                        at: crate::store::now(),
                        end_of_turn_ms: ms(latency.end_of_turn),
                        first_token_ms: latency.first_token.map(ms),
                        first_audio_ms: latency.first_audio.map(ms),
                        first_frame_ms: latency.first_frame.map(ms),
                    };
                    if let Err(e) = state.calls.record_turn(call_id, &turn).await {
                        tracing::warn!(%call_id, error = %e, "a turn's latency could not be kept");
                    }
                }
            }
        }
        if let Err(e) = state.calls.conversation_ended(call_id).await {
            tracing::warn!(%call_id, error = %e, "the transcript event could not be queued");
        }
    });
    tracing::info!(%call_id, "conversation started");
    Some(from_call)
}

/// Hands a frame to the engine without waiting: a full queue drops it (and counts it) rather than
/// stall the carrier's socket.
pub fn offer(conversation: &Option<mpsc::Sender<FromCall>>, message: FromCall) {
    if let Some(tx) = conversation {
        if tx.try_send(message).is_err() {
            metrics::counter!("vocode_media_frames_dropped_total").increment(1);
        }
    }
}
