//! API keys: who is calling, and what their scope lets them do.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::code::random_string;

/// Every key starts with this, so a leaked one is easy to recognise (and to grep for).
pub const KEY_PREFIX: &str = "cpd_";
const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// 40 characters of base62: about 238 bits from the OS CSPRNG.
const KEY_RANDOM_CHARS: usize = 40;
/// How much of a key is kept in clear to tell keys apart in lists (`cpd_` + 8).
const DISPLAY_PREFIX_CHARS: usize = 12;
/// A key given by an operator (the bootstrap key) must be at least this long.
pub const MIN_GIVEN_KEY_CHARS: usize = 24;
pub const MAX_KEY_CHARS: usize = 256;
pub const MAX_NAME_CHARS: usize = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything, batch management included.
    Admin,
    /// What a shop back end does: issue, redeem, list and the other coupon operations.
    Service,
    /// Reads only.
    Read,
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    UseCoupons,
    ManageBatches,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Service => "service",
            Scope::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "service" => Some(Scope::Service),
            "read" => Some(Scope::Read),
            _ => None,
        }
    }

    pub fn allows(self, access: Access) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Service => matches!(access, Access::Read | Access::UseCoupons),
            Scope::Read => access == Access::Read,
        }
    }
}

/// An API key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A new key for the database: the hash to store and the key to show once.
pub struct NewApiKey {
    pub name: String,
    pub scope: Scope,
    pub secret: String,
    pub hash: [u8; 32],
    pub prefix: String,
}

impl NewApiKey {
    pub fn generate(name: &str, scope: Scope) -> NewApiKey {
        let secret = format!(
            "{KEY_PREFIX}{}",
            random_string(KEY_ALPHABET, KEY_RANDOM_CHARS)
        );
        NewApiKey::from_secret(name, scope, secret)
    }

    /// A key whose value an operator chose; `None` if it is too short or not visible
    /// ASCII (it has to travel in an `Authorization` header).
    pub fn given(name: &str, scope: Scope, secret: &str) -> Option<NewApiKey> {
        let ok = (MIN_GIVEN_KEY_CHARS..=MAX_KEY_CHARS).contains(&secret.len())
            && secret.bytes().all(|b| (0x21..=0x7e).contains(&b));
        ok.then(|| NewApiKey::from_secret(name, scope, secret.to_owned()))
    }

    fn from_secret(name: &str, scope: Scope, secret: String) -> NewApiKey {
        NewApiKey {
            name: name.to_owned(),
            scope,
            hash: hash_key(&secret),
            prefix: secret.chars().take(DISPLAY_PREFIX_CHARS).collect(),
            secret,
        }
    }
}

pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert!(Scope::Admin.allows(Access::ManageBatches));
        assert!(Scope::Service.allows(Access::UseCoupons));
        assert!(Scope::Service.allows(Access::Read));
        assert!(!Scope::Service.allows(Access::ManageBatches));
        assert!(Scope::Read.allows(Access::Read));
        assert!(!Scope::Read.allows(Access::UseCoupons));
        for s in [Scope::Admin, Scope::Service, Scope::Read] {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("root"), None);
    }

    #[test]
    fn generated_keys() {
        let a = NewApiKey::generate("a", Scope::Read);
        let b = NewApiKey::generate("b", Scope::Read);
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_key(&a.secret));
        assert!(a.secret.starts_with(&a.prefix) && a.prefix.len() == 12);
    }

    #[test]
    fn given_keys_must_be_long_and_printable() {
        assert!(NewApiKey::given("x", Scope::Admin, "short").is_none());
        assert!(NewApiKey::given("x", Scope::Admin, "has a space in it, sadly!!").is_none());
        let k = NewApiKey::given("x", Scope::Admin, "cpd_test_0123456789abcdefghij").expect("ok");
        assert_eq!(k.hash, hash_key("cpd_test_0123456789abcdefghij"));
    }
}
