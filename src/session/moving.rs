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
/// How long, after the deadline, moved or ended calls may take to leave this process (a call
/// that cannot be moved yet, the database unreachable, is kept here meanwhile).
const LEAVING: Duration = Duration::from_secs(20);
/// How soon a call that could not be moved is tried again.
const MOVE_AGAIN: Duration = Duration::from_secs(1);
/// How long a move waits once the database answers again after an outage: load balancers see
/// the replicas ready again within a couple of their checks (`deploy/`: every 2 s).
const SETTLE: Duration = Duration::from_secs(3);

/// Whether this process is stopping and another replica, not stopping, can take new calls.
pub async fn elsewhere(state: &AppState) -> bool {
    state.replicas.draining() && others(state).await.unwrap_or(false)
}

/// Whether another replica, not stopping, is alive; `Err` when the database cannot say.
async fn others(state: &AppState) -> Result<bool, String> {
    let alive = state.replicas.alive().await.map_err(|e| e.to_string())?;
    Ok(alive.iter().any(|r| r.id != state.replicas.id() && !r.draining))
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
/// stops here (what it holds is written), then the carrier is pointed at a new stream. The call
/// and its carrier are read first: while the database cannot be read (nor could another replica
/// take the conversation up), the call is not touched and goes on here (`Err`).
pub async fn move_call(state: &AppState, call_id: Uuid) -> Result<(), String> {
    let running = state.sessions.running(call_id).ok_or("the call's conversation does not run here")?;
    let row = state.calls.find(call_id).await.map_err(|e| e.to_string())?.ok_or("the call is gone")?;
    let carrier = state.telephony.carrier_of(&row).await.map_err(|e| e.to_string())?;
    running.control.moving.store(true, Ordering::SeqCst);
    let _ = running.from_call.send(FromCall::Leave).await;
    if tokio::time::timeout(STOPPING, running.control.finished()).await.is_err() {
        tracing::warn!(%call_id, "the conversation took too long to stop: moving the call anyway");
    }
    carrier.reconnect(&row).await.map_err(|e| e.to_string())?;
    tracing::info!(%call_id, "call moved: the carrier opens its next stream on another server");
    Ok(())
}

/// At the drain's deadline: moves the call to another replica; ends it (goodbye, hang-up) when
/// no other is alive. While the database cannot say, or the move cannot start, the call goes on
/// here and is tried again, until `until`; then the bot says goodbye. After a failed attempt (the
/// database was unreachable: every replica reported not ready meanwhile), the move waits
/// [`SETTLE`] once the database answers, so that the load balancer sends the carrier's new stream
/// to a replica again.
async fn move_or_end(state: &AppState, call_id: Uuid, until: tokio::time::Instant) {
    let mut failed = false;
    loop {
        let outcome = match others(state).await {
            Ok(false) => return say_goodbye(state, call_id).await,
            Ok(true) if failed => {
                failed = false;
                tracing::info!(%call_id, "the database answers again: the call moves once the replicas are ready again");
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            Ok(true) => move_call(state, call_id).await,
            Err(e) => Err(format!("the database cannot say which replicas are alive: {e}")),
        };
        let Err(reason) = outcome else { return };
        failed = true;
        if state.sessions.running(call_id).is_none() {
            // Over meanwhile, or it left (the conversation stopped before the carrier was told).
            tracing::warn!(%call_id, %reason, "the call could not be moved and its conversation is gone");
            return;
        }
        if tokio::time::Instant::now() + MOVE_AGAIN + SETTLE >= until {
            tracing::warn!(%call_id, %reason, "the call could not be moved: the bot says goodbye");
            return say_goodbye(state, call_id).await;
        }
        tracing::warn!(%call_id, %reason, "the call cannot be moved now: it goes on here, and is moved once it can be");
        tokio::time::sleep(MOVE_AGAIN).await;
    }
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
/// once no conversation runs here (or they had their time to leave); calls moved or ended at the
/// deadline leave once their streams here have ended, each having written its segment of the
/// call's recording.
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
    tracing::info!(calls = left.len(), "the drain is over: moving the calls still live, or ending them");
    let until = tokio::time::Instant::now() + LEAVING;
    // Half the time to leave for calls that cannot be moved yet; the other half for a goodbye.
    let moves_until = tokio::time::Instant::now() + LEAVING / 2;
    let mut tasks = tokio::task::JoinSet::new();
    for call_id in left {
        let state = state.clone();
        tasks.spawn(async move { move_or_end(&state, call_id, moves_until).await });
    }
    while tasks.join_next().await.is_some() {}
    // The calls leave: their conversations stop, and their streams here end once the carrier
    // follows the move (or hangs up), each writing its segment of the call's recording.
    let leaving = || !state.sessions.live_calls().is_empty() || state.telephony.streams.bound_open() > 0;
    while leaving() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
