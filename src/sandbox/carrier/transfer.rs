//! Transfers: a call in progress can be transferred (Twilio: a `<Dial><Number>` TwiML redirect;
//! Vonage: a `transfer` to a `connect` NCCO). The stream to the server ends, and the number
//! transferred to plays its scenario as a third party — `5550102` (busy), `5550103` (no answer)
//! and `5550104` (failed) do not answer, which ends the call; any other number answers, talks for
//! 3 s and hangs up, and then the call is over. The third party's news goes to the transfer's own
//! callbacks.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{random_hex, Protocol, SimCall, SHORTEST_TALK};
use crate::sandbox::people::Scenario;
use crate::sandbox::Sandbox;

/// The shortest time the third party of a transfer rings, however sped up the sandbox is: the
/// server records the transfer's start once the carrier has accepted it, and hears of the third
/// party only after that (as with a real carrier, where ringing takes seconds).
const SHORTEST_RING: Duration = Duration::from_secs(1);

/// Where a call is transferred, and where its carrier reports the third party's leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The number dialled.
    pub to: String,
    /// Twilio: the `<Dial action>` (how the dial ended); Vonage: the `connect`'s event URL (all
    /// the leg's news).
    pub ended_url: Option<String>,
    /// Twilio: the `<Number statusCallback>` (the third party answered).
    pub answered_url: Option<String>,
}

impl Sandbox {
    /// Starts transferring an answered call, as its carrier accepted the request: the stream to
    /// the server ends and the third party is dialled. Refused unless the call is in progress and
    /// not being transferred already.
    pub(super) fn transfer(&self, call: &SimCall, transfer: Transfer) -> Result<(), String> {
        let status = call.status();
        if status != "in-progress" || call.hung_up.load(std::sync::atomic::Ordering::SeqCst) {
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
    pub(super) async fn put_through(&self, call: &SimCall, transfer: &Transfer) {
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
        self.third_party_answered(call, transfer, &leg).await;
        let answered = Instant::now();
        if self.wait_for(call, self.scaled(3.0).max(SHORTEST_TALK)).await {
            tracing::info!(call = %call.id, "sandbox: the call was ended while the third party talked");
            return;
        }
        let talked = (answered.elapsed().as_secs_f64() / self.time_scale).round() as i64;
        tracing::info!(call = %call.id, to = %transfer.to, talked, "sandbox: the third party hung up");
        self.leg_ended(call, transfer, &leg, "completed", talked).await;
    }

    /// The third party answered: Twilio calls the `<Number statusCallback>`, Vonage sends the leg's
    /// `answered`.
    async fn third_party_answered(&self, call: &SimCall, transfer: &Transfer, leg: &str) {
        match call.protocol {
            Protocol::Twilio => {
                let Some(url) = &transfer.answered_url else { return };
                let params = vec![
                    ("AccountSid".into(), call.account_sid.clone()),
                    ("ApiVersion".into(), "2010-04-01".into()),
                    ("CallSid".into(), leg.to_owned()),
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
            Protocol::Vonage => self.leg_event(call, transfer, leg, json!({"status": "answered"})).await,
        }
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
}
