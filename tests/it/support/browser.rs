//! A headless Chromium driven over the DevTools protocol: pages opened, scripts evaluated in them,
//! keys pressed, screenshots taken. Only this machine can be reached from it (every other host
//! name fails to resolve), so a page that needs the internet fails to work.
//!
//! The browser starts with `--remote-debugging-port=0` and writes the port it chose to
//! `DevToolsActivePort` in its profile; the test talks to the page's target over a WebSocket.
//! Everything the page reports along the way (exceptions, console and security messages,
//! dialogs) is kept in [`Browser::events`], and a dialog is dismissed so the page never blocks.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Chromium on this machine, if any.
pub fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .map(str::to_owned)
        .find(|c| std::process::Command::new("which").arg(c).output().is_ok_and(|o| o.status.success()))
}

/// `None` (the test is skipped, and says so) without Chromium; with `REQUIRE_BROWSER=1`, a
/// missing Chromium fails the test instead.
pub fn require_chromium(what: &str) -> Option<String> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var("REQUIRE_BROWSER").as_deref() != Ok("1"),
            "REQUIRE_BROWSER=1 but no Chromium is installed (apt-get install chromium)"
        );
        eprintln!("SKIPPED: no Chromium installed (apt-get install chromium); {what} was not tested in a browser");
    }
    found
}

const STEP: Duration = Duration::from_secs(30);

pub struct Browser {
    child: tokio::process::Child,
    profile: PathBuf,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The browser's own endpoint (`ws://…/devtools/browser/…`), to close it.
    browser_url: String,
    next_id: u64,
    /// Exceptions, console and log entries, and dialogs, as the browser reported them.
    pub events: Vec<Value>,
}

/// Headless Chromium that reaches nothing but this machine's servers (a page under test must
/// need no internet) and phones nowhere itself.
pub const OFFLINE: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];

impl Browser {
    /// A fresh browser with an empty profile, on a blank page. `None` without Chromium (see
    /// [`require_chromium`]).
    pub async fn launch(what: &str) -> Option<Browser> {
        let binary = require_chromium(what)?;
        let profile = std::env::temp_dir().join(format!("vocode-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = tokio::process::Command::new(binary)
            .args(OFFLINE)
            .args(["--no-default-browser-check", "--disable-extensions", "--mute-audio", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium starts");
        let port_file = profile.join("DevToolsActivePort");
        let (port, browser_path) = crate::support::eventually(Duration::from_secs(30), || {
            let port_file = port_file.clone();
            async move {
                let text = tokio::fs::read_to_string(&port_file).await.ok()?;
                let mut lines = text.lines();
                let port = lines.next()?.trim().parse::<u16>().ok()?;
                Some((port, lines.next()?.trim().to_owned()))
            }
        })
        .await;
        let targets: Value = crate::support::eventually(Duration::from_secs(30), || async move {
            let res = reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.ok()?;
            let targets: Value = res.json().await.ok()?;
            targets.as_array()?.iter().any(|t| t["type"] == "page").then_some(targets)
        })
        .await;
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").unwrap();
        let url = page["webSocketDebuggerUrl"].as_str().expect("a page target").to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("the DevTools socket");
        let browser_url = format!("ws://127.0.0.1:{port}{browser_path}");
        let mut browser = Browser { child, profile, socket, browser_url, next_id: 0, events: Vec::new() };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        Some(browser)
    }

    /// Sends a DevTools command and returns its result; an error answer fails the test.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(message)).await.expect("the browser takes a command");
        loop {
            let frame = tokio::time::timeout(STEP, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from the browser within {STEP:?}"))
                .expect("the DevTools socket stays open")
                .expect("a DevTools message");
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(text.as_str()).expect("DevTools messages are JSON");
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {}", message["error"]);
                return message["result"].clone();
            }
            if let Some(event) = message["method"].as_str() {
                if event == "Page.javascriptDialogOpening" {
                    // An alert would block the page: record it and dismiss it.
                    self.events.push(message.clone());
                    self.next_id += 1;
                    let dismiss = json!({"id": self.next_id, "method": "Page.handleJavaScriptDialog", "params": {"accept": false}});
                    self.socket.send(Message::text(dismiss.to_string())).await.unwrap();
                } else if matches!(event, "Runtime.exceptionThrown" | "Runtime.consoleAPICalled" | "Log.entryAdded") {
                    self.events.push(message);
                }
            }
        }
    }

    /// The value of a JavaScript expression in the page (awaited when it is a promise); an
    /// exception fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true, "userGesture": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy (neither null, false, 0 nor ""), and returns it.
    /// An exception counts as not yet (the page may still be loading), and is shown on timeout.
    pub async fn wait_for(&mut self, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let result = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                )
                .await;
            let (value, exception) = match result.get("exceptionDetails") {
                Some(details) => (Value::Null, Some(details["exception"]["description"].clone())),
                None => (result["result"]["value"].clone(), None),
            };
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''").await;
                panic!("{expression} stayed {value} (exception: {exception:?}) for {STEP:?}; the page reads: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens `url`, and waits until its document has loaded.
    pub async fn goto(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url})).await;
        assert!(result.get("errorText").is_none(), "{url}: {result}");
        let expected = serde_json::to_string(url).unwrap();
        self.wait_for(&format!("location.href === {expected} && document.readyState === 'complete'")).await;
    }

    /// The page's size, as a phone or a desktop shows it, in a fixed time zone.
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    pub async fn time_zone(&mut self, zone: &str) {
        self.call("Emulation.setTimezoneOverride", json!({"timezoneId": zone})).await;
    }

    /// Presses a key (`Tab`, `Enter`) in the focused element.
    pub async fn press(&mut self, key: &str) {
        let (code, text) = match key {
            "Tab" => (9, None),
            "Enter" => (13, Some("\r")),
            other => panic!("no key code for {other}"),
        };
        let mut down = json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if let Some(text) = text {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await;
    }

    /// The whole page (not only the viewport) as a PNG.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let (width, height) = (size["width"].as_f64().unwrap(), size["height"].as_f64().unwrap().min(6000.0));
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}),
            )
            .await;
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).expect("base64 PNG")
    }
}

impl Browser {
    /// Closes the browser (all its processes) and waits for it to exit.
    pub async fn close(mut self) {
        if let Ok((mut socket, _)) = tokio_tungstenite::connect_async(self.browser_url.as_str()).await {
            let close = json!({"id": 1, "method": "Browser.close", "params": {}}).to_string();
            let _ = socket.send(Message::text(close)).await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
