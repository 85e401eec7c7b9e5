//! Do-not-call detection (`do-not-call-detection.mdx`): after an outbound call's conversation,
//! did the person called ask not to be called again? A "rudimentary" estimate, as the guide says:
//! the transcript is given to the agent's model with the question, and its yes or no is the
//! answer. On the sandbox carrier, with no model configured, a list of phrases stands in for the
//! model ([`by_keywords`]).

use futures_util::StreamExt;

use super::llm::{ChatMessage, ChatRequest, LanguageModel, LlmError, ToolCallAccumulator};

/// What the model is asked. It is told the transcript's format (`BOT:` / `HUMAN:` lines).
pub const INSTRUCTIONS: &str = "You classify phone calls. You are given the transcript of a call that an \
automated agent (the lines starting with BOT:) placed to a person (the lines starting with HUMAN:). \
Decide whether the person asked not to be called again: to be put on a do-not-call list, to be removed \
from the calling list, to stop calling, or said in any other words that they do not want to receive \
calls like this one. Answer with exactly one word: true if they did, false if they did not.";

/// The longest transcript sent (its end is kept: a request not to be called usually comes late).
const MAX_TRANSCRIPT_CHARS: usize = 24_000;

/// The request that asks `model` about `transcript`.
pub fn request(model: &str, transcript: &str) -> ChatRequest {
    let start = transcript.len().saturating_sub(MAX_TRANSCRIPT_CHARS);
    let start = (start..=transcript.len()).find(|i| transcript.is_char_boundary(*i)).unwrap_or(0);
    ChatRequest {
        model: model.to_owned(),
        messages: vec![ChatMessage::System(INSTRUCTIONS.into()), ChatMessage::User(transcript[start..].to_owned())],
        tools: Vec::new(),
        temperature: Some(0.0),
        max_tokens: Some(5),
    }
}

/// The model's answer as a result: its first word that is `true`/`yes` or `false`/`no`, in any
/// case and punctuation; `None` when it said neither.
pub fn parse(answer: &str) -> Option<bool> {
    answer.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).find_map(|word| {
        match word.to_lowercase().as_str() {
            "true" | "yes" => Some(true),
            "false" | "no" => Some(false),
            _ => None,
        }
    })
}

/// Why a model gave no result.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Model(#[from] LlmError),
    #[error("the model answered neither true nor false: {0:?}")]
    Unclear(String),
}

/// Asks `llm` whether the person in `transcript` asked not to be called.
pub async fn classify(llm: &dyn LanguageModel, model: &str, transcript: &str) -> Result<bool, ClassifyError> {
    let mut deltas = llm.stream(request(model, transcript)).await?;
    let mut answer = ToolCallAccumulator::new();
    while let Some(delta) = deltas.next().await {
        answer.push(&delta?);
        if answer.is_done() {
            break;
        }
    }
    parse(answer.text()).ok_or_else(|| ClassifyError::Unclear(answer.text().chars().take(80).collect()))
}

/// What people say when they want no more calls, as the phrase stand-in looks for it.
const PHRASES: &[&str] = &[
    "do not call",
    "don't call",
    "dont call",
    "stop calling",
    "never call",
    "quit calling",
    "no more calls",
    "remove me",
    "remove my number",
    "take me off",
    "take my number off",
    "put me on your do not call",
    "unsubscribe",
    "do not contact",
    "don't contact",
    "lose my number",
];

/// The stand-in for a model on sandbox calls: whether a `HUMAN:` line of the transcript says one
/// of a few phrases people use to ask not to be called.
pub fn by_keywords(transcript: &str) -> bool {
    transcript.lines().filter_map(|line| line.strip_prefix("HUMAN:")).any(|said| {
        let said = said.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'").replace('-', " ");
        let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
        PHRASES.iter().any(|phrase| said.contains(phrase))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::llm::{DeltaStream, LlmDelta};
    use futures_util::future::BoxFuture;
    use futures_util::stream;

    #[test]
    fn answers_are_read_in_any_case_and_punctuation() {
        assert_eq!(parse("true"), Some(true));
        assert_eq!(parse(" TRUE."), Some(true));
        assert_eq!(parse("Yes"), Some(true));
        assert_eq!(parse("false"), Some(false));
        assert_eq!(parse("No, they did not."), Some(false));
        assert_eq!(parse("**False**"), Some(false));
        assert_eq!(parse("I cannot tell"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("truest"), None, "a word, not a prefix");
    }

    #[test]
    fn the_request_carries_the_question_and_the_transcripts_end() {
        let req = request("gpt-4o-mini", "BOT: Hi.\nHUMAN: Stop calling me.\n");
        assert_eq!(req.model, "gpt-4o-mini");
        assert_eq!(req.messages[0], ChatMessage::System(INSTRUCTIONS.into()));
        assert_eq!(req.messages[1], ChatMessage::User("BOT: Hi.\nHUMAN: Stop calling me.\n".into()));
        assert_eq!((req.temperature, req.tools.len()), (Some(0.0), 0));
        let long = format!("HUMAN: {}\nHUMAN: ünïcode end", "é".repeat(MAX_TRANSCRIPT_CHARS));
        let ChatMessage::User(sent) = &request("m", &long).messages[1] else { panic!() };
        assert!(sent.len() <= MAX_TRANSCRIPT_CHARS && sent.ends_with("ünïcode end"), "{}", sent.len());
    }

    #[test]
    fn phrases_count_only_on_the_persons_lines() {
        assert!(by_keywords("BOT: Hi!\nHUMAN: Please take me off your list.\n"));
        assert!(by_keywords("HUMAN: Don\u{2019}t   call me again.\n"));
        assert!(by_keywords("HUMAN: Put me on your do-not-call list\n"));
        assert!(!by_keywords("HUMAN: Yes, this is Ajay speaking.\nHUMAN: Okay, thank you. Goodbye.\n"));
        assert!(!by_keywords("BOT: Tell me if you want us to stop calling.\nHUMAN: No, it's fine.\n"));
    }

    /// A model that answers with the given text.
    struct Says(&'static str);

    impl LanguageModel for Says {
        fn stream(&self, _: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, LlmError>> {
            let deltas =
                vec![Ok(LlmDelta::Text(self.0.into())), Ok(LlmDelta::Done { finish_reason: Some("stop".into()) })];
            Box::pin(async move { Ok(stream::iter(deltas).boxed()) })
        }

        fn name(&self) -> &str {
            "says"
        }
    }

    #[tokio::test]
    async fn the_models_answer_is_the_result() {
        assert!(classify(&Says("True"), "m", "HUMAN: stop").await.unwrap());
        assert!(!classify(&Says("false"), "m", "HUMAN: hi").await.unwrap());
        let unclear = classify(&Says("maybe"), "m", "HUMAN: hi").await;
        assert!(matches!(unclear, Err(ClassifyError::Unclear(ref said)) if said == "maybe"), "{unclear:?}");
    }
}
