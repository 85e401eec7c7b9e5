//! The carrier account a call or a number goes through, and everything done with it. Call sites
//! ask [`Telephony::carrier`] for a [`Carrier`] and call its methods; only here does the code
//! choose between Twilio and Vonage.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{twilio, vonage, CarrierError, Dial, Dialed, PlacedCall, Telephony};
use crate::domain::call::{Event, Provider};
use crate::domain::documents::{unseal, ACCOUNT_CONNECTIONS, TWILIO_ACCOUNT_CONNECTION};
use crate::domain::phone::PhoneNumber;
use crate::store::calls::CallRow;
use crate::store::records;

/// The account: a Twilio account (an account connection's, or the server's own), or the server's
/// Vonage application.
#[derive(Debug, Clone)]
pub enum CarrierAccount {
    Twilio(twilio::Credentials),
    Vonage,
}

impl CarrierAccount {
    pub fn provider(&self) -> Provider {
        match self {
            CarrierAccount::Twilio(_) => Provider::Twilio,
            CarrierAccount::Vonage => Provider::Vonage,
        }
    }
}

/// A carrier account with the clients that reach it.
pub struct Carrier<'a> {
    telephony: &'a Telephony,
    pub account: CarrierAccount,
}

impl Telephony {
    /// The account a user's call or number of `provider` goes through: for Twilio, the account
    /// connection's (when it names one) or the server's own account.
    pub async fn carrier(
        &self,
        user_id: Uuid,
        provider: Provider,
        connection_id: Option<Uuid>,
    ) -> Result<Carrier<'_>, CarrierError> {
        let account = match provider {
            Provider::Twilio => CarrierAccount::Twilio(self.twilio_credentials(user_id, connection_id).await?),
            Provider::Vonage => CarrierAccount::Vonage,
        };
        Ok(Carrier { telephony: self, account })
    }

    /// The account a call goes through.
    pub async fn carrier_of(&self, row: &CallRow) -> Result<Carrier<'_>, CarrierError> {
        self.carrier(row.user_id, row.telephony_provider, row.telephony_account_connection_id).await
    }

    async fn twilio_credentials(
        &self,
        user_id: Uuid,
        connection_id: Option<Uuid>,
    ) -> Result<twilio::Credentials, CarrierError> {
        let Some(id) = connection_id else {
            return self.server_twilio.clone().ok_or_else(|| {
                CarrierError::Rejected(
                    "no Twilio account is configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN".into(),
                )
            });
        };
        Ok(twilio_credentials_of(&self.twilio_connection(user_id, id).await?))
    }

    /// A Twilio call's account connection, read once: its account, and its steering pool's numbers
    /// (digits). `None` for a call that goes through no account connection (no pool).
    pub async fn steering(&self, row: &CallRow) -> Result<Option<(Carrier<'_>, Vec<String>)>, CarrierError> {
        let Some(id) = row.telephony_account_connection_id.filter(|_| row.telephony_provider == Provider::Twilio)
        else {
            return Ok(None);
        };
        let clear = self.twilio_connection(row.user_id, id).await?;
        let pool = clear["steering_pool"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_str);
        let pool = pool.map(str::to_owned).collect();
        Ok(Some((Carrier { telephony: self, account: CarrierAccount::Twilio(twilio_credentials_of(&clear)) }, pool)))
    }

    /// A user's Twilio account connection, its secrets unsealed.
    async fn twilio_connection(&self, user_id: Uuid, id: Uuid) -> Result<serde_json::Value, CarrierError> {
        let unavailable = |e: sqlx::Error| CarrierError::Transient(format!("the database is unavailable: {e}"));
        let mut handle = self.store.read().await.map_err(unavailable)?;
        let record = records::get(handle.conn(), ACCOUNT_CONNECTIONS.table, user_id, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| CarrierError::Rejected(format!("account connection {id} no longer exists")))?;
        drop(handle);
        if record.kind != TWILIO_ACCOUNT_CONNECTION {
            return Err(CarrierError::Rejected(format!("account connection {id} is not a Twilio account")));
        }
        unseal(ACCOUNT_CONNECTIONS.table, &record.kind, record.body.0, record.sealed.as_deref(), &self.secrets)
            .map_err(|e| CarrierError::Rejected(format!("the account connection's secret cannot be read: {e}")))
    }
}

/// The credentials of an unsealed Twilio account connection.
fn twilio_credentials_of(clear: &serde_json::Value) -> twilio::Credentials {
    twilio::Credentials {
        account_sid: clear["credentials"]["twilio_account_sid"].as_str().unwrap_or_default().to_owned(),
        auth_token: clear["credentials"]["twilio_auth_token"].as_str().unwrap_or_default().to_owned(),
    }
}

/// What the carrier says of a call.
#[derive(Debug, Clone)]
pub struct Reported {
    /// Its word for the call's status, as it said it.
    pub status: String,
    /// What that means for the call, when the status is one this server knows.
    pub event: Option<Event>,
}

impl Carrier<'_> {
    pub fn provider(&self) -> Provider {
        self.account.provider()
    }

    /// What a status the carrier reports means for a call.
    pub fn status_event(&self, status: &str, duration: Option<i64>) -> Option<Event> {
        status_event(self.provider(), status, duration)
    }

    /// Asks the carrier to place a call to this server.
    pub async fn place(&self, dial: &Dial) -> Result<Dialed, CarrierError> {
        let t = self.telephony;
        match &self.account {
            CarrierAccount::Twilio(creds) => t.twilio.create_call(creds, dial, &t.twilio_call_urls(dial.call_id)).await,
            CarrierAccount::Vonage => {
                let headers = json!({"call_id": dial.call_id.to_string(), "token": t.stream_token(dial.call_id)});
                t.vonage.create_call(dial, &t.vonage_call_urls(dial.call_id), headers).await
            }
        }
    }

    /// The account's recent calls between two numbers, made since `since`, oldest first.
    pub async fn recent_calls(
        &self,
        to: &PhoneNumber,
        from: &PhoneNumber,
        since: DateTime<Utc>,
    ) -> Result<Vec<PlacedCall>, CarrierError> {
        let t = self.telephony;
        let mut listed = match &self.account {
            CarrierAccount::Twilio(creds) => t.twilio.find_calls(creds, to, from).await?,
            CarrierAccount::Vonage => t.vonage.find_calls(to, from, since).await?,
        };
        listed.retain(|c| c.created.is_none_or(|created| created >= since));
        listed.sort_by_key(|c| c.created);
        Ok(listed)
    }

    /// Ends a call; `answered` says whether it was picked up (as far as this server knows).
    /// Returns the status the carrier reports for the call afterwards.
    pub async fn hang_up(&self, telephony_id: &str, answered: bool) -> Result<String, CarrierError> {
        let t = self.telephony;
        match &self.account {
            CarrierAccount::Twilio(creds) => {
                // Twilio ends a call in progress with `completed` and a ringing one with
                // `canceled`; the carrier may know better than we do which one it is.
                let first = t.twilio.hang_up(creds, telephony_id, answered).await;
                let resource = match first {
                    Err(CarrierError::Rejected(_)) => t.twilio.hang_up(creds, telephony_id, !answered).await,
                    other => other,
                }?;
                Ok(resource.status)
            }
            CarrierAccount::Vonage => {
                t.vonage.hang_up(telephony_id).await?;
                Ok(if answered { "completed" } else { "canceled" }.to_owned())
            }
        }
    }

    /// Transfers an answered call to `to`: Twilio dials it in place of the call's stream, Vonage
    /// connects it; the third party's progress comes back to this server's transfer callbacks.
    pub async fn transfer(&self, row: &CallRow, to: &PhoneNumber) -> Result<(), CarrierError> {
        let t = self.telephony;
        let telephony_id =
            row.state.telephony_id.as_deref().ok_or_else(|| {
                CarrierError::Rejected("the call has no carrier id yet: it cannot be transferred".into())
            })?;
        match &self.account {
            CarrierAccount::Twilio(creds) => {
                let twiml = twilio::transfer_twiml(
                    &to.e164(),
                    &t.url(&format!("/telephony/twilio/transfer/{}", row.id)),
                    &t.url(&format!("/telephony/twilio/transfer/{}/answered", row.id)),
                );
                t.twilio.redirect(creds, telephony_id, &twiml).await.map(|_| ())
            }
            CarrierAccount::Vonage => {
                let event_url = t.url(&format!("/telephony/vonage/transfer/{}", row.id));
                let ncco = vonage::transfer_ncco(to.digits(), &row.agent_phone_number, &event_url);
                t.vonage.transfer(telephony_id, ncco).await
            }
        }
    }

    /// Points an answered call at a new media stream here (any replica answers it): Twilio runs
    /// the stream's TwiML in place of what it was running, Vonage transfers the call to the
    /// stream's NCCO. What the call was connected to is let go.
    pub async fn reconnect(&self, row: &CallRow) -> Result<(), CarrierError> {
        let t = self.telephony;
        let telephony_id = row
            .state
            .telephony_id
            .as_deref()
            .ok_or_else(|| CarrierError::Rejected("the call has no carrier id yet".into()))?;
        match &self.account {
            CarrierAccount::Twilio(creds) => {
                t.twilio.redirect(creds, telephony_id, &t.stream_twiml(row.id)).await.map(|_| ())
            }
            CarrierAccount::Vonage => t.vonage.transfer(telephony_id, t.stream_ncco(row.id, false)).await,
        }
    }

    /// Presses `keys` on an answered call through the carrier's API (Vonage's `dtmf`; Twilio has
    /// none: its keys go as tones on the media stream).
    pub async fn press(&self, row: &CallRow, keys: &str) -> Result<(), CarrierError> {
        let telephony_id =
            row.state.telephony_id.as_deref().ok_or_else(|| {
                CarrierError::Rejected("the call has no carrier id yet: no keys can be pressed".into())
            })?;
        match &self.account {
            CarrierAccount::Twilio(_) => {
                Err(CarrierError::Rejected("Twilio takes keys as tones on the media stream, not by its API".into()))
            }
            CarrierAccount::Vonage => self.telephony.vonage.send_dtmf(telephony_id, keys).await,
        }
    }

    /// What the carrier says of a call now.
    pub async fn fetch_call(&self, telephony_id: &str) -> Result<Reported, CarrierError> {
        let t = self.telephony;
        let (status, duration) = match &self.account {
            CarrierAccount::Twilio(creds) => {
                let call = t.twilio.fetch_call(creds, telephony_id).await?;
                let duration = call.duration.and_then(|d| d.parse().ok());
                (call.status, duration)
            }
            CarrierAccount::Vonage => {
                let call = t.vonage.fetch_call(telephony_id).await?;
                (call.status, call.duration)
            }
        };
        Ok(Reported { event: self.status_event(&status, duration), status })
    }

    /// Streams a call's recording from where the carrier keeps it.
    pub async fn fetch_recording(&self, url: &str) -> Result<reqwest::Response, CarrierError> {
        let t = self.telephony;
        match &self.account {
            CarrierAccount::Twilio(creds) => t.twilio.fetch_recording(creds, url).await,
            CarrierAccount::Vonage => t.vonage.fetch_recording(url).await,
        }
    }

    /// Buys a number (in the area code, when given) that sends its calls to this server. Returns
    /// the number and the carrier's reference to it (Twilio's id, Vonage's country).
    pub async fn buy_number(&self, area_code: Option<&str>) -> Result<(PhoneNumber, String), CarrierError> {
        let t = self.telephony;
        match &self.account {
            CarrierAccount::Twilio(creds) => {
                t.twilio.buy_number(creds, area_code, Some(&t.twilio_voice_url()), &t.twilio_status_url()).await
            }
            CarrierAccount::Vonage => Ok((t.vonage.buy_number(area_code).await?, "US".to_owned())),
        }
    }

    /// Gives a bought number back.
    pub async fn release_number(&self, number: &PhoneNumber, carrier_ref: &str) -> Result<(), CarrierError> {
        let t = self.telephony;
        match &self.account {
            CarrierAccount::Twilio(creds) => t.twilio.release_number(creds, carrier_ref).await,
            CarrierAccount::Vonage => t.vonage.cancel_number(number, carrier_ref).await,
        }
    }

    /// Finds a number the account already has and, when it takes calls, points its calls at this
    /// server. Returns the account's id of the number, or `None` when the account has no such
    /// number. (Only Twilio numbers are linked this way.)
    pub async fn point_number_here(
        &self,
        number: &PhoneNumber,
        takes_calls: bool,
    ) -> Result<Option<String>, CarrierError> {
        let t = self.telephony;
        let CarrierAccount::Twilio(creds) = &self.account else {
            return Err(CarrierError::Rejected("only Twilio numbers are linked through an account connection".into()));
        };
        let Some(sid) = t.twilio.find_number(creds, number).await? else {
            return Ok(None);
        };
        if takes_calls {
            t.twilio.configure_number(creds, &sid, Some(&t.twilio_voice_url()), &t.twilio_status_url()).await?;
        }
        Ok(Some(sid))
    }

    /// The Twilio credentials, for verifying the account's signed requests.
    pub fn twilio_credentials(&self) -> Option<&twilio::Credentials> {
        match &self.account {
            CarrierAccount::Twilio(creds) => Some(creds),
            CarrierAccount::Vonage => None,
        }
    }
}

/// What a carrier's status word means for a call.
pub fn status_event(provider: Provider, status: &str, duration: Option<i64>) -> Option<Event> {
    match provider {
        Provider::Twilio => twilio::status_event(status, duration),
        Provider::Vonage => vonage::status_event(status, duration),
    }
}
