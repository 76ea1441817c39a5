//! HTTP: routes, extractors and the error envelope. Handlers only translate between
//! the wire and the domain; the rules live in `domain`, the transactions in `storage`.

pub mod admin;
mod auth;
mod batches;
mod coupons;
mod envelope;
mod error;
mod extract;
pub mod metrics_page;
pub mod openapi;
mod render;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use error::ApiError;

use crate::config::ServeArgs;
use crate::idempotency::{self, InFlight, Policy, RecordCache, Write};
use crate::jobs::CodeJobs;
use crate::keys::{Caller, Keys};
use crate::storage::{Command, Store, WriteOutcome};
use crate::throttle::MissThrottle;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub keys: Keys,
    pub code_jobs: CodeJobs,
    pub in_flight: InFlight,
    pub replays: RecordCache,
    pub policy: Policy,
    pub throttle: Arc<MissThrottle>,
    pub body_limit: usize,
}

pub fn router(state: AppState, settings: &ServeArgs) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(axum::middleware::from_fn(envelope::ensure_envelope))
        .layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
        .layer(RequestBodyLimitLayer::new(settings.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout,
        ));

    let api = Router::new()
        .route(
            "/v1/coupon-batches/",
            post(batches::create_batch).get(batches::list_batches),
        )
        .route("/v1/coupon-batches/{id}/", get(batches::get_batch))
        .route(
            "/v1/coupon-batches/{id}/activate/",
            post(batches::activate_batch),
        )
        .route(
            "/v1/coupon-batches/{id}/deactivate/",
            post(batches::deactivate_batch),
        )
        .route(
            "/v1/coupon-batches/{id}/codes/",
            post(batches::start_code_job),
        )
        .route(
            "/v1/coupon-batches/{id}/codes/{job_id}/",
            get(batches::get_code_job),
        )
        .route(
            "/v1/coupon-batches/{id}/codes.csv",
            get(batches::export_codes),
        )
        .route("/v1/coupons/", get(coupons::list_coupons))
        .route("/v1/coupons/issue/", post(coupons::issue_coupon))
        .route("/v1/coupons/redeem/", post(coupons::redeem_coupon))
        .route("/v1/coupons/validate/", post(coupons::validate_coupon))
        .route("/v1/coupons/cancel/", post(coupons::cancel_coupon))
        .route("/v1/coupons/unredeem/", post(coupons::unredeem_coupon))
        .route("/v1/coupons/{code}/", get(coupons::get_coupon))
        .route("/v1/coupons/{code}/events/", get(coupons::coupon_events))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        // The page and its assets are compiled in; it reads the spec from /openapi.json
        // and calls nothing outside (no online validator).
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::new(["/openapi.json"]).validator_url("none")),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state.clone())
        .layer(layers);

    // The admin console (`/admin/…`) has layers of its own (its errors are pages, not
    // the API's JSON envelope); every other request goes to the API as before.
    admin::router(state, settings).fallback_service(api)
}

/// Counts every answer (after the envelope and auth layers, so it sees what the client
/// sees) by method, route template and status.
async fn count_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(crate::metrics::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("")
        .to_owned();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route,
        request_id = %request_id,
    )
}

fn log_response(response: &Response, latency: Duration, _span: &Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
}

/// The OpenAPI description of this API.
async fn openapi_json() -> Response {
    static SPEC: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi::spec_json);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        SPEC.as_str(),
    )
        .into_response()
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = openapi::Health)),
)]
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The database is reachable and its schema is up to date.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\", \"database\": …}`", body = openapi::Health),
        (status = 503, description = "Not ready: `{\"status\": \"unavailable\", \"reason\": …}`", body = openapi::Health),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            Json(json!({"status": "ready", "database": state.store.backend()})).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": e.to_string()})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "database did not answer within 2s"})),
        )
            .into_response(),
    }
}

/// The path every write takes: once per idempotency key, the response stored with the
/// effect, replays marked.
/// The parameters of a query string, in order.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| ApiError::bad_request("the query string could not be decoded"))
}

/// The path every write takes: once per idempotency key, the response stored with the
/// effect, replays marked.
async fn write_once(
    state: &AppState,
    caller: &Caller,
    key: String,
    fingerprint: String,
    command: Command,
) -> Result<Response, ApiError> {
    let succeeded = match &command {
        Command::CreateBatch(_) => crate::metrics::BATCHES_CREATED,
        Command::Issue(_) => crate::metrics::COUPONS_ISSUED,
        Command::Redeem(_) => crate::metrics::COUPONS_REDEEMED,
        Command::Cancel(_) => crate::metrics::COUPONS_CANCELLED,
        Command::Unredeem(_) => crate::metrics::COUPONS_UNREDEEMED,
        Command::SetBatchActive { .. } => crate::metrics::BATCH_CHANGES,
        Command::StartCodeJob(_) => crate::metrics::CODE_JOBS_STARTED,
    };
    let write = Write {
        scope: caller.idempotency_scope(),
        actor: Some(caller.key_id),
        key,
        fingerprint,
        command,
        render: render::render_command_result,
    };
    let outcome = idempotency::run_once(
        &state.store,
        &state.in_flight,
        &state.replays,
        state.policy,
        write,
    )
    .await?;
    match outcome {
        WriteOutcome::Executed(stored) => {
            if (200..300).contains(&stored.status) {
                metrics::counter!(succeeded).increment(1);
            } else if let Some(code) = render::error_code(&stored.body) {
                metrics::counter!(crate::metrics::REJECTIONS, "code" => code).increment(1);
            }
            Ok(render::stored_response(stored, false))
        }
        WriteOutcome::Replayed(replay) => Ok(render::stored_response(replay.into_response(), true)),
        WriteOutcome::FingerprintMismatch => {
            metrics::counter!(crate::metrics::MISMATCHES).increment(1);
            Err(ApiError::body_mismatch())
        }
        WriteOutcome::InProgress => {
            metrics::counter!(crate::metrics::IN_PROGRESS).increment(1);
            Err(ApiError::in_progress())
        }
    }
}
