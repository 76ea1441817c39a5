use serde_json::Value;
use time::OffsetDateTime;

use super::code::MAX_CODE_LENGTH;
use super::input::{FieldErrors, Fields};
use super::{Batch, RedeemPolicy, Rejection};

/// The seed's column widths for user and order ids.
pub const MAX_USER_ID_CHARS: usize = 64;
pub const MAX_ORDER_ID_CHARS: usize = 64;
/// The seed's page size for the list endpoint.
pub const LIST_LIMIT: i64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponStatus {
    Issued,
    Redeemed,
    Cancelled,
    Expired,
}

impl CouponStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CouponStatus::Issued => "issued",
            CouponStatus::Redeemed => "redeemed",
            CouponStatus::Cancelled => "cancelled",
            CouponStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "issued" => Some(CouponStatus::Issued),
            "redeemed" => Some(CouponStatus::Redeemed),
            "cancelled" => Some(CouponStatus::Cancelled),
            "expired" => Some(CouponStatus::Expired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub id: i64,
    pub batch_id: i64,
    pub code: String,
    pub status: CouponStatus,
    pub issued_to: Option<String>,
    pub issued_at: Option<OffsetDateTime>,
    pub redeemed_by: Option<String>,
    pub redeemed_at: Option<OffsetDateTime>,
    pub order_id: Option<String>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub batch_id: i64,
    pub user_id: String,
}

pub fn parse_issue(body: &Value) -> Result<IssueRequest, FieldErrors> {
    let mut f = Fields::new(body);
    let batch_id = f.required_id("batch_id");
    let user_id = f.required_id_string("user_id", MAX_USER_ID_CHARS);
    match (batch_id, user_id) {
        (Some(batch_id), Some(user_id)) => Ok(IssueRequest { batch_id, user_id }),
        _ => Err(f.errors),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemRequest {
    pub code: String,
    pub order_id: String,
    pub user_id: String,
}

pub fn parse_redeem(body: &Value) -> Result<RedeemRequest, FieldErrors> {
    let mut f = Fields::new(body);
    // Codes are handed out in upper case; matching ignores case so that a code typed
    // in by hand still works.
    let code = f
        .required_string("code", MAX_CODE_LENGTH)
        .map(|c| c.trim().to_ascii_uppercase());
    let order_id = f.required_id_string("order_id", MAX_ORDER_ID_CHARS);
    let user_id = f.required_id_string("user_id", MAX_USER_ID_CHARS);
    match (code, order_id, user_id) {
        (Some(code), Some(order_id), Some(user_id)) => Ok(RedeemRequest {
            code,
            order_id,
            user_id,
        }),
        _ => Err(f.errors),
    }
}

/// Whether `user_id` may redeem a coupon now, in the seed's order: expiry, a second
/// redemption, then (for owner-only batches) who is redeeming. (PostgreSQL decides the
/// same, in the same order, inside `coupond_redeem`.)
pub fn check_redeemable(
    coupon: &Coupon,
    batch: &Batch,
    user_id: &str,
    now: OffsetDateTime,
) -> Result<(), Rejection> {
    if batch.is_expired(now) {
        return Err(Rejection::CouponExpired);
    }
    match coupon.status {
        CouponStatus::Redeemed => return Err(Rejection::CouponAlreadyRedeemed),
        // Nothing sets this status yet; the seed would let it through, we do not.
        CouponStatus::Expired => return Err(Rejection::CouponExpired),
        CouponStatus::Cancelled | CouponStatus::Issued => {}
    }
    let owner = coupon.issued_to.as_deref();
    if batch.redeem_policy == RedeemPolicy::OwnerOnly && owner.is_some_and(|o| o != user_id) {
        return Err(Rejection::CouponOwnershipMismatch);
    }
    Ok(())
}

/// What issuing can answer besides a coupon, in the order the rules are checked.
pub const ISSUE_REJECTIONS: &[Rejection] = &[
    Rejection::BatchNotFound,
    Rejection::BatchExpired,
    Rejection::PerUserLimitReached,
    Rejection::BatchLimitReached,
];

/// What redeeming can answer besides the redeemed coupon, in the order checked.
pub const REDEEM_REJECTIONS: &[Rejection] = &[
    Rejection::CouponNotFound,
    Rejection::CouponExpired,
    Rejection::CouponAlreadyRedeemed,
    Rejection::CouponOwnershipMismatch,
];

impl Coupon {
    /// A coupon as issue creates it.
    pub fn issued(
        id: i64,
        batch_id: i64,
        code: String,
        user_id: &str,
        now: OffsetDateTime,
    ) -> Coupon {
        Coupon {
            id,
            batch_id,
            code,
            status: CouponStatus::Issued,
            issued_to: Some(user_id.to_owned()),
            issued_at: Some(now),
            redeemed_by: None,
            redeemed_at: None,
            order_id: None,
            created_at: now,
        }
    }

    pub fn redeem(&mut self, request: &RedeemRequest, now: OffsetDateTime) {
        self.status = CouponStatus::Redeemed;
        self.redeemed_by = Some(request.user_id.clone());
        self.redeemed_at = Some(now);
        self.order_id = Some(request.order_id.clone());
    }
}

/// The list endpoint's query, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub status: Option<CouponStatus>,
    pub limit: i64,
}

pub fn parse_list_filter(
    user_id: Option<&str>,
    status: Option<&str>,
) -> Result<ListFilter, FieldErrors> {
    let mut errors = FieldErrors::default();
    // An empty parameter means "no filter", as in the seed (`if user_id:`).
    let user_id = user_id.filter(|u| !u.is_empty()).map(str::to_owned);
    if user_id
        .as_ref()
        .is_some_and(|u| u.chars().count() > MAX_USER_ID_CHARS)
    {
        errors.add(
            "user_id",
            format!("must be at most {MAX_USER_ID_CHARS} characters"),
        );
    } else if user_id
        .as_ref()
        .is_some_and(|u| u.chars().any(char::is_control))
    {
        // The same rule as for the user ids a write accepts, so no such id exists.
        errors.add("user_id", "must not contain control characters");
    }
    let status = match status.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match CouponStatus::parse(s) {
            Some(status) => Some(status),
            None => {
                errors.add(
                    "status",
                    "must be one of issued, redeemed, cancelled, expired",
                );
                None
            }
        },
    };
    errors.into_result(ListFilter {
        user_id,
        status,
        limit: LIST_LIMIT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DiscountType;
    use serde_json::json;

    fn batch(expires_at: OffsetDateTime) -> Batch {
        Batch {
            id: 1,
            name: "b".into(),
            discount_type: DiscountType::Fixed,
            amount: Some(100),
            percent: None,
            per_user_limit: 1,
            total_limit: 10,
            expires_at,
            redeem_policy: RedeemPolicy::Anyone,
            created_at: expires_at,
        }
    }

    fn coupon(status: CouponStatus) -> Coupon {
        Coupon {
            id: 1,
            batch_id: 1,
            code: "ABCDEFGHIJ".into(),
            status,
            issued_to: Some("u1".into()),
            issued_at: None,
            redeemed_by: None,
            redeemed_at: None,
            order_id: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn expiry_is_checked_before_double_redemption() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let expired = batch(now);
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Redeemed), &expired, "u1", now),
            Err(Rejection::CouponExpired)
        );
        let live = batch(now + time::Duration::days(1));
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Redeemed), &live, "u1", now),
            Err(Rejection::CouponAlreadyRedeemed)
        );
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Issued), &live, "u2", now),
            Ok(())
        );
        let owner_only = Batch {
            redeem_policy: RedeemPolicy::OwnerOnly,
            ..live.clone()
        };
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Issued), &owner_only, "u2", now),
            Err(Rejection::CouponOwnershipMismatch)
        );
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Issued), &owner_only, "u1", now),
            Ok(())
        );
        // Ownership is decided after a second redemption, as the seed orders it.
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Redeemed), &owner_only, "u2", now),
            Err(Rejection::CouponAlreadyRedeemed)
        );
    }

    #[test]
    fn issue_body_rules() {
        assert_eq!(
            parse_issue(&json!({"batch_id": "3", "user_id": 17})),
            Ok(IssueRequest {
                batch_id: 3,
                user_id: "17".into()
            })
        );
        let errors = parse_issue(&json!({"batch_id": [], "user_id": ""})).expect_err("invalid");
        assert!(errors.has("batch_id") && errors.has("user_id"));
    }

    #[test]
    fn redeem_body_rules() {
        let errors = parse_redeem(&json!({"code": 5})).expect_err("invalid");
        for field in ["code", "order_id", "user_id"] {
            assert!(errors.has(field), "{field}");
        }
    }

    #[test]
    fn list_filter_rules() {
        let filter = parse_list_filter(Some(""), Some("")).expect("empty means none");
        assert_eq!(filter.user_id, None);
        assert_eq!(filter.status, None);
        assert!(parse_list_filter(None, Some("lost")).is_err());
        let filter = parse_list_filter(Some("u1"), Some("redeemed")).expect("valid");
        assert_eq!(filter.status, Some(CouponStatus::Redeemed));
    }
}
