//! The `call_sessions` table: who runs a call's conversation, under which fencing number, and the
//! conversation as it stands.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{run, Backend, DbConn};

/// A call's session, as read to take it over.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SessionRow {
    pub call_id: Uuid,
    pub owner: Option<String>,
    pub generation: i64,
    pub state: Json<Value>,
    pub ended: bool,
    pub transcript_sent: bool,
}

const COLUMNS: &str = "call_id, owner, generation, state, ended, transcript_sent";

/// The call's session, locked for the rest of the transaction (the claim that follows is the
/// only one: SQLite's writer holds the whole database already).
pub async fn for_update(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<Option<SessionRow>> {
    let lock = if c.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM call_sessions WHERE call_id = $1{lock}");
    run!(c, |c| sqlx::query_as(&sql).bind(call_id).fetch_optional(&mut *c).await)
}

pub async fn get(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<Option<SessionRow>> {
    let sql = format!("SELECT {COLUMNS} FROM call_sessions WHERE call_id = $1");
    run!(c, |c| sqlx::query_as(&sql).bind(call_id).fetch_optional(&mut *c).await)
}

/// The call's first conversation: run by `owner`, generation 1.
/// The call's first conversation, run by `owner`; `false` (nothing written) when another process
/// started it first.
pub async fn insert(c: DbConn<'_>, call_id: Uuid, owner: &str, now: DateTime<Utc>) -> sqlx::Result<bool> {
    const SQL: &str =
        "INSERT INTO call_sessions (call_id, owner, generation, state, ended, transcript_sent, updated_at) \
                       VALUES ($1, $2, 1, $3, FALSE, FALSE, $4) ON CONFLICT (call_id) DO NOTHING";
    run!(c, |c| sqlx::query(SQL)
        .bind(call_id)
        .bind(owner)
        .bind(Json(Value::Null))
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|done| done.rows_affected() == 1))
}

/// `owner` runs the conversation from now on, under the next generation.
pub async fn take_over(c: DbConn<'_>, call_id: Uuid, owner: &str, now: DateTime<Utc>) -> sqlx::Result<i64> {
    const SQL: &str = "UPDATE call_sessions SET owner = $2, generation = generation + 1, updated_at = $3 \
                       WHERE call_id = $1 RETURNING generation";
    run!(c, |c| sqlx::query_scalar(SQL).bind(call_id).bind(owner).bind(now).fetch_one(&mut *c).await)
}

/// Keeps the conversation as it stands, if `owner` still runs it under `generation`; `false` when
/// another has taken it over (nothing is written then).
pub async fn keep(
    c: DbConn<'_>,
    call_id: Uuid,
    owner: &str,
    generation: i64,
    state: &Value,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE call_sessions SET state = $4, updated_at = $5 \
                       WHERE call_id = $1 AND owner = $2 AND generation = $3";
    run!(c, |c| sqlx::query(SQL)
        .bind(call_id)
        .bind(owner)
        .bind(generation)
        .bind(Json(state))
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Whether `owner` still runs the conversation under `generation`.
pub async fn holds(c: DbConn<'_>, call_id: Uuid, owner: &str, generation: i64) -> sqlx::Result<bool> {
    const SQL: &str = "SELECT COUNT(*) FROM call_sessions WHERE call_id = $1 AND owner = $2 AND generation = $3";
    let n: i64 =
        run!(c, |c| sqlx::query_scalar(SQL).bind(call_id).bind(owner).bind(generation).fetch_one(&mut *c).await)?;
    Ok(n == 1)
}

/// `owner` stops running the conversation (if it still does): over for good (`ended`), or left
/// for whoever takes the call over next.
pub async fn release(
    c: DbConn<'_>,
    call_id: Uuid,
    owner: &str,
    generation: i64,
    ended: bool,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE call_sessions SET owner = NULL, ended = (ended OR $4), updated_at = $5 \
                       WHERE call_id = $1 AND owner = $2 AND generation = $3";
    run!(c, |c| sqlx::query(SQL)
        .bind(call_id)
        .bind(owner)
        .bind(generation)
        .bind(ended)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Marks the call's `event_transcript` sent; `false` when it was already (it goes out once).
pub async fn claim_transcript(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<bool> {
    const SQL: &str =
        "UPDATE call_sessions SET transcript_sent = TRUE, ended = TRUE WHERE call_id = $1 AND NOT transcript_sent";
    run!(c, |c| sqlx::query(SQL).bind(call_id).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
}

/// Tells the other processes that `call_id`'s conversation is run under `generation` now (on
/// Postgres, delivered when the transaction commits; SQLite has no other process to tell).
pub async fn announce(c: DbConn<'_>, call_id: Uuid, generation: i64) -> sqlx::Result<()> {
    match c {
        super::DbConn::Pg(c) => sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{call_id}:{generation}"))
            .execute(&mut *c)
            .await
            .map(|_| ()),
        super::DbConn::Lite(_) => Ok(()),
    }
}

/// The Postgres channel takeovers are announced on.
pub const CHANNEL: &str = "vocode_sessions";
