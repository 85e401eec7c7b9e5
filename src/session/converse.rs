//! The conversation's start and end: the engine run on the call's audio once [`super::talk`] has
//! what the call needs, and what the engine reports carried to the calls service — each finished
//! message into the transcript (with its `event_message`), the hang-up the bot asks for, each
//! answered turn's latencies, each action's lines, and `event_transcript` once the conversation
//! is over. This is the only place the engine is started.

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::calls::News;
use crate::conversation::engine::{self, EngineConfig, Event, FromCall, Outlet, Providers};
use crate::domain::call::Event as CallEvent;
use crate::store::calls::{CallRow, TurnRow};
use crate::telephony::media::Line;
use crate::AppState;

/// How many frames from the carrier may wait for the engine (20 ms each: about 5 s).
pub(super) const FROM_CALL_QUEUE: usize = 256;

/// Starts the call's conversation beside its stream: what it needs to talk is loaded in a task of
/// its own while the stream's frames queue on `from_call`; then the engine runs on them. A call
/// whose agent cannot talk on this server stays silent (the log says why).
pub(super) fn start_beside(
    state: AppState,
    row: CallRow,
    line: Line,
    from_call: mpsc::Receiver<FromCall>,
    to_call: Outlet,
) {
    tokio::spawn(async move {
        if let Some((config, providers)) = super::talk::prepare(&state, &row, line).await {
            run(state, row.id, config, providers, from_call, to_call).await;
        }
    });
}

/// Runs the conversation, and carries what it reports to the calls service until it ends.
async fn run(
    state: AppState,
    call_id: Uuid,
    config: EngineConfig,
    providers: Providers,
    from_call_rx: mpsc::Receiver<FromCall>,
    to_call: Outlet,
) {
    let (events, mut events_rx) = mpsc::channel(64);
    tokio::spawn(engine::run(config, providers, from_call_rx, to_call, events));
    tracing::info!(%call_id, "conversation started");
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
}

/// Hands a frame to the engine without waiting: a full queue drops it (and counts it) rather than
/// stall the carrier's socket.
pub(super) fn offer(conversation: &Option<mpsc::Sender<FromCall>>, message: FromCall) {
    // A conversation that never started (its agent cannot talk) hears nothing: no drop to count.
    if let Some(tx) = conversation.as_ref().filter(|tx| !tx.is_closed()) {
        if tx.try_send(message).is_err() {
            metrics::counter!("vocode_media_frames_dropped_total").increment(1);
        }
    }
}
