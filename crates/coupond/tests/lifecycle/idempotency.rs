//! Every new POST honours `Idempotency-Key` as the seed's endpoints do: a replay is the
//! same status and bytes with `Idempotent-Replayed: true` and no second effect; another
//! body under the key is a mismatch; refusals are stored; bad requests store nothing;
//! concurrent duplicates run once.

use std::sync::Arc;
use std::time::Duration;

use coupond::faults::Faults;
use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

/// Sends `body` to `path` under `key` three times: the first runs, the others replay it
/// byte for byte. Returns the first response.
async fn runs_once(app: &TestApp, path: &str, key: &str, body: &Value) -> TestResponse {
    let first = app.post_json(path, Some(key), body).await;
    assert!(!first.replayed(), "{path}: {first:?}");
    for _ in 0..2 {
        let again = app.post_json(path, Some(key), body).await;
        assert_eq!(again.status, first.status, "{path}: {again:?}");
        assert_eq!(again.body, first.body, "{path}: the same bytes");
        assert!(again.replayed(), "{path}: marked replayed: {again:?}");
    }
    first
}

async fn the_new_writes_replay_and_run_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);

    // Deactivate, then activate: each replays its own answer, even after the state has
    // moved on.
    let off = runs_once(
        &app,
        &format!("{BATCHES}{batch}/deactivate/"),
        "k-off",
        &json!({}),
    )
    .await;
    assert_eq!(off.status, 200);
    assert_eq!(off.json()["active"], json!(false));
    let on = runs_once(
        &app,
        &format!("{BATCHES}{batch}/activate/"),
        "k-on",
        &json!({}),
    )
    .await;
    assert_eq!(on.json()["active"], json!(true));
    let replay = app
        .post_json(
            &format!("{BATCHES}{batch}/deactivate/"),
            Some("k-off"),
            &json!({}),
        )
        .await;
    assert!(replay.replayed() && replay.body == off.body);
    assert_eq!(
        app.get_batch(batch).await["active"],
        json!(true),
        "a replay is not a second deactivation"
    );

    // Redeem with an order amount, unredeem, cancel.
    let redeem = json!({"code": code, "order_id": "o1", "user_id": "u1", "order_amount": 2500});
    let r = runs_once(&app, REDEEM, "k-redeem", &redeem).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["discount_amount"], json!(250));
    assert_eq!(app.batch_stats(batch).await, (1, 1, 0, 99));
    let unredeem = json!({"code": code, "order_id": "o1", "reason": "refund"});
    let u = runs_once(&app, UNREDEEM, "k-unredeem", &unredeem).await;
    assert_eq!(u.status, 200);
    assert_eq!(app.batch_stats(batch).await, (1, 0, 0, 99));
    let cancel = json!({"code": code, "reason": "lost"});
    let c = runs_once(&app, CANCEL, "k-cancel", &cancel).await;
    assert_eq!(c.status, 200);
    assert_eq!(app.batch_stats(batch).await, (1, 0, 1, 99));
    assert_eq!(
        app.event_kinds(&code).await,
        vec!["issued", "redeemed", "unredeemed", "cancelled"]
    );
    // The redeem key replays its 200 although the coupon is cancelled now.
    let again = app.post_json(REDEEM, Some("k-redeem"), &redeem).await;
    assert!(again.replayed() && again.body == r.body && again.status == 200);

    // Bulk codes: one job, counted once.
    let path = format!("{BATCHES}{batch}/codes/");
    let job = runs_once(&app, &path, "k-codes", &json!({"count": 5})).await;
    assert_eq!(job.status, 202);
    let id = job.json()["id"].as_i64().expect("id");
    app.wait_job(batch, id, Duration::from_secs(60)).await;
    let again = app
        .post_json(&path, Some("k-codes"), &json!({"count": 5}))
        .await;
    assert!(again.replayed() && again.body == job.body && again.status == 202);
    assert_eq!(app.batch_stats(batch).await, (6, 0, 1, 94));
    assert_eq!(app.csv_rows(batch).await.len(), 6);

    // Key order and white space do not make another request.
    let spaced = format!("{{ \"reason\" : \"lost\",\n \"code\": \"{code}\" }}");
    let r = app
        .post_bytes(CANCEL, Some("k-cancel"), Some("application/json"), spaced)
        .await;
    assert!(r.replayed() && r.body == c.body, "{r:?}");
}
backend_test!(the_new_writes_replay_and_run_once);

async fn another_request_under_a_used_key_is_a_mismatch(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    let other = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&code, "o1", "u1").await;

    let cases: Vec<(String, Value, String, Value)> = vec![
        // Same path, another body.
        (
            CANCEL.into(),
            json!({"code": other}),
            CANCEL.into(),
            json!({"code": other, "reason": "x"}),
        ),
        (
            UNREDEEM.into(),
            json!({"code": code, "order_id": "o1"}),
            UNREDEEM.into(),
            json!({"code": code, "order_id": "o2"}),
        ),
        (
            format!("{BATCHES}{batch}/codes/"),
            json!({"count": 2}),
            format!("{BATCHES}{batch}/codes/"),
            json!({"count": 3}),
        ),
        // Same body, another path.
        (
            format!("{BATCHES}{batch}/deactivate/"),
            json!({}),
            format!("{BATCHES}{batch}/activate/"),
            json!({}),
        ),
        (
            CANCEL.into(),
            json!({"code": "NOSUCHCODE"}),
            UNREDEEM.into(),
            json!({"code": "NOSUCHCODE", "order_id": "o1"}),
        ),
    ];
    for (i, (path, body, other_path, other_body)) in cases.into_iter().enumerate() {
        let key = format!("mismatch-{i}");
        let first = app.post_json(&path, Some(&key), &body).await;
        assert!(first.status.as_u16() < 500, "{first:?}");
        let r = app.post_json(&other_path, Some(&key), &other_body).await;
        r.assert_error(409, "IDEMPOTENCY_KEY_BODY_MISMATCH");
        // The original still replays.
        let again = app.post_json(&path, Some(&key), &body).await;
        assert!(again.replayed() && again.body == first.body, "{again:?}");
    }
    // Nothing ran twice: the deactivation happened, the activation did not.
    assert_eq!(app.get_batch(batch).await["active"], json!(false));
    // 2 issued + 2 generated; one cancel; the unredeem ran.
    assert_eq!(app.batch_stats(batch).await, (4, 0, 1, 96));
}
backend_test!(another_request_under_a_used_key_is_a_mismatch);

async fn refusals_are_stored_and_replayed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    // Unredeem before there is a redemption: refused, and the refusal is the answer of
    // that key from now on, even once it would succeed.
    let body = json!({"code": code, "order_id": "o1"});
    let refused = app.post_json(UNREDEEM, Some("early-unredeem"), &body).await;
    refused.assert_error(409, "COUPON_NOT_REDEEMED");
    app.redeem_ok(&code, "o1", "u1").await;
    let again = app.post_json(UNREDEEM, Some("early-unredeem"), &body).await;
    again.assert_error(409, "COUPON_NOT_REDEEMED");
    assert!(again.replayed() && again.body == refused.body);
    assert_eq!(
        app.coupon(&code).await["status"],
        "redeemed",
        "it did not run"
    );

    // A 404 is stored too.
    let missing = json!({"code": "NOSUCHCODE"});
    let r = app.post_json(CANCEL, Some("cancel-404"), &missing).await;
    r.assert_error(404, "COUPON_NOT_FOUND");
    let again = app.post_json(CANCEL, Some("cancel-404"), &missing).await;
    assert!(again.replayed() && again.body == r.body && again.status == 404);

    // Bulk codes refused for lack of room: stored; room made later does not change it.
    let small = app.new_batch(&batch_with_limits(2, 2)).await;
    let path = format!("{BATCHES}{small}/codes/");
    let r = app
        .post_json(&path, Some("codes-409"), &json!({"count": 3}))
        .await;
    r.assert_error(409, "BATCH_LIMIT_REACHED");
    let again = app
        .post_json(&path, Some("codes-409"), &json!({"count": 3}))
        .await;
    assert!(again.replayed() && again.body == r.body);
    assert_eq!(app.batch_stats(small).await, (0, 0, 0, 2));

    // Activation of a batch that does not exist: stored.
    let r = app
        .post_json(
            &format!("{BATCHES}555/activate/"),
            Some("act-404"),
            &json!({}),
        )
        .await;
    r.assert_error(404, "BATCH_NOT_FOUND");
    let again = app
        .post_json(
            &format!("{BATCHES}555/activate/"),
            Some("act-404"),
            &json!({}),
        )
        .await;
    assert!(again.replayed() && again.body == r.body);
}
backend_test!(refusals_are_stored_and_replayed);

async fn keys_are_required_and_bad_requests_store_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&code, "o1", "u1").await;
    let other = code_of(&app.issue_ok(batch, "u1").await);
    let writes: Vec<(String, Value)> = vec![
        (CANCEL.into(), json!({"code": other})),
        (UNREDEEM.into(), json!({"code": code, "order_id": "o1"})),
        (format!("{BATCHES}{batch}/deactivate/"), json!({})),
        (format!("{BATCHES}{batch}/activate/"), json!({})),
        (format!("{BATCHES}{batch}/codes/"), json!({"count": 1})),
    ];
    for (path, body) in &writes {
        app.post_json(path, None, body)
            .await
            .assert_error(400, "IDEMPOTENCY_KEY_REQUIRED");
        // An empty key is a missing one, as for the seed's endpoints.
        app.post_json(path, Some(""), body)
            .await
            .assert_error(400, "IDEMPOTENCY_KEY_REQUIRED");
        for bad in [
            "k".repeat(256),
            "with space".to_owned(),
            "tab\there".to_owned(),
        ] {
            app.post_json(path, Some(&bad), body)
                .await
                .assert_error(400, "IDEMPOTENCY_KEY_INVALID");
        }
    }
    assert_eq!(app.batch_stats(batch).await, (2, 1, 0, 98), "nothing ran");

    // An invalid body under a key stores nothing: the key then runs the fixed request.
    for (i, (path, body)) in writes.iter().enumerate() {
        let key = format!("fix-{i}");
        // Invalid fields where there are fields, malformed JSON everywhere.
        let invalid = if path.ends_with("/codes/") {
            Some(json!({"count": 0}))
        } else if path == CANCEL || path == UNREDEEM {
            Some(json!({"code": 5}))
        } else {
            None
        };
        if let Some(invalid) = invalid {
            let r = app.post_json(path, Some(&key), &invalid).await;
            assert_eq!(r.status, 400, "{path}: {r:?}");
        }
        let r = app
            .post_bytes(path, Some(&key), Some("application/json"), "{oops")
            .await;
        r.assert_error(400, "VALIDATION");
        assert!(app.idempotency_record(&key).await.is_none(), "{path}");
        let r = app.post_json(path, Some(&key), body).await;
        assert!(r.status.is_success(), "{path}: {r:?}");
        assert!(!r.replayed());
    }
    assert_eq!(app.get_batch(batch).await["active"], json!(true));
}
backend_test!(keys_are_required_and_bad_requests_store_nothing);

/// The same key sent 8 times at once: one execution, 8 identical answers.
async fn concurrent_duplicates_run_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(1000, 1000)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    let redeemed = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&redeemed, "o1", "u1").await;

    let requests: Vec<(String, Value)> = vec![
        (CANCEL.into(), json!({"code": code, "reason": "dup"})),
        (UNREDEEM.into(), json!({"code": redeemed, "order_id": "o1"})),
        (format!("{BATCHES}{batch}/codes/"), json!({"count": 50})),
        (format!("{BATCHES}{batch}/deactivate/"), json!({})),
    ];
    for (n, (path, body)) in requests.into_iter().enumerate() {
        let client = app.client();
        let key = format!("dup-{n}");
        let responses = concurrently(8, move |_| {
            let client = client.clone();
            let (path, body, key) = (path.clone(), body.clone(), key.clone());
            async move { client.post_json(&path, Some(&key), &body).await }
        })
        .await;
        assert_no_server_errors(&responses);
        let first = &responses[0];
        assert!(first.status.is_success(), "{first:?}");
        for r in &responses {
            assert_eq!(r.status, first.status);
            assert_eq!(r.body, first.body, "identical answers");
        }
        assert_eq!(
            responses.iter().filter(|r| !r.replayed()).count(),
            1,
            "exactly one ran: {:?}",
            tally(&responses)
        );
    }
    assert_eq!(app.event_kinds(&code).await, vec!["issued", "cancelled"]);
    assert_eq!(
        app.event_kinds(&redeemed).await,
        vec!["issued", "redeemed", "unredeemed"]
    );
    // 2 issued + 50 generated (one job), 1 cancelled, the redemption given back.
    assert_eq!(app.batch_stats(batch).await, (52, 0, 1, 948));
    assert_eq!(app.get_batch(batch).await["active"], json!(false));
}
backend_test!(multi_thread: concurrent_duplicates_run_once);

/// A write that fails (5xx) stores nothing: the effect is rolled back with it, and the
/// same key runs anew once the fault is gone.
async fn a_failed_write_stores_nothing_and_its_key_runs_later(backend: Backend) {
    let faults = Arc::new(Faults::default());
    let app = TestApp::spawn_with(backend, |_| {}, faults.clone()).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let to_cancel = code_of(&app.issue_ok(batch, "u1").await);
    let to_unredeem = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&to_unredeem, "o1", "u1").await;
    let writes: Vec<(&str, String, Value)> = vec![
        ("boom-c", CANCEL.into(), json!({"code": to_cancel})),
        (
            "boom-u",
            UNREDEEM.into(),
            json!({"code": to_unredeem, "order_id": "o1"}),
        ),
        (
            "boom-j",
            format!("{BATCHES}{batch}/codes/"),
            json!({"count": 3}),
        ),
        ("boom-d", format!("{BATCHES}{batch}/deactivate/"), json!({})),
        (
            "boom-r",
            REDEEM.into(),
            json!({"code": to_cancel, "order_id": "o2", "user_id": "u1", "order_amount": 100}),
        ),
    ];
    faults.fail_before_commit(Some("boom-"));
    for (key, path, body) in &writes {
        let r = app.post_json(path, Some(key), body).await;
        r.assert_error(500, "INTERNAL");
        assert!(app.idempotency_record(key).await.is_none(), "{path}");
    }
    // Nothing stuck.
    assert_eq!(app.batch_stats(batch).await, (2, 1, 0, 8));
    assert_eq!(app.get_batch(batch).await["active"], json!(true));
    assert_eq!(app.coupon(&to_cancel).await["status"], "issued");
    assert_eq!(app.coupon(&to_unredeem).await["status"], "redeemed");
    assert_eq!(app.event_kinds(&to_cancel).await, vec!["issued"]);

    faults.fail_before_commit(None);
    // Now each key runs (the redeem, in a batch deactivated a moment before, is
    // refused, and that refusal is its stored answer).
    for (key, path, body) in &writes {
        let r = app.post_json(path, Some(key), body).await;
        assert!(!r.replayed(), "{path}: {r:?}");
        if *key == "boom-r" {
            r.assert_error(409, "BATCH_INACTIVE");
        } else {
            assert!(r.status.is_success(), "{path}: {r:?}");
        }
        let stored = app.idempotency_record(key).await.expect("stored now");
        assert_eq!(stored.response.body, r.body);
    }
    assert_eq!(app.batch_stats(batch).await, (5, 0, 1, 5));
    assert_eq!(app.get_batch(batch).await["active"], json!(false));
}
backend_test!(a_failed_write_stores_nothing_and_its_key_runs_later);

/// Keys belong to the API key that used them: another caller's same key is another
/// request.
async fn keys_are_scoped_per_api_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (service, _) = client_of(&app, coupond::domain::Scope::Service).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let a = code_of(&app.issue_ok(batch, "u1").await);
    let b = code_of(&app.issue_ok(batch, "u1").await);
    let mine = app
        .post_json(CANCEL, Some("shared"), &json!({"code": a}))
        .await;
    assert_eq!(mine.status, 200, "{mine:?}");
    let theirs = service
        .post_json(CANCEL, Some("shared"), &json!({"code": b}))
        .await;
    assert_eq!(theirs.status, 200, "{theirs:?}");
    assert!(!theirs.replayed());
    assert_eq!(theirs.json()["code"], json!(b));
    let again = service
        .post_json(CANCEL, Some("shared"), &json!({"code": b}))
        .await;
    assert!(again.replayed() && again.body == theirs.body);
    assert_eq!(app.batch_stats(batch).await, (2, 0, 2, 8));
}
backend_test!(keys_are_scoped_per_api_key);
