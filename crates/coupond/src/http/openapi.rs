//! The OpenAPI 3.1 description, generated from the handlers' annotations, and the
//! shapes it names that only exist for documentation (the handlers read bodies field
//! by field, to accept what the seed accepts and to report every bad field at once).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::render::{
    BatchList, BatchView, CouponDetail, CouponList, CouponView, EventList, EventView, JobView,
    RedeemView, StatsView, ValidView,
};

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
        super::batches::create_batch,
        super::batches::list_batches,
        super::batches::get_batch,
        super::batches::activate_batch,
        super::batches::deactivate_batch,
        super::batches::start_code_job,
        super::batches::get_code_job,
        super::batches::export_codes,
        super::coupons::issue_coupon,
        super::coupons::redeem_coupon,
        super::coupons::validate_coupon,
        super::coupons::cancel_coupon,
        super::coupons::unredeem_coupon,
        super::coupons::list_coupons,
        super::coupons::get_coupon,
        super::coupons::coupon_events,
        super::healthz,
        super::readyz,
    ),
    components(schemas(
        BatchView,
        BatchList,
        StatsView,
        CouponView,
        CouponDetail,
        RedeemView,
        CouponList,
        JobView,
        EventView,
        EventList,
        ValidView,
        NewBatchBody,
        IssueBody,
        RedeemBody,
        ValidateBody,
        CancelBody,
        UnredeemBody,
        CodeJobBody,
        ErrorEnvelope,
        ErrorBody,
        Health,
    )),
    modifiers(&BearerAuth, &SharedErrors),
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

/// The errors every route shares, added to each operation so that each lists every
/// code it can answer: authentication and scope on every `/v1/` route; the key, body
/// and idempotency errors on writes; and what the database can answer everywhere.
struct SharedErrors;

impl Modify for SharedErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/v1/");
            let operations = [(false, item.get.as_mut()), (true, item.post.as_mut())];
            for (write, operation) in operations {
                let Some(operation) = operation else {
                    continue;
                };
                let idempotent = operation.parameters.iter().flatten().any(
                    |p| matches!(p, utoipa::openapi::RefOr::T(p) if p.name == "Idempotency-Key"),
                );
                let has_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, codes: &str, headers: &[(&str, &str)]| {
                    add_error(responses, status, codes, headers);
                };
                if api {
                    add(
                        "400",
                        "`VALIDATION` (with `fields` naming each bad field and why)",
                        &[],
                    );
                    add(
                        "401",
                        "`UNAUTHENTICATED`: no API key, or an unknown or revoked one",
                        &[("WWW-Authenticate", "`Bearer realm=\"coupond\"`")],
                    );
                    // Every scope may read; only a write can be out of a key's scope.
                    if write {
                        add(
                            "403",
                            "`FORBIDDEN`: the key's scope does not cover this route",
                            &[],
                        );
                    }
                }
                if idempotent {
                    add(
                        "400",
                        "`IDEMPOTENCY_KEY_REQUIRED`, `IDEMPOTENCY_KEY_INVALID`",
                        &[],
                    );
                    add(
                        "409",
                        "`IDEMPOTENCY_KEY_BODY_MISMATCH`; `REQUEST_IN_PROGRESS` (with `Retry-After`)",
                        &[("Retry-After", "seconds, for `REQUEST_IN_PROGRESS`")],
                    );
                }
                if has_body {
                    add(
                        "413",
                        "`PAYLOAD_TOO_LARGE`: the body is over the limit (64 KiB)",
                        &[],
                    );
                    add(
                        "415",
                        "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`",
                        &[],
                    );
                }
                add(
                    "503",
                    if idempotent {
                        "`DATABASE_UNAVAILABLE`, `DATABASE_BUSY`, `REQUEST_TIMEOUT`: nothing was stored (a timed-out write may still finish, once); retry with the same key"
                    } else {
                        "`DATABASE_UNAVAILABLE`, `REQUEST_TIMEOUT`"
                    },
                    &[("Retry-After", "seconds")],
                );
                if idempotent {
                    mark_replays(&mut operation.responses.responses);
                }
            }
        }
    }
}

fn error_response(description: String, headers: &[(&str, &str)]) -> utoipa::openapi::Response {
    let mut builder = utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name(
                    "ErrorEnvelope",
                )))
                .build(),
        );
    for (name, description) in headers {
        builder = builder.header(*name, header(name, description));
    }
    builder.build()
}

fn header(name: &str, description: &str) -> utoipa::openapi::header::Header {
    // Retry-After is a number of seconds; the others are text.
    let kind = if name == "Retry-After" {
        utoipa::openapi::Type::Integer
    } else {
        utoipa::openapi::Type::String
    };
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new().schema_type(kind),
        ))
        .description(Some(description))
        .build()
}

/// Adds `codes` to the response for `status`, creating it if the route had none.
fn add_error(
    responses: &mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Response>,
    >,
    status: &str,
    codes: &str,
    headers: &[(&str, &str)],
) {
    use utoipa::openapi::RefOr;
    match responses.get_mut(status) {
        Some(RefOr::T(existing)) => {
            existing.description = format!("{} Also {codes}.", existing.description);
            for (name, description) in headers {
                existing
                    .headers
                    .entry((*name).to_owned())
                    .or_insert_with(|| utoipa::openapi::RefOr::T(header(name, description)));
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert(
                status.to_owned(),
                RefOr::T(error_response(format!("{codes}."), headers)),
            );
        }
    }
}

/// Answers a write stores are replayed with `Idempotent-Replayed: true`.
fn mark_replays(
    responses: &mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Response>,
    >,
) {
    for (status, response) in responses.iter_mut() {
        let stored = status.starts_with('2') || status == "404" || status == "409";
        if let (true, utoipa::openapi::RefOr::T(response)) = (stored, response) {
            response
                .headers
                .entry("Idempotent-Replayed".to_owned())
                .or_insert_with(|| {
                    utoipa::openapi::RefOr::T(header(
                        "Idempotent-Replayed",
                        "`true` when this is the stored answer of an earlier request with the same key",
                    ))
                });
        }
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
    /// RFC 3339; before it, issue and redeem answer `BATCH_NOT_STARTED`.
    #[schema(format = DateTime)]
    starts_at: Option<String>,
    /// Redeeming needs an `order_amount` of at least this (minor units).
    #[schema(minimum = 0)]
    min_order_amount: Option<i64>,
    /// For `percent`: the most one redemption takes off (minor units).
    #[schema(minimum = 1)]
    max_discount: Option<i64>,
    /// ISO 4217, e.g. `EUR`; amounts are integers in its minor units.
    #[schema(example = "KRW")]
    currency: Option<String>,
    /// Random characters per code, 6 to 32 (default 10). The code space must hold a
    /// million codes per coupon of `total_limit`.
    #[schema(minimum = 6, maximum = 32)]
    code_length: Option<i64>,
    /// Put before every code: up to 16 of A-Z, 0-9 and `-`.
    #[schema(max_length = 16, example = "XMAS-")]
    code_prefix: Option<String>,
    code_alphabet: Option<AlphabetName>,
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
pub enum AlphabetName {
    /// A-Z and 0-9.
    Standard,
    /// A-Z and 0-9 without 0, O, 1, I, L.
    Unambiguous,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusName {
    Running,
    Done,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKindName {
    Issued,
    Generated,
    Redeemed,
    Unredeemed,
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
    /// The order's amount in minor units: the discount is computed on it, and a
    /// batch's `min_order_amount` needs it.
    #[schema(minimum = 0)]
    order_amount: Option<i64>,
}

/// `POST /v1/coupons/validate/`.
#[derive(Serialize, ToSchema)]
pub struct ValidateBody {
    #[schema(min_length = 1, max_length = 64, example = "ABCDE12345")]
    code: String,
    #[schema(min_length = 1, max_length = 64, example = "u1")]
    user_id: String,
    #[schema(minimum = 0)]
    order_amount: Option<i64>,
}

/// `POST /v1/coupons/cancel/`.
#[derive(Serialize, ToSchema)]
pub struct CancelBody {
    #[schema(min_length = 1, max_length = 64, example = "ABCDE12345")]
    code: String,
    /// Kept in the coupon's history.
    #[schema(min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// `POST /v1/coupons/unredeem/`.
#[derive(Serialize, ToSchema)]
pub struct UnredeemBody {
    #[schema(min_length = 1, max_length = 64, example = "ABCDE12345")]
    code: String,
    /// The order the coupon was redeemed for.
    #[schema(min_length = 1, max_length = 64, example = "ord_1")]
    order_id: String,
    #[schema(min_length = 1, max_length = 500)]
    reason: Option<String>,
}

/// `POST /v1/coupon-batches/{id}/codes/`.
#[derive(Serialize, ToSchema)]
pub struct CodeJobBody {
    /// How many codes to generate, 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1000000)]
    count: i64,
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
