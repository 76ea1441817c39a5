//! What the console answers when a page cannot be shown: a page, never JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::session::Session;
use super::templates::ErrorPage;
use crate::http::ApiError;
use crate::storage::StoreError;

#[derive(Debug, Clone)]
pub struct AdminError {
    pub status: StatusCode,
    pub title: String,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl AdminError {
    pub fn new(status: StatusCode, title: impl Into<String>, message: impl Into<String>) -> Self {
        AdminError {
            status,
            title: title.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        AdminError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("There is no {what} here."),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        AdminError::new(
            StatusCode::BAD_REQUEST,
            "This request cannot be used",
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        AdminError::new(StatusCode::FORBIDDEN, "Refused", message)
    }

    pub fn internal() -> Self {
        AdminError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Nothing was stored; try again.",
        )
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        let title = if e.status.is_server_error() {
            "The service could not do this now"
        } else {
            "Refused"
        };
        AdminError {
            status: e.status,
            title: title.to_owned(),
            message: e.message,
            retry_after: e.retry_after_secs,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        // The API's mapping (and its logging): 503 for an unreachable database, 500 else.
        AdminError::from(ApiError::from(e))
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            v: super::assets::version(),
            status: self.status.as_u16(),
            title: &self.title,
            message: &self.message,
        };
        let body = askama::Template::render(&page).unwrap_or_else(|_| self.message.clone());
        let mut response = (self.status, Html(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Any other path under `/admin/`: not found for an operator; for anyone else the
/// session extractor has already sent them to sign in, so no path is confirmed to
/// exist without a session.
pub async fn not_found(_session: Session) -> AdminError {
    AdminError::not_found("page")
}

pub async fn method_not_allowed() -> AdminError {
    AdminError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Not allowed",
        "This page does not take that kind of request.",
    )
}
