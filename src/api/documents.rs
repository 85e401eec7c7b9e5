//! get / list / create / update for the resources stored as documents (prompts, voices,
//! webhooks, vector databases, account connections, actions), and the account connections'
//! steering pool.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::extract::{ValidJson, ValidQuery};
use super::paging::{ListQuery, Page};
use super::routes::V1;
use super::spec::spec;
use crate::crypto::random_signing_secret;
use crate::domain::agents::check_dials;
use crate::domain::call::Provider;
use crate::domain::documents::{
    apply_update, render, seal, unseal, Resource, ACCOUNT_CONNECTIONS, ACTIONS, EXTERNAL_ACTION, PROMPTS,
    PROMPT_TEMPLATES, SORT_COLUMNS, TWILIO_ACCOUNT_CONNECTION, VECTOR_DATABASES, VOICES, WEBHOOKS,
};
use crate::domain::phone::PhoneNumber;
use crate::error::{ApiError, Issue, Loc, Result};
use crate::store::records::{self, Record, Table};
use crate::store::{self, now, DbConn, Tx};
use crate::AppState;

pub fn router() -> V1 {
    [&PROMPTS, &VOICES, &WEBHOOKS, &VECTOR_DATABASES, &ACCOUNT_CONNECTIONS, &ACTIONS]
        .into_iter()
        .fold(V1::default(), |v1, res| v1.merge(resource_router(res)))
        .post("/v1/account_connections/add_to_steering_pool", add_to_steering_pool)
        .post("/v1/account_connections/remove_from_steering_pool", remove_from_steering_pool)
}

fn resource_router(res: &'static Resource) -> V1 {
    let base = format!("/v1/{}", res.path);
    V1::default()
        .get(&base, move |state, caller, query| get_one(res, state, caller, query))
        .get(&format!("{base}/list"), move |state, caller, query| list(res, state, caller, query))
        .post(&format!("{base}/create"), move |state, caller, body| create(res, state, caller, body))
        .post(&format!("{base}/update"), move |state, caller, query, body| update(res, state, caller, query, body))
}

#[derive(Debug, Deserialize)]
pub struct IdQuery {
    pub id: Uuid,
}

/// A document as it is held in memory: its record, and its fields with secrets in the clear.
pub struct Document {
    pub record: Record,
    pub clear: Value,
    /// A secret the server generated that is shown in full once, in the create response.
    pub reveal: bool,
}

impl Document {
    pub fn open(state: &AppState, res: &Resource, record: Record) -> Result<Document> {
        let clear = unseal(res.table, &record.kind, record.body.0.clone(), record.sealed.as_deref(), &state.secrets)?;
        Ok(Document { record, clear, reveal: false })
    }

    /// The document as the API shows it, secrets masked.
    pub fn view(&self, res: &Resource) -> Value {
        render(res.table, &self.record.kind, self.record.id, self.record.user_id, &self.clear, self.reveal)
    }
}

async fn get_one(
    res: &'static Resource,
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
) -> Result<Json<Value>> {
    let mut handle = state.store.read().await?;
    let doc = load(&state, handle.conn(), res, caller.user_id, q.id).await?;
    Ok(Json(full_view(&state, handle.conn(), res, &doc).await?))
}

async fn list(
    res: &'static Resource,
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<Page<Value>>> {
    let req = q.check(SORT_COLUMNS)?;
    let mut handle = state.store.read().await?;
    let rows = records::list(handle.conn(), res.table, caller.user_id, req.sort, req.limit(), req.offset()).await?;
    let total = records::count(handle.conn(), res.table, caller.user_id).await?;
    let items =
        rows.into_iter().map(|r| Document::open(&state, res, r).map(|d| d.view(res))).collect::<Result<Vec<_>>>()?;
    Ok(Json(Page::new(&req, items, total)))
}

async fn create(
    res: &'static Resource,
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(body): ValidJson<Value>,
) -> Result<Json<Value>> {
    let mut tx = state.store.begin().await?;
    let doc = create_document(&state, &mut tx, res, caller.user_id, body, &body_loc()).await?;
    let view = full_view(&state, tx.conn(), res, &doc).await?;
    tx.commit().await?;
    Ok(Json(view))
}

async fn update(
    res: &'static Resource,
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
    ValidJson(patch): ValidJson<Value>,
) -> Result<Json<Value>> {
    let mut tx = state.store.begin().await?;
    let record = records::get_for_update(tx.conn(), res.table, caller.user_id, q.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(res.not_found(q.id)))?;
    let current = Document::open(&state, res, record)?;
    let merged = apply_update(res, res.table, &current.clear, patch);
    let doc = save_document(&state, &mut tx, res, current.record, merged, &body_loc()).await?;
    let view = full_view(&state, tx.conn(), res, &doc).await?;
    tx.commit().await?;
    Ok(Json(view))
}

fn body_loc() -> Vec<Loc> {
    vec![Loc::from("body")]
}

fn located(loc: &[Loc], path: &[&str]) -> Vec<Loc> {
    let mut out = loc.to_vec();
    out.extend(path.iter().map(|p| Loc::from(*p)));
    out
}

/// One of the user's documents, or 404.
pub async fn load(state: &AppState, c: DbConn<'_>, res: &Resource, user_id: Uuid, id: Uuid) -> Result<Document> {
    let record = records::get(c, res.table, user_id, id).await?.ok_or_else(|| ApiError::NotFound(res.not_found(id)))?;
    Document::open(state, res, record)
}

/// Creates a document from its (validated) params; `loc` is where the params sit in the
/// request, for error messages.
pub async fn create_document(
    state: &AppState,
    tx: &mut Tx,
    res: &Resource,
    user_id: Uuid,
    params: Value,
    loc: &[Loc],
) -> Result<Document> {
    let at = now();
    let record = Record {
        id: Uuid::now_v7(),
        user_id,
        kind: String::new(),
        created_at: at,
        updated_at: at,
        body: sqlx::types::Json(Value::Null),
        sealed: None,
    };
    save_document(state, tx, res, record, params, loc).await
}

/// Completes and checks a document, then writes it (as a new record when `record.kind` is empty).
pub async fn save_document(
    state: &AppState,
    tx: &mut Tx,
    res: &Resource,
    mut record: Record,
    mut body: Value,
    loc: &[Loc],
) -> Result<Document> {
    spec().complete(res.params_schema, &mut body, loc.to_vec()).map_err(ApiError::Validation)?;
    let reveal = prepare(tx, res, record.user_id, &mut body, loc).await?;
    let is_new = record.kind.is_empty();
    record.kind = res.kind_of(&body);
    record.updated_at = now();
    let sealed = seal(res.table, &record.kind, body.clone(), &state.secrets);
    record.body = sqlx::types::Json(sealed.body);
    record.sealed = sealed.sealed;
    if is_new {
        records::insert(tx.conn(), res.table, &record).await?;
    } else {
        records::update(tx.conn(), res.table, &record).await?;
    }
    Ok(Document { record, clear: body, reveal })
}

/// The checks and normalizations a resource needs beyond its schema. Returns whether the
/// server generated a secret that the response should reveal once.
async fn prepare(tx: &mut Tx, res: &Resource, user_id: Uuid, body: &mut Value, loc: &[Loc]) -> Result<bool> {
    let mut reveal = false;
    match res.table {
        Table::Agents => {
            let issues = check_dials(body, loc);
            if !issues.is_empty() {
                return Err(ApiError::Validation(issues));
            }
        }
        Table::Webhooks => check_url(body, &["url"], loc)?,
        Table::Prompts => {
            check_url(body, &["context_endpoint"], loc)?;
            resolve_prompt_template(tx, user_id, body, loc).await?;
        }
        Table::Actions if body["type"] == EXTERNAL_ACTION => {
            check_url(body, &["config", "url"], loc)?;
            let secret = &mut body["config"]["signature_secret"];
            if secret.as_str().is_none_or(str::is_empty) {
                *secret = Value::String(random_signing_secret());
                reveal = true;
            }
        }
        Table::AccountConnections => {
            if let Some(pool) = body.get_mut("steering_pool").and_then(Value::as_array_mut) {
                let mut seen: Vec<Value> = Vec::new();
                for (i, n) in pool.iter().enumerate() {
                    let digits = PhoneNumber::parse(n.as_str().unwrap_or_default()).map_err(|msg| {
                        let mut at = located(loc, &["steering_pool"]);
                        at.push(Loc::Index(i));
                        ApiError::invalid(Issue::new(at, "phone_number", msg))
                    })?;
                    let digits = Value::String(digits.digits().to_owned());
                    if !seen.contains(&digits) {
                        seen.push(digits);
                    }
                }
                *pool = seen;
            }
        }
        _ => {}
    }
    Ok(reveal)
}

/// An absolute http(s) URL, or null.
fn check_url(body: &Value, path: &[&str], loc: &[Loc]) -> Result<()> {
    let value = path.iter().try_fold(body, |v, k| v.get(*k));
    let Some(text) = value.and_then(Value::as_str) else {
        return Ok(());
    };
    let ok = url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(Issue::new(
            located(loc, path),
            "url_parsing",
            "Input should be an absolute http or https URL",
        )))
    }
}

/// A prompt refers to its template by id; an inline template is stored (or updated) first.
async fn resolve_prompt_template(tx: &mut Tx, user_id: Uuid, body: &mut Value, loc: &[Loc]) -> Result<()> {
    let at = located(loc, &["prompt_template"]);
    let not_found =
        |id: Uuid, at: Vec<Loc>| ApiError::invalid(Issue::new(at, "not_found", PROMPT_TEMPLATES.not_found(id)));
    match body.get("prompt_template").cloned() {
        Some(Value::String(id)) => {
            let id = Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.into()))?;
            if records::get(tx.conn(), Table::PromptTemplates, user_id, id).await?.is_none() {
                return Err(not_found(id, at));
            }
        }
        Some(Value::Object(template)) => {
            let id = template
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("template id not validated")))?;
            let doc = json!({
                "label": template.get("label").cloned().unwrap_or(json!("")),
                "required_context_keys": template.get("required_context_keys").cloned().unwrap_or(json!([])),
            });
            let at_time = now();
            let mut record = Record {
                id,
                user_id,
                kind: PROMPT_TEMPLATES.path.to_owned(),
                created_at: at_time,
                updated_at: at_time,
                body: sqlx::types::Json(doc),
                sealed: None,
            };
            if let Some(existing) = records::get_for_update(tx.conn(), Table::PromptTemplates, user_id, id).await? {
                record.created_at = existing.created_at;
                records::update(tx.conn(), Table::PromptTemplates, &record).await?;
            } else {
                match records::insert(tx.conn(), Table::PromptTemplates, &record).await {
                    Err(err) if store::is_unique_violation(&err) => {
                        // The id is taken by another user's template.
                        let mut at = at;
                        at.push("id".into());
                        return Err(not_found(id, at));
                    }
                    other => other?,
                }
            }
            body["prompt_template"] = Value::String(id.to_string());
        }
        _ => {}
    }
    Ok(())
}

/// The full view of a document: for a prompt, with its template expanded.
pub async fn full_view(state: &AppState, c: DbConn<'_>, res: &Resource, doc: &Document) -> Result<Value> {
    let mut view = doc.view(res);
    if res.table == Table::Prompts {
        if let Some(id) = view["prompt_template"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            let template = load(state, c, &PROMPT_TEMPLATES, doc.record.user_id, id).await?;
            view["prompt_template"] = template.view(&PROMPT_TEMPLATES);
        }
    }
    Ok(view)
}

#[derive(Debug, Deserialize)]
struct PhoneNumberBody {
    phone_number: Option<String>,
}

async fn add_to_steering_pool(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
    ValidJson(body): ValidJson<Option<PhoneNumberBody>>,
) -> Result<Json<Value>> {
    let number = body.and_then(|b| b.phone_number);
    change_steering_pool(&state, caller, q.id, number, true).await
}

async fn remove_from_steering_pool(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<IdQuery>,
    ValidJson(body): ValidJson<PhoneNumberBody>,
) -> Result<Json<Value>> {
    change_steering_pool(&state, caller, q.id, body.phone_number, false).await
}

/// Buys a number on the account connection's Twilio account for its steering pool (as the
/// warm-transfer guide says `add_to_steering_pool` without a number does). The number is bought
/// before the pool is written: a pool that then cannot be written leaves a bought number, which
/// the log names.
async fn buy_for_pool(state: &AppState, caller: &Caller, id: Uuid) -> Result<PhoneNumber> {
    {
        let mut handle = state.store.read().await?;
        let record = records::get(handle.conn(), ACCOUNT_CONNECTIONS.table, caller.user_id, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(ACCOUNT_CONNECTIONS.not_found(id)))?;
        if record.kind != TWILIO_ACCOUNT_CONNECTION {
            return Err(ApiError::BadRequest("Only Twilio account connections have a steering pool".into()));
        }
    }
    let carrier = state
        .telephony
        .carrier(caller.user_id, Provider::Twilio, Some(id))
        .await
        .map_err(super::calls::carrier_error)?;
    let (number, _sid) = carrier.buy_number(None).await.map_err(super::calls::carrier_error)?;
    tracing::info!(account_connection = %id, number = %number, "bought a number for the steering pool");
    Ok(number)
}

async fn change_steering_pool(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    number: Option<String>,
    add: bool,
) -> Result<Json<Value>> {
    let res = &ACCOUNT_CONNECTIONS;
    let number = match number {
        Some(number) => PhoneNumber::parse(&number)
            .map_err(|msg| ApiError::invalid(Issue::body(&["phone_number"], "phone_number", msg)))?,
        None if add => buy_for_pool(state, &caller, id).await?,
        None => return Err(ApiError::invalid(Issue::body(&["phone_number"], "missing", "Field required"))),
    };
    let mut tx = state.store.begin().await?;
    let record = records::get_for_update(tx.conn(), res.table, caller.user_id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(res.not_found(id)))?;
    let current = Document::open(state, res, record)?;
    if current.record.kind != TWILIO_ACCOUNT_CONNECTION {
        return Err(ApiError::BadRequest("Only Twilio account connections have a steering pool".into()));
    }
    let mut pool: Vec<Value> = current.clear["steering_pool"].as_array().cloned().unwrap_or_default();
    let entry = Value::String(number.digits().to_owned());
    let present = pool.contains(&entry);
    if add && !present {
        pool.push(entry);
    } else if !add {
        if !present {
            return Err(ApiError::BadRequest(format!("{number} is not in this account connection's steering pool")));
        }
        pool.retain(|n| *n != entry);
    }
    let mut body = current.clear.clone();
    body["steering_pool"] = Value::Array(pool);
    let doc = save_document(state, &mut tx, res, current.record, body, &body_loc()).await?;
    tx.commit().await?;
    Ok(Json(doc.view(res)))
}
