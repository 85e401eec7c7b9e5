//! A call's context in its agent's prompt: `${name}` placeholders filled from what is known about
//! the call (`injecting-context.mdx`), the prompt template's `required_context_keys` checked, the
//! prompt's `collect_fields` turned into instructions, and the prompt's `context_endpoint` asked
//! about the person on the line.
//!
//! The placeholders are those of Python's `string.Template` in its braced form, which the guide's
//! `${name}` comes from: `${` + an identifier (`[A-Za-z_][A-Za-z0-9_]*`) + `}`. Anything else —
//! `$name`, `$5`, `${not a name}` — is text and is left alone. A placeholder the context has no
//! value for becomes empty (and the caller logs its name): the prompt is spoken from, and a voice
//! reading out "dollar name" is worse than a sentence without the name.
//!
//! The endpoint is the user's server: it gets a GET with `?phone_number=` the person's number
//! (as this server writes numbers: digits, no `+`), through [`crate::egress`], as webhooks
//! are (no private or link-local targets unless `ALLOW_PRIVATE_TARGETS`), and it has
//! [`ENDPOINT_TIMEOUT`] and [`ENDPOINT_MAX_BYTES`] to answer with a JSON object. Whatever goes
//! wrong, the call goes on with the context it has.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

/// Keys and their values, as the prompt's placeholders see them.
pub type Context = BTreeMap<String, String>;

/// How long the context endpoint may take, whole answer included: the call waits for it before
/// the agent starts (the greeting included).
pub const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from the context endpoint.
pub const ENDPOINT_MAX_BYTES: usize = 64 * 1024;

/// A JSON object as context: strings as they are, numbers and booleans as their JSON text, nested
/// objects and arrays as compact JSON; `null`s are no value. Anything but an object is no context.
/// (The spec's contexts are string to string; endpoints written in other languages send numbers.)
pub fn from_json(value: &Value) -> Context {
    let Some(object) = value.as_object() else {
        return Context::new();
    };
    object
        .iter()
        .filter_map(|(key, value)| {
            let text = match value {
                Value::Null => return None,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((key.clone(), text))
        })
        .collect()
}

/// The layers merged, each later one winning over the earlier ones key by key.
pub fn layered(layers: impl IntoIterator<Item = Context>) -> Context {
    layers.into_iter().fold(Context::new(), |mut merged, layer| {
        merged.extend(layer);
        merged
    })
}

/// The prompt filled from `context`, and the names of the placeholders it had no value for (each
/// once, in order of first appearance).
pub fn fill(prompt: &str, context: &Context) -> (String, Vec<String>) {
    let mut out = String::with_capacity(prompt.len());
    let mut unfilled: Vec<String> = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('}').map(|end| &after[..end]).filter(|name| is_identifier(name)) {
            Some(name) => {
                match context.get(name) {
                    Some(value) => out.push_str(value),
                    None if !unfilled.iter().any(|u| u == name) => unfilled.push(name.to_owned()),
                    None => {}
                }
                rest = &after[name.len() + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, unfilled)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `required_context_keys` that `context` (a JSON object, or nothing) lacks, in the
/// template's order.
pub fn missing_keys(required: &Value, context: Option<&Value>) -> Vec<String> {
    let given = context.and_then(Value::as_object);
    required
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|key| !given.is_some_and(|given| given.contains_key(*key)))
        .map(str::to_owned)
        .collect()
}

/// What the agent is told to ask for, from its prompt's `collect_fields`; `None` when there is
/// nothing to collect. Each field is named by its label (its name when it has none), with its
/// description, and what kind of value it is (`field_type_email`, the one type the spec has).
pub fn collect_instructions(collect_fields: &Value) -> Option<String> {
    let lines: Vec<String> = collect_fields
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|field| {
            let label = field["label"].as_str().filter(|l| !l.trim().is_empty()).or(field["name"].as_str())?;
            let mut line = format!("- {label}");
            if let Some(description) = field["description"].as_str().filter(|d| !d.trim().is_empty()) {
                line.push_str(&format!(" ({description})"));
            }
            if field["field_type"] == "field_type_email" {
                line.push_str(": an email address; spell it back to the person to confirm it");
            }
            Some(line)
        })
        .collect();
    (!lines.is_empty()).then(|| {
        format!(
            "During the conversation, ask the person for the following, unless they have already given it:\n{}",
            lines.join("\n")
        )
    })
}

/// Why the context endpoint gave no context.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the context endpoint URL cannot be used: {0}")]
    BadUrl(String),
    /// [`crate::egress`] refused the target (a private address, without `ALLOW_PRIVATE_TARGETS`).
    #[error("the context endpoint was not asked: {0}")]
    Refused(String),
    #[error("the context endpoint could not be reached: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("the context endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the context endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the context endpoint's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the context endpoint's answer is not a JSON object: {0}")]
    NotAnObject(String),
}

/// Where the endpoint is asked about `phone_number`: its URL with `phone_number` added to the query.
pub fn endpoint_url(endpoint: &str, phone_number: &str) -> Result<url::Url, EndpointError> {
    let mut url = url::Url::parse(endpoint).map_err(|e| EndpointError::BadUrl(e.to_string()))?;
    url.query_pairs_mut().append_pair("phone_number", phone_number);
    Ok(url)
}

/// Asks the context endpoint about `phone_number`, with `client` — which must be
/// [`crate::egress::client`], so that names resolving to private addresses and redirects
/// to them are refused too.
pub async fn fetch(
    client: &reqwest::Client,
    allow_private: bool,
    endpoint: &str,
    phone_number: &str,
) -> Result<Context, EndpointError> {
    let url = endpoint_url(endpoint, phone_number)?;
    crate::egress::check_url(&url, allow_private).map_err(|r| EndpointError::Refused(r.0))?;
    let asked = async {
        let response = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(ENDPOINT_TIMEOUT)
            .send()
            .await
            .map_err(refused_or_transport)?;
        if !response.status().is_success() {
            return Err(EndpointError::Status(response.status().as_u16()));
        }
        if response.content_length().is_some_and(|n| n > ENDPOINT_MAX_BYTES as u64) {
            return Err(EndpointError::TooLarge(ENDPOINT_MAX_BYTES));
        }
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk.map_err(refused_or_transport)?);
            if body.len() > ENDPOINT_MAX_BYTES {
                return Err(EndpointError::TooLarge(ENDPOINT_MAX_BYTES));
            }
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(value @ Value::Object(_)) => Ok(from_json(&value)),
            Ok(other) => Err(EndpointError::NotAnObject(truncated(&other.to_string()))),
            Err(e) => Err(EndpointError::NotAnObject(e.to_string())),
        }
    };
    // The request's own timeout covers the body too; this one also bounds a resolver that hangs.
    tokio::time::timeout(ENDPOINT_TIMEOUT, asked).await.unwrap_or(Err(EndpointError::Timeout(ENDPOINT_TIMEOUT)))
}

fn refused_or_transport(err: reqwest::Error) -> EndpointError {
    if let Some(refused) = crate::egress::refusal(&err) {
        EndpointError::Refused(refused)
    } else if err.is_timeout() {
        EndpointError::Timeout(ENDPOINT_TIMEOUT)
    } else {
        // Without the URL: its query may carry the user's token, and this error is logged.
        EndpointError::Transport(err.without_url())
    }
}

fn truncated(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context(pairs: &[(&str, &str)]) -> Context {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn placeholders_are_filled_and_the_unknown_ones_named_once() {
        let (prompt, unfilled) = fill(
            "You are talking to ${name} about ${topic}. Greet ${name}; mention ${plan} and ${plan}.",
            &context(&[("name", "Kian"), ("topic", "the offer")]),
        );
        assert_eq!(prompt, "You are talking to Kian about the offer. Greet Kian; mention  and .");
        assert_eq!(unfilled, vec!["plan".to_owned()]);
    }

    #[test]
    fn only_braced_identifiers_are_placeholders() {
        let ctx = context(&[("name", "Ajay"), ("not a name", "x"), ("5", "five")]);
        let text = "Costs $5, or ${5}; $name, ${not a name}, ${ name }, ${}, ${name, $${name}, ${name}";
        let (prompt, unfilled) = fill(text, &ctx);
        assert_eq!(prompt, "Costs $5, or ${5}; $name, ${not a name}, ${ name }, ${}, ${name, $Ajay, Ajay");
        assert!(unfilled.is_empty());
        assert_eq!(fill("ends with ${", &ctx).0, "ends with ${");
        assert_eq!(fill("café ${name} ünïcode", &ctx).0, "café Ajay ünïcode");
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let merged = layered([
            context(&[("name", "Example"), ("city", "Paris")]),
            context(&[("name", "From the endpoint")]),
            Context::new(),
        ]);
        assert_eq!(merged, context(&[("name", "From the endpoint"), ("city", "Paris")]));
    }

    #[test]
    fn json_values_become_text_and_nulls_no_value() {
        let got = from_json(&json!({"name": "Kian", "age": 41, "vip": true, "tags": ["a"], "gone": null}));
        assert_eq!(got, context(&[("name", "Kian"), ("age", "41"), ("vip", "true"), ("tags", "[\"a\"]")]));
        assert!(from_json(&json!(["name"])).is_empty());
        assert!(from_json(&json!("name")).is_empty());
    }

    #[test]
    fn missing_required_keys_are_named_in_the_templates_order() {
        let required = json!(["name", "account_id", "plan"]);
        assert_eq!(missing_keys(&required, Some(&json!({"plan": "gold"}))), vec!["name", "account_id"]);
        assert_eq!(missing_keys(&required, None), vec!["name", "account_id", "plan"]);
        let all = json!({"name": "", "account_id": "1", "plan": "x", "extra": "y"});
        assert!(missing_keys(&required, Some(&all)).is_empty(), "an empty value is a given one");
        assert!(missing_keys(&json!([]), None).is_empty());
    }

    #[test]
    fn collect_fields_become_instructions() {
        let fields = json!([
            {"field_type": "field_type_email", "label": "Work email", "name": "email", "description": "for the invoice"},
            {"field_type": "field_type_email", "label": "", "name": "backup_email"},
        ]);
        let text = collect_instructions(&fields).unwrap();
        assert!(text.starts_with("During the conversation, ask the person for"), "{text}");
        assert!(text.contains("- Work email (for the invoice): an email address"), "{text}");
        assert!(text.contains("- backup_email: an email address"), "{text}");
        assert_eq!(collect_instructions(&json!([])), None);
        assert_eq!(collect_instructions(&Value::Null), None);
    }

    #[test]
    fn the_endpoint_is_asked_about_the_number_in_its_query() {
        let url = endpoint_url("https://crm.example.com/context?team=a", "15555555555").unwrap();
        assert_eq!(url.as_str(), "https://crm.example.com/context?team=a&phone_number=15555555555");
        assert!(matches!(endpoint_url("not a url", "1"), Err(EndpointError::BadUrl(_))));
    }

    #[tokio::test]
    async fn a_private_endpoint_is_refused_before_anything_is_sent() {
        let client = crate::egress::client(false, Duration::from_secs(1));
        let got = fetch(&client, false, "http://127.0.0.1:9/context", "1").await;
        assert!(matches!(got, Err(EndpointError::Refused(ref r)) if r.contains("ALLOW_PRIVATE_TARGETS")), "{got:?}");
        let got = fetch(&client, false, "http://localhost:9/context", "1").await;
        assert!(matches!(got, Err(EndpointError::Refused(_))), "a name resolving to loopback: {got:?}");
    }
}
