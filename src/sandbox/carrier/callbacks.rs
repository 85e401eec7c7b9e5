//! The carrier's news of its calls, sent to this server as the carrier sends it: Twilio's status
//! and answering-machine callbacks (form POSTs with `X-Twilio-Signature`), Vonage's events (JSON
//! with a signed bearer token). It only ever calls this server itself.

use axum::http::header;
use serde_json::{json, Value};

use super::{Protocol, SimCall, VONAGE_API_KEY};
use crate::sandbox::Sandbox;
use crate::telephony::{twilio as twilio_api, vonage as vonage_api};

impl Sandbox {
    /// Where to deliver a URL this server gave out: its own listener. Anything else is refused.
    pub(super) fn local(&self, url: &str) -> Option<String> {
        let (public_base, local_base) = (&self.carrier.public_base, &self.carrier.local_base);
        let ws_public = public_base.replacen("http", "ws", 1);
        let ws_local = local_base.replacen("http", "ws", 1);
        if let Some(rest) = url.strip_prefix(public_base.as_str()) {
            Some(format!("{local_base}{rest}"))
        } else if let Some(rest) = url.strip_prefix(&ws_public) {
            Some(format!("{ws_local}{rest}"))
        } else if url.starts_with(local_base.as_str()) || url.starts_with(&ws_local) {
            Some(url.to_owned())
        } else {
            None
        }
    }

    /// The call moved on to `status` (in Twilio's words): the carrier says so, if asked to.
    pub(super) async fn progress(&self, call: &SimCall, status: &str) {
        call.set_status(status);
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

    /// The call ended as `status` (in Twilio's words): its stream ends, and the carrier says so
    /// (Vonage: with the recording first, when there is one).
    pub(super) async fn finish(&self, call: &SimCall, status: &str) {
        call.set_status(status);
        call.media_stop.notify_waiters();
        match call.protocol {
            Protocol::Twilio => self.twilio_callback(call, status).await,
            Protocol::Vonage => {
                let duration = call.duration().unwrap_or(0);
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

    /// Answering-machine detection's verdict.
    pub(super) async fn detection(&self, call: &SimCall, human: bool) {
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

    /// The parameters every Twilio request about a call carries.
    pub(super) fn twilio_params(&self, call: &SimCall) -> Vec<(String, String)> {
        vec![
            ("AccountSid".into(), call.account_sid.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("CallSid".into(), call.id.clone()),
            ("CallStatus".into(), call.status()),
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
        params.push((
            "SequenceNumber".into(),
            call.sequence.fetch_add(1, std::sync::atomic::Ordering::SeqCst).to_string(),
        ));
        params.push(("Timestamp".into(), chrono::Utc::now().to_rfc2822()));
        if status == "completed" {
            let duration = call.duration().unwrap_or(0);
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

    /// A form POST signed as Twilio signs it; the server's answer (TwiML), if it took it.
    pub(super) async fn post_signed(&self, call: &SimCall, url: &str, params: Vec<(String, String)>) -> Option<String> {
        let target = self.local(url)?;
        let signature = twilio_api::signature(&call.auth_token, url, &params);
        let sent = self.carrier.http.post(target).header("x-twilio-signature", signature).form(&params).send().await;
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
    pub(super) async fn vonage_post(&self, call: &SimCall, url: &str, mut fields: Value, mut common: Value) {
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
        let token = vonage_api::sign_callback(self.carrier.vonage_signature_secret(), &body, VONAGE_API_KEY);
        let sent = self
            .carrier
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
}
