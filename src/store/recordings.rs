//! The `recording_segments` table: the segments of each call's recording made on this server,
//! numbered in the order they were written, and when each began (see
//! `migrations/*/0009_recording_segments.sql`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{run, DbConn};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SegmentRow {
    pub segment: i64,
    pub started_at: DateTime<Utc>,
}

/// Numbers a new segment of the call's recording, which began at `started_at`: one more than
/// the call's last. Two processes numbering at once on Postgres collide on the primary key, and
/// the one that lost tries again.
pub async fn add_segment(c: DbConn<'_>, call_id: Uuid, started_at: DateTime<Utc>) -> sqlx::Result<i64> {
    const SQL: &str = "INSERT INTO recording_segments (call_id, segment, started_at) \
        SELECT $1, COALESCE(MAX(segment), 0) + 1, $2 FROM recording_segments WHERE call_id = $1 \
        RETURNING segment";
    run!(c, |c| sqlx::query_scalar(SQL).bind(call_id).bind(started_at).fetch_one(&mut *c).await)
}

/// The call's segments, in the order they were written.
pub async fn segments(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<Vec<SegmentRow>> {
    const SQL: &str = "SELECT segment, started_at FROM recording_segments WHERE call_id = $1 ORDER BY segment";
    run!(c, |c| sqlx::query_as(SQL).bind(call_id).fetch_all(&mut *c).await)
}
