//! The call console (`/console`): its responses and the timeline endpoint it reads, and the page
//! itself in a real headless Chromium — signing in, the calls list, a call with its timeline,
//! transcript, recording and latency chart, hostile text staying text, and the keys and calls
//! it must refuse. Screenshots of each page are taken along the way (see [`SHOTS`]).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use vocode_server::config::{ConversationArgs, TelephonyArgs};

use crate::support::browser::Browser;
use crate::support::{eventually, on_both_backends, Backend, Options, TestApp};

on_both_backends!(sandbox => a_calls_timeline_is_what_the_server_recorded_and_only_its_owners);

/// Markup a caller controls: shown as text, it creates no element and runs nothing.
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// Where the screenshots go: `docs/console/` (shown by the README) with `UPDATE_SCREENSHOTS=1`,
/// else the build's scratch folder, so that a test run leaves the checkout as it was.
fn shots_dir() -> std::path::PathBuf {
    let dir = if std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console"))
    } else {
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The pages the README shows, as the browser test names its screenshots.
const SHOTS: &[&str] = &["sign-in", "calls", "call", "calls-phone", "call-phone", "agents", "numbers", "usage"];

async fn sandbox(backend: Backend) -> Option<TestApp> {
    let telephony = TelephonyArgs { sandbox_time_scale: 0.05, ..TelephonyArgs::default() };
    TestApp::spawn_with(
        backend,
        Options { telephony, conversation: ConversationArgs::default(), workers: 2, ..Options::default() },
    )
    .await
}

async fn ended(app: &TestApp, id: &str) -> Value {
    eventually(Duration::from_secs(30), || async {
        let (_, call) = app.get(&format!("/v1/calls?id={id}")).await;
        matches!(call["status"].as_str(), Some("ended" | "error")).then_some(call)
    })
    .await
}

async fn buy(app: &TestApp) -> String {
    let (status, number) =
        app.post("/v1/numbers/buy", json!({"telephony_provider": "twilio", "area_code": "415"})).await;
    assert_eq!(status, StatusCode::OK, "{number}");
    number["number"].as_str().unwrap().to_owned()
}

async fn call(app: &TestApp, from: &str, to: &str, agent: Value) -> String {
    let (status, call) =
        app.post("/v1/calls/create", json!({"from_number": from, "to_number": to, "agent": agent})).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    call["id"].as_str().unwrap().to_owned()
}

fn talking_agent() -> Value {
    json!({"name": "Ana <b>bold</b>", "prompt": {"content": "Ask Ajay if his refrigerator is running"},
           "initial_message": HOSTILE})
}

async fn a_calls_timeline_is_what_the_server_recorded_and_only_its_owners(app: TestApp) {
    let from = buy(&app).await;
    let talked = call(&app, &from, "14155550199", talking_agent()).await;
    let refused = call(&app, &from, "14155550106", json!({"prompt": {}})).await;
    let unanswered = call(&app, &from, "14155550102", json!({"prompt": {}})).await;
    let call_view = ended(&app, &talked).await;
    ended(&app, &refused).await;
    ended(&app, &unanswered).await;

    let (status, timeline) = app.get(&format!("/calls/events?id={talked}")).await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    assert_eq!(
        (timeline["call_id"].as_str(), timeline["direction"].as_str()),
        (Some(talked.as_str()), Some("outbound"))
    );
    let steps: Vec<&str> =
        timeline["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(steps, ["created", "ringing", "picked_up", "ended"], "{timeline}");
    let at = |i: usize| chrono::DateTime::parse_from_rfc3339(timeline["events"][i]["at"].as_str().unwrap()).unwrap();
    assert!(at(0) <= at(1) && at(1) <= at(2) && at(2) <= at(3), "in order: {timeline}");
    let last = &timeline["events"][3];
    assert_eq!((last["status"].as_str(), last["stage"].as_str()), (Some("ended"), Some("picked_up")));
    assert_eq!(last["stage_outcome"], call_view["stage_outcome"]);
    // The same times the API gives the call.
    let api_end = chrono::DateTime::parse_from_rfc3339(call_view["end_time"].as_str().unwrap()).unwrap();
    assert_eq!(at(3), api_end);
    let api_start = chrono::DateTime::parse_from_rfc3339(call_view["start_time"].as_str().unwrap()).unwrap();
    assert_eq!(at(1), api_start);

    let (_, timeline) = app.get(&format!("/calls/events?id={refused}")).await;
    let steps: Vec<&str> =
        timeline["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(steps, ["created", "error"], "{timeline}");
    assert_eq!(timeline["events"][1]["stage_outcome"], "call_did_not_connect");
    let (_, timeline) = app.get(&format!("/calls/events?id={unanswered}")).await;
    let steps: Vec<&str> =
        timeline["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(steps, ["created", "ringing", "ended"], "{timeline}");
    assert_eq!(timeline["events"][2]["stage_outcome"], "human_unanswered");

    // Another user: not found, in the API's own words; no key: 401.
    let (_, other) = app.new_user("mallory").await;
    let (api_status, api_body) = app.get_as(&other, &format!("/v1/calls?id={talked}")).await;
    let (status, body) = app.get_as(&other, &format!("/calls/events?id={talked}")).await;
    assert_eq!((status, &body), (api_status, &api_body));
    assert_eq!(status, StatusCode::NOT_FOUND);
    let res = app.request(Method::GET, &format!("/calls/events?id={talked}"), None, None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = app.get("/calls/events?id=not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else { return };
    for (path, kind) in
        [("/console", "text/html"), ("/console/console.js", "text/javascript"), ("/console/console.css", "text/css")]
    {
        let res = app.request(Method::GET, path, None, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(header("content-type").starts_with(kind), "{path}: {}", header("content-type"));
        let csp = header("content-security-policy");
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for wanted in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(directives.contains(&wanted), "{path}: {wanted} in {csp}");
        }
        assert!(!csp.contains("unsafe") && !csp.contains("http") && !csp.contains('*'), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("referrer-policy"), "no-referrer");
        assert!(res.headers().get("set-cookie").is_none());
    }
    // Nothing inline for the policy to block, nothing from elsewhere, and no way for data to
    // become markup.
    let page = app.client.get(format!("{}/console", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("<script>") && !page.contains("style=") && !page.contains("<style"), "inline code or style");
    assert!(!page.contains("http:") && !page.contains("https:"), "a remote origin in the page");
    let script = app.client.get(format!("{}/console/console.js", app.base)).send().await.unwrap().text().await.unwrap();
    for sink in
        ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "localStorage"]
    {
        assert!(!script.contains(sink), "console.js uses {sink}");
    }
}

struct Shots {
    dir: std::path::PathBuf,
    taken: Vec<String>,
}

impl Shots {
    async fn take(&mut self, browser: &mut Browser, name: &str) {
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2000, "{name}: a PNG of something");
        std::fs::write(self.dir.join(format!("{name}.png")), png).unwrap();
        self.taken.push(name.to_owned());
    }
}

/// A string as a JavaScript literal.
fn js(value: &str) -> String {
    serde_json::to_string(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_calls_in_a_real_browser() {
    let Some(mut browser) = Browser::launch("the call console").await else { return };
    let Some(app) = sandbox(Backend::Sqlite).await else { return };
    let from = buy(&app).await;
    let talked = call(&app, &from, "14155550199", talking_agent()).await;
    let refused = call(&app, &from, "14155550106", json!({"prompt": {}})).await;
    let call_json = ended(&app, &talked).await;
    ended(&app, &refused).await;
    assert_eq!(call_json["recording_available"], true, "{call_json}");
    let transcript = call_json["transcript"].as_str().unwrap_or_default().to_owned();
    assert!(transcript.contains(HOSTILE), "the greeting is in the transcript: {transcript}");
    let (_, latency) = app.get(&format!("/calls/latency?id={talked}")).await;
    let turns = latency["turns"].as_array().unwrap().len();
    let mut shots = Shots { dir: shots_dir(), taken: Vec::new() };

    browser.time_zone("America/Los_Angeles").await;
    browser.viewport(1280, 860, false).await;
    browser.goto(&format!("{}/console", app.base)).await;
    browser.wait_for("!document.getElementById('sign-in').hidden").await;
    assert_eq!(browser.eval("document.getElementById('bar').hidden").await, true, "nothing but the sign-in form");

    // An invalid key: the sign-in form says so, and nothing else is loaded.
    let sign_in = |key: &str| {
        format!(
            "document.getElementById('key').value = {}; document.getElementById('sign-in-form').requestSubmit(); true",
            js(key)
        )
    };
    browser.eval(&sign_in("vk_not-a-real-key")).await;
    let message = browser
        .wait_for(
            "!document.getElementById('sign-in-error').hidden && document.getElementById('sign-in-error').textContent",
        )
        .await;
    assert!(message.as_str().unwrap().contains("invalid or has been revoked"), "{message}");
    assert_eq!(browser.eval("sessionStorage.length").await, 0);
    assert_eq!(browser.eval("document.getElementById('view').childElementCount").await, 0);
    assert_eq!(browser.eval("document.getElementById('bar').hidden").await, true);
    shots.take(&mut browser, "sign-in").await;

    // Signed in: the calls, newest first, the failed one marked.
    browser.eval(&sign_in(&app.key)).await;
    browser.wait_for("document.querySelectorAll('#calls tbody tr').length === 2").await;
    let rows = browser
        .eval("[...document.querySelectorAll('#calls tbody tr')].map(r => [r.dataset.call, r.className, [...r.cells].map(c => c.textContent)])")
        .await;
    assert_eq!(rows[0][0], json!(refused), "newest first: {rows}");
    assert_eq!(rows[0][1], "failed", "{rows}");
    assert_eq!(rows[0][2][1], "error");
    assert_eq!(rows[0][2][3], "call_did_not_connect");
    assert_eq!(rows[1][0], json!(talked), "{rows}");
    assert_eq!(rows[1][1], "", "{rows}");
    let cells: Vec<&str> = rows[1][2].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(&cells[1..5], ["ended", "picked_up", "human_disconnected", "outbound"], "{rows}");
    assert_eq!(cells[5], from);
    assert_eq!(cells[6], "14155550199");
    assert!(cells[7].ends_with(" s"), "a duration: {cells:?}");
    // Times in the viewer's time zone.
    assert_eq!(browser.eval("document.getElementById('tz').textContent").await, "America/Los_Angeles");
    let start = chrono::DateTime::parse_from_rfc3339(call_json["start_time"].as_str().unwrap()).unwrap();
    let local = start.with_timezone(&chrono::FixedOffset::west_opt(8 * 3600).unwrap());
    assert!(cells[0].contains(&local.format("%-I:%M:%S").to_string()), "{} in Los Angeles: {cells:?}", start);
    // The key is in the tab's session storage only: not in the URL, not in a cookie.
    assert_eq!(browser.eval("sessionStorage.getItem('vocode-console-key')").await, json!(app.key));
    let href = browser.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains(&app.key), "{href}");
    assert_eq!(browser.eval("document.cookie").await, "");
    let text = browser.eval("document.getElementById('view').innerText").await;
    assert!(!text.as_str().unwrap().contains("null") && !text.as_str().unwrap().contains("undefined"), "{text}");
    shots.take(&mut browser, "calls").await;

    // Filtered by status.
    browser.eval("const s = document.getElementById('status-filter'); s.value = 'ended'; s.dispatchEvent(new Event('change')); true").await;
    browser
        .wait_for("location.hash.includes('status=ended') && document.querySelectorAll('#calls tbody tr').length === 1")
        .await;
    assert_eq!(browser.eval("document.querySelector('#calls tbody tr').dataset.call").await, json!(talked));
    let count = browser.eval("document.getElementById('calls-count').textContent").await;
    assert_eq!(count, "2 calls in all, newest first. 1 of the 2 calls on this page are ended.");

    // By keyboard: from the heading, Tab reaches the filter, then the call's link; Enter opens it.
    browser.wait_for("document.activeElement && document.activeElement.tagName === 'H1'").await;
    browser.press("Tab").await;
    assert_eq!(browser.eval("document.activeElement.id").await, "status-filter");
    browser.press("Tab").await;
    let focused = browser.eval("document.activeElement.getAttribute('href')").await;
    assert_eq!(focused, json!(format!("#/calls/{talked}")));
    browser.press("Enter").await;

    // The call: timeline, transcript (the markup stays text), recording, latency, agent.
    browser
        .wait_for("document.querySelectorAll('#timeline li').length === 4 && document.querySelector('#transcript li')")
        .await;
    let steps = browser.eval("[...document.querySelectorAll('#timeline li')].map(li => li.dataset.event)").await;
    assert_eq!(steps, json!(["created", "ringing", "picked_up", "ended"]));
    let timeline_text = browser.eval("document.getElementById('timeline').textContent").await;
    assert!(timeline_text.as_str().unwrap().contains("stage outcome human_disconnected"), "{timeline_text}");
    let lines = browser
        .eval("[...document.querySelectorAll('#transcript li')].map(li => [li.querySelector('.speaker')?.textContent, li.querySelector('.said').textContent])")
        .await;
    let expected: Vec<Value> = transcript
        .lines()
        .map(|l| {
            let (speaker, said) = l.split_once(": ").unwrap();
            json!([speaker, said])
        })
        .collect();
    assert_eq!(lines, json!(expected), "every line, as the API gives it");
    assert_eq!(lines[0], json!(["BOT", HOSTILE]));
    assert_eq!(browser.eval("document.querySelectorAll('img').length").await, 0, "no element made of a transcript");
    assert_eq!(browser.eval("document.getElementById('initial-message').textContent").await, HOSTILE);
    let audio = browser.wait_for("document.querySelector('audio#recording')?.src").await;
    assert!(audio.as_str().unwrap().starts_with("blob:"), "{audio}");
    // The browser read the recording (the WAV the API serves) as audio of some length.
    let seconds =
        browser.wait_for("(a => a.readyState >= 1 && a.duration)(document.getElementById('recording'))").await;
    assert!(seconds.as_f64().unwrap() > 1.0, "{seconds} s of recording");
    if turns > 0 {
        let drawn = browser.eval("document.querySelectorAll('#latency-chart g.turn').length").await;
        assert_eq!(drawn, json!(turns), "a bar per answered turn");
        assert!(
            browser.eval("document.querySelectorAll('#latency-chart rect').length").await.as_u64().unwrap()
                >= turns as u64
        );
    } else {
        browser.wait_for("document.getElementById('no-turns')").await;
    }
    let agent_text = browser.eval("document.getElementById('agent').textContent").await;
    assert!(agent_text.as_str().unwrap().contains("Ana <b>bold</b>"), "the agent's name as text: {agent_text}");
    assert_eq!(browser.eval("document.querySelectorAll('#agent b').length").await, 0);
    let prompt_link =
        browser.eval("document.querySelector('#agent a[href^=\"#/prompts/\"]').getAttribute('href')").await;
    let text = browser.eval("document.getElementById('view').innerText").await;
    assert!(!text.as_str().unwrap().contains("null") && !text.as_str().unwrap().contains("undefined"), "{text}");
    shots.take(&mut browser, "call").await;

    // The call's prompt, read-only.
    browser.goto(&format!("{}/console{}", app.base, prompt_link.as_str().unwrap())).await;
    let record = browser.wait_for("document.getElementById('record')?.textContent").await;
    assert!(record.as_str().unwrap().contains("Ask Ajay if his refrigerator is running"), "{record}");

    // A phone's width.
    browser.viewport(390, 844, true).await;
    browser.goto(&format!("{}/console#/calls", app.base)).await;
    browser.wait_for("document.querySelectorAll('#calls tbody tr').length === 2").await;
    let width = browser.eval("document.documentElement.scrollWidth").await;
    assert!(width.as_f64().unwrap() <= 390.0, "nothing wider than the phone: {width}");
    shots.take(&mut browser, "calls-phone").await;
    browser.goto(&format!("{}/console#/calls/{talked}", app.base)).await;
    browser.wait_for("document.querySelector('#transcript li') && document.querySelector('audio#recording')").await;
    let width = browser.eval("document.documentElement.scrollWidth").await;
    assert!(width.as_f64().unwrap() <= 390.0, "nothing wider than the phone: {width}");
    shots.take(&mut browser, "call-phone").await;
    browser.viewport(1280, 860, false).await;

    // Agents, numbers, usage.
    browser.goto(&format!("{}/console#/agents", app.base)).await;
    browser.wait_for("document.querySelectorAll('#agents tbody tr').length === 2").await;
    let agents = browser.eval("document.getElementById('agents').textContent").await;
    assert!(agents.as_str().unwrap().contains(HOSTILE), "{agents}");
    assert_eq!(browser.eval("document.querySelectorAll('img, #agents b').length").await, 0);
    shots.take(&mut browser, "agents").await;
    browser.goto(&format!("{}/console#/numbers", app.base)).await;
    let numbers = browser.wait_for("document.getElementById('numbers')?.textContent").await;
    assert!(numbers.as_str().unwrap().contains(&from), "{numbers}");
    shots.take(&mut browser, "numbers").await;
    let (_, usage) = app.get("/v1/usage").await;
    browser.goto(&format!("{}/console#/usage", app.base)).await;
    let used = browser.wait_for("document.getElementById('usage-text')?.textContent").await;
    let minutes = usage["monthly_usage_minutes"].as_i64().unwrap();
    assert!(minutes >= 1, "{usage}");
    assert_eq!(used, json!(format!("{minutes} minutes of calls this month. No monthly limit is set.")));
    // With the operator's limit: the minutes against it.
    let user_id = uuid::Uuid::parse_str(usage["user_id"].as_str().unwrap()).unwrap();
    let mut tx = app.store().begin().await.unwrap();
    assert!(vocode_server::store::users::set_usage_limit(tx.conn(), user_id, Some(60)).await.unwrap());
    tx.commit().await.unwrap();
    browser.goto(&format!("{}/console#/usage?limit", app.base)).await;
    let used = browser
        .wait_for("document.getElementById('usage-meter') && document.getElementById('usage-text').textContent")
        .await;
    assert_eq!(used, json!(format!("{minutes} of 60 minutes of calls used this month.")));
    let meter = browser.eval("(m => [m.value, m.max])(document.getElementById('usage-meter'))").await;
    assert_eq!(meter, json!([minutes, 60]));
    shots.take(&mut browser, "usage").await;

    // A transcript of thousands of lines is shown a page at a time.
    let long: String = (1..=450).map(|i| format!("HUMAN: line {i}\n")).collect();
    let mut tx = app.store().begin().await.unwrap();
    let talked_id = uuid::Uuid::parse_str(&talked).unwrap();
    vocode_server::store::calls::append_transcript(tx.conn(), talked_id, &long, vocode_server::store::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let total = transcript.lines().count() + 450;
    browser.goto(&format!("{}/console#/calls/{talked}", app.base)).await;
    browser.wait_for("document.querySelectorAll('#transcript li').length === 200").await;
    let more = browser.eval("document.getElementById('more-lines').textContent").await;
    assert_eq!(more, json!(format!("Show 200 more of {} lines", total - 200)));
    browser.eval("document.getElementById('more-lines').click(); true").await;
    browser.wait_for("document.querySelectorAll('#transcript li').length === 400").await;
    browser.eval("document.getElementById('more-lines').click(); true").await;
    browser.wait_for(&format!("document.querySelectorAll('#transcript li').length === {total}")).await;
    assert_eq!(browser.eval("document.getElementById('more-lines')").await, Value::Null);
    let last = browser.eval("[...document.querySelectorAll('#transcript .said')].at(-1).textContent").await;
    assert_eq!(last, "line 450");

    // Another user's call: not found, as the API says it; then that user's key is revoked.
    let (other_id, other_key) = app.new_user("mallory").await;
    let (status, api_body) = app.get_as(&other_key, &format!("/v1/calls?id={talked}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    browser.eval("document.getElementById('sign-out').click(); true").await;
    browser.wait_for("!document.getElementById('sign-in').hidden").await;
    assert_eq!(browser.eval("sessionStorage.length").await, 0, "signing out drops the key");
    browser.eval(&sign_in(&other_key)).await;
    browser.wait_for("document.getElementById('empty')").await;
    let empty = browser.eval("document.getElementById('empty').textContent").await;
    assert!(empty.as_str().unwrap().starts_with("No calls yet."), "{empty}");
    browser.eval(&format!("location.hash = '#/calls/{talked}'; true")).await;
    let shown = browser.wait_for("document.getElementById('error')?.textContent").await;
    assert_eq!(shown, api_body["detail"], "the API's answer");
    assert_eq!(browser.eval("document.querySelector('#view h1').textContent").await, "Not found");
    assert_eq!(browser.eval("document.getElementById('transcript')").await, Value::Null);
    // An address that is no call id at all (a malformed escape, even): the API's 422, in its words.
    let (status, api_body) = app.get_as(&other_key, "/v1/calls?id=%25E0%25A4%25A").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    browser.eval("location.hash = '#/calls/%E0%A4%A'; true").await;
    browser.wait_for("document.querySelector('#view h1').textContent === 'Not valid'").await;
    assert_eq!(browser.eval("document.getElementById('error').textContent").await, api_body["detail"][0]["msg"]);

    let mut handle = app.store().read().await.unwrap();
    let keys = vocode_server::store::users::list_keys(handle.conn()).await.unwrap();
    drop(handle);
    let info = keys.iter().find(|k| k.user_id == other_id).unwrap();
    let mut tx = app.store().begin().await.unwrap();
    assert!(vocode_server::store::users::revoke_key(tx.conn(), info.id).await.unwrap());
    tx.commit().await.unwrap();
    browser.eval("location.hash = '#/usage'; true").await;
    let message = browser
        .wait_for("!document.getElementById('sign-in').hidden && document.getElementById('sign-in-error').textContent")
        .await;
    assert!(message.as_str().unwrap().contains("revoked"), "{message}");
    assert_eq!(browser.eval("sessionStorage.length").await, 0);
    assert_eq!(browser.eval("document.getElementById('view').childElementCount").await, 0);

    // Nothing ran that should not have: no dialog, no exception, nothing the policy blocked.
    let trouble: Vec<&Value> = browser
        .events
        .iter()
        .filter(|e| {
            let text = e.to_string();
            e["method"] == "Page.javascriptDialogOpening"
                || e["method"] == "Runtime.exceptionThrown"
                || text.contains("Content Security Policy")
                || e["params"]["entry"]["source"] == "security"
        })
        .collect();
    assert!(trouble.is_empty(), "{trouble:#?}");
    let logged = browser.events.iter().map(Value::to_string).collect::<String>();
    assert!(!logged.contains(&app.key), "the key in the browser's log");
    browser.close().await;
    assert_eq!(shots.taken, SHOTS, "a screenshot of each page");
}

/// A call that is still running updates on the page without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_call_updates_live() {
    let Some(mut browser) = Browser::launch("the call console's live updates").await else { return };
    let Some(app) = sandbox(Backend::Sqlite).await else { return };
    let from = buy(&app).await;
    // Someone who stays on the line until the call is ended through the API.
    let id = call(&app, &from, "14155550105", json!({"prompt": {}, "initial_message": "Hello there."})).await;
    browser.goto(&format!("{}/console#/calls/{id}", app.base)).await;
    browser.wait_for("!document.getElementById('sign-in').hidden").await;
    browser
        .eval(&format!(
            "document.getElementById('key').value = {}; document.getElementById('sign-in-form').requestSubmit(); true",
            js(&app.key)
        ))
        .await;
    browser.wait_for("document.querySelector('#summary .status-in_progress')").await;
    browser.eval("window.marker = 'same page'; true").await;
    browser
        .wait_for("[...document.querySelectorAll('#transcript .said')].some(s => s.textContent === 'Hello there.')")
        .await;
    assert!(browser
        .eval("document.getElementById('no-recording').textContent")
        .await
        .as_str()
        .unwrap()
        .starts_with("No recording yet"));
    let (status, _) = app.post(&format!("/v1/calls/end?id={id}"), json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    browser.wait_for("document.querySelector('#summary .status-ended')").await;
    browser.wait_for("[...document.querySelectorAll('#timeline li')].at(-1)?.dataset.event === 'ended'").await;
    let outcome = browser.eval("document.getElementById('timeline').textContent").await;
    assert!(outcome.as_str().unwrap().contains("bot_disconnected"), "{outcome}");
    browser.wait_for("document.querySelector('audio#recording')").await;
    assert_eq!(browser.eval("window.marker").await, "same page", "updated without a reload");
    browser.close().await;
}
