//! Every setting of the server: a command-line flag, the environment variable it falls back
//! to, and its default. `README.md` has the same list as a table.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::conversation::settings::{ProviderSettings, DEFAULT_MODEL};

/// The embedded database used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/vocode.db";

#[derive(Debug, Parser)]
#[command(
    name = "vocode-server",
    version,
    about = "A self-hosted, drop-in replacement for Vocode's hosted voice-agent API",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Settings of `serve`, which is also what runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Settings every subcommand uses.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Where the data lives: `sqlite://PATH` (embedded, created on first use) or
    /// `postgres://USER@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// The key that encrypts stored secrets (auth tokens, API keys): 32 bytes, as 64 hex
    /// characters or base64. With SQLite and no key, one is generated once into the data folder;
    /// with Postgres it is required.
    #[arg(long, env = "SECRETS_KEY", global = true, hide_env_values = true)]
    pub secrets_key: Option<String>,
}

// Parsed once at start-up: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate,
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Exit 0 if the server answers `/health` (the container health check).
    Healthcheck {
        /// The health URL; by default, `/health` on the port of LISTEN_ADDR.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (alone, on the last line). A new user name creates the user.
    Create {
        /// The user's name or id; the default user when omitted.
        #[arg(long)]
        user: Option<String>,
    },
    /// List API keys (their public prefixes only).
    List,
    /// Revoke an API key by its id.
    Revoke {
        /// The key's id, as `keys list` shows it.
        key_id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users.
    List,
    /// Print a user's webhook signing secret (alone, on the last line), creating it if needed;
    /// with --rotate, replace it (the old one keeps signing for a day).
    WebhookSecret {
        /// The user's name or id.
        #[arg(long)]
        user: String,
        #[arg(long)]
        rotate: bool,
    },
    /// Set (or clear) a user's monthly limit of call minutes; at the limit, calls are refused.
    SetLimit {
        /// The user's name or id.
        #[arg(long)]
        user: String,
        /// The limit, in minutes.
        #[arg(long, conflicts_with = "clear", required_unless_present = "clear")]
        minutes: Option<u32>,
        /// Remove the limit.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of the API server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Do not apply migrations at start-up.
    #[arg(long, env = "NO_MIGRATE")]
    pub no_migrate: bool,

    /// An API key accepted for the default user. Without it, the first start generates one and
    /// prints it once.
    #[arg(long, env = "VOCODE_API_KEY", hide_env_values = true)]
    pub vocode_api_key: Option<String>,

    /// Accept HS256 JWT bearer tokens signed with this secret; `sub` is the user id.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Accept RS256 JWT bearer tokens verified with this public key (PEM text or a file path).
    #[arg(long, env = "JWT_PUBLIC_KEY_PEM")]
    pub jwt_public_key_pem: Option<String>,

    /// `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub telephony: TelephonyArgs,

    #[command(flatten)]
    pub conversation: ConversationArgs,

    /// Deliver webhooks to loopback, private and link-local addresses too (for tests and local
    /// development; never on a server reachable by users you do not trust).
    #[arg(long, env = "ALLOW_PRIVATE_TARGETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_targets: bool,

    /// How long a webhook receiver may take to answer.
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,

    /// How long a claimed job belongs to its worker; a job whose worker died runs again after this.
    #[arg(long, env = "JOB_LEASE_SECS", default_value_t = 120)]
    pub job_lease_secs: u64,

    /// How long a stopping server waits for requests in flight and running jobs.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// How long a stopping server (SIGTERM) lets its live calls go on before it moves them to
    /// another replica (or, with none alive, ends them: the bot says goodbye and hangs up). It
    /// reports not ready and takes no new conversation meanwhile; 0 moves them at once. Keep the
    /// orchestrator's grace period (Kubernetes' terminationGracePeriodSeconds, compose's
    /// stop_grace_period) above it.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 300)]
    pub drain_secs: u64,

    /// Database connections for the API (Postgres; the background workers have their own).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How many background jobs (carrier requests, webhook deliveries…) this process runs at
    /// once; 0 runs none (another replica does them).
    #[arg(long, env = "WORKERS", default_value_t = 32)]
    pub workers: usize,

    /// Requests per second each API key may make (a token bucket refilled at this rate); off
    /// when unset. `/health`, `/ready`, `/docs`, the console's files (`/console`) and the
    /// carriers' callbacks are not limited.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND")]
    pub rate_limit_per_second: Option<u32>,

    /// How many requests a key may make at once above its rate (the bucket's size); default:
    /// one second's worth.
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// The longest a request may take, body included, before it is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// How long a client has to send a request's headers before its connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
}

/// The providers the agents listen, think and speak with. An agent's own objects come first (its
/// voice's `api_key`, its `openai_account_connection`); these are the server's defaults.
#[derive(Debug, Clone, Args)]
pub struct ConversationArgs {
    /// Deepgram's key: the speech-to-text of every call.
    #[arg(long, env = "DEEPGRAM_API_KEY", hide_env_values = true)]
    pub deepgram_api_key: Option<String>,

    /// Deepgram's live-streaming endpoint (default `wss://api.deepgram.com/v1/listen`).
    #[arg(long, env = "DEEPGRAM_URL")]
    pub deepgram_url: Option<String>,

    /// The key of the OpenAI-compatible model server, when an agent has no
    /// `openai_account_connection`.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,

    /// An OpenAI-compatible chat-completions API (default `https://api.openai.com/v1`; Ollama,
    /// vLLM and llama.cpp's server speak it too, and need no key).
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,

    /// The model an agent uses when it names none (`openai_model_name_override`).
    #[arg(long, env = "OPENAI_MODEL", default_value = DEFAULT_MODEL)]
    pub openai_model: String,

    /// ElevenLabs' key, for `voice_eleven_labs` voices that carry none.
    #[arg(long, env = "ELEVENLABS_API_KEY", hide_env_values = true)]
    pub elevenlabs_api_key: Option<String>,

    /// ElevenLabs' API (default `https://api.elevenlabs.io`).
    #[arg(long, env = "ELEVENLABS_BASE_URL")]
    pub elevenlabs_base_url: Option<String>,

    /// Azure Speech's key, for `voice_azure` voices.
    #[arg(long, env = "AZURE_SPEECH_KEY", hide_env_values = true)]
    pub azure_speech_key: Option<String>,

    /// Azure Speech's region (e.g. `eastus`).
    #[arg(long, env = "AZURE_SPEECH_REGION")]
    pub azure_speech_region: Option<String>,

    /// Azure Speech's endpoint, instead of the region's.
    #[arg(long, env = "AZURE_SPEECH_BASE_URL")]
    pub azure_speech_base_url: Option<String>,

    /// Rime's key, for `voice_rime` voices.
    #[arg(long, env = "RIME_API_KEY", hide_env_values = true)]
    pub rime_api_key: Option<String>,

    /// Rime's API (default `https://users.rime.ai`).
    #[arg(long, env = "RIME_BASE_URL")]
    pub rime_base_url: Option<String>,

    /// Play.ht's key, for `voice_play_ht` voices that carry no `api_key`.
    #[arg(long, env = "PLAYHT_API_KEY", hide_env_values = true)]
    pub playht_api_key: Option<String>,

    /// Play.ht's user id, for `voice_play_ht` voices that carry no `api_user_id`.
    #[arg(long, env = "PLAYHT_USER_ID")]
    pub playht_user_id: Option<String>,

    /// Play.ht's API (default `https://api.play.ht`).
    #[arg(long, env = "PLAYHT_BASE_URL")]
    pub playht_base_url: Option<String>,

    /// Where agents' Pinecone indexes are queried, instead of each index's own
    /// `https://INDEX.svc.ENVIRONMENT.pinecone.io` (a proxy, a test double).
    #[arg(long, env = "PINECONE_BASE_URL")]
    pub pinecone_base_url: Option<String>,

    /// The voice `voice_vocode` voices speak with: `elevenlabs:VOICE_ID` or `azure:VOICE_NAME`.
    #[arg(long, env = "VOCODE_VOICE")]
    pub vocode_voice: Option<String>,

    /// Where `scripts/install-speech` put the local speech (the Moonshine recogniser and ONNX
    /// Runtime). Used when no `DEEPGRAM_API_KEY` is set; without the files the server runs as
    /// before.
    #[arg(long, env = "SPEECH_DIR", default_value = "data/speech")]
    pub speech_dir: Option<PathBuf>,

    /// How many local transcriptions may run at once (each holds its own copy of the model, about
    /// 130 MB: 275 MB for two, measured). Default: the machine's cores.
    #[arg(long, env = "LOCAL_STT_WORKERS")]
    pub local_stt_workers: Option<usize>,

    /// Whether a call whose agent's cloud voice cannot be used on this server (no key configured)
    /// speaks with the local flite voice instead of being refused.
    #[arg(long, env = "LOCAL_VOICE_FALLBACK", default_value_t = false, action = clap::ArgAction::Set)]
    pub local_voice_fallback: bool,

    /// How calls tell the caller's voice from the rest: `silero` (the neural detector, when
    /// installed in `SPEECH_DIR`; loudness otherwise) or `energy` (loudness).
    #[arg(long = "vad", env = "VAD", value_enum, default_value = "silero")]
    pub vad: Vad,

    /// Whether the end-of-turn model (Smart Turn, when installed in `SPEECH_DIR`) judges each of
    /// the caller's pauses: `on`, or `off` for the silence rule alone.
    #[arg(long, env = "END_OF_TURN_MODEL", value_enum, default_value = "on")]
    pub end_of_turn_model: Switch,
}

/// The voice-activity detector calls use (`VAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Vad {
    Energy,
    Silero,
}

/// A feature turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Where calls go: the built-in sandbox carrier, or Twilio and Vonage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CarrierMode {
    /// The sandbox, unless carrier credentials or API base URLs are configured.
    Auto,
    /// The built-in sandbox carrier: no call leaves this server.
    Sandbox,
    /// The real carriers (or whatever the API base URLs point at).
    Live,
}

/// Carrier settings.
#[derive(Debug, Clone, Args)]
pub struct TelephonyArgs {
    /// The URL at which carriers reach this server (callbacks, media streams). Default:
    /// `http://` and the listen address.
    #[arg(long, env = "PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,

    #[arg(long, env = "CARRIER_MODE", value_enum, default_value = "auto")]
    pub carrier_mode: CarrierMode,

    /// The server's own Twilio account, for numbers bought without an account connection.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,

    #[arg(long, env = "TWILIO_API_BASE_URL")]
    pub twilio_api_base_url: Option<String>,

    /// The Vonage application that places calls.
    #[arg(long, env = "VONAGE_APPLICATION_ID")]
    pub vonage_application_id: Option<String>,

    /// The application's RSA private key (a PEM file).
    #[arg(long, env = "VONAGE_PRIVATE_KEY_PATH")]
    pub vonage_private_key_path: Option<PathBuf>,

    /// The account's API key and secret (numbers API).
    #[arg(long, env = "VONAGE_API_KEY")]
    pub vonage_api_key: Option<String>,

    #[arg(long, env = "VONAGE_API_SECRET", hide_env_values = true)]
    pub vonage_api_secret: Option<String>,

    /// The secret Vonage signs its callbacks with.
    #[arg(long, env = "VONAGE_SIGNATURE_SECRET", hide_env_values = true)]
    pub vonage_signature_secret: Option<String>,

    #[arg(long, env = "VONAGE_API_BASE_URL")]
    pub vonage_api_base_url: Option<String>,

    #[arg(long, env = "VONAGE_NUMBERS_BASE_URL")]
    pub vonage_numbers_base_url: Option<String>,

    /// Seconds to wait for a carrier's answer.
    #[arg(long, env = "CARRIER_TIMEOUT_SECS", default_value_t = 10)]
    pub carrier_timeout_secs: u64,

    /// How many requests to the carriers this process has open at once; more wait their turn.
    #[arg(long, env = "CARRIER_MAX_CONCURRENCY", default_value_t = 32)]
    pub carrier_max_concurrency: usize,

    /// How many times placing a call is tried when the carrier times out or fails (5xx).
    #[arg(long, env = "DISPATCH_MAX_ATTEMPTS", default_value_t = 5)]
    pub dispatch_max_attempts: u32,

    /// A call in progress with no news from its carrier for this long is checked with the carrier.
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 300)]
    pub reconcile_after_secs: u64,

    /// Record calls (never HIPAA-compliant ones).
    #[arg(long, env = "RECORD_CALLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub record_calls: bool,

    /// Record calls on this server instead of at the carrier: both sides of the conversation, as
    /// the media stream carried them, mixed into an 8 kHz WAV file in `RECORDINGS_DIR` when the
    /// stream ends (at most an hour; never HIPAA-compliant calls).
    #[arg(long, env = "RECORD_ON_SERVER", default_value_t = false, action = clap::ArgAction::Set)]
    pub record_on_server: bool,

    /// Where recordings made on this server are kept, unless `RECORDINGS_URL` is set. Default:
    /// `recordings` beside the SQLite database, or `./data/recordings`.
    #[arg(long, env = "RECORDINGS_DIR")]
    pub recordings_dir: Option<PathBuf>,

    /// Keep the recordings made on this server in S3-compatible object storage instead of
    /// `RECORDINGS_DIR`, where every replica can serve them: `s3://BUCKET` or
    /// `s3://BUCKET/PREFIX`. The endpoint, region and credentials are the `AWS_*` settings (and
    /// the other standard AWS sources: a session token, a web identity, the instance's role).
    #[arg(long, env = "RECORDINGS_URL")]
    pub recordings_url: Option<String>,

    /// The S3-compatible service of `RECORDINGS_URL` (MinIO, Cloudflare R2, Ceph…), e.g.
    /// `https://ACCOUNT.r2.cloudflarestorage.com`. Default: AWS S3 in `AWS_REGION`.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,

    /// The region of `RECORDINGS_URL`'s bucket (`auto` for R2). Default: `us-east-1`.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// The access key for `RECORDINGS_URL`'s bucket; without one, the other standard AWS sources
    /// are tried.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,

    /// The secret of `AWS_ACCESS_KEY_ID`.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,

    /// Let `AWS_ENDPOINT_URL` be plain `http://` (a MinIO on a private network, tests).
    #[arg(long, env = "AWS_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub aws_allow_http: bool,

    /// Speed of the sandbox's scenarios: 0.1 plays them ten times faster.
    #[arg(long, env = "SANDBOX_TIME_SCALE", default_value_t = 1.0)]
    pub sandbox_time_scale: f64,

    /// Background noise on the sandbox people's lines (RMS of 32767; 0 is a quiet line, 1000 a
    /// noisy street): for trying noise suppression.
    #[arg(long, env = "SANDBOX_NOISE", default_value_t = 0.0)]
    pub sandbox_noise: f32,

    /// Whether the sandbox people make out what the bot says with the local recogniser (when it
    /// is installed), for `Sandbox::line` reports; it costs a recognition per bot utterance.
    #[arg(long, env = "SANDBOX_LISTENS", default_value_t = true, action = clap::ArgAction::Set)]
    pub sandbox_listens: bool,
}

impl TelephonyArgs {
    /// Where this server keeps the recordings it makes, when it makes them.
    pub fn recordings(&self, database_url: &str) -> Option<PathBuf> {
        let default = || sqlite_data_dir(database_url).unwrap_or_else(|| PathBuf::from("./data")).join("recordings");
        self.record_on_server.then(|| self.recordings_dir.clone().unwrap_or_else(default))
    }

    /// Where this server keeps the recordings it makes, when it makes them: the bucket of
    /// `RECORDINGS_URL`, or else the folder. A `RECORDINGS_URL` that is not `s3://BUCKET[/PREFIX]`
    /// is refused whether or not the server records.
    pub fn recordings_at(&self, database_url: &str) -> Result<Option<RecordingsAt>, String> {
        let bucket = self.recordings_url.as_deref().map(RecordingsAt::parse_url).transpose()?;
        Ok(self.recordings(database_url).map(|dir| bucket.unwrap_or(RecordingsAt::Dir(dir))))
    }
}

/// Where the recordings this server makes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingsAt {
    /// A folder (of this machine, or one the replicas share).
    Dir(PathBuf),
    /// A bucket of S3-compatible object storage, under `prefix` (`a/b`: no leading or trailing
    /// `/`; empty for the bucket's top).
    Bucket { bucket: String, prefix: String },
}

impl RecordingsAt {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX` (a trailing `/` is allowed).
    pub fn parse_url(url: &str) -> Result<RecordingsAt, String> {
        let refuse = |why: &str| format!("RECORDINGS_URL {url:?} {why}: it must be s3://BUCKET or s3://BUCKET/PREFIX");
        let rest = url.strip_prefix("s3://").ok_or_else(|| refuse("is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if bucket.is_empty() || !bucket.chars().all(bucket_chars) {
            return Err(refuse("names no bucket"));
        }
        let prefix = prefix.trim_end_matches('/');
        let segment_ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.chars().any(|c| c.is_control());
        if !prefix.is_empty() && (prefix.contains(['?', '#']) || !prefix.split('/').all(segment_ok)) {
            return Err(refuse("has a prefix that is not a path"));
        }
        Ok(RecordingsAt::Bucket { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }
}

impl std::fmt::Display for RecordingsAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordingsAt::Dir(dir) => write!(f, "{}", dir.display()),
            RecordingsAt::Bucket { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RecordingsAt::Bucket { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Default for TelephonyArgs {
    fn default() -> Self {
        TelephonyArgs {
            public_base_url: None,
            carrier_mode: CarrierMode::Auto,
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_api_base_url: None,
            vonage_application_id: None,
            vonage_private_key_path: None,
            vonage_api_key: None,
            vonage_api_secret: None,
            vonage_signature_secret: None,
            vonage_api_base_url: None,
            vonage_numbers_base_url: None,
            carrier_timeout_secs: 10,
            carrier_max_concurrency: 32,
            dispatch_max_attempts: 5,
            reconcile_after_secs: 300,
            record_calls: true,
            record_on_server: false,
            recordings_dir: None,
            recordings_url: None,
            aws_endpoint_url: None,
            aws_region: None,
            aws_access_key_id: None,
            aws_secret_access_key: None,
            aws_allow_http: false,
            sandbox_time_scale: 1.0,
            sandbox_noise: 0.0,
            sandbox_listens: true,
        }
    }
}

impl ConversationArgs {
    /// What the conversation engine reads of these: all but where the local speech lives and how
    /// many recognisers run, which the server settles at startup.
    pub fn providers(&self) -> ProviderSettings {
        ProviderSettings {
            deepgram_api_key: self.deepgram_api_key.clone(),
            deepgram_url: self.deepgram_url.clone(),
            openai_api_key: self.openai_api_key.clone(),
            openai_base_url: self.openai_base_url.clone(),
            openai_model: self.openai_model.clone(),
            elevenlabs_api_key: self.elevenlabs_api_key.clone(),
            elevenlabs_base_url: self.elevenlabs_base_url.clone(),
            azure_speech_key: self.azure_speech_key.clone(),
            azure_speech_region: self.azure_speech_region.clone(),
            azure_speech_base_url: self.azure_speech_base_url.clone(),
            rime_api_key: self.rime_api_key.clone(),
            rime_base_url: self.rime_base_url.clone(),
            playht_api_key: self.playht_api_key.clone(),
            playht_user_id: self.playht_user_id.clone(),
            playht_base_url: self.playht_base_url.clone(),
            pinecone_base_url: self.pinecone_base_url.clone(),
            vocode_voice: self.vocode_voice.clone(),
            local_voice_fallback: self.local_voice_fallback,
            silero_vad: self.vad == Vad::Silero,
            end_of_turn_model: self.end_of_turn_model == Switch::On,
        }
    }
}

impl Default for ConversationArgs {
    fn default() -> Self {
        // The providers' defaults are the conversation's own.
        let providers = ProviderSettings::default();
        ConversationArgs {
            deepgram_api_key: providers.deepgram_api_key,
            deepgram_url: providers.deepgram_url,
            openai_api_key: providers.openai_api_key,
            openai_base_url: providers.openai_base_url,
            openai_model: providers.openai_model,
            elevenlabs_api_key: providers.elevenlabs_api_key,
            elevenlabs_base_url: providers.elevenlabs_base_url,
            azure_speech_key: providers.azure_speech_key,
            azure_speech_region: providers.azure_speech_region,
            azure_speech_base_url: providers.azure_speech_base_url,
            rime_api_key: providers.rime_api_key,
            rime_base_url: providers.rime_base_url,
            playht_api_key: providers.playht_api_key,
            playht_user_id: providers.playht_user_id,
            playht_base_url: providers.playht_base_url,
            pinecone_base_url: providers.pinecone_base_url,
            vocode_voice: providers.vocode_voice,
            vad: if providers.silero_vad { Vad::Silero } else { Vad::Energy },
            end_of_turn_model: if providers.end_of_turn_model { Switch::On } else { Switch::Off },
            speech_dir: None,
            local_stt_workers: None,
            local_voice_fallback: providers.local_voice_fallback,
        }
    }
}

impl TelephonyArgs {
    /// Whether calls go to the sandbox.
    pub fn sandbox(&self) -> bool {
        match self.carrier_mode {
            CarrierMode::Sandbox => true,
            CarrierMode::Live => false,
            CarrierMode::Auto => {
                !(self.twilio_account_sid.is_some()
                    || self.twilio_api_base_url.is_some()
                    || self.vonage_application_id.is_some()
                    || self.vonage_api_base_url.is_some())
            }
        }
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            listen: "127.0.0.1:3000".parse().expect("valid default address"),
            no_migrate: false,
            vocode_api_key: None,
            jwt_secret: None,
            jwt_public_key_pem: None,
            log_format: LogFormat::Text,
            telephony: TelephonyArgs::default(),
            conversation: ConversationArgs::default(),
            allow_private_targets: false,
            webhook_timeout_secs: 10,
            job_lease_secs: 120,
            db_max_connections: 16,
            shutdown_grace_secs: 20,
            drain_secs: 300,
            workers: 32,
            rate_limit_per_second: None,
            rate_limit_burst: None,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
        }
    }
}

/// Every environment variable the server reads, from the command line's definition.
pub fn env_names() -> Vec<String> {
    use clap::CommandFactory;
    fn collect(cmd: &clap::Command, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|n| n.to_str()) {
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_owned());
                }
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, out);
        }
    }
    let mut out = Vec::new();
    collect(&Cli::command(), &mut out);
    out.push("RUST_LOG".into());
    out
}

/// Drops the server's variables that are set but empty, so that `FOO=` means "not set" (as it
/// does in compose files that pass `${FOO:-}`) rather than an empty value.
pub fn forget_empty_env() {
    for name in env_names() {
        if std::env::var_os(&name).is_some_and(|v| v.is_empty()) {
            // Called at start-up, before any other thread exists.
            std::env::remove_var(&name);
        }
    }
}

/// The folder that holds the embedded database, and the generated secrets key beside it.
pub fn sqlite_data_dir(database_url: &str) -> Option<PathBuf> {
    let path = sqlite_path(database_url)?;
    Some(path.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")))
}

/// The file of a `sqlite:` URL, without its query string; `None` for other URLs and memory.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() || rest == ":memory:" {
        return None;
    }
    Some(PathBuf::from(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_variable() {
        let names = env_names();
        for expected in
            ["DATABASE_URL", "SECRETS_KEY", "LISTEN_ADDR", "CARRIER_MODE", "VONAGE_SIGNATURE_SECRET", "WORKERS"]
        {
            assert!(names.iter().any(|n| n == expected), "{expected}");
        }
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://./data/vocode.db"), Some(PathBuf::from("./data/vocode.db")));
        assert_eq!(sqlite_path("sqlite:///var/lib/v.db?mode=rwc"), Some(PathBuf::from("/var/lib/v.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x@y/z"), None);
        assert_eq!(sqlite_data_dir("sqlite:v.db"), Some(PathBuf::from(".")));
    }

    #[test]
    fn recordings_go_beside_the_database_unless_told_otherwise() {
        let mut args = TelephonyArgs::default();
        assert_eq!(args.recordings("sqlite:///var/lib/v.db"), None, "off by default");
        args.record_on_server = true;
        assert_eq!(args.recordings("sqlite:///var/lib/v.db"), Some(PathBuf::from("/var/lib/recordings")));
        assert_eq!(args.recordings("postgres://x@y/z"), Some(PathBuf::from("./data/recordings")));
        args.recordings_dir = Some(PathBuf::from("/srv/rec"));
        assert_eq!(args.recordings("postgres://x@y/z"), Some(PathBuf::from("/srv/rec")));
    }

    #[test]
    fn recordings_go_to_a_bucket_when_given_one() {
        let bucket = |bucket: &str, prefix: &str| RecordingsAt::Bucket { bucket: bucket.into(), prefix: prefix.into() };
        let mut args = TelephonyArgs { recordings_url: Some("s3://calls/recordings/".into()), ..Default::default() };
        assert_eq!(args.recordings_at("postgres://x@y/z"), Ok(None), "only when the server records");
        args.record_on_server = true;
        assert_eq!(args.recordings_at("postgres://x@y/z"), Ok(Some(bucket("calls", "recordings"))));
        args.recordings_url = None;
        assert_eq!(args.recordings_at("sqlite:///v.db"), Ok(Some(RecordingsAt::Dir(PathBuf::from("/recordings")))));

        assert_eq!(RecordingsAt::parse_url("s3://calls"), Ok(bucket("calls", "")));
        assert_eq!(RecordingsAt::parse_url("s3://my-bucket.eu/a/b"), Ok(bucket("my-bucket.eu", "a/b")));
        assert_eq!(bucket("calls", "a/b").to_string(), "s3://calls/a/b");
        for bad in
            ["calls", "/srv/rec", "gs://calls", "s3://", "s3:///prefix", "s3://a b/c", "s3://b/x//y", "s3://b/../x"]
        {
            let err = RecordingsAt::parse_url(bad).unwrap_err();
            assert!(err.starts_with(&format!("RECORDINGS_URL {bad:?}")) && err.contains("s3://BUCKET"), "{err}");
        }
        args.record_on_server = false;
        args.recordings_url = Some("gs://calls".into());
        assert!(args.recordings_at("postgres://x@y/z").is_err(), "a bad URL is refused even when unused");
    }

    #[test]
    fn the_turn_taking_models_are_on_unless_told_otherwise() {
        let parsed = |args: &[&str]| Cli::try_parse_from([&["vocode-server"], args].concat()).unwrap();
        let settings = parsed(&[]).serve.conversation.providers();
        assert!(settings.silero_vad && settings.end_of_turn_model, "on when installed, by default");
        let off = parsed(&["--vad", "energy", "--end-of-turn-model", "off"]).serve.conversation.providers();
        assert!(!off.silero_vad && !off.end_of_turn_model);
        assert!(Cli::try_parse_from(["vocode-server", "--vad", "neural"]).is_err(), "only energy or silero");
        let names = env_names();
        assert!(names.iter().any(|n| n == "VAD") && names.iter().any(|n| n == "END_OF_TURN_MODEL"));
        let back = ConversationArgs::default().providers();
        assert!(back.silero_vad && back.end_of_turn_model, "the defaults agree with the engine's");
    }
}
