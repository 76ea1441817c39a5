use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;

use crate::cli::Backend;
use crate::client::Client;

/// How a spawned server is started; shared by every backend in a sweep.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    pub bin: PathBuf,
    pub postgres_admin_url: String,
    pub server_env: Vec<(String, String)>,
    pub startup_timeout: Duration,
    /// How long `stop` waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

/// The spawned server's log level unless `--server-env COUPOND_LOG=...` says otherwise: at
/// `info` coupond logs every request, which costs CPU the bench shares and fills the log.
pub const DEFAULT_SERVER_LOG: &str = "warn";

/// How a spawned server ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StopReport {
    /// The exit status as the OS reported it, e.g. "exit status: 0".
    pub status: String,
    pub clean: bool,
    /// SIGTERM was not enough within the stop timeout.
    pub killed: bool,
    pub stop_ms: u64,
}

/// The `coupond` that cargo builds next to this binary, so `cargo build` of the workspace is
/// all a developer needs before `--spawn`.
pub fn default_coupond_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating own executable")?;
    let dir = exe
        .parent()
        .context("own executable has no parent directory")?;
    Ok(dir.join(format!("coupond{}", std::env::consts::EXE_SUFFIX)))
}

struct PgDatabase {
    admin_url: String,
    name: String,
}

/// A `coupond serve` child with its own database; stopped by `stop`, or best-effort by `Drop`
/// when the bench bails out early (error or Ctrl-C).
pub struct Server {
    pub backend: Backend,
    pub base_url: String,
    pub database_url: String,
    /// What to show of the database: the SQLite file or the PostgreSQL database name.
    pub database: String,
    /// Whether the server's database connection is encrypted (never, for a spawned one).
    pub tls: bool,
    pub temp_dir: PathBuf,
    pub log_path: PathBuf,
    /// The admin key the server was started with (COUPOND_BOOTSTRAP_ADMIN_KEY), unless
    /// --server-env set one: then that one.
    pub admin_key: String,
    child: Option<Child>,
    pid: u32,
    stop_timeout: Duration,
    pg: Option<PgDatabase>,
    rss_peak_kib: Arc<AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(backend: Backend, cfg: &SpawnConfig) -> Result<Server> {
        if !cfg.bin.is_file() {
            bail!(
                "coupond binary not found at {} (build it with `cargo build -p coupond` or pass --coupond-bin)",
                cfg.bin.display()
            );
        }
        let tag = random_tag();
        let temp_dir = std::env::temp_dir().join(format!("coupond-bench-{}-{tag}", backend.name()));
        fs::create_dir_all(&temp_dir)
            .with_context(|| format!("creating {}", temp_dir.display()))?;

        let prepared = async {
            let port = free_port()?;
            let log_path = temp_dir.join("server.log");
            let log = File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let log_err = log.try_clone().context("duplicating log handle")?;
            let db = prepare_database(backend, cfg, &temp_dir, &tag).await?;
            anyhow::Ok((port, log_path, log, log_err, db))
        }
        .await;
        let (port, log_path, log, log_err, (database_url, database, pg)) = match prepared {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_dir_all(&temp_dir);
                return Err(e);
            }
        };
        let bind = format!("127.0.0.1:{port}");
        let base_url = format!("http://{bind}");

        let mut server = Server {
            backend,
            base_url,
            database_url,
            database,
            tls: false,
            temp_dir,
            log_path,
            admin_key: cfg
                .server_env
                .iter()
                .find(|(k, _)| k == BOOTSTRAP_KEY_ENV)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| format!("cpd_bench_{}{}", random_tag(), random_tag())),
            child: None,
            pid: 0,
            stop_timeout: cfg.stop_timeout,
            pg,
            rss_peak_kib: Arc::new(AtomicU64::new(0)),
            sampler: None,
        };

        // From here on `server` owns the database and temp dir, so an early return drops it
        // and its Drop cleans up.
        let mut command = Command::new(&cfg.bin);
        command
            .arg("serve")
            .arg("--bind")
            .arg(&bind)
            .arg("--database-url")
            .arg(&server.database_url);
        if !cfg.server_env.iter().any(|(k, _)| k == "COUPOND_LOG") {
            command.env("COUPOND_LOG", DEFAULT_SERVER_LOG);
        }
        if !cfg.server_env.iter().any(|(k, _)| k == BOOTSTRAP_KEY_ENV) {
            command.env(BOOTSTRAP_KEY_ENV, &server.admin_key);
        }
        let child = command
            .envs(cfg.server_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", cfg.bin.display()))?;
        server.pid = child.id();
        server.child = Some(child);

        server.wait_ready(cfg.startup_timeout).await?;
        server.sampler = Some(spawn_rss_sampler(server.pid, server.rss_peak_kib.clone()));
        Ok(server)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let probe = Client::new(&self.base_url, None, 1, Duration::from_secs(2))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling server process")? {
                    bail!(
                        "coupond exited during startup ({status}); log {}:\n{}",
                        self.log_path.display(),
                        log_tail(&self.log_path)
                    );
                }
            }
            if probe.is_up().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "coupond did not answer on {} within {:?}; log {}:\n{}",
                    self.base_url,
                    timeout,
                    self.log_path.display(),
                    log_tail(&self.log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a fresh peak so each run in a sweep reports its own maximum.
    pub fn reset_rss_peak(&self) {
        let now = read_rss_kib(self.pid).unwrap_or(0);
        self.rss_peak_kib.store(now, Ordering::Relaxed);
    }

    pub fn rss_peak_kib(&self) -> Option<u64> {
        if let Some(now) = read_rss_kib(self.pid) {
            self.rss_peak_kib.fetch_max(now, Ordering::Relaxed);
        }
        match self.rss_peak_kib.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// `Some(status)` once the server process has ended (crashed, or killed by someone else).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, a grace period, then SIGKILL; then drops the database. The temp dir (database
    /// file and log) is removed unless `keep` is set.
    pub async fn stop(mut self, keep: bool) -> Result<StopReport> {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        let started = Instant::now();
        let mut report = StopReport {
            status: "not running".into(),
            clean: false,
            killed: false,
            stop_ms: 0,
        };
        if let Some(mut child) = self.child.take() {
            terminate(self.pid);
            let deadline = Instant::now() + self.stop_timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        report.status = status.to_string();
                        report.clean = status.success();
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => {
                        report.killed = true;
                        let _ = child.kill();
                        report.status = match child.wait() {
                            Ok(status) => status.to_string(),
                            Err(e) => format!("unknown ({e})"),
                        };
                        break;
                    }
                }
            }
        }
        report.stop_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut result = Ok(());
        if let Some(pg) = self.pg.take() {
            if let Err(e) = psql(&pg.admin_url, &drop_sql(&pg.name)).await {
                result = Err(e.context(format!("dropping database {}", pg.name)));
            }
        }
        // A server that did not stop cleanly keeps its log for whoever investigates.
        if !keep && report.clean {
            let _ = fs::remove_dir_all(&self.temp_dir);
        }
        result.map(|()| report)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        if let Some(mut child) = self.child.take() {
            terminate(self.pid);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "coupond-bench: stopped {} server; its log is kept in {}",
                self.backend.name(),
                self.temp_dir.display()
            );
        }
        if let Some(pg) = self.pg.take() {
            let _ = Command::new("psql")
                .arg(&pg.admin_url)
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(drop_sql(&pg.name))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Creates the server's database: an empty SQLite file in `temp_dir`, or a fresh PostgreSQL
/// database. Returns the server's URL, what to show of it, and what to drop afterwards.
async fn prepare_database(
    backend: Backend,
    cfg: &SpawnConfig,
    temp_dir: &Path,
    tag: &str,
) -> Result<(String, String, Option<PgDatabase>)> {
    match backend {
        Backend::Sqlite => {
            let path = temp_dir.join("coupond.db");
            // An empty file is a valid empty SQLite database; creating it up front means the
            // server works whether or not it asks its driver to create missing files.
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            Ok((
                format!("sqlite://{}", path.display()),
                path.display().to_string(),
                None,
            ))
        }
        Backend::Postgres => {
            let name = format!("coupond_bench_{tag}");
            // The server is on this machine; TLS to it would only measure the handshake.
            let url = with_sslmode_disable(&replace_database(&cfg.postgres_admin_url, &name)?);
            psql(&cfg.postgres_admin_url, &format!("CREATE DATABASE {name}"))
                .await
                .context(
                    "creating the benchmark database (is PostgreSQL running and --postgres-url right?)",
                )?;
            Ok((
                url,
                name.clone(),
                Some(PgDatabase {
                    admin_url: cfg.postgres_admin_url.clone(),
                    name,
                }),
            ))
        }
    }
}

fn drop_sql(name: &str) -> String {
    // FORCE (PostgreSQL 13+) because a killed server may leave connections behind.
    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
}

fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child that has
        // not been reaped yet, so it cannot have been recycled for another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

async fn psql(url: &str, sql: &str) -> Result<()> {
    let out = tokio::process::Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .await
        .context("running psql (is the PostgreSQL client installed?)")?;
    if !out.status.success() {
        bail!(
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The server's environment variable that makes its first admin key a given value.
const BOOTSTRAP_KEY_ENV: &str = "COUPOND_BOOTSTRAP_ADMIN_KEY";

fn random_tag() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

fn free_port() -> Result<u16> {
    // The port is free when we look; the tiny window before the server binds it is acceptable
    // for a bench, and a collision shows up as a startup failure with the log.
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("reading bound address")?.port())
}

/// Sets `sslmode=disable` on a `postgres://` URL, replacing any sslmode it had.
pub fn with_sslmode_disable(url: &str) -> String {
    let (base, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (path, query) = base.split_once('?').unwrap_or((base, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslmode="))
        .collect();
    params.push("sslmode=disable");
    format!("{path}?{}{fragment}", params.join("&"))
}

/// Swaps the database name in a `postgres://` URL, keeping credentials, host and parameters.
pub fn replace_database(url: &str, db: &str) -> Result<String> {
    let scheme_end = url
        .find("://")
        .with_context(|| format!("not a URL: {url:?}"))?
        + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query_start = tail.find(['?', '#']).unwrap_or(tail.len());
    let query = &tail[query_start..];
    Ok(format!("{}{authority}/{db}{query}", &url[..scheme_end]))
}

pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix("VmRSS:")?;
        v.split_whitespace().next()?.parse().ok()
    })
}

fn read_rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss_kib(&text)
}

fn spawn_rss_sampler(pid: u32, peak: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            match read_rss_kib(pid) {
                Some(kib) => {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                None => break,
            }
        }
    })
}

pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_replacement() {
        let r = |u: &str| replace_database(u, "bench").ok();
        assert_eq!(
            r("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/bench?sslmode=disable")
        );
        assert_eq!(
            r("postgresql://u:p%40ss@db.local/app").as_deref(),
            Some("postgresql://u:p%40ss@db.local/bench")
        );
        assert_eq!(
            r("postgres://localhost:5432").as_deref(),
            Some("postgres://localhost:5432/bench")
        );
        assert_eq!(
            r("postgres://localhost?host=/run/postgresql").as_deref(),
            Some("postgres://localhost/bench?host=/run/postgresql")
        );
        assert!(replace_database("localhost:5432", "x").is_err());
    }

    #[test]
    fn sslmode_is_forced_off() {
        assert_eq!(
            with_sslmode_disable("postgres://postgres@127.0.0.1:5432/b"),
            "postgres://postgres@127.0.0.1:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_sslmode_disable("postgres://h/b?sslmode=require&application_name=x"),
            "postgres://h/b?application_name=x&sslmode=disable"
        );
        assert_eq!(
            with_sslmode_disable("postgres://h/b?sslmode=disable"),
            "postgres://h/b?sslmode=disable"
        );
    }

    #[test]
    fn vmrss() {
        let status = "Name:\tcoupond\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vmrss_kib(status), Some(12345));
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(read_rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
