//! The model's turn: the conversation so far (with what the agent's knowledge finds) streamed
//! from the model in a child task, cut into sentences, each voiced as soon as it is complete, the
//! tools it calls kept for once what it says has been played. The child reports to the engine's
//! loop, tagged with its turn.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Engine, TurnLatency};
use crate::conversation::actions::Action;
use crate::conversation::audio::Encoding;
use crate::conversation::llm::{ChatRequest, LanguageModel, LlmDelta, Tool, ToolCall, ToolCallAccumulator};
use crate::conversation::tts::Voice;

/// What the bot says when its model fails before saying anything.
pub const APOLOGY: &str = "Sorry, I'm having trouble right now.";

/// A turn's generation, as its child task reports it.
pub(super) enum Generated {
    /// A sentence the voice is about to say.
    Sentence(String),
    FirstToken,
    Audio(Vec<u8>),
    /// The model called these tools (they run once what it says now has been played).
    ToolCalls(Vec<ToolCall>),
    /// Nothing more will come.
    Done,
}

pub(super) type Reports = mpsc::Sender<(u64, Generated)>;

impl Engine {
    /// A turn of the model's on the conversation so far, spoken as it streams.
    pub(super) fn generate_turn(&mut self, latency: Option<(Instant, TurnLatency)>) {
        let turn = self.begin_turn(true, latency);
        let request = ChatRequest {
            model: self.config.model.clone(),
            messages: self.history.clone(),
            tools: self.tools(),
            temperature: self.config.temperature,
            max_tokens: Some(256),
        };
        let (llm, voice, encoding, out) = (
            self.providers.llm.clone(),
            self.providers.voice.clone(),
            self.config.line.encoding,
            self.generated.0.clone(),
        );
        let knowledge = self.providers.knowledge.clone();
        self.child = Some(tokio::spawn(async move {
            let mut request = request;
            // In the child, bounded: this task never waits on the index.
            if let Some(knowledge) = knowledge {
                crate::conversation::knowledge::consult(&*knowledge, &mut request).await;
            }
            generate(llm, voice, encoding, request, turn, out).await
        }));
    }

    /// The agent's actions the model may call.
    fn tools(&self) -> Vec<Tool> {
        self.config.actions.iter().filter_map(Action::tool).collect()
    }

    /// A report from the current turn's generation.
    pub(super) async fn generation(&mut self, generated: Generated) {
        let now = Instant::now();
        let Some(speaking) = self.speaking.as_mut() else {
            return;
        };
        match generated {
            Generated::FirstToken => {
                if let Some((at, latency)) = speaking.latency.as_mut() {
                    latency.first_token.get_or_insert(now - *at);
                }
            }
            Generated::Sentence(sentence) => {
                if !speaking.text.is_empty() {
                    speaking.text.push(' ');
                }
                speaking.text.push_str(&sentence);
            }
            Generated::Audio(audio) => {
                if let Some((at, latency)) = speaking.latency.as_mut() {
                    latency.first_audio.get_or_insert(now - *at);
                }
                speaking.playout.push(&audio);
                self.pump().await;
            }
            Generated::ToolCalls(calls) => speaking.tool_calls.extend(calls),
            Generated::Done => {
                speaking.generation_done = true;
                speaking.playout.finish();
                self.child = None;
                self.pump().await;
            }
        }
    }
}

/// Synthesizes one sentence into the turn's audio.
pub(super) async fn say(
    voice: &dyn Voice,
    encoding: Encoding,
    text: &str,
    turn: u64,
    out: &mpsc::Sender<(u64, Generated)>,
) -> bool {
    if out.send((turn, Generated::Sentence(text.to_owned()))).await.is_err() {
        return false;
    }
    let mut last_error = None;
    // A voice that fails is tried once more before the sentence is given up.
    for _ in 0..2 {
        match voice.synthesize(text, encoding).await {
            Ok(mut audio) => {
                while let Some(chunk) = audio.next().await {
                    match chunk {
                        Ok(bytes) => {
                            if out.send((turn, Generated::Audio(bytes))).await.is_err() {
                                return false;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the voice failed mid-sentence");
                            return true;
                        }
                    }
                }
                return true;
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    tracing::warn!(error = last_error.as_deref().unwrap_or(""), "the voice failed twice: the sentence stays text only");
    true
}

/// Where a model's streamed text may be cut into a sentence to synthesize: after `.`, `!` or `?`
/// followed by a space, once there are at least three words (vocode's rule).
pub(super) fn sentence_end(buffer: &str) -> Option<usize> {
    let mut words = 0;
    let mut previous_space = true;
    let bytes = buffer.as_bytes();
    for (i, c) in buffer.char_indices() {
        if c.is_whitespace() {
            previous_space = true;
        } else {
            if previous_space {
                words += 1;
            }
            previous_space = false;
        }
        if matches!(c, '.' | '!' | '?') && words >= 3 && bytes.get(i + 1).is_some_and(|b| b.is_ascii_whitespace()) {
            return Some(i + 1);
        }
    }
    None
}

/// A turn's generation: the model's stream cut into sentences, each synthesized as soon as it is
/// complete.
async fn generate(
    llm: Arc<dyn LanguageModel>,
    voice: Arc<dyn Voice>,
    encoding: Encoding,
    request: ChatRequest,
    turn: u64,
    out: mpsc::Sender<(u64, Generated)>,
) {
    let mut failure = None;
    let mut spoke = false;
    let mut buffer = String::new();
    let mut tools = ToolCallAccumulator::default();
    match llm.stream(request).await {
        Ok(mut stream) => {
            let mut first = true;
            while let Some(delta) = stream.next().await {
                let delta = match delta {
                    Ok(delta) => delta,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                };
                if first {
                    first = false;
                    let _ = out.send((turn, Generated::FirstToken)).await;
                }
                tools.push(&delta);
                if let LlmDelta::Text(text) = &delta {
                    buffer.push_str(text);
                    while let Some(end) = sentence_end(&buffer) {
                        let sentence: String = buffer.drain(..end).collect();
                        if !say(&*voice, encoding, sentence.trim(), turn, &out).await {
                            return;
                        }
                        spoke = true;
                    }
                }
            }
        }
        Err(e) => failure = Some(e.to_string()),
    }
    if !buffer.trim().is_empty() {
        say(&*voice, encoding, buffer.trim(), turn, &out).await;
        spoke = true;
    }
    let failed = failure.is_some();
    if let Some(failure) = failure {
        tracing::warn!(%failure, model = llm.name(), "the model failed this turn");
        metrics::counter!("vocode_conversation_model_failures_total").increment(1);
        // Never a silent turn: if the model said nothing, the bot says why it cannot answer.
        if !spoke {
            say(&*voice, encoding, APOLOGY, turn, &out).await;
        }
    }
    let calls: Vec<ToolCall> = if failed { Vec::new() } else { tools.finish() };
    // What the model wants said before its actions run (vocode's `user_message`).
    for call in &calls {
        let said = serde_json::from_str::<Value>(&call.arguments).ok();
        if let Some(message) = said.as_ref().and_then(|a| a["user_message"].as_str()).filter(|m| !m.trim().is_empty()) {
            if !say(&*voice, encoding, message.trim(), turn, &out).await {
                return;
            }
        }
    }
    if !calls.is_empty() {
        let _ = out.send((turn, Generated::ToolCalls(calls))).await;
    }
    let _ = out.send((turn, Generated::Done)).await;
}
