//! PostgreSQL: many writers at once, in several processes if need be. Row locks do the
//! serialising: a duplicate request waits on the uncommitted idempotency row of the
//! original, a user's issues queue on that user's counter row, and a batch's issues
//! spread over its counter shards. The hot writes (issue, redeem) are one round trip
//! each, see `hot`; the rest run as ordinary transactions here.

mod breaker;
mod commands;
mod hot;
mod keys;
mod queries;
mod rows;
mod sessions;

use std::str::FromStr;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::{Acquire, Connection, Postgres};
use time::OffsetDateTime;

use super::{
    Command, IdempotencyRecord, PoolStats, PurgeBy, StoreError, StoreOptions, WriteOutcome,
    WriteRequest,
};
use crate::faults::{FaultAction, Faults};
use breaker::Breaker;
use rows::RecordRow;
use std::sync::Arc;

/// Enough rows that 64 concurrent issues of one batch rarely meet on the same one.
pub(super) const MAX_SHARDS: i64 = 16;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// SQLSTATE lock_not_available: `lock_timeout` ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    faults: Arc<Faults>,
    breaker: Breaker,
}

impl PgStore {
    pub async fn connect(url: &str, options: StoreOptions) -> Result<PgStore, StoreError> {
        let claim_wait = format!("{}ms", options.idempotency_wait.as_millis().max(1));
        let lock_timeout = format!("{}ms", options.lock_timeout.as_millis().max(1));
        // Set at connection start, so they cost no round trip per request:
        // coupond.claim_wait bounds how long a duplicate waits on its original's
        // claimed key (see coupond_claim_key), lock_timeout every other lock.
        let connect = PgConnectOptions::from_str(url)?
            .options([
                ("lock_timeout", lock_timeout.as_str()),
                ("coupond.claim_wait", claim_wait.as_str()),
            ])
            .application_name("coupond");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(1)
            .acquire_timeout(options.acquire_timeout)
            // No ping before every use: that is a round trip per request. A connection
            // that broke meanwhile fails its query, is dropped, and that request gets a
            // 503 it may retry.
            .test_before_acquire(false)
            .connect_with(connect)
            .await?;
        Ok(PgStore {
            pool,
            faults: options.faults,
            breaker: Breaker::default(),
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&mut *self.acquire().await?).await?;
        Ok(())
    }

    /// A pooled connection; how long it took to get one is recorded.
    async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let mut dead = 0;
        loop {
            // Not getting a connection at all (refused, timed out, the database gone)
            // is the database being unavailable, whatever the driver calls it.
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if self.breaker.suspect() {
                if let Err(e) = conn.ping().await {
                    // Opened before an outage: out of the pool, and try the next.
                    drop(conn.detach());
                    dead += 1;
                    if dead > self.pool.options().get_max_connections() {
                        return Err(StoreError::Unavailable(e.to_string()));
                    }
                    continue;
                }
            }
            crate::metrics::record_db_wait("pool", started.elapsed());
            return Ok(conn);
        }
    }

    /// Runs one store operation behind the breaker: refused at once while the database
    /// is down, and an answer that shows it down trips the breaker for everyone.
    pub async fn guarded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.breaker.check()?;
        let result = work.await;
        if let Err(e) = &result {
            if e.is_unavailable() {
                self.breaker.trip(&self.pool);
            }
        }
        result
    }

    /// Connections open and idle, for the metrics page.
    pub fn pool_stats(&self) -> PoolStats {
        let open = self.pool.size() as usize;
        let idle = self.pool.num_idle();
        PoolStats {
            in_use: open.saturating_sub(idle),
            idle,
            queued_writes: 0,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        let (applied,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *conn)
                .await?;
        super::check_schema(applied, &MIGRATOR)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn find_idempotency_record(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        stored_record(&mut *self.acquire().await?, scope, key).await
    }

    pub async fn execute(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        let result = match request.command {
            Command::Issue(_) | Command::Redeem(_) => hot::execute(self, request).await,
            _ => self.execute_in_transaction(request).await,
        };
        match result {
            // Waiting for a duplicate in flight ran out: the client retries later. Any
            // other lock wait running out is the database being too busy.
            Err(StoreError::Database(e)) if is_lock_timeout(&e) => {
                if waited_on_claim(&e) {
                    Ok(WriteOutcome::InProgress)
                } else {
                    Err(StoreError::LockTimeout)
                }
            }
            other => other,
        }
    }

    /// The general write path: claim the key, run the command statement by statement,
    /// store its response, commit. For writes that are not on the hot path.
    async fn execute_in_transaction(
        &self,
        request: WriteRequest,
    ) -> Result<WriteOutcome, StoreError> {
        let WriteRequest {
            claim,
            actor,
            command,
            render,
            now,
        } = request;
        let mut conn = self.acquire().await?;
        let mut tx = conn.begin().await?;

        // Claim the key. A live row from a committed request makes this a no-op; an
        // expired one is taken over; an uncommitted one (a request in flight) makes us
        // wait for its transaction, up to lock_timeout.
        let claimed: Result<(bool,), _> =
            sqlx::query_as("SELECT coupond_claim_key($1, $2, $3, $4, $5)")
                .bind(&claim.scope)
                .bind(&claim.key)
                .bind(&claim.fingerprint)
                .bind(now)
                .bind(claim.expires_at)
                .fetch_one(&mut *tx)
                .await;
        let (claimed,) = claimed?;
        if !claimed {
            let outcome = stored_record(&mut tx, &claim.scope, &claim.key)
                .await?
                .and_then(|record| Arc::new(record).answer(&claim.fingerprint, now));
            // The row was there a moment ago and rows are only ever committed whole, so
            // "gone" can only mean a purge raced us: let the client retry.
            return Ok(outcome.unwrap_or(WriteOutcome::InProgress));
        }

        let result = commands::run_command(&mut tx, command, actor, now).await?;
        let response = render(&result, now);
        sqlx::query(
            "UPDATE idempotency_records SET response_status = $3, response_body = $4 \
             WHERE scope = $1 AND key = $2",
        )
        .bind(&claim.scope)
        .bind(&claim.key)
        .bind(i16::try_from(response.status).unwrap_or(500))
        .bind(&response.body)
        .execute(&mut *tx)
        .await?;

        match self.faults.before_commit(&claim.key) {
            FaultAction::Proceed => {}
            FaultAction::Fail => return Err(StoreError::InjectedFault),
            FaultAction::Pause(d) => tokio::time::sleep(d).await,
        }
        tx.commit().await?;
        Ok(WriteOutcome::Executed(response))
    }

    pub async fn purge_idempotency(
        &self,
        by: PurgeBy,
        cutoff: OffsetDateTime,
        limit: i64,
    ) -> Result<u64, StoreError> {
        // SKIP LOCKED: a record being claimed right now is left to its claimer.
        let done = sqlx::query(&format!(
            "DELETE FROM idempotency_records WHERE (scope, key) IN ( \
                 SELECT scope, key FROM idempotency_records WHERE {} <= $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            by.column()
        ))
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(done.rows_affected())
    }
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE))
}

/// Whether a lock timeout happened while claiming an idempotency key, i.e. waiting for
/// another request with the same key. The error's context names the function.
fn waited_on_claim(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.try_downcast_ref::<PgDatabaseError>()
        .and_then(|pg| pg.r#where())
        .is_some_and(|context| context.contains("coupond_claim_key"))
}

/// The idempotency record stored under (`scope`, `key`), if a whole one is.
pub(super) async fn stored_record(
    conn: &mut sqlx::PgConnection,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row: Option<RecordRow> = sqlx::query_as(
        "SELECT fingerprint, response_status, response_body, created_at, expires_at \
         FROM idempotency_records WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.and_then(RecordRow::into_record))
}
