//! Text-to-speech: the agent's words as audio in the call's encoding, streamed as the provider
//! produces it so playout can start on the first chunk. The engine asks for one sentence at a time.
//!
//! Implementations: [`elevenlabs`] (HTTP streaming), [`azure`] (REST with SSML), [`rime`] (a
//! whole WAV file per sentence), [`playht`] (a streamed WAV file); [`tone`], which stands in on
//! the sandbox carrier's simulated calls when no voice is configured; [`flite`], the server's own
//! voice, for `voice_vocode` when no cloud voice is configured for it. [`wav`] reads the WAV files.

pub mod azure;
pub mod elevenlabs;
pub mod flite;
pub mod playht;
pub mod rime;
pub mod tone;
pub mod wav;

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use super::audio::Encoding;

pub use azure::{Azure, AzureSettings};
pub use elevenlabs::{ElevenLabs, ElevenLabsSettings};
pub use playht::{PlayHt, PlayHtSettings};
pub use rime::{Rime, RimeSettings};

/// Raw audio in the requested encoding (no container, no WAV header), chunk by chunk as it
/// arrives; chunk boundaries fall anywhere, even inside a 16-bit sample.
pub type AudioStream = BoxStream<'static, Result<Vec<u8>, TtsError>>;

/// How long a provider may go quiet, before its answer starts or between two chunks, unless
/// configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why speech could not be had. Never carries a provider key.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("{provider}: the request failed: {source}")]
    Transport {
        provider: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{provider}: no answer in time")]
    Timeout {
        provider: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{provider} answered {status}: {message}")]
    Status { provider: &'static str, status: u16, message: String },
    #[error("{provider} cannot produce {encoding:?} audio")]
    UnsupportedEncoding { provider: &'static str, encoding: Encoding },
    #[error("{provider}: {message}")]
    Settings { provider: &'static str, message: String },
    #[error("{provider} answered audio that cannot be played: {message}")]
    Audio { provider: &'static str, message: String },
}

/// A voice the agent can speak with.
pub trait Voice: Send + Sync {
    /// Starts synthesising `text`; resolves once the provider has begun to answer.
    fn synthesize(&self, text: &str, encoding: Encoding) -> BoxFuture<'_, Result<AudioStream, TtsError>>;

    /// The provider's name, for logs and metrics.
    fn name(&self) -> &str;
}

/// The HTTP client a provider uses: the timeout bounds each wait (connecting, the answer's
/// start, every chunk), not the whole answer, which lasts as long as the speech does.
fn http_client(timeout: Duration) -> reqwest::Client {
    super::shared_http_client(format!("voice, each wait {timeout:?}"), || {
        reqwest::Client::builder().connect_timeout(timeout).read_timeout(timeout)
    })
}

fn request_error(provider: &'static str, source: reqwest::Error) -> TtsError {
    if source.is_timeout() {
        TtsError::Timeout { provider, source }
    } else {
        TtsError::Transport { provider, source }
    }
}

/// The largest part of an error answer read for its message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// The audio of a successful answer, or the provider's error as `message_of` reads it from the
/// body. The key is cut out of any message, in case a provider echoes it.
async fn audio_of(
    provider: &'static str,
    response: reqwest::Response,
    secret: &str,
    message_of: fn(&str) -> Option<String>,
) -> Result<AudioStream, TtsError> {
    let status = response.status();
    if status.is_success() {
        let chunks = response
            .bytes_stream()
            .map_err(move |e| request_error(provider, e))
            .try_filter(|chunk| std::future::ready(!chunk.is_empty()))
            .map_ok(|chunk| chunk.to_vec());
        return Ok(chunks.boxed());
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let message = message_of(&text)
        .or_else(|| {
            let text = text.trim();
            (!text.is_empty()).then(|| text.chars().take(300).collect())
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("no reason given").to_owned());
    Err(TtsError::Status { provider, status: status.as_u16(), message: redact(&message, secret) })
}

fn redact(message: &str, secret: &str) -> String {
    if secret.is_empty() {
        message.to_owned()
    } else {
        message.replace(secret, "<redacted>")
    }
}

/// A sensitive header value from a key, or an error that does not show it.
fn key_header(provider: &'static str, key: &str) -> Result<reqwest::header::HeaderValue, TtsError> {
    let mut value = reqwest::header::HeaderValue::from_str(key)
        .map_err(|_| TtsError::Settings { provider, message: "the API key is not a valid header value".into() })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_cut_out_of_messages() {
        assert_eq!(redact("bad key sk-123 given", "sk-123"), "bad key <redacted> given");
        assert_eq!(redact("nothing to hide", ""), "nothing to hide");
    }

    #[test]
    fn a_bad_key_header_does_not_show_the_key() {
        let error = key_header("elevenlabs", "sk-1\n23").unwrap_err().to_string();
        assert!(!error.contains("sk-1"), "{error}");
        assert!(key_header("elevenlabs", "sk-123").unwrap().is_sensitive());
    }
}
