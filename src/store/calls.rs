//! Calls, and the idempotency keys of `calls/create`.
//!
//! A call's state changes by compare-and-set on its `version`: whichever process (or replica)
//! applies news to a call, no change is lost to a concurrent one.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use std::str::FromStr;

use super::records::Sort;
use super::{run, DbConn};
use crate::domain::call::{CallState, CallStatus, Direction, Provider};

/// A call as stored: its state in the domain's types (the state machine's part in `state`).
#[derive(Debug, Clone)]
pub struct CallRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub direction: Direction,
    pub state: CallState,
    pub do_not_call_result: Option<bool>,
    pub transcript: Option<String>,
    pub telephony_provider: Provider,
    pub to_number: String,
    pub from_number: String,
    pub agent_phone_number: String,
    pub agent_id: Uuid,
    pub telephony_account_connection_id: Option<Uuid>,
    pub hipaa_compliant: bool,
    pub run_do_not_call_detection: Option<bool>,
    pub context: Option<Json<Value>>,
    pub telephony_params: Option<Json<Value>>,
    pub record: bool,
    pub recording_url: Option<String>,
    pub last_carrier_event_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The row as the database holds it; read through [`CallRow`]'s conversion, which refuses a value
/// no enum of the domain knows rather than passing it on.
#[derive(sqlx::FromRow)]
struct StoredCall {
    id: Uuid,
    user_id: Uuid,
    direction: String,
    status: String,
    stage: String,
    stage_outcome: Option<String>,
    error_message: Option<String>,
    human_detection_result: Option<String>,
    do_not_call_result: Option<bool>,
    transcript: Option<String>,
    telephony_provider: String,
    telephony_id: Option<String>,
    carrier_status: Option<String>,
    hangup: Option<String>,
    to_number: String,
    from_number: String,
    agent_phone_number: String,
    agent_id: Uuid,
    telephony_account_connection_id: Option<Uuid>,
    hipaa_compliant: bool,
    on_no_human_answer: Option<String>,
    run_do_not_call_detection: Option<bool>,
    context: Option<Json<Value>>,
    telephony_params: Option<Json<Value>>,
    record: bool,
    recording_url: Option<String>,
    start_time: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    duration_seconds: Option<i64>,
    last_carrier_event_at: Option<DateTime<Utc>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn parsed<T: FromStr<Err = String>>(value: &str) -> sqlx::Result<T> {
    value.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))
}

fn parsed_opt<T: FromStr<Err = String>>(value: Option<&str>) -> sqlx::Result<Option<T>> {
    value.map(parsed).transpose()
}

impl TryFrom<StoredCall> for CallRow {
    type Error = sqlx::Error;

    fn try_from(s: StoredCall) -> sqlx::Result<CallRow> {
        Ok(CallRow {
            id: s.id,
            user_id: s.user_id,
            direction: parsed(&s.direction)?,
            state: CallState {
                status: parsed(&s.status)?,
                stage: parsed(&s.stage)?,
                stage_outcome: parsed_opt(s.stage_outcome.as_deref())?,
                human_detection_result: parsed_opt(s.human_detection_result.as_deref())?,
                telephony_id: s.telephony_id,
                carrier_status: s.carrier_status,
                error_message: s.error_message,
                hangup: parsed_opt(s.hangup.as_deref())?,
                on_no_human_answer: parsed_opt(s.on_no_human_answer.as_deref())?,
                start_time: s.start_time,
                answered_at: s.answered_at,
                end_time: s.end_time,
                duration_seconds: s.duration_seconds,
            },
            do_not_call_result: s.do_not_call_result,
            transcript: s.transcript,
            telephony_provider: parsed(&s.telephony_provider)?,
            to_number: s.to_number,
            from_number: s.from_number,
            agent_phone_number: s.agent_phone_number,
            agent_id: s.agent_id,
            telephony_account_connection_id: s.telephony_account_connection_id,
            hipaa_compliant: s.hipaa_compliant,
            run_do_not_call_detection: s.run_do_not_call_detection,
            context: s.context,
            telephony_params: s.telephony_params,
            record: s.record,
            recording_url: s.recording_url,
            last_carrier_event_at: s.last_carrier_event_at,
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
}

fn one(found: Option<StoredCall>) -> sqlx::Result<Option<CallRow>> {
    found.map(CallRow::try_from).transpose()
}

fn all(found: Vec<StoredCall>) -> sqlx::Result<Vec<CallRow>> {
    found.into_iter().map(CallRow::try_from).collect()
}

const COLUMNS: &str = "id, user_id, direction, status, stage, stage_outcome, error_message, \
    human_detection_result, do_not_call_result, transcript, telephony_provider, telephony_id, \
    carrier_status, hangup, to_number, from_number, agent_phone_number, agent_id, \
    telephony_account_connection_id, hipaa_compliant, on_no_human_answer, run_do_not_call_detection, \
    context, telephony_params, record, recording_url, start_time, answered_at, end_time, \
    duration_seconds, last_carrier_event_at, version, created_at, updated_at";

pub async fn insert(c: DbConn<'_>, r: &CallRow) -> sqlx::Result<()> {
    let placeholders: Vec<String> = (1..=34).map(|i| format!("${i}")).collect();
    let sql = format!("INSERT INTO calls ({COLUMNS}) VALUES ({})", placeholders.join(", "));
    let st = &r.state;
    run!(c, |c| sqlx::query(&sql)
        .bind(r.id)
        .bind(r.user_id)
        .bind(r.direction.as_str())
        .bind(st.status.as_str())
        .bind(st.stage.as_str())
        .bind(st.stage_outcome.map(|o| o.as_str()))
        .bind(&st.error_message)
        .bind(st.human_detection_result.map(|h| h.as_str()))
        .bind(r.do_not_call_result)
        .bind(&r.transcript)
        .bind(r.telephony_provider.as_str())
        .bind(&st.telephony_id)
        .bind(&st.carrier_status)
        .bind(st.hangup.map(|h| h.as_str()))
        .bind(&r.to_number)
        .bind(&r.from_number)
        .bind(&r.agent_phone_number)
        .bind(r.agent_id)
        .bind(r.telephony_account_connection_id)
        .bind(r.hipaa_compliant)
        .bind(st.on_no_human_answer.map(|o| o.as_str()))
        .bind(r.run_do_not_call_detection)
        .bind(&r.context)
        .bind(&r.telephony_params)
        .bind(r.record)
        .bind(&r.recording_url)
        .bind(st.start_time)
        .bind(st.answered_at)
        .bind(st.end_time)
        .bind(st.duration_seconds)
        .bind(r.last_carrier_event_at)
        .bind(r.version)
        .bind(r.created_at)
        .bind(r.updated_at)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// A user's call.
pub async fn get(c: DbConn<'_>, user_id: Uuid, id: Uuid) -> sqlx::Result<Option<CallRow>> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1 AND user_id = $2");
    one(run!(c, |c| sqlx::query_as(&sql).bind(id).bind(user_id).fetch_optional(&mut *c).await)?)
}

/// A call by id alone, for the server's own work (callbacks, jobs): never for a user's request.
pub async fn by_id(c: DbConn<'_>, id: Uuid) -> sqlx::Result<Option<CallRow>> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1");
    one(run!(c, |c| sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)?)
}

/// A call by the carrier's id of it.
pub async fn by_telephony_id(c: DbConn<'_>, provider: Provider, telephony_id: &str) -> sqlx::Result<Option<CallRow>> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE telephony_provider = $1 AND telephony_id = $2");
    one(run!(c, |c| sqlx::query_as(&sql).bind(provider.as_str()).bind(telephony_id).fetch_optional(&mut *c).await)?)
}

pub async fn list(c: DbConn<'_>, user_id: Uuid, sort: Sort, limit: i64, offset: i64) -> sqlx::Result<Vec<CallRow>> {
    let dir = if sort.desc { "DESC" } else { "ASC" };
    // Calls not yet started sort as the oldest (or, descending, the newest) by start time.
    let nulls = match (sort.column, sort.desc) {
        ("start_time" | "end_time", false) => " NULLS FIRST",
        ("start_time" | "end_time", true) => " NULLS LAST",
        _ => "",
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE user_id = $1 ORDER BY {} {dir}{nulls}, id {dir} LIMIT $2 OFFSET $3",
        sort.column
    );
    all(run!(c, |c| sqlx::query_as(&sql).bind(user_id).bind(limit).bind(offset).fetch_all(&mut *c).await)?)
}

/// Writes a call's state if nobody changed the call since `expected_version` was read; false
/// when somebody did (read it again and retry).
pub async fn update_if_version(c: DbConn<'_>, r: &CallRow, expected_version: i64) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE calls SET status = $3, stage = $4, stage_outcome = $5, error_message = $6, \
        human_detection_result = $7, telephony_id = $8, carrier_status = $9, hangup = $10, \
        recording_url = $11, start_time = $12, answered_at = $13, end_time = $14, duration_seconds = $15, \
        last_carrier_event_at = $16, version = $17, updated_at = $18 \
        WHERE id = $1 AND version = $2";
    let st = &r.state;
    let done = run!(c, |c| sqlx::query(SQL)
        .bind(r.id)
        .bind(expected_version)
        .bind(st.status.as_str())
        .bind(st.stage.as_str())
        .bind(st.stage_outcome.map(|o| o.as_str()))
        .bind(&st.error_message)
        .bind(st.human_detection_result.map(|h| h.as_str()))
        .bind(&st.telephony_id)
        .bind(&st.carrier_status)
        .bind(st.hangup.map(|h| h.as_str()))
        .bind(&r.recording_url)
        .bind(st.start_time)
        .bind(st.answered_at)
        .bind(st.end_time)
        .bind(st.duration_seconds)
        .bind(r.last_carrier_event_at)
        .bind(r.version)
        .bind(r.updated_at)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(done > 0)
}

/// Calls in progress that have had no news from their carrier since `before`.
pub async fn stale(c: DbConn<'_>, before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<CallRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE status = '{}' AND last_carrier_event_at < $1 \
         ORDER BY last_carrier_event_at LIMIT $2",
        CallStatus::InProgress
    );
    all(run!(c, |c| sqlx::query_as(&sql).bind(before).bind(limit).fetch_all(&mut *c).await)?)
}

/// Calls in progress whose conversation's owner (in `call_sessions`) is a process not seen since
/// `alive_since` — crashed, or stopped without handing the call over — and that have had no news
/// from their carrier since `before`.
pub async fn owner_gone(
    c: DbConn<'_>,
    alive_since: DateTime<Utc>,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<CallRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE status = '{}' AND last_carrier_event_at < $1 \
         AND EXISTS (SELECT 1 FROM call_sessions s WHERE s.call_id = calls.id AND s.owner IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = s.owner AND r.seen_at >= $2)) \
         ORDER BY last_carrier_event_at LIMIT $3",
        CallStatus::InProgress
    );
    all(run!(c, |c| sqlx::query_as(&sql).bind(before).bind(alive_since).bind(limit).fetch_all(&mut *c).await)?)
}

/// Calls in progress whose conversation nobody runs — it ended, or none was ever recorded — that
/// have had no news from their carrier since `before`.
pub async fn unowned(c: DbConn<'_>, before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<CallRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE status = '{}' AND last_carrier_event_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM call_sessions s WHERE s.call_id = calls.id AND s.owner IS NOT NULL) \
         ORDER BY last_carrier_event_at LIMIT $2",
        CallStatus::InProgress
    );
    all(run!(c, |c| sqlx::query_as(&sql).bind(before).bind(limit).fetch_all(&mut *c).await)?)
}

/// Adds lines to a call's transcript (the state machine's compare-and-set does not cover it: the
/// conversation is its only writer).
pub async fn append_transcript(c: DbConn<'_>, id: Uuid, lines: &str, at: DateTime<Utc>) -> sqlx::Result<()> {
    run!(c, |c| sqlx::query(
        "UPDATE calls SET transcript = COALESCE(transcript, '') || $2, updated_at = $3 WHERE id = $1"
    )
    .bind(id)
    .bind(lines)
    .bind(at)
    .execute(&mut *c)
    .await
    .map(|_| ()))
}

/// Keeps a call's do-not-call detection result (outside the state machine's compare-and-set, as
/// the transcript is: the detection job is its only writer, and no state change writes it).
pub async fn set_do_not_call_result(c: DbConn<'_>, id: Uuid, result: bool, at: DateTime<Utc>) -> sqlx::Result<()> {
    run!(c, |c| sqlx::query("UPDATE calls SET do_not_call_result = $2, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(result)
        .bind(at)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// Marks that the carrier was asked about a call, so that it is not asked again at once.
pub async fn touch(c: DbConn<'_>, id: Uuid, at: DateTime<Utc>) -> sqlx::Result<()> {
    run!(c, |c| sqlx::query("UPDATE calls SET last_carrier_event_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// The user's call seconds that ended at or after `since`, each rounded up to a minute.
pub async fn minutes_since(c: DbConn<'_>, user_id: Uuid, since: DateTime<Utc>) -> sqlx::Result<i64> {
    // (CAST: a SUM of BIGINT is NUMERIC on Postgres.)
    const SQL: &str = "SELECT CAST(COALESCE(SUM((duration_seconds + 59) / 60), 0) AS BIGINT) FROM calls \
        WHERE user_id = $1 AND end_time >= $2 AND duration_seconds IS NOT NULL";
    run!(c, |c| sqlx::query_scalar(SQL).bind(user_id).bind(since).fetch_one(&mut *c).await)
}

#[derive(Debug)]
pub struct IdempotencyRecord {
    pub request_hash: Vec<u8>,
    pub call_id: Uuid,
}

/// Claims an idempotency key for a call; when the key was claimed before, what it was claimed for.
pub async fn claim_idempotency_key(
    c: DbConn<'_>,
    user_id: Uuid,
    key: &str,
    request_hash: &[u8],
    call_id: Uuid,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<IdempotencyRecord>> {
    const INSERT: &str = "INSERT INTO idempotency_keys (user_id, key, request_hash, call_id, created_at) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
    const SELECT: &str = "SELECT request_hash, call_id FROM idempotency_keys WHERE user_id = $1 AND key = $2";
    run!(c, |c| {
        let inserted = sqlx::query(INSERT)
            .bind(user_id)
            .bind(key)
            .bind(request_hash)
            .bind(call_id)
            .bind(at)
            .execute(&mut *c)
            .await?
            .rows_affected();
        if inserted > 0 {
            return Ok(None);
        }
        let (request_hash, call_id): (Vec<u8>, Uuid) =
            sqlx::query_as(SELECT).bind(user_id).bind(key).fetch_one(&mut *c).await?;
        Ok(Some(IdempotencyRecord { request_hash, call_id }))
    })
}

/// Looks an idempotency key up without claiming it.
pub async fn find_idempotency_key(c: DbConn<'_>, user_id: Uuid, key: &str) -> sqlx::Result<Option<IdempotencyRecord>> {
    const SELECT: &str = "SELECT request_hash, call_id FROM idempotency_keys WHERE user_id = $1 AND key = $2";
    let row: Option<(Vec<u8>, Uuid)> =
        run!(c, |c| sqlx::query_as(SELECT).bind(user_id).bind(key).fetch_optional(&mut *c).await)?;
    Ok(row.map(|(request_hash, call_id)| IdempotencyRecord { request_hash, call_id }))
}

/// How many calls are not started and in progress (for the metrics).
pub async fn active_counts(c: DbConn<'_>) -> sqlx::Result<Vec<(CallStatus, i64)>> {
    let [a, b] = CallStatus::ACTIVE.map(CallStatus::as_str);
    let sql = format!("SELECT status, COUNT(*) FROM calls WHERE status IN ('{a}', '{b}') GROUP BY status");
    let counts: Vec<(String, i64)> = run!(c, |c| sqlx::query_as(&sql).fetch_all(&mut *c).await)?;
    counts.into_iter().map(|(status, n)| Ok((parsed(&status)?, n))).collect()
}

/// When each stage of one answered turn was reached, in milliseconds from the end of the caller's
/// speech (see `migrations/*/0006_call_turns.sql` and `0010_call_turn_recognition.sql`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TurnRow {
    pub turn: i64,
    pub at: DateTime<Utc>,
    pub end_of_turn_ms: f64,
    pub recognition_ms: Option<f64>,
    pub first_token_ms: Option<f64>,
    pub first_audio_ms: Option<f64>,
    pub first_frame_ms: Option<f64>,
}

/// Keeps a turn's latencies; a turn already kept is left as it is.
pub async fn record_turn(c: DbConn<'_>, call_id: Uuid, t: &TurnRow) -> sqlx::Result<()> {
    const SQL: &str = "INSERT INTO call_turns \
        (call_id, turn, at, end_of_turn_ms, first_token_ms, first_audio_ms, first_frame_ms, recognition_ms) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (call_id, turn) DO NOTHING";
    run!(c, |c| sqlx::query(SQL)
        .bind(call_id)
        .bind(t.turn)
        .bind(t.at)
        .bind(t.end_of_turn_ms)
        .bind(t.first_token_ms)
        .bind(t.first_audio_ms)
        .bind(t.first_frame_ms)
        .bind(t.recognition_ms)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// A call's turns, in order.
pub async fn turns(c: DbConn<'_>, call_id: Uuid) -> sqlx::Result<Vec<TurnRow>> {
    const SQL: &str =
        "SELECT turn, at, end_of_turn_ms, recognition_ms, first_token_ms, first_audio_ms, first_frame_ms \
        FROM call_turns WHERE call_id = $1 ORDER BY turn";
    run!(c, |c| sqlx::query_as(SQL).bind(call_id).fetch_all(&mut *c).await)
}
