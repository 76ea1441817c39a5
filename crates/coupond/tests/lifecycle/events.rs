//! `GET /v1/coupons/{code}/` and `GET /v1/coupons/{code}/events/`: the coupon and its
//! append-only history (time, API key, reason).

use coupond::domain::Scope;
use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

async fn every_change_is_in_the_history_with_its_key_and_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (service, service_id) = client_of(&app, Scope::Service).await;
    let admin_id = app.admin_key_id;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let issued = app.issue_ok(batch, "u1").await;
    let code = code_of(&issued);

    let detail = app.coupon(&code).await;
    assert_eq!(detail["batch_id"], json!(batch));
    for field in COUPON_FIELDS {
        assert_eq!(detail[field], issued[field], "{field}");
    }
    assert_eq!(detail["created_at"], issued["issued_at"]);

    let redeem = service.redeem(&code, "o1", "u2", "ev-r1").await;
    assert_eq!(redeem.status, 200, "{redeem:?}");
    let redeemed_at = redeem.json()["redeemed_at"].clone();
    let unredeem = app.unredeem(&code, "o1", Some("order refunded")).await;
    assert_eq!(unredeem.status, 200, "{unredeem:?}");
    let second = app.redeem_amount(&code, "o2", "u1", Some(700)).await;
    assert_eq!(second.status, 200, "{second:?}");
    let second_at = second.json()["redeemed_at"].clone();
    let back = service.unredeem(&code, "o2", None).await;
    assert_eq!(back.status, 200, "{back:?}");
    let cancel_body = json!({"code": code, "reason": "fraud suspected"});
    let cancel = service.post_json(CANCEL, Some("ev-c"), &cancel_body).await;
    assert_eq!(cancel.status, 200, "{cancel:?}");

    let events = app.events(&code).await;
    let row = |kind: &str, key: i64, user: Value, order: Value, reason: Value| {
        (json!(kind), json!(key), user, order, reason)
    };
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["kind"].clone(),
                e["api_key_id"].clone(),
                e["user_id"].clone(),
                e["order_id"].clone(),
                e["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            row("issued", admin_id, json!("u1"), Value::Null, Value::Null),
            row(
                "redeemed",
                service_id,
                json!("u2"),
                json!("o1"),
                Value::Null
            ),
            row(
                "unredeemed",
                admin_id,
                json!("u2"),
                json!("o1"),
                json!("order refunded")
            ),
            row("redeemed", admin_id, json!("u1"), json!("o2"), Value::Null),
            row(
                "unredeemed",
                service_id,
                json!("u1"),
                json!("o2"),
                Value::Null
            ),
            row(
                "cancelled",
                service_id,
                Value::Null,
                Value::Null,
                json!("fraud suspected")
            ),
        ],
        "{events:#?}"
    );
    assert_eq!(events[0]["at"], issued["issued_at"]);
    assert_eq!(events[1]["at"], redeemed_at);
    assert_eq!(events[3]["at"], second_at);
    let times: Vec<_> = events.iter().map(|e| parse_utc(&e["at"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {events:#?}"
    );

    // Replays and refusals add nothing.
    let replay = service.post_json(CANCEL, Some("ev-c"), &cancel_body).await;
    assert!(
        replay.replayed() && replay.body == cancel.body,
        "{replay:?}"
    );
    let replay = service.redeem(&code, "o1", "u2", "ev-r1").await;
    assert!(
        replay.replayed() && replay.body == redeem.body,
        "{replay:?}"
    );
    service
        .cancel(&code, None)
        .await
        .assert_error(409, "COUPON_CANCELLED");
    app.redeem(&code, "o3", "u1", &new_key("ev-x"))
        .await
        .assert_error(409, "COUPON_CANCELLED");
    app.unredeem(&code, "o2", None)
        .await
        .assert_error(409, "COUPON_NOT_REDEEMED");
    assert_eq!(app.events(&code).await, events, "append-only, unchanged");

    // The coupon's detail after all that.
    let detail = app.coupon(&code).await;
    assert_eq!(detail["status"], "cancelled");
    assert_eq!(detail["redeemed_by"], Value::Null);
    assert_eq!(detail["order_amount"], Value::Null);
}
backend_test!(every_change_is_in_the_history_with_its_key_and_reason);

async fn replayed_writes_add_no_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    let body = json!({"code": code, "order_id": "o1", "user_id": "u1"});
    for _ in 0..3 {
        assert_eq!(
            app.post_json(REDEEM, Some("ev-redeem"), &body).await.status,
            200
        );
    }
    let unredeem = json!({"code": code, "order_id": "o1", "reason": "x"});
    for _ in 0..3 {
        assert_eq!(
            app.post_json(UNREDEEM, Some("ev-unredeem"), &unredeem)
                .await
                .status,
            200
        );
    }
    let cancel = json!({"code": code});
    for _ in 0..3 {
        assert_eq!(
            app.post_json(CANCEL, Some("ev-cancel"), &cancel)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        app.event_kinds(&code).await,
        vec!["issued", "redeemed", "unredeemed", "cancelled"]
    );
    assert_eq!(app.batch_stats(batch).await, (1, 0, 1, 9));
}
backend_test!(replayed_writes_add_no_events);

async fn a_generated_code_starts_its_history_as_generated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 1)).await;
    app.generate_codes(batch, 1).await;
    let code = app.csv_rows(batch).await[0][0].clone();
    let detail = app.coupon(&code).await;
    assert_eq!(detail["issued_to"], Value::Null);
    assert_eq!(detail["issued_at"], Value::Null);
    assert_eq!(detail["status"], "issued");
    let events = app.events(&code).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "generated");
    assert_eq!(events[0]["api_key_id"], json!(app.admin_key_id));
    assert_eq!(events[0]["user_id"], Value::Null);
    assert_eq!(events[0]["at"], detail["created_at"]);

    // Whoever holds a printed voucher redeems it.
    let r = app.redeem_amount(&code, "o1", "walk-in", Some(100)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["redeemed_by"], "walk-in");
    assert_eq!(body["issued_to"], Value::Null);
    assert_eq!(app.event_kinds(&code).await, vec!["generated", "redeemed"]);
    assert_eq!(app.list_items("user_id=walk-in").await.len(), 1);
}
backend_test!(a_generated_code_starts_its_history_as_generated);

async fn unknown_and_malformed_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in [
        format!("{LIST}NOSUCHCODE/"),
        format!("{LIST}NOSUCHCODE/events/"),
    ] {
        app.get(&path).await.assert_error(404, "COUPON_NOT_FOUND");
    }
    let long = "A".repeat(65);
    for path in [format!("{LIST}{long}/"), format!("{LIST}{long}/events/")] {
        app.get(&path).await.assert_validation(&["code"]);
    }
    // A code of another server's format that happens to be 64 characters: not found.
    let max = "A".repeat(64);
    app.get(&format!("{LIST}{max}/"))
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
}
backend_test!(unknown_and_malformed_codes);
