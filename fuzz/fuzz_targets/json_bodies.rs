//! Every JSON body parser (batch, issue, redeem) on any bytes that are JSON: never a
//! panic, and an accepted request's strings are within their limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = coupond::domain::batch::parse_new_batch(&body);
    if let Ok(issue) = coupond::domain::coupon::parse_issue(&body) {
        assert!(issue.batch_id >= 1);
        assert!(!issue.user_id.trim().is_empty() && issue.user_id.chars().count() <= 64);
    }
    if let Ok(redeem) = coupond::domain::coupon::parse_redeem(&body) {
        assert!(!redeem.order_id.trim().is_empty() && redeem.order_id.chars().count() <= 64);
        assert!(!redeem.user_id.chars().any(char::is_control));
    }
});
