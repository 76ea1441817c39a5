//! The `/metrics` page, served on its own listener (`--metrics-bind`), to callers with
//! an API key of any scope (Prometheus: `authorization: {credentials: <key>}`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::auth::bearer_token;
use super::error::ApiError;
use super::AppState;
use crate::metrics::{self, DB_CONNECTIONS, WRITER_QUEUE};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
}

async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(token) = bearer_token(&headers) else {
        return ApiError::unauthenticated(false).into_response();
    };
    match state.keys.authenticate(token).await {
        Ok(Some(_)) => {}
        Ok(None) => return ApiError::unauthenticated(true).into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    }
    let Some(handle) = metrics::handle() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response();
    };
    let stats = state.store.pool_stats();
    let backend = state.store.backend();
    ::metrics::gauge!(DB_CONNECTIONS, "state" => "idle", "backend" => backend)
        .set(stats.idle as f64);
    ::metrics::gauge!(DB_CONNECTIONS, "state" => "in_use", "backend" => backend)
        .set(stats.in_use as f64);
    ::metrics::gauge!(WRITER_QUEUE).set(stats.queued_writes as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
