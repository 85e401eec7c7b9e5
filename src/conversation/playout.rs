//! The bot's audio on its way to the call, paced by the server itself: at most `lookahead` of
//! audio is ever queued at the carrier, a mark follows every `mark_every` of audio, and what the
//! person has heard is known from the marks the carrier echoes (or, for a carrier that echoes
//! none, from the clock). That makes barge-in, truncation of the bot's message to what was heard,
//! and the carrier's buffer limits behave the same on every carrier. The audio sent and not yet
//! known to be heard is kept, so that an utterance paused (its queue at the carrier cleared) goes
//! on from what the person heard, repeating nothing but the part of a mark's stretch the carrier
//! played after its last echo.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::audio::{Encoding, FRAME_MS};
use super::engine::ToCall;

/// How far ahead of the carrier's playback audio is sent.
pub const LOOKAHEAD: Duration = Duration::from_millis(300);
/// How much audio lies between two marks.
pub const MARK_EVERY_MS: u64 = 100;

/// One utterance of the bot (a turn's audio, sentence after sentence), as it is played.
#[derive(Debug)]
pub struct Playout {
    encoding: Encoding,
    turn: u64,
    /// Audio received from the voice and not yet sent.
    pending: VecDeque<u8>,
    /// Milliseconds of audio sent, and when the first frame went out.
    sent_ms: u64,
    started: Option<Instant>,
    /// Marks sent and not yet echoed: the audio position each stands for.
    marks: VecDeque<(String, u64)>,
    next_mark_ms: u64,
    /// The position of the last mark sent.
    marked_ms: u64,
    /// The position the last echoed mark stands for.
    heard_ms: u64,
    /// Whether this stream's carrier echoes marks at all (learned from the first echo).
    echoes: bool,
    /// The voice has delivered all of this utterance's audio.
    complete: bool,
    /// Audio sent and not yet known to be heard: each chunk with the position it starts at.
    unheard: VecDeque<(u64, Vec<u8>)>,
    /// Paused: nothing is sent until it resumes.
    paused: bool,
    /// How many times it was paused: marks sent after a pause are named apart from the ones
    /// cleared with it (whose echoes may still come).
    pauses: u32,
}

impl Playout {
    pub fn new(encoding: Encoding, turn: u64, carrier_echoes_marks: bool) -> Self {
        Playout {
            encoding,
            turn,
            pending: VecDeque::new(),
            sent_ms: 0,
            started: None,
            marks: VecDeque::new(),
            next_mark_ms: MARK_EVERY_MS,
            marked_ms: 0,
            heard_ms: 0,
            echoes: carrier_echoes_marks,
            complete: false,
            unheard: VecDeque::new(),
            paused: false,
            pauses: 0,
        }
    }

    pub fn turn(&self) -> u64 {
        self.turn
    }

    /// More audio of the utterance, in the call's encoding.
    pub fn push(&mut self, audio: &[u8]) {
        self.pending.extend(audio);
    }

    /// The voice has nothing more for this utterance.
    pub fn finish(&mut self) {
        self.complete = true;
    }

    /// The frames (and marks) to send now: as many as keep the carrier at most `LOOKAHEAD` ahead
    /// of what it has played by `now`.
    pub fn due(&mut self, now: Instant) -> Vec<ToCall> {
        let frame = self.encoding.bytes_for_ms(FRAME_MS);
        let mut out = Vec::new();
        if self.paused {
            return out;
        }
        let heard = self.heard_ms(now);
        self.forget_heard(heard);
        let started = *self.started.get_or_insert(now);
        let played_by_clock = now.saturating_duration_since(started).as_millis() as u64;
        let budget = played_by_clock + LOOKAHEAD.as_millis() as u64;
        // A frame goes once all of it fits in the lookahead: then it falls due exactly when
        // `next_due` says, and a timer that fires a little late sends it alone, not with the next.
        while self.sent_ms + u64::from(FRAME_MS) <= budget {
            let take = if self.pending.len() >= frame {
                frame
            } else if self.complete && !self.pending.is_empty() {
                self.pending.len()
            } else {
                break;
            };
            let chunk: Vec<u8> = self.pending.drain(..take).collect();
            self.unheard.push_back((self.sent_ms, chunk.clone()));
            self.sent_ms += self.encoding.ms_of(chunk.len()).max(1);
            out.push(ToCall::Audio(chunk));
            if self.sent_ms >= self.next_mark_ms {
                out.push(self.mark());
            }
        }
        // The utterance's end is marked too, whenever the voice's last word comes (before or
        // after its audio went out): otherwise its last moments would never be known as heard.
        if self.complete && self.pending.is_empty() && self.marked_ms < self.sent_ms {
            out.push(self.mark());
        }
        out
    }

    fn mark(&mut self) -> ToCall {
        let name = match self.pauses {
            0 => format!("t{}-{}", self.turn, self.sent_ms),
            pauses => format!("t{}.{}-{}", self.turn, pauses, self.sent_ms),
        };
        self.marks.push_back((name.clone(), self.sent_ms));
        self.marked_ms = self.sent_ms;
        self.next_mark_ms = self.sent_ms + MARK_EVERY_MS;
        ToCall::Mark(name)
    }

    /// When the next frame falls due — a fixed point on the utterance's own clock, so that
    /// whatever else wakes the caller, frames go out every 20 ms — or `None` while no whole frame
    /// waits (more audio from the voice wakes the caller anyway).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let frame = self.encoding.bytes_for_ms(FRAME_MS);
        let sendable = !self.paused && (self.pending.len() >= frame || (self.complete && !self.pending.is_empty()));
        if !sendable {
            return None;
        }
        let Some(started) = self.started else {
            return Some(now);
        };
        let due_ms = (self.sent_ms + u64::from(FRAME_MS)).saturating_sub(LOOKAHEAD.as_millis() as u64);
        Some(started + Duration::from_millis(due_ms))
    }

    /// A mark the carrier echoed; `true` when it was this utterance's.
    pub fn played(&mut self, mark: &str) -> bool {
        let Some(i) = self.marks.iter().position(|(name, _)| name == mark) else {
            return false;
        };
        self.echoes = true;
        // Marks come back in order: an echo also covers every earlier one.
        let (_, position) = self.marks.drain(..=i).next_back().expect("one mark at least");
        self.heard_ms = self.heard_ms.max(position);
        self.forget_heard(self.heard_ms);
        true
    }

    /// Drops the audio kept of what is known to be heard.
    fn forget_heard(&mut self, heard: u64) {
        while let Some((start, chunk)) = self.unheard.front() {
            if start + self.encoding.ms_of(chunk.len()) > heard {
                break;
            }
            self.unheard.pop_front();
        }
    }

    /// Stops the utterance where the person has heard it by `now` (the caller clears the carrier's
    /// queue): what was sent beyond that goes back to be sent again, and nothing goes out until
    /// [`Self::resume`].
    pub fn pause(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        let heard = self.heard_ms(now);
        let mut back: Vec<u8> = Vec::new();
        for (start, chunk) in self.unheard.drain(..) {
            let skip = self.encoding.bytes_for_ms(heard.saturating_sub(start) as u32).min(chunk.len());
            back.extend_from_slice(&chunk[skip..]);
        }
        for byte in back.into_iter().rev() {
            self.pending.push_front(byte);
        }
        self.sent_ms = heard.min(self.sent_ms);
        self.heard_ms = self.sent_ms;
        self.marks.clear();
        self.marked_ms = self.sent_ms;
        self.next_mark_ms = self.sent_ms + MARK_EVERY_MS;
        self.paused = true;
        self.pauses += 1;
    }

    /// Goes on from where [`Self::pause`] stopped: the utterance's clock restarts there.
    pub fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.started = Some(now.checked_sub(Duration::from_millis(self.sent_ms)).unwrap_or(now));
    }

    /// How much of the utterance the person has heard by `now`.
    pub fn heard_ms(&self, now: Instant) -> u64 {
        if self.echoes {
            self.heard_ms
        } else {
            let elapsed = self.started.map(|s| now.saturating_duration_since(s).as_millis() as u64).unwrap_or(0);
            elapsed.min(self.sent_ms)
        }
    }

    /// Milliseconds of audio of the whole utterance known so far (sent and waiting).
    pub fn total_ms(&self) -> u64 {
        self.sent_ms + self.encoding.ms_of(self.pending.len())
    }

    /// Whether everything was sent and the carrier has played it (by its marks, or by the clock).
    pub fn done(&self, now: Instant) -> bool {
        self.complete && self.pending.is_empty() && self.heard_ms(now) >= self.sent_ms
    }
}

/// The part of a message the person heard: as many characters as the share of its audio played
/// (vocode's rule for voices that give no word timings), cut back to a word boundary.
pub fn heard_text(text: &str, heard_ms: u64, total_ms: u64) -> String {
    if total_ms == 0 || heard_ms >= total_ms {
        return text.to_owned();
    }
    let chars = text.chars().count();
    let keep = (chars as u64 * heard_ms / total_ms) as usize;
    let prefix: String = text.chars().take(keep).collect();
    let at_word = match text.chars().nth(keep) {
        Some(c) if !c.is_whitespace() => prefix.rfind(char::is_whitespace).map(|i| &prefix[..i]).unwrap_or(""),
        _ => prefix.as_str(),
    };
    at_word.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio_ms(items: &[ToCall], encoding: Encoding) -> u64 {
        items.iter().map(|i| if let ToCall::Audio(a) = i { encoding.ms_of(a.len()) } else { 0 }).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn audio_goes_out_no_more_than_the_lookahead_ahead_of_the_clock() {
        let enc = Encoding::Mulaw8k;
        let mut p = Playout::new(enc, 1, true);
        p.push(&vec![0x7f; enc.bytes_for_ms(2_000)]);
        let start = Instant::now();
        let first = p.due(start);
        assert_eq!(audio_ms(&first, enc), 300, "the lookahead at once");
        assert!(first.iter().any(|i| matches!(i, ToCall::Mark(m) if m == "t1-100")));
        assert!(p.due(start).is_empty(), "nothing more until the carrier has played some");
        let later = p.due(start + Duration::from_millis(500));
        assert_eq!(audio_ms(&later, enc), 500);
        assert_eq!(p.total_ms(), 2_000);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_fall_due_every_20_ms_on_the_utterances_own_clock() {
        let enc = Encoding::Mulaw8k;
        let mut p = Playout::new(enc, 4, true);
        let t0 = Instant::now();
        assert_eq!(p.next_due(t0), None, "nothing to send");
        p.push(&vec![0xff; enc.bytes_for_ms(1_000)]);
        assert_eq!(p.next_due(t0), Some(t0), "the first frames at once");
        p.due(t0);
        // Asked at any moment, the answer is the same point in time: frame by frame, 20 ms apart.
        let next = t0 + Duration::from_millis(20);
        assert_eq!(p.next_due(t0 + Duration::from_millis(7)), Some(next));
        assert_eq!(p.next_due(t0 + Duration::from_millis(19)), Some(next));
        assert_eq!(audio_ms(&p.due(next), enc), 20);
        assert_eq!(p.next_due(next), Some(t0 + Duration::from_millis(40)));
        // A timer fires a little late (tokio's are rounded up to the millisecond, and a busy
        // runtime adds more): the frame goes alone, and the next keeps its own time.
        for late in [1, 5, 19] {
            let fired = p.next_due(t0).unwrap() + Duration::from_millis(late);
            assert_eq!(audio_ms(&p.due(fired), enc), 20, "{late} ms late: one frame, not two");
        }
        assert_eq!(p.next_due(t0), Some(t0 + Duration::from_millis(100)));
        // A part frame waits for more audio, or for the end.
        let mut q = Playout::new(enc, 5, true);
        q.push(&[0xff; 100]);
        assert_eq!(q.next_due(t0), None);
        q.finish();
        assert_eq!(q.next_due(t0), Some(t0));
    }

    #[tokio::test(start_paused = true)]
    async fn marks_tell_what_was_heard_and_the_clock_stands_in_without_them() {
        let enc = Encoding::Linear16k;
        let mut p = Playout::new(enc, 7, true);
        p.push(&vec![0; enc.bytes_for_ms(1_000)]);
        p.finish();
        let t0 = Instant::now();
        let sent = p.due(t0);
        let marks: Vec<String> =
            sent.iter().filter_map(|i| if let ToCall::Mark(m) = i { Some(m.clone()) } else { None }).collect();
        assert_eq!(marks, vec!["t7-100", "t7-200", "t7-300"]);
        assert!(!p.played("t6-100"), "another turn's mark");
        assert!(p.played("t7-200"), "covers t7-100 too");
        assert_eq!(p.heard_ms(t0 + Duration::from_secs(5)), 200, "marks, not the clock");

        let mut q = Playout::new(enc, 8, false);
        q.push(&vec![0; enc.bytes_for_ms(1_000)]);
        q.due(t0);
        assert_eq!(q.heard_ms(t0 + Duration::from_millis(120)), 120);
        assert_eq!(q.heard_ms(t0 + Duration::from_secs(5)), 300, "never more than was sent");
    }

    #[tokio::test(start_paused = true)]
    async fn an_utterance_is_done_once_all_of_it_was_played() {
        let enc = Encoding::Mulaw8k;
        let mut p = Playout::new(enc, 2, true);
        p.push(&vec![0xff; 1_000]);
        p.finish();
        let t0 = Instant::now();
        let out = p.due(t0);
        assert_eq!(audio_ms(&out, enc), 125, "the short last frame goes too");
        let Some(ToCall::Mark(last)) = out.last().cloned() else { panic!("a mark closes the utterance") };
        assert!(!p.done(t0));
        assert!(p.played(&last));
        assert!(p.done(t0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_is_marked_even_when_the_voice_finishes_after_its_audio_went_out() {
        let enc = Encoding::Mulaw8k;
        let mut p = Playout::new(enc, 3, true);
        p.push(&vec![0xff; enc.bytes_for_ms(240)]);
        let t0 = Instant::now();
        let sent = p.due(t0);
        assert_eq!(audio_ms(&sent, enc), 240);
        assert!(!sent.contains(&ToCall::Mark("t3-240".into())), "not the end yet: the voice may say more");
        p.finish();
        assert_eq!(p.due(t0), vec![ToCall::Mark("t3-240".into())]);
        assert!(p.played("t3-240"));
        assert!(p.done(t0));
        assert!(p.due(t0).is_empty(), "marked once");
    }

    #[test]
    fn the_heard_part_of_a_message_ends_at_a_word() {
        let text = "Sure, I can book a table for four at seven.";
        assert_eq!(heard_text(text, 0, 1_000), "");
        assert_eq!(heard_text(text, 500, 1_000), "Sure, I can book a");
        assert_eq!(heard_text(text, 1_000, 1_000), text);
        assert_eq!(heard_text(text, 10, 0), text);
    }

    /// The audio of an utterance whose every millisecond is a distinct byte pattern.
    fn numbered(ms: u64) -> Vec<u8> {
        (0..ms).flat_map(|m| vec![(m % 251) as u8; 8]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_utterance_goes_on_from_what_was_heard_by_its_marks() {
        let enc = Encoding::Mulaw8k;
        let audio = numbered(1_000);
        let mut p = Playout::new(enc, 3, true);
        p.push(&audio);
        p.finish();
        let start = Instant::now();
        let mut sent: Vec<u8> = Vec::new();
        let take = |items: Vec<ToCall>, sent: &mut Vec<u8>| {
            for item in items {
                if let ToCall::Audio(a) = item {
                    sent.extend(a);
                }
            }
        };
        take(p.due(start), &mut sent);
        take(p.due(start + Duration::from_millis(200)), &mut sent);
        assert_eq!(enc.ms_of(sent.len()), 500);
        assert!(p.played("t3-200"), "the carrier played 200 ms");
        p.pause(start + Duration::from_millis(250));
        assert!(p.due(start + Duration::from_millis(400)).is_empty(), "nothing while paused");
        assert_eq!(p.next_due(start + Duration::from_millis(400)), None);
        assert_eq!(p.heard_ms(start + Duration::from_millis(900)), 200, "what was heard stands still");
        assert!(!p.played("t3-300"), "the echo of a mark cleared with the queue counts for nothing");

        let again = start + Duration::from_secs(2);
        p.resume(again);
        let mut resumed = Vec::new();
        let items = p.due(again);
        assert!(items.iter().any(|i| matches!(i, ToCall::Mark(m) if m == "t3.1-300")), "{items:?}");
        take(items, &mut resumed);
        for ms in (20..=1_000).step_by(20) {
            take(p.due(again + Duration::from_millis(ms)), &mut resumed);
        }
        assert_eq!(resumed, audio[enc.bytes_for_ms(200)..], "from the heard position on, every byte once");
        assert_eq!(p.total_ms(), 1_000);
    }

    #[tokio::test(start_paused = true)]
    async fn without_echoes_a_pause_keeps_what_the_clock_says_was_heard() {
        let enc = Encoding::Linear16k;
        let mut p = Playout::new(enc, 1, false);
        p.push(&vec![1; enc.bytes_for_ms(1_000)]);
        let start = Instant::now();
        p.due(start);
        p.due(start + Duration::from_millis(300));
        p.pause(start + Duration::from_millis(340));
        assert_eq!(p.heard_ms(start + Duration::from_secs(5)), 340);
        p.resume(start + Duration::from_secs(5));
        assert_eq!(p.heard_ms(start + Duration::from_secs(5)), 340, "the clock goes on from there");
        assert_eq!(p.heard_ms(start + Duration::from_millis(5_100)), 340, "nothing sent yet");
        let items = p.due(start + Duration::from_secs(5));
        let ms: u64 = items.iter().map(|i| if let ToCall::Audio(a) = i { enc.ms_of(a.len()) } else { 0 }).sum();
        assert_eq!(ms, 300, "the lookahead again, from 340 ms");
        assert_eq!(p.heard_ms(start + Duration::from_millis(5_100)), 440);
    }
}
