//! Play.ht over HTTP streaming (`POST /api/v2/tts/stream`), as vocode's `PlayHtSynthesizer` uses
//! it, but asking for WAV at the call's sampling rate: the WAV's header is read as it streams in
//! and its samples are given to the call in its encoding (μ-law for Twilio) chunk by chunk.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use super::{audio_of, http_client, key_header, request_error, wav, AudioStream, TtsError, Voice, DEFAULT_TIMEOUT};
use crate::conversation::audio::Encoding;

const PROVIDER: &str = "playht";

pub const DEFAULT_BASE_URL: &str = "https://api.play.ht";

/// A voice at Play.ht, and how it should sound.
#[derive(Clone)]
pub struct PlayHtSettings {
    pub base_url: String,
    pub api_key: String,
    /// The account's user id (`X-USER-ID`).
    pub user_id: String,
    /// Play.ht's voice (`s3://…/manifest.json` for cloned voices).
    pub voice_id: String,
    /// Play.ht's default (1) when absent.
    pub speed: Option<f32>,
    /// `faster`, `draft`, `low`, `medium`, `high`, `premium`; Play.ht's default when absent.
    pub quality: Option<String>,
    /// How long Play.ht may go quiet: before its answer starts, or between two chunks.
    pub timeout: Duration,
}

impl PlayHtSettings {
    pub fn new(api_key: impl Into<String>, user_id: impl Into<String>, voice_id: impl Into<String>) -> PlayHtSettings {
        PlayHtSettings {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            user_id: user_id.into(),
            voice_id: voice_id.into(),
            speed: None,
            quality: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

// By hand, so the key never reaches a log.
impl std::fmt::Debug for PlayHtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayHtSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("user_id", &self.user_id)
            .field("voice_id", &self.voice_id)
            .field("speed", &self.speed)
            .field("quality", &self.quality)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A Play.ht voice.
#[derive(Debug, Clone)]
pub struct PlayHt {
    settings: PlayHtSettings,
    client: reqwest::Client,
}

impl PlayHt {
    pub fn new(settings: PlayHtSettings) -> PlayHt {
        let client = http_client(settings.timeout);
        PlayHt { settings, client }
    }

    fn url(&self) -> String {
        format!("{}/api/v2/tts/stream", self.settings.base_url.trim_end_matches('/'))
    }

    /// The request body, serialised from typed fields so an `f32` setting goes out as written.
    fn body(&self, text: &str, encoding: Encoding) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            text: &'a str,
            voice: &'a str,
            output_format: &'a str,
            sample_rate: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            speed: Option<f32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            quality: Option<&'a str>,
        }
        let settings = &self.settings;
        let body = Body {
            text,
            voice: &settings.voice_id,
            output_format: "wav",
            sample_rate: encoding.sample_rate(),
            speed: settings.speed,
            quality: settings.quality.as_deref(),
        };
        serde_json::to_string(&body).expect("a body of strings and numbers serialises")
    }
}

impl Voice for PlayHt {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let text = text.trim().to_owned();
        Box::pin(async move {
            if text.is_empty() {
                return Ok(Box::pin(futures_util::stream::empty()) as AudioStream);
            }
            let user_id = reqwest::header::HeaderValue::from_str(&self.settings.user_id).map_err(|_| {
                TtsError::Settings { provider: PROVIDER, message: "the user id is not a valid header value".into() }
            })?;
            let response = self
                .client
                .post(self.url())
                .header(reqwest::header::AUTHORIZATION, key_header(PROVIDER, &self.settings.api_key)?)
                .header("X-USER-ID", user_id)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "audio/wav")
                .body(self.body(&text, encoding))
                .send()
                .await
                .map_err(|e| request_error(PROVIDER, e))?;
            let wav = audio_of(PROVIDER, response, &self.settings.api_key, error_message).await?;
            Ok(wav::audio_of_stream(PROVIDER, wav, encoding))
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }
}

/// Play.ht's error bodies: `{"error_message": "…", "error_id": "…"}`, or `{"message": "…"}`.
fn error_message(body: &str) -> Option<String> {
    let body = serde_json::from_str::<Value>(body).ok()?;
    ["error_message", "message"].iter().find_map(|field| body.get(field).and_then(Value::as_str).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_asks_for_wav_at_the_calls_rate_and_only_the_settings_given() {
        let mut settings = PlayHtSettings::new("key", "user", "s3://voices/manifest.json");
        settings.base_url = "http://127.0.0.1:9/".into();
        let voice = PlayHt::new(settings.clone());
        assert_eq!(voice.url(), "http://127.0.0.1:9/api/v2/tts/stream");
        assert_eq!(
            voice.body("Hi", Encoding::Mulaw8k),
            r#"{"text":"Hi","voice":"s3://voices/manifest.json","output_format":"wav","sample_rate":8000}"#
        );
        settings.speed = Some(1.2);
        settings.quality = Some("premium".into());
        assert_eq!(
            PlayHt::new(settings).body("Hi", Encoding::Linear16k),
            r#"{"text":"Hi","voice":"s3://voices/manifest.json","output_format":"wav","sample_rate":16000,"speed":1.2,"quality":"premium"}"#
        );
    }

    #[test]
    fn error_messages_come_from_each_shape_of_body() {
        assert_eq!(
            error_message(r#"{"error_message":"Invalid credentials","error_id":"UNAUTHORIZED"}"#).as_deref(),
            Some("Invalid credentials")
        );
        assert_eq!(error_message(r#"{"message":"Forbidden"}"#).as_deref(), Some("Forbidden"));
        assert_eq!(error_message("<html>bad gateway</html>"), None);
    }

    #[test]
    fn the_settings_never_show_the_key() {
        let voice = PlayHt::new(PlayHtSettings::new("ph-secret", "user", "v"));
        assert!(!format!("{voice:?}").contains("ph-secret"));
    }
}
