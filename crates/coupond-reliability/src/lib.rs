//! The harness of coupond's fault-injection suite (`tests/` of this crate).
//!
//! * [`bin`] finds (and if need be builds) the `coupond` binary under test.
//! * [`db`] makes a throwaway database (a SQLite file in a temp dir, or a fresh PostgreSQL
//!   database dropped afterwards) and reads it directly for the cross-checks.
//! * [`server`] runs `coupond serve` as a child process: start, SIGKILL, restart on the
//!   same port, SIGTERM.
//! * [`storm`] is the retry storm: every logical request sent several times with the same
//!   `Idempotency-Key`, out of order and concurrently, retried through crashes and outages,
//!   then checked key by key against the server's state.
//! * [`pg_cluster`] stops and starts the local PostgreSQL cluster, always starting it again.
//! * [`profile`] is the size of a run (`COUPOND_RELIABILITY_PROFILE=ci|long`), [`figures`]
//!   writes what a test measured to `target/reliability/*.json` for docs/RELIABILITY.md.

pub mod bin;
pub mod db;
pub mod figures;
pub mod gaps;
pub mod mounts;
pub mod pg_cluster;
pub mod profile;
pub mod server;
pub mod storm;

/// A random tag for names that must not collide with earlier or parallel runs.
pub fn random_tag() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}

/// The admin key every server of the suite is bootstrapped with (a test constant, not a
/// secret: each server has its own throwaway database).
pub fn admin_key() -> String {
    format!("cpd_reliability_admin_{}", random_tag())
}

/// Held by the heavy tests of one test binary, so that they take turns on the two cores
/// instead of skewing each other's timings.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// `name::sqlite` and `name::postgres` from one `async fn name(backend: Backend)`, on a
/// multi-threaded runtime (the names CI counts to see that both backends ran).
#[macro_export]
macro_rules! backend_tests {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::db::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::db::Backend::Postgres).await;
            }
        }
    };
}
