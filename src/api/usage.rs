//! `GET /v1/usage`: the caller's call minutes this month, against the operator's limit.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::routes::V1;
use crate::error::Result;
use crate::store::users;
use crate::AppState;

/// Self-hosted users are on no one's plan; an operator may still set a monthly limit.
pub const PLAN_TYPE: &str = "plan_unlimited";

pub fn router() -> V1 {
    V1::default().get("/v1/usage", get_usage)
}

async fn get_usage(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>> {
    let mut handle = state.store.read().await?;
    let limit = users::usage_limit(handle.conn(), caller.user_id).await?;
    let minutes = users::minutes_this_month(handle.conn(), caller.user_id).await?;
    Ok(Json(json!({
        "user_id": caller.user_id.to_string(),
        "plan_type": PLAN_TYPE,
        "monthly_usage_minutes": minutes,
        "monthly_usage_limit_minutes": limit,
    })))
}
