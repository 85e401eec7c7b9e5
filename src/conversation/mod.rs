//! The conversation on a call's audio: the agent listens, thinks and speaks in real time.
//!
//! This module knows nothing of HTTP, SQL or carrier framing. It works on audio in one of the
//! carriers' encodings ([`audio::Encoding`]), talks to speech-to-text ([`stt`]), language-model
//! ([`llm`]) and text-to-speech ([`tts`]) providers through traits, each with its base URL
//! configurable, and reports what happens as conversation events.

pub mod agent;
pub mod audio;
pub mod engine;
pub mod llm;
pub mod media;
pub mod playout;
pub mod stt;
pub mod tts;
pub mod turns;
