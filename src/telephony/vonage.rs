//! Vonage: the Voice API (JSON with an application JWT), the numbers API (the account's key and
//! secret), signed callbacks (an HS256 JWT whose `payload_hash` covers the body), and the NCCO
//! that connects a call's audio to this server.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{CarrierError, Dial, Dialed};
use crate::domain::call::{Event, HumanDetection};
use crate::domain::phone::PhoneNumber;

pub const DEFAULT_API_BASE_URL: &str = "https://api.nexmo.com";
pub const DEFAULT_NUMBERS_BASE_URL: &str = "https://rest.nexmo.com";

/// How this server signs its requests to the Voice API.
#[derive(Clone)]
pub enum Signer {
    /// A real application: RS256 with its private key.
    Application { application_id: String, key: EncodingKey },
    /// The built-in sandbox: HS256 with a secret it shares with the sandbox.
    Sandbox { application_id: String, secret: Vec<u8> },
}

#[derive(Clone)]
pub struct VonageClient {
    http: reqwest::Client,
    slots: super::Slots,
    api_base: String,
    numbers_base: String,
    signer: Option<Signer>,
    api_key: Option<String>,
    api_secret: Option<String>,
}

/// Where Vonage calls this server back about one outbound call.
pub struct CallUrls {
    pub event: String,
    pub stream: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApiClaims {
    pub application_id: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

#[derive(Debug, Deserialize)]
struct CallResource {
    uuid: Option<String>,
    status: Option<String>,
    duration: Option<Value>,
}

/// What the Voice API says of a call.
#[derive(Debug, Clone)]
pub struct CallState {
    pub status: String,
    pub duration: Option<i64>,
}

/// Fields this server sets in a create-call request; `telephony_params` cannot replace them.
const OWN_FIELDS: &[&str] =
    &["to", "from", "ncco", "answer_url", "answer_method", "event_url", "event_method", "random_from_number"];

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl VonageClient {
    pub fn new(
        http: reqwest::Client,
        slots: super::Slots,
        api_base: &str,
        numbers_base: &str,
        signer: Option<Signer>,
        api_key: Option<String>,
        api_secret: Option<String>,
    ) -> Self {
        VonageClient {
            http,
            slots,
            api_base: api_base.trim_end_matches('/').to_owned(),
            numbers_base: numbers_base.trim_end_matches('/').to_owned(),
            signer,
            api_key,
            api_secret,
        }
    }

    pub fn application_id(&self) -> Option<&str> {
        match &self.signer {
            Some(Signer::Application { application_id, .. } | Signer::Sandbox { application_id, .. }) => {
                Some(application_id)
            }
            None => None,
        }
    }

    /// A fresh application JWT for one request.
    fn jwt(&self) -> Result<String, CarrierError> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            CarrierError::Rejected(
                "Vonage is not configured: set VONAGE_APPLICATION_ID and VONAGE_PRIVATE_KEY_PATH".into(),
            )
        })?;
        let iat = unix_now();
        let (header, key, application_id) = match signer {
            Signer::Application { application_id, key } => (Header::new(Algorithm::RS256), key.clone(), application_id),
            Signer::Sandbox { application_id, secret } => {
                (Header::new(Algorithm::HS256), EncodingKey::from_secret(secret), application_id)
            }
        };
        let claims = ApiClaims {
            application_id: application_id.clone(),
            iat,
            exp: iat + 900,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| CarrierError::Rejected(format!("cannot sign a Vonage token: {e}")))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CarrierError> {
        let _slot = super::take_slot(&self.slots).await?;
        let started = std::time::Instant::now();
        let result = Self::send_inner(req).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CarrierError::Rejected(_)) => "rejected",
            Err(CarrierError::Transient(_)) => "transient",
        };
        crate::metrics::carrier_request("vonage", outcome, started);
        result
    }

    async fn send_inner(req: reqwest::RequestBuilder) -> Result<reqwest::Response, CarrierError> {
        let res = req.send().await.map_err(CarrierError::from_transport)?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let reason = match (body["title"].as_str(), body["detail"].as_str(), body["error-code-label"].as_str()) {
            (Some(title), Some(detail), _) => format!("Vonage: {title}: {detail}"),
            (Some(title), None, _) => format!("Vonage: {title}"),
            (_, _, Some(label)) => format!("Vonage: {label}"),
            _ => format!("Vonage answered {status}"),
        };
        Err(CarrierError::from_status(status, reason))
    }

    /// `POST /v1/calls` with an NCCO that connects the call's audio to this server.
    pub async fn create_call(
        &self,
        dial: &Dial,
        urls: &CallUrls,
        stream_headers: Value,
    ) -> Result<Dialed, CarrierError> {
        let mut body = Map::new();
        body.insert("to".into(), json!([{"type": "phone", "number": dial.to.digits()}]));
        body.insert("from".into(), json!({"type": "phone", "number": dial.from.digits()}));
        body.insert("ncco".into(), ncco(&urls.stream, &urls.event, stream_headers, dial.record));
        body.insert("event_url".into(), json!([urls.event]));
        body.insert("event_method".into(), json!("POST"));
        if dial.machine_detection {
            body.insert("machine_detection".into(), json!("continue"));
        }
        for (key, value) in &dial.extra {
            if !OWN_FIELDS.contains(&key.as_str()) {
                // Telephony params are strings; numbers and booleans go as what they spell.
                let parsed = serde_json::from_str::<Value>(value)
                    .ok()
                    .filter(|v| v.is_number() || v.is_boolean())
                    .unwrap_or_else(|| Value::String(value.clone()));
                body.insert(key.clone(), parsed);
            }
        }
        let req = self.http.post(format!("{}/v1/calls", self.api_base)).bearer_auth(self.jwt()?).json(&body);
        let call: CallResource = self.send(req).await?.json().await.map_err(CarrierError::bad_answer)?;
        match (call.uuid, call.status.as_deref()) {
            (Some(uuid), Some("started") | None) => Ok(Dialed { telephony_id: uuid, carrier_status: "started".into() }),
            (_, status) => Err(CarrierError::Rejected(format!(
                "Vonage did not start the call (status {})",
                status.unwrap_or("missing")
            ))),
        }
    }

    pub async fn hang_up(&self, uuid: &str) -> Result<(), CarrierError> {
        let req = self
            .http
            .put(format!("{}/v1/calls/{uuid}", self.api_base))
            .bearer_auth(self.jwt()?)
            .json(&json!({"action": "hangup"}));
        self.send(req).await.map(|_| ())
    }

    /// `PUT /v1/calls/{uuid}/dtmf`: plays the keys into the call.
    pub async fn send_dtmf(&self, uuid: &str, digits: &str) -> Result<(), CarrierError> {
        let req = self
            .http
            .put(format!("{}/v1/calls/{uuid}/dtmf", self.api_base))
            .bearer_auth(self.jwt()?)
            .json(&json!({"digits": digits}));
        self.send(req).await.map(|_| ())
    }

    /// Transfers a call in progress to an NCCO: what the call does from now on.
    pub async fn transfer(&self, uuid: &str, ncco: Value) -> Result<(), CarrierError> {
        let body = json!({"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}});
        let req = self.http.put(format!("{}/v1/calls/{uuid}", self.api_base)).bearer_auth(self.jwt()?).json(&body);
        self.send(req).await.map(|_| ())
    }

    /// The application's calls from `from` to `to` since `since` (newest first): how a call that
    /// may have been placed before a crash or a timeout is found again.
    pub async fn find_calls(
        &self,
        to: &PhoneNumber,
        from: &PhoneNumber,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<super::PlacedCall>, CarrierError> {
        let req = self
            .http
            .get(format!("{}/v1/calls", self.api_base))
            .query(&[
                ("date_start", since.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                ("page_size", "100".into()),
                ("order", "desc".into()),
            ])
            .bearer_auth(self.jwt()?);
        let page: Value = self.send(req).await?.json().await.map_err(CarrierError::bad_answer)?;
        let number = |v: &Value| v["number"].as_str().map(|n| n.trim_start_matches('+').to_owned());
        Ok(page["_embedded"]["calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .filter(|c| {
                        number(&c["to"]).as_deref() == Some(to.digits())
                            && number(&c["from"]).as_deref() == Some(from.digits())
                    })
                    .filter_map(|c| {
                        Some(super::PlacedCall {
                            id: c["uuid"].as_str()?.to_owned(),
                            status: c["status"].as_str().unwrap_or_default().to_owned(),
                            created: c["start_time"]
                                .as_str()
                                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                                .map(|d| d.with_timezone(&chrono::Utc)),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn fetch_call(&self, uuid: &str) -> Result<CallState, CarrierError> {
        let req = self.http.get(format!("{}/v1/calls/{uuid}", self.api_base)).bearer_auth(self.jwt()?);
        let call: CallResource = self.send(req).await?.json().await.map_err(CarrierError::bad_answer)?;
        Ok(CallState {
            status: call.status.unwrap_or_default(),
            duration: call.duration.and_then(|d| d.as_i64().or_else(|| d.as_str().and_then(|s| s.parse().ok()))),
        })
    }

    fn numbers_auth(&self, req: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, CarrierError> {
        match (&self.api_key, &self.api_secret) {
            (Some(key), Some(secret)) => Ok(req.basic_auth(key, Some(secret))),
            _ => Err(CarrierError::Rejected("Vonage numbers need VONAGE_API_KEY and VONAGE_API_SECRET".into())),
        }
    }

    /// Searches the area code, buys the first number and attaches it to the application.
    pub async fn buy_number(&self, area_code: Option<&str>) -> Result<PhoneNumber, CarrierError> {
        let mut query = vec![("country", "US".to_owned()), ("features", "VOICE".to_owned())];
        if let Some(area) = area_code {
            query.push(("pattern", format!("1{area}")));
            query.push(("search_pattern", "0".to_owned()));
        }
        let search = self.numbers_auth(self.http.get(format!("{}/number/search", self.numbers_base)).query(&query))?;
        let found: Value = self.send(search).await?.json().await.map_err(CarrierError::bad_answer)?;
        let Some(msisdn) = found["numbers"][0]["msisdn"].as_str().map(str::to_owned) else {
            return Err(CarrierError::Rejected(match area_code {
                Some(area) => format!("Vonage has no numbers available in area code {area}"),
                None => "Vonage has no numbers available".into(),
            }));
        };
        let buy = self.numbers_auth(
            self.http.post(format!("{}/number/buy", self.numbers_base)).form(&[("country", "US"), ("msisdn", &msisdn)]),
        )?;
        self.send(buy).await?;
        if let Some(app) = self.application_id() {
            let update = self.numbers_auth(self.http.post(format!("{}/number/update", self.numbers_base)).form(&[
                ("country", "US"),
                ("msisdn", msisdn.as_str()),
                ("app_id", app),
            ]))?;
            self.send(update).await?;
        }
        PhoneNumber::parse(&msisdn).map_err(|e| CarrierError::Rejected(format!("Vonage sold an unusable number: {e}")))
    }

    pub async fn cancel_number(&self, number: &PhoneNumber, country: &str) -> Result<(), CarrierError> {
        let cancel = self.numbers_auth(
            self.http
                .post(format!("{}/number/cancel", self.numbers_base))
                .form(&[("country", country), ("msisdn", number.digits())]),
        )?;
        self.send(cancel).await.map(|_| ())
    }

    pub async fn fetch_recording(&self, url: &str) -> Result<reqwest::Response, CarrierError> {
        self.send(self.http.get(url).bearer_auth(self.jwt()?)).await
    }
}

/// The NCCO that (optionally records and) connects a call's audio to this server's websocket.
pub fn ncco(stream_url: &str, event_url: &str, headers: Value, record: bool) -> Value {
    let mut actions = Vec::new();
    if record {
        actions.push(json!({"action": "record", "eventUrl": [event_url], "eventMethod": "POST", "format": "mp3"}));
    }
    actions.push(json!({
        "action": "connect",
        "eventUrl": [event_url],
        "endpoint": [{"type": "websocket", "uri": stream_url, "content-type": "audio/l16;rate=16000", "headers": headers}],
    }));
    Value::Array(actions)
}

/// The NCCO that transfers a call to `to` (digits), calling from `from`: the third party's leg
/// reports to `event_url`.
pub fn transfer_ncco(to: &str, from: &str, event_url: &str) -> Value {
    json!([{"action": "connect", "from": from, "timeout": 30, "eventType": "synchronous", "eventUrl": [event_url],
            "endpoint": [{"type": "phone", "number": to}]}])
}

/// The NCCO that turns an inbound call away politely.
pub fn reject_ncco() -> Value {
    json!([{"action": "talk", "text": "Sorry, this number does not take calls."}])
}

/// What an event webhook's `status` says happened.
pub fn status_event(status: &str, duration: Option<i64>) -> Option<Event> {
    Some(match status {
        "started" | "ringing" => Event::Ringing,
        "answered" => Event::Answered,
        "human" => Event::MachineDetection(HumanDetection::Human),
        "machine" => Event::MachineDetection(HumanDetection::NoHuman),
        "completed" => Event::Completed { duration_seconds: duration },
        "busy" | "cancelled" | "timeout" | "unanswered" => Event::NotAnswered,
        "rejected" | "failed" => Event::Failed,
        _ => return None,
    })
}

/// Statuses that are news about something else (the websocket closing, a transfer…): accepted,
/// changing nothing.
pub fn is_informational(status: &str) -> bool {
    matches!(status, "disconnected" | "transfer" | "input" | "record")
}

#[derive(Debug, Deserialize)]
struct CallbackClaims {
    payload_hash: Option<String>,
    iss: Option<String>,
}

/// Checks a signed callback: `Authorization: Bearer <HS256 JWT>` under the signature secret,
/// whose `payload_hash` is the SHA-256 of the body.
pub fn verify_callback(secret: &str, authorization: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
        .ok_or("the callback is not signed")?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    let data =
        jsonwebtoken::decode::<CallbackClaims>(token.trim(), &DecodingKey::from_secret(secret.as_bytes()), &validation)
            .map_err(|_| "the callback's signature is invalid")?;
    if data.claims.iss.as_deref().is_some_and(|iss| iss != "Vonage") {
        return Err("the callback was not issued by Vonage");
    }
    let expected = hex::encode(Sha256::digest(body));
    match data.claims.payload_hash {
        Some(hash) if crate::crypto::constant_time_eq(hash.to_ascii_lowercase().as_bytes(), expected.as_bytes()) => {
            Ok(())
        }
        Some(_) => Err("the callback's body does not match its signature"),
        None => Err("the callback's signature does not cover its body"),
    }
}

/// Signs a callback the way Vonage does (the sandbox carrier uses this).
pub fn sign_callback(secret: &str, body: &[u8], api_key: &str) -> String {
    let claims = json!({
        "iat": unix_now(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "iss": "Vonage",
        "payload_hash": hex::encode(Sha256::digest(body)),
        "api_key": api_key,
    });
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_callbacks_verify_and_forgeries_do_not() {
        let body = br#"{"status":"answered","uuid":"u1"}"#;
        let token = sign_callback("sig-secret", body, "key");
        assert_eq!(verify_callback("sig-secret", Some(&format!("Bearer {token}")), body), Ok(()));
        assert!(verify_callback("other-secret", Some(&format!("Bearer {token}")), body).is_err());
        assert_eq!(
            verify_callback("sig-secret", Some(&format!("Bearer {token}")), br#"{"status":"completed"}"#),
            Err("the callback's body does not match its signature")
        );
        assert!(verify_callback("sig-secret", None, body).is_err());
    }

    #[test]
    fn statuses_map_to_news() {
        assert_eq!(status_event("answered", None), Some(Event::Answered));
        assert_eq!(status_event("machine", None), Some(Event::MachineDetection(HumanDetection::NoHuman)));
        assert_eq!(status_event("timeout", None), Some(Event::NotAnswered));
        assert_eq!(status_event("rejected", None), Some(Event::Failed));
        assert_eq!(status_event("completed", Some(3)), Some(Event::Completed { duration_seconds: Some(3) }));
        assert_eq!(status_event("garbage", None), None);
        assert!(is_informational("disconnected"));
    }

    #[test]
    fn the_ncco_records_then_connects() {
        let n = ncco("wss://h/s", "https://h/e", json!({"call_id": "1"}), true);
        assert_eq!(n[0]["action"], "record");
        assert_eq!(n[1]["endpoint"][0]["type"], "websocket");
        assert_eq!(n[1]["endpoint"][0]["content-type"], "audio/l16;rate=16000");
        assert_eq!(ncco("wss://h/s", "https://h/e", json!({}), false).as_array().unwrap().len(), 1);
    }
}
