//! Twilio: the REST API (Basic auth, form bodies, `.json` paths under `/2010-04-01`), request
//! signatures (`X-Twilio-Signature`), the call statuses it reports, and the TwiML this server
//! answers with.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha1::Sha1;

use super::{CarrierError, Dial, Dialed};
use crate::crypto::constant_time_eq;
use crate::domain::call::{Event, HumanDetection};
use crate::domain::phone::PhoneNumber;

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// An account's credentials.
#[derive(Clone)]
pub struct Credentials {
    pub account_sid: String,
    pub auth_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ****)", self.account_sid)
    }
}

/// Where Twilio calls this server back about one outbound call.
pub struct CallUrls {
    pub twiml: String,
    pub status: String,
    pub amd: String,
}

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    slots: super::Slots,
    base: String,
}

/// What the REST API says of a call.
#[derive(Debug, Clone, Deserialize)]
pub struct CallResource {
    pub sid: String,
    pub status: String,
    #[serde(default)]
    pub duration: Option<String>,
}

/// What the REST API says of a conference participant it added.
#[derive(Debug, Clone, Deserialize)]
pub struct Participant {
    pub call_sid: String,
    #[serde(default)]
    pub conference_sid: Option<String>,
}

/// A path segment as sent: ids and names of this server's own making, escaped all the same.
fn path_segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

/// The form fields this server sets itself; a call's `telephony_params` cannot replace them.
const OWN_FIELDS: &[&str] = &[
    "To",
    "From",
    "Url",
    "Method",
    "Twiml",
    "StatusCallback",
    "StatusCallbackMethod",
    "StatusCallbackEvent",
    "AsyncAmd",
    "AsyncAmdStatusCallback",
    "AsyncAmdStatusCallbackMethod",
];

impl TwilioClient {
    pub fn new(http: reqwest::Client, slots: super::Slots, base: &str) -> Self {
        TwilioClient { http, slots, base: base.trim_end_matches('/').to_owned() }
    }

    fn url(&self, creds: &Credentials, rest: &str) -> String {
        format!("{}/2010-04-01/Accounts/{}/{rest}", self.base, creds.account_sid)
    }

    async fn send(&self, creds: &Credentials, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CarrierError> {
        let _slot = super::take_slot(&self.slots).await?;
        let started = std::time::Instant::now();
        let result = self.send_inner(creds, req).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CarrierError::Rejected(_)) => "rejected",
            Err(CarrierError::Transient(_)) => "transient",
        };
        crate::metrics::carrier_request("twilio", outcome, started);
        result
    }

    async fn send_inner(
        &self,
        creds: &Credentials,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CarrierError> {
        let res = req
            .basic_auth(&creds.account_sid, Some(&creds.auth_token))
            .header("accept", "application/json")
            .send()
            .await
            .map_err(CarrierError::from_transport)?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let text = res.text().await.unwrap_or_default();
        let reason = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { code, message: Some(message) }) => match code {
                Some(code) => format!("Twilio error {code}: {message}"),
                None => format!("Twilio: {message}"),
            },
            _ => format!("Twilio answered {status}"),
        };
        Err(CarrierError::from_status(status, reason))
    }

    /// `POST /Calls.json`: places a call that fetches its TwiML from this server when answered.
    pub async fn create_call(&self, creds: &Credentials, dial: &Dial, urls: &CallUrls) -> Result<Dialed, CarrierError> {
        let mut form: Vec<(String, String)> = vec![
            ("To".into(), dial.to.e164()),
            ("From".into(), dial.from.e164()),
            ("Url".into(), urls.twiml.clone()),
            ("Method".into(), "POST".into()),
            ("StatusCallback".into(), urls.status.clone()),
            ("StatusCallbackMethod".into(), "POST".into()),
        ];
        for event in ["initiated", "ringing", "answered", "completed"] {
            form.push(("StatusCallbackEvent".into(), event.into()));
        }
        if dial.machine_detection {
            form.push(("MachineDetection".into(), "Enable".into()));
            form.push(("AsyncAmd".into(), "true".into()));
            form.push(("AsyncAmdStatusCallback".into(), urls.amd.clone()));
            form.push(("AsyncAmdStatusCallbackMethod".into(), "POST".into()));
        }
        if dial.record {
            form.push(("Record".into(), "true".into()));
        }
        for (key, value) in &dial.extra {
            if !OWN_FIELDS.contains(&key.as_str()) {
                form.retain(|(k, _)| k != key);
                form.push((key.clone(), value.clone()));
            }
        }
        let req = self.http.post(self.url(creds, "Calls.json")).form(&form);
        let call: CallResource = self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)?;
        Ok(Dialed { telephony_id: call.sid, carrier_status: call.status })
    }

    /// `POST /Calls/{sid}.json`: `Status=completed` ends a call in progress, `canceled` one that
    /// is queued or ringing.
    pub async fn hang_up(&self, creds: &Credentials, sid: &str, answered: bool) -> Result<CallResource, CarrierError> {
        let status = if answered { "completed" } else { "canceled" };
        let req = self.http.post(self.url(creds, &format!("Calls/{sid}.json"))).form(&[("Status", status)]);
        self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)
    }

    /// `POST /Calls/{sid}.json` with new TwiML: the call does what it says from now on.
    pub async fn redirect(&self, creds: &Credentials, sid: &str, twiml: &str) -> Result<CallResource, CarrierError> {
        let req = self.http.post(self.url(creds, &format!("Calls/{sid}.json"))).form(&[("Twiml", twiml)]);
        self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)
    }

    /// `POST /Conferences/{name}/Participants.json`: dials `to` from `from` into the conference
    /// (created by its first participant; Twilio takes its friendly name here), with `options`
    /// (`StartConferenceOnEnter`, `StatusCallback`, …).
    pub async fn add_participant(
        &self,
        creds: &Credentials,
        conference: &str,
        from: &PhoneNumber,
        to: &PhoneNumber,
        options: &[(&str, String)],
    ) -> Result<Participant, CarrierError> {
        let mut form: Vec<(&str, String)> = vec![("From", from.e164()), ("To", to.e164())];
        form.extend(options.iter().cloned());
        let path = format!("Conferences/{}/Participants.json", path_segment(conference));
        let req = self.http.post(self.url(creds, &path)).form(&form);
        self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)
    }

    /// `POST /Conferences/{sid}/Participants/{call}.json` with `Hold`: puts a participant on hold
    /// (Twilio's hold music) or takes them off it.
    pub async fn hold_participant(
        &self,
        creds: &Credentials,
        conference_sid: &str,
        call_sid: &str,
        hold: bool,
    ) -> Result<(), CarrierError> {
        let path = format!("Conferences/{}/Participants/{}.json", path_segment(conference_sid), path_segment(call_sid));
        let req = self.http.post(self.url(creds, &path)).form(&[("Hold", if hold { "true" } else { "false" })]);
        self.send(creds, req).await.map(|_| ())
    }

    /// The account's most recent calls from `from` to `to` (Twilio lists newest first): how a
    /// call that may have been placed before a crash or a timeout is found again.
    pub async fn find_calls(
        &self,
        creds: &Credentials,
        to: &PhoneNumber,
        from: &PhoneNumber,
    ) -> Result<Vec<super::PlacedCall>, CarrierError> {
        let req = self.http.get(self.url(creds, "Calls.json")).query(&[
            ("To", to.e164()),
            ("From", from.e164()),
            ("PageSize", "50".into()),
        ]);
        let page: Value = self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)?;
        Ok(page["calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| {
                        Some(super::PlacedCall {
                            id: c["sid"].as_str()?.to_owned(),
                            status: c["status"].as_str().unwrap_or_default().to_owned(),
                            created: c["date_created"]
                                .as_str()
                                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
                                .map(|d| d.with_timezone(&chrono::Utc)),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn fetch_call(&self, creds: &Credentials, sid: &str) -> Result<CallResource, CarrierError> {
        let req = self.http.get(self.url(creds, &format!("Calls/{sid}.json")));
        self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)
    }

    /// Searches local numbers in an area code and buys the first, pointing its voice webhook here.
    pub async fn buy_number(
        &self,
        creds: &Credentials,
        area_code: Option<&str>,
        voice_url: Option<&str>,
        status_callback: &str,
    ) -> Result<(PhoneNumber, String), CarrierError> {
        let mut search = self.http.get(self.url(creds, "AvailablePhoneNumbers/US/Local.json"));
        if let Some(area) = area_code {
            search = search.query(&[("AreaCode", area)]);
        }
        let found: Value = self.send(creds, search).await?.json().await.map_err(CarrierError::bad_answer)?;
        let Some(candidate) = found["available_phone_numbers"][0]["phone_number"].as_str() else {
            return Err(CarrierError::Rejected(match area_code {
                Some(area) => format!("Twilio has no numbers available in area code {area}"),
                None => "Twilio has no numbers available".into(),
            }));
        };
        let mut form = vec![("PhoneNumber", candidate.to_owned()), ("StatusCallback", status_callback.to_owned())];
        if let Some(url) = voice_url {
            form.push(("VoiceUrl", url.to_owned()));
            form.push(("VoiceMethod", "POST".into()));
        }
        let req = self.http.post(self.url(creds, "IncomingPhoneNumbers.json")).form(&form);
        let bought: Value = self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)?;
        let number = PhoneNumber::parse(bought["phone_number"].as_str().unwrap_or(candidate))
            .map_err(|e| CarrierError::Rejected(format!("Twilio sold an unusable number: {e}")))?;
        let sid = bought["sid"].as_str().unwrap_or_default().to_owned();
        Ok((number, sid))
    }

    /// The account's id (`PN…`) of one of its numbers.
    pub async fn find_number(&self, creds: &Credentials, number: &PhoneNumber) -> Result<Option<String>, CarrierError> {
        let req = self.http.get(self.url(creds, "IncomingPhoneNumbers.json")).query(&[("PhoneNumber", number.e164())]);
        let found: Value = self.send(creds, req).await?.json().await.map_err(CarrierError::bad_answer)?;
        Ok(found["incoming_phone_numbers"][0]["sid"].as_str().map(str::to_owned))
    }

    /// Points a number's voice webhook (and status callback) at this server, or (`None`) clears it.
    pub async fn configure_number(
        &self,
        creds: &Credentials,
        sid: &str,
        voice_url: Option<&str>,
        status_callback: &str,
    ) -> Result<(), CarrierError> {
        let form = vec![
            ("VoiceUrl", voice_url.unwrap_or_default().to_owned()),
            ("VoiceMethod", "POST".to_owned()),
            ("StatusCallback", status_callback.to_owned()),
        ];
        let req = self.http.post(self.url(creds, &format!("IncomingPhoneNumbers/{sid}.json"))).form(&form);
        self.send(creds, req).await.map(|_| ())
    }

    pub async fn release_number(&self, creds: &Credentials, sid: &str) -> Result<(), CarrierError> {
        let req = self.http.delete(self.url(creds, &format!("IncomingPhoneNumbers/{sid}.json")));
        self.send(creds, req).await.map(|_| ())
    }

    /// A recording, as MP3, streamed from where Twilio keeps it.
    pub async fn fetch_recording(
        &self,
        creds: &Credentials,
        recording_url: &str,
    ) -> Result<reqwest::Response, CarrierError> {
        let url = if recording_url.ends_with(".mp3") || recording_url.ends_with(".wav") {
            recording_url.to_owned()
        } else {
            format!("{recording_url}.mp3")
        };
        self.send(creds, self.http.get(url)).await
    }
}

/// What a call status callback (or the REST API) says happened.
pub fn status_event(call_status: &str, duration: Option<i64>) -> Option<Event> {
    Some(match call_status {
        "queued" | "initiated" | "ringing" => Event::Ringing,
        "in-progress" | "answered" => Event::Answered,
        "completed" => Event::Completed { duration_seconds: duration },
        "busy" | "no-answer" | "canceled" => Event::NotAnswered,
        "failed" => Event::Failed,
        _ => return None,
    })
}

/// What answering-machine detection says.
pub fn answered_by(value: &str) -> Option<HumanDetection> {
    match value {
        "human" => Some(HumanDetection::Human),
        "machine_start" | "machine_end_beep" | "machine_end_silence" | "machine_end_other" | "fax" => {
            Some(HumanDetection::NoHuman)
        }
        _ => None,
    }
}

/// `X-Twilio-Signature`: base64 HMAC-SHA1, keyed by the auth token, of the full URL followed by
/// every POST parameter's name and value, sorted by name.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a signature the way Twilio's SDKs do: with the URL as given, and with its default port
/// added or removed (Twilio signs some callbacks with the port and some without).
pub fn verify_signature(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    url_variants(url).iter().any(|u| constant_time_eq(signature(auth_token, u, params).as_bytes(), header.as_bytes()))
}

fn url_variants(url: &str) -> Vec<String> {
    let Some(scheme_end) = url.find("://") else {
        return vec![url.to_owned()];
    };
    let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(default) = default_port(scheme) else {
        return vec![url.to_owned()];
    };
    match authority.rsplit_once(':') {
        Some((host, port)) if port == default.to_string() => {
            vec![url.to_owned(), format!("{scheme}://{host}{path}")]
        }
        Some(_) => vec![url.to_owned()],
        None => vec![url.to_owned(), format!("{scheme}://{authority}:{default}{path}")],
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    }
}

/// TwiML documents, built in one place.
const TWIML_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

/// The TwiML that connects an answered call's audio to this server's media-stream websocket.
///
/// Twilio runs the verb after `<Connect>` when the stream ends without the call ending (the
/// server that held the stream died, or moved the call): `<Redirect>` to `resume_url`, where any
/// replica answers with a new stream.
pub fn connect_stream_twiml(stream_url: &str, call_id: &str, token: &str, resume_url: &str) -> String {
    format!(
        "{TWIML_HEAD}<Response><Connect><Stream url=\"{}\">\
         <Parameter name=\"call_id\" value=\"{}\"/><Parameter name=\"token\" value=\"{}\"/>\
         </Stream></Connect><Redirect method=\"POST\">{}</Redirect></Response>",
        xml_escape(stream_url),
        xml_escape(call_id),
        xml_escape(token),
        xml_escape(resume_url)
    )
}

/// The TwiML that transfers a call to `to` (E.164): `<Dial>` it, tell `answered_url` when the
/// third party picks up, and `action_url` how the dial ended (Twilio then runs what that answers).
pub fn transfer_twiml(to: &str, action_url: &str, answered_url: &str) -> String {
    format!(
        "{TWIML_HEAD}<Response><Dial action=\"{}\" method=\"POST\" answerOnBridge=\"true\" timeout=\"30\">\
         <Number statusCallbackEvent=\"answered\" statusCallback=\"{}\" statusCallbackMethod=\"POST\">{}</Number>\
         </Dial></Response>",
        xml_escape(action_url),
        xml_escape(answered_url),
        xml_escape(to)
    )
}

/// The TwiML that moves a call into the conference `name` (ending its media stream): the
/// conference starts when it enters and ends when it leaves, with no beep and no waiting music,
/// and `events_url` hears when it joins.
pub fn conference_twiml(name: &str, events_url: &str) -> String {
    format!(
        "{TWIML_HEAD}<Response><Dial><Conference startConferenceOnEnter=\"true\" endConferenceOnExit=\"true\" \
         beep=\"false\" waitUrl=\"\" statusCallback=\"{}\" statusCallbackMethod=\"POST\" \
         statusCallbackEvent=\"join leave\">{}</Conference></Dial></Response>",
        xml_escape(events_url),
        xml_escape(name)
    )
}

/// The TwiML that turns an inbound call away.
pub fn reject_twiml() -> String {
    format!("{TWIML_HEAD}<Response><Reject reason=\"rejected\"/></Response>")
}

/// The TwiML that ends a call that is already over for this server.
pub fn hangup_twiml() -> String {
    format!("{TWIML_HEAD}<Response><Hangup/></Response>")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The test vectors of Twilio's SDKs (telephony-protocols.md, T4).
    #[test]
    fn signatures_match_twilios_test_vectors() {
        assert_eq!(
            signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            signature("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &params()),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        let json_url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(signature("12345", json_url, &[]), "a9nBmqA0ju/hNViExpshrM61xv4=");
    }

    #[test]
    fn verification_accepts_either_port_form_and_nothing_else() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(verify_signature("12345", url, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(verify_signature("12345", url, &params(), "kvajT1Ptam85bY51eRf/AJRuM3w="));
        assert!(verify_signature(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_signature("54321", url, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        let mut tampered = params();
        tampered[2].1 = "9999".into();
        assert!(!verify_signature("12345", url, &tampered, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!verify_signature("12345", url, &params(), ""));
    }

    #[test]
    fn statuses_map_to_news() {
        assert_eq!(status_event("ringing", None), Some(Event::Ringing));
        assert_eq!(status_event("in-progress", None), Some(Event::Answered));
        assert_eq!(status_event("completed", Some(7)), Some(Event::Completed { duration_seconds: Some(7) }));
        for s in ["busy", "no-answer", "canceled"] {
            assert_eq!(status_event(s, None), Some(Event::NotAnswered));
        }
        assert_eq!(status_event("failed", None), Some(Event::Failed));
        assert_eq!(status_event("exploded", None), None);
        assert_eq!(answered_by("machine_start"), Some(HumanDetection::NoHuman));
        assert_eq!(answered_by("unknown"), None);
    }

    #[test]
    fn twiml_escapes_what_it_embeds() {
        let twiml = connect_stream_twiml("wss://h/telephony/twilio/stream/1?a=1&b=2", "1", "t\"k", "https://h/r?x&y");
        assert!(twiml.contains("a=1&amp;b=2"));
        assert!(twiml.contains("</Connect><Redirect method=\"POST\">https://h/r?x&amp;y</Redirect></Response>"));
        assert!(twiml.contains("t&quot;k"));
        assert!(twiml.starts_with("<?xml"));
    }
}
