//! The sandbox's carrier: it answers the REST requests the Twilio and Vonage adapters send, under
//! `/sandbox/twilio` and `/sandbox/vonage` ([`twilio`], [`vonage`]: calls and numbers, answered as
//! those carriers answer them), and plays each call out as the number dialled says (see
//! [`Scenario`]): it rings, is answered or not, talks, and ends. Its news reaches this server as
//! callbacks signed exactly as those carriers sign them, so the real verification path runs
//! ([`callbacks`]); an answered call's media stream is opened and the person put on it
//! ([`media`]); a call in progress can be transferred ([`transfer`]); and every call keeps its
//! recording ([`recording`]). Every number is the sandbox account's: any can be bought, linked and
//! released.
//!
//! It is not one of the server's carrier adapters: it only uses their protocol helpers (TwiML,
//! signatures, the server's credentials with it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use tokio::sync::Notify;

use super::people::{Line, Scenario};
use super::Sandbox;
use crate::crypto::SecretBox;
use crate::telephony::{twilio as twilio_api, vonage as vonage_api, Endpoints};

mod callbacks;
pub mod media;
pub mod recording;
mod transfer;
pub mod twilio;
mod twiml;
pub mod vonage;

pub use transfer::Transfer;

pub const VONAGE_API_KEY: &str = "sandbox";
const VONAGE_APPLICATION_ID: &str = "sandbox-application";
/// The shortest time a machine or a person who stays on the line talks, however sped up the
/// sandbox is.
const SHORTEST_TALK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Twilio,
    Vonage,
}

/// One simulated call.
pub struct SimCall {
    pub id: String,
    pub protocol: Protocol,
    pub account_sid: String,
    pub auth_token: String,
    pub to: String,
    pub from: String,
    status: Mutex<String>,
    answered_at: Mutex<Option<Instant>>,
    hung_up: AtomicBool,
    hang_up: Notify,
    /// The carrier ends the call's media stream (the call ended, or is being transferred).
    pub media_stop: Notify,
    sequence: AtomicU32,
    /// Twilio: the StatusCallbackEvent list (completed is always sent).
    events: Vec<String>,
    status_url: Option<String>,
    amd_url: Option<String>,
    twiml_url: Option<String>,
    /// Vonage: the event URL and the NCCO's websocket endpoint.
    event_url: Option<String>,
    ncco_stream: Option<(String, Value)>,
    machine_detection: bool,
    record: bool,
    duration: Mutex<Option<i64>>,
    created: chrono::DateTime<chrono::Utc>,
    /// What the call's line carried: the person's words, the recording.
    pub line: Arc<Line>,
    /// Where the server transferred the call, once it did; `transferred` tells the call's play.
    transfer: Mutex<Option<Transfer>>,
    transferred: Notify,
}

impl SimCall {
    /// A call the carrier accepted (answering the request with `status`), on `line`; what else
    /// its request asked for is for the API face to fill in.
    pub fn accepted(
        id: String,
        protocol: Protocol,
        to: String,
        from: String,
        status: &str,
        line: Arc<Line>,
    ) -> SimCall {
        SimCall {
            id,
            protocol,
            account_sid: String::new(),
            auth_token: String::new(),
            to,
            from,
            status: Mutex::new(status.into()),
            answered_at: Mutex::new(None),
            hung_up: AtomicBool::new(false),
            hang_up: Notify::new(),
            media_stop: Notify::new(),
            sequence: AtomicU32::new(0),
            events: Vec::new(),
            status_url: None,
            amd_url: None,
            twiml_url: None,
            event_url: None,
            ncco_stream: None,
            machine_detection: false,
            record: false,
            duration: Mutex::new(None),
            created: chrono::Utc::now(),
            line,
            transfer: Mutex::new(None),
            transferred: Notify::new(),
        }
    }

    /// The call's status, in Twilio's words.
    pub fn status(&self) -> String {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_status(&self, status: &str) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status.to_owned();
    }

    /// How long the call talked, in whole seconds, once it ended.
    pub fn duration(&self) -> Option<i64> {
        *self.duration.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Over for the person on it: hung up, ended, or transferred (the carrier then ends the stream
    /// to the server).
    pub fn is_over(&self) -> bool {
        self.hung_up.load(Ordering::SeqCst)
            || self.transfer.lock().unwrap_or_else(|e| e.into_inner()).is_some()
            || matches!(self.status().as_str(), "completed" | "canceled")
    }
}

/// The server's accounts with the sandbox carrier, derived from the server's secrets key (so
/// they are the same on every start).
struct Accounts {
    twilio_sid: String,
    twilio_token: String,
    vonage_jwt_secret: Vec<u8>,
    vonage_signature_secret: String,
    vonage_api_secret: String,
}

fn hex32(bytes: [u8; 32]) -> String {
    hex::encode(&bytes[..16])
}

/// The carrier's state: where it reaches the server, the server's accounts with it, its calls.
pub struct Carrier {
    http: reqwest::Client,
    public_base: String,
    local_base: String,
    accounts: Accounts,
    calls: Mutex<HashMap<String, Arc<SimCall>>>,
}

impl Carrier {
    pub fn new(secrets: &SecretBox, public_base: &str, local_base: &str) -> Carrier {
        Carrier {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            public_base: public_base.to_owned(),
            local_base: local_base.to_owned(),
            accounts: Accounts {
                twilio_sid: format!("AC{}", hex32(secrets.derive("sandbox/twilio-account"))),
                twilio_token: hex32(secrets.derive("sandbox/twilio-token")),
                vonage_jwt_secret: secrets.derive("sandbox/vonage-application").to_vec(),
                vonage_signature_secret: hex32(secrets.derive("sandbox/vonage-signature")),
                vonage_api_secret: hex32(secrets.derive("sandbox/vonage-api-secret")),
            },
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// The carriers' endpoints and the server's accounts with them, all the sandbox's.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            twilio_base: format!("{}/sandbox/twilio", self.local_base),
            vonage_base: format!("{}/sandbox/vonage", self.local_base),
            vonage_numbers_base: format!("{}/sandbox/vonage", self.local_base),
            server_twilio: Some(self.twilio_account()),
            vonage_signer: Some(self.vonage_signer()),
            vonage_signature_secret: Some(self.accounts.vonage_signature_secret.clone()),
            vonage_api_key: Some(VONAGE_API_KEY.to_owned()),
            vonage_api_secret: Some(self.accounts.vonage_api_secret.clone()),
            sandbox: true,
        }
    }

    pub fn twilio_account(&self) -> twilio_api::Credentials {
        twilio_api::Credentials {
            account_sid: self.accounts.twilio_sid.clone(),
            auth_token: self.accounts.twilio_token.clone(),
        }
    }

    pub fn vonage_signer(&self) -> vonage_api::Signer {
        vonage_api::Signer::Sandbox {
            application_id: VONAGE_APPLICATION_ID.into(),
            secret: self.accounts.vonage_jwt_secret.clone(),
        }
    }

    pub fn vonage_signature_secret(&self) -> &str {
        &self.accounts.vonage_signature_secret
    }

    pub fn vonage_api_secret(&self) -> &str {
        &self.accounts.vonage_api_secret
    }

    fn call(&self, id: &str) -> Option<Arc<SimCall>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// The carrier's calls of one protocol, newest first.
    fn newest_calls(&self, protocol: Protocol) -> Vec<Arc<SimCall>> {
        let mut calls: Vec<Arc<SimCall>> = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| c.protocol == protocol)
            .cloned()
            .collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.created));
        calls
    }
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
}

type SandboxState = axum::extract::State<Arc<Sandbox>>;

impl Sandbox {
    /// Places a call the carrier accepted: it is kept, and plays out in the background. `answer`
    /// makes the carrier's answer to the request, of the call as it was placed.
    fn place<T>(self: &Arc<Self>, call: SimCall, answer: impl FnOnce(&SimCall) -> T) -> T {
        let call = Arc::new(call);
        let answer = answer(&call);
        self.carrier.calls.lock().unwrap_or_else(|e| e.into_inner()).insert(call.id.clone(), call.clone());
        tokio::spawn(self.clone().play(call));
        answer
    }

    /// Plays a call's scenario out: it rings, is answered (or not), talks until whoever answered
    /// is done or the server ends or transfers it, and ends.
    async fn play(self: Arc<Self>, call: Arc<SimCall>) {
        let scenario = Scenario::of(&call.to);
        if let Some(unanswered) = self.ring(&call, scenario).await {
            return self.finish(&call, unanswered).await;
        }
        *call.answered_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.progress(&call, "in-progress").await;
        let mut media = Some(tokio::spawn(self.clone().stream_media(call.clone(), scenario)));
        // A machine and the patient person are on the line for a set time; the others until their
        // script is over.
        let talk = match scenario {
            Scenario::Machine => Some(5.0),
            Scenario::StaysOnLine => Some(3600.0),
            _ => None,
        };
        let talked = self.detect_machine(&call, scenario).await;
        // Unless the server transfers the call first: then the transfer plays out.
        let (hung_up, transfer) = tokio::select! {
            hung_up = self.talk(&call, talk, talked) => (hung_up, None),
            _ = call.transferred.notified() => (false, call.transfer.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        };
        if let Some(transfer) = &transfer {
            // The stream to the server ends (Twilio's redirect ends `<Connect><Stream>`, Vonage's
            // transfer replaces the websocket's NCCO), then the third party is dialled.
            call.media_stop.notify_waiters();
            if let Some(media) = media.take() {
                let _ = media.await;
            }
            tracing::info!(call = %call.id, "sandbox: the media stream to the server ended for the transfer");
            self.put_through(&call, transfer).await;
        }
        let duration = match talk {
            Some(talk) if !hung_up && transfer.is_none() => talk as i64,
            _ => {
                let answered = call.answered_at.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(Instant::now);
                (answered.elapsed().as_secs_f64() / self.time_scale).ceil() as i64
            }
        };
        self.end(&call, duration, media).await;
    }

    /// The call rings; `Some(status)` when it ends unanswered (or the server hangs up first).
    async fn ring(&self, call: &SimCall, scenario: Scenario) -> Option<&'static str> {
        self.progress(call, "initiated").await;
        if self.wait(call, 0.3).await {
            return Some("canceled");
        }
        self.progress(call, "ringing").await;
        match scenario {
            Scenario::Busy => {
                self.wait(call, 0.5).await;
                return Some("busy");
            }
            Scenario::Failed => {
                self.wait(call, 0.2).await;
                return Some("failed");
            }
            Scenario::NoAnswer => {
                let hung_up = self.wait(call, 3.0).await;
                return Some(if hung_up { "canceled" } else { "no-answer" });
            }
            _ => {}
        }
        self.wait(call, 0.7).await.then_some("canceled")
    }

    /// Answering-machine detection, when the call asked for it: whoever answered is heard once the
    /// line is open (a busy server may take a while to connect the stream), and judged. The
    /// seconds (of the scenario's talk) that took.
    async fn detect_machine(&self, call: &SimCall, scenario: Scenario) -> f64 {
        if !call.machine_detection {
            return 0.0;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), call.line.opened()).await;
        if self.wait(call, 0.5).await {
            return 0.0;
        }
        self.detection(call, scenario != Scenario::Machine).await;
        0.5
    }

    /// Whoever answered talks: for `talk` seconds (less what they `talked` already), or until
    /// their script is over. Whether the server hung up meanwhile.
    async fn talk(&self, call: &SimCall, talk: Option<f64>, talked: f64) -> bool {
        if call.hung_up.load(Ordering::SeqCst) {
            return true;
        }
        match talk {
            // The talking starts once the line is open (a busy server may take a while to connect
            // the stream), and is never so short, sped up, that the stream has no time to carry
            // anything.
            Some(talk) => {
                let _ = tokio::time::timeout(Duration::from_secs(10), call.line.opened()).await;
                self.wait_for(call, self.scaled(talk - talked).max(SHORTEST_TALK)).await
            }
            None => {
                tokio::select! {
                    _ = call.hang_up.notified() => true,
                    _ = call.line.finished() => call.hung_up.load(Ordering::SeqCst),
                    // A stream that never opened leaves nobody to finish the script.
                    _ = tokio::time::sleep(self.scaled(600.0)) => false,
                }
            }
        }
    }

    /// The call is over after `duration` seconds: its stream ends, and the carrier says so.
    async fn end(&self, call: &SimCall, duration: i64, media: Option<tokio::task::JoinHandle<()>>) {
        *call.duration.lock().unwrap_or_else(|e| e.into_inner()) = Some(duration.max(1));
        call.media_stop.notify_waiters();
        if let Some(media) = media {
            let _ = media.await;
        }
        self.finish(call, "completed").await;
    }

    /// The server ends the call.
    fn hang_up(&self, call: &SimCall) {
        call.hung_up.store(true, Ordering::SeqCst);
        call.hang_up.notify_waiters();
    }

    fn scaled(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds * self.time_scale)
    }

    /// Waits (scaled); true when the server hung up meanwhile.
    async fn wait(&self, call: &SimCall, seconds: f64) -> bool {
        self.wait_for(call, self.scaled(seconds.max(0.0))).await
    }

    /// Waits `time` on the server's clock; true when the server hung up meanwhile.
    async fn wait_for(&self, call: &SimCall, time: Duration) -> bool {
        if call.hung_up.load(Ordering::SeqCst) {
            return true;
        }
        tokio::select! {
            _ = call.hang_up.notified() => true,
            _ = tokio::time::sleep(time) => call.hung_up.load(Ordering::SeqCst),
        }
    }
}
