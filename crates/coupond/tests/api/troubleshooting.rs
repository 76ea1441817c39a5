//! The seed's troubleshooting notes, as tests: each of the bugs it hit must not exist.

use std::sync::Arc;
use std::time::Duration;

use coupond::faults::Faults;
use serde_json::json;

use crate::backend_test;
use crate::helpers::*;

async fn note_2_the_header_is_read_whatever_its_case(backend: Backend) {
    // "첫 요청이 400": the decorator missed the header. The seed's flow, with the
    // header sent in a different case on every request.
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let post =
        |path: &'static str, name: &'static str, key: &'static str, body: serde_json::Value| {
            let client = app.client();
            async move {
                client
                    .raw(
                        "POST",
                        path.as_bytes(),
                        &[
                            ("content-type", b"application/json"),
                            (name, key.as_bytes()),
                        ],
                        RawBody::Fixed(serde_json::to_vec(&body).expect("json")),
                    )
                    .await
            }
        };
    let issue = json!({"batch_id": batch, "user_id": "u1"});
    let r1 = post(ISSUE, "Idempotency-Key", "iss-1", issue.clone()).await;
    assert_eq!(r1.status, 200, "{r1:?}");
    let code = assert_code(&r1.json()["code"]);
    let r2 = post(ISSUE, "IDEMPOTENCY-KEY", "iss-1", issue.clone()).await;
    assert!(
        r2.status == 200 && r2.replayed() && r2.body == r1.body,
        "{r2:?}"
    );
    post(ISSUE, "idempotency-key", "iss-2", issue)
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
    let redeem = json!({"code": code, "order_id": "ord_1", "user_id": "u1"});
    let rr1 = post(REDEEM, "IdEmPoTeNcY-kEy", "red-1", redeem.clone()).await;
    assert!(
        rr1.status == 200 && rr1.json()["status"] == "redeemed",
        "{rr1:?}"
    );
    let rr2 = post(REDEEM, "IDEMPOTENCY-key", "red-1", redeem.clone()).await;
    assert!(
        rr2.status == 200 && rr2.replayed() && rr2.body == rr1.body,
        "{rr2:?}"
    );
    post(REDEEM, "idempotency-KEY", "red-2", redeem)
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
}
backend_test!(note_2_the_header_is_read_whatever_its_case);

async fn note_4_a_unique_key_race_across_servers_has_one_effect(backend: Backend) {
    // "IntegrityError → TransactionManagementError": many first requests with one key
    // at once, spread over two servers on one database (so that the in-process wait
    // cannot hide the race: the database must settle it). One effect, no 5xx.
    let faults = Arc::new(Faults::default());
    let one = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let two = one.spawn_sibling(|_| {}, faults.clone()).await;
    let batch = one.new_batch(&batch_with_limits(100, 50)).await;
    // Holding the first commit open a little makes every other request meet it.
    faults.pause_before_commit(Some("race-"), Duration::from_millis(300));
    let (c1, c2) = (one.client(), two.client());
    let responses = concurrently(32, |i| {
        let client = if i % 2 == 0 { c1.clone() } else { c2.clone() };
        async move { client.issue(batch, "u1", "race-1").await }
    })
    .await;
    faults.pause_before_commit(None, Duration::ZERO);
    assert_no_server_errors(&responses);
    for r in &responses {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.body, responses[0].body,
            "every answer is the original's bytes"
        );
    }
    assert_eq!(
        responses.iter().filter(|r| !r.replayed()).count(),
        1,
        "{:?}",
        tally(&responses)
    );
    assert_eq!(one.list_items("").await.len(), 1);
    assert_eq!(two.list_items("").await.len(), 1);

    // Without the pause, too, and for batch creation.
    let responses = concurrently(32, |i| {
        let client = if i % 2 == 0 { c1.clone() } else { c2.clone() };
        async move {
            client
                .create_batch(Some("race-batch"), &seed_batch_fixed())
                .await
        }
    })
    .await;
    assert_no_server_errors(&responses);
    for r in &responses {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.body, responses[0].body);
    }
    assert_eq!(
        responses.iter().filter(|r| !r.replayed()).count(),
        1,
        "{:?}",
        tally(&responses)
    );
    assert_eq!(
        one.new_batch(&seed_batch()).await,
        batch + 2,
        "one batch was created, not more"
    );
}
backend_test!(multi_thread: note_4_a_unique_key_race_across_servers_has_one_effect);

fn seed_batch_fixed() -> serde_json::Value {
    json!({
        "name": "fixed",
        "discount_type": "fixed",
        "amount": 1000,
        "total_limit": 5,
        "expires_at": "2030-01-01T00:00:00Z",
    })
}

async fn note_5_a_replay_never_differs_from_the_original(backend: Backend) {
    // "'JsonResponse' object has no attribute 'data'": the replay came back in another
    // shape. Every outcome, replayed twice, from a second server too, is the same
    // status and the same bytes.
    let app = TestApp::spawn(backend).await;
    let sibling = app.spawn_sibling(|_| {}, Arc::new(Faults::default())).await;
    let created = app
        .create_batch(Some("n5-b"), &batch_with_limits(1, 1))
        .await;
    assert_eq!(created.status, 201);
    let batch = created.json()["id"].as_i64().expect("id");
    let issued = app.issue(batch, "u1", "n5-i").await;
    let code = assert_code(&issued.json()["code"]);
    let requests = vec![
        (BATCHES, "n5-b", batch_with_limits(1, 1), 201),
        (
            ISSUE,
            "n5-i",
            json!({"batch_id": batch, "user_id": "u1"}),
            200,
        ),
        (
            ISSUE,
            "n5-user",
            json!({"batch_id": batch, "user_id": "u1"}),
            409,
        ),
        (
            ISSUE,
            "n5-full",
            json!({"batch_id": batch, "user_id": "u2"}),
            409,
        ),
        (
            ISSUE,
            "n5-404",
            json!({"batch_id": batch + 10, "user_id": "u1"}),
            404,
        ),
        (
            REDEEM,
            "n5-r",
            json!({"code": code, "order_id": "o", "user_id": "u1"}),
            200,
        ),
        (
            REDEEM,
            "n5-rr",
            json!({"code": code, "order_id": "o", "user_id": "u1"}),
            409,
        ),
        (
            REDEEM,
            "n5-r404",
            json!({"code": "ZZZZZZZZZZ", "order_id": "o", "user_id": "u1"}),
            404,
        ),
    ];
    for (path, key, body, status) in requests {
        let original = app.post_json(path, Some(key), &body).await;
        assert_eq!(original.status.as_u16(), status, "{key}: {original:?}");
        for client in [&*app, &*sibling, &*app] {
            let replay = client.post_json(path, Some(key), &body).await;
            assert_eq!(replay.status, original.status, "{key}: {replay:?}");
            assert_eq!(replay.text(), original.text(), "{key}");
            assert_eq!(
                replay.header("content-type"),
                Some("application/json"),
                "{key}"
            );
            assert!(replay.replayed(), "{key}: {replay:?}");
        }
    }
}
backend_test!(note_5_a_replay_never_differs_from_the_original);
