//! Warm transfers on Twilio (`action_add_to_conference`, `action_set_hold`), as `warm-transfer.mdx`
//! describes them: the call moves into a conference, the bot joins it on a leg of its own, the
//! person is put on hold, the third party is dialled in, and the person is taken off hold.
//!
//! The bot's audio is a media stream, which Twilio can only connect to a call, not to a
//! conference. So the conference calls a number of the account connection's **steering pool**;
//! that number's calls come to this server, which connects them to the call's running
//! conversation (the stream waits on standby until the person's call has moved into the
//! conference, then takes over). The steering number is leased to the call from then until the
//! bot leaves the conference, and dials the third party in: the pool's size is the number of warm
//! transfers under way at once. A pool with no free number refuses (429, as the guide says).
//!
//! The lease is a row of the database (`steering_leases`): a number is one call's at a time
//! whatever the number of replicas, the steering number's inbound webhook finds its call there on
//! any replica, and so does the bot leg's stream. The rest is this process's: the carrier's news
//! of the conference (who joined, how the third party's leg went) comes to the callbacks of
//! [`crate::telephony::inbound::twilio`], which hand it to the action waiting for it; the action's
//! steps themselves are the live call's (`crate::session::warm`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::twilio::Credentials;
use super::{Carrier, Telephony};
use crate::domain::phone::PhoneNumber;
use crate::store::calls::CallRow;
use crate::store::now;
use crate::store::steering::{self, Lease};

/// The third party's leg, as the carrier reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThirdParty {
    Answered,
    /// Busy, no answer, failed, canceled: the carrier's word for it.
    NotAnswered(String),
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

/// One call's warm transfer.
#[derive(Debug, Default)]
struct Warm {
    steering: Option<PhoneNumber>,
    /// The conference's call to the steering number (the bot's participant).
    bot_participant: Option<String>,
    /// The steering number's inbound call, whose media stream carries the bot.
    bot_leg: Option<String>,
    bot_bound: Option<oneshot::Sender<()>>,
    conference_sid: Option<String>,
    /// The person's call joined the conference.
    person_joined: Option<oneshot::Sender<()>>,
    person_on_hold: bool,
    third_party: Option<String>,
    third_party_news: Option<oneshot::Sender<ThirdParty>>,
    third_party_answered: bool,
    /// The bot left the conference (the person was handed to the third party).
    bot_left: bool,
}

/// What an action needs to know of a call's conference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub conference_sid: Option<String>,
    pub bot_participant: Option<String>,
    pub person_on_hold: bool,
    pub third_party_answered: bool,
}

#[derive(Default)]
struct Inner {
    calls: HashMap<Uuid, Warm>,
}

/// This process's warm transfers.
#[derive(Default)]
pub struct Conferences {
    inner: Mutex<Inner>,
}

/// The conference's name at the carrier.
pub fn conference_name(call_id: Uuid) -> String {
    format!("vocode-{call_id}")
}

impl Conferences {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with_call<T>(&self, call_id: Uuid, f: impl FnOnce(&mut Warm) -> T) -> Option<T> {
        self.with(|inner| inner.calls.get_mut(&call_id).map(f))
    }

    /// Opens the call's warm transfer on the steering number leased to it (see
    /// [`Telephony::lease_steering`]); `false` when this process has one open for the call already.
    fn open(&self, call_id: Uuid, steering: PhoneNumber) -> bool {
        self.with(|inner| {
            if inner.calls.contains_key(&call_id) {
                return false;
            }
            inner.calls.insert(call_id, Warm { steering: Some(steering), ..Warm::default() });
            true
        })
    }

    /// Waits for the bot's leg to bind its stream; call before the conference dials it.
    pub fn expect_bot(&self, call_id: Uuid) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.with_call(call_id, |warm| warm.bot_bound = Some(tx))?;
        Some(rx)
    }

    pub fn set_bot_participant(&self, call_id: Uuid, participant: String, conference_sid: Option<String>) {
        self.with_call(call_id, |warm| {
            warm.bot_participant = Some(participant);
            if conference_sid.is_some() {
                warm.conference_sid = conference_sid;
            }
        });
    }

    /// The steering number's inbound call is the bot's leg.
    pub fn bot_leg_answered(&self, call_id: Uuid, call_sid: &str) {
        self.with_call(call_id, |warm| warm.bot_leg = Some(call_sid.to_owned()));
    }

    /// Whether a stream the carrier opens for `call_sid` is the bot's conference leg.
    pub fn is_bot_leg(&self, call_id: Uuid, call_sid: Option<&str>) -> bool {
        let Some(sid) = call_sid else { return false };
        self.with_call(call_id, |warm| warm.bot_leg.as_deref() == Some(sid)).unwrap_or(false)
    }

    /// The bot's leg has bound its stream.
    pub fn bot_bound(&self, call_id: Uuid) {
        if let Some(Some(tx)) = self.with_call(call_id, |warm| warm.bot_bound.take()) {
            let _ = tx.send(());
        }
    }

    pub fn expect_person(&self, call_id: Uuid) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        self.with_call(call_id, |warm| warm.person_joined = Some(tx))?;
        Some(rx)
    }

    /// The person's call joined the conference `conference_sid`.
    pub fn person_joined(&self, call_id: Uuid, conference_sid: &str) {
        let tx = self.with_call(call_id, |warm| {
            warm.conference_sid = Some(conference_sid.to_owned());
            warm.person_joined.take()
        });
        if let Some(Some(tx)) = tx {
            let _ = tx.send(());
        }
    }

    pub fn set_on_hold(&self, call_id: Uuid, on_hold: bool) {
        self.with_call(call_id, |warm| warm.person_on_hold = on_hold);
    }

    /// Waits for news of the third party; call before dialling it.
    pub fn expect_third_party(&self, call_id: Uuid) -> Option<oneshot::Receiver<ThirdParty>> {
        let (tx, rx) = oneshot::channel();
        self.with_call(call_id, |warm| warm.third_party_news = Some(tx))?;
        Some(rx)
    }

    /// The carrier's id of the third party's leg, once it has said it.
    pub fn third_party_dialled(&self, call_id: Uuid, call_sid: &str) {
        self.with_call(call_id, |warm| {
            warm.third_party.get_or_insert_with(|| call_sid.to_owned());
        });
    }

    /// News of the third party's leg `call_sid` (its callback may come before the carrier's
    /// answer to the dial request); `false` when the call's third party is another leg.
    pub fn third_party(&self, call_id: Uuid, call_sid: &str, news: ThirdParty) -> bool {
        let tx = self.with_call(call_id, |warm| {
            if warm.third_party.get_or_insert_with(|| call_sid.to_owned()) != call_sid {
                return None;
            }
            if news == ThirdParty::Answered {
                warm.third_party_answered = true;
            }
            Some(warm.third_party_news.take())
        });
        match tx.flatten() {
            Some(Some(tx)) => {
                let _ = tx.send(news);
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    pub fn is_third_party(&self, call_id: Uuid, call_sid: &str) -> bool {
        self.with_call(call_id, |warm| warm.third_party.as_deref() == Some(call_sid)).unwrap_or(false)
    }

    pub fn snapshot(&self, call_id: Uuid) -> Option<Snapshot> {
        self.with_call(call_id, |warm| Snapshot {
            conference_sid: warm.conference_sid.clone(),
            bot_participant: warm.bot_participant.clone(),
            person_on_hold: warm.person_on_hold,
            third_party_answered: warm.third_party_answered,
        })
    }

    /// The bot left the conference (its steering number goes back to the pool: see
    /// [`Telephony::bot_left`]). The call's conference is forgotten unless the person stays in it
    /// with the third party (whose leaving ends the call).
    fn bot_left(&self, call_id: Uuid) {
        self.with(|inner| {
            let Some(warm) = inner.calls.get_mut(&call_id) else { return };
            warm.steering = None;
            warm.bot_left = true;
            if !warm.third_party_answered {
                inner.calls.remove(&call_id);
            }
        });
    }

    /// Whether the bot has handed the person to the third party and left.
    pub fn handed_over(&self, call_id: Uuid) -> bool {
        self.with_call(call_id, |warm| warm.bot_left && warm.third_party_answered).unwrap_or(false)
    }

    /// Forgets the call's conference (its steering number goes back to the pool: see
    /// [`Telephony::forget_conference`]).
    fn forget(&self, call_id: Uuid) {
        self.with(|inner| inner.calls.remove(&call_id));
    }
}

/// A Twilio carrier's credentials (a steering pool is always a Twilio account connection's).
pub fn creds<'c>(carrier: &'c Carrier<'_>) -> &'c Credentials {
    carrier.twilio_credentials().expect("the steering pool is a Twilio account connection's")
}

/// How long a steering number stays leased to a call whose holder never gives it back (a
/// process that died mid-transfer; a lease whose call has ended is given back sooner).
const LEASE: Duration = Duration::from_secs(2 * 60 * 60);

/// The carrier's side of a warm transfer's steps.
impl Telephony {
    /// Leases a free number of `pool` (digits) to the call — in the database, so that a number is
    /// one call's at a time whatever the number of replicas — and opens its warm transfer here.
    pub async fn lease_steering(&self, call_id: Uuid, pool: &[String]) -> Result<PhoneNumber, NoLease> {
        let numbers: Vec<PhoneNumber> = pool.iter().filter_map(|n| PhoneNumber::parse(n).ok()).collect();
        if numbers.is_empty() {
            return Err(NoLease::EmptyPool);
        }
        let digits: Vec<String> = numbers.iter().map(|n| n.digits().to_owned()).collect();
        let at = now();
        let until = at + chrono::Duration::from_std(LEASE).expect("a short duration");
        let leased = async {
            let mut tx = self.store.begin().await?;
            let leased = steering::lease(tx.conn(), call_id, &digits, at, until).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(leased)
        };
        let number = match leased.await {
            Ok(Lease::Leased(digits)) => digits,
            Ok(Lease::AlreadyHeld(_)) => return Err(NoLease::AlreadyInConference),
            Ok(Lease::Exhausted) => return Err(NoLease::Exhausted),
            Err(e) => return Err(NoLease::Unavailable(e.to_string())),
        };
        let number = numbers.into_iter().find(|n| n.digits() == number).expect("a number of the pool");
        if !self.conferences.open(call_id, number.clone()) {
            self.give_back(call_id).await;
            return Err(NoLease::AlreadyInConference);
        }
        Ok(number)
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
        let mut tx = self.store.begin().await?;
        let call_id = steering::bot_leg_answered(tx.conn(), number.digits(), sid, now()).await?;
        tx.commit().await?;
        if let Some(call_id) = call_id {
            self.conferences.bot_leg_answered(call_id, sid);
        }
        Ok(call_id)
    }

    /// Whether a stream the carrier opens for `call_sid` is the bot's conference leg of the call.
    pub async fn is_bot_leg(&self, call_id: Uuid, call_sid: Option<&str>) -> bool {
        let Some(sid) = call_sid else { return false };
        if self.conferences.is_bot_leg(call_id, Some(sid)) {
            return true;
        }
        let read = async {
            let mut handle = self.store.read().await?;
            steering::is_bot_leg(handle.conn(), call_id, sid).await
        };
        match read.await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "cannot read the call's steering lease");
                false
            }
        }
    }

    /// Gives the call's steering number back to its pool.
    async fn give_back(&self, call_id: Uuid) {
        let released = async {
            let mut tx = self.store.begin().await?;
            let released = steering::release(tx.conn(), call_id).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(released)
        };
        if let Err(e) = released.await {
            tracing::warn!(%call_id, error = %e, "the steering number could not be given back (its lease expires)");
        }
    }

    /// The bot's conference leg ended: its steering number goes back to the pool.
    pub async fn bot_left(&self, call_id: Uuid) {
        self.conferences.bot_left(call_id);
        self.give_back(call_id).await;
    }

    /// Forgets the call's conference, and gives its steering number back.
    pub async fn forget_conference(&self, call_id: Uuid) {
        self.conferences.forget(call_id);
        self.give_back(call_id).await;
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
            .conferences
            .snapshot(call_id)
            .and_then(|s| s.conference_sid)
            .ok_or("the carrier has not said which conference the call is in")?;
        self.twilio.hold_participant(creds, &conference, person, hold).await.map_err(|e| e.to_string())?;
        self.conferences.set_on_hold(call_id, hold);
        Ok(())
    }

    /// The third party left the conference before the bot handed the person over: the person, if
    /// on hold, is taken off it, and the bot goes on with them.
    pub async fn third_party_left(&self, row: &CallRow) {
        let on_hold = self.conferences.snapshot(row.id).is_some_and(|s| s.person_on_hold);
        let (Some(person), true) = (row.state.telephony_id.clone(), on_hold) else { return };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reaches_the_action_waiting_for_it_and_nobody_else() {
        let conferences = Conferences::default();
        let call = Uuid::new_v4();
        assert!(conferences.open(call, PhoneNumber::parse("14155550101").unwrap()));
        assert!(!conferences.open(call, PhoneNumber::parse("14155550102").unwrap()), "one conference a call");
        let mut news = conferences.expect_third_party(call).unwrap();
        conferences.third_party_dialled(call, "CA3");
        assert!(!conferences.third_party(call, "CAother", ThirdParty::Answered), "another leg's news");
        assert!(news.try_recv().is_err());
        assert!(conferences.third_party(call, "CA3", ThirdParty::Answered));
        assert_eq!(news.try_recv().unwrap(), ThirdParty::Answered);
        assert!(conferences.snapshot(call).unwrap().third_party_answered);
        conferences.bot_left(call);
        assert!(conferences.handed_over(call), "the person stays with the third party");
        conferences.bot_leg_answered(call, "CAleg");
        assert!(conferences.is_bot_leg(call, Some("CAleg")));
        assert!(!conferences.is_bot_leg(Uuid::new_v4(), Some("CAleg")));
    }
}
