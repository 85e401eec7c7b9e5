//! The conversation on a call's audio: the agent listens, thinks and speaks in real time.
//!
//! This module knows nothing of HTTP, SQL or carrier framing. It works on audio in one of the
//! carriers' encodings ([`audio::Encoding`]), talks to speech-to-text ([`stt`]), language-model
//! ([`llm`]) and text-to-speech ([`tts`]) providers through traits, each with its base URL
//! configurable, and reports what happens as conversation events.

pub mod actions;
pub mod agent;
pub mod audio;
pub mod context;
pub mod denoise;
pub mod do_not_call;
pub mod end_of_turn;
pub mod engine;
pub mod knowledge;
pub mod line;
pub mod llm;
pub mod local;
pub mod onnx;
pub mod playout;
pub mod recording;
pub mod settings;
pub mod stt;
pub mod tts;
pub mod turns;
pub mod vad;

/// One HTTP client per configuration for the whole process. Building a client loads the TLS roots
/// (milliseconds, on every `calls/create` that checks an agent's providers), and a shared client
/// keeps its connections: the next call's requests to the same provider skip the TLS handshake.
pub(crate) fn shared_http_client(
    configuration: String,
    build: impl FnOnce() -> reqwest::ClientBuilder,
) -> reqwest::Client {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static CLIENTS: LazyLock<Mutex<HashMap<String, reqwest::Client>>> = LazyLock::new(Mutex::default);
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    clients
        .entry(configuration)
        .or_insert_with(|| build().build().expect("an HTTP client with the built-in TLS roots"))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_builds_its_client_once() {
        let mut built = 0;
        for _ in 0..3 {
            shared_http_client("test: once".into(), || {
                built += 1;
                reqwest::Client::builder()
            });
        }
        shared_http_client("test: another".into(), || {
            built += 1;
            reqwest::Client::builder()
        });
        assert_eq!(built, 2);
    }
}
