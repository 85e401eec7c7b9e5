//! The agent's knowledge end to end: an agent with a `vector_database` has it consulted before it
//! answers the person — their words embedded by the OpenAI-compatible server (the agent's
//! `openai_account_connection`'s key, else the server's), the Pinecone index queried with them
//! (its `api_key`, as Pinecone's own API takes it), and the matches' `text` and `source` shown to
//! the model just before the person's words. An index that fails or hangs leaves the turn
//! answered, within the lookup's bound.
//!
//! SQLite only, as `behaviours`: the lookup runs in the call's engine.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::line::Line;
use super::{transcript_has, world_with, World, GREETING};
use crate::support::fake_deepgram::results;
use crate::support::fake_openai::{Received, Script, EMBEDDING};
use crate::support::fake_pinecone::{Answer, FakePinecone};
use crate::support::Backend;

/// A world whose server queries `pinecone` for every index.
async fn world(pinecone: &FakePinecone) -> Option<World> {
    world_with(Backend::Sqlite, |settings| settings.pinecone_base_url = Some(pinecone.base.clone())).await
}

/// An agent whose vector database is `pinecone`'s index (stored, its key sealed), and whose own
/// OpenAI key is `openai_key` when it has one.
async fn agent(w: &World, pinecone: &FakePinecone, openai_key: Option<&str>) -> Value {
    let (status, database) = w
        .app
        .post(
            "/v1/vector_databases/create",
            json!({"type": "vector_database_pinecone", "index": "restaurant-docs", "api_key": pinecone.api_key,
                   "api_environment": "us-east1-gcp"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{database}");
    let mut agent = json!({
        "prompt": {"content": "You answer questions about the restaurant."},
        "initial_message": GREETING,
        "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"},
        "vector_database": database["id"],
    });
    if let Some(key) = openai_key {
        let (status, connection) = w
            .app
            .post(
                "/v1/account_connections/create",
                json!({"type": "account_connection_openai", "credentials": {"openai_api_key": key}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{connection}");
        agent["openai_account_connection"] = connection["id"].clone();
    }
    agent
}

/// The person asks `question` on `line` and the bot answers "We open at nine."; returns the
/// request for embeddings, the model's request, and how long after the question it was sent.
async fn asked(w: &World, line: Line, agent: Value, question: &str) -> (Received, Received, Duration) {
    let call = line.call(w, agent).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let _carrier = line.answer(w, &call).await;
    transcript_has(w, &id, &format!("BOT: {GREETING}")).await;
    w.deepgram.wait_for_connections(1).await;
    w.openai.then(Script::text(&["We open ", "at nine."]));
    let asked_at = Instant::now();
    w.deepgram.send(results(question, true, true)).await;
    transcript_has(w, &id, "BOT: We open at nine.").await;
    let received = w.openai.received();
    let embeddings = received.iter().find(|r| r.path == "/v1/embeddings").expect("the words were embedded").clone();
    let chat = received.iter().find(|r| r.path == "/v1/chat/completions").expect("the model was asked").clone();
    let after = chat.at.saturating_duration_since(asked_at);
    (embeddings, chat, after)
}

fn without_knowledge(question: &str) -> Value {
    json!([{"role": "system", "content": "You answer questions about the restaurant."},
           {"role": "assistant", "content": GREETING},
           {"role": "user", "content": question}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_is_shown_the_text_and_source_the_index_found_on_twilio() {
    the_model_is_shown_the_text_and_source_the_index_found(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_is_shown_the_text_and_source_the_index_found_on_vonage() {
    the_model_is_shown_the_text_and_source_the_index_found(Line::Vonage).await;
}

async fn the_model_is_shown_the_text_and_source_the_index_found(line: Line) {
    let pinecone = FakePinecone::start(Answer::Matches(vec![
        json!({"text": "We open at 9am every day.", "source": "hours.pdf"}),
        json!({"text": "Parking is free after 6pm.", "source": "faq.md", "page": 2}),
        json!({"source": "a vector with no text is skipped"}),
    ]))
    .await;
    let Some(w) = world(&pinecone).await else { return };
    let agent = agent(&w, &pinecone, None).await;
    let (embeddings, chat, _) = asked(&w, line, agent, "When do you open?").await;

    // The words, embedded with the server's key; the index queried with the vector, by its key.
    assert_eq!(embeddings.body, json!({"model": "text-embedding-ada-002", "input": "When do you open?"}));
    assert_eq!(embeddings.header("authorization"), Some("Bearer sk-test-conversation"));
    let queries = pinecone.queries();
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0]["vector"], json!(EMBEDDING));
    assert_eq!((&queries[0]["topK"], &queries[0]["includeMetadata"]), (&json!(3), &json!(true)));

    // What was found, just before the person's words.
    let mut expected = without_knowledge("When do you open?");
    let found = "Found 2 similar documents:\nDocument: hours.pdf (Confidence: 0.9)\nWe open at 9am every day.\n\n\
                 Document: faq.md (Confidence: 0.75)\nParking is free after 6pm.";
    expected.as_array_mut().unwrap().insert(2, json!({"role": "user", "content": found}));
    assert_eq!(chat.body["messages"], expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_fails_leaves_the_turn_answered_without_knowledge() {
    let pinecone = FakePinecone::start(Answer::Fails(500)).await;
    let Some(w) = world(&pinecone).await else { return };
    // Embeddings through the agent's own OpenAI connection.
    let agent = agent(&w, &pinecone, Some("sk-the-agents-own")).await;
    let (embeddings, chat, _) = asked(&w, Line::Twilio, agent, "Is there parking?").await;
    assert_eq!(embeddings.header("authorization"), Some("Bearer sk-the-agents-own"));
    assert_eq!(pinecone.queries().len(), 1, "the index was asked");
    assert_eq!(chat.body["messages"], without_knowledge("Is there parking?"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_hangs_delays_the_turn_by_the_bound_at_most() {
    let pinecone = FakePinecone::start(Answer::Hangs).await;
    let Some(w) = world(&pinecone).await else { return };
    let agent = agent(&w, &pinecone, None).await;
    let (_, chat, after) = asked(&w, Line::Twilio, agent, "Do you have a terrace?").await;
    assert_eq!(pinecone.queries().len(), 1, "the index was asked, and never answered");
    assert_eq!(chat.body["messages"], without_knowledge("Do you have a terrace?"));
    // The turn ends at once (Deepgram said the speech was final); the lookup takes 1 s at most.
    assert!(after >= Duration::from_millis(1_000) && after < Duration::from_millis(3_000), "{after:?}");
}
