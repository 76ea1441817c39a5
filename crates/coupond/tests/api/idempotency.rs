//! The `Idempotency-Key` contract: every write happens once per key, its response is
//! stored with it and replayed byte for byte.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coupond::faults::Faults;
use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;

/// Sends the same request twice and checks the second is a byte-identical replay.
async fn assert_replays(
    app: &TestApp,
    path: &str,
    key: &str,
    body: &Value,
    status: u16,
) -> TestResponse {
    let first = app.post_json(path, Some(key), body).await;
    assert_eq!(first.status.as_u16(), status, "{path} {body}: {first:?}");
    assert!(
        !first.replayed(),
        "the original must not be marked replayed: {first:?}"
    );
    let second = app.post_json(path, Some(key), body).await;
    assert_eq!(second.status, first.status, "{second:?}");
    assert_eq!(
        second.text(),
        first.text(),
        "a replay's body must be byte-identical"
    );
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert!(
        second.replayed(),
        "a replay must say Idempotent-Replayed: true: {second:?}"
    );
    first
}

async fn a_missing_or_empty_key_is_required(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let bodies = [
        (BATCHES, seed_batch()),
        (ISSUE, json!({"batch_id": batch, "user_id": "u1"})),
        (
            REDEEM,
            json!({"code": "AAAAAAAAAA", "order_id": "o", "user_id": "u1"}),
        ),
    ];
    for (path, body) in &bodies {
        app.post_json(path, None, body)
            .await
            .assert_error(400, "IDEMPOTENCY_KEY_REQUIRED");
        app.post_json(path, Some(""), body)
            .await
            .assert_error(400, "IDEMPOTENCY_KEY_REQUIRED");
    }
    assert!(app.list_items("").await.is_empty());
    // Only the batch made above exists.
    assert_eq!(app.new_batch(&seed_batch()).await, batch + 1);
}
backend_test!(a_missing_or_empty_key_is_required);

async fn a_key_must_be_1_to_255_visible_ascii_characters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    let body = json!({"batch_id": batch, "user_id": "u1"});
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("256 characters", vec![b'k'; 256]),
        ("1000 characters", vec![b'k'; 1000]),
        ("an inner space", b"has space".to_vec()),
        ("an inner tab", b"has\ttab".to_vec()),
        ("UTF-8 letters", "ключ".as_bytes().to_vec()),
        ("Latin-1 bytes", vec![b'k', 0xe9, b'y']),
        ("invalid UTF-8", vec![0xff, 0xfe]),
    ];
    for (what, key) in invalid {
        let request = app
            .request(reqwest::Method::POST, ISSUE)
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(&key).expect("header"),
            )
            .body(serde_json::to_vec(&body).expect("json"));
        let r = app.send(request).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
        r.assert_error(400, "IDEMPOTENCY_KEY_INVALID");
    }
    // Two keys on one request are ambiguous.
    let request = app
        .request(reqwest::Method::POST, ISSUE)
        .header("content-type", "application/json")
        .header("idempotency-key", "k-a")
        .header("idempotency-key", "k-b")
        .body(serde_json::to_vec(&body).expect("json"));
    app.send(request)
        .await
        .assert_error(400, "IDEMPOTENCY_KEY_INVALID");
    assert!(
        app.list_items("").await.is_empty(),
        "an invalid key must not issue"
    );

    // The edges that are valid: 1 and 255 characters, every visible ASCII character.
    let visible: String = (0x21u8..=0x7e).map(char::from).collect();
    for key in ["k".to_owned(), "k".repeat(255), visible] {
        let first = app.post_json(ISSUE, Some(&key), &body).await;
        assert_eq!(first.status, 200, "key {key:?}: {first:?}");
        let again = app.post_json(ISSUE, Some(&key), &body).await;
        assert!(
            again.replayed() && again.body == first.body,
            "key {key:?}: {again:?}"
        );
    }
    assert_eq!(app.list_items("").await.len(), 3);
}
backend_test!(a_key_must_be_1_to_255_visible_ascii_characters);

async fn the_header_name_is_matched_in_any_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let body = serde_json::to_vec(&json!({"batch_id": batch, "user_id": "u1"})).expect("json");
    let send = |name: &'static str| {
        let body = body.clone();
        let app = app.client();
        async move {
            app.raw(
                "POST",
                ISSUE.as_bytes(),
                &[("Content-Type", b"application/json"), (name, b"case-1")],
                RawBody::Fixed(body),
            )
            .await
        }
    };
    let first = send("IDEMPOTENCY-KEY").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(!first.replayed());
    for name in ["idempotency-key", "Idempotency-Key", "iDeMpOtEnCy-KeY"] {
        let r = send(name).await;
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert!(r.replayed(), "{name}: {r:?}");
        assert_eq!(r.body, first.body, "{name}");
    }
    // And a key sent in lower case is the same key sent in capitals.
    let r = app.issue(batch, "u1", "case-1").await;
    assert!(r.replayed() && r.body == first.body, "{r:?}");
    assert_eq!(app.list_items("").await.len(), 1);
}
backend_test!(the_header_name_is_matched_in_any_case);

async fn replays_are_byte_identical_for_every_outcome(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 201: batch creation.
    let created = assert_replays(&app, BATCHES, "rb-1", &batch_with_limits(1, 1), 201).await;
    let batch = created.json()["id"].as_i64().expect("id");
    // 200: issue.
    let issued = assert_replays(
        &app,
        ISSUE,
        "ri-1",
        &json!({"batch_id": batch, "user_id": "u1"}),
        200,
    )
    .await;
    let code = assert_code(&issued.json()["code"]);
    // 409s: the per-user and batch limits.
    assert_replays(
        &app,
        ISSUE,
        "ri-2",
        &json!({"batch_id": batch, "user_id": "u1"}),
        409,
    )
    .await
    .assert_error(409, "PER_USER_LIMIT_REACHED");
    assert_replays(
        &app,
        ISSUE,
        "ri-3",
        &json!({"batch_id": batch, "user_id": "u2"}),
        409,
    )
    .await
    .assert_error(409, "BATCH_LIMIT_REACHED");
    // 404s.
    assert_replays(
        &app,
        ISSUE,
        "ri-4",
        &json!({"batch_id": batch + 99, "user_id": "u1"}),
        404,
    )
    .await
    .assert_error(404, "BATCH_NOT_FOUND");
    assert_replays(
        &app,
        REDEEM,
        "rr-0",
        &json!({"code": "NOSUCHCODE", "order_id": "o", "user_id": "u1"}),
        404,
    )
    .await
    .assert_error(404, "COUPON_NOT_FOUND");
    // 200 and 409 on redeem.
    assert_replays(
        &app,
        REDEEM,
        "rr-1",
        &json!({"code": code, "order_id": "o1", "user_id": "u1"}),
        200,
    )
    .await;
    assert_replays(
        &app,
        REDEEM,
        "rr-2",
        &json!({"code": code, "order_id": "o1", "user_id": "u1"}),
        409,
    )
    .await
    .assert_error(409, "COUPON_ALREADY_REDEEMED");
    // 409: an expired batch.
    let expired = app.new_batch(&batch_expiring_in(-10, 5, 1)).await;
    assert_replays(
        &app,
        ISSUE,
        "ri-5",
        &json!({"batch_id": expired, "user_id": "u1"}),
        409,
    )
    .await
    .assert_error(409, "BATCH_EXPIRED");
    // Each replayed many times stays the same.
    for _ in 0..3 {
        let r = app
            .post_json(BATCHES, Some("rb-1"), &batch_with_limits(1, 1))
            .await;
        assert!(
            r.replayed() && r.status == 201 && r.body == created.body,
            "{r:?}"
        );
    }
}
backend_test!(replays_are_byte_identical_for_every_outcome);

async fn a_replay_is_the_original_answer_not_the_current_state(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let issued = app.issue(batch, "u1", "state-1").await;
    assert_eq!(issued.status, 200);
    let code = assert_code(&issued.json()["code"]);
    let r = app.redeem(&code, "o1", "u1", "state-2").await;
    assert_eq!(r.status, 200, "{r:?}");
    // The coupon is redeemed now; the issue's replay still says what it said then.
    let replay = app.issue(batch, "u1", "state-1").await;
    assert!(replay.replayed(), "{replay:?}");
    assert_eq!(replay.body, issued.body);
    assert_eq!(replay.json()["status"], "issued");
}
backend_test!(a_replay_is_the_original_answer_not_the_current_state);

async fn key_order_and_white_space_do_not_matter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let compact = format!(r#"{{"batch_id":{batch},"user_id":"u1"}}"#);
    let spaced = format!("{{\n  \"user_id\" : \"u1\",\n\t\"batch_id\" :  {batch}\r\n}}  \n");
    let first = app
        .post_bytes(ISSUE, Some("order-1"), Some("application/json"), compact)
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let second = app
        .post_bytes(ISSUE, Some("order-1"), Some("application/json"), spaced)
        .await;
    assert_eq!(second.status, 200, "{second:?}");
    assert!(second.replayed());
    assert_eq!(second.body, first.body);

    // Nested bodies too: a batch's fields in another order.
    let a = r#"{"name":"N","discount_type":"fixed","amount":5,"total_limit":3,"expires_at":"2030-01-01T00:00:00Z"}"#;
    let b = r#"{ "expires_at" : "2030-01-01T00:00:00Z", "total_limit" : 3, "amount" : 5,
                "discount_type" : "fixed", "name" : "N" }"#;
    let first = app
        .post_bytes(BATCHES, Some("order-2"), Some("application/json"), a)
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    let second = app
        .post_bytes(BATCHES, Some("order-2"), Some("application/json"), b)
        .await;
    assert!(
        second.replayed() && second.status == 201 && second.body == first.body,
        "{second:?}"
    );
    assert_eq!(app.list_items("").await.len(), 1);
}
backend_test!(key_order_and_white_space_do_not_matter);

async fn a_key_reused_with_another_body_is_a_conflict(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let original = app.issue(batch, "u1", "mm-1").await;
    assert_eq!(original.status, 200);

    let mismatches = [
        (ISSUE, json!({"batch_id": batch, "user_id": "u2"})),
        (
            ISSUE,
            json!({"batch_id": batch, "user_id": "u1", "extra": 1}),
        ),
        // Another endpoint with the same key.
        (
            REDEEM,
            json!({"code": original.json()["code"], "order_id": "o", "user_id": "u1"}),
        ),
        (BATCHES, seed_batch()),
    ];
    for (path, body) in &mismatches {
        let r = app.post_json(path, Some("mm-1"), body).await;
        r.assert_error(409, "IDEMPOTENCY_KEY_BODY_MISMATCH");
        assert_eq!(
            r.header("retry-after"),
            None,
            "a mismatch is not worth retrying: {r:?}"
        );
        assert!(!r.replayed());
    }
    // The original is untouched and still replays.
    let r = app.issue(batch, "u1", "mm-1").await;
    assert!(r.replayed() && r.body == original.body, "{r:?}");
    assert_eq!(app.list_items("").await.len(), 1);
    assert_eq!(app.list_items("status=redeemed").await.len(), 0);

    // A stored rejection is bound to its body the same way.
    let missing = app.issue(batch + 50, "u1", "mm-2").await;
    missing.assert_error(404, "BATCH_NOT_FOUND");
    app.issue(batch, "u1", "mm-2")
        .await
        .assert_error(409, "IDEMPOTENCY_KEY_BODY_MISMATCH");
}
backend_test!(a_key_reused_with_another_body_is_a_conflict);

async fn rejected_requests_store_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    let good = serde_json::to_vec(&json!({"batch_id": batch, "user_id": "u1"})).expect("json");

    // Malformed JSON.
    app.post_bytes(
        ISSUE,
        Some("pre-1"),
        Some("application/json"),
        &b"{\"batch_id\":"[..],
    )
    .await
    .assert_error(400, "VALIDATION");
    // A validation error.
    app.post_json(ISSUE, Some("pre-2"), &json!({"batch_id": batch}))
        .await
        .assert_validation(&["user_id"]);
    // Not JSON at all.
    let r = app
        .post_bytes(ISSUE, Some("pre-3"), Some("text/plain"), good.clone())
        .await;
    assert!(r.status.is_client_error(), "{r:?}");
    r.assert_envelope();
    // Too large.
    let mut big = good.clone();
    big.resize(70 * 1024, b' ');
    app.post_bytes(ISSUE, Some("pre-4"), Some("application/json"), big)
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");
    // A batch that fails validation.
    app.create_batch(Some("pre-5"), &json!({"name": ""}))
        .await
        .assert_error(400, "VALIDATION");

    for key in ["pre-1", "pre-2", "pre-3", "pre-4", "pre-5"] {
        assert!(
            app.idempotency_record(key).await.is_none(),
            "{key} stored a record"
        );
    }
    assert!(app.list_items("").await.is_empty());

    // Each key then works, as new, with a good request.
    for key in ["pre-1", "pre-2", "pre-3", "pre-4"] {
        let r = app
            .post_bytes(ISSUE, Some(key), Some("application/json"), good.clone())
            .await;
        assert_eq!(r.status, 200, "{key}: {r:?}");
        assert!(!r.replayed(), "{key}: {r:?}");
    }
    let r = app.create_batch(Some("pre-5"), &seed_batch()).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(!r.replayed());
    assert_eq!(app.list_items("").await.len(), 4);
}
backend_test!(rejected_requests_store_nothing);

async fn a_failed_write_stores_nothing_and_the_key_works_afterwards(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    // One coupon in all, one per user: a write that failed must not have used it up.
    let batch = app.new_batch(&batch_with_limits(1, 1)).await;
    faults.fail_before_commit(Some("boom-"));

    let r = app.issue(batch, "u1", "boom-1").await;
    r.assert_error(500, "INTERNAL");
    assert!(!r.replayed());
    assert!(
        app.idempotency_record("boom-1").await.is_none(),
        "a 5xx must not be stored"
    );
    assert!(
        app.list_items("").await.is_empty(),
        "the failed write left a coupon"
    );
    // A retry while the fault lasts fails the same way: nothing was replayed.
    app.issue(batch, "u1", "boom-1")
        .await
        .assert_error(500, "INTERNAL");

    // Batch creation and redemption roll back the same way.
    app.create_batch(Some("boom-b"), &seed_batch())
        .await
        .assert_error(500, "INTERNAL");
    assert!(app.idempotency_record("boom-b").await.is_none());

    faults.fail_before_commit(None);
    let r = app.issue(batch, "u1", "boom-1").await;
    assert_eq!(r.status, 200, "the key works once the fault is gone: {r:?}");
    assert!(!r.replayed());
    let code = assert_code(&r.json()["code"]);
    let record = app.idempotency_record("boom-1").await.expect("now stored");
    assert_eq!(record.response.status, 200);
    assert_eq!(
        record.response.body, r.body,
        "the stored response is the one sent"
    );

    let r = app.create_batch(Some("boom-b"), &seed_batch()).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(!r.replayed());

    faults.fail_before_commit(Some("boom-"));
    app.redeem(&code, "o1", "u1", "boom-r")
        .await
        .assert_error(500, "INTERNAL");
    assert!(app.idempotency_record("boom-r").await.is_none());
    let items = app.list_items("").await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["status"], "issued",
        "a failed redemption must not stick"
    );
    faults.fail_before_commit(None);
    let r = app.redeem(&code, "o1", "u1", "boom-r").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.replayed());
}
backend_test!(a_failed_write_stores_nothing_and_the_key_works_afterwards);

async fn a_crash_before_commit_leaves_neither_coupon_nor_record(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let batch = app.new_batch(&batch_with_limits(10, 1)).await;
    faults.fail_before_commit(Some("crash-"));
    app.issue(batch, "victim", "crash-1")
        .await
        .assert_error(500, "INTERNAL");
    faults.fail_before_commit(None);

    assert!(
        app.list_items("user_id=victim").await.is_empty(),
        "the coupon was committed"
    );
    assert!(app.list_items("").await.is_empty());
    assert!(
        app.idempotency_record("crash-1").await.is_none(),
        "the record was committed"
    );
    // The user's and the batch's counters were rolled back too: the user still gets
    // exactly one coupon, through a new key.
    let r = app.issue(batch, "victim", "after-1").await;
    assert_eq!(r.status, 200, "{r:?}");
    app.issue(batch, "victim", "after-2")
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
}
backend_test!(a_crash_before_commit_leaves_neither_coupon_nor_record);

async fn a_failed_write_does_not_undo_its_neighbours(backend: Backend) {
    // SQLite commits concurrent writes as a group; one failing must not take the
    // others with it (nor may they commit its effect).
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let batch = app.new_batch(&batch_with_limits(100, 1)).await;
    faults.fail_before_commit(Some("bad-"));
    let client = app.client();
    let responses = concurrently(32, |i| {
        let client = client.clone();
        let key = if i % 4 == 0 {
            format!("bad-{i}")
        } else {
            format!("good-{i}")
        };
        async move { client.issue(batch, &format!("user-{i}"), &key).await }
    })
    .await;
    faults.fail_before_commit(None);
    for (i, r) in responses.iter().enumerate() {
        if i % 4 == 0 {
            r.assert_error(500, "INTERNAL");
            assert!(app.idempotency_record(&format!("bad-{i}")).await.is_none());
        } else {
            assert_eq!(r.status, 200, "request {i}: {r:?}");
        }
    }
    let items = app.list_items("").await;
    assert_eq!(items.len(), 24, "{items:?}");
    for (i, _) in responses.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
        assert!(app
            .list_items(&format!("user_id=user-{i}"))
            .await
            .is_empty());
    }
}
backend_test!(multi_thread: a_failed_write_does_not_undo_its_neighbours);

async fn a_duplicate_in_flight_waits_and_replays(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let batch = app.new_batch(&seed_batch()).await;
    let pause = Duration::from_millis(600);
    faults.pause_before_commit(Some("slow-"), pause);
    let client = app.client();
    let started = Instant::now();
    let responses = concurrently(2, |_| {
        let client = client.clone();
        async move { client.issue(batch, "u1", "slow-1").await }
    })
    .await;
    let elapsed = started.elapsed();
    faults.pause_before_commit(None, Duration::ZERO);
    assert_no_server_errors(&responses);
    for r in &responses {
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        responses[0].body, responses[1].body,
        "both answers are the same"
    );
    let replayed = responses.iter().filter(|r| r.replayed()).count();
    assert_eq!(replayed, 1, "exactly one is the original: {responses:?}");
    assert!(elapsed >= pause, "the write did pause ({elapsed:?})");
    assert_eq!(app.list_items("").await.len(), 1, "one effect");
}
backend_test!(multi_thread: a_duplicate_in_flight_waits_and_replays);

async fn a_duplicate_that_waits_too_long_gets_request_in_progress(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(
        backend,
        |s| s.idempotency_wait = Duration::from_millis(300),
        faults.clone(),
    )
    .await;
    let batch = app.new_batch(&seed_batch()).await;
    faults.pause_before_commit(Some("slow-"), Duration::from_millis(2000));
    let client = app.client();
    let original = tokio::spawn({
        let client = client.clone();
        async move { client.issue(batch, "u1", "slow-1").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let duplicates = concurrently(4, |_| {
        let client = client.clone();
        async move { client.issue(batch, "u1", "slow-1").await }
    })
    .await;
    let first = original.await.expect("original request");
    faults.pause_before_commit(None, Duration::ZERO);

    // Whichever of the five got to run (the first, unless it was slow to arrive) answers
    // 200; the other four waited 300 ms of its 2 s and were told to come back.
    let all: Vec<&TestResponse> = std::iter::once(&first).chain(&duplicates).collect();
    let ran: Vec<&&TestResponse> = all.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ran.len(), 1, "{all:#?}");
    let original = (*ran[0]).clone();
    assert!(!original.replayed());
    for r in all.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "REQUEST_IN_PROGRESS");
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }
    // Never a second execution: one coupon, and the key now replays the original.
    assert_eq!(app.list_items("").await.len(), 1);
    let r = client.issue(batch, "u1", "slow-1").await;
    assert!(
        r.replayed() && r.status == 200 && r.body == original.body,
        "{r:?}"
    );
}
backend_test!(multi_thread: a_duplicate_that_waits_too_long_gets_request_in_progress);

async fn a_fresh_key_held_up_by_another_write_is_not_request_in_progress(backend: Backend) {
    // REQUEST_IN_PROGRESS says "a request with this Idempotency-Key is still being
    // processed". A request whose key nobody else has used, waiting on a row another
    // write holds, must get its own answer (or a plain retryable 503), not that one.
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(
        backend,
        |s| s.idempotency_wait = Duration::from_millis(300),
        faults.clone(),
    )
    .await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    faults.pause_before_commit(Some("slow-"), Duration::from_millis(1500));
    let client = app.client();
    let slow = tokio::spawn({
        let code = code.clone();
        async move { client.redeem(&code, "o1", "u1", "slow-r").await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fast = app.redeem(&code, "o2", "u2", "fast-r").await;
    let slow = slow.await.expect("slow redeem");
    faults.pause_before_commit(None, Duration::ZERO);
    assert_eq!(slow.status, 200, "{slow:?}");

    let acceptable = (fast.status == 409 && fast.error_code() == "COUPON_ALREADY_REDEEMED")
        || (fast.status == 503 && fast.header("retry-after").is_some());
    assert!(
        acceptable,
        "a fresh key blocked by another key's write: expected 409 COUPON_ALREADY_REDEEMED \
         (as once the lock is free) or a retryable 503, got {fast:?}"
    );
    // Either way its retry now gets the real answer, and the first redemption stands.
    app.redeem(&code, "o2", "u2", "fast-r")
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    assert_eq!(app.list_items("status=redeemed").await, vec![slow.json()]);
}
backend_test!(multi_thread: a_fresh_key_held_up_by_another_write_is_not_request_in_progress);

async fn an_expired_key_reused_at_once_runs_once(backend: Backend) {
    let ttl = Duration::from_millis(1500);
    let app = TestApp::spawn_with(
        backend,
        |s| s.idempotency_ttl = ttl,
        Arc::new(Faults::default()),
    )
    .await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    let first = app.issue(batch, "u1", "reuse-1").await;
    assert_eq!(first.status, 200);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let client = app.client();
    let responses = concurrently(16, |_| {
        let client = client.clone();
        async move { client.issue(batch, "u1", "reuse-1").await }
    })
    .await;
    assert_no_server_errors(&responses);
    for r in &responses {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, responses[0].body);
    }
    assert_ne!(responses[0].body, first.body, "the key ran anew");
    assert_eq!(
        responses.iter().filter(|r| !r.replayed()).count(),
        1,
        "and only once"
    );
    assert_eq!(app.list_items("").await.len(), 2);
}
backend_test!(multi_thread: an_expired_key_reused_at_once_runs_once);

async fn an_expired_key_runs_anew(backend: Backend) {
    let ttl = Duration::from_millis(800);
    let app = TestApp::spawn_with(
        backend,
        |s| s.idempotency_ttl = ttl,
        Arc::new(Faults::default()),
    )
    .await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let other = app.new_batch(&batch_with_limits(100, 5)).await;
    let first = app.issue(batch, "u1", "ttl-1").await;
    assert_eq!(first.status, 200, "{first:?}");
    let replay = app.issue(batch, "u1", "ttl-1").await;
    assert!(
        replay.replayed() && replay.body == first.body,
        "within the TTL it replays: {replay:?}"
    );

    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let again = app.issue(batch, "u1", "ttl-1").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(
        !again.replayed(),
        "after the TTL the key runs anew: {again:?}"
    );
    assert_ne!(again.json()["code"], first.json()["code"]);
    assert_eq!(app.list_items("user_id=u1").await.len(), 2);
    // The new answer is what the key replays now.
    let replay = app.issue(batch, "u1", "ttl-1").await;
    assert!(replay.replayed() && replay.body == again.body, "{replay:?}");

    // An expired key does not hold on to its old body either.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let r = app.issue(other, "u2", "ttl-1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.replayed());
    assert_eq!(r.json()["issued_to"], "u2");
}
backend_test!(an_expired_key_runs_anew);

async fn the_purge_task_removes_expired_records(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        |s| {
            s.idempotency_ttl = Duration::from_millis(300);
            s.purge_interval = Duration::from_millis(50);
        },
        Arc::new(Faults::default()),
    )
    .await;
    let batch = app.new_batch(&seed_batch()).await;
    let r = app.issue(batch, "u1", "purge-1").await;
    assert_eq!(r.status, 200);
    let record = app
        .idempotency_record("purge-1")
        .await
        .expect("stored at once");
    assert_eq!(record.response.status, 200);
    assert_eq!(record.response.body, r.body);
    assert!(record.expires_at > record.created_at);

    let store_app = &app;
    let gone = eventually(Duration::from_secs(5), || async move {
        store_app.idempotency_record("purge-1").await.is_none()
    })
    .await;
    assert!(
        gone,
        "the purge task did not remove the expired record within 5s"
    );
    // Only the record goes; the coupon stays.
    assert_eq!(app.list_items("").await.len(), 1);
}
backend_test!(the_purge_task_removes_expired_records);

async fn purge_expired_deletes_only_expired_records(backend: Backend) {
    let ttl = Duration::from_millis(1000);
    let app = TestApp::spawn_with(
        backend,
        |s| s.idempotency_ttl = ttl,
        Arc::new(Faults::default()),
    )
    .await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    app.issue(batch, "u1", "old-1").await;
    app.issue(batch, "u1", "old-2").await;
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let fresh = app.issue(batch, "u1", "fresh-1").await;
    assert_eq!(fresh.status, 200);

    // Three records expired by now: the batch's and old-1, old-2.
    let purged = coupond::app::purge_expired(&app.store)
        .await
        .expect("purge");
    assert_eq!(purged, 3);
    assert!(app.idempotency_record("old-1").await.is_none());
    assert!(app.idempotency_record("old-2").await.is_none());
    assert!(app.idempotency_record("fresh-1").await.is_some());
    assert_eq!(
        coupond::app::purge_expired(&app.store)
            .await
            .expect("purge"),
        0
    );
    let r = app.issue(batch, "u1", "fresh-1").await;
    assert!(r.replayed() && r.body == fresh.body);
    assert_eq!(app.list_items("").await.len(), 3);
}
backend_test!(purge_expired_deletes_only_expired_records);
