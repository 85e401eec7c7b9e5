//! The calls service: the one place that writes a call.
//!
//! It creates calls ([`create`]: an outbound call, in one operation), applies news about a call
//! through the pure state machine ([`crate::domain::call::transition`]) by compare-and-set, and
//! carries out what a change requires in the same transaction: the jobs it causes (placing the call, hanging it up) and the
//! webhook events it means. The HTTP API, the carriers' callbacks and the jobs all act on calls
//! through it; it knows nothing of HTTP or of any carrier's protocol, and it runs nothing itself:
//! the jobs it writes for immediate work come back to the caller as claimed jobs to run.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::crypto::SecretBox;
use crate::domain::call::{transition, CallState, Direction, Effect, Event, NoHumanAnswer, Provider};
use crate::jobs::{Enqueue, Job, Queue};
use crate::store::calls::{self, CallRow};
use crate::store::jobs::JobRow;
use crate::store::{now, numbers::NumberRow, Store, Tx};
use crate::webhooks;

pub mod agent;
pub mod create;
pub mod do_not_call;
pub mod sessions;

/// The job that asks the carrier to place a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchCall {
    pub call_id: Uuid,
}

impl Job for DispatchCall {
    const NAME: &'static str = "dispatch_call";
}

/// The job that ends a call at the carrier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HangUpCall {
    pub call_id: Uuid,
}

impl Job for HangUpCall {
    const NAME: &'static str = "hang_up_call";
}

/// How many times a hang-up is tried.
const HANG_UP_ATTEMPTS: i32 = 8;

/// The ordering key of a call's dispatch job (to drop it when the call ends first).
pub fn dispatch_key(call_id: Uuid) -> String {
    format!("dispatch:{call_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum CallsError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Concurrent changes kept winning the compare-and-set.
    #[error("call {0} kept changing under concurrent updates")]
    Contended(Uuid),
    /// A stored secret cannot be opened (the secrets key changed?).
    #[error("a stored document cannot be read: {0}")]
    Unreadable(String),
}

/// What a new call row is made of.
pub struct NewCall {
    pub user_id: Uuid,
    pub direction: Direction,
    pub provider: Provider,
    pub to: String,
    pub from: String,
    pub agent_phone_number: String,
    pub agent_id: Uuid,
    pub telephony_account_connection_id: Option<Uuid>,
    pub hipaa_compliant: bool,
    pub on_no_human_answer: Option<NoHumanAnswer>,
    pub run_do_not_call_detection: Option<bool>,
    pub context: Option<Value>,
    pub telephony_params: Option<Value>,
    pub record: bool,
}

impl NewCall {
    /// The call as it is first written: not started, at the `created` stage.
    fn into_row(self, at: chrono::DateTime<chrono::Utc>) -> CallRow {
        CallRow {
            id: Uuid::now_v7(),
            user_id: self.user_id,
            direction: self.direction,
            state: CallState::new(self.on_no_human_answer),
            do_not_call_result: None,
            transcript: None,
            telephony_provider: self.provider,
            to_number: self.to,
            from_number: self.from,
            agent_phone_number: self.agent_phone_number,
            agent_id: self.agent_id,
            telephony_account_connection_id: self.telephony_account_connection_id,
            hipaa_compliant: self.hipaa_compliant,
            run_do_not_call_detection: self.run_do_not_call_detection,
            context: self.context.map(sqlx::types::Json),
            telephony_params: self.telephony_params.map(sqlx::types::Json),
            record: self.record && !self.hipaa_compliant,
            recording_url: None,
            last_carrier_event_at: None,
            version: 0,
            created_at: at,
            updated_at: at,
        }
    }
}

/// News about a call.
#[derive(Debug, Clone)]
pub struct News {
    /// What happened, if anything did (a recording's URL alone is news too).
    pub event: Option<Event>,
    /// The carrier's own word for the call's status, as it said it.
    pub carrier_status: Option<String>,
    /// Where the carrier keeps the call's recording, when it says so.
    pub recording_url: Option<String>,
    /// Whether the news came from the carrier (rather than from the API).
    pub from_carrier: bool,
}

impl News {
    pub fn api(event: Event) -> Self {
        News { event: Some(event), carrier_status: None, recording_url: None, from_carrier: false }
    }

    pub fn carrier(event: Event, carrier_status: impl Into<String>) -> Self {
        News {
            event: Some(event),
            carrier_status: Some(carrier_status.into()),
            recording_url: None,
            from_carrier: true,
        }
    }

    /// A recording this server made of the call itself.
    pub fn recording(recording_url: String) -> Self {
        News { event: None, carrier_status: None, recording_url: Some(recording_url), from_carrier: false }
    }

    /// Word from the carrier that changes no state (an informational status, a recording alone).
    pub fn carrier_word(recording_url: Option<String>) -> Self {
        News { event: None, carrier_status: None, recording_url, from_carrier: true }
    }
}

/// What a call's conversation is made of, as stored: see [`Calls::talk`].
pub struct Talk {
    pub docs: crate::conversation::agent::AgentDocuments,
    /// The agent's prompt document (`Null` when it has none).
    pub prompt: Value,
}

/// Calls in progress that nobody looks after (see [`Calls::orphaned`]).
pub struct Orphans {
    /// Their conversation's owner is gone.
    pub lost: Vec<CallRow>,
    /// Their conversation ended, or none was recorded.
    pub unowned: Vec<CallRow>,
}

fn ago(d: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
    now() - chrono::Duration::from_std(d).unwrap_or_default()
}

/// A call after news, and the jobs the news caused that this process claimed to run at once.
pub struct Applied {
    pub row: CallRow,
    pub claimed: Vec<JobRow>,
}

/// The calls service. Cloning is cheap.
#[derive(Clone)]
pub struct Calls {
    store: Store,
    queue: Queue,
    /// Where this server is reached (webhook payloads link to it).
    public_base: String,
    dispatch_max_attempts: i32,
    /// Opens the stored secrets of a call's agent's documents.
    secrets: Arc<SecretBox>,
    /// What new outbound calls are made with.
    new_calls: Arc<create::Settings>,
}

impl Calls {
    pub fn new(
        store: Store,
        queue: Queue,
        public_base: String,
        dispatch_max_attempts: u32,
        secrets: Arc<SecretBox>,
        new_calls: create::Settings,
    ) -> Self {
        Calls {
            store,
            queue,
            public_base,
            dispatch_max_attempts: dispatch_max_attempts.max(1) as i32,
            secrets,
            new_calls: Arc::new(new_calls),
        }
    }

    /// A call by id, for the server's own work (callbacks, jobs): never for a user's request.
    pub async fn find(&self, call_id: Uuid) -> sqlx::Result<Option<CallRow>> {
        let mut handle = self.store.read().await?;
        calls::by_id(handle.conn(), call_id).await
    }

    /// What a call needs to talk, each document read once: its agent's documents in the clear and
    /// its prompt whole. `None` when the agent is gone.
    pub async fn talk(&self, row: &CallRow) -> Result<Option<Talk>, CallsError> {
        let mut handle = self.store.read().await?;
        let found = agent::documents_and_prompt(&mut handle, &self.secrets, row.user_id, row.agent_id).await?;
        Ok(found.map(|(docs, prompt)| Talk { docs, prompt }))
    }

    /// A call by the carrier's id of it.
    pub async fn find_by_carrier_id(&self, provider: Provider, telephony_id: &str) -> sqlx::Result<Option<CallRow>> {
        let mut handle = self.store.read().await?;
        calls::by_telephony_id(handle.conn(), provider, telephony_id).await
    }

    /// Records an inbound call the carrier announces, answered at once (once, however often the
    /// carrier asks). Returns its id and the jobs to run.
    pub async fn start_inbound(
        &self,
        number: &NumberRow,
        agent_id: Uuid,
        provider: Provider,
        carrier_id: &str,
        from: &str,
        to: &str,
    ) -> Result<(Uuid, Vec<JobRow>), CallsError> {
        let mut tx = self.store.begin().await?;
        if let Some(existing) = calls::by_telephony_id(tx.conn(), provider, carrier_id).await? {
            return Ok((existing.id, Vec::new()));
        }
        let at = now();
        let mut row = NewCall {
            user_id: number.user_id,
            direction: Direction::Inbound,
            provider,
            to: to.to_owned(),
            from: from.to_owned(),
            agent_phone_number: to.to_owned(),
            agent_id,
            telephony_account_connection_id: number.telephony_account_connection_id,
            hipaa_compliant: false,
            on_no_human_answer: None,
            run_do_not_call_detection: None,
            context: number.example_context.as_ref().map(|c| c.0.clone()),
            telephony_params: None,
            record: false,
        }
        .into_row(at);
        let mut effects = Vec::new();
        for event in [Event::Accepted { telephony_id: carrier_id.to_owned() }, Event::Answered] {
            let (next, more) = transition(&row.state, &event, at);
            row.state = next;
            effects.extend(more);
        }
        row.state.carrier_status = Some("in-progress".into());
        row.last_carrier_event_at = Some(at);
        match calls::insert(tx.conn(), &row).await {
            Err(err) if crate::store::is_unique_violation(&err) => {
                // The carrier asked twice at once: the other request recorded it.
                drop(tx);
                let existing = self.find_by_carrier_id(provider, carrier_id).await?;
                return existing.map(|r| (r.id, Vec::new())).ok_or(CallsError::Database(err));
            }
            other => other?,
        }
        let claimed = self.carry_out(&mut tx, &row, &effects, false).await?;
        tx.commit().await?;
        self.queue.wake();
        tracing::info!(call_id = %row.id, provider = provider.as_str(), "inbound call answered");
        Ok((row.id, claimed))
    }

    /// Applies news to a call: reads it, moves it through the state machine, and writes it back if
    /// nobody changed it meanwhile (otherwise reads it again and retries). The jobs its effects
    /// cause are written in the same transaction. `None` when there is no such call.
    pub async fn apply(&self, call_id: Uuid, news: &News) -> Result<Option<Applied>, CallsError> {
        for _ in 0..20 {
            let mut tx = self.store.begin().await?;
            let Some(row) = calls::by_id(tx.conn(), call_id).await? else {
                return Ok(None);
            };
            let at = now();
            let (next, effects) = match &news.event {
                Some(event) => transition(&row.state, event, at),
                None => (row.state.clone(), Vec::new()),
            };
            let mut updated = row.clone();
            updated.state = next;
            if news.from_carrier {
                if !row.state.is_final() {
                    if let Some(status) = &news.carrier_status {
                        updated.state.carrier_status = Some(status.clone());
                    }
                }
                updated.last_carrier_event_at = Some(at);
            }
            if let Some(url) = &news.recording_url {
                if updated.record && !updated.hipaa_compliant {
                    updated.recording_url = Some(url.clone());
                }
            }
            let changed = updated.state != row.state || updated.recording_url != row.recording_url;
            // (News that changes nothing may still cause work: a second end request asks the
            // carrier to hang up again. It goes through the compare-and-set like any change.)
            if !changed && effects.is_empty() && updated.last_carrier_event_at == row.last_carrier_event_at {
                return Ok(Some(Applied { row, claimed: Vec::new() }));
            }
            updated.version = row.version + 1;
            updated.updated_at = at;
            if !calls::update_if_version(tx.conn(), &updated, row.version).await? {
                continue;
            }
            let recording_now_available = updated.recording_url.is_some() && row.recording_url.is_none();
            let claimed = self.carry_out(&mut tx, &updated, &effects, recording_now_available).await?;
            if updated.state.is_final() && !row.state.is_final() {
                self.call_ended(&mut tx, &updated).await?;
            }
            tx.commit().await?;
            self.queue.wake();
            if updated.state.status != row.state.status && updated.state.is_final() {
                let status = updated.state.status.as_str();
                let outcome = updated.state.stage_outcome.map(|o| o.as_str()).unwrap_or_default();
                metrics::counter!("vocode_calls_finished_total", "status" => status, "stage_outcome" => outcome)
                    .increment(1);
            }
            return Ok(Some(Applied { row: updated, claimed }));
        }
        Err(CallsError::Contended(call_id))
    }

    /// Asks for a user's call to end (unless it is over already): the hang-up this causes comes
    /// back claimed, to run at once. Asked again while the carrier has not ended the call (it
    /// refused the first hang-up, say), it hangs up again. `None` when the user has no such call.
    pub async fn end(&self, user_id: Uuid, call_id: Uuid) -> Result<Option<Vec<JobRow>>, CallsError> {
        let row = {
            let mut handle = self.store.read().await?;
            calls::get(handle.conn(), user_id, call_id).await?
        };
        let Some(row) = row else {
            return Ok(None);
        };
        if row.state.is_final() {
            return Ok(Some(Vec::new()));
        }
        let applied = self.apply(row.id, &News::api(Event::EndRequested)).await?;
        Ok(Some(applied.map(|applied| applied.claimed).unwrap_or_default()))
    }

    /// Writes what a transition's effects require, in the transaction of the transition. Jobs to
    /// run at once are claimed by this process and returned.
    async fn carry_out(
        &self,
        tx: &mut Tx,
        row: &CallRow,
        effects: &[Effect],
        recording_now_available: bool,
    ) -> sqlx::Result<Vec<JobRow>> {
        let mut claimed = Vec::new();
        for effect in effects {
            match effect {
                Effect::HangUp => {
                    let job = HangUpCall { call_id: row.id };
                    claimed.push(self.queue.enqueue_claimed(tx, &job, Enqueue::now(HANG_UP_ATTEMPTS)).await?);
                }
                Effect::CancelDispatch => {
                    crate::store::jobs::cancel(tx.conn(), &dispatch_key(row.id)).await?;
                }
                // Webhook events: queued below.
                Effect::Connected | Effect::HumanDetected(_) | Effect::EndedAfterPickUp | Effect::DidNotConnect => {}
            }
        }
        let events = webhooks::events_for(&self.public_base, row, effects, recording_now_available);
        webhooks::enqueue(&self.queue, tx, row, events).await?;
        Ok(claimed)
    }

    /// Keeps where an answered turn's time went (no words: HIPAA calls keep theirs too).
    pub async fn record_turn(&self, call_id: Uuid, turn: &calls::TurnRow) -> sqlx::Result<()> {
        let mut tx = self.store.begin().await?;
        calls::record_turn(tx.conn(), call_id, turn).await?;
        tx.commit().await
    }

    /// Keeps a call's do-not-call detection result.
    pub async fn set_do_not_call_result(&self, call_id: Uuid, result: bool) -> sqlx::Result<()> {
        let mut tx = self.store.begin().await?;
        calls::set_do_not_call_result(tx.conn(), call_id, result, now()).await?;
        tx.commit().await
    }

    /// Marks that the carrier was asked about a call, so that it is not asked again at once.
    pub async fn touch(&self, call_id: Uuid) -> sqlx::Result<()> {
        let mut tx = self.store.begin().await?;
        calls::touch(tx.conn(), call_id, now()).await?;
        tx.commit().await
    }

    /// Calls in progress with no news from their carrier since `quiet_for` ago.
    pub async fn quiet(&self, quiet_for: std::time::Duration, limit: i64) -> sqlx::Result<Vec<CallRow>> {
        let before = ago(quiet_for);
        let mut handle = self.store.read().await?;
        calls::stale(handle.conn(), before, limit).await
    }

    /// Calls in progress that nobody looks after, with no news from their carrier since
    /// `quiet_for` ago: those whose conversation's owner is a process not seen for `gone_after`
    /// (`lost`), and, after `unowned_for`, those whose conversation no process runs.
    pub async fn orphaned(
        &self,
        gone_after: std::time::Duration,
        quiet_for: std::time::Duration,
        unowned_for: std::time::Duration,
        limit: i64,
    ) -> sqlx::Result<Orphans> {
        let mut handle = self.store.read().await?;
        let lost = calls::owner_gone(handle.conn(), ago(gone_after), ago(quiet_for), limit).await?;
        let unowned = calls::unowned(handle.conn(), ago(unowned_for), limit).await?;
        Ok(Orphans { lost, unowned })
    }
}
