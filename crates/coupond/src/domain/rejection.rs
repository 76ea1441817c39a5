/// A business rule said no. These are answers, not failures: they are stored with the
/// idempotency record and replayed, as the seed does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("batch not found")]
    BatchNotFound,
    #[error("the batch has expired")]
    BatchExpired,
    #[error("this user already holds the maximum number of coupons from this batch")]
    PerUserLimitReached,
    #[error("the batch has no coupons left")]
    BatchLimitReached,
    #[error("coupon not found")]
    CouponNotFound,
    #[error("the coupon has expired")]
    CouponExpired,
    #[error("the coupon has already been redeemed")]
    CouponAlreadyRedeemed,
    #[error("this coupon can only be redeemed by the user it was issued to")]
    CouponOwnershipMismatch,
}

impl Rejection {
    /// The seed's stable error code.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::BatchNotFound => "BATCH_NOT_FOUND",
            Rejection::BatchExpired => "BATCH_EXPIRED",
            Rejection::PerUserLimitReached => "PER_USER_LIMIT_REACHED",
            Rejection::BatchLimitReached => "BATCH_LIMIT_REACHED",
            Rejection::CouponNotFound => "COUPON_NOT_FOUND",
            Rejection::CouponExpired => "COUPON_EXPIRED",
            Rejection::CouponAlreadyRedeemed => "COUPON_ALREADY_REDEEMED",
            Rejection::CouponOwnershipMismatch => "COUPON_OWNERSHIP_MISMATCH",
        }
    }

    pub fn is_not_found(self) -> bool {
        matches!(self, Rejection::BatchNotFound | Rejection::CouponNotFound)
    }
}
