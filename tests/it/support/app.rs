//! The server in this process, on a fresh database and a random port, with a client that speaks
//! to it as the default user (or any other), and helpers for reading its answers.

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

use vocode_server::config::{ConversationArgs, GlobalArgs, ServeArgs, TelephonyArgs};
use vocode_server::store::{users, Store};
use vocode_server::{crypto, App, AppState};

use super::db::{Backend, TestDb};
use super::hex_key;

/// Settings a test may change before the server starts.
#[derive(Clone)]
pub struct Options {
    pub jwt_secret: Option<String>,
    pub jwt_public_key_pem: Option<String>,
    pub telephony: TelephonyArgs,
    /// The agents' providers: by default configured but unreachable (see
    /// [`unreachable_providers`]), so that live calls are accepted and stay silent.
    pub conversation: ConversationArgs,
    /// Background workers; tests run jobs themselves (`drain`) unless they ask for some.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jwt_secret: None,
            jwt_public_key_pem: None,
            telephony: TelephonyArgs::default(),
            conversation: unreachable_providers(),
            workers: 0,
        }
    }
}

/// Where nothing listens: connections are refused at once.
pub const NOWHERE: &str = "127.0.0.1:1";

/// Providers for every agent, each a key and an address where nothing listens: live calls pass
/// the check at `calls/create`, and their conversations fail to reach anyone (and say so in the
/// log) instead of calling the real services.
pub fn unreachable_providers() -> ConversationArgs {
    ConversationArgs {
        deepgram_api_key: Some("test-deepgram-key".into()),
        deepgram_url: Some(format!("ws://{NOWHERE}/v1/listen")),
        openai_api_key: Some("test-openai-key".into()),
        openai_base_url: Some(format!("http://{NOWHERE}/v1")),
        elevenlabs_api_key: Some("test-elevenlabs-key".into()),
        elevenlabs_base_url: Some(format!("http://{NOWHERE}")),
        vocode_voice: Some("elevenlabs:test-voice".into()),
        ..ConversationArgs::default()
    }
}

/// The same, as the environment of a server process.
pub fn unreachable_providers_env() -> Vec<(&'static str, String)> {
    let p = unreachable_providers();
    vec![
        ("DEEPGRAM_API_KEY", p.deepgram_api_key.unwrap()),
        ("DEEPGRAM_URL", p.deepgram_url.unwrap()),
        ("OPENAI_API_KEY", p.openai_api_key.unwrap()),
        ("OPENAI_BASE_URL", p.openai_base_url.unwrap()),
        ("ELEVENLABS_API_KEY", p.elevenlabs_api_key.unwrap()),
        ("ELEVENLABS_BASE_URL", p.elevenlabs_base_url.unwrap()),
        ("VOCODE_VOICE", p.vocode_voice.unwrap()),
    ]
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
            conversation: options.conversation.clone(),
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
        self.state.drain(at).await.expect("the queue drains")
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
