//! The multi-replica rig: production's shape on one machine. `n` server processes (the real
//! binary) on one fresh Postgres database, behind HAProxy running the proxy configuration that
//! `docker-compose.yml` ships (`deploy/haproxy/haproxy.cfg`), in live carrier mode against the
//! suite's fake Twilio and Vonage, with the fake Deepgram, OpenAI-compatible and ElevenLabs
//! servers as the agents' providers and a webhook receiver. Everything from outside goes through
//! the proxy, round robin per request: the API, every carrier callback and TwiML fetch (the
//! replicas' `PUBLIC_BASE_URL` is the proxy's address, so the URLs they hand the carriers point at
//! it), and every media stream — so any of them may land on any replica.
//!
//! ```ignore
//! let Some(mut rig) = Rig::start(3, &[("DRAIN_SECS", "2")]).await else { return }; // None: skipped
//! let call = rig.post("/v1/calls/create", body).await.body;          // through the proxy
//! let carrier = Line::Twilio.pick_up(&rig.twilio, &rig.vonage, &call).await; // support::line
//! let holder = rig.served_by(&carrier.handshake).unwrap();            // the replica holding the stream
//! rig.steer_past(holder).await;                                       // the next request goes elsewhere
//! rig.sigterm(holder);                                                // or rig.kill9(holder)
//! assert!(rig.wait_exit(holder, Duration::from_secs(10)).await.success());
//! rig.restart(holder).await;                                          // same address, same settings
//! ```
//!
//! - [`Rig::start`]`(n, env)`: the database, the fakes, `n` replicas (the same `SECRETS_KEY`,
//!   `VOCODE_API_KEY` = [`Rig::key`], `PUBLIC_BASE_URL` = [`Rig::base`], live carriers and the
//!   fake providers, `WORKERS=4`, JSON logs at `info`; `env` comes last, so it overrides any of
//!   them), then the proxy; it returns once the proxy reaches every replica (about 2 s). `None`
//!   when Postgres is not reachable or HAProxy is not installed, unless `REQUIRE_POSTGRES=1` /
//!   `REQUIRE_HAPROXY=1` (then it panics).
//! - The fakes are fields: `twilio`, `vonage`, `deepgram`, `openai`, `tts`, `receiver` (any
//!   webhook URL may point at it: `ALLOW_PRIVATE_TARGETS=true`); `key`, `db`, `client` too.
//! - [`Rig::get`] and [`Rig::post`]: through the proxy as the default user, with the replica that
//!   answered ([`Answer`]).
//! - [`Rig::base`] (the proxy), [`Rig::replica`]`(i)` (replica `i` directly, bypassing the proxy).
//! - [`Rig::sigterm`] (returns at once), [`Rig::wait_exit`], [`Rig::kill9`], [`Rig::restart`]
//!   (same address, same settings; returns once the proxy sends it requests again), [`Rig::logs`]
//!   (its JSON log lines, every run's), [`Rig::proxy_log`].
//! - Where requests went: every answer through the proxy carries `x-rig-replica: r<i>`
//!   ([`Rig::served_by`] reads it, a websocket handshake's too), and [`Rig::routed`] lists every
//!   request the proxy finished (a websocket's once it closed), with the replica that served it.
//! - [`Rig::steer_past`]`(i)`: the proxy's next request goes to a replica other than `i` (round
//!   robin is a fixed cycle; valid while the test sends nothing else through the proxy).
//!
//! The proxy's configuration is the shipped file but for its lines marked `rig:` — its own
//! loopback port, the replicas' addresses instead of Docker's DNS, and health checks every 200 ms
//! instead of 2 s, so that a replica failing `/ready` is out of the rotation within half a second
//! (one refusing connections at once). Replicas are named `r0`…`r{n-1}` in it. HAProxy rather than
//! a proxy of the suite's own: the rig then tests the proxy settings production runs (per-request
//! round robin, websocket tunnels, `/ready` checks, retries elsewhere on a refused connection).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use super::fake_deepgram::FakeDeepgram;
use super::fake_openai::FakeOpenAi;
use super::fake_tts::FakeTts;
use super::{
    eventually, hex_key, Backend, FakeTwilio, FakeVonage, Receiver, ServerProcess, TestDb, PRIVATE_KEY_PATH,
    PUBLIC_KEY_PEM,
};

/// The header the rig's proxy adds to every answer: the replica that gave it.
pub const SERVED_BY: &str = "x-rig-replica";

/// How often the rig's proxy checks each replica's `/ready`.
const CHECK_EVERY: &str = "200ms";

fn haproxy_required() -> bool {
    std::env::var("REQUIRE_HAPROXY").is_ok_and(|v| v == "1" || v == "true")
}

/// A port on 127.0.0.1 that nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request the proxy finished: the replica that served it (`None`: none could), the method,
/// the path with its query, and the status (101 for a websocket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub replica: Option<usize>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// An answer through the proxy: its status, its JSON body, and the replica that gave it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub replica: Option<usize>,
}

struct Replica {
    /// `127.0.0.1:port`: kept across restarts (the proxy's configuration names it).
    listen: String,
    process: Option<ServerProcess>,
    /// Each run's log file.
    logs: Vec<PathBuf>,
}

struct Proxy {
    child: std::process::Child,
    config: PathBuf,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `n` replicas on one Postgres behind the shipped round-robin proxy, with the fakes they talk to.
pub struct Rig {
    pub twilio: FakeTwilio,
    pub vonage: FakeVonage,
    pub deepgram: FakeDeepgram,
    pub openai: FakeOpenAi,
    pub tts: FakeTts,
    pub receiver: Receiver,
    /// The default user's API key, accepted by every replica.
    pub key: String,
    pub db: TestDb,
    pub client: reqwest::Client,
    base: String,
    env: Vec<(String, String)>,
    replicas: Vec<Replica>,
    proxy: Proxy,
}

impl Rig {
    /// Starts the rig; `None` when Postgres or HAProxy is missing and not required.
    pub async fn start(n: usize, env: &[(&str, &str)]) -> Option<Rig> {
        if std::process::Command::new("haproxy").arg("-v").output().is_err() {
            assert!(
                !haproxy_required(),
                "REQUIRE_HAPROXY is set but haproxy is not installed (apt-get install haproxy)"
            );
            eprintln!(
                "SKIPPED: HAProxy is not installed (apt-get install haproxy); set REQUIRE_HAPROXY=1 to fail instead"
            );
            return None;
        }
        let db = TestDb::create(Backend::Postgres).await?;
        let (twilio, vonage) = (FakeTwilio::start().await, FakeVonage::start(PUBLIC_KEY_PEM).await);
        let (deepgram, openai, tts) = (FakeDeepgram::start().await, FakeOpenAi::start().await, FakeTts::start().await);
        let receiver = Receiver::start().await;
        let key = vocode_server::crypto::generate_api_key().key;
        let secrets_key = hex_key();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        // `env` comes last: a process takes the last value of a name.
        let settings: Vec<(String, String)> = [
            ("SECRETS_KEY", secrets_key.as_str()),
            ("VOCODE_API_KEY", key.as_str()),
            ("PUBLIC_BASE_URL", base.as_str()),
            ("CARRIER_MODE", "live"),
            ("TWILIO_API_BASE_URL", twilio.base.as_str()),
            ("VONAGE_APPLICATION_ID", vonage.state.application_id.as_str()),
            ("VONAGE_PRIVATE_KEY_PATH", PRIVATE_KEY_PATH),
            ("VONAGE_API_KEY", vonage.state.api_key.as_str()),
            ("VONAGE_API_SECRET", vonage.state.api_secret.as_str()),
            ("VONAGE_SIGNATURE_SECRET", vonage.state.signature_secret.as_str()),
            ("VONAGE_API_BASE_URL", vonage.base.as_str()),
            ("VONAGE_NUMBERS_BASE_URL", vonage.base.as_str()),
            ("DEEPGRAM_API_KEY", deepgram.key.as_str()),
            ("DEEPGRAM_URL", deepgram.url.as_str()),
            ("OPENAI_API_KEY", "sk-test-rig"),
            ("OPENAI_BASE_URL", openai.base.as_str()),
            ("ELEVENLABS_API_KEY", tts.elevenlabs_key.as_str()),
            ("ELEVENLABS_BASE_URL", tts.base.as_str()),
            ("ALLOW_PRIVATE_TARGETS", "true"),
            ("WORKERS", "4"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,sqlx=warn"),
        ]
        .into_iter()
        .chain(env.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // The first replica migrates the fresh database; the others then start side by side.
        let first = Self::spawn(&db.url, "127.0.0.1:0", &settings);
        let rest: Vec<ServerProcess> = std::thread::scope(|scope| {
            let starting: Vec<_> =
                (1..n).map(|_| scope.spawn(|| Self::spawn(&db.url, "127.0.0.1:0", &settings))).collect();
            starting.into_iter().map(|s| s.join().expect("a replica starts")).collect()
        });
        let replicas: Vec<Replica> = std::iter::once(first)
            .chain(rest)
            .map(|p| Replica {
                listen: p.base.trim_start_matches("http://").to_owned(),
                logs: vec![p.log.clone()],
                process: Some(p),
            })
            .collect();
        let proxy = start_proxy(port, &replicas);
        let client = reqwest::Client::new();
        let rig = Rig {
            twilio,
            vonage,
            deepgram,
            openai,
            tts,
            receiver,
            key,
            db,
            client,
            base,
            env: settings,
            replicas,
            proxy,
        };
        rig.until_served(&(0..n).collect::<Vec<_>>()).await;
        Some(rig)
    }

    fn spawn(db_url: &str, listen: &str, settings: &[(String, String)]) -> ServerProcess {
        let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServerProcess::start_with(db_url, listen, &env, |_| {})
    }

    /// Waits until requests through the proxy reach each of `which`.
    async fn until_served(&self, which: &[usize]) {
        eventually(Duration::from_secs(10), || async {
            let mut seen = Vec::new();
            for _ in 0..self.replicas.len() * 2 {
                let res = self.client.get(format!("{}/health", self.base)).send().await.ok()?;
                seen.extend(self.served_by(res.headers()));
            }
            which.iter().all(|i| seen.contains(i)).then_some(())
        })
        .await;
    }

    /// The proxy: where the carriers and API clients reach the replicas.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Replica `i`, directly.
    pub fn replica(&self, i: usize) -> String {
        format!("http://{}", self.replicas[i].listen)
    }

    fn process(&mut self, i: usize) -> &mut ServerProcess {
        self.replicas[i].process.as_mut().unwrap_or_else(|| panic!("replica {i} is not running"))
    }

    /// Sends replica `i` SIGTERM (it drains and exits in its own time: [`wait_exit`](Self::wait_exit)).
    pub fn sigterm(&mut self, i: usize) {
        let pid = self.process(i).child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM to replica {i}");
    }

    /// Waits up to `limit` for replica `i` to exit; its exit status.
    pub async fn wait_exit(&mut self, i: usize, limit: Duration) -> ExitStatus {
        let child = &mut self.process(i).child;
        let status = eventually(limit, || std::future::ready(child.try_wait().expect("the replica's status"))).await;
        self.replicas[i].process = None;
        status
    }

    /// `kill -9` replica `i`: no chance to finish anything.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut process) = self.replicas[i].process.take() {
            process.kill9();
        }
    }

    /// Starts replica `i` again, on its address and with the rig's settings (once it has exited:
    /// `kill9` or `wait_exit` first), and waits until the proxy sends it requests again.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.replicas[i].process.is_none(), "replica {i} is still running");
        let process = Self::spawn(&self.db.url, &self.replicas[i].listen, &self.env);
        self.replicas[i].logs.push(process.log.clone());
        self.replicas[i].process = Some(process);
        self.until_served(&[i]).await;
    }

    /// What replica `i` has logged so far (JSON lines), its earlier runs' first.
    pub fn logs(&self, i: usize) -> String {
        self.replicas[i].logs.iter().map(|log| std::fs::read_to_string(log).unwrap_or_default()).collect()
    }

    /// What the proxy has logged: a line per finished request (HAProxy's `httplog` format).
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(&self.proxy.log).unwrap_or_default()
    }

    /// The replica that answered, from the headers of an answer that came through the proxy.
    pub fn served_by(&self, headers: &reqwest::header::HeaderMap) -> Option<usize> {
        replica_index(headers.get(SERVED_BY)?.to_str().ok()?)
    }

    /// Every request the proxy has finished, in the order it finished them.
    pub fn routed(&self) -> Vec<Routed> {
        self.proxy_log().lines().filter_map(parse_log_line).collect()
    }

    /// Makes the proxy's next request go to a replica other than `avoid`, by sending cheap requests
    /// until `avoid` has taken one (round robin then moves on). Only while nothing else goes
    /// through the proxy.
    pub async fn steer_past(&self, avoid: usize) {
        for _ in 0..self.replicas.len() * 2 {
            let res = self.client.get(format!("{}/health", self.base)).send().await.expect("the proxy answers");
            if self.served_by(res.headers()) == Some(avoid) {
                return;
            }
        }
        panic!("replica {avoid} took none of the last requests: is it out of the proxy's rotation?");
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let res = req.bearer_auth(&self.key).send().await.expect("the proxy answers");
        let (status, replica) = (res.status(), self.served_by(res.headers()));
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body, replica }
    }

    /// `GET` through the proxy as the default user.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base))).await
    }

    /// `POST` a JSON body through the proxy as the default user.
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body)).await
    }
}

/// `r3` → 3.
fn replica_index(name: &str) -> Option<usize> {
    name.strip_prefix('r')?.parse().ok()
}

/// One line of HAProxy's `httplog` format: `… frontend backend/server timers status bytes … "METHOD
/// PATH HTTP/1.1"`.
fn parse_log_line(line: &str) -> Option<Routed> {
    let (head, request) = line.split_once(" \"")?;
    let fields: Vec<&str> = head.split_whitespace().collect();
    let at = fields.iter().position(|f| f.starts_with("vocode-server/"))?;
    let server = fields[at].split_once('/')?.1;
    let status = fields.get(at + 2)?.parse().ok()?;
    let mut words = request.split_whitespace();
    let (method, path) = (words.next()?.to_owned(), words.next()?.to_owned());
    Some(Routed { replica: replica_index(server), method, path, status })
}

/// The shipped proxy configuration, with the rig's lines in place of those marked `rig:`.
fn proxy_config(port: u16, replicas: &[Replica]) -> String {
    let shipped = include_str!("../../../deploy/haproxy/haproxy.cfg");
    let mut out = String::new();
    let mut skipping = false;
    for line in shipped.lines() {
        let trimmed = line.trim();
        let section = !line.starts_with(char::is_whitespace) && !trimmed.is_empty() && !trimmed.starts_with('#');
        if section {
            // Docker's DNS is not the rig's: its replicas are listed.
            skipping = trimmed.starts_with("resolvers ");
        }
        if skipping {
            continue;
        }
        if trimmed.starts_with("bind ") {
            out.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if trimmed.starts_with("server-template ") {
            out.push_str(&format!("    http-response set-header {SERVED_BY} %s\n"));
            for (i, replica) in replicas.iter().enumerate() {
                out.push_str(&format!(
                    "    server r{i} {} inter {CHECK_EVERY} fastinter {CHECK_EVERY} downinter {CHECK_EVERY}\n",
                    replica.listen
                ));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    for expected in ["bind ", "server-template "] {
        assert!(
            shipped.contains(expected),
            "deploy/haproxy/haproxy.cfg has a `{expected}` line for the rig to replace"
        );
    }
    out
}

/// HAProxy in the foreground on `port`, logging to a file; once it accepts connections.
fn start_proxy(port: u16, replicas: &[Replica]) -> Proxy {
    let name = Uuid::new_v4().simple();
    let config = std::env::temp_dir().join(format!("vocode-rig-{name}.cfg"));
    let log = std::env::temp_dir().join(format!("vocode-rig-{name}.log"));
    std::fs::write(&config, proxy_config(port, replicas)).expect("the proxy's configuration is written");
    let output = std::fs::File::create(&log).expect("the proxy's log");
    let child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&config)
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("haproxy starts");
    let mut proxy = Proxy { child, config, log };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("haproxy exited ({status}): {}", std::fs::read_to_string(&proxy.log).unwrap_or_default());
        }
        assert!(std::time::Instant::now() < deadline, "haproxy did not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_log_lines_say_where_each_request_went() {
        let line = "127.0.0.1:40000 [06/Dec/2026:02:40:00.123] vocode vocode-server/r2 0/0/0/1/1 204 150 - - ---- \
                    3/3/0/0/0 0/0 \"POST /telephony/twilio/status/abc HTTP/1.1\"";
        let routed = parse_log_line(line).unwrap();
        assert_eq!(
            routed,
            Routed {
                replica: Some(2),
                method: "POST".into(),
                path: "/telephony/twilio/status/abc".into(),
                status: 204
            }
        );
        let refused = "127.0.0.1:40001 [06/Dec/2026:02:40:00.124] vocode vocode-server/<NOSRV> -1/-1/-1/-1/0 503 217 \
                       - - SC-- 0/0/0/0/0 0/0 \"GET /ready HTTP/1.1\"";
        assert_eq!(parse_log_line(refused).unwrap().replica, None);
        assert!(parse_log_line("[NOTICE]   (1) : haproxy version is 2.6.12").is_none());
    }

    #[test]
    fn the_rigs_proxy_is_the_shipped_one_but_for_its_marked_lines() {
        let replicas = [Replica { listen: "127.0.0.1:4001".into(), process: None, logs: Vec::new() }];
        let config = proxy_config(4000, &replicas);
        assert!(config.contains("bind 127.0.0.1:4000\n") && !config.contains("bind :3000"));
        assert!(config.contains("server r0 127.0.0.1:4001 inter 200ms"));
        assert!(!config.contains("resolvers") && !config.contains("server-template"));
        for kept in ["balance roundrobin", "option httpchk GET /ready", "timeout tunnel 1h", "option redispatch 1"] {
            assert!(config.contains(kept), "{kept}");
        }
    }
}
