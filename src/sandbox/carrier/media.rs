//! An answered call's media stream, from the carrier's side: where the server asked for it
//! (Twilio: the `<Connect><Stream>` of the TwiML its URL answers; Vonage: the NCCO's websocket),
//! opened as the carrier opens it, framed both ways as the carrier frames it ([`Framing`]), with
//! the person who answered on it until the call ends.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::twiml::parse_stream_twiml;
use super::{Protocol, SimCall};
use crate::conversation::audio::{Encoding, Resampler};
use crate::sandbox::people::{converse, Scenario};
use crate::sandbox::Sandbox;

/// Where a call's media stream goes, and what the carrier opens it with.
enum Stream {
    /// The `<Stream url>` and its `<Parameter>`s.
    Twilio { url: String, parameters: Value },
    /// The websocket's URI, and its first message (`websocket:connected` with the NCCO's headers).
    Vonage { uri: String, first: Value },
}

impl Stream {
    fn url(&self) -> &str {
        match self {
            Stream::Twilio { url, .. } => url,
            Stream::Vonage { uri, .. } => uri,
        }
    }

    /// The server's id of the call, as it named it in the stream's parameters.
    fn server_call_id(&self) -> Option<String> {
        match self {
            Stream::Twilio { parameters, .. } => parameters["call_id"].as_str().map(str::to_owned),
            Stream::Vonage { first, .. } => first["call_id"].as_str().map(str::to_owned),
        }
    }
}

impl Sandbox {
    /// Connects to the call's media-stream websocket and puts the scenario's person on the line
    /// until the call ends.
    pub(super) async fn stream_media(self: Arc<Self>, call: Arc<SimCall>, scenario: Scenario) {
        let Some(stream) = self.stream_of(&call).await else { return };
        let Some(target) = self.local(stream.url()) else {
            let url = stream.url();
            tracing::warn!(call = %call.id, %url, "the media stream is not this server's: nobody is put on the line");
            return;
        };
        // The person's side channel is kept under the server's id of the call before the stream
        // starts, so the server finds it at once.
        let server_call_id = stream.server_call_id();
        if let Some(id) = &server_call_id {
            self.bind_line(id, &call.line);
        }
        let mut socket = match tokio_tungstenite::connect_async(target.as_str()).await {
            Ok((socket, _)) => socket,
            Err(err) => {
                tracing::warn!(call = %call.id, error = %err, "the sandbox could not open the media stream");
                return;
            }
        };
        let mut framing = Framing::new(call.protocol, format!("MZ{}", &call.id[2..]));
        for message in framing.opening(&call, stream) {
            if socket.send(message).await.is_err() {
                return;
            }
        }
        let mouth = self.people.mouth(&call.to, &call.id);
        converse(&mut socket, &mut framing, &call, scenario, mouth, self.time_scale).await;
        if let Some(stop) = framing.closing(&call) {
            let _ = socket.send(stop).await;
        }
        let _ = socket.close(None).await;
        if let Some(id) = &server_call_id {
            self.release_side_channel(id);
        }
    }

    /// Where the server asked the call's media to go: Twilio's from the TwiML the call's URL
    /// answers, Vonage's from the NCCO the call was placed with.
    async fn stream_of(&self, call: &SimCall) -> Option<Stream> {
        match call.protocol {
            Protocol::Twilio => {
                let Some(twiml_url) = &call.twiml_url else {
                    tracing::warn!(call = %call.id, "the sandbox call has no TwiML URL: nobody is put on the line");
                    return None;
                };
                let twiml = self.post_signed(call, twiml_url, self.twilio_params(call)).await?;
                let Some((url, parameters)) = parse_stream_twiml(&twiml) else {
                    tracing::warn!(call = %call.id, %twiml, "the server's TwiML connects no media stream");
                    return None;
                };
                Some(Stream::Twilio { url, parameters })
            }
            Protocol::Vonage => {
                let (uri, headers) = call.ncco_stream.as_ref()?;
                let mut first = json!({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"});
                if let (Value::Object(f), Value::Object(h)) = (&mut first, headers) {
                    f.extend(h.clone());
                }
                Some(Stream::Vonage { uri: uri.clone(), first })
            }
        }
    }
}

/// What the server sent on the stream, as the person's end takes it.
pub enum FromServer {
    /// The bot's audio (8 kHz).
    Audio(Vec<i16>),
    /// A mark (Twilio's `mark`, Vonage's `notify`), to send back once the audio before it played.
    Mark(Value),
    Clear,
    Closed,
    /// Anything else: not for the person's end.
    Other,
}

/// How a call's media stream is framed, both ways, as its carrier frames it: Twilio's JSON events
/// with μ-law 8 kHz payloads and sequence numbers, Vonage's binary 16 kHz L16 and JSON events.
pub struct Framing {
    protocol: Protocol,
    stream_sid: String,
    /// The last sequence number sent (Twilio's `start` is 1).
    sequence: u64,
    /// The person's media chunks sent.
    chunk: u64,
    up: Resampler,
    down: Resampler,
}

impl Framing {
    fn new(protocol: Protocol, stream_sid: String) -> Framing {
        Framing { protocol, stream_sid, sequence: 1, chunk: 0, up: Resampler::up(), down: Resampler::down() }
    }

    /// What the carrier sends first: Twilio's `connected` and `start`, Vonage's
    /// `websocket:connected`.
    fn opening(&self, call: &SimCall, stream: Stream) -> Vec<Message> {
        match stream {
            Stream::Twilio { parameters, .. } => vec![
                Message::text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()),
                Message::text(
                    json!({"event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
                           "start": {"accountSid": call.account_sid, "streamSid": self.stream_sid, "callSid": call.id,
                                     "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                                     "customParameters": parameters}})
                    .to_string(),
                ),
            ],
            Stream::Vonage { first, .. } => vec![Message::text(first.to_string())],
        }
    }

    /// What the carrier sends last: Twilio's `stop`.
    fn closing(&self, call: &SimCall) -> Option<Message> {
        (self.protocol == Protocol::Twilio).then(|| {
            Message::text(
                json!({"event": "stop", "sequenceNumber": (self.sequence + 1).to_string(), "streamSid": self.stream_sid,
                       "stop": {"accountSid": call.account_sid, "callSid": call.id}})
                .to_string(),
            )
        })
    }

    /// A frame of the person's audio (8 kHz).
    pub fn media(&mut self, frame: &[i16]) -> Message {
        self.chunk += 1;
        self.sequence += 1;
        match self.protocol {
            Protocol::Twilio => Message::text(
                json!({"event": "media", "sequenceNumber": self.sequence.to_string(), "streamSid": self.stream_sid,
                       "media": {"track": "inbound", "chunk": self.chunk.to_string(), "timestamp": (self.chunk * 20).to_string(),
                                 "payload": STANDARD.encode(Encoding::Mulaw8k.encode(frame))}})
                .to_string(),
            ),
            Protocol::Vonage => Message::binary(Encoding::Linear16k.encode(&self.up.process(frame))),
        }
    }

    /// A mark sent back as played: Twilio's `mark` event, Vonage's `websocket:notify`.
    pub fn played(&mut self, mark: Value) -> Message {
        self.sequence += 1;
        match self.protocol {
            Protocol::Twilio => Message::text(
                json!({"event": "mark", "sequenceNumber": self.sequence.to_string(), "streamSid": self.stream_sid, "mark": mark})
                    .to_string(),
            ),
            Protocol::Vonage => Message::text(json!({"event": "websocket:notify", "payload": mark}).to_string()),
        }
    }

    /// The answer to a `clear`, once the marks pending went back: Vonage's `websocket:cleared`.
    pub fn cleared(&self) -> Option<Message> {
        (self.protocol == Protocol::Vonage).then(|| Message::text(json!({"event": "websocket:cleared"}).to_string()))
    }

    /// What a message of the server's means to the person's end.
    pub fn read(&mut self, message: Message) -> FromServer {
        match (self.protocol, message) {
            (Protocol::Vonage, Message::Binary(audio)) => {
                FromServer::Audio(self.down.process(&Encoding::Linear16k.decode(&audio)))
            }
            (protocol, Message::Text(text)) => {
                let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else { return FromServer::Other };
                let kind = match protocol {
                    Protocol::Twilio => event["event"].as_str(),
                    Protocol::Vonage => event["action"].as_str(),
                };
                match kind {
                    Some("media") => match event["media"]["payload"].as_str().and_then(|p| STANDARD.decode(p).ok()) {
                        Some(bytes) => FromServer::Audio(Encoding::Mulaw8k.decode(&bytes)),
                        None => FromServer::Other,
                    },
                    Some("mark") => FromServer::Mark(event["mark"].clone()),
                    Some("notify") => FromServer::Mark(event["payload"].clone()),
                    Some("clear") => FromServer::Clear,
                    _ => FromServer::Other,
                }
            }
            (_, Message::Close(_)) => FromServer::Closed,
            _ => FromServer::Other,
        }
    }
}
