use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::{Authorized, BatchAccess, CouponAccess, ReadAccess};
use super::error::ApiError;
use super::extract::{IdempotencyKey, JsonBody};
use super::render::{is_replay, CouponList, CouponView};
use super::{write_once, AppState};
use crate::domain::{batch, coupon};
use crate::idempotency::fingerprint;
use crate::storage::Command;

pub const BATCHES_PATH: &str = "/v1/coupon-batches/";
pub const ISSUE_PATH: &str = "/v1/coupons/issue/";
pub const REDEEM_PATH: &str = "/v1/coupons/redeem/";
pub const LIST_PATH: &str = "/v1/coupons/";

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
