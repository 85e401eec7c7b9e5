//! Vonage's websocket: a first JSON text message (`websocket:connected`, with the NCCO's headers
//! flattened into it, which bind the stream to its call), then binary 16-bit linear PCM at 16 kHz
//! both ways, in messages of 640 bytes (20 ms); `websocket:dtmf` events; and, to Vonage,
//! `{"action":"clear"}` and `{"action":"notify"}` (answered with `websocket:notify` once the audio
//! before it has played: the equivalent of Twilio's marks).

use axum::extract::ws::Message;
use serde_json::{json, Value};

use super::{Hello, Inbound, Line, Protocol};
use crate::conversation::engine::ToCall;

/// The size of one audio message: 20 ms of 16-bit PCM at 16 kHz.
pub const FRAME_BYTES: usize = 640;

pub struct Vonage;

impl Protocol for Vonage {
    const NAME: &'static str = "vonage";
    const LINE: Line = Line::VONAGE;
    const AUDIO_FIRST: &'static str = "audio before websocket:connected";

    fn decode(message: Message) -> Result<Inbound, &'static str> {
        let text = match message {
            Message::Binary(audio) => return Ok(Inbound::Audio(audio.to_vec())),
            Message::Text(text) => text,
            _ => return Ok(Inbound::Nothing),
        };
        let event = serde_json::from_str::<Value>(text.as_str()).map_err(|_| "not a Vonage websocket message")?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Ok(match event["event"].as_str() {
            Some("websocket:connected") => Inbound::Hello(Hello {
                call_id: text(&event["call_id"]),
                token: text(&event["token"]),
                // Vonage names no call of its own here: the headers are ours.
                carrier_call_id: None,
                stream_id: String::new(),
            }),
            Some("websocket:dtmf") => match text(&event["digit"]).or(text(&event["dtmf"]["digit"])) {
                Some(digit) => Inbound::Dtmf(digit),
                None => Inbound::Nothing,
            },
            Some("websocket:notify") => match text(&event["payload"]["mark"]) {
                Some(mark) => Inbound::Played(mark),
                None => Inbound::Nothing,
            },
            _ => Inbound::Nothing,
        })
    }

    /// Audio goes in 640-byte frames, the last one padded with silence (Vonage takes whole frames
    /// only).
    fn encode(_stream_id: &str, out: ToCall, messages: &mut Vec<Message>) {
        match out {
            ToCall::Audio(pcm) => messages.extend(pcm.chunks(FRAME_BYTES).map(|chunk| {
                let mut frame = chunk.to_vec();
                frame.resize(FRAME_BYTES, 0);
                Message::Binary(frame.into())
            })),
            ToCall::Mark(name) => {
                messages.push(Message::Text(json!({"action": "notify", "payload": {"mark": name}}).to_string().into()))
            }
            ToCall::Clear => messages.push(Message::Text(json!({"action": "clear"}).to_string().into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(out: ToCall) -> Vec<Message> {
        let mut messages = Vec::new();
        Vonage::encode("", out, &mut messages);
        messages
    }

    #[test]
    fn audio_to_vonage_goes_in_whole_640_byte_frames() {
        let frames = framed(ToCall::Audio(vec![1; FRAME_BYTES + 3]));
        assert_eq!(frames.len(), 2);
        let Message::Binary(last) = &frames[1] else { panic!("binary audio") };
        assert_eq!(last.len(), FRAME_BYTES);
        assert_eq!(&last[..3], &[1, 1, 1]);
        assert!(last[3..].iter().all(|b| *b == 0), "padded with silence");
        let Message::Text(clear) = &framed(ToCall::Clear)[0] else { panic!("text") };
        assert_eq!(serde_json::from_str::<Value>(clear.as_str()).unwrap(), json!({"action": "clear"}));
    }

    #[test]
    fn vonages_messages_are_read_as_its_protocol_says() {
        let decode = |v: Value| Vonage::decode(Message::Text(v.to_string().into())).unwrap();
        let hello = decode(json!({"event": "websocket:connected", "call_id": "c", "token": "t"}));
        assert_eq!(
            hello,
            Inbound::Hello(Hello { call_id: Some("c".into()), token: Some("t".into()), ..Hello::default() })
        );
        assert_eq!(decode(json!({"event": "websocket:dtmf", "digit": "5"})), Inbound::Dtmf("5".into()));
        assert_eq!(decode(json!({"event": "websocket:dtmf", "dtmf": {"digit": "6"}})), Inbound::Dtmf("6".into()));
        assert_eq!(decode(json!({"event": "websocket:notify", "payload": {"mark": "m"}})), Inbound::Played("m".into()));
        assert_eq!(Vonage::decode(Message::Binary(vec![1, 2].into())).unwrap(), Inbound::Audio(vec![1, 2]));
        assert!(Vonage::decode(Message::Text("{".into())).is_err());
    }
}
