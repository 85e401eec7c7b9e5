//! ElevenLabs over HTTP streaming (`POST /v1/text-to-speech/{voice_id}/stream`), as vocode's
//! `ElevenLabsSynthesizer` uses it: the carrier's encoding asked for directly (`ulaw_8000` for
//! Twilio, `pcm_16000` for Vonage), the audio read as ElevenLabs generates it.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use super::{audio_of, http_client, key_header, request_error, AudioStream, TtsError, Voice, DEFAULT_TIMEOUT};
use crate::conversation::audio::Encoding;

const PROVIDER: &str = "elevenlabs";

pub const DEFAULT_BASE_URL: &str = "https://api.elevenlabs.io";
/// ElevenLabs' low-latency model.
pub const DEFAULT_MODEL_ID: &str = "eleven_flash_v2_5";

/// A voice at ElevenLabs, and how it should sound.
#[derive(Clone)]
pub struct ElevenLabsSettings {
    pub base_url: String,
    pub api_key: String,
    pub voice_id: String,
    /// [`DEFAULT_MODEL_ID`] when absent.
    pub model_id: Option<String>,
    pub stability: Option<f32>,
    pub similarity_boost: Option<f32>,
    /// 0 (none) to 4 (most, text normalisation off).
    pub optimize_streaming_latency: Option<u8>,
    /// The language to speak (ISO 639-1, the agent's `language`): sent to the models that take
    /// it (ElevenLabs refuses it from the others).
    pub language_code: Option<String>,
    /// How long ElevenLabs may go quiet: before its answer starts, or between two chunks.
    pub timeout: Duration,
}

impl ElevenLabsSettings {
    pub fn new(api_key: impl Into<String>, voice_id: impl Into<String>) -> ElevenLabsSettings {
        ElevenLabsSettings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            voice_id: voice_id.into(),
            model_id: None,
            stability: None,
            similarity_boost: None,
            optimize_streaming_latency: None,
            language_code: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

// By hand, so the key never reaches a log.
impl std::fmt::Debug for ElevenLabsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevenLabsSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("voice_id", &self.voice_id)
            .field("model_id", &self.model_id)
            .field("stability", &self.stability)
            .field("similarity_boost", &self.similarity_boost)
            .field("optimize_streaming_latency", &self.optimize_streaming_latency)
            .field("language_code", &self.language_code)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An ElevenLabs voice.
#[derive(Debug, Clone)]
pub struct ElevenLabs {
    settings: ElevenLabsSettings,
    client: reqwest::Client,
}

impl ElevenLabs {
    pub fn new(settings: ElevenLabsSettings) -> ElevenLabs {
        let client = http_client(settings.timeout);
        ElevenLabs { settings, client }
    }

    fn url(&self, encoding: Encoding) -> Result<url::Url, TtsError> {
        let invalid = |e: &dyn std::fmt::Display| TtsError::Settings {
            provider: PROVIDER,
            message: format!("invalid base URL {:?}: {e}", self.settings.base_url),
        };
        let mut url = url::Url::parse(&self.settings.base_url).map_err(|e| invalid(&e))?;
        let path = ["v1", "text-to-speech", &self.settings.voice_id, "stream"];
        url.path_segments_mut().map_err(|()| invalid(&"it cannot have a path"))?.pop_if_empty().extend(path);
        let output_format = match encoding {
            Encoding::Mulaw8k => "ulaw_8000",
            Encoding::Linear16k => "pcm_16000",
        };
        url.query_pairs_mut().append_pair("output_format", output_format);
        if let Some(level) = self.settings.optimize_streaming_latency {
            url.query_pairs_mut().append_pair("optimize_streaming_latency", &level.to_string());
        }
        Ok(url)
    }

    /// The request body, serialised from typed fields so an `f32` setting goes out as written
    /// (`0.7`, not `0.699999988079071`).
    fn body(&self, text: &str) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            text: &'a str,
            model_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            language_code: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            voice_settings: Option<VoiceSettings>,
        }
        #[derive(Serialize)]
        struct VoiceSettings {
            #[serde(skip_serializing_if = "Option::is_none")]
            stability: Option<f32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            similarity_boost: Option<f32>,
        }
        let settings = &self.settings;
        let voice_settings = (settings.stability.is_some() || settings.similarity_boost.is_some())
            .then_some(VoiceSettings { stability: settings.stability, similarity_boost: settings.similarity_boost });
        let model_id = settings.model_id.as_deref().unwrap_or(DEFAULT_MODEL_ID);
        let language_code = settings.language_code.as_deref().filter(|_| takes_language(model_id));
        let body = Body { text, model_id, language_code, voice_settings };
        serde_json::to_string(&body).expect("a body of strings and numbers serialises")
    }
}

/// Whether a model takes `language_code` (ElevenLabs documents it for its v2.5 Flash and Turbo
/// models and refuses it from the others).
fn takes_language(model_id: &str) -> bool {
    matches!(model_id, "eleven_flash_v2_5" | "eleven_turbo_v2_5")
}

impl Voice for ElevenLabs {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let text = text.trim().to_owned();
        Box::pin(async move {
            if text.is_empty() {
                return Ok(Box::pin(futures_util::stream::empty()) as AudioStream);
            }
            let response = self
                .client
                .post(self.url(encoding)?)
                .header("xi-api-key", key_header(PROVIDER, &self.settings.api_key)?)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(self.body(&text))
                .send()
                .await
                .map_err(|e| request_error(PROVIDER, e))?;
            audio_of(PROVIDER, response, &self.settings.api_key, error_message).await
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }
}

/// ElevenLabs' error bodies: `{"detail":{"status","message"}}`, `{"detail":"…"}`, or FastAPI's
/// `{"detail":[{"loc","msg","type"}]}` for a request it could not validate.
fn error_message(body: &str) -> Option<String> {
    let detail = serde_json::from_str::<Value>(body).ok()?.get("detail")?.clone();
    match detail {
        Value::String(message) => Some(message),
        Value::Object(detail) => detail.get("message").and_then(Value::as_str).map(str::to_owned),
        Value::Array(problems) => {
            let messages: Vec<&str> = problems.iter().filter_map(|p| p.get("msg").and_then(Value::as_str)).collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_voice_and_the_carriers_format() {
        let mut settings = ElevenLabsSettings::new("key", "voice/1");
        settings.base_url = "http://127.0.0.1:9/".into();
        let voice = ElevenLabs::new(settings.clone());
        assert_eq!(
            voice.url(Encoding::Mulaw8k).unwrap().as_str(),
            "http://127.0.0.1:9/v1/text-to-speech/voice%2F1/stream?output_format=ulaw_8000"
        );
        settings.optimize_streaming_latency = Some(3);
        assert_eq!(
            ElevenLabs::new(settings).url(Encoding::Linear16k).unwrap().as_str(),
            "http://127.0.0.1:9/v1/text-to-speech/voice%2F1/stream?output_format=pcm_16000&optimize_streaming_latency=3"
        );
    }

    #[test]
    fn voice_settings_are_sent_only_when_given() {
        let mut settings = ElevenLabsSettings::new("key", "v");
        assert_eq!(ElevenLabs::new(settings.clone()).body("Hi"), r#"{"text":"Hi","model_id":"eleven_flash_v2_5"}"#);
        settings.model_id = Some("eleven_turbo_v2_5".into());
        settings.stability = Some(0.7);
        assert_eq!(
            ElevenLabs::new(settings).body("Hi"),
            r#"{"text":"Hi","model_id":"eleven_turbo_v2_5","voice_settings":{"stability":0.7}}"#
        );
    }

    #[test]
    fn the_language_goes_only_to_the_models_that_take_it() {
        let mut settings = ElevenLabsSettings::new("key", "v");
        settings.language_code = Some("es".into());
        assert_eq!(
            ElevenLabs::new(settings.clone()).body("Hola"),
            r#"{"text":"Hola","model_id":"eleven_flash_v2_5","language_code":"es"}"#
        );
        settings.model_id = Some("eleven_multilingual_v2".into());
        assert_eq!(ElevenLabs::new(settings).body("Hola"), r#"{"text":"Hola","model_id":"eleven_multilingual_v2"}"#);
    }

    #[test]
    fn error_messages_come_from_each_shape_of_body() {
        assert_eq!(
            error_message(r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#).as_deref(),
            Some("Invalid API key")
        );
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#).as_deref(), Some("Not Found"));
        assert_eq!(
            error_message(
                r#"{"detail":[{"loc":["body","text"],"msg":"field required","type":"value_error.missing"}]}"#
            )
            .as_deref(),
            Some("field required")
        );
        assert_eq!(error_message("<html>bad gateway</html>"), None);
    }

    #[test]
    fn the_settings_never_show_the_key() {
        let voice = ElevenLabs::new(ElevenLabsSettings::new("xi-secret", "v"));
        assert!(!format!("{voice:?}").contains("xi-secret"));
    }
}
