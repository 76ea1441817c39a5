//! `POST /v1/coupons/issue/`: the seed's `CouponIssue` view and `issue_coupon` service.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::backend_test;
use crate::helpers::*;

async fn issue_returns_the_coupon(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let before = OffsetDateTime::now_utc() - time::Duration::seconds(5);

    let r = app.issue(batch, "u1", "i-1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.is_json(), "{r:?}");
    let c = r.json();
    assert_coupon_shape(&c);
    assert_eq!(keys(&c), set(&COUPON_FIELDS), "{c}");
    assert_code(&c["code"]);
    assert_eq!(c["status"], "issued");
    assert_eq!(c["issued_to"], "u1");
    let issued_at = parse_utc(&c["issued_at"]);
    let after = OffsetDateTime::now_utc() + time::Duration::seconds(5);
    assert!(
        before <= issued_at && issued_at <= after,
        "issued_at {issued_at} is not now"
    );
    assert_eq!(c["redeemed_by"], Value::Null);
    assert_eq!(c["redeemed_at"], Value::Null);
    assert_eq!(c["order_id"], Value::Null);
}
backend_test!(issue_returns_the_coupon);

async fn codes_are_distinct_and_well_formed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(1000, 1)).await;
    let mut codes = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for i in 0..30 {
        let c = app.issue_ok(batch, &format!("user-{i}")).await;
        codes.insert(assert_code(&c["code"]));
        ids.insert(c["id"].as_i64().expect("id"));
    }
    assert_eq!(codes.len(), 30, "codes repeat: {codes:?}");
    assert_eq!(ids.len(), 30, "ids repeat: {ids:?}");
}
backend_test!(codes_are_distinct_and_well_formed);

async fn ids_may_be_numbers_or_digit_strings(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;

    // batch_id as a digit string.
    let r = app
        .post_json(
            ISSUE,
            Some("s-1"),
            &json!({"batch_id": batch.to_string(), "user_id": "u1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["issued_to"], "u1");

    // user_id as an integer: taken as its decimal string.
    let r = app
        .post_json(
            ISSUE,
            Some("s-2"),
            &json!({"batch_id": batch, "user_id": 17}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["issued_to"], "17");
    let r = app
        .post_json(
            ISSUE,
            Some("s-3"),
            &json!({"batch_id": batch.to_string(), "user_id": 9_007_199_254_740_993_i64}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["issued_to"], "9007199254740993");

    // "17" and 17 are the same user: they share the per-user limit and the list.
    let items = app.list_items("user_id=17").await;
    assert_eq!(items.len(), 1, "{items:?}");
    let r = app
        .post_json(
            ISSUE,
            Some("s-4"),
            &json!({"batch_id": batch, "user_id": "17"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.list_items("user_id=17").await.len(), 2);

    // A user id of 64 characters is accepted.
    let long = "u".repeat(64);
    let r = app.issue(batch, &long, "s-5").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["issued_to"], long.as_str());
}
backend_test!(ids_may_be_numbers_or_digit_strings);

async fn bad_ids_are_validation_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let b = json!(batch);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("batch_id missing", json!({"user_id": "u1"}), &["batch_id"]),
        (
            "batch_id null",
            json!({"batch_id": null, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id 0",
            json!({"batch_id": 0, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id negative",
            json!({"batch_id": -1, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id fractional",
            json!({"batch_id": 1.5, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id not digits",
            json!({"batch_id": "1a", "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id empty string",
            json!({"batch_id": "", "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id digits with a space",
            json!({"batch_id": " 1", "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id negative string",
            json!({"batch_id": "-1", "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id true",
            json!({"batch_id": true, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id a list",
            json!({"batch_id": [batch], "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id an object",
            json!({"batch_id": {"id": batch}, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id too big",
            json!({"batch_id": 18_446_744_073_709_551_615_u64, "user_id": "u1"}),
            &["batch_id"],
        ),
        (
            "batch_id too big as digits",
            json!({"batch_id": "99999999999999999999", "user_id": "u1"}),
            &["batch_id"],
        ),
        ("user_id missing", json!({"batch_id": b}), &["user_id"]),
        (
            "user_id null",
            json!({"batch_id": b, "user_id": null}),
            &["user_id"],
        ),
        (
            "user_id empty",
            json!({"batch_id": b, "user_id": ""}),
            &["user_id"],
        ),
        (
            "user_id blank",
            json!({"batch_id": b, "user_id": "   "}),
            &["user_id"],
        ),
        (
            "user_id true",
            json!({"batch_id": b, "user_id": true}),
            &["user_id"],
        ),
        (
            "user_id fractional",
            json!({"batch_id": b, "user_id": 1.5}),
            &["user_id"],
        ),
        (
            "user_id a list",
            json!({"batch_id": b, "user_id": ["u1"]}),
            &["user_id"],
        ),
        (
            "user_id an object",
            json!({"batch_id": b, "user_id": {"id": "u1"}}),
            &["user_id"],
        ),
        (
            "user_id of 65 characters",
            json!({"batch_id": b, "user_id": "u".repeat(65)}),
            &["user_id"],
        ),
        ("both missing", json!({}), &["batch_id", "user_id"]),
        (
            "both bad",
            json!({"batch_id": [], "user_id": ""}),
            &["batch_id", "user_id"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, body, fields) in cases {
        let r = app.post_json(ISSUE, Some(&new_key("bad")), &body).await;
        let ok = r.status == 400
            && r.is_json()
            && r.json()["error"]["code"] == "VALIDATION"
            && r.fields() == set(fields);
        if ok {
            r.assert_envelope();
        } else {
            failures.push(format!(
                "{what}: expected 400 VALIDATION naming {fields:?}, got {r:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        app.list_items("").await.is_empty(),
        "a rejected request issued a coupon"
    );
}
backend_test!(bad_ids_are_validation_errors);

async fn unknown_batch_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.issue(1, "u1", "nf-1")
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
    let batch = app.new_batch(&seed_batch()).await;
    app.issue(batch + 1000, "u1", "nf-2")
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
    app.post_json(
        ISSUE,
        Some("nf-3"),
        &json!({"batch_id": (batch + 1000).to_string(), "user_id": "u1"}),
    )
    .await
    .assert_error(404, "BATCH_NOT_FOUND");
    app.post_json(
        ISSUE,
        Some("nf-4"),
        &json!({"batch_id": i64::MAX, "user_id": "u1"}),
    )
    .await
    .assert_error(404, "BATCH_NOT_FOUND");
    assert!(app.list_items("").await.is_empty());
}
backend_test!(unknown_batch_is_404);

async fn expired_batch_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_expiring_in(-60, 100, 1)).await;
    app.issue(batch, "u1", "e-1")
        .await
        .assert_error(409, "BATCH_EXPIRED");
    app.issue(batch, "u2", "e-2")
        .await
        .assert_error(409, "BATCH_EXPIRED");
    assert!(app.list_items("").await.is_empty());
}
backend_test!(expired_batch_is_409);

async fn per_user_limit_is_enforced_per_batch(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.new_batch(&batch_with_limits(100, 2)).await;
    let b = app.new_batch(&batch_with_limits(100, 1)).await;
    app.issue_ok(a, "u1").await;
    app.issue_ok(a, "u1").await;
    app.issue(a, "u1", "p-1")
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
    // Another user, and another batch, are not affected.
    app.issue_ok(a, "u2").await;
    app.issue_ok(b, "u1").await;
    app.issue(b, "u1", "p-2")
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
    assert_eq!(app.list_items("user_id=u1").await.len(), 3);
}
backend_test!(per_user_limit_is_enforced_per_batch);

async fn batch_limit_is_enforced(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(2, 1)).await;
    app.issue_ok(batch, "u1").await;
    app.issue_ok(batch, "u2").await;
    app.issue(batch, "u3", "l-1")
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    app.issue(batch, "u4", "l-2")
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    assert_eq!(app.list_items("").await.len(), 2);
    // Other batches still issue.
    let other = app.new_batch(&batch_with_limits(1, 1)).await;
    app.issue_ok(other, "u3").await;
}
backend_test!(batch_limit_is_enforced);

async fn rejections_come_in_the_seeds_order(backend: Backend) {
    // Expired before per-user limit before batch limit.
    let app = TestApp::spawn(backend).await;
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let mut body = batch_with_limits(1, 1);
    body["expires_at"] = json!(rfc3339(expires_at));
    let batch = app.new_batch(&body).await;
    app.issue_ok(batch, "u1").await;
    // Full, and u1 at its limit: u1 hears about its own limit first.
    app.issue(batch, "u1", "o-1")
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
    app.issue(batch, "u2", "o-2")
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    // Once expired, expiry comes before both.
    sleep_past(expires_at).await;
    app.issue(batch, "u1", "o-3")
        .await
        .assert_error(409, "BATCH_EXPIRED");
    app.issue(batch, "u2", "o-4")
        .await
        .assert_error(409, "BATCH_EXPIRED");
    app.issue(batch, "u3", "o-5")
        .await
        .assert_error(409, "BATCH_EXPIRED");
    assert_eq!(app.list_items("").await.len(), 1);
}
backend_test!(rejections_come_in_the_seeds_order);
