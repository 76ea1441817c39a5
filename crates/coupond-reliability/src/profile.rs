//! How big a run is: `COUPOND_RELIABILITY_PROFILE=ci` (the default, what CI runs: a few
//! minutes on two cores for the whole suite) or `long` (the local soak: more requests,
//! more kills, more outages).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Ci,
    Long,
}

pub const PROFILE_ENV: &str = "COUPOND_RELIABILITY_PROFILE";

impl Profile {
    pub fn current() -> Profile {
        match std::env::var(PROFILE_ENV).as_deref() {
            Ok("long") => Profile::Long,
            Ok("ci") | Ok("") | Err(_) => Profile::Ci,
            Ok(other) => panic!("{PROFILE_ENV}={other:?}: use `ci` or `long`"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Ci => "ci",
            Profile::Long => "long",
        }
    }

    /// `ci` or `long` of anything.
    pub fn pick<T>(self, ci: T, long: T) -> T {
        match self {
            Profile::Ci => ci,
            Profile::Long => long,
        }
    }
}
