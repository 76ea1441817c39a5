//! Integration tests of the coupon lifecycle: batch stats, start dates, activation,
//! minimum orders and capped discounts, code formats, validate, cancel, unredeem,
//! expiry, history, cursor pagination, bulk codes and their CSV, and idempotency of
//! every new write. Real servers, real databases, real HTTP, through the shared harness
//! of the `api` suite. Every test runs on SQLite and on PostgreSQL (`name::sqlite`,
//! `name::postgres`).
//!
//! Run: `cargo test -p coupond --test lifecycle` (PostgreSQL from
//! `COUPOND_TEST_POSTGRES_URL`, as for the `api` suite). The million-code test prints
//! how long it took; see it with `-- --nocapture bulk::a_million_codes`.

#[path = "../api/helpers.rs"]
mod helpers;
mod support;

mod batches;
mod bulk;
mod cancel_unredeem;
mod codes;
mod events;
mod expiry;
mod idempotency;
mod list;
mod redeem;
mod validate;
