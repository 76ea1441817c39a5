//! List cursors and coupon codes, the two strings the API takes in paths and query
//! strings and reads back structure from: never a panic; a cursor is accepted only as
//! one this server hands out (it encodes back to the same string), and a normalised
//! code is stable (normalising it again changes nothing).
#![no_main]

use coupond::domain::{code, cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(id) = cursor::decode(text) {
        assert!(id >= 1);
        assert_eq!(cursor::encode(id), text);
    }
    let normalized = code::normalize_code(text);
    assert_eq!(code::normalize_code(&normalized), normalized);
});
