//! Whatever a client sends, the answer is the envelope `{"error": {"code", "message"}}`
//! as application/json: never a panic, never HTML or plain text.

use serde_json::json;

use crate::backend_test;
use crate::helpers::*;

const WRITE_PATHS: [&str; 3] = [BATCHES, ISSUE, REDEEM];

async fn malformed_json_is_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bodies: [&[u8]; 8] = [
        b"{",
        b"{\"batch_id\": }",
        b"{\"batch_id\": 1,}",
        b"{'batch_id': 1}",
        b"nul",
        b"{\"a\":1} trailing",
        b"\"unterminated",
        b"{\"batch_id\": 1, \"user_id\": \"u1\"",
    ];
    for path in WRITE_PATHS {
        for body in bodies {
            let r = app
                .post_bytes(path, Some(&new_key("mal")), Some("application/json"), body)
                .await;
            assert_eq!(
                r.status,
                400,
                "{path} {:?}: {r:?}",
                String::from_utf8_lossy(body)
            );
            r.assert_error(400, "VALIDATION");
        }
    }
    assert!(app.list_items("").await.is_empty());
}
backend_test!(malformed_json_is_400);

async fn non_json_content_types_are_4xx_envelopes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let json_body = serde_json::to_vec(&json!({"batch_id": batch, "user_id": "u1"})).expect("json");
    let cases: [(&str, Vec<u8>); 5] = [
        ("text/plain", json_body.clone()),
        ("text/plain; charset=utf-8", json_body.clone()),
        (
            "application/x-www-form-urlencoded",
            format!("batch_id={batch}&user_id=u1").into_bytes(),
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"batch_id\"\r\n\r\n1\r\n--x--\r\n"
                .to_vec(),
        ),
        ("text/html", b"<html></html>".to_vec()),
    ];
    for path in WRITE_PATHS {
        for (content_type, body) in &cases {
            let r = app
                .post_bytes(path, Some(&new_key("ct")), Some(content_type), body.clone())
                .await;
            assert_eq!(r.status, 415, "{path} as {content_type}: {r:?}");
            r.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
        }
    }
    assert!(app.list_items("").await.is_empty());
    // JSON with parameters, or a +json type, is JSON.
    for (user, content_type) in [
        ("u1", "application/json; charset=utf-8"),
        ("u2", "Application/JSON"),
    ] {
        let body = serde_json::to_vec(&json!({"batch_id": batch, "user_id": user})).expect("json");
        let r = app
            .post_bytes(ISSUE, Some(&new_key("ct")), Some(content_type), body)
            .await;
        assert_eq!(r.status, 200, "{content_type}: {r:?}");
    }
}
backend_test!(non_json_content_types_are_4xx_envelopes);

async fn wrong_field_types_are_validation_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.post_json(
        BATCHES,
        Some("wt-1"),
        &json!({"name": ["n"], "discount_type": 5, "total_limit": "many", "expires_at": true}),
    )
    .await
    .assert_validation(&["name", "discount_type", "total_limit", "expires_at"]);
    app.post_json(
        ISSUE,
        Some("wt-2"),
        &json!({"batch_id": {"id": 1}, "user_id": [1]}),
    )
    .await
    .assert_validation(&["batch_id", "user_id"]);
    app.post_json(
        REDEEM,
        Some("wt-3"),
        &json!({"code": 1, "order_id": {}, "user_id": null}),
    )
    .await
    .assert_validation(&["code", "order_id", "user_id"]);
}
backend_test!(wrong_field_types_are_validation_errors);

async fn arrays_and_scalars_are_not_bodies(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let bodies = [
        json!([]),
        json!([{"batch_id": batch, "user_id": "u1"}]),
        json!("batch_id"),
        json!(1),
        json!(1.5),
        json!(true),
        json!(null),
    ];
    for path in WRITE_PATHS {
        for body in &bodies {
            let r = app.post_json(path, Some(&new_key("arr")), body).await;
            assert_eq!(r.status, 400, "{path} {body}: {r:?}");
            r.assert_error(400, "VALIDATION");
        }
    }
    assert!(app.list_items("").await.is_empty());
}
backend_test!(arrays_and_scalars_are_not_bodies);

async fn an_empty_body_names_the_required_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.post_bytes(ISSUE, Some("e-1"), Some("application/json"), Vec::new())
        .await
        .assert_validation(&["batch_id", "user_id"]);
    app.post_bytes(REDEEM, Some("e-2"), None, Vec::new())
        .await
        .assert_validation(&["code", "order_id", "user_id"]);
    app.post_bytes(
        BATCHES,
        Some("e-3"),
        Some("application/json"),
        b"  \n".to_vec(),
    )
    .await
    .assert_validation(&["name", "discount_type", "total_limit", "expires_at"]);
}
backend_test!(an_empty_body_names_the_required_fields);

async fn bodies_over_64_kib_are_413(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    let body = serde_json::to_vec(&json!({"batch_id": batch, "user_id": "u1"})).expect("json");
    let padded = |len: usize| {
        let mut b = body.clone();
        b.resize(len, b' ');
        b
    };

    // Exactly 64 KiB is accepted.
    let r = app
        .post_bytes(
            ISSUE,
            Some("big-0"),
            Some("application/json"),
            padded(64 * 1024),
        )
        .await;
    assert_eq!(r.status, 200, "a body of exactly 64 KiB: {r:?}");

    // One byte more, with Content-Length.
    for len in [64 * 1024 + 1, 100 * 1024, 1024 * 1024] {
        for path in WRITE_PATHS {
            let r = app
                .post_bytes(
                    path,
                    Some(&new_key("big")),
                    Some("application/json"),
                    padded(len),
                )
                .await;
            assert_eq!(r.status, 413, "{path}, {len} bytes: {r:?}");
            r.assert_error(413, "PAYLOAD_TOO_LARGE");
        }
    }

    // Without Content-Length: chunked.
    for path in WRITE_PATHS {
        let chunks: Vec<Vec<u8>> = padded(70 * 1024).chunks(4096).map(<[u8]>::to_vec).collect();
        let r = app
            .raw(
                "POST",
                path.as_bytes(),
                &[
                    ("Content-Type", b"application/json"),
                    ("Idempotency-Key", new_key("chunk").as_bytes()),
                ],
                RawBody::Chunked(chunks),
            )
            .await;
        assert_eq!(r.status, 413, "{path}, chunked: {r:?}");
        r.assert_error(413, "PAYLOAD_TOO_LARGE");
    }
    // A small chunked body is fine.
    let r = app
        .raw(
            "POST",
            ISSUE.as_bytes(),
            &[
                ("Content-Type", b"application/json"),
                ("Idempotency-Key", b"chunk-small"),
            ],
            RawBody::Chunked(vec![body[..5].to_vec(), body[5..].to_vec()]),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.list_items("").await.len(), 2);
}
backend_test!(bodies_over_64_kib_are_413);

async fn unknown_paths_are_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let paths = [
        "/",
        "/v1",
        "/v1/",
        "/v1/nope/",
        "/v1/coupons/issue",
        "/v1/coupons/redeem",
        "/v1/coupon-batches",
        // (`/v1/coupons/{code}/` is a route: a coupon looked up by its code.)
        "/v1/coupons/123/nothing/",
        "/v2/coupons/",
        // (`/admin/` is the admin console: tests/admin_browser.)
        "/admin-nope/",
        "/v1/coupons/issue/extra/",
    ];
    for path in paths {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let r = app
                .send(
                    app.request(method.clone(), path)
                        .header("content-type", "application/json")
                        .header("idempotency-key", new_key("nf"))
                        .body("{}"),
                )
                .await;
            assert_eq!(r.status, 404, "{method} {path}: {r:?}");
            r.assert_error(404, "NOT_FOUND");
        }
    }
}
backend_test!(unknown_paths_are_404);

async fn wrong_methods_are_405(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // (`GET /v1/coupon-batches/` lists batches since the lifecycle issue.)
    let cases = [
        (reqwest::Method::DELETE, BATCHES),
        (reqwest::Method::GET, ISSUE),
        (reqwest::Method::GET, REDEEM),
        (reqwest::Method::PUT, BATCHES),
        (reqwest::Method::PATCH, ISSUE),
        (reqwest::Method::DELETE, REDEEM),
        (reqwest::Method::POST, LIST),
        (reqwest::Method::PUT, LIST),
        (reqwest::Method::DELETE, LIST),
    ];
    for (method, path) in cases {
        let r = app
            .send(
                app.request(method.clone(), path)
                    .header("content-type", "application/json")
                    .header("idempotency-key", new_key("m"))
                    .body("{}"),
            )
            .await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        r.assert_error(405, "METHOD_NOT_ALLOWED");
        let allowed = if path == LIST { "GET" } else { "POST" };
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow should name {allowed}: {r:?}"
        );
    }
}
backend_test!(wrong_methods_are_405);

async fn non_utf8_bytes_are_refused_cleanly(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let mut body = format!("{{\"batch_id\": {batch}, \"user_id\": \"").into_bytes();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(b"\"}");
    for path in WRITE_PATHS {
        let r = app
            .post_bytes(
                path,
                Some(&new_key("utf")),
                Some("application/json"),
                body.clone(),
            )
            .await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
        r.assert_error(400, "VALIDATION");
    }
    // UTF-16 is not UTF-8 either.
    let utf16: Vec<u8> = "{\"batch_id\":1}"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    app.post_bytes(ISSUE, Some("utf16"), Some("application/json"), utf16)
        .await
        .assert_error(400, "VALIDATION");
    // Percent-encoded bytes in the query that are not UTF-8 match no user.
    let r = app.list("user_id=%FF%FE").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), r#"{"items":[]}"#);
    assert!(app.list_items("").await.is_empty());
}
backend_test!(non_utf8_bytes_are_refused_cleanly);

async fn every_response_carries_a_request_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let responses = vec![
        app.issue(batch, "u1", "rid-1").await,
        app.issue(batch, "u1", "rid-1").await,
        app.issue(batch, "u1", "rid-2").await,
        app.post_json(ISSUE, None, &json!({})).await,
        app.post_bytes(ISSUE, Some("rid-3"), Some("text/plain"), "x")
            .await,
        app.list("").await,
        app.list("status=bogus").await,
        app.get("/nope").await,
        app.get(ISSUE).await,
    ];
    let mut seen = std::collections::BTreeSet::new();
    for r in &responses {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id: {r:?}"));
        assert!(!id.is_empty());
        assert!(seen.insert(id.to_owned()), "request ids repeat: {id}");
    }
    // One the client sends comes back.
    let r = app
        .send(
            app.request(reqwest::Method::GET, LIST)
                .header("x-request-id", "trace-me-123"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-me-123"));
    let r = app
        .send(
            app.request(reqwest::Method::POST, ISSUE)
                .header("x-request-id", "trace-me-456")
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-me-456"), "{r:?}");
}
backend_test!(every_response_carries_a_request_id);

async fn deeply_nested_json_is_400_not_a_crash(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    for path in WRITE_PATHS {
        app.post_bytes(
            path,
            Some(&new_key("deep")),
            Some("application/json"),
            deep.clone(),
        )
        .await
        .assert_error(400, "VALIDATION");
    }
    let deep_object = format!("{}{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    app.post_bytes(ISSUE, Some("deep-o"), Some("application/json"), deep_object)
        .await
        .assert_error(400, "VALIDATION");
    // Nesting within reason, in a field the endpoint ignores, is fine.
    let nested = format!(
        "{{\"batch_id\":{batch},\"user_id\":\"u1\",\"x\":{}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let r = app
        .post_bytes(
            ISSUE,
            Some("deep-ok"),
            Some("application/json"),
            nested.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let replay = app
        .post_bytes(ISSUE, Some("deep-ok"), Some("application/json"), nested)
        .await;
    assert!(replay.replayed() && replay.body == r.body, "{replay:?}");
}
backend_test!(deeply_nested_json_is_400_not_a_crash);

async fn a_nul_in_the_list_query_is_not_a_server_error(backend: Backend) {
    // No stored id can hold a NUL (writes refuse control characters), so a filter with
    // one matches nothing, or is refused as invalid; PostgreSQL must not be asked to
    // compare a text column with a NUL byte and fail.
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    app.issue_ok(batch, "u1").await;
    for query in [
        "user_id=%00",
        "user_id=u1%00",
        "user_id=a%00b&status=issued",
    ] {
        let r = app.list(query).await;
        let empty = r.status == 200 && r.text() == r#"{"items":[]}"#;
        let refused = r.status == 400 && r.is_json() && r.fields() == set(&["user_id"]);
        assert!(
            empty || refused,
            "{query}: expected 200 {{\"items\":[]}} or 400 VALIDATION naming user_id, got {r:?}"
        );
    }
}
backend_test!(a_nul_in_the_list_query_is_not_a_server_error);
