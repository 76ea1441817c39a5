//! The writes as the SQLite writer runs them: plain statements on the one write
//! connection, inside the savepoint of their job. The writer is the only writer, so
//! what a statement here reads cannot change before the next one writes, and the rules
//! are decided in Rust by the domain functions.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use crate::domain::batch::decide_issue;
use crate::domain::code::{Alphabet, CodeFormat, MAX_CODE_ATTEMPTS};
use crate::domain::coupon::{check_cancellable, check_redeemable, check_unredeemable};
use crate::domain::job::JOB_CHUNK;
use crate::domain::{
    from_unix_micros, to_unix_micros, Batch, BatchStats, CancelRequest, CodeJob, Coupon,
    CouponStatus, DiscountType, EventKind, IssueRequest, JobStatus, NewBatch, NewCodeJob,
    RedeemPolicy, RedeemRequest, Rejection, UnredeemRequest,
};
use crate::storage::{
    Command, Effect, IdempotencyClaim, IdempotencyRecord, NewEvent, PurgeBy, StoreError,
    StoredResponse, WriteOutcome, WriteRequest,
};

pub fn execute(conn: &Connection, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
    let WriteRequest {
        claim,
        actor,
        command,
        render,
        now,
    } = request;
    // This look is the one that counts: nothing can commit between it and the insert
    // below.
    if let Some(outcome) = find_record(conn, &claim.scope, &claim.key)?
        .and_then(|record| std::sync::Arc::new(record).answer(&claim.fingerprint, now))
    {
        return Ok(outcome);
    }
    let result = match command {
        Command::CreateBatch(new) => Ok(Effect::BatchCreated(create_batch(conn, new, now)?)),
        Command::Issue(request) => issue_coupon(conn, &request, actor, now)?.map(Effect::Issued),
        Command::Redeem(request) => {
            redeem_coupon(conn, &request, actor, now)?.map(Effect::Redeemed)
        }
        Command::Cancel(request) => {
            cancel_coupon(conn, &request, actor, now)?.map(Effect::Cancelled)
        }
        Command::Unredeem(request) => {
            unredeem_coupon(conn, &request, actor, now)?.map(Effect::Unredeemed)
        }
        Command::SetBatchActive { batch_id, active } => set_batch_active(conn, batch_id, active)?
            .map(|(batch, stats)| Effect::BatchUpdated(batch, stats)),
        Command::StartCodeJob(job) => {
            start_code_job(conn, &job, actor, now)?.map(Effect::CodeJobStarted)
        }
    };
    let response = render(&result, now);
    store_record(conn, &claim, &response, now)?;
    Ok(WriteOutcome::Executed(response))
}

pub fn purge(
    conn: &Connection,
    by: PurgeBy,
    cutoff: OffsetDateTime,
    limit: i64,
) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached(&format!(
            "DELETE FROM idempotency_records WHERE (scope, key) IN ( \
                 SELECT scope, key FROM idempotency_records WHERE {} <= ?1 LIMIT ?2)",
            by.column()
        ))?
        .execute(params![to_unix_micros(cutoff), limit])?;
    Ok(deleted as u64)
}

pub(super) fn find_record(
    conn: &Connection,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT fingerprint, response_status, response_body, created_at, expires_at \
             FROM idempotency_records WHERE scope = ?1 AND key = ?2",
        )?
        .query_row(params![scope, key], |row| {
            Ok(IdempotencyRecord {
                fingerprint: row.get(0)?,
                response: StoredResponse {
                    status: u16::try_from(row.get::<_, i64>(1)?).unwrap_or(500),
                    body: row.get(2)?,
                },
                created_at: from_unix_micros(row.get(3)?),
                expires_at: from_unix_micros(row.get(4)?),
            })
        })
        .optional()?)
}

fn store_record(
    conn: &Connection,
    claim: &IdempotencyClaim,
    response: &StoredResponse,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    // An expired record under the same key is replaced: its key runs anew.
    conn.prepare_cached(
        "INSERT INTO idempotency_records \
             (scope, key, fingerprint, response_status, response_body, created_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
             response_status = excluded.response_status, response_body = excluded.response_body, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
    )?
    .execute(params![
        claim.scope,
        claim.key,
        claim.fingerprint,
        i64::from(response.status),
        response.body,
        to_unix_micros(now),
        to_unix_micros(claim.expires_at),
    ])?;
    Ok(())
}

pub(super) const BATCH_COLUMNS: &str = "id, name, discount_type, amount, percent, \
    per_user_limit, total_limit, expires_at, created_at, issued, redeem_policy, starts_at, \
    min_order_amount, max_discount, currency, active, code_length, code_prefix, code_alphabet, \
    redeemed, cancelled";

/// A batch and its counters.
pub(super) fn batch_from_row(row: &Row<'_>) -> rusqlite::Result<(Batch, BatchStats)> {
    let discount_type: String = row.get(2)?;
    let redeem_policy: String = row.get(10)?;
    let alphabet: String = row.get(18)?;
    let code_length: i64 = row.get(16)?;
    Ok((
        Batch {
            id: row.get(0)?,
            name: row.get(1)?,
            // The CHECK constraints admit only the known values.
            discount_type: DiscountType::parse(&discount_type).unwrap_or(DiscountType::Fixed),
            amount: row.get(3)?,
            percent: row.get(4)?,
            per_user_limit: row.get(5)?,
            total_limit: row.get(6)?,
            expires_at: from_unix_micros(row.get(7)?),
            created_at: from_unix_micros(row.get(8)?),
            redeem_policy: RedeemPolicy::parse(&redeem_policy).unwrap_or_default(),
            starts_at: row.get::<_, Option<i64>>(11)?.map(from_unix_micros),
            min_order_amount: row.get(12)?,
            max_discount: row.get(13)?,
            currency: row.get(14)?,
            active: row.get(15)?,
            code_format: CodeFormat {
                length: usize::try_from(code_length).unwrap_or(10),
                prefix: row.get(17)?,
                alphabet: Alphabet::parse(&alphabet).unwrap_or_default(),
            },
        },
        BatchStats {
            issued: row.get(9)?,
            redeemed: row.get(19)?,
            cancelled: row.get(20)?,
        },
    ))
}

/// Coupon columns, read with the batch's expiry (`c` and `b`).
pub(super) const COUPON_COLUMNS: &str = "c.id, c.batch_id, c.code, c.status, c.issued_to, \
    c.issued_at, c.redeemed_by, c.redeemed_at, c.order_id, c.created_at, c.order_amount, \
    c.discount_amount, b.expires_at, c.created_by";

pub(super) fn coupon_from_row(row: &Row<'_>) -> rusqlite::Result<Coupon> {
    let status: String = row.get(3)?;
    Ok(Coupon {
        id: row.get(0)?,
        batch_id: row.get(1)?,
        code: row.get(2)?,
        status: CouponStatus::parse(&status).unwrap_or(CouponStatus::Issued),
        issued_to: row.get(4)?,
        issued_at: row.get::<_, Option<i64>>(5)?.map(from_unix_micros),
        redeemed_by: row.get(6)?,
        redeemed_at: row.get::<_, Option<i64>>(7)?.map(from_unix_micros),
        order_id: row.get(8)?,
        created_at: from_unix_micros(row.get(9)?),
        order_amount: row.get(10)?,
        discount_amount: row.get(11)?,
        batch_expires_at: row.get::<_, Option<i64>>(12)?.map(from_unix_micros),
    })
}

pub(super) fn load_batch(
    conn: &Connection,
    id: i64,
) -> Result<Option<(Batch, BatchStats)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE id = ?1"
        ))?
        .query_row([id], batch_from_row)
        .optional()?)
}

/// A coupon by code with its batch and creator.
pub(super) fn load_coupon(
    conn: &Connection,
    code: &str,
) -> Result<Option<(Coupon, Option<i64>)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COUPON_COLUMNS} FROM coupons c JOIN coupon_batches b ON b.id = c.batch_id \
             WHERE c.code = ?1"
        ))?
        .query_row([code], |row| Ok((coupon_from_row(row)?, row.get(13)?)))
        .optional()?)
}

fn create_batch(
    conn: &Connection,
    new: NewBatch,
    now: OffsetDateTime,
) -> Result<Batch, StoreError> {
    let (batch, _) = conn
        .prepare_cached(&format!(
            "INSERT INTO coupon_batches (name, discount_type, amount, percent, per_user_limit, \
                 total_limit, expires_at, created_at, redeem_policy, starts_at, \
                 min_order_amount, max_discount, currency, code_length, code_prefix, \
                 code_alphabet) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
             RETURNING {BATCH_COLUMNS}"
        ))?
        .query_row(
            params![
                new.name,
                new.discount_type.as_str(),
                new.amount,
                new.percent,
                new.per_user_limit,
                new.total_limit,
                to_unix_micros(new.expires_at),
                to_unix_micros(now),
                new.redeem_policy.as_str(),
                new.starts_at.map(to_unix_micros),
                new.min_order_amount,
                new.max_discount,
                new.currency,
                new.code_format.length as i64,
                new.code_format.prefix,
                new.code_format.alphabet.as_str(),
            ],
            batch_from_row,
        )?;
    Ok(batch)
}

fn issue_coupon(
    conn: &Connection,
    request: &IssueRequest,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let Some((batch, stats)) = load_batch(conn, request.batch_id)? else {
        return Ok(Err(Rejection::BatchNotFound));
    };
    let held: i64 = conn
        .prepare_cached(
            "SELECT issued FROM user_batch_counters WHERE batch_id = ?1 AND user_id = ?2",
        )?
        .query_row(params![batch.id, request.user_id], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    if let Err(rejection) = decide_issue(&batch, stats.issued, held, now) {
        return Ok(Err(rejection));
    }

    let mut insert = conn.prepare_cached(
        "INSERT INTO coupons (batch_id, code, status, issued_to, issued_at, created_at, \
             updated_at, created_by) \
         VALUES (?1, ?2, 'issued', ?3, ?4, ?4, ?4, ?5) ON CONFLICT (code) DO NOTHING RETURNING id",
    )?;
    let mut coupon = None;
    for _ in 0..MAX_CODE_ATTEMPTS {
        let code = batch.code_format.generate();
        let id: Option<i64> = insert
            .query_row(
                params![batch.id, code, request.user_id, to_unix_micros(now), actor],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = id {
            coupon = Some(Coupon::issued(id, batch.id, code, &request.user_id, now));
            break;
        }
    }
    let Some(coupon) = coupon else {
        return Err(StoreError::CodeSpaceExhausted);
    };
    conn.prepare_cached(
        "INSERT INTO user_batch_counters (batch_id, user_id, issued) VALUES (?1, ?2, 1) \
         ON CONFLICT (batch_id, user_id) DO UPDATE SET issued = issued + 1",
    )?
    .execute(params![batch.id, request.user_id])?;
    conn.prepare_cached("UPDATE coupon_batches SET issued = issued + 1 WHERE id = ?1")?
        .execute([batch.id])?;
    Ok(Ok(coupon))
}

/// The coupon a command names, with its batch; `Err(CouponNotFound)` when there is none.
fn coupon_and_batch(
    conn: &Connection,
    code: &str,
) -> Result<Result<(Coupon, Batch), Rejection>, StoreError> {
    let Some((coupon, _)) = load_coupon(conn, code)? else {
        return Ok(Err(Rejection::CouponNotFound));
    };
    let (batch, _) = load_batch(conn, coupon.batch_id)?
        .ok_or(StoreError::Internal("coupon without its batch"))?;
    Ok(Ok((coupon, batch)))
}

fn redeem_coupon(
    conn: &Connection,
    request: &RedeemRequest,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let (mut coupon, batch) = match coupon_and_batch(conn, &request.code)? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let discount =
        match check_redeemable(&coupon, &batch, &request.user_id, request.order_amount, now) {
            Ok(discount) => discount,
            Err(rejection) => return Ok(Err(rejection)),
        };
    coupon.redeem(request, discount, now);
    conn.prepare_cached(
        "UPDATE coupons SET status = 'redeemed', redeemed_by = ?2, redeemed_at = ?3, \
             order_id = ?4, order_amount = ?5, discount_amount = ?6, updated_at = ?3 \
         WHERE id = ?1",
    )?
    .execute(params![
        coupon.id,
        coupon.redeemed_by,
        to_unix_micros(now),
        coupon.order_id,
        coupon.order_amount,
        coupon.discount_amount,
    ])?;
    bump_batch(conn, batch.id, "redeemed", 1)?;
    record_event(
        conn,
        &NewEvent {
            coupon_id: coupon.id,
            kind: EventKind::Redeemed,
            at: now,
            actor,
            user_id: Some(&request.user_id),
            order_id: Some(&request.order_id),
            reason: None,
        },
    )?;
    Ok(Ok(coupon))
}

fn cancel_coupon(
    conn: &Connection,
    request: &CancelRequest,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let (mut coupon, batch) = match coupon_and_batch(conn, &request.code)? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Err(rejection) = check_cancellable(&coupon) {
        return Ok(Err(rejection));
    }
    coupon.cancel();
    conn.prepare_cached("UPDATE coupons SET status = 'cancelled', updated_at = ?2 WHERE id = ?1")?
        .execute(params![coupon.id, to_unix_micros(now)])?;
    bump_batch(conn, batch.id, "cancelled", 1)?;
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
    )?;
    Ok(Ok(coupon))
}

fn unredeem_coupon(
    conn: &Connection,
    request: &UnredeemRequest,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let (mut coupon, batch) = match coupon_and_batch(conn, &request.code)? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Err(rejection) = check_unredeemable(&coupon, &request.order_id) {
        return Ok(Err(rejection));
    }
    let redeemed_by = coupon.redeemed_by.clone();
    coupon.unredeem();
    conn.prepare_cached(
        "UPDATE coupons SET status = 'issued', redeemed_by = NULL, redeemed_at = NULL, \
             order_id = NULL, order_amount = NULL, discount_amount = NULL, updated_at = ?2 \
         WHERE id = ?1",
    )?
    .execute(params![coupon.id, to_unix_micros(now)])?;
    bump_batch(conn, batch.id, "redeemed", -1)?;
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
    )?;
    Ok(Ok(coupon))
}

fn set_batch_active(
    conn: &Connection,
    batch_id: i64,
    active: bool,
) -> Result<Result<(Batch, BatchStats), Rejection>, StoreError> {
    let updated = conn
        .prepare_cached(&format!(
            "UPDATE coupon_batches SET active = ?2 WHERE id = ?1 RETURNING {BATCH_COLUMNS}"
        ))?
        .query_row(params![batch_id, active], batch_from_row)
        .optional()?;
    Ok(updated.ok_or(Rejection::BatchNotFound))
}

fn start_code_job(
    conn: &Connection,
    job: &NewCodeJob,
    actor: Option<i64>,
    now: OffsetDateTime,
) -> Result<Result<CodeJob, Rejection>, StoreError> {
    let Some((batch, stats)) = load_batch(conn, job.batch_id)? else {
        return Ok(Err(Rejection::BatchNotFound));
    };
    // The codes count against the batch now, so that issues meanwhile cannot take the
    // room they need.
    if stats.remaining(batch.total_limit) < job.count {
        return Ok(Err(Rejection::BatchLimitReached));
    }
    conn.prepare_cached("UPDATE coupon_batches SET issued = issued + ?2 WHERE id = ?1")?
        .execute(params![batch.id, job.count])?;
    let job = conn
        .prepare_cached(
            "INSERT INTO code_jobs (batch_id, requested, status, created_at, api_key_id) \
             VALUES (?1, ?2, 'running', ?3, ?4) \
             RETURNING id, batch_id, requested, generated, status, created_at, finished_at",
        )?
        .query_row(
            params![batch.id, job.count, to_unix_micros(now), actor],
            job_from_row,
        )?;
    Ok(Ok(job))
}

pub(super) const JOB_COLUMNS: &str =
    "id, batch_id, requested, generated, status, created_at, finished_at";

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<CodeJob> {
    let status: String = row.get(4)?;
    Ok(CodeJob {
        id: row.get(0)?,
        batch_id: row.get(1)?,
        requested: row.get(2)?,
        generated: row.get(3)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Running),
        created_at: from_unix_micros(row.get(5)?),
        finished_at: row.get::<_, Option<i64>>(6)?.map(from_unix_micros),
    })
}

/// Generates up to `JOB_CHUNK` more of a job's codes and records the progress with
/// them, in the caller's transaction.
pub fn run_code_job_chunk(
    conn: &Connection,
    job_id: i64,
    now: OffsetDateTime,
) -> Result<Option<CodeJob>, StoreError> {
    let job: Option<(CodeJob, Option<i64>)> = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS}, api_key_id FROM code_jobs WHERE id = ?1"
        ))?
        .query_row([job_id], |row| Ok((job_from_row(row)?, row.get(7)?)))
        .optional()?;
    let Some((job, actor)) = job else {
        return Ok(None);
    };
    if job.status != JobStatus::Running {
        return Ok(Some(job));
    }
    let (batch, _) = load_batch(conn, job.batch_id)?
        .ok_or(StoreError::Internal("code job without its batch"))?;
    let want = (job.requested - job.generated).min(JOB_CHUNK);
    let mut insert = conn.prepare_cached(
        "INSERT INTO coupons (batch_id, code, status, created_at, updated_at, created_by) \
         VALUES (?1, ?2, 'issued', ?3, ?3, ?4) ON CONFLICT (code) DO NOTHING",
    )?;
    let at = to_unix_micros(now);
    let mut made = 0;
    let mut misses = 0;
    while made < want {
        if insert.execute(params![batch.id, batch.code_format.generate(), at, actor])? == 1 {
            made += 1;
        } else {
            misses += 1;
            if misses > want.max(MAX_CODE_ATTEMPTS as i64) {
                return Err(StoreError::CodeSpaceExhausted);
            }
        }
    }
    let generated = job.generated + made;
    let done = generated >= job.requested;
    let job = conn
        .prepare_cached(&format!(
            "UPDATE code_jobs SET generated = ?2, status = ?3, finished_at = ?4 WHERE id = ?1 \
             RETURNING {JOB_COLUMNS}"
        ))?
        .query_row(
            params![
                job.id,
                generated,
                if done { "done" } else { "running" },
                done.then_some(at),
            ],
            job_from_row,
        )?;
    Ok(Some(job))
}

fn bump_batch(conn: &Connection, batch_id: i64, counter: &str, by: i64) -> Result<(), StoreError> {
    // `counter` is one of this module's own column names, never input.
    conn.prepare_cached(&format!(
        "UPDATE coupon_batches SET {counter} = {counter} + ?2 WHERE id = ?1"
    ))?
    .execute(params![batch_id, by])?;
    Ok(())
}

fn record_event(conn: &Connection, event: &NewEvent<'_>) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO coupon_events (coupon_id, kind, at, api_key_id, user_id, order_id, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        event.coupon_id,
        event.kind.as_str(),
        to_unix_micros(event.at),
        event.actor,
        event.user_id,
        event.order_id,
        event.reason
    ])?;
    Ok(())
}
