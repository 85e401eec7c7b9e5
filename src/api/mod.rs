//! The HTTP edge: routes, extractors and the middleware every request passes through.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{header, HeaderName, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::domain::call::CallStatus;
use crate::error::ApiError;
use crate::AppState;

pub mod agents;
pub mod auth;
pub mod calls;
pub mod console;
pub mod docs;
pub mod documents;
pub mod extract;
pub mod limits;
pub mod numbers;
pub mod paging;
pub mod routes;
pub mod spec;
pub mod usage;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API, with its middleware.
pub fn router(state: AppState, settings: &limits::Settings) -> Router {
    let sandbox = state.sandbox.clone();
    // The operations of the Vocode API: limited per API key, when a limit is set.
    let mut operations = Router::new()
        .merge(routes::v1())
        .route("/metrics", get(metrics))
        .route("/calls/latency", get(calls::latency))
        .route("/calls/events", get(calls::events));
    if let Some(limit) = limits::RateLimit::new(settings, state.replicas.clone()) {
        operations = operations.layer(axum::middleware::from_fn_with_state(limit, limits::rate_limited));
    }
    let router = Router::new()
        .merge(operations)
        .merge(docs::router())
        .merge(console::router())
        .merge(crate::telephony::inbound::router())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    let router = match sandbox {
        Some(sandbox) => router.nest_service("/sandbox", crate::sandbox::router(sandbox)),
        None => router,
    };
    router.layer(
        ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
            .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(make_span).on_response(on_response).on_failure(()))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
            .layer(axum::middleware::from_fn(crate::metrics::track))
            .layer(axum::middleware::from_fn(limits::head_size))
            .layer(axum::middleware::from_fn_with_state(settings.request_timeout, limits::deadline))
            .layer(CatchPanicLayer::custom(on_panic)),
    )
}

/// Requests are logged by route, never by URI: query strings carry phone numbers.
fn make_span(req: &Request<Body>) -> Span {
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
    let request_id = req.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!("request", method = %req.method(), route, request_id)
}

fn on_response<B>(res: &Response<B>, latency: Duration, _span: &Span) {
    tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "response");
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    tracing::error!("a request handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.replicas.draining() {
        // The load balancer sends nothing new here; the live calls go on, then move.
        return Err(ApiError::Unavailable("Not ready: this server is stopping (draining its live calls)".into()));
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({
            "status": "ready",
            "carrier_mode": state.telephony.mode(),
            // The server processes serving on this database, as this one counts them (shared
            // limits are divided by it).
            "replicas": state.replicas.serving(),
            "speech": state.local_speech.status_as_set(
                state.conversation.deepgram_api_key.is_some(),
                state.conversation.silero_vad,
                state.conversation.end_of_turn_model,
            ),
        }))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check: the database does not answer");
            Err(ApiError::Unavailable("Not ready: the database does not answer".into()))
        }
        Err(_) => Err(ApiError::Unavailable("Not ready: the database did not answer within 2 seconds".into())),
    }
}

async fn openapi() -> impl IntoResponse {
    static BODY: LazyLock<String> = LazyLock::new(|| spec::spec().document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], BODY.as_str())
}

/// The Prometheus text format. The queue's depth and the calls under way are read at scrape time.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let at = crate::store::now();
    if let Ok(mut handle) = state.store.read().await {
        if let Ok((depth, oldest)) = crate::store::jobs::depth(handle.conn(), at).await {
            ::metrics::gauge!("vocode_jobs_ready").set(depth as f64);
            let age = oldest.map(|o| (at - o).num_milliseconds().max(0) as f64 / 1000.0).unwrap_or(0.0);
            ::metrics::gauge!("vocode_jobs_oldest_ready_age_seconds").set(age);
        }
        if let Ok(counts) = crate::store::calls::active_counts(handle.conn()).await {
            for status in CallStatus::ACTIVE {
                let n = counts.iter().find(|(s, _)| *s == status).map(|(_, n)| *n).unwrap_or(0);
                ::metrics::gauge!("vocode_calls", "status" => status.as_str()).set(n as f64);
            }
        }
    }
    // Tasks alive in the runtime: flat over time, or something leaks.
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    ::metrics::gauge!("vocode_runtime_alive_tasks").set(tasks as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::handle().render())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Not Found".into())
}

async fn method_not_allowed() -> impl IntoResponse {
    (StatusCode::METHOD_NOT_ALLOWED, Json(json!({ "detail": "Method Not Allowed" })))
}
