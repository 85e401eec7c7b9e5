//! The `deliver_webhook` job: one attempt at delivering one event.
//!
//! 2xx is delivered. A timeout (10 s), a connection error, 429 or 5xx is retried on [`SCHEDULE`]
//! (about a day in all; `Retry-After` is honoured, within the schedule and an hour); 410 stops at
//! once; other 4xx are tried [`CLIENT_ERROR_ATTEMPTS`] times; a refused target (see
//! [`egress`](crate::egress)) is not retried. Every attempt is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use serde::Serialize;

use super::signing;
use crate::crypto::SecretBox;
use crate::egress;
use crate::jobs::{Attempt, Job, Outcome, Ran};
use crate::store::{now, webhooks as store, Store};

/// The wait before each retry: attempt 2 comes 5 s after attempt 1, and so on.
pub const SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// How many times a 4xx other than 410 and 429 is tried.
pub const CLIENT_ERROR_ATTEMPTS: i32 = 3;
/// How much of a receiver's answer is read (and then dropped): receivers owe us nothing but a status.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The `deliver_webhook` job: one event for one receiver.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub event_id: String,
    pub user_id: Uuid,
    pub call_id: Option<Uuid>,
    pub webhook_id: Option<Uuid>,
    pub url: String,
    pub method: String,
    /// `{"type", "call_id", "payload"}`, as sent.
    pub body: Value,
}

impl Job for DeliverWebhook {
    const NAME: &'static str = "deliver_webhook";
}

/// The client that delivers webhooks, its rule for private targets, its timeout, and the users'
/// signing secrets it has read lately.
pub struct Webhooks {
    pub client: reqwest::Client,
    pub allow_private: bool,
    pub timeout: Duration,
    store: Store,
    keys: Arc<SecretBox>,
    secrets: Mutex<HashMap<Uuid, (Vec<String>, Instant)>>,
}

/// How long a user's signing secrets are reused without reading them again: a rotation is
/// followed by every process within this time.
const SECRETS_FRESH_FOR: Duration = Duration::from_secs(10);

impl Webhooks {
    pub fn new(store: Store, keys: Arc<SecretBox>, allow_private: bool, timeout: Duration) -> Self {
        Webhooks {
            client: egress::client(allow_private, timeout),
            allow_private,
            timeout,
            store,
            keys,
            secrets: Mutex::default(),
        }
    }

    /// Whether a 2xx for the event is on record.
    async fn delivered(&self, event_id: &str) -> sqlx::Result<bool> {
        let mut handle = self.store.read().await?;
        store::delivered(handle.conn(), event_id).await
    }

    async fn secrets_of(&self, user_id: Uuid) -> anyhow::Result<Vec<String>> {
        if let Some((secrets, read_at)) = self.secrets.lock().unwrap_or_else(|e| e.into_inner()).get(&user_id) {
            if read_at.elapsed() < SECRETS_FRESH_FOR {
                return Ok(secrets.clone());
            }
        }
        let secrets = signing::signing_secrets(&self.store, &self.keys, user_id).await?;
        let mut cache = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(user_id, (secrets.clone(), Instant::now()));
        Ok(secrets)
    }
}

/// What one attempt came to.
enum Answer {
    Status(u16, Option<Duration>),
    Failed(String),
    Refused(String),
}

/// Runs a `deliver_webhook` job: one attempt, recorded with the job's outcome.
///
/// An event is sent again only while no 2xx for it is on record. A duplicate can come only from a
/// process that lost the job (it died, or lost the database) between the receiver's answer and
/// the record of it; it carries the same `webhook-id`, so receivers drop it.
pub async fn deliver(webhooks: &Webhooks, delivery: DeliverWebhook, job: Attempt) -> Ran {
    if job.number > 1 {
        // A worker that lost this job (taken over from a process that looked gone) may have
        // delivered it after all, and recorded that, with no say over the job any more.
        match webhooks.delivered(&delivery.event_id).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(event_id = %delivery.event_id, "the event was delivered already: not sent again");
                return Outcome::Done.into();
            }
            Err(e) => {
                let error = format!("the delivery record cannot be read: {e}");
                return Outcome::Retry { after: Duration::from_secs(5), error }.into();
            }
        }
    }
    let secrets = match webhooks.secrets_of(delivery.user_id).await {
        Ok(s) => s,
        Err(e) => {
            let error = format!("the signing secret cannot be read: {e}");
            return Outcome::Retry { after: Duration::from_secs(5), error }.into();
        }
    };
    let started = Instant::now();
    let answer = attempt(webhooks, &delivery, &secrets).await;
    let latency = started.elapsed();
    let attempt_no = job.number;
    let (outcome, status_code, error) = decide(&answer, attempt_no);
    let label = match &outcome {
        Outcome::Done => "delivered",
        Outcome::Retry { .. } => "retry",
        Outcome::Fail(_) => "failed",
    };
    metrics::counter!("vocode_webhook_deliveries_total", "outcome" => label).increment(1);
    metrics::histogram!("vocode_webhook_delivery_duration_seconds").record(latency.as_secs_f64());
    if label != "delivered" {
        tracing::info!(event_id = %delivery.event_id, attempt = attempt_no, outcome = label,
            error = error.as_deref().unwrap_or(""), "webhook delivery did not succeed");
    }
    let attempt = store::Attempt {
        id: Uuid::now_v7(),
        event_id: delivery.event_id.clone(),
        user_id: delivery.user_id,
        call_id: delivery.call_id,
        webhook_id: delivery.webhook_id,
        event_type: delivery.body["type"].as_str().unwrap_or_default().to_owned(),
        attempt: attempt_no,
        status_code: status_code.map(i32::from),
        latency_ms: latency.as_millis() as i64,
        error,
        outcome: label.to_owned(),
        created_at: now(),
    };
    // The attempt is recorded with the job's outcome, in the same transaction.
    Ran::with_write(
        outcome,
        Box::new(move |tx| Box::pin(async move { store::insert_attempt(tx.conn(), &attempt).await })),
    )
}

async fn attempt(webhooks: &Webhooks, delivery: &DeliverWebhook, secrets: &[String]) -> Answer {
    let mut url = match url::Url::parse(&delivery.url) {
        Ok(u) => u,
        Err(e) => return Answer::Refused(format!("the webhook URL is not a URL: {e}")),
    };
    if let Err(refused) = egress::check_url(&url, webhooks.allow_private) {
        return Answer::Refused(refused.0);
    }
    let timestamp = now().timestamp();
    let body = serde_json::to_vec(&delivery.body).expect("JSON");
    // GET sends the event as query parameters (`type`, `call_id`, and `payload` as JSON); its
    // signature covers the query string as sent. POST sends the JSON body, which is signed.
    let (request, signed) = if delivery.method.eq_ignore_ascii_case("GET") {
        url.query_pairs_mut()
            .append_pair("type", delivery.body["type"].as_str().unwrap_or_default())
            .append_pair("call_id", delivery.body["call_id"].as_str().unwrap_or_default())
            .append_pair("payload", &delivery.body["payload"].to_string());
        let signed = url.query().unwrap_or_default().as_bytes().to_vec();
        (webhooks.client.get(url), signed)
    } else {
        let req = webhooks.client.post(url).header("content-type", "application/json").body(body.clone());
        (req, body)
    };
    let signature =
        secrets.iter().map(|s| signing::sign(s, &delivery.event_id, timestamp, &signed)).collect::<Vec<_>>().join(" ");
    let sent = request
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .send()
        .await;
    match sent {
        Ok(res) => {
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read a little of the answer, so the connection can be reused; never all of it, and
            // not before the outcome is recorded: the status is the answer, and every moment
            // between it and its record is one in which a crash means a duplicate.
            tokio::spawn(async move {
                let mut stream = res.bytes_stream();
                let mut read = 0;
                while let Some(Ok(chunk)) = stream.next().await {
                    read += chunk.len();
                    if read >= MAX_ANSWER_BYTES {
                        break;
                    }
                }
            });
            Answer::Status(status, retry_after)
        }
        Err(err) => {
            if let Some(refused) = egress::refusal(&err) {
                Answer::Refused(refused)
            } else if err.is_timeout() {
                Answer::Failed(format!("no answer within {} s", webhooks.timeout.as_secs_f64()))
            } else if err.is_redirect() {
                Answer::Failed(format!("redirects could not be followed: {err}"))
            } else {
                Answer::Failed(format!("the receiver could not be reached: {err}"))
            }
        }
    }
}

fn retry_delay(attempt: i32, retry_after: Option<Duration>) -> Duration {
    let planned = SCHEDULE[((attempt - 1).max(0) as usize).min(SCHEDULE.len() - 1)];
    let jittered = planned.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
    match retry_after {
        Some(asked) => asked.clamp(jittered, jittered.max(Duration::from_secs(3600))),
        None => jittered,
    }
}

/// The outcome of an attempt: what the job does next, the status code, the error.
fn decide(answer: &Answer, attempt: i32) -> (Outcome, Option<u16>, Option<String>) {
    match answer {
        Answer::Status(code, _) if (200..300).contains(code) => (Outcome::Done, Some(*code), None),
        Answer::Status(410, _) => {
            (Outcome::Fail("the receiver answered 410 Gone: not retried".into()), Some(410), Some("410 Gone".into()))
        }
        Answer::Status(code, retry_after) if *code == 429 || *code >= 500 => {
            let error = format!("the receiver answered {code}");
            (
                Outcome::Retry { after: retry_delay(attempt, *retry_after), error: error.clone() },
                Some(*code),
                Some(error),
            )
        }
        Answer::Status(code, _) => {
            let error = format!("the receiver answered {code}");
            let outcome = if attempt >= CLIENT_ERROR_ATTEMPTS {
                Outcome::Fail(format!("{error}, {attempt} times"))
            } else {
                Outcome::Retry { after: retry_delay(attempt, None), error: error.clone() }
            };
            (outcome, Some(*code), Some(error))
        }
        Answer::Failed(error) => {
            (Outcome::Retry { after: retry_delay(attempt, None), error: error.clone() }, None, Some(error.clone()))
        }
        Answer::Refused(reason) => (Outcome::Fail(reason.clone()), None, Some(reason.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_lasts_about_a_day() {
        let total: Duration = SCHEDULE.iter().sum();
        assert!(total > Duration::from_secs(20 * 3600) && total < Duration::from_secs(30 * 3600), "{total:?}");
    }

    #[test]
    fn answers_decide_what_comes_next() {
        assert!(matches!(decide(&Answer::Status(204, None), 1).0, Outcome::Done));
        assert!(matches!(decide(&Answer::Status(410, None), 1).0, Outcome::Fail(_)));
        assert!(matches!(decide(&Answer::Status(503, None), 7).0, Outcome::Retry { .. }));
        assert!(matches!(decide(&Answer::Status(429, None), 1).0, Outcome::Retry { .. }));
        assert!(matches!(decide(&Answer::Status(400, None), 1).0, Outcome::Retry { .. }));
        assert!(matches!(decide(&Answer::Status(400, None), CLIENT_ERROR_ATTEMPTS).0, Outcome::Fail(_)));
        assert!(matches!(decide(&Answer::Failed("timeout".into()), 2).0, Outcome::Retry { .. }));
        assert!(matches!(decide(&Answer::Refused("private".into()), 1).0, Outcome::Fail(_)));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let first = retry_delay(1, None);
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6), "{first:?}");
        let asked = retry_delay(1, Some(Duration::from_secs(120)));
        assert_eq!(asked, Duration::from_secs(120));
        let too_long = retry_delay(1, Some(Duration::from_secs(999_999)));
        assert_eq!(too_long, Duration::from_secs(3600));
        let too_short = retry_delay(3, Some(Duration::from_secs(1)));
        assert!(too_short >= Duration::from_secs(24 * 60), "the schedule is the floor: {too_short:?}");
    }
}
