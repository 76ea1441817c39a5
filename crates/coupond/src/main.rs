use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use coupond::app::{self, Application, Bootstrap};
use coupond::config::{parse_duration, DatabaseArgs, LogArgs, ServeArgs};
use coupond::domain::apikey::MAX_NAME_CHARS;
use coupond::domain::{ApiKey, NewApiKey, Scope};
use coupond::faults::Faults;
use coupond::storage::Store;
use coupond::telemetry;

/// coupond: coupon batches, issue, redeem and list, every write exactly once.
#[derive(Debug, Parser)]
#[command(name = "coupond", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API (applies migrations first).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Manage API keys (works on the database directly; a running server sees changes
    /// within a second).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Delete idempotency records that expired (or, with --older-than, that were
    /// created longer ago than that).
    PurgeIdempotency {
        /// Also delete records younger than their expiry, created this long ago or more.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        log: LogArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; the key itself is printed once, alone on the last line.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        scope: ScopeArg,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its id.
    Revoke { id: i64 },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeArg {
    /// Everything, batch management included.
    Admin,
    /// Issue, redeem, list and the other coupon operations; no batch management.
    Service,
    /// GET requests only.
    Read,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Scope {
        match s {
            ScopeArg::Admin => Scope::Admin,
            ScopeArg::Service => Scope::Service,
            ScopeArg::Read => Scope::Read,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            telemetry::init(&args.log);
            let app = Application::build(*args, Arc::new(Faults::default()))
                .await
                .context("starting coupond")?;
            match app.bootstrap() {
                Bootstrap::Generated(key, secret) => {
                    println!(
                        "coupond: no API key existed, so an admin key was created (id {}).\n\
                         It is shown only this once; keep it safe. Use it as\n\
                         `Authorization: Bearer <key>`:\n{secret}",
                        key.id
                    );
                }
                Bootstrap::Given(key) => {
                    println!(
                        "coupond: no API key existed; the admin key from \
                         COUPOND_BOOTSTRAP_ADMIN_KEY was stored (id {}).",
                        key.id
                    );
                }
                Bootstrap::KeysExist => {}
            }
            app.run_until(app::shutdown_signal()).await?;
        }
        Command::Migrate { database, log } => {
            telemetry::init(&log);
            let store = open(&database).await?;
            store.close().await;
            eprintln!("migrations applied ({})", store.backend());
        }
        Command::Keys {
            command,
            database,
            log,
        } => {
            telemetry::init(&log);
            let store = open(&database).await?;
            let result = keys(&store, command).await;
            store.close().await;
            result?;
        }
        Command::PurgeIdempotency {
            older_than,
            database,
            log,
        } => {
            telemetry::init(&log);
            let store = open(&database).await?;
            let result = match older_than {
                None => app::purge_expired(&store).await,
                Some(age) => app::purge_created_before(&store, coupond::domain::now() - age).await,
            };
            store.close().await;
            println!("{} idempotency records deleted", result?);
        }
    }
    Ok(())
}

async fn open(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let wait = Duration::from_secs(5);
    app::open_store(database, wait, wait, Arc::new(Faults::default()))
        .await
        .with_context(|| format!("opening {}", redact(&database.database_url)))
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn keys(store: &Store, command: KeysCommand) -> anyhow::Result<()> {
    let now = coupond::domain::now();
    match command {
        KeysCommand::Create { name, scope } => {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                bail!("--name must be 1 to {MAX_NAME_CHARS} characters");
            }
            let new = NewApiKey::generate(name, scope.into());
            let secret = new.secret.clone();
            let key = store.create_api_key(new, now).await?;
            println!(
                "created API key {} ({}, scope {}); it is shown only now:",
                key.id,
                key.name,
                key.scope.as_str()
            );
            println!("{secret}");
        }
        KeysCommand::List => {
            let keys = store.list_api_keys().await?;
            println!(
                "{:>4}  {:<24} {:<8} {:<14} {:<21} {:<21} REVOKED",
                "ID", "NAME", "SCOPE", "PREFIX", "CREATED", "LAST USED"
            );
            for key in keys {
                print_key(&key);
            }
        }
        KeysCommand::Revoke { id } => match store.revoke_api_key(id, now).await? {
            Some(key) => println!("revoked API key {} ({})", key.id, key.name),
            None => bail!("no API key with id {id}"),
        },
    }
    Ok(())
}

fn print_key(key: &ApiKey) {
    let when = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map(|s| s.chars().take(19).collect::<String>() + "Z")
        .unwrap_or_else(|| "-".to_owned())
    };
    println!(
        "{:>4}  {:<24} {:<8} {:<14} {:<21} {:<21} {}",
        key.id,
        key.name.chars().take(24).collect::<String>(),
        key.scope.as_str(),
        format!("{}…", key.prefix),
        when(Some(key.created_at)),
        when(key.last_used_at),
        when(key.revoked_at),
    );
}
