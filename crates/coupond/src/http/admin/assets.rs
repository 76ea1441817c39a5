//! The console's stylesheet and script, compiled into the binary. The stylesheet is
//! public (the sign-in page needs it and it holds no data); the script needs a session.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::session::Session;

pub const CSS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/static/admin/admin.css"
));
pub const JS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/static/admin/admin.js"
));

/// A hash of the assets, put in their URLs, so a new build's are fetched afresh.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = Sha256::new();
    hasher.update(CSS.as_bytes());
    hasher.update(JS.as_bytes());
    hex::encode(&hasher.finalize()[..6])
});

pub fn version() -> &'static str {
    VERSION.as_str()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Private: a shared cache never keeps them; the URL changes with the content.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js(_session: Session) -> Response {
    asset("text/javascript; charset=utf-8", JS)
}
