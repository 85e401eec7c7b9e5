//! The job queue's leases, on a real database of either backend: a job that runs longer than its
//! lease keeps it (its worker renews it while it runs), so a second worker never takes it and it
//! runs once; a worker that stops renewing (a dead process) loses it, and the job runs again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vocode_server::jobs::{Attempt, Enqueue, Job, Jobs, Outcome, Queue, Ran, Registry};
use vocode_server::store::{now, PoolSettings, Store};

use crate::support::{Backend, TestDb};

#[derive(serde::Serialize, serde::Deserialize)]
struct Slow {
    seconds: f64,
}

impl Job for Slow {
    const NAME: &'static str = "slow";
}

async fn store(backend: Backend) -> Option<(TestDb, Store)> {
    let db = TestDb::create(backend).await?;
    let store = Store::connect(&db.url, &PoolSettings::default()).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

fn counting(runs: Arc<AtomicU32>) -> Registry<()> {
    Registry::default().register(move |(), slow: Slow, _: Attempt| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs_f64(slow.seconds)).await;
            Ran::from(Outcome::Done)
        }
    })
}

async fn a_job_longer_than_its_lease_runs_once(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let lease = Duration::from_millis(600);
    let runs = Arc::new(AtomicU32::new(0));
    let first = Jobs::new(Queue::new(store.clone(), "worker-1".into(), lease), counting(runs.clone()));
    let second = Jobs::new(Queue::new(store.clone(), "worker-2".into(), lease), counting(runs.clone()));
    let mut tx = store.begin().await.unwrap();
    first.queue().enqueue(&mut tx, &Slow { seconds: 2.5 }, Enqueue::now(3)).await.unwrap();
    tx.commit().await.unwrap();
    let claimed = first.queue().claim(now(), 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.run_claimed((), claimed.into_iter().next().unwrap()).await }
    });
    // Four leases' worth of time, asked every 100 ms: the second worker never gets it.
    for _ in 0..22 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(second.queue().claim(now(), 1).await.unwrap().is_empty(), "a renewed lease is not taken");
    }
    running.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "it ran once");
    assert!(second.queue().claim(now() + chrono::Duration::hours(1), 1).await.unwrap().is_empty(), "and is done");
}

async fn a_lease_nobody_renews_runs_out(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let lease = Duration::from_millis(300);
    let runs = Arc::new(AtomicU32::new(0));
    let dead = Queue::new(store.clone(), "dead".into(), lease);
    let alive = Jobs::new(Queue::new(store.clone(), "alive".into(), lease), counting(runs.clone()));
    let mut tx = store.begin().await.unwrap();
    dead.enqueue(&mut tx, &Slow { seconds: 0.0 }, Enqueue::now(3)).await.unwrap();
    tx.commit().await.unwrap();
    // Claimed by a worker that dies at once: nobody renews its lease.
    assert_eq!(dead.claim(now(), 1).await.unwrap().len(), 1);
    assert!(alive.queue().claim(now(), 1).await.unwrap().is_empty());
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(alive.drain((), now()).await.unwrap(), 1, "taken over once the lease ran out");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_job_longer_than_its_lease_runs_once_sqlite() {
    a_job_longer_than_its_lease_runs_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_job_longer_than_its_lease_runs_once_postgres() {
    a_job_longer_than_its_lease_runs_once(Backend::Postgres).await;
}

#[tokio::test]
async fn a_lease_nobody_renews_runs_out_sqlite() {
    a_lease_nobody_renews_runs_out(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_lease_nobody_renews_runs_out_postgres() {
    a_lease_nobody_renews_runs_out(Backend::Postgres).await;
}
