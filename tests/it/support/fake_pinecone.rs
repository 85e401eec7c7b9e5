//! A Pinecone index's data plane, as `POST /query` answers it: the `Api-Key` header must be the
//! index's key (401 otherwise), the body a query by vector (`vector` of numbers, `topK`,
//! `includeMetadata: true`; 400 otherwise), and the answer `{"matches": [{"id", "score",
//! "metadata"}], "namespace"}` with at most `topK` of the planned matches. It can also fail (any
//! status) or hang, as a slow index does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The planned matches' scores, in order.
pub const SCORES: [f64; 3] = [0.9, 0.75, 0.5];

/// How the index answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// These matches' metadata, best first (scored as [`SCORES`] says).
    Matches(Vec<Value>),
    /// This status, with Pinecone's error JSON.
    Fails(u16),
    /// Nothing, for a minute.
    Hangs,
}

struct IndexState {
    api_key: String,
    answer: Mutex<Answer>,
    queries: Mutex<Vec<Value>>,
}

pub struct FakePinecone {
    /// Where the index is (`PINECONE_BASE_URL`).
    pub base: String,
    pub api_key: String,
    state: Arc<IndexState>,
}

impl FakePinecone {
    pub async fn start(answer: Answer) -> FakePinecone {
        let api_key = format!("pc-{}", uuid::Uuid::new_v4().simple());
        let state =
            Arc::new(IndexState { api_key: api_key.clone(), answer: Mutex::new(answer), queries: Mutex::default() });
        let router = Router::new().route("/query", post(query)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakePinecone { base: format!("http://{addr}"), api_key, state }
    }

    /// The well-formed queries it got, with the right key.
    pub fn queries(&self) -> Vec<Value> {
        self.state.queries.lock().unwrap().clone()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"code": status.as_u16(), "message": message, "details": []}))).into_response()
}

async fn query(State(state): State<Arc<IndexState>>, headers: HeaderMap, body: String) -> Response {
    if headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(state.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Invalid API Key");
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let vector_ok = body["vector"].as_array().is_some_and(|v| !v.is_empty() && v.iter().all(Value::is_number));
    let Some(top_k) = body["topK"].as_u64().filter(|k| (1..=10_000).contains(k)) else {
        return error(StatusCode::BAD_REQUEST, "topK: a number from 1 to 10000 is required");
    };
    if !vector_ok || body["includeMetadata"] != true {
        return error(StatusCode::BAD_REQUEST, "a query by vector, with its metadata, is expected");
    }
    state.queries.lock().unwrap().push(body.clone());
    let answer = state.answer.lock().unwrap().clone();
    match answer {
        Answer::Fails(status) => error(StatusCode::from_u16(status).unwrap(), "the index failed"),
        Answer::Hangs => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            error(StatusCode::GATEWAY_TIMEOUT, "too late")
        }
        Answer::Matches(metadata) => {
            let matches: Vec<Value> = metadata
                .into_iter()
                .take(top_k as usize)
                .enumerate()
                .map(|(i, metadata)| json!({"id": format!("vec-{i}"), "score": SCORES[i % SCORES.len()], "values": [], "metadata": metadata}))
                .collect();
            Json(json!({"matches": matches, "namespace": body["namespace"].as_str().unwrap_or(""), "usage": {"readUnits": 5}}))
                .into_response()
        }
    }
}
