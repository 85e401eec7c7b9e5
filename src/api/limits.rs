//! What keeps one client from taking the server for itself: a rate limit per API key, and a
//! deadline on every request.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Json;
use governor::middleware::NoOpMiddleware;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

use crate::error::ApiError;

/// The limits of the HTTP API, from the settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// Requests per second per API key; `None`: no limit.
    pub rate_per_second: Option<u32>,
    /// The bucket's size; default: one second's worth.
    pub burst: Option<u32>,
    /// The longest a request may take.
    pub request_timeout: Duration,
}

/// Requests are counted by the credential they carry: the SHA-256 of their `Authorization`
/// header (never the key itself). Requests without one share one bucket; they are refused
/// with 401 anyway.
#[derive(Debug, Clone, Copy)]
pub struct ApiKeyExtractor;

impl KeyExtractor for ApiKeyExtractor {
    type Key = [u8; 32];

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<Self::Key, GovernorError> {
        let credential = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        Ok(Sha256::digest(credential).into())
    }
}

type Config = GovernorConfig<ApiKeyExtractor, NoOpMiddleware>;

/// The rate limit's layer, when one is set.
pub fn rate_limit(settings: &Settings) -> Option<GovernorLayer<ApiKeyExtractor, NoOpMiddleware, Body>> {
    let rate = settings.rate_per_second.filter(|r| *r > 0)?;
    let burst = settings.burst.filter(|b| *b > 0).unwrap_or(rate);
    let config: Arc<Config> = Arc::new(
        GovernorConfigBuilder::default()
            .per_nanosecond((1_000_000_000 / u64::from(rate)).max(1))
            .burst_size(burst)
            .key_extractor(ApiKeyExtractor)
            .finish()?,
    );
    forget_idle_keys(Arc::downgrade(&config));
    Some(GovernorLayer::new(config).error_handler(too_many_requests))
}

/// Drops the buckets of keys that have been idle long enough to be full again, once a minute,
/// for as long as the limiter exists.
fn forget_idle_keys(config: Weak<Config>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(config) = config.upgrade() else { break };
            config.limiter().retain_recent();
            config.limiter().shrink_to_fit();
        }
    });
}

fn too_many_requests(err: GovernorError) -> Response<Body> {
    match err {
        GovernorError::TooManyRequests { wait_time, .. } => {
            // governor rounds the wait down to whole seconds; a client told 0 would come right back.
            let seconds = wait_time.max(1);
            let detail = format!("Too many requests with this API key: try again in {seconds} s");
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "detail": detail }))).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        other => ApiError::Internal(anyhow::anyhow!("rate limiter: {other}")).into_response(),
    }
}

/// The largest request line and headers a handler sees; larger ones are answered 431. (The
/// connection loop bounds what it buffers, too: see [`crate::serve::Limits`].)
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

pub async fn head_size(req: Request, next: Next) -> Response<Body> {
    let size = req.uri().to_string().len()
        + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > MAX_HEAD_BYTES {
        let detail = format!("The request's line and headers are larger than {MAX_HEAD_BYTES} bytes");
        return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Json(json!({ "detail": detail }))).into_response();
    }
    next.run(req).await
}

/// Answers 503 when a request (its body included) takes longer than the deadline; the handler is
/// dropped, and with it any transaction it had open.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response<Body> {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_secs = limit.as_secs_f64(), "a request ran out of time");
            ApiError::Unavailable(format!("The request did not complete within {} seconds", limit.as_secs_f64()))
                .into_response()
        }
    }
}
