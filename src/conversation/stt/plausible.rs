//! Whether a recogniser's text is words a person said, or what the recogniser made of something
//! else. Small recognisers hallucinate on audio that is not speech, and loop on audio that is too
//! short: Moonshine hears a 180 ms noise burst as "You" and 250 ms of speech as "We, we, we, we,
//! we, we,"; Whisper-style models say "Thank you." or "Thanks for watching!" over noise. Such text
//! must never become a turn, a `HUMAN` line or a reason to stop the bot.
//!
//! A pure function of the text and, when a voice-activity detector heard the same audio, how much
//! speech it heard there ([`super::super::vad::detector`]): the engine gates words with it and
//! with the detector's onsets.

use std::time::Duration;

/// Why text is not taken as words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implausible {
    /// No word at all (punctuation, an empty string).
    Nothing,
    /// The voice-activity detector heard (almost) no speech in that audio.
    NoSpeech,
    /// A word or a few words over and over: the recogniser looping.
    Repetition,
    /// More words than the speech heard could hold.
    TooFast,
    /// What recognisers say over noise, with too little speech heard to be meant, or a
    /// description of a sound ("[BLANK_AUDIO]", "(coughs)").
    NoiseFiller,
}

impl std::fmt::Display for Implausible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Implausible::Nothing => "no words",
            Implausible::NoSpeech => "no speech was heard",
            Implausible::Repetition => "a word repeated over and over",
            Implausible::TooFast => "more words than the speech heard could hold",
            Implausible::NoiseFiller => "what a recogniser says over noise",
        })
    }
}

/// Less speech than this in the audio, and its text is not words.
pub const NO_SPEECH_BELOW: Duration = Duration::from_millis(120);
/// A word, or a group of up to three, said this many times in a row is a recogniser looping.
pub const REPEATS: usize = 4;
/// The most words a second of speech holds (fast talk is 4 to 5), plus two for rounding.
const WORDS_PER_SECOND: f64 = 6.0;
const SPARE_WORDS: f64 = 2.0;
/// Phrases recognisers produce over noise, taken only with this much speech heard.
pub const FILLER_SPEECH: Duration = Duration::from_millis(300);

/// Phrases that are words only when enough speech was heard.
const NOISE_PHRASES: &[&str] = &["thank you", "thanks", "bye", "thank you very much", "you you"];
/// Phrases that are never what a caller says, however much speech was heard.
const NEVER: &[&str] = &["you", "thanks for watching", "thank you for watching", "please subscribe", "subscribe"];

/// Whether `text` is words a person said. `speech`: how much speech a voice-activity detector
/// heard in the audio the text came from (`None` when nothing measured it, as with a cloud
/// recogniser's own endpointing).
pub fn judge(text: &str, speech: Option<Duration>) -> Result<(), Implausible> {
    let trimmed = text.trim();
    if trimmed.starts_with(['[', '(', '*']) && trimmed.ends_with([']', ')', '*']) {
        return Err(Implausible::NoiseFiller);
    }
    let words = words(text);
    if words.is_empty() {
        return Err(Implausible::Nothing);
    }
    if speech.is_some_and(|s| s < NO_SPEECH_BELOW) {
        return Err(Implausible::NoSpeech);
    }
    if repeats(&words) >= REPEATS {
        return Err(Implausible::Repetition);
    }
    if let Some(speech) = speech {
        if words.len() as f64 > SPARE_WORDS + WORDS_PER_SECOND * speech.as_secs_f64() {
            return Err(Implausible::TooFast);
        }
    }
    let phrase = words.join(" ");
    if NEVER.contains(&phrase.as_str()) {
        return Err(Implausible::NoiseFiller);
    }
    if NOISE_PHRASES.contains(&phrase.as_str()) && speech.is_some_and(|s| s < FILLER_SPEECH) {
        return Err(Implausible::NoiseFiller);
    }
    Ok(())
}

/// [`judge`], as a yes or no.
pub fn is_plausible(text: &str, speech: Option<Duration>) -> bool {
    judge(text, speech).is_ok()
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The most times a group of one to three words is said in a row (digits aside: "555 5555").
fn repeats(words: &[String]) -> usize {
    let mut most = 1;
    for size in 1..=3 {
        for start in 0..(words.len() + 1).saturating_sub(size) {
            let group = &words[start..start + size];
            if group.iter().all(|w| w.chars().all(|c| c.is_ascii_digit())) {
                continue;
            }
            let mut times = 1;
            while words.get(start + times * size..start + (times + 1) * size) == Some(group) {
                times += 1;
            }
            most = most.max(times);
        }
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    #[test]
    fn moonshines_loops_and_fillers_are_not_words() {
        assert_eq!(judge("We, we, we, we, we, we,", ms(250)), Err(Implausible::Repetition));
        assert_eq!(judge("we, we, we, we", None), Err(Implausible::Repetition), "looping, however long");
        assert_eq!(judge("I want to, I want to, I want to, I want to", ms(3_000)), Err(Implausible::Repetition));
        assert_eq!(judge("You", ms(180)), Err(Implausible::NoiseFiller));
        assert_eq!(judge("You.", None), Err(Implausible::NoiseFiller), "nobody's turn is a lone 'you'");
        assert_eq!(judge("Thank you.", ms(180)), Err(Implausible::NoiseFiller));
        assert_eq!(judge("Thanks for watching!", ms(2_000)), Err(Implausible::NoiseFiller));
        assert_eq!(judge("[BLANK_AUDIO]", None), Err(Implausible::NoiseFiller));
        assert_eq!(judge("(coughs)", ms(400)), Err(Implausible::NoiseFiller));
    }

    #[test]
    fn text_without_speech_under_it_is_not_words() {
        assert_eq!(judge("Yes.", Some(Duration::ZERO)), Err(Implausible::NoSpeech));
        assert_eq!(judge("Book a table for two.", ms(100)), Err(Implausible::NoSpeech));
        assert_eq!(judge("one two three four five six seven eight nine", ms(300)), Err(Implausible::TooFast));
        assert_eq!(judge(" ... ", None), Err(Implausible::Nothing));
    }

    #[test]
    fn what_people_say_is_words() {
        for (text, speech) in [
            ("I would like to book a table for two people tonight.", ms(2_300)),
            ("Thank you.", ms(500)),
            ("Thank you.", None),
            ("Yes.", ms(250)),
            ("no no no", ms(600)),
            ("bye bye", ms(400)),
            ("Mhm.", ms(200)),
            ("My number is 4 1 5, 5 5 5, 0 1 9 8.", ms(3_500)),
            ("very very very good", ms(1_200)),
        ] {
            assert_eq!(judge(text, speech), Ok(()), "{text:?} over {speech:?}");
            assert!(is_plausible(text, speech));
        }
    }
}
