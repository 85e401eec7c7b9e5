//! Background work: the workers that claim jobs from the durable queue and run them, one module
//! per kind of job. A job touches the outside world (a carrier, a webhook receiver) with no
//! database transaction open: it is claimed under a lease, run, and its outcome recorded.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::store::jobs::{self, Job};
use crate::store::now;
use crate::AppState;

pub mod calls;

/// How often idle workers look for due jobs (they are also woken when a job is queued here).
const POLL: Duration = Duration::from_millis(500);

/// What became of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// Try again after the delay (unless the job is out of attempts).
    Retry {
        after: Duration,
        error: String,
    },
    /// Give up.
    Fail(String),
}

/// Exponential backoff with jitter: about `base · 2^(attempt-1)`, at most `cap`.
pub fn backoff(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = base.as_secs_f64() * 2f64.powi((attempt - 1).clamp(0, 30));
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    Duration::from_secs_f64((exp * jitter).min(cap.as_secs_f64()))
}

/// A run's outcome, and the record of a webhook attempt it made (kept with the outcome, in one
/// transaction).
pub struct Ran {
    pub outcome: Outcome,
    pub attempt: Option<crate::store::webhooks::Attempt>,
}

impl From<Outcome> for Ran {
    fn from(outcome: Outcome) -> Self {
        Ran { outcome, attempt: None }
    }
}

async fn run(state: &AppState, job: &Job) -> Ran {
    match job.kind.as_str() {
        calls::DISPATCH => calls::dispatch(state, job).await.into(),
        calls::HANG_UP => calls::hang_up(state, job).await.into(),
        crate::webhooks::DELIVER => crate::webhooks::deliver::deliver(state, job).await,
        other => Outcome::Fail(format!("unknown job kind {other}")).into(),
    }
}

/// Runs a claimed job and records its outcome. A panic counts as a failed attempt.
pub async fn run_claimed(state: &AppState, job: Job) {
    let span = tracing::info_span!("job", kind = %job.kind, id = %job.id, attempt = job.attempts);
    let ran = match AssertUnwindSafe(run(state, &job)).catch_unwind().instrument(span.clone()).await {
        Ok(ran) => ran,
        Err(_) => Outcome::Retry { after: Duration::from_secs(5), error: "the job panicked".into() }.into(),
    };
    if let Err(err) = record(state, &job, &ran).instrument(span).await {
        // The lease expires and the job runs again: at least once, never lost.
        tracing::warn!(error = %err, "could not record a job's outcome");
    }
}

async fn record(state: &AppState, job: &Job, ran: &Ran) -> sqlx::Result<()> {
    let mut tx = state.store.begin().await?;
    jobs::outcome_durability(tx.conn()).await?;
    let at = now();
    if let Some(attempt) = &ran.attempt {
        crate::store::webhooks::insert_attempt(tx.conn(), attempt).await?;
    }
    match &ran.outcome {
        Outcome::Done => jobs::complete(tx.conn(), job.id, &state.worker_id).await?,
        Outcome::Retry { error, .. } if job.attempts >= job.max_attempts => {
            tracing::warn!(%error, "job failed for good");
            jobs::fail(tx.conn(), job.id, error, at, &state.worker_id).await?
        }
        Outcome::Retry { after, error } => {
            tracing::info!(%error, retry_in_ms = after.as_millis() as u64, "job will be retried");
            let run_at = at + chrono::Duration::from_std(*after).unwrap_or_default();
            jobs::retry(tx.conn(), job.id, run_at, error, at, &state.worker_id).await?
        }
        Outcome::Fail(error) => {
            tracing::warn!(%error, "job failed");
            jobs::fail(tx.conn(), job.id, error, at, &state.worker_id).await?
        }
    }
    tx.commit().await
}

/// Claims up to `limit` due jobs.
pub async fn claim(state: &AppState, at: DateTime<Utc>, limit: usize) -> sqlx::Result<Vec<Job>> {
    let mut tx = state.store.begin().await?;
    let lease_until = state.lease_until(at);
    let claimed = jobs::claim(tx.conn(), &state.worker_id, at, lease_until, limit as i64).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Runs every job that is due at `at`, one after another, until none is left; returns how many
/// ran. Tests use this to drive the queue without waiting for the workers.
pub async fn drain(state: &AppState, at: DateTime<Utc>) -> sqlx::Result<usize> {
    let mut ran = 0;
    while let Some(job) = claim(state, at, 1).await?.pop() {
        run_claimed(state, job).await;
        ran += 1;
    }
    Ok(ran)
}

/// The workers of this process: up to `concurrency` jobs at once, until `shutdown` turns true;
/// then they stop claiming and finish what they run. When woken by a finished job they claim
/// only once a batch's worth of room is free, so that a busy queue costs one claim per batch.
pub async fn work(state: AppState, concurrency: usize, mut shutdown: watch::Receiver<bool>) {
    let batch = (concurrency / 4).max(1);
    let mut running = JoinSet::new();
    let mut reconciled_at = std::time::Instant::now();
    let mut finished_only = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let free = concurrency.saturating_sub(running.len());
        if free > 0 && (free >= batch || !finished_only) {
            match crate::store::as_worker(claim(&state, now(), free)).await {
                Ok(claimed) => {
                    for job in claimed {
                        let state = state.clone();
                        running.spawn(crate::store::as_worker(async move { run_claimed(&state, job).await }));
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot claim jobs"),
            }
        }
        if reconciled_at.elapsed() >= state.telephony.reconcile_after / 4 {
            reconciled_at = std::time::Instant::now();
            crate::store::as_worker(calls::reconcile(&state)).await;
        }
        finished_only = false;
        tokio::select! {
            _ = state.jobs_queued.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            Some(_) = running.join_next(), if !running.is_empty() => finished_only = true,
            _ = shutdown.changed() => {}
        }
    }
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        let first = backoff(1, base, cap).as_secs_f64();
        let fifth = backoff(5, base, cap).as_secs_f64();
        assert!((0.75..=1.25).contains(&first), "{first}");
        assert!((12.0..=20.0).contains(&fifth), "{fifth}");
        assert!(backoff(30, base, cap) <= cap);
    }
}
