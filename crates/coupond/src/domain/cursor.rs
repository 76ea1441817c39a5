//! Opaque page cursors. A cursor is the position after the last row of a page; lists
//! are walked newest first by id, which only grows, so rows inserted during a walk
//! land before it and none already there is skipped or repeated.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: &str = "v1";

/// Encodes "continue after id `last_id`".
pub fn encode(last_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{VERSION}:{last_id}"))
}

/// The id a cursor continues after; `None` for anything this server did not hand out.
pub fn decode(cursor: &str) -> Option<i64> {
    if cursor.len() > 64 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let id = text.strip_prefix(VERSION)?.strip_prefix(':')?;
    // Only the spelling `encode` produces: one cursor per position, no leading zeros.
    if id.is_empty() || id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse::<i64>().ok().filter(|id| *id >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(42)), Some(42));
        assert_eq!(decode(""), None);
        assert_eq!(decode("!!!"), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("v1:-3")), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("v2:3")), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("v1:0")), None);
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("v1:007")), None);
    }

    proptest! {
        #[test]
        fn any_id_round_trips(id in 1i64..=i64::MAX) {
            prop_assert_eq!(decode(&encode(id)), Some(id));
        }

        #[test]
        fn garbage_never_panics(s in ".{0,100}") {
            let _ = decode(&s);
        }

        #[test]
        fn only_what_encode_made_is_accepted(id in "[0-9]{1,20}", prefix in "(v1:|v1|v2:|)") {
            let s = URL_SAFE_NO_PAD.encode(format!("{prefix}{id}"));
            if let Some(id) = decode(&s) {
                prop_assert_eq!(encode(id), s);
            }
        }
    }
}
