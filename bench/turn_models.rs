//! The turn-taking models' costs: `bench/run turn-models [--seconds 5]`.
//!
//! In this process, with the models `scripts/install-speech` installed in `SPEECH_DIR`:
//! - voice activity: N call streams (1, 50, 100, 300), each fed a 20 ms frame of speech every
//!   round, all N at once (as N calls' frames arrive together): the process's CPU time per frame
//!   per call (the batching worker included), the round's wall time (how long a call's frame
//!   waits for its answer), and the windows per batch; for Twilio's 8 kHz μ-law and Vonage's
//!   16 kHz PCM, with Silero and with the loudness fallback;
//! - memory: resident growth with the model loaded, and per call stream (10,000 detectors);
//! - end of turn: one inference (features + model) on 2 s and on 8 s of speech, one worker, and
//!   the log-mel features alone; resident growth with the model loaded.
//!
//! Prints the tables and appends them, dated, to bench/RESULTS.md. Measurements: nothing fails.

use std::path::PathBuf;
use std::time::Instant;

use vocode_server::conversation::audio::Encoding;
use vocode_server::conversation::end_of_turn::{self, EndOfTurn};
use vocode_server::conversation::local::LocalSpeech;
use vocode_server::conversation::vad::detector::{DetectorSettings, SpeechDetector, VoiceActivity};

use super::media::cpu_seconds;
use super::rss_mb;

fn speech_dir() -> PathBuf {
    std::env::var_os("SPEECH_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data/speech"))
}

fn rss() -> f64 {
    rss_mb(std::process::id())
}

/// Voiced-sounding audio in `encoding`: a warbling, pulsing tone (the models' cost does not
/// depend on what they hear).
fn audio(encoding: Encoding, seconds: usize) -> Vec<u8> {
    let samples: Vec<i16> = (0..encoding.sample_rate() as usize * seconds)
        .map(|i| {
            let t = i as f32 / encoding.sample_rate() as f32;
            let pitch = 140.0 + 30.0 * (t * 3.0).sin();
            ((2.0 * std::f32::consts::PI * pitch * t).sin() * 6_000.0 * (0.6 + 0.4 * (t * 5.0).sin())) as i16
        })
        .collect();
    encoding.encode(&samples)
}

struct Level {
    line: &'static str,
    detector: &'static str,
    calls: usize,
    cpu_us_per_frame: f64,
    round_ms_p50: f64,
    round_ms_max: f64,
}

async fn voice_activity_level(activity: &VoiceActivity, encoding: Encoding, calls: usize, seconds: f64) -> Level {
    let mut detectors: Vec<SpeechDetector> =
        (0..calls).map(|_| activity.detector(encoding, DetectorSettings::default())).collect();
    let line = audio(encoding, 10);
    let frame = encoding.bytes_for_ms(20);
    let frames: Vec<&[u8]> = line.chunks_exact(frame).collect();
    let started = Instant::now();
    let cpu = cpu_seconds("self");
    let mut rounds = Vec::new();
    let mut heard = 0usize;
    while started.elapsed().as_secs_f64() < seconds {
        let chunk = frames[rounds.len() % frames.len()];
        let round = Instant::now();
        let pushes = detectors.iter_mut().map(|d| d.push(chunk));
        futures_util::future::join_all(pushes).await;
        rounds.push(round.elapsed().as_secs_f64() * 1000.0);
        heard += calls;
    }
    let cpu = cpu_seconds("self") - cpu;
    rounds.sort_by(f64::total_cmp);
    Level {
        line: if encoding == Encoding::Mulaw8k { "twilio 8 kHz" } else { "vonage 16 kHz" },
        detector: activity.name(),
        calls,
        cpu_us_per_frame: cpu * 1e6 / heard as f64,
        round_ms_p50: rounds[rounds.len() / 2],
        round_ms_max: *rounds.last().unwrap_or(&0.0),
    }
}

pub async fn run() {
    let seconds: f64 =
        std::env::args().skip_while(|a| a != "--seconds").nth(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let dir = speech_dir();
    let speech = LocalSpeech::discover(Some(&dir), 1);
    let before_model = rss();
    let silero = speech.voice_activity().await;
    let silero_mb = rss() - before_model;
    if silero.name() != "silero" {
        eprintln!("Silero VAD is not installed in {}: run scripts/install-speech", dir.display());
    }
    let mut out = String::new();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    out += &format!(
        "\n### Turn-taking models, {date} — {} cores, {} build, load average {} (`bench/run turn-models`, {seconds} s per level)\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        load.split_whitespace().next().unwrap_or("?"),
    );
    out += "Voice activity: every call stream gets a 20 ms frame per round, all at once.\n\n";
    out += "| line | detector | calls | CPU per frame per call | share of a core per call | round p50 | round max |\n";
    out += "|---|---|---:|---:|---:|---:|---:|\n";
    for activity in [silero.clone(), VoiceActivity::Energy] {
        for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
            for calls in [1, 50, 100, 300] {
                let level = voice_activity_level(&activity, encoding, calls, seconds).await;
                let row = format!(
                    "| {} | {} | {} | {:.1} µs | {:.2}% | {:.2} ms | {:.2} ms |\n",
                    level.line,
                    level.detector,
                    level.calls,
                    level.cpu_us_per_frame,
                    level.cpu_us_per_frame / 20_000.0 * 100.0,
                    level.round_ms_p50,
                    level.round_ms_max
                );
                eprint!("{row}");
                out += &row;
            }
        }
    }

    // Memory per stream: 10,000 detectors that have each heard a frame.
    let mut memory = String::new();
    for activity in [silero.clone(), VoiceActivity::Energy] {
        for encoding in [Encoding::Mulaw8k, Encoding::Linear16k] {
            let frame = audio(encoding, 1);
            let frame = &frame[..encoding.bytes_for_ms(20)];
            let before = rss();
            let mut detectors: Vec<SpeechDetector> =
                (0..10_000).map(|_| activity.detector(encoding, DetectorSettings::default())).collect();
            for detector in &mut detectors {
                detector.push(frame).await;
            }
            let per = (rss() - before) * 1024.0 / 10_000.0;
            memory += &format!("{} on {encoding:?}: {per:.1} KiB per call stream; ", activity.name());
            drop(detectors);
        }
    }
    out += &format!(
        "\nMemory: Silero's model and ONNX Runtime loaded: +{silero_mb:.0} MB resident, once per process; {memory}\n"
    );

    // End of turn.
    let before = rss();
    match EndOfTurn::shared(&dir, 1) {
        Ok(model) => {
            let loaded_mb = rss() - before;
            let wide = Encoding::Linear16k;
            let mut rows = String::new();
            for seconds in [2usize, 8] {
                let samples = wide.decode(&audio(wide, seconds));
                model.probability(&samples).await.expect("the model answers");
                let mut times = Vec::new();
                let cpu = cpu_seconds("self");
                for _ in 0..10 {
                    let started = Instant::now();
                    model.probability(&samples).await.expect("the model answers");
                    times.push(started.elapsed());
                }
                let cpu = (cpu_seconds("self") - cpu) / 10.0;
                times.sort();
                rows += &format!(
                    "| {seconds} s of speech | {:.0} ms | {:.0} ms | {:.0} ms |\n",
                    times[5].as_secs_f64() * 1000.0,
                    times[9].as_secs_f64() * 1000.0,
                    cpu * 1000.0
                );
            }
            let samples: Vec<f32> = vec![0.1; end_of_turn::WINDOW];
            let started = Instant::now();
            for _ in 0..10 {
                std::hint::black_box(end_of_turn::log_mel(&samples));
            }
            let features = started.elapsed() / 10;
            out += "\nEnd of turn (Smart Turn v3.2), one worker, 10 inferences each:\n\n";
            out += "| audio | wall p50 | wall max | CPU per inference |\n|---|---:|---:|---:|\n";
            out += &rows;
            out += &format!(
                "\nOf which the log-mel features: {:.1} ms. Model loaded: +{loaded_mb:.0} MB resident per worker.\n",
                features.as_secs_f64() * 1000.0
            );
        }
        Err(e) => out += &format!("\nEnd of turn: not measured ({e}).\n"),
    }
    println!("{out}");
    let results = std::path::Path::new("bench/RESULTS.md");
    let mut text = std::fs::read_to_string(results).unwrap_or_default();
    text.push_str(&out);
    std::fs::write(results, text).expect("bench/RESULTS.md is writable");
}
