//! OpenAI's chat completions, streamed: `POST {base}/chat/completions` with `"stream": true`,
//! answered with server-sent events (`data: {chunk}` … `data: [DONE]`). Ollama, vLLM, llama.cpp's
//! server and most gateways speak the same protocol, so the base URL and the key are settings,
//! and the key may be absent.
//!
//! The events are parsed here from the raw bytes: a read may hold several events or end in the
//! middle of one. Some servers leave things out, and each gap is tolerated:
//! - no `[DONE]` after a `finish_reason`;
//! - no `id` on a tool call (one is made from its index);
//! - no `index` (its position is used).
//!
//! A stream that ends before any `finish_reason` or `[DONE]` was cut short, and is an error.
//!
//! [`LlmDelta::Done`] comes as soon as the `finish_reason` does. Polling on past it reads what is
//! left of the body (the usage chunk, `[DONE]`; briefly, and dropped), so that the connection can
//! carry the next turn without a new handshake.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{ChatMessage, ChatRequest, DeltaStream, LanguageModel, LlmDelta, LlmError};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// How much of an error answer is read.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// How long, and how much, is read after the answer's end to leave its connection reusable.
const MAX_DRAIN_TIME: Duration = Duration::from_millis(100);
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// The longest event line accepted: a chunk is a few hundred bytes, so this is a server gone wrong.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Where the model is and how long it may take.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// Up to and including the version, as OpenAI's SDKs take it: `https://api.openai.com/v1`,
    /// `http://localhost:11434/v1` (Ollama). A trailing slash is fine.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; nothing is sent when `None` (Ollama and local servers).
    pub api_key: Option<String>,
    /// For the whole request, answer included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// From sending the request to the first delta of the answer ([`LlmError::Stalled`] after).
    pub first_token_timeout: Duration,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: DEFAULT_BASE_URL.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "****"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .finish()
    }
}

/// A client of one OpenAI-compatible server.
pub struct OpenAiCompatible {
    http: reqwest::Client,
    url: String,
    name: String,
    api_key: Option<String>,
    first_token_timeout: Duration,
}

impl OpenAiCompatible {
    pub fn new(settings: OpenAiSettings) -> Self {
        let configuration = format!("model, {:?} in all, {:?} to connect", settings.timeout, settings.connect_timeout);
        let http = crate::conversation::shared_http_client(configuration, || {
            reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(settings.connect_timeout)
                .user_agent(concat!("vocode-server/", env!("CARGO_PKG_VERSION")))
        });
        let base = settings.base_url.trim_end_matches('/');
        // The server's host names the provider in logs: `api.openai.com`, `localhost:11434`.
        let name = url::Url::parse(base)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(url.port().map_or(host.clone(), |port| format!("{host}:{port}")))
            })
            .unwrap_or_else(|| base.to_owned());
        OpenAiCompatible {
            http,
            url: format!("{base}/chat/completions"),
            name,
            api_key: settings.api_key.filter(|key| !key.is_empty()),
            first_token_timeout: settings.first_token_timeout,
        }
    }

    /// The error for a non-2xx answer: the server's message if it gave one, never the key.
    async fn status_error(&self, response: reqwest::Response) -> LlmError {
        let status = response.status();
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(Ok(chunk)) = chunks.next().await {
            let room = MAX_ERROR_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == MAX_ERROR_BYTES {
                break;
            }
        }
        let message = error_message(&body).unwrap_or_else(|| reason(status));
        LlmError::Status { status: status.as_u16(), message: self.redact(message) }
    }

    fn redact(&self, text: String) -> String {
        match &self.api_key {
            Some(key) if text.contains(key.as_str()) => text.replace(key.as_str(), "****"),
            _ => text,
        }
    }
}

impl LanguageModel for OpenAiCompatible {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            let first_token_by = Instant::now() + self.first_token_timeout;
            let mut post = self.http.post(&self.url).header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(key) = &self.api_key {
                post = post.bearer_auth(key);
            }
            let sent = tokio::time::timeout_at(first_token_by, post.json(&request_body(&request)).send());
            let response = match sent.await {
                Err(_) => return Err(LlmError::Stalled(self.first_token_timeout)),
                Ok(response) => response.map_err(transport)?,
            };
            if !response.status().is_success() {
                let status = response.status();
                let said = tokio::time::timeout_at(first_token_by, self.status_error(response)).await;
                return Err(
                    said.unwrap_or_else(|_| LlmError::Status { status: status.as_u16(), message: reason(status) })
                );
            }
            let body = response.bytes_stream().map_err(transport);
            Ok(deltas(body, Some((first_token_by, self.first_token_timeout))).boxed())
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

fn reason(status: reqwest::StatusCode) -> String {
    status.canonical_reason().unwrap_or("no reason given").to_owned()
}

fn transport(err: reqwest::Error) -> LlmError {
    LlmError::Transport(Box::new(err))
}

/// The request's JSON body.
pub fn request_body(request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(message_json).collect();
    let mut body = json!({"model": request.model, "stream": true, "messages": messages});
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                json!({"type": "function", "function": {
                    "name": tool.name, "description": tool.description, "parameters": tool.parameters,
                }})
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

fn message_json(message: &ChatMessage) -> Value {
    match message {
        ChatMessage::System(content) => json!({"role": "system", "content": content}),
        ChatMessage::User(content) => json!({"role": "user", "content": content}),
        ChatMessage::Assistant { content, tool_calls } => {
            let mut out = json!({"role": "assistant", "content": content});
            // OpenAI refuses an empty `tool_calls` array.
            if !tool_calls.is_empty() {
                let calls: Vec<Value> = tool_calls
                    .iter()
                    .map(|call| {
                        json!({"id": call.id, "type": "function", "function": {
                            "name": call.name, "arguments": call.arguments,
                        }})
                    })
                    .collect();
                out["tool_calls"] = Value::Array(calls);
            }
            out
        }
        ChatMessage::Tool { tool_call_id, content } => {
            json!({"role": "tool", "tool_call_id": tool_call_id, "content": content})
        }
    }
}

/// `{"error": {"message": …}}` (OpenAI, vLLM) or `{"error": "…"}` (Ollama).
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorField,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object {
        #[serde(default)]
        message: String,
    },
    Text(String),
}

impl ErrorField {
    fn message(self) -> String {
        match self {
            ErrorField::Object { message } | ErrorField::Text(message) => message,
        }
    }
}

fn error_message(body: &[u8]) -> Option<String> {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    Some(envelope.error.message()).filter(|m| !m.trim().is_empty())
}

/// The deltas in a response body. Until the first delta, reading is bounded by `first_token`
/// (the deadline, and the timeout it came from).
pub(crate) fn deltas<S, B>(body: S, first_token: Option<(Instant, Duration)>) -> DeltaStream
where
    S: Stream<Item = Result<B, LlmError>> + Send + Unpin + 'static,
    B: AsRef<[u8]> + Send + 'static,
{
    let reading =
        Reading { body, decoder: Decoder::default(), pending: VecDeque::new(), fault: None, first_token, over: false };
    futures_util::stream::unfold(reading, |mut reading| async move {
        let item = reading.next().await?;
        Some((item, reading))
    })
    .boxed()
}

struct Reading<S> {
    body: S,
    decoder: Decoder,
    pending: VecDeque<LlmDelta>,
    /// The error to report once the deltas decoded before it are out.
    fault: Option<LlmError>,
    first_token: Option<(Instant, Duration)>,
    over: bool,
}

impl<S, B> Reading<S>
where
    S: Stream<Item = Result<B, LlmError>> + Unpin,
    B: AsRef<[u8]>,
{
    async fn next(&mut self) -> Option<Result<LlmDelta, LlmError>> {
        loop {
            if let Some(delta) = self.pending.pop_front() {
                self.first_token = None;
                return Some(Ok(delta));
            }
            if let Some(err) = self.fault.take() {
                self.over = true;
                return Some(Err(err));
            }
            if self.over {
                return None;
            }
            if self.decoder.finished {
                self.over = true;
                self.drain().await;
                return None;
            }
            let read = match self.first_token {
                Some((deadline, timeout)) => match tokio::time::timeout_at(deadline, self.body.next()).await {
                    Ok(read) => read,
                    Err(_) => {
                        self.over = true;
                        return Some(Err(LlmError::Stalled(timeout)));
                    }
                },
                None => self.body.next().await,
            };
            let decoded = match read {
                Some(Ok(bytes)) => self.decoder.feed(bytes.as_ref(), &mut self.pending),
                Some(Err(err)) => Err(err),
                None => {
                    self.over = true;
                    self.decoder.end(&mut self.pending)
                }
            };
            self.fault = decoded.err();
        }
    }

    /// Reads what follows the answer (the usage chunk, `[DONE]`) to the end of the body, for a
    /// little while: a body read to its end leaves its connection to the pool for the next turn,
    /// where one dropped half-read would cost the next turn a new connection (and TLS handshake).
    async fn drain(&mut self) {
        let mut left = MAX_DRAIN_BYTES;
        let _ = tokio::time::timeout(MAX_DRAIN_TIME, async {
            while let Some(Ok(bytes)) = self.body.next().await {
                left = left.saturating_sub(bytes.as_ref().len());
                if left == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// Server-sent events in, deltas out.
#[derive(Default)]
struct Decoder {
    /// Bytes of a line not yet complete.
    line: Vec<u8>,
    /// The `data` of the event being read, and whether it has any (it may be empty).
    data: String,
    has_data: bool,
    /// The tool-call indices already started.
    started: BTreeSet<usize>,
    /// A `finish_reason` or `[DONE]` was seen: the answer is complete, and what follows is not read.
    finished: bool,
}

impl Decoder {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<LlmDelta>) -> Result<(), LlmError> {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            if self.finished {
                return Ok(());
            }
            self.line.extend_from_slice(&rest[..newline]);
            rest = &rest[newline + 1..];
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
        }
        if !self.finished {
            self.line.extend_from_slice(rest);
            if self.line.len() > MAX_LINE_BYTES {
                return Err(LlmError::Malformed(format!("a line longer than {MAX_LINE_BYTES} bytes")));
            }
        }
        Ok(())
    }

    /// The body has ended: a last line without its newline counts, as does an event without its
    /// blank line; then the answer must be complete.
    fn end(&mut self, out: &mut VecDeque<LlmDelta>) -> Result<(), LlmError> {
        if !self.finished && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
        }
        if !self.finished && self.has_data {
            self.dispatch(out)?;
        }
        if self.finished {
            Ok(())
        } else {
            Err(LlmError::Malformed("the stream ended before the answer did (no finish_reason, no [DONE])".into()))
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut VecDeque<LlmDelta>) -> Result<(), LlmError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| LlmError::Malformed("a line that is not UTF-8".into()))?;
        if line.is_empty() {
            return if self.has_data { self.dispatch(out) } else { Ok(()) };
        }
        if line.starts_with(':') {
            return Ok(()); // a comment: keep-alives
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            self.has_data = true;
        }
        // `event:`, `id:` and `retry:` say nothing this protocol uses.
        Ok(())
    }

    fn dispatch(&mut self, out: &mut VecDeque<LlmDelta>) -> Result<(), LlmError> {
        let data = std::mem::take(&mut self.data);
        self.has_data = false;
        if data.trim() == "[DONE]" {
            out.push_back(LlmDelta::Done { finish_reason: None });
            self.finished = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(&data).map_err(|err| {
            let start: String = data.chars().take(80).collect();
            LlmError::Malformed(format!("a chunk that is not the protocol's JSON ({err}): {start}"))
        })?;
        if let Some(error) = chunk.error {
            let message = Some(error.message()).filter(|m| !m.trim().is_empty());
            return Err(LlmError::Aborted { message: message.unwrap_or_else(|| "no message".into()) });
        }
        // One answer is asked for (no `n`), so only choice 0 is read; a usage chunk has none.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.delta.unwrap_or_default();
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                out.push_back(LlmDelta::Text(text));
            }
            for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                let index = call.index.unwrap_or(position);
                let function = call.function.unwrap_or_default();
                if self.started.insert(index) {
                    let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{index}"));
                    out.push_back(LlmDelta::ToolCallStart { index, id, name: function.name.unwrap_or_default() });
                }
                if let Some(fragment) = function.arguments.filter(|a| !a.is_empty()) {
                    out.push_back(LlmDelta::ToolCallArgs { index, fragment });
                }
            }
            // Some servers send `""` rather than `null` until the end.
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                out.push_back(LlmDelta::Done { finish_reason: Some(reason) });
                self.finished = true;
            }
        }
        Ok(())
    }
}

/// `{"choices": [{"index", "delta": {"content", "tool_calls"}, "finish_reason"}]}`, or an error.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    error: Option<ErrorField>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    index: Option<usize>,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize, Default)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::super::{Tool, ToolCall, ToolCallAccumulator};
    use super::*;

    /// What a stream of reads decodes to: its deltas, and its error if it ended with one.
    async fn decode(reads: Vec<Vec<u8>>) -> (Vec<LlmDelta>, Option<LlmError>) {
        let body = stream::iter(reads.into_iter().map(Ok::<_, LlmError>));
        let mut deltas = deltas(body, None);
        let mut out = Vec::new();
        while let Some(item) = deltas.next().await {
            match item {
                Ok(delta) => out.push(delta),
                Err(err) => {
                    assert!(deltas.next().await.is_none(), "nothing after an error");
                    return (out, Some(err));
                }
            }
        }
        (out, None)
    }

    async fn decode_whole(body: &str) -> (Vec<LlmDelta>, Option<LlmError>) {
        decode(vec![body.as_bytes().to_vec()]).await
    }

    fn event(chunk: Value) -> String {
        format!("data: {chunk}\n\n")
    }

    fn content(text: &str) -> String {
        event(json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}))
    }

    fn finish(reason: &str) -> String {
        event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
    }

    fn text(s: &str) -> LlmDelta {
        LlmDelta::Text(s.into())
    }

    fn stop() -> LlmDelta {
        LlmDelta::Done { finish_reason: Some("stop".into()) }
    }

    /// An answer as OpenAI streams it: a role-only first delta, a keep-alive, text, a tool call in
    /// fragments, the finish, the usage chunk and `[DONE]`.
    fn full_answer() -> String {
        let mut body = event(
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
        );
        body += ": keep-alive\n\n";
        body += &content("Dialing ");
        body += &content("now — ☎");
        body += &event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9",
            "type": "function", "function": {"name": "action_dtmf", "arguments": ""}}]}, "finish_reason": null}]}));
        for fragment in ["{\"but", "tons\": ", "\"123\"}"] {
            body += &event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": fragment}}]}, "finish_reason": null}]}));
        }
        body += &finish("tool_calls");
        body +=
            &event(json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}));
        body += "data: [DONE]\n\n";
        body
    }

    fn full_answer_deltas() -> Vec<LlmDelta> {
        vec![
            text("Dialing "),
            text("now — ☎"),
            LlmDelta::ToolCallStart { index: 0, id: "call_9".into(), name: "action_dtmf".into() },
            LlmDelta::ToolCallArgs { index: 0, fragment: "{\"but".into() },
            LlmDelta::ToolCallArgs { index: 0, fragment: "tons\": ".into() },
            LlmDelta::ToolCallArgs { index: 0, fragment: "\"123\"}".into() },
            LlmDelta::Done { finish_reason: Some("tool_calls".into()) },
        ]
    }

    #[tokio::test]
    async fn an_answer_decodes_whatever_the_reads_hold() {
        let body = full_answer().into_bytes();
        let (whole, err) = decode(vec![body.clone()]).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(whole, full_answer_deltas());
        // Every place a read can end, inside a line, a multi-byte character or `\n\n`.
        for cut in 1..body.len() {
            let (split, err) = decode(vec![body[..cut].to_vec(), body[cut..].to_vec()]).await;
            assert!(err.is_none(), "cut at {cut}: {err:?}");
            assert_eq!(split, whole, "cut at {cut}");
        }
        let (bytewise, _) = decode(body.iter().map(|b| vec![*b]).collect()).await;
        assert_eq!(bytewise, whole);
    }

    #[tokio::test]
    async fn crlf_line_ends_and_multi_line_data_are_read() {
        let body =
            "data: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"hi\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let (deltas, err) = decode_whole(body).await;
        assert_eq!(deltas, vec![text("hi"), LlmDelta::Done { finish_reason: None }]);
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn nothing_after_the_finish_is_read() {
        let body = content("a") + &finish("stop") + "data: not json at all\n\n";
        let (deltas, err) = decode_whole(&body).await;
        assert_eq!(deltas, vec![text("a"), stop()]);
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn an_end_after_a_finish_without_done_is_complete() {
        let (deltas, err) = decode_whole(&(content("a") + &finish("length"))).await;
        assert_eq!(deltas, vec![text("a"), LlmDelta::Done { finish_reason: Some("length".into()) }]);
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn done_without_its_blank_line_at_the_very_end_counts() {
        let (deltas, err) = decode_whole(&(content("a") + "data: [DONE]")).await;
        assert_eq!(deltas, vec![text("a"), LlmDelta::Done { finish_reason: None }]);
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn a_stream_cut_before_the_finish_is_an_error_after_what_came() {
        let (deltas, err) = decode_whole(&(content("Hel") + &content("lo"))).await;
        assert_eq!(deltas, vec![text("Hel"), text("lo")]);
        assert!(matches!(err, Some(LlmError::Malformed(ref m)) if m.contains("ended before")), "{err:?}");
        // Cut in the middle of a chunk's JSON.
        let body = content("Hel") + "data: {\"choices\":[{\"index\":0,\"del";
        let (deltas, err) = decode_whole(&body).await;
        assert_eq!(deltas, vec![text("Hel")]);
        assert!(matches!(err, Some(LlmError::Malformed(_))), "{err:?}");
        // Nothing at all.
        assert!(matches!(decode(vec![]).await, (d, Some(LlmError::Malformed(_))) if d.is_empty()));
    }

    #[tokio::test]
    async fn a_chunk_that_is_not_json_is_an_error_after_what_came() {
        let body = content("ok") + "data: {\"choices\": [oops\n\n" + &content("never") + &finish("stop");
        let (deltas, err) = decode_whole(&body).await;
        assert_eq!(deltas, vec![text("ok")]);
        assert!(matches!(err, Some(LlmError::Malformed(ref m)) if m.contains("{\"choices\": [oops")), "{err:?}");
    }

    #[tokio::test]
    async fn an_error_reported_mid_answer_is_aborted_with_its_message() {
        let body = content("ok")
            + &event(
                json!({"error": {"object": "error", "message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}),
            );
        let (deltas, err) = decode_whole(&body).await;
        assert_eq!(deltas, vec![text("ok")]);
        assert!(matches!(err, Some(LlmError::Aborted { ref message }) if message == "CUDA out of memory"), "{err:?}");
    }

    #[tokio::test]
    async fn tool_calls_without_id_or_index_and_with_repeated_names_are_read() {
        // Ollama's shape: the whole call in one delta, no index, no id; then a server that repeats
        // the id and name on each fragment of a second call.
        let body = event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"function": {"name": "action_end_conversation", "arguments": "{}"}}
            ]}, "finish_reason": null}]}))
            + &event(
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "x", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            )
            + &event(
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "x", "function": {"name": "f", "arguments": ":1}"}}]}}]}),
            )
            + &finish("tool_calls");
        let (deltas, err) = decode_whole(&body).await;
        assert!(err.is_none(), "{err:?}");
        let mut acc = ToolCallAccumulator::new();
        deltas.iter().for_each(|d| acc.push(d));
        let starts = deltas.iter().filter(|d| matches!(d, LlmDelta::ToolCallStart { .. })).count();
        assert_eq!(starts, 2, "{deltas:?}");
        assert_eq!(
            acc.finish(),
            vec![
                ToolCall { id: "call_0".into(), name: "action_end_conversation".into(), arguments: "{}".into() },
                ToolCall { id: "x".into(), name: "f".into(), arguments: "{\"a\":1}".into() },
            ]
        );
    }

    #[tokio::test]
    async fn other_choices_and_empty_finish_reasons_are_ignored() {
        let body = event(json!({"choices": [
            {"index": 1, "delta": {"content": "other"}, "finish_reason": "stop"},
            {"index": 0, "delta": {"content": "mine"}, "finish_reason": ""}
        ]})) + &finish("stop");
        assert_eq!(decode_whole(&body).await.0, vec![text("mine"), stop()]);
    }

    /// A body whose reads come at the given times (paused time).
    fn timed(reads: Vec<(u64, String)>) -> impl Stream<Item = Result<Vec<u8>, LlmError>> + Send + Unpin + 'static {
        stream::iter(reads)
            .then(|(at_ms, read)| async move {
                tokio::time::sleep(Duration::from_millis(at_ms)).await;
                Ok(read.into_bytes())
            })
            .boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn no_token_by_the_deadline_is_a_stall_even_after_a_role_only_chunk() {
        let role_only = event(json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}));
        let body = timed(vec![(0, role_only), (0, ": keep-alive\n\n".into()), (5_000, content("late"))]);
        let timeout = Duration::from_secs(2);
        let mut deltas = deltas(body, Some((Instant::now() + timeout, timeout)));
        let started = Instant::now();
        let err = deltas.next().await.unwrap().unwrap_err();
        assert!(matches!(err, LlmError::Stalled(t) if t == timeout), "{err:?}");
        assert_eq!(started.elapsed(), timeout);
        assert!(deltas.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rest_of_the_body_is_read_after_the_finish_but_not_for_long() {
        let reads = stream::iter(vec![Ok::<_, LlmError>((content("a") + &finish("stop")).into_bytes())]);
        let body = reads.chain(stream::pending()).boxed();
        let mut deltas = deltas(body, None);
        assert_eq!(deltas.next().await.unwrap().unwrap(), text("a"));
        assert_eq!(deltas.next().await.unwrap().unwrap(), stop());
        let started = Instant::now();
        assert!(deltas.next().await.is_none());
        assert_eq!(started.elapsed(), MAX_DRAIN_TIME);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_token_pauses_are_not_stalls() {
        let body = timed(vec![(100, content("a")), (30_000, content("b")), (0, finish("stop"))]);
        let timeout = Duration::from_secs(2);
        let got: Result<Vec<_>, _> = deltas(body, Some((Instant::now() + timeout, timeout))).try_collect().await;
        assert_eq!(got.unwrap(), vec![text("a"), text("b"), stop()]);
    }

    #[test]
    fn the_request_body_is_openais() {
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                ChatMessage::System("Be brief.".into()),
                ChatMessage::User("Press 1".into()),
                ChatMessage::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "action_dtmf".into(),
                        arguments: "{\"buttons\":\"1\"}".into(),
                    }],
                },
                ChatMessage::Tool { tool_call_id: "call_1".into(), content: "pressed".into() },
                ChatMessage::Assistant { content: Some("Done.".into()), tool_calls: vec![] },
            ],
            tools: vec![Tool {
                name: "action_dtmf".into(),
                description: "Press buttons.".into(),
                parameters: json!({"type": "object", "properties": {"buttons": {"type": "string"}}}),
            }],
            temperature: Some(0.5),
            max_tokens: Some(256),
        };
        assert_eq!(
            request_body(&request),
            json!({
                "model": "gpt-4o-mini",
                "stream": true,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Press 1"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "action_dtmf", "arguments": "{\"buttons\":\"1\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "pressed"},
                    {"role": "assistant", "content": "Done."}
                ],
                "tools": [{"type": "function", "function": {"name": "action_dtmf", "description": "Press buttons.",
                    "parameters": {"type": "object", "properties": {"buttons": {"type": "string"}}}}}],
                "temperature": 0.5,
                "max_tokens": 256
            })
        );
        let bare = ChatRequest { tools: vec![], temperature: None, max_tokens: None, messages: vec![], ..request };
        assert_eq!(request_body(&bare), json!({"model": "gpt-4o-mini", "stream": true, "messages": []}));
    }

    #[test]
    fn error_messages_are_read_in_openais_and_ollamas_shapes() {
        let openai = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(error_message(openai).as_deref(), Some("Rate limit reached"));
        assert_eq!(
            error_message(br#"{"error":"model 'llama9' not found"}"#).as_deref(),
            Some("model 'llama9' not found")
        );
        assert_eq!(error_message(b"<html>502 Bad Gateway</html>"), None);
        assert_eq!(error_message(br#"{"error":{"message":""}}"#), None);
    }

    #[test]
    fn the_base_url_may_end_in_a_slash_and_the_key_is_never_shown() {
        let settings = OpenAiSettings {
            base_url: "http://localhost:11434/v1/".into(),
            api_key: Some("sk-secret".into()),
            ..OpenAiSettings::default()
        };
        assert!(!format!("{settings:?}").contains("sk-secret"));
        let client = OpenAiCompatible::new(settings);
        assert_eq!(client.url, "http://localhost:11434/v1/chat/completions");
        assert_eq!(client.name(), "localhost:11434");
        assert_eq!(client.redact("bad key sk-secret!".into()), "bad key ****!");
        let default = OpenAiCompatible::new(OpenAiSettings::default());
        assert_eq!(default.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(default.name(), "api.openai.com");
        assert_eq!(default.api_key, None);
    }
}
