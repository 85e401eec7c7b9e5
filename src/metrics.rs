//! Prometheus metrics, exposed at `GET /metrics` in the text format: HTTP requests by route and
//! status with their latency, calls by status, carrier requests by carrier and outcome with their
//! latency, webhook deliveries by outcome, and the job queue's depth and oldest ready job.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

// 0.4 s: the local recogniser's target (an utterance's words within 400 ms of its end).
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.4, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's recorder (one per process, however many servers it runs).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("valid buckets")
            .install_recorder()
            .expect("the only metrics recorder of the process")
    })
}

/// Counts and times every request, by its route (never its URL).
pub async fn track(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("vocode_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("vocode_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// Counts and times a request to a carrier.
pub fn carrier_request(carrier: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!("vocode_carrier_requests_total", "carrier" => carrier, "outcome" => outcome).increment(1);
    metrics::histogram!("vocode_carrier_request_duration_seconds", "carrier" => carrier)
        .record(started.elapsed().as_secs_f64());
}
