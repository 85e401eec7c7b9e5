//! The conversation's start and end: the engine run on the call's audio once [`super::talk`] has
//! what the call needs and the call's conversation is taken up (fresh, or from what another process
//! kept: the engine goes on from it), and what the engine reports carried to the calls service —
//! each finished message into the transcript (with its `event_message` and the conversation as it
//! stands, fenced: once another process has taken the conversation over, nothing more is written
//! here and the engine stops), the hang-up the bot asks for, each answered turn's latencies, each
//! action's lines, and the conversation's end: over (the call's audio ended; `event_transcript`
//! goes out), or left for another process (a move, a stream that broke). This is the only place
//! the engine is started.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::Control;
use crate::calls::sessions::{Claim, Fence, Stopped};
use crate::calls::News;
use crate::conversation::engine::{self, Durable, EngineConfig, Event, FromCall, Outlet, Providers};
use crate::domain::call::Event as CallEvent;
use crate::store::calls::{CallRow, TurnRow};
use crate::telephony::media::Line;
use crate::AppState;

/// How many frames from the carrier may wait for the engine (20 ms each: about 5 s).
pub(super) const FROM_CALL_QUEUE: usize = 256;

/// How long a write the conversation reports is tried again while the database cannot be reached.
const KEEP_TRYING: std::time::Duration = std::time::Duration::from_secs(120);
/// The first wait before trying a write again, and the longest (it doubles in between).
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts the call's conversation beside its stream: what it needs to talk is loaded in a task of
/// its own while the stream's frames queue on `from_call`; then the call's conversation is taken
/// up (fresh, or from what another process kept) and the engine runs on them. A call whose agent
/// cannot talk on this server stays silent (the log says why).
pub(super) fn start_beside(
    state: AppState,
    row: CallRow,
    line: Line,
    from_call: mpsc::Receiver<FromCall>,
    to_call: Outlet,
    control: Arc<Control>,
) {
    tokio::spawn(async move {
        let call_id = row.id;
        if let Some((config, providers)) = super::talk::prepare(&state, &row, line).await {
            match state.calls.claim_conversation(call_id, state.replicas.id()).await {
                Ok(Claim::Over) => {
                    tracing::info!(%call_id, "the call's conversation is over: its new stream is closed");
                    state.sessions.lose(call_id, &control);
                }
                Ok(Claim::Fresh(fence)) => {
                    let talk = Talk { state: &state, call_id, fence, control: &control };
                    talk.run(None, config, providers, from_call, to_call).await;
                }
                Ok(Claim::Resume(fence, kept)) => {
                    let kept = serde_json::from_value::<Durable>(kept).unwrap_or_else(|e| {
                        tracing::warn!(%call_id, error = %e, "the kept conversation cannot be read: it starts over");
                        Durable::default()
                    });
                    tracing::info!(%call_id, generation = fence.generation, "taking the call's conversation over");
                    metrics::counter!("vocode_conversations_taken_over_total").increment(1);
                    let talk = Talk { state: &state, call_id, fence, control: &control };
                    talk.run(Some(kept), config, providers, from_call, to_call).await;
                }
                Err(e) => {
                    // Closed rather than kept silent: the carrier asks again (the resume path), and
                    // the next stream tries again.
                    tracing::warn!(%call_id, error = %e, "the call's conversation cannot be taken up: its stream is closed");
                    state.sessions.lose(call_id, &control);
                }
            }
        }
        control.finish();
    });
}

/// A conversation this process holds.
struct Talk<'a> {
    state: &'a AppState,
    call_id: Uuid,
    fence: Fence,
    control: &'a Control,
}

impl Talk<'_> {
    /// Runs the conversation, and carries what it reports to the calls service until it ends —
    /// or until another process takes it over (then nothing more is written here).
    async fn run(
        &self,
        kept: Option<Durable>,
        config: EngineConfig,
        providers: Providers,
        from_call_rx: mpsc::Receiver<FromCall>,
        to_call: Outlet,
    ) {
        let (state, call_id) = (self.state, self.call_id);
        self.control.generation.store(self.fence.generation, Ordering::SeqCst);
        let (events, mut events_rx) = mpsc::channel(64);
        let engine = tokio::spawn(engine::run_from(kept, config, providers, from_call_rx, to_call, events));
        tracing::info!(%call_id, generation = self.fence.generation, "conversation started");
        let mut turns = 0;
        loop {
            if self.control.lost.load(Ordering::SeqCst) {
                break;
            }
            let event = tokio::select! {
                event = events_rx.recv() => event,
                _ = self.control.lost_now.notified() => continue,
            };
            let Some(event) = event else { break };
            let held = match event {
                Event::Message(message, kept) => {
                    let (text, kept) = (&message.text, json(&kept));
                    let speaker = message.speaker.as_str();
                    let recorded = self
                        .durably("a message", || state.calls.record_message(call_id, &self.fence, speaker, text, &kept))
                        .await;
                    self.kept(recorded, "a message")
                }
                Event::Action { line, payload, state: kept } => {
                    let kept = json(&kept);
                    let recorded = self
                        .durably("an action", || {
                            state.calls.record_action(call_id, &self.fence, &line, payload.clone(), &kept)
                        })
                        .await;
                    self.kept(recorded, "an action")
                }
                Event::HangUp => {
                    match state.calls.apply(call_id, &News::api(CallEvent::EndRequested)).await {
                        Ok(Some(applied)) => state.run_soon(applied.claimed),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(%call_id, error = %e, "the bot's hang-up could not be recorded"),
                    }
                    true
                }
                Event::Latency(latency) => {
                    turns += 1;
                    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                    let turn = TurnRow {
                        turn: turns,
                        at: crate::store::now(),
                        end_of_turn_ms: ms(latency.end_of_turn),
                        recognition_ms: latency.recognized.map(ms),
                        first_token_ms: latency.first_token.map(ms),
                        first_audio_ms: latency.first_audio.map(ms),
                        first_frame_ms: latency.first_frame.map(ms),
                    };
                    if let Err(e) = state.calls.record_turn(call_id, &turn).await {
                        tracing::warn!(%call_id, error = %e, "a turn's latency could not be kept");
                    }
                    true
                }
            };
            if !held {
                tracing::info!(%call_id, "another process took the call's conversation over: letting go");
                state.sessions.lose(call_id, self.control);
            }
        }
        if self.control.lost.load(Ordering::SeqCst) {
            engine.abort();
            metrics::counter!("vocode_conversations_stopped_total", "how" => "taken_over").increment(1);
            return;
        }
        let how = if self.control.moving.load(Ordering::SeqCst) {
            ("moved", Stopped::Left)
        } else if self.control.dropped.load(Ordering::SeqCst) {
            // The stream broke: the carrier asks again, and whoever binds the new stream goes on.
            ("stream_broke", Stopped::Left)
        } else {
            ("ended", Stopped::Over)
        };
        tracing::info!(%call_id, how = how.0, "conversation stopped");
        metrics::counter!("vocode_conversations_stopped_total", "how" => how.0).increment(1);
        let stopped =
            self.durably("the conversation's end", || state.calls.conversation_stopped(call_id, &self.fence, how.1));
        if let Err(e) = stopped.await {
            tracing::warn!(%call_id, error = %e, "the conversation's end could not be recorded");
        }
    }

    /// Runs a write the conversation reports; while the database cannot be reached (an outage, a
    /// failover, a restart), tries it again, for up to [`KEEP_TRYING`]: the conversation goes on
    /// meanwhile (its reports wait in their queue), and its words are kept, in order, once the
    /// database is back. Stops trying once the conversation is lost to another process.
    async fn durably<T, F>(&self, what: &str, write: impl Fn() -> F) -> Result<T, crate::calls::CallsError>
    where
        F: std::future::Future<Output = Result<T, crate::calls::CallsError>>,
    {
        let (started, mut wait, mut retried) = (tokio::time::Instant::now(), RETRY_FIRST, false);
        loop {
            let error = match write().await {
                Ok(done) => {
                    if retried {
                        tracing::info!(call_id = %self.call_id, after = ?started.elapsed(), "{what} was kept once the database answered again");
                    }
                    return Ok(done);
                }
                Err(e) => e,
            };
            if started.elapsed() >= KEEP_TRYING || self.control.lost.load(Ordering::SeqCst) {
                return Err(error);
            }
            if !retried {
                retried = true;
                tracing::warn!(call_id = %self.call_id, error = %error, "{what} cannot be kept now: trying again while the call goes on");
                metrics::counter!("vocode_conversation_writes_retried_total").increment(1);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MOST);
        }
    }

    /// Whether a write went through while this process still held the conversation; a write that
    /// failed on the database for all of [`KEEP_TRYING`] is logged and the conversation goes on.
    fn kept(&self, recorded: Result<bool, crate::calls::CallsError>, what: &str) -> bool {
        match recorded {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(call_id = %self.call_id, error = %e, "{what} could not be kept");
                true
            }
        }
    }
}

fn json(kept: &Durable) -> serde_json::Value {
    serde_json::to_value(kept).unwrap_or(serde_json::Value::Null)
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
