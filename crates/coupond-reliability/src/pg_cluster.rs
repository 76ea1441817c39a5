//! Stopping and starting the local PostgreSQL cluster for the outage test. The cluster is
//! shared with every other test run on the machine, so the test that uses this is gated
//! behind `COUPOND_RELIABILITY_PG_OUTAGE=1`, and [`StartOnDrop`] starts the cluster again
//! however the test ends (assertion failure and panic included).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Set to `1` to let the outage test stop PostgreSQL.
pub const OUTAGE_ENV: &str = "COUPOND_RELIABILITY_PG_OUTAGE";

pub fn outage_enabled() -> bool {
    std::env::var(OUTAGE_ENV).is_ok_and(|v| v == "1")
}

/// The one cluster of `/etc/postgresql/<version>/main`.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub version: String,
    pub name: String,
}

impl Cluster {
    pub fn local() -> Result<Cluster> {
        let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .context("reading /etc/postgresql (is PostgreSQL installed from Debian packages?)")?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        versions.sort();
        let version = versions
            .into_iter()
            .next()
            .context("no cluster under /etc/postgresql")?;
        Ok(Cluster {
            version,
            name: "main".into(),
        })
    }

    fn ctl(&self, action: &str) -> Result<()> {
        let out = Command::new("pg_ctlcluster")
            .arg("--skip-systemctl-redirect")
            .arg(&self.version)
            .arg(&self.name)
            .arg(action)
            .output()
            .context("running pg_ctlcluster")?;
        if !out.status.success() {
            bail!(
                "pg_ctlcluster {} {} {action} failed ({}): {}",
                self.version,
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `pg_ctlcluster ... stop` (fast mode: open transactions are rolled back).
    pub fn stop(&self) -> Result<()> {
        self.ctl("stop")
    }

    pub fn start(&self) -> Result<()> {
        self.ctl("start")
    }

    pub fn is_ready() -> bool {
        Command::new("pg_isready")
            .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Polls `pg_isready` until it answers or `within` ran out.
    pub fn wait_ready(within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if Cluster::is_ready() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts the cluster again when dropped, if it is not answering.
pub struct StartOnDrop(pub Cluster);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if Cluster::is_ready() {
            return;
        }
        for attempt in 1..=3 {
            match self.0.start() {
                Ok(()) if Cluster::wait_ready(Duration::from_secs(30)) => return,
                Ok(()) => eprintln!("PostgreSQL started but is not ready (attempt {attempt})"),
                Err(e) => eprintln!("starting PostgreSQL again failed (attempt {attempt}): {e:#}"),
            }
            if Cluster::is_ready() {
                return;
            }
        }
        eprintln!(
            "PostgreSQL could NOT be started again: run `pg_ctlcluster --skip-systemctl-redirect {} {} start`",
            self.0.version, self.0.name
        );
    }
}
