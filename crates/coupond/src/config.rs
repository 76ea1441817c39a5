//! Server settings: every one a flag and a `COUPOND_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST:PORT/DB`. For
    /// PostgreSQL, `?sslmode=disable|prefer|require` selects TLS.
    #[arg(
        long,
        env = "COUPOND_DATABASE_URL",
        default_value = "sqlite://coupond.db",
        global = true
    )]
    pub database_url: String,

    /// Most database connections this process opens (PostgreSQL: the pool; SQLite: the
    /// read pool, beside its one writer).
    #[arg(
        long,
        env = "COUPOND_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

    /// How long a request waits for a free PostgreSQL connection before it is answered
    /// 503 DATABASE_UNAVAILABLE. While the database cannot be reached, requests are
    /// refused at once for a second after each failed attempt.
    #[arg(long, env = "COUPOND_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub db_acquire_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the API listens on.
    #[arg(long, env = "COUPOND_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address of the Prometheus `/metrics` listener (needs an API key of any scope).
    /// Off unless given; never on the API's port.
    #[arg(long, env = "COUPOND_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// How long a stored idempotent response is replayed before its key may run anew.
    #[arg(long, env = "COUPOND_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// How long a duplicate waits for the original request with its key before it gets
    /// 409 REQUEST_IN_PROGRESS.
    #[arg(long, env = "COUPOND_IDEMPOTENCY_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub idempotency_wait: Duration,

    /// Memory (MiB) for recently stored responses, so that retries are answered
    /// without a database read; 0 turns this off.
    #[arg(long, env = "COUPOND_IDEMPOTENCY_CACHE_MIB", default_value_t = 8)]
    pub idempotency_cache_mib: u64,

    /// How often expired idempotency records are purged.
    #[arg(long, env = "COUPOND_PURGE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub purge_interval: Duration,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "COUPOND_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,

    /// Longest a request may take before it is answered 503 REQUEST_TIMEOUT. A write that
    /// has reached the database still finishes (or rolls back) on its own.
    #[arg(long, env = "COUPOND_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open. Slow or silent clients are cut off after it.
    #[arg(long, env = "COUPOND_HEADER_READ_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Most client connections served at once; more wait in the listen backlog. Lowered
    /// to fit the process's open-files limit.
    #[arg(long, env = "COUPOND_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// How long shutdown waits for requests in flight before giving up on them.
    #[arg(long, env = "COUPOND_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On first start (no API key exists yet) the admin key is created with this value
    /// instead of a random one. For automated set-ups; at least 24 visible characters.
    #[arg(long, env = "COUPOND_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    pub bootstrap_admin_key: Option<String>,

    /// COUPON_NOT_FOUND answers one API key may get for one user_id per window before
    /// that pair is answered 429 RATE_LIMITED; 0 turns the throttle off.
    #[arg(long, env = "COUPOND_NOT_FOUND_LIMIT", default_value_t = 20)]
    pub not_found_limit: u32,

    /// The window of --not-found-limit.
    #[arg(long, env = "COUPOND_NOT_FOUND_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub not_found_window: Duration,

    /// How long an admin console (`/admin/`) session lasts after sign-in, kept by the
    /// server; signing out, or revoking the API key it was opened with, ends it sooner.
    #[arg(long, env = "COUPOND_ADMIN_SESSION_TTL", default_value = "8h", value_parser = parse_duration)]
    pub admin_session_ttl: Duration,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// `text` for people, `json` for log collectors (one object per line).
    #[arg(long, env = "COUPOND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// A tracing filter, e.g. `info` or `coupond=debug,sqlx=warn`.
    #[arg(long, env = "COUPOND_LOG", default_value = "info", global = true)]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `500ms`, `5s`, `1m`, `24h`, `1h 30m`: humantime's format.
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("24h").ok(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert!(parse_duration("soon").is_err());
    }
}
