//! vocode-server: a self-hosted, drop-in replacement for Vocode's hosted voice-agent API.
//!
//! Data flows one way: the edges — [`api`] (the Vocode API) and [`telephony`]'s inbound and media
//! endpoints (the carriers) — parse and authorize; the [`calls`] service decides through the pure
//! rules of [`domain`] and persists through [`store`], writing the jobs and [`webhooks`] events a
//! decision causes in the same transaction; the [`jobs`] workers then carry out what touches the
//! outside (the carrier adapters in [`telephony`], webhook delivery). The [`sandbox`] simulates the
//! outside world for runs with no carrier account. This root composes them: [`AppState`], the one
//! job [`registry`], and [`App`], the server bound to its port.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

pub mod api;
pub mod calls;
pub mod config;
pub mod conversation;
pub mod crypto;
pub mod domain;
pub mod egress;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod recordings;
pub mod replicas;
pub mod sandbox;
pub mod serve;
pub mod session;
pub mod store;
pub mod telephony;
pub mod webhooks;

use api::auth::Authenticator;
use calls::Calls;
use config::{GlobalArgs, ServeArgs};
use crypto::SecretBox;
use jobs::{Jobs, Queue, Registry};
use sandbox::Sandbox;
use store::jobs::JobRow;
use store::{users, PoolSettings, Store};
use telephony::{Bases, Endpoints, Telephony};

/// What every request handler shares. Cloning is cheap.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Store,
    pub secrets: Arc<SecretBox>,
    pub auth: Authenticator,
    pub calls: Calls,
    pub telephony: Telephony,
    pub webhooks: webhooks::Webhooks,
    pub jobs: Jobs<AppState>,
    /// The providers agents listen, think and speak with.
    pub conversation: conversation::settings::ProviderSettings,
    /// The built-in carrier, when calls go to it.
    pub sandbox: Option<Arc<Sandbox>>,
    /// With the sandbox carrier: what its simulated people say on each call, which the stand-in
    /// speech-to-text of a sandbox call reads (see `src/sandbox/stand_ins.rs`).
    pub sandbox_speech: Option<Arc<conversation::stt::sandbox::SpokenLogs>>,
    /// The server's own recogniser and voice, as installed in `SPEECH_DIR`.
    pub local_speech: Arc<conversation::local::LocalSpeech>,
    /// The live calls of this process.
    pub sessions: session::Sessions,
    /// Where the recordings this server makes go (`RECORD_ON_SERVER`); `None` when the carriers
    /// record.
    pub recordings: Option<recordings::Recordings>,
    /// This process among the replicas sharing the database.
    pub replicas: replicas::Replicas,
}

impl AppState {
    /// Runs jobs this process claimed, in the background.
    pub fn run_soon(&self, claimed: Vec<JobRow>) {
        self.jobs.spawn(self.clone(), claimed);
    }

    /// Runs a job this process claimed, and records its outcome.
    pub async fn run_now(&self, job: JobRow) {
        self.jobs.run_claimed(self.clone(), job).await;
    }

    /// Runs every job due at `at` until none is left (tests drive the queue with it).
    pub async fn drain(&self, at: chrono::DateTime<chrono::Utc>) -> sqlx::Result<usize> {
        self.jobs.drain(self.clone(), at).await
    }

    /// Checks quiet calls with their carriers now (the workers do it periodically).
    pub async fn reconcile(&self) {
        telephony::outbound::reconcile(self.clone()).await;
    }
}

/// Every kind of job, with its runner; and the periodic work the workers do.
pub fn registry(reconcile_every: std::time::Duration) -> Registry<AppState> {
    Registry::default()
        .register(telephony::outbound::dispatch)
        .register(telephony::outbound::hang_up)
        .register(|state: AppState, job: webhooks::DeliverWebhook, attempt| async move {
            webhooks::deliver::deliver(&state.webhooks, job, attempt).await
        })
        .register(|state: AppState, job: calls::do_not_call::DetectDoNotCall, attempt| async move {
            let sandboxed = state.sandbox.is_some();
            calls::do_not_call::run(&state.calls, &state.secrets, &state.conversation, sandboxed, job, attempt).await
        })
        .every(reconcile_every, telephony::outbound::reconcile)
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Connects to the database named by the settings, applying migrations unless told not to.
pub async fn open_store(global: &GlobalArgs, migrate: bool) -> anyhow::Result<Store> {
    open_store_with(global, migrate, &PoolSettings::default()).await
}

pub async fn open_store_with(global: &GlobalArgs, migrate: bool, settings: &PoolSettings) -> anyhow::Result<Store> {
    let store = Store::connect(&global.database_url, settings).await?;
    if migrate {
        store.migrate().await?;
    }
    Ok(store)
}

/// The key that seals stored secrets, as the settings and the backend call for.
pub fn open_secrets(global: &GlobalArgs) -> anyhow::Result<SecretBox> {
    SecretBox::load(global.secrets_key.as_deref(), config::sqlite_data_dir(&global.database_url).as_deref())
}

/// A server bound to its listener, ready to run.
pub struct App {
    pub addr: SocketAddr,
    pub state: AppState,
    listener: TcpListener,
    workers: usize,
    grace: std::time::Duration,
    drain: std::time::Duration,
    limits: serve::Limits,
    api: api::limits::Settings,
}

impl App {
    /// Connects, migrates, makes the first user on a fresh database, and binds the API to
    /// `listener` (which may be on port 0; `addr` tells the port).
    pub async fn build(global: &GlobalArgs, serve: &ServeArgs, listener: TcpListener) -> anyhow::Result<App> {
        metrics::handle();
        let secrets = open_secrets(global)?;
        let auth = Authenticator::new(serve.jwt_secret.as_deref(), serve.jwt_public_key_pem.as_deref())?;
        let pools = PoolSettings {
            max_connections: serve.db_max_connections.max(2),
            // A connection per worker, and one for the reconciler and claims.
            job_connections: (serve.workers as u32 / 4).clamp(1, 8) + 1,
            ..PoolSettings::default()
        };
        let store = open_store_with(global, !serve.no_migrate, &pools).await?;
        bootstrap(&store, serve).await?;
        let addr = listener.local_addr()?;
        let secrets = Arc::new(secrets);
        let bases = Bases::new(&serve.telephony, addr)?;
        let workers = serve
            .conversation
            .local_stt_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1));
        let local_speech =
            Arc::new(conversation::local::LocalSpeech::discover(serve.conversation.speech_dir.as_deref(), workers));
        local_speech.log_startup(serve.conversation.deepgram_api_key.is_some());
        local_speech.warm_up();
        let sandbox = serve.telephony.sandbox().then(|| {
            Arc::new(
                Sandbox::new(&secrets, &bases.public, &bases.local, serve.telephony.sandbox_time_scale).with_people(
                    local_speech.clone(),
                    serve.telephony.sandbox_listens,
                    serve.telephony.sandbox_noise,
                ),
            )
        });
        let sandbox_speech = sandbox.as_ref().map(|sandbox| sandbox.spoken_logs());
        let endpoints = match &sandbox {
            Some(sandbox) => sandbox.endpoints(),
            None => Endpoints::live(&serve.telephony)?,
        };
        let recordings = recordings::Recordings::open(&serve.telephony, &global.database_url, store.clone()).await?;
        let telephony = Telephony::new(&serve.telephony, bases, endpoints, store.clone(), secrets.clone())?;
        // One name for this process: its heartbeat's, and its job claims'.
        let replica_id = format!("{addr}-{}", Uuid::new_v4().simple());
        let replicas = replicas::Replicas::new(store.clone(), replica_id.clone());
        replicas.beat().await?;
        if sandbox.is_some() && store.backend() == store::Backend::Postgres {
            // The sandbox's calls, people and recordings live in this process: another replica
            // could neither end them nor serve their recordings.
            let why = "the sandbox carrier's calls live in the process that placed them, out of the others' reach";
            let others = replicas.require_alone(why).await?;
            if let Some(other) = others.first() {
                let _ = replicas.leave().await;
                anyhow::bail!(
                    "the sandbox carrier (CARRIER_MODE=sandbox, or auto with no carrier account) keeps its calls in this process and cannot share this Postgres database with another live server process ({other}): stop that one, give this one a database of its own, or use CARRIER_MODE=live"
                );
            }
        }
        replicas.refresh().await?;
        let queue = Queue::new(store.clone(), replica_id, std::time::Duration::from_secs(serve.job_lease_secs.max(1)));
        let new_calls = calls::create::Settings {
            record: telephony.record_calls,
            providers: (!telephony.sandboxed).then(|| calls::create::Providers {
                settings: serve.conversation.providers(),
                local_speech: local_speech.clone(),
            }),
        };
        let calls = Calls::new(
            store.clone(),
            queue.clone(),
            telephony.public_base.clone(),
            serve.telephony.dispatch_max_attempts,
            secrets.clone(),
            new_calls,
        );
        let jobs = Jobs::new(queue, registry(telephony::outbound::reconcile_every(telephony.reconcile_after)));
        if sandbox.is_some() {
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
                webhooks: webhooks::Webhooks::new(
                    store.clone(),
                    secrets.clone(),
                    serve.allow_private_targets,
                    std::time::Duration::from_secs(serve.webhook_timeout_secs.max(1)),
                ),
                store,
                secrets,
                auth,
                calls,
                telephony,
                jobs,
                conversation: serve.conversation.providers(),
                sandbox,
                sandbox_speech,
                local_speech,
                sessions: session::Sessions::default(),
                recordings,
                replicas,
            })),
            listener,
            workers: serve.workers,
            grace: std::time::Duration::from_secs(serve.shutdown_grace_secs),
            drain: std::time::Duration::from_secs(serve.drain_secs),
            limits: serve::Limits {
                header_read_timeout: std::time::Duration::from_secs(serve.header_read_timeout_secs.max(1)),
                ..serve::Limits::default()
            },
            api: api::limits::Settings {
                rate_per_second: serve.rate_limit_per_second,
                burst: serve.rate_limit_burst,
                request_timeout: std::time::Duration::from_secs(serve.request_timeout_secs.max(1)),
            },
        })
    }

    /// Serves until `shutdown` completes (SIGTERM); then drains: reports not ready, stops
    /// claiming jobs and starting conversations another replica can take, and lets the live calls
    /// go on for up to `DRAIN_SECS` before moving them to another replica (or ending them when
    /// there is none: [`session::moving::drain`]). Then it stops accepting, and gives the requests
    /// in flight and the jobs running `SHUTDOWN_GRACE_SECS` to finish. Whatever is unfinished then
    /// is abandoned and its jobs released at once, for another process to take.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let router = api::router(self.state.clone(), &self.api);
        // Draining: the job workers stop claiming. Stopped: everything else stops.
        let (drain, draining) = watch::channel(false);
        let (stop, stopping) = watch::channel(false);
        let mut workers = (self.workers > 0)
            .then(|| tokio::spawn(self.state.jobs.clone().work(self.state.clone(), self.workers, draining.clone())));
        let heartbeat = tokio::spawn(self.state.replicas.clone().run(stopping.clone()));
        let takeovers = tokio::spawn(session::moving::listen(self.state.clone(), stopping.clone()));
        let mut stopped = stopping.clone();
        let server = serve::serve(self.listener, router, self.limits, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        tokio::pin!(server);
        tokio::select! {
            _ = &mut server => {}
            _ = shutdown => {
                tracing::info!(drain_secs = self.drain.as_secs(), "stopping: not ready; live calls go on, then move");
                self.state.replicas.start_draining();
                let _ = drain.send(true);
                // The server is polled through the drain: it keeps accepting, so `/ready` says 503
                // at once, and the callbacks and streams of the calls still here are served.
                let draining = async {
                    if let Err(e) = self.state.replicas.beat().await {
                        tracing::warn!(error = %e, "could not tell the other replicas this one is draining");
                    }
                    session::moving::drain(&self.state, self.drain).await;
                };
                tokio::pin!(draining);
                let served = tokio::select! {
                    _ = &mut draining => false,
                    _ = &mut server => true,
                };
                if served {
                    draining.await;
                }
                let _ = stop.send(true);
                tracing::info!(grace_secs = self.grace.as_secs(), "stopping: finishing requests in flight and running jobs");
                let finished = tokio::time::timeout(self.grace, async {
                    if !served {
                        (&mut server).await;
                    }
                    if let Some(w) = workers.as_mut() {
                        let _ = w.await;
                    }
                })
                .await;
                if finished.is_err() {
                    tracing::warn!("the grace period is over: abandoning what is unfinished");
                    if let Some(w) = workers.take() {
                        w.abort();
                    }
                }
            }
        }
        let _ = stop.send(true);
        let _ = heartbeat.await;
        let _ = takeovers.await;
        if let Err(e) = self.state.replicas.leave().await {
            tracing::warn!(error = %e, "could not say this process is gone; the others see it when its heartbeat is old");
        }
        match self.state.jobs.queue().release().await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "released unfinished jobs for other workers"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release unfinished jobs; they run again when their lease expires")
            }
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
                    users::insert_key(tx.conn(), user.id, &crypto::display_prefix(key), &crypto::hash_api_key(key))
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
