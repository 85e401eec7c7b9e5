//! A call's agent as its conversation runs it: the agent's documents read in the clear (its
//! prompt's content, its voice with its key, its OpenAI connection's key, its actions, its vector
//! database with its key).

use uuid::Uuid;

use super::CallsError;
use crate::conversation::agent::AgentDocuments;
use crate::crypto::SecretBox;
use crate::domain::documents::{
    unseal, Resource, ACCOUNT_CONNECTIONS, ACTIONS, AGENTS, PROMPTS, PROMPT_TEMPLATES, VECTOR_DATABASES, VOICES,
};
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
    documents_of(c, secrets, user_id, agent, prompt.as_ref()).await.map(Some)
}

/// [`documents`], with the agent's prompt whole (its `context_endpoint`, `collect_fields` and
/// `prompt_template` besides its content; `Null` when it has none): each document read once.
pub async fn documents_and_prompt(
    c: &mut impl Conn,
    secrets: &SecretBox,
    user_id: Uuid,
    agent_id: Uuid,
) -> Result<Option<(AgentDocuments, serde_json::Value)>, CallsError> {
    let Some(agent) = open(c, secrets, &AGENTS, user_id, Some(agent_id)).await? else {
        return Ok(None);
    };
    let prompt = open(c, secrets, &PROMPTS, user_id, id_at(&agent, "prompt")).await?;
    let docs = documents_of(c, secrets, user_id, agent, prompt.as_ref()).await?;
    Ok(Some((docs, prompt.unwrap_or(serde_json::Value::Null))))
}

/// [`documents`], of an agent and its prompt read already.
pub async fn documents_of(
    c: &mut impl Conn,
    secrets: &SecretBox,
    user_id: Uuid,
    agent: serde_json::Value,
    prompt: Option<&serde_json::Value>,
) -> Result<AgentDocuments, CallsError> {
    let voice = open(c, secrets, &VOICES, user_id, id_at(&agent, "voice")).await?;
    let openai = open(c, secrets, &ACCOUNT_CONNECTIONS, user_id, id_at(&agent, "openai_account_connection")).await?;
    let vector_database = open(c, secrets, &VECTOR_DATABASES, user_id, id_at(&agent, "vector_database")).await?;
    let mut actions = Vec::new();
    for id in agent["actions"].as_array().into_iter().flatten().filter_map(|a| a.as_str()) {
        if let Some(action) = open(c, secrets, &ACTIONS, user_id, Uuid::parse_str(id).ok()).await? {
            actions.push(action);
        }
    }
    Ok(AgentDocuments {
        prompt: prompt.and_then(|p| p["content"].as_str()).unwrap_or_default().to_owned(),
        voice,
        openai_key: openai.as_ref().and_then(|o| o["credentials"]["openai_api_key"].as_str()).map(str::to_owned),
        actions,
        vector_database,
        agent,
    })
}

/// The prompt of a user's agent (`agent` as stored), whole: its `context_endpoint`,
/// `collect_fields` and `prompt_template` besides the content [`documents`] reads.
pub async fn prompt(
    c: &mut impl Conn,
    secrets: &SecretBox,
    user_id: Uuid,
    agent: &serde_json::Value,
) -> Result<Option<serde_json::Value>, CallsError> {
    open(c, secrets, &PROMPTS, user_id, id_at(agent, "prompt")).await
}

/// The template a user's prompt refers to (its `required_context_keys`).
pub async fn prompt_template(
    c: &mut impl Conn,
    secrets: &SecretBox,
    user_id: Uuid,
    prompt: &serde_json::Value,
) -> Result<Option<serde_json::Value>, CallsError> {
    open(c, secrets, &PROMPT_TEMPLATES, user_id, id_at(prompt, "prompt_template")).await
}
