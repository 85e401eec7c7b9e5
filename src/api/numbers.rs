//! Phone numbers: linked from the user's Twilio account, with the agent that answers them.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::agents::{agent_view, create_agent, update_agent};
use super::auth::Caller;
use super::calls::carrier_error;
use super::documents::{load, Document};
use super::extract::{ValidJson, ValidQuery};
use super::paging::{ListQuery, Page};
use crate::domain::agents::default_agent_params;
use crate::domain::documents::{apply_update, ACCOUNT_CONNECTIONS, AGENTS};
use crate::domain::phone::PhoneNumber;
use crate::error::{ApiError, Issue, Loc, Result};
use crate::jobs::calls::twilio_credentials;
use crate::store::numbers::{self, NumberRow};
use crate::store::records::{self, count_rows};
use crate::store::{is_unique_violation, now, Conn, Tx};
use crate::telephony::{CarrierError, Provider};
use crate::AppState;

/// The columns a list of numbers may be sorted by; the first is the default.
pub const SORT_COLUMNS: &[&str] = &["created_at", "updated_at", "id", "number"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/numbers", get(get_number))
        .route("/v1/numbers/list", get(list_numbers))
        .route("/v1/numbers/link", post(link_number))
        .route("/v1/numbers/buy", post(buy_number))
        .route("/v1/numbers/update", post(update_number))
        .route("/v1/numbers/cancel", post(cancel_number))
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

#[derive(Debug, Deserialize)]
struct LinkRequest {
    phone_number: String,
    telephony_account_connection: Uuid,
    outbound_only: bool,
    inbound_agent: Option<Value>,
}

async fn link_number(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<LinkRequest>,
) -> Result<Json<Value>> {
    let number = PhoneNumber::parse(&req.phone_number)
        .map_err(|msg| ApiError::invalid(Issue::body(&["phone_number"], "phone_number", msg)))?;
    let mut tx = state.store.begin().await?;
    let connection =
        records::get(tx.conn(), ACCOUNT_CONNECTIONS.table, caller.user_id, req.telephony_account_connection)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(Issue::body(
                    &["telephony_account_connection"],
                    "not_found",
                    ACCOUNT_CONNECTIONS.not_found(req.telephony_account_connection),
                ))
            })?;
    if connection.kind != "account_connection_twilio" {
        return Err(ApiError::invalid(Issue::body(
            &["telephony_account_connection"],
            "wrong_kind",
            format!("Account connection {} is not a Twilio account connection", connection.id),
        )));
    }
    ensure_available(&mut tx, caller.user_id, &number).await?;
    // The carrier is asked with no transaction open: the number must be the account's, and (unless
    // it only calls out) its voice webhook now points here.
    drop(tx);
    let carrier_ref = point_number_here(&state, caller.user_id, connection.id, &number, !req.outbound_only).await?;
    let mut tx = state.store.begin().await?;
    ensure_available(&mut tx, caller.user_id, &number).await?;
    let agent = inbound_agent(
        &state,
        &mut tx,
        caller.user_id,
        req.inbound_agent,
        &[Loc::from("body"), Loc::from("inbound_agent")],
    )
    .await?;

    let at = now();
    let existing = numbers::get_for_update(tx.conn(), caller.user_id, number.digits()).await?;
    let row = NumberRow {
        id: existing.as_ref().map(|r| r.id).unwrap_or_else(Uuid::now_v7),
        user_id: caller.user_id,
        number: number.digits().to_owned(),
        active: true,
        label: existing.as_ref().map(|r| r.label.clone()).unwrap_or_default(),
        outbound_only: req.outbound_only,
        example_context: existing.as_ref().and_then(|r| r.example_context.clone()),
        telephony_provider: "twilio".into(),
        telephony_account_connection_id: Some(connection.id),
        inbound_agent_id: agent,
        bought: false,
        carrier_ref: Some(carrier_ref),
        created_at: existing.as_ref().map(|r| r.created_at).unwrap_or(at),
        updated_at: at,
    };
    let written = match existing {
        Some(_) => numbers::update(tx.conn(), &row).await,
        None => numbers::insert(tx.conn(), &row).await,
    };
    match written {
        Err(err) if is_unique_violation(&err) => return Err(held_elsewhere(&number)),
        other => other?,
    }
    let view = number_view(&state, &mut tx, &row).await?;
    tx.commit().await?;
    Ok(Json(view))
}

/// Finds a linked number in its Twilio account and, when it takes calls, points its voice webhook
/// at this server. Returns the account's id of the number.
async fn point_number_here(
    state: &AppState,
    user_id: Uuid,
    connection_id: Uuid,
    number: &PhoneNumber,
    takes_calls: bool,
) -> Result<String> {
    let creds = {
        let mut handle = state.store.read().await?;
        twilio_credentials(state, &mut handle, user_id, Some(connection_id)).await.map_err(carrier_error)?
    };
    let t = &state.telephony;
    let sid = t
        .twilio
        .find_number(&creds, number)
        .await
        .map_err(carrier_error)?
        .ok_or_else(|| ApiError::BadRequest(format!("{number} is not a number of this Twilio account")))?;
    if takes_calls {
        t.twilio
            .configure_number(&creds, &sid, Some(&t.twilio_voice_url()), &t.twilio_status_url())
            .await
            .map_err(carrier_error)?;
    }
    Ok(sid)
}

#[derive(Debug, Deserialize)]
struct BuyRequest {
    area_code: Option<String>,
    telephony_provider: String,
    telephony_account_connection: Option<Uuid>,
    inbound_agent: Option<Value>,
}

/// Buys a number from the carrier (through the caller's Twilio connection, or the server's own
/// account), pointed at this server and owned by the caller.
async fn buy_number(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<BuyRequest>,
) -> Result<Json<Value>> {
    let area_code = req.area_code.as_deref().map(str::trim).filter(|a| !a.is_empty());
    if let Some(area) = area_code {
        if area.len() != 3 || !area.bytes().all(|b| b.is_ascii_digit()) || area.starts_with(['0', '1']) {
            return Err(ApiError::invalid(Issue::body(
                &["area_code"],
                "area_code",
                format!("'{area}' is not an area code: three digits, not starting with 0 or 1"),
            )));
        }
    }
    let provider = Provider::parse(&req.telephony_provider)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the provider was not validated")))?;
    let connection_loc = ["telephony_account_connection"];
    let connection_id = match (provider, req.telephony_account_connection) {
        (Provider::Twilio, Some(id)) => {
            let mut handle = state.store.read().await?;
            match records::get(handle.conn(), ACCOUNT_CONNECTIONS.table, caller.user_id, id).await? {
                Some(r) if r.kind == "account_connection_twilio" => Some(id),
                Some(_) => {
                    return Err(ApiError::invalid(Issue::body(
                        &connection_loc,
                        "wrong_kind",
                        format!("Account connection {id} is not a Twilio account connection"),
                    )))
                }
                None => {
                    return Err(ApiError::invalid(Issue::body(
                        &connection_loc,
                        "not_found",
                        ACCOUNT_CONNECTIONS.not_found(id),
                    )))
                }
            }
        }
        (Provider::Vonage, Some(_)) => {
            return Err(ApiError::invalid(Issue::body(
                &connection_loc,
                "wrong_kind",
                "Vonage numbers are bought through the server's Vonage account; account connections are Twilio's",
            )))
        }
        (_, None) => None,
    };
    let agent_loc = [Loc::from("body"), Loc::from("inbound_agent")];
    if let Some(Value::String(id)) = &req.inbound_agent {
        if id != "default" {
            let id = Uuid::parse_str(id).map_err(|e| ApiError::Internal(e.into()))?;
            let mut tx = state.store.begin().await?;
            check_agent(&mut tx, caller.user_id, id, &agent_loc).await?;
        }
    }

    // Bought with no transaction open; if recording the number fails, it is released again.
    let t = &state.telephony;
    let (number, carrier_ref) = match provider {
        Provider::Twilio => {
            let creds = {
                let mut handle = state.store.read().await?;
                twilio_credentials(&state, &mut handle, caller.user_id, connection_id).await.map_err(carrier_error)?
            };
            t.twilio
                .buy_number(&creds, area_code, Some(&t.twilio_voice_url()), &t.twilio_status_url())
                .await
                .map_err(carrier_error)?
        }
        Provider::Vonage => (t.vonage.buy_number(area_code).await.map_err(carrier_error)?, "US".to_owned()),
    };
    let bought = Bought { user_id: caller.user_id, provider, connection_id, number, carrier_ref };
    match record_bought(&state, &bought, req.inbound_agent).await {
        Ok(view) => Ok(Json(view)),
        Err(err) => {
            if let Err(release_err) = release(&state, &bought).await {
                tracing::error!(error = %release_err, number = %bought.number, "a bought number could not be released after a failure");
            }
            Err(err)
        }
    }
}

/// A number bought from a carrier.
struct Bought {
    user_id: Uuid,
    provider: Provider,
    connection_id: Option<Uuid>,
    number: PhoneNumber,
    /// Twilio's id of the number, or Vonage's country of it.
    carrier_ref: String,
}

async fn record_bought(state: &AppState, bought: &Bought, agent_value: Option<Value>) -> Result<Value> {
    let mut tx = state.store.begin().await?;
    ensure_available(&mut tx, bought.user_id, &bought.number).await?;
    let agent_loc = [Loc::from("body"), Loc::from("inbound_agent")];
    let agent = inbound_agent(state, &mut tx, bought.user_id, agent_value, &agent_loc).await?;
    let at = now();
    let existing = numbers::get_for_update(tx.conn(), bought.user_id, bought.number.digits()).await?;
    let row = NumberRow {
        id: existing.as_ref().map(|r| r.id).unwrap_or_else(Uuid::now_v7),
        user_id: bought.user_id,
        number: bought.number.digits().to_owned(),
        active: true,
        label: String::new(),
        outbound_only: false,
        example_context: None,
        telephony_provider: bought.provider.as_str().to_owned(),
        telephony_account_connection_id: bought.connection_id,
        inbound_agent_id: agent,
        bought: true,
        carrier_ref: Some(bought.carrier_ref.clone()),
        created_at: existing.as_ref().map(|r| r.created_at).unwrap_or(at),
        updated_at: at,
    };
    match existing {
        Some(_) => numbers::update(tx.conn(), &row).await?,
        None => numbers::insert(tx.conn(), &row).await?,
    }
    let view = number_view(state, &mut tx, &row).await?;
    tx.commit().await?;
    tracing::info!(number_id = %row.id, provider = bought.provider.as_str(), "bought a number");
    Ok(view)
}

/// Gives a bought number back to its carrier.
async fn release(state: &AppState, bought: &Bought) -> Result<()> {
    let t = &state.telephony;
    let released = match bought.provider {
        Provider::Twilio => {
            let creds = {
                let mut handle = state.store.read().await?;
                twilio_credentials(state, &mut handle, bought.user_id, bought.connection_id)
                    .await
                    .map_err(carrier_error)?
            };
            t.twilio.release_number(&creds, &bought.carrier_ref).await
        }
        Provider::Vonage => t.vonage.cancel_number(&bought.number, &bought.carrier_ref).await,
    };
    match released {
        Ok(()) => Ok(()),
        Err(CarrierError::Rejected(reason)) => {
            // Most often: already gone at the carrier.
            tracing::warn!(%reason, "the carrier refused to release a number; treating it as released");
            Ok(())
        }
        Err(err) => Err(carrier_error(err)),
    }
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
    if was_outbound_only && !row.outbound_only && row.telephony_provider == Provider::Twilio.as_str() {
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
                provider: Provider::parse(&row.telephony_provider).unwrap_or(Provider::Twilio),
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
        "telephony_provider": row.telephony_provider,
        "telephony_account_connection": null,
    })
}
