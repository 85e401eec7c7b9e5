//! Every setting of the server: a command-line flag, the environment variable it falls back
//! to, and its default. `README.md` has the same list as a table.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
        }
    }
}

/// The folder that holds the embedded database, and the generated secrets key beside it.
pub fn sqlite_data_dir(database_url: &str) -> Option<PathBuf> {
    let path = sqlite_path(database_url)?;
    Some(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
    )
}

/// The file of a `sqlite:` URL, without its query string; `None` for other URLs and memory.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
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
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://./data/vocode.db"),
            Some(PathBuf::from("./data/vocode.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/v.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/v.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x@y/z"), None);
        assert_eq!(sqlite_data_dir("sqlite:v.db"), Some(PathBuf::from(".")));
    }
}
