//! Redeem with an order amount: the discount it answers, the minimum order, redeeming a
//! cancelled coupon, and the discount math as a property over HTTP.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

fn redeem_fields_with_amount() -> std::collections::BTreeSet<String> {
    let mut fields = set(&COUPON_FIELDS);
    fields.insert("order_amount".into());
    fields.insert("discount_amount".into());
    fields
}

async fn redeem_answers_the_discount_on_the_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let fixed = app.new_batch(&fixed_batch(500, 100, 100)).await;
    let percent = app
        .new_batch(&batch_body(json!({"percent": 10, "per_user_limit": 100})))
        .await;
    let capped = app
        .new_batch(&batch_body(json!({
            "percent": 10, "max_discount": 150, "per_user_limit": 100
        })))
        .await;
    let full = app
        .new_batch(&batch_body(json!({"percent": 100, "per_user_limit": 100})))
        .await;
    for (batch, order, discount) in [
        (fixed, 2000, 500),
        (fixed, 500, 500),
        (fixed, 300, 300),
        (fixed, 0, 0),
        (percent, 1999, 199),
        (percent, 9, 0),
        (percent, 10, 1),
        (percent, 0, 0),
        (capped, 1999, 150),
        (capped, 1500, 150),
        (capped, 1400, 140),
        (full, 12_345, 12_345),
        (percent, i64::MAX, i64::MAX / 10),
    ] {
        let coupon = app.issue_ok(batch, "u1").await;
        let code = code_of(&coupon);
        let r = app.redeem_amount(&code, "o1", "u1", Some(order)).await;
        assert_eq!(r.status, 200, "{r:?}");
        let body = r.json();
        assert_eq!(keys(&body), redeem_fields_with_amount(), "{body}");
        assert_eq!(body["order_amount"], json!(order), "{body}");
        assert_eq!(
            body["discount_amount"],
            json!(discount),
            "batch {batch}, order {order}: {body}"
        );
        assert_eq!(body["status"], "redeemed");
        assert_eq!(body["order_id"], "o1");
        assert_eq!(body["redeemed_by"], "u1");
        // The seed's fields are the issue response's, redeemed.
        for field in ["id", "code", "issued_to", "issued_at"] {
            assert_eq!(body[field], coupon[field], "{field}");
        }
        // And the coupon keeps them.
        let detail = app.coupon(&code).await;
        assert_eq!(detail["order_amount"], json!(order));
        assert_eq!(detail["discount_amount"], json!(discount));
        assert_eq!(detail["batch_id"], json!(batch));
        for field in COUPON_FIELDS {
            assert_eq!(detail[field], body[field], "{field}");
        }
    }
}
backend_test!(redeem_answers_the_discount_on_the_order);

async fn without_an_order_amount_redeem_answers_the_seeds_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [fixed_batch(500, 10, 1), seed_batch()] {
        let batch = app.new_batch(&body).await;
        let code = code_of(&app.issue_ok(batch, "u1").await);
        let r = app.redeem_amount(&code, "o1", "u1", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        let coupon = r.json();
        assert_coupon_shape(&coupon);
        assert_eq!(coupon["status"], "redeemed");
        let detail = app.coupon(&code).await;
        assert_eq!(detail["order_amount"], Value::Null);
    }
}
backend_test!(without_an_order_amount_redeem_answers_the_seeds_fields);

async fn minimum_order_amount(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app
        .new_batch(&batch_body(json!({
            "min_order_amount": 5000, "percent": 20, "per_user_limit": 10, "currency": "EUR"
        })))
        .await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    for amount in [Some(4999), Some(0), None] {
        app.redeem_amount(&code, "o1", "u1", amount)
            .await
            .assert_error(409, "MIN_ORDER_AMOUNT_NOT_MET");
    }
    assert_eq!(app.coupon(&code).await["status"], "issued");
    assert_eq!(app.batch_stats(batch).await, (1, 0, 0, 999));
    let r = app.redeem_amount(&code, "o1", "u1", Some(5000)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["discount_amount"], json!(1000));
    assert_eq!(app.batch_stats(batch).await, (1, 1, 0, 999));

    // A minimum of 0 is met by an order of 0.
    let zero = app
        .new_batch(&batch_body(json!({"min_order_amount": 0})))
        .await;
    let code = code_of(&app.issue_ok(zero, "u1").await);
    let r = app.redeem_amount(&code, "o1", "u1", Some(0)).await;
    assert_eq!(r.status, 200, "{r:?}");
}
backend_test!(minimum_order_amount);

async fn redeeming_a_cancelled_coupon_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    assert_eq!(app.cancel(&code, None).await.status, 200);
    for amount in [None, Some(100)] {
        app.redeem_amount(&code, "o1", "u1", amount)
            .await
            .assert_error(409, "COUPON_CANCELLED");
    }
    let detail = app.coupon(&code).await;
    assert_eq!(detail["status"], "cancelled");
    assert_eq!(detail["redeemed_by"], Value::Null);
    assert_eq!(app.batch_stats(batch).await, (1, 0, 1, 9));
}
backend_test!(redeeming_a_cancelled_coupon_is_refused);

async fn redeem_input_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    for amount in [json!(-1), json!("100"), json!(1.5), json!(true)] {
        app.post_new(
            REDEEM,
            &json!({"code": code, "order_id": "o1", "user_id": "u1", "order_amount": amount}),
        )
        .await
        .assert_validation(&["order_amount"]);
    }
    // `null` is "not given".
    let r = app
        .post_new(
            REDEEM,
            &json!({"code": code, "order_id": "o1", "user_id": "u1", "order_amount": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
backend_test!(redeem_input_errors);

/// A batch's discount, as the issue describes it.
#[derive(Debug, Clone)]
enum Kind {
    Fixed(i64),
    Percent(i64, Option<i64>),
}

fn expected_discount(kind: &Kind, order: i64) -> i64 {
    match *kind {
        Kind::Fixed(amount) => amount.min(order),
        Kind::Percent(percent, cap) => {
            let raw = i64::try_from(i128::from(order) * i128::from(percent) / 100).expect("fits");
            cap.map_or(raw, |cap| raw.min(cap))
        }
    }
}

fn amounts() -> impl Strategy<Value = i64> {
    prop_oneof![0i64..=10_000, 0i64..=1_000_000_000, 0i64..=i64::MAX]
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (1i64..=100_000).prop_map(Kind::Fixed),
        (1i64..=i64::MAX).prop_map(Kind::Fixed),
        (1i64..=100, proptest::option::of(1i64..=100_000)).prop_map(|(p, c)| Kind::Percent(p, c)),
        (1i64..=100, proptest::option::of(1i64..=i64::MAX)).prop_map(|(p, c)| Kind::Percent(p, c)),
    ]
}

/// The discount math, end to end: a batch with a random discount, a coupon, validate
/// and redeem with a random order amount; both answer the model's discount, and the
/// coupon keeps it.
async fn discount_math_over_http(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let app = &app;
    let result = tokio::task::block_in_place(|| {
        runner.run(&(kinds(), amounts()), |(kind, order)| {
            let (validated, redeemed, detail) = handle.block_on(async {
                let body = match &kind {
                    Kind::Fixed(amount) => fixed_batch(*amount, 1, 1),
                    Kind::Percent(percent, cap) => {
                        let mut body = batch_body(json!({"percent": percent, "total_limit": 1}));
                        if let Some(cap) = cap {
                            body["max_discount"] = json!(cap);
                        }
                        body
                    }
                };
                let batch = app.new_batch(&body).await;
                let code = code_of(&app.issue_ok(batch, "u1").await);
                let v = app.validate(&code, "u1", Some(order)).await;
                let r = app.redeem_amount(&code, "o1", "u1", Some(order)).await;
                (v, r, app.coupon(&code).await)
            });
            let want = json!(expected_discount(&kind, order));
            prop_assert_eq!(validated.status.as_u16(), 200, "{:?}", validated);
            prop_assert_eq!(&validated.json()["discount_amount"], &want);
            prop_assert_eq!(redeemed.status.as_u16(), 200, "{:?}", redeemed);
            prop_assert_eq!(&redeemed.json()["discount_amount"], &want);
            prop_assert_eq!(&redeemed.json()["order_amount"], &json!(order));
            prop_assert_eq!(&detail["discount_amount"], &want);
            prop_assert_eq!(&detail["order_amount"], &json!(order));
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
backend_test!(multi_thread: discount_math_over_http);
