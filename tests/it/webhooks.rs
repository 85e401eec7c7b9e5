//! Webhooks users can trust: a call's events reach a real receiver signed, at least once, in
//! order — through failures, kill -9, expired leases, several replicas and misbehaving receivers;
//! private targets refused; and the metrics scraped.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::{CarrierMode, TelephonyArgs};

use crate::support::{
    eventually, hex_key, link_twilio_number, on_both_backends, post_ok, Backend, Behaviour, FakeTwilio, Options,
    Received, Receiver, ServerProcess, TestApp, TestDb,
};

// ---------------------------------------------------------------- the world

const OUR_NUMBER: &str = "+14155550100";

struct World {
    app: TestApp,
    twilio: FakeTwilio,
    receiver: Receiver,
    agent: String,
}

fn telephony(twilio: &FakeTwilio) -> TelephonyArgs {
    TelephonyArgs {
        carrier_mode: CarrierMode::Live,
        twilio_api_base_url: Some(twilio.base.clone()),
        ..TelephonyArgs::default()
    }
}

async fn setup(app: &TestApp, twilio: &FakeTwilio, webhook: Value) -> String {
    twilio.own(OUR_NUMBER);
    link_twilio_number(&app.base, &app.key, &twilio.state.account_sid, &twilio.state.auth_token, OUR_NUMBER).await;
    let (status, agent) = app.post("/v1/agents/create", json!({"prompt": {"content": "hi"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}, "webhook": webhook})).await;
    assert_eq!(status, StatusCode::OK, "{agent}");
    agent["id"].as_str().unwrap().to_owned()
}

const ALL: &[&str] = &[
    "event_phone_call_connected",
    "event_phone_call_ended",
    "event_phone_call_did_not_connect",
    "event_human_detection",
    "event_recording",
];

async fn world_with(backend: Backend, method: &str, allow_private: bool, workers: usize) -> Option<World> {
    let twilio = FakeTwilio::start().await;
    let receiver = Receiver::start().await;
    let options = Options { telephony: telephony(&twilio), workers, ..Options::default() };
    let app = TestApp::spawn_with_serve(backend, options, |serve| {
        serve.allow_private_targets = allow_private;
        serve.webhook_timeout_secs = 1;
    })
    .await?;
    let agent = setup(&app, &twilio, json!({"subscriptions": ALL, "url": receiver.url, "method": method})).await;
    Some(World { app, twilio, receiver, agent })
}

async fn world(backend: Backend) -> Option<World> {
    world_with(backend, "POST", true, 0).await
}

async fn call(w: &World, to: &str) -> (String, String) {
    let (status, call) =
        w.app.post("/v1/calls/create", json!({"from_number": OUR_NUMBER, "to_number": to, "agent": w.agent})).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    (call["id"].as_str().unwrap().to_owned(), call["telephony_id"].as_str().unwrap().to_owned())
}

async fn secret_of(app: &TestApp) -> String {
    let (_, usage) = app.get("/v1/usage").await;
    let user = uuid::Uuid::parse_str(usage["user_id"].as_str().unwrap()).unwrap();
    vocode_server::webhooks::signing::read_or_create(app.store(), &app.state.secrets, user).await.unwrap()
}

async fn drain(app: &TestApp) {
    // A day and more ahead: every retry of the schedule is due.
    while app.drain_jobs(Duration::from_secs(2 * 86_400)).await > 0 {}
}

on_both_backends!(world =>
    a_calls_life_delivers_exactly_its_subscribed_events_in_order_signed,
    a_receiver_that_fails_then_recovers_gets_every_event,
    gone_stops_and_client_errors_give_up,
    misbehaving_receivers_are_recorded_and_let_go,
    rotated_secrets_sign_twice_for_a_day,
    an_event_delivered_on_record_is_not_sent_again,
);

async fn a_calls_life_delivers_exactly_its_subscribed_events_in_order_signed(w: World) {
    let (id, sid) = call(&w, "16505551001").await;
    w.twilio.status(&sid, "ringing", &[]).await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.amd(&sid, "human").await;
    let recording = format!("{}/2010-04-01/Accounts/{}/Recordings/RE9", w.twilio.base, w.twilio.state.account_sid);
    w.twilio.status(&sid, "completed", &[("CallDuration", "61"), ("RecordingUrl", &recording)]).await;
    // Repeated callbacks cause no repeated events.
    w.twilio.status(&sid, "completed", &[("CallDuration", "61")]).await;
    drain(&w.app).await;
    let got = w.receiver.got();
    let kinds: Vec<String> = got.iter().map(Received::kind).collect();
    assert_eq!(
        kinds,
        ["event_phone_call_connected", "event_human_detection", "event_phone_call_ended", "event_recording"]
    );
    let secret = secret_of(&w.app).await;
    for r in &got {
        assert!(r.signed_with(&secret), "{:?}", r.headers);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers["webhook-id"].starts_with("msg_"));
        let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        assert_eq!(r.call_id(), id);
    }
    let ids: std::collections::HashSet<&String> = got.iter().map(|r| &r.headers["webhook-id"]).collect();
    assert_eq!(ids.len(), 4, "one webhook-id per event");
    assert_eq!(got[0].event()["payload"], json!({"to_number": "16505551001", "from_number": "14155550100"}));
    assert_eq!(got[1].event()["payload"], json!({"result": "human"}));
    let ended = got[2].event()["payload"].clone();
    assert_eq!((ended["minutes"].clone(), ended["stage_outcome"].clone()), (json!(2), json!("human_disconnected")));
    assert_eq!(got[3].event()["payload"]["recording_url"], json!(format!("{}/v1/calls/recording?id={id}", w.app.base)));

    // A call that never connects: its one event says what the carrier said.
    let (_, sid) = call(&w, "16505551002").await;
    w.twilio.status(&sid, "busy", &[]).await;
    drain(&w.app).await;
    let last = w.receiver.got().pop().unwrap().event();
    assert_eq!(last["type"], "event_phone_call_did_not_connect");
    assert_eq!(last["payload"]["telephony_status"], "busy");
    assert_eq!(last["payload"]["stage_outcome"], "human_unanswered");

    // Unsubscribed events are not sent.
    w.app
        .post(
            &format!("/v1/agents/update?id={}", w.agent),
            json!({"webhook": {"subscriptions": ["event_phone_call_ended"]}}),
        )
        .await;
    let before = w.receiver.got().len();
    let (_, sid) = call(&w, "16505551003").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.status(&sid, "completed", &[("CallDuration", "5")]).await;
    drain(&w.app).await;
    let new: Vec<String> = w.receiver.got()[before..].iter().map(Received::kind).collect();
    assert_eq!(new, ["event_phone_call_ended"]);
}

#[tokio::test]
async fn get_webhooks_carry_the_event_in_the_query() {
    let Some(w) = world_with(Backend::Sqlite, "GET", true, 0).await else { return };
    let (id, sid) = call(&w, "16505551101").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    drain(&w.app).await;
    let got = w.receiver.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "GET");
    assert!(got[0].body.is_empty());
    let event = got[0].event();
    assert_eq!((event["type"].clone(), event["call_id"].clone()), (json!("event_phone_call_connected"), json!(id)));
    assert_eq!(event["payload"]["to_number"], "16505551101");
    assert!(got[0].signed_with(&secret_of(&w.app).await), "GET signs its query string");
}

async fn attempts(app: &TestApp) -> Vec<vocode_server::store::webhooks::Attempt> {
    let (_, usage) = app.get("/v1/usage").await;
    let user = uuid::Uuid::parse_str(usage["user_id"].as_str().unwrap()).unwrap();
    let mut handle = app.store().read().await.unwrap();
    vocode_server::store::webhooks::attempts_of_user(handle.conn(), user).await.unwrap()
}

async fn a_receiver_that_fails_then_recovers_gets_every_event(w: World) {
    w.receiver.plan([Behaviour::Status(503), Behaviour::RetryAfter(429, 7), Behaviour::Status(500)]);
    let (_, sid) = call(&w, "16505551201").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.status(&sid, "completed", &[("CallDuration", "10")]).await;
    drain(&w.app).await;
    let got = w.receiver.got();
    let kinds: Vec<String> = got.iter().map(Received::kind).collect();
    // The connected event is tried until it gets through; only then does the ended one go out.
    assert_eq!(
        kinds,
        ["event_phone_call_connected"; 4]
            .iter()
            .chain(["event_phone_call_ended"].iter())
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
    let by_id = w.receiver.by_id();
    assert_eq!(by_id.len(), 2, "retries keep their webhook-id");
    let recorded = attempts(&w.app).await;
    let codes: Vec<Option<i32>> = recorded.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(503), Some(429), Some(500), Some(204), Some(204)]);
    assert_eq!(recorded[0].outcome, "retry");
    assert_eq!(recorded[3].outcome, "delivered");
    assert!(recorded.iter().all(|a| a.latency_ms >= 0));
    assert_eq!(recorded.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1, 2, 3, 4, 1]);
}

/// The receiver's host is down (nothing listens on its port) for two rounds of retries, then comes
/// back on the same address: every event arrives, each call's in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_then_back_gets_every_event_in_order() {
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let twilio = FakeTwilio::start().await;
    let options = Options { telephony: telephony(&twilio), workers: 0, ..Options::default() };
    let Some(app) = TestApp::spawn_with_serve(Backend::Postgres, options, |serve| {
        serve.allow_private_targets = true;
        serve.webhook_timeout_secs = 1;
    })
    .await
    else {
        return;
    };
    let url = format!("http://{addr}/hook");
    let agent = setup(&app, &twilio, json!({"subscriptions": ALL, "url": url})).await;
    let mut calls = Vec::new();
    for i in 0..5 {
        let (status, call) = app
            .post(
                "/v1/calls/create",
                json!({"from_number": OUR_NUMBER, "to_number": format!("1650555130{i}"), "agent": agent}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{call}");
        let sid = call["telephony_id"].as_str().unwrap().to_owned();
        assert_eq!(twilio.status(&sid, "in-progress", &[]).await, StatusCode::NO_CONTENT);
        assert_eq!(twilio.status(&sid, "completed", &[("CallDuration", "7")]).await, StatusCode::NO_CONTENT);
        calls.push(call["id"].as_str().unwrap().to_owned());
    }
    // Down: the first event of each call is tried now and again a minute later, and refused.
    assert_eq!(app.drain_jobs(Duration::ZERO).await, 5);
    assert_eq!(app.drain_jobs(Duration::from_secs(60)).await, 5);
    let failed = attempts(&app).await;
    assert_eq!(failed.len(), 10);
    assert!(failed.iter().all(|a| a.outcome == "retry" && a.status_code.is_none()), "{failed:?}");
    // Back, on the same address.
    let receiver = Receiver::start_on(&addr).await;
    drain(&app).await;
    assert_complete_and_ordered(&receiver, &calls);
    assert_eq!(receiver.by_id().len(), 10, "each call's connected and ended events, once each");
    assert_eq!(receiver.got().len(), 10, "nothing delivered twice");
}

/// A worker whose process looked gone had its delivery taken over, yet got its 2xx and recorded
/// it: the worker that took the delivery over does not send the event again.
async fn an_event_delivered_on_record_is_not_sent_again(w: World) {
    w.receiver.plan([Behaviour::Status(503)]);
    let (id, sid) = call(&w, "16505551951").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    assert_eq!(w.app.drain_jobs(Duration::ZERO).await, 1);
    let event_id = w.receiver.got()[0].headers["webhook-id"].clone();
    let recorded = attempts(&w.app).await;
    let delivered = vocode_server::store::webhooks::Attempt {
        id: uuid::Uuid::now_v7(),
        event_id,
        attempt: 2,
        status_code: Some(204),
        error: None,
        outcome: "delivered".into(),
        created_at: vocode_server::store::now(),
        ..recorded[0].clone()
    };
    let mut tx = w.app.store().begin().await.unwrap();
    vocode_server::store::webhooks::insert_attempt(tx.conn(), &delivered).await.unwrap();
    tx.commit().await.unwrap();
    drain(&w.app).await;
    let got = w.receiver.got();
    assert_eq!((got.len(), got[0].call_id()), (1, id), "sent once, not again");
    assert_eq!(w.app.drain_jobs(Duration::from_secs(3 * 86_400)).await, 0, "and the job is done");
}

async fn gone_stops_and_client_errors_give_up(w: World) {
    w.receiver.plan([Behaviour::Status(410), Behaviour::Status(400), Behaviour::Status(404), Behaviour::Status(422)]);
    let (_, sid) = call(&w, "16505551301").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.status(&sid, "completed", &[("CallDuration", "10")]).await;
    drain(&w.app).await;
    let recorded = attempts(&w.app).await;
    let summary: Vec<(String, Option<i32>, String)> =
        recorded.iter().map(|a| (a.event_type.clone(), a.status_code, a.outcome.clone())).collect();
    assert_eq!(
        summary,
        [
            ("event_phone_call_connected".into(), Some(410), "failed".into()),
            ("event_phone_call_ended".into(), Some(400), "retry".into()),
            ("event_phone_call_ended".into(), Some(404), "retry".into()),
            ("event_phone_call_ended".into(), Some(422), "failed".into()),
        ]
    );
    let mut handle = w.app.store().read().await.unwrap();
    let failed = vocode_server::store::jobs::count(handle.conn(), "deliver_webhook", "failed").await.unwrap();
    assert_eq!(failed, 2, "given up deliveries stay, marked failed");
}

async fn misbehaving_receivers_are_recorded_and_let_go(w: World) {
    w.receiver.plan([Behaviour::Hang, Behaviour::HugeBody, Behaviour::RedirectToSelf]);
    let (_, sid) = call(&w, "16505551401").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    let started = std::time::Instant::now();
    w.app.drain_jobs(Duration::from_secs(10)).await; // the hang: 1 s timeout
    w.app.drain_jobs(Duration::from_secs(400)).await; // 10 MB answered: delivered, unread
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let recorded = attempts(&w.app).await;
    assert_eq!(recorded[0].outcome, "retry");
    assert!(recorded[0].error.as_deref().unwrap().contains("no answer within"), "{:?}", recorded[0].error);
    assert_eq!((recorded[1].status_code, recorded[1].outcome.as_str()), (Some(200), "delivered"));
    // A redirect loop.
    w.twilio.status(&sid, "completed", &[("CallDuration", "3")]).await;
    w.receiver.plan(std::iter::repeat_n(Behaviour::RedirectToSelf, 6));
    w.app.drain_jobs(Duration::from_secs(1)).await;
    let last = attempts(&w.app).await.pop().unwrap();
    assert_eq!(last.outcome, "failed");
    assert!(last.error.as_deref().unwrap().contains("redirects"), "{:?}", last.error);
}

async fn rotated_secrets_sign_twice_for_a_day(w: World) {
    let old = secret_of(&w.app).await;
    let (_, usage) = w.app.get("/v1/usage").await;
    let user = uuid::Uuid::parse_str(usage["user_id"].as_str().unwrap()).unwrap();
    let new = vocode_server::webhooks::signing::rotate(w.app.store(), &w.app.state.secrets, user).await.unwrap();
    assert_ne!(old, new);
    assert_eq!(secret_of(&w.app).await, new);
    let (_, sid) = call(&w, "16505551501").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    drain(&w.app).await;
    let got = w.receiver.got();
    assert_eq!(got[0].headers["webhook-signature"].split(' ').count(), 2);
    assert!(got[0].signed_with(&new) && got[0].signed_with(&old));
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let Some(w) = world_with(Backend::Sqlite, "POST", false, 0).await else { return };
    let (_, sid) = call(&w, "16505551601").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    drain(&w.app).await;
    assert!(w.receiver.got().is_empty(), "nothing reached 127.0.0.1");
    let recorded = attempts(&w.app).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, "failed");
    assert!(recorded[0].error.as_deref().unwrap().contains("not a public address"), "{:?}", recorded[0].error);
    // The same by name: localhost resolves to loopback only.
    let port = w.receiver.url.split(':').nth(2).unwrap().split('/').next().unwrap().to_owned();
    w.app
        .post(
            &format!("/v1/agents/update?id={}", w.agent),
            json!({"webhook": {"url": format!("http://localhost:{port}/hook")}}),
        )
        .await;
    w.twilio.status(&sid, "completed", &[("CallDuration", "3")]).await;
    drain(&w.app).await;
    let last = attempts(&w.app).await.pop().unwrap();
    assert_eq!(last.outcome, "failed");
    assert!(last.error.as_deref().unwrap().contains("no public address"), "{:?}", last.error);
    assert!(w.receiver.got().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_stuck_on_one_call_does_not_hold_up_the_others() {
    let Some(w) = world_with(Backend::Sqlite, "POST", true, 4).await else { return };
    let (stuck, stuck_sid) = call(&w, "16505551701").await;
    w.receiver.state.hang_calls.lock().unwrap().push(stuck.clone());
    w.twilio.status(&stuck_sid, "in-progress", &[]).await;
    w.twilio.status(&stuck_sid, "completed", &[("CallDuration", "3")]).await;
    let mut others = Vec::new();
    for i in 0..5 {
        let (id, sid) = call(&w, &format!("165055518{i:02}")).await;
        w.twilio.status(&sid, "in-progress", &[]).await;
        w.twilio.status(&sid, "completed", &[("CallDuration", "3")]).await;
        others.push(id);
    }
    eventually(Duration::from_secs(10), || async {
        let got = w.receiver.got();
        let done = others.iter().all(|id| got.iter().filter(|r| r.call_id() == *id).count() == 2);
        done.then_some(())
    })
    .await;
    for id in &others {
        let kinds: Vec<String> = w.receiver.got().iter().filter(|r| r.call_id() == *id).map(Received::kind).collect();
        assert_eq!(kinds, ["event_phone_call_connected", "event_phone_call_ended"]);
    }
    let stuck_ended = w.receiver.got().iter().any(|r| r.call_id() == stuck && r.kind() == "event_phone_call_ended");
    assert!(!stuck_ended, "the stuck call's later event waits for its first");
}

#[tokio::test]
async fn metrics_are_scraped_in_the_prometheus_format() {
    let Some(w) = world(Backend::Sqlite).await else { return };
    let (_, sid) = call(&w, "16505551901").await;
    w.twilio.status(&sid, "in-progress", &[]).await;
    w.twilio.status(&sid, "busy", &[]).await;
    drain(&w.app).await;
    let res = reqwest::get(format!("{}/metrics", w.app.base)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = res.text().await.unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the Prometheus text format");
    let find = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .count()
    };
    assert!(find("vocode_http_requests_total", Some(("route", "/v1/calls/create"))) > 0, "{text}");
    let histogram = |name: &str| {
        scrape
            .samples
            .iter()
            .any(|s| s.metric == name && matches!(s.value, prometheus_parse::Value::Histogram(ref b) if !b.is_empty()))
    };
    assert!(histogram("vocode_http_request_duration_seconds"), "{text}");
    assert!(histogram("vocode_carrier_request_duration_seconds"));
    assert!(histogram("vocode_webhook_delivery_duration_seconds"));
    assert!(find("vocode_carrier_requests_total", Some(("carrier", "twilio"))) > 0);
    assert!(find("vocode_webhook_deliveries_total", Some(("outcome", "delivered"))) > 0);
    assert!(find("vocode_calls_finished_total", Some(("stage_outcome", "human_disconnected"))) > 0);
    assert!(find("vocode_calls", Some(("status", "in_progress"))) > 0);
    assert!(find("vocode_jobs_ready", None) > 0 && find("vocode_jobs_oldest_ready_age_seconds", None) > 0);
}

// ---------------------------------------------------------------- processes

fn process_env<'a>(
    twilio: &'a FakeTwilio,
    secrets_key: &'a str,
    key: &'a str,
    workers: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("SECRETS_KEY", secrets_key),
        ("VOCODE_API_KEY", key),
        ("CARRIER_MODE", "live"),
        ("TWILIO_API_BASE_URL", twilio.base.as_str()),
        ("ALLOW_PRIVATE_TARGETS", "true"),
        ("WORKERS", workers),
        ("JOB_LEASE_SECS", "2"),
        ("WEBHOOK_TIMEOUT_SECS", "1"),
        ("RUST_LOG", "warn"),
    ]
}

/// Links our number and makes an agent whose webhook subscribes to the call events.
async fn setup_process(base: &str, key: &str, twilio: &FakeTwilio, receiver: &Receiver) -> String {
    twilio.own(OUR_NUMBER);
    link_twilio_number(base, key, &twilio.state.account_sid, &twilio.state.auth_token, OUR_NUMBER).await;
    let agent = post_ok(
        base,
        key,
        "/v1/agents/create",
        json!({"prompt": {}, "voice": {"type": "voice_vocode", "voice_id": "joe"},
        "webhook": {"subscriptions": ["event_phone_call_connected", "event_phone_call_ended"], "url": receiver.url}}),
    )
    .await;
    agent["id"].as_str().unwrap().to_owned()
}

/// Starts a server process with `env`, places a call through it whose first event (connected) the
/// receiver never answers, and waits until that delivery hangs: the process, and the call.
async fn stuck_delivering(
    db: &TestDb,
    env: &[(&str, &str)],
    key: &str,
    twilio: &FakeTwilio,
    receiver: &Receiver,
    to: &str,
) -> (ServerProcess, Value) {
    let process = ServerProcess::start(&db.url, env);
    let agent = setup_process(&process.base, key, twilio, receiver).await;
    receiver.plan([Behaviour::Hang]);
    let call = post_ok(
        &process.base,
        key,
        "/v1/calls/create",
        json!({"from_number": OUR_NUMBER, "to_number": to, "agent": agent}),
    )
    .await;
    let sid = call["telephony_id"].as_str().unwrap();
    twilio.status(sid, "in-progress", &[]).await;
    eventually(Duration::from_secs(10), || async { (!receiver.got().is_empty()).then_some(()) }).await;
    (process, call)
}

/// Every call's events arrived, connected before ended, duplicates only under the same webhook-id.
fn assert_complete_and_ordered(receiver: &Receiver, calls: &[String]) {
    let got = receiver.got();
    for id in calls {
        let mine: Vec<&Received> = got.iter().filter(|r| r.call_id() == *id).collect();
        let mut ids_by_kind: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for r in &mine {
            ids_by_kind.entry(r.kind()).or_default().insert(r.headers["webhook-id"].clone());
        }
        assert_eq!(ids_by_kind.len(), 2, "call {id}: {ids_by_kind:?}");
        assert!(ids_by_kind.values().all(|ids| ids.len() == 1), "a duplicate with another webhook-id: {ids_by_kind:?}");
        let first_ended = mine.iter().position(|r| r.kind() == "event_phone_call_ended").unwrap();
        let last_connected = mine.iter().rposition(|r| r.kind() == "event_phone_call_connected").unwrap();
        assert!(last_connected < first_ended, "call {id}: ended before connected was delivered");
    }
}

async fn kill_nine_with_deliveries_pending(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else { return };
    let twilio = FakeTwilio::start().await;
    let receiver = Receiver::start().await;
    let secrets_key = hex_key();
    let key = "vk_process_test_key_0123456789";
    // No workers: every event stays queued.
    let mut first = ServerProcess::start(&db.url, &process_env(&twilio, &secrets_key, key, "0"));
    let agent = setup_process(&first.base, key, &twilio, &receiver).await;
    let mut calls = Vec::new();
    for i in 0..5 {
        let call = post_ok(
            &first.base,
            key,
            "/v1/calls/create",
            json!({"from_number": OUR_NUMBER, "to_number": format!("1650555200{i}"), "agent": agent}),
        )
        .await;
        let sid = call["telephony_id"].as_str().unwrap().to_owned();
        assert_eq!(twilio.status(&sid, "in-progress", &[]).await, StatusCode::NO_CONTENT);
        assert_eq!(twilio.status(&sid, "completed", &[("CallDuration", "7")]).await, StatusCode::NO_CONTENT);
        calls.push(call["id"].as_str().unwrap().to_owned());
    }
    first.kill9();
    assert!(receiver.got().is_empty());
    // After the restart, every event is delivered; the receiver is down for the first tries.
    receiver.plan([Behaviour::Status(503), Behaviour::Status(503)]);
    let _second = ServerProcess::start(&db.url, &process_env(&twilio, &secrets_key, key, "4"));
    eventually(Duration::from_secs(30), || async {
        let got = receiver.got();
        calls
            .iter()
            .all(|id| got.iter().filter(|r| r.call_id() == *id && r.kind() == "event_phone_call_ended").count() >= 1)
            .then_some(())
    })
    .await;
    assert_complete_and_ordered(&receiver, &calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_with_deliveries_pending_sqlite() {
    kill_nine_with_deliveries_pending(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_with_deliveries_pending_postgres() {
    kill_nine_with_deliveries_pending(Backend::Postgres).await;
}

/// A worker dies holding a delivery (the receiver never answers it): once its lease expires,
/// another process delivers it — with the same webhook-id.
async fn a_dead_workers_job_runs_again(backend: Backend) {
    let Some(db) = TestDb::create(backend).await else { return };
    let twilio = FakeTwilio::start().await;
    let receiver = Receiver::start().await;
    let secrets_key = hex_key();
    let key = "vk_process_test_key_abcdef";
    let env = process_env(&twilio, &secrets_key, key, "2");
    let (mut first, _) = stuck_delivering(&db, &env, key, &twilio, &receiver, "16505552101").await;
    first.kill9();
    let _second = ServerProcess::start(&db.url, &process_env(&twilio, &secrets_key, key, "2"));
    let got = eventually(Duration::from_secs(20), || async {
        let got = receiver.got();
        (got.len() >= 2).then_some(got)
    })
    .await;
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"], "the same event, not a new one");
    assert_eq!(got[1].kind(), "event_phone_call_connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_job_runs_again_sqlite() {
    a_dead_workers_job_runs_again(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_job_runs_again_postgres() {
    a_dead_workers_job_runs_again(Backend::Postgres).await;
}

/// A process is killed while delivering a call's first event, under the default two-minute lease:
/// another process takes the delivery over as soon as the dead one's heartbeat is stale — seconds,
/// not the lease — with the same webhook-id, and the call's later event follows right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_processs_delivery_is_taken_over_in_seconds_and_the_rest_follow() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let twilio = FakeTwilio::start().await;
    let receiver = Receiver::start().await;
    let secrets_key = hex_key();
    let key = "vk_process_test_key_takeover";
    let mut env = process_env(&twilio, &secrets_key, key, "2");
    env.retain(|(k, _)| !matches!(*k, "JOB_LEASE_SECS" | "WEBHOOK_TIMEOUT_SECS"));
    env.push(("WEBHOOK_TIMEOUT_SECS", "60"));
    let (mut first, call) = stuck_delivering(&db, &env, key, &twilio, &receiver, "16505552201").await;
    let sid = call["telephony_id"].as_str().unwrap();
    // The ended event waits behind the connected one.
    assert_eq!(twilio.status(sid, "completed", &[("CallDuration", "7")]).await, StatusCode::NO_CONTENT);
    first.kill9();
    let killed = std::time::Instant::now();
    let _second = ServerProcess::start(&db.url, &env);
    let got = eventually(Duration::from_secs(60), || async {
        let got = receiver.got();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(20), "taken over after {took:?}: the lease is two minutes");
    let kinds: Vec<String> = got.iter().map(Received::kind).collect();
    assert_eq!(kinds, ["event_phone_call_connected", "event_phone_call_connected", "event_phone_call_ended"]);
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"], "the same event, not a new one");
    assert_complete_and_ordered(&receiver, &[call["id"].as_str().unwrap().to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_postgres_deliver_everything_in_order() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let twilio = FakeTwilio::start().await;
    let receiver = Receiver::start().await;
    let secrets_key = hex_key();
    let key = "vk_replica_test_key_0123456";
    let replicas: Vec<ServerProcess> =
        (0..3).map(|_| ServerProcess::start(&db.url, &process_env(&twilio, &secrets_key, key, "4"))).collect();
    let agent = setup_process(&replicas[0].base, key, &twilio, &receiver).await;
    // Some receivers fail now and then.
    receiver.plan((0..10).map(|i| if i % 3 == 0 { Behaviour::Status(503) } else { Behaviour::Status(204) }));
    let mut calls = Vec::new();
    let mut sids = Vec::new();
    for i in 0..30 {
        let base = &replicas[i % 3].base;
        let call = post_ok(
            base,
            key,
            "/v1/calls/create",
            json!({"from_number": OUR_NUMBER, "to_number": format!("16505553{i:03}"), "agent": agent}),
        )
        .await;
        sids.push(call["telephony_id"].as_str().unwrap().to_owned());
        calls.push(call["id"].as_str().unwrap().to_owned());
    }
    let sends = sids.iter().map(|sid| async {
        twilio.status(sid, "in-progress", &[]).await;
        twilio.status(sid, "completed", &[("CallDuration", "12")]).await;
    });
    futures_util::future::join_all(sends).await;
    eventually(Duration::from_secs(60), || async {
        let got = receiver.got();
        calls
            .iter()
            .all(|id| got.iter().any(|r| r.call_id() == *id && r.kind() == "event_phone_call_ended"))
            .then_some(())
    })
    .await;
    assert_complete_and_ordered(&receiver, &calls);
    // Each call was placed once, whichever replica took it.
    assert_eq!(twilio.calls().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_finishes_then_releases() {
    let Some(db) = TestDb::create(Backend::Sqlite).await else { return };
    let twilio = FakeTwilio::start().await;
    let receiver = Receiver::start().await;
    let secrets_key = hex_key();
    let key = "vk_shutdown_test_key_012345";
    let mut env = process_env(&twilio, &secrets_key, key, "2");
    env.retain(|(k, _)| !matches!(*k, "JOB_LEASE_SECS" | "WEBHOOK_TIMEOUT_SECS"));
    env.extend([("JOB_LEASE_SECS", "3600"), ("WEBHOOK_TIMEOUT_SECS", "30"), ("SHUTDOWN_GRACE_SECS", "1")]);
    let (mut first, _) = stuck_delivering(&db, &env, key, &twilio, &receiver, "16505554001").await;
    // SIGTERM: the delivery cannot finish within the grace period; it is released, not lost,
    // and the next process delivers it at once although its lease (an hour) has not expired.
    let pid = first.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = first.child.wait().unwrap();
    assert!(status.success(), "a clean exit: {status:?}");
    let _second = ServerProcess::start(&db.url, &env);
    let got = eventually(Duration::from_secs(10), || async {
        let got = receiver.got();
        (got.len() >= 2).then_some(got)
    })
    .await;
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
}

#[tokio::test]
async fn operators_read_and_rotate_signing_secrets_from_the_command_line() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vocode-server"))
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("SECRETS_KEY", &app.secrets_key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_owned()
    };
    let first = run(&["users", "webhook-secret", "--user", "default"]);
    assert!(first.starts_with("whsec_"), "{first}");
    assert_eq!(run(&["users", "webhook-secret", "--user", "default"]), first, "reading does not change it");
    let rotated = run(&["users", "webhook-secret", "--user", "default", "--rotate"]);
    assert!(rotated.starts_with("whsec_") && rotated != first);
    assert_eq!(secret_of(&app).await, rotated, "the server signs with the new one");
}
