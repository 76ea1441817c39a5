//! Coupon codes: what the seed hands out (10 characters of A-Z0-9) by default, or a
//! batch's own format: a length, a prefix, and an alphabet without look-alikes.

use rand::rngs::OsRng;
use rand::RngCore;

pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// A-Z0-9 without 0/O, 1/I/L, which people misread on paper.
pub const UNAMBIGUOUS_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
pub const CODE_LENGTH: usize = 10;
pub const MIN_RANDOM_CHARS: usize = 6;
pub const MAX_RANDOM_CHARS: usize = 32;
pub const MAX_PREFIX_CHARS: usize = 16;
/// The longest code a client may send; longer ones cannot exist (prefix + random part).
pub const MAX_CODE_LENGTH: usize = 64;
/// Collisions are astronomically rare in the spaces a batch may use; a few retries
/// only guard against a bad streak, after which the failure is reported rather than
/// looping forever.
pub const MAX_CODE_ATTEMPTS: usize = 8;
/// A batch's code space must hold this many codes per coupon it may hand out, so that
/// a guessed code hits a real one at most once in a million tries (and the throttle
/// on COUPON_NOT_FOUND stops a guesser long before).
pub const MIN_SPACE_PER_COUPON: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alphabet {
    #[default]
    Standard,
    Unambiguous,
}

impl Alphabet {
    pub fn symbols(self) -> &'static [u8] {
        match self {
            Alphabet::Standard => CODE_ALPHABET,
            Alphabet::Unambiguous => UNAMBIGUOUS_ALPHABET,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alphabet::Standard => "standard",
            Alphabet::Unambiguous => "unambiguous",
        }
    }

    pub fn parse(s: &str) -> Option<Alphabet> {
        match s {
            "standard" => Some(Alphabet::Standard),
            "unambiguous" => Some(Alphabet::Unambiguous),
            _ => None,
        }
    }
}

/// How a batch's codes look: `prefix` followed by `length` random symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFormat {
    pub length: usize,
    pub prefix: String,
    pub alphabet: Alphabet,
}

impl Default for CodeFormat {
    fn default() -> Self {
        CodeFormat {
            length: CODE_LENGTH,
            prefix: String::new(),
            alphabet: Alphabet::Standard,
        }
    }
}

impl CodeFormat {
    /// A fresh code from the operating system's CSPRNG.
    pub fn generate(&self) -> String {
        let mut code = String::with_capacity(self.prefix.len() + self.length);
        code.push_str(&self.prefix);
        code.push_str(&random_string(self.alphabet.symbols(), self.length));
        code
    }

    /// How many different codes the format has.
    pub fn space(&self) -> f64 {
        (self.alphabet.symbols().len() as f64).powi(self.length as i32)
    }

    /// Whether `total_limit` coupons fit with room to spare (`MIN_SPACE_PER_COUPON`).
    pub fn fits(&self, total_limit: i64) -> bool {
        self.space() >= total_limit.max(1) as f64 * MIN_SPACE_PER_COUPON
    }

    pub fn space_description(&self) -> String {
        format!("{:.3e}", self.space())
    }
}

/// A fresh code in the seed's format.
pub fn generate_code() -> String {
    CodeFormat::default().generate()
}

/// Codes are handed out in upper case and matched in any case, so that a code typed
/// in by hand still works.
pub fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

/// A code a client sent, ready to look up; `None` when no coupon can have it (empty,
/// too long, or holding a control character, which PostgreSQL text cannot even hold).
pub fn code_to_look_up(raw: &str) -> Option<String> {
    let code = normalize_code(raw);
    let possible =
        !code.is_empty() && code.len() <= MAX_CODE_LENGTH && !code.chars().any(char::is_control);
    possible.then_some(code)
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
    use proptest::prelude::*;

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

    #[test]
    fn unambiguous_codes_have_no_look_alikes() {
        let format = CodeFormat {
            length: 12,
            prefix: "XMAS-".into(),
            alphabet: Alphabet::Unambiguous,
        };
        for _ in 0..1000 {
            let code = format.generate();
            let random = code.strip_prefix("XMAS-").expect("prefix");
            assert_eq!(random.len(), 12);
            assert!(!random.contains(['0', 'O', '1', 'I', 'L']), "{code}");
        }
        assert_eq!(UNAMBIGUOUS_ALPHABET.len(), 31);
    }

    #[test]
    fn code_space_rule() {
        let six = CodeFormat {
            length: 6,
            ..CodeFormat::default()
        };
        // 36^6 = 2.18e9: room for 2176 coupons at a million codes each.
        assert!(six.fits(2_176));
        assert!(!six.fits(2_177));
        assert!(CodeFormat::default().fits(1_000_000));
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent(code in "[ a-zA-Z0-9-]{0,40}") {
            let once = normalize_code(&code);
            prop_assert_eq!(normalize_code(&once), once.clone());
            prop_assert!(!once.bytes().any(|b| b.is_ascii_lowercase()));
        }
    }
}
