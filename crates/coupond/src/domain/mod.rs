//! The coupon rules: plain types and functions, no database, no HTTP.

pub mod apikey;
pub mod batch;
pub mod code;
pub mod coupon;
pub mod cursor;
pub mod discount;
pub mod input;
pub mod job;
pub mod rejection;

pub use apikey::{Access, ApiKey, NewApiKey, Scope};
pub use batch::{Batch, BatchStats, DiscountType, NewBatch, RedeemPolicy};
pub use code::{Alphabet, CodeFormat};
pub use coupon::{
    CancelRequest, Coupon, CouponEvent, CouponStatus, EventKind, IssueRequest, ListFilter,
    RedeemRequest, UnredeemRequest, ValidateRequest,
};
pub use discount::Discount;
pub use input::FieldErrors;
pub use job::{CodeJob, JobStatus, NewCodeJob};
pub use rejection::Rejection;

use time::OffsetDateTime;

/// The current time at the precision both databases store (microseconds), so that a
/// value written and read back compares equal to the one we computed.
pub fn now() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let micros = t.microsecond();
    t.replace_nanosecond(micros * 1_000).unwrap_or(t)
}

/// Microseconds since the Unix epoch, the form SQLite stores timestamps in.
pub fn to_unix_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

pub fn from_unix_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
