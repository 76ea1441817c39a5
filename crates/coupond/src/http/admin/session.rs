//! Signing in and out, the session every other page needs, and the checks every form
//! passes: the CSRF token of the session (compared in constant time), the request's
//! origin, and the `SameSite=Strict` cookie itself.
//!
//! A session token is 32 bytes from the OS generator, sent only in the cookie; the
//! database keeps its SHA-256. Sessions expire on the server (`COUPOND_ADMIN_SESSION_TTL`)
//! and end at sign-out or when their API key is revoked (the lookup joins the key). A
//! new sign-in always opens a new session, so no token chosen by anyone else is ever
//! adopted. The sign-in form has a CSRF token of its own, in a short-lived cookie.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::templates::{render, LoginPage};
use super::{Admin, AdminError};
use crate::domain::Scope;
use crate::keys::Caller;
use crate::storage::NewAdminSession;

pub const SESSION_COOKIE: &str = "coupond_admin";
pub const LOGIN_COOKIE: &str = "coupond_admin_login";
/// A session's last use is written at most this often.
const TOUCH_EVERY: time::Duration = time::Duration::seconds(60);
/// Tokens are 43 characters; anything much longer is not one of ours.
const MAX_TOKEN_CHARS: usize = 128;
/// How long a sign-in form stays usable.
const LOGIN_FORM_SECS: u64 = 3600;
const MAX_NEXT_CHARS: usize = 512;

/// An operator signed in to the console.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    /// The admin API key the operator signed in with: every write runs as it.
    pub caller: Caller,
    pub csrf: String,
    pub expires_at: OffsetDateTime,
}

impl Session {
    /// The form's `csrf` field must be this session's token.
    pub fn check_csrf(&self, form: &Form) -> Result<(), AdminError> {
        let sent = form.get("csrf").unwrap_or("");
        if ct_eq(sent.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            tracing::warn!(session = self.id, "admin console: CSRF token mismatch");
            Err(AdminError::forbidden(
                "The form's security token does not belong to your session (CSRF check \
                 failed), so nothing was done. Reload the page and try again.",
            ))
        }
    }
}

impl FromRequestParts<Admin> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Session, Response> {
        if !is_safe(&parts.method) && !same_origin(&parts.headers) {
            return Err(cross_site_refused().into_response());
        }
        let now = crate::domain::now();
        let token = cookie(&parts.headers, SESSION_COOKIE);
        let found = match token {
            Some(token) if token.len() <= MAX_TOKEN_CHARS => admin
                .app
                .store
                .find_admin_session(&hash_token(token), now)
                .await
                .map_err(|e| AdminError::from(e).into_response())?,
            _ => None,
        };
        let Some(found) = found else {
            return Err(signed_out(parts, token.is_some()));
        };
        if now - found.last_seen_at >= TOUCH_EVERY {
            if let Err(e) = admin.app.store.touch_admin_session(found.id, now).await {
                tracing::warn!(error = %e, "recording an admin session's use failed");
            }
        }
        Ok(Session {
            id: found.id,
            caller: Caller {
                key_id: found.api_key_id,
                name: found.key_name,
                scope: Scope::Admin,
            },
            csrf: found.csrf_token,
            expires_at: found.expires_at,
        })
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// No session: assets and fragments are refused, pages send the browser to sign in
/// (and back afterwards), and a form is refused without doing anything.
fn signed_out(parts: &Parts, had_cookie: bool) -> Response {
    let path = parts.uri.path();
    let mut response =
        if path.starts_with("/admin/static/") || path.starts_with("/admin/fragments/") {
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "sign in at /admin/login first",
            )
                .into_response()
        } else if path == "/admin/logout" {
            // Signing out of a session that has already ended: done.
            Redirect::to("/admin/login?signed_out=1").into_response()
        } else if is_safe(&parts.method) {
            let next = parts.uri.path_and_query().map_or("/admin/", |p| p.as_str());
            let mut location = format!(
                "/admin/login?{}",
                encode_pair("next", &safe_next(Some(next)))
            );
            if had_cookie {
                location.push_str("&ended=1");
            }
            Redirect::to(&location).into_response()
        } else {
            AdminError::forbidden(
                "You are not signed in (or your session has ended), so nothing was done. Sign \
             in again and repeat what you were doing.",
            )
            .into_response()
        };
    if had_cookie {
        let secure = is_tls(&parts.headers);
        add_cookie(
            &mut response,
            &clear_cookie(SESSION_COOKIE, "/admin", secure),
        );
    }
    response
}

fn cross_site_refused() -> AdminError {
    AdminError::forbidden(
        "This form was sent from another site (cross-site request refused), so nothing \
         was done.",
    )
}

/// Whether a state-changing request comes from the console's own pages: no
/// `Sec-Fetch-Site` other than `same-origin`, and no `Origin` other than this host (as
/// `Host` names it, or `X-Forwarded-Host` behind a proxy that rewrites `Host`: a page of
/// another site cannot add that header to a request the browser lets through). A
/// request with neither (not a browser) still needs the session's CSRF token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(authority) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority)
    else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let forwarded_host = headers
        .get("x-forwarded-host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next())
        .map(str::trim);
    [host, forwarded_host]
        .into_iter()
        .flatten()
        .any(|h| authority.eq_ignore_ascii_case(h))
}

/// Whether the browser reached coupond over TLS (a proxy in front terminating it says
/// so in `X-Forwarded-Proto` or `Forwarded`): then cookies are `Secure`.
pub fn is_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split([';', ','])
                .any(|part| part.trim().eq_ignore_ascii_case("proto=https"))
        });
    forwarded_proto || forwarded
}

/// The value of cookie `name`, if the request sent it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

fn cookie_header(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

fn clear_cookie(name: &str, path: &str, secure: bool) -> String {
    cookie_header(name, "", path, 0, secure)
}

fn add_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// 32 bytes from the OS generator, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality that takes as long whatever the first difference (the lengths of our
/// tokens are public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Where to go after signing in: a console page, never anywhere else.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.len() <= MAX_NEXT_CHARS
                && (n == "/admin" || n.starts_with("/admin/"))
                && !n.starts_with("/admin/login")
                && !n.starts_with("/admin/logout")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/admin/".to_owned(),
    }
}

fn encode_pair(name: &str, value: &str) -> String {
    serde_urlencoded::to_string([(name, value)]).unwrap_or_default()
}

/// An `application/x-www-form-urlencoded` body.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The last value of a field, as a repeated query parameter counts.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = AdminError;

    async fn from_request(request: Request, state: &S) -> Result<Form, AdminError> {
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(AdminError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "This request cannot be used",
                "The console takes forms only.",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|_| {
            AdminError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "This request cannot be used",
                "The form is too large.",
            )
        })?;
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .map(Form)
            .map_err(|_| AdminError::bad_request("The form could not be read."))
    }
}

/// The client's address, to throttle wrong keys by (behind a proxy, the proxy's).
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string()),
        ))
    }
}

/// The sign-in page, with a fresh form token in its cookie.
fn login_form(
    admin: &Admin,
    status: StatusCode,
    headers: &HeaderMap,
    next: &str,
    error: Option<String>,
    info: Option<&'static str>,
) -> Response {
    let token = random_token();
    let page = LoginPage {
        v: super::assets::version(),
        login_token: &token,
        next,
        error: error.as_deref(),
        info,
        session_ttl: humantime::format_duration(admin.session_ttl()).to_string(),
    };
    let mut response = render(status, &page);
    add_cookie(
        &mut response,
        &cookie_header(
            LOGIN_COOKIE,
            &token,
            "/admin/login",
            LOGIN_FORM_SECS,
            is_tls(headers),
        ),
    );
    response
}

pub async fn login_page(
    State(admin): State<Admin>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, AdminError> {
    let pairs = crate::http::query_pairs(query.as_deref()).unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let next = safe_next(get("next"));
    if let Some(token) = cookie(&headers, SESSION_COOKIE).filter(|t| t.len() <= MAX_TOKEN_CHARS) {
        let found = admin
            .app
            .store
            .find_admin_session(&hash_token(token), crate::domain::now())
            .await?;
        if found.is_some() {
            return Ok(Redirect::to(&next).into_response());
        }
    }
    let info = if get("signed_out").is_some() {
        Some("You are signed out.")
    } else if get("revoked").is_some() {
        Some("The API key you signed in with was revoked, so your session has ended.")
    } else if get("ended").is_some() {
        Some("Your session has ended; sign in again.")
    } else {
        None
    };
    Ok(login_form(
        &admin,
        StatusCode::OK,
        &headers,
        &next,
        None,
        info,
    ))
}

pub async fn login(
    State(admin): State<Admin>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, AdminError> {
    if !same_origin(&headers) {
        return Err(cross_site_refused());
    }
    let next = safe_next(form.get("next"));
    let form_token = form.get("login_token").unwrap_or("");
    let cookie_token = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if form_token.is_empty() || !ct_eq(form_token.as_bytes(), cookie_token.as_bytes()) {
        return Ok(login_form(
            &admin,
            StatusCode::FORBIDDEN,
            &headers,
            &next,
            Some("This sign-in form had expired or was not sent from this page (CSRF check). It has been renewed: sign in again.".to_owned()),
            None,
        ));
    }
    if let Err(wait) = admin.logins().check(0, &client) {
        let minutes = wait.as_secs().div_ceil(60).max(1);
        let mut response = login_form(
            &admin,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            &next,
            Some(format!(
                "Too many wrong keys were tried from your address. Try again in {minutes} \
                 minute{}.",
                if minutes == 1 { "" } else { "s" }
            )),
            None,
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().saturating_add(1)),
        );
        return Ok(response);
    }
    let key = form.get("key").map(str::trim).unwrap_or("");
    if key.is_empty() {
        return Ok(login_form(
            &admin,
            StatusCode::UNPROCESSABLE_ENTITY,
            &headers,
            &next,
            Some("Enter an admin API key.".to_owned()),
            None,
        ));
    }
    let caller = admin.app.keys.authenticate(key).await?;
    let Some(caller) = caller.filter(|c| c.scope == Scope::Admin) else {
        admin.logins().record_miss(0, &client);
        tracing::warn!(client = %client, "admin console: sign-in with a key that is not an active admin key");
        return Ok(login_form(
            &admin,
            StatusCode::UNAUTHORIZED,
            &headers,
            &next,
            Some("That is not an active admin API key.".to_owned()),
            None,
        ));
    };

    let now = crate::domain::now();
    let ttl = admin.session_ttl();
    let expires_at = time::Duration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d))
        .unwrap_or(now + time::Duration::days(365));
    // Sessions are few; the expired ones go whenever someone signs in.
    if let Err(e) = admin.app.store.purge_admin_sessions(now).await {
        tracing::warn!(error = %e, "purging expired admin sessions failed");
    }
    let token = random_token();
    admin
        .app
        .store
        .create_admin_session(NewAdminSession {
            token_hash: hash_token(&token),
            api_key_id: caller.key_id,
            csrf_token: random_token(),
            created_at: now,
            expires_at,
        })
        .await?;
    tracing::info!(api_key_id = caller.key_id, "admin console: signed in");
    let secure = is_tls(&headers);
    let mut response = Redirect::to(&next).into_response();
    add_cookie(
        &mut response,
        &cookie_header(SESSION_COOKIE, &token, "/admin", ttl.as_secs(), secure),
    );
    add_cookie(
        &mut response,
        &clear_cookie(LOGIN_COOKIE, "/admin/login", secure),
    );
    Ok(response)
}

pub async fn logout(
    State(admin): State<Admin>,
    session: Session,
    headers: HeaderMap,
    form: Form,
) -> Result<Response, AdminError> {
    session.check_csrf(&form)?;
    admin.app.store.delete_admin_session(session.id).await?;
    tracing::info!(
        api_key_id = session.caller.key_id,
        "admin console: signed out"
    );
    Ok(signed_out_to_login(&headers, "signed_out"))
}

/// To the sign-in page with the session cookie cleared; `why` says why on that page.
pub fn signed_out_to_login(headers: &HeaderMap, why: &str) -> Response {
    let mut response = Redirect::to(&format!("/admin/login?{why}=1")).into_response();
    add_cookie(
        &mut response,
        &clear_cookie(SESSION_COOKIE, "/admin", is_tls(headers)),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }

    #[test]
    fn origins() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://localhost:9999"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "same-site"),
        ])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "coupons.example.com"),
            ("origin", "https://coupons.example.com"),
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:8080"
        )])));
    }

    #[test]
    fn next_stays_in_the_console() {
        assert_eq!(safe_next(Some("/admin/batches?q=x")), "/admin/batches?q=x");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/admin//evil",
            "/admin/\\evil",
            "/v1/coupons/",
            "/admin/login",
            "/admin/logout",
        ] {
            assert_eq!(safe_next(Some(bad)), "/admin/", "{bad}");
        }
        assert_eq!(safe_next(None), "/admin/");
    }

    #[test]
    fn cookies() {
        let h = headers(&[("cookie", "a=1; coupond_admin=tok; b=2")]);
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "missing"), None);
        assert!(is_tls(&headers(&[("x-forwarded-proto", "https")])));
        assert!(is_tls(&headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=https"
        )])));
        assert!(!is_tls(&headers(&[("x-forwarded-proto", "http")])));
        let set = cookie_header(SESSION_COOKIE, "t", "/admin", 60, true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/admin",
            "Max-Age=60",
        ] {
            assert!(set.contains(part), "{set}");
        }
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
