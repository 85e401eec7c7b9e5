//! Rime over its JSON API (`POST /v1/rime-tts`), as vocode's `RimeSynthesizer` uses it: one
//! sentence in, `{"audioContent": "<base64 WAV>"}` out, at the call's own sampling rate. The WAV's
//! samples are found by walking its chunks (vocode assumes a 44-byte header) and given to the call
//! in its encoding (μ-law for Twilio).

use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;

use super::{audio_of, http_client, key_header, request_error, wav, AudioStream, TtsError, Voice, DEFAULT_TIMEOUT};
use crate::conversation::audio::Encoding;

const PROVIDER: &str = "rime";

pub const DEFAULT_BASE_URL: &str = "https://users.rime.ai";

/// The largest answer read: a sentence's base64 WAV is a few hundred kilobytes.
const ANSWER_LIMIT: usize = 32 * 1024 * 1024;

/// A speaker at Rime, and how it should sound.
#[derive(Clone)]
pub struct RimeSettings {
    pub base_url: String,
    pub api_key: String,
    /// Rime's voice (`speaker`).
    pub speaker: String,
    /// `mist`, `mistv2`, `arcana`…; Rime's default when absent.
    pub model_id: Option<String>,
    /// Above 1 is slower, below 1 faster; Rime's default (1.0) when absent.
    pub speed_alpha: Option<f32>,
    /// How long Rime may go quiet: before its answer starts, or between two chunks.
    pub timeout: Duration,
}

impl RimeSettings {
    pub fn new(api_key: impl Into<String>, speaker: impl Into<String>) -> RimeSettings {
        RimeSettings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            speaker: speaker.into(),
            model_id: None,
            speed_alpha: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

// By hand, so the key never reaches a log.
impl std::fmt::Debug for RimeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RimeSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("speaker", &self.speaker)
            .field("model_id", &self.model_id)
            .field("speed_alpha", &self.speed_alpha)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Rime voice.
#[derive(Debug, Clone)]
pub struct Rime {
    settings: RimeSettings,
    client: reqwest::Client,
}

impl Rime {
    pub fn new(settings: RimeSettings) -> Rime {
        let client = http_client(settings.timeout);
        Rime { settings, client }
    }

    fn url(&self) -> String {
        format!("{}/v1/rime-tts", self.settings.base_url.trim_end_matches('/'))
    }

    /// The request body, serialised from typed fields so an `f32` setting goes out as written.
    fn body(&self, text: &str, encoding: Encoding) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            text: &'a str,
            speaker: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            model_id: Option<&'a str>,
            sampling_rate: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            speed_alpha: Option<f32>,
        }
        let settings = &self.settings;
        let body = Body {
            text,
            speaker: &settings.speaker,
            model_id: settings.model_id.as_deref(),
            sampling_rate: encoding.sample_rate(),
            speed_alpha: settings.speed_alpha,
        };
        serde_json::to_string(&body).expect("a body of strings and numbers serialises")
    }

    async fn speak(&self, text: &str, encoding: Encoding) -> Result<Vec<u8>, TtsError> {
        let key = &self.settings.api_key;
        let response = self
            .client
            .post(self.url())
            .header(reqwest::header::AUTHORIZATION, key_header(PROVIDER, &format!("Bearer {key}"))?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(self.body(text, encoding))
            .send()
            .await
            .map_err(|e| request_error(PROVIDER, e))?;
        let mut chunks = audio_of(PROVIDER, response, key, error_message).await?;
        let mut answer = Vec::new();
        while let Some(chunk) = chunks.try_next().await? {
            answer.extend_from_slice(&chunk);
            if answer.len() > ANSWER_LIMIT {
                return Err(audio_error(format!("the answer is larger than {ANSWER_LIMIT} bytes")));
            }
        }
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|e| audio_error(format!("the answer is not the expected JSON: {e}")))?;
        let Some(content) = answer.get("audioContent").and_then(Value::as_str) else {
            return Err(audio_error("the answer has no audioContent".into()));
        };
        let wav = base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| audio_error(format!("the audioContent is not base64: {e}")))?;
        wav::audio_of_file(PROVIDER, &wav, encoding)
    }
}

fn audio_error(message: String) -> TtsError {
    TtsError::Audio { provider: PROVIDER, message }
}

impl Voice for Rime {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let text = text.trim().to_owned();
        Box::pin(async move {
            if text.is_empty() {
                return Ok(Box::pin(futures_util::stream::empty()) as AudioStream);
            }
            let audio = self.speak(&text, encoding).await?;
            let chunks = (!audio.is_empty()).then_some(Ok(audio));
            Ok(Box::pin(futures_util::stream::iter(chunks)) as AudioStream)
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }
}

/// Rime's error bodies: `{"message": "…"}`, `{"error": "…"}` or `{"error": {"message": "…"}}`,
/// or FastAPI's `{"detail": "…"}`.
fn error_message(body: &str) -> Option<String> {
    let body = serde_json::from_str::<Value>(body).ok()?;
    let text = |v: &Value| match v {
        Value::String(message) => Some(message.clone()),
        Value::Object(inner) => inner.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    ["message", "error", "detail"].iter().find_map(|field| body.get(field).and_then(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_asks_for_the_calls_rate_and_only_the_settings_given() {
        let mut settings = RimeSettings::new("key", "cove");
        settings.base_url = "http://127.0.0.1:9/".into();
        let voice = Rime::new(settings.clone());
        assert_eq!(voice.url(), "http://127.0.0.1:9/v1/rime-tts");
        assert_eq!(voice.body("Hi", Encoding::Mulaw8k), r#"{"text":"Hi","speaker":"cove","samplingRate":8000}"#);
        settings.model_id = Some("mistv2".into());
        settings.speed_alpha = Some(1.1);
        assert_eq!(
            Rime::new(settings).body("Hi", Encoding::Linear16k),
            r#"{"text":"Hi","speaker":"cove","modelId":"mistv2","samplingRate":16000,"speedAlpha":1.1}"#
        );
    }

    #[test]
    fn error_messages_come_from_each_shape_of_body() {
        assert_eq!(error_message(r#"{"message":"Unauthorized"}"#).as_deref(), Some("Unauthorized"));
        assert_eq!(error_message(r#"{"error":"speaker not found"}"#).as_deref(), Some("speaker not found"));
        assert_eq!(error_message(r#"{"error":{"message":"too long"}}"#).as_deref(), Some("too long"));
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#).as_deref(), Some("Not Found"));
        assert_eq!(error_message("<html>bad gateway</html>"), None);
    }

    #[test]
    fn the_settings_never_show_the_key() {
        let voice = Rime::new(RimeSettings::new("rime-secret", "cove"));
        assert!(!format!("{voice:?}").contains("rime-secret"));
    }
}
