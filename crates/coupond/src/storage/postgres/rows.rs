//! Rows as PostgreSQL returns them, and the column lists that produce them.

use sqlx::FromRow;
use time::OffsetDateTime;

use crate::domain::code::{Alphabet, CodeFormat};
use crate::domain::{
    Batch, BatchStats, CodeJob, Coupon, CouponEvent, CouponStatus, DiscountType, EventKind,
    JobStatus, RedeemPolicy,
};
use crate::storage::{IdempotencyRecord, StoredResponse};

/// A batch's own columns (table alias `b`).
pub const BATCH_COLUMNS: &str = "b.id, b.name, b.discount_type, b.amount, b.percent, \
    b.per_user_limit, b.total_limit, b.expires_at, b.redeem_policy, b.created_at, b.starts_at, \
    b.min_order_amount, b.max_discount, b.currency, b.active, b.code_length, b.code_prefix, \
    b.code_alphabet";

/// A batch's counters, summed over their shards (a handful of rows each).
pub const BATCH_STATS: &str = "\
    (SELECT COALESCE(SUM(s.issued), 0)::BIGINT FROM batch_counter_shards s \
      WHERE s.batch_id = b.id) AS issued, \
    (SELECT COALESCE(SUM(s.redeemed), 0)::BIGINT FROM batch_status_counters s \
      WHERE s.batch_id = b.id) AS redeemed, \
    (SELECT COALESCE(SUM(s.cancelled), 0)::BIGINT FROM batch_status_counters s \
      WHERE s.batch_id = b.id) AS cancelled";

#[derive(FromRow)]
pub struct BatchRow {
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
    starts_at: Option<OffsetDateTime>,
    min_order_amount: Option<i64>,
    max_discount: Option<i64>,
    currency: Option<String>,
    active: bool,
    code_length: i32,
    code_prefix: String,
    code_alphabet: String,
}

impl From<BatchRow> for Batch {
    fn from(row: BatchRow) -> Batch {
        Batch {
            id: row.id,
            name: row.name,
            // The CHECK constraints admit only the known values.
            discount_type: DiscountType::parse(&row.discount_type).unwrap_or(DiscountType::Fixed),
            amount: row.amount,
            percent: row.percent,
            per_user_limit: row.per_user_limit,
            total_limit: row.total_limit,
            expires_at: row.expires_at,
            redeem_policy: RedeemPolicy::parse(&row.redeem_policy).unwrap_or_default(),
            created_at: row.created_at,
            starts_at: row.starts_at,
            min_order_amount: row.min_order_amount,
            max_discount: row.max_discount,
            currency: row.currency,
            active: row.active,
            code_format: CodeFormat {
                length: usize::try_from(row.code_length).unwrap_or(10),
                prefix: row.code_prefix,
                alphabet: Alphabet::parse(&row.code_alphabet).unwrap_or_default(),
            },
        }
    }
}

#[derive(FromRow)]
pub struct BatchWithStats {
    #[sqlx(flatten)]
    batch: BatchRow,
    issued: i64,
    redeemed: i64,
    cancelled: i64,
}

impl From<BatchWithStats> for (Batch, BatchStats) {
    fn from(row: BatchWithStats) -> (Batch, BatchStats) {
        (
            row.batch.into(),
            BatchStats {
                issued: row.issued,
                redeemed: row.redeemed,
                cancelled: row.cancelled,
            },
        )
    }
}

/// A coupon's columns with its batch's expiry (aliases `c` and `b`).
pub const COUPON_COLUMNS: &str = "c.id, c.batch_id, c.code, c.status, c.issued_to, c.issued_at, \
    c.redeemed_by, c.redeemed_at, c.order_id, c.created_at, c.order_amount, c.discount_amount, \
    b.expires_at AS batch_expires_at, c.created_by";

#[derive(FromRow)]
pub struct CouponRow {
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
    order_amount: Option<i64>,
    discount_amount: Option<i64>,
    batch_expires_at: Option<OffsetDateTime>,
    pub created_by: Option<i64>,
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
            order_amount: row.order_amount,
            discount_amount: row.discount_amount,
            batch_expires_at: row.batch_expires_at,
        }
    }
}

#[derive(FromRow)]
pub struct RecordRow {
    fingerprint: String,
    response_status: Option<i16>,
    response_body: Option<Vec<u8>>,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl RecordRow {
    pub fn into_record(self) -> Option<IdempotencyRecord> {
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

pub const JOB_COLUMNS: &str = "id, batch_id, requested, generated, status, created_at, finished_at";

#[derive(FromRow)]
pub struct JobRow {
    id: i64,
    batch_id: i64,
    requested: i64,
    generated: i64,
    status: String,
    created_at: OffsetDateTime,
    finished_at: Option<OffsetDateTime>,
}

impl From<JobRow> for CodeJob {
    fn from(row: JobRow) -> CodeJob {
        CodeJob {
            id: row.id,
            batch_id: row.batch_id,
            requested: row.requested,
            generated: row.generated,
            status: JobStatus::parse(&row.status).unwrap_or(JobStatus::Running),
            created_at: row.created_at,
            finished_at: row.finished_at,
        }
    }
}

#[derive(FromRow)]
pub struct EventRow {
    kind: String,
    at: OffsetDateTime,
    api_key_id: Option<i64>,
    user_id: Option<String>,
    order_id: Option<String>,
    reason: Option<String>,
}

impl From<EventRow> for CouponEvent {
    fn from(row: EventRow) -> CouponEvent {
        CouponEvent {
            // The CHECK constraint admits only the kinds that are stored.
            kind: EventKind::parse(&row.kind).unwrap_or(EventKind::Redeemed),
            at: row.at,
            api_key_id: row.api_key_id,
            user_id: row.user_id,
            order_id: row.order_id,
            reason: row.reason,
        }
    }
}
