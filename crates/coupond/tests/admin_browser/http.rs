//! The console over plain HTTP: what a browser does not let a test look at closely.

use std::time::Duration;

use serde_json::json;

use crate::backend_test;
use crate::helpers::{new_key, seed_batch, Backend, TestApp, TEST_ADMIN_KEY};
use crate::web::{html_unescape, input_value, Console};

fn base(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

/// Without a session nothing but the sign-in page and its stylesheet is shown: pages
/// send the browser to sign in, assets and fragments are refused, forms do nothing.
async fn nothing_without_a_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = app.issue_ok(batch, "u1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let anonymous = Console::new(&base(&app));
    let mut forged = Console::new(&base(&app));
    forged.session = Some("forged-session-token".to_owned());
    for console in [&anonymous, &forged] {
        for path in [
            "/admin/".to_owned(),
            "/admin/batches".to_owned(),
            format!("/admin/batches/{batch}"),
            "/admin/batches/new".to_owned(),
            "/admin/coupons?q=u1".to_owned(),
            format!("/admin/coupons/{code}"),
            format!("/admin/coupons/{code}/cancel"),
            "/admin/keys".to_owned(),
            "/admin/keys/1/revoke".to_owned(),
            "/admin/idempotency?key=x".to_owned(),
            "/admin/no-such-page".to_owned(),
        ] {
            let page = console.get(&path).await;
            assert_eq!(page.status, 303, "{path}: {page:?}");
            assert!(
                page.location().starts_with("/admin/login?next="),
                "{path}: {page:?}"
            );
            assert!(!page.body.contains(&code), "{path} leaks a code");
            assert_eq!(page.header("cache-control"), Some("no-store"), "{path}");
        }
        for path in ["/admin/static/admin.js", "/admin/fragments/batch-stats"] {
            let page = console.get(path).await;
            assert_eq!(page.status, 401, "{path}: {page:?}");
        }
        for path in [
            format!("/admin/coupons/{code}/cancel"),
            "/admin/batches/new".to_owned(),
            format!("/admin/batches/{batch}/deactivate"),
            "/admin/keys".to_owned(),
            "/admin/keys/1/revoke".to_owned(),
        ] {
            let page = console
                .post(
                    &path,
                    &[("csrf", "x"), ("idem", "admin-x"), ("reason", "r")],
                )
                .await;
            assert_eq!(page.status, 403, "POST {path}: {page:?}");
        }
    }
    // Signing out without a session has nothing to end.
    let out = anonymous.post("/admin/logout", &[("csrf", "x")]).await;
    assert_eq!(out.status, 303, "{out:?}");
    assert_eq!(out.location(), "/admin/login?signed_out=1");
    let css = anonymous.get("/admin/static/admin.css").await;
    assert_eq!(css.status, 200);
    assert!(css
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/css")));
    let login = anonymous.get("/admin/login").await;
    assert_eq!(login.status, 200);
    assert!(!login.body.contains(&code));
    // `/admin` itself, and the API's unknown paths, are as before.
    let bare = anonymous.get("/admin").await;
    assert_eq!(bare.status, 303, "{bare:?}");
    assert_eq!(bare.location(), "/admin/");
    assert_eq!(anonymous.get("/nope").await.status, 404);
    // Nothing was changed by all those forms.
    let c = app.get(&format!("/v1/coupons/{code}/")).await.json();
    assert_eq!(c["status"], "issued");
    let keys = app.store.list_api_keys().await.expect("keys");
    assert!(keys.iter().all(|k| k.revoked_at.is_none()));
}
backend_test!(nothing_without_a_session);

/// The session cookie and the headers of every page.
async fn cookies_and_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let console = Console::new(&base(&app));
    let answer = console.try_sign_in(TEST_ADMIN_KEY).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.location(), "/admin/");
    let set = answer
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("coupond_admin="))
        .expect("a session cookie");
    let max_age = format!("Max-Age={}", app.settings.admin_session_ttl.as_secs());
    for part in ["HttpOnly", "SameSite=Strict", "Path=/admin", &max_age] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    // The key is in no answer, and not in the database as it is.
    assert!(!answer.body.contains(TEST_ADMIN_KEY));
    let token = answer.cookie("coupond_admin").expect("token");
    let signed_in = Console {
        session: Some(token.clone()),
        ..console.clone()
    };
    let page = signed_in.get("/admin/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(!page.body.contains(TEST_ADMIN_KEY));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("http"), "no source elsewhere: {csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let dump = crate::helpers::dump_database(app.database_url()).await;
    assert!(
        dump.iter().all(|(_, v)| !v.contains(&token)),
        "the session token is kept only as a hash"
    );
    // Behind a proxy that terminates TLS, cookies are Secure.
    let form = console.get("/admin/login").await;
    let behind_tls = console
        .post_with(
            "/admin/login",
            &[
                ("login_token", &form.input("login_token").expect("token")),
                ("key", TEST_ADMIN_KEY),
            ],
            &[
                (
                    "cookie",
                    &format!(
                        "coupond_admin_login={}",
                        form.cookie("coupond_admin_login").expect("cookie")
                    ),
                ),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(behind_tls.status, 303, "{behind_tls:?}");
    assert!(behind_tls
        .set_cookies()
        .iter()
        .any(|c| c.starts_with("coupond_admin=") && c.contains("; Secure")));
    let js = signed_in.get("/admin/static/admin.js").await;
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .is_some_and(|c| c.contains("javascript")));
}
backend_test!(cookies_and_headers);

/// Wrong keys are throttled per client address; while throttled even the right key is
/// refused, so guessing cannot go on.
async fn wrong_keys_are_throttled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let console = Console::new(&base(&app));
    let (_, service_key) = app
        .create_key("checkout", coupond::domain::Scope::Service)
        .await;
    for attempt in 0..coupond::http::admin::LOGIN_LIMIT {
        let key = if attempt == 0 {
            service_key.clone()
        } else {
            format!("cpd_wrong_{attempt}_000000000000000000000000000")
        };
        let answer = console.try_sign_in(&key).await;
        assert_eq!(answer.status, 401, "attempt {attempt}: {answer:?}");
        assert!(answer.body.contains("not an active admin API key"));
        assert!(answer.cookie("coupond_admin").is_none());
    }
    let answer = console.try_sign_in(TEST_ADMIN_KEY).await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(answer.header("retry-after").is_some());
    assert!(answer.body.contains("Too many wrong keys"));
    assert!(answer.cookie("coupond_admin").is_none());
}
backend_test!(wrong_keys_are_throttled);

/// Every form needs the session's CSRF token and a same-origin request; the sign-in
/// form needs its own token.
async fn forms_need_their_csrf_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = app.issue_ok(batch, "u1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let console = Console::sign_in(&base(&app), TEST_ADMIN_KEY).await;
    let form = console.get(&format!("/admin/coupons/{code}/cancel")).await;
    let csrf = form.input("csrf").expect("csrf");
    let idem = form.input("idem").expect("idem");
    let path = format!("/admin/coupons/{code}/cancel");
    let missing = console
        .post(&path, &[("idem", &idem), ("reason", "r")])
        .await;
    assert_eq!(missing.status, 403, "{missing:?}");
    assert!(missing.body.contains("CSRF"));
    let wrong = console
        .post(&path, &[("csrf", "nope"), ("idem", &idem), ("reason", "r")])
        .await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let cross = console
        .post_with(
            &path,
            &[("csrf", &csrf), ("idem", &idem), ("reason", "r")],
            &[
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(cross.status, 403, "{cross:?}");
    assert!(cross.body.contains("another site"));
    assert_eq!(
        app.get(&format!("/v1/coupons/{code}/")).await.json()["status"],
        "issued"
    );
    // The sign-in form without its cookie's token.
    let anonymous = Console::new(&base(&app));
    let login = anonymous
        .post(
            "/admin/login",
            &[("login_token", "guess"), ("key", TEST_ADMIN_KEY)],
        )
        .await;
    assert_eq!(login.status, 403, "{login:?}");
    assert!(login.cookie("coupond_admin").is_none());
    // With the token it works.
    let ok = console
        .post(&path, &[("csrf", &csrf), ("idem", &idem), ("reason", "r")])
        .await;
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(
        app.get(&format!("/v1/coupons/{code}/")).await.json()["status"],
        "cancelled"
    );
}
backend_test!(forms_need_their_csrf_token);

/// A form sent twice is one request: replayed, not run again. Create-batch, cancel
/// and key creation alike; a changed form under a used key is refused.
async fn forms_sent_twice_act_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let console = Console::sign_in(&base(&app), TEST_ADMIN_KEY).await;

    let form = console.get("/admin/batches/new").await;
    let csrf = form.input("csrf").expect("csrf");
    let idem = form.input("idem").expect("idem");
    let fields = [
        ("csrf", csrf.as_str()),
        ("idem", idem.as_str()),
        ("name", "Twice"),
        ("discount_type", "fixed"),
        ("amount", "500"),
        ("total_limit", "10"),
        ("per_user_limit", "1"),
        ("expires_at", "2099-01-01T00:00"),
        ("redeem_policy", "anyone"),
        ("code_length", "10"),
        ("code_alphabet", "standard"),
    ];
    let (first, second) = tokio::join!(
        console.post("/admin/batches/new", &fields),
        console.post("/admin/batches/new", &fields)
    );
    assert_eq!(first.status, 303, "{first:?}");
    assert_eq!(second.status, 303, "{second:?}");
    let target = |p: &crate::web::Page| p.location().split('?').next().unwrap_or("").to_owned();
    assert_eq!(target(&first), target(&second));
    let replays = [&first, &second]
        .iter()
        .filter(|p| p.location().contains("replayed=1"))
        .count();
    assert_eq!(replays, 1, "{first:?} {second:?}");
    let listed = app.get("/v1/coupon-batches/?name=Twice").await.json();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    let batch_id = listed["items"][0]["id"].as_i64().expect("id");
    // The same key with other values: refused, nothing created.
    let mut changed = fields;
    changed[2] = ("name", "Twice, changed");
    let refused = console.post("/admin/batches/new", &changed).await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(refused.body.contains("already created a batch"));
    let listed = app.get("/v1/coupon-batches/?name=changed").await.json();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0));
    // The record is the API's: the same body under the same key, sent to the API by
    // the same API key, is a replay of the console's batch.
    let api = app
        .create_batch(
            Some(&idem),
            &json!({
                "name": "Twice", "discount_type": "fixed", "amount": 500,
                "total_limit": 10, "per_user_limit": 1,
                "expires_at": "2099-01-01T00:00:00Z", "redeem_policy": "anyone",
                "code_length": 10, "code_alphabet": "standard",
            }),
        )
        .await;
    assert_eq!(api.status, 201, "{api:?}");
    assert!(api.replayed());
    assert_eq!(api.json()["id"], batch_id);

    // Cancel, sent twice at once: one event.
    let code = app.issue_ok(batch_id, "u1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let form = console.get(&format!("/admin/coupons/{code}/cancel")).await;
    let idem = form.input("idem").expect("idem");
    let fields = [
        ("csrf", csrf.as_str()),
        ("idem", idem.as_str()),
        ("reason", "twice"),
    ];
    let path = format!("/admin/coupons/{code}/cancel");
    let (a, b) = tokio::join!(console.post(&path, &fields), console.post(&path, &fields));
    assert_eq!(
        (a.status.as_u16(), b.status.as_u16()),
        (303, 303),
        "{a:?} {b:?}"
    );
    let events = app.get(&format!("/v1/coupons/{code}/events/")).await.json();
    let cancelled = events["items"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["kind"] == "cancelled").count());
    assert_eq!(cancelled, Some(1), "{events}");
    // Sent again later (a reload): the stored answer, said to be one.
    let later = console.post(&path, &fields).await;
    assert!(
        later.location().contains("done=cancelled&replayed=1"),
        "{later:?}"
    );

    // A key, created twice with one form: one key; its secret is shown once.
    let form = console.get("/admin/keys").await;
    let idem = form.input("idem").expect("idem");
    let fields = [
        ("csrf", csrf.as_str()),
        ("idem", idem.as_str()),
        ("name", "reporting"),
        ("scope", "read"),
    ];
    let first = console.post("/admin/keys", &fields).await;
    assert_eq!(first.status, 200, "{first:?}");
    let secret = first
        .body
        .split("id=\"secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next());
    let secret = secret.expect("the secret, once").to_owned();
    assert!(secret.starts_with("cpd_"), "{secret}");
    let second = console.post("/admin/keys", &fields).await;
    assert_eq!(second.status, 200, "{second:?}");
    assert!(
        !second.body.contains(&secret),
        "the secret is never shown again"
    );
    assert!(second.body.contains("sent before"), "{}", second.body);
    let keys = app.store.list_api_keys().await.expect("keys");
    assert_eq!(keys.iter().filter(|k| k.name == "reporting").count(), 1);
    let record = app
        .idempotency_record(&idem)
        .await
        .expect("the key's creation is recorded");
    let stored = String::from_utf8_lossy(&record.response.body).into_owned();
    assert!(
        !stored.contains(&secret),
        "the record never holds the secret: {stored}"
    );
    assert!(stored.contains("reporting"), "{stored}");
    let dump = crate::helpers::dump_database(app.database_url()).await;
    assert!(dump.iter().all(|(_, v)| !v.contains(&secret)));
    assert_eq!(
        app.client_with(Some(&secret))
            .get("/v1/coupons/")
            .await
            .status,
        200
    );
}
backend_test!(forms_sent_twice_act_once);

/// The create form checks as the API does, with its messages.
async fn the_create_form_speaks_the_apis_language(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let console = Console::sign_in(&base(&app), TEST_ADMIN_KEY).await;
    let form = console.get("/admin/batches/new").await;
    let csrf = form.input("csrf").expect("csrf");
    let idem = form.input("idem").expect("idem");
    let page = console
        .post(
            "/admin/batches/new",
            &[
                ("csrf", &csrf),
                ("idem", &idem),
                ("name", &"x".repeat(81)),
                ("discount_type", "fixed"),
                ("max_discount", "5"),
                ("total_limit", "0"),
                ("expires_at", "soon"),
                ("currency", "EURO"),
                ("code_length", "3"),
            ],
        )
        .await;
    assert_eq!(page.status, 422, "{page:?}");
    let api = app
        .create_batch(
            Some(&new_key("b")),
            &json!({
                "name": "x".repeat(81), "discount_type": "fixed", "max_discount": 5,
                "total_limit": 0, "expires_at": "soon", "currency": "EURO", "code_length": 3,
            }),
        )
        .await;
    api.assert_error(400, "VALIDATION");
    let fields = api.json()["error"]["fields"].clone();
    let fields = fields.as_object().expect("fields");
    assert!(fields.len() >= 6, "{fields:?}");
    let shown = html_unescape(&page.body);
    for (field, reason) in fields {
        let reason = reason.as_str().expect("a reason");
        assert!(
            shown.contains(&format!("data-field=\"{field}\">{reason}</p>")),
            "{field}: {reason:?} is not on the page"
        );
    }
    // Nothing was stored: the same form, fixed, creates the batch.
    let page = console
        .post(
            "/admin/batches/new",
            &[
                ("csrf", &csrf),
                ("idem", &idem),
                ("name", "Fixed"),
                ("discount_type", "fixed"),
                ("amount", "100"),
                ("total_limit", "10"),
                ("expires_at", "2099-01-01T00:00"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(page.location().contains("done=created"));
}
backend_test!(the_create_form_speaks_the_apis_language);

/// Sessions end on the server: after their time, when the key is revoked from the
/// console (every session of it), and a revoked own key signs one out.
async fn sessions_end(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        |s| s.admin_session_ttl = Duration::from_secs(2),
        Default::default(),
    )
    .await;
    let short = Console::sign_in(&base(&app), TEST_ADMIN_KEY).await;
    assert_eq!(short.get("/admin/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let expired = short.get("/admin/").await;
    assert_eq!(expired.status, 303, "{expired:?}");
    assert!(expired.location().contains("ended=1"), "{expired:?}");

    let app = TestApp::spawn(backend).await;
    let (ops_id, ops_key) = app.create_key("ops", coupond::domain::Scope::Admin).await;
    let ops_a = Console::sign_in(&base(&app), &ops_key).await;
    let ops_b = Console::sign_in(&base(&app), &ops_key).await;
    let admin = Console::sign_in(&base(&app), TEST_ADMIN_KEY).await;
    let confirm = admin.get(&format!("/admin/keys/{ops_id}/revoke")).await;
    assert_eq!(confirm.status, 200, "{confirm:?}");
    let csrf = input_value(&confirm.body, "csrf").expect("csrf");
    let revoked = admin
        .post(&format!("/admin/keys/{ops_id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(revoked.status, 303, "{revoked:?}");
    assert_eq!(revoked.location(), "/admin/keys?done=revoked");
    for ops in [&ops_a, &ops_b] {
        let page = ops.get("/admin/").await;
        assert_eq!(page.status, 303, "{page:?}");
    }
    assert_eq!(
        app.client_with(Some(&ops_key))
            .get("/v1/coupons/")
            .await
            .status,
        401
    );
    assert_eq!(admin.get("/admin/").await.status, 200);
    // Revoking one's own key signs one out.
    let confirm = admin
        .get(&format!("/admin/keys/{}/revoke", app.admin_key_id))
        .await;
    assert!(
        confirm.body.contains("your own session"),
        "{}",
        confirm.body
    );
    let out = admin
        .post(
            &format!("/admin/keys/{}/revoke", app.admin_key_id),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(out.status, 303, "{out:?}");
    assert_eq!(out.location(), "/admin/login?revoked=1");
    assert_eq!(admin.get("/admin/").await.status, 303);
}
backend_test!(sessions_end);

/// Quotes, SQL fragments, `LIKE` wildcards, control characters and sheer length through
/// every field of the console (searches, filters, cursors, the idempotency lookup, the
/// new-batch form, the sign-in key): never a server error, the page escapes what it
/// shows, and no row is touched but the one a form creates.
async fn hostile_input_through_every_console_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let canary = app.new_batch(&seed_batch()).await;
    let code = app.issue_ok(canary, "canary-user").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let console = Console::sign_in(&base(&app), TEST_ADMIN_KEY).await;
    let long = "x'".repeat(5_000);
    let payloads: Vec<&str> = vec![
        "'",
        "\"",
        "\\",
        "' OR '1'='1",
        "'; DROP TABLE coupons; --",
        "Robert'); DROP TABLE coupon_batches;--",
        "' UNION SELECT key_hash, key_prefix FROM api_keys --",
        "%",
        "_",
        "%' --",
        "$1",
        "?1",
        "/* comment */",
        "';SELECT pg_sleep(5);--",
        "<script>alert(1)</script>",
        "a\u{0}b",
        "\u{7}\u{1b}[31m",
        "\u{202e}ǅ ß İ 🎟",
        long.as_str(),
    ];
    let query = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).expect("query");
    for payload in &payloads {
        let pages = [
            format!("/admin/batches?{}", query(&[("q", payload)])),
            format!("/admin/batches?{}", query(&[("state", payload)])),
            format!("/admin/batches?{}", query(&[("cursor", payload)])),
            format!("/admin/coupons?{}", query(&[("q", payload)])),
            format!(
                "/admin/coupons?{}",
                query(&[("q", "canary-user"), ("status", payload)])
            ),
            format!(
                "/admin/coupons?{}",
                query(&[("q", "canary-user"), ("cursor", payload)])
            ),
            format!("/admin/idempotency?{}", query(&[("key", payload)])),
            format!(
                "/admin/idempotency?{}",
                query(&[("key", payload), ("owner", payload)])
            ),
        ];
        for path in pages {
            let page = console.get(&path).await;
            assert!(
                page.status.is_success() || page.status.is_client_error(),
                "{path}: {page:?}"
            );
            assert!(
                !page.body.contains("<script>alert(1)</script>"),
                "{path} shows markup unescaped"
            );
        }
        // A coupon's page for a code that is a payload: not found, not an error.
        let path = format!("/admin/coupons/{}", urlencoding_path(payload));
        let page = console.get(&path).await;
        assert!(!page.status.is_server_error(), "{path}: {page:?}");

        // The new-batch form with the payload as its name: created verbatim (and
        // shown escaped) or refused with the API's message.
        let form = console.get("/admin/batches/new").await;
        let csrf = form.input("csrf").expect("csrf");
        let idem = form.input("idem").expect("idem");
        let created = console
            .post(
                "/admin/batches/new",
                &[
                    ("csrf", csrf.as_str()),
                    ("idem", idem.as_str()),
                    ("name", payload),
                    ("discount_type", "fixed"),
                    ("amount", "500"),
                    ("total_limit", "10"),
                    ("per_user_limit", "1"),
                    ("expires_at", "2099-01-01T00:00"),
                    ("redeem_policy", "anyone"),
                    ("code_length", "10"),
                    ("code_alphabet", "standard"),
                ],
            )
            .await;
        assert!(
            created.status.is_redirection() || created.status.is_client_error(),
            "name {payload:?}: {created:?}"
        );
        if created.status.is_redirection() {
            let shown = console.get(created.location()).await;
            assert_eq!(shown.status, 200, "{shown:?}");
            assert!(!shown.body.contains("<script>alert(1)</script>"));
        }
    }
    // Wrong keys made of payloads: refused (then throttled), never an error, never in.
    for payload in &payloads {
        let answer = Console::new(&base(&app)).try_sign_in(payload).await;
        assert!(
            answer.status.is_success() || answer.status.is_client_error(),
            "key {payload:?}: {answer:?}"
        );
        assert!(answer.cookie("coupond_admin").is_none(), "{answer:?}");
    }
    // The canary is as it was.
    let coupon = app.get(&format!("/v1/coupons/{code}/")).await;
    assert_eq!(coupon.status, 200, "{coupon:?}");
    assert_eq!(coupon.json()["status"], "issued");
    assert_eq!(coupon.json()["issued_to"], "canary-user");
    let listed = app.get(&format!("/v1/coupon-batches/{canary}/")).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json()["stats"]["issued"], 1);
}
backend_test!(hostile_input_through_every_console_field);

/// A path segment with everything but unreserved characters percent-encoded.
fn urlencoding_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
