//! Users and their API keys.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{now, run, DbConn};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_name: String,
    pub display: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn count(c: DbConn<'_>) -> sqlx::Result<i64> {
    run!(c, |c| sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *c).await)
}

/// Creates a user unless one of that name exists; `None` when it did.
pub async fn create_if_absent(c: DbConn<'_>, id: Uuid, name: &str) -> sqlx::Result<Option<User>> {
    const SQL: &str = "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3) \
                       ON CONFLICT DO NOTHING RETURNING id, name, created_at";
    run!(c, |c| sqlx::query_as(SQL).bind(id).bind(name).bind(now()).fetch_optional(&mut *c).await)
}

pub async fn by_id(c: DbConn<'_>, id: Uuid) -> sqlx::Result<Option<User>> {
    const SQL: &str = "SELECT id, name, created_at FROM users WHERE id = $1";
    run!(c, |c| sqlx::query_as(SQL).bind(id).fetch_optional(&mut *c).await)
}

pub async fn by_name(c: DbConn<'_>, name: &str) -> sqlx::Result<Option<User>> {
    const SQL: &str = "SELECT id, name, created_at FROM users WHERE name = $1";
    run!(c, |c| sqlx::query_as(SQL).bind(name).fetch_optional(&mut *c).await)
}

/// The first user ever created: the one the server made on its first start.
pub async fn first(c: DbConn<'_>) -> sqlx::Result<Option<User>> {
    const SQL: &str = "SELECT id, name, created_at FROM users ORDER BY created_at, id LIMIT 1";
    run!(c, |c| sqlx::query_as(SQL).fetch_optional(&mut *c).await)
}

pub async fn list(c: DbConn<'_>) -> sqlx::Result<Vec<User>> {
    const SQL: &str = "SELECT id, name, created_at FROM users ORDER BY created_at, id";
    run!(c, |c| sqlx::query_as(SQL).fetch_all(&mut *c).await)
}

pub async fn insert_key(c: DbConn<'_>, user_id: Uuid, display: &str, hash: &[u8]) -> sqlx::Result<Uuid> {
    const SQL: &str = "INSERT INTO api_keys (id, user_id, display, key_hash, created_at) \
                       VALUES ($1, $2, $3, $4, $5)";
    let id = Uuid::now_v7();
    run!(c, |c| sqlx::query(SQL)
        .bind(id)
        .bind(user_id)
        .bind(display)
        .bind(hash)
        .bind(now())
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(id)
}

/// The user a live (not revoked) key belongs to.
pub async fn user_of_key(c: DbConn<'_>, hash: &[u8]) -> sqlx::Result<Option<Uuid>> {
    const SQL: &str = "SELECT user_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL";
    run!(c, |c| sqlx::query_scalar(SQL).bind(hash).fetch_optional(&mut *c).await)
}

pub async fn key_exists(c: DbConn<'_>, hash: &[u8]) -> sqlx::Result<bool> {
    const SQL: &str = "SELECT COUNT(*) FROM api_keys WHERE key_hash = $1";
    let n: i64 = run!(c, |c| sqlx::query_scalar(SQL).bind(hash).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}

pub async fn list_keys(c: DbConn<'_>) -> sqlx::Result<Vec<ApiKeyInfo>> {
    const SQL: &str = "SELECT k.id, k.user_id, u.name AS user_name, k.display, k.created_at, \
                       k.revoked_at FROM api_keys k JOIN users u ON u.id = k.user_id \
                       ORDER BY k.created_at, k.id";
    run!(c, |c| sqlx::query_as(SQL).fetch_all(&mut *c).await)
}

/// Revokes a key; false when there is no live key of that id.
pub async fn revoke_key(c: DbConn<'_>, id: Uuid) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
    let done = run!(c, |c| sqlx::query(SQL).bind(id).bind(now()).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done > 0)
}

/// Sets (or, with `None`, clears) the operator's monthly limit of a user's call minutes.
pub async fn set_usage_limit(c: DbConn<'_>, user_id: Uuid, minutes: Option<i64>) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE users SET monthly_usage_limit_minutes = $2 WHERE id = $1";
    let done =
        run!(c, |c| sqlx::query(SQL).bind(user_id).bind(minutes).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done > 0)
}

pub async fn usage_limit(c: DbConn<'_>, user_id: Uuid) -> sqlx::Result<Option<i64>> {
    const SQL: &str = "SELECT monthly_usage_limit_minutes FROM users WHERE id = $1";
    let limit: Option<Option<i64>> = run!(c, |c| sqlx::query_scalar(SQL).bind(user_id).fetch_optional(&mut *c).await)?;
    Ok(limit.flatten())
}

/// The user's call minutes in the current UTC calendar month: each finished call's duration,
/// rounded up to a whole minute.
pub async fn minutes_this_month(c: DbConn<'_>, user_id: Uuid) -> sqlx::Result<i64> {
    use chrono::{Datelike, TimeZone};
    let now = Utc::now();
    let month_start =
        Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().expect("the first of a month exists");
    super::calls::minutes_since(c, user_id, month_start).await
}

/// A user's webhook signing secrets, sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookSecrets {
    #[sqlx(rename = "webhook_secret")]
    pub current: Option<Vec<u8>>,
    #[sqlx(rename = "webhook_secret_previous")]
    pub previous: Option<Vec<u8>>,
    #[sqlx(rename = "webhook_secret_rotated_at")]
    pub rotated_at: Option<DateTime<Utc>>,
}

pub async fn webhook_secrets(c: DbConn<'_>, user_id: Uuid) -> sqlx::Result<Option<WebhookSecrets>> {
    const SQL: &str =
        "SELECT webhook_secret, webhook_secret_previous, webhook_secret_rotated_at FROM users WHERE id = $1";
    run!(c, |c| sqlx::query_as(SQL).bind(user_id).fetch_optional(&mut *c).await)
}

/// Sets the user's first signing secret, unless someone set one already.
pub async fn set_webhook_secret_if_absent(c: DbConn<'_>, user_id: Uuid, sealed: &[u8]) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE users SET webhook_secret = $2 WHERE id = $1 AND webhook_secret IS NULL";
    run!(c, |c| sqlx::query(SQL).bind(user_id).bind(sealed).execute(&mut *c).await.map(|_| ()))
}

/// Makes `sealed` the current secret and the current one the previous.
pub async fn rotate_webhook_secret(c: DbConn<'_>, user_id: Uuid, sealed: &[u8], at: DateTime<Utc>) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE users SET webhook_secret_previous = webhook_secret, webhook_secret = $2, \
        webhook_secret_rotated_at = $3 WHERE id = $1";
    run!(c, |c| sqlx::query(SQL).bind(user_id).bind(sealed).bind(at).execute(&mut *c).await.map(|_| ()))
}
