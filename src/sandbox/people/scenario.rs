//! Who (or what) is at a number: the scenario the number dialled chooses, and the script the
//! person who answers follows.
//!
//! | the number dialled ends in | what happens |
//! |---|---|
//! | `5550101` | a machine answers (answering-machine detection says `no_human`) and hangs up after 5 s |
//! | `5550102` | busy |
//! | `5550103` | rings, no answer |
//! | `5550104` | the call fails |
//! | `5550105` | a person answers and stays on the line, silent, until the call is ended through the API |
//! | `5550106` | the carrier refuses the number |
//! | `5550110` | a person answers, hears the greeting, says one thing, and barges in one second into the bot's answer to say goodbye; hangs up once the bot has answered that |
//! | `5550111` | a person answers, hears the greeting, asks about an offer, says "mhm" and "yeah" while the bot answers, then says goodbye and hangs up |
//! | `5550112` | a person answers and says nothing, until the server hangs up (or 120 s) |
//! | `5550113` | a person answers, hears the greeting, asks "Can I speak to a person, please?" and waits on the line to be transferred (hangs up after 120 s) |
//! | anything else | a person answers, hears the greeting, says one thing, hears the answer, says goodbye, hears that answer and hangs up |
//!
//! A scripted person ([`Sandbox::script`](crate::sandbox::Sandbox::script)) says their sentences
//! with the local voice instead, one a turn.

use std::time::Duration;

use tokio::time::sleep;

use super::phrases::{Phrase, ASK_FOR_PERSON, GOODBYE, HELLO, INTERRUPT, MHM, OFFER, YEAH};
use super::{Person, ANSWER_AFTER_S};
use crate::conversation::tts::flite::Flite;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Human,
    Machine,
    Busy,
    NoAnswer,
    Failed,
    StaysOnLine,
    Invalid,
    BargeIn,
    Backchannel,
    Silent,
    AsksForHuman,
}

impl Scenario {
    pub fn of(number: &str) -> Scenario {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        match digits.get(digits.len().saturating_sub(7)..) {
            Some("5550101") => Scenario::Machine,
            Some("5550102") => Scenario::Busy,
            Some("5550103") => Scenario::NoAnswer,
            Some("5550104") => Scenario::Failed,
            Some("5550105") => Scenario::StaysOnLine,
            Some("5550106") => Scenario::Invalid,
            Some("5550110") => Scenario::BargeIn,
            Some("5550111") => Scenario::Backchannel,
            Some("5550112") => Scenario::Silent,
            Some("5550113") => Scenario::AsksForHuman,
            _ => Scenario::Human,
        }
    }
}

impl Person {
    /// Plays the person's part: their script when they have one, else their scenario's.
    pub async fn act(&self, scenario: Scenario) {
        if let (Some(script), Some(voice)) = (&self.script, &self.voice) {
            return self.say_script(script, voice).await;
        }
        match scenario {
            Scenario::Human => self.talk_and_say_goodbye().await,
            Scenario::BargeIn => self.barge_in().await,
            Scenario::Backchannel => self.backchannel().await,
            Scenario::AsksForHuman => self.ask_for_a_person().await,
            // Says nothing, and stays until the server hangs up (or gives up after a while).
            Scenario::Silent => self.stay_a_while().await,
            // A machine's or a patient person's silence, for the scenario's time.
            _ => std::future::pending().await,
        }
        sleep(self.scaled(ANSWER_AFTER_S)).await;
    }

    /// Waits for the bot's greeting, if any.
    async fn hear_greeting(&self) {
        self.hear_out(self.patience(3.0)).await;
    }

    /// Waits for the bot's greeting, then says `phrase` to it.
    async fn greet_back(&self, phrase: Phrase) {
        self.hear_greeting().await;
        self.say(phrase).await;
    }

    /// Waits for the bot to answer what the person said.
    async fn hear_answer(&self) {
        self.hear_out(self.patience_for_answer(6.0)).await;
    }

    /// Waits until the bot has been answering for `time`; whether it did.
    async fn answering_for(&self, time: Duration) -> bool {
        self.after_bot_talked(time, self.patience_for_answer(6.0)).await
    }

    /// A scripted person: one sentence a turn, each once the bot has answered the one before.
    async fn say_script(&self, script: &[String], voice: &Flite) {
        self.hear_greeting().await;
        for sentence in script {
            self.say_text(voice, sentence).await;
            self.hear_answer().await;
        }
        sleep(self.scaled(ANSWER_AFTER_S)).await;
    }

    async fn talk_and_say_goodbye(&self) {
        self.greet_back(HELLO).await;
        self.hear_answer().await;
        self.say(GOODBYE).await;
        self.hear_answer().await;
    }

    /// Says one thing, then cuts in one second into the bot's answer (its audio plays in real
    /// time) to say goodbye.
    async fn barge_in(&self) {
        self.greet_back(HELLO).await;
        let cut_in = self.answering_for(Duration::from_secs(1)).await;
        self.say(if cut_in { INTERRUPT } else { GOODBYE }).await;
        self.hear_answer().await;
    }

    /// Asks about an offer and says "mhm" and "yeah" while the bot answers, which must not cut it
    /// off; then says goodbye.
    async fn backchannel(&self) {
        self.greet_back(OFFER).await;
        if self.answering_for(Duration::from_millis(400)).await {
            self.say(MHM).await;
            if self.after_bot_talked(Duration::from_millis(1_200), Duration::from_secs(2)).await {
                self.say(YEAH).await;
            }
        }
        self.hear_out(Duration::from_secs(1)).await;
        self.say(GOODBYE).await;
        self.hear_answer().await;
    }

    /// Asks for a person, then waits on the line to be put through (or gives up after a while,
    /// and hangs up).
    async fn ask_for_a_person(&self) {
        self.greet_back(ASK_FOR_PERSON).await;
        self.stay_a_while().await;
    }

    async fn stay_a_while(&self) {
        sleep(self.scaled(120.0).max(Duration::from_secs(30))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_follow_the_number_dialled() {
        assert_eq!(Scenario::of("14155550101"), Scenario::Machine);
        assert_eq!(Scenario::of("+1 (212) 555-0102"), Scenario::Busy);
        assert_eq!(Scenario::of("14155550105"), Scenario::StaysOnLine);
        assert_eq!(Scenario::of("14155550199"), Scenario::Human);
        assert_eq!(Scenario::of("+1 415 555 0110"), Scenario::BargeIn);
        assert_eq!(Scenario::of("14155550111"), Scenario::Backchannel);
        assert_eq!(Scenario::of("14155550112"), Scenario::Silent);
        assert_eq!(Scenario::of("+14155550113"), Scenario::AsksForHuman);
        assert_eq!(Scenario::of("123"), Scenario::Human);
    }
}
