//! A stand-in for a language model, the default for sandbox calls with no model configured, so
//! that a conversation runs end to end with no account and no network. It understands nothing. It
//! replies to the person's last message by rule, and tells a questioner it is a stand-in:
//! - nothing said yet → a greeting;
//! - asking for a person, a human, an agent or a transfer, when `action_transfer_call` is
//!   offered → that tool, saying "Sure, transferring you now." (with a sandbox number that answers
//!   when the tool wants a number);
//! - "bye" or "goodbye" → a farewell, then `action_end_conversation` if that tool is offered;
//! - a question → a short answer that says what this is;
//! - anything else → an acknowledgement echoing the person's first few words.
//!
//! Replies stream word by word through the same [`LlmDelta`]s a real model sends, and a tool call
//! comes in several fragments, so the engine's accumulator and chunker see what they will see in
//! production.

use futures_util::future::BoxFuture;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

use super::{ChatMessage, ChatRequest, DeltaStream, LanguageModel, LlmDelta, LlmError};

/// The hang-up action's tool name (vocode's action type).
pub const END_CONVERSATION: &str = "action_end_conversation";
/// The (cold) transfer action's tool name.
pub const TRANSFER_CALL: &str = "action_transfer_call";
/// What the stand-in says as it transfers the call.
pub const TRANSFERRING: &str = "Sure, transferring you now.";
/// Where the stand-in transfers a call when the tool asks it for a number: a sandbox number
/// that answers.
pub const TRANSFER_TO: &str = "+14155550199";
/// How many of the person's words an acknowledgement repeats.
const ECHO_WORDS: usize = 6;
/// A tool call's arguments stream in fragments of at most this many characters.
const FRAGMENT_CHARS: usize = 16;

/// The scripted model. Its answers depend only on the request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scripted;

impl Scripted {
    pub fn new() -> Self {
        Scripted
    }

    /// The whole answer to `request`, delta by delta.
    pub fn answer(&self, request: &ChatRequest) -> Vec<LlmDelta> {
        let mut said = request.messages.iter().filter_map(|m| match m {
            ChatMessage::User(text) => Some(text.as_str()),
            _ => None,
        });
        let turn = said.clone().count();
        let transfer = request.tools.iter().find(|t| t.name == TRANSFER_CALL);
        let (reply, tool): (String, Option<(&str, Value)>) = match said.next_back().map(str::trim) {
            None => ("Hello! I'm a scripted stand-in for a language model. What can I do for you?".to_owned(), None),
            Some(last) if transfer.is_some() && asks_for_a_person(last) => {
                let mut arguments = json!({"user_message": TRANSFERRING});
                let wants_number = transfer
                    .and_then(|t| t.parameters["required"].as_array())
                    .is_some_and(|required| required.iter().any(|r| r == "phone_number"));
                if wants_number {
                    arguments["phone_number"] = json!(TRANSFER_TO);
                }
                // The words are the tool's `user_message`: the reply itself says nothing.
                (String::new(), Some((TRANSFER_CALL, arguments)))
            }
            // Recognisers spell it "good-bye" and "good-by" too, and on a noisy line lose its end
            // ("good-byte", "good-byes").
            Some(last)
                if words(last).any(|w| w == "bye" || w == "goodbye") || last.to_lowercase().contains("good-by") =>
            {
                (
                    "Goodbye, and thanks for calling!".to_owned(),
                    request.tools.iter().any(|t| t.name == END_CONVERSATION).then(|| (END_CONVERSATION, json!({}))),
                )
            }
            Some(last) if last.ends_with('?') => {
                ("Good question. I'm only a scripted stand-in, so I can't really answer it.".to_owned(), None)
            }
            Some("") => ("Sorry, I didn't catch that.".to_owned(), None),
            Some(last) => {
                let echo: Vec<&str> = last.split_whitespace().take(ECHO_WORDS).collect();
                let echo = echo.join(" ");
                (format!("Got it: {}.", echo.trim_end_matches(|c: char| c.is_ascii_punctuation())), None)
            }
        };
        let mut deltas: Vec<LlmDelta> = reply
            .split(' ')
            .filter(|word| !word.is_empty())
            .enumerate()
            .map(|(i, word)| LlmDelta::Text(if i == 0 { word.to_owned() } else { format!(" {word}") }))
            .collect();
        if let Some((name, arguments)) = &tool {
            let index = 0;
            deltas.push(LlmDelta::ToolCallStart { index, id: format!("call_scripted_{turn}"), name: (*name).into() });
            // `{}` comes as "{" and "}"; longer arguments in pieces, as a model streams them.
            let text: Vec<char> = arguments.to_string().chars().collect();
            let size = if text.len() <= 2 { 1 } else { FRAGMENT_CHARS };
            for fragment in text.chunks(size) {
                deltas.push(LlmDelta::ToolCallArgs { index, fragment: fragment.iter().collect() });
            }
        }
        let finish_reason = if tool.is_some() { "tool_calls" } else { "stop" };
        deltas.push(LlmDelta::Done { finish_reason: Some(finish_reason.into()) });
        deltas
    }
}

/// `text`'s words, lowercased, without punctuation.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'').filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// Whether the person asks to be put through to someone: a person, a human, an agent, a
/// transfer.
fn asks_for_a_person(text: &str) -> bool {
    words(text).any(|w| {
        matches!(w.as_str(), "person" | "human" | "agent" | "representative" | "operator") || w.starts_with("transfer")
    })
}

impl LanguageModel for Scripted {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
        let deltas = self.answer(&request);
        Box::pin(async move { Ok(stream::iter(deltas.into_iter().map(Ok)).boxed()) })
    }

    fn name(&self) -> &str {
        "scripted"
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use serde_json::json;

    use super::super::{Tool, ToolCallAccumulator};
    use super::*;

    fn request(said: &[&str], tools: &[&str]) -> ChatRequest {
        let mut messages = vec![ChatMessage::System("You are a helpful agent.".into())];
        for (i, text) in said.iter().enumerate() {
            if i > 0 {
                messages.push(ChatMessage::Assistant { content: Some("Mm.".into()), tool_calls: vec![] });
            }
            messages.push(ChatMessage::User((*text).into()));
        }
        ChatRequest {
            model: "scripted".into(),
            messages,
            tools: tools
                .iter()
                .map(|name| Tool {
                    name: (*name).into(),
                    description: String::new(),
                    parameters: json!({"type": "object", "properties": {}}),
                })
                .collect(),
            temperature: None,
            max_tokens: None,
        }
    }

    /// The streamed answer, folded, with the deltas it came in.
    async fn reply(request: ChatRequest) -> (ToolCallAccumulator, Vec<LlmDelta>) {
        let deltas: Vec<LlmDelta> = Scripted::new().stream(request).await.unwrap().try_collect().await.unwrap();
        let mut acc = ToolCallAccumulator::new();
        deltas.iter().for_each(|d| acc.push(d));
        (acc, deltas)
    }

    #[tokio::test]
    async fn it_greets_when_nothing_has_been_said() {
        let (acc, _) = reply(request(&[], &[END_CONVERSATION])).await;
        assert!(acc.text().starts_with("Hello!") && acc.text().contains("scripted stand-in"), "{}", acc.text());
        assert_eq!(acc.finish_reason(), Some("stop"));
        assert!(acc.finish().is_empty());
    }

    #[tokio::test]
    async fn a_goodbye_ends_the_conversation_with_a_tool_call_in_fragments() {
        let (acc, deltas) = reply(request(&["Hi there", "OK, bye!"], &["action_dtmf", END_CONVERSATION])).await;
        assert_eq!(acc.text(), "Goodbye, and thanks for calling!");
        assert_eq!(acc.finish_reason(), Some("tool_calls"));
        let fragments = deltas.iter().filter(|d| matches!(d, LlmDelta::ToolCallArgs { .. })).count();
        assert!(fragments >= 2, "{deltas:?}");
        let calls = acc.finish();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("call_scripted_2", END_CONVERSATION));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&calls[0].arguments).unwrap(), json!({}));
    }

    #[tokio::test]
    async fn a_goodbye_without_the_tool_on_offer_is_only_words() {
        let (acc, _) = reply(request(&["Goodbye."], &[])).await;
        assert_eq!(acc.text(), "Goodbye, and thanks for calling!");
        assert_eq!(acc.finish_reason(), Some("stop"));
        assert!(acc.finish().is_empty());
    }

    #[tokio::test]
    async fn a_goodbye_as_a_recogniser_spells_or_mishears_it_is_a_goodbye() {
        for said in ["Thank you, good-by,", "Thank you, good-byte.", "Good-bye!"] {
            let (acc, _) = reply(request(&[said], &[])).await;
            assert_eq!(acc.text(), "Goodbye, and thanks for calling!", "{said}");
        }
    }

    #[tokio::test]
    async fn a_question_gets_an_answer_and_bye_inside_a_word_is_not_a_goodbye() {
        let (acc, _) = reply(request(&["Maybe you can tell me the opening hours?"], &[END_CONVERSATION])).await;
        assert!(acc.text().starts_with("Good question."), "{}", acc.text());
        assert!(acc.finish().is_empty());
    }

    #[tokio::test]
    async fn anything_else_is_acknowledged_word_by_word_with_an_echo() {
        let (acc, deltas) = reply(request(&["I'd like to book a table for two, please."], &[])).await;
        assert_eq!(acc.text(), "Got it: I'd like to book a table.");
        let texts: Vec<&LlmDelta> = deltas.iter().filter(|d| matches!(d, LlmDelta::Text(_))).collect();
        assert_eq!(texts.len(), 8, "one delta per word: {texts:?}");
        assert_eq!(deltas.last(), Some(&LlmDelta::Done { finish_reason: Some("stop".into()) }));
        // The same request, the same answer.
        assert_eq!(reply(request(&["I'd like to book a table for two, please."], &[])).await.1, deltas);
    }

    /// A request offering the transfer tool with `parameters`.
    fn transfer_request(said: &[&str], parameters: serde_json::Value) -> ChatRequest {
        let mut request = request(said, &[END_CONVERSATION]);
        request.tools.push(Tool { name: TRANSFER_CALL.into(), description: String::new(), parameters });
        request
    }

    #[tokio::test]
    async fn asking_for_a_person_transfers_the_call_saying_so() {
        let parameters = json!({"type": "object", "properties": {"user_message": {"type": "string"}},
                                "required": ["user_message"]});
        let request = transfer_request(&["Hi", "Can I speak to a person, please?"], parameters);
        let (acc, deltas) = reply(request).await;
        assert_eq!(acc.text(), "", "the words are the tool's user_message");
        assert!(!deltas.iter().any(|d| matches!(d, LlmDelta::Text(_))), "{deltas:?}");
        assert_eq!(acc.finish_reason(), Some("tool_calls"));
        let fragments = deltas.iter().filter(|d| matches!(d, LlmDelta::ToolCallArgs { .. })).count();
        assert!(fragments >= 2, "{deltas:?}");
        let calls = acc.finish();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("call_scripted_2", TRANSFER_CALL));
        let arguments: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(arguments, json!({"user_message": "Sure, transferring you now."}));
    }

    #[tokio::test]
    async fn a_transfer_tool_that_wants_a_number_gets_one_that_answers() {
        let parameters = json!({"type": "object", "properties": {"phone_number": {"type": "string"},
                                "user_message": {"type": "string"}}, "required": ["phone_number", "user_message"]});
        let (acc, _) = reply(transfer_request(&["I want a human agent."], parameters)).await;
        let calls = acc.finish();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let arguments: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert_eq!(arguments, json!({"user_message": TRANSFERRING, "phone_number": "+14155550199"}));
    }

    #[tokio::test]
    async fn without_the_transfer_tool_or_the_request_there_is_no_transfer() {
        // Not offered: the question is only a question.
        let (acc, _) = reply(request(&["Can I speak to a person, please?"], &[END_CONVERSATION])).await;
        assert!(acc.text().starts_with("Good question."), "{}", acc.text());
        assert!(acc.finish().is_empty());
        // Offered, but nobody asked for one ("personal" is not a person).
        let parameters = json!({"type": "object", "properties": {}});
        let (acc, _) = reply(transfer_request(&["It's a personal matter."], parameters.clone())).await;
        assert_eq!(acc.text(), "Got it: It's a personal matter.");
        assert!(acc.finish().is_empty());
        let (acc, _) = reply(transfer_request(&["Please transfer me"], parameters)).await;
        assert_eq!(acc.finish()[0].name, TRANSFER_CALL);
    }
}
