//! Faults, on Postgres, against the real binary: the server killed with `kill -9` in the middle
//! of a thousand creates, its database cut off mid-load, its carrier answering 500s, hanging or
//! closing connections. Each test says what was lost — which must be nothing. (A webhook receiver
//! that is down, then back: `webhooks`. Disk full and a read-only data folder for the embedded
//! database: `embedded_faults`.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::support::{
    broken_carrier, eventually, hex_key, link_twilio_number, post_ok, Backend, FakeTwilio, FaultProxy, ServerProcess,
    TestDb,
};

const OUR_NUMBER: &str = "+14155550100";

/// A port nobody listens on now (so that a restarted server can come back on the same address).
fn free_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

/// Our number linked through a Twilio account connection with these credentials, and an agent.
async fn seed(base: &str, key: &str, account_sid: &str, auth_token: &str) -> String {
    link_twilio_number(base, key, account_sid, auth_token, OUR_NUMBER).await;
    let agent = post_ok(
        base,
        key,
        "/v1/agents/create",
        json!({"prompt": {"content": "Hello"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}),
    )
    .await;
    agent["id"].as_str().unwrap().to_owned()
}

/// The call id in a URL this server gave the carrier (`…/{call_id}`).
fn call_id_in(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

// ---------------------------------------------------------------- kill -9 mid-load

/// A thousand creates at once; `kill -9` once 300 have been answered, while the rest are in
/// flight and the carrier (slow to answer, 300 ms) holds dozens of dispatches whose answer the
/// dying server never reads. After a restart on the same database: every call that got a 200
/// exists and ends, and every call the database holds was placed with the carrier exactly once —
/// the ones whose placing was cut short are found at the carrier, not dialled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_thousand_creates_loses_nothing_and_dials_each_call_once() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let twilio = FakeTwilio::start().await;
    twilio.own(OUR_NUMBER);
    *twilio.state.create_latency.lock().unwrap() = Duration::from_millis(300);
    let key = vocode_server::crypto::generate_api_key().key;
    let secrets = hex_key();
    let listen = free_addr();
    let env = [
        ("SECRETS_KEY", secrets.as_str()),
        ("VOCODE_API_KEY", key.as_str()),
        ("CARRIER_MODE", "live"),
        ("TWILIO_API_BASE_URL", twilio.base.as_str()),
        ("JOB_LEASE_SECS", "3"),
        ("RUST_LOG", "warn"),
    ];
    let mut server = ServerProcess::start_with(&db.url, &listen, &env, |_| {});
    let base = server.base.clone();
    let agent = seed(&base, &key, &twilio.state.account_sid, &twilio.state.auth_token).await;

    let client = reqwest::Client::builder().pool_max_idle_per_host(1000).build().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut creates = JoinSet::new();
    for i in 0..1000 {
        let (client, base, key, agent, answered) =
            (client.clone(), base.clone(), key.clone(), agent.clone(), answered.clone());
        creates.spawn(async move {
            let body = json!({"from_number": OUR_NUMBER, "to_number": format!("+1650555{i:04}"), "agent": agent});
            let res = client.post(format!("{base}/v1/calls/create")).bearer_auth(&key).json(&body).send().await;
            let accepted = match res {
                Ok(res) if res.status() == StatusCode::OK => {
                    res.json::<Value>().await.ok().and_then(|v| v["id"].as_str().map(str::to_owned))
                }
                _ => None,
            };
            if accepted.is_some() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            accepted
        });
    }
    eventually(Duration::from_secs(120), || async { (answered.load(Ordering::SeqCst) >= 300).then_some(()) }).await;
    server.kill9();
    let dialled_before_kill = twilio.calls().len();
    let mut accepted = Vec::new();
    while let Some(result) = creates.join_next().await {
        if let Some(id) = result.unwrap() {
            accepted.push(id);
        }
    }
    assert!(accepted.len() < 1000, "the kill came while creates were in flight ({} accepted)", accepted.len());

    // Restart on the same database and address; the carrier answers at once now.
    *twilio.state.create_latency.lock().unwrap() = Duration::ZERO;
    let server = ServerProcess::start_with(&db.url, &listen, &env, |_| {});
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    eventually(Duration::from_secs(180), || async {
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE telephony_id IS NULL").fetch_one(&pool).await.unwrap();
        (waiting == 0).then_some(())
    })
    .await;

    // Exactly once: each call of the database was placed once, and the carrier placed no call
    // that the database does not hold.
    let held: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, telephony_id FROM calls").fetch_all(&pool).await.unwrap();
    let mut dials: HashMap<String, usize> = HashMap::new();
    for call in twilio.calls() {
        *dials.entry(call_id_in(call.field("StatusCallback").unwrap())).or_default() += 1;
    }
    let twice: Vec<_> = dials.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "calls dialled more than once: {twice:?}");
    assert_eq!(dials.len(), held.len(), "the carrier placed exactly the calls the database holds");
    for (id, sid) in &held {
        assert_eq!(dials.get(&id.to_string()), Some(&1), "call {id} was placed once");
        assert_eq!(twilio.call(sid).field("StatusCallback").map(call_id_in), Some(id.to_string()));
    }
    let found_again = twilio.requests("GET", "/Calls.json").len();

    // The carrier ends every call; every call that got a 200 exists and is over. (Asked on new
    // connections: the pooled ones were to the killed process.)
    let client = reqwest::Client::new();
    for call in twilio.calls() {
        assert_eq!(twilio.status(&call.sid, "completed", &[("CallDuration", "5")]).await, StatusCode::NO_CONTENT);
    }
    for id in &accepted {
        let res = client.get(format!("{}/v1/calls?id={id}", server.base)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "call {id} got a 200 and must exist");
        let call: Value = res.json().await.unwrap();
        assert_eq!(call["status"], "ended", "{call}");
    }
    let unfinished: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE status <> 'ended'").fetch_one(&pool).await.unwrap();
    assert_eq!(unfinished, 0, "every call reached a final state");
    eprintln!(
        "kill -9: {} creates answered 200 before the kill, {} calls held after it, {dialled_before_kill} dialled \
         before it; after the restart {found_again} searches of the carrier's calls; lost: nothing, dialled twice: none",
        accepted.len(),
        held.len()
    );
    pool.close().await;
}

// ---------------------------------------------------------------- the database cut off

#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    took: Duration,
    body: Value,
}

async fn timed(req: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let res = req.send().await.expect("the server answers");
    let status = res.status();
    let body = res.json().await.unwrap_or(Value::Null);
    Answer { status, took: started.elapsed(), body }
}

/// Postgres goes away for three seconds under a steady load of creates and lists, then comes
/// back. The server keeps running; `/ready` turns 503 and then 200 again; requests during the
/// outage fail within the pool's 2-second wait with a 503 that says what is wrong; afterwards
/// everything works without a restart, and every prompt that got a 200 exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_fails_fast_with_503_and_heals_without_a_restart() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let mut url = url::Url::parse(&db.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = FaultProxy::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    let key = vocode_server::crypto::generate_api_key().key;
    let secrets = hex_key();
    let mut server = ServerProcess::start(
        url.as_str(),
        &[("SECRETS_KEY", &secrets), ("VOCODE_API_KEY", &key), ("CARRIER_MODE", "sandbox"), ("RUST_LOG", "warn")],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    assert_eq!(timed(client.get(format!("{base}/ready"))).await.status, StatusCode::OK);

    // The load: a prompt created and the list read, over and over.
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stop, stopped) = watch::channel(false);
    let mut load = JoinSet::new();
    for worker in 0..4 {
        let (client, base, key, answers, created, stopped) =
            (client.clone(), base.clone(), key.clone(), answers.clone(), created.clone(), stopped.clone());
        load.spawn(async move {
            let mut n = 0;
            while !*stopped.borrow() {
                n += 1;
                let create = timed(
                    client
                        .post(format!("{base}/v1/prompts/create"))
                        .bearer_auth(&key)
                        .json(&json!({"content": format!("prompt {worker}-{n}")})),
                )
                .await;
                if create.status == StatusCode::OK {
                    created.lock().unwrap().push(create.body["id"].as_str().unwrap().to_owned());
                }
                let list = timed(client.get(format!("{base}/v1/prompts/list?size=5")).bearer_auth(&key)).await;
                answers.lock().unwrap().extend([create, list]);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.cut();
    let cut_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = timed(client.get(format!("{base}/ready"))).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert!(ready.body["detail"].as_str().unwrap().contains("database"), "{ready:?}");
    let during = timed(
        client.post(format!("{base}/v1/prompts/create")).bearer_auth(&key).json(&json!({"content": "in the outage"})),
    )
    .await;
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE, "{during:?}");
    assert!(during.body["detail"].as_str().unwrap().contains("database is unavailable"), "{during:?}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(cut_at.elapsed())).await;
    proxy.restore();

    eventually(Duration::from_secs(20), || async {
        (timed(client.get(format!("{base}/ready"))).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let after = timed(
        client
            .post(format!("{base}/v1/prompts/create"))
            .bearer_auth(&key)
            .json(&json!({"content": "after the outage"})),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK, "{after:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    while load.join_next().await.is_some() {}
    assert!(server.child.try_wait().unwrap().is_none(), "the server kept running");

    let answers = answers.lock().unwrap().clone();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert!(!refused.is_empty(), "the load saw the outage");
    for a in &answers {
        assert!(a.status == StatusCode::OK || a.status == StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
        // The pool waits 2 s for a connection; nothing hangs longer.
        assert!(a.took < Duration::from_millis(3500), "{a:?}");
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(a.body["detail"].as_str().is_some_and(|d| d.contains("database")), "{a:?}");
        }
    }
    let created = created.lock().unwrap().clone();
    for id in &created {
        let got = timed(client.get(format!("{base}/v1/prompts?id={id}")).bearer_auth(&key)).await;
        assert_eq!(got.status, StatusCode::OK, "prompt {id} got a 200 and must exist: {got:?}");
    }
    eprintln!(
        "database outage: {} requests, {} refused with 503 during it, {} prompts created and all kept",
        answers.len(),
        refused.len(),
        created.len()
    );
    server.kill9();
}

// ---------------------------------------------------------------- a carrier that misbehaves

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

async fn alive_tasks(client: &reqwest::Client, base: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("vocode_runtime_alive_tasks ").and_then(|v| v.trim().parse().ok()))
        .expect("the alive-task gauge")
}

/// Three rounds of calls against a carrier that answers 500, hangs or closes the connection:
/// every call ends as `error` with an `error_message` after its bounded attempts, none stays
/// `in_progress` or `not_started`, no connection to the carrier is left open, and the server's
/// task count and memory are the same after the third round as after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_carrier_that_fails_hangs_or_hangs_up_leaves_errors_not_leaks() {
    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let (carrier, open, served) = broken_carrier().await;
    let key = vocode_server::crypto::generate_api_key().key;
    let secrets = hex_key();
    let server = ServerProcess::start(
        &db.url,
        &[
            ("SECRETS_KEY", &secrets),
            ("VOCODE_API_KEY", &key),
            ("CARRIER_MODE", "live"),
            ("TWILIO_API_BASE_URL", &carrier),
            ("CARRIER_TIMEOUT_SECS", "1"),
            ("DISPATCH_MAX_ATTEMPTS", "3"),
            ("RUST_LOG", "warn"),
        ],
    );
    let base = server.base.clone();
    let pid = server.child.id();
    let agent = seed(&base, &key, "AC00000000000000000000000000000001", "token").await;
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for round in 0..3 {
        let mut ids = Vec::new();
        for i in 0..15 {
            let body =
                json!({"from_number": OUR_NUMBER, "to_number": format!("+16505552{round}{i:02}"), "agent": agent});
            let res =
                client.post(format!("{base}/v1/calls/create")).bearer_auth(&key).json(&body).send().await.unwrap();
            let status = res.status();
            let call: Value = res.json().await.unwrap();
            // Placing is tried at once; a carrier that fails now is retried in the background.
            assert_eq!(status, StatusCode::OK, "{call}");
            ids.push(call["id"].as_str().unwrap().to_owned());
        }
        for id in &ids {
            let call = eventually(Duration::from_secs(60), || async {
                let call: Value = client
                    .get(format!("{base}/v1/calls?id={id}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (call["status"] == "error").then_some(call)
            })
            .await;
            let message = call["error_message"].as_str().unwrap_or_default();
            assert!(message.contains("carrier"), "{call}");
        }
        eventually(Duration::from_secs(10), || async { (open.load(Ordering::SeqCst) == 0).then_some(()) }).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push((alive_tasks(&client, &base).await, rss_kb(pid)));
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let stuck: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE status IN ('not_started', 'in_progress')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stuck, 0);
    pool.close().await;
    let (tasks_first, rss_first) = samples[0];
    let (tasks_last, rss_last) = samples[2];
    assert!(tasks_last <= tasks_first + 2.0, "tasks grew: {samples:?}");
    assert!(rss_last <= rss_first + 8 * 1024, "memory grew: {samples:?}");
    eprintln!(
        "broken carrier: 45 calls, {} connections to the carrier, all ended as errors; (alive tasks, RSS kB) after each round: {samples:?}",
        served.load(Ordering::SeqCst)
    );
}
