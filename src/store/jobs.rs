//! The durable job queue: one table on either backend.
//!
//! A job is written in the same transaction as the change that causes it. A worker claims a job
//! with a lease (`locked_until`), releases the transaction, does the work (an HTTP call, say),
//! and then records the outcome. A job whose worker's process is gone (its heartbeat in
//! `replicas` is older than the cutoff, or it has none) is claimed again at once; a job whose
//! worker lives but stopped renewing its lease, once the lease expires. On Postgres, claims skip rows other workers have locked (`FOR UPDATE SKIP LOCKED`), so any
//! number of replicas share one queue. Jobs with the same `ordering_key` run one at a time, in
//! the order they were written.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{run, Backend, DbConn};

#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: Value,
    pub ordering_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub max_attempts: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub kind: String,
    pub payload: Json<Value>,
    pub ordering_key: Option<String>,
    /// How many times it has been claimed, this time included.
    pub attempts: i32,
    pub max_attempts: i32,
}

const INSERT: &str = "INSERT INTO jobs (id, kind, payload, ordering_key, state, run_at, attempts, max_attempts, \
    locked_until, locked_by, created_at, updated_at) VALUES ($1, $2, $3, $4, 'ready', $5, $6, $7, $8, $9, $10, $10)";

/// Queues a job.
pub async fn enqueue(c: DbConn<'_>, job: &NewJob, now: DateTime<Utc>) -> sqlx::Result<Uuid> {
    insert(c, job, now, None).await
}

/// Queues a job already claimed by `worker` until `lease_until`: the caller runs it at once, and
/// if the caller dies, it runs again when the lease expires.
pub async fn enqueue_claimed(
    c: DbConn<'_>,
    job: &NewJob,
    now: DateTime<Utc>,
    worker: &str,
    lease_until: DateTime<Utc>,
) -> sqlx::Result<Uuid> {
    insert(c, job, now, Some((worker, lease_until))).await
}

async fn insert(
    c: DbConn<'_>,
    job: &NewJob,
    now: DateTime<Utc>,
    claim: Option<(&str, DateTime<Utc>)>,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    let attempts = if claim.is_some() { 1 } else { 0 };
    run!(c, |c| sqlx::query(INSERT)
        .bind(id)
        .bind(job.kind)
        .bind(Json(&job.payload))
        .bind(&job.ordering_key)
        .bind(job.run_at)
        .bind(attempts)
        .bind(job.max_attempts)
        .bind(claim.map(|(_, until)| until))
        .bind(claim.map(|(worker, _)| worker))
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|_| ()))?;
    Ok(id)
}

/// Claims up to `limit` jobs that are due, not held, and not behind an earlier job of their
/// ordering key (a later job of a key is never claimed with an earlier one, which is still ready).
/// A job is held while its lease runs and its worker is alive: seen in `replicas` since
/// `alive_since`. A worker never takes over its own claims (they are running right here).
pub async fn claim(
    c: DbConn<'_>,
    worker: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
    alive_since: DateTime<Utc>,
) -> sqlx::Result<Vec<JobRow>> {
    let postgres = c.backend() == Backend::Postgres;
    let skip_locked = if postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
    let sql = format!(
        "UPDATE jobs SET attempts = attempts + 1, locked_until = $2, locked_by = $3, updated_at = $1 \
         WHERE id IN (SELECT j.id FROM jobs j \
             WHERE j.state = 'ready' AND j.run_at <= $1 \
             AND (j.locked_until IS NULL OR j.locked_until < $1 \
                 OR (j.locked_by <> $3 AND NOT EXISTS (SELECT 1 FROM replicas r \
                     WHERE r.id = j.locked_by AND r.seen_at >= $5))) \
             AND (j.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM jobs e \
                 WHERE e.ordering_key = j.ordering_key AND e.state = 'ready' \
                 AND (e.created_at < j.created_at OR (e.created_at = j.created_at AND e.id < j.id)))) \
             ORDER BY j.run_at, j.id LIMIT $4{skip_locked}) \
         RETURNING id, kind, payload, ordering_key, attempts, max_attempts"
    );
    run!(c, |c| {
        if postgres {
            // Walk the ready jobs in order and stop at `limit`: after a burst, stale statistics
            // can make the planner sort every ready job (and check its order) on each claim.
            // And a claim lost in a crash only means the job runs again: no need to wait for the
            // disk. (For this transaction only; claims run in a transaction of their own.)
            sqlx::query(
                "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true), \
                 set_config('synchronous_commit', 'off', true)",
            )
            .execute(&mut *c)
            .await?;
        }
        sqlx::query_as(&sql)
            .bind(now)
            .bind(lease_until)
            .bind(worker)
            .bind(limit)
            .bind(alive_since)
            .fetch_all(&mut *c)
            .await
    })
}

/// Makes the current transaction's commit not wait for the disk (Postgres). For recording job
/// outcomes only: an outcome lost in a crash means the job runs again, which at-least-once allows;
/// the jobs themselves are always written durably, with the change that causes them.
pub async fn outcome_durability(c: DbConn<'_>) -> sqlx::Result<()> {
    match c {
        DbConn::Pg(c) => {
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true)").execute(&mut *c).await.map(|_| ())
        }
        DbConn::Lite(_) => Ok(()),
    }
}

/// Only the worker that holds a job (or nobody) records its outcome: a worker whose lease
/// expired, and whose job another worker took meanwhile, leaves the outcome to that one.
fn held(worker_param: &str) -> String {
    format!("(locked_by = {worker_param} OR locked_by IS NULL)")
}

/// Extends the lease of a job this worker still holds, while it runs; `false` when it holds it no
/// more (its lease ran out and another worker took it).
pub async fn extend_lease(c: DbConn<'_>, id: Uuid, worker: &str, until: DateTime<Utc>) -> sqlx::Result<bool> {
    run!(c, |c| sqlx::query("UPDATE jobs SET locked_until = $3 WHERE id = $1 AND locked_by = $2 AND state = 'ready'")
        .bind(id)
        .bind(worker)
        .bind(until)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// The job is done: it leaves the queue.
pub async fn complete(c: DbConn<'_>, id: Uuid, worker: &str) -> sqlx::Result<()> {
    let sql = format!("DELETE FROM jobs WHERE id = $1 AND {}", held("$2"));
    run!(c, |c| sqlx::query(&sql).bind(id).bind(worker).execute(&mut *c).await.map(|_| ()))
}

/// The job runs again at `run_at`.
pub async fn retry(
    c: DbConn<'_>,
    id: Uuid,
    run_at: DateTime<Utc>,
    error: &str,
    now: DateTime<Utc>,
    worker: &str,
) -> sqlx::Result<()> {
    let sql = format!(
        "UPDATE jobs SET run_at = $2, locked_until = NULL, locked_by = NULL, last_error = $3, updated_at = $4 \
         WHERE id = $1 AND {}",
        held("$5")
    );
    run!(c, |c| sqlx::query(&sql)
        .bind(id)
        .bind(run_at)
        .bind(error)
        .bind(now)
        .bind(worker)
        .execute(&mut *c)
        .await
        .map(|_| ()))
}

/// The job is given up; it stays, marked failed, for the operator to see.
pub async fn fail(c: DbConn<'_>, id: Uuid, error: &str, now: DateTime<Utc>, worker: &str) -> sqlx::Result<()> {
    let sql = format!(
        "UPDATE jobs SET state = 'failed', locked_until = NULL, last_error = $2, updated_at = $3 WHERE id = $1 AND {}",
        held("$4")
    );
    run!(c, |c| sqlx::query(&sql).bind(id).bind(error).bind(now).bind(worker).execute(&mut *c).await.map(|_| ()))
}

/// Drops the ready jobs of an ordering key (a call's pending dispatch, when the call is ended
/// before it was placed).
pub async fn cancel(c: DbConn<'_>, ordering_key: &str) -> sqlx::Result<u64> {
    run!(c, |c| sqlx::query("DELETE FROM jobs WHERE ordering_key = $1 AND state = 'ready'")
        .bind(ordering_key)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
}

/// How many jobs are due now, and since when the oldest of them has been waiting.
pub async fn depth(c: DbConn<'_>, now: DateTime<Utc>) -> sqlx::Result<(i64, Option<DateTime<Utc>>)> {
    const SQL: &str = "SELECT COUNT(*), MIN(run_at) FROM jobs WHERE state = 'ready' AND run_at <= $1";
    run!(c, |c| sqlx::query_as(SQL).bind(now).fetch_one(&mut *c).await)
}

/// Jobs of a kind in a state, for tests and the operator.
pub async fn count(c: DbConn<'_>, kind: &str, state: &str) -> sqlx::Result<i64> {
    run!(c, |c| sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE kind = $1 AND state = $2")
        .bind(kind)
        .bind(state)
        .fetch_one(&mut *c)
        .await)
}

/// Releases a stopping worker's claims, so that other workers take its jobs at once.
pub async fn release(c: DbConn<'_>, worker: &str) -> sqlx::Result<u64> {
    run!(c, |c| sqlx::query(
        "UPDATE jobs SET locked_until = NULL, locked_by = NULL WHERE locked_by = $1 AND state = 'ready'"
    )
    .bind(worker)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))
}
