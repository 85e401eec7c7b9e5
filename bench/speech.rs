//! The offline benchmark: `bench/run speech [--levels 8,16,24,32,40] [--seconds 60]`.
//!
//! Concurrent sandbox calls fully on this machine: no cloud provider at all, the local recogniser
//! (Moonshine, `SPEECH_DIR`, installed by `scripts/install-speech`) hears the people, the
//! scripted model answers, the local voice (flite) speaks. Each level runs a fresh server process
//! (sandbox carrier, real time, SQLite in a temporary folder) and keeps N calls talking for the
//! window: each call is the sandbox's default person (hears the greeting, says a sentence, hears
//! the answer, says goodbye, hears that and hangs up: about 15 s, a third of it the person's
//! speech), and a call that ends is replaced at once. The people do not transcribe the bot here
//! (`SANDBOX_LISTENS=false`), so all recognition is the server's.
//!
//! Measured per level, from the server's own metrics and /proc:
//! - recognition latency per utterance: endpoint → final words (queueing for a worker included),
//!   the share within 400 ms and the p95 (interpolated in the 0.25/0.4/0.5 s histogram buckets);
//! - under-runs: times the bot's audio ran dry at the person in the middle of its speech;
//! - CPU per call: the server's CPU time (flite's subprocesses included) over the window ÷ calls;
//! - memory: the server's RSS with the models loaded (shared, counted once) and its peak growth
//!   per call.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{call_api, rss_mb};

const TARGET_CALLS: usize = 8;
const TARGET_P95_MS: f64 = 400.0;

struct Server {
    child: std::process::Child,
    base: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn binary() -> String {
    std::env::var("VOCODE_SERVER_BIN").unwrap_or_else(|_| {
        if std::path::Path::new("target/release/vocode-server").exists() {
            "target/release/vocode-server".into()
        } else {
            "target/debug/vocode-server".into()
        }
    })
}

fn start(key: &str, speech_dir: &str) -> Server {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("vocode-speech-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", format!("sqlite://{}/bench.db", dir.display()))
        .env("SECRETS_KEY", "00".repeat(31) + "01")
        .env("VOCODE_API_KEY", key)
        .env("CARRIER_MODE", "sandbox")
        .env("SANDBOX_TIME_SCALE", "1")
        .env("SANDBOX_LISTENS", "false")
        .env("SPEECH_DIR", speech_dir)
        .env_remove("DEEPGRAM_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("VOCODE_VOICE")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the vocode-server binary (cargo build)");
    let stdout = child.stdout.take().unwrap();
    let base = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("vocode-server listening on ").map(str::to_owned))
        .expect("the server starts");
    Server { child, base, _dir: TempDir(dir) }
}

/// Waits for the server's local recogniser to load (in the background at start-up); returns what
/// `/ready` then says.
pub(super) async fn local_speech_loaded(client: &reqwest::Client, base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready: Value = client.get(format!("{base}/ready")).send().await.unwrap().json().await.unwrap_or_default();
        if ready["speech"]["local_speech_to_text"]["loaded"] == true {
            return ready;
        }
        assert!(Instant::now() < deadline, "the local speech did not load: {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server's CPU time so far (its own and its finished children's: flite), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14–17 of stat, 12–15 after the name.
    let ticks: f64 = (11..15).filter_map(|i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// Histogram buckets of a metric with a label, cumulative, by upper bound.
fn buckets(metrics: &str, name: &str, label: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `p` quantile of a cumulative histogram, interpolated within its bucket, in ms.
fn quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    if total == 0.0 {
        return f64::NAN;
    }
    let want = total * p;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= want {
            if le.is_infinite() {
                return previous.0 * 1000.0;
            }
            let share = if count > previous.1 { (want - previous.1) / (count - previous.1) } else { 1.0 };
            return (previous.0 + (le - previous.0) * share) * 1000.0;
        }
        previous = (le, count);
    }
    f64::NAN
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

struct Level {
    calls: usize,
    finals: f64,
    within_400: f64,
    p50_ms: f64,
    p95_ms: f64,
    underruns: f64,
    cpu_per_call: f64,
    models_mb: f64,
    mb_per_call: f64,
    completed: usize,
    heard_right: usize,
}

async fn run_level(calls: usize, window: Duration, speech_dir: &str) -> Level {
    let key = format!("vk_bench_{}", uuid::Uuid::new_v4().simple());
    let server = start(&key, speech_dir);
    let pid = server.child.id();
    let client = reqwest::Client::new();
    local_speech_loaded(&client, &server.base).await;
    let models_mb = rss_mb(pid);
    let number = call_api(
        &client,
        format!("{}/v1/numbers/buy", server.base),
        &key,
        json!({"telephony_provider": "twilio", "area_code": "415"}),
    )
    .await;
    let from = number["number"].as_str().unwrap().to_owned();
    let agent = json!({"prompt": {"content": "Book tables."}, "initial_message": "Hello, this is the restaurant.",
                       "voice": {"type": "voice_vocode", "voice_id": "joe"}});
    let create = |i: usize| {
        let (client, base, key, from, agent) =
            (client.clone(), server.base.clone(), key.clone(), from.clone(), agent.clone());
        async move {
            // Spread the calls' starts, so that they do not all talk at once.
            tokio::time::sleep(Duration::from_millis(1_500 * i as u64 % 15_000)).await;
            let call = call_api(
                &client,
                format!("{base}/v1/calls/create"),
                &key,
                json!({"from_number": from, "to_number": "14155550199", "agent": agent}),
            )
            .await;
            call["id"].as_str().unwrap().to_owned()
        }
    };
    let started = Instant::now();
    let cpu_before = cpu_seconds(pid);
    let mut peak = models_mb;
    let mut in_flight: HashMap<String, ()> = HashMap::new();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..calls {
        pending.push(tokio::spawn(create(i)));
    }
    let (mut completed, mut heard_right) = (0, 0);
    while started.elapsed() < window {
        use futures_util::StreamExt;
        while let Ok(Some(Ok(id))) = tokio::time::timeout(Duration::from_millis(10), pending.next()).await {
            in_flight.insert(id, ());
        }
        let ids: Vec<String> = in_flight.keys().cloned().collect();
        for id in ids {
            let res = client.get(format!("{}/v1/calls?id={id}", server.base)).bearer_auth(&key).send().await.unwrap();
            let call: Value = res.json().await.unwrap_or_default();
            if matches!(call["status"].as_str(), Some("ended" | "error")) {
                in_flight.remove(&id);
                completed += 1;
                let transcript = call["transcript"].as_str().unwrap_or_default();
                if transcript.contains("HUMAN: Yes, this is") && transcript.to_lowercase().contains("thank you") {
                    heard_right += 1;
                }
                pending.push(tokio::spawn(create(0)));
            }
        }
        peak = peak.max(rss_mb(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let metrics = client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let finals = buckets(&metrics, "vocode_stt_local_seconds", "kind=\"final\"");
    let total = finals.last().map(|b| b.1).unwrap_or(0.0);
    let within = finals.iter().find(|b| (b.0 - 0.4).abs() < 1e-9).map(|b| b.1).unwrap_or(0.0);
    Level {
        calls,
        finals: total,
        within_400: if total > 0.0 { within / total } else { f64::NAN },
        p50_ms: quantile(&finals, 0.5),
        p95_ms: quantile(&finals, 0.95),
        underruns: counter(&metrics, "vocode_sandbox_underruns_total"),
        cpu_per_call: cpu / elapsed / calls as f64 * 100.0,
        models_mb,
        mb_per_call: (peak - models_mb).max(0.0) / calls as f64,
        completed,
        heard_right,
    }
}

pub async fn run() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let levels: Vec<usize> = option("--levels")
        .unwrap_or_else(|| "8,16,24,32,40".into())
        .split(',')
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(option("--seconds").and_then(|s| s.parse().ok()).unwrap_or(60));
    let speech_dir = std::env::var("SPEECH_DIR").unwrap_or_else(|_| "data/speech".into());
    let mut rows = Vec::new();
    for &calls in &levels {
        eprintln!("offline bench: {calls} concurrent calls for {window:?}");
        let level = run_level(calls, window, &speech_dir).await;
        eprintln!(
            "  {} finals, {:.0}% within 400 ms, p95 {:.0} ms, {} under-runs, {:.1}% of a core per call",
            level.finals,
            level.within_400 * 100.0,
            level.p95_ms,
            level.underruns,
            level.cpu_per_call
        );
        let missed = level.p95_ms > TARGET_P95_MS * 1.5 || level.underruns > 0.0 && level.p95_ms > TARGET_P95_MS;
        rows.push(level);
        if missed {
            break;
        }
    }
    let best = rows.iter().filter(|l| l.p95_ms <= TARGET_P95_MS && l.underruns == 0.0).map(|l| l.calls).max();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut table = format!(
        "\n### {} — offline speech, {cores} cores, `{}` build\n\n\
         | concurrent calls | calls ended (people heard right) | finals | within 400 ms | recognition p50 / p95 | under-runs | CPU per call | models (RSS, once) | memory per call |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if binary().contains("release") { "release" } else { "debug" },
    );
    for l in &rows {
        table.push_str(&format!(
            "| {} | {} ({}) | {} | {:.0}% | {:.0} / {:.0} ms | {} | {:.1}% of a core | {:.0} MB | {:.1} MB |\n",
            l.calls,
            l.completed,
            l.heard_right,
            l.finals,
            l.within_400 * 100.0,
            l.p50_ms,
            l.p95_ms,
            l.underruns,
            l.cpu_per_call,
            l.models_mb,
            l.mb_per_call
        ));
    }
    table.push_str(&format!(
        "\nLargest level with recognition p95 ≤ {TARGET_P95_MS:.0} ms and no under-runs: **{}** (target: ≥ {TARGET_CALLS}).\n",
        best.map(|b| b.to_string()).unwrap_or_else(|| "none".into())
    ));
    println!("{table}");
    let mut results = std::fs::read_to_string("bench/RESULTS.md").unwrap_or_default();
    results.push_str(&table);
    std::fs::write("bench/RESULTS.md", results).unwrap();
}
