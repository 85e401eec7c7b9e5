//! Numbers that come from a carrier: linked from a Twilio account the user connected, or bought
//! (and, on failure or cancellation, given back).

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct LinkRequest {
    phone_number: String,
    telephony_account_connection: Uuid,
    outbound_only: bool,
    inbound_agent: Option<Value>,
}

pub(super) async fn link_number(
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
    if connection.kind != TWILIO_ACCOUNT_CONNECTION {
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
        telephony_provider: Provider::Twilio,
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
pub(super) async fn point_number_here(
    state: &AppState,
    user_id: Uuid,
    connection_id: Uuid,
    number: &PhoneNumber,
    takes_calls: bool,
) -> Result<String> {
    let carrier =
        state.telephony.carrier(user_id, Provider::Twilio, Some(connection_id)).await.map_err(carrier_error)?;
    carrier
        .point_number_here(number, takes_calls)
        .await
        .map_err(carrier_error)?
        .ok_or_else(|| ApiError::BadRequest(format!("{number} is not a number of this Twilio account")))
}

#[derive(Debug, Deserialize)]
pub(super) struct BuyRequest {
    area_code: Option<String>,
    telephony_provider: String,
    telephony_account_connection: Option<Uuid>,
    inbound_agent: Option<Value>,
}

/// Buys a number from the carrier (through the caller's Twilio connection, or the server's own
/// account), pointed at this server and owned by the caller.
pub(super) async fn buy_number(
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
                Some(r) if r.kind == TWILIO_ACCOUNT_CONNECTION => Some(id),
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
    let carrier = state.telephony.carrier(caller.user_id, provider, connection_id).await.map_err(carrier_error)?;
    let (number, carrier_ref) = carrier.buy_number(area_code).await.map_err(carrier_error)?;
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
pub(super) struct Bought {
    pub(super) user_id: Uuid,
    pub(super) provider: Provider,
    pub(super) connection_id: Option<Uuid>,
    pub(super) number: PhoneNumber,
    /// Twilio's id of the number, or Vonage's country of it.
    pub(super) carrier_ref: String,
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
        telephony_provider: bought.provider,
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
pub(super) async fn release(state: &AppState, bought: &Bought) -> Result<()> {
    let carrier =
        state.telephony.carrier(bought.user_id, bought.provider, bought.connection_id).await.map_err(carrier_error)?;
    let released = carrier.release_number(&bought.number, &bought.carrier_ref).await;
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
