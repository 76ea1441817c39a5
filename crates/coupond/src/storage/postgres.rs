//! PostgreSQL: many writers at once. Row locks do the serialising: a duplicate request
//! waits on the uncommitted idempotency row of the original, a user's issues queue on
//! that user's counter row, and a batch's issues spread over its counter shards.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::{
    shard_quotas, Command, CommandResult, Effect, IdempotencyRecord, StoreError, StoreOptions,
    StoredResponse, WriteOutcome, WriteRequest,
};
use crate::domain::code::{generate_code, MAX_CODE_ATTEMPTS};
use crate::domain::coupon::check_redeemable;
use crate::domain::{
    Batch, Coupon, CouponStatus, DiscountType, IssueRequest, ListFilter, NewBatch, RedeemRequest,
    Rejection,
};
use crate::faults::{FaultAction, Faults};
use std::sync::Arc;

/// Enough rows that 64 concurrent issues of one batch rarely meet on the same one.
const MAX_SHARDS: i64 = 16;
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
                             total_limit, expires_at, created_at";

impl PgStore {
    pub async fn connect(url: &str, options: StoreOptions) -> Result<PgStore, StoreError> {
        let wait_ms = options.idempotency_wait.as_millis().max(1).to_string();
        // lock_timeout bounds how long a duplicate waits on its original's row lock;
        // set at connection start so it costs no extra round trip per request.
        let connect = PgConnectOptions::from_str(url)?
            .options([("lock_timeout", wait_ms.as_str())])
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
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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
        let WriteRequest {
            claim,
            command,
            render,
            now,
        } = request;
        let mut tx = self.pool.begin().await?;

        // Claim the key. A live row from a committed request makes this a no-op; an
        // expired one is taken over; an uncommitted one (a request in flight) makes us
        // wait for its transaction, up to lock_timeout.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_records (scope, key, fingerprint, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                 response_status = NULL, response_body = NULL, \
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at \
             WHERE idempotency_records.expires_at <= EXCLUDED.created_at",
        )
        .bind(&claim.scope)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .bind(now)
        .bind(claim.expires_at)
        .execute(&mut *tx)
        .await;
        let claimed = match claimed {
            Ok(done) => done.rows_affected() == 1,
            Err(e) if is_lock_timeout(&e) => return Ok(WriteOutcome::InProgress),
            Err(e) => return Err(e.into()),
        };
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
        let rows: Vec<CouponRow> = query.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(Coupon::from).collect())
    }

    pub async fn purge_idempotency(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idempotency_records WHERE (scope, key) IN ( \
                 SELECT scope, key FROM idempotency_records WHERE expires_at <= $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE))
}

async fn run_command(
    conn: &mut PgConnection,
    command: Command,
    now: OffsetDateTime,
) -> Result<CommandResult, StoreError> {
    Ok(match command {
        Command::CreateBatch(new) => Ok(Effect::BatchCreated(create_batch(conn, new, now).await?)),
        Command::Issue(request) => issue_coupon(conn, request, now).await?.map(Effect::Issued),
        Command::Redeem(request) => redeem_coupon(conn, request, now)
            .await?
            .map(Effect::Redeemed),
    })
}

async fn create_batch(
    conn: &mut PgConnection,
    new: NewBatch,
    now: OffsetDateTime,
) -> Result<Batch, StoreError> {
    let row: BatchRow = sqlx::query_as(&format!(
        "INSERT INTO coupon_batches (name, discount_type, amount, percent, per_user_limit, \
             total_limit, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {BATCH_COLUMNS}"
    ))
    .bind(&new.name)
    .bind(new.discount_type.as_str())
    .bind(new.amount)
    .bind(new.percent)
    .bind(new.per_user_limit)
    .bind(new.total_limit)
    .bind(new.expires_at)
    .bind(now)
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

async fn issue_coupon(
    conn: &mut PgConnection,
    request: IssueRequest,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let batch: Option<BatchRow> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE id = $1"
    ))
    .bind(request.batch_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(batch) = batch.map(Batch::from) else {
        return Ok(Err(Rejection::BatchNotFound));
    };
    if let Err(rejection) = batch.check_issuable(now) {
        return Ok(Err(rejection));
    }

    // The per-user counter row serialises one user's concurrent issues; different
    // users never touch the same row.
    let user_slot: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO user_batch_counters (batch_id, user_id, issued) VALUES ($1, $2, 1) \
         ON CONFLICT (batch_id, user_id) DO UPDATE SET issued = user_batch_counters.issued + 1 \
         WHERE user_batch_counters.issued < $3 RETURNING issued",
    )
    .bind(batch.id)
    .bind(&request.user_id)
    .bind(batch.per_user_limit)
    .fetch_optional(&mut *conn)
    .await?;
    if user_slot.is_none() {
        return Ok(Err(Rejection::PerUserLimitReached));
    }

    if !claim_batch_slot(conn, batch.id).await? {
        // Give the user's slot back: the rejection is stored and committed, the slot
        // must not be.
        sqlx::query(
            "UPDATE user_batch_counters SET issued = issued - 1 \
             WHERE batch_id = $1 AND user_id = $2",
        )
        .bind(batch.id)
        .bind(&request.user_id)
        .execute(&mut *conn)
        .await?;
        return Ok(Err(Rejection::BatchLimitReached));
    }

    for _ in 0..MAX_CODE_ATTEMPTS {
        let row: Option<CouponRow> = sqlx::query_as(&format!(
            "INSERT INTO coupons (batch_id, code, status, issued_to, issued_at, created_at, \
                 updated_at) \
             VALUES ($1, $2, 'issued', $3, $4, $4, $4) \
             ON CONFLICT (code) DO NOTHING RETURNING {COUPON_COLUMNS}"
        ))
        .bind(batch.id)
        .bind(generate_code())
        .bind(&request.user_id)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            return Ok(Ok(row.into()));
        }
    }
    Err(StoreError::CodeSpaceExhausted)
}

/// Takes one unit of the batch's capacity. First any shard nobody holds, starting at a
/// random one; only if every shard with room is locked by a transaction in flight do we
/// wait, since one of those may yet roll back and leave room.
async fn claim_batch_slot(conn: &mut PgConnection, batch_id: i64) -> Result<bool, StoreError> {
    let start = i32::from(rand::random::<u8>());
    for lock in ["FOR UPDATE SKIP LOCKED", "FOR UPDATE"] {
        let claimed: Option<(i32,)> = sqlx::query_as(&format!(
            "UPDATE batch_counter_shards SET issued = issued + 1 \
             WHERE batch_id = $1 AND shard = ( \
                 SELECT shard FROM batch_counter_shards \
                 WHERE batch_id = $1 AND issued < quota \
                 ORDER BY (shard + $2) % {MAX_SHARDS} LIMIT 1 {lock}) \
             RETURNING shard"
        ))
        .bind(batch_id)
        .bind(start)
        .fetch_optional(&mut *conn)
        .await?;
        if claimed.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn redeem_coupon(
    conn: &mut PgConnection,
    request: RedeemRequest,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let row: Option<CouponRow> = sqlx::query_as(&format!(
        "SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1 FOR UPDATE"
    ))
    .bind(&request.code)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(mut coupon) = row.map(Coupon::from) else {
        return Ok(Err(Rejection::CouponNotFound));
    };
    let batch: BatchRow = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE id = $1"
    ))
    .bind(coupon.batch_id)
    .fetch_one(&mut *conn)
    .await?;
    if let Err(rejection) = check_redeemable(&coupon, &batch.into(), now) {
        return Ok(Err(rejection));
    }
    coupon.redeem(&request, now);
    sqlx::query(
        "UPDATE coupons SET status = $2, redeemed_by = $3, redeemed_at = $4, order_id = $5, \
             updated_at = $4 WHERE id = $1",
    )
    .bind(coupon.id)
    .bind(coupon.status.as_str())
    .bind(&coupon.redeemed_by)
    .bind(now)
    .bind(&coupon.order_id)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(coupon))
}
