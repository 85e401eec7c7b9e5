//! The OpenAI-compatible client against a fake that speaks OpenAI's streaming protocol: what it
//! sends (the body and headers OpenAI documents), what it makes of every way an answer can come
//! (chunked text, fragmented tool calls, error statuses, malformed or cut streams, a slow first
//! token) and how the fallback takes over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use vocode_server::conversation::llm::{
    ChatMessage, ChatRequest, Fallback, LanguageModel, LlmDelta, LlmError, OpenAiCompatible, OpenAiSettings, Tool,
    ToolCall, ToolCallAccumulator,
};

use crate::support::fake_openai::{FakeOpenAi, Script};

const KEY: &str = "sk-test-6f1c2a9e0b7d4e58a3c1";

fn client(base: &str, api_key: Option<&str>) -> OpenAiCompatible {
    OpenAiCompatible::new(OpenAiSettings {
        base_url: base.into(),
        api_key: api_key.map(Into::into),
        ..OpenAiSettings::default()
    })
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![ChatMessage::System("You are brief.".into()), ChatMessage::User("Hello?".into())],
        tools: vec![],
        temperature: None,
        max_tokens: None,
    }
}

/// A whole answer: its deltas folded, the deltas, and the error it ended with, if any.
struct Answer {
    reply: ToolCallAccumulator,
    deltas: Vec<LlmDelta>,
    error: Option<LlmError>,
}

async fn ask(model: &dyn LanguageModel, request: ChatRequest) -> Answer {
    let mut stream = model.stream(request).await.expect("the request is accepted");
    let mut answer = Answer { reply: ToolCallAccumulator::new(), deltas: Vec::new(), error: None };
    while let Some(item) = stream.next().await {
        match item {
            Ok(delta) => {
                answer.reply.push(&delta);
                answer.deltas.push(delta);
            }
            Err(err) => {
                answer.error = Some(err);
                assert!(stream.next().await.is_none(), "the stream ends after its error");
                break;
            }
        }
    }
    answer
}

fn texts(deltas: &[LlmDelta]) -> Vec<&str> {
    deltas
        .iter()
        .filter_map(|d| match d {
            LlmDelta::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streamed_text_reassembles_however_the_events_are_written() {
    let fake = FakeOpenAi::start().await;
    let model = client(&fake.base, Some(KEY));
    let chunks = ["Hel", "lo, wö", "rld! ", "How are", " you?"];
    let layouts = [
        Script::text(&chunks),
        Script::text(&chunks).events_per_write(3),
        Script::text(&chunks).split_mid_line(),
        Script::text(&chunks).events_per_write(2).split_mid_line(),
        Script::text(&chunks).events_per_write(100),
    ];
    for (n, script) in layouts.into_iter().enumerate() {
        fake.then(script);
        let answer = ask(&model, request()).await;
        assert!(answer.error.is_none(), "layout {n}: {:?}", answer.error);
        assert_eq!(texts(&answer.deltas), chunks, "layout {n}: one delta per chunk, in order");
        assert_eq!(answer.reply.text(), "Hello, wörld! How are you?");
        assert_eq!(answer.deltas.last(), Some(&LlmDelta::Done { finish_reason: Some("stop".into()) }), "layout {n}");
    }
    assert_eq!(fake.received().len(), 5);
}

#[tokio::test]
async fn a_finished_answer_leaves_its_connection_for_the_next_turn() {
    let fake = FakeOpenAi::start().await;
    let model = client(&fake.base, Some(KEY));
    for _ in 0..3 {
        // All in one write, so that the end is there to read as soon as the finish is.
        fake.then(Script::text(&["Hello from the fake."]).events_per_write(100));
        let answer = ask(&model, request()).await;
        assert_eq!(answer.reply.text(), "Hello from the fake.");
    }
    let peers: Vec<_> = fake.received().iter().map(|r| r.peer).collect();
    assert!(peers.iter().all(|p| *p == peers[0]), "one connection for every turn: {peers:?}");
}

#[tokio::test]
async fn tool_call_fragments_accumulate_into_complete_calls() {
    let fake = FakeOpenAi::start().await;
    fake.then(
        Script::tool_calls(&[
            ("call_abc", "get_weather", &["{\"lo", "cation\": \"Pa", "ris\", \"unit\"", ": \"celsius\"}"]),
            ("call_def", "action_end_conversation", &["{", "}"]),
        ])
        .events_per_write(2)
        .split_mid_line(),
    );
    let answer = ask(&client(&fake.base, Some(KEY)), request()).await;
    assert!(answer.error.is_none(), "{:?}", answer.error);
    assert_eq!(answer.reply.finish_reason(), Some("tool_calls"));
    assert_eq!(answer.reply.text(), "");
    let calls = answer.reply.finish();
    assert_eq!(
        serde_json::to_value(&calls).unwrap(),
        json!([
            {"id": "call_abc", "name": "get_weather", "arguments": "{\"location\": \"Paris\", \"unit\": \"celsius\"}"},
            {"id": "call_def", "name": "action_end_conversation", "arguments": "{}"},
        ])
    );
    let arguments: Value = serde_json::from_str(&calls[0].arguments).expect("the fragments make valid JSON");
    assert_eq!(arguments, json!({"location": "Paris", "unit": "celsius"}));
}

#[tokio::test]
async fn the_request_is_what_openai_documents() {
    let fake = FakeOpenAi::start().await;
    let model = client(&format!("{}/", fake.base), Some(KEY));
    let request = ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![
            ChatMessage::System("You are a receptionist.".into()),
            ChatMessage::User("Please hang up.".into()),
            ChatMessage::Assistant {
                content: Some("Goodbye!".into()),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "action_end_conversation".into(),
                    arguments: "{}".into(),
                }],
            },
            ChatMessage::Tool { tool_call_id: "call_1".into(), content: "ended".into() },
        ],
        tools: vec![Tool {
            name: "action_end_conversation".into(),
            description: "Ends the conversation.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }],
        temperature: Some(0.25),
        max_tokens: Some(200),
    };
    let answer = ask(&model, request).await;
    assert!(answer.error.is_none(), "{:?}", answer.error);
    assert_eq!(answer.reply.text(), "Hello from the fake.");
    let received = fake.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.path, "/v1/chat/completions", "one slash, whatever the base URL ends with");
    assert_eq!(got.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("accept"), Some("text/event-stream"));
    assert_eq!(
        got.body,
        json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "messages": [
                {"role": "system", "content": "You are a receptionist."},
                {"role": "user", "content": "Please hang up."},
                {"role": "assistant", "content": "Goodbye!", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "action_end_conversation", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ended"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "action_end_conversation",
                "description": "Ends the conversation.",
                "parameters": {"type": "object", "properties": {}}
            }}],
            "temperature": 0.25,
            "max_tokens": 200
        })
    );
}

#[tokio::test]
async fn without_a_key_nothing_is_claimed_and_unset_options_are_left_out() {
    let fake = FakeOpenAi::start().await;
    let answer = ask(&client(&fake.base, None), request()).await;
    assert!(answer.error.is_none(), "{:?}", answer.error);
    let got = &fake.received()[0];
    assert_eq!(got.header("authorization"), None);
    let fields: Vec<&str> = got.body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, ["model", "stream", "messages"]);
}

#[tokio::test]
async fn error_statuses_carry_the_servers_message_and_never_the_key() {
    let fake = FakeOpenAi::start().await;
    let model = client(&fake.base, Some(KEY));
    let cases = [
        (Script::unauthorized(), 401, "Incorrect API key provided: ****.", false),
        (
            Script::error(429, "Rate limit reached for gpt-4o-mini on requests per min (RPM)"),
            429,
            "Rate limit reached",
            true,
        ),
        (Script::error(500, "The server had an error while processing your request."), 500, "had an error", true),
        (Script::error(404, "The model `gpt-9` does not exist"), 404, "does not exist", false),
    ];
    for (script, status, says, transient) in cases {
        fake.then(script);
        let err = model.stream(request()).await.err().expect("an error status is an error");
        match &err {
            LlmError::Status { status: got, message } => {
                assert_eq!(*got, status);
                assert!(message.contains(says), "{status}: {message}");
            }
            other => panic!("{status}: not a status error: {other:?}"),
        }
        assert_eq!(err.is_transient(), transient, "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(KEY), "the key leaked: {shown}");
    }
    // The key did reach the server, which named it: the client took it out.
    assert_eq!(fake.received()[0].header("authorization"), Some(format!("Bearer {KEY}").as_str()));
}

#[tokio::test]
async fn a_malformed_chunk_is_an_error_not_a_panic() {
    let fake = FakeOpenAi::start().await;
    fake.then(Script::malformed_after(&["Hi", " there"]));
    let answer = ask(&client(&fake.base, Some(KEY)), request()).await;
    assert_eq!(texts(&answer.deltas), ["Hi", " there"], "what came before the bad chunk is kept");
    assert!(matches!(answer.error, Some(LlmError::Malformed(_))), "{:?}", answer.error);
    assert!(!answer.reply.is_done());
}

#[tokio::test]
async fn a_truncated_stream_is_an_error() {
    let fake = FakeOpenAi::start().await;
    fake.then(Script::truncated_after(&["I was say", "ing"]).events_per_write(2));
    let answer = ask(&client(&fake.base, Some(KEY)), request()).await;
    assert_eq!(answer.reply.text(), "I was saying");
    match &answer.error {
        Some(err @ LlmError::Malformed(message)) => {
            assert!(message.contains("ended before"), "{message}");
            assert!(!err.is_transient());
        }
        other => panic!("not a truncation error: {other:?}"),
    }
    assert!(!answer.reply.is_done());
}

#[tokio::test]
async fn a_slow_first_token_is_a_stall() {
    let fake = FakeOpenAi::start().await;
    fake.then(Script::text(&["too late"]).first_chunk_after(Duration::from_secs(10)));
    let model = OpenAiCompatible::new(OpenAiSettings {
        base_url: fake.base.clone(),
        first_token_timeout: Duration::from_millis(300),
        ..OpenAiSettings::default()
    });
    let started = Instant::now();
    let answer = ask(&model, request()).await;
    assert!(answer.deltas.is_empty(), "{:?}", answer.deltas);
    assert!(
        matches!(answer.error, Some(LlmError::Stalled(t)) if t == Duration::from_millis(300)),
        "{:?}",
        answer.error
    );
    assert!(started.elapsed() < Duration::from_secs(5), "gave up at the deadline: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_slow_first_token_with_fallback_lets_the_secondary_answer() {
    let slow = FakeOpenAi::start().await;
    slow.then(Script::text(&["too late"]).first_chunk_after(Duration::from_secs(10)));
    let backup = FakeOpenAi::start().await;
    backup.then(Script::text(&["Backup", " here."]));
    let model = Fallback {
        primary: Arc::new(client(&slow.base, Some(KEY))),
        secondary: Arc::new(client(&backup.base, Some("sk-backup"))),
        first_token_timeout: Duration::from_millis(300),
    };
    let started = Instant::now();
    let answer = ask(&model, request()).await;
    assert!(answer.error.is_none(), "{:?}", answer.error);
    assert_eq!(answer.reply.text(), "Backup here.");
    assert!(started.elapsed() < Duration::from_secs(5), "did not wait for the primary: {:?}", started.elapsed());
    let (tried, answered) = (slow.received(), backup.received());
    assert_eq!((tried.len(), answered.len()), (1, 1));
    assert_eq!(tried[0].body, answered[0].body, "the same request, to the secondary");
    assert_eq!(answered[0].header("authorization"), Some("Bearer sk-backup"));
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error_and_the_fallback_answers() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let err = client(&closed, Some(KEY)).stream(request()).await.err().expect("nobody listens");
    assert!(matches!(err, LlmError::Transport(_)) && err.is_transient(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(KEY));

    let backup = FakeOpenAi::start().await;
    let model = Fallback {
        primary: Arc::new(client(&closed, Some(KEY))),
        secondary: Arc::new(client(&backup.base, None)),
        first_token_timeout: Duration::from_secs(5),
    };
    assert_eq!(ask(&model, request()).await.reply.text(), "Hello from the fake.");
}
