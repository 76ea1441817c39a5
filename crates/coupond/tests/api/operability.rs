//! Operability on a live server: health and readiness with the database up and down,
//! `X-Request-Id` on every response, the OpenAPI document and the offline docs page, and
//! every route the server answers being in the spec. (Metrics and the JSON log, which
//! need a process of their own, are in `tests/operability.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::backend_test;
use crate::helpers::*;

// ---------------------------------------------------------------------------------------
// Health and readiness
// ---------------------------------------------------------------------------------------

#[track_caller]
fn assert_ready(r: &TestResponse, backend: Backend) {
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.is_json(), "{r:?}");
    let database = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(r.json(), json!({"status": "ready", "database": database}));
}

/// A 503 `{"status": "unavailable", "reason": "…"}`; returns the reason.
#[track_caller]
fn assert_not_ready(r: &TestResponse) -> String {
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.is_json(), "{r:?}");
    let body = r.json();
    assert_eq!(keys(&body), set(&["status", "reason"]), "{r:?}");
    assert_eq!(body["status"], "unavailable", "{r:?}");
    let reason = body["reason"].as_str().expect("reason is a string");
    assert!(!reason.is_empty(), "{r:?}");
    reason.to_owned()
}

async fn assert_healthy(app: &TestApp) {
    let r = app.client_with(None).get("/healthz").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status": "ok"}));
}

/// Polls `/readyz` until `done` holds for its response (at most `limit`).
async fn readyz_until(
    app: &TestApp,
    limit: Duration,
    done: impl Fn(&TestResponse) -> bool,
) -> TestResponse {
    let client = app.client_with(None);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let r = client.get("/readyz").await;
        if done(&r) || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs SQL on the server's database, on a connection of its own.
async fn sql(app: &TestApp, statements: &[&str]) {
    match app.backend {
        Backend::Sqlite => {
            let path = app
                .database_url()
                .strip_prefix("sqlite://")
                .expect("a file")
                .to_owned();
            let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(path).expect("opening the file");
                conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
                for s in statements {
                    conn.execute_batch(&s)
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
            })
            .await
            .expect("the SQL thread");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(app.database_url())
                .await
                .expect("connecting");
            for s in statements {
                sqlx::raw_sql(s)
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            let _ = conn.close().await;
        }
    }
}

async fn readiness_follows_the_schema_version(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_ready(&app.client_with(None).get("/readyz").await, backend);
    assert_healthy(&app).await;

    // The newest migration row goes away (as if an older coupond's database): not ready.
    sql(
        &app,
        &[
            "CREATE TABLE saved_migration AS SELECT * FROM _sqlx_migrations \
             WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
            "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM saved_migration)",
        ],
    )
    .await;
    let r = readyz_until(&app, Duration::from_secs(5), |r| r.status != 200).await;
    let reason = assert_not_ready(&r);
    assert!(reason.contains("migration"), "{reason}");
    assert_healthy(&app).await;

    // Back: ready again.
    sql(
        &app,
        &[
            "INSERT INTO _sqlx_migrations SELECT * FROM saved_migration",
            "DROP TABLE saved_migration",
        ],
    )
    .await;
    let r = readyz_until(&app, Duration::from_secs(5), |r| r.status == 200).await;
    assert_ready(&r, backend);
}
backend_test!(readiness_follows_the_schema_version);

async fn readiness_follows_the_database_connection() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (admin_url, name) = app.postgres_database().expect("PostgreSQL");
    let (admin_url, name) = (admin_url.to_owned(), name.to_owned());
    assert_ready(
        &app.client_with(None).get("/readyz").await,
        Backend::Postgres,
    );
    let batch = app.new_batch(&seed_batch()).await;

    // The database stops taking connections and drops the server's.
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connecting");
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid();"
    ))
    .execute(&mut admin)
    .await
    .expect("refusing connections");
    let r = readyz_until(&app, Duration::from_secs(5), |r| r.status != 200).await;
    assert_not_ready(&r);
    assert_healthy(&app).await;
    // A request that needs the database says so, and that it is worth retrying.
    let r = app.issue(batch, "u1", "down-1").await;
    let down = r.clone();

    // Connections come back: ready again, and the write that failed can be retried.
    sqlx::raw_sql(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .expect("allowing connections");
    let r = readyz_until(&app, Duration::from_secs(10), |r| r.status == 200).await;
    assert_ready(&r, Backend::Postgres);
    let retried = app.issue(batch, "u1", "down-1").await;
    assert_eq!(retried.status, 200, "{retried:?}");
    assert!(
        !retried.replayed(),
        "the failed write stored nothing: {retried:?}"
    );

    // Gone for good.
    sqlx::raw_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("dropping the database");
    let _ = admin.close().await;
    let r = readyz_until(&app, Duration::from_secs(5), |r| r.status != 200).await;
    assert_not_ready(&r);
    assert_healthy(&app).await;

    down.assert_error(503, "DATABASE_UNAVAILABLE");
    assert_eq!(down.header("retry-after"), Some("1"), "{down:?}");
}

/// PostgreSQL only: SQLite has no connection to lose.
mod readiness_follows_the_database_connection {
    #[tokio::test]
    async fn postgres() {
        super::readiness_follows_the_database_connection().await;
    }
}

// ---------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------

/// A UUID as tower-http's `MakeRequestUuid` makes them (version 4, lower-case hex).
#[track_caller]
fn assert_uuid_v4(id: &str) {
    let groups: Vec<&str> = id.split('-').collect();
    assert_eq!(
        groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
        vec![8, 4, 4, 4, 12],
        "{id:?} is not a UUID"
    );
    assert!(
        groups.iter().all(|g| g
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
        "{id:?} is not lower-case hex"
    );
    assert!(groups[2].starts_with('4'), "{id:?} is not version 4");
    assert!(
        matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
        "{id:?} is not the RFC 4122 variant"
    );
}

async fn every_kind_of_response_carries_a_request_id(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        |s| {
            s.not_found_limit = 1;
            s.body_limit = 1024;
        },
        std::sync::Arc::default(),
    )
    .await;
    let batch = app.new_batch(&seed_batch()).await;
    let (_, read) = app.create_key("read", coupond::domain::Scope::Read).await;
    let anonymous = app.client_with(None);
    let reader = app.client_with(Some(&read));
    let stranger = app.client_with(Some("cpd_not_a_key_at_all_0000000000"));
    let issue = json!({"batch_id": batch, "user_id": "u1"});

    // (what, the client, method, path, idempotency key, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a ApiClient,
        Method,
        &'a str,
        Option<&'a str>,
        Option<String>,
        u16,
    );
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2048));
    let cases: Vec<Case> = vec![
        ("list", &app, Method::GET, LIST, None, None, 200),
        (
            "issue",
            &app,
            Method::POST,
            ISSUE,
            Some("rid-1"),
            Some(issue.to_string()),
            200,
        ),
        (
            "replay",
            &app,
            Method::POST,
            ISSUE,
            Some("rid-1"),
            Some(issue.to_string()),
            200,
        ),
        (
            "refusal",
            &app,
            Method::POST,
            ISSUE,
            Some("rid-2"),
            Some(issue.to_string()),
            409,
        ),
        (
            "no idempotency key",
            &app,
            Method::POST,
            ISSUE,
            None,
            Some(issue.to_string()),
            400,
        ),
        (
            "malformed",
            &app,
            Method::POST,
            ISSUE,
            Some("rid-3"),
            Some("{".into()),
            400,
        ),
        (
            "too large",
            &app,
            Method::POST,
            ISSUE,
            Some("rid-4"),
            Some(big),
            413,
        ),
        ("no key", &anonymous, Method::GET, LIST, None, None, 401),
        (
            "unknown key",
            &stranger,
            Method::POST,
            ISSUE,
            Some("rid-5"),
            Some(issue.to_string()),
            401,
        ),
        (
            "scope",
            &reader,
            Method::POST,
            ISSUE,
            Some("rid-6"),
            Some(issue.to_string()),
            403,
        ),
        (
            "not found",
            &app,
            Method::POST,
            REDEEM,
            Some("rid-7"),
            Some(json!({"code": "NOPE000000", "order_id": "o", "user_id": "u9"}).to_string()),
            404,
        ),
        (
            "throttled",
            &app,
            Method::POST,
            REDEEM,
            Some("rid-8"),
            Some(json!({"code": "NOPE000001", "order_id": "o", "user_id": "u9"}).to_string()),
            429,
        ),
        (
            "fallback",
            &anonymous,
            Method::GET,
            "/nope",
            None,
            None,
            404,
        ),
        (
            "fallback under /v1",
            &app,
            Method::GET,
            "/v1/nope",
            None,
            None,
            404,
        ),
        ("method", &app, Method::DELETE, LIST, None, None, 405),
        (
            "health",
            &anonymous,
            Method::GET,
            "/healthz",
            None,
            None,
            200,
        ),
        (
            "readiness",
            &anonymous,
            Method::GET,
            "/readyz",
            None,
            None,
            200,
        ),
        (
            "spec",
            &anonymous,
            Method::GET,
            "/openapi.json",
            None,
            None,
            200,
        ),
        ("docs", &anonymous, Method::GET, "/docs/", None, None, 200),
    ];
    let mut generated = BTreeSet::new();
    for (i, (what, client, method, path, key, body, status)) in cases.iter().enumerate() {
        let build = |sent_id: Option<&str>| {
            let mut b = client.request(method.clone(), path);
            if let Some(key) = key {
                b = b.header("idempotency-key", *key);
            }
            if let Some(body) = body {
                b = b
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            if let Some(id) = sent_id {
                b = b.header("x-request-id", id);
            }
            b
        };
        // Generated: a fresh UUID each time.
        let r = client.send(build(None)).await;
        assert_eq!(r.status.as_u16(), *status, "{what}: {r:?}");
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no X-Request-Id: {r:?}"));
        assert_uuid_v4(id);
        assert!(generated.insert(id.to_owned()), "{what}: {id} repeats");
        if *status >= 400 {
            r.assert_envelope();
        }
        // Sent: echoed as is. (The throttled and refused cases stay what they were.)
        let sent = format!("client-trace-{i}.{}", what.replace(' ', "_"));
        let r = client.send(build(Some(&sent))).await;
        let expected = match *what {
            "issue" => 200,     // now a replay
            "not found" => 429, // the miss above used up the limit of 1
            _ => *status,
        };
        assert_eq!(r.status.as_u16(), expected, "{what} with an id: {r:?}");
        assert_eq!(
            r.header("x-request-id"),
            Some(sent.as_str()),
            "{what}: {r:?}"
        );
        assert_eq!(
            r.headers.get_all("x-request-id").iter().count(),
            1,
            "{what}: one X-Request-Id: {r:?}"
        );
    }
    // Also on the raw wire, for a request reqwest would not send.
    let r = app
        .raw(
            "POST",
            ISSUE.as_bytes(),
            &[
                ("X-REQUEST-ID", b"raw-trace-1"),
                ("content-type", b"application/json"),
            ],
            RawBody::Chunked(vec![b"{\"batch_".to_vec(), b"id\": 1".to_vec()]),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("raw-trace-1"), "{r:?}");
}
backend_test!(every_kind_of_response_carries_a_request_id);

// ---------------------------------------------------------------------------------------
// The spec and the docs page
// ---------------------------------------------------------------------------------------

async fn the_spec_is_served_without_a_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.client_with(None).get("/openapi.json").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        coupond::http::openapi::spec_json(),
        "served byte for byte as spec_json()"
    );
}
backend_test!(the_spec_is_served_without_a_key);

/// The `src` and `href` values of an HTML page.
fn html_references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').expect("a closing quote");
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

async fn the_docs_page_works_offline(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let client = app.client_with(None);
    let page = client.get("/docs/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{page:?}"
    );
    let html = page.text();
    for scheme in ["http://", "https://", "//cdn", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(scheme),
            "the page refers to {scheme}…:\n{html}"
        );
    }
    let references = html_references(&html);
    for needed in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        assert!(
            references.iter().any(|r| r.ends_with(needed)),
            "{needed} is not on the page: {references:?}"
        );
    }
    // Every asset the page loads is served by coupond itself.
    for reference in &references {
        let path = format!("/docs/{}", reference.trim_start_matches("./"));
        let r = client.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(!r.body.is_empty(), "{path}");
        let ct = r.header("content-type").unwrap_or("");
        let expected = if path.ends_with(".js") {
            "text/javascript"
        } else if path.ends_with(".css") {
            "text/css"
        } else if path.ends_with(".png") {
            "image/png"
        } else {
            ""
        };
        assert!(ct.starts_with(expected), "{path}: content-type {ct:?}");
    }
    for path in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        let r = client.get(path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.body.len() > 10_000, "{path} is the real asset");
    }
    // The page loads the spec from coupond too, and it is the spec of /openapi.json.
    let init = client.get("/docs/swagger-initializer.js").await.text();
    let spec_url = init
        .split("\"url\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no spec url in the initializer:\n{init}"));
    assert!(
        spec_url.starts_with('/'),
        "the spec comes from coupond: {spec_url:?}"
    );
    let loaded = client.get(spec_url).await;
    assert_eq!(loaded.status, 200, "{spec_url}: {loaded:?}");
    assert_eq!(loaded.json(), client.get("/openapi.json").await.json());
    // `/docs` leads to the page.
    let r = client.get("/docs").await;
    assert_eq!(r.status, 200, "redirect followed to the page: {r:?}");
    assert_eq!(r.text(), html);
}
backend_test!(the_docs_page_works_offline);

async fn the_docs_page_does_not_call_the_online_validator(backend: Backend) {
    // Swagger UI, unless `validatorUrl` is `null` or "none", loads a badge image from
    // https://validator.swagger.io/validator?url=<this spec's URL> whenever the page is
    // served from anywhere but localhost: a request out of the network (that fails
    // offline) which also tells swagger.io where the spec lives.
    let app = TestApp::spawn(backend).await;
    let init = app
        .client_with(None)
        .get("/docs/swagger-initializer.js")
        .await
        .text();
    let off = init.contains("\"validatorUrl\": null")
        || init.contains("\"validatorUrl\": \"none\"")
        || init.contains("validatorUrl: null")
        || init.contains("validatorUrl: \"none\"");
    assert!(
        off,
        "swagger-initializer.js leaves Swagger UI's online validator on:\n{init}"
    );
}
backend_test!(the_docs_page_does_not_call_the_online_validator);

// ---------------------------------------------------------------------------------------
// Every route in the spec
// ---------------------------------------------------------------------------------------

/// The routes of `http::router` (crates/coupond/src/http/mod.rs) that are the API.
const ROUTES: [(&str, &str); 18] = [
    ("get", "/v1/coupon-batches/"),
    ("post", "/v1/coupon-batches/"),
    ("get", "/v1/coupon-batches/{id}/"),
    ("post", "/v1/coupon-batches/{id}/activate/"),
    ("post", "/v1/coupon-batches/{id}/deactivate/"),
    ("post", "/v1/coupon-batches/{id}/codes/"),
    ("get", "/v1/coupon-batches/{id}/codes/{job_id}/"),
    ("get", "/v1/coupon-batches/{id}/codes.csv"),
    ("get", "/v1/coupons/"),
    ("post", "/v1/coupons/issue/"),
    ("post", "/v1/coupons/redeem/"),
    ("post", "/v1/coupons/validate/"),
    ("post", "/v1/coupons/cancel/"),
    ("post", "/v1/coupons/unredeem/"),
    ("get", "/v1/coupons/{code}/"),
    ("get", "/v1/coupons/{code}/events/"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];
/// Prefixes of routes that are not the JSON API: the spec and docs page themselves, the
/// browser admin pages (their own session, not API keys) and Prometheus' `/metrics`
/// (on a listener of its own).
const DOC_ROUTES: [&str; 4] = ["/openapi.json", "/docs", "/admin", "/metrics"];

/// The `.route(PATH, get(..).post(..))` calls in src/http/ (every file, below it too),
/// with each constant (`pub const NAME: &str = "..."` anywhere there) resolved: what the
/// server answers, read from its source, so that a route added later is seen here too.
fn routes_in_source() -> BTreeSet<(String, String)> {
    fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("a source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(&path).expect("a source file"));
            }
        }
    }
    let mut texts = Vec::new();
    sources(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"),
        &mut texts,
    );
    let mut constants = std::collections::BTreeMap::new();
    for text in &texts {
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line
                .strip_prefix("pub const ")
                .or_else(|| line.strip_prefix("const "))
            {
                if let Some((name, value)) = rest.split_once(": &str = \"") {
                    if let Some(value) = value.strip_suffix("\";") {
                        constants.insert(name.trim().to_owned(), value.to_owned());
                    }
                }
            }
        }
    }
    let mut routes = BTreeSet::new();
    for router in &texts {
        routes.extend(routes_of(router, &constants));
    }
    assert!(!routes.is_empty(), "no route found in src/http");
    routes
}

/// The routes one source file adds.
fn routes_of(
    router: &str,
    constants: &std::collections::BTreeMap<String, String>,
) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = router;
    while let Some(start) = rest.find(".route(") {
        rest = &rest[start + ".route(".len()..];
        // The arguments, up to the matching parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a closing parenthesis");
        let args = &rest[..end];
        let (path_arg, methods) = args.split_once(',').expect("two arguments");
        let path_arg = path_arg.trim();
        let path = if let Some(literal) = path_arg.strip_prefix('"') {
            literal.trim_end_matches('"').to_owned()
        } else {
            let name = path_arg.rsplit("::").next().expect("a name");
            constants
                .get(name)
                .unwrap_or_else(|| panic!("route path {path_arg} is no constant of src/http"))
                .clone()
        };
        let mut found = false;
        for method in [
            "get", "post", "put", "patch", "delete", "head", "options", "any",
        ] {
            let called = methods.contains(&format!(" {method}("))
                || methods.trim_start().starts_with(&format!("{method}("))
                || methods.contains(&format!(".{method}("));
            if called {
                routes.insert((method.to_owned(), path.clone()));
                found = true;
            }
        }
        assert!(found, "no method found in .route({args})");
        rest = &rest[end..];
    }
    routes
}

async fn every_route_the_server_answers_is_in_the_spec(backend: Backend) {
    let spec: Value = serde_json::from_str(&coupond::http::openapi::spec_json()).expect("the spec");
    let in_spec: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let in_source = routes_in_source();
    for (method, path) in ROUTES {
        assert!(
            in_source.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is not routed in src/http/mod.rs (the list here is stale)"
        );
    }
    let undocumented: Vec<_> = in_source
        .iter()
        .filter(|(_, path)| !DOC_ROUTES.iter().any(|d| path.starts_with(d)))
        .filter(|route| !in_spec.contains(route))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the spec: {undocumented:?}"
    );

    // The server answers every operation of the spec (none falls to the 404 fallback
    // or a 405). Ids that are no numbers make the handlers answer 400, which the
    // fallback never does.
    let app = TestApp::spawn(backend).await;
    for (method, path) in &in_spec {
        let concrete = path
            .replace("{id}", "x")
            .replace("{job_id}", "x")
            .replace("{code}", "NOPE000000");
        let r = match method.as_str() {
            "get" => app.get(&concrete).await,
            "post" => {
                app.post_json(&concrete, Some(&new_key("probe")), &json!({}))
                    .await
            }
            other => {
                app.send(
                    app.request(other.to_uppercase().parse().expect("method"), &concrete)
                        .header("idempotency-key", new_key("probe"))
                        .header("content-type", "application/json")
                        .body("{}"),
                )
                .await
            }
        };
        let fallback =
            r.status == 405 || (r.status == 404 && r.is_json() && r.error_code() == "NOT_FOUND");
        assert!(
            !fallback,
            "{method} {path} is in the spec, not served: {r:?}"
        );
    }
}
backend_test!(every_route_the_server_answers_is_in_the_spec);
