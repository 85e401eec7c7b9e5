//! Twilio Media Streams: JSON text messages — `connected`, `start` (with the custom parameters
//! that bind the stream to its call), `media` with base64 μ-law, `dtmf`, `mark`, `stop` — and, to
//! Twilio, `media`, `mark` and `clear`, each naming the stream.

use axum::extract::ws::Message;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use super::{Hello, Inbound, Line, Protocol};
use crate::conversation::engine::ToCall;

pub struct Twilio;

impl Protocol for Twilio {
    const NAME: &'static str = "twilio";
    const LINE: Line = Line::TWILIO;
    const AUDIO_FIRST: &'static str = "media before start";

    fn decode(message: Message) -> Result<Inbound, &'static str> {
        let Message::Text(text) = message else {
            return Ok(Inbound::Nothing);
        };
        let event = serde_json::from_str::<Value>(text.as_str()).map_err(|_| "not a Twilio media-stream message")?;
        Ok(match event["event"].as_str() {
            Some("start") => {
                let start = &event["start"];
                let params = &start["customParameters"];
                let text = |v: &Value| v.as_str().map(str::to_owned);
                Inbound::Hello(Hello {
                    call_id: text(&params["call_id"]),
                    token: text(&params["token"]),
                    carrier_call_id: text(&start["callSid"]),
                    stream_id: text(&start["streamSid"]).or(text(&event["streamSid"])).unwrap_or_default(),
                })
            }
            Some("media") => Inbound::Audio(
                event["media"]["payload"].as_str().and_then(|p| STANDARD.decode(p).ok()).unwrap_or_default(),
            ),
            Some("mark") => match event["mark"]["name"].as_str() {
                Some(name) => Inbound::Played(name.to_owned()),
                None => Inbound::Nothing,
            },
            Some("dtmf") => match event["dtmf"]["digit"].as_str() {
                Some(digit) => Inbound::Dtmf(digit.to_owned()),
                None => Inbound::Nothing,
            },
            Some("stop") => Inbound::Stop,
            _ => Inbound::Nothing,
        })
    }

    fn encode(stream_id: &str, out: ToCall, messages: &mut Vec<Message>) {
        let framed = match out {
            ToCall::Audio(mulaw) => {
                json!({"event": "media", "streamSid": stream_id, "media": {"payload": STANDARD.encode(mulaw)}})
            }
            ToCall::Mark(name) => json!({"event": "mark", "streamSid": stream_id, "mark": {"name": name}}),
            ToCall::Clear => json!({"event": "clear", "streamSid": stream_id}),
        };
        messages.push(Message::Text(framed.to_string().into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(out: ToCall) -> Value {
        let mut messages = Vec::new();
        Twilio::encode("MZ1", out, &mut messages);
        let [Message::Text(text)] = &messages[..] else { panic!("one text message: {messages:?}") };
        serde_json::from_str(text.as_str()).unwrap()
    }

    #[test]
    fn messages_to_twilio_are_framed_as_its_protocol_says() {
        let media = framed(ToCall::Audio(vec![0xff, 0x7f]));
        assert_eq!(media, json!({"event": "media", "streamSid": "MZ1", "media": {"payload": "/38="}}));
        let mark = framed(ToCall::Mark("chunk-1".into()));
        assert_eq!(mark, json!({"event": "mark", "streamSid": "MZ1", "mark": {"name": "chunk-1"}}));
        assert_eq!(framed(ToCall::Clear), json!({"event": "clear", "streamSid": "MZ1"}));
    }

    #[test]
    fn twilios_messages_are_read_as_its_protocol_says() {
        let decode = |v: Value| Twilio::decode(Message::Text(v.to_string().into())).unwrap();
        let start = json!({"event": "start", "streamSid": "MZ1", "start": {"streamSid": "MZ1", "callSid": "CA1",
                           "customParameters": {"call_id": "c", "token": "t"}}});
        assert_eq!(
            decode(start),
            Inbound::Hello(Hello {
                call_id: Some("c".into()),
                token: Some("t".into()),
                carrier_call_id: Some("CA1".into()),
                stream_id: "MZ1".into()
            })
        );
        assert_eq!(decode(json!({"event": "media", "media": {"payload": "/38="}})), Inbound::Audio(vec![0xff, 0x7f]));
        assert_eq!(decode(json!({"event": "mark", "mark": {"name": "m"}})), Inbound::Played("m".into()));
        assert_eq!(decode(json!({"event": "dtmf", "dtmf": {"digit": "5"}})), Inbound::Dtmf("5".into()));
        assert_eq!(decode(json!({"event": "connected"})), Inbound::Nothing);
        assert_eq!(decode(json!({"event": "stop"})), Inbound::Stop);
        assert!(Twilio::decode(Message::Text("not json".into())).is_err());
    }
}
