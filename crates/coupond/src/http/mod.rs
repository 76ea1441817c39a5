//! HTTP: routes, extractors and the error envelope. Handlers only translate between
//! the wire and the domain; the rules live in `domain`, the transactions in `storage`.

mod coupons;
mod error;
mod extract;
mod render;

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::idempotency::{self, InFlight, Policy, Write};
use crate::storage::{Command, Store, WriteOutcome};

/// Until API keys exist every caller shares one idempotency scope.
pub const GLOBAL_SCOPE: &str = "global";

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub in_flight: InFlight,
    pub policy: Policy,
    pub body_limit: usize,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/coupon-batches/", post(coupons::create_batch))
        .route("/v1/coupons/issue/", post(coupons::issue_coupon))
        .route("/v1/coupons/redeem/", post(coupons::redeem_coupon))
        .route("/v1/coupons/", get(coupons::list_coupons))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| ApiError::internal().into_response()))
        .layer(TraceLayer::new_for_http())
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Json(json!({"status": "ready", "database": state.store.backend()})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": e.to_string()}))).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": "database did not answer within 2s"}))).into_response(),
    }
}

/// The path every write takes: once per idempotency key, the response stored with the
/// effect, replays marked.
async fn write_once(
    state: &AppState,
    key: String,
    fingerprint: String,
    command: Command,
) -> Result<Response, ApiError> {
    let write = Write {
        scope: GLOBAL_SCOPE.to_owned(),
        key,
        fingerprint,
        command,
        render: render::render_command_result,
    };
    match idempotency::run_once(&state.store, &state.in_flight, state.policy, write).await? {
        WriteOutcome::Executed(stored) => Ok(render::stored_response(stored, false)),
        WriteOutcome::Replayed(stored) => Ok(render::stored_response(stored, true)),
        WriteOutcome::FingerprintMismatch => Err(ApiError::body_mismatch()),
        WriteOutcome::InProgress => Err(ApiError::in_progress()),
    }
}
