//! A call's agent as its conversation runs it: the agent's documents read in the clear (its
//! prompt's content, its voice with its key, its OpenAI connection's key, its actions' types).

use uuid::Uuid;

use super::CallsError;
use crate::conversation::agent::AgentDocuments;
use crate::crypto::SecretBox;
use crate::domain::documents::{unseal, Resource, ACCOUNT_CONNECTIONS, ACTIONS, AGENTS, PROMPTS, VOICES};
use crate::store::records;
use crate::store::Conn;

/// A document of the user's, in the clear; `None` when it is gone.
async fn open(
    c: &mut impl Conn,
    secrets: &SecretBox,
    res: &Resource,
    user_id: Uuid,
    id: Option<Uuid>,
) -> Result<Option<serde_json::Value>, CallsError> {
    let Some(id) = id else {
        return Ok(None);
    };
    let Some(record) = records::get(c.conn(), res.table, user_id, id).await? else {
        return Ok(None);
    };
    unseal(res.table, &record.kind, record.body.0, record.sealed.as_deref(), secrets)
        .map(Some)
        .map_err(|e| CallsError::Unreadable(format!("{} {id}: {e}", res.noun)))
}

fn id_at(doc: &serde_json::Value, field: &str) -> Option<Uuid> {
    doc[field].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

/// The documents of a user's agent, read through `c` (a transaction sees what it wrote).
pub async fn documents(
    c: &mut impl Conn,
    secrets: &SecretBox,
    user_id: Uuid,
    agent_id: Uuid,
) -> Result<Option<AgentDocuments>, CallsError> {
    let Some(agent) = open(c, secrets, &AGENTS, user_id, Some(agent_id)).await? else {
        return Ok(None);
    };
    let prompt = open(c, secrets, &PROMPTS, user_id, id_at(&agent, "prompt")).await?;
    let voice = open(c, secrets, &VOICES, user_id, id_at(&agent, "voice")).await?;
    let openai = open(c, secrets, &ACCOUNT_CONNECTIONS, user_id, id_at(&agent, "openai_account_connection")).await?;
    let mut action_types = Vec::new();
    for id in agent["actions"].as_array().into_iter().flatten().filter_map(|a| a.as_str()) {
        let action = open(c, secrets, &ACTIONS, user_id, Uuid::parse_str(id).ok()).await?;
        if let Some(kind) = action.as_ref().and_then(|a| a["type"].as_str()) {
            action_types.push(kind.to_owned());
        }
    }
    Ok(Some(AgentDocuments {
        prompt: prompt.as_ref().and_then(|p| p["content"].as_str()).unwrap_or_default().to_owned(),
        voice,
        openai_key: openai.as_ref().and_then(|o| o["credentials"]["openai_api_key"].as_str()).map(str::to_owned),
        action_types,
        agent,
    }))
}
