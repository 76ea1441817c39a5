/// A business rule said no. These are answers, not failures: they are stored with the
/// idempotency record and replayed, as the seed does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("batch not found")]
    BatchNotFound,
    #[error("the batch has been deactivated")]
    BatchInactive,
    #[error("the batch has not started yet")]
    BatchNotStarted,
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
    #[error("the coupon has been cancelled")]
    CouponCancelled,
    #[error("the coupon has already been redeemed")]
    CouponAlreadyRedeemed,
    #[error("this coupon can only be redeemed by the user it was issued to")]
    CouponOwnershipMismatch,
    #[error("the order amount is below this coupon's minimum")]
    MinOrderAmountNotMet,
    #[error("the coupon is not redeemed")]
    CouponNotRedeemed,
    #[error("the coupon was redeemed for another order")]
    OrderMismatch,
}

impl Rejection {
    /// The stable error code (the seed's, for the seed's rules).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::BatchNotFound => "BATCH_NOT_FOUND",
            Rejection::BatchInactive => "BATCH_INACTIVE",
            Rejection::BatchNotStarted => "BATCH_NOT_STARTED",
            Rejection::BatchExpired => "BATCH_EXPIRED",
            Rejection::PerUserLimitReached => "PER_USER_LIMIT_REACHED",
            Rejection::BatchLimitReached => "BATCH_LIMIT_REACHED",
            Rejection::CouponNotFound => "COUPON_NOT_FOUND",
            Rejection::CouponExpired => "COUPON_EXPIRED",
            Rejection::CouponCancelled => "COUPON_CANCELLED",
            Rejection::CouponAlreadyRedeemed => "COUPON_ALREADY_REDEEMED",
            Rejection::CouponOwnershipMismatch => "COUPON_OWNERSHIP_MISMATCH",
            Rejection::MinOrderAmountNotMet => "MIN_ORDER_AMOUNT_NOT_MET",
            Rejection::CouponNotRedeemed => "COUPON_NOT_REDEEMED",
            Rejection::OrderMismatch => "ORDER_MISMATCH",
        }
    }

    /// 404 for what does not exist, 409 for every other refusal.
    pub fn is_not_found(self) -> bool {
        matches!(self, Rejection::BatchNotFound | Rejection::CouponNotFound)
    }
}
