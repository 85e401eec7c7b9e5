//! The call's context in its agent's prompt, as the conversation starts
//! ([`crate::conversation::context`] has the rules): the prompt's `${name}` placeholders filled
//! from the call's `context` and from what the prompt's `context_endpoint` (or the agent's) says
//! about the person on the line, and its `collect_fields` added as instructions.
//!
//! The sources, from the least to the most specific:
//! - an inbound call's `context` is its number's `example_context` (copied when the call came
//!   in), and the context endpoint, asked about the caller, overrides it key by key;
//! - an outbound call's `context` was given for that very call at `calls/create`: it overrides
//!   what the endpoint, asked about the person called, says. The number's `example_context` is
//!   not used on outbound calls: its values are an example, not the person being called.
//!
//! The guide describes the endpoint for inbound calls; it is asked on outbound calls too (about
//! the number called), since an agent that answers calls may also place them. It is asked only
//! when the prompt has a placeholder to fill. Nothing here stops the call: an endpoint that cannot
//! be asked leaves the prompt with the context there is, and the log says why.

use serde_json::Value;

use crate::conversation::agent::AgentDocuments;
use crate::conversation::context::{self, Context};
use crate::domain::call::Direction;
use crate::store::calls::CallRow;
use crate::AppState;

/// The agent's documents with its prompt (`prompt`, the whole document: `Null` when there is
/// none) filled in for the call.
pub async fn apply(state: &AppState, row: &CallRow, mut docs: AgentDocuments, prompt: &Value) -> AgentDocuments {
    let call_id = row.id;
    if docs.prompt.contains("${") {
        let endpoint = [&prompt["context_endpoint"], &docs.agent["context_endpoint"]]
            .into_iter()
            .find_map(|e| e.as_str().filter(|e| !e.trim().is_empty()));
        let person = match row.direction {
            Direction::Inbound => &row.from_number,
            Direction::Outbound => &row.to_number,
        };
        let fetched = match endpoint {
            Some(endpoint) => {
                let webhooks = &state.webhooks;
                match context::fetch(&webhooks.client, webhooks.allow_private, endpoint, person).await {
                    Ok(fetched) => fetched,
                    Err(e) => {
                        tracing::warn!(%call_id, error = %e, "the call goes on without the context endpoint's context");
                        Context::new()
                    }
                }
            }
            None => Context::new(),
        };
        let given = row.context.as_ref().map(|c| context::from_json(&c.0)).unwrap_or_default();
        let merged = match row.direction {
            Direction::Inbound => context::layered([given, fetched]),
            Direction::Outbound => context::layered([fetched, given]),
        };
        let (filled, unfilled) = context::fill(&docs.prompt, &merged);
        if !unfilled.is_empty() {
            tracing::warn!(%call_id, ?unfilled, "the call's context has no value for these placeholders: they are left empty");
        }
        docs.prompt = filled;
    }
    if let Some(instructions) = context::collect_instructions(&prompt["collect_fields"]) {
        docs.prompt = match docs.prompt.trim_end() {
            "" => instructions,
            content => format!("{content}\n\n{instructions}"),
        };
    }
    docs
}
