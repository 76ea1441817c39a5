use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use coupond::app::{self, Application};
use coupond::config::{DatabaseArgs, LogArgs, ServeArgs};
use coupond::faults::Faults;
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
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        log: LogArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            telemetry::init(&args.log);
            let app = Application::build(args, Arc::new(Faults::default()))
                .await
                .context("starting coupond")?;
            app.run_until(app::shutdown_signal()).await?;
        }
        Command::Migrate { database, log } => {
            telemetry::init(&log);
            let store = app::open_store(
                &database,
                std::time::Duration::from_secs(5),
                Arc::new(Faults::default()),
            )
            .await
            .context("migrating the database")?;
            store.close().await;
            eprintln!("migrations applied to {}", store.backend());
        }
    }
    Ok(())
}
