//! The language model the agent thinks with: a provider-neutral chat request, the stream of
//! deltas a model answers with (text, tool-call fragments, the end), the accumulator that folds
//! them back into a reply, and [`Fallback`], which moves to the agent's `llm_fallback` when the
//! first model fails or stalls before it has said anything.
//!
//! Providers: [`openai::OpenAiCompatible`] speaks OpenAI's streaming chat completions (OpenAI,
//! Ollama, vLLM, llama.cpp's server, gateways); [`scripted::Scripted`] is the offline stand-in for
//! sandbox calls with no model configured.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

pub mod openai;
pub mod scripted;

pub use openai::{OpenAiCompatible, OpenAiSettings};
pub use scripted::Scripted;

/// One request for one bot turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// The functions the model may call (the agent's actions); none is sent when empty.
    pub tools: Vec<Tool>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// A message of the conversation so far, in the roles chat models know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChatMessage {
    #[serde(with = "content")]
    System(String),
    #[serde(with = "content")]
    User(String),
    /// What the bot said (`content`), the actions it asked for (`tool_calls`), or both.
    Assistant { content: Option<String>, tool_calls: Vec<ToolCall> },
    /// The result of the tool call `tool_call_id`.
    Tool { tool_call_id: String, content: String },
}

/// A text message kept as `{"role": …, "content": …}`.
mod content {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Content<T> {
        content: T,
    }

    pub fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        Content { content: text }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Content::<String>::deserialize(d).map(|c| c.content)
    }
}

/// A function the model may call: `parameters` is its arguments' JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A call the model asked for. `arguments` is the JSON text the model wrote, unparsed: models
/// sometimes write invalid JSON, and the action decides what to do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A piece of a model's answer, as it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmDelta {
    /// More of the reply's text.
    Text(String),
    /// Tool call `index` begins; its arguments follow as [`LlmDelta::ToolCallArgs`].
    ToolCallStart { index: usize, id: String, name: String },
    /// More of tool call `index`'s arguments.
    ToolCallArgs { index: usize, fragment: String },
    /// The answer is complete: `stop`, `tool_calls`, `length`… (`None` when the server did not say).
    Done { finish_reason: Option<String> },
}

/// Why a model gave no (complete) answer. Messages never contain the API key.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// No answer: the connection failed, was cut, or timed out. Worth another try or another
    /// model.
    #[error("the language model could not be reached: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The server answered with an error status; `message` is its own explanation when it gave
    /// one in OpenAI's shape, else the status's reason.
    #[error("the language model answered HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// The server reported an error in the middle of its answer (vLLM and others do, in a chunk).
    #[error("the language model stopped with an error: {message}")]
    Aborted { message: String },
    /// The answer could not be understood: a chunk that is not the protocol's JSON, or a stream
    /// that ended before the answer did.
    #[error("the language model's answer was malformed: {0}")]
    Malformed(String),
    /// Nothing came within the first-token deadline.
    #[error("the language model said nothing within {0:?}")]
    Stalled(Duration),
}

impl LlmError {
    /// Whether the same request may succeed later or elsewhere: a transport failure, a stall, a
    /// rate limit, a server error or an error mid-answer — not a refusal of the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Transport(_) | LlmError::Stalled(_) | LlmError::Aborted { .. } => true,
            LlmError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            LlmError::Malformed(_) => false,
        }
    }
}

/// A model's answer, delta by delta; it ends after [`LlmDelta::Done`] or an error.
pub type DeltaStream = BoxStream<'static, Result<LlmDelta, LlmError>>;

/// A chat model that streams its answer.
pub trait LanguageModel: Send + Sync {
    /// Sends `request`; resolves once the model has accepted it (its answer then streams).
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>>;

    /// The model's provider, for logs and metrics.
    fn name(&self) -> &str;
}

/// Folds a stream's deltas into the reply's text and its complete tool calls.
///
/// A tool call's id and name come in the first delta of its index, its arguments in fragments
/// after it (possibly interleaved with other indices').
#[derive(Debug, Default)]
pub struct ToolCallAccumulator {
    text: String,
    calls: BTreeMap<usize, ToolCall>,
    finish_reason: Option<String>,
    done: bool,
}

impl ToolCallAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, delta: &LlmDelta) {
        match delta {
            LlmDelta::Text(text) => self.text.push_str(text),
            LlmDelta::ToolCallStart { index, id, name } => {
                let call = self.call(*index);
                // A server that repeats the id and name on every fragment must not reset them.
                if call.id.is_empty() {
                    call.id.clone_from(id);
                }
                if call.name.is_empty() {
                    call.name.clone_from(name);
                }
            }
            LlmDelta::ToolCallArgs { index, fragment } => self.call(*index).arguments.push_str(fragment),
            LlmDelta::Done { finish_reason } => {
                self.finish_reason.clone_from(finish_reason);
                self.done = true;
            }
        }
    }

    fn call(&mut self, index: usize) -> &mut ToolCall {
        self.calls.entry(index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        })
    }

    /// The reply's text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether [`LlmDelta::Done`] has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_deref()
    }

    /// The tool calls, in index order.
    pub fn finish(self) -> Vec<ToolCall> {
        self.calls.into_values().collect()
    }

    /// The reply as the assistant message to put in the history.
    pub fn into_message(self) -> ChatMessage {
        let content = (!self.text.is_empty()).then(|| self.text.clone());
        ChatMessage::Assistant { content, tool_calls: self.finish() }
    }
}

/// A model with a second one behind it (the agent's `llm_fallback`).
///
/// The primary is asked first. If it fails, or says nothing within `first_token_timeout`, before
/// its first delta, the same request goes to the secondary. Once the primary has said something,
/// its answer is the answer: a later error passes through, as switching mid-sentence would make
/// the bot say two different things.
pub struct Fallback {
    pub primary: Arc<dyn LanguageModel>,
    pub secondary: Arc<dyn LanguageModel>,
    pub first_token_timeout: Duration,
}

impl LanguageModel for Fallback {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            let primary = async {
                let mut deltas = self.primary.stream(request.clone()).await?;
                match deltas.next().await {
                    Some(Ok(first)) => Ok(stream::once(async { Ok(first) }).chain(deltas).boxed()),
                    Some(Err(err)) => Err(err),
                    None => Err(LlmError::Malformed("the answer ended before it began".into())),
                }
            };
            let err = match tokio::time::timeout(self.first_token_timeout, primary).await {
                Ok(Ok(deltas)) => return Ok(deltas),
                Ok(Err(err)) => err,
                Err(_) => LlmError::Stalled(self.first_token_timeout),
            };
            tracing::warn!(
                primary = self.primary.name(),
                secondary = self.secondary.name(),
                error = %err,
                "the language model failed before its first token; asking the fallback"
            );
            self.secondary.stream(request).await
        })
    }

    /// The primary's name: the model this stands for.
    fn name(&self) -> &str {
        self.primary.name()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use futures_util::TryStreamExt;

    use super::*;

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::User("hi".into())],
            tools: vec![],
            temperature: None,
            max_tokens: None,
        }
    }

    fn text(s: &str) -> LlmDelta {
        LlmDelta::Text(s.into())
    }

    fn done() -> LlmDelta {
        LlmDelta::Done { finish_reason: Some("stop".into()) }
    }

    /// One step of a fake model's answer.
    #[derive(Clone)]
    enum Step {
        Delta(LlmDelta),
        Fail(&'static str),
        Wait(Duration),
    }

    /// A model that refuses the request, or answers with its steps; it counts its requests.
    struct Fake {
        name: &'static str,
        refuse: Option<&'static str>,
        steps: Vec<Step>,
        requests: AtomicUsize,
        seen: Mutex<Vec<ChatRequest>>,
    }

    impl Fake {
        fn new(name: &'static str, steps: Vec<Step>) -> Arc<Fake> {
            Arc::new(Fake { name, refuse: None, steps, requests: AtomicUsize::new(0), seen: Mutex::default() })
        }

        fn refusing(name: &'static str, why: &'static str) -> Arc<Fake> {
            Arc::new(Fake {
                name,
                refuse: Some(why),
                steps: vec![],
                requests: AtomicUsize::new(0),
                seen: Mutex::default(),
            })
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    impl LanguageModel for Fake {
        fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(request);
            let steps = self.steps.clone();
            let refuse = self.refuse;
            Box::pin(async move {
                if let Some(why) = refuse {
                    return Err(LlmError::Transport(why.into()));
                }
                let deltas = stream::iter(steps).filter_map(|step| async move {
                    match step {
                        Step::Delta(delta) => Some(Ok(delta)),
                        Step::Fail(why) => Some(Err(LlmError::Aborted { message: why.into() })),
                        Step::Wait(pause) => {
                            tokio::time::sleep(pause).await;
                            None
                        }
                    }
                });
                Ok(deltas.boxed())
            })
        }

        fn name(&self) -> &str {
            self.name
        }
    }

    fn fallback(primary: &Arc<Fake>, secondary: &Arc<Fake>) -> Fallback {
        Fallback { primary: primary.clone(), secondary: secondary.clone(), first_token_timeout: Duration::from_secs(2) }
    }

    async fn answer(model: &dyn LanguageModel) -> Result<Vec<LlmDelta>, LlmError> {
        model.stream(request()).await?.try_collect().await
    }

    #[tokio::test]
    async fn the_primary_answers_when_it_can() {
        let primary = Fake::new("a", vec![Step::Delta(text("from a")), Step::Delta(done())]);
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        let model = fallback(&primary, &secondary);
        assert_eq!(answer(&model).await.unwrap(), vec![text("from a"), done()]);
        assert_eq!(secondary.requests(), 0);
        assert_eq!(model.name(), "a");
    }

    #[tokio::test]
    async fn a_primary_that_refuses_hands_the_same_request_to_the_secondary() {
        let primary = Fake::refusing("a", "connection refused");
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        let model = fallback(&primary, &secondary);
        assert_eq!(answer(&model).await.unwrap(), vec![text("from b"), done()]);
        assert_eq!((primary.requests(), secondary.requests()), (1, 1));
        assert_eq!(secondary.seen.lock().unwrap()[0], request());
    }

    #[tokio::test]
    async fn an_error_before_the_first_delta_falls_back() {
        let primary = Fake::new("a", vec![Step::Fail("overloaded")]);
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        assert_eq!(answer(&fallback(&primary, &secondary)).await.unwrap(), vec![text("from b"), done()]);
    }

    #[tokio::test]
    async fn an_answer_that_ends_before_it_begins_falls_back() {
        let primary = Fake::new("a", vec![]);
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        assert_eq!(answer(&fallback(&primary, &secondary)).await.unwrap(), vec![text("from b"), done()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_silent_past_the_deadline_falls_back() {
        let primary =
            Fake::new("a", vec![Step::Wait(Duration::from_secs(3)), Step::Delta(text("late")), Step::Delta(done())]);
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        let started = tokio::time::Instant::now();
        assert_eq!(answer(&fallback(&primary, &secondary)).await.unwrap(), vec![text("from b"), done()]);
        assert_eq!(started.elapsed(), Duration::from_secs(2), "switched at the deadline, not before or after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_just_inside_the_deadline_is_kept() {
        let primary = Fake::new(
            "a",
            vec![Step::Wait(Duration::from_millis(1999)), Step::Delta(text("in time")), Step::Delta(done())],
        );
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        assert_eq!(answer(&fallback(&primary, &secondary)).await.unwrap(), vec![text("in time"), done()]);
        assert_eq!(secondary.requests(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_primary_has_spoken_its_errors_and_pauses_pass_through() {
        let primary = Fake::new(
            "a",
            vec![Step::Delta(text("Sure,")), Step::Wait(Duration::from_secs(30)), Step::Fail("connection reset")],
        );
        let secondary = Fake::new("b", vec![Step::Delta(text("from b")), Step::Delta(done())]);
        let model = fallback(&primary, &secondary);
        let mut deltas = model.stream(request()).await.unwrap();
        assert_eq!(deltas.next().await.unwrap().unwrap(), text("Sure,"));
        let err = deltas.next().await.unwrap().unwrap_err();
        assert!(matches!(err, LlmError::Aborted { ref message } if message == "connection reset"), "{err:?}");
        assert!(deltas.next().await.is_none());
        assert_eq!(secondary.requests(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn when_both_fail_the_secondarys_error_is_the_answer() {
        let primary = Fake::new("a", vec![Step::Wait(Duration::from_secs(60))]);
        let secondary = Fake::refusing("b", "no route to host");
        let err = answer(&fallback(&primary, &secondary)).await.unwrap_err();
        assert!(matches!(err, LlmError::Transport(_)) && err.to_string().contains("no route to host"), "{err}");
    }

    #[test]
    fn the_accumulator_assembles_text_and_interleaved_tool_calls_in_index_order() {
        let mut acc = ToolCallAccumulator::new();
        let deltas = [
            text("Let me "),
            text("check."),
            LlmDelta::ToolCallStart { index: 1, id: "call_b".into(), name: "lookup".into() },
            LlmDelta::ToolCallArgs { index: 1, fragment: "{\"q\":".into() },
            LlmDelta::ToolCallStart { index: 0, id: "call_a".into(), name: "action_dtmf".into() },
            LlmDelta::ToolCallArgs { index: 0, fragment: "{\"buttons\"".into() },
            LlmDelta::ToolCallArgs { index: 1, fragment: "\"x\"}".into() },
            LlmDelta::ToolCallArgs { index: 0, fragment: ":\"12\"}".into() },
        ];
        for delta in &deltas {
            acc.push(delta);
        }
        assert!(!acc.is_done());
        acc.push(&LlmDelta::Done { finish_reason: Some("tool_calls".into()) });
        assert!(acc.is_done());
        assert_eq!(acc.text(), "Let me check.");
        assert_eq!(acc.finish_reason(), Some("tool_calls"));
        let calls = acc.finish();
        assert_eq!(
            calls,
            vec![
                ToolCall { id: "call_a".into(), name: "action_dtmf".into(), arguments: "{\"buttons\":\"12\"}".into() },
                ToolCall { id: "call_b".into(), name: "lookup".into(), arguments: "{\"q\":\"x\"}".into() },
            ]
        );
    }

    #[test]
    fn a_repeated_start_does_not_reset_a_call() {
        let mut acc = ToolCallAccumulator::new();
        acc.push(&LlmDelta::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() });
        acc.push(&LlmDelta::ToolCallArgs { index: 0, fragment: "{".into() });
        acc.push(&LlmDelta::ToolCallStart { index: 0, id: "call_other".into(), name: "g".into() });
        acc.push(&LlmDelta::ToolCallArgs { index: 0, fragment: "}".into() });
        assert_eq!(acc.finish(), vec![ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() }]);
    }

    #[test]
    fn the_reply_becomes_the_assistant_message() {
        let mut acc = ToolCallAccumulator::new();
        acc.push(&LlmDelta::ToolCallStart { index: 0, id: "c".into(), name: "f".into() });
        assert_eq!(
            acc.into_message(),
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![ToolCall { id: "c".into(), name: "f".into(), arguments: String::new() }]
            }
        );
        let mut acc = ToolCallAccumulator::new();
        acc.push(&text("Hi."));
        assert_eq!(acc.into_message(), ChatMessage::Assistant { content: Some("Hi.".into()), tool_calls: vec![] });
    }

    #[test]
    fn transient_errors_are_told_from_refusals() {
        assert!(LlmError::Transport("reset".into()).is_transient());
        assert!(LlmError::Stalled(Duration::from_secs(1)).is_transient());
        assert!(LlmError::Status { status: 429, message: String::new() }.is_transient());
        assert!(LlmError::Status { status: 503, message: String::new() }.is_transient());
        assert!(!LlmError::Status { status: 401, message: String::new() }.is_transient());
        assert!(!LlmError::Malformed(String::new()).is_transient());
    }
}
