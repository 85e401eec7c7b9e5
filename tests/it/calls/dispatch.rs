//! Placing a call exactly once: carrier refusals and outages (retried in the background, within
//! bounds), a dispatch whose answer came after the timeout (found at the carrier, not dialled
//! again), idempotency keys, and stale calls reconciled with the carrier — within a minute when the
//! process that ran a call's conversation is gone.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{create, get, outbound, row, sid, world, World};
use crate::support::{error_locs, on_both_backends, read, Failure};

on_both_backends!(world =>
    carrier_refusals_and_outages,
    idempotency_keys_never_dial_twice,
    stale_calls_are_reconciled_with_the_carrier,
    a_dispatch_that_timed_out_is_found_not_dialled_again,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_calls_are_settled_within_a_minute_postgres() {
    if let Some(w) = world(crate::support::Backend::Postgres).await {
        orphaned_calls_are_settled_within_a_minute(w).await;
    }
}

/// The carrier takes the call but its answer comes after our timeout: the retry finds the call
/// among the carrier's own and takes it, instead of dialling a second one. Twilio and Vonage.
async fn a_dispatch_that_timed_out_is_found_not_dialled_again(w: World) {
    *w.twilio.state.create_latency.lock().unwrap() = Duration::from_millis(1500);
    let (status, call) = w.app.post("/v1/calls/create", outbound("16505550911")).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["status"], "not_started", "the first attempt timed out: {call}");
    *w.twilio.state.create_latency.lock().unwrap() = Duration::ZERO;
    assert_eq!(w.app.drain_jobs(Duration::from_secs(120)).await, 1);
    let placed = w.twilio.calls();
    assert_eq!(placed.len(), 1, "dialled once");
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(after["telephony_id"], json!(placed[0].sid));
    assert_eq!(after["status"], "in_progress");
    assert_eq!(w.twilio.requests("GET", "/Calls.json").len(), 1, "the retry looked before dialling");

    let (_, number) = w.app.post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"})).await;
    *w.vonage.state.create_latency.lock().unwrap() = Duration::from_millis(1500);
    let mut body = outbound("16505550912");
    body["from_number"] = number["number"].clone();
    let (status, call) = w.app.post("/v1/calls/create", body).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["status"], "not_started");
    *w.vonage.state.create_latency.lock().unwrap() = Duration::ZERO;
    assert_eq!(w.app.drain_jobs(Duration::from_secs(120)).await, 1);
    let placed = w.vonage.calls();
    assert_eq!(placed.len(), 1, "dialled once");
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(after["telephony_id"], json!(placed[0].uuid));
    assert_eq!(after["status"], "in_progress");
}

async fn carrier_refusals_and_outages(w: World) {
    // A refusal: kept as an error with the carrier's reason, answered 200.
    w.twilio.fail_next(Failure::Reject(400, 21211, "The 'To' number +16505557001 is not a valid phone number."));
    let call = create(&w, outbound("16505557001")).await;
    assert_eq!(row(&call), ("error".into(), "created".into(), json!("call_did_not_connect")));
    assert!(call["error_message"].as_str().unwrap().contains("21211"), "{call}");
    assert_eq!(call["telephony_id"], Value::Null);

    // 5xx twice, then it works: retried in the background.
    w.twilio.fail_next(Failure::ServerError);
    w.twilio.fail_next(Failure::ServerError);
    let call = create(&w, outbound("16505557002")).await;
    assert_eq!(row(&call), ("not_started".into(), "created".into(), Value::Null));
    let placed = w.twilio.calls().len();
    w.app.drain_jobs(Duration::from_secs(3600)).await;
    w.app.drain_jobs(Duration::from_secs(3600)).await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("in_progress".into(), "created".into(), Value::Null));
    assert_eq!(w.twilio.calls().len(), placed + 1, "placed exactly once");

    // A carrier that never answers in time: bounded retries, then an error.
    for _ in 0..3 {
        w.twilio.fail_next(Failure::Hang(Duration::from_secs(3)));
    }
    let call = create(&w, outbound("16505557003")).await;
    assert_eq!(call["status"], "not_started");
    for _ in 0..3 {
        w.app.drain_jobs(Duration::from_secs(3600)).await;
    }
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("error".into(), "created".into(), json!("call_did_not_connect")));
    assert!(after["error_message"].as_str().unwrap().contains("after 3 attempts"), "{after}");
}

async fn idempotency_keys_never_dial_twice(w: World) {
    let body = outbound("16505558001");
    let send = |key: &'static str, body: Value| {
        let client = w.app.client.clone();
        let url = format!("{}/v1/calls/create", w.app.base);
        let auth = w.app.key.clone();
        async move {
            let res =
                client.post(url).bearer_auth(auth).header("Idempotency-Key", key).json(&body).send().await.unwrap();
            read(res).await
        }
    };
    let placed = w.twilio.calls().len();
    let (s1, first) = send("order-42", body.clone()).await;
    let (s2, second) = send("order-42", body.clone()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first["id"], second["id"], "the same call");
    assert_eq!(w.twilio.calls().len(), placed + 1, "dialled once");
    let mut other = body.clone();
    other["to_number"] = json!("16505558002");
    let (status, err) = send("order-42", other).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_locs(&err), ["header.Idempotency-Key"]);

    // Retries racing each other still dial once.
    let results = futures_util::future::join_all((0..6).map(|_| send("race-7", outbound("16505558003")))).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, StatusCode::OK, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(w.twilio.calls().iter().filter(|c| c.field("To") == Some("+16505558003")).count(), 1);
    let (_, page) = w.app.get("/v1/calls/list?size=100").await;
    assert_eq!(page["total"], 2);
}

async fn stale_calls_are_reconciled_with_the_carrier(w: World) {
    let call = create(&w, outbound("16505550951")).await;
    let sid = sid(&call);
    w.twilio.status(&sid, "in-progress", &[]).await;
    // The carrier's completed callback is lost; the carrier knows the call is over.
    w.twilio.set_status(&sid, "completed");
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let long_ago = vocode_server::store::now() - chrono::Duration::hours(1);
    let mut tx = w.app.store().begin().await.unwrap();
    vocode_server::store::calls::touch(tx.conn(), id, long_ago).await.unwrap();
    tx.commit().await.unwrap();
    w.app.state.reconcile().await;
    let after = get(&w, call["id"].as_str().unwrap()).await;
    assert_eq!(row(&after), ("ended".into(), "picked_up".into(), json!("human_disconnected")));
    // A call with recent news is left alone.
    let fresh = create(&w, outbound("16505550952")).await;
    w.twilio.set_status(&self::sid(&fresh), "completed");
    w.app.state.reconcile().await;
    assert_eq!(get(&w, fresh["id"].as_str().unwrap()).await["status"], "in_progress");
}

/// Sets a call's last news from its carrier `seconds` ago.
async fn quiet_for(w: &World, call: &Value, seconds: i64) {
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let mut tx = w.app.store().begin().await.unwrap();
    let at = vocode_server::store::now() - chrono::Duration::seconds(seconds);
    vocode_server::store::calls::touch(tx.conn(), id, at).await.unwrap();
    tx.commit().await.unwrap();
}

/// Records that `owner` runs the call's conversation (as the process running it does).
async fn owned_by(w: &World, call: &Value, owner: &str) {
    use vocode_server::store::DbConn;
    let id = uuid::Uuid::parse_str(call["id"].as_str().unwrap()).unwrap();
    let sql = "INSERT INTO call_sessions (call_id, owner, generation, state, updated_at) VALUES ($1, $2, 1, '{}', $3)";
    let mut tx = w.app.store().begin().await.unwrap();
    let at = vocode_server::store::now();
    match tx.conn() {
        DbConn::Pg(c) => sqlx::query(sql).bind(id).bind(owner).bind(at).execute(c).await.map(|_| ()),
        DbConn::Lite(c) => sqlx::query(sql).bind(id).bind(owner).bind(at).execute(c).await.map(|_| ()),
    }
    .unwrap();
    tx.commit().await.unwrap();
}

/// The process running a call's conversation is killed and the carrier's completed callback is
/// lost. Half a minute later (not `RECONCILE_AFTER_SECS`), the call is asked about at its carrier
/// and ends — by the server's failure, not the person: `bot_disconnected`. A call whose owner is
/// alive is left to it; a call whose conversation nobody runs is asked about after a minute.
async fn orphaned_calls_are_settled_within_a_minute(w: World) {
    let answered = |to: &'static str| {
        let w = &w;
        async move {
            let call = create(w, outbound(to)).await;
            w.twilio.status(&sid(&call), "in-progress", &[]).await;
            w.twilio.set_status(&sid(&call), "completed");
            call
        }
    };
    // Its owner was killed 30 s ago (its last heartbeat is that old); the last news came 25 s ago.
    let orphan = answered("16505550961").await;
    let dead = "10.0.0.9:3000-killed";
    let mut tx = w.app.store().begin().await.unwrap();
    let killed_at = vocode_server::store::now() - chrono::Duration::seconds(30);
    vocode_server::store::replicas::beat(tx.conn(), dead, killed_at, killed_at, false).await.unwrap();
    tx.commit().await.unwrap();
    owned_by(&w, &orphan, dead).await;
    quiet_for(&w, &orphan, 25).await;
    // Its owner is this very process, alive: it is left to it until RECONCILE_AFTER_SECS.
    let owned = answered("16505550962").await;
    owned_by(&w, &owned, w.app.state.replicas.id()).await;
    quiet_for(&w, &owned, 25).await;
    // No conversation on record: asked about after a minute of quiet, not before.
    let unowned = answered("16505550963").await;
    quiet_for(&w, &unowned, 61).await;
    let recent = answered("16505550964").await;
    quiet_for(&w, &recent, 30).await;

    w.app.state.reconcile().await;
    let id = |call: &Value| call["id"].as_str().unwrap().to_owned();
    assert_eq!(row(&get(&w, &id(&orphan)).await), ("ended".into(), "picked_up".into(), json!("bot_disconnected")));
    assert_eq!(get(&w, &id(&owned)).await["status"], "in_progress");
    assert_eq!(row(&get(&w, &id(&unowned)).await), ("ended".into(), "picked_up".into(), json!("human_disconnected")));
    assert_eq!(get(&w, &id(&recent)).await["status"], "in_progress");
}
