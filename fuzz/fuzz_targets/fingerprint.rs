//! The request fingerprint: never a panic, and the same for one request however its JSON
//! is laid out (compact or pretty, key order aside), which is what a retry may change.
//!
//! (Not asserted: that re-printing a body keeps its fingerprint. A number serde_json
//! reads as a float, e.g. `111111111111111111112`, comes back as `1.1111111111111111e20`,
//! a different spelling, and serde_json's default float parser does not always read that
//! back to the same bits: a client that re-encodes floats between retries may get
//! IDEMPOTENCY_KEY_BODY_MISMATCH. See docs/RELIABILITY.md.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let fp = |v: &serde_json::Value| coupond::idempotency::fingerprint("POST", "/p/", v);
    assert_eq!(fp(&body).len(), 64);
    let (Ok(compact), Ok(pretty)) = (
        serde_json::to_string(&body),
        serde_json::to_string_pretty(&body),
    ) else {
        return;
    };
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(&compact),
        serde_json::from_str::<serde_json::Value>(&pretty),
    ) else {
        return;
    };
    assert_eq!(fp(&a), fp(&b));
});
