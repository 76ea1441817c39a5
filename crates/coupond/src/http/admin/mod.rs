//! The admin console: server-rendered pages under `/admin/` for operators (the seed's
//! Django admin, done properly).
//!
//! * Sign-in with an `admin` API key opens a server-side session (`session`); its cookie
//!   is `HttpOnly` and `SameSite=Strict`, and `Secure` behind TLS. Every form carries the
//!   session's CSRF token; wrong keys are throttled per client address.
//! * Every write goes through the API's own path: the console builds the same
//!   `Command` and JSON body the API would, and runs it through `http::write_once` under
//!   the operator's API key, with an idempotency key that the form carries (made when the
//!   page was rendered), so a form sent twice is replayed, not run twice (`actions`).
//! * The pages and their assets are compiled in: askama templates
//!   (`templates/admin/`), a hand-written stylesheet and script (`static/admin/`); the
//!   Content-Security-Policy allows nothing from elsewhere.
//!
//! The console answers below its own layers (request id, trace, metrics, a body limit,
//! a timeout), not below the API's envelope: its errors are pages, not JSON.

mod actions;
mod assets;
mod batches;
mod coupons;
mod dashboard;
mod error;
mod idempotency;
mod keys;
mod session;
mod templates;
mod views;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use super::AppState;
use crate::config::ServeArgs;
use crate::storage::{ActivityWindow, BucketCounts};
use crate::throttle::MissThrottle;

pub use error::AdminError;

/// Failed sign-ins one client address may make per window before it is refused for
/// the rest of that window.
pub const LOGIN_LIMIT: u32 = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The console's Content-Security-Policy: its own scripts, styles and fetches only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// Batches with at least this many coupons get their chart from a cache of
/// `CHART_CACHE_TTL`, so that reloading the page of a big batch costs no new scan.
const CHART_CACHE_FROM: i64 = 10_000;
const CHART_CACHE_TTL: Duration = Duration::from_secs(15);
const CHART_CACHE_ENTRIES: usize = 256;

/// The console's state: the API's, and what only the console keeps.
#[derive(Clone)]
pub struct Admin {
    pub app: AppState,
    inner: Arc<Inner>,
}

struct Inner {
    session_ttl: Duration,
    /// Failed sign-ins per client address (the API key id slot is always 0).
    logins: MissThrottle,
    charts: Mutex<HashMap<i64, (Instant, ActivityWindow, BucketCounts)>>,
}

impl Admin {
    pub fn new(app: AppState, settings: &ServeArgs) -> Admin {
        Admin {
            app,
            inner: Arc::new(Inner {
                session_ttl: settings.admin_session_ttl,
                logins: MissThrottle::new(LOGIN_LIMIT, LOGIN_WINDOW),
                charts: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn session_ttl(&self) -> Duration {
        self.inner.session_ttl
    }

    fn logins(&self) -> &MissThrottle {
        &self.inner.logins
    }

    /// A batch's chart counts, from the cache when the batch is big and they are fresh.
    async fn chart_counts(
        &self,
        batch_id: i64,
        issued: i64,
        window: ActivityWindow,
    ) -> Result<BucketCounts, crate::storage::StoreError> {
        let cacheable = issued >= CHART_CACHE_FROM;
        if cacheable {
            if let Ok(charts) = self.inner.charts.lock() {
                if let Some((at, cached_window, counts)) = charts.get(&batch_id) {
                    if *cached_window == window && at.elapsed() < CHART_CACHE_TTL {
                        return Ok(counts.clone());
                    }
                }
            }
        }
        let counts = self.app.store.batch_activity(batch_id, window).await?;
        if cacheable {
            if let Ok(mut charts) = self.inner.charts.lock() {
                if charts.len() >= CHART_CACHE_ENTRIES {
                    charts.clear();
                }
                charts.insert(batch_id, (Instant::now(), window, counts.clone()));
            }
        }
        Ok(counts)
    }
}

/// The console's routes, with their own layers; requests for any other path are for
/// the caller to route (`fallback_service`).
pub fn router(state: AppState, settings: &ServeArgs) -> Router {
    let admin = Admin::new(state, settings);
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(super::request_span)
                .on_request(())
                .on_response(super::log_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(super::count_request))
        .layer(CatchPanicLayer::custom(|_| {
            AdminError::internal().into_response()
        }))
        .layer(RequestBodyLimitLayer::new(settings.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout,
        ));

    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
        .route("/admin/", get(dashboard::page))
        .route(
            "/admin/fragments/batch-stats",
            get(dashboard::stats_fragment),
        )
        .route(
            "/admin/login",
            get(session::login_page).post(session::login),
        )
        .route("/admin/logout", post(session::logout))
        .route("/admin/static/admin.css", get(assets::css))
        .route("/admin/static/admin.js", get(assets::js))
        .route("/admin/batches", get(batches::list))
        .route(
            "/admin/batches/new",
            get(batches::new_form).post(batches::create),
        )
        .route("/admin/batches/{id}", get(batches::detail))
        .route("/admin/batches/{id}/activate", post(batches::activate))
        .route("/admin/batches/{id}/deactivate", post(batches::deactivate))
        .route("/admin/coupons", get(coupons::search))
        .route("/admin/coupons/{code}", get(coupons::detail))
        .route(
            "/admin/coupons/{code}/cancel",
            get(coupons::confirm_cancel).post(coupons::cancel),
        )
        .route(
            "/admin/coupons/{code}/unredeem",
            get(coupons::confirm_unredeem).post(coupons::unredeem),
        )
        .route("/admin/keys", get(keys::list).post(keys::create))
        .route(
            "/admin/keys/{id}/revoke",
            get(keys::confirm_revoke).post(keys::revoke),
        )
        .route("/admin/idempotency", get(idempotency::lookup))
        .route("/admin/{*rest}", any(error::not_found))
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(admin)
        .layer(layers)
}

/// What every answer of the console carries: nothing from elsewhere may run or be
/// framed, and nothing is kept by a cache unless the handler said so (assets).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
