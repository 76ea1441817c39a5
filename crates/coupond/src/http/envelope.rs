//! The last word on error bodies: whatever a layer below answered (a timeout, a body
//! limit, a rejection of an axum extractor), the client gets the seed's envelope.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// A plain-text reason longer than this is cut; it is only ever a short sentence.
const MAX_REASON: usize = 4 * 1024;

pub async fn ensure_envelope(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let reason = axum::body::to_bytes(body, MAX_REASON)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|s| !s.is_empty());
    let mut error = match status {
        StatusCode::NOT_FOUND => ApiError::not_found(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(None),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::timeout(),
        s if s.is_client_error() => ApiError::bad_request(
            reason.unwrap_or_else(|| "the request could not be understood".to_owned()),
        ),
        _ => ApiError::internal(),
    }
    .into_response();
    // Keep what the layer below set that still holds (e.g. `Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            error.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    error
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
