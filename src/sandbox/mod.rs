//! The sandbox carrier: a carrier built into the server, so that `cargo run --release` with no
//! carrier account places calls end to end. It answers the same REST requests the Twilio and
//! Vonage adapters send (under `/sandbox/twilio` and `/sandbox/vonage`), calls this server back
//! with callbacks signed exactly as those carriers sign them (so the real verification path
//! runs), puts a simulated person on the line of the call's media-stream websocket ([`person`]:
//! real recorded speech out, the bot's audio heard, marks and clears honoured as Twilio does, both
//! sides recorded), and plays out a scenario chosen by the number dialled:
//!
//! | the number dialled ends in | what happens |
//! |---|---|
//! | `5550101` | a machine answers (answering-machine detection says `no_human`) and hangs up after 5 s |
//! | `5550102` | busy |
//! | `5550103` | rings, no answer |
//! | `5550104` | the call fails |
//! | `5550105` | a person answers and stays on the line, silent, until the call is ended through the API |
//! | `5550106` | the carrier refuses the number |
//! | `5550110` | a person answers, hears the greeting, says one thing, and barges in one second into the bot's answer to say goodbye; hangs up once the bot has answered that |
//! | `5550111` | a person answers, hears the greeting, asks about an offer, says "mhm" and "yeah" while the bot answers, then says goodbye and hangs up |
//! | `5550112` | a person answers and says nothing, until the server hangs up (or 120 s) |
//! | `5550113` | a person answers, hears the greeting, asks "Can I speak to a person, please?" and waits on the line to be transferred (hangs up after 120 s) |
//! | anything else | a person answers, hears the greeting, says one thing, hears the answer, says goodbye, hears that answer and hangs up |
//!
//! A call in progress can be transferred (Twilio: a `<Dial><Number>` TwiML redirect; Vonage: a
//! `transfer` to a `connect` NCCO): the stream to the server ends, and the number transferred to
//! plays its scenario as a third party — `5550102` (busy), `5550103` (no answer) and `5550104`
//! (failed) do not answer, which ends the call; any other number answers, talks for 3 s and hangs
//! up, and then the call is over. The third party's news goes to the transfer's own callbacks.
//!
//! With the server's own speech installed (`scripts/install-speech`), the people can say any
//! sentences with the local voice ([`Sandbox::script`]) instead of their scenario's recordings,
//! with background noise on their line (`SANDBOX_NOISE`), and they make out what the bot says
//! with the local recogniser ([`LineReport::heard`]).
//!
//! Times are scaled by `SANDBOX_TIME_SCALE`, except the bot's audio, which plays in real time as
//! the server paces it. On these calls the server's conversation uses stand-ins for the speech
//! and model providers it lacks (see `conversation::agent::Fallbacks`): the person tells the
//! stand-in speech-to-text what it said through a side channel, [`SpokenLogs`].
//!
//! It only ever calls back this server itself. It simulates the world outside the server — the
//! carriers and the people on their lines — and is not one of the server's carrier adapters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::conversation::local::LocalSpeech;
use crate::conversation::stt::sandbox::SpokenLogs;
use crate::conversation::tts::flite::{self, Flite};
use crate::crypto::SecretBox;
use crate::domain::phone::PhoneNumber;
use crate::telephony::{twilio as twilio_api, vonage as vonage_api, Endpoints};

pub const VONAGE_API_KEY: &str = "sandbox";
/// The shortest time a machine or a person who stays on the line talks, however sped up the
/// sandbox is.
const SHORTEST_TALK: Duration = Duration::from_secs(1);
/// The shortest time the third party of a transfer rings, however sped up the sandbox is: the
/// server records the transfer's start once the carrier has accepted it, and hears of the third
/// party only after that (as with a real carrier, where ringing takes seconds).
const SHORTEST_RING: Duration = Duration::from_secs(1);
const VONAGE_APPLICATION_ID: &str = "sandbox-application";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Human,
    Machine,
    Busy,
    NoAnswer,
    Failed,
    StaysOnLine,
    Invalid,
    BargeIn,
    Backchannel,
    Silent,
    AsksForHuman,
}

impl Scenario {
    pub fn of(number: &str) -> Scenario {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        match digits.get(digits.len().saturating_sub(7)..) {
            Some("5550101") => Scenario::Machine,
            Some("5550102") => Scenario::Busy,
            Some("5550103") => Scenario::NoAnswer,
            Some("5550104") => Scenario::Failed,
            Some("5550105") => Scenario::StaysOnLine,
            Some("5550106") => Scenario::Invalid,
            Some("5550110") => Scenario::BargeIn,
            Some("5550111") => Scenario::Backchannel,
            Some("5550112") => Scenario::Silent,
            Some("5550113") => Scenario::AsksForHuman,
            _ => Scenario::Human,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Twilio,
    Vonage,
}

/// One simulated call.
struct SimCall {
    id: String,
    protocol: Protocol,
    account_sid: String,
    auth_token: String,
    to: String,
    from: String,
    status: Mutex<String>,
    answered_at: Mutex<Option<Instant>>,
    hung_up: AtomicBool,
    hang_up: Notify,
    media_stop: Notify,
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
    wire: Arc<Wire>,
    /// Where the server transferred the call, once it did; `transferred` tells the call's play.
    transfer: Mutex<Option<Transfer>>,
    transferred: Notify,
}

/// Where a call is transferred, and where its carrier reports the third party's leg.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transfer {
    /// The number dialled.
    to: String,
    /// Twilio: the `<Dial action>` (how the dial ended); Vonage: the `connect`'s event URL (all
    /// the leg's news).
    ended_url: Option<String>,
    /// Twilio: the `<Number statusCallback>` (the third party answered).
    answered_url: Option<String>,
}

pub struct Sandbox {
    http: reqwest::Client,
    public_base: String,
    local_base: String,
    time_scale: f64,
    twilio_sid: String,
    twilio_token: String,
    vonage_jwt_secret: Vec<u8>,
    vonage_signature_secret: String,
    vonage_api_secret: String,
    calls: Mutex<HashMap<String, Arc<SimCall>>>,
    /// What the simulated people say, by the server's call id (the server's stand-in
    /// speech-to-text reads it).
    speech: Arc<SpokenLogs>,
    /// The lines of calls, by the server's call id.
    lines: Mutex<HashMap<String, Arc<Wire>>>,
    /// The local recogniser, when installed: the people listen with it.
    local: Arc<LocalSpeech>,
    /// Whether the people make out the bot with the local recogniser.
    listen: bool,
    /// Background noise on the people's lines (RMS).
    noise: f32,
    /// What the people at some numbers say instead of their scenario's lines, by the number's
    /// digits ([`script`](Self::script)).
    scripts: Mutex<HashMap<String, Vec<String>>>,
}

fn hex32(bytes: [u8; 32]) -> String {
    hex::encode(&bytes[..16])
}

impl Sandbox {
    pub fn new(
        secrets: &SecretBox,
        public_base: &str,
        local_base: &str,
        time_scale: f64,
        speech: Arc<SpokenLogs>,
    ) -> Self {
        Sandbox {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            public_base: public_base.to_owned(),
            local_base: local_base.to_owned(),
            time_scale: if time_scale.is_finite() && time_scale > 0.0 { time_scale } else { 1.0 },
            twilio_sid: format!("AC{}", hex32(secrets.derive("sandbox/twilio-account"))),
            twilio_token: hex32(secrets.derive("sandbox/twilio-token")),
            vonage_jwt_secret: secrets.derive("sandbox/vonage-application").to_vec(),
            vonage_signature_secret: hex32(secrets.derive("sandbox/vonage-signature")),
            vonage_api_secret: hex32(secrets.derive("sandbox/vonage-api-secret")),
            calls: Mutex::new(HashMap::new()),
            speech,
            lines: Mutex::new(HashMap::new()),
            local: Arc::new(LocalSpeech::none()),
            listen: false,
            noise: 0.0,
            scripts: Mutex::default(),
        }
    }

    /// The people speak (scripted sentences) with the local voice and, when `listen`, make out
    /// the bot with the local recogniser; `noise` (RMS) is mixed into what they send.
    pub fn with_people(mut self, local: Arc<LocalSpeech>, listen: bool, noise: f32) -> Self {
        self.local = local;
        self.listen = listen;
        self.noise = if noise.is_finite() { noise.clamp(0.0, 10_000.0) } else { 0.0 };
        self
    }

    /// What the line of a call (by the server's call id) has carried so far.
    pub fn line(&self, call_id: &str) -> Option<LineReport> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).map(|wire| wire.report())
    }

    /// From now on, the person who answers `number` says `sentences` with the local voice (when
    /// it is installed): after the greeting, one sentence per turn, each once the bot has
    /// answered the one before; then they hang up.
    pub fn script(&self, number: &str, sentences: Vec<String>) {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        self.scripts.lock().unwrap_or_else(|e| e.into_inner()).insert(digits, sentences);
    }

    /// [`line`](Self::line), once the person has made out (transcribed) all of the bot's speech
    /// they heard.
    pub async fn line_understood(&self, call_id: &str) -> Option<LineReport> {
        let wire = self.lines.lock().unwrap_or_else(|e| e.into_inner()).get(call_id).cloned()?;
        wire.understood().await;
        Some(wire.report())
    }

    fn new_wire(&self) -> Arc<Wire> {
        let ears = (self.listen && self.local.recognizer_available()).then(|| self.local.clone());
        Arc::new(Wire::new(self.time_scale, ears))
    }

    /// The carriers' endpoints and the server's accounts with them, all the sandbox's: where the
    /// adapters send their requests when the server runs in sandbox mode.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            twilio_base: format!("{}/sandbox/twilio", self.local_base),
            vonage_base: format!("{}/sandbox/vonage", self.local_base),
            vonage_numbers_base: format!("{}/sandbox/vonage", self.local_base),
            server_twilio: Some(self.twilio_account()),
            vonage_signer: Some(self.vonage_signer()),
            vonage_signature_secret: Some(self.vonage_signature_secret.clone()),
            vonage_api_key: Some(VONAGE_API_KEY.to_owned()),
            vonage_api_secret: Some(self.vonage_api_secret.clone()),
            sandbox: true,
        }
    }

    /// The server's own (sandbox) Twilio account.
    pub fn twilio_account(&self) -> twilio_api::Credentials {
        twilio_api::Credentials { account_sid: self.twilio_sid.clone(), auth_token: self.twilio_token.clone() }
    }

    pub fn vonage_signer(&self) -> vonage_api::Signer {
        vonage_api::Signer::Sandbox {
            application_id: VONAGE_APPLICATION_ID.into(),
            secret: self.vonage_jwt_secret.clone(),
        }
    }

    pub fn vonage_signature_secret(&self) -> &str {
        &self.vonage_signature_secret
    }

    pub fn vonage_api_secret(&self) -> &str {
        &self.vonage_api_secret
    }

    fn scaled(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds * self.time_scale)
    }

    /// Where to deliver a URL this server gave out: its own listener. Anything else is refused.
    fn local(&self, url: &str) -> Option<String> {
        let ws_public = self.public_base.replacen("http", "ws", 1);
        let ws_local = self.local_base.replacen("http", "ws", 1);
        if let Some(rest) = url.strip_prefix(&self.public_base) {
            Some(format!("{}{rest}", self.local_base))
        } else if let Some(rest) = url.strip_prefix(&ws_public) {
            Some(format!("{ws_local}{rest}"))
        } else if url.starts_with(&self.local_base) || url.starts_with(&ws_local) {
            Some(url.to_owned())
        } else {
            None
        }
    }

    fn call(&self, id: &str) -> Option<Arc<SimCall>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    fn recording_url(&self, call: &SimCall) -> String {
        match call.protocol {
            Protocol::Twilio => format!(
                "{}/sandbox/twilio/2010-04-01/Accounts/{}/Recordings/RE{}",
                self.public_base,
                call.account_sid,
                &call.id[2..]
            ),
            Protocol::Vonage => {
                format!("{}/sandbox/vonage/recordings/{}", self.public_base, call.id)
            }
        }
    }

    /// Plays a call's scenario out.
    async fn play(self: Arc<Self>, call: Arc<SimCall>) {
        let scenario = Scenario::of(&call.to);
        self.progress(&call, "initiated").await;
        if self.wait(&call, 0.3).await {
            return self.finish(&call, "canceled").await;
        }
        self.progress(&call, "ringing").await;
        match scenario {
            Scenario::Busy => {
                self.wait(&call, 0.5).await;
                return self.finish(&call, "busy").await;
            }
            Scenario::Failed => {
                self.wait(&call, 0.2).await;
                return self.finish(&call, "failed").await;
            }
            Scenario::NoAnswer => {
                let hung_up = self.wait(&call, 3.0).await;
                return self.finish(&call, if hung_up { "canceled" } else { "no-answer" }).await;
            }
            _ => {}
        }
        if self.wait(&call, 0.7).await {
            return self.finish(&call, "canceled").await;
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
        let mut talked = 0.0;
        // Whoever answered is heard once the line is open (a busy server may take a while to
        // connect the stream): answering-machine detection listens to that.
        if call.machine_detection {
            let _ = tokio::time::timeout(Duration::from_secs(10), call.wire.opened()).await;
        }
        if call.machine_detection && !self.wait(&call, 0.5).await {
            talked = 0.5;
            self.detection(&call, scenario != Scenario::Machine).await;
        }
        let talked_out = async {
            if call.hung_up.load(Ordering::SeqCst) {
                return true;
            }
            match talk {
                // The talking starts once the line is open (a busy server may take a while to
                // connect the stream), and is never so short, sped up, that the stream has no
                // time to carry anything.
                Some(talk) => {
                    let _ = tokio::time::timeout(Duration::from_secs(10), call.wire.opened()).await;
                    self.wait_for(&call, self.scaled(talk - talked).max(SHORTEST_TALK)).await
                }
                None => {
                    tokio::select! {
                        _ = call.hang_up.notified() => true,
                        _ = call.wire.finished() => call.hung_up.load(Ordering::SeqCst),
                        // A stream that never opened leaves nobody to finish the script.
                        _ = tokio::time::sleep(self.scaled(600.0)) => false,
                    }
                }
            }
        };
        // Unless the server transfers the call first: then the transfer plays out.
        let (hung_up, transfer) = tokio::select! {
            hung_up = talked_out => (hung_up, None),
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
        *call.duration.lock().unwrap_or_else(|e| e.into_inner()) = Some(duration.max(1));
        call.media_stop.notify_waiters();
        if let Some(media) = media {
            let _ = media.await;
        }
        self.finish(&call, "completed").await;
    }

    /// Starts transferring an answered call, as its carrier accepted the request: the stream to
    /// the server ends and the third party is dialled. Refused unless the call is in progress and
    /// not being transferred already.
    fn transfer(&self, call: &SimCall, transfer: Transfer) -> Result<(), String> {
        let status = call.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if status != "in-progress" || call.hung_up.load(Ordering::SeqCst) {
            return Err(format!("the call is {status}: only a call in progress can be transferred"));
        }
        let mut current = call.transfer.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_some() {
            return Err("the call is being transferred already".into());
        }
        tracing::info!(call = %call.id, to = %transfer.to, "sandbox: the server transfers the call");
        *current = Some(transfer);
        drop(current);
        call.transferred.notify_one();
        Ok(())
    }

    /// The third party of a transferred call, as the scenario of its number says: it rings, then
    /// does not answer (and the call ends), or answers, talks a while and hangs up. Its news goes
    /// to the transfer's callbacks, as the carrier sends it. Returns once the call is to end.
    async fn put_through(&self, call: &SimCall, transfer: &Transfer) {
        let scenario = Scenario::of(&transfer.to);
        let leg = match call.protocol {
            Protocol::Twilio => format!("CA{}", random_hex(32)),
            Protocol::Vonage => uuid::Uuid::new_v4().to_string(),
        };
        tracing::info!(call = %call.id, to = %transfer.to, ?scenario, %leg, "sandbox: dialling the third party");
        if call.protocol == Protocol::Vonage {
            self.leg_event(call, transfer, &leg, json!({"status": "ringing"})).await;
        }
        let (ring, unanswered) = match scenario {
            Scenario::Busy => (0.5, Some("busy")),
            Scenario::Failed => (0.2, Some("failed")),
            Scenario::NoAnswer => (6.0, Some("no-answer")),
            _ => (2.0, None),
        };
        if self.wait_for(call, self.scaled(ring).max(SHORTEST_RING)).await {
            tracing::info!(call = %call.id, "sandbox: the call was ended while the third party's phone rang");
            return;
        }
        if let Some(status) = unanswered {
            tracing::info!(call = %call.id, to = %transfer.to, status, "sandbox: the third party did not answer");
            return self.leg_ended(call, transfer, &leg, status, 0).await;
        }
        tracing::info!(call = %call.id, to = %transfer.to, "sandbox: the third party answered");
        match call.protocol {
            Protocol::Twilio => {
                if let Some(url) = &transfer.answered_url {
                    let params = vec![
                        ("AccountSid".into(), call.account_sid.clone()),
                        ("ApiVersion".into(), "2010-04-01".into()),
                        ("CallSid".into(), leg.clone()),
                        ("ParentCallSid".into(), call.id.clone()),
                        ("CallStatus".into(), "in-progress".into()),
                        ("Called".into(), transfer.to.clone()),
                        ("Caller".into(), call.from.clone()),
                        ("Direction".into(), "outbound-dial".into()),
                        ("From".into(), call.from.clone()),
                        ("To".into(), transfer.to.clone()),
                        ("CallbackSource".into(), "call-progress-events".into()),
                        ("SequenceNumber".into(), "0".into()),
                        ("Timestamp".into(), chrono::Utc::now().to_rfc2822()),
                    ];
                    self.post_signed(call, url, params).await;
                }
            }
            Protocol::Vonage => self.leg_event(call, transfer, &leg, json!({"status": "answered"})).await,
        }
        let answered = Instant::now();
        if self.wait_for(call, self.scaled(3.0).max(SHORTEST_TALK)).await {
            tracing::info!(call = %call.id, "sandbox: the call was ended while the third party talked");
            return;
        }
        let talked = (answered.elapsed().as_secs_f64() / self.time_scale).round() as i64;
        tracing::info!(call = %call.id, to = %transfer.to, talked, "sandbox: the third party hung up");
        self.leg_ended(call, transfer, &leg, "completed", talked).await;
    }

    /// The third party's leg is over (`status` as Twilio's `DialCallStatus` says it): Twilio
    /// posts the `<Dial action>` (its answer, `<Hangup/>`, ends the call), Vonage the leg's last
    /// event.
    async fn leg_ended(&self, call: &SimCall, transfer: &Transfer, leg: &str, status: &str, seconds: i64) {
        match call.protocol {
            Protocol::Twilio => {
                let Some(url) = &transfer.ended_url else { return };
                let mut params = self.twilio_params(call);
                params.push(("DialCallStatus".into(), status.into()));
                params.push(("DialCallSid".into(), leg.into()));
                params.push(("DialCallDuration".into(), seconds.to_string()));
                let twiml = self.post_signed(call, url, params).await;
                tracing::info!(call = %call.id, twiml = twiml.as_deref().unwrap_or_default(), "sandbox: the dial's action answered");
            }
            Protocol::Vonage => {
                let status = if status == "no-answer" { "timeout" } else { status };
                let mut fields = json!({"status": status});
                if status == "completed" {
                    fields["duration"] = json!(seconds.to_string());
                }
                self.leg_event(call, transfer, leg, fields).await;
            }
        }
    }

    /// An event of a Vonage transfer's leg, to the `connect`'s event URL.
    async fn leg_event(&self, call: &SimCall, transfer: &Transfer, leg: &str, fields: Value) {
        let Some(url) = &transfer.ended_url else { return };
        let common = json!({
            "uuid": leg,
            "conversation_uuid": format!("CON-{}", call.id),
            "from": call.from,
            "to": transfer.to,
            "direction": "outbound",
        });
        self.vonage_post(call, url, fields, common).await;
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

    fn set_status(&self, call: &SimCall, status: &str) {
        *call.status.lock().unwrap_or_else(|e| e.into_inner()) = status.to_owned();
    }

    async fn progress(&self, call: &SimCall, status: &str) {
        self.set_status(call, status);
        match call.protocol {
            Protocol::Twilio => {
                let event = match status {
                    "in-progress" => "answered",
                    other => other,
                };
                if call.events.iter().any(|e| e == event) {
                    self.twilio_callback(call, status).await;
                }
            }
            Protocol::Vonage => {
                let status = match status {
                    "initiated" => "started",
                    "in-progress" => "answered",
                    other => other,
                };
                self.vonage_event(call, json!({"status": status})).await;
            }
        }
    }

    async fn finish(&self, call: &SimCall, status: &str) {
        self.set_status(call, status);
        call.media_stop.notify_waiters();
        match call.protocol {
            Protocol::Twilio => self.twilio_callback(call, status).await,
            Protocol::Vonage => {
                let duration = call.duration.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(0);
                if call.record && status == "completed" {
                    let url = self.recording_url(call);
                    self.vonage_event(call, json!({"recording_url": url, "recording_uuid": call.id, "size": 417}))
                        .await;
                }
                let status = match status {
                    "no-answer" => "timeout",
                    "canceled" => "cancelled",
                    other => other,
                };
                self.vonage_event(call, json!({"status": status, "duration": duration.to_string()})).await;
            }
        }
    }

    async fn detection(&self, call: &SimCall, human: bool) {
        match call.protocol {
            Protocol::Twilio => {
                let Some(url) = &call.amd_url else { return };
                let mut params = self.twilio_params(call);
                params.push(("AnsweredBy".into(), if human { "human" } else { "machine_start" }.into()));
                params.push(("MachineDetectionDuration".into(), "1200".into()));
                self.post_signed(call, url, params).await;
            }
            Protocol::Vonage => {
                let status = if human { "human" } else { "machine" };
                self.vonage_event(call, json!({"status": status, "call_uuid": call.id})).await;
            }
        }
    }

    fn twilio_params(&self, call: &SimCall) -> Vec<(String, String)> {
        let status = call.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        vec![
            ("AccountSid".into(), call.account_sid.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("CallSid".into(), call.id.clone()),
            ("CallStatus".into(), status),
            ("Called".into(), call.to.clone()),
            ("Caller".into(), call.from.clone()),
            ("Direction".into(), "outbound-api".into()),
            ("From".into(), call.from.clone()),
            ("To".into(), call.to.clone()),
        ]
    }

    async fn twilio_callback(&self, call: &SimCall, status: &str) {
        let Some(url) = &call.status_url else { return };
        let mut params = self.twilio_params(call);
        params.push(("CallbackSource".into(), "call-progress-events".into()));
        params.push(("SequenceNumber".into(), call.sequence.fetch_add(1, Ordering::SeqCst).to_string()));
        params.push(("Timestamp".into(), chrono::Utc::now().to_rfc2822()));
        if status == "completed" {
            let duration = call.duration.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(0);
            params.push(("CallDuration".into(), duration.to_string()));
            params.push(("Duration".into(), ((duration + 59) / 60).to_string()));
            if call.record && duration > 0 {
                params.push(("RecordingUrl".into(), self.recording_url(call)));
                params.push(("RecordingSid".into(), format!("RE{}", &call.id[2..])));
                params.push(("RecordingDuration".into(), duration.to_string()));
            }
        }
        self.post_signed(call, url, params).await;
    }

    /// A form POST signed as Twilio signs it.
    async fn post_signed(&self, call: &SimCall, url: &str, params: Vec<(String, String)>) -> Option<String> {
        let target = self.local(url)?;
        let signature = twilio_api::signature(&call.auth_token, url, &params);
        let sent = self.http.post(target).header("x-twilio-signature", signature).form(&params).send().await;
        match sent {
            Ok(res) if !res.status().is_success() => {
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                tracing::warn!(call = %call.id, %status, %body, "the server refused a sandbox callback");
                None
            }
            Ok(res) => res.text().await.ok(),
            Err(err) => {
                tracing::warn!(error = %err, "the sandbox could not deliver a callback");
                None
            }
        }
    }

    async fn vonage_event(&self, call: &SimCall, fields: Value) {
        let Some(url) = &call.event_url else { return };
        let common = json!({
            "uuid": call.id,
            "conversation_uuid": format!("CON-{}", call.id),
            "from": call.from,
            "to": call.to,
            "direction": "outbound",
        });
        self.vonage_post(call, url, fields, common).await;
    }

    /// An event POSTed as Vonage sends it (signed): `fields`, and of `common` what they lack.
    async fn vonage_post(&self, call: &SimCall, url: &str, mut fields: Value, mut common: Value) {
        let Some(target) = self.local(url) else {
            return;
        };
        common["timestamp"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        if let (Value::Object(f), Value::Object(c)) = (&mut fields, common) {
            for (k, v) in c {
                f.entry(k).or_insert(v);
            }
        }
        let body = serde_json::to_vec(&fields).expect("JSON");
        let token = vonage_api::sign_callback(&self.vonage_signature_secret, &body, VONAGE_API_KEY);
        let sent = self
            .http
            .post(target)
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(res) if !res.status().is_success() => {
                let status = res.status();
                tracing::warn!(call = %call.id, %status, "the server refused a sandbox event");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "the sandbox could not deliver an event"),
        }
    }

    /// Connects to the call's media-stream websocket and puts the scenario's person on the line
    /// until the call ends.
    async fn stream_media(self: Arc<Self>, call: Arc<SimCall>, scenario: Scenario) {
        let (url, first, parameters) = match call.protocol {
            Protocol::Twilio => {
                let Some(twiml_url) = &call.twiml_url else {
                    tracing::warn!(call = %call.id, "the sandbox call has no TwiML URL: nobody is put on the line");
                    return;
                };
                let Some(twiml) = self.post_signed(&call, twiml_url, self.twilio_params(&call)).await else {
                    return;
                };
                let Some((url, params)) = parse_stream_twiml(&twiml) else {
                    tracing::warn!(call = %call.id, %twiml, "the server's TwiML connects no media stream");
                    return;
                };
                (url, None, params)
            }
            Protocol::Vonage => {
                let Some((uri, headers)) = &call.ncco_stream else {
                    return;
                };
                let mut first = json!({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"});
                if let (Value::Object(f), Value::Object(h)) = (&mut first, headers) {
                    f.extend(h.clone());
                }
                (uri.clone(), Some(first), Value::Null)
            }
        };
        let Some(target) = self.local(&url) else {
            tracing::warn!(call = %call.id, %url, "the media stream is not this server's: nobody is put on the line");
            return;
        };
        // The server's id of the call, as it named it in the stream's parameters: the person's side
        // channel is kept under it before the stream starts, so the server finds it at once.
        let server_call_id = match call.protocol {
            Protocol::Twilio => parameters["call_id"].as_str().map(str::to_owned),
            Protocol::Vonage => first.as_ref().and_then(|f| f["call_id"].as_str().map(str::to_owned)),
        };
        if let Some(id) = &server_call_id {
            self.speech.insert(id, call.wire.spoken.clone());
            self.lines.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), call.wire.clone());
        }
        let mut socket = match tokio_tungstenite::connect_async(target.as_str()).await {
            Ok((socket, _)) => socket,
            Err(err) => {
                tracing::warn!(call = %call.id, error = %err, "the sandbox could not open the media stream");
                return;
            }
        };
        let stream_sid = format!("MZ{}", &call.id[2..]);
        let opening: Vec<Message> = match call.protocol {
            Protocol::Twilio => vec![
                Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()),
                Message::text(
                    json!({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                           "start": {"accountSid": call.account_sid, "streamSid": stream_sid, "callSid": call.id,
                                     "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                     "customParameters": parameters}})
                    .to_string(),
                ),
            ],
            Protocol::Vonage => vec![Message::text(first.unwrap_or_default().to_string())],
        };
        for message in opening {
            if socket.send(message).await.is_err() {
                return;
            }
        }
        let framing = person::Framing { protocol: call.protocol, stream_sid: stream_sid.clone() };
        let digits: String = call.to.chars().filter(char::is_ascii_digit).collect();
        let script = self.scripts.lock().unwrap_or_else(|e| e.into_inner()).get(&digits).cloned();
        let voice = match (&script, self.local.flite()) {
            (Some(_), Some(program)) => Flite::new(program, flite::DEFAULT_VOICE).ok(),
            (Some(_), None) => {
                tracing::warn!(call = %call.id, "no local voice installed: the person says their scenario's lines instead");
                None
            }
            _ => None,
        };
        let mouth = person::Mouth { noise: self.noise, script: script.filter(|_| voice.is_some()), voice };
        let sequence = person::converse(&mut socket, &call, scenario, framing, self.time_scale, mouth).await;
        if call.protocol == Protocol::Twilio {
            let _ = socket
                .send(Message::text(
                    json!({"event": "stop", "sequenceNumber": (sequence + 1).to_string(), "streamSid": stream_sid,
                           "stop": {"accountSid": call.account_sid, "callSid": call.id}})
                    .to_string(),
                ))
                .await;
        }
        let _ = socket.close(None).await;
        if let Some(id) = &server_call_id {
            self.speech.remove(id);
        }
    }

    fn hang_up(&self, call: &SimCall) {
        call.hung_up.store(true, Ordering::SeqCst);
        call.hang_up.notify_waiters();
    }
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// An attribute of an XML start tag (`<Name a="…" …`), unescaped.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(xml_unescape(&tag[start..end]))
}

/// The start tag `<name …>` in `xml`, and what follows it.
fn start_tag<'a>(xml: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let at = xml
        .match_indices(&format!("<{name}"))
        .map(|(i, _)| i)
        .find(|&i| xml[i + name.len() + 1..].starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/'))?;
    let end = xml[at..].find('>')? + at;
    Some((&xml[at..end], &xml[end + 1..]))
}

/// A transfer out of TwiML: its `<Dial action>`, and the number of its `<Number>` with that
/// number's `statusCallback`.
fn parse_dial_twiml(twiml: &str) -> Option<Transfer> {
    let (dial, rest) = start_tag(twiml, "Dial")?;
    let (number, rest) = start_tag(rest, "Number")?;
    let to = xml_unescape(rest[..rest.find("</Number>")?].trim());
    (!to.is_empty()).then(|| Transfer {
        to,
        ended_url: attr(dial, "action"),
        answered_url: attr(number, "statusCallback"),
    })
}

/// The `<Stream url>` and its `<Parameter>`s out of TwiML.
fn parse_stream_twiml(twiml: &str) -> Option<(String, Value)> {
    let stream_start = twiml.find("<Stream")?;
    let stream_tag_end = twiml[stream_start..].find('>')? + stream_start;
    let url = attr(&twiml[stream_start..stream_tag_end], "url")?;
    let mut params = serde_json::Map::new();
    let mut rest = &twiml[stream_tag_end..];
    while let Some(p) = rest.find("<Parameter") {
        let end = rest[p..].find("/>")? + p;
        let tag = &rest[p..end];
        if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
            params.insert(n, Value::String(v));
        }
        rest = &rest[end..];
    }
    Some((url, Value::Object(params)))
}

fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
}

/// A 417-byte MPEG-1 Layer III frame of silence (128 kbit/s, 44.1 kHz), repeated: the recording
/// the sandbox keeps of every call.
fn silent_mp3(frames: usize) -> Vec<u8> {
    let mut frame = vec![0u8; 417];
    frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
    frame.repeat(frames)
}

mod person;
mod twilio;
mod vonage;

pub use person::LineReport;
use person::Wire;

/// The sandbox's calls of one protocol, newest first.
fn newest_calls(sb: &Sandbox, protocol: Protocol) -> Vec<Arc<SimCall>> {
    let mut calls: Vec<Arc<SimCall>> = sb
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

type SandboxState = State<Arc<Sandbox>>;

pub fn router(sandbox: Arc<Sandbox>) -> Router {
    Router::new()
        .route("/twilio/2010-04-01/Accounts/{account}/Calls.json", get(twilio::list_calls).post(twilio::create_call))
        .route("/twilio/2010-04-01/Accounts/{account}/Calls/{file}", get(twilio::fetch_call).post(twilio::modify_call))
        .route(
            "/twilio/2010-04-01/Accounts/{account}/AvailablePhoneNumbers/{country}/Local.json",
            get(twilio::available),
        )
        .route(
            "/twilio/2010-04-01/Accounts/{account}/IncomingPhoneNumbers.json",
            get(twilio::list_numbers).post(twilio::buy_number),
        )
        .route(
            "/twilio/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/{file}",
            post(twilio::update_number).delete(twilio::release_number),
        )
        .route("/twilio/2010-04-01/Accounts/{account}/Recordings/{file}", get(twilio_recording))
        .route("/vonage/v1/calls", get(vonage::list_calls).post(vonage::create_call))
        .route("/vonage/v1/calls/{uuid}", get(vonage::fetch_call).put(vonage::modify_call))
        .route("/vonage/v1/calls/{uuid}/dtmf", axum::routing::put(vonage::dtmf))
        .route("/vonage/number/search", get(vonage::search))
        .route("/vonage/number/buy", post(vonage::numbers_ok))
        .route("/vonage/number/update", post(vonage::numbers_ok))
        .route("/vonage/number/cancel", post(vonage::numbers_ok))
        .route("/vonage/recordings/{file}", get(vonage_recording))
        .with_state(sandbox)
}

/// A call's recording: both sides mixed, as a WAV file (8 kHz, 16-bit, mono), once anybody on
/// it made a sound; a few seconds of silent MP3 for a call that stayed silent.
fn recording(call: Option<Arc<SimCall>>) -> Response {
    match call.and_then(|call| call.wire.wav()) {
        Some(wav) => ([(header::CONTENT_TYPE, "audio/wav")], wav).into_response(),
        None => ([(header::CONTENT_TYPE, "audio/mpeg")], silent_mp3(40)).into_response(),
    }
}

async fn twilio_recording(State(sb): SandboxState, Path((_account, file)): Path<(String, String)>) -> Response {
    let sid = file.split('.').next().unwrap_or_default();
    recording(sid.strip_prefix("RE").and_then(|rest| sb.call(&format!("CA{rest}"))))
}

async fn vonage_recording(State(sb): SandboxState, Path(file): Path<String>) -> Response {
    recording(sb.call(&file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_follow_the_number_dialled() {
        assert_eq!(Scenario::of("14155550101"), Scenario::Machine);
        assert_eq!(Scenario::of("+1 (212) 555-0102"), Scenario::Busy);
        assert_eq!(Scenario::of("14155550105"), Scenario::StaysOnLine);
        assert_eq!(Scenario::of("14155550199"), Scenario::Human);
        assert_eq!(Scenario::of("+1 415 555 0110"), Scenario::BargeIn);
        assert_eq!(Scenario::of("14155550111"), Scenario::Backchannel);
        assert_eq!(Scenario::of("14155550112"), Scenario::Silent);
        assert_eq!(Scenario::of("+14155550113"), Scenario::AsksForHuman);
        assert_eq!(Scenario::of("123"), Scenario::Human);
    }

    #[test]
    fn stream_twiml_is_read_back() {
        let twiml = twilio_api::connect_stream_twiml("ws://h/telephony/twilio/stream/1?x=1&y=2", "c-1", "tok");
        let (url, params) = parse_stream_twiml(&twiml).unwrap();
        assert_eq!(url, "ws://h/telephony/twilio/stream/1?x=1&y=2");
        assert_eq!(params, json!({"call_id": "c-1", "token": "tok"}));
    }

    #[test]
    fn transfer_twiml_is_read_back() {
        let twiml =
            twilio_api::transfer_twiml("+14155550199", "http://h/transfer/1?a=1&b=2", "http://h/transfer/1/answered");
        let transfer = parse_dial_twiml(&twiml).unwrap();
        assert_eq!(
            transfer,
            Transfer {
                to: "+14155550199".into(),
                ended_url: Some("http://h/transfer/1?a=1&b=2".into()),
                answered_url: Some("http://h/transfer/1/answered".into()),
            }
        );
        assert_eq!(parse_dial_twiml("<Response><Hangup/></Response>"), None);
        assert_eq!(parse_dial_twiml("<Response><Dial><Number></Number></Dial></Response>"), None);
    }

    #[test]
    fn the_silent_recording_is_whole_mp3_frames() {
        let mp3 = silent_mp3(3);
        assert_eq!(mp3.len(), 3 * 417);
        assert_eq!(&mp3[417..419], &[0xFF, 0xFB]);
    }
}
