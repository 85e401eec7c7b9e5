//! The carriers: Twilio and Vonage adapters, the built-in sandbox carrier, and the HTTP and
//! websocket endpoints carriers call back (each one verified).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::TelephonyArgs;
use crate::crypto::SecretBox;
use crate::domain::phone::PhoneNumber;

pub mod callbacks;
pub mod sandbox;
pub mod streams;
pub mod twilio;
pub mod vonage;

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

/// Which carrier a number or a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Twilio,
    Vonage,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Twilio => "twilio",
            Provider::Vonage => "vonage",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "twilio" => Some(Provider::Twilio),
            "vonage" => Some(Provider::Vonage),
            _ => None,
        }
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
    pub sandbox: Option<Arc<sandbox::Sandbox>>,
    pub record_calls: bool,
    pub dispatch_max_attempts: u32,
    pub reconcile_after: Duration,
    pub streams: streams::Streams,
    stream_key: [u8; 32],
}

impl Telephony {
    pub fn new(args: &TelephonyArgs, listen: std::net::SocketAddr, secrets: &SecretBox) -> anyhow::Result<Telephony> {
        let local_host =
            if listen.ip().is_unspecified() { format!("127.0.0.1:{}", listen.port()) } else { listen.to_string() };
        let local_base = format!("http://{local_host}");
        let public_base =
            args.public_base_url.clone().unwrap_or_else(|| local_base.clone()).trim_end_matches('/').to_owned();
        url::Url::parse(&public_base)
            .map_err(|e| anyhow::anyhow!("PUBLIC_BASE_URL is not a URL ({public_base}): {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.carrier_timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(args.carrier_timeout_secs.clamp(1, 5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let sandboxed = args.sandbox();
        let (
            twilio_base,
            vonage_base,
            numbers_base,
            server_twilio,
            vonage_signer,
            vonage_signature_secret,
            vonage_keys,
            sandbox,
        ) = if sandboxed {
            let sandbox = Arc::new(sandbox::Sandbox::new(secrets, &public_base, &local_base, args.sandbox_time_scale));
            (
                format!("{local_base}/sandbox/twilio"),
                format!("{local_base}/sandbox/vonage"),
                format!("{local_base}/sandbox/vonage"),
                Some(sandbox.twilio_account()),
                Some(sandbox.vonage_signer()),
                Some(sandbox.vonage_signature_secret().to_owned()),
                (Some(sandbox::VONAGE_API_KEY.to_owned()), Some(sandbox.vonage_api_secret().to_owned())),
                Some(sandbox),
            )
        } else {
            let server_twilio = match (&args.twilio_account_sid, &args.twilio_auth_token) {
                (Some(sid), Some(token)) => {
                    Some(twilio::Credentials { account_sid: sid.clone(), auth_token: token.clone() })
                }
                (None, None) => None,
                _ => anyhow::bail!("set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or neither"),
            };
            let signer = match (&args.vonage_application_id, &args.vonage_private_key_path) {
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
            (
                args.twilio_api_base_url.clone().unwrap_or_else(|| twilio::DEFAULT_BASE_URL.into()),
                args.vonage_api_base_url.clone().unwrap_or_else(|| vonage::DEFAULT_API_BASE_URL.into()),
                args.vonage_numbers_base_url.clone().unwrap_or_else(|| vonage::DEFAULT_NUMBERS_BASE_URL.into()),
                server_twilio,
                signer,
                args.vonage_signature_secret.clone(),
                (args.vonage_api_key.clone(), args.vonage_api_secret.clone()),
                None,
            )
        };
        let slots: Slots = Arc::new(tokio::sync::Semaphore::new(args.carrier_max_concurrency.max(1)));
        Ok(Telephony {
            twilio: twilio::TwilioClient::new(http.clone(), slots.clone(), &twilio_base),
            vonage: vonage::VonageClient::new(
                http,
                slots,
                &vonage_base,
                &numbers_base,
                vonage_signer,
                vonage_keys.0,
                vonage_keys.1,
            ),
            public_base,
            local_base,
            server_twilio,
            vonage_signature_secret,
            sandbox,
            record_calls: args.record_calls,
            dispatch_max_attempts: args.dispatch_max_attempts.max(1),
            reconcile_after: Duration::from_secs(args.reconcile_after_secs.max(1)),
            streams: streams::Streams::default(),
            stream_key: secrets.derive("media-stream-token"),
        })
    }

    pub fn mode(&self) -> &'static str {
        if self.sandbox.is_some() {
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
        twilio::constant_time_eq(self.stream_token(call_id).as_bytes(), token.as_bytes())
    }
}
