//! The repository: one interface over two real backends, SQLite (embedded, the default) and
//! Postgres (production).
//!
//! Queries are written once, in the SQL both dialects share, and run through [`DbConn`], which
//! holds a connection of either backend; the `run!` macro compiles each query for both. The few
//! places where the dialects differ match on the backend explicitly. Queries are checked at run
//! time (not with sqlx's compile-time macros, which bind to one database) and every one of them is
//! exercised by the same behavioural tests on both backends.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};

pub mod calls;
pub mod jobs;
#[cfg(test)]
mod json_round_trip;
pub mod numbers;
pub mod recordings;
pub mod records;
pub mod replicas;
pub mod sessions;
pub mod steering;
pub mod users;
pub mod webhooks;

/// Runs the same query code against whichever backend `$conn` holds.
macro_rules! run {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::DbConn::Pg($c) => $body,
            $crate::store::DbConn::Lite($c) => $body,
        }
    };
}
pub(crate) use run;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, Clone)]
enum Pools {
    /// The API's connections, and the background workers' own (so that a burst of requests
    /// cannot starve the jobs, nor the jobs the requests).
    Postgres { api: PgPool, jobs: PgPool },
    /// SQLite allows one writer at a time: writes go through a single connection, so they queue
    /// in the process instead of failing with SQLITE_BUSY; reads use their own pool (WAL mode).
    Sqlite { read: SqlitePool, write: SqlitePool },
}

/// The database. Cloning is cheap: the pools are shared.
#[derive(Debug, Clone)]
pub struct Store {
    pools: Pools,
}

/// A borrowed connection of either backend, from a pool or inside a transaction.
pub enum DbConn<'a> {
    Pg(&'a mut PgConnection),
    Lite(&'a mut SqliteConnection),
}

impl DbConn<'_> {
    pub fn backend(&self) -> Backend {
        match self {
            DbConn::Pg(_) => Backend::Postgres,
            DbConn::Lite(_) => Backend::Sqlite,
        }
    }
}

/// Anything that lends a connection: a pooled one for reads, or a transaction.
pub trait Conn: Send {
    fn conn(&mut self) -> DbConn<'_>;
}

impl Conn for Handle {
    fn conn(&mut self) -> DbConn<'_> {
        Handle::conn(self)
    }
}

impl Conn for Tx {
    fn conn(&mut self) -> DbConn<'_> {
        Tx::conn(self)
    }
}

/// A pooled connection for reads.
pub enum Handle {
    Pg(PoolConnection<Postgres>),
    Lite(PoolConnection<Sqlite>),
}

impl Handle {
    pub fn conn(&mut self) -> DbConn<'_> {
        match self {
            Handle::Pg(c) => DbConn::Pg(c),
            Handle::Lite(c) => DbConn::Lite(c),
        }
    }
}

/// A write transaction; dropped without `commit`, it rolls back.
pub enum Tx {
    Pg(Transaction<'static, Postgres>),
    Lite(LiteTx),
}

/// A transaction on the embedded database's one writer connection, managed here rather than by
/// sqlx: when SQLite fails a `COMMIT` (a full disk, an I/O error) it may roll the transaction
/// back itself, after which sqlx's own bookkeeping believes a transaction is still open and
/// would nest every later one inside it, never to be committed. A connection whose transaction
/// ended in any failure is closed instead of reused; the pool opens a fresh one.
pub struct LiteTx {
    conn: Option<PoolConnection<Sqlite>>,
    open: bool,
}

impl LiteTx {
    async fn begin(pool: &SqlitePool) -> sqlx::Result<LiteTx> {
        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(LiteTx { conn: Some(conn), open: true })
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("the connection of an unfinished transaction")
    }

    async fn commit(mut self) -> sqlx::Result<()> {
        let mut conn = self.conn.take().expect("the connection of an unfinished transaction");
        self.open = false;
        match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => Ok(()),
            Err(err) => {
                let _ = conn.close().await;
                Err(err)
            }
        }
    }
}

impl Drop for LiteTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take().filter(|_| self.open) else { return };
        // The rollback runs before the connection goes back to the pool (the next writer waits
        // for it); if it fails, the connection is closed.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                        let _ = conn.close().await;
                    }
                });
            }
            Err(_) => conn.close_on_drop(),
        }
    }
}

impl Tx {
    pub fn conn(&mut self) -> DbConn<'_> {
        match self {
            Tx::Pg(t) => DbConn::Pg(t),
            Tx::Lite(t) => DbConn::Lite(t.conn()),
        }
    }

    pub async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Pg(t) => t.commit().await,
            Tx::Lite(t) => t.commit().await,
        }
    }
}

tokio::task_local! {
    static WORKER: ();
}

/// Runs `work` as a background worker: its database connections come from the workers' pool.
pub async fn as_worker<F: std::future::Future>(work: F) -> F::Output {
    WORKER.scope((), work).await
}

fn in_worker() -> bool {
    WORKER.try_with(|_| ()).is_ok()
}

/// Settings of the connection pools.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// The background workers' own connections (Postgres).
    pub job_connections: u32,
    /// How long a request waits for a connection before it fails with 503.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { max_connections: 16, job_connections: 6, acquire_timeout: Duration::from_secs(2) }
    }
}

impl Store {
    /// Connects (creating an embedded database and its folder on first use).
    pub async fn connect(url: &str, settings: &PoolSettings) -> anyhow::Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options =
                PgConnectOptions::from_str(url).with_context(|| "DATABASE_URL is not a valid postgres:// URL")?;
            // One plain connection first, so that a wrong URL fails at once rather than after
            // the pool's retries.
            PgConnection::connect_with(&options).await.map_err(|err| describe_connect_error(url, err))?.close().await?;
            let pool = |max: u32| {
                PgPoolOptions::new()
                    .max_connections(max)
                    .min_connections(1)
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_with(options.clone())
            };
            let api = pool(settings.max_connections).await.map_err(|err| describe_connect_error(url, err))?;
            let jobs = pool(settings.job_connections).await.map_err(|err| describe_connect_error(url, err))?;
            Ok(Store { pools: Pools::Postgres { api, jobs } })
        } else if url.starts_with("sqlite:") {
            if let Some(dir) = crate::config::sqlite_data_dir(url) {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
                if let Some(file) = crate::config::sqlite_path(url) {
                    check_writable(&dir, &file)?;
                }
            }
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| "DATABASE_URL is not a valid sqlite: URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let in_memory = crate::config::sqlite_path(url).is_none();
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(settings.acquire_timeout.max(Duration::from_secs(30)))
                .connect_with(options.clone())
                .await
                .map_err(|err| describe_connect_error(url, err))?;
            // An in-memory database exists once per connection, so it gets one pool.
            let read = if in_memory {
                write.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(settings.max_connections.clamp(1, 8))
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_with(options.read_only(true))
                    .await
                    .map_err(|err| describe_connect_error(url, err))?
            };
            Ok(Store { pools: Pools::Sqlite { read, write } })
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite: or postgres:// (got {})", redact_url(url))
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Postgres { .. } => Backend::Postgres,
            Pools::Sqlite { .. } => Backend::Sqlite,
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.pools {
            Pools::Postgres { api, .. } => sqlx::migrate!("./migrations/postgres").run(api).await?,
            Pools::Sqlite { write, .. } => {
                // Changing a table's definition on SQLite means rebuilding the table, which its
                // documented procedure does with foreign keys off, checking them all afterwards.
                // The write pool's one connection is held throughout: nothing else writes.
                let mut conn = write.acquire().await?;
                sqlx::query("PRAGMA foreign_keys = OFF").execute(&mut *conn).await?;
                let migrated = sqlx::migrate!("./migrations/sqlite").run(&mut *conn).await;
                let broken: Vec<(String,)> =
                    sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check").fetch_all(&mut *conn).await?;
                sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                migrated?;
                if let Some((table,)) = broken.first() {
                    anyhow::bail!("the database has rows whose foreign keys name nothing (first in table {table})");
                }
            }
        }
        Ok(())
    }

    /// A connection for reads.
    pub async fn read(&self) -> sqlx::Result<Handle> {
        Ok(match &self.pools {
            Pools::Postgres { api, jobs } => Handle::Pg(if in_worker() { jobs } else { api }.acquire().await?),
            Pools::Sqlite { read, .. } => Handle::Lite(read.acquire().await?),
        })
    }

    /// A write transaction.
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        Ok(match &self.pools {
            Pools::Postgres { api, jobs } => Tx::Pg(if in_worker() { jobs } else { api }.begin().await?),
            Pools::Sqlite { write, .. } => Tx::Lite(LiteTx::begin(write).await?),
        })
    }

    /// Listens on a Postgres channel (SQLite: `None`, it has no other process to hear from).
    pub async fn listen(&self, channel: &str) -> sqlx::Result<Option<sqlx::postgres::PgListener>> {
        match &self.pools {
            Pools::Postgres { jobs, .. } => {
                let mut listener = sqlx::postgres::PgListener::connect_with(jobs).await?;
                listener.listen(channel).await?;
                Ok(Some(listener))
            }
            Pools::Sqlite { .. } => Ok(None),
        }
    }

    /// Whether the database answers, for `/ready`.
    pub async fn ping(&self) -> sqlx::Result<()> {
        let mut handle = self.read().await?;
        run!(handle.conn(), |c| sqlx::query("SELECT 1").execute(&mut *c).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn close(&self) {
        match &self.pools {
            Pools::Postgres { api, jobs } => {
                api.close().await;
                jobs.close().await;
            }
            Pools::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
        }
    }
}

/// Timestamps are kept to the microsecond, the precision both backends store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| e.is_unique_violation())
}

/// Errors that mean "the database cannot serve now" rather than "this request is wrong": the
/// client gets a 503 it can retry.
/// The embedded database writes its file, its journal and its shared-memory index beside it: a
/// folder or a file it cannot write is refused at start-up, with what to fix, rather than
/// found out by the first request that writes.
fn check_writable(dir: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".vocode-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)).map_err(|err| {
        anyhow::anyhow!(
            "the data folder {} cannot be written ({err}): the embedded database needs to write there",
            dir.display()
        )
    })?;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.as_os_str().to_owned();
        path.push(suffix);
        let path = std::path::PathBuf::from(path);
        if path.exists() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|err| anyhow::anyhow!("the database file {} cannot be written ({err})", path.display()))?;
        }
    }
    Ok(())
}

pub fn is_unavailable(err: &sqlx::Error) -> bool {
    unavailable_reason(err).is_some()
}

/// Why the database cannot serve a request for now (the client may try again later), said so
/// that an operator reading it knows what to fix; `None` for any other error.
pub fn unavailable_reason(err: &sqlx::Error) -> Option<&'static str> {
    match err {
        sqlx::Error::PoolTimedOut => Some("the database is unavailable (no connection to it came free in time)"),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => Some("the database is unavailable"),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Some("the database is unavailable (the connection to it failed)"),
        // A connection cut while it opens (during TLS negotiation, before any reply) reads as a
        // protocol error, not as I/O: it is the same outage.
        sqlx::Error::Protocol(message) if message.contains("SSLRequest") => {
            Some("the database is unavailable (the connection to it failed)")
        }
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // Connection exceptions (08…), operator intervention (57P…: shutdown, restart,
                // cannot connect now), insufficient resources (53…: disk full, out of memory).
                let code = pg.code();
                if code == "53100" {
                    Some("the database's disk is full")
                } else if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") {
                    Some("the database is unavailable")
                } else {
                    None
                }
            } else {
                // SQLite's primary result codes.
                match db.code().and_then(|c| c.parse::<u32>().ok()).map(|c| c & 0xff) {
                    Some(5) => Some("the database is busy"),
                    Some(8) => Some("the database is read-only: its file or folder cannot be written"),
                    Some(10) => Some("the database cannot write to its disk (an I/O error: is the disk full?)"),
                    Some(13) => Some("the database's disk is full"),
                    Some(14) => Some("the database file cannot be opened"),
                    _ => None,
                }
            }
        }
        _ => None,
    }
}

fn describe_connect_error(url: &str, err: sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot connect to the database at {}: {err}", redact_url(url))
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:****{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("postgres://vocode:hunter2@db:5432/vocode"), "postgres://vocode:****@db:5432/vocode");
        assert_eq!(redact_url("postgres://root@db/x"), "postgres://root@db/x");
        assert_eq!(redact_url("sqlite://./data/v.db"), "sqlite://./data/v.db");
    }

    #[test]
    fn a_connection_cut_while_it_opens_is_an_outage_and_other_protocol_errors_are_not() {
        let cut = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        assert!(is_unavailable(&cut));
        assert!(!is_unavailable(&sqlx::Error::Protocol("unknown message type: 'x'".into())));
    }
}
