//! Documents of the resources that share one table layout (prompts, voices, webhooks, vector
//! databases, account connections, actions, prompt templates): columns for what lists sort and
//! filter by, the validated document as JSON, and its secrets sealed.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{run, Backend, DbConn};
pub use crate::domain::documents::Table;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Record {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The document's `type` (for discriminated resources) or the resource's name.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub body: Json<Value>,
    pub sealed: Option<Vec<u8>>,
}

/// A sort order a list accepts; the column names come from a fixed allow-list, never from input.
#[derive(Debug, Clone, Copy)]
pub struct Sort {
    pub column: &'static str,
    pub desc: bool,
}

/// How many rows are counted exactly before `total` becomes an estimate.
pub const EXACT_COUNT_LIMIT: i64 = 1_000;

const COLUMNS: &str = "id, user_id, kind, created_at, updated_at, body, sealed";

pub async fn get(c: DbConn<'_>, table: Table, user_id: Uuid, id: Uuid) -> sqlx::Result<Option<Record>> {
    get_inner(c, table, user_id, id, false).await
}

/// Reads a record and, on Postgres, locks it until the transaction ends, so that concurrent
/// read-modify-write updates of one record queue instead of losing each other's changes. (SQLite
/// has one writer at a time already.)
pub async fn get_for_update(c: DbConn<'_>, table: Table, user_id: Uuid, id: Uuid) -> sqlx::Result<Option<Record>> {
    get_inner(c, table, user_id, id, true).await
}

async fn get_inner(c: DbConn<'_>, table: Table, user_id: Uuid, id: Uuid, lock: bool) -> sqlx::Result<Option<Record>> {
    let lock = if lock && c.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM {} WHERE id = $1 AND user_id = $2{lock}", table.name());
    run!(c, |c| sqlx::query_as(&sql).bind(id).bind(user_id).fetch_optional(&mut *c).await)
}

/// Several records of one user by id, in no particular order; missing ids are simply absent.
pub async fn get_many(c: DbConn<'_>, table: Table, user_id: Uuid, ids: &[Uuid]) -> sqlx::Result<Vec<Record>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql =
        format!("SELECT {COLUMNS} FROM {} WHERE user_id = $1 AND id IN ({})", table.name(), placeholders.join(", "));
    run!(c, |c| {
        let mut query = sqlx::query_as(&sql).bind(user_id);
        for id in ids {
            query = query.bind(*id);
        }
        query.fetch_all(&mut *c).await
    })
}

/// One page of a user's records.
pub async fn list(
    c: DbConn<'_>,
    table: Table,
    user_id: Uuid,
    sort: Sort,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<Record>> {
    let dir = if sort.desc { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM {} WHERE user_id = $1 ORDER BY {} {dir}, id {dir} LIMIT $2 OFFSET $3",
        table.name(),
        sort.column
    );
    run!(c, |c| sqlx::query_as(&sql).bind(user_id).bind(limit).bind(offset).fetch_all(&mut *c).await)
}

/// How many records a user has, and whether that number is an estimate.
pub async fn count(c: DbConn<'_>, table: Table, user_id: Uuid) -> sqlx::Result<(i64, bool)> {
    count_rows(c, table.name(), user_id).await
}

/// Counts a user's rows of `table` exactly up to [`EXACT_COUNT_LIMIT`]; past that, Postgres gives
/// the planner's estimate (cheap at any size) and SQLite counts them all.
pub async fn count_rows(c: DbConn<'_>, table: &str, user_id: Uuid) -> sqlx::Result<(i64, bool)> {
    match c {
        DbConn::Pg(c) => {
            let capped = format!("SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE user_id = $1 LIMIT $2) AS capped");
            let n: i64 =
                sqlx::query_scalar(&capped).bind(user_id).bind(EXACT_COUNT_LIMIT + 1).fetch_one(&mut *c).await?;
            if n <= EXACT_COUNT_LIMIT {
                return Ok((n, false));
            }
            // The id is a parsed UUID, so inlining it is safe; EXPLAIN takes no parameters.
            let explain = format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {table} WHERE user_id = '{user_id}'::uuid");
            let plan: Json<Value> = sqlx::query_scalar(&explain).fetch_one(&mut *c).await?;
            let estimate = plan.0[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64;
            Ok((estimate.max(n), true))
        }
        DbConn::Lite(c) => {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1");
            let n: i64 = sqlx::query_scalar(&sql).bind(user_id).fetch_one(&mut *c).await?;
            Ok((n, false))
        }
    }
}

pub async fn insert(c: DbConn<'_>, table: Table, r: &Record) -> sqlx::Result<()> {
    let sql = format!("INSERT INTO {} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)", table.name());
    run!(c, |c| sqlx::query(&sql)
        .bind(r.id)
        .bind(r.user_id)
        .bind(&r.kind)
        .bind(r.created_at)
        .bind(r.updated_at)
        .bind(&r.body)
        .bind(&r.sealed)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Replaces a record's document; false when the user has no such record.
pub async fn update(c: DbConn<'_>, table: Table, r: &Record) -> sqlx::Result<bool> {
    let sql = format!(
        "UPDATE {} SET kind = $3, updated_at = $4, body = $5, sealed = $6 \
         WHERE id = $1 AND user_id = $2",
        table.name()
    );
    let done = run!(c, |c| sqlx::query(&sql)
        .bind(r.id)
        .bind(r.user_id)
        .bind(&r.kind)
        .bind(r.updated_at)
        .bind(&r.body)
        .bind(&r.sealed)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(done > 0)
}
