//! What a call needs to talk, loaded once when its first stream binds, in the conversation's own
//! task (never in the socket loop, which goes on reading frames meanwhile): its agent's documents
//! and prompt (one read each, [`crate::calls::Calls::talk`]), the call's context filled into the
//! prompt ([`super::context`], which may ask the user's context endpoint), and the agent resolved
//! with this server's providers for the carrier's line.

use std::sync::Arc;

use super::actions::CallRunner;
use crate::conversation::actions::HttpRunner;
use crate::conversation::agent::{resolve_with, Fallbacks};
use crate::conversation::engine::{EngineConfig, Providers};
use crate::store::calls::CallRow;
use crate::telephony::media::Line;
use crate::AppState;

/// The engine's configuration and providers for the call; `None` when its agent cannot talk on
/// this server (the log says why, and the call stays silent).
pub async fn prepare(state: &AppState, row: &CallRow, line: Line) -> Option<(EngineConfig, Providers)> {
    let call_id = row.id;
    let talk = match state.calls.talk(row).await {
        Ok(Some(talk)) => talk,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "cannot read the call's agent: the call stays silent");
            return None;
        }
    };
    // The call's context in the prompt (`${name}` placeholders, context endpoint, collect_fields).
    let docs = super::context::apply(state, row, talk.docs, &talk.prompt).await;
    // A sandbox call's simulated person tells the sandbox's stand-in speech-to-text what it says.
    let fallbacks = match state.sandbox_speech.as_ref().and_then(|calls| calls.get(&call_id.to_string())) {
        Some(spoken) => Fallbacks::sandbox(spoken),
        None => Fallbacks::none(),
    };
    let resolved = {
        let _call = tracing::info_span!("conversation", %call_id).entered();
        resolve_with(&docs, &state.conversation, &state.local_speech, line, &fallbacks)
    };
    let (config, mut providers) = match resolved {
        Ok(resolved) => resolved,
        Err(missing) => {
            tracing::warn!(%call_id, %missing, "the call's agent cannot talk on this server: the call stays silent");
            return None;
        }
    };
    let http = HttpRunner {
        client: state.webhooks.client.clone(),
        allow_private: state.webhooks.allow_private,
        call_id: call_id.to_string(),
    };
    providers.actions = Arc::new(CallRunner { http, state: state.clone(), call_id });
    Some((config, providers))
}
