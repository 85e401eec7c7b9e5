//! What the agent knows from its `vector_database`: before the model answers a person's turn,
//! the index is asked for the passages most like what they said, and those passages (their
//! `text`, the `source` they come from) are shown to the model, as vocode-core's `ChatGPTAgent`
//! does: one more user message, just before the person's, that reads
//! `Found N similar documents:` then `Document: SOURCE (Confidence: SCORE)` and the text of each.
//!
//! The lookup is bounded ([`LOOKUP_BOUND`], embeddings and query together): an index that is slow
//! or failing costs a turn at most that, and the model answers without it.
//!
//! [`Pinecone`] is the one index the hosted API knows (`vector_database_pinecone`): the words are
//! embedded by an OpenAI-compatible `/embeddings` endpoint (the agent's `openai_account_connection`
//! or the server's key, as the model), then `POST https://INDEX.svc.ENVIRONMENT.pinecone.io/query`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::llm::{ChatMessage, ChatRequest};

/// The longest a turn waits for its knowledge.
pub const LOOKUP_BOUND: Duration = Duration::from_secs(1);
/// How many passages are asked for (vocode's `top_k` default; the hosted API has no setting).
pub const TOP_K: usize = 3;
/// The embeddings model vocode queries its indexes with (the hosted API has no setting).
pub const EMBEDDINGS_MODEL: &str = "text-embedding-ada-002";

/// A passage of the user's documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// What the model is shown.
    pub text: String,
    /// The document it comes from (an article's title, a file's name).
    pub source: String,
    /// How alike it is to what was said, as the index scores it.
    pub score: f64,
}

/// Where the agent's knowledge is looked up.
pub trait Knowledge: Send + Sync {
    /// The passages most like `query`, best first.
    fn search<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<Passage>, KnowledgeError>>;
}

/// Why a lookup found nothing to show. Messages never contain a key.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error("{service} could not be reached")]
    Transport {
        service: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{service} answered HTTP {status}")]
    Status { service: &'static str, status: u16 },
    #[error("{service}'s answer was not understood: {reason}")]
    Malformed { service: &'static str, reason: String },
}

/// What the model is shown of `passages` (vocode's words); `None` when there are none.
pub fn message(passages: &[Passage]) -> Option<String> {
    if passages.is_empty() {
        return None;
    }
    let documents: Vec<String> = passages
        .iter()
        // Documents loaded by LangChain's scripts often keep `\n` escaped; vocode unescapes them.
        .map(|p| format!("Document: {} (Confidence: {})\n{}", p.source, p.score, p.text.replace(r"\n", "\n")))
        .collect();
    Some(format!("Found {} similar documents:\n{}", passages.len(), documents.join("\n\n")))
}

/// Shows the model what `knowledge` has on the person's last words (the request's last message,
/// when it is theirs), within [`LOOKUP_BOUND`]; a lookup that fails or is late is logged, counted,
/// and the request goes as it was.
pub async fn consult(knowledge: &dyn Knowledge, request: &mut ChatRequest) {
    let Some(ChatMessage::User(query)) = request.messages.last() else {
        return;
    };
    if query.trim().is_empty() {
        return;
    }
    let started = Instant::now();
    let found = tokio::time::timeout(LOOKUP_BOUND, knowledge.search(query)).await;
    metrics::histogram!("vocode_conversation_knowledge_seconds").record(started.elapsed().as_secs_f64());
    let passages = match found {
        Ok(Ok(passages)) => passages,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the vector database failed: the model answers without it");
            metrics::counter!("vocode_conversation_knowledge_failures_total", "reason" => "error").increment(1);
            return;
        }
        Err(_) => {
            tracing::warn!(bound = ?LOOKUP_BOUND, "the vector database was too slow: the model answers without it");
            metrics::counter!("vocode_conversation_knowledge_failures_total", "reason" => "timeout").increment(1);
            return;
        }
    };
    if let Some(shown) = message(&passages) {
        let at = request.messages.len() - 1;
        request.messages.insert(at, ChatMessage::User(shown));
    }
}

/// A Pinecone index, queried with OpenAI-compatible embeddings.
pub struct Pinecone {
    http: reqwest::Client,
    /// `…/query` of the index.
    query_url: String,
    api_key: String,
    /// `…/embeddings` of the OpenAI-compatible server.
    embeddings_url: String,
    openai_key: Option<String>,
}

/// Whether `name` can stand in a host name as one label's part (an index's or an environment's
/// name): anything else could point the query at another host.
fn host_part(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Pinecone {
    /// The index a `vector_database_pinecone` document names. `base_url` replaces the index's
    /// own address (`PINECONE_BASE_URL`); `openai_base_url` is where embeddings are made.
    pub fn from_document(
        document: &Value,
        base_url: Option<&str>,
        openai_base_url: &str,
        openai_key: Option<String>,
    ) -> Result<Pinecone, String> {
        let field = |name: &str| document[name].as_str().map(str::trim).unwrap_or_default().to_owned();
        let (index, environment, api_key) = (field("index"), field("api_environment"), field("api_key"));
        if api_key.is_empty() {
            return Err("its api_key is empty".into());
        }
        let base = match base_url {
            Some(base) => base.trim_end_matches('/').to_owned(),
            None if host_part(&index) && host_part(&environment) => {
                format!("https://{index}.svc.{environment}.pinecone.io")
            }
            None => return Err(format!("{index:?} in {environment:?} is not a Pinecone index's name")),
        };
        let http = super::shared_http_client("knowledge".into(), || {
            // The lookup's own bound is shorter; these keep a forgotten connection from lingering.
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(2))
                .user_agent(concat!("vocode-server/", env!("CARGO_PKG_VERSION")))
        });
        Ok(Pinecone {
            http,
            query_url: format!("{base}/query"),
            api_key,
            embeddings_url: format!("{}/embeddings", openai_base_url.trim_end_matches('/')),
            openai_key: openai_key.filter(|k| !k.is_empty()),
        })
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        service: &'static str,
        request: reqwest::RequestBuilder,
        body: Value,
    ) -> Result<T, KnowledgeError> {
        let response =
            request.json(&body).send().await.map_err(|source| KnowledgeError::Transport { service, source })?;
        if !response.status().is_success() {
            return Err(KnowledgeError::Status { service, status: response.status().as_u16() });
        }
        let bytes = response.bytes().await.map_err(|source| KnowledgeError::Transport { service, source })?;
        serde_json::from_slice(&bytes).map_err(|e| KnowledgeError::Malformed { service, reason: e.to_string() })
    }

    async fn embed(&self, text: &str) -> Result<Vec<f32>, KnowledgeError> {
        #[derive(Deserialize)]
        struct Embeddings {
            data: Vec<Embedding>,
        }
        #[derive(Deserialize)]
        struct Embedding {
            embedding: Vec<f32>,
        }
        let mut request = self.http.post(&self.embeddings_url);
        if let Some(key) = &self.openai_key {
            request = request.bearer_auth(key);
        }
        let body = json!({"model": EMBEDDINGS_MODEL, "input": text});
        let answer: Embeddings = self.post("the embeddings server", request, body).await?;
        answer
            .data
            .into_iter()
            .next()
            .map(|e| e.embedding)
            .ok_or(KnowledgeError::Malformed { service: "the embeddings server", reason: "no embedding".into() })
    }
}

impl Knowledge for Pinecone {
    fn search<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<Passage>, KnowledgeError>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Answer {
                #[serde(default)]
                matches: Vec<Match>,
            }
            #[derive(Deserialize)]
            struct Match {
                #[serde(default)]
                score: f64,
                #[serde(default)]
                metadata: Value,
            }
            let vector = self.embed(query).await?;
            let request = self.http.post(&self.query_url).header("Api-Key", &self.api_key);
            let body = json!({"vector": vector, "topK": TOP_K, "includeMetadata": true, "namespace": ""});
            let answer: Answer = self.post("Pinecone", request, body).await?;
            Ok(passages(answer.matches.into_iter().map(|m| (m.score, m.metadata))))
        })
    }
}

/// The matches that carry a `text` (vocode skips the others), with their `source`.
fn passages(matches: impl Iterator<Item = (f64, Value)>) -> Vec<Passage> {
    matches
        .filter_map(|(score, metadata)| {
            let text = metadata["text"].as_str()?.to_owned();
            let source = metadata["source"].as_str().unwrap_or_default().to_owned();
            Some(Passage { text, source, score })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(text: &str, source: &str, score: f64) -> Passage {
        Passage { text: text.into(), source: source.into(), score }
    }

    #[test]
    fn passages_are_shown_as_vocode_shows_them() {
        let shown = message(&[passage("Open 9 to 5.", "hours.md", 0.91), passage(r"Line one\nline two", "faq", 0.5)]);
        assert_eq!(
            shown.as_deref(),
            Some(
                "Found 2 similar documents:\nDocument: hours.md (Confidence: 0.91)\nOpen 9 to 5.\n\n\
                 Document: faq (Confidence: 0.5)\nLine one\nline two"
            )
        );
        assert_eq!(message(&[]), None, "nothing found, nothing shown");
    }

    #[test]
    fn matches_without_text_are_skipped() {
        let matches = vec![
            (0.9, json!({"text": "A", "source": "a"})),
            (0.8, json!({"source": "no text"})),
            (0.7, json!({"text": "C"})),
        ];
        assert_eq!(passages(matches.into_iter()), [passage("A", "a", 0.9), passage("C", "", 0.7)]);
    }

    #[test]
    fn the_index_address_is_built_from_names_only() {
        let doc = |index: &str, environment: &str| json!({"type": "vector_database_pinecone", "index": index, "api_environment": environment, "api_key": "pc"});
        let openai = "https://api.openai.com/v1/";
        let index = Pinecone::from_document(&doc("docs-abc123", "us-east1-gcp"), None, openai, None).unwrap();
        assert_eq!(index.query_url, "https://docs-abc123.svc.us-east1-gcp.pinecone.io/query");
        assert_eq!(index.embeddings_url, "https://api.openai.com/v1/embeddings");
        for (index, environment) in [("evil.com/#", "e"), ("i", "x@127.0.0.1:80"), ("", "e")] {
            assert!(
                Pinecone::from_document(&doc(index, environment), None, openai, None).is_err(),
                "{index} {environment}"
            );
        }
        let overridden = Pinecone::from_document(&doc("i", "e"), Some("http://127.0.0.1:9/"), openai, None).unwrap();
        assert_eq!(overridden.query_url, "http://127.0.0.1:9/query");
        let keyless = json!({"index": "i", "api_environment": "e", "api_key": ""});
        assert!(Pinecone::from_document(&keyless, None, openai, None).is_err());
    }

    struct Fixed(Result<Vec<Passage>, u16>, Duration);

    impl Knowledge for Fixed {
        fn search<'a>(&'a self, _query: &'a str) -> BoxFuture<'a, Result<Vec<Passage>, KnowledgeError>> {
            Box::pin(async move {
                tokio::time::sleep(self.1).await;
                self.0.clone().map_err(|status| KnowledgeError::Status { service: "test", status })
            })
        }
    }

    fn request(messages: Vec<ChatMessage>) -> ChatRequest {
        ChatRequest { model: "m".into(), messages, tools: Vec::new(), temperature: None, max_tokens: None }
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_found_goes_just_before_the_persons_words_and_nothing_else_changes() {
        let turn = vec![ChatMessage::System("Be brief.".into()), ChatMessage::User("When are you open?".into())];
        let found = Fixed(Ok(vec![passage("Open 9 to 5.", "hours.md", 0.9)]), Duration::from_millis(200));
        let mut asked = request(turn.clone());
        consult(&found, &mut asked).await;
        assert_eq!(asked.messages.len(), 3);
        assert!(matches!(&asked.messages[1], ChatMessage::User(m) if m.contains("Document: hours.md")));
        assert_eq!(asked.messages[2], turn[1]);

        // A failing index, a slow one (given up at the bound), and a turn that is not the person's.
        let started = Instant::now();
        for knowledge in [Fixed(Err(500), Duration::ZERO), Fixed(Ok(vec![]), Duration::from_secs(30))] {
            let mut asked = request(turn.clone());
            consult(&knowledge, &mut asked).await;
            assert_eq!(asked.messages, turn);
        }
        assert_eq!(started.elapsed(), LOOKUP_BOUND);
        let after_a_tool = vec![ChatMessage::Tool { tool_call_id: "1".into(), content: "{}".into() }];
        let mut asked = request(after_a_tool.clone());
        consult(&found, &mut asked).await;
        assert_eq!(asked.messages, after_a_tool);
    }
}
