use serde_json::Value;
use time::OffsetDateTime;

use super::input::{FieldErrors, Fields};
use super::Rejection;

pub const MAX_NAME_CHARS: usize = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountType {
    Fixed,
    Percent,
}

impl DiscountType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscountType::Fixed => "fixed",
            DiscountType::Percent => "percent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fixed" => Some(DiscountType::Fixed),
            "percent" => Some(DiscountType::Percent),
            _ => None,
        }
    }
}

/// Who may redeem a batch's coupons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedeemPolicy {
    /// Whoever holds the code (the seed's behaviour).
    #[default]
    Anyone,
    /// Only the user the coupon was issued to.
    OwnerOnly,
}

impl RedeemPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RedeemPolicy::Anyone => "anyone",
            RedeemPolicy::OwnerOnly => "owner_only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "anyone" => Some(RedeemPolicy::Anyone),
            "owner_only" => Some(RedeemPolicy::OwnerOnly),
            _ => None,
        }
    }
}

/// A batch as a client asked for it, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub name: String,
    pub discount_type: DiscountType,
    pub amount: Option<i64>,
    pub percent: Option<i64>,
    pub per_user_limit: i64,
    pub total_limit: i64,
    pub expires_at: OffsetDateTime,
    pub redeem_policy: RedeemPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: i64,
    pub name: String,
    pub discount_type: DiscountType,
    pub amount: Option<i64>,
    pub percent: Option<i64>,
    pub per_user_limit: i64,
    pub total_limit: i64,
    pub expires_at: OffsetDateTime,
    pub redeem_policy: RedeemPolicy,
    pub created_at: OffsetDateTime,
}

impl Batch {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }

    /// The first of the issue rules, in the seed's order; the two limits are decided by
    /// the store, atomically with the write that consumes them.
    pub fn check_issuable(&self, now: OffsetDateTime) -> Result<(), Rejection> {
        if self.is_expired(now) {
            Err(Rejection::BatchExpired)
        } else {
            Ok(())
        }
    }
}

/// Whether one more coupon may go to a user who holds `held` of this batch's coupons,
/// when the batch has issued `issued` in all. The seed's order: expiry, then the
/// user's limit, then the batch's. (PostgreSQL decides the same, in the same order,
/// inside `coupond_issue`, where the counters are locked.)
pub fn decide_issue(
    batch: &Batch,
    issued: i64,
    held: i64,
    now: OffsetDateTime,
) -> Result<(), Rejection> {
    batch.check_issuable(now)?;
    if held >= batch.per_user_limit {
        return Err(Rejection::PerUserLimitReached);
    }
    if issued >= batch.total_limit {
        return Err(Rejection::BatchLimitReached);
    }
    Ok(())
}

/// The seed's serializer rules, plus what it forgot: limits and amounts of at least 1.
pub fn parse_new_batch(body: &Value) -> Result<NewBatch, FieldErrors> {
    let mut f = Fields::new(body);
    let name = f.required_string("name", MAX_NAME_CHARS);
    let discount_type = match f.required_string("discount_type", 16) {
        Some(s) => match DiscountType::parse(&s) {
            Some(t) => Some(t),
            None => {
                f.errors
                    .add("discount_type", "must be \"fixed\" or \"percent\"");
                None
            }
        },
        None => None,
    };
    let amount = f.optional_int("amount", 1);
    let percent = f.optional_int("percent", 1);
    if percent.is_some_and(|p| p > 100) {
        f.errors.add("percent", "must be between 1 and 100");
    }
    match discount_type {
        Some(DiscountType::Fixed) if !f.is_given("amount") => {
            f.errors
                .add("amount", "required when discount_type is \"fixed\"");
        }
        Some(DiscountType::Percent) if !f.is_given("percent") => {
            f.errors.add(
                "percent",
                "required (1..100) when discount_type is \"percent\"",
            );
        }
        _ => {}
    }
    let per_user_limit = f.optional_int("per_user_limit", 1).unwrap_or(1);
    let total_limit = f.required_int("total_limit", 1);
    let expires_at = f.required_timestamp("expires_at");
    let redeem_policy = match f.optional_string("redeem_policy", 16) {
        None => RedeemPolicy::default(),
        Some(s) => RedeemPolicy::parse(&s).unwrap_or_else(|| {
            f.errors
                .add("redeem_policy", "must be \"anyone\" or \"owner_only\"");
            RedeemPolicy::default()
        }),
    };

    let errors = f.errors;
    match (name, discount_type, total_limit, expires_at) {
        (Some(name), Some(discount_type), Some(total_limit), Some(expires_at)) => errors
            .into_result(NewBatch {
                name,
                discount_type,
                amount,
                percent,
                per_user_limit,
                total_limit,
                expires_at,
                redeem_policy,
            }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "name": "Welcome 10%",
            "discount_type": "percent",
            "percent": 10,
            "total_limit": 1000,
            "expires_at": "2030-01-01T00:00:00Z"
        })
    }

    fn errors_of(body: Value) -> FieldErrors {
        parse_new_batch(&body).expect_err("should be invalid")
    }

    #[test]
    fn accepts_the_seed_example_with_defaults() {
        let batch = parse_new_batch(&valid()).expect("valid");
        assert_eq!(batch.per_user_limit, 1);
        assert_eq!(batch.discount_type, DiscountType::Percent);
        assert_eq!(batch.percent, Some(10));
    }

    #[test]
    fn fixed_requires_amount() {
        let mut body = valid();
        body["discount_type"] = json!("fixed");
        assert!(errors_of(body.clone()).has("amount"));
        body["amount"] = json!(500);
        assert!(parse_new_batch(&body).is_ok());
    }

    #[test]
    fn percent_must_be_in_range() {
        for bad in [json!(0), json!(101), json!(null), json!("10")] {
            let mut body = valid();
            body["percent"] = bad.clone();
            assert!(errors_of(body).has("percent"), "{bad}");
        }
        let mut body = valid();
        body["percent"] = json!(100);
        assert!(parse_new_batch(&body).is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = errors_of(json!({
            "name": "x".repeat(81),
            "discount_type": "bogus",
            "per_user_limit": 0,
            "total_limit": 0,
            "expires_at": "soon"
        }));
        for field in [
            "name",
            "discount_type",
            "per_user_limit",
            "total_limit",
            "expires_at",
        ] {
            assert!(errors.has(field), "{field} missing from {errors:?}");
        }
    }

    #[test]
    fn required_fields() {
        let errors = errors_of(json!({}));
        for field in ["name", "discount_type", "total_limit", "expires_at"] {
            assert!(errors.has(field), "{field}");
        }
    }

    #[test]
    fn amount_must_be_positive() {
        let mut body = valid();
        body["discount_type"] = json!("fixed");
        body["amount"] = json!(0);
        assert!(errors_of(body).has("amount"));
    }

    #[test]
    fn issue_rules_in_the_seeds_order() {
        let new = parse_new_batch(&valid()).expect("valid");
        let batch = Batch {
            id: 1,
            name: new.name,
            discount_type: new.discount_type,
            amount: new.amount,
            percent: new.percent,
            per_user_limit: 2,
            total_limit: 5,
            expires_at: new.expires_at,
            redeem_policy: new.redeem_policy,
            created_at: new.expires_at,
        };
        let live = batch.expires_at - time::Duration::seconds(1);
        assert_eq!(decide_issue(&batch, 0, 0, live), Ok(()));
        assert_eq!(decide_issue(&batch, 4, 1, live), Ok(()));
        assert_eq!(
            decide_issue(&batch, 5, 1, live),
            Err(Rejection::BatchLimitReached)
        );
        assert_eq!(
            decide_issue(&batch, 5, 2, live),
            Err(Rejection::PerUserLimitReached)
        );
        assert_eq!(
            decide_issue(&batch, 5, 2, batch.expires_at),
            Err(Rejection::BatchExpired)
        );
    }

    #[test]
    fn expiry_rule() {
        let batch = parse_new_batch(&valid()).expect("valid");
        let batch = Batch {
            id: 1,
            name: batch.name,
            discount_type: batch.discount_type,
            amount: batch.amount,
            percent: batch.percent,
            per_user_limit: batch.per_user_limit,
            total_limit: batch.total_limit,
            expires_at: batch.expires_at,
            redeem_policy: batch.redeem_policy,
            created_at: batch.expires_at,
        };
        assert_eq!(
            batch.check_issuable(batch.expires_at),
            Err(Rejection::BatchExpired)
        );
        assert_eq!(
            batch.check_issuable(batch.expires_at - time::Duration::seconds(1)),
            Ok(())
        );
    }
}
