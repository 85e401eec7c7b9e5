//! Warm transfers on Twilio (`action_add_to_conference`, `action_set_hold`), as `warm-transfer.mdx`
//! describes them: the call moves into a conference, the bot joins it on a leg of its own, the
//! person is put on hold, the third party is dialled in, and the person is taken off hold.
//!
//! The bot's audio is a media stream, which Twilio can only connect to a call, not to a
//! conference. So the conference calls a number of the account connection's **steering pool**;
//! that number's calls come to this server, which connects them to the call's running
//! conversation (on the process running it, the stream waits on standby until the person's call
//! has moved into the conference, then takes over; on another, it takes the conversation over).
//! The steering number is leased to the call from then until the bot leaves the conference, and
//! dials the third party in: the pool's size is the number of warm transfers under way at once.
//! A pool with no free number refuses (429, as the guide says).
//!
//! Everything of a warm transfer is a row of the database (`warm_transfers`), so that any replica
//! finds it: the lease (a number is one call's at a time whatever the number of replicas), the
//! bot leg (the steering number's inbound webhook and the leg's stream may land anywhere), and the
//! carrier's news of the conference and of the third party's leg, written by whichever replica
//! its callback reaches and read by the one carrying out the action (the live call's warm-transfer steps, above this layer).

use std::time::Duration;

use uuid::Uuid;

use super::twilio::Credentials;
use super::{Carrier, Telephony};
use crate::domain::phone::PhoneNumber;
use crate::store::calls::CallRow;
use crate::store::now;
use crate::store::steering::{self, Lease, WarmRow};

/// The third party's leg, as the carrier reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThirdParty {
    Answered,
    /// Busy, no answer, failed, canceled: the carrier's word for it.
    NotAnswered(String),
}

impl ThirdParty {
    fn word(&self) -> &str {
        match self {
            ThirdParty::Answered => "answered",
            ThirdParty::NotAnswered(why) => why,
        }
    }
}

/// Why no steering number could be leased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoLease {
    #[error("this call is already in a conference")]
    AlreadyInConference,
    #[error("the account connection's steering pool has no numbers: add one with add_to_steering_pool")]
    EmptyPool,
    #[error("every number of the account connection's steering pool is in use by another warm transfer")]
    Exhausted,
    #[error("the steering pool cannot be read now: {0}")]
    Unavailable(String),
}

/// The conference's name at the carrier.
pub fn conference_name(call_id: Uuid) -> String {
    format!("vocode-{call_id}")
}

/// How long a steering number stays leased to a call whose holder never gives it back (a
/// process that died mid-transfer; a lease whose call has ended is given back sooner).
const LEASE: Duration = Duration::from_secs(2 * 60 * 60);
/// How often a step waiting for the carrier's news reads it.
const POLL: Duration = Duration::from_millis(100);

/// One write to the database, in a transaction of its own.
macro_rules! write {
    ($store:expr, |$c:ident| $body:expr) => {
        async {
            let mut tx = $store.begin().await?;
            let out = {
                let $c = tx.conn();
                $body.await?
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(out)
        }
        .await
    };
}

/// A Twilio carrier's credentials (a steering pool is always a Twilio account connection's).
pub fn creds<'c>(carrier: &'c Carrier<'_>) -> &'c Credentials {
    carrier.twilio_credentials().expect("the steering pool is a Twilio account connection's")
}

/// A warm transfer's rows, and the carrier's side of its steps.
impl Telephony {
    /// Leases a free number of `pool` (digits) to the call — in the database, so that a number is
    /// one call's at a time whatever the number of replicas — and opens its warm transfer.
    pub async fn lease_steering(&self, call_id: Uuid, pool: &[String]) -> Result<PhoneNumber, NoLease> {
        let numbers: Vec<PhoneNumber> = pool.iter().filter_map(|n| PhoneNumber::parse(n).ok()).collect();
        if numbers.is_empty() {
            return Err(NoLease::EmptyPool);
        }
        let digits: Vec<String> = numbers.iter().map(|n| n.digits().to_owned()).collect();
        let at = now();
        let until = at + chrono::Duration::from_std(LEASE).expect("a short duration");
        let leased = write!(self.store, |c| steering::lease(c, call_id, &digits, at, until));
        let number = match leased {
            Ok(Lease::Leased(digits)) => digits,
            Ok(Lease::AlreadyHeld) => return Err(NoLease::AlreadyInConference),
            Ok(Lease::Exhausted) => return Err(NoLease::Exhausted),
            Err(e) => return Err(NoLease::Unavailable(e.to_string())),
        };
        Ok(numbers.into_iter().find(|n| n.digits() == number).expect("a number of the pool"))
    }

    /// The call a steering number is leased to, for a call the carrier brings to that number.
    pub async fn steering_holder(&self, to: &str) -> Result<Option<Uuid>, sqlx::Error> {
        let Ok(number) = PhoneNumber::parse(to) else { return Ok(None) };
        let mut handle = self.store.read().await?;
        steering::holder(handle.conn(), number.digits(), now()).await
    }

    /// The steering number's inbound call `sid` is the bot's conference leg of the call the number
    /// is leased to (kept with the lease: any replica recognises its stream).
    pub async fn bot_leg_answered(&self, to: &str, sid: &str) -> Result<Option<Uuid>, sqlx::Error> {
        let Ok(number) = PhoneNumber::parse(to) else { return Ok(None) };
        write!(self.store, |c| steering::bot_leg_answered(c, number.digits(), sid, now()))
    }

    /// Whether a stream the carrier opens for `call_sid` is the bot's conference leg of the call.
    pub async fn is_bot_leg(&self, call_id: Uuid, call_sid: Option<&str>) -> bool {
        let Some(sid) = call_sid else { return false };
        let read = async {
            let mut handle = self.store.read().await?;
            steering::is_bot_leg(handle.conn(), call_id, sid).await
        };
        read.await.unwrap_or_else(|e| {
            tracing::warn!(%call_id, error = %e, "cannot read the call's warm transfer");
            false
        })
    }

    /// The call's warm transfer as it stands.
    pub async fn warm(&self, call_id: Uuid) -> Result<Option<WarmRow>, String> {
        let read = async {
            let mut handle = self.store.read().await?;
            steering::get(handle.conn(), call_id).await
        };
        read.await.map_err(|e| format!("the warm transfer cannot be read: {e}"))
    }

    /// Waits, up to `limit`, for what `found` finds in the call's warm transfer (written by
    /// whichever replica the carrier's news reached); `None` when it does not come, or the
    /// transfer is gone.
    pub async fn until_warm<T>(
        &self,
        call_id: Uuid,
        limit: Duration,
        found: impl Fn(&WarmRow) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.warm(call_id).await {
                Ok(Some(row)) => {
                    if let Some(found) = found(&row) {
                        return Some(found);
                    }
                }
                Ok(None) => return None,
                Err(reason) => tracing::warn!(%call_id, %reason, "the warm transfer's news cannot be read now"),
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn warn(call_id: Uuid, what: &str, result: Result<(), sqlx::Error>) {
        if let Err(e) = result {
            tracing::warn!(%call_id, error = %e, "the warm transfer's {what} could not be written");
        }
    }

    /// This replica bound the bot leg's stream.
    pub async fn bot_bound(&self, call_id: Uuid, replica: &str) {
        Self::warn(call_id, "bot leg", write!(self.store, |c| steering::bot_bound(c, call_id, replica)));
    }

    pub async fn set_bot_participant(&self, call_id: Uuid, participant: &str, conference_sid: Option<&str>) {
        let written = write!(self.store, |c| steering::bot_participant(c, call_id, participant, conference_sid));
        Self::warn(call_id, "participant", written);
    }

    /// The person's call joined the conference `conference_sid`.
    pub async fn person_joined(&self, call_id: Uuid, conference_sid: &str) -> Result<(), sqlx::Error> {
        write!(self.store, |c| steering::person_joined(c, call_id, conference_sid))
    }

    /// The carrier's id of the third party's leg, once it has said it.
    pub async fn third_party_dialled(&self, call_id: Uuid, leg: &str) {
        Self::warn(call_id, "third party", write!(self.store, |c| steering::third_party_dialled(c, call_id, leg)));
    }

    /// News of the third party's leg `leg` (its callback may come before the carrier's answer to
    /// the dial request); `false` when the call's third party is another leg.
    pub async fn third_party_news(&self, call_id: Uuid, leg: &str, news: &ThirdParty) -> Result<bool, sqlx::Error> {
        write!(self.store, |c| steering::third_party_news(c, call_id, leg, news.word()))
    }

    /// The action's outcome, for the conversation wherever it runs now.
    pub async fn warm_outcome(&self, call_id: Uuid, outcome: &serde_json::Value) {
        let outcome = outcome.to_string();
        Self::warn(call_id, "outcome", write!(self.store, |c| steering::outcome(c, call_id, &outcome)));
    }

    /// The bot's conference leg ended: its steering number goes back to the pool.
    pub async fn bot_left(&self, call_id: Uuid) {
        Self::warn(call_id, "end", write!(self.store, |c| steering::bot_left(c, call_id)));
    }

    /// Forgets the call's conference, and gives its steering number back.
    pub async fn forget_conference(&self, call_id: Uuid) {
        if let Err(e) = write!(self.store, |c| steering::release(c, call_id)) {
            tracing::warn!(%call_id, error = %e, "the steering number could not be given back (its lease expires)");
        }
    }

    /// The call's Twilio account and the steering pool of its account connection (one read).
    pub async fn account_and_pool(&self, row: &CallRow) -> Result<(Carrier<'_>, Vec<String>), String> {
        match self.steering(row).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err("warm transfers take a number of an account connection's steering pool, and this call \
                             goes through no account connection"
                .into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Puts the person's call on hold in its conference, or takes it off hold.
    pub async fn hold_person(
        &self,
        call_id: Uuid,
        creds: &Credentials,
        person: &str,
        hold: bool,
    ) -> Result<(), String> {
        let conference = self
            .warm(call_id)
            .await?
            .and_then(|w| w.conference_sid)
            .ok_or("the carrier has not said which conference the call is in")?;
        self.twilio.hold_participant(creds, &conference, person, hold).await.map_err(|e| e.to_string())?;
        write!(self.store, |c| steering::on_hold(c, call_id, hold)).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The third party left the conference before the bot handed the person over: the person, if
    /// on hold, is taken off it, and the bot goes on with them.
    pub async fn third_party_left(&self, row: &CallRow, warm: &WarmRow) {
        let (Some(person), true) = (row.state.telephony_id.clone(), warm.person_on_hold) else { return };
        match self.account_and_pool(row).await {
            Ok((carrier, _)) => {
                if let Err(reason) = self.hold_person(row.id, creds(&carrier), &person, false).await {
                    tracing::warn!(call_id = %row.id, %reason, "the person could not be taken off hold");
                }
            }
            Err(reason) => tracing::warn!(call_id = %row.id, %reason, "the person could not be taken off hold"),
        }
    }
}
