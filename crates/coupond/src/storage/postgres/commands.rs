//! The writes that are not on the hot path, statement by statement inside the general
//! write path's transaction (`PgStore::execute_in_transaction`).

use sqlx::PgConnection;
use time::OffsetDateTime;

use super::rows::{
    BatchRow, BatchWithStats, CouponRow, JobRow, BATCH_COLUMNS, BATCH_STATS, COUPON_COLUMNS,
    JOB_COLUMNS,
};
use super::MAX_SHARDS;
use crate::domain::code::MAX_CODE_ATTEMPTS;
use crate::domain::coupon::{check_cancellable, check_unredeemable};
use crate::domain::job::JOB_CHUNK;
use crate::domain::{
    Batch, BatchStats, CancelRequest, CodeJob, Coupon, EventKind, JobStatus, NewBatch, NewCodeJob,
    Rejection, UnredeemRequest,
};
use crate::storage::{shard_quotas, Command, CommandResult, Effect, NewEvent, StoreError};

pub async fn run_command(
    conn: &mut PgConnection,
    command: Command,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<CommandResult, StoreError> {
    Ok(match command {
        Command::CreateBatch(new) => Ok(Effect::BatchCreated(create_batch(conn, new, now).await?)),
        Command::Cancel(request) => cancel_coupon(conn, &request, actor, now)
            .await?
            .map(Effect::Cancelled),
        Command::Unredeem(request) => unredeem_coupon(conn, &request, actor, now)
            .await?
            .map(Effect::Unredeemed),
        Command::SetBatchActive { batch_id, active } => set_batch_active(conn, batch_id, active)
            .await?
            .map(|(batch, stats)| Effect::BatchUpdated(batch, stats)),
        Command::StartCodeJob(job) => start_code_job(conn, &job, actor, now)
            .await?
            .map(Effect::CodeJobStarted),
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
        "INSERT INTO coupon_batches AS b (name, discount_type, amount, percent, per_user_limit, \
             total_limit, expires_at, created_at, redeem_policy, starts_at, min_order_amount, \
             max_discount, currency, code_length, code_prefix, code_alphabet) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         RETURNING {BATCH_COLUMNS}"
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
    .bind(new.starts_at)
    .bind(new.min_order_amount)
    .bind(new.max_discount)
    .bind(&new.currency)
    .bind(new.code_format.length as i32)
    .bind(&new.code_format.prefix)
    .bind(new.code_format.alphabet.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let batch = Batch::from(row);
    let quotas = shard_quotas(new.total_limit, MAX_SHARDS);
    let shards: Vec<i32> = (0..quotas.len() as i32).collect();
    sqlx::query(
        "INSERT INTO batch_counter_shards (batch_id, shard, quota) \
         SELECT $1, s, q FROM UNNEST($2::int[], $3::bigint[]) AS t(s, q)",
    )
    .bind(batch.id)
    .bind(&shards)
    .bind(&quotas)
    .execute(&mut *conn)
    .await?;
    Ok(batch)
}

/// The coupon a command names, locked for this transaction, with its batch.
async fn lock_coupon(
    conn: &mut PgConnection,
    code: &str,
) -> Result<Result<(Coupon, Batch), Rejection>, StoreError> {
    let row: Option<CouponRow> = sqlx::query_as(&format!(
        "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
         WHERE c.code = $1 FOR UPDATE OF c"
    ))
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(coupon) = row.map(Coupon::from) else {
        return Ok(Err(Rejection::CouponNotFound));
    };
    let batch: BatchRow = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM coupon_batches b WHERE b.id = $1"
    ))
    .bind(coupon.batch_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Ok((coupon, batch.into())))
}

async fn count_status(
    conn: &mut PgConnection,
    coupon: &Coupon,
    redeemed: i64,
    cancelled: i64,
) -> Result<(), StoreError> {
    sqlx::query("SELECT coupond_count_status($1, $2, $3, $4)")
        .bind(coupon.batch_id)
        .bind(coupon.id)
        .bind(redeemed)
        .bind(cancelled)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn record_event(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO coupon_events (coupon_id, kind, at, api_key_id, user_id, order_id, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.coupon_id)
    .bind(event.kind.as_str())
    .bind(event.at)
    .bind(event.actor)
    .bind(event.user_id)
    .bind(event.order_id)
    .bind(event.reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn cancel_coupon(
    conn: &mut PgConnection,
    request: &CancelRequest,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let (mut coupon, _) = match lock_coupon(conn, &request.code).await? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Err(rejection) = check_cancellable(&coupon) {
        return Ok(Err(rejection));
    }
    coupon.cancel();
    sqlx::query("UPDATE coupons SET status = 'cancelled', updated_at = $2 WHERE id = $1")
        .bind(coupon.id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    count_status(conn, &coupon, 0, 1).await?;
    record_event(
        conn,
        &NewEvent {
            coupon_id: coupon.id,
            kind: EventKind::Cancelled,
            at: now,
            actor,
            user_id: None,
            order_id: None,
            reason: request.reason.as_deref(),
        },
    )
    .await?;
    Ok(Ok(coupon))
}

async fn unredeem_coupon(
    conn: &mut PgConnection,
    request: &UnredeemRequest,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let (mut coupon, _) = match lock_coupon(conn, &request.code).await? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Err(rejection) = check_unredeemable(&coupon, &request.order_id) {
        return Ok(Err(rejection));
    }
    let redeemed_by = coupon.redeemed_by.clone();
    coupon.unredeem();
    sqlx::query(
        "UPDATE coupons SET status = 'issued', redeemed_by = NULL, redeemed_at = NULL, \
             order_id = NULL, order_amount = NULL, discount_amount = NULL, updated_at = $2 \
         WHERE id = $1",
    )
    .bind(coupon.id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    count_status(conn, &coupon, -1, 0).await?;
    record_event(
        conn,
        &NewEvent {
            coupon_id: coupon.id,
            kind: EventKind::Unredeemed,
            at: now,
            actor,
            user_id: redeemed_by.as_deref(),
            order_id: Some(&request.order_id),
            reason: request.reason.as_deref(),
        },
    )
    .await?;
    Ok(Ok(coupon))
}

async fn set_batch_active(
    conn: &mut PgConnection,
    batch_id: i64,
    active: bool,
) -> Result<Result<(Batch, BatchStats), Rejection>, StoreError> {
    let updated = sqlx::query("UPDATE coupon_batches SET active = $2 WHERE id = $1")
        .bind(batch_id)
        .bind(active)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() == 0 {
        return Ok(Err(Rejection::BatchNotFound));
    }
    let row: BatchWithStats = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS}, {BATCH_STATS} FROM coupon_batches b WHERE b.id = $1"
    ))
    .bind(batch_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Ok(row.into()))
}

async fn start_code_job(
    conn: &mut PgConnection,
    job: &NewCodeJob,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<CodeJob, Rejection>, StoreError> {
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM coupon_batches WHERE id = $1")
        .bind(job.batch_id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(Err(Rejection::BatchNotFound));
    }
    // The codes count against the batch now, so that issues meanwhile cannot take the
    // room they need.
    let (reserved,): (bool,) = sqlx::query_as("SELECT coupond_reserve($1, $2)")
        .bind(job.batch_id)
        .bind(job.count)
        .fetch_one(&mut *conn)
        .await?;
    if !reserved {
        return Ok(Err(Rejection::BatchLimitReached));
    }
    let row: JobRow = sqlx::query_as(&format!(
        "INSERT INTO code_jobs (batch_id, requested, status, created_at, api_key_id) \
         VALUES ($1, $2, 'running', $3, $4) RETURNING {JOB_COLUMNS}"
    ))
    .bind(job.batch_id)
    .bind(job.count)
    .bind(now)
    .bind(actor)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Ok(row.into()))
}

/// Generates up to `JOB_CHUNK` more of a job's codes, and records the progress with
/// them, in the caller's transaction. The job's row lock keeps two processes from
/// working on the same job at once.
pub async fn run_code_job_chunk(
    conn: &mut PgConnection,
    job_id: i64,
    now: OffsetDateTime,
) -> Result<Option<CodeJob>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        job: JobRow,
        api_key_id: Option<i64>,
    }
    let locked: Option<Locked> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS}, api_key_id FROM code_jobs WHERE id = $1 FOR UPDATE"
    ))
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(locked) = locked else {
        return Ok(None);
    };
    let actor = locked.api_key_id;
    let job = CodeJob::from(locked.job);
    if job.status != JobStatus::Running {
        return Ok(Some(job));
    }
    let batch: BatchRow = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM coupon_batches b WHERE b.id = $1"
    ))
    .bind(job.batch_id)
    .fetch_one(&mut *conn)
    .await?;
    let batch = Batch::from(batch);
    let want = (job.requested - job.generated).min(JOB_CHUNK);
    let mut made = 0i64;
    let mut rounds = 0;
    while made < want {
        rounds += 1;
        if rounds > MAX_CODE_ATTEMPTS {
            return Err(StoreError::CodeSpaceExhausted);
        }
        let codes: Vec<String> = (0..want - made)
            .map(|_| batch.code_format.generate())
            .collect();
        // A collision (with an existing code or within the chunk) just makes fewer rows.
        let inserted = sqlx::query(
            "INSERT INTO coupons (batch_id, code, status, created_at, updated_at, created_by) \
             SELECT $1, code, 'issued', $2, $2, $3 FROM UNNEST($4::text[]) AS t(code) \
             ON CONFLICT (code) DO NOTHING",
        )
        .bind(batch.id)
        .bind(now)
        .bind(actor)
        .bind(&codes)
        .execute(&mut *conn)
        .await?;
        made += inserted.rows_affected() as i64;
    }
    let generated = job.generated + made;
    let done = generated >= job.requested;
    let row: JobRow = sqlx::query_as(&format!(
        "UPDATE code_jobs SET generated = $2, status = $3, finished_at = $4 WHERE id = $1 \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(job.id)
    .bind(generated)
    .bind(if done { "done" } else { "running" })
    .bind(done.then_some(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some(row.into()))
}
