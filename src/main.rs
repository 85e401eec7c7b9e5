//! The command line: `serve` (the default), `migrate`, `keys`, `users`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

use vocode_server::config::{Cli, Command, GlobalArgs, KeysCommand, LogFormat, ServeArgs, UsersCommand};
use vocode_server::store::{users, Store};
use vocode_server::{crypto, open_secrets, open_store, App};

fn main() -> ExitCode {
    vocode_server::config::forget_empty_env();
    let cli = Cli::parse();
    let serve = match &cli.command {
        Some(Command::Serve(args)) => args.clone(),
        _ => cli.serve.clone(),
    };
    init_tracing(serve.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(cli.global, serve, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(global: GlobalArgs, serve_args: ServeArgs, command: Option<Command>) -> anyhow::Result<()> {
    match command {
        None | Some(Command::Serve(_)) => serve(&global, &serve_args).await,
        Some(Command::Migrate) => {
            open_store(&global, true).await?;
            println!("migrations applied");
            Ok(())
        }
        Some(Command::Keys(cmd)) => keys(&global, cmd).await,
        Some(Command::Users(cmd)) => users_command(&global, cmd).await,
        Some(Command::Healthcheck { url }) => healthcheck(url, &serve_args).await,
    }
}

async fn serve(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let app = App::build(global, args, listener).await?;
    tracing::info!(addr = %app.addr, backend = ?app.state.store.backend(), "listening");
    println!("vocode-server listening on http://{}", app.addr);
    app.run_until(shutdown_signal()).await
}

async fn healthcheck(url: Option<String>, args: &ServeArgs) -> anyhow::Result<()> {
    let url = url.unwrap_or_else(|| format!("http://127.0.0.1:{}/health", args.listen.port()));
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?;
    let status = client.get(&url).send().await.with_context(|| format!("{url} does not answer"))?.status();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    println!("healthy");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// The user a `--user NAME_OR_ID` names: an id must exist; a new name creates the user.
async fn resolve_user(store: &Store, name_or_id: Option<&str>) -> anyhow::Result<users::User> {
    let mut tx = store.begin().await?;
    let user = match name_or_id {
        None => match users::first(tx.conn()).await? {
            Some(user) => user,
            None => create_user(&mut tx, "default").await?,
        },
        Some(text) => match Uuid::parse_str(text) {
            Ok(id) => users::by_id(tx.conn(), id).await?.with_context(|| format!("no user has the id {id}"))?,
            Err(_) => match users::by_name(tx.conn(), text).await? {
                Some(user) => user,
                None => create_user(&mut tx, text).await?,
            },
        },
    };
    tx.commit().await?;
    Ok(user)
}

/// An existing user, by name or id.
async fn find_user(store: &Store, name_or_id: &str) -> anyhow::Result<users::User> {
    let mut handle = store.read().await?;
    let found = match Uuid::parse_str(name_or_id) {
        Ok(id) => users::by_id(handle.conn(), id).await?,
        Err(_) => users::by_name(handle.conn(), name_or_id).await?,
    };
    found.with_context(|| format!("no user is named or has the id {name_or_id}"))
}

async fn create_user(tx: &mut vocode_server::store::Tx, name: &str) -> anyhow::Result<users::User> {
    if name.trim().is_empty() {
        bail!("a user name cannot be empty");
    }
    let user = users::create_if_absent(tx.conn(), Uuid::now_v7(), name)
        .await?
        .with_context(|| format!("the user {name} was created concurrently; try again"))?;
    eprintln!("created user {} ({})", user.name, user.id);
    Ok(user)
}

async fn keys(global: &GlobalArgs, cmd: KeysCommand) -> anyhow::Result<()> {
    let store = open_store(global, true).await?;
    match cmd {
        KeysCommand::Create { user } => {
            let user = resolve_user(&store, user.as_deref()).await?;
            let key = crypto::generate_api_key();
            let mut tx = store.begin().await?;
            let id = users::insert_key(tx.conn(), user.id, &key.display, &key.hash).await?;
            tx.commit().await?;
            println!("created key {id} for user {} ({}); it is shown only this once:", user.name, user.id);
            println!("{}", key.key);
        }
        KeysCommand::List => {
            let mut handle = store.read().await?;
            println!("{:<36}  {:<12}  {:<20}  {:<25}  status", "id", "key", "user", "created");
            for k in users::list_keys(handle.conn()).await? {
                let status = match k.revoked_at {
                    Some(at) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    None => "active".to_owned(),
                };
                println!(
                    "{:<36}  {:<12}  {:<20}  {:<25}  {status}",
                    k.id,
                    format!("{}…", k.display),
                    k.user_name,
                    k.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                );
            }
        }
        KeysCommand::Revoke { key_id } => {
            let mut tx = store.begin().await?;
            let done = users::revoke_key(tx.conn(), key_id).await?;
            tx.commit().await?;
            if !done {
                bail!("no active key has the id {key_id}");
            }
            println!("revoked key {key_id}");
        }
    }
    store.close().await;
    Ok(())
}

async fn users_command(global: &GlobalArgs, cmd: UsersCommand) -> anyhow::Result<()> {
    let store = open_store(global, true).await?;
    match cmd {
        UsersCommand::WebhookSecret { user, rotate } => {
            let user = find_user(&store, &user).await?;
            let secrets = open_secrets(global)?;
            let secret = if rotate {
                eprintln!("rotated: deliveries are signed with the new secret, and for a day also with the old one");
                vocode_server::webhooks::signing::rotate(&store, &secrets, user.id).await?
            } else {
                vocode_server::webhooks::signing::read_or_create(&store, &secrets, user.id).await?
            };
            println!("webhook signing secret of {} ({}):", user.name, user.id);
            println!("{secret}");
        }
        UsersCommand::SetLimit { user, minutes, clear } => {
            let user = find_user(&store, &user).await?;
            let minutes = if clear { None } else { minutes.map(i64::from) };
            let mut tx = store.begin().await?;
            users::set_usage_limit(tx.conn(), user.id, minutes).await?;
            tx.commit().await?;
            match minutes {
                Some(m) => println!("{} ({}) may now use {m} minutes of calls a month", user.name, user.id),
                None => println!("{} ({}) has no monthly limit", user.name, user.id),
            }
        }
        UsersCommand::List => {
            let mut handle = store.read().await?;
            println!("{:<36}  {:<24}  created", "id", "name");
            for u in users::list(handle.conn()).await? {
                println!("{:<36}  {:<24}  {}", u.id, u.name, u.created_at.format("%Y-%m-%d %H:%M:%S UTC"));
            }
        }
    }
    store.close().await;
    Ok(())
}
