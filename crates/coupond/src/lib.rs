//! coupond: a coupon service whose every write happens exactly once per idempotency key.
//!
//! Layers, outermost first: `http` (routing, extractors, the error envelope), `idempotency`
//! (the exactly-once write path), `domain` (the coupon rules, no I/O) and `storage` (every
//! SQL statement and transaction, one store per backend). `app` wires them into a server.

pub mod app;
pub mod config;
pub mod domain;
pub mod faults;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod serve;
pub mod storage;
pub mod telemetry;
pub mod throttle;
