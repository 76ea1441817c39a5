//! Coupon codes: what the seed hands out, 10 characters of A-Z0-9.

use rand::rngs::OsRng;
use rand::RngCore;

pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const CODE_LENGTH: usize = 10;
/// The longest code a client may send; longer ones cannot exist (the seed's column is 16).
pub const MAX_CODE_LENGTH: usize = 64;
/// Collisions are astronomically rare at 36^10 codes; a few retries only guard against
/// a bad streak, after which the failure is reported rather than looping forever.
pub const MAX_CODE_ATTEMPTS: usize = 8;

/// A fresh code from the operating system's CSPRNG.
pub fn generate_code() -> String {
    random_string(CODE_ALPHABET, CODE_LENGTH)
}

/// `len` characters drawn uniformly from `alphabet` (at most 256 symbols), with one
/// read of the OS CSPRNG for most strings instead of one per character.
pub fn random_string(alphabet: &[u8], len: usize) -> String {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let n = alphabet.len();
    // Bytes at or above the largest multiple of n would favour the first symbols.
    let limit = (256 / n) * n;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut buf);
        for &b in &buf {
            if usize::from(b) < limit {
                out.push(char::from(alphabet[usize::from(b) % n]));
                if out.len() == len {
                    break;
                }
            }
        }
    }
    out
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
    fn every_symbol_is_drawn_about_equally() {
        let mut counts = [0usize; 36];
        let s = random_string(CODE_ALPHABET, 36_000);
        for b in s.bytes() {
            let i = CODE_ALPHABET
                .iter()
                .position(|c| *c == b)
                .expect("in alphabet");
            counts[i] += 1;
        }
        // 1000 expected each; 6 sigma is about 190.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn codes_differ() {
        let codes: std::collections::HashSet<_> = (0..10_000).map(|_| generate_code()).collect();
        assert_eq!(codes.len(), 10_000);
    }
}
