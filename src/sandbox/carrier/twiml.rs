//! Reading back the TwiML this server sends the carrier: the media stream it connects a call to
//! (`<Connect><Stream>` with its `<Parameter>`s), and where it transfers one (`<Dial><Number>`).
//! Just enough XML for what the Twilio adapter writes.

use serde_json::Value;

use super::Transfer;

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
pub fn start_tag<'a>(xml: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let at = xml
        .match_indices(&format!("<{name}"))
        .map(|(i, _)| i)
        .find(|&i| xml[i + name.len() + 1..].starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/'))?;
    let end = xml[at..].find('>')? + at;
    Some((&xml[at..end], &xml[end + 1..]))
}

/// A transfer out of TwiML: its `<Dial action>`, and the number of its `<Number>` with that
/// number's `statusCallback`.
pub fn parse_dial_twiml(twiml: &str) -> Option<Transfer> {
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
pub fn parse_stream_twiml(twiml: &str) -> Option<(String, Value)> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::telephony::twilio as twilio_api;

    #[test]
    fn stream_twiml_is_read_back() {
        let twiml =
            twilio_api::connect_stream_twiml("ws://h/telephony/twilio/stream/1?x=1&y=2", "c-1", "tok", "http://h/r");
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
}
