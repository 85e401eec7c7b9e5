//! Deepgram's live transcription over a websocket (`/v1/listen`), as vocode's
//! `DeepgramTranscriber` uses it: the carrier's audio passed through untouched (μ-law 8 kHz or
//! linear 16 kHz), interim results, Deepgram's endpointing (`speech_final`), `UtteranceEnd` and
//! `SpeechStarted` events.
//!
//! A session's background task owns the socket. It sends `KeepAlive` when no audio has flowed for
//! a while (Deepgram closes an idle socket after 10 s), reconnects with backoff when the socket
//! drops, and on close sends `Finalize` then `CloseStream` so Deepgram flushes what it still has
//! (the caller's last words) before it hangs up. Audio that arrives while it reconnects is
//! dropped: Deepgram's timestamps restart with a new connection anyway, and holding seconds of
//! stale speech would only delay what comes next.
//!
//! Deepgram dates its words in the connection's audio; the session dates them in its own (from
//! its first frame, across reconnects), so that the engine knows when the caller's last word
//! ended. When the call's voice-activity detector hears the caller stop, the session sends
//! `Finalize`: Deepgram gives its final words for what it has heard at once, instead of after its
//! own endpointing (a result it gives because it was asked is never an endpoint of its own).

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Request};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{
    SpeechToText, Spoken, SttConfig, SttError, SttEvent, SttInput, SttSession, AUDIO_QUEUE_FRAMES, EVENT_QUEUE,
};
use crate::conversation::audio::Encoding;
use crate::conversation::vad::detector::SpeechEvent;

const PROVIDER: &str = "deepgram";

/// Deepgram's live endpoint.
pub const DEFAULT_URL: &str = "wss://api.deepgram.com/v1/listen";
/// The model asked for unless configured (vocode's default is the older `nova`).
pub const DEFAULT_MODEL: &str = "nova-3";
/// Deepgram wants a message every 3–5 s when no audio flows.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(4);
/// Deepgram's lower bound for `utterance_end_ms`.
const MIN_UTTERANCE_END_MS: u32 = 1000;
/// How long a closing session waits for Deepgram to flush and hang up.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// The longest wait between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where and how to reach Deepgram.
#[derive(Clone)]
pub struct DeepgramSettings {
    /// The live endpoint (`wss://…/v1/listen`; `ws://` for a local fake).
    pub url: String,
    pub api_key: String,
    pub model: String,
    /// Silence on the socket after which a `KeepAlive` is sent.
    pub keep_alive: Duration,
    /// How many times a dropped connection is reopened before the session gives up.
    pub reconnect_attempts: u32,
    /// The wait before the first reconnect attempt; it doubles with each failed one.
    pub reconnect_backoff: Duration,
    /// How long opening a connection (TCP, TLS and the websocket handshake) may take.
    pub connect_timeout: Duration,
}

impl DeepgramSettings {
    pub fn new(api_key: impl Into<String>) -> DeepgramSettings {
        DeepgramSettings {
            url: DEFAULT_URL.to_owned(),
            api_key: api_key.into(),
            model: DEFAULT_MODEL.to_owned(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            reconnect_attempts: 3,
            reconnect_backoff: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

// By hand, so the key never reaches a log.
impl std::fmt::Debug for DeepgramSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramSettings")
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .field("model", &self.model)
            .field("keep_alive", &self.keep_alive)
            .field("reconnect_attempts", &self.reconnect_attempts)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Deepgram as a [`SpeechToText`] provider.
#[derive(Debug, Clone)]
pub struct Deepgram {
    settings: DeepgramSettings,
}

impl Deepgram {
    pub fn new(settings: DeepgramSettings) -> Deepgram {
        Deepgram { settings }
    }
}

impl SpeechToText for Deepgram {
    fn open(&self, config: SttConfig) -> BoxFuture<'_, Result<SttSession, SttError>> {
        Box::pin(async move {
            let target = Target {
                url: listen_url(&self.settings.url, &self.settings.model, &config)?,
                authorization: authorization(&self.settings.api_key)?,
                connect_timeout: self.settings.connect_timeout,
            };
            let socket = target.connect().await?;
            let (audio_in, audio) = mpsc::channel(AUDIO_QUEUE_FRAMES);
            let (events, events_out) = mpsc::channel(EVENT_QUEUE);
            let task = Connection {
                target,
                keep_alive: self.settings.keep_alive,
                reconnect_attempts: self.settings.reconnect_attempts,
                reconnect_backoff: self.settings.reconnect_backoff,
                audio,
                events,
                encoding: config.encoding,
                received: 0,
                socket_from: 0,
            };
            tokio::spawn(task.run(socket));
            Ok(SttSession { audio: audio_in, events: events_out })
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }
}

/// The query of a session's URL, as Deepgram documents it.
fn listen_url(base: &str, model: &str, config: &SttConfig) -> Result<String, SttError> {
    let mut url = url::Url::parse(base)
        .map_err(|e| SttError::Settings { provider: PROVIDER, message: format!("invalid URL {base:?}: {e}") })?;
    let (encoding, sample_rate) = match config.encoding {
        Encoding::Mulaw8k => ("mulaw", config.encoding.sample_rate()),
        Encoding::Linear16k => ("linear16", config.encoding.sample_rate()),
    };
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("encoding", encoding)
            .append_pair("sample_rate", &sample_rate.to_string())
            .append_pair("channels", "1")
            .append_pair("model", model);
        if let Some(language) = &config.language {
            query.append_pair("language", language);
        }
        let endpointing = match config.endpointing_ms {
            0 => "false".to_owned(),
            ms => ms.to_string(),
        };
        query
            .append_pair("punctuate", "true")
            .append_pair("smart_format", "true")
            .append_pair("interim_results", "true")
            .append_pair("endpointing", &endpointing)
            .append_pair("utterance_end_ms", &config.utterance_end_ms.max(MIN_UTTERANCE_END_MS).to_string())
            .append_pair("vad_events", "true");
        // Nova-3 dropped keyword boosting for keyterm prompting (phrases, no boost factor); the
        // older models take `keywords=word:boost`.
        let keyterms = model.starts_with("nova-3");
        for keyword in &config.keywords {
            if keyterms {
                query.append_pair("keyterm", without_boost(keyword));
            } else {
                query.append_pair("keywords", keyword);
            }
        }
    }
    Ok(url.into())
}

/// `word` of `word:2.5` (a boost only the older models understand).
fn without_boost(keyword: &str) -> &str {
    match keyword.rsplit_once(':') {
        Some((word, boost)) if boost.parse::<f32>().is_ok() => word,
        _ => keyword,
    }
}

fn authorization(api_key: &str) -> Result<HeaderValue, SttError> {
    let mut value = HeaderValue::from_str(&format!("Token {api_key}")).map_err(|_| SttError::Settings {
        provider: PROVIDER,
        message: "the API key is not a valid header value".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What it takes to (re)open a session's connection.
struct Target {
    url: String,
    authorization: HeaderValue,
    connect_timeout: Duration,
}

impl Target {
    fn request(&self) -> Result<Request<()>, SttError> {
        let mut request = self.url.as_str().into_client_request().map_err(|e| SttError::Settings {
            provider: PROVIDER,
            message: format!("invalid URL {:?}: {e}", self.url),
        })?;
        request.headers_mut().insert(header::AUTHORIZATION, self.authorization.clone());
        Ok(request)
    }

    async fn connect(&self) -> Result<Socket, SttError> {
        let request = self.request()?;
        // No Nagle: 20 ms frames should leave as they come.
        match tokio::time::timeout(
            self.connect_timeout,
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await
        {
            Err(_) => Err(SttError::Timeout { provider: PROVIDER }),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => Err(SttError::Refused {
                provider: PROVIDER,
                status: response.status().as_u16(),
                message: refusal_message(&response),
            }),
            Ok(Err(e)) => Err(SttError::Connect { provider: PROVIDER, source: Box::new(e) }),
        }
    }
}

/// What Deepgram said when it refused the handshake: `err_msg` of its JSON body, its `dg-error`
/// header, or the status's reason.
fn refusal_message(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> String {
    #[derive(Deserialize)]
    struct Body {
        err_msg: Option<String>,
        err_code: Option<String>,
    }
    let body = response.body().as_deref().unwrap_or_default();
    if let Ok(Body { err_msg, err_code }) = serde_json::from_slice::<Body>(body) {
        match (err_code, err_msg) {
            (Some(code), Some(message)) => return format!("{code}: {message}"),
            (None, Some(message)) | (Some(message), None) => return message,
            (None, None) => {}
        }
    }
    if let Some(error) = response.headers().get("dg-error").and_then(|v| v.to_str().ok()) {
        return error.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.is_empty() {
        return text.chars().take(300).collect();
    }
    response.status().canonical_reason().unwrap_or("no reason given").to_owned()
}

/// A session's background task.
struct Connection {
    target: Target,
    keep_alive: Duration,
    reconnect_attempts: u32,
    reconnect_backoff: Duration,
    audio: mpsc::Receiver<SttInput>,
    events: mpsc::Sender<SttEvent>,
    encoding: Encoding,
    /// Bytes of audio the session was given, and how many of them came before the current
    /// connection's first (its timestamps start there).
    received: usize,
    socket_from: usize,
}

/// Why serving a connection stopped.
enum Ended {
    /// The session is over (closed by the engine).
    Closed,
    /// The socket dropped under us.
    Dropped(String),
}

impl Connection {
    async fn run(mut self, mut socket: Socket) {
        loop {
            match self.serve(&mut socket).await {
                Ended::Closed => return,
                Ended::Dropped(reason) => {
                    tracing::warn!(provider = PROVIDER, %reason, "speech-to-text connection dropped; reconnecting");
                    match self.reconnect().await {
                        Some(fresh) => {
                            socket = fresh;
                            if self.events.send(SttEvent::Reconnected).await.is_err() {
                                close(&mut socket, &self.events, self.offset()).await;
                                return;
                            }
                        }
                        None => return,
                    }
                }
            }
        }
    }

    /// Where the current connection's audio starts in the session's.
    fn offset(&self) -> Duration {
        Duration::from_micros(self.encoding.ms_of(self.socket_from) * 1000)
    }

    async fn serve(&mut self, socket: &mut Socket) -> Ended {
        self.socket_from = self.received;
        let keep_alive = tokio::time::sleep(self.keep_alive);
        tokio::pin!(keep_alive);
        loop {
            tokio::select! {
                input = self.audio.recv() => {
                    let message = match input {
                        None => {
                            close(socket, &self.events, self.offset()).await;
                            return Ended::Closed;
                        }
                        Some(SttInput::Audio(frame)) => {
                            self.received += frame.len();
                            Message::binary(frame)
                        }
                        Some(SttInput::Voice(SpeechEvent::Stopped { .. })) => Message::text(r#"{"type":"Finalize"}"#),
                        Some(SttInput::Voice(SpeechEvent::Started { .. }) | SttInput::Pausing { .. } | SttInput::Interims(_)) => continue,
                    };
                    if let Err(e) = socket.send(message).await {
                        return Ended::Dropped(e.to_string());
                    }
                    keep_alive.as_mut().reset(tokio::time::Instant::now() + self.keep_alive);
                }
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(event) = event_of(&text, self.offset()) {
                            if self.events.send(event).await.is_err() {
                                close(socket, &self.events, self.offset()).await;
                                return Ended::Closed;
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ended::Dropped(match frame {
                            Some(frame) => format!("closed by Deepgram ({}): {}", frame.code, frame.reason),
                            None => "closed by Deepgram".to_owned(),
                        });
                    }
                    // Pings are answered by the socket itself; Deepgram sends no binary.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ended::Dropped(e.to_string()),
                    None => return Ended::Dropped("the connection ended".to_owned()),
                },
                () = &mut keep_alive => {
                    if let Err(e) = socket.send(Message::text(r#"{"type":"KeepAlive"}"#)).await {
                        return Ended::Dropped(e.to_string());
                    }
                    keep_alive.as_mut().reset(tokio::time::Instant::now() + self.keep_alive);
                }
                () = self.events.closed() => {
                    close(socket, &self.events, self.offset()).await;
                    return Ended::Closed;
                }
            }
        }
    }

    /// A new connection, or `None` when the attempts ran out (having said so with
    /// [`SttEvent::Failed`]) or the session was closed meanwhile.
    async fn reconnect(&mut self) -> Option<Socket> {
        let mut last_error = String::from("no attempt made");
        let mut dropped_bytes = 0usize;
        let mut delay = self.reconnect_backoff;
        for attempt in 1..=self.reconnect_attempts {
            let target = &self.target;
            let connecting = async move {
                tokio::time::sleep(delay).await;
                target.connect().await
            };
            tokio::pin!(connecting);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut connecting => break outcome,
                    input = self.audio.recv() => match input {
                        Some(SttInput::Audio(frame)) => {
                            dropped_bytes += frame.len();
                            self.received += frame.len();
                        }
                        Some(SttInput::Voice(_) | SttInput::Pausing { .. } | SttInput::Interims(_)) => {}
                        None => return None,
                    },
                    () = self.events.closed() => return None,
                }
            };
            match outcome {
                Ok(socket) => {
                    tracing::info!(provider = PROVIDER, attempt, dropped_bytes, "speech-to-text reconnected");
                    return Some(socket);
                }
                Err(e) => {
                    tracing::warn!(provider = PROVIDER, attempt, error = %e, "speech-to-text reconnect failed");
                    last_error = e.to_string();
                }
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        let reason = format!(
            "the connection to Deepgram dropped and {} reconnect attempts failed: {last_error}",
            self.reconnect_attempts
        );
        tracing::error!(provider = PROVIDER, %reason, "speech-to-text session failed");
        let _ = self.events.send(SttEvent::Failed(reason)).await;
        None
    }
}

/// Closes a session cleanly: `Finalize` makes Deepgram finish what it was hearing at once (its
/// results come back `from_finalize`), then `CloseStream` makes it flush what is left, send its
/// metadata and hang up. The results are passed on while anyone still reads them: the caller's
/// last words before a hang-up are among them.
async fn close(socket: &mut Socket, events: &mpsc::Sender<SttEvent>, offset: Duration) {
    for control in [r#"{"type":"Finalize"}"#, r#"{"type":"CloseStream"}"#] {
        if socket.send(Message::text(control)).await.is_err() {
            return;
        }
    }
    let flush = async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                if let Some(event) = event_of(&text, offset) {
                    let _ = events.send(event).await;
                }
            }
        }
    };
    if tokio::time::timeout(CLOSE_GRACE, flush).await.is_err() {
        tracing::debug!(provider = PROVIDER, "Deepgram did not hang up after CloseStream; closing");
    }
    let _ = socket.close(None).await;
}

/// The messages Deepgram sends; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum ServerMessage {
    Results {
        #[serde(default)]
        is_final: bool,
        #[serde(default)]
        speech_final: bool,
        #[serde(default)]
        from_finalize: bool,
        channel: Channel,
    },
    UtteranceEnd {},
    SpeechStarted {},
    Metadata {},
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Channel {
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    transcript: String,
    #[serde(default)]
    words: Vec<Word>,
}

/// A word's place in the connection's audio, in seconds.
#[derive(Deserialize)]
struct Word {
    start: f64,
    end: f64,
}

impl Alternative {
    /// Where its words were said, in the session's audio (the connection's starts at `offset`).
    fn spoken(&self, offset: Duration) -> Option<Spoken> {
        let at = |seconds: f64| offset + Duration::from_secs_f64(seconds.clamp(0.0, 86_400.0));
        let (first, last) = (self.words.first()?, self.words.last()?);
        Some(Spoken { start: at(first.start), end: at(last.end.max(first.start)) })
    }
}

/// The event a message from Deepgram means, if any, its words dated in the session's audio (the
/// connection's starts at `offset`). What cannot be read is logged and skipped: one bad message
/// must not end a call.
fn event_of(text: &str, offset: Duration) -> Option<SttEvent> {
    let message = match serde_json::from_str::<ServerMessage>(text) {
        Ok(message) => message,
        Err(e) => {
            let start: String = text.chars().take(200).collect();
            tracing::warn!(provider = PROVIDER, error = %e, message = %start, "unreadable message from Deepgram; ignored");
            return None;
        }
    };
    match message {
        ServerMessage::Results { is_final, speech_final, from_finalize, channel } => {
            let best = channel.alternatives.into_iter().next()?;
            let spoken = best.spoken(offset);
            let text = best.transcript;
            if text.trim().is_empty() {
                return None;
            }
            // What Deepgram finished because it was asked to is not a pause it heard.
            let speech_final = speech_final && !from_finalize;
            Some(if is_final {
                SttEvent::Final { text, speech_final, spoken }
            } else {
                SttEvent::Interim { text, spoken }
            })
        }
        ServerMessage::UtteranceEnd {} => Some(SttEvent::UtteranceEnd),
        ServerMessage::SpeechStarted {} => Some(SttEvent::SpeechStarted),
        ServerMessage::Metadata {} => None,
        ServerMessage::Other => {
            let start: String = text.chars().take(200).collect();
            tracing::debug!(provider = PROVIDER, message = %start, "message from Deepgram of an unknown type; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(url: &str) -> Vec<(String, String)> {
        url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
    }

    #[test]
    fn the_query_asks_for_the_carriers_encoding_and_vocodes_features() {
        let mut config = SttConfig::new(Encoding::Mulaw8k);
        config.language = Some("en-US".into());
        let url = listen_url(DEFAULT_URL, "nova-3", &config).unwrap();
        assert!(url.starts_with("wss://api.deepgram.com/v1/listen?"), "{url}");
        let expected: Vec<(String, String)> = [
            ("encoding", "mulaw"),
            ("sample_rate", "8000"),
            ("channels", "1"),
            ("model", "nova-3"),
            ("language", "en-US"),
            ("punctuate", "true"),
            ("smart_format", "true"),
            ("interim_results", "true"),
            ("endpointing", "500"),
            ("utterance_end_ms", "1000"),
            ("vad_events", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs(&url), expected);

        let mut config = SttConfig::new(Encoding::Linear16k);
        config.endpointing_ms = 0;
        config.utterance_end_ms = 300;
        let pairs = pairs(&listen_url(DEFAULT_URL, "nova-2", &config).unwrap());
        assert!(pairs.contains(&("encoding".into(), "linear16".into())), "{pairs:?}");
        assert!(pairs.contains(&("sample_rate".into(), "16000".into())), "{pairs:?}");
        assert!(pairs.contains(&("endpointing".into(), "false".into())), "{pairs:?}");
        assert!(pairs.contains(&("utterance_end_ms".into(), "1000".into())), "{pairs:?}");
        assert!(!pairs.iter().any(|(k, _)| k == "language"), "{pairs:?}");
    }

    #[test]
    fn keywords_are_keyterms_on_nova_3_and_keywords_before_it() {
        let mut config = SttConfig::new(Encoding::Mulaw8k);
        config.keywords = vec!["Vocode:2".into(), "R&D team".into(), "Acme:-1.5".into()];
        let url = listen_url(DEFAULT_URL, "nova-3", &config).unwrap();
        assert!(url.contains("keyterm=R%26D+team"), "{url}");
        let terms: Vec<String> = pairs(&url).into_iter().filter(|(k, _)| k == "keyterm").map(|(_, v)| v).collect();
        assert_eq!(terms, ["Vocode", "R&D team", "Acme"]);

        let url = listen_url(DEFAULT_URL, "nova-2-phonecall", &config).unwrap();
        let words: Vec<String> = pairs(&url).into_iter().filter(|(k, _)| k == "keywords").map(|(_, v)| v).collect();
        assert_eq!(words, ["Vocode:2", "R&D team", "Acme:-1.5"]);
        assert!(!url.contains("keyterm"), "{url}");
    }

    #[test]
    fn results_become_interim_or_final_events() {
        let results = |text: &str, is_final: bool, speech_final: bool| {
            serde_json::json!({"type": "Results", "channel_index": [0, 1], "duration": 1.0, "start": 0.0,
                "is_final": is_final, "speech_final": speech_final,
                "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": []}]},
                "metadata": {"request_id": "x"}})
            .to_string()
        };
        let zero = Duration::ZERO;
        assert_eq!(
            event_of(&results("hel", false, false), zero),
            Some(SttEvent::Interim { text: "hel".into(), spoken: None })
        );
        assert_eq!(
            event_of(&results("hello", true, false), zero),
            Some(SttEvent::Final { text: "hello".into(), speech_final: false, spoken: None })
        );
        assert_eq!(
            event_of(&results("hello.", true, true), zero),
            Some(SttEvent::Final { text: "hello.".into(), speech_final: true, spoken: None })
        );
        assert_eq!(event_of(&results("", true, true), zero), None);
        assert_eq!(event_of(&results("  ", false, false), zero), None);
        assert_eq!(
            event_of(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.1}"#, zero),
            Some(SttEvent::UtteranceEnd)
        );
        assert_eq!(
            event_of(r#"{"type":"SpeechStarted","channel":[0,1],"timestamp":0.4}"#, zero),
            Some(SttEvent::SpeechStarted)
        );
    }

    #[test]
    fn words_are_dated_in_the_sessions_audio_and_a_finalized_result_is_no_endpoint() {
        let message = serde_json::json!({"type": "Results", "is_final": true, "speech_final": true,
            "from_finalize": true, "channel": {"alternatives": [{"transcript": "a table for two",
            "words": [{"word": "a", "start": 1.25, "end": 1.3}, {"word": "two", "start": 2.0, "end": 2.5}]}]}})
        .to_string();
        let spoken = Spoken { start: Duration::from_millis(11_250), end: Duration::from_millis(12_500) };
        assert_eq!(
            event_of(&message, Duration::from_secs(10)),
            Some(SttEvent::Final { text: "a table for two".into(), speech_final: false, spoken: Some(spoken) })
        );
    }

    #[test]
    fn what_cannot_be_read_is_skipped() {
        for text in [
            "",
            "not json",
            "[1,2]",
            r#"{"no":"type"}"#,
            r#"{"type":"Results"}"#,
            r#"{"type":"Results","channel":{"alternatives":[]}}"#,
            r#"{"type":"Results","channel":{"alternatives":[{"transcript":7}]}}"#,
            r#"{"type":"Metadata","request_id":"x","duration":3.2}"#,
            r#"{"type":"Error","description":"?"}"#,
        ] {
            assert_eq!(event_of(text, Duration::ZERO), None, "{text}");
        }
    }

    #[test]
    fn a_refusal_says_what_deepgram_said() {
        let response = |body: &str| {
            tungstenite::http::Response::builder()
                .status(401)
                .header("dg-error", "bad auth header")
                .body(Some(body.as_bytes().to_vec()))
                .unwrap()
        };
        assert_eq!(
            refusal_message(&response(
                r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}"#
            )),
            "INVALID_AUTH: Invalid credentials."
        );
        assert_eq!(refusal_message(&response("")), "bad auth header");
    }

    #[test]
    fn the_settings_never_show_the_key() {
        let settings = DeepgramSettings::new("dg-secret-key");
        assert!(!format!("{settings:?}").contains("dg-secret-key"));
        assert!(!format!("{:?}", Deepgram::new(settings)).contains("dg-secret-key"));
        assert!(authorization("dg-secret-key").unwrap().is_sensitive());
    }
}
