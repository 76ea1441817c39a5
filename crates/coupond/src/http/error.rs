//! The one error type of the HTTP layer. Everything a client sees go wrong is turned
//! into the seed's envelope: `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::domain::FieldErrors;
use crate::idempotency::KeyError;
use crate::storage::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Option<BTreeMap<String, String>>,
    pub retry_after_secs: Option<u32>,
    /// `WWW-Authenticate` to send, for 401s.
    pub challenge: Option<&'static str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a BTreeMap<String, String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: None,
            retry_after_secs: None,
            challenge: None,
        }
    }

    pub fn validation(errors: FieldErrors) -> Self {
        let message = errors.summary();
        ApiError {
            fields: Some(errors.0),
            ..ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION", message)
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource")
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "this method is not allowed on this resource",
        )
    }

    pub fn payload_too_large(limit: Option<usize>) -> Self {
        let message = match limit {
            Some(limit) => format!("the request body must be at most {limit} bytes"),
            None => "the request body is too large".to_owned(),
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message)
    }

    pub fn timeout() -> Self {
        ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "REQUEST_TIMEOUT",
                "the request took too long; retry it with the same Idempotency-Key",
            )
        }
    }

    pub fn body_mismatch() -> Self {
        ApiError::new(
            StatusCode::CONFLICT,
            "IDEMPOTENCY_KEY_BODY_MISMATCH",
            "Idempotency-Key reused with a different request",
        )
    }

    pub fn in_progress() -> Self {
        ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "REQUEST_IN_PROGRESS",
                "a request with this Idempotency-Key is still being processed; try again shortly",
            )
        }
    }

    /// 401: no usable `Authorization: Bearer` header, or a key that is unknown or
    /// revoked (`invalid`).
    pub fn unauthenticated(invalid: bool) -> Self {
        let (message, challenge) = if invalid {
            (
                "the API key is unknown or has been revoked",
                "Bearer realm=\"coupond\", error=\"invalid_token\"",
            )
        } else {
            (
                "send an API key as `Authorization: Bearer <key>`",
                "Bearer realm=\"coupond\"",
            )
        };
        ApiError {
            challenge: Some(challenge),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
        }
    }

    /// 403: the key is valid, its scope does not cover this route.
    pub fn forbidden(scope: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("an API key with scope \"{scope}\" may not do this"),
        )
    }

    /// 429: too many recent COUPON_NOT_FOUND answers for this caller and user.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let secs = u32::try_from(retry_after.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
        ApiError {
            retry_after_secs: Some(secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many unknown coupon codes for this user; wait before trying again",
            )
        }
    }

    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; nothing was stored, the request can be retried",
        )
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        let code = match e {
            KeyError::Missing => "IDEMPOTENCY_KEY_REQUIRED",
            KeyError::Invalid => "IDEMPOTENCY_KEY_INVALID",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if matches!(e, StoreError::LockTimeout) {
            tracing::warn!(error = %e, "write gave up waiting for a lock");
            return ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_BUSY",
                    "the database is too busy right now; nothing was stored, retry later",
                )
            };
        }
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                    "the database is unavailable; nothing was stored, retry later",
                )
            }
        } else {
            tracing::error!(error = %e, "request failed");
            ApiError::internal()
        }
    }
}

/// The envelope's bytes, also used for responses that are stored and replayed.
pub fn envelope_bytes(
    code: &str,
    message: &str,
    fields: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let envelope = Envelope {
        error: Body {
            code,
            message,
            fields,
        },
    };
    serde_json::to_vec(&envelope)
        .unwrap_or_else(|_| b"{\"error\":{\"code\":\"INTERNAL\",\"message\":\"\"}}".to_vec())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = envelope_bytes(self.code, &self.message, self.fields.as_ref());
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
