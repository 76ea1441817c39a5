//! Failing fast while PostgreSQL is down. Without this every request waits out the
//! pool's acquire timeout (sqlx keeps retrying a refused connection until then) before
//! its 503, and a client retrying at once piles up more waiters. Once an answer shows
//! the database unreachable, requests are refused at once with 503; one background
//! probe tries for a connection and lets requests through again the moment it gets one.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgPool};

use crate::storage::StoreError;

/// How long the probe waits for one connection, and then before its next try.
const PROBE_WAIT: Duration = Duration::from_millis(250);

#[derive(Clone, Default)]
pub struct Breaker {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    down: AtomicBool,
    probing: AtomicBool,
    /// Until when (ms since the Unix epoch) pooled connections are checked before use:
    /// from a trip until a while after the database answers again, idle connections
    /// opened before the outage may be dead.
    suspect_until: AtomicI64,
}

/// How long after the database is back connections are still checked before use.
const SUSPECT_AFTER: Duration = Duration::from_secs(10);

fn epoch_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Breaker {
    /// `Err` (503) at once while the database counts as down.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.state.down.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the database cannot be reached; retry shortly".to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether a pooled connection should be checked (one round trip) before use.
    pub fn suspect(&self) -> bool {
        // Zero until the first trip: the usual case costs no clock read.
        let until = self.state.suspect_until.load(Ordering::Acquire);
        until != 0 && epoch_millis() < until
    }

    /// The database was found unreachable: refuse requests until a probe connects.
    pub fn trip(&self, pool: &PgPool) {
        self.state.suspect_until.store(i64::MAX, Ordering::Release);
        self.state.down.store(true, Ordering::Release);
        if self.state.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = self.state.clone();
        let pool = pool.clone();
        tracing::warn!("PostgreSQL unreachable: refusing requests until it answers again");
        tokio::spawn(async move {
            loop {
                if pool.is_closed() {
                    break;
                }
                // A live round trip, not just a connection: idle ones in the pool may be
                // dead (the pool does not test them before use).
                let answered = tokio::time::timeout(PROBE_WAIT, async {
                    let mut conn = pool.acquire().await?;
                    let pinged = conn.ping().await;
                    if pinged.is_err() {
                        // Out of the pool, so that the next try opens a fresh one.
                        drop(conn.detach());
                    }
                    pinged
                })
                .await;
                if let Ok(Ok(())) = answered {
                    let until = epoch_millis().saturating_add(SUSPECT_AFTER.as_millis() as i64);
                    state.suspect_until.store(until, Ordering::Release);
                    state.down.store(false, Ordering::Release);
                    tracing::info!("PostgreSQL reachable again");
                    break;
                }
                tokio::time::sleep(PROBE_WAIT).await;
            }
            state.probing.store(false, Ordering::Release);
        });
    }
}
