//! The harness of the black-box tests: the real server on a random port, on a fresh database
//! of either backend, and an HTTP client that speaks to it.
#![allow(dead_code)]

use std::path::PathBuf;

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

use vocode_server::config::{GlobalArgs, ServeArgs, TelephonyArgs};
use vocode_server::store::{users, Store};
use vocode_server::{crypto, App, AppState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server the Postgres suites create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

fn postgres_required() -> bool {
    std::env::var("REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true")
}

/// A database that exists for one test only.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Database { admin: String, name: String },
}

impl TestDb {
    /// A fresh database, or `None` when Postgres is not reachable and not required.
    pub async fn create(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("vocode-test-{}", Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).unwrap();
                Some(TestDb {
                    url: format!("sqlite://{}", dir.join("vocode.db").display()),
                    backend,
                    cleanup: Cleanup::Dir(dir),
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let conn = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(std::time::Duration::from_secs(3))
                    .connect(&admin)
                    .await;
                let pool = match conn {
                    Ok(pool) => pool,
                    Err(err) if !postgres_required() => {
                        eprintln!("SKIPPED: Postgres is not reachable at {admin} ({err}); set REQUIRE_POSTGRES=1 to fail instead");
                        return None;
                    }
                    Err(err) => panic!("REQUIRE_POSTGRES is set but Postgres is not reachable at {admin}: {err}"),
                };
                let name = format!("vocode_test_{}", Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await.expect("create a test database");
                pool.close().await;
                let url = match admin.rfind('/') {
                    Some(i) if admin[..i].contains("://") && admin.len() > i => {
                        let (base, _) = admin.split_at(i);
                        let query = admin.find('?').map(|q| &admin[q..]).unwrap_or("");
                        format!("{base}/{name}{query}")
                    }
                    _ => format!("{admin}/{name}"),
                };
                Some(TestDb { url, backend, cleanup: Cleanup::Database { admin, name } })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin, name } => {
                let (admin, name) = (admin.clone(), name.clone());
                // Drop runs outside any runtime we may block: use a thread of its own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&pool)
                                .await;
                            pool.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// Settings a test may change before the server starts.
#[derive(Clone, Default)]
pub struct Options {
    pub jwt_secret: Option<String>,
    pub jwt_public_key_pem: Option<String>,
    pub telephony: TelephonyArgs,
    /// Background workers; tests run jobs themselves (`drain`) unless they ask for some.
    pub workers: usize,
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The default user's key.
    pub key: String,
    pub state: AppState,
    pub db: TestDb,
    pub secrets_key: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, Options::default()).await
    }

    pub async fn spawn_with(backend: Backend, options: Options) -> Option<TestApp> {
        Self::spawn_with_serve(backend, options, |_| {}).await
    }

    /// Like [`spawn_with`](Self::spawn_with), with any server setting changed by `tweak`.
    pub async fn spawn_with_serve(
        backend: Backend,
        options: Options,
        tweak: impl FnOnce(&mut ServeArgs),
    ) -> Option<TestApp> {
        let db = TestDb::create(backend).await?;
        let key = crypto::generate_api_key().key;
        let secrets_key = hex_key();
        let global = GlobalArgs { database_url: db.url.clone(), secrets_key: Some(secrets_key.clone()) };
        let serve = ServeArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            vocode_api_key: Some(key.clone()),
            jwt_secret: options.jwt_secret.clone(),
            jwt_public_key_pem: options.jwt_public_key_pem.clone(),
            telephony: options.telephony.clone(),
            workers: options.workers,
            ..ServeArgs::default()
        };
        let mut serve = serve;
        tweak(&mut serve);
        let listener = TcpListener::bind(serve.listen).await.unwrap();
        let app = App::build(&global, &serve, listener).await.expect("the app builds");
        let base = format!("http://{}", app.addr);
        let state = app.state.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("the server runs");
        });
        Some(TestApp {
            base,
            client: reqwest::Client::new(),
            key,
            state,
            db,
            secrets_key,
            shutdown: Some(tx),
            server: Some(server),
        })
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Runs every job due within `ahead` from now (retries scheduled later included).
    pub async fn drain_jobs(&self, ahead: std::time::Duration) -> usize {
        let at = vocode_server::store::now() + chrono::Duration::from_std(ahead).unwrap();
        vocode_server::jobs::drain(&self.state, at).await.expect("the queue drains")
    }

    /// A new user with a key of its own.
    pub async fn new_user(&self, name: &str) -> (Uuid, String) {
        let mut tx = self.store().begin().await.unwrap();
        let user = users::create_if_absent(tx.conn(), Uuid::now_v7(), name).await.unwrap().expect("a new user name");
        let key = crypto::generate_api_key();
        users::insert_key(tx.conn(), user.id, &key.display, &key.hash).await.unwrap();
        tx.commit().await.unwrap();
        (user.id, key.key)
    }

    pub async fn request(&self, method: Method, path: &str, key: Option<&str>, body: Option<&Value>) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.expect("the server answers")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        read(self.request(Method::GET, path, Some(&self.key), None).await).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        read(self.request(Method::POST, path, Some(&self.key), Some(&body)).await).await
    }

    pub async fn get_as(&self, key: &str, path: &str) -> (StatusCode, Value) {
        read(self.request(Method::GET, path, Some(key), None).await).await
    }

    pub async fn post_as(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        read(self.request(Method::POST, path, Some(key), Some(&body)).await).await
    }

    /// A POST whose body is sent exactly as given.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.key).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        read(req.send().await.unwrap()).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub async fn read(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub fn hex_key() -> String {
    let mut out = String::new();
    for _ in 0..4 {
        out.push_str(&Uuid::new_v4().simple().to_string());
    }
    out[..64].to_owned()
}

/// The `loc`s of a 422 body, as strings like `body.config.phone_number`.
pub fn error_locs(body: &Value) -> Vec<String> {
    body["detail"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    i["loc"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| match p {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Generates a `#[tokio::test]` per backend for each named `async fn(W)`, where `W` comes from
/// `make(backend)` (an `async fn(Backend) -> Option<W>`; `None` skips, as when Postgres is not
/// reachable), `TestApp::spawn` unless named.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!(TestApp::spawn => $($name),*);
    };
    ($make:path => $($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(world) = $make(Backend::Sqlite).await {
                        super::$name(world).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(world) = $make(Backend::Postgres).await {
                        super::$name(world).await;
                    }
                }
            }
        )*
    };
}

/// Polls `check` until it returns `Some`, for at most `limit`: for what happens on another
/// party's timeline (a carrier's), never for the server's own queue.
pub async fn eventually<T, F, Fut>(limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// POSTs `body` to `base` + `path` as the holder of `key`; the answer must be a 200.
pub async fn post_ok(base: &str, key: &str, path: &str, body: Value) -> Value {
    let res = reqwest::Client::new().post(format!("{base}{path}")).bearer_auth(key).json(&body).send().await.unwrap();
    let status = res.status();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    answer
}

/// A Twilio account connection with these credentials, and `number` linked to it: the
/// connection's id.
pub async fn link_twilio_number(base: &str, key: &str, account_sid: &str, auth_token: &str, number: &str) -> String {
    let conn = post_ok(
        base,
        key,
        "/v1/account_connections/create",
        serde_json::json!({"type": "account_connection_twilio",
               "credentials": {"twilio_account_sid": account_sid, "twilio_auth_token": auth_token}}),
    )
    .await;
    post_ok(
        base,
        key,
        "/v1/numbers/link",
        serde_json::json!({"phone_number": number, "telephony_account_connection": conn["id"]}),
    )
    .await;
    conn["id"].as_str().unwrap().to_owned()
}

/// The server binary, run as a process of its own.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
    /// What it printed to stdout before it listened.
    pub printed: String,
    /// Where its stderr (its logs) goes.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `vocode-server serve` on a free port and waits for its "listening" line.
    pub fn start(db_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_with(db_url, "127.0.0.1:0", env, |_| {})
    }

    /// Starts it on `listen`, with the command changed by `tweak` (to run it as another user,
    /// say) before it is spawned.
    pub fn start_with(
        db_url: &str,
        listen: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> ServerProcess {
        Self::try_start(db_url, listen, env, tweak)
            .unwrap_or_else(|printed| panic!("the server did not start: {printed}"))
    }

    /// Like [`start_with`](Self::start_with); a server that exits before it listens is an
    /// `Err` with what it printed.
    pub fn try_start(
        db_url: &str,
        listen: &str,
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Result<ServerProcess, String> {
        use std::io::{BufRead, BufReader};
        let log_path = std::env::temp_dir().join(format!("vocode-server-{}.log", Uuid::new_v4().simple()));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vocode-server"));
        cmd.args(["serve", "--listen", listen])
            .env("DATABASE_URL", db_url)
            .env_remove("VOCODE_API_KEY")
            .env_remove("SECRETS_KEY")
            .env_remove("CARRIER_MODE")
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut printed = String::new();
        let mut base = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            printed.push_str(&line);
            printed.push('\n');
            if let Some(addr) = line.strip_prefix("vocode-server listening on ") {
                base = addr.to_owned();
                break;
            }
        }
        if base.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("{printed}{logged}"));
        }
        Ok(ServerProcess { child, base, printed, log: log_path })
    }

    /// Everything it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
