//! Azure Speech over REST (`POST /cognitiveservices/v1`): SSML in, raw audio in the carrier's
//! encoding out, streamed. The SSML is vocode's (`AzureSynthesizer`): the voice, a `<lang>` for a
//! language other than US English, and prosody with the agent's pitch and rate.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{audio_of, http_client, key_header, request_error, AudioStream, TtsError, Voice, DEFAULT_TIMEOUT};
use crate::conversation::audio::Encoding;

const PROVIDER: &str = "azure";

/// The language of the SSML document when none is configured (vocode's default).
pub const DEFAULT_LANGUAGE: &str = "en-US";
/// Azure requires a `User-Agent`.
const USER_AGENT: &str = concat!("vocode-server/", env!("CARGO_PKG_VERSION"));

/// A voice at Azure Speech, and how it should sound.
#[derive(Clone)]
pub struct AzureSettings {
    /// `https://{region}.tts.speech.microsoft.com` when absent.
    pub base_url: Option<String>,
    pub region: String,
    pub key: String,
    /// `en-US-AriaNeural`, …
    pub voice_name: String,
    /// Relative pitch in percent (Vocode's `AzureVoice.pitch`; hosted default 0).
    pub pitch: i32,
    /// Relative rate in percent (Vocode's `AzureVoice.rate`; hosted default 15).
    pub rate: i32,
    /// [`DEFAULT_LANGUAGE`] when absent.
    pub language: Option<String>,
    /// How long Azure may go quiet: before its answer starts, or between two chunks.
    pub timeout: Duration,
}

impl AzureSettings {
    /// A voice with Vocode's hosted defaults (pitch 0, rate 15).
    pub fn new(region: impl Into<String>, key: impl Into<String>, voice_name: impl Into<String>) -> AzureSettings {
        AzureSettings {
            base_url: None,
            region: region.into(),
            key: key.into(),
            voice_name: voice_name.into(),
            pitch: 0,
            rate: 15,
            language: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

// By hand, so the key never reaches a log.
impl std::fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSettings")
            .field("base_url", &self.base_url)
            .field("region", &self.region)
            .field("key", &"<redacted>")
            .field("voice_name", &self.voice_name)
            .field("pitch", &self.pitch)
            .field("rate", &self.rate)
            .field("language", &self.language)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An Azure Speech voice.
#[derive(Debug, Clone)]
pub struct Azure {
    settings: AzureSettings,
    client: reqwest::Client,
}

impl Azure {
    pub fn new(settings: AzureSettings) -> Azure {
        let client = http_client(settings.timeout);
        Azure { settings, client }
    }

    fn url(&self) -> String {
        match &self.settings.base_url {
            Some(base) => format!("{}/cognitiveservices/v1", base.trim_end_matches('/')),
            None => format!("https://{}.tts.speech.microsoft.com/cognitiveservices/v1", self.settings.region),
        }
    }

    fn ssml(&self, text: &str) -> String {
        let settings = &self.settings;
        let language = settings.language.as_deref().unwrap_or(DEFAULT_LANGUAGE);
        let prosody =
            format!("<prosody pitch='{:+}%' rate='{:+}%'>{}</prosody>", settings.pitch, settings.rate, escape(text));
        // As vocode does: a voice speaks another language than US English inside `<lang>`.
        let content = if language == DEFAULT_LANGUAGE {
            prosody
        } else {
            format!("<lang xml:lang='{}'>{prosody}</lang>", escape(language))
        };
        format!(
            "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='{}'><voice name='{}'>{content}</voice></speak>",
            escape(language),
            escape(&settings.voice_name)
        )
    }
}

/// The `X-Microsoft-OutputFormat` of an encoding: raw, so no RIFF header precedes the samples.
fn output_format(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Mulaw8k => "raw-8khz-8bit-mono-mulaw",
        Encoding::Linear16k => "raw-16khz-16bit-mono-pcm",
    }
}

/// Text as XML character data or an attribute value. Characters XML 1.0 forbids (most control
/// characters) are dropped, since Azure rejects the whole document for one of them.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

impl Voice for Azure {
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>> {
        let text = text.trim().to_owned();
        Box::pin(async move {
            if text.is_empty() {
                return Ok(Box::pin(futures_util::stream::empty()) as AudioStream);
            }
            let response = self
                .client
                .post(self.url())
                .header("Ocp-Apim-Subscription-Key", key_header(PROVIDER, &self.settings.key)?)
                .header(reqwest::header::CONTENT_TYPE, "application/ssml+xml")
                .header("X-Microsoft-OutputFormat", output_format(encoding))
                .header(reqwest::header::USER_AGENT, USER_AGENT)
                .body(self.ssml(&text))
                .send()
                .await
                .map_err(|e| request_error(PROVIDER, e))?;
            audio_of(PROVIDER, response, &self.settings.key, error_message).await
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }
}

/// Azure's error bodies: `{"error":{"code","message"}}` from the gateway (a wrong key, a wrong
/// region); the speech service itself mostly answers with an empty body.
fn error_message(body: &str) -> Option<String> {
    let error = serde_json::from_str::<Value>(body).ok()?.get("error")?.clone();
    error.get("message").and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(change: impl FnOnce(&mut AzureSettings)) -> Azure {
        let mut settings = AzureSettings::new("westeurope", "key", "en-US-AriaNeural");
        change(&mut settings);
        Azure::new(settings)
    }

    #[test]
    fn the_url_is_the_regions_unless_a_base_is_given() {
        assert_eq!(voice(|_| ()).url(), "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1");
        assert_eq!(
            voice(|s| s.base_url = Some("http://127.0.0.1:9/".into())).url(),
            "http://127.0.0.1:9/cognitiveservices/v1"
        );
    }

    #[test]
    fn the_ssml_carries_voice_prosody_and_escaped_text() {
        assert_eq!(
            voice(|_| ()).ssml("Tom & Jerry <say> 'hi' \"there\""),
            "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-US'>\
             <voice name='en-US-AriaNeural'><prosody pitch='+0%' rate='+15%'>\
             Tom &amp; Jerry &lt;say&gt; &apos;hi&apos; &quot;there&quot;</prosody></voice></speak>"
        );
        assert_eq!(
            voice(|s| {
                s.pitch = -10;
                s.rate = 0;
                s.language = Some("de-DE".into());
                s.voice_name = "de-DE-Katja'Neural".into();
            })
            .ssml("Hallo"),
            "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='de-DE'>\
             <voice name='de-DE-Katja&apos;Neural'><lang xml:lang='de-DE'><prosody pitch='-10%' rate='+0%'>\
             Hallo</prosody></lang></voice></speak>"
        );
    }

    #[test]
    fn characters_xml_forbids_are_dropped() {
        assert_eq!(escape("a\u{0}b\u{7}c\nd\u{ffff}"), "abc\nd");
    }

    #[test]
    fn each_encoding_has_a_raw_format() {
        assert_eq!(output_format(Encoding::Mulaw8k), "raw-8khz-8bit-mono-mulaw");
        assert_eq!(output_format(Encoding::Linear16k), "raw-16khz-16bit-mono-pcm");
    }

    #[test]
    fn error_messages_come_from_the_gateways_body() {
        assert_eq!(
            error_message(r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key."}}"#)
                .as_deref(),
            Some("Access denied due to invalid subscription key.")
        );
        assert_eq!(error_message(""), None);
    }

    #[test]
    fn the_settings_never_show_the_key() {
        let voice = Azure::new(AzureSettings::new("westeurope", "az-secret", "v"));
        assert!(!format!("{voice:?}").contains("az-secret"));
    }
}
