//! Integration tests for coupond: real servers, real databases, real HTTP. One binary, so
//! the crate links once. Every test runs on SQLite and on PostgreSQL (`name::sqlite`,
//! `name::postgres`).
//!
//! Run: `cargo test -p coupond --test api` (or `cargo nextest run -p coupond`).
//! * PostgreSQL: databases are created from the maintenance URL in
//!   `COUPOND_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   one per test, and dropped afterwards. If it is unreachable the `::postgres` tests
//!   fail; they never skip.
//! * `COUPOND_TEST_LOG=debug` (any tracing filter) shows the servers' logs.
//!
//! The harness is in `helpers.rs`; a new test is an `async fn name(backend: Backend)`
//! followed by `backend_test!(name);`.

mod helpers;

mod api_keys;
mod bad_input;
mod batches;
mod bootstrap;
mod concurrency;
mod idempotency;
mod issue;
mod lifecycle;
mod list;
mod operability;
mod redeem;
mod seed_flow;
mod spec_conformance;
mod timestamps;
mod troubleshooting;
