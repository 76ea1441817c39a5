//! Requirements of the reliability issue that today's server does not meet yet. A test
//! still checks them and records what it saw; a violation of a check listed here is a
//! *known gap*: printed, written to the figures, and fatal only with
//! `COUPOND_RELIABILITY_STRICT=1` (so that CI stays green until the server catches up).
//! Every other violation always fails the test. When a gap is closed, its check passes,
//! the test says so, and the entry should go.

use std::collections::BTreeMap;

use coupond_bench::invariants::Violations;

pub const STRICT_ENV: &str = "COUPOND_RELIABILITY_STRICT";

pub struct Gap {
    pub check: &'static str,
    pub needs: &'static str,
}

/// Empty since the server fails fast on PostgreSQL outages (a breaker, SQLSTATE 57P*
/// counted as unavailable) and times out slow headers (its own accept loop). Kept so
/// that a requirement found unmet tomorrow can be recorded without turning CI red.
pub const KNOWN_GAPS: &[Gap] = &[];

pub fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| v == "1")
}

fn gap(check: &str) -> Option<&'static Gap> {
    KNOWN_GAPS.iter().find(|g| g.check == check)
}

/// (violations of invariants and requirements met today, violations of known gaps).
pub fn count(violations: &BTreeMap<&str, Violations>) -> (u64, u64) {
    let mut real = 0;
    let mut gaps = 0;
    for (check, v) in violations {
        if gap(check).is_some() {
            gaps += v.count;
        } else {
            real += v.count;
        }
    }
    (real, gaps)
}

/// Panics on any violation that is not a known gap (on those too when strict); prints
/// the known gaps that were hit, and those that no longer reproduce.
pub fn assert_clean(test: &str, violations: &BTreeMap<&str, Violations>, checked: &[&str]) {
    let strict = strict();
    let mut fatal = Vec::new();
    for (check, v) in violations.iter().filter(|(_, v)| v.count > 0) {
        let line = format!("{check}: {} ({})", v.count, v.samples.join(" | "));
        match gap(check) {
            Some(g) if !strict => {
                eprintln!("{test}: KNOWN GAP (server needs {}): {line}", g.needs);
            }
            _ => fatal.push(line),
        }
    }
    for g in KNOWN_GAPS {
        let hit = violations.get(g.check).is_some_and(|v| v.count > 0);
        if checked.contains(&g.check) && !hit {
            eprintln!(
                "{test}: known gap `{}` no longer reproduces; remove it from KNOWN_GAPS",
                g.check
            );
        }
    }
    assert!(fatal.is_empty(), "{test}:\n{}", fatal.join("\n"));
}
