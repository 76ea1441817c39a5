//! The writes as the SQLite writer runs them: plain statements on the one write
//! connection, inside the savepoint of their job. The writer is the only writer, so
//! what a statement here reads cannot change before the next one writes, and the rules
//! are decided in Rust by the domain functions.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use crate::domain::batch::decide_issue;
use crate::domain::code::{generate_code, MAX_CODE_ATTEMPTS};
use crate::domain::coupon::check_redeemable;
use crate::domain::{
    from_unix_micros, to_unix_micros, Batch, Coupon, CouponStatus, DiscountType, IssueRequest,
    NewBatch, RedeemPolicy, RedeemRequest, Rejection,
};
use crate::storage::{
    Command, Effect, IdempotencyClaim, IdempotencyRecord, PurgeBy, StoreError, StoredResponse,
    WriteOutcome, WriteRequest,
};

pub fn execute(conn: &Connection, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
    let WriteRequest {
        claim,
        command,
        render,
        now,
    } = request;
    // The caller looked on the read pool already; this look is the one that counts,
    // since nothing can commit between it and the insert below.
    if let Some(outcome) = find_record(conn, &claim.scope, &claim.key)?
        .and_then(|record| record.answer(&claim.fingerprint, now))
    {
        return Ok(outcome);
    }
    let result = match command {
        Command::CreateBatch(new) => Ok(Effect::BatchCreated(create_batch(conn, &new, now)?)),
        Command::Issue(request) => issue_coupon(conn, &request, now)?.map(Effect::Issued),
        Command::Redeem(request) => redeem_coupon(conn, &request, now)?.map(Effect::Redeemed),
    };
    let response = render(&result);
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

const BATCH_COLUMNS: &str = "id, name, discount_type, amount, percent, per_user_limit, \
                             total_limit, expires_at, created_at, issued, redeem_policy";
pub(super) const COUPON_COLUMNS: &str =
    "id, batch_id, code, status, issued_to, issued_at, redeemed_by, \
                              redeemed_at, order_id, created_at";

/// A batch and how many coupons it has issued so far.
fn batch_from_row(row: &Row<'_>) -> rusqlite::Result<(Batch, i64)> {
    let discount_type: String = row.get(2)?;
    let redeem_policy: String = row.get(10)?;
    Ok((
        Batch {
            id: row.get(0)?,
            name: row.get(1)?,
            // The CHECK constraint admits only the two known values.
            discount_type: DiscountType::parse(&discount_type).unwrap_or(DiscountType::Fixed),
            amount: row.get(3)?,
            percent: row.get(4)?,
            per_user_limit: row.get(5)?,
            total_limit: row.get(6)?,
            expires_at: from_unix_micros(row.get(7)?),
            // The CHECK constraint admits only the known values.
            redeem_policy: RedeemPolicy::parse(&redeem_policy).unwrap_or_default(),
            created_at: from_unix_micros(row.get(8)?),
        },
        row.get(9)?,
    ))
}

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
    })
}

fn load_batch(conn: &Connection, id: i64) -> Result<Option<(Batch, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM coupon_batches WHERE id = ?1"
        ))?
        .query_row([id], batch_from_row)
        .optional()?)
}

fn create_batch(
    conn: &Connection,
    new: &NewBatch,
    now: OffsetDateTime,
) -> Result<Batch, StoreError> {
    let (batch, _) = conn
        .prepare_cached(&format!(
            "INSERT INTO coupon_batches (name, discount_type, amount, percent, per_user_limit, \
                 total_limit, expires_at, created_at, redeem_policy) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING {BATCH_COLUMNS}"
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
            ],
            batch_from_row,
        )?;
    Ok(batch)
}

fn issue_coupon(
    conn: &Connection,
    request: &IssueRequest,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let Some((batch, issued)) = load_batch(conn, request.batch_id)? else {
        return Ok(Err(Rejection::BatchNotFound));
    };
    let held: i64 = conn
        .prepare_cached(
            "SELECT issued FROM user_batch_counters WHERE batch_id = ?1 AND user_id = ?2",
        )?
        .query_row(params![batch.id, request.user_id], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    if let Err(rejection) = decide_issue(&batch, issued, held, now) {
        return Ok(Err(rejection));
    }

    let mut insert = conn.prepare_cached(
        "INSERT INTO coupons (batch_id, code, status, issued_to, issued_at, created_at, \
             updated_at) \
         VALUES (?1, ?2, 'issued', ?3, ?4, ?4, ?4) ON CONFLICT (code) DO NOTHING RETURNING id",
    )?;
    let mut coupon = None;
    for _ in 0..MAX_CODE_ATTEMPTS {
        let code = generate_code();
        let id: Option<i64> = insert
            .query_row(
                params![batch.id, code, request.user_id, to_unix_micros(now)],
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

fn redeem_coupon(
    conn: &Connection,
    request: &RedeemRequest,
    now: OffsetDateTime,
) -> Result<Result<Coupon, Rejection>, StoreError> {
    let coupon = conn
        .prepare_cached(&format!(
            "SELECT {COUPON_COLUMNS} FROM coupons WHERE code = ?1"
        ))?
        .query_row([&request.code], coupon_from_row)
        .optional()?;
    let Some(mut coupon) = coupon else {
        return Ok(Err(Rejection::CouponNotFound));
    };
    let (batch, _) = load_batch(conn, coupon.batch_id)?
        .ok_or(StoreError::Internal("coupon without its batch"))?;
    if let Err(rejection) = check_redeemable(&coupon, &batch, &request.user_id, now) {
        return Ok(Err(rejection));
    }
    coupon.redeem(request, now);
    conn.prepare_cached(
        "UPDATE coupons SET status = ?2, redeemed_by = ?3, redeemed_at = ?4, order_id = ?5, \
             updated_at = ?4 WHERE id = ?1",
    )?
    .execute(params![
        coupon.id,
        coupon.status.as_str(),
        coupon.redeemed_by,
        to_unix_micros(now),
        coupon.order_id,
    ])?;
    Ok(Ok(coupon))
}
