//! Phone numbers: linked from the user's Twilio account, with the agent that answers them.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::agents::{agent_view, create_agent, update_agent};
use super::auth::Caller;
use super::calls::carrier_error;
use super::documents::{load, Document};
use super::extract::{ValidJson, ValidQuery};
use super::paging::{ListQuery, Page};
use super::routes::V1;
use crate::domain::agents::default_agent_params;
use crate::domain::call::Provider;
use crate::domain::documents::{apply_update, ACCOUNT_CONNECTIONS, AGENTS, TWILIO_ACCOUNT_CONNECTION};
use crate::domain::phone::PhoneNumber;
use crate::error::{ApiError, Issue, Loc, Result};
use crate::store::numbers::{self, NumberRow};
use crate::store::records::{self, count_rows};
use crate::store::{is_unique_violation, now, Conn, Tx};
use crate::telephony::CarrierError;
use crate::AppState;

/// The columns a list of numbers may be sorted by; the first is the default.
pub const SORT_COLUMNS: &[&str] = &["created_at", "updated_at", "id", "number"];

mod acquire;

use acquire::{buy_number, link_number, point_number_here, release, Bought};

pub fn router() -> V1 {
    V1::default()
        .get("/v1/numbers", get_number)
        .get("/v1/numbers/list", list_numbers)
        .post("/v1/numbers/link", link_number)
        .post("/v1/numbers/buy", buy_number)
        .post("/v1/numbers/update", update_number)
        .post("/v1/numbers/cancel", cancel_number)
}

#[derive(Debug, Deserialize)]
struct NumberQuery {
    phone_number: String,
}

impl NumberQuery {
    fn parse(&self) -> Result<PhoneNumber> {
        PhoneNumber::parse(&self.phone_number)
            .map_err(|msg| ApiError::invalid(Issue::query("phone_number", "phone_number", msg)))
    }
}

fn not_found(number: &PhoneNumber) -> ApiError {
    ApiError::NotFound(format!("Phone number {number} not found"))
}

async fn get_number(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<NumberQuery>,
) -> Result<Json<Value>> {
    let number = q.parse()?;
    let mut handle = state.store.read().await?;
    let row = numbers::get(handle.conn(), caller.user_id, number.digits()).await?.ok_or_else(|| not_found(&number))?;
    Ok(Json(number_view(&state, &mut handle, &row).await?))
}

async fn list_numbers(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<Page<Value>>> {
    let req = q.check(SORT_COLUMNS)?;
    let mut handle = state.store.read().await?;
    let rows = numbers::list(handle.conn(), caller.user_id, req.sort, req.limit(), req.offset()).await?;
    let total = count_rows(handle.conn(), "phone_numbers", caller.user_id).await?;
    Ok(Json(Page::new(&req, rows, total).map(|row| normalized_view(&row))))
}

/// Another account holds the number: refused like any other reference the caller may not use.
fn held_elsewhere(number: &PhoneNumber) -> ApiError {
    ApiError::invalid(Issue::body(
        &["phone_number"],
        "value_error",
        format!("Phone number {number} is already in use by another account"),
    ))
}

/// A number can be linked when no account holds it active.
async fn ensure_available(tx: &mut Tx, user_id: Uuid, number: &PhoneNumber) -> Result<()> {
    match numbers::active_holder(tx.conn(), number.digits()).await? {
        Some(holder) if holder.user_id == user_id => {
            Err(ApiError::BadRequest(format!("Phone number {number} is already linked to your account")))
        }
        Some(_) => Err(held_elsewhere(number)),
        None => Ok(()),
    }
}

/// `inbound_agent` of a link or buy request: params (a new agent), an agent id, `"default"`, or none.
async fn inbound_agent(
    state: &AppState,
    tx: &mut Tx,
    user_id: Uuid,
    value: Option<Value>,
    loc: &[Loc],
) -> Result<Option<Uuid>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "default" => {
            Ok(Some(create_agent(state, tx, user_id, default_agent_params(), loc).await?.record.id))
        }
        Some(Value::String(s)) => {
            let id = Uuid::parse_str(&s).map_err(|e| ApiError::Internal(e.into()))?;
            check_agent(tx, user_id, id, loc).await?;
            Ok(Some(id))
        }
        Some(params) => Ok(Some(create_agent(state, tx, user_id, params, loc).await?.record.id)),
    }
}

async fn check_agent(tx: &mut Tx, user_id: Uuid, id: Uuid, loc: &[Loc]) -> Result<()> {
    if records::get(tx.conn(), AGENTS.table, user_id, id).await?.is_none() {
        return Err(ApiError::invalid(Issue::new(loc.to_vec(), "not_found", AGENTS.not_found(id))));
    }
    Ok(())
}

async fn update_number(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<NumberQuery>,
    ValidJson(update): ValidJson<Map<String, Value>>,
) -> Result<Json<Value>> {
    let number = q.parse()?;
    let mut tx = state.store.begin().await?;
    let mut row =
        numbers::get_for_update(tx.conn(), caller.user_id, number.digits()).await?.ok_or_else(|| not_found(&number))?;
    if !row.active {
        return Err(ApiError::BadRequest(format!(
            "Phone number {number} is cancelled: link it again before updating it"
        )));
    }
    let agent_loc = [Loc::from("body"), Loc::from("inbound_agent")];
    let was_outbound_only = row.outbound_only;
    for (field, value) in update {
        match (field.as_str(), value) {
            ("label", Value::String(label)) => row.label = label,
            ("outbound_only", Value::Bool(b)) => row.outbound_only = b,
            ("example_context", Value::Null) => row.example_context = None,
            ("example_context", context) => row.example_context = Some(sqlx::types::Json(context)),
            ("inbound_agent", Value::Null) => row.inbound_agent_id = None,
            ("inbound_agent", Value::String(id)) => {
                let id = Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.into()))?;
                check_agent(&mut tx, caller.user_id, id, &agent_loc).await?;
                row.inbound_agent_id = Some(id);
            }
            ("inbound_agent", patch) => {
                // Update params apply to the number's agent; a number without one gets a new
                // agent, which the params must then describe in full.
                let agent = match row.inbound_agent_id {
                    Some(id) => {
                        let current = load(&state, tx.conn(), &AGENTS, caller.user_id, id).await?;
                        update_agent(&state, &mut tx, current, patch, &agent_loc).await?
                    }
                    None => {
                        let params = apply_update(&AGENTS, AGENTS.table, &Value::Object(Map::new()), patch);
                        create_agent(&state, &mut tx, caller.user_id, params, &agent_loc).await?
                    }
                };
                row.inbound_agent_id = Some(agent.record.id);
            }
            (other, value) => {
                return Err(ApiError::Internal(anyhow::anyhow!("unexpected update of {other}: {value}")));
            }
        }
    }
    row.updated_at = now();
    numbers::update(tx.conn(), &row).await?;
    let view = number_view(&state, &mut tx, &row).await?;
    if was_outbound_only && !row.outbound_only && row.telephony_provider == Provider::Twilio {
        if let Some(connection_id) = row.telephony_account_connection_id {
            // The number takes calls now: point it here before the change is kept.
            point_number_here(&state, caller.user_id, connection_id, &number, true).await?;
        }
    }
    tx.commit().await?;
    Ok(Json(view))
}

async fn cancel_number(
    State(state): State<AppState>,
    caller: Caller,
    ValidQuery(q): ValidQuery<NumberQuery>,
) -> Result<Json<Value>> {
    let number = q.parse()?;
    let mut tx = state.store.begin().await?;
    let mut row =
        numbers::get_for_update(tx.conn(), caller.user_id, number.digits()).await?.ok_or_else(|| not_found(&number))?;
    if row.active {
        if row.bought {
            // Released at the carrier first: a number that cannot be released stays active.
            drop(tx);
            let bought = Bought {
                user_id: caller.user_id,
                provider: row.telephony_provider,
                connection_id: row.telephony_account_connection_id,
                number: number.clone(),
                carrier_ref: row.carrier_ref.clone().unwrap_or_default(),
            };
            release(&state, &bought).await?;
            tx = state.store.begin().await?;
            row = numbers::get_for_update(tx.conn(), caller.user_id, number.digits())
                .await?
                .ok_or_else(|| not_found(&number))?;
        }
        row.active = false;
        row.updated_at = now();
        numbers::update(tx.conn(), &row).await?;
    }
    let view = number_view(&state, &mut tx, &row).await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// `NormalizedPhoneNumber`: references as ids.
fn normalized_view(row: &NumberRow) -> Value {
    let mut view = base_view(row);
    view["inbound_agent"] = row.inbound_agent_id.map(|id| Value::String(id.to_string())).unwrap_or(Value::Null);
    view["telephony_account_connection"] =
        row.telephony_account_connection_id.map(|id| Value::String(id.to_string())).unwrap_or(Value::Null);
    view
}

/// `PhoneNumber`: the agent and the account connection in full (secrets masked).
pub async fn number_view(state: &AppState, c: &mut impl Conn, row: &NumberRow) -> Result<Value> {
    let mut view = base_view(row);
    if let Some(id) = row.inbound_agent_id {
        let agent = load(state, c.conn(), &AGENTS, row.user_id, id).await?;
        view["inbound_agent"] = agent_view(state, c, &agent).await?;
    }
    if let Some(id) = row.telephony_account_connection_id {
        let record = records::get(c.conn(), ACCOUNT_CONNECTIONS.table, row.user_id, id)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("number {} refers to a missing connection", row.id)))?;
        view["telephony_account_connection"] =
            Document::open(state, &ACCOUNT_CONNECTIONS, record)?.view(&ACCOUNT_CONNECTIONS);
    }
    Ok(view)
}

fn base_view(row: &NumberRow) -> Value {
    serde_json::json!({
        "id": row.id,
        "user_id": row.user_id,
        "active": row.active,
        "label": row.label,
        "inbound_agent": null,
        "outbound_only": row.outbound_only,
        "example_context": row.example_context.as_ref().map(|c| c.0.clone()),
        "number": row.number,
        "telephony_provider": row.telephony_provider.as_str(),
        "telephony_account_connection": null,
    })
}
