//! A call's state, and the one pure function that moves it: from (state, news) to the next state
//! and what must then be done. It never moves backwards — a late `ringing` after the call ended
//! changes nothing — and news delivered twice changes nothing the second time.
//!
//! | news | status | stage | stage_outcome | also |
//! |---|---|---|---|---|
//! | call row written | not_started | created | – | |
//! | carrier accepted / queued / ringing | in_progress | created | – | telephony_id, start_time |
//! | answered | in_progress | picked_up | – | |
//! | machine detection | – | – | – | human_detection_result; `no_human` with `on_no_human_answer: hangup` hangs up, ending `human_unanswered` |
//! | completed after pick-up, the person hung up | ended | picked_up | human_disconnected | end_time, duration |
//! | completed after pick-up, we hung up | ended | picked_up | bot_disconnected | end_time, duration |
//! | `calls/end` again before the carrier confirms the end (it refused or missed the first hang-up) | – | – | – | the hang-up is asked for again |
//! | the conversation is lost with the process that ran it, then completed | ended | picked_up | bot_disconnected | the server's failure ended it, not the person |
//! | busy, no-answer, canceled before pick-up | ended | created | human_unanswered | |
//! | failed, rejected before pick-up | ended | created | call_did_not_connect | |
//! | carrier refused the create request | error | created | call_did_not_connect | error_message |
//! | a transfer starts (`action_transfer_call`, `action_add_to_conference`) after pick-up | – | transfer_started | – | |
//! | the third party answers | – | transfer_successful | – | |
//! | the third party does not answer | – | – | – | the end says `transfer_unanswered` (a warm transfer's call goes on with the bot, which may still end it: `bot_disconnected`) |
//! | completed while the third party's phone rang | ended | transfer_started | transfer_disconnected | |

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} '{other}'", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(CallStatus { NotStarted = "not_started", InProgress = "in_progress", Error = "error", Ended = "ended" });
string_enum!(Stage {
    Created = "created",
    PickedUp = "picked_up",
    TransferStarted = "transfer_started",
    TransferSuccessful = "transfer_successful",
});
string_enum!(StageOutcome {
    HumanUnanswered = "human_unanswered",
    CallDidNotConnect = "call_did_not_connect",
    HumanDisconnected = "human_disconnected",
    BotDisconnected = "bot_disconnected",
    TransferUnanswered = "transfer_unanswered",
    TransferDisconnected = "transfer_disconnected",
});
string_enum!(HumanDetection { Human = "human", NoHuman = "no_human" });
string_enum!(NoHumanAnswer { Continue = "continue", Hangup = "hangup" });
string_enum!(
    /// Why the server hung up a call, remembered until the carrier confirms the end.
    Hangup {
        Requested = "requested",
        NoHuman = "no_human",
        TransferUnanswered = "transfer_unanswered",
        ConversationLost = "conversation_lost",
    }
);
string_enum!(Direction { Outbound = "outbound", Inbound = "inbound" });
string_enum!(
    /// The carrier a number or a call goes through (the spec's `TelephonyProvider`).
    Provider { Twilio = "twilio", Vonage = "vonage" }
);

impl CallStatus {
    /// Nothing changes a call in a final status any more.
    pub fn is_final(self) -> bool {
        matches!(self, CallStatus::Ended | CallStatus::Error)
    }

    /// The statuses of calls that are not over (the metrics count them).
    pub const ACTIVE: [CallStatus; 2] = [CallStatus::NotStarted, CallStatus::InProgress];
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        s.parse().ok()
    }
}

/// The part of a call the state machine reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct CallState {
    pub status: CallStatus,
    pub stage: Stage,
    pub stage_outcome: Option<StageOutcome>,
    pub human_detection_result: Option<HumanDetection>,
    pub telephony_id: Option<String>,
    pub carrier_status: Option<String>,
    pub error_message: Option<String>,
    pub hangup: Option<Hangup>,
    /// As the call was created with it (`None` for inbound calls, which cannot ask for it).
    pub on_no_human_answer: Option<NoHumanAnswer>,
    pub start_time: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i64>,
}

impl CallState {
    /// A call row as it is first written.
    pub fn new(on_no_human_answer: impl Into<Option<NoHumanAnswer>>) -> Self {
        CallState {
            status: CallStatus::NotStarted,
            stage: Stage::Created,
            stage_outcome: None,
            human_detection_result: None,
            telephony_id: None,
            carrier_status: None,
            error_message: None,
            hangup: None,
            on_no_human_answer: on_no_human_answer.into(),
            start_time: None,
            answered_at: None,
            end_time: None,
            duration_seconds: None,
        }
    }

    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }
}

/// News about a call, from the carrier or from the API.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The carrier took the create request (queued, initiated).
    Accepted {
        telephony_id: String,
    },
    Ringing,
    Answered,
    MachineDetection(HumanDetection),
    /// The call is over; `duration_seconds` is the carrier's (0 when it never connected).
    Completed {
        duration_seconds: Option<i64>,
    },
    /// Busy, no answer, or canceled before it was picked up.
    NotAnswered,
    /// Failed or rejected before it was picked up.
    Failed,
    /// The carrier refused to place the call.
    Refused {
        reason: String,
    },
    /// Placing the call kept failing; the server gave up.
    GaveUp {
        reason: String,
    },
    /// `calls/end`, or the agent ending the conversation. Again before the carrier confirms the
    /// end, it asks for the hang-up again (the carrier may have refused the first).
    EndRequested,
    /// The process that ran the call's conversation is gone (it crashed, or stopped without
    /// handing the call over) while the bot was on the line: whatever ends the call now is the
    /// server's doing, not the person's.
    ConversationLost,
    /// The agent is transferring the call to a third party (`action_transfer_call`).
    TransferStarted,
    /// The third party answered.
    TransferAnswered,
    /// The third party did not answer (busy, no answer, failed): the call is over.
    TransferFailed,
}

/// What must happen because of a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hang up (or cancel) the call at the carrier.
    HangUp,
    /// The call was never placed: drop its pending dispatch.
    CancelDispatch,
    /// Webhook events (`event_phone_call_connected`, …).
    Connected,
    HumanDetected(HumanDetection),
    EndedAfterPickUp,
    DidNotConnect,
}

/// The next state, and what to do about it. The same news twice changes nothing the second time.
pub fn transition(state: &CallState, event: &Event, now: DateTime<Utc>) -> (CallState, Vec<Effect>) {
    let mut next = state.clone();
    let mut effects = Vec::new();
    if state.is_final() {
        // The carrier's own duration of a call we ended is more exact than our clock's.
        if let (Event::Completed { duration_seconds: Some(d) }, Stage::PickedUp, CallStatus::Ended) =
            (event, state.stage, state.status)
        {
            next.duration_seconds = Some(*d);
        }
        return (next, effects);
    }
    let start = |s: &mut CallState| {
        if s.status == CallStatus::NotStarted {
            s.status = CallStatus::InProgress;
        }
        s.start_time.get_or_insert(now);
    };
    match event {
        Event::Accepted { telephony_id } => {
            start(&mut next);
            next.telephony_id.get_or_insert_with(|| telephony_id.clone());
        }
        Event::Ringing => start(&mut next),
        Event::Answered => {
            start(&mut next);
            if next.stage == Stage::Created {
                next.stage = Stage::PickedUp;
                next.answered_at = Some(now);
                effects.push(Effect::Connected);
            }
        }
        Event::MachineDetection(result) => {
            if next.human_detection_result.is_none() {
                next.human_detection_result = Some(*result);
                effects.push(Effect::HumanDetected(*result));
                if *result == HumanDetection::NoHuman
                    && next.on_no_human_answer == Some(NoHumanAnswer::Hangup)
                    && next.hangup.is_none()
                {
                    next.hangup = Some(Hangup::NoHuman);
                    effects.push(Effect::HangUp);
                }
            }
        }
        Event::Completed { duration_seconds } => {
            // A completed call that lasted was picked up, even when its `answered` news is late.
            let picked_up = next.stage != Stage::Created || duration_seconds.is_some_and(|d| d > 0);
            if picked_up {
                if next.stage == Stage::Created {
                    next.stage = Stage::PickedUp;
                    effects.push(Effect::Connected);
                }
                let outcome = match (next.hangup, next.stage) {
                    (Some(Hangup::NoHuman), _) => StageOutcome::HumanUnanswered,
                    (Some(Hangup::Requested), _) => StageOutcome::BotDisconnected,
                    (Some(Hangup::TransferUnanswered), _) => StageOutcome::TransferUnanswered,
                    (Some(Hangup::ConversationLost), _) => StageOutcome::BotDisconnected,
                    // The person hung up while the third party's phone rang.
                    (None, Stage::TransferStarted) => StageOutcome::TransferDisconnected,
                    (None, _) => StageOutcome::HumanDisconnected,
                };
                finish(&mut next, outcome, now, *duration_seconds);
                effects.push(Effect::EndedAfterPickUp);
            } else {
                finish(&mut next, StageOutcome::HumanUnanswered, now, Some(0));
                effects.push(Effect::DidNotConnect);
            }
        }
        Event::NotAnswered | Event::Failed if next.stage != Stage::Created => {
            // The carrier's word for a call that did connect: treat it as its end.
            return transition(state, &Event::Completed { duration_seconds: None }, now);
        }
        Event::NotAnswered => {
            finish(&mut next, StageOutcome::HumanUnanswered, now, Some(0));
            effects.push(Effect::DidNotConnect);
        }
        Event::Failed => {
            finish(&mut next, StageOutcome::CallDidNotConnect, now, Some(0));
            effects.push(Effect::DidNotConnect);
        }
        Event::Refused { reason } | Event::GaveUp { reason } => {
            if next.status == CallStatus::NotStarted {
                next.status = CallStatus::Error;
                next.stage_outcome = Some(StageOutcome::CallDidNotConnect);
                next.error_message = Some(reason.clone());
                next.end_time = Some(now);
                effects.push(Effect::DidNotConnect);
            }
        }
        Event::EndRequested => {
            if next.status == CallStatus::NotStarted && next.telephony_id.is_none() {
                // Never placed: it ends here, and is not placed later.
                finish(&mut next, StageOutcome::CallDidNotConnect, now, Some(0));
                next.hangup = Some(Hangup::Requested);
                effects.push(Effect::CancelDispatch);
                effects.push(Effect::DidNotConnect);
            } else {
                match next.hangup {
                    // (A warm transfer nobody answered leaves the call with the bot, which may end it.)
                    None | Some(Hangup::TransferUnanswered) | Some(Hangup::ConversationLost) => {
                        next.hangup = Some(Hangup::Requested);
                    }
                    // Asked before and not over yet: the carrier refused or missed the hang-up, so
                    // it is asked again (the reason stays the first one).
                    Some(Hangup::Requested) | Some(Hangup::NoHuman) => {}
                }
                effects.push(Effect::HangUp);
            }
        }
        Event::ConversationLost => {
            if next.stage == Stage::PickedUp && next.hangup.is_none() {
                next.hangup = Some(Hangup::ConversationLost);
            }
        }
        Event::TransferStarted => {
            if next.stage == Stage::PickedUp {
                next.stage = Stage::TransferStarted;
            }
        }
        Event::TransferAnswered => {
            if next.stage == Stage::TransferStarted {
                next.stage = Stage::TransferSuccessful;
            }
        }
        Event::TransferFailed => {
            // The carrier ends the call (Twilio's `<Dial>` is followed by nothing; Vonage is told
            // to hang up by whoever heard of the failure): its end says why.
            if next.stage == Stage::TransferStarted && next.hangup.is_none() {
                next.hangup = Some(Hangup::TransferUnanswered);
            }
        }
    }
    (next, effects)
}

fn finish(s: &mut CallState, outcome: StageOutcome, now: DateTime<Utc>, carrier_duration: Option<i64>) {
    s.status = CallStatus::Ended;
    s.stage_outcome = Some(outcome);
    s.end_time = Some(now);
    s.duration_seconds = carrier_duration.or_else(|| s.answered_at.map(|a| (now - a).num_seconds().max(0)));
}

/// Minutes a call counts toward usage: its duration rounded up to a whole minute.
pub fn billable_minutes(duration_seconds: i64) -> i64 {
    (duration_seconds.max(0) + 59) / 60
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallStatus::*;
    use Stage::*;
    use StageOutcome::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn run(start: CallState, events: &[Event]) -> (CallState, Vec<Effect>) {
        let mut state = start;
        let mut all = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let (next, effects) = transition(&state, event, t(i as i64 * 10));
            state = next;
            all.extend(effects);
        }
        (state, all)
    }

    fn summary(s: &CallState) -> (CallStatus, Stage, Option<StageOutcome>) {
        (s.status, s.stage, s.stage_outcome)
    }

    fn accepted() -> Event {
        Event::Accepted { telephony_id: "CA1".into() }
    }

    /// The README's table, row by row, driven by the news that really produces each row.
    #[test]
    fn every_row_of_the_table() {
        let fresh = CallState::new(NoHumanAnswer::Continue);
        type Row = (CallStatus, Stage, Option<StageOutcome>);
        let rows: Vec<(Vec<Event>, Row)> = vec![
            (vec![], (NotStarted, Created, None)),
            (vec![accepted()], (InProgress, Created, None)),
            (vec![accepted(), Event::Ringing], (InProgress, Created, None)),
            (vec![accepted(), Event::Ringing, Event::Answered], (InProgress, PickedUp, None)),
            (
                vec![accepted(), Event::Answered, Event::Completed { duration_seconds: Some(42) }],
                (Ended, PickedUp, Some(HumanDisconnected)),
            ),
            (
                vec![accepted(), Event::Answered, Event::EndRequested, Event::Completed { duration_seconds: Some(9) }],
                (Ended, PickedUp, Some(BotDisconnected)),
            ),
            (vec![accepted(), Event::Answered, Event::EndRequested, Event::EndRequested], (InProgress, PickedUp, None)),
            (
                vec![
                    accepted(),
                    Event::Answered,
                    Event::ConversationLost,
                    Event::Completed { duration_seconds: Some(9) },
                ],
                (Ended, PickedUp, Some(BotDisconnected)),
            ),
            (vec![accepted(), Event::Ringing, Event::NotAnswered], (Ended, Created, Some(HumanUnanswered))),
            (vec![accepted(), Event::Failed], (Ended, Created, Some(CallDidNotConnect))),
            (vec![Event::Refused { reason: "invalid To".into() }], (Error, Created, Some(CallDidNotConnect))),
            (vec![Event::GaveUp { reason: "timeout".into() }], (Error, Created, Some(CallDidNotConnect))),
        ];
        for (events, expected) in rows {
            let (state, _) = run(fresh.clone(), &events);
            assert_eq!(summary(&state), expected, "{events:?}");
        }
    }

    #[test]
    fn start_end_and_duration_are_recorded() {
        let (s, effects) = run(
            CallState::new(NoHumanAnswer::Continue),
            &[accepted(), Event::Answered, Event::Completed { duration_seconds: Some(15) }],
        );
        assert_eq!(s.telephony_id.as_deref(), Some("CA1"));
        assert_eq!(s.start_time, Some(t(0)));
        assert_eq!(s.answered_at, Some(t(10)));
        assert_eq!(s.end_time, Some(t(20)));
        assert_eq!(s.duration_seconds, Some(15));
        assert_eq!(effects, [Effect::Connected, Effect::EndedAfterPickUp]);
        // Without the carrier's duration, it is measured from the answer.
        let (s, _) = run(CallState::new(NoHumanAnswer::Continue), &[accepted(), Event::Answered, Event::Failed]);
        assert_eq!((s.stage_outcome, s.duration_seconds), (Some(HumanDisconnected), Some(10)));
    }

    #[test]
    fn machine_detection_hangs_up_only_when_asked() {
        let (s, effects) = run(
            CallState::new(NoHumanAnswer::Hangup),
            &[
                accepted(),
                Event::Answered,
                Event::MachineDetection(HumanDetection::NoHuman),
                Event::Completed { duration_seconds: Some(4) },
            ],
        );
        assert_eq!(summary(&s), (Ended, PickedUp, Some(HumanUnanswered)));
        assert_eq!(s.human_detection_result, Some(HumanDetection::NoHuman));
        assert!(effects.contains(&Effect::HangUp));
        assert!(effects.contains(&Effect::HumanDetected(HumanDetection::NoHuman)));

        let (s, effects) = run(
            CallState::new(NoHumanAnswer::Continue),
            &[
                accepted(),
                Event::Answered,
                Event::MachineDetection(HumanDetection::NoHuman),
                Event::Completed { duration_seconds: Some(4) },
            ],
        );
        assert_eq!(summary(&s), (Ended, PickedUp, Some(HumanDisconnected)));
        assert!(!effects.contains(&Effect::HangUp));
        let (_, effects) = run(
            CallState::new(NoHumanAnswer::Hangup),
            &[accepted(), Event::Answered, Event::MachineDetection(HumanDetection::Human)],
        );
        assert!(!effects.contains(&Effect::HangUp));
    }

    #[test]
    fn it_never_moves_backwards_and_repeats_change_nothing() {
        let done = run(
            CallState::new(NoHumanAnswer::Continue),
            &[accepted(), Event::Answered, Event::Completed { duration_seconds: Some(30) }],
        )
        .0;
        for late in [
            accepted(),
            Event::Ringing,
            Event::Answered,
            Event::NotAnswered,
            Event::Failed,
            Event::EndRequested,
            Event::MachineDetection(HumanDetection::Human),
            Event::Completed { duration_seconds: Some(30) },
        ] {
            let (after, effects) = transition(&done, &late, t(1000));
            assert_eq!(after, done, "{late:?} after the end");
            assert!(effects.is_empty());
        }
        let answered = run(CallState::new(NoHumanAnswer::Continue), &[accepted(), Event::Answered]).0;
        let (after, effects) = transition(&answered, &Event::Ringing, t(500));
        assert_eq!(after, answered, "a late ringing after the answer");
        assert!(effects.is_empty());
        let (again, effects) = transition(&answered, &Event::Answered, t(500));
        assert_eq!((again, effects), (answered.clone(), vec![]), "answered twice");
        let (first, e1) = transition(&answered, &Event::EndRequested, t(600));
        let (second, e2) = transition(&first, &Event::EndRequested, t(700));
        // A second end request changes nothing in the call, but asks for the hang-up again.
        assert_eq!((e1, e2, second), (vec![Effect::HangUp], vec![Effect::HangUp], first));
    }

    #[test]
    fn a_second_end_request_asks_for_the_hang_up_again_until_the_call_is_over() {
        let answered = run(CallState::new(NoHumanAnswer::Continue), &[accepted(), Event::Answered]).0;
        // The carrier refused the first hang-up: the call is still in progress, the end requested.
        let (asked, effects) = run(answered.clone(), &[Event::EndRequested, Event::EndRequested]);
        assert_eq!(effects, [Effect::HangUp, Effect::HangUp]);
        assert_eq!((summary(&asked), asked.hangup), ((InProgress, PickedUp, None), Some(Hangup::Requested)));
        // The second hang-up gets through: bot_disconnected, as if the first had.
        let (s, _) = transition(&asked, &Event::Completed { duration_seconds: Some(20) }, t(100));
        assert_eq!(summary(&s), (Ended, PickedUp, Some(BotDisconnected)));
        // A hang-up the server asked for itself (nobody answered) is asked for again too, and keeps its reason.
        let machine = run(
            CallState::new(NoHumanAnswer::Hangup),
            &[accepted(), Event::Answered, Event::MachineDetection(HumanDetection::NoHuman)],
        )
        .0;
        let (again, effects) = transition(&machine, &Event::EndRequested, t(100));
        assert_eq!((effects, again.hangup), (vec![Effect::HangUp], Some(Hangup::NoHuman)));
        // Once over, nothing asks the carrier again.
        let (_, effects) = transition(&s, &Event::EndRequested, t(200));
        assert!(effects.is_empty());
    }

    #[test]
    fn a_call_whose_conversation_was_lost_is_not_ended_by_the_person() {
        let answered = run(CallState::new(NoHumanAnswer::Continue), &[accepted(), Event::Answered]).0;
        let completed = Event::Completed { duration_seconds: Some(30) };
        let (s, effects) = run(answered.clone(), &[Event::ConversationLost, completed.clone()]);
        assert_eq!(summary(&s), (Ended, PickedUp, Some(BotDisconnected)));
        assert_eq!(effects, [Effect::EndedAfterPickUp], "nothing to do at the carrier: it is news, not a request");
        // Before pick-up there was no conversation to lose; after a transfer was answered, or
        // once the bot hung up itself, the end keeps its own reason.
        let created = run(CallState::new(NoHumanAnswer::Continue), &[accepted()]).0;
        assert_eq!(transition(&created, &Event::ConversationLost, t(50)).0, created);
        let transferred = run(answered.clone(), &[Event::TransferStarted, Event::TransferAnswered]).0;
        let (s, _) = run(transferred, &[Event::ConversationLost, completed.clone()]);
        assert_eq!(summary(&s), (Ended, TransferSuccessful, Some(HumanDisconnected)));
        let (s, _) = run(answered.clone(), &[Event::EndRequested, Event::ConversationLost, completed.clone()]);
        assert_eq!(s.stage_outcome, Some(BotDisconnected));
        // calls/end on a call whose conversation was lost hangs it up.
        let (s, effects) = run(answered, &[Event::ConversationLost, Event::EndRequested]);
        assert_eq!((s.hangup, effects), (Some(Hangup::Requested), vec![Effect::HangUp]));
    }

    #[test]
    fn the_carriers_duration_of_a_call_we_ended_is_kept() {
        let ended = run(
            CallState::new(NoHumanAnswer::Continue),
            &[accepted(), Event::Answered, Event::EndRequested, Event::Completed { duration_seconds: None }],
        )
        .0;
        assert_eq!(ended.duration_seconds, Some(20), "answered at 10 s, ended at 30 s");
        let (after, effects) = transition(&ended, &Event::Completed { duration_seconds: Some(14) }, t(99));
        assert_eq!(
            (after.duration_seconds, after.stage_outcome, after.end_time),
            (Some(14), ended.stage_outcome, ended.end_time)
        );
        assert!(effects.is_empty());
    }

    #[test]
    fn out_of_order_completion_still_counts_the_pick_up() {
        // `completed` (with a duration) arrives before `in-progress`.
        let (s, effects) = run(
            CallState::new(NoHumanAnswer::Continue),
            &[accepted(), Event::Completed { duration_seconds: Some(12) }, Event::Answered],
        );
        assert_eq!(summary(&s), (Ended, PickedUp, Some(HumanDisconnected)));
        assert_eq!(effects, [Effect::Connected, Effect::EndedAfterPickUp]);
        let (s, _) =
            run(CallState::new(NoHumanAnswer::Continue), &[accepted(), Event::Completed { duration_seconds: Some(0) }]);
        assert_eq!(summary(&s), (Ended, Created, Some(HumanUnanswered)));
    }

    #[test]
    fn ending_a_call_that_was_never_placed() {
        let (s, effects) = run(CallState::new(NoHumanAnswer::Continue), &[Event::EndRequested]);
        assert_eq!(summary(&s), (Ended, Created, Some(CallDidNotConnect)));
        assert!(effects.contains(&Effect::CancelDispatch));
        // …and a carrier that answers afterwards changes nothing.
        let (after, _) = transition(&s, &accepted(), t(100));
        assert_eq!(after, s);
        // A refusal only ends a call that was not placed.
        let placed = run(CallState::new(NoHumanAnswer::Continue), &[accepted()]).0;
        let (after, _) = transition(&placed, &Event::Refused { reason: "x".into() }, t(5));
        assert_eq!(after, placed);
    }

    #[test]
    fn a_transfer_moves_the_stage_on_and_its_end_says_how_it_went() {
        let answered = run(CallState::new(NoHumanAnswer::Continue), &[accepted(), Event::Answered]).0;
        let completed = Event::Completed { duration_seconds: Some(40) };
        // Answered by the third party, then over: the transfer was a success.
        let (s, _) = run(answered.clone(), &[Event::TransferStarted, Event::TransferAnswered, completed.clone()]);
        assert_eq!(summary(&s), (Ended, TransferSuccessful, Some(HumanDisconnected)));
        // Nobody answered.
        let (s, effects) = run(answered.clone(), &[Event::TransferStarted, Event::TransferFailed, completed.clone()]);
        assert_eq!(summary(&s), (Ended, TransferStarted, Some(TransferUnanswered)));
        assert!(!effects.contains(&Effect::HangUp), "the carrier ends a failed transfer itself");
        // The person hung up while it rang.
        // A warm transfer nobody answered leaves the bot on the call, which it may end.
        let (s, effects) = run(
            answered.clone(),
            &[Event::TransferStarted, Event::TransferFailed, Event::EndRequested, completed.clone()],
        );
        assert_eq!(summary(&s), (Ended, TransferStarted, Some(BotDisconnected)));
        assert_eq!(effects.iter().filter(|e| **e == Effect::HangUp).count(), 1);
        let (s, _) = run(answered.clone(), &[Event::TransferStarted, completed.clone()]);
        assert_eq!(summary(&s), (Ended, TransferStarted, Some(TransferDisconnected)));
        // Transfer news out of turn changes nothing.
        let (s, _) = run(answered.clone(), &[Event::TransferAnswered, Event::TransferFailed]);
        assert_eq!(s, answered);
        let created = CallState::new(NoHumanAnswer::Continue);
        assert_eq!(run(created.clone(), &[Event::TransferStarted]).0, created, "not before pick-up");
    }

    #[test]
    fn minutes_round_up() {
        assert_eq!([0, 1, 59, 60, 61, 3600].map(billable_minutes), [0, 1, 1, 1, 2, 60]);
    }
}
