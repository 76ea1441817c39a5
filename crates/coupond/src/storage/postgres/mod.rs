//! PostgreSQL: many writers at once, in several processes if need be. Row locks do the
//! serialising: a duplicate request waits on the uncommitted idempotency row of the
//! original, a user's issues queue on that user's counter row, and a batch's issues
//! spread over its counter shards. The hot writes (issue, redeem) are one round trip
//! each, see `hot`; the rest run as ordinary transactions here.

mod hot;
mod keys;

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::{Acquire, FromRow, PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::{
    shard_quotas, Command, CommandResult, Effect, IdempotencyRecord, PoolStats, PurgeBy,
    StoreError, StoreOptions, StoredResponse, WriteOutcome, WriteRequest,
};
use crate::domain::{
    Batch, Coupon, CouponStatus, DiscountType, ListFilter, NewBatch, RedeemPolicy,
};
use crate::faults::{FaultAction, Faults};
use std::sync::Arc;

/// Enough rows that 64 concurrent issues of one batch rarely meet on the same one.
const MAX_SHARDS: i64 = 16;
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// SQLSTATE lock_not_available: `lock_timeout` ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    faults: Arc<Faults>,
}

#[derive(FromRow)]
struct BatchRow {
    id: i64,
    name: String,
    discount_type: String,
    amount: Option<i64>,
    percent: Option<i64>,
    per_user_limit: i64,
    total_limit: i64,
    expires_at: OffsetDateTime,
    redeem_policy: String,
    created_at: OffsetDateTime,
}

impl From<BatchRow> for Batch {
    fn from(row: BatchRow) -> Batch {
        Batch {
            id: row.id,
            name: row.name,
            // The CHECK constraint admits only the two known values.
            discount_type: DiscountType::parse(&row.discount_type).unwrap_or(DiscountType::Fixed),
            amount: row.amount,
            percent: row.percent,
            per_user_limit: row.per_user_limit,
            total_limit: row.total_limit,
            expires_at: row.expires_at,
            // The CHECK constraint admits only the known values.
            redeem_policy: RedeemPolicy::parse(&row.redeem_policy).unwrap_or_default(),
            created_at: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct CouponRow {
    id: i64,
    batch_id: i64,
    code: String,
    status: String,
    issued_to: Option<String>,
    issued_at: Option<OffsetDateTime>,
    redeemed_by: Option<String>,
    redeemed_at: Option<OffsetDateTime>,
    order_id: Option<String>,
    created_at: OffsetDateTime,
}

impl From<CouponRow> for Coupon {
    fn from(row: CouponRow) -> Coupon {
        Coupon {
            id: row.id,
            batch_id: row.batch_id,
            code: row.code,
            status: CouponStatus::parse(&row.status).unwrap_or(CouponStatus::Issued),
            issued_to: row.issued_to,
            issued_at: row.issued_at,
            redeemed_by: row.redeemed_by,
            redeemed_at: row.redeemed_at,
            order_id: row.order_id,
            created_at: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct RecordRow {
    fingerprint: String,
    response_status: Option<i16>,
    response_body: Option<Vec<u8>>,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl RecordRow {
    fn into_record(self) -> Option<IdempotencyRecord> {
        // A committed row always carries its response; one without is not a record.
        let status = u16::try_from(self.response_status?).ok()?;
        Some(IdempotencyRecord {
            fingerprint: self.fingerprint,
            response: StoredResponse {
                status,
                body: self.response_body?,
            },
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }
}

const COUPON_COLUMNS: &str = "id, batch_id, code, status, issued_to, issued_at, redeemed_by, \
                              redeemed_at, order_id, created_at";
const BATCH_COLUMNS: &str = "id, name, discount_type, amount, percent, per_user_limit, \
                             total_limit, expires_at, redeem_policy, created_at";

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
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect)
            .await?;
        Ok(PgStore {
            pool,
            faults: options.faults,
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// A pooled connection; how long it took to get one is recorded.
    async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let conn = self.pool.acquire().await?;
        crate::metrics::record_db_wait("pool", started.elapsed());
        Ok(conn)
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
        let (applied,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
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
        let row: Option<RecordRow> = sqlx::query_as(
            "SELECT fingerprint, response_status, response_body, created_at, expires_at \
             FROM idempotency_records WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(RecordRow::into_record))
    }

    pub async fn execute(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        let result = match request.command {
            Command::Issue(_) | Command::Redeem(_) => hot::execute(self, request).await,
            Command::CreateBatch(_) => self.execute_in_transaction(request).await,
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
            let row: Option<RecordRow> = sqlx::query_as(
                "SELECT fingerprint, response_status, response_body, created_at, expires_at \
                 FROM idempotency_records WHERE scope = $1 AND key = $2",
            )
            .bind(&claim.scope)
            .bind(&claim.key)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = row
                .and_then(RecordRow::into_record)
                .and_then(|record| record.answer(&claim.fingerprint, now));
            // The row was there a moment ago and rows are only ever committed whole, so
            // "gone" can only mean a purge raced us: let the client retry.
            return Ok(outcome.unwrap_or(WriteOutcome::InProgress));
        }

        let result = run_command(&mut tx, command, now).await?;
        let response = render(&result);
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

    pub async fn list_coupons(&self, filter: &ListFilter) -> Result<Vec<Coupon>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {COUPON_COLUMNS} FROM coupons WHERE TRUE"
        ));
        if let Some(user) = &filter.user_id {
            query
                .push(" AND (issued_to = ")
                .push_bind(user)
                .push(" OR redeemed_by = ")
                .push_bind(user)
                .push(")");
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit);
        let mut conn = self.acquire().await?;
        let rows: Vec<CouponRow> = query.build_query_as().fetch_all(&mut *conn).await?;
        Ok(rows.into_iter().map(Coupon::from).collect())
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
        .execute(&self.pool)
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

async fn run_command(
    conn: &mut PgConnection,
    command: Command,
    now: OffsetDateTime,
) -> Result<CommandResult, StoreError> {
    Ok(match command {
        Command::CreateBatch(new) => Ok(Effect::BatchCreated(create_batch(conn, new, now).await?)),
        // These take the one-round-trip path in `hot` and never reach here.
        Command::Issue(_) | Command::Redeem(_) => {
            return Err(StoreError::Internal(
                "hot command on the general write path",
            ))
        }
    })
}

async fn create_batch(
    conn: &mut PgConnection,
    new: NewBatch,
    now: OffsetDateTime,
) -> Result<Batch, StoreError> {
    let row: BatchRow = sqlx::query_as(&format!(
        "INSERT INTO coupon_batches (name, discount_type, amount, percent, per_user_limit, \
             total_limit, expires_at, created_at, redeem_policy) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {BATCH_COLUMNS}"
    ))
    .bind(&new.name)
    .bind(new.discount_type.as_str())
    .bind(new.amount)
    .bind(new.percent)
    .bind(new.per_user_limit)
    .bind(new.total_limit)
    .bind(new.expires_at)
    .bind(now)
    .bind(new.redeem_policy.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let quotas = shard_quotas(new.total_limit, MAX_SHARDS);
    let shards: Vec<i32> = (0..quotas.len() as i32).collect();
    sqlx::query(
        "INSERT INTO batch_counter_shards (batch_id, shard, quota) \
         SELECT $1, s, q FROM UNNEST($2::int[], $3::bigint[]) AS t(s, q)",
    )
    .bind(row.id)
    .bind(&shards)
    .bind(&quotas)
    .execute(&mut *conn)
    .await?;
    Ok(row.into())
}
