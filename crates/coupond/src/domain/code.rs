//! Coupon codes: what the seed hands out, 10 characters of A-Z0-9.

use rand::rngs::OsRng;
use rand::Rng;

pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const CODE_LENGTH: usize = 10;
/// The longest code a client may send; longer ones cannot exist (the seed's column is 16).
pub const MAX_CODE_LENGTH: usize = 64;
/// Collisions are astronomically rare at 36^10 codes; a few retries only guard against
/// a bad streak, after which the failure is reported rather than looping forever.
pub const MAX_CODE_ATTEMPTS: usize = 8;

/// A fresh code from the operating system's CSPRNG.
pub fn generate_code() -> String {
    let mut rng = OsRng;
    (0..CODE_LENGTH)
        .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_seed_format() {
        for _ in 0..1000 {
            let code = generate_code();
            assert_eq!(code.len(), CODE_LENGTH);
            assert!(code.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{code}");
        }
    }

    #[test]
    fn codes_differ() {
        let codes: std::collections::HashSet<_> = (0..10_000).map(|_| generate_code()).collect();
        assert_eq!(codes.len(), 10_000);
    }
}
