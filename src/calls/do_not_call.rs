//! Do-not-call detection as a job: once an outbound call's conversation is over, a call created
//! with `run_do_not_call_detection` has its transcript classified
//! ([`crate::conversation::do_not_call`]) and the answer kept in its `do_not_call_result`.
//!
//! The job is written with the `event_transcript`, in the transaction that records the end of the
//! conversation — when the transcript is complete, which the call's own end (a carrier's status
//! callback, racing the media stream's last words) does not guarantee. It is durable: a restart
//! runs it later.
//!
//! The model is the agent's (its `openai_account_connection`'s key first, the server's second, its
//! `openai_model_name_override`); on the sandbox carrier with no model configured a phrase list
//! stands in, and says so in the log. A HIPAA-compliant call keeps no transcript, and the job
//! may not keep one in its payload either, so its result stays null; so does that of a call
//! nobody talked on.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

use super::{agent, Calls};
use crate::conversation::agent::{model, model_name, AgentDocuments};
use crate::conversation::do_not_call::{by_keywords, classify, ClassifyError};
use crate::conversation::settings::ProviderSettings;
use crate::crypto::SecretBox;
use crate::domain::call::Direction;
use crate::jobs::{Attempt, Job, Outcome, Ran};
use crate::store::calls::CallRow;

/// The job that classifies a call's transcript.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetectDoNotCall {
    pub call_id: Uuid,
}

impl Job for DetectDoNotCall {
    const NAME: &'static str = "detect_do_not_call";
}

/// How many times the model is asked (a model that is down or rate-limited is retried).
pub const ATTEMPTS: i32 = 6;

/// Whether a call whose conversation is over is to be classified.
pub fn wanted(row: &CallRow) -> bool {
    row.direction == Direction::Outbound
        && row.run_do_not_call_detection == Some(true)
        && !row.hipaa_compliant
        && row.do_not_call_result.is_none()
        && row.transcript.as_deref().is_some_and(|t| !t.trim().is_empty())
}

/// Runs the job: classifies the call's transcript and keeps the result.
pub async fn run(
    calls: &Calls,
    secrets: &SecretBox,
    settings: &ProviderSettings,
    sandboxed: bool,
    job: DetectDoNotCall,
    attempt: Attempt,
) -> Ran {
    let retry =
        |error: String| Outcome::retry_with_backoff(attempt, Duration::from_secs(5), Duration::from_secs(300), error);
    let row = match calls.find(job.call_id).await {
        Ok(Some(row)) if wanted(&row) => row,
        Ok(_) => return Outcome::Done.into(),
        Err(e) => return retry(e.to_string()).into(),
    };
    let docs = match calls.store.read().await {
        Ok(mut handle) => agent::documents(&mut handle, secrets, row.user_id, row.agent_id).await,
        Err(e) => return retry(e.to_string()).into(),
    };
    // An agent deleted since the call is asked through the server's model.
    let docs = match docs {
        Ok(docs) => docs.unwrap_or_else(AgentDocuments::default),
        Err(e) => return retry(e.to_string()).into(),
    };
    let transcript = row.transcript.as_deref().unwrap_or_default();
    let result = match model(&docs, settings) {
        Ok(llm) => match classify(&*llm, &model_name(&docs, settings), transcript).await {
            Ok(result) => result,
            Err(ClassifyError::Model(e)) if e.is_transient() => return retry(e.to_string()).into(),
            Err(e) => return Outcome::Fail(format!("do-not-call detection failed: {e}")).into(),
        },
        Err(missing) if sandboxed => {
            tracing::info!(
                call_id = %row.id, %missing,
                "this sandbox call's do-not-call detection uses a stand-in (a list of phrases): configure a model for the real thing"
            );
            by_keywords(transcript)
        }
        Err(missing) => return Outcome::Fail(format!("do-not-call detection needs a model: {missing}")).into(),
    };
    if let Err(e) = calls.set_do_not_call_result(row.id, result).await {
        return retry(e.to_string()).into();
    }
    tracing::info!(call_id = %row.id, do_not_call_result = result, "do-not-call detection done");
    Outcome::Done.into()
}
