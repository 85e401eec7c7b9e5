//! A carrier's stream bound to its call, and the stream's end of the call.
//!
//! Binding checks that the stream is the call's: the token this server gave the carrier for the
//! call, and (when the carrier names it) the carrier's id of the call — or, for a warm
//! transfer's conference leg, that the steering number's call is the one bringing the bot back.
//! The call's row is read once, here; everything the stream does afterwards works without the
//! database. A stream whose call has no conversation running here starts one beside the socket
//! loop ([`super::converse`] takes the call's conversation up — fresh, or from what another
//! process kept — while the carrier's first frames queue for it); a later stream on this process
//! (a reconnect, the conference leg once promoted) takes over the running one. A stopping process
//! refuses streams for conversations it does not run, while another can take them.

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use uuid::Uuid;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::record::Recorder;
use super::{converse, Binding, Control, Conversation};
use crate::conversation::engine::FromCall;
use crate::store::calls::CallRow;
use crate::telephony::media::{Bound, Hello, Line, StreamEnd};
use crate::AppState;

/// Binds a stream that said whose it is, or says why not.
pub(super) async fn bind(state: &AppState, call_id: Uuid, line: Line, hello: Hello) -> Result<Bound, &'static str> {
    let not_the_calls = "this stream is not the call's";
    let named = hello.call_id.as_deref() == Some(call_id.to_string().as_str());
    let token = hello.token.as_deref().is_some_and(|t| state.telephony.check_stream_token(call_id, t));
    if !named || !token {
        return Err(not_the_calls);
    }
    let carrier_call_id = hello.carrier_call_id.as_deref();
    let row = match state.calls.find(call_id).await {
        Ok(Some(row)) if matches_carrier(&row, carrier_call_id) => row,
        // Another call of the carrier's: the bot's conference leg of a warm transfer, or not the call's.
        Ok(Some(row)) if state.telephony.is_bot_leg(call_id, carrier_call_id).await => {
            return bind_bot_leg(state, row, line).await;
        }
        Ok(_) => return Err(not_the_calls),
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "cannot read the call: its stream is refused");
            return Err("the call cannot be read now");
        }
    };
    if row.state.is_final() {
        return Err("the call has ended");
    }
    let sessions = &state.sessions;
    if sessions.running(call_id).is_none() && super::moving::elsewhere(state).await {
        // Draining: a conversation not running here starts on another replica (the carrier asks
        // again, and the proxy no longer sends it here).
        return Err("this server is stopping: the call goes on on another server");
    }
    let (to_call, binding, closing) = sessions.bind(call_id, line.encoding, false);
    let recorder = Recorder::for_call(state, &row, line.encoding);
    let (conversation, control) = conversation_here(state, row, line);
    let end = CallStream { state: state.clone(), call_id, binding, conversation, control, recorder, bot_leg: false };
    Ok(Bound { to_call, end: Box::new(end), closing })
}

/// A warm transfer's conference leg. On the process running the call's conversation it waits on
/// standby until the person's call has moved into the conference; anywhere else it takes the
/// conversation over (the process that ran it lets go), and the transfer is carried on here.
async fn bind_bot_leg(state: &AppState, row: CallRow, line: Line) -> Result<Bound, &'static str> {
    let (call_id, sessions) = (row.id, &state.sessions);
    if let Some(running) = sessions.running(call_id) {
        let (to_call, binding, closing) = sessions.bind(call_id, line.encoding, true);
        tracing::info!(%call_id, "the bot's conference leg connected");
        state.telephony.bot_bound(call_id, state.replicas.id()).await;
        let (conversation, control) = (Some(running.from_call), Some(running.control));
        let end =
            CallStream { state: state.clone(), call_id, binding, conversation, control, recorder: None, bot_leg: true };
        return Ok(Bound { to_call, end: Box::new(end), closing });
    }
    if row.state.is_final() {
        return Err("the call has ended");
    }
    let (to_call, binding, closing) = sessions.bind(call_id, line.encoding, false);
    tracing::info!(%call_id, "the bot's conference leg connected here: the conversation moves to it");
    let (conversation, control) = conversation_here(state, row, line);
    state.telephony.bot_bound(call_id, state.replicas.id()).await;
    let end =
        CallStream { state: state.clone(), call_id, binding, conversation, control, recorder: None, bot_leg: true };
    Ok(Bound { to_call, end: Box::new(end), closing })
}

/// Whether the carrier's id of the call, when the stream names one, is the call's.
fn matches_carrier(row: &CallRow, carrier_call_id: Option<&str>) -> bool {
    match (&row.state.telephony_id, carrier_call_id) {
        (Some(known), Some(given)) => known == given,
        _ => true,
    }
}

/// One stream's end of its call.
struct CallStream {
    state: AppState,
    call_id: Uuid,
    binding: Binding,
    /// Where what the call says goes: its conversation (starting or running).
    conversation: Option<mpsc::Sender<FromCall>>,
    control: Option<Arc<Control>>,
    recorder: Option<Recorder>,
    /// The bot's leg of a warm transfer's conference.
    bot_leg: bool,
}

impl StreamEnd for CallStream {
    fn heard(&mut self, message: FromCall) -> bool {
        let current = self.binding.is_current();
        match &message {
            FromCall::Audio(audio) if current => {
                if let Some(recorder) = self.recorder.as_mut() {
                    recorder.heard(audio);
                }
            }
            // Keys are the person's whichever stream carries them.
            FromCall::Dtmf(_) => {}
            _ if !current => return false,
            _ => {}
        }
        converse::offer(&self.conversation, message);
        true
    }

    fn sent(&mut self, audio: &[u8]) {
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.said(audio);
        }
    }

    fn ended(self: Box<Self>, clean: bool) -> BoxFuture<'static, ()> {
        let CallStream { state, call_id, binding, conversation, control, recorder, bot_leg } = *self;
        Box::pin(async move {
            if state.sessions.close(call_id, &binding) {
                if let Some(control) = control.filter(|_| !clean) {
                    control.dropped.store(true, Ordering::SeqCst);
                }
                converse::offer(&conversation, FromCall::Stopped);
            }
            if bot_leg {
                state.telephony.bot_left(call_id).await;
            }
            if let Some(recorder) = recorder {
                recorder.finish(state, call_id).await;
            }
        })
    }
}

/// The conversation a stream bound here feeds: the one this process runs, or one started beside
/// the socket loop (fresh, or taken over from what was kept), or none (the call's agent cannot
/// talk).
fn conversation_here(
    state: &AppState,
    row: CallRow,
    line: Line,
) -> (Option<mpsc::Sender<FromCall>>, Option<Arc<Control>>) {
    let (call_id, sessions) = (row.id, &state.sessions);
    match sessions.conversation_for(call_id) {
        Conversation::Running(from_call) => (Some(from_call), sessions.running(call_id).map(|r| r.control)),
        Conversation::New { from_call, inbound, outlet, control } => {
            converse::start_beside(state.clone(), row, line, inbound, outlet, control.clone());
            (Some(from_call), Some(control))
        }
        Conversation::Silent => (None, None),
    }
}
