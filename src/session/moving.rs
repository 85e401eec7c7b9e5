//! Moving a call's conversation to another process, and what a stopping process does with its
//! live calls.
//!
//! A move is one operation whatever causes it: the carrier is pointed at the call's resume path
//! (Twilio runs new TwiML, Vonage transfers the call to a new NCCO), opens a new stream, and the
//! process that binds it takes the conversation over from what was kept at the last turn
//! boundary ([`super::converse`]). A process that moves a call first stops its conversation
//! (keeping what the person heard of the bot's last words), so that the other starts from the
//! whole of it. A process that finds another has taken one of its calls over — a crash it
//! survived, a warm transfer's leg on another replica, a second stream of the call — hears it
//! from the database ([`listen`]: Postgres `NOTIFY`) or from its next fenced write, and lets go.
//!
//! A stopping process ([`drain`]): it reports not ready, takes no new conversation while another
//! replica can, lets its conversations go on until they end or `DRAIN_SECS` is up, then moves
//! those still running to another replica; with none alive, the bot says goodbye and hangs up
//! (the call ends `bot_disconnected`: the server ended it, not the person).

use std::sync::atomic::Ordering;
use std::time::Duration;

use uuid::Uuid;

use crate::conversation::engine::FromCall;
use crate::store::sessions::CHANNEL;
use crate::AppState;

/// What the bot says when the server stops and no other can take the call.
pub const GOODBYE: &str = "I'm sorry, I have to go now. Goodbye.";

/// How long a conversation may take to stop before its call is moved anyway.
const STOPPING: Duration = Duration::from_secs(5);
/// How long, after the deadline, moved or ended calls may take to leave this process.
const LEAVING: Duration = Duration::from_secs(20);

/// Whether this process is stopping and another replica, not stopping, can take new calls.
pub async fn elsewhere(state: &AppState) -> bool {
    if !state.replicas.draining() {
        return false;
    }
    match state.replicas.alive().await {
        Ok(alive) => alive.iter().any(|r| r.id != state.replicas.id() && !r.draining),
        Err(_) => false,
    }
}

/// Hears takeovers of this process's calls from the other processes (Postgres), until the
/// process stops.
pub async fn listen(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let mut listener = match state.store.listen(CHANNEL).await {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for takeovers; fenced writes still catch them");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        loop {
            let notification = tokio::select! {
                n = listener.recv() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            match notification {
                Ok(n) => {
                    let Some((call_id, generation)) = n.payload().split_once(':') else { continue };
                    if let (Ok(call_id), Ok(generation)) = (call_id.parse::<Uuid>(), generation.parse::<i64>()) {
                        state.sessions.taken_over(call_id, generation);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the takeover listener lost its connection: listening again");
                    break;
                }
            }
        }
    }
}

/// Moves the call's conversation to whichever replica binds its next stream: the conversation
/// stops here (what it holds is written), then the carrier is pointed at a new stream.
pub async fn move_call(state: &AppState, call_id: Uuid) -> Result<(), String> {
    let running = state.sessions.running(call_id).ok_or("the call's conversation does not run here")?;
    running.control.moving.store(true, Ordering::SeqCst);
    let _ = running.from_call.send(FromCall::Leave).await;
    if tokio::time::timeout(STOPPING, running.control.finished()).await.is_err() {
        tracing::warn!(%call_id, "the conversation took too long to stop: moving the call anyway");
    }
    let row = state.calls.find(call_id).await.map_err(|e| e.to_string())?.ok_or("the call is gone")?;
    let carrier = state.telephony.carrier_of(&row).await.map_err(|e| e.to_string())?;
    carrier.reconnect(&row).await.map_err(|e| e.to_string())?;
    tracing::info!(%call_id, "call moved: the carrier opens its next stream on another server");
    Ok(())
}

/// The bot says goodbye and hangs up (the server stops and nobody can take the call).
async fn say_goodbye(state: &AppState, call_id: Uuid) {
    if let Some(running) = state.sessions.running(call_id) {
        tracing::info!(%call_id, "no other server can take the call: the bot says goodbye");
        let _ = running.from_call.send(FromCall::Goodbye(GOODBYE.to_owned())).await;
    }
}

/// Lets this process's conversations go on until they end or `drain` is up; then moves those
/// still running to another replica, or ends them (goodbye, hang-up) when none is alive. Returns
/// once no conversation runs here (or they had their time to leave).
pub async fn drain(state: &AppState, drain: Duration) {
    let deadline = tokio::time::Instant::now() + drain;
    let live = state.sessions.live_calls().len();
    if live > 0 {
        tracing::info!(live, drain_secs = drain.as_secs(), "draining: live calls go on until they end");
    }
    while !state.sessions.live_calls().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = state.sessions.live_calls();
    if left.is_empty() {
        return;
    }
    let others = elsewhere(state).await;
    tracing::info!(
        calls = left.len(),
        moving = others,
        "the drain is over: moving the calls still live, or ending them"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for call_id in left {
        let state = state.clone();
        tasks.spawn(async move {
            if !others {
                return say_goodbye(&state, call_id).await;
            }
            if let Err(reason) = move_call(&state, call_id).await {
                tracing::warn!(%call_id, %reason, "the call could not be moved: the bot says goodbye");
                say_goodbye(&state, call_id).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let until = tokio::time::Instant::now() + LEAVING;
    while !state.sessions.live_calls().is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
