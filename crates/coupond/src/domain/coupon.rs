use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::code::{normalize_code, MAX_CODE_LENGTH};
use super::input::{FieldErrors, Fields};
use super::{cursor, Batch, Discount, RedeemPolicy, Rejection};

/// The seed's column widths for user and order ids.
pub const MAX_USER_ID_CHARS: usize = 64;
pub const MAX_ORDER_ID_CHARS: usize = 64;
pub const MAX_REASON_CHARS: usize = 500;
/// The seed's page size, and the most a page may hold.
pub const LIST_LIMIT: i64 = 50;
pub const MAX_LIST_LIMIT: i64 = 200;

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
    /// As stored. `expired` is never stored: see `status_at`.
    pub status: CouponStatus,
    /// `None` for a pre-generated code nobody has been given.
    pub issued_to: Option<String>,
    pub issued_at: Option<OffsetDateTime>,
    pub redeemed_by: Option<String>,
    pub redeemed_at: Option<OffsetDateTime>,
    pub order_id: Option<String>,
    pub order_amount: Option<i64>,
    pub discount_amount: Option<i64>,
    pub created_at: OffsetDateTime,
    /// The batch's expiry, when it was read with the coupon.
    pub batch_expires_at: Option<OffsetDateTime>,
}

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
            order_amount: None,
            discount_amount: None,
            created_at: now,
            batch_expires_at: None,
        }
    }

    /// The status a reader sees: a coupon still waiting to be used when its batch has
    /// expired is `expired`.
    pub fn status_at(&self, now: OffsetDateTime) -> CouponStatus {
        match (self.status, self.batch_expires_at) {
            (CouponStatus::Issued, Some(expires)) if expires <= now => CouponStatus::Expired,
            (status, _) => status,
        }
    }

    pub fn redeem(&mut self, request: &RedeemRequest, discount: Option<i64>, now: OffsetDateTime) {
        self.status = CouponStatus::Redeemed;
        self.redeemed_by = Some(request.user_id.clone());
        self.redeemed_at = Some(now);
        self.order_id = Some(request.order_id.clone());
        self.order_amount = request.order_amount;
        self.discount_amount = discount;
    }

    /// Back to waiting to be used, as if never redeemed.
    pub fn unredeem(&mut self) {
        self.status = CouponStatus::Issued;
        self.redeemed_by = None;
        self.redeemed_at = None;
        self.order_id = None;
        self.order_amount = None;
        self.discount_amount = None;
    }

    pub fn cancel(&mut self) {
        self.status = CouponStatus::Cancelled;
    }
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
        (Some(batch_id), Some(user_id)) => f.errors.into_result(IssueRequest { batch_id, user_id }),
        _ => Err(f.errors),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemRequest {
    pub code: String,
    pub order_id: String,
    pub user_id: String,
    /// The order's amount in minor units, to compute the discount and check a minimum.
    pub order_amount: Option<i64>,
}

pub fn parse_redeem(body: &Value) -> Result<RedeemRequest, FieldErrors> {
    let mut f = Fields::new(body);
    let code = required_code(&mut f);
    let order_id = f.required_id_string("order_id", MAX_ORDER_ID_CHARS);
    let user_id = f.required_id_string("user_id", MAX_USER_ID_CHARS);
    let order_amount = f.optional_int("order_amount", 0);
    match (code, order_id, user_id) {
        (Some(code), Some(order_id), Some(user_id)) => f.errors.into_result(RedeemRequest {
            code,
            order_id,
            user_id,
            order_amount,
        }),
        _ => Err(f.errors),
    }
}

/// A dry run of redeem: would `user_id` be able to redeem `code` now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidateRequest {
    pub code: String,
    pub user_id: String,
    pub order_amount: Option<i64>,
}

pub fn parse_validate(body: &Value) -> Result<ValidateRequest, FieldErrors> {
    let mut f = Fields::new(body);
    let code = required_code(&mut f);
    let user_id = f.required_id_string("user_id", MAX_USER_ID_CHARS);
    let order_amount = f.optional_int("order_amount", 0);
    match (code, user_id) {
        (Some(code), Some(user_id)) => f.errors.into_result(ValidateRequest {
            code,
            user_id,
            order_amount,
        }),
        _ => Err(f.errors),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub code: String,
    pub reason: Option<String>,
}

pub fn parse_cancel(body: &Value) -> Result<CancelRequest, FieldErrors> {
    let mut f = Fields::new(body);
    let code = required_code(&mut f);
    let reason = f.optional_string("reason", MAX_REASON_CHARS);
    match code {
        Some(code) => f.errors.into_result(CancelRequest { code, reason }),
        None => Err(f.errors),
    }
}

/// An order was refunded or cancelled: give its coupon back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnredeemRequest {
    pub code: String,
    pub order_id: String,
    pub reason: Option<String>,
}

pub fn parse_unredeem(body: &Value) -> Result<UnredeemRequest, FieldErrors> {
    let mut f = Fields::new(body);
    let code = required_code(&mut f);
    let order_id = f.required_id_string("order_id", MAX_ORDER_ID_CHARS);
    let reason = f.optional_string("reason", MAX_REASON_CHARS);
    match (code, order_id) {
        (Some(code), Some(order_id)) => f.errors.into_result(UnredeemRequest {
            code,
            order_id,
            reason,
        }),
        _ => Err(f.errors),
    }
}

fn required_code(f: &mut Fields<'_>) -> Option<String> {
    f.required_string("code", MAX_CODE_LENGTH)
        .map(|c| normalize_code(&c))
}

/// What issuing can answer besides a coupon, in the order the rules are checked.
pub const ISSUE_REJECTIONS: &[Rejection] = &[
    Rejection::BatchNotFound,
    Rejection::BatchInactive,
    Rejection::BatchNotStarted,
    Rejection::BatchExpired,
    Rejection::PerUserLimitReached,
    Rejection::BatchLimitReached,
];

/// What redeeming (and validating) can answer besides the coupon, in the order
/// checked.
pub const REDEEM_REJECTIONS: &[Rejection] = &[
    Rejection::CouponNotFound,
    Rejection::BatchInactive,
    Rejection::BatchNotStarted,
    Rejection::CouponExpired,
    Rejection::CouponCancelled,
    Rejection::CouponAlreadyRedeemed,
    Rejection::CouponOwnershipMismatch,
    Rejection::MinOrderAmountNotMet,
];

/// Whether `user_id` may redeem a coupon now, and the discount it gives on
/// `order_amount`. In the seed's order (expiry before a second redemption, ownership
/// where its comment stands), with what the seed lacked around it. (PostgreSQL
/// decides the same, in the same order, inside `coupond_redeem`.)
pub fn check_redeemable(
    coupon: &Coupon,
    batch: &Batch,
    user_id: &str,
    order_amount: Option<i64>,
    now: OffsetDateTime,
) -> Result<Option<i64>, Rejection> {
    if !batch.active {
        return Err(Rejection::BatchInactive);
    }
    if !batch.has_started(now) {
        return Err(Rejection::BatchNotStarted);
    }
    if batch.is_expired(now) {
        return Err(Rejection::CouponExpired);
    }
    match coupon.status {
        CouponStatus::Cancelled => return Err(Rejection::CouponCancelled),
        CouponStatus::Redeemed => return Err(Rejection::CouponAlreadyRedeemed),
        CouponStatus::Expired => return Err(Rejection::CouponExpired),
        CouponStatus::Issued => {}
    }
    let owner = coupon.issued_to.as_deref();
    if batch.redeem_policy == RedeemPolicy::OwnerOnly && owner.is_some_and(|o| o != user_id) {
        return Err(Rejection::CouponOwnershipMismatch);
    }
    // A minimum of 0 asks for nothing (and so needs no order amount).
    if let Some(min) = batch.min_order_amount.filter(|min| *min > 0) {
        if order_amount.is_none_or(|amount| amount < min) {
            return Err(Rejection::MinOrderAmountNotMet);
        }
    }
    Ok(discount_for(batch.discount(), order_amount))
}

/// The discount a redemption records: computed on the order when its amount is known;
/// without one, a fixed discount is still its amount, a percentage is unknown.
pub fn discount_for(discount: Discount, order_amount: Option<i64>) -> Option<i64> {
    match order_amount {
        Some(amount) => Some(discount.on(amount)),
        None => discount.without_order(),
    }
}

/// Cancelling: what was redeemed stays redeemed (unredeem first), and cancelling twice
/// is refused.
pub const CANCEL_REJECTIONS: &[Rejection] = &[
    Rejection::CouponNotFound,
    Rejection::CouponAlreadyRedeemed,
    Rejection::CouponCancelled,
];

pub fn check_cancellable(coupon: &Coupon) -> Result<(), Rejection> {
    match coupon.status {
        CouponStatus::Redeemed => Err(Rejection::CouponAlreadyRedeemed),
        CouponStatus::Cancelled => Err(Rejection::CouponCancelled),
        CouponStatus::Issued | CouponStatus::Expired => Ok(()),
    }
}

pub const UNREDEEM_REJECTIONS: &[Rejection] = &[
    Rejection::CouponNotFound,
    Rejection::CouponNotRedeemed,
    Rejection::OrderMismatch,
];

/// Giving a redemption back needs the order it was redeemed for.
pub fn check_unredeemable(coupon: &Coupon, order_id: &str) -> Result<(), Rejection> {
    if coupon.status != CouponStatus::Redeemed {
        return Err(Rejection::CouponNotRedeemed);
    }
    if coupon.order_id.as_deref() != Some(order_id) {
        return Err(Rejection::OrderMismatch);
    }
    Ok(())
}

/// A change in a coupon's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Issued to a user.
    Issued,
    /// Pre-generated, for nobody yet (bulk codes).
    Generated,
    Redeemed,
    Unredeemed,
    Cancelled,
    /// Its batch expired while it was still waiting to be used.
    Expired,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Issued => "issued",
            EventKind::Generated => "generated",
            EventKind::Redeemed => "redeemed",
            EventKind::Unredeemed => "unredeemed",
            EventKind::Cancelled => "cancelled",
            EventKind::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        match s {
            "issued" => Some(EventKind::Issued),
            "generated" => Some(EventKind::Generated),
            "redeemed" => Some(EventKind::Redeemed),
            "unredeemed" => Some(EventKind::Unredeemed),
            "cancelled" => Some(EventKind::Cancelled),
            "expired" => Some(EventKind::Expired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponEvent {
    pub kind: EventKind,
    pub at: OffsetDateTime,
    /// The API key that made the change; none for what time did (expiry).
    pub api_key_id: Option<i64>,
    pub user_id: Option<String>,
    pub order_id: Option<String>,
    pub reason: Option<String>,
}

/// A coupon's whole history: its creation (kept on the coupon row itself, so issuing
/// writes no event row), the stored changes, and its expiry if it expired unused.
pub fn history(
    coupon: &Coupon,
    created_by: Option<i64>,
    stored: Vec<CouponEvent>,
    now: OffsetDateTime,
) -> Vec<CouponEvent> {
    let mut events = Vec::with_capacity(stored.len() + 2);
    events.push(CouponEvent {
        kind: if coupon.issued_to.is_some() {
            EventKind::Issued
        } else {
            EventKind::Generated
        },
        at: coupon.issued_at.unwrap_or(coupon.created_at),
        api_key_id: created_by,
        user_id: coupon.issued_to.clone(),
        order_id: None,
        reason: None,
    });
    events.extend(stored);
    if coupon.status_at(now) == CouponStatus::Expired {
        if let Some(batch_expired) = coupon.batch_expires_at {
            // A coupon given back after its batch expired expires then, not before.
            let last_change = events.last().map(|e| e.at);
            let expired_at = last_change.map_or(batch_expired, |at| at.max(batch_expired));
            events.push(CouponEvent {
                kind: EventKind::Expired,
                at: expired_at,
                api_key_id: None,
                user_id: None,
                order_id: None,
                reason: None,
            });
        }
    }
    events
}

/// The list endpoint's query, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub status: Option<CouponStatus>,
    pub batch_id: Option<i64>,
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
    pub limit: i64,
    /// Continue after this coupon id (newest first).
    pub after_id: Option<i64>,
    /// What "now" is for the computed `expired` status.
    pub now: OffsetDateTime,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            user_id: None,
            status: None,
            batch_id: None,
            created_after: None,
            created_before: None,
            limit: LIST_LIMIT,
            after_id: None,
            now: super::now(),
        }
    }
}

/// The parameters of a list query; a repeated one counts by its last value, as
/// Django's `QueryDict.get` does, and an empty one means "no filter" (`if user_id:`).
pub struct Query<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> Query<'a> {
    pub fn new(pairs: &'a [(String, String)]) -> Self {
        Query { pairs }
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

pub fn parse_list_filter(query: &Query<'_>) -> Result<ListFilter, FieldErrors> {
    let mut errors = FieldErrors::default();
    let user_id = query.get("user_id").map(str::to_owned);
    if let Some(user) = &user_id {
        if user.chars().count() > MAX_USER_ID_CHARS {
            errors.add(
                "user_id",
                format!("must be at most {MAX_USER_ID_CHARS} characters"),
            );
        } else if user.chars().any(char::is_control) {
            // The same rule as for the user ids a write accepts, so no such id exists.
            errors.add("user_id", "must not contain control characters");
        }
    }
    let status = query.get("status").and_then(|s| {
        let status = CouponStatus::parse(s);
        if status.is_none() {
            errors.add(
                "status",
                "must be one of issued, redeemed, cancelled, expired",
            );
        }
        status
    });
    let batch_id = query.get("batch_id").and_then(|s| {
        let id = s.parse::<i64>().ok().filter(|id| *id >= 1);
        if id.is_none() {
            errors.add("batch_id", "must be a positive integer");
        }
        id
    });
    let created_after = timestamp_param(query, "created_after", &mut errors);
    let created_before = timestamp_param(query, "created_before", &mut errors);
    let page = parse_page(query, &mut errors);
    errors.into_result(ListFilter {
        user_id,
        status,
        batch_id,
        created_after,
        created_before,
        limit: page.limit,
        after_id: page.after_id,
        now: super::now(),
    })
}

/// `limit` and `cursor`, shared by every paginated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub after_id: Option<i64>,
}

pub fn parse_page(query: &Query<'_>, errors: &mut FieldErrors) -> Page {
    let limit = match query.get("limit") {
        None => LIST_LIMIT,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
            _ => {
                errors.add(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIST_LIMIT}"),
                );
                LIST_LIMIT
            }
        },
    };
    let after_id = query.get("cursor").and_then(|c| {
        let id = cursor::decode(c);
        if id.is_none() {
            errors.add("cursor", "is not a cursor this server handed out");
        }
        id
    });
    Page { limit, after_id }
}

fn timestamp_param(
    query: &Query<'_>,
    name: &str,
    errors: &mut FieldErrors,
) -> Option<OffsetDateTime> {
    let raw = query.get(name)?;
    match OffsetDateTime::parse(raw, &Rfc3339) {
        Ok(t) => Some(super::truncate_to_micros(t.to_offset(time::UtcOffset::UTC))),
        Err(_) => {
            errors.add(
                name,
                "must be an RFC 3339 timestamp, e.g. 2030-01-31T23:59:59Z",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::batch::parse_new_batch;
    use serde_json::json;

    fn batch(expires_at: OffsetDateTime) -> Batch {
        let mut new = parse_new_batch(&json!({
            "name": "b", "discount_type": "fixed", "amount": 100,
            "total_limit": 10, "expires_at": "2030-01-01T00:00:00Z"
        }))
        .expect("valid");
        new.expires_at = expires_at;
        Batch::from_new(1, new, OffsetDateTime::UNIX_EPOCH)
    }

    fn coupon(status: CouponStatus) -> Coupon {
        let mut c = Coupon::issued(1, 1, "ABCDEFGHIJ".into(), "u1", OffsetDateTime::UNIX_EPOCH);
        c.status = status;
        c
    }

    fn day(n: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(n)
    }

    #[test]
    fn expiry_is_checked_before_double_redemption() {
        let now = day(1);
        let expired = batch(now);
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Redeemed), &expired, "u1", None, now),
            Err(Rejection::CouponExpired)
        );
        let live = batch(day(2));
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Redeemed), &live, "u1", None, now),
            Err(Rejection::CouponAlreadyRedeemed)
        );
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Cancelled), &live, "u1", None, now),
            Err(Rejection::CouponCancelled)
        );
        assert_eq!(
            check_redeemable(&coupon(CouponStatus::Issued), &live, "u2", None, now),
            Ok(Some(100))
        );
    }

    #[test]
    fn ownership_and_minimum() {
        let now = day(1);
        let mut owner_only = batch(day(2));
        owner_only.redeem_policy = RedeemPolicy::OwnerOnly;
        let issued = coupon(CouponStatus::Issued);
        assert_eq!(
            check_redeemable(&issued, &owner_only, "u2", None, now),
            Err(Rejection::CouponOwnershipMismatch)
        );
        assert_eq!(
            check_redeemable(&issued, &owner_only, "u1", Some(50), now),
            Ok(Some(50))
        );
        // Ownership is decided after a second redemption, as the seed orders it.
        assert_eq!(
            check_redeemable(
                &coupon(CouponStatus::Redeemed),
                &owner_only,
                "u2",
                None,
                now
            ),
            Err(Rejection::CouponAlreadyRedeemed)
        );
        let mut minimum = batch(day(2));
        minimum.min_order_amount = Some(1000);
        assert_eq!(
            check_redeemable(&issued, &minimum, "u1", Some(999), now),
            Err(Rejection::MinOrderAmountNotMet)
        );
        assert_eq!(
            check_redeemable(&issued, &minimum, "u1", None, now),
            Err(Rejection::MinOrderAmountNotMet)
        );
        assert_eq!(
            check_redeemable(&issued, &minimum, "u1", Some(1000), now),
            Ok(Some(100))
        );
        let mut inactive = batch(day(2));
        inactive.active = false;
        assert_eq!(
            check_redeemable(&issued, &inactive, "u1", None, now),
            Err(Rejection::BatchInactive)
        );
    }

    #[test]
    fn cancel_and_unredeem_rules() {
        assert_eq!(check_cancellable(&coupon(CouponStatus::Issued)), Ok(()));
        assert_eq!(
            check_cancellable(&coupon(CouponStatus::Redeemed)),
            Err(Rejection::CouponAlreadyRedeemed)
        );
        assert_eq!(
            check_cancellable(&coupon(CouponStatus::Cancelled)),
            Err(Rejection::CouponCancelled)
        );
        let mut redeemed = coupon(CouponStatus::Issued);
        let request = RedeemRequest {
            code: redeemed.code.clone(),
            order_id: "o1".into(),
            user_id: "u1".into(),
            order_amount: Some(500),
        };
        redeemed.redeem(&request, Some(100), day(1));
        assert_eq!(check_unredeemable(&redeemed, "o1"), Ok(()));
        assert_eq!(
            check_unredeemable(&redeemed, "o2"),
            Err(Rejection::OrderMismatch)
        );
        assert_eq!(
            check_unredeemable(&coupon(CouponStatus::Issued), "o1"),
            Err(Rejection::CouponNotRedeemed)
        );
        redeemed.unredeem();
        assert_eq!(redeemed, coupon(CouponStatus::Issued));
    }

    #[test]
    fn status_seen_by_readers() {
        let mut c = coupon(CouponStatus::Issued);
        c.batch_expires_at = Some(day(2));
        assert_eq!(c.status_at(day(1)), CouponStatus::Issued);
        assert_eq!(c.status_at(day(2)), CouponStatus::Expired);
        c.status = CouponStatus::Redeemed;
        assert_eq!(c.status_at(day(3)), CouponStatus::Redeemed);
        let events = history(&coupon(CouponStatus::Issued), Some(7), vec![], day(1));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Issued);
        assert_eq!(events[0].api_key_id, Some(7));
        let mut expired = coupon(CouponStatus::Issued);
        expired.batch_expires_at = Some(day(2));
        let kinds: Vec<_> = history(&expired, None, vec![], day(3))
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec![EventKind::Issued, EventKind::Expired]);
    }

    #[test]
    fn body_rules() {
        assert_eq!(
            parse_issue(&json!({"batch_id": "3", "user_id": 17})),
            Ok(IssueRequest {
                batch_id: 3,
                user_id: "17".into()
            })
        );
        let errors = parse_issue(&json!({"batch_id": [], "user_id": ""})).expect_err("invalid");
        assert!(errors.has("batch_id") && errors.has("user_id"));
        let errors = parse_redeem(&json!({"code": 5})).expect_err("invalid");
        for field in ["code", "order_id", "user_id"] {
            assert!(errors.has(field), "{field}");
        }
        let redeem = parse_redeem(
            &json!({"code": " abc ", "order_id": 1, "user_id": "u", "order_amount": 10}),
        )
        .expect("valid");
        assert_eq!(redeem.code, "ABC");
        assert_eq!(redeem.order_amount, Some(10));
        assert!(parse_redeem(
            &json!({"code": "a", "order_id": 1, "user_id": "u", "order_amount": -1})
        )
        .is_err());
        assert!(parse_cancel(&json!({"code": "a", "reason": 3})).is_err());
        assert!(parse_unredeem(&json!({"code": "a"}))
            .expect_err("invalid")
            .has("order_id"));
        assert!(parse_validate(&json!({"code": "a", "user_id": "u"})).is_ok());
    }

    #[test]
    fn list_filter_rules() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = pairs(&[("user_id", ""), ("status", "")]);
        let filter = parse_list_filter(&Query::new(&p)).expect("empty means none");
        assert_eq!(filter.user_id, None);
        assert_eq!(filter.status, None);
        assert_eq!(filter.limit, LIST_LIMIT);
        let p = pairs(&[("status", "lost")]);
        assert!(parse_list_filter(&Query::new(&p)).is_err());
        let p = pairs(&[
            ("user_id", "u1"),
            ("status", "redeemed"),
            ("limit", "200"),
            ("cursor", &cursor::encode(9)),
        ]);
        let filter = parse_list_filter(&Query::new(&p)).expect("valid");
        assert_eq!(filter.status, Some(CouponStatus::Redeemed));
        assert_eq!(filter.limit, 200);
        assert_eq!(filter.after_id, Some(9));
        for bad in [
            ("limit", "0"),
            ("limit", "201"),
            ("cursor", "junk"),
            ("batch_id", "x"),
            ("created_after", "yesterday"),
        ] {
            let p = pairs(&[bad]);
            assert!(
                parse_list_filter(&Query::new(&p))
                    .expect_err("invalid")
                    .has(bad.0),
                "{bad:?}"
            );
        }
    }
}
