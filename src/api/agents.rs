//! Agents: a prompt, a voice, actions, a webhook, a vector database and an OpenAI connection,
//! each given by id or inline, plus the dials of the conversation.
//!
//! An agent is stored as a document whose references are ids. Inline objects are created as the
//! caller's own, in the same transaction as the agent, so a failure leaves nothing behind. An
//! update never edits an object other agents may share: inline update params make a new object
//! from the current one.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::documents::{create_document, full_view, load, save_document, Document, IdQuery};
use super::extract::{ValidJson, ValidQuery};
use super::paging::{ListQuery, Page};
use super::routes::V1;
use crate::domain::agents::{Reference, REFERENCES};
use crate::domain::documents::{
    apply_update, Resource, ACCOUNT_CONNECTIONS, ACTIONS, AGENTS, OPENAI_ACCOUNT_CONNECTION, PROMPTS, SORT_COLUMNS,
    VECTOR_DATABASES, VOICES, WEBHOOKS,
};
use crate::error::{ApiError, Issue, Loc, Result};
use crate::store::records;
use crate::store::{Conn, Tx};
use crate::AppState;

pub fn router() -> V1 {
    V1::default()
        .get("/v1/agents", get_agent)
        .get("/v1/agents/list", list_agents)
        .post("/v1/agents/create", create)
        .post("/v1/agents/update", update)
}

async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Json<Value>> {
    let mut handle = state.store.read().await?;
    let agent = load(&state, handle.conn(), &AGENTS, caller.user_id, q.id).await?;
    Ok(Json(agent_view(&state, &mut handle, &agent).await?))
}

async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<Page<Value>>> {
    let req = q.check(SORT_COLUMNS)?;
    let mut handle = state.store.read().await?;
    let rows = records::list(handle.conn(), AGENTS.table, caller.user_id, req.sort, req.limit(), req.offset()).await?;
    let total = records::count(handle.conn(), AGENTS.table, caller.user_id).await?;
    let items = rows
        .into_iter()
        .map(|r| Document::open(&state, &AGENTS, r).map(|d| d.view(&AGENTS)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(Page::new(&req, items, total)))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(params): ValidJson<Value>,
) -> Result<Json<Value>> {
    let mut tx = state.store.begin().await?;
    let agent = create_agent(&state, &mut tx, caller.user_id, params, &[Loc::from("body")]).await?;
    let view = agent_view(&state, &mut tx, &agent).await?;
    tx.commit().await?;
    Ok(Json(view))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
    ValidJson(patch): ValidJson<Value>,
) -> Result<Json<Value>> {
    let mut tx = state.store.begin().await?;
    let record = records::get_for_update(tx.conn(), AGENTS.table, caller.user_id, q.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(AGENTS.not_found(q.id)))?;
    let agent = Document::open(&state, &AGENTS, record)?;
    let agent = update_agent(&state, &mut tx, agent, patch, &[Loc::from("body")]).await?;
    let view = agent_view(&state, &mut tx, &agent).await?;
    tx.commit().await?;
    Ok(Json(view))
}

fn resource(reference: Reference) -> &'static Resource {
    match reference {
        Reference::Prompt => &PROMPTS,
        Reference::Voice => &VOICES,
        Reference::Webhook => &WEBHOOKS,
        Reference::VectorDatabase => &VECTOR_DATABASES,
        Reference::OpenAiConnection => &ACCOUNT_CONNECTIONS,
    }
}

fn at(loc: &[Loc], field: impl Into<Loc>) -> Vec<Loc> {
    let mut out = loc.to_vec();
    out.push(field.into());
    out
}

fn parse_id(value: &str) -> Result<Uuid> {
    // Ids reach here validated by the spec (format: uuid).
    Uuid::parse_str(value).map_err(|e| ApiError::Internal(e.into()))
}

/// Creates an agent from `AgentParams` (or `CreateCallAgentParams`), with its inline objects.
pub async fn create_agent(
    state: &AppState,
    tx: &mut Tx,
    user_id: Uuid,
    mut params: Value,
    loc: &[Loc],
) -> Result<Document> {
    for (field, reference) in REFERENCES {
        let value = params.get(*field).cloned().unwrap_or(Value::Null);
        params[*field] = resolve(state, tx, user_id, *reference, None, value, &at(loc, *field)).await?;
    }
    let actions = params.get("actions").cloned().unwrap_or(json!([]));
    params["actions"] = resolve_actions(state, tx, user_id, actions, &at(loc, "actions")).await?;
    create_document(state, tx, &AGENTS, user_id, params, loc).await
}

/// Applies `AgentUpdateParams` (absent and `Undefined` fields already removed) to an agent.
pub async fn update_agent(
    state: &AppState,
    tx: &mut Tx,
    agent: Document,
    patch: Value,
    loc: &[Loc],
) -> Result<Document> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::Internal(anyhow::anyhow!("agent update is not an object")));
    };
    let mut body = agent.clear.clone();
    for (field, value) in patch {
        let field_loc = at(loc, field.as_str());
        let new_value = if field == "actions" {
            resolve_actions(state, tx, agent.record.user_id, value, &field_loc).await?
        } else if let Some((_, reference)) = REFERENCES.iter().find(|(f, _)| *f == field) {
            let current = body.get(&field).and_then(Value::as_str).map(parse_id).transpose()?;
            resolve(state, tx, agent.record.user_id, *reference, current, value, &field_loc).await?
        } else {
            value
        };
        body[&field] = new_value;
    }
    save_document(state, tx, &AGENTS, agent.record, body, loc).await
}

/// One reference of an agent, as the id the agent will store (or null):
/// - an id must name an object of the caller's, of the right kind;
/// - an inline object is created (on update: derived from the `current` object, never edited).
async fn resolve(
    state: &AppState,
    tx: &mut Tx,
    user_id: Uuid,
    reference: Reference,
    current: Option<Uuid>,
    value: Value,
    loc: &[Loc],
) -> Result<Value> {
    let res = resource(reference);
    match value {
        Value::Null => Ok(Value::Null),
        Value::String(id) => {
            let id = parse_id(&id)?;
            check_reference(tx, user_id, reference, id, loc).await?;
            Ok(Value::String(id.to_string()))
        }
        Value::Object(fields) if reference == Reference::OpenAiConnection => {
            openai_connection_inline(state, tx, user_id, fields, loc).await
        }
        Value::Object(fields) => {
            let base = match current {
                Some(id) => load(state, tx.conn(), res, user_id, id).await?.clear,
                None => Value::Object(Map::new()),
            };
            let params = apply_update(res, res.table, &base, Value::Object(fields));
            let doc = create_document(state, tx, res, user_id, params, loc).await?;
            Ok(Value::String(doc.record.id.to_string()))
        }
        other => Err(ApiError::Internal(anyhow::anyhow!("unexpected reference {other}"))),
    }
}

async fn check_reference(tx: &mut Tx, user_id: Uuid, reference: Reference, id: Uuid, loc: &[Loc]) -> Result<()> {
    let res = resource(reference);
    let Some(record) = records::get(tx.conn(), res.table, user_id, id).await? else {
        return Err(ApiError::invalid(Issue::new(loc.to_vec(), "not_found", res.not_found(id))));
    };
    if reference == Reference::OpenAiConnection && record.kind != OPENAI_ACCOUNT_CONNECTION {
        return Err(ApiError::invalid(Issue::new(
            loc.to_vec(),
            "wrong_kind",
            format!("Account connection {id} is not an OpenAI account connection"),
        )));
    }
    Ok(())
}

/// The spec lets an agent carry a whole `OpenAIAccountConnection`: one of the caller's (by its
/// id) is used as it is; otherwise its credentials make a new connection.
async fn openai_connection_inline(
    state: &AppState,
    tx: &mut Tx,
    user_id: Uuid,
    fields: Map<String, Value>,
    loc: &[Loc],
) -> Result<Value> {
    let given_id = fields.get("id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
    if let Some(id) = given_id {
        if records::get(tx.conn(), ACCOUNT_CONNECTIONS.table, user_id, id).await?.is_some() {
            check_reference(tx, user_id, Reference::OpenAiConnection, id, loc).await?;
            return Ok(Value::String(id.to_string()));
        }
    }
    let key = fields["credentials"]["openai_api_key"].as_str().unwrap_or_default();
    if key.starts_with("********") {
        let mut key_loc = at(loc, "credentials");
        key_loc.push("openai_api_key".into());
        return Err(ApiError::invalid(Issue::new(
            key_loc,
            "masked_secret",
            "This is a masked key: give the OpenAI API key itself, or the id of an existing connection",
        )));
    }
    let params = json!({"type": OPENAI_ACCOUNT_CONNECTION, "credentials": fields["credentials"]});
    let doc = create_document(state, tx, &ACCOUNT_CONNECTIONS, user_id, params, loc).await?;
    Ok(Value::String(doc.record.id.to_string()))
}

async fn resolve_actions(state: &AppState, tx: &mut Tx, user_id: Uuid, actions: Value, loc: &[Loc]) -> Result<Value> {
    let Value::Array(items) = actions else {
        return Ok(json!([]));
    };
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let item_loc = at(loc, i);
        let id = match item {
            Value::String(id) => {
                let id = parse_id(&id)?;
                if records::get(tx.conn(), ACTIONS.table, user_id, id).await?.is_none() {
                    return Err(ApiError::invalid(Issue::new(item_loc, "not_found", ACTIONS.not_found(id))));
                }
                id
            }
            Value::Object(fields) => {
                // Inline params (or update params, which must then say everything a new action needs).
                let params = apply_update(&ACTIONS, ACTIONS.table, &json!({}), Value::Object(fields));
                create_document(state, tx, &ACTIONS, user_id, params, &item_loc).await?.record.id
            }
            other => return Err(ApiError::Internal(anyhow::anyhow!("unexpected action {other}"))),
        };
        ids.push(Value::String(id.to_string()));
    }
    Ok(Value::Array(ids))
}

/// The full `Agent`: every reference replaced by the object it names (secrets masked).
pub async fn agent_view(state: &AppState, c: &mut impl Conn, agent: &Document) -> Result<Value> {
    let user_id = agent.record.user_id;
    let mut view = agent.view(&AGENTS);
    for (field, reference) in REFERENCES {
        let Some(id) = view[*field].as_str().map(parse_id).transpose()? else {
            continue;
        };
        let res = resource(*reference);
        let doc = load(state, c.conn(), res, user_id, id).await?;
        view[*field] = full_view(state, c.conn(), res, &doc).await?;
    }
    let ids: Vec<Uuid> = view["actions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).filter_map(|s| Uuid::parse_str(s).ok()).collect())
        .unwrap_or_default();
    let found = records::get_many(c.conn(), ACTIONS.table, user_id, &ids).await?;
    let mut actions = Vec::with_capacity(ids.len());
    for id in ids {
        let record = found.iter().find(|r| r.id == id).cloned().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("agent {} refers to a missing action {id}", agent.record.id))
        })?;
        actions.push(Document::open(state, &ACTIONS, record)?.view(&ACTIONS));
    }
    view["actions"] = Value::Array(actions);
    Ok(view)
}
