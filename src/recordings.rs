//! The recordings this server makes of its calls (`RECORD_ON_SERVER`), kept where every replica
//! can serve them: in S3-compatible object storage (`RECORDINGS_URL`), or in a folder
//! (`RECORDINGS_DIR`; shared by the replicas, or on one machine for one process).
//!
//! A call's audio may pass through several streams — a deploy, a crash or a warm transfer's
//! conference leg moves it to another process, a carrier reconnects — and each stream records
//! what it carried as a *segment*, written when the stream ends, with the wall-clock time of its
//! first sound. The database numbers each call's segments in the order they are written and
//! keeps their start times (`recording_segments`); segment 1 is stored as `{call_id}.wav`, as a
//! call's recording always was, and segment n as `{call_id}.{n}.wav` beside it.
//!
//! The recording is joined when it is served, from the segments written by then: one segment
//! (nearly every call) is served as it is stored, streamed from the bucket; several are laid on
//! one timeline in the order they began, with silence where nothing was recording and, where two
//! overlap, the later one — the newer stream is the call's, as the session layer holds (the
//! old stream's last moments are the same call heard twice, and mixing them would double the
//! person's voice with an echo). Joining when served needs no process to know that it finishes
//! the call last (none can: the carrier may report the call over before or after the last stream
//! ends), cannot lose a segment written at the same moment as another, and costs nothing on the
//! calls that never moved; once the call's last stream has ended, every request gets the whole
//! call.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use uuid::Uuid;

use crate::config::{RecordingsAt, TelephonyArgs};
use crate::conversation::recording::{samples_of_wav, wav, Recording, RATE};
use crate::store::{self, Store};

/// The `recording_url` of a call this server recorded: the recording is found by the call's id
/// (the URL names no place, so a stored value can never point elsewhere).
pub const ON_SERVER: &str = "server:recording";

/// The longest recording kept, of a segment or of a whole call (8 kHz, 16-bit: 57.6 MB).
pub const LIMIT: Duration = Duration::from_secs(3600);

/// How long one request to the bucket may take: an hour's segment is 57.6 MB.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the bucket has to answer at start-up.
const CHECK_WITHIN: Duration = Duration::from_secs(15);

/// The recordings made on this server, wherever they are kept. Cloning is cheap.
#[derive(Clone)]
pub struct Recordings {
    objects: Objects,
    store: Store,
    at: RecordingsAt,
}

#[derive(Clone)]
enum Objects {
    Dir(PathBuf),
    Bucket { bucket: Arc<dyn ObjectStore>, prefix: Path },
}

/// A call's recording, as served (a WAV file).
pub enum Served {
    /// Read whole: from a folder, or joined from segments.
    Whole(Bytes),
    /// Streamed from the bucket as it is read.
    Streamed { size: u64, stream: BoxStream<'static, std::io::Result<Bytes>> },
}

impl Recordings {
    /// Where the recordings go, when this server records (`None` when it does not). A bucket is
    /// listed once, so that a wrong bucket, endpoint or credential stops the server at start-up
    /// instead of losing the first call's recording.
    pub async fn open(args: &TelephonyArgs, database_url: &str, store: Store) -> anyhow::Result<Option<Recordings>> {
        let at = args.recordings_at(database_url).map_err(|e| anyhow!(e))?;
        let Some(at) = at else {
            if args.recordings_url.is_some() {
                tracing::warn!("RECORDINGS_URL is set, but RECORD_ON_SERVER is not: this server records nothing there");
            }
            return Ok(None);
        };
        let objects = match &at {
            RecordingsAt::Dir(dir) => Objects::Dir(dir.clone()),
            RecordingsAt::Bucket { bucket, prefix } => {
                let cannot = || format!("RECORDINGS_URL {at} cannot be used");
                let builder = s3(args, bucket).with_context(cannot)?;
                let prefix = Path::from(prefix.as_str());
                // Checked without retries, so that the cause reaches the operator at once.
                let check = builder.clone().with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() });
                check_bucket(&check.build().with_context(cannot)?, &prefix).await.with_context(cannot)?;
                Objects::Bucket { bucket: Arc::new(builder.build().with_context(cannot)?), prefix }
            }
        };
        tracing::info!(recordings = %at, "recordings made on this server are kept here");
        Ok(Some(Recordings { objects, store, at }))
    }

    /// Writes a segment of the call's recording: `recording`, whose first sound was heard at
    /// `started_at`. Says where it went.
    pub async fn put(&self, call_id: Uuid, started_at: DateTime<Utc>, recording: Recording) -> anyhow::Result<String> {
        let wav = tokio::task::spawn_blocking(move || recording.wav()).await.context("encoding the recording")?;
        let segment = self.add_segment(call_id, started_at).await?;
        let name = name(call_id, segment);
        match &self.objects {
            Objects::Dir(dir) => {
                let (dir, file) = (dir.clone(), name.clone());
                tokio::task::spawn_blocking(move || write(&dir, &file, &wav))
                    .await
                    .context("writing the recording")?
                    .with_context(|| format!("writing {}", self.place_of(&name)))?;
            }
            Objects::Bucket { bucket, prefix } => {
                bucket
                    .put(&prefix.child(name.as_str()), Bytes::from(wav).into())
                    .await
                    .with_context(|| format!("writing {}", self.place_of(&name)))?;
            }
        }
        Ok(self.place_of(&name))
    }

    /// The call's recording, joined from the segments written so far; `None` when none is kept.
    pub async fn get(&self, call_id: Uuid) -> anyhow::Result<Option<Served>> {
        let segments = async {
            let mut handle = self.store.read().await?;
            store::recordings::segments(handle.conn(), call_id).await
        }
        .await
        .with_context(|| format!("reading the segments of call {call_id}'s recording"))?;
        if segments.len() <= 1 {
            // One segment, or a recording made before segments were numbered: as it is stored.
            let segment = segments.first().map_or(1, |s| s.segment);
            return self.read(&name(call_id, segment), true).await;
        }
        // A segment that began past the limit would be cut from the recording whole: not read.
        let first = segments.iter().map(|s| s.started_at).min().unwrap_or_default();
        let past_the_limit = first + LIMIT;
        let mut found = Vec::new();
        for s in segments.iter().filter(|s| s.started_at < past_the_limit) {
            if let Some(Served::Whole(wav)) = self.read(&name(call_id, s.segment), false).await? {
                found.push((s.segment, s.started_at, wav));
            }
        }
        if found.len() <= 1 {
            return Ok(found.pop().map(|(_, _, wav)| Served::Whole(wav)));
        }
        let joined = tokio::task::spawn_blocking(move || {
            let mut parts = Vec::new();
            for (segment, started_at, wav) in found {
                let samples = samples_of_wav(&wav, RATE).ok_or_else(|| {
                    anyhow!("segment {segment} of call {call_id}'s recording is not a WAV file of ours")
                })?;
                parts.push((started_at, samples));
            }
            anyhow::Ok(wav_bytes(&join(parts, samples_in(LIMIT))))
        })
        .await
        .context("joining a recording")??;
        Ok(Some(Served::Whole(joined)))
    }

    /// A stored segment, streamed from the bucket when `stream`; `None` when it is not there.
    async fn read(&self, name: &str, stream: bool) -> anyhow::Result<Option<Served>> {
        let reading = || format!("reading {}", self.place_of(name));
        match &self.objects {
            Objects::Dir(dir) => match tokio::fs::read(dir.join(name)).await {
                Ok(wav) => Ok(Some(Served::Whole(wav.into()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(reading),
            },
            Objects::Bucket { bucket, prefix } => {
                let got = match bucket.get(&prefix.child(name)).await {
                    Ok(got) => got,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e).with_context(reading),
                };
                if !stream {
                    return Ok(Some(Served::Whole(got.bytes().await.with_context(reading)?)));
                }
                let size = got.meta.size;
                let stream = got.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed();
                Ok(Some(Served::Streamed { size, stream }))
            }
        }
    }

    /// Numbers the call's next segment; two processes numbering at once on Postgres collide, and
    /// the one that lost numbers again.
    async fn add_segment(&self, call_id: Uuid, started_at: DateTime<Utc>) -> anyhow::Result<i64> {
        let numbering = || format!("numbering a segment of call {call_id}'s recording");
        for _ in 0..5 {
            let mut tx = self.store.begin().await.with_context(numbering)?;
            match store::recordings::add_segment(tx.conn(), call_id, started_at).await {
                Ok(segment) => {
                    tx.commit().await.with_context(numbering)?;
                    return Ok(segment);
                }
                Err(e) if store::is_unique_violation(&e) => continue,
                Err(e) => return Err(e).with_context(numbering),
            }
        }
        bail!("{}: too many segments written at once", numbering())
    }

    fn place_of(&self, name: &str) -> String {
        match &self.at {
            RecordingsAt::Dir(dir) => dir.join(name).display().to_string(),
            RecordingsAt::Bucket { .. } => format!("{}/{name}", self.at),
        }
    }
}

/// The bucket of `RECORDINGS_URL`, as the `AWS_*` settings say. The other standard AWS
/// variables (a session token, a web identity, container credentials) are read as the AWS SDKs
/// read them; the settings given here override them.
fn s3(args: &TelephonyArgs, bucket: &str) -> anyhow::Result<AmazonS3Builder> {
    let client = ClientOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(Duration::from_secs(5));
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(client)
        .with_allow_http(args.aws_allow_http)
        .with_retry(RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(60), ..RetryConfig::default() });
    if let Some(endpoint) = &args.aws_endpoint_url {
        let url = url::Url::parse(endpoint).map_err(|e| anyhow!("AWS_ENDPOINT_URL {endpoint:?} is not a URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if args.aws_allow_http => {}
            "http" => bail!("AWS_ENDPOINT_URL {endpoint} is plain http: set AWS_ALLOW_HTTP=true to use it without TLS"),
            _ => bail!("AWS_ENDPOINT_URL {endpoint:?} is not an http(s) URL"),
        }
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &args.aws_region {
        builder = builder.with_region(region);
    }
    match (&args.aws_access_key_id, &args.aws_secret_access_key) {
        (Some(id), Some(secret)) => Ok(builder.with_access_key_id(id).with_secret_access_key(secret)),
        (None, None) => Ok(builder),
        _ => bail!("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: one is set without the other"),
    }
}

/// Lists the first object under `prefix`: the endpoint answers, the bucket exists, and the
/// credentials may read it. What went wrong is said on one line (the service's answer, an XML
/// document, may span several).
async fn check_bucket(bucket: &dyn ObjectStore, prefix: &Path) -> anyhow::Result<()> {
    match tokio::time::timeout(CHECK_WITHIN, bucket.list(Some(prefix)).next()).await {
        Err(_) => bail!("no answer within {} s", CHECK_WITHIN.as_secs()),
        Ok(Some(Err(e))) => bail!("{}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")),
        Ok(_) => Ok(()),
    }
}

/// The name of a call's segment: `{call_id}.wav` for the first (a call's whole recording, when
/// it never moved), `{call_id}.{n}.wav` for the others.
fn name(call_id: Uuid, segment: i64) -> String {
    match segment {
        1 => format!("{call_id}.wav"),
        n => format!("{call_id}.{n}.wav"),
    }
}

/// Writes the file whole, or not at all: a reader never sees half of it.
fn write(dir: &FsPath, name: &str, wav: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!("{name}.partial"));
    std::fs::write(&partial, wav)?;
    std::fs::rename(&partial, dir.join(name))
}

fn samples_in(duration: Duration) -> usize {
    (duration.as_secs_f64() * f64::from(RATE)) as usize
}

fn wav_bytes(samples: &[i16]) -> Bytes {
    wav(samples, RATE).into()
}

/// Segments on one timeline, in the order they began (those that began together in the order
/// they were given): each where it began after the first, silence where none was recording, and
/// where two overlap the later one. At most `limit` samples.
fn join(mut segments: Vec<(DateTime<Utc>, Vec<i16>)>, limit: usize) -> Vec<i16> {
    segments.sort_by_key(|(started_at, _)| *started_at);
    let Some(origin) = segments.first().map(|(started_at, _)| *started_at) else { return Vec::new() };
    let mut joined = Vec::new();
    for (started_at, samples) in &segments {
        let after_ms = u64::try_from((*started_at - origin).num_milliseconds()).unwrap_or(0);
        let position = usize::try_from(after_ms * u64::from(RATE) / 1000).unwrap_or(usize::MAX);
        if position >= limit {
            break;
        }
        let samples = &samples[..samples.len().min(limit - position)];
        let end = position + samples.len();
        if joined.len() < end {
            joined.resize(end, 0);
        }
        joined[position..end].copy_from_slice(samples);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn segments_are_named_by_the_call_the_first_as_the_whole_call() {
        let call_id = Uuid::nil();
        assert_eq!(name(call_id, 1), "00000000-0000-0000-0000-000000000000.wav");
        assert_eq!(name(call_id, 2), "00000000-0000-0000-0000-000000000000.2.wav");
    }

    #[test]
    fn segments_join_in_the_order_they_began_with_silence_between() {
        // Written out of order: the second segment written began first.
        let joined = join(vec![(at(100), vec![2; 4]), (at(0), vec![1; 8])], 10_000);
        // 100 ms is 800 samples at 8 kHz.
        assert_eq!(joined.len(), 804);
        assert_eq!((&joined[..8], joined[8], joined[799]), (&[1; 8][..], 0, 0));
        assert_eq!(&joined[800..], &[2; 4]);
        assert_eq!(join(Vec::new(), 10), Vec::<i16>::new());
        assert_eq!(join(vec![(at(5), vec![3; 2])], 10), vec![3; 2], "one segment is itself");
    }

    #[test]
    fn where_segments_overlap_the_later_one_is_heard() {
        // The old stream's last 10 ms are heard on the new one too.
        let joined = join(vec![(at(0), vec![1; 160]), (at(10), vec![2; 160])], 10_000);
        assert_eq!(joined.len(), 240);
        assert_eq!((&joined[..80], &joined[80..]), (&[1; 80][..], &[2; 160][..]));
        // A later segment shorter than the overlap leaves the rest of the earlier one.
        let joined = join(vec![(at(0), vec![1; 160]), (at(5), vec![2; 10])], 10_000);
        assert_eq!((joined.len(), joined[39], joined[40], joined[49], joined[50]), (160, 1, 2, 2, 1));
        // Begun together: the one written later.
        assert_eq!(join(vec![(at(0), vec![1; 4]), (at(0), vec![2; 4])], 10), vec![2; 4]);
    }

    #[test]
    fn a_joined_recording_keeps_no_more_than_the_limit() {
        let joined = join(vec![(at(0), vec![1; 8]), (at(1), vec![2; 8]), (at(3_600_000), vec![3; 8])], 12);
        assert_eq!(joined, [1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(samples_in(LIMIT), 28_800_000);
    }

    #[test]
    fn a_segment_is_written_whole_under_its_name() {
        let dir = std::env::temp_dir().join(format!("vocode-recordings-{}", Uuid::new_v4()));
        let name = name(Uuid::new_v4(), 1);
        write(&dir, &name, b"RIFF....").unwrap();
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), b"RIFF....");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no partial file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
