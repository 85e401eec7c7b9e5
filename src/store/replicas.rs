//! The `replicas` table: each server process's heartbeat on the shared database.

use chrono::{DateTime, Utc};

use super::{run, DbConn};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplicaRow {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub draining: bool,
}

/// Records that the process `id` is alive now (and whether it is draining).
pub async fn beat(
    c: DbConn<'_>,
    id: &str,
    started_at: DateTime<Utc>,
    now: DateTime<Utc>,
    draining: bool,
) -> sqlx::Result<()> {
    const SQL: &str = "INSERT INTO replicas (id, started_at, seen_at, draining) VALUES ($1, $2, $3, $4) \
                       ON CONFLICT (id) DO UPDATE SET seen_at = $3, draining = $4";
    run!(c, |c| sqlx::query(SQL).bind(id).bind(started_at).bind(now).bind(draining).execute(&mut *c).await.map(|_| ()))
}

/// The process `id` has stopped: it holds nothing any more.
pub async fn leave(c: DbConn<'_>, id: &str) -> sqlx::Result<()> {
    run!(c, |c| sqlx::query("DELETE FROM replicas WHERE id = $1").bind(id).execute(&mut *c).await.map(|_| ()))
}

/// The processes seen since `since`, oldest first.
pub async fn alive(c: DbConn<'_>, since: DateTime<Utc>) -> sqlx::Result<Vec<ReplicaRow>> {
    const SQL: &str =
        "SELECT id, started_at, seen_at, draining FROM replicas WHERE seen_at >= $1 ORDER BY started_at, id";
    run!(c, |c| sqlx::query_as(SQL).bind(since).fetch_all(&mut *c).await)
}

/// Forgets processes not seen since `before` (long gone: what they held was taken over).
pub async fn forget_gone(c: DbConn<'_>, before: DateTime<Utc>) -> sqlx::Result<u64> {
    run!(c, |c| sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
        .bind(before)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
}
