//! The conversation's providers against fakes that speak their real protocols: an
//! OpenAI-compatible chat-completions server, Deepgram's live websocket, ElevenLabs and Azure.

mod llm;
mod stt;
mod tts;
