//! The OpenAPI 3.1 description, generated from the handlers' annotations, and the
//! shapes it names that only exist for documentation (the handlers read bodies field
//! by field, to accept what the seed accepts and to report every bad field at once).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::render::{BatchView, CouponList, CouponView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "coupond",
        description = "Coupon batches, issue, redeem and list; every write exactly once per \
                       `Idempotency-Key`.\n\n\
                       Every `/v1/` request needs `Authorization: Bearer <API key>`. Every \
                       POST needs an `Idempotency-Key` (1 to 255 visible ASCII characters): \
                       the same key with the same request replays the stored answer (same \
                       status and bytes, plus `Idempotent-Replayed: true`); with a different \
                       request it is `409 IDEMPOTENCY_KEY_BODY_MISMATCH`. Errors are always \
                       `{\"error\": {\"code\", \"message\"}}`; the codes each route can answer \
                       are listed with its responses.",
        license(name = "MIT"),
    ),
    paths(
        super::coupons::create_batch,
        super::coupons::issue_coupon,
        super::coupons::redeem_coupon,
        super::coupons::list_coupons,
        super::healthz,
        super::readyz,
    ),
    components(schemas(
        BatchView,
        CouponView,
        CouponList,
        NewBatchBody,
        IssueBody,
        RedeemBody,
        ErrorEnvelope,
        ErrorBody,
        Health,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "batches", description = "Coupon batches (admin keys)"),
        (name = "coupons", description = "Issuing, redeeming and listing coupons"),
        (name = "operations", description = "Health and readiness (no key needed)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cpd_…")
                    .description(Some(
                        "An API key. Scopes: `admin` (everything), `service` (issue, redeem, \
                         list), `read` (GET only).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The spec as served at `/openapi.json`.
pub fn spec_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

/// The header every POST needs.
#[derive(Serialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1 to 255 visible ASCII characters. The same key with the same request replays
    /// the stored answer; keys belong to the API key that used them and expire after
    /// 24 hours (by default).
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    idempotency_key: String,
}

/// `POST /v1/coupon-batches/`.
#[derive(Serialize, ToSchema)]
pub struct NewBatchBody {
    /// At most 80 characters.
    #[schema(min_length = 1, max_length = 80, example = "Welcome 10%")]
    name: String,
    #[schema(example = "percent")]
    discount_type: DiscountTypeName,
    /// Required for `fixed`: the amount off, in minor units.
    #[schema(minimum = 1)]
    amount: Option<i64>,
    /// Required for `percent`: 1 to 100.
    #[schema(minimum = 1, maximum = 100, example = 10)]
    percent: Option<i64>,
    /// Coupons one user may hold from this batch; defaults to 1.
    #[schema(minimum = 1)]
    per_user_limit: Option<i64>,
    /// Coupons the batch hands out at most.
    #[schema(minimum = 1, example = 1000)]
    total_limit: i64,
    /// RFC 3339.
    #[schema(format = DateTime, example = "2030-01-01T00:00:00Z")]
    expires_at: String,
    /// `anyone` (default) or `owner_only`: only the user a coupon was issued to may
    /// redeem it.
    redeem_policy: Option<RedeemPolicyName>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscountTypeName {
    Fixed,
    Percent,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponStatusName {
    Issued,
    Redeemed,
    Cancelled,
    Expired,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedeemPolicyName {
    Anyone,
    OwnerOnly,
}

/// `POST /v1/coupons/issue/`. `batch_id` may also be a string of digits, `user_id` a
/// number (taken as its decimal string).
#[derive(Serialize, ToSchema)]
pub struct IssueBody {
    #[schema(minimum = 1, example = 1)]
    batch_id: i64,
    #[schema(min_length = 1, max_length = 64, example = "u1")]
    user_id: String,
}

/// `POST /v1/coupons/redeem/`. `order_id` and `user_id` may also be numbers.
#[derive(Serialize, ToSchema)]
pub struct RedeemBody {
    /// Matched in any case.
    #[schema(min_length = 1, max_length = 64, example = "ABCDE12345")]
    code: String,
    #[schema(min_length = 1, max_length = 64, example = "ord_1")]
    order_id: String,
    #[schema(min_length = 1, max_length = 64, example = "u1")]
    user_id: String,
}

/// Every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, UPPER_SNAKE; see each response for the codes it can carry.
    #[schema(example = "VALIDATION")]
    code: String,
    message: String,
    /// For `VALIDATION`: each bad field and what is wrong with it.
    fields: Option<std::collections::BTreeMap<String, String>>,
}

/// `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: String,
    /// `/readyz`: the backend, when ready.
    database: Option<String>,
    /// `/readyz`: why not, when not ready.
    reason: Option<String>,
}
