//! vocode-server: a self-hosted, drop-in replacement for Vocode's hosted voice-agent API.
//!
//! Data flows one way: [`api`] parses and authorizes → [`domain`] decides → [`store`] persists
//! (with the jobs a decision causes, in the same transaction) → [`jobs`] carry out what touches
//! the outside ([`telephony`]).

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

pub mod api;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod jobs;
pub mod store;
pub mod telephony;

use api::auth::Authenticator;
use config::{GlobalArgs, ServeArgs};
use crypto::SecretBox;
use store::{users, PoolSettings, Store};
use telephony::Telephony;

/// What every request handler shares. Cloning is cheap.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Store,
    pub secrets: SecretBox,
    pub auth: Authenticator,
    pub telephony: Telephony,
    /// This process's name on the jobs it claims.
    pub worker_id: String,
    /// Wakes this process's workers when it queues a job.
    pub jobs_queued: Notify,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Connects to the database named by the settings, applying migrations unless told not to.
pub async fn open_store(global: &GlobalArgs, migrate: bool) -> anyhow::Result<Store> {
    let store = Store::connect(&global.database_url, &PoolSettings::default()).await?;
    if migrate {
        store.migrate().await?;
    }
    Ok(store)
}

/// The key that seals stored secrets, as the settings and the backend call for.
pub fn open_secrets(global: &GlobalArgs) -> anyhow::Result<SecretBox> {
    SecretBox::load(
        global.secrets_key.as_deref(),
        config::sqlite_data_dir(&global.database_url).as_deref(),
    )
}

/// A server bound to its listener, ready to run.
pub struct App {
    pub addr: SocketAddr,
    pub state: AppState,
    listener: TcpListener,
    workers: usize,
}

impl App {
    /// Connects, migrates, makes the first user on a fresh database, and binds the API to
    /// `listener` (which may be on port 0; `addr` tells the port).
    pub async fn build(
        global: &GlobalArgs,
        serve: &ServeArgs,
        listener: TcpListener,
    ) -> anyhow::Result<App> {
        let secrets = open_secrets(global)?;
        let auth = Authenticator::new(
            serve.jwt_secret.as_deref(),
            serve.jwt_public_key_pem.as_deref(),
        )?;
        let store = open_store(global, !serve.no_migrate).await?;
        bootstrap(&store, serve).await?;
        let addr = listener.local_addr()?;
        let telephony = Telephony::new(&serve.telephony, addr, &secrets)?;
        if telephony.sandbox.is_some() {
            tracing::info!(
                public_base_url = %telephony.public_base,
                "carrier mode: sandbox — calls go to the built-in sandbox carrier and never leave this server (CARRIER_MODE=live uses Twilio and Vonage)"
            );
        } else {
            tracing::info!(public_base_url = %telephony.public_base, "carrier mode: live — calls go to Twilio and Vonage");
        }
        Ok(App {
            addr,
            state: AppState(Arc::new(Shared {
                store,
                secrets,
                auth,
                telephony,
                worker_id: format!("{addr}-{}", Uuid::new_v4().simple()),
                jobs_queued: Notify::new(),
            })),
            listener,
            workers: serve.workers,
        })
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight and the jobs
    /// running (jobs not started are left for the next start, or another replica).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = api::router(self.state.clone());
        let (stop_workers, stopping) = watch::channel(false);
        let workers = (self.workers > 0)
            .then(|| tokio::spawn(jobs::work(self.state.clone(), self.workers, stopping)));
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        let _ = stop_workers.send(true);
        if let Some(workers) = workers {
            let _ = workers.await;
        }
        self.state.store.close().await;
        Ok(())
    }
}

/// On a fresh database, creates the default user with a key: `VOCODE_API_KEY` if set, else a
/// generated one printed once. On later starts, makes sure `VOCODE_API_KEY` (if set) is accepted.
async fn bootstrap(store: &Store, serve: &ServeArgs) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    let mut generated = None;
    if users::count(tx.conn()).await? == 0 {
        // Replicas starting together on an empty database: only one creates the user.
        if let Some(user) = users::create_if_absent(tx.conn(), Uuid::now_v7(), "default").await? {
            match serve.vocode_api_key.as_deref() {
                Some(key) => {
                    users::insert_key(
                        tx.conn(),
                        user.id,
                        &crypto::display_prefix(key),
                        &crypto::hash_api_key(key),
                    )
                    .await?;
                }
                None => {
                    let key = crypto::generate_api_key();
                    users::insert_key(tx.conn(), user.id, &key.display, &key.hash).await?;
                    generated = Some(key.key);
                }
            }
            tracing::info!(user_id = %user.id, "created the default user");
        }
    } else if let Some(key) = serve.vocode_api_key.as_deref() {
        let hash = crypto::hash_api_key(key);
        if !users::key_exists(tx.conn(), &hash).await? {
            if let Some(user) = users::first(tx.conn()).await? {
                users::insert_key(tx.conn(), user.id, &crypto::display_prefix(key), &hash).await?;
                tracing::info!(user = %user.name, "VOCODE_API_KEY is now accepted for the default user");
            }
        }
    }
    tx.commit().await?;
    if let Some(key) = generated {
        print_key_banner(&key, serve.listen);
    }
    Ok(())
}

fn print_key_banner(key: &str, listen: SocketAddr) {
    let line = "=".repeat(78);
    println!(
        "{line}\n  vocode-server created the default user and this API key for it.\n  \
         It is shown only this once: keep it somewhere safe.\n\n      {key}\n\n  \
         Try it:\n      curl -H 'Authorization: Bearer {key}' http://{listen}/v1/prompts/list\n\
         {line}"
    );
}
