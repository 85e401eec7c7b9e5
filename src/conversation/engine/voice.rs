//! The caller's voice, heard before any word: the call's voice-activity detector (Silero, or
//! loudness without it) hears every frame; where it hears the caller start and stop is told to
//! speech-to-text (the local recogniser cuts its utterances there, so noise is never transcribed;
//! Deepgram is asked to finalise at once), dates the end of the caller's speech for the turn's
//! latencies, and starts the end-of-turn model on each pause: its verdict, when it comes in time,
//! sets how long the engine waits before answering ([`Dials::end_of_turn_waits`]); without it, the
//! silence rule does. A turn never runs past [`Dials::longest_turn`].
//!
//! The model runs in a child task on its own worker pool and reports back tagged with its pause,
//! so a verdict on a pause the caller has since spoken through is dropped; the audio it hears is
//! the caller's last 8 s, kept in a bounded buffer. It starts once a pause has lasted [`PROBE`],
//! before the detector is sure the caller stopped ([`DetectorSettings::min_silence`]), so that
//! its verdict is in when the detector is: a pause the caller speaks through costs one
//! inference, and no time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Engine;
use crate::conversation::audio::{Encoding, Transcoder};
use crate::conversation::end_of_turn::{self, EndOfTurn};
use crate::conversation::local::LocalSpeech;
use crate::conversation::stt::SttInput;
use crate::conversation::turns::{sentence_ended, Dials, InterruptSensitivity};
use crate::conversation::vad::detector::{ticks_of, DetectorSettings, SpeechDetector, SpeechEvent, VoiceActivity};

/// How soon a turn's end is looked at again when the caller sounded like speaking at it.
pub(super) const RECHECK: Duration = Duration::from_millis(100);

/// How long the caller's line must sound like a voice before it holds the bot at `high`
/// sensitivity: two of the neural detector's 32 ms windows in a row (the set's coughs, clicks,
/// breaths and thumps score under its threshold in every window; a sentence opening on a
/// fricative, "Sorry", "Stop", scores over it only at its vowel, so each window waited for here
/// is late on the line).
/// With the loudness fallback, which cannot tell a noise from a voice, speech holds the bot once
/// the detector is sure of it.
const HOLD_ON: Duration = Duration::from_millis(60);

/// How long a pause lasts (from where the line's loudness dates its start) before the end-of-turn
/// model hears it and the recogniser transcribes the words ahead: a third of the detector's
/// [`DetectorSettings::min_silence`], so that both (about 80 ms of a core each) are done when
/// the detector says the caller stopped. The neural detector only calls a silence one 35–130 ms
/// after the voice has stopped, so a shorter probe would start no sooner, and the gaps between
/// words, which it does not call silences, start none.
pub(super) const PROBE: Duration = Duration::from_millis(64);

/// Which turn-taking models a call uses: the server's local speech, as its settings allow
/// (`VAD`, `END_OF_TURN_MODEL`). Without local speech: loudness and the silence rule.
#[derive(Clone, Default)]
pub struct TurnModels {
    speech: Option<Arc<LocalSpeech>>,
    silero: bool,
    end_of_turn: bool,
}

impl TurnModels {
    /// `silero`: the neural detector when installed (else loudness); `end_of_turn`: the
    /// end-of-turn model when installed (else the silence rule).
    pub fn new(speech: Arc<LocalSpeech>, silero: bool, end_of_turn: bool) -> TurnModels {
        TurnModels { speech: Some(speech), silero, end_of_turn }
    }

    async fn voice_activity(&self) -> VoiceActivity {
        match &self.speech {
            Some(speech) if self.silero => speech.voice_activity().await,
            _ => VoiceActivity::Energy,
        }
    }

    async fn end_of_turn(&self) -> Option<Arc<EndOfTurn>> {
        match &self.speech {
            Some(speech) if self.end_of_turn => speech.end_of_turn().await,
            _ => None,
        }
    }
}

/// What the call's voice is doing, as the engine keeps it.
pub(super) struct Voice {
    detector: SpeechDetector,
    model: Option<Arc<EndOfTurn>>,
    /// The caller's last 8 s at 16 kHz (only kept for the model).
    recent: VecDeque<i16>,
    to_16k: Transcoder,
    /// Where in the detector's audio speech-to-text's session began.
    session_from: Option<Duration>,
    /// The current pause's number: a verdict on an earlier one is stale.
    pub(super) pause: u64,
    /// Where the pause the model is hearing began (in the detector's audio), from [`PROBE`] into
    /// it until the caller speaks again.
    pub(super) probing: Option<Duration>,
    /// When the caller last stopped speaking (the detector's offset), while they are silent.
    pub(super) stopped_at: Option<Instant>,
    /// The model's verdict on the current pause: the probability that the turn is complete.
    pub(super) verdict: Option<f32>,
    /// Where the model's verdicts are sent, tagged with their pause.
    verdicts: mpsc::Sender<(u64, f32)>,
}

impl Voice {
    /// The call's voice, and where the model's verdicts come in; `None` when only loudness could
    /// hear it and speech-to-text does not need it (a cloud recogniser has its own endpointing and
    /// word timings, and loudness would only cost CPU on every frame and hold turns while the line
    /// is loud).
    pub(super) async fn new(
        models: &TurnModels,
        encoding: Encoding,
        stt_needs_it: bool,
    ) -> Option<(Voice, mpsc::Receiver<(u64, f32)>)> {
        let activity = models.voice_activity().await;
        if matches!(activity, VoiceActivity::Energy) && !stt_needs_it {
            return None;
        }
        let model = models.end_of_turn().await;
        let (verdicts, verdicts_in) = mpsc::channel(4);
        let voice = Voice {
            detector: activity.detector(encoding, DetectorSettings::default()),
            model,
            recent: VecDeque::new(),
            to_16k: Transcoder::to_pcm16k(encoding),
            session_from: None,
            pause: 0,
            probing: None,
            stopped_at: None,
            verdict: None,
            verdicts,
        };
        Some((voice, verdicts_in))
    }

    /// Speech-to-text's session opened now: its audio starts here.
    pub(super) fn session_opened(&mut self) {
        self.session_from = Some(self.detector.heard());
    }

    /// When a point of speech-to-text's audio (`at` from its session's start) reached the engine.
    pub(super) fn when_heard(&self, at: Duration, now: Instant) -> Option<Instant> {
        let position = self.session_from? + at;
        now.checked_sub(self.detector.heard().saturating_sub(position))
    }

    /// Whether the caller is speaking, or the last window sounded like speech (that may be
    /// speech starting again, which the detector confirms only after its minimum length).
    pub(super) fn sounds_like_speech(&self) -> bool {
        self.detector.speaking() || self.detector.probability() >= DetectorSettings::default().threshold
    }

    /// Whether the caller is speaking, as the detector last said.
    pub(super) fn speaking(&self) -> bool {
        self.detector.speaking()
    }

    /// Which detector hears the call.
    pub(super) fn detector(&self) -> &'static str {
        self.detector.model()
    }

    /// Whether the end-of-turn model judges pauses.
    pub(super) fn judges(&self) -> bool {
        self.model.is_some()
    }

    /// Starts the model on the current pause (the caller's last 8 s), in a child task; its verdict
    /// comes back tagged with the pause. A pause that finds every worker busy goes by the silence
    /// rule.
    ///
    /// A pause heard ahead of the stop ([`PROBE`] in) is heard as long as the stop's
    /// ([`DetectorSettings::min_silence`]), its own quiet repeated: the verdict is the one the
    /// model would give at the stop, where it is used (and where Pipecat asks it), only sooner. On
    /// less silence the model says "done" less often, of finished and unfinished sentences alike.
    fn judge(&self) {
        let Some(model) = self.model.clone() else { return };
        if self.recent.is_empty() {
            return;
        }
        let quiet = self.probing.map_or(Duration::ZERO, |from| self.detector.heard().saturating_sub(from));
        let audio = as_at_the_stop(Vec::from(self.recent.clone()), quiet);
        let (pause, out) = (self.pause, self.verdicts.clone());
        tokio::spawn(async move {
            match model.probability_if_free(&audio).await {
                Some(Ok(probability)) => {
                    let _ = out.send((pause, probability)).await;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "the end-of-turn model failed: the silence rule decides"),
                None => metrics::counter!("vocode_end_of_turn_busy_total").increment(1),
            }
        });
    }
}

impl Engine {
    /// Hears one frame of the caller's (as speech-to-text gets it): the detector's events go to
    /// speech-to-text, in their place among the frames, and to the turn.
    pub(super) async fn hear_voice(&mut self, frame: &[u8], stt: Option<&mpsc::Sender<SttInput>>) {
        let Some(voice) = self.voice.as_mut() else {
            // No detector: speech-to-text hears the frame, and that is all.
            offer_audio(stt, frame);
            return;
        };
        if voice.model.is_some() {
            voice.recent.extend(voice.to_16k.decode(frame));
            let excess = voice.recent.len().saturating_sub(end_of_turn::WINDOW);
            voice.recent.drain(..excess);
        }
        let events = voice.detector.push(frame).await;
        let heard = voice.detector.heard();
        let session_from = voice.session_from;
        offer_audio(stt, frame);
        for event in events {
            if let (Some(stt), Some(from)) = (stt, session_from) {
                let in_session = match event {
                    SpeechEvent::Started { at } => SpeechEvent::Started { at: at.saturating_sub(from) },
                    SpeechEvent::Stopped { at } => SpeechEvent::Stopped { at: at.saturating_sub(from) },
                };
                if stt.try_send(SttInput::Voice(in_session)).is_err() {
                    metrics::counter!("vocode_conversation_audio_dropped_total").increment(1);
                }
            }
            let now = Instant::now();
            match event {
                SpeechEvent::Started { .. } => {
                    self.voice_started(now);
                    // At `high`, a voice stops the bot at once, before any word: it is held, and
                    // goes on from where it stopped if no words follow (a false start).
                    let interruptible = self.speaking.as_ref().is_some_and(|s| s.interruptible);
                    if interruptible && self.config.dials.interrupt == InterruptSensitivity::High {
                        self.hold().await;
                    }
                }
                SpeechEvent::Stopped { at } => {
                    self.voice_stopped(at, now.checked_sub(heard.saturating_sub(at)).unwrap_or(now));
                }
            }
        }
        self.probe_pause(stt);
        // At `high`, a voice holds the bot as soon as it sounds like one, before the detector is
        // sure: if it is not speech after all, the bot goes on where it stopped.
        let voiced = self.voice.as_ref().and_then(|v| v.detector.voiced_for()).is_some_and(|v| v >= HOLD_ON);
        let interruptible = self.speaking.as_ref().is_some_and(|s| s.interruptible && s.resume_at.is_none());
        if voiced && interruptible && self.config.dials.interrupt == InterruptSensitivity::High {
            self.hold().await;
        }
    }

    /// A pause [`PROBE`] long while the caller speaks: the model starts hearing it, and
    /// speech-to-text may finish the words up to it; speech again before the detector's stop: its
    /// verdict is stale.
    fn probe_pause(&mut self, stt: Option<&mpsc::Sender<SttInput>>) {
        let Some(voice) = self.voice.as_mut() else { return };
        match voice.detector.pausing_since() {
            Some(from) if voice.probing != Some(from) && voice.detector.heard().saturating_sub(from) >= PROBE => {
                voice.pause += 1;
                voice.verdict = None;
                voice.probing = Some(from);
                tracing::debug!(pause = voice.pause, "a pause: the model and the recogniser hear it ahead of a stop");
                voice.judge();
                if let (Some(stt), Some(session_from)) = (stt, voice.session_from) {
                    let at = from.saturating_sub(session_from);
                    if stt.try_send(SttInput::Pausing { at }).is_err() {
                        metrics::counter!("vocode_conversation_audio_dropped_total").increment(1);
                    }
                }
            }
            None if voice.probing.is_some() && voice.detector.speaking() => {
                // Speech again: the pause was between words.
                voice.pause += 1;
                voice.verdict = None;
                voice.probing = None;
            }
            _ => {}
        }
    }

    fn voice_started(&mut self, now: Instant) {
        let Some(voice) = self.voice.as_mut() else { return };
        voice.pause += 1;
        voice.probing = None;
        voice.stopped_at = None;
        voice.verdict = None;
        // Speech goes on: where it stopped before is not the end of it.
        self.spoke_until = None;
        self.last_activity = now;
        self.turn_began.get_or_insert(now);
        // Still speaking: the end of the turn waits, as it does for words.
        if self.turn_ends_at.is_some() {
            self.end_turn_at(now + self.config.dials.endpointing().otherwise);
        }
    }

    /// The caller stopped speaking at `at` (`position` in the detector's audio): the model judges
    /// the pause, if it is not hearing it already; a verdict already in is applied.
    fn voice_stopped(&mut self, position: Duration, at: Instant) {
        let Some(voice) = self.voice.as_mut() else { return };
        let probed = voice.probing.take() == Some(position);
        if !probed {
            voice.pause += 1;
            voice.verdict = None;
        }
        voice.stopped_at = Some(at);
        self.spoke_until = Some(self.spoke_until.map_or(at, |s| s.max(at)));
        if self.heard.trim().is_empty() && !self.interim {
            // Nothing was said (yet): the turn's longest is counted from its words.
            self.turn_began = None;
        }
        let Some(voice) = self.voice.as_mut() else { return };
        if !probed {
            voice.judge();
        } else if let Some(probability) = voice.verdict {
            let pause = voice.pause;
            self.verdict(pause, probability);
        }
    }

    /// The model's verdict on a pause: if the caller is still silent there, the turn ends after
    /// the wait it gives, from when they stopped.
    pub(super) fn verdict(&mut self, pause: u64, probability: f32) {
        let Some(voice) = self.voice.as_mut().filter(|v| v.pause == pause) else { return };
        if voice.verdict.is_none() {
            metrics::counter!("vocode_end_of_turn_verdicts_total",
                "verdict" => if probability > end_of_turn::THRESHOLD { "complete" } else { "incomplete" })
            .increment(1);
        }
        voice.verdict = Some(probability);
        tracing::debug!(pause, probability, stopped = voice.stopped_at.is_some(), "the end-of-turn model's verdict");
        // Heard before the detector is sure the caller stopped: kept for that moment.
        let Some(stopped) = voice.stopped_at else { return };
        if !self.heard.trim().is_empty() && self.outside.is_empty() {
            let at = after_verdict(&self.config.dials, stopped, probability, &self.heard);
            self.end_turn_at(at.max(Instant::now()));
        }
    }

    /// The person's turn ends at `at`, or at its longest.
    pub(super) fn end_turn_at(&mut self, at: Instant) {
        let at = match self.turn_began {
            Some(began) => at.min(began + self.config.dials.longest_turn()),
            None => at,
        };
        self.turn_ends_at = Some(at);
    }
}

/// When a turn whose pause began at `stopped` ends, by the model's `probability` that it is
/// complete and by the words heard ([`Dials::end_of_turn_waits`]): when both say done (the
/// recogniser ended a sentence: [`sentence_ended`]) — the short wait; when both say not done — the
/// long wait; when they disagree — the silence rule's wait after unfinished words, longer than it
/// waits after a finished sentence. Neither alone answers sooner than the silence rule ("My
/// account number is" sounds finished as often as not), and a "not done" of a sentence the words
/// finished is not the long wait: on voices unlike the people it learned from, the model says it
/// of finished sentences about as often as of unfinished ones.
pub(super) fn after_verdict(dials: &Dials, stopped: Instant, probability: f32, heard: &str) -> Instant {
    let wait = match (probability > end_of_turn::THRESHOLD, sentence_ended(heard)) {
        (true, true) => dials.end_of_turn_waits().complete,
        (false, false) => dials.end_of_turn_waits().incomplete,
        _ => dials.endpointing().otherwise,
    };
    stopped + wait
}

/// The caller's audio (16 kHz) ending in a pause `quiet` long, as it will be at the detector's
/// stop: the pause's own sound repeated until it is [`DetectorSettings::min_silence`] long. A
/// pause already that long, or with no sound of its own heard, is left as it is.
pub(super) fn as_at_the_stop(mut audio: Vec<i16>, quiet: Duration) -> Vec<i16> {
    // The detector's clock counts 16 kHz samples, as the audio here does.
    let quiet = (ticks_of(quiet) as usize).min(audio.len());
    let missing = (ticks_of(DetectorSettings::default().min_silence) as usize).saturating_sub(quiet);
    if quiet > 0 && missing > 0 {
        let pause = audio[audio.len() - quiet..].to_vec();
        audio.extend(pause.iter().cycle().take(missing));
    }
    audio
}

/// Hands speech-to-text a frame without waiting: a full queue drops it (and counts it).
fn offer_audio(stt: Option<&mpsc::Sender<SttInput>>, frame: &[u8]) {
    if let Some(stt) = stt.filter(|_| !frame.is_empty()) {
        if stt.try_send(SttInput::Audio(frame.to_vec())).is_err() {
            metrics::counter!("vocode_conversation_audio_dropped_total").increment(1);
        }
    }
}
