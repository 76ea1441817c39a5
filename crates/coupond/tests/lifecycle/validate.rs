//! `POST /v1/coupons/validate/`: a dry run of redeem. No side effect, no idempotency
//! key, the answer redeem would give.

use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

/// What a coupon looks like to every reader: detail, events, list, batch stats.
async fn observable(
    app: &TestApp,
    code: &str,
    batch: i64,
) -> (Value, Vec<Value>, Vec<Value>, Value) {
    (
        app.coupon(code).await,
        app.events(code).await,
        app.list_items(&format!("batch_id={batch}")).await,
        app.get_batch(batch).await,
    )
}

async fn a_valid_coupon_answers_the_discount_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app
        .new_batch(&batch_body(json!({
            "percent": 10, "max_discount": 300, "total_limit": 10
        })))
        .await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    let before = observable(&app, &code, batch).await;

    for (amount, discount) in [
        (Some(1999), json!(199)),
        (Some(0), json!(0)),
        (Some(3000), json!(300)),
        (Some(1_000_000), json!(300)),
        // A percentage of an unknown order is unknown.
        (None, Value::Null),
    ] {
        let r = app.validate(&code, "u1", amount).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.replayed());
        let body = r.json();
        assert_eq!(
            keys(&body),
            set(&["valid", "discount_amount", "coupon"]),
            "{body}"
        );
        assert_eq!(body["valid"], json!(true));
        assert_eq!(body["discount_amount"], discount, "on {amount:?}");
        assert_eq!(body["coupon"], before.0, "the coupon as GET shows it");
    }
    // The same request twice, and by anyone: still nothing changes.
    for user in ["u1", "u2", "u1"] {
        assert_eq!(app.validate(&code, user, Some(5000)).await.status, 200);
    }
    assert_eq!(observable(&app, &code, batch).await, before);
    // Then redeem gives what validate promised.
    let r = app.redeem_amount(&code, "o1", "u1", Some(1999)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["discount_amount"], json!(199));

    // A fixed discount is its amount without an order, and at most the order.
    let fixed = app.new_batch(&fixed_batch(500, 10, 1)).await;
    let code = code_of(&app.issue_ok(fixed, "u1").await);
    for (amount, discount) in [(None, 500), (Some(2000), 500), (Some(300), 300)] {
        let r = app.validate(&code, "u1", amount).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["discount_amount"], json!(discount), "{amount:?}");
    }
}
backend_test!(a_valid_coupon_answers_the_discount_and_changes_nothing);

async fn validate_needs_no_idempotency_key_and_ignores_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 1)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    let body = json!({"code": code, "user_id": "u1"});
    let without = app.post_json(VALIDATE, None, &body).await;
    assert_eq!(without.status, 200, "{without:?}");
    // A key, if sent, does not make it a stored write: the answer follows the state.
    let with = app.post_json(VALIDATE, Some("v-key"), &body).await;
    assert_eq!(with.status, 200, "{with:?}");
    assert!(!with.replayed());
    app.redeem_ok(&code, "o1", "u1").await;
    let again = app.post_json(VALIDATE, Some("v-key"), &body).await;
    again.assert_error(409, "COUPON_ALREADY_REDEEMED");
    assert!(!again.replayed());
    assert!(
        app.idempotency_record("v-key").await.is_none(),
        "validate stores no record"
    );
}
backend_test!(validate_needs_no_idempotency_key_and_ignores_one);

async fn validate_input_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (body, fields) in [
        (json!({}), &["code", "user_id"][..]),
        (json!({"code": "ABC"}), &["user_id"][..]),
        (json!({"user_id": "u1"}), &["code"][..]),
        (
            json!({"code": "ABC", "user_id": "u1", "order_amount": -1}),
            &["order_amount"][..],
        ),
        (
            json!({"code": "ABC", "user_id": "u1", "order_amount": "10"}),
            &["order_amount"][..],
        ),
        (
            json!({"code": "ABC", "user_id": "u1", "order_amount": 9.99}),
            &["order_amount"][..],
        ),
        (json!({"code": 12, "user_id": "u1"}), &["code"][..]),
    ] {
        app.post_json(VALIDATE, None, &body)
            .await
            .assert_validation(fields);
    }
    app.post_bytes(VALIDATE, None, Some("application/json"), "{not json")
        .await
        .assert_error(400, "VALIDATION");
    app.post_json(
        VALIDATE,
        None,
        &json!({"code": "NOPE000000", "user_id": "u1"}),
    )
    .await
    .assert_error(404, "COUPON_NOT_FOUND");
}
backend_test!(validate_input_errors);

/// Sets up a coupon in `state`, then checks that validate answers what redeem then
/// answers (status and code), and that validate changed nothing before it.
async fn validate_matches_redeem(
    app: &TestApp,
    label: &str,
    code: &str,
    user: &str,
    amount: Option<i64>,
    expected: (u16, &str),
) {
    let before = app.coupon(code).await;
    let events = app.events(code).await;
    let v = app.validate(code, user, amount).await;
    assert_eq!(
        app.coupon(code).await,
        before,
        "{label}: validate wrote nothing"
    );
    assert_eq!(app.events(code).await, events, "{label}: no event");
    let r = app
        .redeem_amount(code, &format!("o-{label}"), user, amount)
        .await;
    assert_eq!(
        outcome(&v),
        (expected.0, expected.1.to_owned()),
        "{label}: validate: {v:?}"
    );
    assert_eq!(
        outcome(&r),
        (expected.0, expected.1.to_owned()),
        "{label}: redeem: {r:?}"
    );
    if expected.0 != 200 {
        // The very same envelope.
        assert_eq!(v.json(), r.json(), "{label}");
    } else {
        assert_eq!(
            v.json()["discount_amount"],
            r.json()["discount_amount"],
            "{label}: the promised discount"
        );
    }
}

async fn validate_gives_the_error_redeem_gives_in_every_state(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner_only = batch_body(json!({
        "redeem_policy": "owner_only", "min_order_amount": 1000,
        "total_limit": 100, "per_user_limit": 100,
    }));
    let batch = app.new_batch(&owner_only).await;
    let issue = |user: &'static str| {
        let app = &app;
        async move { code_of(&app.issue_ok(batch, user).await) }
    };

    // Not found.
    let v = app.validate("ZZZZZZZZZZ", "u1", None).await;
    v.assert_error(404, "COUPON_NOT_FOUND");
    let r = app.redeem_amount("ZZZZZZZZZZ", "o", "u1", None).await;
    assert_eq!(v.json(), r.json());

    // Ownership before the minimum.
    let c = issue("u1").await;
    validate_matches_redeem(
        &app,
        "owner",
        &c,
        "u2",
        Some(10),
        (409, "COUPON_OWNERSHIP_MISMATCH"),
    )
    .await;
    // The minimum: below it, and without an order amount.
    validate_matches_redeem(
        &app,
        "min",
        &c,
        "u1",
        Some(999),
        (409, "MIN_ORDER_AMOUNT_NOT_MET"),
    )
    .await;
    validate_matches_redeem(
        &app,
        "min-none",
        &c,
        "u1",
        None,
        (409, "MIN_ORDER_AMOUNT_NOT_MET"),
    )
    .await;
    // Success at exactly the minimum.
    validate_matches_redeem(&app, "ok", &c, "u1", Some(1000), (200, "-")).await;
    // Already redeemed, before ownership.
    validate_matches_redeem(
        &app,
        "again",
        &c,
        "u2",
        Some(5000),
        (409, "COUPON_ALREADY_REDEEMED"),
    )
    .await;

    // Cancelled, before ownership and the minimum.
    let c = issue("u1").await;
    assert_eq!(app.cancel(&c, None).await.status, 200);
    validate_matches_redeem(
        &app,
        "cancelled",
        &c,
        "u2",
        Some(1),
        (409, "COUPON_CANCELLED"),
    )
    .await;

    // Inactive before anything about the coupon.
    let cancelled = c;
    let fresh = issue("u1").await;
    app.set_active_ok(batch, false).await;
    for (label, code) in [("inactive-c", &cancelled), ("inactive-f", &fresh)] {
        validate_matches_redeem(&app, label, code, "u2", None, (409, "BATCH_INACTIVE")).await;
    }
    app.set_active_ok(batch, true).await;

    // Expired, before cancelled and already redeemed.
    let short = app
        .new_batch(&batch_body(json!({
            "expires_at": from_now(2), "total_limit": 10, "per_user_limit": 10
        })))
        .await;
    let expires = parse_utc(&app.get_batch(short).await["expires_at"]);
    let e_issued = code_of(&app.issue_ok(short, "u1").await);
    let e_cancelled = code_of(&app.issue_ok(short, "u1").await);
    let e_redeemed = code_of(&app.issue_ok(short, "u1").await);
    assert_eq!(app.cancel(&e_cancelled, None).await.status, 200);
    app.redeem_ok(&e_redeemed, "o-e", "u1").await;
    assert!(
        time::OffsetDateTime::now_utc() < expires,
        "the set-up took longer than the 2 s before the expiry (an overloaded machine?)"
    );
    sleep_past(expires).await;
    for (label, code) in [
        ("expired", &e_issued),
        ("expired-c", &e_cancelled),
        ("expired-r", &e_redeemed),
    ] {
        validate_matches_redeem(&app, label, code, "u1", None, (409, "COUPON_EXPIRED")).await;
    }
}
backend_test!(validate_gives_the_error_redeem_gives_in_every_state);
