//! `GET /v1/coupons/`: the seed's `CouponList` view.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::backend_test;
use crate::helpers::*;

fn ids(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

async fn empty_list_is_an_empty_items_array(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.list("").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.is_json(), "{r:?}");
    assert_eq!(r.text(), r#"{"items":[]}"#);
}
backend_test!(empty_list_is_an_empty_items_array);

async fn items_are_the_coupons_as_issued_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let mut issued = Vec::new();
    for user in ["u1", "u2", "u1", "u3"] {
        issued.push(app.issue_ok(batch, user).await);
    }
    let items = app.list_items("").await;
    for item in &items {
        assert_coupon_shape(item);
    }
    issued.reverse();
    assert_eq!(
        items, issued,
        "newest first, each as the issue response showed it"
    );
}
backend_test!(items_are_the_coupons_as_issued_newest_first);

async fn at_most_50_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let client = app.client();
    let responses = concurrently(55, |i| {
        let client = client.clone();
        async move {
            client
                .issue(batch, &format!("u{}", i % 3), &format!("many-{i}"))
                .await
        }
    })
    .await;
    assert_no_server_errors(&responses);
    let mut all: Vec<i64> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{r:?}");
            r.json()["id"].as_i64().expect("id")
        })
        .collect();
    all.sort_unstable_by(|a, b| b.cmp(a));

    let items = app.list_items("").await;
    assert_eq!(items.len(), 50);
    assert_eq!(
        ids(&items),
        all[..50].to_vec(),
        "the 50 newest, newest first"
    );

    let items = app.list_items("user_id=u0").await;
    let expected: Vec<i64> = {
        let mine: BTreeSet<i64> = responses
            .iter()
            .filter(|r| r.json()["issued_to"] == "u0")
            .map(|r| r.json()["id"].as_i64().expect("id"))
            .collect();
        mine.into_iter().rev().collect()
    };
    assert_eq!(expected.len(), 19);
    assert_eq!(ids(&items), expected);
}
backend_test!(at_most_50_newest_first);

async fn user_filter_matches_issued_to_or_redeemed_by(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let a = app.issue_ok(batch, "u1").await;
    let b = app.issue_ok(batch, "u1").await;
    let c = app.issue_ok(batch, "u2").await;
    // u2 redeems u1's coupon a.
    let a_code = assert_code(&a["code"]);
    let r = app.redeem(&a_code, "ord-a", "u2", "red-a").await;
    assert_eq!(r.status, 200, "{r:?}");
    let a = r.json();

    assert_eq!(
        app.list_items("user_id=u1").await,
        vec![b.clone(), a.clone()]
    );
    assert_eq!(
        app.list_items("user_id=u2").await,
        vec![c.clone(), a.clone()]
    );
    assert_eq!(app.list_items("user_id=u3").await, Vec::<Value>::new());
    // A user id is matched exactly.
    assert_eq!(app.list_items("user_id=U1").await, Vec::<Value>::new());
    assert_eq!(app.list_items("user_id=u").await, Vec::<Value>::new());
    // Empty parameters mean no filter, as in the seed (`if user_id:`).
    assert_eq!(
        app.list_items("user_id=").await,
        vec![c.clone(), b.clone(), a.clone()]
    );
    assert_eq!(app.list_items("user_id=&status=").await, vec![c, b, a]);
}
backend_test!(user_filter_matches_issued_to_or_redeemed_by);

async fn status_filter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let a = app.issue_ok(batch, "u1").await;
    let b = app.issue_ok(batch, "u1").await;
    let c = app.issue_ok(batch, "u2").await;
    let r = app
        .redeem(&assert_code(&b["code"]), "ord-b", "u1", "red-b")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let b = r.json();

    assert_eq!(
        app.list_items("status=issued").await,
        vec![c.clone(), a.clone()]
    );
    assert_eq!(app.list_items("status=redeemed").await, vec![b.clone()]);
    assert_eq!(
        app.list_items("status=cancelled").await,
        Vec::<Value>::new()
    );
    assert_eq!(app.list_items("status=expired").await, Vec::<Value>::new());
    // Both filters at once.
    assert_eq!(
        app.list_items("user_id=u1&status=issued").await,
        vec![a.clone()]
    );
    assert_eq!(
        app.list_items("status=redeemed&user_id=u1").await,
        vec![b.clone()]
    );
    assert_eq!(
        app.list_items("user_id=u2&status=redeemed").await,
        Vec::<Value>::new()
    );
    // A repeated parameter counts by its last value, as Django's QueryDict.get does.
    assert_eq!(
        app.list_items("status=redeemed&status=issued").await,
        vec![c, a]
    );
    // Unknown parameters are ignored.
    assert_eq!(app.list_items("status=redeemed&page=2").await, vec![b]);
}
backend_test!(status_filter);

async fn unknown_status_is_a_validation_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for status in ["lost", "ISSUED", "issued%20", "redeemed,issued"] {
        app.list(&format!("status={status}"))
            .await
            .assert_validation(&["status"]);
    }
}
backend_test!(unknown_status_is_a_validation_error);

async fn user_ids_are_url_decoded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 5)).await;
    let c = app.issue_ok(batch, "user one/한&=").await;
    app.issue_ok(batch, "user").await;
    let items = app.list_items("user_id=user%20one%2F%ED%95%9C%26%3D").await;
    assert_eq!(items, vec![c.clone()]);
    let items = app.list_items("user_id=user+one%2F%ED%95%9C%26%3D").await;
    assert_eq!(items, vec![c]);
}
backend_test!(user_ids_are_url_decoded);
