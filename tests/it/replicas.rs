//! The replicas' heartbeats on the shared database, on either backend: a process is alive while
//! it beats, is taken for gone once its heartbeat is older than `GONE_AFTER`, says when it drains,
//! and is gone at once when it leaves.

use vocode_server::replicas::{Replicas, GONE_AFTER};
use vocode_server::store::{now, replicas, PoolSettings, Store};

use crate::support::{Backend, TestDb};

async fn store(backend: Backend) -> Option<(TestDb, Store)> {
    let db = TestDb::create(backend).await?;
    let store = Store::connect(&db.url, &PoolSettings::default()).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

async fn alive_ids(r: &Replicas) -> Vec<String> {
    r.alive().await.unwrap().into_iter().map(|row| row.id).collect()
}

async fn heartbeats(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let a = Replicas::new(store.clone(), "a".into());
    let b = Replicas::new(store.clone(), "b".into());
    a.beat().await.unwrap();
    b.beat().await.unwrap();
    assert_eq!(alive_ids(&a).await, ["a", "b"]);
    assert!(a.is_alive("b").await.unwrap());

    // b stops beating: once its last heartbeat is older than GONE_AFTER it is gone.
    let old = now() - chrono::Duration::from_std(GONE_AFTER).unwrap() - chrono::Duration::seconds(1);
    let mut tx = store.begin().await.unwrap();
    replicas::beat(tx.conn(), "b", old, old, false).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(alive_ids(&a).await, ["a"]);
    assert!(!a.is_alive("b").await.unwrap());

    // a drains, and says so at its next heartbeat; then it leaves.
    a.start_draining();
    a.beat().await.unwrap();
    assert!(a.alive().await.unwrap()[0].draining);
    a.leave().await.unwrap();
    assert!(alive_ids(&b).await.is_empty());
}

#[tokio::test]
async fn heartbeats_on_sqlite() {
    heartbeats(Backend::Sqlite).await;
}

#[tokio::test]
async fn heartbeats_on_postgres() {
    heartbeats(Backend::Postgres).await;
}
