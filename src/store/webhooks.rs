//! The record of webhook delivery attempts.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{run, DbConn};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub id: Uuid,
    pub event_id: String,
    pub user_id: Uuid,
    pub call_id: Option<Uuid>,
    pub webhook_id: Option<Uuid>,
    pub event_type: String,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    /// delivered | retry | failed
    pub outcome: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, event_id, user_id, call_id, webhook_id, event_type, attempt, status_code, latency_ms, error, outcome, created_at";

pub async fn insert_attempt(c: DbConn<'_>, a: &Attempt) -> sqlx::Result<()> {
    let sql =
        format!("INSERT INTO webhook_attempts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)");
    run!(c, |c| sqlx::query(&sql)
        .bind(a.id)
        .bind(&a.event_id)
        .bind(a.user_id)
        .bind(a.call_id)
        .bind(a.webhook_id)
        .bind(&a.event_type)
        .bind(a.attempt)
        .bind(a.status_code)
        .bind(a.latency_ms)
        .bind(&a.error)
        .bind(&a.outcome)
        .bind(a.created_at)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// A user's attempts, oldest first.
pub async fn attempts_of_user(c: DbConn<'_>, user_id: Uuid) -> sqlx::Result<Vec<Attempt>> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_attempts WHERE user_id = $1 ORDER BY created_at, id");
    run!(c, |c| sqlx::query_as(&sql).bind(user_id).fetch_all(&mut *c).await)
}

/// Whether an attempt at delivering the event got a 2xx.
pub async fn delivered(c: DbConn<'_>, event_id: &str) -> sqlx::Result<bool> {
    const SQL: &str = "SELECT COUNT(*) FROM webhook_attempts WHERE event_id = $1 AND outcome = 'delivered'";
    let n: i64 = run!(c, |c| sqlx::query_scalar(SQL).bind(event_id).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}
