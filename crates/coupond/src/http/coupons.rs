use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{Authorized, BatchAccess, CouponAccess, ReadAccess};
use super::error::ApiError;
use super::extract::{IdempotencyKey, JsonBody};
use super::openapi::{ErrorEnvelope, IdempotencyKeyHeader, IssueBody, NewBatchBody, RedeemBody};
use super::render::{is_replay, BatchView, CouponList, CouponView};
use super::{write_once, AppState};
use crate::domain::{batch, coupon};
use crate::idempotency::fingerprint;
use crate::storage::Command;

pub const BATCHES_PATH: &str = "/v1/coupon-batches/";
pub const ISSUE_PATH: &str = "/v1/coupons/issue/";
pub const REDEEM_PATH: &str = "/v1/coupons/redeem/";
pub const LIST_PATH: &str = "/v1/coupons/";

/// Create a coupon batch.
#[utoipa::path(
    post,
    path = "/v1/coupon-batches/",
    tag = "batches",
    security(("api_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content = NewBatchBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The batch.", body = BatchView, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key."))),
        (status = 400, description = "`VALIDATION` (with `fields`), `IDEMPOTENCY_KEY_REQUIRED`, `IDEMPOTENCY_KEY_INVALID`.", body = ErrorEnvelope),
        (status = 409, description = "`IDEMPOTENCY_KEY_BODY_MISMATCH`, `REQUEST_IN_PROGRESS` (with `Retry-After`).", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds, for `REQUEST_IN_PROGRESS`"))),
        (status = 401, description = "`UNAUTHENTICATED`: no API key, or an unknown or revoked one.", body = ErrorEnvelope,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"coupond\"`"))),
        (status = 403, description = "`FORBIDDEN`: the key's scope does not cover this route.", body = ErrorEnvelope),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is over the limit (64 KiB).", body = ErrorEnvelope),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`.", body = ErrorEnvelope),
        (status = 503, description = "`DATABASE_UNAVAILABLE`, `DATABASE_BUSY`, `REQUEST_TIMEOUT`: nothing was stored (a timed-out write may still finish once); retry with the same key.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds"))),
    ),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<BatchAccess>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let new_batch = batch::parse_new_batch(&body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", BATCHES_PATH, &body);
    write_once(
        &state,
        &caller,
        key,
        fingerprint,
        Command::CreateBatch(new_batch),
    )
    .await
}

/// Issue a coupon of a batch to a user.
#[utoipa::path(
    post,
    path = "/v1/coupons/issue/",
    tag = "coupons",
    security(("api_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content = IssueBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The new coupon.", body = CouponView, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key."))),
        (status = 400, description = "`VALIDATION` (with `fields`), `IDEMPOTENCY_KEY_REQUIRED`, `IDEMPOTENCY_KEY_INVALID`.", body = ErrorEnvelope),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key."))),
        (status = 409, description = "In this order: `BATCH_EXPIRED`, `PER_USER_LIMIT_REACHED`, `BATCH_LIMIT_REACHED`; or `IDEMPOTENCY_KEY_BODY_MISMATCH`, `REQUEST_IN_PROGRESS` (with `Retry-After`).", body = ErrorEnvelope,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` on a stored answer"),
                ("Retry-After" = u32, description = "seconds, for `REQUEST_IN_PROGRESS`"),
            )),
        (status = 401, description = "`UNAUTHENTICATED`: no API key, or an unknown or revoked one.", body = ErrorEnvelope,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"coupond\"`"))),
        (status = 403, description = "`FORBIDDEN`: the key's scope does not cover this route.", body = ErrorEnvelope),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is over the limit (64 KiB).", body = ErrorEnvelope),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`.", body = ErrorEnvelope),
        (status = 503, description = "`DATABASE_UNAVAILABLE`, `DATABASE_BUSY`, `REQUEST_TIMEOUT`: nothing was stored (a timed-out write may still finish once); retry with the same key.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds"))),
    ),
)]
pub async fn issue_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_issue(&body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", ISSUE_PATH, &body);
    write_once(&state, &caller, key, fingerprint, Command::Issue(request)).await
}

/// Redeem a coupon for an order.
#[utoipa::path(
    post,
    path = "/v1/coupons/redeem/",
    tag = "coupons",
    security(("api_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content = RedeemBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The coupon, now `redeemed`.", body = CouponView, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key."))),
        (status = 400, description = "`VALIDATION` (with `fields`), `IDEMPOTENCY_KEY_REQUIRED`, `IDEMPOTENCY_KEY_INVALID`.", body = ErrorEnvelope),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key."))),
        (status = 409, description = "In this order: `COUPON_EXPIRED`, `COUPON_ALREADY_REDEEMED`, `COUPON_OWNERSHIP_MISMATCH`; or `IDEMPOTENCY_KEY_BODY_MISMATCH`, `REQUEST_IN_PROGRESS` (with `Retry-After`).", body = ErrorEnvelope,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` on a stored answer"),
                ("Retry-After" = u32, description = "seconds, for `REQUEST_IN_PROGRESS`"),
            )),
        (status = 429, description = "`RATE_LIMITED`: too many `COUPON_NOT_FOUND` answers for this key and user recently.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds until the window ends"))),
        (status = 401, description = "`UNAUTHENTICATED`: no API key, or an unknown or revoked one.", body = ErrorEnvelope,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"coupond\"`"))),
        (status = 403, description = "`FORBIDDEN`: the key's scope does not cover this route.", body = ErrorEnvelope),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is over the limit (64 KiB).", body = ErrorEnvelope),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`.", body = ErrorEnvelope),
        (status = 503, description = "`DATABASE_UNAVAILABLE`, `DATABASE_BUSY`, `REQUEST_TIMEOUT`: nothing was stored (a timed-out write may still finish once); retry with the same key.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds"))),
    ),
)]
pub async fn redeem_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_redeem(&body).map_err(ApiError::validation)?;
    let user_id = request.user_id.clone();
    state
        .throttle
        .check(caller.key_id, &user_id)
        .map_err(ApiError::rate_limited)?;
    let fingerprint = fingerprint("POST", REDEEM_PATH, &body);
    let response = write_once(&state, &caller, key, fingerprint, Command::Redeem(request)).await?;
    // Only a fresh answer counts: replaying a stored one tells a guesser nothing new.
    if response.status() == StatusCode::NOT_FOUND && !is_replay(&response) {
        state.throttle.record_miss(caller.key_id, &user_id);
    }
    Ok(response)
}

/// List coupons, newest first, at most 50.
#[utoipa::path(
    get,
    path = "/v1/coupons/",
    tag = "coupons",
    security(("api_key" = [])),
    params(
        ("user_id" = Option<String>, Query, description = "Coupons issued to or redeemed by this user."),
        ("status" = Option<String>, Query, description = "`issued`, `redeemed`, `cancelled` or `expired`."),
    ),
    responses(
        (status = 200, description = "The coupons.", body = CouponList),
        (status = 400, description = "`VALIDATION`: an unknown `status`, a bad `user_id`.", body = ErrorEnvelope),
        (status = 401, description = "`UNAUTHENTICATED`: no API key, or an unknown or revoked one.", body = ErrorEnvelope,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"coupond\"`"))),
        (status = 403, description = "`FORBIDDEN`: the key's scope does not cover this route.", body = ErrorEnvelope),
        (status = 503, description = "`DATABASE_UNAVAILABLE`, `REQUEST_TIMEOUT`.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds"))),
    ),
)]
pub async fn list_coupons(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::bad_request("the query string could not be decoded"))?;
    // A repeated parameter counts by its last value, as Django's QueryDict.get does.
    let last = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let filter =
        coupon::parse_list_filter(last("user_id"), last("status")).map_err(ApiError::validation)?;
    let coupons = state.store.list_coupons(&filter).await?;
    let items = coupons.iter().map(CouponView::from).collect();
    Ok(Json(CouponList { items }).into_response())
}
