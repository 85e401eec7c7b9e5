//! The carriers, by role:
//! - outbound: the adapters that speak each carrier's REST API ([`twilio`], [`vonage`]), the
//!   carrier account a call or a number goes through ([`account`]), and the jobs that place calls,
//!   hang them up and ask after quiet ones ([`outbound`]);
//! - [`inbound`]: the HTTP endpoints carriers call back, each request verified by an extractor;
//! - [`media`]: the media-stream websockets that carry an answered call's audio, both ways.
//!
//! Everything here acts on a call through the calls service ([`crate::calls`]).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::TelephonyArgs;
use crate::crypto::SecretBox;
use crate::domain::phone::PhoneNumber;
use crate::store::Store;

pub mod account;
pub mod conference;
pub mod inbound;
pub mod media;
pub mod outbound;
pub mod twilio;
pub mod vonage;

pub use account::{Carrier, CarrierAccount};

/// A call to place.
#[derive(Debug, Clone)]
pub struct Dial {
    pub call_id: Uuid,
    pub to: PhoneNumber,
    pub from: PhoneNumber,
    pub machine_detection: bool,
    pub record: bool,
    /// The call's `telephony_params`, passed on to the carrier's create request.
    pub extra: Vec<(String, String)>,
}

/// A call the carrier lists for the account.
#[derive(Debug, Clone)]
pub struct PlacedCall {
    pub id: String,
    pub status: String,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the carrier said when it took a call.
#[derive(Debug, Clone)]
pub struct Dialed {
    pub telephony_id: String,
    pub carrier_status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// The carrier said no (bad number, bad credentials…): asking again will not help.
    #[error("{0}")]
    Rejected(String),
    /// A timeout, a lost connection, a 5xx or a 429: it may work later.
    #[error("{0}")]
    Transient(String),
}

impl CarrierError {
    pub fn from_transport(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            CarrierError::Transient("the carrier did not answer in time".into())
        } else if err.is_connect() {
            CarrierError::Transient("the carrier could not be reached".into())
        } else {
            CarrierError::Transient(format!("the carrier request failed: {}", without_url(&err)))
        }
    }

    pub fn from_status(status: reqwest::StatusCode, reason: String) -> Self {
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            CarrierError::Transient(reason)
        } else {
            CarrierError::Rejected(reason)
        }
    }

    /// A success whose body cannot be read: the carrier may have acted on the request, so it
    /// must not be repeated.
    pub fn bad_answer(err: reqwest::Error) -> Self {
        CarrierError::Rejected(format!("the carrier's answer could not be read: {}", without_url(&err)))
    }
}

/// Error text without the URL, which may carry credentials or phone numbers.
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// The requests to carriers this process may have open at once (`CARRIER_MAX_CONCURRENCY`).
pub type Slots = Arc<tokio::sync::Semaphore>;

/// Waits for a free slot to talk to a carrier.
async fn take_slot(slots: &Slots) -> Result<tokio::sync::SemaphorePermit<'_>, CarrierError> {
    if slots.available_permits() == 0 {
        metrics::counter!("vocode_carrier_requests_queued_total").increment(1);
    }
    slots.acquire().await.map_err(|_| CarrierError::Transient("the server is stopping".into()))
}

/// Where the carriers' APIs are and the server's own accounts with them: the real carriers', or
/// the sandbox carrier's.
pub struct Endpoints {
    pub twilio_base: String,
    pub vonage_base: String,
    pub vonage_numbers_base: String,
    /// The server's own Twilio account (numbers bought without an account connection).
    pub server_twilio: Option<twilio::Credentials>,
    pub vonage_signer: Option<vonage::Signer>,
    pub vonage_signature_secret: Option<String>,
    pub vonage_api_key: Option<String>,
    pub vonage_api_secret: Option<String>,
    /// Whether these are the sandbox carrier's.
    pub sandbox: bool,
}

impl Endpoints {
    /// The real carriers, with the accounts the settings name.
    pub fn live(args: &TelephonyArgs) -> anyhow::Result<Endpoints> {
        let server_twilio = match (&args.twilio_account_sid, &args.twilio_auth_token) {
            (Some(sid), Some(token)) => {
                Some(twilio::Credentials { account_sid: sid.clone(), auth_token: token.clone() })
            }
            (None, None) => None,
            _ => anyhow::bail!("set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or neither"),
        };
        let vonage_signer = match (&args.vonage_application_id, &args.vonage_private_key_path) {
            (Some(app), Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read VONAGE_PRIVATE_KEY_PATH {}: {e}", path.display()))?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("VONAGE_PRIVATE_KEY_PATH is not an RSA private key: {e}"))?;
                Some(vonage::Signer::Application { application_id: app.clone(), key })
            }
            (None, None) => None,
            _ => anyhow::bail!("set both VONAGE_APPLICATION_ID and VONAGE_PRIVATE_KEY_PATH, or neither"),
        };
        Ok(Endpoints {
            twilio_base: args.twilio_api_base_url.clone().unwrap_or_else(|| twilio::DEFAULT_BASE_URL.into()),
            vonage_base: args.vonage_api_base_url.clone().unwrap_or_else(|| vonage::DEFAULT_API_BASE_URL.into()),
            vonage_numbers_base: args
                .vonage_numbers_base_url
                .clone()
                .unwrap_or_else(|| vonage::DEFAULT_NUMBERS_BASE_URL.into()),
            server_twilio,
            vonage_signer,
            vonage_signature_secret: args.vonage_signature_secret.clone(),
            vonage_api_key: args.vonage_api_key.clone(),
            vonage_api_secret: args.vonage_api_secret.clone(),
            sandbox: false,
        })
    }
}

/// Where this server is reached: by carriers (`public`), and by itself (`local`, where the sandbox
/// carrier delivers).
pub struct Bases {
    pub public: String,
    pub local: String,
}

impl Bases {
    pub fn new(args: &TelephonyArgs, listen: std::net::SocketAddr) -> anyhow::Result<Bases> {
        let local_host =
            if listen.ip().is_unspecified() { format!("127.0.0.1:{}", listen.port()) } else { listen.to_string() };
        let local = format!("http://{local_host}");
        let public = args.public_base_url.clone().unwrap_or_else(|| local.clone()).trim_end_matches('/').to_owned();
        url::Url::parse(&public).map_err(|e| anyhow::anyhow!("PUBLIC_BASE_URL is not a URL ({public}): {e}"))?;
        Ok(Bases { public, local })
    }
}

/// The carriers as this server is configured to reach them.
pub struct Telephony {
    /// Where carriers reach this server, without a trailing slash.
    pub public_base: String,
    /// Where this process itself listens (the sandbox delivers here).
    pub local_base: String,
    pub twilio: twilio::TwilioClient,
    pub vonage: vonage::VonageClient,
    /// The server's own Twilio account (numbers bought without an account connection).
    pub server_twilio: Option<twilio::Credentials>,
    pub vonage_signature_secret: Option<String>,
    /// Calls go to the built-in sandbox carrier.
    pub sandboxed: bool,
    pub record_calls: bool,
    pub reconcile_after: Duration,
    pub streams: media::Streams,
    stream_key: [u8; 32],
    /// Where account connections (and their sealed credentials) are read.
    store: Store,
    secrets: Arc<SecretBox>,
}

impl Telephony {
    pub fn new(
        args: &TelephonyArgs,
        bases: Bases,
        endpoints: Endpoints,
        store: Store,
        secrets: Arc<SecretBox>,
    ) -> anyhow::Result<Telephony> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.carrier_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(args.carrier_timeout_secs.clamp(1, 5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let slots: Slots = Arc::new(tokio::sync::Semaphore::new(args.carrier_max_concurrency.max(1)));
        Ok(Telephony {
            twilio: twilio::TwilioClient::new(http.clone(), slots.clone(), &endpoints.twilio_base),
            vonage: vonage::VonageClient::new(
                http,
                slots,
                &endpoints.vonage_base,
                &endpoints.vonage_numbers_base,
                endpoints.vonage_signer,
                endpoints.vonage_api_key,
                endpoints.vonage_api_secret,
            ),
            public_base: bases.public,
            local_base: bases.local,
            server_twilio: endpoints.server_twilio,
            vonage_signature_secret: endpoints.vonage_signature_secret,
            sandboxed: endpoints.sandbox,
            record_calls: args.record_calls,
            reconcile_after: Duration::from_secs(args.reconcile_after_secs.max(1)),
            streams: media::Streams::default(),
            stream_key: secrets.derive("media-stream-token"),
            store,
            secrets,
        })
    }

    pub fn mode(&self) -> &'static str {
        if self.sandboxed {
            "sandbox"
        } else {
            "live"
        }
    }

    /// An absolute URL of this server, as carriers reach it.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_base)
    }

    /// The websocket URL of a path (`wss://` behind `https://`).
    pub fn ws_url(&self, path: &str) -> String {
        let base = if let Some(rest) = self.public_base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.public_base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.public_base.clone()
        };
        format!("{base}{path}")
    }

    pub fn twilio_call_urls(&self, call_id: Uuid) -> twilio::CallUrls {
        twilio::CallUrls {
            twiml: self.url(&format!("/telephony/twilio/twiml/{call_id}")),
            status: self.url(&format!("/telephony/twilio/status/{call_id}")),
            amd: self.url(&format!("/telephony/twilio/amd/{call_id}")),
        }
    }

    pub fn vonage_call_urls(&self, call_id: Uuid) -> vonage::CallUrls {
        vonage::CallUrls {
            event: self.url(&format!("/telephony/vonage/event/{call_id}")),
            stream: self.ws_url(&format!("/telephony/vonage/stream/{call_id}")),
        }
    }

    /// The TwiML that connects a call's audio to its media stream here.
    pub fn stream_twiml(&self, call_id: Uuid) -> String {
        twilio::connect_stream_twiml(
            &self.ws_url(&format!("/telephony/twilio/stream/{call_id}")),
            &call_id.to_string(),
            &self.stream_token(call_id),
            &self.url(&format!("/telephony/twilio/resume/{call_id}")),
        )
    }

    /// The NCCO that connects a call's audio to its media stream here.
    pub fn stream_ncco(&self, call_id: Uuid, record: bool) -> serde_json::Value {
        let urls = self.vonage_call_urls(call_id);
        let headers = serde_json::json!({"call_id": call_id.to_string(), "token": self.stream_token(call_id)});
        vonage::ncco(&urls.stream, &urls.event, headers, record)
    }

    /// Where a Twilio number sends its inbound calls.
    pub fn twilio_voice_url(&self) -> String {
        self.url("/telephony/twilio/inbound")
    }

    /// Where a Twilio number reports the progress of its inbound calls.
    pub fn twilio_status_url(&self) -> String {
        self.url("/telephony/twilio/status")
    }

    /// The token that binds a media stream to its call: only the carrier that got it from this
    /// server can open the call's stream.
    pub fn stream_token(&self, call_id: Uuid) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.stream_key).expect("HMAC takes any key length");
        mac.update(call_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn check_stream_token(&self, call_id: Uuid, token: &str) -> bool {
        crate::crypto::constant_time_eq(self.stream_token(call_id).as_bytes(), token.as_bytes())
    }
}
