//! Turn-taking from the caller's ear, end to end with real audio: the real server with the local
//! recogniser, voice-activity detector and end-of-turn model as installed (`SPEECH_DIR`), fake
//! OpenAI-compatible and ElevenLabs servers, and a carrier's media client on Twilio or Vonage that
//! speaks real audio up the stream in real time — sentences said by flite, and noise bursts of
//! 300 ms (white noise, a click, a breath, a cough, a door). Noise is never answered, never leaves
//! a `HUMAN` line and never stops the bot, at either sensitivity; a backchannel at `low` does not
//! stop it; each turn's latencies are dated from the end of the caller's speech, and the
//! end-of-turn model judges its pause; broken turn-taking models leave the server hearing by
//! loudness and ending turns by the silence rule. With Deepgram, the caller's voice stopping asks
//! Deepgram to finalise (that test needs no installed speech).
//!
//! These need the installed speech: without it they say SKIPPED (with `REQUIRE_SPEECH=1` they
//! fail). SQLite only, as `behaviours`: the engine is under test, not the database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vocode_server::config::{Switch, Vad};
use vocode_server::conversation::audio::{Encoding, Resampler};
use vocode_server::conversation::{end_of_turn, vad};

use super::line::{Carrier, Line};
use super::{transcript, transcript_has, world_with, World, GREETING};
use crate::speech::{bursts, installed, say};
use crate::support::fake_openai::Script;
use crate::support::fake_tts::TtsBehaviour;
use crate::support::Backend;

const GREETING_AUDIO: u8 = 0x3c;
const ANSWER_AUDIO: u8 = 0x5a;
const ANSWER: &str = "Our window tables are free tonight and the terrace opens at six.";
/// "Mm hmm, yeah", as flite is made to say it (its "Mm hmm" is a buzz Moonshine hears as words
/// such as "And am I, Chaman?" on the 8 kHz line).
const BACKCHANNEL: &str = "Mhm, yeah.";
/// How long the bot's answer plays.
const ANSWER_LENGTH: Duration = Duration::from_millis(4_000);

/// A world whose server hears with the installed local speech (no Deepgram), with `adjust`ed
/// settings; and flite.
async fn local_world(adjust: impl FnOnce(&mut vocode_server::config::ConversationArgs)) -> Option<(World, PathBuf)> {
    let (dir, flite) = installed()?;
    let w = world_with(Backend::Sqlite, |c| {
        c.deepgram_api_key = None;
        c.deepgram_url = None;
        c.speech_dir = Some(dir);
        c.local_stt_workers = Some(1);
        adjust(c);
    })
    .await?;
    Some((w, flite))
}

fn encoding(line: Line) -> Encoding {
    match line {
        Line::Twilio => Encoding::Mulaw8k,
        Line::Vonage => Encoding::Linear16k,
    }
}

/// Samples at the line's rate.
fn at_line_rate(line: Line, pcm16k: &[i16]) -> Vec<i16> {
    match line {
        Line::Twilio => Resampler::down().process(pcm16k),
        Line::Vonage => pcm16k.to_vec(),
    }
}

fn silence(line: Line, length: Duration) -> Vec<i16> {
    let per_ms = match line {
        Line::Twilio => 8,
        Line::Vonage => 16,
    };
    vec![0; per_ms * length.as_millis() as usize]
}

/// Plays `samples` (at the line's rate) up the stream in real time, a 20 ms frame at a time.
async fn play(carrier: &Carrier, line: Line, samples: &[i16]) {
    let per_frame = match line {
        Line::Twilio => 160,
        Line::Vonage => 320,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in samples.chunks(per_frame) {
        tick.tick().await;
        carrier.speak(&encoding(line).encode(frame));
    }
}

/// Plays silence until `done` says so (or `limit` passes); returns whether it did.
async fn silence_until(carrier: &Carrier, line: Line, limit: Duration, done: impl Fn(&Carrier) -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done(carrier) {
            return true;
        }
        play(carrier, line, &silence(line, Duration::from_millis(100))).await;
    }
    done(carrier)
}

/// A sentence said by flite, at the line's rate.
async fn said(flite: &Path, line: Line, sentence: &str) -> Vec<i16> {
    encoding(line).decode(&say(flite, "slt", sentence, encoding(line)).await)
}

fn id(call: &Value) -> String {
    call["id"].as_str().unwrap().to_owned()
}

/// The call answered and greeted (its greeting played whole), the line silent.
async fn greeted(w: &World, line: Line, interrupt: &str) -> (String, Carrier) {
    w.tts.plan([TtsBehaviour::Lasting(Duration::from_millis(300), GREETING_AUDIO)]);
    let agent = json!({"prompt": {"content": "You book tables."}, "initial_message": GREETING,
                       "interrupt_sensitivity": interrupt,
                       "voice": {"type": "voice_eleven_labs", "voice_id": "voice-1"}});
    let call = line.call(w, agent).await;
    let carrier = line.answer(w, &call).await;
    let played =
        silence_until(&carrier, line, Duration::from_secs(10), |c| c.played_ms_of(GREETING_AUDIO) >= 300).await;
    assert!(played, "the greeting was played");
    transcript_has(w, &id(&call), &format!("BOT: {GREETING}")).await;
    (id(&call), carrier)
}

/// The person asks for a table; the bot's answer is under way (`into` of it played).
async fn bot_answering(w: &World, carrier: &Carrier, line: Line, flite: &Path, into: Duration) {
    w.tts.plan([TtsBehaviour::Lasting(ANSWER_LENGTH, ANSWER_AUDIO)]);
    w.openai.then(Script::text(&[ANSWER]));
    play(carrier, line, &said(flite, line, "I would like a table for two tonight, please.").await).await;
    let into = into.as_millis() as u64;
    let answering =
        silence_until(carrier, line, Duration::from_secs(15), |c| c.played_ms_of(ANSWER_AUDIO) >= into).await;
    assert!(answering, "the bot answered the sentence");
}

fn human_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("HUMAN: ")).collect()
}

/// Noise while nobody speaks: no turn, no `HUMAN` line, no answer.
async fn noise_while_idle_is_never_answered(w: World, line: Line) {
    let (id, carrier) = greeted(&w, line, "low").await;
    for (name, burst) in bursts() {
        play(&carrier, line, &at_line_rate(line, &burst)).await;
        play(&carrier, line, &silence(line, Duration::from_millis(1_200))).await;
        eprintln!("played a {name}");
    }
    play(&carrier, line, &silence(line, Duration::from_secs(2))).await;
    let text = transcript(&w, &id).await;
    assert_eq!(text.as_str().map(str::trim_end), Some(format!("BOT: {GREETING}").as_str()), "nothing but the greeting");
    assert!(w.openai.received().is_empty(), "nothing was answered");
}

/// A cough while the bot answers, at `interrupt` sensitivity: the bot goes on; the cough is no
/// `HUMAN` line; the turn's latencies are dated from the end of the person's speech.
async fn a_cough_during_the_answer_does_not_stop_the_bot(w: World, line: Line, flite: &Path, interrupt: &str) {
    let (id, carrier) = greeted(&w, line, interrupt).await;
    bot_answering(&w, &carrier, line, flite, Duration::from_millis(500)).await;
    let (_, cough) = bursts().into_iter().find(|(name, _)| *name == "cough").unwrap();
    play(&carrier, line, &at_line_rate(line, &cough)).await;
    let whole = ANSWER_LENGTH.as_millis() as u64;
    silence_until(&carrier, line, Duration::from_secs(10), |c| c.played_ms_of(ANSWER_AUDIO) >= whole).await;
    assert!(carrier.clears().is_empty(), "the bot was not stopped: {:?}", carrier.clears());
    assert_eq!(carrier.played_ms_of(ANSWER_AUDIO), whole, "all of the answer was played");
    let text = transcript_has(&w, &id, &format!("BOT: {ANSWER}")).await;
    assert_eq!(human_lines(&text).len(), 1, "only the sentence: {text}");
    assert_eq!(w.openai.received().len(), 1);

    // Each stage after the one before, all from the end of the person's speech.
    let (_, latency) = w.app.get(&format!("/calls/latency?id={id}")).await;
    let turn = &latency["turns"][0];
    let stage = |name: &str| turn[name].as_f64().unwrap_or_else(|| panic!("{name} in {latency}"));
    assert!(stage("recognition_ms") > 0.0, "the final came after the speech ended: {turn}");
    assert!(stage("recognition_ms") <= stage("end_of_turn_ms"), "{turn}");
    assert!(stage("end_of_turn_ms") <= stage("first_token_ms"), "{turn}");
    assert!(stage("first_audio_ms") <= stage("first_frame_ms"), "{turn}");

    // The end-of-turn model judged the pause (the process's counter: other tests' turns count too).
    let res = w.app.request(reqwest::Method::GET, "/metrics", Some(&w.app.key), None).await;
    let metrics = res.text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("vocode_end_of_turn_verdicts_total")), "the model judged a pause");
}

/// "Mm hmm, yeah." while the bot answers, at `low`: heard through the local recogniser, it does
/// not stop the bot, and is not answered.
async fn a_backchannel_at_low_does_not_stop_the_bot(w: World, line: Line, flite: &Path) {
    let (id, carrier) = greeted(&w, line, "low").await;
    bot_answering(&w, &carrier, line, flite, Duration::from_millis(300)).await;
    play(&carrier, line, &said(flite, line, BACKCHANNEL).await).await;
    let whole = ANSWER_LENGTH.as_millis() as u64;
    silence_until(&carrier, line, Duration::from_secs(10), |c| c.played_ms_of(ANSWER_AUDIO) >= whole).await;
    let text = transcript_has(&w, &id, "BOT: Our window").await;
    assert!(carrier.clears().is_empty(), "the bot was not stopped: {:?}\n{text}", carrier.clears());
    assert_eq!(carrier.played_ms_of(ANSWER_AUDIO), whole, "all of the answer was played");
    play(&carrier, line, &silence(line, Duration::from_secs(2))).await;
    assert_eq!(w.openai.received().len(), 1, "the backchannel was not answered: {text}");
}

/// A word cut off at `high` (a sentence's first 220 ms of speech: too short to be transcribed): the
/// caller's voice holds the bot before any word, and since no words follow (a false start), the
/// bot goes on from where it stopped; nothing is answered.
async fn a_word_cut_off_holds_the_bot_at_high_which_goes_on_when_no_words_follow(w: World, line: Line, flite: &Path) {
    let (id, carrier) = greeted(&w, line, "high").await;
    bot_answering(&w, &carrier, line, flite, Duration::from_millis(500)).await;
    let sentence = said(flite, line, "I would like a table for two tonight, please.").await;
    // Its first 220 ms of speech, cut off (speech the detector dates shorter than 320 ms is never
    // transcribed).
    let length = encoding(line).sample_rate() as usize / 1000 * 220;
    let onset = sentence.iter().position(|s| s.unsigned_abs() > 2_000).expect("speech");
    play(&carrier, line, &sentence[onset..onset + length]).await;
    let held = silence_until(&carrier, line, Duration::from_secs(2), |c| !c.clears().is_empty()).await;
    assert!(held, "the voice held the bot");
    assert_eq!(carrier.clears()[0].message, line.clear_message());
    let whole = ANSWER_LENGTH.as_millis() as u64;
    silence_until(&carrier, line, Duration::from_secs(10), |c| c.played_ms_of(ANSWER_AUDIO) >= whole - 200).await;
    assert!(
        carrier.played_ms_of(ANSWER_AUDIO) >= whole - 200,
        "the bot went on: {} ms played",
        carrier.played_ms_of(ANSWER_AUDIO)
    );
    assert_eq!(carrier.clears().len(), 1);
    let text = transcript_has(&w, &id, &format!("BOT: {ANSWER}")).await;
    assert_eq!(human_lines(&text).len(), 1, "only the sentence: {text}");
    assert_eq!(w.openai.received().len(), 1, "the fragment was not answered");
}

macro_rules! with_speech {
    ($($name:ident: |$w:ident, $flite:ident| $body:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(($w, $flite)) = local_world(|_| {}).await else { return };
                let _ = &$flite;
                $body.await;
            }
        )*
    };
}

with_speech! {
    noise_while_idle_is_never_answered_on_twilio: |w, flite| noise_while_idle_is_never_answered(w, Line::Twilio);
    noise_while_idle_is_never_answered_on_vonage: |w, flite| noise_while_idle_is_never_answered(w, Line::Vonage);
    a_cough_during_the_answer_at_low_does_not_stop_the_bot_on_twilio: |w, flite|
        a_cough_during_the_answer_does_not_stop_the_bot(w, Line::Twilio, &flite, "low");
    a_cough_during_the_answer_at_high_does_not_stop_the_bot_on_twilio: |w, flite|
        a_cough_during_the_answer_does_not_stop_the_bot(w, Line::Twilio, &flite, "high");
    a_cough_during_the_answer_at_low_does_not_stop_the_bot_on_vonage: |w, flite|
        a_cough_during_the_answer_does_not_stop_the_bot(w, Line::Vonage, &flite, "low");
    a_cough_during_the_answer_at_high_does_not_stop_the_bot_on_vonage: |w, flite|
        a_cough_during_the_answer_does_not_stop_the_bot(w, Line::Vonage, &flite, "high");
    a_backchannel_at_low_does_not_stop_the_bot_on_twilio: |w, flite| a_backchannel_at_low_does_not_stop_the_bot(w, Line::Twilio, &flite);
    a_backchannel_at_low_does_not_stop_the_bot_on_vonage: |w, flite| a_backchannel_at_low_does_not_stop_the_bot(w, Line::Vonage, &flite);
    a_word_cut_off_holds_the_bot_at_high_which_goes_on_when_no_words_follow_on_twilio: |w, flite|
        a_word_cut_off_holds_the_bot_at_high_which_goes_on_when_no_words_follow(w, Line::Twilio, &flite);
    a_word_cut_off_holds_the_bot_at_high_which_goes_on_when_no_words_follow_on_vonage: |w, flite|
        a_word_cut_off_holds_the_bot_at_high_which_goes_on_when_no_words_follow(w, Line::Vonage, &flite);
}

/// `VAD=energy` and `END_OF_TURN_MODEL=off` (as `bench/run turns` runs the server): loudness, which
/// takes no burst of 300 ms for speech, and the silence rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_loudness_and_the_silence_rule_noise_is_still_never_answered() {
    let Some((w, _)) = local_world(|c| {
        c.vad = Vad::Energy;
        c.end_of_turn_model = Switch::Off;
    })
    .await
    else {
        return;
    };
    let (_, ready) = w.app.get("/ready").await;
    assert_eq!(ready["speech"]["voice_activity"]["detector"], "energy", "{ready}");
    assert_eq!(ready["speech"]["end_of_turn"]["active"], false, "{ready}");
    noise_while_idle_is_never_answered(w, Line::Twilio).await;
}

/// Broken turn-taking models (truncated files): the server starts, says why, and calls hear by
/// loudness and end turns by the silence rule — a sentence is still heard and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_turn_taking_models_fall_back_to_loudness_and_the_silence_rule() {
    let Some((dir, _)) = installed() else { return };
    let broken = std::env::temp_dir().join(format!("broken-turn-models-{}", std::process::id()));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let target = broken.join(entry.file_name());
        std::fs::create_dir_all(&broken).unwrap();
        if !target.exists() {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
    for model in [vad::silero::MODEL, end_of_turn::MODEL] {
        let folder = broken.join(Path::new(model).parent().unwrap());
        std::fs::remove_file(&folder).ok();
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(broken.join(model), b"not an onnx model").unwrap();
    }
    let Some((w, flite)) = local_world(|c| c.speech_dir = Some(broken.clone())).await else { return };
    let (_, ready) = w.app.get("/ready").await;
    let speech = &ready["speech"];
    let line = Line::Twilio;
    let (id, carrier) = greeted(&w, line, "low").await;
    let (_, ready) = w.app.get("/ready").await;
    assert_eq!(ready["speech"]["voice_activity"]["detector"], "energy", "{ready} (at start: {speech})");
    assert_eq!(ready["speech"]["end_of_turn"]["rule"], "silence", "{ready}");
    bot_answering(&w, &carrier, line, &flite, Duration::from_millis(200)).await;
    let text = transcript_has(&w, &id, &format!("BOT: {ANSWER}")).await;
    assert_eq!(human_lines(&text).len(), 1, "{text}");
    std::fs::remove_dir_all(&broken).ok();
}

/// With Deepgram hearing the call and the neural detector installed, the caller's voice stopping
/// asks Deepgram for its final words at once (`Finalize`), before its own endpointing. (Without
/// the neural detector a call on Deepgram runs no detector at all: Deepgram's own endpointing and
/// word timings serve, and loudness would only cost CPU and hold turns on a loud line.)
async fn deepgram_is_asked_to_finalise_when_the_caller_stops(line: Line) {
    let Some((dir, flite)) = installed() else { return };
    let Some(w) = world_with(Backend::Sqlite, |c| c.speech_dir = Some(dir)).await else { return };
    let (_, carrier) = greeted(&w, line, "low").await;
    w.deepgram.wait_for_connections(1).await;
    assert_eq!(w.deepgram.connections()[0].finalizes, 0, "nobody spoke yet");
    play(&carrier, line, &said(&flite, line, "I would like a table for two tonight.").await).await;
    let finalised =
        silence_until(&carrier, line, Duration::from_secs(5), |_| w.deepgram.connections()[0].finalizes >= 1).await;
    assert!(finalised, "Finalize was sent when the voice stopped");
    assert_eq!(w.deepgram.connections()[0].finalizes, 1, "once per stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_is_asked_to_finalise_when_the_caller_stops_on_twilio() {
    deepgram_is_asked_to_finalise_when_the_caller_stops(Line::Twilio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepgram_is_asked_to_finalise_when_the_caller_stops_on_vonage() {
    deepgram_is_asked_to_finalise_when_the_caller_stops(Line::Vonage).await;
}
