//! The `Idempotency-Key` header rules: never a panic; whatever is accepted is 1 to 255
//! visible ASCII characters, returned unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = coupond::idempotency::parse_key(Some(data)) {
        assert!((1..=255).contains(&key.len()));
        assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(key.as_bytes(), data);
    }
});
