//! The local speech-to-text: the call's audio cut into utterances by an energy voice-activity
//! detector ([`EnergyVad`]) and transcribed by the shared Moonshine recogniser
//! ([`super::moonshine`]). While the person speaks, the growing utterance is transcribed again
//! every [`INTERIM_EVERY`] of new audio for interim results (skipped when a newer one supersedes
//! it, and when every worker of the recogniser is busy: finals, which end turns, come first);
//! when the endpointing silence has passed, the whole utterance is transcribed once more for the
//! final (`speech_final`). Telephone audio (8 kHz μ-law) is
//! upsampled to the model's 16 kHz by the engine's own resampler.
//!
//! The session's task only cuts frames; the transcriptions run on the recogniser's bounded pool.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::moonshine::{Recognizer, LONGEST, SAMPLE_RATE};
use super::{SpeechToText, SttConfig, SttError, SttEvent, SttSession, AUDIO_QUEUE_FRAMES, EVENT_QUEUE};
use crate::conversation::audio::Transcoder;
use crate::conversation::local::LocalSpeech;
use crate::conversation::vad::{EnergyVad, VadEvent, FRAME};

/// New audio after which an utterance in progress is transcribed again.
pub const INTERIM_EVERY: Duration = Duration::from_millis(500);
/// Audio kept from before the detector was sure speech started (its first syllable).
const PRE_ROLL: usize = SAMPLE_RATE / 4;
/// An utterance longer than this is finalised in parts.
const LONGEST_UTTERANCE: usize = LONGEST / 2;

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
}

/// Audio to transcribe: an utterance so far (interim) or whole (final).
struct Job {
    /// When the audio was cut: a final's latency runs from the endpoint (queueing included).
    at: std::time::Instant,
    audio: Vec<i16>,
    last: bool,
    speech_final: bool,
}

/// Cuts utterances out of the session's audio (16 kHz from here on) and hands them to the
/// transcriber; when the audio ends, what was being said is finalised.
async fn listen(
    recognizer: Arc<Recognizer>,
    config: SttConfig,
    mut audio: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<SttEvent>,
) {
    let endpointing = Duration::from_millis(u64::from(config.endpointing_ms.max(200)));
    let mut segmenter = Segmenter::new(endpointing);
    let mut decode = Transcoder::to_pcm16k(config.encoding);
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let transcriber = tokio::spawn(transcribe(recognizer, jobs_rx, events.clone()));
    while let Some(bytes) = audio.recv().await {
        for step in segmenter.push(&decode.decode(&bytes)) {
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
    if let Some(job) = segmenter.finish() {
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
        let transcribed = if job.last {
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
        let event = if job.last {
            last_interim.clear();
            SttEvent::Final { text, speech_final: job.speech_final }
        } else {
            if text == last_interim {
                continue;
            }
            last_interim.clone_from(&text);
            SttEvent::Interim { text }
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
                        steps.push(Step::Transcribe(Job {
                            at: std::time::Instant::now(),
                            audio: utterance,
                            last: true,
                            speech_final: true,
                        }));
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
                        steps.push(Step::Transcribe(Job {
                            at: std::time::Instant::now(),
                            audio: whole,
                            last: true,
                            speech_final: false,
                        }));
                    } else if utterance.len()
                        >= self.transcribed_at + SAMPLE_RATE * INTERIM_EVERY.as_millis() as usize / 1000
                    {
                        self.transcribed_at = utterance.len();
                        steps.push(Step::Transcribe(Job {
                            at: std::time::Instant::now(),
                            audio: utterance.clone(),
                            last: false,
                            speech_final: false,
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
        Some(Job { at: std::time::Instant::now(), audio: utterance, last: true, speech_final: true })
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
}
