//! Twilio's requests: status callbacks, answering-machine detection, the TwiML of an answered
//! call, and inbound calls.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::{answer_inbound, apply_news, forbidden, holder_of, load_call, load_call_by_carrier_id, xml};
use crate::calls::News;
use crate::domain::call::{Event, Provider};
use crate::error::ApiError;
use crate::store::calls::CallRow;
use crate::telephony::twilio as protocol;
use crate::AppState;

/// A request from Twilio: its form parameters, and the public URL and signature to verify it by.
/// Extracting it verifies nothing: which account's token verifies it depends on what it is about,
/// so handlers call [`TwilioRequest::verify`] (or extract [`TwilioCall`], which does).
pub struct TwilioRequest {
    url: String,
    params: Vec<(String, String)>,
    signature: Option<String>,
}

impl FromRequest<AppState> for TwilioRequest {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let signature = req.headers().get("x-twilio-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = axum::body::Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        Ok(TwilioRequest {
            url: state.telephony.url(&path),
            params: form_urlencoded::parse(&body).into_owned().collect(),
            signature,
        })
    }
}

impl TwilioRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.param(name).ok_or_else(|| ApiError::BadRequest(format!("{name} is missing")))
    }

    /// Verifies the signature with the account's token, and that the request is that account's.
    pub fn verify(&self, creds: &protocol::Credentials) -> Result<(), ApiError> {
        let Some(signature) = &self.signature else {
            return Err(forbidden("the request is not signed"));
        };
        if !protocol::verify_signature(&creds.auth_token, &self.url, &self.params, signature) {
            return Err(forbidden("the signature does not match"));
        }
        if self.param("AccountSid").is_some_and(|sid| sid != creds.account_sid) {
            return Err(forbidden("the request is from another account"));
        }
        Ok(())
    }

    /// Verifies the request with the Twilio account a call or number goes through.
    async fn verify_for(
        &self,
        state: &AppState,
        user_id: Uuid,
        connection_id: Option<Uuid>,
        whose: &str,
    ) -> Result<(), ApiError> {
        let carrier = state
            .telephony
            .carrier(user_id, Provider::Twilio, connection_id)
            .await
            .map_err(|e| forbidden(&format!("{whose} account cannot verify the request ({e})")))?;
        let creds = carrier.twilio_credentials().expect("a Twilio carrier has Twilio credentials");
        self.verify(creds)
    }

    /// Progress news from a status callback.
    fn news(&self) -> Result<News, ApiError> {
        let status = self.required("CallStatus")?;
        let duration = self.param("CallDuration").and_then(|d| d.parse().ok());
        let event = protocol::status_event(status, duration)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown CallStatus '{status}'")))?;
        let mut news = News::carrier(event, status);
        news.recording_url = self.param("RecordingUrl").map(str::to_owned);
        Ok(news)
    }
}

/// A verified Twilio request about one of this server's Twilio calls, named in the path.
pub struct TwilioCall {
    pub row: CallRow,
    pub req: TwilioRequest,
}

impl FromRequest<AppState> for TwilioCall {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let TwilioLeg { row, req } = TwilioLeg::from_request(req, state).await?;
        if let (Some(known), Some(given)) = (&row.state.telephony_id, req.param("CallSid")) {
            if known != given {
                return Err(ApiError::BadRequest("CallSid is not this call's".into()).into_response());
            }
        }
        Ok(TwilioCall { row, req })
    }
}

pub async fn status(State(state): State<AppState>, call: TwilioCall) -> Result<StatusCode, ApiError> {
    apply_news(&state, &call.row, call.req.param("CallSid"), call.req.news()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Progress of inbound calls, which the number's status callback reports by `CallSid`.
pub async fn status_by_sid(State(state): State<AppState>, req: TwilioRequest) -> Result<StatusCode, ApiError> {
    let sid = req.required("CallSid")?;
    let row = load_call_by_carrier_id(&state, Provider::Twilio, sid, "CallSid").await?;
    req.verify_for(&state, row.user_id, row.telephony_account_connection_id, "the call's").await?;
    apply_news(&state, &row, None, req.news()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn amd(State(state): State<AppState>, call: TwilioCall) -> Result<StatusCode, ApiError> {
    let answered_by = call.req.required("AnsweredBy")?;
    if let Some(result) = protocol::answered_by(answered_by) {
        let status = call.row.state.carrier_status.clone().unwrap_or_default();
        apply_news(
            &state,
            &call.row,
            call.req.param("CallSid"),
            News::carrier(Event::MachineDetection(result), status),
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Twilio asks what to do once the call is answered: connect its audio to this server.
pub async fn twiml(State(state): State<AppState>, call: TwilioCall) -> Result<Response, ApiError> {
    if call.row.state.is_final() {
        return Ok(xml(protocol::hangup_twiml()));
    }
    apply_news(&state, &call.row, call.req.param("CallSid"), News::carrier(Event::Answered, "in-progress")).await?;
    Ok(xml(state.telephony.stream_twiml(call.row.id)))
}

/// The call's stream ended without the call ending (the server that held it stopped, or moved
/// the call here): a new stream, on whichever replica answers. A call that has ended, or whose
/// conversation is over, is hung up instead; either way nothing changes.
pub async fn resume(State(state): State<AppState>, call: TwilioCall) -> Result<Response, ApiError> {
    if call.row.state.is_final() || state.calls.conversation_is_over(call.row.id).await? {
        return Ok(xml(protocol::hangup_twiml()));
    }
    tracing::info!(call_id = %call.row.id, "the carrier asks for the call's stream again");
    Ok(xml(state.telephony.stream_twiml(call.row.id)))
}

/// How a transfer's `<Dial>` ended (its `action` callback, about the call itself): answered and
/// over, or not answered at all. Either way the call ends here.
pub async fn transfer_ended(State(state): State<AppState>, call: TwilioCall) -> Result<Response, ApiError> {
    let event = match call.req.param("DialCallStatus") {
        Some("completed" | "answered") => Some(Event::TransferAnswered),
        // The person hung up while it rang: the call's own end says so (`transfer_disconnected`).
        Some("canceled") => None,
        _ => Some(Event::TransferFailed),
    };
    if let Some(event) = event {
        apply_news(&state, &call.row, call.req.param("CallSid"), News::api(event)).await?;
    }
    Ok(xml(protocol::hangup_twiml()))
}

/// A verified Twilio request about another leg of one of this server's Twilio calls (named in the
/// path): a transfer's or a conference's, whose `CallSid` is not the call's own.
pub struct TwilioLeg {
    pub row: CallRow,
    pub req: TwilioRequest,
}

impl FromRequest<AppState> for TwilioLeg {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Path(call_id) =
            Path::<Uuid>::from_request_parts(&mut parts, state).await.map_err(IntoResponse::into_response)?;
        let row = load_call(state, call_id).await.map_err(IntoResponse::into_response)?;
        if row.telephony_provider != Provider::Twilio {
            return Err(forbidden("the call is not a Twilio call").into_response());
        }
        let req = TwilioRequest::from_request(Request::from_parts(parts, body), state).await?;
        let verified = req.verify_for(state, row.user_id, row.telephony_account_connection_id, "the call's").await;
        verified.map_err(IntoResponse::into_response)?;
        Ok(TwilioLeg { row, req })
    }
}

/// The third party's leg of a transfer (its `<Number>` status callback): it picked up.
pub async fn transfer_answered(State(state): State<AppState>, leg: TwilioLeg) -> Result<StatusCode, ApiError> {
    let TwilioLeg { row, req } = leg;
    if row.state.telephony_id.as_deref() != req.param("ParentCallSid") {
        return Err(ApiError::BadRequest("ParentCallSid is not this call's".into()));
    }
    if matches!(req.param("CallStatus"), Some("in-progress" | "answered")) {
        apply_news(&state, &row, None, News::api(Event::TransferAnswered)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A warm transfer's conference (its `statusCallback`): the person's call joined it. Kept with
/// the transfer, for whichever replica carries it out.
pub async fn conference_event(State(state): State<AppState>, leg: TwilioLeg) -> Result<StatusCode, ApiError> {
    let TwilioLeg { row, req } = leg;
    let joined = req.param("StatusCallbackEvent") == Some("participant-join");
    if joined && req.param("CallSid").is_some() && req.param("CallSid") == row.state.telephony_id.as_deref() {
        let conference = req.required("ConferenceSid")?;
        let unavailable = |e: sqlx::Error| ApiError::Unavailable(e.to_string());
        state.telephony.person_joined(row.id, conference).await.map_err(unavailable)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The third party's leg of a warm transfer (its participant's status callback): answered, not
/// answered, or over — once the person was handed over to them, its end is the call's. Read from
/// and kept with the transfer, whichever replica carries it out.
pub async fn third_party(State(state): State<AppState>, leg: TwilioLeg) -> Result<StatusCode, ApiError> {
    use crate::telephony::conference::ThirdParty;
    let TwilioLeg { row, req } = leg;
    let sid = req.required("CallSid")?;
    let status = req.required("CallStatus")?;
    let Some(warm) = state.telephony.warm(row.id).await.map_err(ApiError::Unavailable)? else {
        return Err(ApiError::BadRequest("the call has no warm transfer".into()));
    };
    let is_third_party = warm.third_party.as_deref() == Some(sid);
    let news = match status {
        "in-progress" | "answered" => ThirdParty::Answered,
        "busy" | "no-answer" | "failed" | "canceled" => ThirdParty::NotAnswered(status.to_owned()),
        "completed" if is_third_party && warm.bot_left && warm.third_party_answered => {
            // The person would be left alone in the conference: the call is over.
            state.telephony.forget_conference(row.id).await;
            if let Some(person) = row.state.telephony_id.as_deref().filter(|_| !row.state.is_final()) {
                let carrier =
                    state.telephony.carrier_of(&row).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
                if let Err(e) = carrier.hang_up(person, true).await {
                    tracing::warn!(call_id = %row.id, error = %e, "the call could not be ended after its third party left");
                }
            }
            return Ok(StatusCode::NO_CONTENT);
        }
        "completed" if is_third_party && warm.third_party_answered => {
            // Before the bot handed the person over: the bot goes on with the person.
            state.telephony.third_party_left(&row, &warm).await;
            return Ok(StatusCode::NO_CONTENT);
        }
        "completed" => ThirdParty::NotAnswered(status.to_owned()),
        _ => return Ok(StatusCode::NO_CONTENT),
    };
    let kept = state.telephony.third_party_news(row.id, sid, &news).await;
    if !kept.map_err(|e| ApiError::Unavailable(e.to_string()))? {
        return Err(ApiError::BadRequest("CallSid is not this call's third party".into()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// An inbound call to a number whose voice webhook points here.
pub async fn inbound(State(state): State<AppState>, req: TwilioRequest) -> Result<Response, ApiError> {
    let (Some(to), Some(from), Some(sid)) = (req.param("To"), req.param("From"), req.param("CallSid")) else {
        return Err(ApiError::BadRequest("To, From and CallSid are required".into()));
    };
    let steered = state.telephony.steering_holder(to).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if let Some(call_id) = steered {
        // A steering number the call's conference dialled: the bot's leg of a warm transfer.
        let row = load_call(&state, call_id).await?;
        req.verify_for(&state, row.user_id, row.telephony_account_connection_id, "the call's").await?;
        state.telephony.bot_leg_answered(to, sid).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        return Ok(xml(state.telephony.stream_twiml(call_id)));
    }
    let (to, holder) = holder_of(&state, to, Provider::Twilio).await?;
    req.verify_for(&state, holder.user_id, holder.telephony_account_connection_id, "the number's").await?;
    match answer_inbound(&state, &holder, Provider::Twilio, sid, from, &to).await? {
        Some(call_id) => Ok(xml(state.telephony.stream_twiml(call_id))),
        None => Ok(xml(protocol::reject_twiml())),
    }
}
