//! The job contract, and the workers that honour it.
//!
//! A kind of job is a serde payload with a name ([`Job`]). Whatever causes a job writes it in the
//! transaction of the change that causes it ([`Queue::enqueue`]). A worker claims it under a lease,
//! releases the transaction, runs it — touching the outside world with no transaction open — and
//! records the outcome. A worker is named by its process's replica id: a job whose process is gone
//! (see [`crate::replicas`]) is taken over at once, one whose lease expired unrenewed, then. One
//! [`Registry`], built in one place (the crate root), maps each kind to its runner.
//!
//! This module knows nothing of calls, carriers or webhooks: it is generic over the context its
//! runners receive.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::replicas::GONE_AFTER;
use crate::store::jobs::{self as queue, JobRow, NewJob};
use crate::store::{as_worker, now, Store, Tx};

/// A kind of job: its name in the queue, and its payload.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    const NAME: &'static str;
}

/// Which run of a job this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub job_id: Uuid,
    /// 1 for the first run.
    pub number: i32,
    pub max: i32,
}

impl Attempt {
    pub fn is_last(&self) -> bool {
        self.number >= self.max
    }
}

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

impl Outcome {
    /// Retry with [`backoff`] from `base`, at most `cap`.
    pub fn retry_with_backoff(attempt: Attempt, base: Duration, cap: Duration, error: impl ToString) -> Outcome {
        Outcome::Retry { after: backoff(attempt.number, base, cap), error: error.to_string() }
    }
}

/// Exponential backoff with jitter: about `base · 2^(attempt-1)`, at most `cap`.
pub fn backoff(attempt: i32, base: Duration, cap: Duration) -> Duration {
    let exp = base.as_secs_f64() * 2f64.powi((attempt - 1).clamp(0, 30));
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    Duration::from_secs_f64((exp * jitter).min(cap.as_secs_f64()))
}

/// A write that belongs with a run's outcome, committed in the outcome's transaction (a webhook
/// delivery's attempt record, say).
pub type Write = Box<dyn for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, sqlx::Result<()>> + Send>;

/// A run's outcome, and what to write with it.
pub struct Ran {
    pub outcome: Outcome,
    write: Option<Write>,
}

impl Ran {
    pub fn with_write(outcome: Outcome, write: Write) -> Ran {
        Ran { outcome, write: Some(write) }
    }
}

impl From<Outcome> for Ran {
    fn from(outcome: Outcome) -> Self {
        Ran { outcome, write: None }
    }
}

/// How a job is queued.
#[derive(Debug, Clone)]
pub struct Enqueue {
    /// Jobs with the same key run one at a time, in the order they were written.
    pub ordering_key: Option<String>,
    pub run_at: DateTime<Utc>,
    pub max_attempts: i32,
}

impl Enqueue {
    pub fn now(max_attempts: i32) -> Self {
        Enqueue { ordering_key: None, run_at: now(), max_attempts }
    }

    pub fn ordered_by(mut self, key: String) -> Self {
        self.ordering_key = Some(key);
        self
    }
}

/// The queue as this process uses it: its name on the jobs it claims, how long a claim lasts,
/// and the signal that wakes its workers. Cloning is cheap.
#[derive(Clone)]
pub struct Queue(Arc<QueueInner>);

struct QueueInner {
    store: Store,
    worker_id: String,
    lease: Duration,
    queued: Notify,
}

impl Queue {
    pub fn new(store: Store, worker_id: String, lease: Duration) -> Self {
        Queue(Arc::new(QueueInner { store, worker_id, lease, queued: Notify::new() }))
    }

    pub fn worker_id(&self) -> &str {
        &self.0.worker_id
    }

    /// When a claim made at `at` expires.
    pub fn lease_until(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at + chrono::Duration::from_std(self.0.lease).unwrap_or(chrono::Duration::minutes(2))
    }

    /// Writes a job in the caller's transaction. Call [`Queue::wake`] once it is committed.
    pub async fn enqueue<J: Job>(&self, tx: &mut Tx, job: &J, how: Enqueue) -> sqlx::Result<Uuid> {
        let new = new_job(job, &how);
        queue::enqueue(tx.conn(), &new, now()).await
    }

    /// Writes a job already claimed by this process, which runs it at once after the commit (see
    /// `Jobs::spawn`); if this process dies first, another worker runs it when the lease expires.
    pub async fn enqueue_claimed<J: Job>(&self, tx: &mut Tx, job: &J, how: Enqueue) -> sqlx::Result<JobRow> {
        let new = new_job(job, &how);
        let at = now();
        let id = queue::enqueue_claimed(tx.conn(), &new, at, self.worker_id(), self.lease_until(at)).await?;
        Ok(JobRow {
            id,
            kind: J::NAME.to_owned(),
            payload: sqlx::types::Json(new.payload),
            ordering_key: new.ordering_key,
            attempts: 1,
            max_attempts: new.max_attempts,
        })
    }

    /// Wakes this process's workers (a permit is kept if none is waiting).
    pub fn wake(&self) {
        self.0.queued.notify_one();
    }

    /// Claims up to `limit` jobs due at `at`: new ones, and those of workers that are gone (no
    /// heartbeat for [`GONE_AFTER`], now) or whose leases ran out.
    pub async fn claim(&self, at: DateTime<Utc>, limit: usize) -> sqlx::Result<Vec<JobRow>> {
        let alive_since = now() - chrono::Duration::from_std(GONE_AFTER).expect("a short duration");
        let mut tx = self.0.store.begin().await?;
        let claimed =
            queue::claim(tx.conn(), self.worker_id(), at, self.lease_until(at), limit as i64, alive_since).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Gives this process's unfinished claims back, for other workers to take at once.
    pub async fn release(&self) -> sqlx::Result<u64> {
        let mut tx = self.0.store.begin().await?;
        let released = queue::release(tx.conn(), self.worker_id()).await?;
        tx.commit().await?;
        Ok(released)
    }

    /// Renews a running job's lease every third of it, for as long as this worker holds it.
    async fn keep_leased(&self, id: Uuid) -> std::convert::Infallible {
        let every = self.0.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let renewed = match self.0.store.begin().await {
                Ok(mut tx) => match queue::extend_lease(tx.conn(), id, self.worker_id(), self.lease_until(now())).await
                {
                    Ok(held) => tx.commit().await.map(|_| held),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job = %id, "a running job's lease was lost: another worker may run it too");
                    return std::future::pending().await;
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "a running job's lease could not be renewed"),
            }
        }
    }

    async fn record(&self, job: &JobRow, ran: Ran) -> sqlx::Result<()> {
        let mut tx = self.0.store.begin().await?;
        queue::outcome_durability(tx.conn()).await?;
        let at = now();
        if let Some(write) = ran.write {
            write(&mut tx).await?;
        }
        let worker = self.worker_id();
        match ran.outcome {
            Outcome::Done => queue::complete(tx.conn(), job.id, worker).await?,
            Outcome::Retry { error, .. } if job.attempts >= job.max_attempts => {
                tracing::warn!(%error, "job failed for good");
                queue::fail(tx.conn(), job.id, &error, at, worker).await?
            }
            Outcome::Retry { after, error } => {
                tracing::info!(%error, retry_in_ms = after.as_millis() as u64, "job will be retried");
                let run_at = at + chrono::Duration::from_std(after).unwrap_or_default();
                queue::retry(tx.conn(), job.id, run_at, &error, at, worker).await?
            }
            Outcome::Fail(error) => {
                tracing::warn!(%error, "job failed");
                queue::fail(tx.conn(), job.id, &error, at, worker).await?
            }
        }
        tx.commit().await
    }
}

fn new_job<J: Job>(job: &J, how: &Enqueue) -> NewJob {
    NewJob {
        kind: J::NAME,
        payload: serde_json::to_value(job).expect("a job payload is JSON"),
        ordering_key: how.ordering_key.clone(),
        run_at: how.run_at,
        max_attempts: how.max_attempts,
    }
}

type Runner<C> = Box<dyn Fn(C, Value, Attempt) -> BoxFuture<'static, Ran> + Send + Sync>;
type Periodic<C> = Box<dyn Fn(C) -> BoxFuture<'static, ()> + Send + Sync>;

/// Which runner runs each kind of job, and the periodic work the workers also do.
pub struct Registry<C> {
    runners: HashMap<&'static str, Runner<C>>,
    periodic: Vec<(Duration, Periodic<C>)>,
}

impl<C: Clone + Send + Sync + 'static> Default for Registry<C> {
    fn default() -> Self {
        Registry { runners: HashMap::new(), periodic: Vec::new() }
    }
}

impl<C: Clone + Send + Sync + 'static> Registry<C> {
    /// Runs jobs of kind `J` with `run`. A payload that cannot be read fails the job.
    pub fn register<J, F, Fut>(mut self, run: F) -> Self
    where
        J: Job,
        F: Fn(C, J, Attempt) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Ran> + Send + 'static,
    {
        let runner: Runner<C> = Box::new(move |ctx, payload, attempt| match serde_json::from_value::<J>(payload) {
            Ok(job) => run(ctx, job, attempt).boxed(),
            Err(e) => {
                let outcome = Outcome::Fail(format!("the {} payload cannot be read: {e}", J::NAME));
                futures_util::future::ready(outcome.into()).boxed()
            }
        });
        assert!(self.runners.insert(J::NAME, runner).is_none(), "job kind {} registered twice", J::NAME);
        self
    }

    /// Also runs `work` about every `period` (from the worker loop, so only where workers run).
    pub fn every<F, Fut>(mut self, period: Duration, work: F) -> Self
    where
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.periodic.push((period, Box::new(move |ctx| work(ctx).boxed())));
        self
    }

    /// The kinds this registry runs.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.runners.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }
}

/// How often idle workers look for due jobs (they are also woken when a job is queued here).
const POLL: Duration = Duration::from_millis(500);

/// The queue and the registry together: what runs jobs. Cloning is cheap.
pub struct Jobs<C>(Arc<JobsInner<C>>);

struct JobsInner<C> {
    queue: Queue,
    registry: Registry<C>,
}

impl<C> Clone for Jobs<C> {
    fn clone(&self) -> Self {
        Jobs(self.0.clone())
    }
}

impl<C: Clone + Send + Sync + 'static> Jobs<C> {
    pub fn new(queue: Queue, registry: Registry<C>) -> Self {
        Jobs(Arc::new(JobsInner { queue, registry }))
    }

    pub fn queue(&self) -> &Queue {
        &self.0.queue
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.0.registry.kinds()
    }

    async fn run(&self, ctx: C, job: &JobRow) -> Ran {
        let attempt = Attempt { job_id: job.id, number: job.attempts, max: job.max_attempts };
        match self.0.registry.runners.get(job.kind.as_str()) {
            Some(runner) => runner(ctx, job.payload.0.clone(), attempt).await,
            None => Outcome::Fail(format!("unknown job kind {}", job.kind)).into(),
        }
    }

    /// Runs a claimed job and records its outcome. A panic counts as a failed attempt. While it
    /// runs its lease is renewed, so that a slow run (a busy machine, a slow carrier) is not taken
    /// for a dead one and run twice; only a process that stopped lets its leases run out.
    pub async fn run_claimed(&self, ctx: C, job: JobRow) {
        let span = tracing::info_span!("job", kind = %job.kind, id = %job.id, attempt = job.attempts);
        let work = AssertUnwindSafe(self.run(ctx, &job)).catch_unwind().instrument(span.clone());
        let ran = tokio::select! {
            ran = work => match ran {
                Ok(ran) => ran,
                Err(_) => Outcome::Retry { after: Duration::from_secs(5), error: "the job panicked".into() }.into(),
            },
            never = self.0.queue.keep_leased(job.id) => match never {},
        };
        if let Err(err) = self.0.queue.record(&job, ran).instrument(span).await {
            // The lease expires and the job runs again: at least once, never lost.
            tracing::warn!(error = %err, "could not record a job's outcome");
        }
    }

    /// Runs jobs this process claimed, in the background.
    pub fn spawn(&self, ctx: C, claimed: Vec<JobRow>) {
        for job in claimed {
            let (jobs, ctx) = (self.clone(), ctx.clone());
            tokio::spawn(as_worker(async move { jobs.run_claimed(ctx, job).await }));
        }
    }

    /// Runs every job that is due at `at`, one after another, until none is left; returns how
    /// many ran. Tests use this to drive the queue without waiting for the workers.
    pub async fn drain(&self, ctx: C, at: DateTime<Utc>) -> sqlx::Result<usize> {
        let mut ran = 0;
        while let Some(job) = self.0.queue.claim(at, 1).await?.pop() {
            self.run_claimed(ctx.clone(), job).await;
            ran += 1;
        }
        Ok(ran)
    }

    /// The workers of this process: up to `concurrency` jobs at once, until `shutdown` turns
    /// true; then they stop claiming and finish what they run. When woken by a finished job they
    /// claim only once a batch's worth of room is free, so that a busy queue costs one claim per
    /// batch.
    pub async fn work(self, ctx: C, concurrency: usize, mut shutdown: watch::Receiver<bool>) {
        let batch = (concurrency / 4).max(1);
        let mut running = JoinSet::new();
        let started = std::time::Instant::now();
        let mut last_periodic = vec![started; self.0.registry.periodic.len()];
        let mut finished_only = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let free = concurrency.saturating_sub(running.len());
            if free > 0 && (free >= batch || !finished_only) {
                match as_worker(self.0.queue.claim(now(), free)).await {
                    Ok(claimed) => {
                        for job in claimed {
                            let (jobs, ctx) = (self.clone(), ctx.clone());
                            running.spawn(as_worker(async move { jobs.run_claimed(ctx, job).await }));
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot claim jobs"),
                }
            }
            for ((period, work), last) in self.0.registry.periodic.iter().zip(last_periodic.iter_mut()) {
                if last.elapsed() >= *period {
                    *last = std::time::Instant::now();
                    as_worker(work(ctx.clone())).await;
                }
            }
            finished_only = false;
            tokio::select! {
                _ = self.0.queue.0.queued.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                Some(_) = running.join_next(), if !running.is_empty() => finished_only = true,
                _ = shutdown.changed() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }
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

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Ping {
        n: u32,
    }

    impl Job for Ping {
        const NAME: &'static str = "ping";
    }

    #[tokio::test]
    async fn a_registered_kind_gets_its_typed_payload_and_a_bad_payload_fails() {
        let registry = Registry::<()>::default().register(|(), ping: Ping, attempt: Attempt| async move {
            assert_eq!(attempt.number, 2);
            if ping.n == 7 {
                Outcome::Done.into()
            } else {
                Outcome::Fail(format!("got {}", ping.n)).into()
            }
        });
        assert_eq!(registry.kinds(), vec!["ping"]);
        let runner = &registry.runners["ping"];
        let attempt = Attempt { job_id: Uuid::nil(), number: 2, max: 3 };
        assert_eq!(runner((), serde_json::json!({"n": 7}), attempt).await.outcome, Outcome::Done);
        assert_eq!(runner((), serde_json::json!({"n": 8}), attempt).await.outcome, Outcome::Fail("got 8".into()));
        let bad = runner((), serde_json::json!({"m": 1}), attempt).await.outcome;
        assert!(matches!(bad, Outcome::Fail(ref e) if e.contains("ping payload cannot be read")), "{bad:?}");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_kind_is_registered_once() {
        let run = |(), _: Ping, _: Attempt| async { Ran::from(Outcome::Done) };
        let _ = Registry::<()>::default().register(run).register(run);
    }
}
