//! Exactly-once across the edges of a request's life: the client hanging up, the request
//! timing out, the server stopping and another one taking over the database.

use std::sync::Arc;
use std::time::Duration;

use coupond::faults::Faults;

use crate::backend_test;
use crate::helpers::*;

async fn replays_survive_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = app.create_batch(Some("life-b"), &seed_batch()).await;
    assert_eq!(created.status, 201);
    let batch = created.json()["id"].as_i64().expect("id");
    let issued = app.issue(batch, "u1", "life-i").await;
    assert_eq!(issued.status, 200);
    let refused = app.issue(batch, "u1", "life-409").await;
    refused.assert_error(409, "PER_USER_LIMIT_REACHED");

    // A new server on the same database; the old one stops and takes its memory along.
    let next = app.spawn_sibling(|_| {}, Arc::new(Faults::default())).await;
    app.stop().await;

    for (path, key, body, original) in [
        (BATCHES, "life-b", seed_batch(), &created),
        (
            ISSUE,
            "life-i",
            serde_json::json!({"batch_id": batch, "user_id": "u1"}),
            &issued,
        ),
        (
            ISSUE,
            "life-409",
            serde_json::json!({"batch_id": batch, "user_id": "u1"}),
            &refused,
        ),
    ] {
        let r = next.post_json(path, Some(key), &body).await;
        assert_eq!(r.status, original.status, "{key}: {r:?}");
        assert_eq!(r.body, original.body, "{key}");
        assert!(r.replayed(), "{key}: {r:?}");
    }
    assert_eq!(next.list_items("").await.len(), 1);
}
backend_test!(replays_survive_a_restart);

async fn shutdown_lets_a_write_in_flight_commit(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let next = app.spawn_sibling(|_| {}, Arc::new(Faults::default())).await;
    let batch = app.new_batch(&seed_batch()).await;
    faults.pause_before_commit(Some("inflight-"), Duration::from_millis(1000));
    let client = app.client();
    let request = tokio::spawn(async move { client.issue(batch, "u1", "inflight-1").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.stop().await;

    let original = request.await.expect("request task");
    assert_eq!(
        original.status, 200,
        "the request in flight is answered: {original:?}"
    );
    let r = next.issue(batch, "u1", "inflight-1").await;
    assert!(
        r.replayed() && r.body == original.body,
        "the write committed: {r:?}"
    );
    assert_eq!(next.list_items("").await.len(), 1);
}
backend_test!(multi_thread: shutdown_lets_a_write_in_flight_commit);

async fn a_client_that_hangs_up_still_gets_exactly_once(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let batch = app.new_batch(&seed_batch()).await;
    faults.pause_before_commit(Some("gone-"), Duration::from_millis(1000));

    let impatient = ApiClient {
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client"),
        ..app.client()
    };
    let sent = impatient
        .request(reqwest::Method::POST, ISSUE)
        .header("content-type", "application/json")
        .header("idempotency-key", "gone-1")
        .body(serde_json::json!({"batch_id": batch, "user_id": "u1"}).to_string())
        .send()
        .await;
    assert!(sent.is_err(), "the client was meant to give up: {sent:?}");

    // Its retry waits for the write it started and gets that write's answer.
    let retry = app.issue(batch, "u1", "gone-1").await;
    faults.pause_before_commit(None, Duration::ZERO);
    assert_eq!(retry.status, 200, "{retry:?}");
    assert!(
        retry.replayed(),
        "the first attempt's write finished and is replayed: {retry:?}"
    );
    assert_eq!(app.list_items("").await.len(), 1);
    assert_eq!(app.issue(batch, "u1", "gone-1").await.body, retry.body);
}
backend_test!(multi_thread: a_client_that_hangs_up_still_gets_exactly_once);

async fn a_request_timeout_still_writes_exactly_once(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(
        backend,
        |s| s.request_timeout = Duration::from_millis(300),
        faults.clone(),
    )
    .await;
    let batch = app.new_batch(&seed_batch()).await;
    faults.pause_before_commit(Some("late-"), Duration::from_millis(1000));

    let r = app.issue(batch, "u1", "late-1").await;
    r.assert_error(503, "REQUEST_TIMEOUT");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");

    // The write goes on; retrying with the key, once it is done, replays it. Retries
    // before then time out too (each has 300 ms), and must not run it again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let retry = loop {
        let r = app.issue(batch, "u1", "late-1").await;
        if r.status == 503 && tokio::time::Instant::now() < deadline {
            r.assert_error(503, "REQUEST_TIMEOUT");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break r;
    };
    faults.pause_before_commit(None, Duration::ZERO);
    assert_eq!(retry.status, 200, "{retry:?}");
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(app.list_items("").await.len(), 1);
    // A new key for the same user finds the limit used up by that one write.
    app.issue(batch, "u1", "late-2")
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
}
backend_test!(multi_thread: a_request_timeout_still_writes_exactly_once);
