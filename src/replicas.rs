//! The server processes that share one database, as each of them sees the others: every process
//! writes a heartbeat row every [`HEARTBEAT`] (and says there whether it is draining); a process
//! not seen for [`GONE_AFTER`] is gone — crashed, killed, or cut off from the database — and what
//! it held (job claims, live calls) may be taken over. A process that stops cleanly removes its
//! row at once.
//!
//! This is the whole coordination between replicas: the database they already share, no other
//! service. SQLite is one process's own database, so there the only replica is this one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::store::{self, now, replicas, Store};

/// How often a process says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a process may go unseen before it is taken for gone: a few missed heartbeats, so that
/// a busy moment or a slow database does not make a living process look dead.
pub const GONE_AFTER: Duration = Duration::from_secs(8);

/// This process among the replicas. Cloning is cheap.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    started_at: DateTime<Utc>,
    store: Store,
    draining: AtomicBool,
    /// How many processes serve now, as of the last heartbeat (see [`Replicas::serving`]).
    serving: AtomicUsize,
    /// Why this process must be the only one, if it must: another one seen later is warned
    /// about, once.
    alone: std::sync::OnceLock<&'static str>,
    warned: AtomicBool,
}

impl Replicas {
    pub fn new(store: Store, id: String) -> Self {
        Replicas {
            inner: Arc::new(Inner {
                id,
                started_at: now(),
                store,
                draining: AtomicBool::new(false),
                serving: AtomicUsize::new(1),
                alone: std::sync::OnceLock::new(),
                warned: AtomicBool::new(false),
            }),
        }
    }

    /// This process's id (also the name its job claims go by).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// From now on this process takes no new work; the others see it at its next heartbeat.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Writes this process's heartbeat now.
    pub async fn beat(&self) -> sqlx::Result<()> {
        let mut tx = self.inner.store.begin().await?;
        replicas::beat(tx.conn(), &self.inner.id, self.inner.started_at, now(), self.draining()).await?;
        tx.commit().await
    }

    /// How many processes serve requests now, this one included: those alive and not draining, as
    /// of this process's last heartbeat (at least 1). Shared limits are divided by it.
    pub fn serving(&self) -> usize {
        self.inner.serving.load(Ordering::Relaxed)
    }

    /// Counts the processes that serve now (see [`Replicas::serving`]).
    pub async fn refresh(&self) -> sqlx::Result<usize> {
        let alive = self.alive().await?;
        let others = alive.iter().filter(|r| r.id != self.inner.id && !r.draining).count();
        self.inner.serving.store(others + 1, Ordering::Relaxed);
        if let Some(why) = self.inner.alone.get() {
            if others > 0 && !self.inner.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "another server process has joined this one on its database, which it should not: {why}"
                );
            }
        }
        Ok(others + 1)
    }

    /// Beats every [`HEARTBEAT`] until `stop`; then says this process is gone. A heartbeat that
    /// fails is logged and tried again at the next one.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweeps = 0u32;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
            if let Err(e) = store::as_worker(self.beat()).await {
                tracing::warn!(error = %e, "the heartbeat could not be written");
            } else if let Err(e) = store::as_worker(self.refresh()).await {
                tracing::warn!(error = %e, "the other processes' heartbeats could not be read");
            }
            sweeps += 1;
            if sweeps.is_multiple_of(30) {
                let long_gone = now() - chrono::Duration::hours(1);
                let _ = self.forget(long_gone).await;
            }
        }
    }

    async fn forget(&self, before: DateTime<Utc>) -> sqlx::Result<u64> {
        let mut tx = self.inner.store.begin().await?;
        let forgotten = replicas::forget_gone(tx.conn(), before).await?;
        tx.commit().await?;
        Ok(forgotten)
    }

    /// This process has stopped: the others need not wait for its heartbeat to go stale.
    pub async fn leave(&self) -> sqlx::Result<()> {
        let mut tx = self.inner.store.begin().await?;
        replicas::leave(tx.conn(), &self.inner.id).await?;
        tx.commit().await
    }

    /// The processes alive now (this one included once it has beaten), oldest first.
    pub async fn alive(&self) -> sqlx::Result<Vec<replicas::ReplicaRow>> {
        let since = now() - chrono::Duration::from_std(GONE_AFTER).expect("a short duration");
        let mut handle = self.inner.store.read().await?;
        replicas::alive(handle.conn(), since).await
    }

    /// Whether the process `id` is alive now.
    pub async fn is_alive(&self, id: &str) -> sqlx::Result<bool> {
        Ok(self.alive().await?.iter().any(|r| r.id == id))
    }

    /// Makes sure no other process is alive on this database, for a process that must be the
    /// only one (`why` says why); from then on, one that shows up is warned about (once). Another
    /// process counts once its heartbeat is seen again: one killed a moment ago looks alive until
    /// its heartbeat is [`GONE_AFTER`] old, so this waits up to that long for its row to go stale.
    /// Returns the ids of the others that are really alive (the caller then refuses to run).
    pub async fn require_alone(&self, why: &'static str) -> sqlx::Result<Vec<String>> {
        let _ = self.inner.alone.set(why);
        let others = |rows: Vec<replicas::ReplicaRow>| -> Vec<replicas::ReplicaRow> {
            rows.into_iter().filter(|r| r.id != self.inner.id).collect()
        };
        let first = others(self.alive().await?);
        let deadline = tokio::time::Instant::now() + GONE_AFTER + HEARTBEAT;
        let mut unsure = first.clone();
        while !unsure.is_empty() {
            let now_alive = others(self.alive().await?);
            let beating: Vec<String> = now_alive
                .iter()
                .filter(|r| first.iter().all(|f| f.id != r.id || f.seen_at < r.seen_at))
                .map(|r| r.id.clone())
                .collect();
            if !beating.is_empty() {
                return Ok(beating);
            }
            unsure = now_alive;
            if tokio::time::Instant::now() >= deadline {
                return Ok(unsure.into_iter().map(|r| r.id).collect());
            }
            tokio::time::sleep(HEARTBEAT / 4).await;
        }
        Ok(Vec::new())
    }
}
