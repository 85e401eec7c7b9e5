//! What the suites share: the server (in-process on a fresh database, the real binary as a process
//! of its own, or several of them behind a round-robin proxy), fakes of the outside world that
//! speak its real protocols (Twilio, Vonage, a carrier's side of a media stream, a webhook
//! receiver, a carrier that misbehaves, a database connection that can be cut), and the helpers
//! every suite uses.

mod app;
mod broken_carrier;
pub mod browser;
mod db;
mod fake_carrier;
pub mod fake_deepgram;
pub mod fake_openai;
pub mod fake_pinecone;
pub mod fake_tts;
mod fake_twilio;
mod fake_vonage;
mod fault_proxy;
pub mod line;
mod process;
mod receiver;
pub mod replicas;
pub mod s3;

pub use app::{error_locs, link_twilio_number, post_ok, read, unreachable_providers_env, Options, TestApp};
pub use broken_carrier::broken_carrier;
pub use db::{Backend, TestDb};
pub use fake_carrier::{Failure, RECORDING_BYTES};
pub use fake_twilio::{twilio_signature, FakeTwilio};
pub use fake_vonage::FakeVonage;
pub use fault_proxy::FaultProxy;
pub use process::ServerProcess;
pub use receiver::{Behaviour, Received, Receiver};
pub use replicas::Rig;
pub use s3::S3Server;

/// The RSA key pair the tests sign with: a Vonage application's key, a JWT issuer's.
pub const PRIVATE_KEY_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt-test-private.pem");
pub const PRIVATE_KEY_PEM: &str = include_str!("../../fixtures/jwt-test-private.pem");
pub const PUBLIC_KEY_PEM: &str = include_str!("../../fixtures/jwt-test-public.pem");

/// Live carrier settings that send everything to a fake Twilio and a fake Vonage.
pub fn live_telephony(twilio: &FakeTwilio, vonage: &FakeVonage) -> vocode_server::config::TelephonyArgs {
    vocode_server::config::TelephonyArgs {
        carrier_mode: vocode_server::config::CarrierMode::Live,
        twilio_api_base_url: Some(twilio.base.clone()),
        vonage_application_id: Some(vonage.state.application_id.clone()),
        vonage_private_key_path: Some(PRIVATE_KEY_PATH.into()),
        vonage_api_key: Some(vonage.state.api_key.clone()),
        vonage_api_secret: Some(vonage.state.api_secret.clone()),
        vonage_signature_secret: Some(vonage.state.signature_secret.clone()),
        vonage_api_base_url: Some(vonage.base.clone()),
        vonage_numbers_base_url: Some(vonage.base.clone()),
        ..Default::default()
    }
}

/// The upstream Vocode spec, vendored (see `scripts/openapi.py`).
pub const UPSTREAM_OPENAPI: &str = include_str!("../../contract/upstream-openapi.json");
/// Our own document.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi.yaml");

/// A fresh 32-byte key, hex-encoded (`SECRETS_KEY`).
pub fn hex_key() -> String {
    let mut out = String::new();
    for _ in 0..4 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out[..64].to_owned()
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

/// Generates a `#[tokio::test]` per backend for each named `async fn(W)` of the calling module,
/// named `<fn>::sqlite` and `<fn>::postgres`. `W` comes from `make(backend)`, an
/// `async fn(Backend) -> Option<W>` of the calling module (`None` skips, as when Postgres is not
/// reachable), or from `TestApp::spawn` unless one is named.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::support::on_both_backends!(@with $crate::support::TestApp::spawn => $($name),*);
    };
    ($make:ident => $($name:ident),* $(,)?) => {
        $crate::support::on_both_backends!(@with super::$make => $($name),*);
    };
    (@with $make:path => $($name:ident),*) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(world) = $make($crate::support::Backend::Sqlite).await {
                        super::$name(world).await;
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(world) = $make($crate::support::Backend::Postgres).await {
                        super::$name(world).await;
                    }
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;
