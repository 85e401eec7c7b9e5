//! A call on either carrier, for tests written once and run on both: how a call is placed on the
//! carrier's line and answered, and how the carrier is told to hang up, in this suite's world. The
//! carrier's side of the media stream, shared with the other suites, is `support::line`.

use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::StatusCode;
use serde_json::{json, Value};

pub use crate::support::line::{Carrier, Line};

use super::{create, World, OUR_NUMBER};

/// Distinct numbers to call, so that calls of one test never look like one another's.
static NEXT_CALLEE: AtomicU32 = AtomicU32::new(0);

impl Line {
    /// Places a call with an inline agent, from a number of the account on this carrier.
    pub(super) async fn call(self, w: &World, agent: Value) -> Value {
        self.call_with(w, agent, json!({})).await
    }

    /// [`Self::call`], with more of `calls/create`'s fields (`extra`'s).
    pub(super) async fn call_with(self, w: &World, agent: Value, extra: Value) -> Value {
        let from = match self {
            Line::Twilio => OUR_NUMBER.to_owned(),
            Line::Vonage => w
                .vonage_number
                .get_or_init(|| async {
                    let (status, number) = w
                        .app
                        .post("/v1/numbers/buy", json!({"telephony_provider": "vonage", "area_code": "646"}))
                        .await;
                    assert_eq!(status, StatusCode::OK, "{number}");
                    number["number"].as_str().unwrap().to_owned()
                })
                .await
                .clone(),
        };
        let to = format!("1650556{:04}", NEXT_CALLEE.fetch_add(1, Ordering::Relaxed) % 10_000);
        let mut body = json!({"from_number": from, "to_number": to, "agent": agent});
        for (key, value) in extra.as_object().expect("fields") {
            body[key] = value.clone();
        }
        create(w, body).await
    }

    /// The person picks up: the carrier says so and opens the call's media stream.
    pub(super) async fn answer(self, w: &World, call: &Value) -> Carrier {
        self.pick_up(&w.twilio, &w.vonage, call).await
    }

    /// Whether the server asked the carrier to hang the call up.
    pub(super) fn hung_up(self, w: &World, call: &Value) -> bool {
        self.asked_to_hang_up(&w.twilio, &w.vonage, call)
    }
}

/// Twilio connects the stream `twiml` (`<Connect><Stream>`) asks for, for its call `call_sid`.
pub async fn twilio_stream(w: &World, twiml: &str, call_sid: &str) -> Carrier {
    crate::support::line::twilio_stream(&w.twilio, twiml, call_sid).await
}
