//! The local speech-to-text: the call's audio cut into utterances and transcribed by the shared
//! Moonshine recogniser ([`super::moonshine`]). The engine tells the session where its
//! voice-activity detector heard the caller start and stop ([`SttInput::Voice`], with
//! [`SttConfig::voice_events`]): utterances are cut there, so audio the detector did not take for
//! speech (a cough, a click, a door) is never transcribed, and speech shorter than a noise burst
//! ([`SHORTEST_SPEECH`]) is dropped untranscribed. Without the engine's events an energy detector
//! of the session's own ([`EnergyVad`]) cuts them. While the person speaks, the growing utterance
//! is transcribed again every [`INTERIM_EVERY`] of new audio for interim results (skipped when a
//! newer one supersedes it, and when every worker of the recogniser is busy: finals, which end
//! turns, come first), or only every [`QUIET_INTERIM_EVERY`] while the engine says it needs none
//! ([`SttInput::Interims`]: the bot is silent); when the speech has stopped, the whole utterance
//! is transcribed once more for the final (`speech_final` only when the session cut it itself:
//! where the engine's detector cut, the engine decides when the turn is over). Each result says
//! where its speech was ([`Spoken`]), and text the recogniser made of too little speech, or
//! looping ([`super::plausible`]), is never sent.
//! Telephone audio (8 kHz μ-law) is upsampled to the model's 16 kHz by the engine's own
//! resampler.
//!
//! The session's task only cuts frames; the transcriptions run on the recogniser's bounded pool.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::moonshine::{Recognizer, LONGEST, SAMPLE_RATE};
use super::plausible;
use super::{
    SpeechToText, Spoken, SttConfig, SttError, SttEvent, SttInput, SttSession, AUDIO_QUEUE_FRAMES, EVENT_QUEUE,
};
use crate::conversation::audio::Transcoder;
use crate::conversation::local::LocalSpeech;
use crate::conversation::vad::detector::{DetectorSettings, SpeechEvent, ENERGY_MIN_SPEECH};
use crate::conversation::vad::{EnergyVad, VadEvent, FRAME};

/// New audio after which an utterance in progress is transcribed again.
pub const INTERIM_EVERY: Duration = Duration::from_millis(500);
/// Audio kept from before the detector was sure speech started (its first syllable).
const PRE_ROLL: usize = SAMPLE_RATE / 4;
/// An utterance longer than this is finalised in parts.
const LONGEST_UTTERANCE: usize = LONGEST / 2;
/// Speech the engine's detector heard for less than this is a noise burst (a cough is up to
/// 300 ms): it is never transcribed.
pub const SHORTEST_SPEECH: Duration = ENERGY_MIN_SPEECH;
/// Speech after which the first interim is transcribed: more than a noise burst and the silence
/// that ends it, so that a burst never gives words, and Moonshine's guesses on a syllable ("We,
/// we, we, we") are never asked for.
pub const FIRST_INTERIM: Duration = Duration::from_millis(600);
/// How often an utterance is transcribed before its end while the engine needs no interims (the
/// bot is silent: the detector and the finals decide the turn). A sentence, a few seconds long,
/// then costs one transcription, its final, and the words ahead at its pauses are not kept
/// waiting for a worker busy with interims nobody reads; a caller who never pauses still has
/// recent words when the turn reaches its longest.
pub const QUIET_INTERIM_EVERY: Duration = Duration::from_secs(5);
/// Audio kept from before the engine's detector dated the speech's start.
const VOICE_PRE_ROLL: usize = PRE_ROLL;
/// Audio kept outside an utterance, to find where the detector dated its start (it knows it
/// 200 ms later).
const KEPT_BEFORE: usize = SAMPLE_RATE;

const PROVIDER: &str = "moonshine";

/// The local recogniser as a speech-to-text provider.
pub struct LocalStt {
    speech: Arc<LocalSpeech>,
}

impl LocalStt {
    pub fn new(speech: Arc<LocalSpeech>) -> Self {
        LocalStt { speech }
    }
}

impl SpeechToText for LocalStt {
    fn open(&self, config: SttConfig) -> BoxFuture<'_, Result<SttSession, SttError>> {
        Box::pin(async move {
            let recognizer =
                self.speech.recognizer().await.map_err(|message| SttError::Settings { provider: PROVIDER, message })?;
            let (audio, audio_rx) = mpsc::channel(AUDIO_QUEUE_FRAMES);
            let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
            tokio::spawn(listen(recognizer, config, audio_rx, events_tx));
            Ok(SttSession { audio, events })
        })
    }

    fn name(&self) -> &str {
        PROVIDER
    }

    fn interims_are_guesses(&self) -> bool {
        // Moonshine on 850 ms of "Mm hmm, yeah": "And I'm each and em,".
        true
    }

    fn cuts_by_voice_activity(&self) -> bool {
        true
    }
}

/// A final transcribed ahead of the stop, at a pause the caller may yet speak through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    No,
    /// The utterance up to a pause that began at this position: transcribed (waiting for a worker,
    /// as a final does), and kept, not sent.
    Pause(Duration),
    /// The stop at this position: the words kept for its pause are the final, if there are any;
    /// else the job's audio is transcribed.
    Stop(Duration),
}

/// Audio to transcribe: an utterance so far (interim) or whole (final).
struct Job {
    ahead: Ahead,
    /// When the audio was cut: a final's latency runs from the endpoint (queueing included).
    at: std::time::Instant,
    audio: Vec<i16>,
    last: bool,
    speech_final: bool,
    /// Where its speech was, in the session's audio.
    spoken: Option<Spoken>,
}

impl Job {
    /// The whole of an utterance (or of its part), cut now: a final.
    fn last(audio: Vec<i16>, speech_final: bool, spoken: Option<Spoken>) -> Job {
        Job { ahead: Ahead::No, at: std::time::Instant::now(), audio, last: true, speech_final, spoken }
    }
}

/// Cuts utterances out of the session's audio (16 kHz from here on) and hands them to the
/// transcriber; when the audio ends, what was being said is finalised.
async fn listen(
    recognizer: Arc<Recognizer>,
    config: SttConfig,
    mut audio: mpsc::Receiver<SttInput>,
    events: mpsc::Sender<SttEvent>,
) {
    let endpointing = Duration::from_millis(u64::from(config.endpointing_ms.max(200)));
    let mut segmenter = Segmenter::new(endpointing);
    let mut cutter = config.voice_events.then(VoiceCutter::default);
    let mut decode = Transcoder::to_pcm16k(config.encoding);
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let transcriber = tokio::spawn(transcribe(recognizer, jobs_rx, events.clone()));
    while let Some(input) = audio.recv().await {
        let steps = match (input, cutter.as_mut()) {
            (SttInput::Audio(bytes), Some(cutter)) => cutter.audio(&decode.decode(&bytes)),
            (SttInput::Audio(bytes), None) => segmenter.push(&decode.decode(&bytes)),
            (SttInput::Voice(event), Some(cutter)) => cutter.voice(event),
            (SttInput::Voice(_), None) => Vec::new(),
            (SttInput::Pausing { at }, Some(cutter)) => cutter.pausing(at),
            (SttInput::Pausing { .. }, None) => Vec::new(),
            (SttInput::Interims(wanted), Some(cutter)) => {
                cutter.quiet = !wanted;
                Vec::new()
            }
            (SttInput::Interims(_), None) => Vec::new(),
        };
        for step in steps {
            match step {
                Step::Started => {
                    if events.send(SttEvent::SpeechStarted).await.is_err() {
                        return;
                    }
                }
                Step::Transcribe(job) => {
                    let _ = jobs.send(job);
                }
            }
        }
    }
    let last = match cutter.as_mut() {
        Some(cutter) => cutter.finish(),
        None => segmenter.finish(),
    };
    if let Some(job) = last {
        let _ = jobs.send(job);
    }
    drop(jobs);
    let _ = transcriber.await;
}

/// Transcribes jobs in order; an interim that a later job supersedes is skipped.
async fn transcribe(
    recognizer: Arc<Recognizer>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    events: mpsc::Sender<SttEvent>,
) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut last_interim = String::new();
    // The words transcribed ahead at a pause, and where it began.
    let mut kept: Option<(Duration, String)> = None;
    loop {
        if queue.is_empty() {
            match jobs.recv().await {
                Some(job) => queue.push_back(job),
                None => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            queue.push_back(job);
        }
        let job = queue.pop_front().expect("one is queued");
        if !job.last && !queue.is_empty() {
            continue;
        }
        let started = job.at;
        let seconds = job.audio.len() as f64 / SAMPLE_RATE as f64;
        let reused = match job.ahead {
            Ahead::Stop(at) => kept.take().filter(|(pause, _)| *pause == at).map(|(_, text)| text),
            _ => None,
        };
        let transcribed = if let Some(text) = reused {
            metrics::counter!("vocode_stt_local_finals_ahead_total").increment(1);
            Ok(text)
        } else if let Ahead::Pause(at) = job.ahead {
            // Ahead of a stop that may not come, but before any interim: the stop, queued behind
            // it, reuses its words.
            if let Ok(text) = recognizer.transcribe(job.audio).await {
                tracing::debug!(took_ms = job.at.elapsed().as_millis() as u64, %text, "transcribed ahead of a stop");
                kept = Some((at, text));
            }
            continue;
        } else if job.last {
            recognizer.transcribe(job.audio).await
        } else {
            match recognizer.transcribe_if_free(job.audio).await {
                Some(transcribed) => transcribed,
                None => {
                    metrics::counter!("vocode_stt_local_interims_skipped_total").increment(1);
                    continue;
                }
            }
        };
        let text = match transcribed {
            Ok(text) => text,
            Err(e) => {
                // Like any provider's failure: logged, counted, and the call goes on.
                tracing::warn!(error = %e, "local speech-to-text: a transcription failed");
                metrics::counter!("vocode_stt_local_failures_total").increment(1);
                if job.last {
                    last_interim.clear();
                }
                continue;
            }
        };
        // From the endpoint (or the interim's cut) to the words, waiting for a worker included.
        metrics::histogram!("vocode_stt_local_seconds", "kind" => if job.last { "final" } else { "interim" })
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(seconds, took_ms = started.elapsed().as_millis() as u64, final = job.last, %text, "transcribed");
        if let Err(why) = plausible::judge(&text, job.spoken.map(|s| s.length())) {
            // What the recogniser made of a noise, or of too little speech: never words.
            tracing::debug!(%text, %why, "local speech-to-text: not words");
            metrics::counter!("vocode_stt_local_implausible_total").increment(1);
            if job.last {
                last_interim.clear();
            }
            continue;
        }
        let spoken = job.spoken;
        let event = if job.last {
            last_interim.clear();
            SttEvent::Final { text, speech_final: job.speech_final, spoken }
        } else {
            if text == last_interim {
                continue;
            }
            last_interim.clone_from(&text);
            SttEvent::Interim { text, spoken }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// What a stretch of audio asks for.
enum Step {
    Started,
    Transcribe(Job),
}

/// Utterances out of 16 kHz audio: the detector's decisions, with the pre-roll before speech was
/// sure, and the points at which to transcribe.
struct Segmenter {
    vad: EnergyVad,
    pending: Vec<i16>,
    /// The last [`PRE_ROLL`] samples heard outside an utterance.
    before: VecDeque<i16>,
    utterance: Option<Vec<i16>>,
    transcribed_at: usize,
}

impl Segmenter {
    fn new(endpointing: Duration) -> Segmenter {
        Segmenter {
            vad: EnergyVad::new(endpointing),
            pending: Vec::new(),
            before: VecDeque::new(),
            utterance: None,
            transcribed_at: 0,
        }
    }

    fn push(&mut self, pcm16k: &[i16]) -> Vec<Step> {
        let mut steps = Vec::new();
        self.pending.extend_from_slice(pcm16k);
        let frames = self.pending.len() / FRAME;
        let audio: Vec<i16> = self.pending.drain(..frames * FRAME).collect();
        for frame in audio.chunks_exact(FRAME) {
            match self.vad.push(frame) {
                Some(VadEvent::Started { .. }) => {
                    let mut utterance: Vec<i16> = self.before.drain(..).collect();
                    utterance.extend_from_slice(frame);
                    self.utterance = Some(utterance);
                    self.transcribed_at = 0;
                    steps.push(Step::Started);
                    continue;
                }
                Some(VadEvent::Ended) => {
                    if let Some(mut utterance) = self.utterance.take() {
                        utterance.extend_from_slice(frame);
                        steps.push(Step::Transcribe(Job::last(utterance, true, None)));
                    }
                    continue;
                }
                None => {}
            }
            match &mut self.utterance {
                Some(utterance) => {
                    utterance.extend_from_slice(frame);
                    if utterance.len() >= LONGEST_UTTERANCE {
                        let whole = std::mem::take(utterance);
                        self.transcribed_at = 0;
                        steps.push(Step::Transcribe(Job::last(whole, false, None)));
                    } else if utterance.len()
                        >= self.transcribed_at + SAMPLE_RATE * INTERIM_EVERY.as_millis() as usize / 1000
                    {
                        self.transcribed_at = utterance.len();
                        steps.push(Step::Transcribe(Job {
                            ahead: Ahead::No,
                            at: std::time::Instant::now(),
                            audio: utterance.clone(),
                            last: false,
                            speech_final: false,
                            spoken: None,
                        }));
                    }
                }
                None => {
                    self.before.extend(frame.iter().copied());
                    let excess = self.before.len().saturating_sub(PRE_ROLL);
                    self.before.drain(..excess);
                }
            }
        }
        steps
    }

    /// What was being said when the audio ended.
    fn finish(&mut self) -> Option<Job> {
        let utterance = self.utterance.take().filter(|u| !u.is_empty())?;
        Some(Job::last(utterance, true, None))
    }
}

fn samples_of(at: Duration) -> u64 {
    at.as_micros() as u64 * SAMPLE_RATE as u64 / 1_000_000
}

fn position(samples: u64) -> Duration {
    Duration::from_micros(samples * 1_000_000 / SAMPLE_RATE as u64)
}

/// Utterances cut where the engine's voice-activity detector heard speech start and stop, in
/// 16 kHz audio; positions count the session's samples from its first.
#[derive(Default)]
struct VoiceCutter {
    heard: u64,
    /// The last [`KEPT_BEFORE`] samples heard outside an utterance.
    before: VecDeque<i16>,
    utterance: Option<Cut>,
    /// The pause whose words were sent ahead to be transcribed: the stop there reuses them.
    ahead: Option<Duration>,
    /// The engine needs no interims now ([`SttInput::Interims`]): an utterance is transcribed
    /// before its end only every [`QUIET_INTERIM_EVERY`].
    quiet: bool,
}

struct Cut {
    /// Where its speech started.
    start: u64,
    audio: Vec<i16>,
    transcribed_at: usize,
}

impl VoiceCutter {
    fn audio(&mut self, pcm16k: &[i16]) -> Vec<Step> {
        self.heard += pcm16k.len() as u64;
        let Some(cut) = self.utterance.as_mut() else {
            self.before.extend(pcm16k.iter().copied());
            let excess = self.before.len().saturating_sub(KEPT_BEFORE);
            self.before.drain(..excess);
            return Vec::new();
        };
        cut.audio.extend_from_slice(pcm16k);
        let spoken = Some(Spoken { start: position(cut.start), end: position(self.heard) });
        let at = std::time::Instant::now();
        if cut.audio.len() >= LONGEST_UTTERANCE {
            // A caller who never pauses: finalised in parts, so nothing grows without bound.
            let audio = std::mem::take(&mut cut.audio);
            // Words kept ahead were of this part, which is finalised now.
            self.ahead = None;
            cut.start = self.heard;
            cut.transcribed_at = 0;
            return vec![Step::Transcribe(Job::last(audio, false, spoken))];
        }
        let (first, every) =
            if self.quiet { (QUIET_INTERIM_EVERY, QUIET_INTERIM_EVERY) } else { (FIRST_INTERIM, INTERIM_EVERY) };
        let long_enough = self.heard - cut.start >= samples_of(first);
        if long_enough && cut.audio.len() >= cut.transcribed_at + samples_of(every) as usize {
            cut.transcribed_at = cut.audio.len();
            return vec![Step::Transcribe(Job {
                ahead: Ahead::No,
                at,
                audio: cut.audio.clone(),
                last: false,
                speech_final: false,
                spoken,
            })];
        }
        Vec::new()
    }

    fn voice(&mut self, event: SpeechEvent) -> Vec<Step> {
        match event {
            SpeechEvent::Started { at } if self.utterance.is_none() => {
                let start = samples_of(at).min(self.heard);
                let kept_from = self.heard - self.before.len() as u64;
                let from = start.saturating_sub(VOICE_PRE_ROLL as u64).max(kept_from);
                let audio: Vec<i16> = self.before.drain(..).skip((from - kept_from) as usize).collect();
                self.utterance = Some(Cut { start, audio, transcribed_at: 0 });
                vec![Step::Started]
            }
            SpeechEvent::Started { .. } => Vec::new(),
            SpeechEvent::Stopped { at } => {
                let ahead = if self.ahead.take() == Some(at) { Ahead::Stop(at) } else { Ahead::No };
                let Some(cut) = self.utterance.take() else { return Vec::new() };
                let end = samples_of(at).clamp(cut.start, self.heard);
                let spoken = Spoken { start: position(cut.start), end: position(end) };
                if spoken.length() < SHORTEST_SPEECH {
                    metrics::counter!("vocode_stt_local_noise_skipped_total").increment(1);
                    return Vec::new();
                }
                // Not an endpoint: the engine, which cut here, decides when the turn is over.
                vec![Step::Transcribe(Job { ahead, ..Job::last(cut.audio, false, Some(spoken)) })]
            }
        }
    }

    /// A pause the engine's model hears: the utterance so far is transcribed ahead, and kept for
    /// the stop that may come at `at`.
    fn pausing(&mut self, at: Duration) -> Vec<Step> {
        let Some(cut) = self.utterance.as_ref() else { return Vec::new() };
        let end = samples_of(at).clamp(cut.start, self.heard);
        let spoken = Spoken { start: position(cut.start), end: position(end) };
        if spoken.length() < SHORTEST_SPEECH {
            return Vec::new();
        }
        self.ahead = Some(at);
        // The recogniser hears as much quiet after the words as at the stop (the detector's
        // 192 ms of silence): with less, it takes the end of a sentence for a pause in it ("Thank
        // you, goodbye," for "Thank you, goodbye.").
        let quiet = samples_of(DetectorSettings::default().min_silence);
        let quiet_heard = self.heard.saturating_sub(samples_of(at));
        let mut audio = cut.audio.clone();
        audio.resize(audio.len() + quiet.saturating_sub(quiet_heard) as usize, 0);
        let at_pause = Ahead::Pause(at);
        vec![Step::Transcribe(Job {
            ahead: at_pause,
            at: std::time::Instant::now(),
            audio,
            last: true,
            speech_final: false,
            spoken: Some(spoken),
        })]
    }

    /// What was being said when the audio ended.
    fn finish(&mut self) -> Option<Job> {
        let cut = self.utterance.take().filter(|c| !c.audio.is_empty())?;
        let spoken = Some(Spoken { start: position(cut.start), end: position(self.heard) });
        Some(Job::last(cut.audio, true, spoken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: usize, amplitude: f32) -> Vec<i16> {
        (0..SAMPLE_RATE * ms / 1000).map(|i| (amplitude * (i as f32 * 0.2).sin()) as i16).collect()
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Started => "started".to_owned(),
                Step::Transcribe(job) => {
                    format!("{}:{}ms", if job.last { "final" } else { "interim" }, job.audio.len() * 1000 / SAMPLE_RATE)
                }
            })
            .collect()
    }

    #[test]
    fn an_utterance_is_cut_with_its_pre_roll_transcribed_as_it_grows_and_finalised_after_the_silence() {
        let mut segmenter = Segmenter::new(Duration::from_millis(300));
        let mut steps = segmenter.push(&tone(1_000, 0.0));
        steps.extend(segmenter.push(&tone(1_200, 9_000.0)));
        steps.extend(segmenter.push(&tone(600, 0.0)));
        // Speech is sure on its third frame; the 250 ms before that come with it (the first two
        // frames and 210 ms of the silence): 250 + 1160 + 300 ms of silence = 1710 ms.
        assert_eq!(
            kinds(&steps),
            ["started", "interim:510ms", "interim:1010ms", "interim:1510ms", "final:1710ms"],
            "interims every 500 ms of new audio, the final once 300 ms of silence passed"
        );
        assert!(segmenter.finish().is_none(), "nothing left");
    }

    #[test]
    fn audio_that_ends_mid_utterance_is_finalised() {
        let mut segmenter = Segmenter::new(Duration::from_millis(500));
        segmenter.push(&tone(200, 0.0));
        segmenter.push(&tone(400, 9_000.0));
        let job = segmenter.finish().expect("the utterance in progress");
        assert!(job.last && job.speech_final);
    }

    #[test]
    fn frames_split_anywhere_are_heard_the_same() {
        let audio = [tone(300, 0.0), tone(800, 9_000.0), tone(700, 0.0)].concat();
        let mut whole = Segmenter::new(Duration::from_millis(500));
        let expected = kinds(&whole.push(&audio));
        let mut split = Segmenter::new(Duration::from_millis(500));
        let mut steps = Vec::new();
        for piece in audio.chunks(123) {
            steps.extend(split.push(piece));
        }
        assert_eq!(kinds(&steps), expected);
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn utterances_are_cut_where_the_engines_detector_heard_speech() {
        let mut cutter = VoiceCutter::default();
        let mut steps = cutter.audio(&tone(1_000, 0.0));
        // The detector dates the speech to 800 ms (it knew 200 ms later).
        steps.extend(cutter.voice(SpeechEvent::Started { at: ms(800) }));
        for frame in tone(1_200, 9_000.0).chunks(FRAME) {
            steps.extend(cutter.audio(frame));
        }
        steps.extend(cutter.voice(SpeechEvent::Stopped { at: ms(2_000) }));
        steps.extend(cutter.audio(&tone(500, 0.0)));
        // 250 ms of pre-roll before 800 ms, the 200 ms to 1000 ms, then 1200 ms: 1650 ms. The
        // first interim once 600 ms of it was speech (850 ms of audio), the next after 500 ms more.
        assert_eq!(kinds(&steps), ["started", "interim:850ms", "interim:1350ms", "final:1650ms"]);
        let Some(Step::Transcribe(last)) = steps.last() else { panic!() };
        assert_eq!(last.spoken, Some(Spoken { start: ms(800), end: ms(2_000) }));
        assert!(cutter.finish().is_none());
    }

    #[test]
    fn the_words_up_to_a_pause_are_transcribed_ahead_and_reused_only_by_the_stop_there() {
        let started = |cutter: &mut VoiceCutter| {
            let mut steps = cutter.audio(&tone(1_000, 0.0));
            steps.extend(cutter.voice(SpeechEvent::Started { at: ms(800) }));
            steps.extend(cutter.audio(&tone(700, 9_000.0)));
            steps
        };
        let ahead = |steps: &[Step]| -> Vec<Ahead> {
            steps.iter().filter_map(|s| if let Step::Transcribe(j) = s { Some(j.ahead) } else { None }).collect()
        };
        // A pause at 1700 ms (where the speech ended), heard 90 ms in; the stop comes there.
        let mut cutter = VoiceCutter::default();
        let mut steps = started(&mut cutter);
        steps.extend(cutter.audio(&tone(90, 0.0)));
        steps.extend(cutter.pausing(ms(1_700)));
        steps.extend(cutter.audio(&tone(110, 0.0)));
        steps.extend(cutter.voice(SpeechEvent::Stopped { at: ms(1_700) }));
        // 450 ms before the speech, 700 ms of it (an interim), 90 ms of the pause and 102 ms of
        // quiet added (as much as the stop has after the words: 192 ms); then the stop's 110 ms.
        assert_eq!(kinds(&steps), ["started", "interim:1150ms", "final:1342ms", "final:1350ms"]);
        assert_eq!(ahead(&steps), [Ahead::No, Ahead::Pause(ms(1_700)), Ahead::Stop(ms(1_700))]);
        let Some(Step::Transcribe(pause)) = steps.get(2) else { panic!() };
        assert_eq!(pause.spoken, Some(Spoken { start: ms(800), end: ms(1_700) }), "the words up to the pause");
        assert!(pause.audio[pause.audio.len() - 1_760..].iter().all(|&s| s == 0), "the quiet added");

        // The caller spoke through that pause and stopped later: the words ahead are not reused.
        let mut cutter = VoiceCutter::default();
        let mut steps = started(&mut cutter);
        steps.extend(cutter.pausing(ms(1_500)));
        steps.extend(cutter.audio(&tone(400, 9_000.0)));
        steps.extend(cutter.voice(SpeechEvent::Stopped { at: ms(1_900) }));
        assert_eq!(ahead(&steps).last(), Some(&Ahead::No));

        // A pause before enough speech to be words: nothing is transcribed ahead.
        let mut cutter = VoiceCutter::default();
        cutter.audio(&tone(1_000, 0.0));
        cutter.voice(SpeechEvent::Started { at: ms(800) });
        cutter.audio(&tone(200, 9_000.0));
        assert!(cutter.pausing(ms(1_000)).is_empty());
    }

    #[test]
    fn while_the_engine_needs_no_interims_a_sentence_is_transcribed_once_and_a_monologue_now_and_then() {
        let spoken = |cutter: &mut VoiceCutter, ms_of_speech: usize| {
            let mut steps = cutter.audio(&tone(1_000, 0.0));
            steps.extend(cutter.voice(SpeechEvent::Started { at: ms(800) }));
            for frame in tone(ms_of_speech, 9_000.0).chunks(FRAME) {
                steps.extend(cutter.audio(frame));
            }
            steps
        };
        // The bot is silent: a 3 s sentence gets no interim, only its final.
        let mut cutter = VoiceCutter { quiet: true, ..VoiceCutter::default() };
        let mut steps = spoken(&mut cutter, 3_000);
        steps.extend(cutter.voice(SpeechEvent::Stopped { at: ms(3_800) }));
        assert_eq!(kinds(&steps), ["started", "final:3450ms"]);
        // A caller who goes on: an interim every 5 s of speech, for the turn's longest.
        let mut cutter = VoiceCutter { quiet: true, ..VoiceCutter::default() };
        let steps = spoken(&mut cutter, 11_000);
        assert_eq!(kinds(&steps), ["started", "interim:5250ms", "interim:10250ms"]);
        // The bot starts speaking mid-sentence: interims at once, then every 500 ms.
        let mut cutter = VoiceCutter { quiet: true, ..VoiceCutter::default() };
        let mut steps = spoken(&mut cutter, 2_000);
        cutter.quiet = false;
        steps.extend(cutter.audio(&tone(20, 9_000.0)));
        for frame in tone(500, 9_000.0).chunks(FRAME) {
            steps.extend(cutter.audio(frame));
        }
        assert_eq!(kinds(&steps), ["started", "interim:2470ms", "interim:2970ms"]);
    }

    #[test]
    fn speech_shorter_than_a_noise_burst_is_never_transcribed() {
        let mut cutter = VoiceCutter::default();
        let mut steps = cutter.audio(&tone(500, 0.0));
        steps.extend(cutter.voice(SpeechEvent::Started { at: ms(300) }));
        steps.extend(cutter.audio(&tone(300, 9_000.0)));
        steps.extend(cutter.voice(SpeechEvent::Stopped { at: ms(600) }));
        assert_eq!(kinds(&steps), ["started"], "300 ms of 'speech': a cough");
        // Audio from before the session heard anything is not asked for.
        let mut cutter = VoiceCutter::default();
        assert_eq!(kinds(&cutter.voice(SpeechEvent::Started { at: ms(5_000) })), ["started"]);
        assert!(cutter.finish().is_none(), "no audio, nothing to finalise");
    }
}
