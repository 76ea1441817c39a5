//! Discount math. Amounts are integers in the currency's minor units (cents), never
//! floats, so that no rounding is ever ambiguous.

/// How a batch discounts an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// A fixed amount off, never more than the order.
    Fixed { amount: i64 },
    /// A percentage off, rounded down, optionally capped.
    Percent { percent: i64, cap: Option<i64> },
}

impl Discount {
    /// The discount on an order of `order_amount` (>= 0).
    pub fn on(self, order_amount: i64) -> i64 {
        let order_amount = order_amount.max(0);
        match self {
            Discount::Fixed { amount } => amount.clamp(0, order_amount),
            Discount::Percent { percent, cap } => {
                // i128: order_amount * percent cannot overflow.
                let raw = i128::from(order_amount) * i128::from(percent.clamp(0, 100)) / 100;
                let raw = i64::try_from(raw).unwrap_or(i64::MAX);
                match cap {
                    Some(cap) => raw.min(cap.max(0)),
                    None => raw,
                }
            }
        }
    }

    /// The discount when no order amount is known: the fixed amount, or nothing to say
    /// for a percentage.
    pub fn without_order(self) -> Option<i64> {
        match self {
            Discount::Fixed { amount } => Some(amount),
            Discount::Percent { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(Discount::Fixed { amount: 500 }.on(2000), 500);
        assert_eq!(Discount::Fixed { amount: 500 }.on(300), 300);
        assert_eq!(
            Discount::Percent {
                percent: 10,
                cap: None
            }
            .on(1999),
            199
        );
        assert_eq!(
            Discount::Percent {
                percent: 10,
                cap: Some(150)
            }
            .on(1999),
            150
        );
        assert_eq!(
            Discount::Percent {
                percent: 100,
                cap: None
            }
            .on(0),
            0
        );
        assert_eq!(
            Discount::Percent {
                percent: 33,
                cap: None
            }
            .on(i64::MAX),
            i64::MAX / 100 * 33 + (i64::MAX % 100) * 33 / 100
        );
        assert_eq!(Discount::Fixed { amount: 500 }.without_order(), Some(500));
        assert_eq!(
            Discount::Percent {
                percent: 5,
                cap: None
            }
            .without_order(),
            None
        );
    }

    proptest! {
        #[test]
        fn fixed_never_exceeds_amount_or_order(amount in 1i64..=i64::MAX, order in 0i64..=i64::MAX) {
            let d = Discount::Fixed { amount }.on(order);
            prop_assert!(d >= 0);
            prop_assert!(d <= amount && d <= order);
            prop_assert_eq!(d, amount.min(order));
        }

        #[test]
        fn percent_is_floor_of_the_share(percent in 1i64..=100, order in 0i64..=i64::MAX) {
            let d = Discount::Percent { percent, cap: None }.on(order);
            let exact = i128::from(order) * i128::from(percent);
            // d = floor(order * percent / 100): d*100 <= exact < (d+1)*100.
            prop_assert!(i128::from(d) * 100 <= exact);
            prop_assert!(exact < (i128::from(d) + 1) * 100);
            prop_assert!(d <= order);
        }

        #[test]
        fn the_cap_caps(percent in 1i64..=100, order in 0i64..=1_000_000_000_000, cap in 1i64..=1_000_000) {
            let capped = Discount::Percent { percent, cap: Some(cap) }.on(order);
            let uncapped = Discount::Percent { percent, cap: None }.on(order);
            prop_assert_eq!(capped, uncapped.min(cap));
        }

        #[test]
        fn more_order_never_less_discount(percent in 1i64..=100, a in 0i64..=1_000_000_000, b in 0i64..=1_000_000_000) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let d = Discount::Percent { percent, cap: None };
            prop_assert!(d.on(lo) <= d.on(hi));
        }
    }
}
