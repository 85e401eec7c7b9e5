//! The `warm_transfers` table: each call's warm transfer, and the steering number leased to it
//! (see `migrations/*/0010_warm_transfers.sql`). Taking a lease is one insert, which the unique
//! number lets only one process make for a number, whatever the number of replicas.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{run, DbConn};

/// What a call got when it asked for a number of its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This number (digits) is the call's until it is given back.
    Leased(String),
    /// The call has a warm transfer already (under way, or handed over).
    AlreadyHeld,
    /// Every number of the pool is leased to another call.
    Exhausted,
}

/// A call's warm transfer, as any replica reads it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WarmRow {
    pub call_id: Uuid,
    /// The steering number leased (digits); `None` once given back.
    pub number: Option<String>,
    pub bot_leg: Option<String>,
    /// The replica that bound the bot leg's stream.
    pub bot_bound_by: Option<String>,
    pub bot_participant: Option<String>,
    pub conference_sid: Option<String>,
    pub person_joined: bool,
    pub person_on_hold: bool,
    pub third_party: Option<String>,
    pub third_party_news: Option<String>,
    pub third_party_answered: bool,
    pub bot_left: bool,
    /// The action's outcome (JSON), once it is over.
    pub outcome: Option<String>,
}

const COLUMNS: &str = "call_id, number, bot_leg, bot_bound_by, bot_participant, conference_sid, person_joined, \
                       person_on_hold, third_party, third_party_news, third_party_answered, bot_left, outcome";

/// Leases the first free number of `pool` (digits) to the call until `until`, and opens its warm
/// transfer. Leases that expired, or whose call has ended, are given back first (their holder
/// died without doing it).
pub async fn lease(
    c: DbConn<'_>,
    call_id: Uuid,
    pool: &[String],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<Lease> {
    const STALE: &str = "DELETE FROM warm_transfers WHERE expires_at < $1 \
                         OR call_id IN (SELECT id FROM calls WHERE status IN ('ended', 'error'))";
    const HELD: &str = "SELECT COUNT(*) FROM warm_transfers WHERE call_id = $1";
    const TAKE: &str = "INSERT INTO warm_transfers (call_id, number, leased_at, expires_at) \
                        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
    run!(c, |c| {
        sqlx::query(STALE).bind(now).execute(&mut *c).await?;
        let held: i64 = sqlx::query_scalar(HELD).bind(call_id).fetch_one(&mut *c).await?;
        if held > 0 {
            return Ok(Lease::AlreadyHeld);
        }
        for number in pool {
            let taken = sqlx::query(TAKE).bind(call_id).bind(number).bind(now).bind(until).execute(&mut *c).await?;
            if taken.rows_affected() == 1 {
                return Ok(Lease::Leased(number.clone()));
            }
        }
        Ok(Lease::Exhausted)
    })
}

/// The call a steering number (digits) is leased to now.
pub async fn holder(c: DbConn<'_>, number: &str, now: DateTime<Utc>) -> sqlx::Result<Option<Uuid>> {
    const SQL: &str = "SELECT call_id FROM warm_transfers WHERE number = $1 AND expires_at >= $2";
    run!(c, |c| sqlx::query_scalar(SQL).bind(number).bind(now).fetch_optional(&mut *c).await)
}

/// The call's warm transfer.
pub async fn get(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<Option<WarmRow>> {
    let sql = format!("SELECT {COLUMNS} FROM warm_transfers WHERE call_id = $1");
    run!(c, |c| sqlx::query_as(&sql).bind(call_id).fetch_optional(&mut *c).await)
}

/// The steering number's inbound call `bot_leg` is the bot's conference leg of the call its
/// number is leased to; that call's id, or `None` when the number is leased to nobody.
pub async fn bot_leg_answered(
    c: DbConn<'_>,
    number: &str,
    bot_leg: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<Uuid>> {
    const SQL: &str = "UPDATE warm_transfers SET bot_leg = $2 WHERE number = $1 AND expires_at >= $3 RETURNING call_id";
    run!(c, |c| sqlx::query_scalar(SQL).bind(number).bind(bot_leg).bind(now).fetch_optional(&mut *c).await)
}

/// Whether the carrier's call `bot_leg` is the bot's conference leg of `call_id`, still in it.
pub async fn is_bot_leg(c: DbConn<'_>, call_id: Uuid, bot_leg: &str) -> sqlx::Result<bool> {
    const SQL: &str = "SELECT COUNT(*) FROM warm_transfers WHERE call_id = $1 AND bot_leg = $2 AND NOT bot_left";
    let n: i64 = run!(c, |c| sqlx::query_scalar(SQL).bind(call_id).bind(bot_leg).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}

/// The replica `by` bound the bot leg's stream.
pub async fn bot_bound(c: DbConn<'_>, call_id: Uuid, by: &str) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE warm_transfers SET bot_bound_by = $2 WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).bind(by).execute(&mut *c).await.map(|_| ()))
}

/// The conference's call to the steering number (the bot's participant).
pub async fn bot_participant(
    c: DbConn<'_>,
    call_id: Uuid,
    participant: &str,
    conference_sid: Option<&str>,
) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE warm_transfers SET bot_participant = $2, \
                       conference_sid = COALESCE($3, conference_sid) WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL)
        .bind(call_id)
        .bind(participant)
        .bind(conference_sid)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// The person's call joined the conference `conference_sid`.
pub async fn person_joined(c: DbConn<'_>, call_id: Uuid, conference_sid: &str) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE warm_transfers SET person_joined = TRUE, conference_sid = $2 WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).bind(conference_sid).execute(&mut *c).await.map(|_| ()))
}

pub async fn on_hold(c: DbConn<'_>, call_id: Uuid, on_hold: bool) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE warm_transfers SET person_on_hold = $2 WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).bind(on_hold).execute(&mut *c).await.map(|_| ()))
}

/// The carrier's id of the third party's leg, once it said it (its first news may come first).
pub async fn third_party_dialled(c: DbConn<'_>, call_id: Uuid, leg: &str) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE warm_transfers SET third_party = COALESCE(third_party, $2) WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).bind(leg).execute(&mut *c).await.map(|_| ()))
}

/// News of the third party's leg `leg`: `answered`, or the carrier's word for why not; `false`
/// when the call's third party is another leg (or it has no warm transfer).
pub async fn third_party_news(c: DbConn<'_>, call_id: Uuid, leg: &str, news: &str) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE warm_transfers SET third_party = COALESCE(third_party, $2), third_party_news = $3, \
                       third_party_answered = (third_party_answered OR $3 = 'answered') \
                       WHERE call_id = $1 AND (third_party IS NULL OR third_party = $2)";
    run!(c, |c| sqlx::query(SQL)
        .bind(call_id)
        .bind(leg)
        .bind(news)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// The bot left the conference: its number goes back to the pool. The transfer is forgotten
/// unless the person stays in the conference with the third party (whose leaving ends the call).
pub async fn bot_left(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<()> {
    const FORGET: &str = "DELETE FROM warm_transfers WHERE call_id = $1 AND NOT third_party_answered";
    const LEFT: &str = "UPDATE warm_transfers SET number = NULL, bot_left = TRUE WHERE call_id = $1";
    run!(c, |c| {
        sqlx::query(FORGET).bind(call_id).execute(&mut *c).await?;
        sqlx::query(LEFT).bind(call_id).execute(&mut *c).await.map(|_| ())
    })
}

/// The action's outcome (JSON), for a conversation that moved meanwhile.
pub async fn outcome(c: DbConn<'_>, call_id: Uuid, outcome: &str) -> sqlx::Result<()> {
    const SQL: &str = "UPDATE warm_transfers SET outcome = $2 WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).bind(outcome).execute(&mut *c).await.map(|_| ()))
}

/// Forgets the call's warm transfer, and gives its number back; `false` when it had none.
pub async fn release(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<bool> {
    const SQL: &str = "DELETE FROM warm_transfers WHERE call_id = $1";
    run!(c, |c| sqlx::query(SQL).bind(call_id).execute(&mut *c).await.map(|r| r.rows_affected() > 0))
}
