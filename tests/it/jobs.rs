//! The job queue's leases, on a real database of either backend: a job that runs longer than its
//! lease keeps it (its worker renews it while it runs), so a second worker never takes it and it
//! runs once; a worker that stops renewing (a stuck process) loses it, and the job runs again; a
//! worker whose process is gone (no heartbeat) loses its jobs at once, whatever their leases, and
//! a call's later jobs then run in order.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use vocode_server::jobs::{Attempt, Enqueue, Job, Jobs, Outcome, Queue, Ran, Registry};
use vocode_server::replicas::{Replicas, GONE_AFTER};
use vocode_server::store::{now, replicas, PoolSettings, Store};

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
    // Two live processes.
    alive(&store, "worker-1").await;
    alive(&store, "worker-2").await;
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
    // A process that lives on (its heartbeat is fresh) but stops renewing its lease: stuck.
    alive(&store, "dead").await;
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

/// A process that says it is alive (as every server process does, from its start).
async fn alive(store: &Store, id: &str) -> Replicas {
    let replica = Replicas::new(store.clone(), id.into());
    replica.beat().await.unwrap();
    replica
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Step {
    name: String,
}

impl Job for Step {
    const NAME: &'static str = "step";
}

fn recording(ran: Arc<Mutex<Vec<String>>>) -> Registry<()> {
    Registry::default().register(move |(), step: Step, attempt: Attempt| {
        let ran = ran.clone();
        async move {
            ran.lock().unwrap().push(format!("{}#{}", step.name, attempt.number));
            Ran::from(Outcome::Done)
        }
    })
}

async fn a_gone_processs_jobs_are_taken_over_at_once_in_order(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let hour = Duration::from_secs(3600);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let gone = Queue::new(store.clone(), "gone".into(), hour);
    let never_seen = Queue::new(store.clone(), "never-seen".into(), hour);
    alive(&store, "gone").await;
    alive(&store, "taker").await;
    let taker = Jobs::new(Queue::new(store.clone(), "taker".into(), hour), recording(ran.clone()));
    let mut tx = store.begin().await.unwrap();
    for name in ["a1", "a2", "a3"] {
        let how = Enqueue::now(8).ordered_by("call-a".into());
        gone.enqueue(&mut tx, &Step { name: name.into() }, how).await.unwrap();
    }
    gone.enqueue(&mut tx, &Step { name: "b1".into() }, Enqueue::now(8).ordered_by("call-b".into())).await.unwrap();
    tx.commit().await.unwrap();
    // "gone" claims call a's first job (the others wait behind it), with an hour's lease; a
    // worker with no heartbeat at all claims call b's.
    let held = gone.claim(now(), 1).await.unwrap();
    assert_eq!(held.iter().map(|j| j.payload.0["name"].as_str().unwrap()).collect::<Vec<_>>(), ["a1"]);
    assert_eq!(never_seen.claim(now(), 1).await.unwrap().len(), 1);

    // While "gone" beats, its claim holds and call a waits; "never-seen" holds nothing.
    assert_eq!(taker.drain((), now()).await.unwrap(), 1);
    assert_eq!(*ran.lock().unwrap(), ["b1#2"]);

    // "gone" stops beating (kill -9): once its heartbeat is older than GONE_AFTER, its job is
    // taken over at once, an hour's lease notwithstanding, and call a's later jobs follow, in order.
    let stale = now() - chrono::Duration::from_std(GONE_AFTER).unwrap() - chrono::Duration::seconds(1);
    let mut tx = store.begin().await.unwrap();
    replicas::beat(tx.conn(), "gone", stale, stale, false).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(taker.drain((), now()).await.unwrap(), 3);
    assert_eq!(*ran.lock().unwrap(), ["b1#2", "a1#2", "a2#1", "a3#1"]);

    // A process never takes over its own claims: they run right there.
    let mut tx = store.begin().await.unwrap();
    taker.queue().enqueue(&mut tx, &Step { name: "c1".into() }, Enqueue::now(8)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(taker.queue().claim(now(), 1).await.unwrap().len(), 1);
    assert!(taker.queue().claim(now(), 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_gone_processs_jobs_are_taken_over_at_once_in_order_sqlite() {
    a_gone_processs_jobs_are_taken_over_at_once_in_order(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_gone_processs_jobs_are_taken_over_at_once_in_order_postgres() {
    a_gone_processs_jobs_are_taken_over_at_once_in_order(Backend::Postgres).await;
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
