//! The admin console (`/admin/`) as an operator uses it, on SQLite and on PostgreSQL.
//!
//! * `console`: the whole round in a real headless Chromium (Debian's `chromium`,
//!   driven by `chromedriver` over WebDriver): sign in, create a batch, issue through
//!   the API, find the coupon, cancel it, see the event, revoke a key, sign out, and
//!   CSRF attempts that fail. It takes a screenshot of every page; the SQLite run keeps
//!   them in `docs/admin/` (for the README), the PostgreSQL run under `target/`.
//! * `http`: what a browser cannot easily show, over plain HTTP: pages and assets
//!   without a session, cookie flags and headers, throttled sign-in, CSRF and origin
//!   checks, replayed forms, session expiry and revocation.
//!
//! Run: `cargo test -p coupond --test admin_browser`. Chromium missing is a failure:
//! `apt-get install -y chromium chromium-driver`. PostgreSQL as for the API suite
//! (`COUPOND_TEST_POSTGRES_URL`).

#[path = "../api/helpers.rs"]
mod helpers;

mod browser;
mod console;
mod http;
mod web;
