//! The sandbox: the world outside the server, simulated, so that `cargo run --release` with no
//! carrier account places calls end to end, and tests run with none. It has
//!
//! - a carrier (`carrier/`) that speaks Twilio's and Vonage's REST APIs (under `/sandbox/twilio`
//!   and `/sandbox/vonage`, where the server's adapters send their requests in sandbox mode),
//!   places the calls it is asked to, plays each out as the number dialled says, and calls this
//!   server back with callbacks signed exactly as those carriers sign them (so the real
//!   verification path runs);
//! - people (`people/`) who answer its calls on the line of the call's media stream: a machine,
//!   or a person who speaks (recorded phrases, or a script's sentences with the local voice),
//!   listens (the bot's audio as the carrier plays it, made out with the local recogniser when
//!   installed) and follows the script of their number ([`Scenario`]); what happened on the line
//!   is its [`LineReport`];
//! - the side channel of the stand-ins (`stand_ins.rs`): on these calls the server's conversation
//!   uses stand-ins for the speech and model providers it lacks, and the people tell the
//!   stand-in speech-to-text what they said.
//!
//! Times are scaled by `SANDBOX_TIME_SCALE`, except the bot's audio, which plays in real time as
//! the server paces it.
//!
//! It only ever calls back this server itself. It simulates the world outside the server — the
//! carriers and the people on their lines — and is not one of the server's carrier adapters.

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;

use crate::conversation::local::LocalSpeech;
use crate::conversation::stt::sandbox::SpokenLogs;
use crate::crypto::SecretBox;
use crate::telephony::{twilio as twilio_api, vonage as vonage_api, Endpoints};

mod carrier;
mod people;
mod stand_ins;

use carrier::recording::{twilio_recording, vonage_recording};
pub use carrier::VONAGE_API_KEY;
use carrier::{twilio, vonage, Carrier};
use people::People;
pub use people::{LineReport, Scenario};

/// The simulated world: its carrier, its people, and the stand-ins' side channel.
pub struct Sandbox {
    carrier: Carrier,
    people: People,
    /// What the people say on each call, by the server's call id.
    spoken: Arc<SpokenLogs>,
    /// The world's clock rate: 1.0 is real time, less is faster.
    time_scale: f64,
}

impl Sandbox {
    pub fn new(secrets: &SecretBox, public_base: &str, local_base: &str, time_scale: f64) -> Self {
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 { time_scale } else { 1.0 };
        Sandbox {
            carrier: Carrier::new(secrets, public_base, local_base),
            people: People::new(time_scale),
            spoken: Arc::default(),
            time_scale,
        }
    }

    /// The people speak (scripted sentences) with the local voice and, when `listen`, make out
    /// the bot with the local recogniser; `noise` (RMS) is mixed into what they send.
    pub fn with_people(mut self, local: Arc<LocalSpeech>, listen: bool, noise: f32) -> Self {
        self.people = self.people.with_speech(local, listen, noise);
        self
    }

    /// What the line of a call (by the server's call id) has carried so far.
    pub fn line(&self, call_id: &str) -> Option<LineReport> {
        self.people.line(call_id).map(|line| line.report())
    }

    /// [`line`](Self::line), once the person has made out (transcribed) all of the bot's speech
    /// they heard.
    pub async fn line_understood(&self, call_id: &str) -> Option<LineReport> {
        let line = self.people.line(call_id)?;
        line.understood().await;
        Some(line.report())
    }

    /// From now on, the person who answers `number` says `sentences` with the local voice (when
    /// it is installed): after the greeting, one sentence per turn, each once the bot has
    /// answered the one before; then they hang up.
    pub fn script(&self, number: &str, sentences: Vec<String>) {
        self.people.script(number, sentences);
    }

    /// The carriers' endpoints and the server's accounts with them, all the sandbox's: where the
    /// adapters send their requests when the server runs in sandbox mode.
    pub fn endpoints(&self) -> Endpoints {
        self.carrier.endpoints()
    }

    /// The server's own (sandbox) Twilio account.
    pub fn twilio_account(&self) -> twilio_api::Credentials {
        self.carrier.twilio_account()
    }

    pub fn vonage_signer(&self) -> vonage_api::Signer {
        self.carrier.vonage_signer()
    }

    pub fn vonage_signature_secret(&self) -> &str {
        self.carrier.vonage_signature_secret()
    }

    pub fn vonage_api_secret(&self) -> &str {
        self.carrier.vonage_api_secret()
    }
}

/// The sandbox carrier's REST APIs, Twilio's and Vonage's, as the server's adapters call them.
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
        .route("/vonage/v1/calls/{uuid}/dtmf", put(vonage::dtmf))
        .route("/vonage/number/search", get(vonage::search))
        .route("/vonage/number/buy", post(vonage::numbers_ok))
        .route("/vonage/number/update", post(vonage::numbers_ok))
        .route("/vonage/number/cancel", post(vonage::numbers_ok))
        .route("/vonage/recordings/{file}", get(vonage_recording))
        .with_state(sandbox)
}
