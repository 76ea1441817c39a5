//! `coupond serve` as a child process of the test: started on a port of its own, killed
//! with SIGKILL and started again on the same port (the client keeps its URL, as behind a
//! load balancer), or stopped with SIGTERM.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::db::{Backend, Database};

/// How long a (re)start may take before the test gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL allows 100 connections for everyone on this machine.
pub const PG_POOL: &str = "8";

#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub database_url: String,
    pub backend: Backend,
    pub admin_key: String,
    /// Extra `COUPOND_*` settings; every other `COUPOND_*` variable of the test's own
    /// environment is removed, so nothing leaks in.
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    /// RLIMIT_NOFILE of the process (default: inherited).
    pub max_open_files: Option<u64>,
}

impl ServerSpec {
    pub fn new(name: &str, db: &Database, admin_key: &str) -> ServerSpec {
        ServerSpec {
            name: name.to_owned(),
            database_url: db.url.clone(),
            backend: db.backend,
            admin_key: admin_key.to_owned(),
            env: Vec::new(),
            log_dir: db.dir.clone(),
            max_open_files: None,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> ServerSpec {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

pub struct ServerProc {
    pub spec: ServerSpec,
    pub port: u16,
    pub log_path: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// Processes started so far (1 + restarts).
    pub starts: u32,
    pub kills: u32,
}

impl ServerProc {
    /// Starts the server on a free port and waits until `/healthz` answers.
    pub async fn start(spec: ServerSpec) -> Result<ServerProc> {
        let bin = crate::bin::coupond()?;
        let port = free_port()?;
        let log_path = spec.log_dir.join(format!("{}.log", spec.name));
        let mut server = ServerProc {
            spec,
            port,
            log_path,
            bin,
            child: None,
            starts: 0,
            kills: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the current process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process's resident memory, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> Option<usize> {
        let pid = self.pid()?;
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|d| d.count())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn command(&self) -> Result<Command> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log_err = log.try_clone()?;
        let mut command = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("COUPOND_") {
                command.env_remove(key);
            }
        }
        command
            .arg("serve")
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database-url")
            .arg(&self.spec.database_url)
            .env("COUPOND_BOOTSTRAP_ADMIN_KEY", &self.spec.admin_key)
            .env("COUPOND_LOG", "warn")
            .env("COUPOND_SHUTDOWN_GRACE", "5s");
        if self.spec.backend == Backend::Postgres {
            command.env("COUPOND_DB_MAX_CONNECTIONS", PG_POOL);
        }
        let limit = self.spec.max_open_files;
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only prctl(2) and setrlimit(2), both async-signal-safe, run in the
            // child between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    // A test process that dies (killed, aborted) takes its servers along.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if let Some(limit) = limit {
                        let rl = libc::rlimit {
                            rlim_cur: limit as libc::rlim_t,
                            rlim_max: limit as libc::rlim_t,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        command
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        Ok(command)
    }

    /// Spawns the process and waits for `/healthz`; retries a start that lost the port
    /// (a restart right after a kill may find it in use for a moment).
    async fn launch(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let probe = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(2))
            .build()?;
        let health = format!("{}/healthz", self.base_url());
        loop {
            let log_start = std::fs::metadata(&self.log_path).map_or(0, |m| m.len()) as usize;
            let child = self
                .command()?
                .spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?;
            self.child = Some(child);
            self.starts += 1;
            loop {
                if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten())
                {
                    self.child = None;
                    let log = self.log_text();
                    let this_start = log.get(log_start..).unwrap_or("");
                    // Only a lost port is worth another try; anything else is the answer.
                    let lost_port = this_start.contains("could not listen");
                    if !lost_port || Instant::now() >= deadline {
                        bail!(
                            "{} exited during startup ({status}); log {}:\n{}",
                            self.spec.name,
                            self.log_path.display(),
                            self.log_tail()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                if probe
                    .get(&health)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{} did not answer /healthz within {STARTUP_TIMEOUT:?}; log {}:\n{}",
                        self.spec.name,
                        self.log_path.display(),
                        self.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.spec.name);
        };
        child.kill().context("SIGKILL")?;
        reap(&mut child, Duration::from_secs(10)).await?;
        self.kills += 1;
        Ok(())
    }

    /// Starts the process again on the same port and database.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is still running", self.spec.name);
        }
        self.child = None;
        self.launch().await
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.spec.name);
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child,
            // not yet reaped, so it cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match reap(&mut child, grace).await {
            Ok(status) => Ok(status),
            Err(_) => {
                let _ = child.kill();
                let status = reap(&mut child, Duration::from_secs(10)).await?;
                bail!(
                    "{} did not stop within {grace:?} of SIGTERM (killed: {status})",
                    self.spec.name
                )
            }
        }
    }
}

async fn reap(child: &mut Child, within: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the server")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("process {} still running after {within:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
