//! Authentication and scopes. Every `/v1/` request must carry
//! `Authorization: Bearer <key>`; the middleware resolves it to a `Caller` before
//! routing, and each handler names the access it needs with `Authorized<…>`, which is
//! its first extractor: a refused request never reaches the idempotency machinery.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::domain::Access;
use crate::keys::Caller;

/// Resolves the bearer token of `/v1/` requests; other paths pass untouched.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if !(path == "/v1" || path.starts_with("/v1/")) {
        return next.run(request).await;
    }
    let Some(token) = bearer_token(request.headers()) else {
        return ApiError::unauthenticated(false).into_response();
    };
    match state.keys.authenticate(token).await {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => ApiError::unauthenticated(true).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The token of an `Authorization: Bearer …` header (scheme in any case), if there is
/// exactly one such header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What a handler needs of its caller.
pub trait Needs {
    const ACCESS: Access;
}

/// GET routes.
pub struct ReadAccess;
/// Issue, redeem and the other coupon operations of a shop back end.
pub struct CouponAccess;
/// Creating and managing batches.
pub struct BatchAccess;

impl Needs for ReadAccess {
    const ACCESS: Access = Access::Read;
}
impl Needs for CouponAccess {
    const ACCESS: Access = Access::UseCoupons;
}
impl Needs for BatchAccess {
    const ACCESS: Access = Access::ManageBatches;
}

/// A caller whose scope allows `N`.
pub struct Authorized<N: Needs>(pub Caller, pub PhantomData<N>);

impl<S: Send + Sync, N: Needs> FromRequestParts<S> for Authorized<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated(false))?;
        if !caller.scope.allows(N::ACCESS) {
            return Err(ApiError::forbidden(caller.scope.as_str()));
        }
        Ok(Authorized(caller, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
        }
        h
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(&headers(&["Bearer cpd_abc"])), Some("cpd_abc"));
        assert_eq!(
            bearer_token(&headers(&["bearer  cpd_abc "])),
            Some("cpd_abc")
        );
        assert_eq!(bearer_token(&headers(&["Basic dXNlcjpwYXNz"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer "])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer b"])), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
