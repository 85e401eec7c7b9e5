//! What keeps one client from taking the server for itself: the rate limit per API key, the
//! limits on request heads, the deadline on requests (a slow upload included), the header read
//! timeout for connections that never finish their headers, and the cap on concurrent requests
//! to the carriers.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vocode_server::config::{CarrierMode, TelephonyArgs};

use crate::support::{link_twilio_number, post_ok, Backend, FakeTwilio, Options, TestApp};

async fn limited(per_second: u32, burst: u32) -> Option<TestApp> {
    TestApp::spawn_with_serve(Backend::Sqlite, Options::default(), |serve| {
        serve.rate_limit_per_second = Some(per_second);
        serve.rate_limit_burst = Some(burst);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_key_has_its_own_rate_limit_and_429_changes_nothing() {
    let Some(app) = limited(1, 3).await else { return };
    let (_, other) = app.new_user("other").await;
    for i in 0..3 {
        let (status, body) = app.post("/v1/prompts/create", json!({"content": format!("within the burst {i}")})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let res = app
        .request(reqwest::Method::POST, "/v1/prompts/create", Some(&app.key), Some(&json!({"content": "one too many"})))
        .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("Too many requests"), "{body}");

    // Another key is not held back by this one's use.
    let (status, _) = app.get_as(&other, "/v1/prompts/list").await;
    assert_eq!(status, StatusCode::OK);
    // Health, readiness, the docs and the carriers' callbacks are not limited by key.
    for _ in 0..10 {
        assert_eq!(app.client.get(format!("{}/health", app.base)).send().await.unwrap().status(), StatusCode::OK);
        assert_eq!(app.client.get(format!("{}/ready", app.base)).send().await.unwrap().status(), StatusCode::OK);
        let callback = app
            .client
            .post(format!("{}/telephony/twilio/status/{}", app.base, uuid::Uuid::now_v7()))
            .bearer_auth(&app.key)
            .form(&[("CallStatus", "ringing")])
            .send()
            .await
            .unwrap();
        assert_eq!(callback.status(), StatusCode::NOT_FOUND, "a callback is judged on its own merits");
    }
    assert_eq!(app.client.get(format!("{}/docs", app.base)).send().await.unwrap().status(), StatusCode::OK);

    // After the wait it was told, the key may go on; the refused request created nothing.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, page) = app.get("/v1/prompts/list?size=10").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 3, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_limit_no_request_is_refused_for_its_rate() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    for _ in 0..50 {
        let (status, _) = app.get("/v1/prompts/list").await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it (or `limit`
/// passes): what came back, and when the connection closed.
async fn raw(base: &str, request: &[u8], limit: Duration) -> (String, Option<Duration>) {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    // A server that refuses early may close before all of it is written.
    let _ = stream.write_all(request).await;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break None,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_let_go() {
    let Some(app) = TestApp::spawn_with_serve(Backend::Sqlite, Options::default(), |serve| {
        serve.header_read_timeout_secs = 1;
    })
    .await
    else {
        return;
    };
    let (_, closed) = raw(&app.base, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ", Duration::from_secs(10)).await;
    let closed = closed.expect("the server closed the connection");
    assert!(closed >= Duration::from_millis(900), "not before the timeout: {closed:?}");
    // The server carries on.
    assert_eq!(app.client.get(format!("{}/health", app.base)).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_with_431() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let big = "a".repeat(40 * 1024);
    let res = app
        .client
        .get(format!("{}/v1/prompts/list", app.base))
        .bearer_auth(&app.key)
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("32768 bytes"), "{body}");
    // A head far past what the connection buffers is cut off before any handler sees it.
    let huge = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n", "a".repeat(1024 * 1024));
    let (answer, closed) = raw(&app.base, huge.as_bytes(), Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the connection is closed");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{}", answer.lines().next().unwrap_or_default());
    // Headers within the limit are served, and the server carries on.
    let res = app
        .client
        .get(format!("{}/v1/prompts/list", app.base))
        .bearer_auth(&app.key)
        .header("x-fine", "a".repeat(8192))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_its_deadline_gets_a_503_and_changes_nothing() {
    let Some(app) = TestApp::spawn_with_serve(Backend::Sqlite, Options::default(), |serve| {
        serve.request_timeout_secs = 1;
    })
    .await
    else {
        return;
    };
    // A body promised and never sent in full: a slow client.
    let request = format!(
        "POST /v1/prompts/create HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"content\": \"never fin",
        app.key
    );
    let (answer, _) = raw(&app.base, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"detail\":\"The request did not complete within 1 seconds\""), "{answer}");
    let (_, page) = app.get("/v1/prompts/list").await;
    assert_eq!(page["total"], 0);
}

/// JSON nested thousands deep (within the body limit) is refused as invalid JSON; the server
/// neither overflows its stack nor answers 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_refused_not_followed() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    let depth = 100_000;
    let body = format!("{{\"content\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
    let (status, answer) = app.post_raw("/v1/prompts/create", Some("application/json"), body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["detail"][0]["type"], "json_invalid", "{answer}");
    let (status, _) = app.get("/v1/prompts/list").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_carrier_requests_are_capped() {
    let twilio = FakeTwilio::start().await;
    *twilio.state.create_latency.lock().unwrap() = Duration::from_millis(300);
    let telephony = TelephonyArgs {
        carrier_mode: CarrierMode::Live,
        twilio_api_base_url: Some(twilio.base.clone()),
        carrier_max_concurrency: 2,
        ..TelephonyArgs::default()
    };
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, Options { telephony, ..Options::default() }).await else {
        return;
    };
    twilio.own("+14155550100");
    link_twilio_number(&app.base, &app.key, &twilio.state.account_sid, &twilio.state.auth_token, "14155550100").await;
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (client, base, key) = (app.client.clone(), app.base.clone(), app.key.clone());
        creates.spawn(async move {
            let body = json!({"from_number": "14155550100", "to_number": format!("1650555140{i}"),
                              "agent": {"prompt": {"content": "hi"}, "voice": {"type": "voice_vocode", "voice_id": "joe"}}});
            client.post(format!("{base}/v1/calls/create")).bearer_auth(key).json(&body).send().await.unwrap().status()
        });
    }
    while let Some(status) = creates.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(twilio.calls().len(), 6);
    assert_eq!(twilio.state.most_creating.load(std::sync::atomic::Ordering::SeqCst), 2, "at most two at once, and two");
}

/// The file descriptors a process holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Five hundred websockets open on media-stream URLs and never say which call they carry: each is
/// closed by the server (policy violation, 1008) within 15 s of opening, and its file descriptor
/// given back; a real call placed meanwhile talks as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_stream_sockets_that_never_bind_are_closed() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    use crate::support::{eventually, hex_key, ServerProcess, TestDb};

    let Some(db) = TestDb::create(Backend::Sqlite).await else { return };
    let key = vocode_server::crypto::generate_api_key().key;
    let env = [
        ("SECRETS_KEY", hex_key()),
        ("VOCODE_API_KEY", key.clone()),
        ("CARRIER_MODE", "sandbox".to_owned()),
        ("SANDBOX_TIME_SCALE", "0.25".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // No speech or model provider at all: the sandbox call talks with the stand-ins.
    let server = ServerProcess::start_with(&db.url, "127.0.0.1:0", &env, |cmd| {
        for (name, _) in crate::support::unreachable_providers_env() {
            cmd.env_remove(name);
        }
    });
    let pid = server.child.id();
    let client = reqwest::Client::new();
    let ready = client.get(format!("{}/ready", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let before = open_fds(pid);

    let ws_base = server.base.replace("http://", "ws://");
    let mut sockets = tokio::task::JoinSet::new();
    for i in 0..500 {
        let protocol = if i % 2 == 0 { "twilio" } else { "vonage" };
        let url = format!("{ws_base}/telephony/{protocol}/stream/{}", uuid::Uuid::now_v7());
        sockets.spawn(async move {
            let opened = Instant::now();
            let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("the socket opens");
            let close = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                        Some(Ok(_)) => continue,
                        _ => return None,
                    }
                }
            })
            .await
            .expect("the server closes the socket");
            (close, opened.elapsed())
        });
    }
    // Open on the server (however long a loaded machine takes to open them all).
    let opening = Instant::now();
    let mut during = open_fds(pid);
    while during < before + 250 && opening.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        during = open_fds(pid);
    }
    assert!(during >= before + 250, "the sockets are open on the server: {before} then {during}");

    // A call placed while they are open talks as usual.
    let number =
        post_ok(&server.base, &key, "/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"}))
            .await;
    let call = post_ok(
        &server.base,
        &key,
        "/v1/calls/create",
        json!({"from_number": number["number"], "to_number": "14155550199",
               "agent": {"prompt": {"content": "Ask Ajay if his refrigerator is running"}}}),
    )
    .await;
    let id = call["id"].as_str().unwrap_or_else(|| panic!("a call: {call}")).to_owned();

    let mut slowest = Duration::ZERO;
    while let Some(closed) = sockets.join_next().await {
        let (code, took) = closed.unwrap();
        assert_eq!(code, Some(1008), "closed as a policy violation");
        slowest = slowest.max(took);
    }
    assert!(slowest <= Duration::from_secs(15), "every unbound socket is closed within 15 s: {slowest:?}");
    assert!(slowest >= vocode_server::telephony::media::BIND_WITHIN, "and given its time to bind: {slowest:?}");
    assert!(server.logs().contains("did not say which call it is in time"), "logged");

    let ended = eventually(Duration::from_secs(60), || async {
        let call: serde_json::Value = client
            .get(format!("{}/v1/calls?id={id}", server.base))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (call["status"] == "ended").then_some(call)
    })
    .await;
    assert_eq!(ended["stage_outcome"], "human_disconnected", "{ended}");
    let transcript = ended["transcript"].as_str().unwrap_or_default();
    assert!(transcript.contains("BOT: ") && transcript.contains("HUMAN: "), "the call talked: {transcript}");

    // Given back: a few descriptors of slack for the database pool and the call's own sockets.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = open_fds(pid);
    while after > before + 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = open_fds(pid);
    }
    assert!(after <= before + 10, "the descriptors are given back: {before} before, {after} after");
}

/// Three server processes on one Postgres, behind a round-robin balancer (each request to the
/// next): a key limited to 1 request a second with a burst of 24 gets about 24 of 100 requests
/// through in all — each process admits its third — not 24 on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_replicas() {
    use crate::support::{eventually, hex_key, ServerProcess, TestDb};

    let Some(db) = TestDb::create(Backend::Postgres).await else { return };
    let key = vocode_server::crypto::generate_api_key().key;
    let secrets_key = hex_key();
    let env = [
        ("SECRETS_KEY", secrets_key.as_str()),
        ("VOCODE_API_KEY", key.as_str()),
        ("CARRIER_MODE", "live"),
        ("RATE_LIMIT_PER_SECOND", "1"),
        ("RATE_LIMIT_BURST", "24"),
        ("WORKERS", "0"),
        ("RUST_LOG", "warn"),
    ];
    let replicas: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::start(&db.url, &env)).collect();
    let client = reqwest::Client::new();
    // Each has seen the others' heartbeats (within one of its own).
    for replica in &replicas {
        eventually(Duration::from_secs(10), || async {
            let ready: serde_json::Value =
                client.get(format!("{}/ready", replica.base)).send().await.ok()?.json().await.ok()?;
            (ready["replicas"] == 3).then_some(())
        })
        .await;
    }
    let started = Instant::now();
    let mut admitted = 0;
    for i in 0..100 {
        let base = &replicas[i % 3].base;
        let status = client.get(format!("{base}/v1/prompts/list")).bearer_auth(&key).send().await.unwrap().status();
        match status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    // The burst, and what one request a second refilled meanwhile.
    let refilled = started.elapsed().as_secs() as i32 + 2;
    assert!((24..=24 + refilled).contains(&admitted), "{admitted} of 100 admitted by three replicas");
}
