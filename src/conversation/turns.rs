//! Turn-taking, as the conversational-dials guide describes it, in pure functions of what was
//! heard and how long ago: which utterances interrupt the bot (`interrupt_sensitivity`), when the
//! person's turn is over (`endpointing_sensitivity`: by the silence rule, or after the end-of-turn
//! model's verdict, and at the latest after the longest turn), how every wait scales with
//! `conversation_speed`, and when a silent call is checked on and ended (`idle_time_seconds`,
//! `ask_if_human_present_on_idle`, `ivr_navigation_mode`).

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptSensitivity {
    /// Backchannels ("mhm", "yeah", "I see") and utterances of three words or fewer do not stop
    /// the bot.
    Low,
    /// Any word stops the bot.
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointingSensitivity {
    /// The end of a sentence or a short pause ends the turn.
    Sensitive,
    /// A short wait after a finished sentence, a longer one after an unfinished one.
    Relaxed,
}

/// The agent's dials, as they shape the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Dials {
    pub interrupt: InterruptSensitivity,
    pub endpointing: EndpointingSensitivity,
    /// 0.5 to 2: every wait is divided by it.
    pub speed: f64,
    pub initial_message_delay: Duration,
    /// How long both sides may be silent before the bot checks on the person or ends the call.
    pub idle: Duration,
    pub ask_if_human_present_on_idle: bool,
}

/// The hosted service ends a call after 30 s in which nobody spoke.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);
/// With IVR navigation, the bot waits on hold this long.
pub const IVR_IDLE: Duration = Duration::from_secs(600);
/// The longest a caller's turn runs at normal speed, however it goes on: a caller who never
/// pauses (a radio behind them) is answered after this much, and no turn's audio grows without
/// bound.
pub const LONGEST_TURN: Duration = Duration::from_secs(30);

/// How long the bot, held by the person's first guessed words at `high` sensitivity, waits for
/// words that confirm the interruption before it goes on (LiveKit's false-interruption timeout is
/// 2 s after the speech stops; here it runs from the last guess, so speech still being guessed
/// keeps it held).
pub const FALSE_START: Duration = Duration::from_millis(1_500);

impl Default for Dials {
    fn default() -> Self {
        Dials {
            interrupt: InterruptSensitivity::Low,
            endpointing: EndpointingSensitivity::Relaxed,
            speed: 1.0,
            initial_message_delay: Duration::ZERO,
            idle: DEFAULT_IDLE,
            ask_if_human_present_on_idle: false,
        }
    }
}

impl Dials {
    /// The dials of an agent document (`AgentParams` as stored: defaults already filled in).
    pub fn from_agent(agent: &Value) -> Dials {
        let idle = match agent["idle_time_seconds"].as_f64() {
            Some(seconds) if seconds > 0.0 => Duration::from_secs_f64(seconds.min(86_400.0)),
            _ => DEFAULT_IDLE,
        };
        // `ivr_navigation_mode: default` waits on hold, silent: at least ten minutes, however
        // short `idle_time_seconds` is.
        let ivr_navigation = agent["ivr_navigation_mode"].as_str() == Some("default");
        let idle = if ivr_navigation { idle.max(IVR_IDLE) } else { idle };
        Dials {
            interrupt: match agent["interrupt_sensitivity"].as_str() {
                Some("high") => InterruptSensitivity::High,
                _ => InterruptSensitivity::Low,
            },
            endpointing: match agent["endpointing_sensitivity"].as_str() {
                Some("sensitive") => EndpointingSensitivity::Sensitive,
                // `auto` is, for now, the same as `relaxed` (the guide says so).
                _ => EndpointingSensitivity::Relaxed,
            },
            speed: agent["conversation_speed"].as_f64().filter(|s| s.is_finite()).unwrap_or(1.0).clamp(0.5, 2.0),
            initial_message_delay: Duration::from_secs_f64(
                agent["initial_message_delay"].as_f64().filter(|d| d.is_finite()).unwrap_or(0.0).clamp(0.0, 60.0),
            ),
            idle,
            ask_if_human_present_on_idle: agent["ask_if_human_present_on_idle"].as_bool().unwrap_or(false),
        }
    }

    /// A wait at normal speed, scaled by `conversation_speed`.
    pub fn scaled(&self, wait: Duration) -> Duration {
        wait.div_f64(self.speed)
    }

    /// When the person's turn is over: after this much silence following a sentence's end, or
    /// this much following anything else.
    pub fn endpointing(&self) -> Endpointing {
        let (after_punctuation, otherwise) = match self.endpointing {
            EndpointingSensitivity::Sensitive => (Duration::from_millis(300), Duration::from_millis(600)),
            EndpointingSensitivity::Relaxed => (Duration::from_millis(500), Duration::from_millis(1000)),
        };
        Endpointing { after_punctuation: self.scaled(after_punctuation), otherwise: self.scaled(otherwise) }
    }

    /// When a turn that has not ended by itself is ended and answered: [`LONGEST_TURN`] scaled
    /// by `conversation_speed` (15 s at 2, 60 s at 0.5).
    pub fn longest_turn(&self) -> Duration {
        self.scaled(LONGEST_TURN)
    }

    /// How long to wait after the caller's speech stopped (the voice-activity detector's offset)
    /// when the end-of-turn model has judged the pause. Without the model, [`Self::endpointing`]
    /// still rules.
    pub fn end_of_turn_waits(&self) -> EndOfTurnWaits {
        // Done: answered about when the detector is sure the caller stopped (its own 192 ms of
        // silence), as Pipecat answers Smart Turn's "complete". Not done: longer than the silence
        // rule's longest wait, as Pipecat and LiveKit (3 s) wait for an unfinished turn, and shorter.
        let (complete, incomplete) = match self.endpointing {
            EndpointingSensitivity::Sensitive => (Duration::from_millis(150), Duration::from_millis(1_200)),
            EndpointingSensitivity::Relaxed => (Duration::from_millis(200), Duration::from_millis(2_000)),
        };
        EndOfTurnWaits { complete: self.scaled(complete), incomplete: self.scaled(incomplete) }
    }

    /// Whether an interim heard on this much speech may stop the bot: at `low` sensitivity only
    /// on [`MIN_INTERIM_SPEECH`] (a recogniser's first guesses on a syllable are not what was
    /// said); a recogniser that does not date its words is taken at its word.
    pub fn interim_counts(&self, speech: Option<Duration>) -> bool {
        match self.interrupt {
            InterruptSensitivity::High => true,
            InterruptSensitivity::Low => speech.is_none_or(|s| s >= MIN_INTERIM_SPEECH),
        }
    }

    /// Whether an utterance heard while the bot speaks is only a backchannel, which leaves the
    /// bot talking (it is still kept in the transcript).
    pub fn ignores_while_speaking(&self, utterance: &str) -> bool {
        let words = words(utterance);
        if words.is_empty() {
            return true;
        }
        // Hums ("mm", "hmm", and the letters a recogniser spells one as: "M. H. M.") and fillers
        // ("uh", "um", "eh") are no words.
        let meant: Vec<&String> = words.iter().filter(|w| !is_hum(w) && !is_filler(w)).collect();
        match self.interrupt {
            InterruptSensitivity::High => false,
            InterruptSensitivity::Low => {
                meant.len() <= 3
                    || is_backchannel(utterance)
                    || is_backchannel(&meant.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(" "))
            }
        }
    }
}

/// The speech an interim must be heard on before it stops the bot at `low` sensitivity.
pub const MIN_INTERIM_SPEECH: Duration = Duration::from_millis(600);

/// The silences that end a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpointing {
    pub after_punctuation: Duration,
    pub otherwise: Duration,
}

/// The waits after a pause the end-of-turn model judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOfTurnWaits {
    /// The model says the caller is done.
    pub complete: Duration,
    /// The model says the caller is not done.
    pub incomplete: Duration,
}

impl Endpointing {
    /// How much silence after `heard` ends the turn: the short wait only after words that end a
    /// sentence ([`sentence_ended`]), not after a mark a recogniser put at a pause ("My account
    /// number is.").
    pub fn silence_needed(&self, heard: &str) -> Duration {
        if sentence_ended(heard) {
            self.after_punctuation
        } else {
            self.otherwise
        }
    }
}

/// Whether the words end a sentence: a sentence mark (`.`, `?`, `!`) after a word a sentence can
/// end on — not an article, a preposition, a conjunction, a possessive or a copula, which a
/// recogniser sometimes punctuates at a pause ("My account number is."), nor a verb that leads
/// into what the person is about to say ("I was wondering.", "We were hoping.").
pub fn sentence_ended(heard: &str) -> bool {
    const NEVER_LAST: [&str; 28] = [
        "a",
        "an",
        "the",
        "to",
        "of",
        "for",
        "with",
        "from",
        "and",
        "or",
        "but",
        "so",
        "because",
        "my",
        "your",
        "our",
        "their",
        "is",
        "are",
        "was",
        "were",
        "am",
        "if",
        "wondering",
        "hoping",
        "planning",
        "wanting",
        "thinking",
    ];
    heard.trim_end().ends_with(['.', '!', '?'])
        && words(heard).last().is_some_and(|last| !NEVER_LAST.contains(&last.as_str()))
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars().filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-').collect::<String>().to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// A hum: a word of only m's and h's ("mm", "hmm", "mhm", or a recogniser's spelled-out "M", "H").
fn is_hum(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| matches!(c, 'm' | 'h'))
}

/// A filler: a sound that holds or hesitates, not a word ("uh", "um", "er", "eh", "huh"; "oh" and
/// "ah" are not among them: "oh no" means something).
fn is_filler(word: &str) -> bool {
    matches!(folded(word).as_str(), "uh" | "um" | "uhm" | "er" | "erm" | "eh" | "huh")
}

/// A word with its stretched letters folded ("yeahhh" → "yeah", "mmmhmm" → "mhm").
fn folded(word: &str) -> String {
    let mut out = String::new();
    for c in word.chars().filter(|c| *c != '-') {
        if !out.ends_with(c) {
            out.push(c);
        }
    }
    out
}

/// The sounds and phrases people make to show they listen, not to take the turn.
const BACKCHANNELS: &[&str] = &[
    "mhm",
    "mh",
    "hm",
    "uhuh",
    "uh huh",
    "oh",
    "ah",
    "ok",
    "okay",
    "yeah",
    "yes",
    "yep",
    "yup",
    "ya",
    "right",
    "sure",
    "i see",
    "of course",
    "makes sense",
    "got it",
    "cool",
    "nice",
    "great",
    "alright",
    "all right",
    "go on",
    "uh",
    "um",
    "wow",
    "true",
    "exactly",
    "indeed",
    "i know",
    "ok ok",
    "yeah yeah",
    "oh okay",
    "oh ok",
    "oh yeah",
    "oh i see",
    "that makes sense",
];

/// Whether the whole utterance is a backchannel.
pub fn is_backchannel(utterance: &str) -> bool {
    let phrase = words(utterance).iter().map(|w| folded(w)).collect::<Vec<_>>().join(" ");
    BACKCHANNELS.iter().any(|b| b.split(' ').map(folded).collect::<Vec<_>>().join(" ") == phrase)
}

/// What the bot says when nobody has spoken for a while and it checks on the person.
pub const CHECK_IN: &str = "Are you still there?";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dials_come_from_the_agent_with_the_guides_defaults() {
        let d = Dials::from_agent(&json!({}));
        assert_eq!(d, Dials::default());
        let d = Dials::from_agent(&json!({
            "interrupt_sensitivity": "high", "endpointing_sensitivity": "sensitive", "conversation_speed": 2.0,
            "initial_message_delay": 1.5, "idle_time_seconds": 12, "ask_if_human_present_on_idle": true
        }));
        assert_eq!(d.interrupt, InterruptSensitivity::High);
        assert_eq!(d.endpointing, EndpointingSensitivity::Sensitive);
        assert_eq!(
            (d.speed, d.initial_message_delay, d.idle),
            (2.0, Duration::from_millis(1500), Duration::from_secs(12))
        );
        assert!(d.ask_if_human_present_on_idle);
        let ivr = Dials::from_agent(&json!({"ivr_navigation_mode": "default"}));
        assert_eq!(ivr.idle, IVR_IDLE);
        let on_hold = Dials::from_agent(&json!({"ivr_navigation_mode": "default", "idle_time_seconds": 5}));
        assert_eq!(on_hold.idle, IVR_IDLE, "on hold, a short idle time does not end the call");
        let longer = Dials::from_agent(&json!({"ivr_navigation_mode": "default", "idle_time_seconds": 900}));
        assert_eq!(longer.idle, Duration::from_secs(900));
        assert_eq!(Dials::from_agent(&json!({"conversation_speed": 9})).speed, 2.0);
    }

    #[test]
    fn speed_scales_every_wait() {
        let slow = Dials { speed: 0.5, ..Dials::default() }.endpointing();
        let fast = Dials { speed: 2.0, ..Dials::default() }.endpointing();
        assert_eq!(slow.otherwise, Duration::from_secs(2));
        assert_eq!(fast.after_punctuation, Duration::from_millis(250));
        let sensitive = Dials { endpointing: EndpointingSensitivity::Sensitive, ..Dials::default() }.endpointing();
        assert!(sensitive.otherwise < Dials::default().endpointing().otherwise);
        assert_eq!(Dials::default().endpointing().silence_needed("I want a table."), Duration::from_millis(500));
        assert_eq!(Dials::default().endpointing().silence_needed("I want a"), Duration::from_secs(1));
        assert_eq!(
            Dials::default().endpointing().silence_needed("My account number is."),
            Duration::from_secs(1),
            "a mark at a pause is no sentence's end"
        );
    }

    #[test]
    fn a_turn_ends_at_its_longest_scaled_by_speed() {
        assert_eq!(Dials::default().longest_turn(), Duration::from_secs(30));
        assert_eq!(Dials { speed: 2.0, ..Dials::default() }.longest_turn(), Duration::from_secs(15));
        assert_eq!(Dials::from_agent(&json!({"conversation_speed": 0.5})).longest_turn(), Duration::from_secs(60));
    }

    #[test]
    fn the_end_of_turn_models_verdict_shortens_or_lengthens_the_wait_by_the_dials() {
        let relaxed = Dials::default().end_of_turn_waits();
        assert_eq!(relaxed.complete, Duration::from_millis(200));
        assert_eq!(relaxed.incomplete, Duration::from_secs(2));
        assert!(relaxed.complete < Dials::default().endpointing().after_punctuation, "done answers sooner");
        assert!(relaxed.incomplete > Dials::default().endpointing().otherwise, "not done waits longer");
        let sensitive = Dials { endpointing: EndpointingSensitivity::Sensitive, ..Dials::default() };
        assert!(sensitive.end_of_turn_waits().incomplete < relaxed.incomplete);
        let fast = Dials { speed: 2.0, ..Dials::default() }.end_of_turn_waits();
        assert_eq!(fast, EndOfTurnWaits { complete: Duration::from_millis(100), incomplete: Duration::from_secs(1) });
    }

    #[test]
    fn a_sentence_ends_on_a_mark_after_a_word_a_sentence_can_end_on() {
        for ended in ["Can I come in?", "It's for my mother.", "Stop!", "Thanks for thinking of us."] {
            assert!(sentence_ended(ended), "{ended}");
        }
        for not in [
            "My account number is.",
            "I'd like to book a table for.",
            "So what I need is,",
            "and the",
            "We were hoping.",
        ] {
            assert!(!sentence_ended(not), "{not}");
        }
    }

    #[test]
    fn backchannels_are_recognised_however_they_are_stretched() {
        for b in ["Mhm.", "mmm-hmm", "Yeahhh", "I see!", "of course", "Okay", "uh-huh", "Oh, okay."] {
            assert!(is_backchannel(b), "{b}");
        }
        for not in ["I see a problem", "No", "Wait, stop", "yes please book it"] {
            assert!(!is_backchannel(not), "{not}");
        }
    }

    #[test]
    fn low_sensitivity_ignores_backchannels_and_short_utterances_high_ignores_nothing() {
        let low = Dials::default();
        let high = Dials { interrupt: InterruptSensitivity::High, ..Dials::default() };
        assert!(low.ignores_while_speaking("mhm"));
        assert!(low.ignores_while_speaking("no no no"));
        assert!(!low.ignores_while_speaking("sorry, can you repeat the price"));
        assert!(!high.ignores_while_speaking("mhm"));
        assert!(high.ignores_while_speaking("  "), "nothing said interrupts nothing");
        // "Mm hmm, yeah" as the local recogniser heard flite say it.
        assert!(low.ignores_while_speaking("Mm, M. H. M. M. Yeah."));
        // Fillers are no words: flite's "Mm hmm, yeah" as the local recogniser once heard it.
        assert!(low.ignores_while_speaking("I'm hun, you, eh?"));
        assert!(low.ignores_while_speaking("uh, um, er, yes please"));
        assert!(!low.ignores_while_speaking("uh, I want the window"));
        assert!(!low.ignores_while_speaking("oh no that's wrong"));
        assert!(!low.ignores_while_speaking("Hmm, I want the one by the window instead"));
    }

    #[test]
    fn at_low_an_interim_counts_only_on_enough_speech() {
        let low = Dials::default();
        let high = Dials { interrupt: InterruptSensitivity::High, ..Dials::default() };
        assert!(!low.interim_counts(Some(Duration::from_millis(250))), "a syllable's guesses");
        assert!(low.interim_counts(Some(MIN_INTERIM_SPEECH)));
        assert!(low.interim_counts(None), "a recogniser that does not date its words");
        assert!(high.interim_counts(Some(Duration::from_millis(100))));
    }
}
