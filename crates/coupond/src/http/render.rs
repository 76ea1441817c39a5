//! The wire shapes of batches, coupons and jobs (the seed's serializers for the seed's
//! endpoints, extended ones for the rest), and the responses writes store for replay.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::envelope_bytes;
use crate::domain::{cursor, Batch, BatchStats, CodeJob, Coupon, CouponEvent, Rejection};
use crate::storage::{CommandResult, Effect, StoredResponse};

/// A batch's counters. `issued` counts every coupon it ever handed out, redeemed,
/// cancelled and pre-generated ones included; `remaining` is what it can still hand out.
#[derive(Serialize, ToSchema)]
pub struct StatsView {
    pub issued: i64,
    pub redeemed: i64,
    pub cancelled: i64,
    pub remaining: i64,
}

/// A batch: the seed's fields first, then coupond's.
#[derive(Serialize, ToSchema)]
pub struct BatchView<'a> {
    pub id: i64,
    pub name: &'a str,
    #[schema(value_type = super::openapi::DiscountTypeName)]
    pub discount_type: &'static str,
    pub amount: Option<i64>,
    pub percent: Option<i64>,
    pub per_user_limit: i64,
    pub total_limit: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[schema(value_type = super::openapi::RedeemPolicyName)]
    pub redeem_policy: &'static str,
    #[serde(with = "time::serde::rfc3339::option")]
    pub starts_at: Option<OffsetDateTime>,
    pub min_order_amount: Option<i64>,
    pub max_discount: Option<i64>,
    pub currency: Option<&'a str>,
    pub active: bool,
    pub code_length: usize,
    pub code_prefix: &'a str,
    #[schema(value_type = super::openapi::AlphabetName)]
    pub code_alphabet: &'static str,
    pub stats: StatsView,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl<'a> BatchView<'a> {
    pub fn new(b: &'a Batch, stats: BatchStats) -> Self {
        BatchView {
            id: b.id,
            name: &b.name,
            discount_type: b.discount_type.as_str(),
            amount: b.amount,
            percent: b.percent,
            per_user_limit: b.per_user_limit,
            total_limit: b.total_limit,
            expires_at: b.expires_at,
            redeem_policy: b.redeem_policy.as_str(),
            starts_at: b.starts_at,
            min_order_amount: b.min_order_amount,
            max_discount: b.max_discount,
            currency: b.currency.as_deref(),
            active: b.active,
            code_length: b.code_format.length,
            code_prefix: &b.code_format.prefix,
            code_alphabet: b.code_format.alphabet.as_str(),
            stats: StatsView {
                issued: stats.issued,
                redeemed: stats.redeemed,
                cancelled: stats.cancelled,
                remaining: stats.remaining(b.total_limit),
            },
            created_at: b.created_at,
        }
    }
}

/// A coupon, exactly as the seed's serializer shows it.
#[derive(Serialize, ToSchema)]
pub struct CouponView<'a> {
    pub id: i64,
    pub code: &'a str,
    #[schema(value_type = super::openapi::CouponStatusName)]
    pub status: &'static str,
    pub issued_to: Option<&'a str>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub issued_at: Option<OffsetDateTime>,
    pub redeemed_by: Option<&'a str>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub redeemed_at: Option<OffsetDateTime>,
    pub order_id: Option<&'a str>,
}

impl<'a> CouponView<'a> {
    /// As seen at `now` (a coupon whose batch expired unused reads `expired`).
    pub fn new(c: &'a Coupon, now: OffsetDateTime) -> Self {
        CouponView {
            id: c.id,
            code: &c.code,
            status: c.status_at(now).as_str(),
            issued_to: c.issued_to.as_deref(),
            issued_at: c.issued_at,
            redeemed_by: c.redeemed_by.as_deref(),
            redeemed_at: c.redeemed_at,
            order_id: c.order_id.as_deref(),
        }
    }
}

/// A redeemed coupon: the seed's fields, and when the request gave an `order_amount`,
/// the amount and the discount it earned.
#[derive(Serialize, ToSchema)]
pub struct RedeemView<'a> {
    #[serde(flatten)]
    pub coupon: CouponView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_amount: Option<i64>,
    /// Present with `order_amount`; `null` only if a percentage could not be computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount_amount: Option<Option<i64>>,
}

impl<'a> RedeemView<'a> {
    pub fn new(c: &'a Coupon, now: OffsetDateTime) -> Self {
        RedeemView {
            coupon: CouponView::new(c, now),
            order_amount: c.order_amount,
            discount_amount: c.order_amount.map(|_| c.discount_amount),
        }
    }
}

/// A coupon with everything coupond knows about it.
#[derive(Serialize, ToSchema)]
pub struct CouponDetail<'a> {
    #[serde(flatten)]
    pub coupon: CouponView<'a>,
    pub batch_id: i64,
    pub order_amount: Option<i64>,
    pub discount_amount: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl<'a> CouponDetail<'a> {
    pub fn new(c: &'a Coupon, now: OffsetDateTime) -> Self {
        CouponDetail {
            coupon: CouponView::new(c, now),
            batch_id: c.batch_id,
            order_amount: c.order_amount,
            discount_amount: c.discount_amount,
            created_at: c.created_at,
        }
    }
}

/// A page of coupons, newest first: `{"items": [...]}` as the seed answers, with
/// `next_cursor` when there may be more (pass it as `cursor` for the next page).
#[derive(Serialize, ToSchema)]
pub struct CouponList<'a> {
    pub items: Vec<CouponView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A page of batches, newest first, with `next_cursor` when there may be more.
#[derive(Serialize, ToSchema)]
pub struct BatchList<'a> {
    pub items: Vec<BatchView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The cursor after a page, if the page was full (there may be more).
pub fn next_cursor(last_id: Option<i64>, len: usize, limit: i64) -> Option<String> {
    let full = i64::try_from(len).is_ok_and(|n| n >= limit);
    last_id.filter(|_| full).map(cursor::encode)
}

/// A bulk-code job and how far it got.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    pub batch_id: i64,
    pub requested: i64,
    pub generated: i64,
    #[schema(value_type = super::openapi::JobStatusName)]
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl From<&CodeJob> for JobView {
    fn from(j: &CodeJob) -> Self {
        JobView {
            id: j.id,
            batch_id: j.batch_id,
            requested: j.requested,
            generated: j.generated,
            status: j.status.as_str(),
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// One change in a coupon's life.
#[derive(Serialize, ToSchema)]
pub struct EventView<'a> {
    #[schema(value_type = super::openapi::EventKindName)]
    pub kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The API key that made the change (none for an expiry).
    pub api_key_id: Option<i64>,
    pub user_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub reason: Option<&'a str>,
}

impl<'a> From<&'a CouponEvent> for EventView<'a> {
    fn from(e: &'a CouponEvent) -> Self {
        EventView {
            kind: e.kind.as_str(),
            at: e.at,
            api_key_id: e.api_key_id,
            user_id: e.user_id.as_deref(),
            order_id: e.order_id.as_deref(),
            reason: e.reason.as_deref(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventList<'a> {
    pub items: Vec<EventView<'a>>,
}

/// The answer of `/v1/coupons/validate/` when redeem would succeed.
#[derive(Serialize, ToSchema)]
pub struct ValidView<'a> {
    pub valid: bool,
    /// On the given `order_amount`; without one, a fixed discount's amount, or `null`
    /// for a percentage.
    pub discount_amount: Option<i64>,
    pub coupon: CouponDetail<'a>,
}

/// A write's result as the response stored with it: a `Render` for the store.
pub fn render_command_result(result: &CommandResult, now: OffsetDateTime) -> StoredResponse {
    match result {
        Ok(Effect::BatchCreated(batch)) => json(
            StatusCode::CREATED,
            &BatchView::new(batch, BatchStats::default()),
        ),
        Ok(Effect::Issued(coupon)) => json(StatusCode::OK, &CouponView::new(coupon, now)),
        Ok(Effect::Redeemed(coupon)) => json(StatusCode::OK, &RedeemView::new(coupon, now)),
        Ok(Effect::Cancelled(coupon)) | Ok(Effect::Unredeemed(coupon)) => {
            json(StatusCode::OK, &CouponDetail::new(coupon, now))
        }
        Ok(Effect::BatchUpdated(batch, stats)) => {
            json(StatusCode::OK, &BatchView::new(batch, *stats))
        }
        Ok(Effect::CodeJobStarted(job)) => json(StatusCode::ACCEPTED, &JobView::from(job)),
        Err(rejection) => render_rejection(*rejection),
    }
}

pub fn rejection_status(rejection: Rejection) -> StatusCode {
    if rejection.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::CONFLICT
    }
}

fn render_rejection(rejection: Rejection) -> StoredResponse {
    StoredResponse {
        status: rejection_status(rejection).as_u16(),
        body: envelope_bytes(rejection.code(), &rejection.to_string(), None),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> StoredResponse {
    match serde_json::to_vec(value) {
        Ok(body) => StoredResponse {
            status: status.as_u16(),
            body,
        },
        // Our own view types always serialise; if one ever did not, store a 500 body
        // rather than panic inside a transaction.
        Err(_) => StoredResponse {
            status: 500,
            body: envelope_bytes("INTERNAL", "response could not be encoded", None),
        },
    }
}

/// The `error.code` of a stored error body, for counting refusals by code.
pub fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
    }
    serde_json::from_slice::<Envelope>(body)
        .ok()
        .map(|e| e.error.code)
}

pub const REPLAYED_HEADER: &str = "idempotent-replayed";

pub fn is_replay(response: &Response) -> bool {
    response.headers().contains_key(REPLAYED_HEADER)
}

/// A stored response as sent: the same status and body bytes, marked when replayed.
pub fn stored_response(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        stored.body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}
