//! Coupon routes: the seed's issue, redeem and list, and the lifecycle around them.

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{Authorized, CouponAccess, ReadAccess};
use super::error::ApiError;
use super::extract::{IdempotencyKey, JsonBody};
use super::openapi::{
    CancelBody, ErrorEnvelope, IdempotencyKeyHeader, IssueBody, RedeemBody, UnredeemBody,
    ValidateBody,
};
use super::render::{
    is_replay, next_cursor, rejection_status, CouponDetail, CouponList, CouponView, EventList,
    EventView, RedeemView, ValidView,
};
use super::{query_pairs, write_once, AppState};
use crate::domain::code::{code_to_look_up, MAX_CODE_LENGTH};
use crate::domain::coupon::{self, check_redeemable, history, Query};
use crate::http::error::envelope_bytes;
use crate::idempotency::fingerprint;
use crate::keys::Caller;
use crate::storage::Command;

/// Issue a coupon of a batch to a user.
#[utoipa::path(
    post, path = "/v1/coupons/issue/", tag = "coupons",
    security(("api_key" = [])), params(IdempotencyKeyHeader),
    request_body(content = IssueBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The new coupon.", body = CouponView),
        (status = 404, description = "`BATCH_NOT_FOUND`.", body = ErrorEnvelope),
        (status = 409, description = "In this order: `BATCH_INACTIVE`, `BATCH_NOT_STARTED`, `BATCH_EXPIRED`, `PER_USER_LIMIT_REACHED`, `BATCH_LIMIT_REACHED`.", body = ErrorEnvelope),
    ),
)]
pub async fn issue_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_issue(&body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    write_once(&state, &caller, key, fingerprint, Command::Issue(request)).await
}

/// Redeem a coupon for an order.
#[utoipa::path(
    post, path = "/v1/coupons/redeem/", tag = "coupons",
    security(("api_key" = [])), params(IdempotencyKeyHeader),
    request_body(content = RedeemBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The coupon, now `redeemed`; with `order_amount` and `discount_amount` when an `order_amount` was given.", body = RedeemView),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope),
        (status = 409, description = "In this order: `BATCH_INACTIVE`, `BATCH_NOT_STARTED`, `COUPON_EXPIRED`, `COUPON_CANCELLED`, `COUPON_ALREADY_REDEEMED`, `COUPON_OWNERSHIP_MISMATCH`, `MIN_ORDER_AMOUNT_NOT_MET`.", body = ErrorEnvelope),
        (status = 429, description = "`RATE_LIMITED`: too many `COUPON_NOT_FOUND` answers for this key and user recently.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds until the window ends"))),
    ),
)]
pub async fn redeem_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_redeem(&body).map_err(ApiError::validation)?;
    let user_id = request.user_id.clone();
    throttled(&state, &caller, &user_id)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    let response = write_once(&state, &caller, key, fingerprint, Command::Redeem(request)).await?;
    // Only a fresh answer counts: replaying a stored one tells a guesser nothing new.
    if response.status() == StatusCode::NOT_FOUND && !is_replay(&response) {
        state.throttle.record_miss(caller.key_id, &user_id);
    }
    Ok(response)
}

fn throttled(state: &AppState, caller: &Caller, user_id: &str) -> Result<(), ApiError> {
    state
        .throttle
        .check(caller.key_id, user_id)
        .map_err(ApiError::rate_limited)
}

/// Would redeem succeed now? A dry run: nothing is written and no `Idempotency-Key` is
/// needed; a refusal is the one redeem would give.
#[utoipa::path(
    post, path = "/v1/coupons/validate/", tag = "coupons",
    security(("api_key" = [])),
    request_body(content = ValidateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Redeem would succeed; the discount it would give.", body = ValidView),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope),
        (status = 409, description = "What redeem would answer: `BATCH_INACTIVE`, `BATCH_NOT_STARTED`, `COUPON_EXPIRED`, `COUPON_CANCELLED`, `COUPON_ALREADY_REDEEMED`, `COUPON_OWNERSHIP_MISMATCH`, `MIN_ORDER_AMOUNT_NOT_MET`.", body = ErrorEnvelope),
        (status = 429, description = "`RATE_LIMITED`, as for redeem.", body = ErrorEnvelope,
            headers(("Retry-After" = u32, description = "seconds until the window ends"))),
    ),
)]
pub async fn validate_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_validate(&body).map_err(ApiError::validation)?;
    throttled(&state, &caller, &request.user_id)?;
    let now = crate::domain::now();
    let Some(found) = state.store.find_coupon(&request.code).await? else {
        state.throttle.record_miss(caller.key_id, &request.user_id);
        return Ok(rejection_response(crate::domain::Rejection::CouponNotFound));
    };
    match check_redeemable(
        &found.coupon,
        &found.batch,
        &request.user_id,
        request.order_amount,
        now,
    ) {
        Ok(discount_amount) => Ok(Json(ValidView {
            valid: true,
            discount_amount,
            coupon: CouponDetail::new(&found.coupon, now),
        })
        .into_response()),
        Err(rejection) => Ok(rejection_response(rejection)),
    }
}

/// The envelope a write would store for `rejection`, answered directly.
fn rejection_response(rejection: crate::domain::Rejection) -> Response {
    (
        rejection_status(rejection),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        envelope_bytes(rejection.code(), &rejection.to_string(), None),
    )
        .into_response()
}

/// Cancel a coupon: it can no longer be redeemed.
#[utoipa::path(
    post, path = "/v1/coupons/cancel/", tag = "coupons",
    security(("api_key" = [])), params(IdempotencyKeyHeader),
    request_body(content = CancelBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The coupon, now `cancelled`.", body = CouponDetail),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope),
        (status = 409, description = "`COUPON_ALREADY_REDEEMED` (unredeem it first), `COUPON_CANCELLED`.", body = ErrorEnvelope),
    ),
)]
pub async fn cancel_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_cancel(&body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    write_once(&state, &caller, key, fingerprint, Command::Cancel(request)).await
}

/// Give a redemption back (the order was refunded or cancelled): the coupon can be
/// used again and the batch's counters are restored.
#[utoipa::path(
    post, path = "/v1/coupons/unredeem/", tag = "coupons",
    security(("api_key" = [])), params(IdempotencyKeyHeader),
    request_body(content = UnredeemBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The coupon, `issued` again.", body = CouponDetail),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope),
        (status = 409, description = "`COUPON_NOT_REDEEMED`, `ORDER_MISMATCH` (`order_id` is not the order it was redeemed for).", body = ErrorEnvelope),
    ),
)]
pub async fn unredeem_coupon(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<CouponAccess>,
    IdempotencyKey(key): IdempotencyKey,
    uri: Uri,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request = coupon::parse_unredeem(&body).map_err(ApiError::validation)?;
    let fingerprint = fingerprint("POST", uri.path(), &body);
    write_once(
        &state,
        &caller,
        key,
        fingerprint,
        Command::Unredeem(request),
    )
    .await
}

/// List coupons, newest first.
#[utoipa::path(
    get, path = "/v1/coupons/", tag = "coupons",
    security(("api_key" = [])),
    params(
        ("user_id" = Option<String>, Query, description = "Coupons issued to or redeemed by this user."),
        ("status" = Option<String>, Query, description = "`issued`, `redeemed`, `cancelled` or `expired`."),
        ("batch_id" = Option<i64>, Query, minimum = 1, description = "Coupons of this batch."),
        ("created_after" = Option<String>, Query, description = "RFC 3339; created at or after."),
        ("created_before" = Option<String>, Query, description = "RFC 3339; created before."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200; 50 by default (the seed's page)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of coupons.", body = CouponList),
    ),
)]
pub async fn list_coupons(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref())?;
    let filter = coupon::parse_list_filter(&Query::new(&pairs)).map_err(ApiError::validation)?;
    let coupons = state.store.list_coupons(&filter).await?;
    let next = next_cursor(coupons.last().map(|c| c.id), coupons.len(), filter.limit);
    let items = coupons
        .iter()
        .map(|c| CouponView::new(c, filter.now))
        .collect();
    Ok(Json(CouponList {
        items,
        next_cursor: next,
    })
    .into_response())
}

fn code_param(code: &str) -> Result<String, ApiError> {
    let Some(code) = code_to_look_up(code) else {
        let mut errors = crate::domain::FieldErrors::default();
        errors.add(
            "code",
            format!("must be 1 to {MAX_CODE_LENGTH} characters, none a control character"),
        );
        return Err(ApiError::validation(errors));
    };
    Ok(code)
}

/// One coupon, with everything coupond knows about it.
#[utoipa::path(
    get, path = "/v1/coupons/{code}/", tag = "coupons",
    security(("api_key" = [])),
    params(("code" = String, Path, description = "The coupon's code, in any case.")),
    responses(
        (status = 200, description = "The coupon.", body = CouponDetail),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope),
    ),
)]
pub async fn get_coupon(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let code = code_param(&code)?;
    let Some(found) = state.store.find_coupon(&code).await? else {
        return Ok(rejection_response(crate::domain::Rejection::CouponNotFound));
    };
    let now = crate::domain::now();
    Ok(Json(CouponDetail::new(&found.coupon, now)).into_response())
}

/// A coupon's history: every change, oldest first, with the API key that made it.
#[utoipa::path(
    get, path = "/v1/coupons/{code}/events/", tag = "coupons",
    security(("api_key" = [])),
    params(("code" = String, Path, description = "The coupon's code, in any case.")),
    responses(
        (status = 200, description = "Its events: `issued` or `generated`, then `redeemed`, `unredeemed`, `cancelled`; `expired` last if its batch expired while it was unused.", body = EventList),
        (status = 404, description = "`COUPON_NOT_FOUND`.", body = ErrorEnvelope),
    ),
)]
pub async fn coupon_events(
    State(state): State<AppState>,
    Authorized(_caller, _): Authorized<ReadAccess>,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let code = code_param(&code)?;
    let Some(found) = state.store.find_coupon(&code).await? else {
        return Ok(rejection_response(crate::domain::Rejection::CouponNotFound));
    };
    let stored = state.store.coupon_events(found.coupon.id).await?;
    let events = history(
        &found.coupon,
        found.created_by,
        stored,
        crate::domain::now(),
    );
    Ok(Json(EventList {
        items: events.iter().map(EventView::from).collect(),
    })
    .into_response())
}
