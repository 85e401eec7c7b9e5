//! The `steering_leases` table: which call each steering number in use is leased to (see
//! `migrations/*/0010_steering_leases.sql`). Taking a lease is one insert, which the primary key
//! lets only one process make for a number, whatever the number of replicas.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{run, DbConn};

/// What a call got when it asked for a number of its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This number (digits) is the call's until it is given back.
    Leased(String),
    /// The call holds a number already (its warm transfer is under way).
    AlreadyHeld(String),
    /// Every number of the pool is leased to another call.
    Exhausted,
}

/// Leases the first free number of `pool` (digits) to the call until `until`. Leases that expired,
/// or whose call has ended, are given back first (their holder died without doing it).
pub async fn lease(
    c: DbConn<'_>,
    call_id: Uuid,
    pool: &[String],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Lease> {
    const STALE: &str = "DELETE FROM steering_leases WHERE expires_at < $1 \
                         OR call_id IN (SELECT id FROM calls WHERE status IN ('ended', 'error'))";
    const HELD: &str = "SELECT number FROM steering_leases WHERE call_id = $1";
    const TAKE: &str = "INSERT INTO steering_leases (number, call_id, bot_leg, leased_at, expires_at) \
                        VALUES ($1, $2, NULL, $3, $4) ON CONFLICT DO NOTHING";
    run!(c, |c| {
        sqlx::query(STALE).bind(now).execute(&mut *c).await?;
        let held: Option<String> = sqlx::query_scalar(HELD).bind(call_id).fetch_optional(&mut *c).await?;
        if let Some(number) = held {
            return Ok(Lease::AlreadyHeld(number));
        }
        for number in pool {
            let taken = sqlx::query(TAKE).bind(number).bind(call_id).bind(now).bind(until).execute(&mut *c).await?;
            if taken.rows_affected() == 1 {
                return Ok(Lease::Leased(number.clone()));
            }
        }
        Ok(Lease::Exhausted)
    })
}

/// The call a steering number (digits) is leased to now.
pub async fn holder(c: DbConn<'_>, number: &str, now: DateTime<Utc>) -> sqlx::Result<Option<Uuid>> {
    const SQL: &str = "SELECT call_id FROM steering_leases WHERE number = $1 AND expires_at >= $2";
    run!(c, |c| sqlx::query_scalar(SQL).bind(number).bind(now).fetch_optional(&mut *c).await)
}

/// The steering number's inbound call `bot_leg` is the bot's conference leg of the call its
/// number is leased to; that call's id, or `None` when the number is leased to nobody.
pub async fn bot_leg_answered(
    c: DbConn<'_>,
    number: &str,
    bot_leg: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Uuid>> {
    const SQL: &str =
        "UPDATE steering_leases SET bot_leg = $2 WHERE number = $1 AND expires_at >= $3 RETURNING call_id";
    run!(c, |c| sqlx::query_scalar(SQL).bind(number).bind(bot_leg).bind(now).fetch_optional(&mut *c).await)
}

/// Whether the carrier's call `bot_leg` is the bot's conference leg of `call_id`.
pub async fn is_bot_leg(c: DbConn<'_>, call_id: Uuid, bot_leg: &str) -> sqlx::Result<bool> {
    const SQL: &str = "SELECT COUNT(*) FROM steering_leases WHERE call_id = $1 AND bot_leg = $2";
    let n: i64 = run!(c, |c| sqlx::query_scalar(SQL).bind(call_id).bind(bot_leg).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}

/// Gives the call's number back to its pool; `false` when it held none.
pub async fn release(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<bool> {
    const SQL: &str = "DELETE FROM steering_leases WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).execute(&mut *c).await.map(|r| r.rows_affected() > 0))
}
