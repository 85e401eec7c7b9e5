//! Phone numbers: a user's numbers, each active on one user's account at most.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::records::Sort;
use super::{run, DbConn};
use crate::domain::call::Provider;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NumberRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub number: String,
    pub active: bool,
    pub label: String,
    pub outbound_only: bool,
    pub example_context: Option<Json<Value>>,
    #[sqlx(try_from = "String")]
    pub telephony_provider: Provider,
    pub telephony_account_connection_id: Option<Uuid>,
    pub inbound_agent_id: Option<Uuid>,
    pub bought: bool,
    pub carrier_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, user_id, number, active, label, outbound_only, example_context, \
    telephony_provider, telephony_account_connection_id, inbound_agent_id, bought, carrier_ref, \
    created_at, updated_at";

/// The user's row for a number (active or cancelled).
pub async fn get(c: DbConn<'_>, user_id: Uuid, number: &str) -> sqlx::Result<Option<NumberRow>> {
    let sql = format!("SELECT {COLUMNS} FROM phone_numbers WHERE user_id = $1 AND number = $2");
    run!(c, |c| sqlx::query_as(&sql).bind(user_id).bind(number).fetch_optional(&mut *c).await)
}

/// Like [`get`], locking the row on Postgres until the transaction ends.
pub async fn get_for_update(c: DbConn<'_>, user_id: Uuid, number: &str) -> sqlx::Result<Option<NumberRow>> {
    let lock = if c.backend() == super::Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM phone_numbers WHERE user_id = $1 AND number = $2{lock}");
    run!(c, |c| sqlx::query_as(&sql).bind(user_id).bind(number).fetch_optional(&mut *c).await)
}

/// The active row of a number, whoever holds it.
pub async fn active_holder(c: DbConn<'_>, number: &str) -> sqlx::Result<Option<NumberRow>> {
    let sql = format!("SELECT {COLUMNS} FROM phone_numbers WHERE number = $1 AND active = TRUE");
    run!(c, |c| sqlx::query_as(&sql).bind(number).fetch_optional(&mut *c).await)
}

pub async fn list(c: DbConn<'_>, user_id: Uuid, sort: Sort, limit: i64, offset: i64) -> sqlx::Result<Vec<NumberRow>> {
    let dir = if sort.desc { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM phone_numbers WHERE user_id = $1 ORDER BY {} {dir}, id {dir} LIMIT $2 OFFSET $3",
        sort.column
    );
    run!(c, |c| sqlx::query_as(&sql).bind(user_id).bind(limit).bind(offset).fetch_all(&mut *c).await)
}

pub async fn insert(c: DbConn<'_>, n: &NumberRow) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO phone_numbers ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    );
    run!(c, |c| sqlx::query(&sql)
        .bind(n.id)
        .bind(n.user_id)
        .bind(&n.number)
        .bind(n.active)
        .bind(&n.label)
        .bind(n.outbound_only)
        .bind(&n.example_context)
        .bind(n.telephony_provider.as_str())
        .bind(n.telephony_account_connection_id)
        .bind(n.inbound_agent_id)
        .bind(n.bought)
        .bind(&n.carrier_ref)
        .bind(n.created_at)
        .bind(n.updated_at)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// Writes every field of the user's row.
pub async fn update(c: DbConn<'_>, n: &NumberRow) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE phone_numbers SET active = $3, label = $4, outbound_only = $5, \
        example_context = $6, telephony_provider = $7, telephony_account_connection_id = $8, \
        inbound_agent_id = $9, bought = $10, carrier_ref = $11, updated_at = $12 \
        WHERE id = $1 AND user_id = $2";
    run!(c, |c| sqlx::query(SQL)
        .bind(n.id)
        .bind(n.user_id)
        .bind(n.active)
        .bind(&n.label)
        .bind(n.outbound_only)
        .bind(&n.example_context)
        .bind(n.telephony_provider.as_str())
        .bind(n.telephony_account_connection_id)
        .bind(n.inbound_agent_id)
        .bind(n.bought)
        .bind(&n.carrier_ref)
        .bind(n.updated_at)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}
