//! coupond-bench as a library: the HTTP client, the scenarios, the invariant checks and the
//! server spawner behind the `coupond-bench` binary, for other tools that drive load against
//! coupond (the reliability suite in `crates/coupond-reliability`).

pub mod cli;
pub mod client;
pub mod invariants;
pub mod report;
pub mod scenarios;
pub mod spawn;
pub mod stats;
