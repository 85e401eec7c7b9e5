//! A webhook receiver: a real HTTP server on a random port that records every request it gets
//! (method, headers, query, body), answers as a test plans (statuses, `Retry-After`, a hang, a
//! huge body, a redirect loop), and checks the Standard Webhooks signature independently of the
//! server's code.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub headers: HashMap<String, String>,
    pub query: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    /// The event it carried: the JSON body of a POST, the query string of a GET.
    pub fn event(&self) -> Value {
        if self.method == "GET" {
            let pairs: HashMap<String, String> =
                form_urlencoded::parse(self.query.as_deref().unwrap_or_default().as_bytes()).into_owned().collect();
            json!({"type": pairs["type"], "call_id": pairs["call_id"], "payload": serde_json::from_str::<Value>(&pairs["payload"]).unwrap()})
        } else {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    pub fn kind(&self) -> String {
        self.event()["type"].as_str().unwrap().to_owned()
    }

    pub fn call_id(&self) -> String {
        self.event()["call_id"].as_str().unwrap().to_owned()
    }

    /// Checks the Standard Webhooks signature with `secret`, independently of the server's code.
    pub fn signed_with(&self, secret: &str) -> bool {
        let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let content =
            if self.method == "GET" { self.query.clone().unwrap_or_default().into_bytes() } else { self.body.clone() };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.", self.headers["webhook-id"], self.headers["webhook-timestamp"]).as_bytes());
        mac.update(&content);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        self.headers["webhook-signature"].split(' ').any(|s| s == expected)
    }
}

/// How the receiver answers a request (`Status(204)` unless planned otherwise).
#[derive(Debug, Clone)]
pub enum Behaviour {
    Status(u16),
    RetryAfter(u16, u64),
    Hang,
    HugeBody,
    RedirectToSelf,
    /// Answers with this status and JSON body.
    Json(u16, Value),
}

#[derive(Default)]
pub struct ReceiverState {
    got: Mutex<Vec<Received>>,
    plan: Mutex<VecDeque<Behaviour>>,
    /// Events of these calls hang (a receiver stuck on one call).
    pub hang_calls: Mutex<Vec<String>>,
    base: Mutex<String>,
}

/// A receiver listening at `url` (`…/hook`, any method).
pub struct Receiver {
    pub url: String,
    pub state: Arc<ReceiverState>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let received = Received {
        method: method.to_string(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned())).collect(),
        query,
        body: body.to_vec(),
    };
    let hang = state.hang_calls.lock().unwrap().iter().any(|c| received.method == "POST" && received.call_id() == *c);
    let behaviour =
        if hang { Behaviour::Hang } else { state.plan.lock().unwrap().pop_front().unwrap_or(Behaviour::Status(204)) };
    state.got.lock().unwrap().push(received);
    match behaviour {
        Behaviour::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Behaviour::RetryAfter(code, secs) => {
            (StatusCode::from_u16(code).unwrap(), [("retry-after", secs.to_string())]).into_response()
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Behaviour::HugeBody => (StatusCode::OK, vec![b'x'; 10 * 1024 * 1024]).into_response(),
        Behaviour::Json(code, body) => (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response(),
        Behaviour::RedirectToSelf => {
            let base = state.base.lock().unwrap().clone();
            (StatusCode::FOUND, [("location", format!("{base}/hook"))]).into_response()
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// A receiver on this address (to bring one back where it was).
    pub async fn start_on(addr: &str) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let router = Router::new().route("/hook", axum::routing::any(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        *state.base.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver { url: format!("{base}/hook"), state }
    }

    /// How the next requests are answered, in turn.
    pub fn plan(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state.plan.lock().unwrap().extend(behaviours);
    }

    /// Every request so far, in the order they came.
    pub fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// The events that were answered 2xx last... approximated as: the last request of each webhook-id.
    pub fn by_id(&self) -> HashMap<String, Vec<Received>> {
        let mut out: HashMap<String, Vec<Received>> = HashMap::new();
        for r in self.got() {
            out.entry(r.headers["webhook-id"].clone()).or_default().push(r);
        }
        out
    }
}
