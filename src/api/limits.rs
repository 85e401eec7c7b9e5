//! What keeps one client from taking the server for itself: a rate limit per API key, and a
//! deadline on every request.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::replicas::Replicas;

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

/// The per-key rate limit of the API, shared by the server processes behind one load balancer:
/// each process admits its share of the configured rate and burst — the configuration divided by
/// the processes that serve now (see [`Replicas::serving`]) — so that a round-robin balancer,
/// which sends each process its share of a key's requests, lets through the configured rate in
/// all. The division follows the heartbeats: a process that joins or leaves changes every
/// process's share within a heartbeat, and the buckets start full at the new size.
///
/// Requests are counted by the credential they carry: the SHA-256 of their `Authorization`
/// header (never the key itself). Requests without one share one bucket; they are refused with
/// 401 anyway.
pub struct RateLimit {
    rate_per_second: u32,
    burst: u32,
    replicas: Replicas,
    /// The buckets for this many processes.
    limiter: RwLock<(usize, Arc<Limiter>)>,
}

type Limiter = DefaultKeyedRateLimiter<[u8; 32]>;

impl RateLimit {
    /// The rate limit the settings ask for, if any.
    pub fn new(settings: &Settings, replicas: Replicas) -> Option<Arc<RateLimit>> {
        let rate_per_second = settings.rate_per_second.filter(|r| *r > 0)?;
        let burst = settings.burst.filter(|b| *b > 0).unwrap_or(rate_per_second);
        let serving = replicas.serving();
        let limiter = Arc::new(Limiter::keyed(share(rate_per_second, burst, serving)));
        let limit = Arc::new(RateLimit { rate_per_second, burst, replicas, limiter: RwLock::new((serving, limiter)) });
        forget_idle_keys(Arc::downgrade(&limit));
        Some(limit)
    }

    /// The buckets for the processes serving now.
    fn current(&self) -> Arc<Limiter> {
        let serving = self.replicas.serving();
        {
            let current = self.limiter.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == serving {
                return current.1.clone();
            }
        }
        let mut current = self.limiter.write().unwrap_or_else(|e| e.into_inner());
        if current.0 != serving {
            tracing::info!(
                replicas = serving,
                "the rate limit is shared by {serving} server processes now: this one admits its share"
            );
            *current = (serving, Arc::new(Limiter::keyed(share(self.rate_per_second, self.burst, serving))));
        }
        current.1.clone()
    }
}

/// One process's share of a rate and burst divided among `replicas` processes: the rate divided
/// exactly (a longer refill period), the burst rounded (at least one request).
fn share(rate_per_second: u32, burst: u32, replicas: usize) -> Quota {
    let replicas = replicas.max(1) as u64;
    let period = Duration::from_nanos((1_000_000_000 * replicas / u64::from(rate_per_second)).max(1));
    let burst = ((f64::from(burst) / replicas as f64).round() as u32).max(1);
    Quota::with_period(period).expect("a period above zero").allow_burst(NonZeroU32::new(burst).expect("at least one"))
}

/// Refuses a request over its key's share of the rate with `429`, a `Retry-After` and a `detail`.
pub async fn rate_limited(State(limit): State<Arc<RateLimit>>, req: Request, next: Next) -> Response<Body> {
    let credential = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
    let key: [u8; 32] = Sha256::digest(credential).into();
    match limit.current().check_key(&key) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Whole seconds, rounded up: a client told 0 would come right back.
            let seconds = (wait.as_secs_f64().ceil() as u64).max(1);
            let detail = format!("Too many requests with this API key: try again in {seconds} s");
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "detail": detail }))).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

/// Drops the buckets of keys that have been idle long enough to be full again, once a minute,
/// for as long as the limit exists.
fn forget_idle_keys(limit: Weak<RateLimit>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limit) = limit.upgrade() else { break };
            let limiter = limit.current();
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_admits_its_share() {
        let one = share(1, 24, 1);
        assert_eq!((one.burst_size().get(), one.replenish_interval()), (24, Duration::from_secs(1)));
        let three = share(1, 24, 3);
        assert_eq!((three.burst_size().get(), three.replenish_interval()), (8, Duration::from_secs(3)));
        // A burst that does not divide is rounded, never below one request.
        assert_eq!(share(10, 10, 3).burst_size().get(), 3);
        assert_eq!(share(10, 2, 5).burst_size().get(), 1);
        assert_eq!(share(1000, 1000, 4).replenish_interval(), Duration::from_millis(4));
    }
}
