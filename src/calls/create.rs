//! Creating an outbound call (`POST /v1/calls/create`), as one operation in one transaction: the
//! caller may call (the month's minutes are not used up; the number to call from is an active one
//! of theirs), the call's agent is there (one of theirs, or one made for the call in the same
//! transaction), and the agent is read once — its prompt's template says which context keys the
//! call must carry, the rest whether it can talk with this server's providers. Then the call is
//! written with its dispatch claimed by this process, and the request's Idempotency-Key bound to
//! it. The caller runs the claimed dispatch once the operation returns.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::{agent, dispatch_key, Calls, CallsError, DispatchCall, NewCall};
use crate::conversation::agent::{resolve, Missing};
use crate::conversation::context::missing_keys;
use crate::conversation::line::Line;
use crate::conversation::local::LocalSpeech;
use crate::conversation::settings::ProviderSettings;
use crate::domain::call::{Direction, NoHumanAnswer, Provider};
use crate::domain::documents::AGENTS;
use crate::domain::phone::PhoneNumber;
use crate::jobs::Enqueue;
use crate::store::calls::{self as calls_store, CallRow, IdempotencyRecord};
use crate::store::jobs::JobRow;
use crate::store::numbers::{self, NumberRow};
use crate::store::{now, records, users, Tx};

/// What new outbound calls are made with.
pub struct Settings {
    /// Whether the calls are recorded (`RECORD_CALLS`; never a HIPAA-compliant one).
    pub record: bool,
    /// The providers a call's agent must be able to talk with; `None` on the sandbox carrier,
    /// whose stand-ins fill in for whatever is missing.
    pub providers: Option<Providers>,
}

/// The providers this server's conversations listen, think and speak with.
pub struct Providers {
    pub settings: ProviderSettings,
    pub local_speech: Arc<LocalSpeech>,
}

/// A request for an outbound call, parsed.
pub struct OutboundCall {
    pub user_id: Uuid,
    pub from: PhoneNumber,
    pub to: PhoneNumber,
    pub hipaa_compliant: bool,
    pub on_no_human_answer: NoHumanAnswer,
    pub run_do_not_call_detection: Option<bool>,
    pub context: Option<Value>,
    pub telephony_params: Option<Value>,
    pub idempotency: Option<IdempotencyKey>,
}

/// A request's Idempotency-Key, and the hash of the request it binds.
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// The agent of a new call: one of the caller's, or one `make` makes for the call in its
/// transaction (the API's agent creation, which validates what it is given).
pub enum CallAgent<F> {
    Existing(Uuid),
    New(F),
}

/// A call created: its row as written, and its dispatch, claimed by this process to run now.
pub struct Created {
    pub call: CallRow,
    pub dispatch: JobRow,
}

/// Why a call was not created. `E` is why the call's own agent could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError<E> {
    #[error(
        "Monthly usage limit reached: {used} of {limit} minutes used this month. Ask the operator to raise the limit."
    )]
    UsageLimitReached { used: i64, limit: i64 },
    #[error("{0} is not an active number of yours: link or buy it first")]
    NotYourNumber(PhoneNumber),
    #[error("{}", AGENTS.not_found(*.0))]
    AgentNotFound(Uuid),
    /// The context keys the agent's prompt template requires that the call's context lacks.
    #[error("the agent's prompt template requires the context keys {0:?}")]
    MissingContext(Vec<String>),
    #[error("This server cannot run the call's agent: {0}")]
    CannotTalk(Missing),
    /// A concurrent request with the same Idempotency-Key created its call first: the answer is
    /// that call (or, for another request, a refusal).
    #[error("a request with this Idempotency-Key created call {} first", .0.call_id)]
    AlreadyCreated(IdempotencyRecord),
    #[error(transparent)]
    NewAgent(E),
    #[error(transparent)]
    Calls(#[from] CallsError),
}

impl<E> From<sqlx::Error> for CreateError<E> {
    fn from(err: sqlx::Error) -> Self {
        CreateError::Calls(err.into())
    }
}

impl Calls {
    /// Creates an outbound call, with its dispatch claimed by this process to run at once after
    /// the commit; if this process dies first, another worker places the call when the claim
    /// expires.
    pub async fn create_outbound_call<F, E>(
        &self,
        call: OutboundCall,
        agent: CallAgent<F>,
    ) -> Result<Created, CreateError<E>>
    where
        F: AsyncFnOnce(&mut Tx) -> Result<Uuid, E>,
    {
        let mut tx = self.store.begin().await?;
        within_usage_limit(&mut tx, call.user_id).await?;
        let number = number_to_call_from(&mut tx, call.user_id, &call.from).await?;
        let provider = number.telephony_provider;
        let agent_id = match agent {
            CallAgent::Existing(id) => id,
            CallAgent::New(make) => make(&mut tx).await.map_err(CreateError::NewAgent)?,
        };
        self.check_agent(&mut tx, call.user_id, agent_id, call.context.as_ref(), provider).await?;
        let (row, dispatch) = self.write(&mut tx, call, agent_id, &number).await?;
        tx.commit().await?;
        tracing::info!(call_id = %row.id, provider = provider.as_str(), "call created");
        Ok(Created { call: row, dispatch })
    }

    /// Writes the call from `number` with its dispatch, claimed by this process, and binds the
    /// request's Idempotency-Key to it.
    async fn write<E>(
        &self,
        tx: &mut Tx,
        call: OutboundCall,
        agent_id: Uuid,
        number: &NumberRow,
    ) -> Result<(CallRow, JobRow), CreateError<E>> {
        let new = NewCall {
            user_id: call.user_id,
            direction: Direction::Outbound,
            provider: number.telephony_provider,
            to: call.to.digits().to_owned(),
            from: call.from.digits().to_owned(),
            agent_phone_number: call.from.digits().to_owned(),
            agent_id,
            telephony_account_connection_id: number.telephony_account_connection_id,
            hipaa_compliant: call.hipaa_compliant,
            on_no_human_answer: Some(call.on_no_human_answer),
            run_do_not_call_detection: call.run_do_not_call_detection,
            context: call.context,
            telephony_params: call.telephony_params,
            record: self.new_calls.record,
        };
        let row = new.into_row(now());
        calls_store::insert(tx.conn(), &row).await?;
        let how = Enqueue::now(self.dispatch_max_attempts).ordered_by(dispatch_key(row.id));
        let dispatch = self.queue.enqueue_claimed(tx, &DispatchCall { call_id: row.id }, how).await?;
        if let Some(key) = &call.idempotency {
            let claimed =
                calls_store::claim_idempotency_key(tx.conn(), call.user_id, &key.key, &key.request_hash, row.id, now())
                    .await?;
            if let Some(seen) = claimed {
                return Err(CreateError::AlreadyCreated(seen));
            }
        }
        Ok((row, dispatch))
    }

    /// The call's agent, each of its documents read once: it is the user's; the call's `context`
    /// has every key its prompt's template requires (`required_context_keys`; only the call's own
    /// context counts: the number's `example_context` is an example, and the context endpoint is
    /// not asked until the call is answered); and, on the real carriers, it is not deaf or mute —
    /// its speech-to-text, model and voice resolve with this server's providers.
    async fn check_agent<E>(
        &self,
        tx: &mut Tx,
        user_id: Uuid,
        agent_id: Uuid,
        context: Option<&Value>,
        provider: Provider,
    ) -> Result<(), CreateError<E>> {
        let Some(record) = records::get(tx.conn(), AGENTS.table, user_id, agent_id).await? else {
            return Err(CreateError::AgentNotFound(agent_id));
        };
        // An agent's document holds no secrets: as stored, it is in the clear.
        let agent = record.body.0;
        let prompt = agent::prompt(tx, &self.secrets, user_id, &agent).await?;
        let template = match &prompt {
            Some(prompt) => agent::prompt_template(tx, &self.secrets, user_id, prompt).await?,
            None => None,
        };
        if let Some(template) = template {
            let missing = missing_keys(&template["required_context_keys"], context);
            if !missing.is_empty() {
                return Err(CreateError::MissingContext(missing));
            }
        }
        let Some(providers) = &self.new_calls.providers else {
            return Ok(());
        };
        let docs = agent::documents_of(tx, &self.secrets, user_id, agent, prompt.as_ref()).await?;
        resolve(&docs, &providers.settings, &providers.local_speech, Line::of(provider))
            .map(|_| ())
            .map_err(CreateError::CannotTalk)
    }
}

/// The user has minutes left this month, when they have a limit.
async fn within_usage_limit<E>(tx: &mut Tx, user_id: Uuid) -> Result<(), CreateError<E>> {
    let Some(limit) = users::usage_limit(tx.conn(), user_id).await? else {
        return Ok(());
    };
    let used = users::minutes_this_month(tx.conn(), user_id).await?;
    if used >= limit {
        return Err(CreateError::UsageLimitReached { used, limit });
    }
    Ok(())
}

/// The number to call from: an active one of the user's.
async fn number_to_call_from<E>(tx: &mut Tx, user_id: Uuid, from: &PhoneNumber) -> Result<NumberRow, CreateError<E>> {
    numbers::get(tx.conn(), user_id, from.digits())
        .await?
        .filter(|n| n.active)
        .ok_or_else(|| CreateError::NotYourNumber(from.clone()))
}
