//! A call's conversation as the calls service keeps it: who runs it (one process at a time, under
//! a fencing generation), what it reports — each message and action line written with the
//! conversation as it stands, in one transaction, by its owner only — and its end, after which
//! the whole transcript goes out once as `event_transcript`.
//!
//! The transcript goes out when the conversation is over *and* nobody will go on with it: when
//! the conversation ends because the call's audio ended (the carrier's `stop`, a hang-up), or,
//! for a conversation that was left to be taken over and never was (its process stopped, or moved
//! it and the call ended first), when the call itself ends. Whichever comes second sends it;
//! `transcript_sent` makes it once.

use serde_json::{json, Value};
use uuid::Uuid;

use super::{do_not_call, Calls, CallsError};
use crate::jobs::Enqueue;
use crate::store::calls::{self as calls_store, CallRow};
use crate::store::{now, replicas, sessions, Tx};
use crate::webhooks::{self, EventType};

/// How often [`Calls::conversation_lost`] looks again at an owner that looks alive.
const LOST_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// A process's hold on a call's conversation: what it writes counts while nobody has taken the
/// conversation over since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub generation: i64,
}

/// What a process gets when it takes up a call's conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The call's first conversation.
    Fresh(Fence),
    /// A conversation another process ran (or this one, before): go on from what it kept.
    Resume(Fence, Value),
    /// The call's conversation is over: there is nothing to take up.
    Over,
}

/// How a conversation stopped on this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The call's audio ended (a hang-up, the carrier's `stop`): the conversation is over.
    Over,
    /// Left for another process to take over (a move, a stream that broke).
    Left,
}

impl Calls {
    /// `owner` takes up the call's conversation: the first one, or the one kept so far — from
    /// whoever ran it (alive or not: the newest stream wins; an older owner finds its writes
    /// refused and lets go). Other processes are told at once (Postgres `NOTIFY`).
    pub async fn claim_conversation(&self, call_id: Uuid, owner: &str) -> Result<Claim, CallsError> {
        let mut tx = self.store.begin().await?;
        let at = now();
        let mut row = sessions::for_update(tx.conn(), call_id).await?;
        if row.is_none() {
            if sessions::insert(tx.conn(), call_id, owner, at).await? {
                tx.commit().await?;
                return Ok(Claim::Fresh(Fence { owner: owner.to_owned(), generation: 1 }));
            }
            // Another process's first stream got there first: take it over as from anyone.
            row = sessions::for_update(tx.conn(), call_id).await?;
        }
        let claim = match row {
            None => return Err(CallsError::Contended(call_id)),
            Some(row) if row.ended => Claim::Over,
            Some(row) => {
                let generation = sessions::take_over(tx.conn(), call_id, owner, at).await?;
                sessions::announce(tx.conn(), call_id, generation).await?;
                let fence = Fence { owner: owner.to_owned(), generation };
                match row.state.0 {
                    Value::Null => Claim::Fresh(fence),
                    state => Claim::Resume(fence, state),
                }
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// Whether the call's conversation is over for good (nobody is to take it up again).
    pub async fn conversation_is_over(&self, call_id: Uuid) -> Result<bool, CallsError> {
        let mut handle = self.store.read().await?;
        Ok(sessions::get(handle.conn(), call_id).await?.is_some_and(|s| s.ended))
    }

    /// Whether the call's conversation was lost with the process that ran it: it is not over and
    /// nobody runs it — left for a takeover that has not come, or run by a process that is gone.
    /// (`me`, this process, loses none: what it runs it knows.) A process killed a moment ago
    /// looks alive until its heartbeat is [`GONE_AFTER`] old, while a living owner whose call
    /// ends hears it as its stream's end and ends the conversation within moments: so an owner
    /// that looks alive is watched until one or the other, at most until its heartbeat would be
    /// stale.
    ///
    /// [`GONE_AFTER`]: crate::replicas::GONE_AFTER
    pub async fn conversation_lost(&self, call_id: Uuid, me: &str) -> Result<bool, CallsError> {
        let stale = crate::replicas::GONE_AFTER + crate::replicas::HEARTBEAT;
        let until = tokio::time::Instant::now() + stale;
        loop {
            let session = {
                let mut handle = self.store.read().await?;
                sessions::get(handle.conn(), call_id).await?
            };
            let owner = match session {
                None => return Ok(false),
                Some(s) if s.ended => return Ok(false),
                Some(s) => match s.owner {
                    None => return Ok(true),
                    Some(owner) if owner == me => return Ok(false),
                    Some(owner) => owner,
                },
            };
            let since = now() - chrono::Duration::from_std(crate::replicas::GONE_AFTER).expect("a short duration");
            let alive = {
                let mut handle = self.store.read().await?;
                replicas::alive(handle.conn(), since).await?.iter().any(|r| r.id == owner)
            };
            if !alive {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(LOST_POLL).await;
        }
    }

    /// Whether `fence` still holds the call's conversation.
    pub async fn holds(&self, call_id: Uuid, fence: &Fence) -> Result<bool, CallsError> {
        let mut handle = self.store.read().await?;
        Ok(sessions::holds(handle.conn(), call_id, &fence.owner, fence.generation).await?)
    }

    /// Adds a finished message to the call's transcript, with its `event_message` and the
    /// conversation as it stands, in one transaction; `false` (and nothing written) when another
    /// process has taken the conversation over. A HIPAA-compliant call keeps no words: no
    /// transcript, no message, and only the words-free part of the state.
    pub async fn record_message(
        &self,
        call_id: Uuid,
        fence: &Fence,
        speaker: &str,
        text: &str,
        state: &Value,
    ) -> Result<bool, CallsError> {
        let payload = json!({"sender": speaker.to_lowercase(), "text": text, "timestamp": now()});
        self.record(call_id, fence, &format!("{speaker}: {text}\n"), (EventType::Message, payload), state).await
    }

    /// Adds an action's start or result to the call's transcript, with its `event_action` and the
    /// conversation as it stands, in one transaction (as [`Calls::record_message`]).
    pub async fn record_action(
        &self,
        call_id: Uuid,
        fence: &Fence,
        line: &str,
        payload: Value,
        state: &Value,
    ) -> Result<bool, CallsError> {
        self.record(call_id, fence, &format!("{line}\n"), (EventType::Action, payload), state).await
    }

    async fn record(
        &self,
        call_id: Uuid,
        fence: &Fence,
        line: &str,
        event: (EventType, Value),
        state: &Value,
    ) -> Result<bool, CallsError> {
        let mut tx = self.store.begin().await?;
        let Some(row) = calls_store::by_id(tx.conn(), call_id).await? else {
            return Ok(false);
        };
        let kept = if row.hipaa_compliant { without_words(state) } else { state.clone() };
        if !sessions::keep(tx.conn(), call_id, &fence.owner, fence.generation, &kept, now()).await? {
            return Ok(false);
        }
        if !row.hipaa_compliant {
            calls_store::append_transcript(tx.conn(), call_id, line, now()).await?;
            webhooks::enqueue(&self.queue, &mut tx, &row, vec![event]).await?;
        }
        tx.commit().await?;
        self.queue.wake();
        Ok(true)
    }

    /// The conversation stopped on this process. Over: it is ended for good, and its transcript
    /// goes out. Left: another process may take it up; if the call has ended already, nobody
    /// will, and the transcript goes out now.
    pub async fn conversation_stopped(&self, call_id: Uuid, fence: &Fence, how: Stopped) -> Result<(), CallsError> {
        let mut tx = self.store.begin().await?;
        let over = how == Stopped::Over;
        if !sessions::release(tx.conn(), call_id, &fence.owner, fence.generation, over, now()).await? {
            // Taken over meanwhile: the new owner ends it.
            return Ok(());
        }
        let Some(row) = calls_store::by_id(tx.conn(), call_id).await? else {
            return Ok(());
        };
        if over || row.state.is_final() {
            self.send_transcript(&mut tx, &row).await?;
        }
        tx.commit().await?;
        self.queue.wake();
        Ok(())
    }

    /// The call has ended (in the transaction that ends it): if its conversation is not running
    /// anywhere — left by its process, or its process gone — its transcript goes out now.
    pub(super) async fn call_ended(&self, tx: &mut Tx, row: &CallRow) -> sqlx::Result<()> {
        let Some(session) = sessions::get(tx.conn(), row.id).await? else {
            return Ok(());
        };
        if session.transcript_sent {
            return Ok(());
        }
        let running = match &session.owner {
            None => false,
            Some(owner) => {
                let since = now() - chrono::Duration::from_std(crate::replicas::GONE_AFTER).expect("a short duration");
                replicas::alive(tx.conn(), since).await?.iter().any(|r| &r.id == owner)
            }
        };
        if !running {
            self.send_transcript(tx, row).await?;
        }
        Ok(())
    }

    /// `event_transcript` with the whole transcript (once), and, when the call asked for it, its
    /// do-not-call detection (a job written with it).
    async fn send_transcript(&self, tx: &mut Tx, row: &CallRow) -> sqlx::Result<()> {
        if !sessions::claim_transcript(tx.conn(), row.id).await? || row.hipaa_compliant {
            return Ok(());
        }
        // The row as it is now: the transcript may have grown since the caller read it.
        let Some(row) = calls_store::by_id(tx.conn(), row.id).await? else {
            return Ok(());
        };
        let payload = json!({"transcript": row.transcript.clone().unwrap_or_default()});
        webhooks::enqueue(&self.queue, tx, &row, vec![(EventType::Transcript, payload)]).await?;
        if do_not_call::wanted(&row) {
            let job = do_not_call::DetectDoNotCall { call_id: row.id };
            self.queue.enqueue(tx, &job, Enqueue::now(do_not_call::ATTEMPTS)).await?;
        }
        Ok(())
    }
}

/// A HIPAA-compliant call's conversation as kept: nothing that was said.
fn without_words(state: &Value) -> Value {
    let mut kept = state.clone();
    if let Some(map) = kept.as_object_mut() {
        for words in ["history", "heard", "in_flight"] {
            map.remove(words);
        }
    }
    kept
}
