//! `action_external`: the model's arguments POSTed to the user's API, signed, as
//! `external-actions.mdx` describes — `{"call_id", "payload"}`, `x-vocode-signature` =
//! base64(HMAC-SHA256(base64-decoded `signature_secret`, body)), a 10-second limit — and the
//! answer (`{"result", "agent_message"}`) read back.
//!
//! The body is written exactly as Python's `json.dumps` writes the same object (`", "` and
//! `": "` between items, non-ASCII as `\uXXXX`, Python's float notation), so the guide's own
//! verification snippet, which signs `json.dumps(payload)` of the body it parsed, accepts it.
//! The agent is muted while the request is under way; its answer's `agent_message` is said as it
//! is, else the model answers with the result in hand ([`Follow::Answer`]).
//!
//! The URL is the user's: it goes through [`crate::egress`], as webhooks do (no private, loopback or
//! link-local target unless `ALLOW_PRIVATE_TARGETS`), and the answer is read to at most 64 KiB.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::{ActionKind, ActionRequest, Follow, Line, Offer, Outcome, Plan, Respond};

pub const EXTERNAL: &str = "action_external";

/// An external action's configuration (`ExternalActionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct External {
    pub name: String,
    pub description: String,
    pub url: String,
    pub input_schema: Value,
    pub speak_on_send: bool,
    pub speak_on_receive: bool,
    /// Base64 of the HMAC key the request is signed with.
    pub signature_secret: String,
}

/// An external action without its `name` or `url` is left out.
pub(super) fn parse(config: &Value) -> Option<Arc<dyn ActionKind>> {
    Some(Arc::new(External {
        name: config["name"].as_str()?.to_owned(),
        description: config["description"].as_str().unwrap_or_default().to_owned(),
        url: config["url"].as_str()?.to_owned(),
        input_schema: config["input_schema"].clone(),
        speak_on_send: config["speak_on_send"].as_bool().unwrap_or(false),
        speak_on_receive: config["speak_on_receive"].as_bool().unwrap_or(false),
        signature_secret: config["signature_secret"].as_str().unwrap_or_default().to_owned(),
    }))
}

impl ActionKind for External {
    fn action_type(&self) -> &str {
        EXTERNAL
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn offer(&self) -> Option<Offer> {
        let respond = if self.speak_on_send { Respond::Always } else { Respond::Never };
        Some(Offer { description: self.description.clone(), parameters: without_titles(&self.input_schema), respond })
    }

    fn plan(&self, params: &Value, _line: &Line) -> Plan {
        Plan::Outside(ActionRequest::External { action: self.clone(), payload: params.clone() })
    }

    fn follow(&self, _outcome: &Outcome, _by_model: bool) -> Follow {
        Follow::Answer { speak_on_receive: self.speak_on_receive }
    }
}

/// A JSON schema without its `title`s (as vocode sends them), keeping `properties` named `title`.
fn without_titles(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                if key == "title" && !value.is_object() {
                    continue;
                }
                out.insert(key.clone(), without_titles(value));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(without_titles).collect()),
        other => other.clone(),
    }
}

/// How long the user's API has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;

// vocode-core's guidance to the model when the request fails (`external_actions_requester.py`).
const CLIENT_ERROR: &str =
    "There was an error with the information provided. Please ask for clarification and try again.";
const AUTH_ERROR: &str =
    "There was an error with the authentication for the service. Please politely tell the user to try again later.";
const INPUT_ERROR: &str = "There was an error with the information received from the service. Please politely tell the user to try again later.";

/// The request's body, as Python's `json.dumps` writes it.
pub fn body(call_id: &str, payload: &Value) -> String {
    python_json(&json!({"call_id": call_id, "payload": payload}))
}

/// `x-vocode-signature` of `body`; `None` when the secret is not base64.
pub fn signature(signature_secret: &str, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(signature_secret.trim()).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(body);
    Some(STANDARD.encode(mac.finalize().into_bytes()))
}

/// Sends the request and reads the answer; every failure is an [`Outcome`] the model can use.
/// `client` is built by [`crate::egress::client`] with the operator's `allow_private`.
pub async fn request(
    client: &reqwest::Client,
    allow_private: bool,
    action: &External,
    call_id: &str,
    payload: &Value,
) -> Outcome {
    let url = match url::Url::parse(&action.url) {
        Ok(url) => url,
        Err(e) => return Outcome::failed(format!("the action's URL is not a URL: {e}")),
    };
    if let Err(refused) = crate::egress::check_url(&url, allow_private) {
        return Outcome::failed(refused.to_string());
    }
    let body = body(call_id, payload);
    let Some(signature) = signature(&action.signature_secret, body.as_bytes()) else {
        return Outcome::failed("the action's signature_secret is not base64");
    };
    let sent = client
        .post(url)
        .timeout(TIMEOUT)
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("x-vocode-signature", signature)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Outcome::failed(format!("{} did not answer within 10 s", action.name)),
        Err(e) => return Outcome::failed(format!("{} could not be reached: {}", action.name, without_url(&e))),
    };
    let status = response.status();
    let mut answer = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) if answer.len() + bytes.len() <= MAX_ANSWER => answer.extend_from_slice(&bytes),
            Ok(_) => return guidance(INPUT_ERROR, &format!("the answer is larger than {MAX_ANSWER} bytes")),
            Err(e) => return Outcome::failed(format!("the answer was cut off: {}", without_url(&e))),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    match status.as_u16() {
        200..=299 => {}
        401 | 403 => return guidance(AUTH_ERROR, ""),
        400..=499 => return guidance(CLIENT_ERROR, ""),
        code => {
            let info = format!(
                "There was a server error with status {code}: {}. Please politely tell the user to try again later.",
                text.chars().take(500).collect::<String>()
            );
            return guidance(&info, "");
        }
    }
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&answer) else {
        return guidance(INPUT_ERROR, "the answer is not a JSON object");
    };
    let Some(Value::Object(result)) = answer.remove("result") else {
        return guidance(INPUT_ERROR, "the answer has no `result` object");
    };
    let agent_message = answer.remove("agent_message").and_then(|m| m.as_str().map(str::to_owned));
    Outcome { success: true, response: json!({"result": result, "success": true}), agent_message }
}

/// A failure whose explanation for the model is vocode's guidance text.
fn guidance(info: &str, error: &str) -> Outcome {
    let info = if error.is_empty() { info.to_owned() } else { format!("{info}\nThe error was {error}") };
    Outcome { success: false, response: json!({"result": {"info": info}, "success": false}), agent_message: None }
}

/// A transport error's message without its URL (which may carry the user's query parameters).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the action's URL");
    }
    text
}

/// `value` as Python's `json.dumps(value)` writes it (default arguments).
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_python(value, &mut out);
    out
}

fn write_python(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_python_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_string(key, out);
                out.push_str(": ");
                write_python(item, out);
            }
            out.push('}');
        }
    }
}

fn write_python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr` of a float: the shortest digits that read back, in fixed notation from 1e-4
/// up to 1e16 (with `.0` on whole numbers), else `d.ddde±XX`.
fn python_float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    if (-4..16).contains(&exponent) {
        let fixed = f.to_string();
        if fixed.contains('.') {
            fixed
        } else {
            format!("{fixed}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_written_as_python_writes_them() {
        let payload = json!({"length": "30m", "time": "10:30am", "n": 3, "x": 0.5, "big": 1e16, "tiny": 0.00001,
                             "name": "Zoë \"Z\" 😀", "list": [1, true, null], "empty": {}});
        assert_eq!(
            body("c-1", &payload),
            r#"{"call_id": "c-1", "payload": {"length": "30m", "time": "10:30am", "n": 3, "x": 0.5, "big": 1e+16, "tiny": 1e-05, "name": "Zo\u00eb \"Z\" \ud83d\ude00", "list": [1, true, null], "empty": {}}}"#
        );
        assert_eq!(python_float(3.0), "3.0");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(123456789012345.6), "123456789012345.6");
        assert_eq!(python_float(-2.5e-7), "-2.5e-07");
        assert_eq!(python_float(1.5e300), "1.5e+300");
    }

    #[tokio::test]
    async fn a_private_target_is_refused_unless_the_operator_allows_it() {
        let action = External {
            name: "Book".into(),
            description: String::new(),
            url: "http://127.0.0.1:9/book".into(),
            input_schema: json!({"type": "object"}),
            speak_on_send: false,
            speak_on_receive: true,
            signature_secret: STANDARD.encode(b"key"),
        };
        let guarded = crate::egress::client(false, TIMEOUT);
        let refused = request(&guarded, false, &action, "c-1", &json!({})).await;
        assert!(!refused.success);
        assert!(refused.response["error"].as_str().unwrap().contains("not a public address"), "{refused:?}");
        // Allowed, it is sent (and finds nothing listening on the discard port).
        let open = crate::egress::client(true, TIMEOUT);
        let sent = request(&open, true, &action, "c-1", &json!({})).await;
        assert!(sent.response["error"].as_str().unwrap().contains("could not be reached"), "{sent:?}");
    }

    #[test]
    fn the_signature_is_the_guides() {
        // The guide's algorithm, by hand: HMAC-SHA256 keyed with the decoded secret, base64.
        let secret = STANDARD.encode(b"key");
        let body = br#"{"call_id": "c-1", "payload": {}}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(body);
        assert_eq!(signature(&secret, body), Some(STANDARD.encode(mac.finalize().into_bytes())));
        assert_eq!(signature("not base64!", body), None);
    }
}
