use serde_json::Value;
use time::OffsetDateTime;

use super::code::{Alphabet, CodeFormat, MAX_PREFIX_CHARS, MAX_RANDOM_CHARS, MIN_RANDOM_CHARS};
use super::discount::Discount;
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
    pub starts_at: Option<OffsetDateTime>,
    pub min_order_amount: Option<i64>,
    pub max_discount: Option<i64>,
    pub currency: Option<String>,
    pub code_format: CodeFormat,
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
    pub starts_at: Option<OffsetDateTime>,
    pub min_order_amount: Option<i64>,
    pub max_discount: Option<i64>,
    pub currency: Option<String>,
    pub code_format: CodeFormat,
    /// An inactive batch issues and redeems nothing until it is activated again.
    pub active: bool,
    pub created_at: OffsetDateTime,
}

/// How a batch is doing. `issued` counts every coupon it ever handed out (redeemed
/// and cancelled ones included, and pre-generated codes); `remaining` is what it can
/// still hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    pub issued: i64,
    pub redeemed: i64,
    pub cancelled: i64,
}

impl BatchStats {
    pub fn remaining(&self, total_limit: i64) -> i64 {
        (total_limit - self.issued).max(0)
    }
}

impl Batch {
    pub fn from_new(id: i64, new: NewBatch, created_at: OffsetDateTime) -> Batch {
        Batch {
            id,
            name: new.name,
            discount_type: new.discount_type,
            amount: new.amount,
            percent: new.percent,
            per_user_limit: new.per_user_limit,
            total_limit: new.total_limit,
            expires_at: new.expires_at,
            redeem_policy: new.redeem_policy,
            starts_at: new.starts_at,
            min_order_amount: new.min_order_amount,
            max_discount: new.max_discount,
            currency: new.currency,
            code_format: new.code_format,
            active: true,
            created_at,
        }
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }

    pub fn has_started(&self, now: OffsetDateTime) -> bool {
        self.starts_at.is_none_or(|s| s <= now)
    }

    pub fn discount(&self) -> Discount {
        match self.discount_type {
            DiscountType::Fixed => Discount::Fixed {
                amount: self.amount.unwrap_or(0),
            },
            DiscountType::Percent => Discount::Percent {
                percent: self.percent.unwrap_or(0),
                cap: self.max_discount,
            },
        }
    }

    /// Whether the batch hands out or takes coupons at all now: inactive, not started
    /// and expired, in that order.
    pub fn check_open(&self, now: OffsetDateTime) -> Result<(), Rejection> {
        if !self.active {
            Err(Rejection::BatchInactive)
        } else if !self.has_started(now) {
            Err(Rejection::BatchNotStarted)
        } else if self.is_expired(now) {
            Err(Rejection::BatchExpired)
        } else {
            Ok(())
        }
    }
}

/// Whether one more coupon may go to a user who holds `held` of this batch's coupons,
/// when the batch has issued `issued` in all. The seed's order: expiry, then the
/// user's limit, then the batch's; an inactive or not yet started batch comes first.
/// (PostgreSQL decides the same, in the same order, inside `coupond_issue`, where the
/// counters are locked.)
pub fn decide_issue(
    batch: &Batch,
    issued: i64,
    held: i64,
    now: OffsetDateTime,
) -> Result<(), Rejection> {
    batch.check_open(now)?;
    if held >= batch.per_user_limit {
        return Err(Rejection::PerUserLimitReached);
    }
    if issued >= batch.total_limit {
        return Err(Rejection::BatchLimitReached);
    }
    Ok(())
}

/// The seed's serializer rules, plus what it forgot (limits and amounts of at least
/// 1), plus the optional lifecycle fields.
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

    let starts_at = f.optional_timestamp("starts_at");
    if let (Some(starts), Some(expires)) = (starts_at, expires_at) {
        if starts >= expires {
            f.errors.add("starts_at", "must be before expires_at");
        }
    }
    let min_order_amount = f.optional_int("min_order_amount", 0);
    let max_discount = f.optional_int("max_discount", 1);
    if max_discount.is_some() && discount_type == Some(DiscountType::Fixed) {
        f.errors.add(
            "max_discount",
            "only a percent discount can be capped; a fixed one is its amount",
        );
    }
    let currency = f.optional_string("currency", 3).and_then(|c| {
        let code = c.to_ascii_uppercase();
        if iso_currency::Currency::from_code(&code).is_some() {
            Some(code)
        } else {
            f.errors.add(
                "currency",
                "must be an ISO 4217 code, e.g. \"EUR\" or \"KRW\"",
            );
            None
        }
    });
    let code_format = parse_code_format(&mut f, total_limit);

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
                starts_at,
                min_order_amount,
                max_discount,
                currency,
                code_format,
            }),
        _ => Err(errors),
    }
}

/// `code_length`, `code_prefix`, `code_alphabet`, and whether that many codes fit.
fn parse_code_format(f: &mut Fields<'_>, total_limit: Option<i64>) -> CodeFormat {
    let mut format = CodeFormat::default();
    if let Some(length) = f.optional_int("code_length", MIN_RANDOM_CHARS as i64) {
        if length > MAX_RANDOM_CHARS as i64 {
            f.errors.add(
                "code_length",
                format!("must be between {MIN_RANDOM_CHARS} and {MAX_RANDOM_CHARS}"),
            );
        } else {
            format.length = length as usize;
        }
    }
    if f.is_given("code_prefix") {
        match f.optional_prefix("code_prefix", MAX_PREFIX_CHARS) {
            Some(prefix)
                if prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                format.prefix = prefix.to_ascii_uppercase();
            }
            Some(_) => f
                .errors
                .add("code_prefix", "may hold only letters A-Z, digits and '-'"),
            None => {}
        }
    }
    if let Some(name) = f.optional_string("code_alphabet", 16) {
        match Alphabet::parse(&name) {
            Some(alphabet) => format.alphabet = alphabet,
            None => f.errors.add(
                "code_alphabet",
                "must be \"standard\" (A-Z, 0-9) or \"unambiguous\" (without 0, O, 1, I, L)",
            ),
        }
    }
    if let Some(total) = total_limit {
        if !f.errors.has("code_length") && !format.fits(total) {
            f.errors.add(
                "code_length",
                format!(
                    "{} codes of {} {} characters leave too little room for {total} coupons: \
                     a guessed code would hit one too often; use longer codes",
                    format.space_description(),
                    format.length,
                    format.alphabet.as_str()
                ),
            );
        }
    }
    format
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

    fn with(field: &str, value: Value) -> Value {
        let mut body = valid();
        body[field] = value;
        body
    }

    fn batch(body: Value) -> Batch {
        let new = parse_new_batch(&body).expect("valid");
        let created = new.expires_at - time::Duration::days(30);
        Batch::from_new(1, new, created)
    }

    #[test]
    fn accepts_the_seed_example_with_defaults() {
        let batch = parse_new_batch(&valid()).expect("valid");
        assert_eq!(batch.per_user_limit, 1);
        assert_eq!(batch.discount_type, DiscountType::Percent);
        assert_eq!(batch.percent, Some(10));
        assert_eq!(batch.code_format, CodeFormat::default());
        assert_eq!(batch.starts_at, None);
    }

    #[test]
    fn fixed_requires_amount() {
        let body = with("discount_type", json!("fixed"));
        assert!(errors_of(body.clone()).has("amount"));
        let mut body = body;
        body["amount"] = json!(500);
        assert!(parse_new_batch(&body).is_ok());
    }

    #[test]
    fn percent_must_be_in_range() {
        for bad in [json!(0), json!(101), json!(null), json!("10")] {
            assert!(
                errors_of(with("percent", bad.clone())).has("percent"),
                "{bad}"
            );
        }
        assert!(parse_new_batch(&with("percent", json!(100))).is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = errors_of(json!({
            "name": "x".repeat(81),
            "discount_type": "bogus",
            "per_user_limit": 0,
            "total_limit": 0,
            "expires_at": "soon",
            "starts_at": 3,
            "min_order_amount": -1,
            "max_discount": 0,
            "currency": "EURO",
            "code_length": 5,
            "code_prefix": "BAD PREFIX",
            "code_alphabet": "emoji",
        }));
        for field in [
            "name",
            "discount_type",
            "per_user_limit",
            "total_limit",
            "expires_at",
            "starts_at",
            "min_order_amount",
            "max_discount",
            "currency",
            "code_length",
            "code_prefix",
            "code_alphabet",
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
        let mut body = with("discount_type", json!("fixed"));
        body["amount"] = json!(0);
        assert!(errors_of(body).has("amount"));
    }

    #[test]
    fn lifecycle_fields() {
        let mut body = valid();
        body["starts_at"] = json!("2029-01-01T00:00:00Z");
        body["min_order_amount"] = json!(1000);
        body["max_discount"] = json!(500);
        body["currency"] = json!("krw");
        body["code_length"] = json!(8);
        body["code_prefix"] = json!("sale-");
        body["code_alphabet"] = json!("unambiguous");
        let new = parse_new_batch(&body).expect("valid");
        assert_eq!(new.min_order_amount, Some(1000));
        assert_eq!(new.max_discount, Some(500));
        assert_eq!(new.currency.as_deref(), Some("KRW"));
        assert_eq!(new.code_format.length, 8);
        assert_eq!(new.code_format.prefix, "SALE-");
        assert_eq!(new.code_format.alphabet, Alphabet::Unambiguous);
        assert!(errors_of(with("starts_at", json!("2031-01-01T00:00:00Z"))).has("starts_at"));
        let mut fixed = with("discount_type", json!("fixed"));
        fixed["amount"] = json!(100);
        fixed["max_discount"] = json!(50);
        assert!(errors_of(fixed).has("max_discount"));
        assert!(errors_of(with("currency", json!("XYZ"))).has("currency"));
    }

    #[test]
    fn a_code_space_too_small_is_refused_with_the_reason() {
        let mut body = with("code_length", json!(6));
        body["total_limit"] = json!(100_000);
        let errors = errors_of(body.clone());
        let reason = errors.0.get("code_length").expect("named");
        assert!(reason.contains("100000"), "{reason}");
        body["code_length"] = json!(12);
        assert!(parse_new_batch(&body).is_ok());
        assert!(errors_of(with("code_length", json!(33))).has("code_length"));
    }

    #[test]
    fn issue_rules_in_their_order() {
        let mut b = batch(valid());
        b.per_user_limit = 2;
        b.total_limit = 5;
        let live = b.expires_at - time::Duration::seconds(1);
        assert_eq!(decide_issue(&b, 0, 0, live), Ok(()));
        assert_eq!(decide_issue(&b, 4, 1, live), Ok(()));
        assert_eq!(
            decide_issue(&b, 5, 1, live),
            Err(Rejection::BatchLimitReached)
        );
        assert_eq!(
            decide_issue(&b, 5, 2, live),
            Err(Rejection::PerUserLimitReached)
        );
        assert_eq!(
            decide_issue(&b, 5, 2, b.expires_at),
            Err(Rejection::BatchExpired)
        );
        b.starts_at = Some(live + time::Duration::milliseconds(500));
        assert_eq!(
            decide_issue(&b, 5, 2, live),
            Err(Rejection::BatchNotStarted)
        );
        b.active = false;
        assert_eq!(decide_issue(&b, 5, 2, live), Err(Rejection::BatchInactive));
    }

    #[test]
    fn discounts_follow_the_batch() {
        let mut body = with("max_discount", json!(150));
        body["percent"] = json!(10);
        assert_eq!(batch(body).discount().on(10_000), 150);
        let mut fixed = with("discount_type", json!("fixed"));
        fixed["amount"] = json!(500);
        assert_eq!(batch(fixed).discount().on(300), 300);
    }
}
