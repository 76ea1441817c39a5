//! `POST /v1/coupons/redeem/`: the seed's `CouponRedeem` view and `redeem_coupon` service.

use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::backend_test;
use crate::helpers::*;

async fn redeem_marks_the_coupon_redeemed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let issued = app.issue_ok(batch, "u1").await;
    let code = assert_code(&issued["code"]);

    let r = app.redeem(&code, "ord_1", "u1", "r-1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.is_json());
    assert!(!r.replayed());
    let c = r.json();
    assert_coupon_shape(&c);
    assert_eq!(c["id"], issued["id"]);
    assert_eq!(c["code"], code.as_str());
    assert_eq!(c["status"], "redeemed");
    assert_eq!(c["issued_to"], "u1");
    assert_eq!(
        c["issued_at"], issued["issued_at"],
        "issued_at does not change"
    );
    assert_eq!(c["redeemed_by"], "u1");
    assert_eq!(c["order_id"], "ord_1");
    let redeemed_at = parse_utc(&c["redeemed_at"]);
    assert!(redeemed_at >= parse_utc(&issued["issued_at"]));
    assert!(redeemed_at <= OffsetDateTime::now_utc() + time::Duration::seconds(5));

    // The list agrees.
    let items = app.list_items("").await;
    assert_eq!(items, vec![c]);
}
backend_test!(redeem_marks_the_coupon_redeemed);

async fn anyone_may_redeem_and_ids_may_be_numbers(backend: Backend) {
    // The seed's ownership check is commented out: any user may redeem any coupon.
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let r = app
        .post_json(
            REDEEM,
            Some("r-n"),
            &json!({"code": code, "order_id": 123, "user_id": 42}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let c = r.json();
    assert_eq!(c["issued_to"], "u1");
    assert_eq!(c["redeemed_by"], "42");
    assert_eq!(c["order_id"], "123");
}
backend_test!(anyone_may_redeem_and_ids_may_be_numbers);

async fn bad_bodies_are_validation_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let c = json!(code);
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "code missing",
            json!({"order_id": "o", "user_id": "u1"}),
            &["code"],
        ),
        (
            "code null",
            json!({"code": null, "order_id": "o", "user_id": "u1"}),
            &["code"],
        ),
        (
            "code empty",
            json!({"code": "", "order_id": "o", "user_id": "u1"}),
            &["code"],
        ),
        (
            "code a list",
            json!({"code": [c], "order_id": "o", "user_id": "u1"}),
            &["code"],
        ),
        (
            "code an object",
            json!({"code": {"c": c}, "order_id": "o", "user_id": "u1"}),
            &["code"],
        ),
        (
            "code true",
            json!({"code": true, "order_id": "o", "user_id": "u1"}),
            &["code"],
        ),
        (
            "order_id missing",
            json!({"code": c, "user_id": "u1"}),
            &["order_id"],
        ),
        (
            "order_id empty",
            json!({"code": c, "order_id": "", "user_id": "u1"}),
            &["order_id"],
        ),
        (
            "order_id a list",
            json!({"code": c, "order_id": ["o"], "user_id": "u1"}),
            &["order_id"],
        ),
        (
            "order_id of 65 characters",
            json!({"code": c, "order_id": "o".repeat(65), "user_id": "u1"}),
            &["order_id"],
        ),
        (
            "user_id missing",
            json!({"code": c, "order_id": "o"}),
            &["user_id"],
        ),
        (
            "user_id empty",
            json!({"code": c, "order_id": "o", "user_id": ""}),
            &["user_id"],
        ),
        (
            "user_id false",
            json!({"code": c, "order_id": "o", "user_id": false}),
            &["user_id"],
        ),
        (
            "user_id of 65 characters",
            json!({"code": c, "order_id": "o", "user_id": "u".repeat(65)}),
            &["user_id"],
        ),
        ("all missing", json!({}), &["code", "order_id", "user_id"]),
    ];
    let mut failures = Vec::new();
    for (what, body, fields) in cases {
        let r = app.post_json(REDEEM, Some(&new_key("bad")), &body).await;
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
    // Nothing was redeemed.
    assert_eq!(app.list_items("status=issued").await.len(), 1);
}
backend_test!(bad_bodies_are_validation_errors);

async fn unknown_code_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.redeem("NOSUCHCODE", "o1", "u1", "nf-1")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    let batch = app.new_batch(&seed_batch()).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    // Codes are matched exactly.
    let other = match code.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &code[1..]),
    };
    app.redeem(&other, "o1", "u1", "nf-2")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    app.redeem(&format!("{code}X"), "o1", "u1", "nf-3")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    assert_eq!(app.list_items("status=issued").await.len(), 1);
}
backend_test!(unknown_code_is_404);

async fn second_redemption_is_409(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let first = app.redeem(&code, "ord_1", "u1", "r-1").await;
    assert_eq!(first.status, 200, "{first:?}");
    app.redeem(&code, "ord_1", "u1", "r-2")
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    app.redeem(&code, "ord_2", "u2", "r-3")
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    // The first redemption stands.
    let items = app.list_items("").await;
    assert_eq!(items, vec![first.json()]);
}
backend_test!(second_redemption_is_409);

async fn expired_coupon_is_409_before_already_redeemed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let mut body = batch_with_limits(10, 2);
    body["expires_at"] = json!(rfc3339(expires_at));
    let batch = app.new_batch(&body).await;
    let fresh = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let used = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let r = app.redeem(&used, "ord_1", "u1", "x-1").await;
    assert_eq!(r.status, 200, "{r:?}");

    sleep_past(expires_at).await;
    app.redeem(&fresh, "ord_2", "u1", "x-2")
        .await
        .assert_error(409, "COUPON_EXPIRED");
    // Expiry is checked before a second redemption, as in the seed.
    app.redeem(&used, "ord_3", "u1", "x-3")
        .await
        .assert_error(409, "COUPON_EXPIRED");
    // An unused coupon of an expired batch reads `expired` everywhere it is read.
    assert_eq!(app.list_items("status=issued").await.len(), 0);
    assert_eq!(app.list_items("status=expired").await.len(), 1);
    assert_eq!(app.list_items("status=redeemed").await.len(), 1);
}
backend_test!(expired_coupon_is_409_before_already_redeemed);
