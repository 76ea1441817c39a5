//! The wire shapes of batches and coupons (the seed's serializers) and the responses
//! that writes store for replay.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::envelope_bytes;
use crate::domain::{Batch, Coupon, Rejection};
use crate::storage::{CommandResult, Effect, StoredResponse};

/// A batch: the seed's fields, then `redeem_policy` and `created_at`.
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
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl<'a> From<&'a Batch> for BatchView<'a> {
    fn from(b: &'a Batch) -> Self {
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
            created_at: b.created_at,
        }
    }
}

/// A coupon, as the seed's serializer shows it.
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

impl<'a> From<&'a Coupon> for CouponView<'a> {
    fn from(c: &'a Coupon) -> Self {
        CouponView {
            id: c.id,
            code: &c.code,
            status: c.status.as_str(),
            issued_to: c.issued_to.as_deref(),
            issued_at: c.issued_at,
            redeemed_by: c.redeemed_by.as_deref(),
            redeemed_at: c.redeemed_at,
            order_id: c.order_id.as_deref(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CouponList<'a> {
    pub items: Vec<CouponView<'a>>,
}

/// A write's result as the response stored with it: a `Render` for the store.
pub fn render_command_result(result: &CommandResult) -> StoredResponse {
    match result {
        Ok(Effect::BatchCreated(batch)) => json(StatusCode::CREATED, &BatchView::from(batch)),
        Ok(Effect::Issued(coupon)) | Ok(Effect::Redeemed(coupon)) => {
            json(StatusCode::OK, &CouponView::from(coupon))
        }
        Err(rejection) => render_rejection(*rejection),
    }
}

fn render_rejection(rejection: Rejection) -> StoredResponse {
    let status = if rejection.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::CONFLICT
    };
    StoredResponse {
        status: status.as_u16(),
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
