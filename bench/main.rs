//! The benchmarks: `bench/run` (which builds this with `--release` and runs it).
//!
//! Measures, on Postgres, against the release binary and an instant fake carrier:
//! - create-call throughput and p50/p99 latency at concurrencies 1, 16, 64 (wrk), beside this
//!   machine's two ceilings for that work measured in the same run: the database's (pgbench
//!   running the statements the create path runs, at the same concurrency) and HTTP's (wrk
//!   against `GET /health`);
//! - list-calls p50/p99 with 10,000 and with 1,000,000 calls for one user;
//! - resident memory, idle and under the create-call load;
//! - webhook deliveries per second to a local receiver, and the lag from the state change to the
//!   delivery, with events made at 250 and at 1,000 a second.
//!
//! Prints one table and appends it, dated, with the machine, to bench/RESULTS.md. These are
//! measurements: nothing here fails on speed.
//!
//! `bench/run media` runs the media-plane benchmark instead (concurrent talking calls; see
//! [`media`]); `bench/run speech`, the offline one (concurrent calls with the local recogniser
//! and voice; see [`speech`]); `bench/run turn-models`, the voice-activity and end-of-turn
//! models' costs per frame, per call and per inference (see [`turn_models`]); `bench/run turns`,
//! turn-taking as the caller hears it (see [`turns`]).

mod media;
mod speech;
mod turn_models;
mod turns;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const OUR_NUMBER: &str = "+14155550100";

struct Settings {
    seconds: u64,
    concurrencies: Vec<usize>,
    big_list: i64,
    /// Rates of events per second to deliver, each for `webhook_seconds`.
    webhook_rates: Vec<u64>,
    webhook_seconds: u64,
}

fn settings() -> Settings {
    if std::env::args().any(|a| a == "--quick") {
        Settings {
            seconds: 3,
            concurrencies: vec![1, 16],
            big_list: 100_000,
            webhook_rates: vec![200],
            webhook_seconds: 3,
        }
    } else {
        Settings {
            seconds: 10,
            concurrencies: vec![1, 16, 64],
            big_list: 1_000_000,
            webhook_rates: vec![250, 1000],
            webhook_seconds: 10,
        }
    }
}

// ---------------------------------------------------------------- the instant carrier and the receiver

async fn instant_carrier() -> String {
    async fn create_call() -> impl IntoResponse {
        let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
        (StatusCode::CREATED, Json(json!({"sid": sid, "status": "queued"})))
    }
    let router = Router::new()
        .route("/2010-04-01/Accounts/{account}/Calls.json", post(create_call))
        .route(
            "/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json",
            get(|| async { Json(json!({"incoming_phone_numbers": [{"sid": "PN00000000000000000000000000000001"}]})) }),
        )
        .route("/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{file}", post(|| async { Json(json!({})) }))
        .route(
            "/2010-04-01/Accounts/{account}/Calls/{file}",
            post(|Path(_): Path<(String, String)>| async { Json(json!({"status": "completed"})) }),
        );
    serve(router).await
}

#[derive(Default)]
struct Deliveries {
    /// (lag from the event's creation, arrival)
    got: Mutex<Vec<(Duration, Instant)>>,
}

async fn receiver(deliveries: Arc<Deliveries>) -> String {
    async fn hook(State(d): State<Arc<Deliveries>>, headers: HeaderMap) -> StatusCode {
        // The webhook-id is msg_ and a UUID v7, whose first 48 bits are its creation in ms.
        let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if let Ok(uuid) = uuid::Uuid::parse_str(id.trim_start_matches("msg_")) {
            if let Some(ts) = uuid.get_timestamp() {
                let (secs, nanos) = ts.to_unix();
                let created = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
                let lag = std::time::SystemTime::now().duration_since(created).unwrap_or_default();
                d.got.lock().unwrap().push((lag, Instant::now()));
            }
        }
        StatusCode::NO_CONTENT
    }
    serve(Router::new().route("/hook", post(hook)).with_state(deliveries)).await
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

// ---------------------------------------------------------------- the server

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(database_url: &str, carrier: &str, key: &str) -> Server {
    // Live calls need providers for their agents; these resolve and are never reached (the
    // benchmark's calls never open a media stream).
    launch(
        database_url,
        key,
        &[
            ("TWILIO_API_BASE_URL", carrier),
            ("DEEPGRAM_API_KEY", "bench"),
            ("OPENAI_API_KEY", "bench"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
            ("ELEVENLABS_API_KEY", "bench"),
            ("VOCODE_VOICE", "elevenlabs:bench"),
            ("ALLOW_PRIVATE_TARGETS", "true"),
        ],
    )
}

/// The release binary (or `VOCODE_SERVER_BIN`), serving live carrier mode on a port of its own,
/// with `env` on top (and none of this shell's provider keys: what a benchmark's server talks to
/// is what it says).
fn launch(database_url: &str, key: &str, env: &[(&str, &str)]) -> Server {
    use std::io::{BufRead, BufReader};
    let binary = std::env::var("VOCODE_SERVER_BIN").unwrap_or_else(|_| "target/release/vocode-server".into());
    let mut command = Command::new(binary);
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", database_url)
        .env("SECRETS_KEY", "00".repeat(31) + "01")
        .env("VOCODE_API_KEY", key)
        .env("CARRIER_MODE", "live")
        .env("RUST_LOG", "error");
    for inherited in ["DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVENLABS_API_KEY", "VOCODE_VOICE"] {
        command.env_remove(inherited);
    }
    // BENCH_SERVER_LOG=file keeps the server's log (at BENCH_RUST_LOG, default `info`).
    let log = std::env::var_os("BENCH_SERVER_LOG").map(|path| {
        command.env("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        Stdio::from(file.expect("BENCH_SERVER_LOG can be written"))
    });
    let mut child = command
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log.unwrap_or_else(Stdio::null))
        .spawn()
        .expect("target/release/vocode-server (bench/run builds it)");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("vocode-server listening on ").map(str::to_owned))
        .expect("the server starts");
    // Keep reading its stdout, so that the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, base }
}

/// A database of the benchmark's own on the local Postgres (`BENCH_POSTGRES_URL`), dropped at
/// the end.
struct BenchDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl BenchDatabase {
    async fn create() -> BenchDatabase {
        let admin =
            std::env::var("BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into());
        let name = format!("vocode_bench_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let admin = sqlx::PgPool::connect(&admin).await.expect("Postgres for the bench");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
        BenchDatabase { admin, name, url }
    }

    async fn drop(self) {
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&self.admin).await;
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------- the load tools

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_duration_ms(text: &str) -> f64 {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// wrk, at `connections` concurrent requests, for the settings' duration.
fn wrk(url: &str, connections: usize, seconds: u64, script: Option<&str>, env: &[(&str, &str)]) -> Load {
    let threads = connections.clamp(1, 2).to_string();
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &threads, "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "--latency"]);
    if let Some(script) = script {
        cmd.args(["-s", script]);
    }
    cmd.arg(url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("wrk (bench/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut load = Load::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            load.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            load.p50_ms = parse_duration_ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            load.p99_ms = parse_duration_ms(v);
        }
        if line.starts_with("Non-2xx") {
            eprintln!("wrk against {url}: {line}");
        }
    }
    load
}

/// pgbench running `bench/create_call.sql` at `clients` concurrent clients.
fn pgbench(database_url: &str, clients: usize, seconds: u64, vars: &[(&str, String)]) -> f64 {
    let mut cmd = Command::new("pgbench");
    cmd.args([
        "-n",
        "-M",
        "prepared",
        "-c",
        &clients.to_string(),
        "-j",
        &clients.clamp(1, 2).to_string(),
        "-T",
        &seconds.to_string(),
        "-f",
        "bench/create_call.sql",
    ]);
    for (k, v) in vars {
        cmd.args(["-D", &format!("{k}={v}")]);
    }
    cmd.arg(database_url);
    let out = cmd.output().expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- the run

struct WebhookRun {
    rate: u64,
    events: usize,
    accepted_per_sec: f64,
    delivered: usize,
    delivered_per_sec: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
}

/// Answers the given calls (signed Twilio status callbacks) at `rate` per second, and measures
/// the `event_phone_call_connected` webhooks that reach the receiver.
async fn deliver_at(
    client: &reqwest::Client,
    base: &str,
    account: &str,
    token: &str,
    deliveries: &Deliveries,
    rate: u64,
    calls: &[(String, String)],
) -> WebhookRun {
    deliveries.got.lock().unwrap().clear();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut sends = tokio::task::JoinSet::new();
    for (i, (call_id, sid)) in calls.iter().enumerate() {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let url = format!("{base}/telephony/twilio/status/{call_id}");
        let params: Vec<(String, String)> = vec![
            ("AccountSid".into(), account.into()),
            ("CallSid".into(), sid.clone()),
            ("CallStatus".into(), "in-progress".into()),
        ];
        let signature = vocode_server::telephony::twilio::signature(token, &url, &params);
        let client = client.clone();
        sends.spawn(async move {
            let res = client.post(url).header("x-twilio-signature", signature).form(&params).send().await;
            assert!(res.map(|r| r.status().is_success()).unwrap_or(false), "a status callback was refused");
        });
    }
    while sends.join_next().await.is_some() {}
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while deliveries.got.lock().unwrap().len() < calls.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = deliveries.got.lock().unwrap().clone();
    let span = got.iter().map(|(_, at)| *at).max().map(|last| last.duration_since(started)).unwrap_or_default();
    let mut lags: Vec<Duration> = got.iter().map(|(lag, _)| *lag).collect();
    lags.sort();
    WebhookRun {
        rate,
        events: calls.len(),
        accepted_per_sec: calls.len() as f64 / accepted.as_secs_f64(),
        delivered: got.len(),
        delivered_per_sec: got.len() as f64 / span.as_secs_f64().max(0.001),
        lag_p50_ms: percentile(&lags, 0.5),
        lag_p99_ms: percentile(&lags, 0.99),
    }
}

async fn call_api(client: &reqwest::Client, url: String, key: &str, body: Value) -> Value {
    let res = client.post(url).bearer_auth(key).json(&body).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("media") {
        return media::run().await;
    }
    if std::env::args().nth(1).as_deref() == Some("speech") {
        return speech::run().await;
    }
    if std::env::args().nth(1).as_deref() == Some("turn-models") {
        return turn_models::run().await;
    }
    if std::env::args().nth(1).as_deref() == Some("turns") {
        return turns::run().await;
    }
    let s = settings();
    let database = BenchDatabase::create().await;
    let database_url = database.url.clone();

    let carrier = instant_carrier().await;
    let deliveries = Arc::new(Deliveries::default());
    let hook_base = receiver(deliveries.clone()).await;
    let key = "vk_bench_key_00000000000000000000000000000000";
    let server = start_server(&database_url, &carrier, key);
    let pid = server.child.id();
    let base = server.base.clone();
    let client = reqwest::Client::new();

    // Seed: a Twilio connection, our number, an agent whose webhook subscribes to connections.
    let account = "AC00000000000000000000000000000000";
    let token = "bench-auth-token";
    let conn = call_api(&client, format!("{base}/v1/account_connections/create"), key,
        json!({"type": "account_connection_twilio", "credentials": {"twilio_account_sid": account, "twilio_auth_token": token}})).await;
    call_api(
        &client,
        format!("{base}/v1/numbers/link"),
        key,
        json!({"phone_number": OUR_NUMBER, "telephony_account_connection": conn["id"]}),
    )
    .await;
    let agent = call_api(
        &client,
        format!("{base}/v1/agents/create"),
        key,
        json!({"prompt": {"content": "bench"}, "voice": {"type": "voice_vocode", "voice_id": "joe"},
               "webhook": {"subscriptions": ["event_phone_call_connected"], "url": format!("{hook_base}/hook")}}),
    )
    .await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mb(pid);

    // The ceilings and the create path, concurrency by concurrency.
    let body = json!({"from_number": OUR_NUMBER, "to_number": "16505550000", "agent": agent_id}).to_string();
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users LIMIT 1").fetch_one(&pool).await.unwrap();
    let pg_vars = vec![
        ("keyhash", hex::encode(vocode_server::crypto::hash_api_key(key))),
        ("usr", user.to_string()),
        ("num", OUR_NUMBER[1..].to_owned()),
        ("agent", agent_id.clone()),
        ("conn", conn["id"].as_str().unwrap().to_owned()),
    ];
    let peak = Arc::new(Mutex::new(0.0f64));
    let mut rows = Vec::new();
    let webhooks_only = std::env::args().any(|a| a == "--webhooks-only");
    for &c in s.concurrencies.iter().filter(|_| !webhooks_only) {
        let health = wrk(&format!("{base}/health"), c, s.seconds, None, &[]);
        let db = pgbench(&database_url, c, s.seconds, &pg_vars);
        let sampling = {
            let peak = peak.clone();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let handle = std::thread::spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let now = rss_mb(pid);
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                    drop(p);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            (stop, handle)
        };
        let create = wrk(
            &format!("{base}/v1/calls/create"),
            c,
            s.seconds,
            Some("bench/create_call.lua"),
            &[("BENCH_KEY", key), ("BENCH_BODY", &body)],
        );
        sampling.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sampling.1.join();
        rows.push((c, create, health, db));
    }
    let load_rss = *peak.lock().unwrap();

    // Lists: 10,000 calls, then the settings' big number.
    let list = |n: i64| {
        let pool = pool.clone();
        let agent_id = agent_id.clone();
        async move {
            let have: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls").fetch_one(&pool).await.unwrap();
            if n > have {
                sqlx::query(
                    "INSERT INTO calls (id, user_id, direction, status, stage, stage_outcome, telephony_provider, to_number, from_number, \
                     agent_phone_number, agent_id, hipaa_compliant, record, version, created_at, updated_at, start_time, end_time, duration_seconds) \
                     SELECT gen_random_uuid(), $1, 'outbound', 'ended', 'picked_up', 'human_disconnected', 'twilio', '16505550000', '14155550100', \
                     '14155550100', $2::uuid, false, false, 1, now() - (g || ' seconds')::interval, now(), now() - (g || ' seconds')::interval, now(), 30 \
                     FROM generate_series(1, $3) g",
                )
                .bind(user)
                .bind(agent_id)
                .bind(n - have)
                .execute(&pool)
                .await
                .unwrap();
                sqlx::query("ANALYZE calls").execute(&pool).await.unwrap();
            }
        }
    };
    let list_load = || {
        wrk(
            &format!("{base}/v1/calls/list?size=10&sort_desc=true"),
            16,
            s.seconds,
            Some("bench/get_with_key.lua"),
            &[("BENCH_KEY", key)],
        )
    };
    let (list_small, list_big) = if webhooks_only {
        (Load::default(), Load::default())
    } else {
        list(10_000).await;
        let small = list_load();
        list(s.big_list).await;
        (small, list_load())
    };

    // Webhooks: calls answered at each of the settings' rates, each answer one event to the receiver.
    let total = s.webhook_rates.iter().map(|r| (r * s.webhook_seconds) as usize).sum::<usize>();
    let mut sids: Vec<(String, String)> = sqlx::query_as(
        "SELECT id::text, telephony_id FROM calls WHERE telephony_id IS NOT NULL AND status = 'in_progress' LIMIT $1",
    )
    .bind(total as i64)
    .fetch_all(&pool)
    .await
    .unwrap();
    while sids.len() < total {
        let call = call_api(
            &client,
            format!("{base}/v1/calls/create"),
            key,
            json!({"from_number": OUR_NUMBER, "to_number": "16505550000", "agent": agent_id}),
        )
        .await;
        sids.push((call["id"].as_str().unwrap().to_owned(), call["telephony_id"].as_str().unwrap().to_owned()));
    }
    let mut webhook_runs = Vec::new();
    for &rate in &s.webhook_rates {
        let batch: Vec<_> = sids.drain(..(rate * s.webhook_seconds) as usize).collect();
        webhook_runs.push(deliver_at(&client, &base, account, token, &deliveries, rate, &batch).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    drop(server);
    pool.close().await;
    database.drop().await;

    // The table.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let mut table = String::new();
    table.push_str(&format!(
        "### {} — {cores} cores, {memory_gb:.0} GiB{}\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if std::env::args().any(|a| a == "--quick") { " (quick run)" } else { "" }
    ));
    table.push_str("| measure | value | target |\n|---|---|---|\n");
    let mut ratios = HashMap::new();
    for (c, create, health, db) in &rows {
        let ceiling = health.rps.min(*db);
        let ratio = create.rps / ceiling;
        ratios.insert(*c, ratio);
        table.push_str(&format!(
            "| create-call, {c} concurrent | {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms | |\n",
            create.rps, create.p50_ms, create.p99_ms
        ));
        table.push_str(&format!(
            "| ceilings at {c}: HTTP (`GET /health`) / database (pgbench, the create path's SQL) | {:.0} req/s / {:.0} tx/s | |\n",
            health.rps, db
        ));
        table.push_str(&format!(
            "| create-call ÷ the lower ceiling, {c} concurrent | {:.0}% | ≥ 60% |\n",
            ratio * 100.0
        ));
    }
    table.push_str(&format!(
        "| list-calls, 10,000 calls (16 concurrent) | p50 {:.2} ms, p99 {:.2} ms | |\n",
        list_small.p50_ms, list_small.p99_ms
    ));
    table.push_str(&format!(
        "| list-calls, {} calls (16 concurrent) | p50 {:.2} ms, p99 {:.2} ms | |\n",
        s.big_list, list_big.p50_ms, list_big.p99_ms
    ));
    table.push_str(&format!(
        "| list p99, {} ÷ 10,000 | {:.2}× | ≤ 1.5× |\n",
        s.big_list,
        list_big.p99_ms / list_small.p99_ms
    ));
    table.push_str(&format!("| resident memory, idle | {idle_rss:.1} MB | ≤ 30 MB |\n"));
    table.push_str(&format!("| resident memory, peak under the create-call load | {load_rss:.1} MB | |\n"));
    for w in &webhook_runs {
        table.push_str(&format!(
            "| webhooks: {} events made at {}/s (callbacks accepted at {:.0}/s) | {} delivered, {:.0}/s | |\n",
            w.events, w.rate, w.accepted_per_sec, w.delivered, w.delivered_per_sec
        ));
        table.push_str(&format!(
            "| webhook lag at {}/s, state change to delivery | p50 {:.1} ms, p99 {:.1} ms | {} |\n",
            w.rate,
            w.lag_p50_ms,
            w.lag_p99_ms,
            if w.rate >= 1000 { "p99 ≤ 100 ms" } else { "" }
        ));
    }
    println!("{table}");
    let results = "bench/RESULTS.md";
    let mut text = std::fs::read_to_string(results)
        .unwrap_or_else(|_| "# Benchmark results\n\nEach run of `bench/run`, newest last.\n\n".into());
    text.push_str(&table);
    text.push('\n');
    std::fs::write(results, text).unwrap();
    eprintln!("appended to {results}");
}
