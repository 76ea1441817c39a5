//! `POST /v1/coupons/cancel/` and `POST /v1/coupons/unredeem/`, and unredeem racing
//! redeem on one coupon.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

async fn cancel_answers_the_cancelled_coupon(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let issued = app.issue_ok(batch, "u1").await;
    let code = code_of(&issued);
    let before = app.coupon(&code).await;

    let r = app.cancel(&code, Some("printed on the wrong flyer")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_detail_shape(&body);
    assert_eq!(body["status"], "cancelled");
    for field in DETAIL_FIELDS.iter().filter(|f| **f != "status") {
        assert_eq!(body[*field], before[*field], "{field} unchanged");
    }
    assert_eq!(app.coupon(&code).await, body, "GET shows the same");
    let items = app.list_items(&format!("batch_id={batch}")).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "cancelled");
    assert_eq!(
        app.list_items("status=cancelled").await.len(),
        1,
        "listed as cancelled"
    );
    assert!(app.list_items("status=issued").await.is_empty());
    assert_eq!(app.batch_stats(batch).await, (1, 0, 1, 9));
}
backend_test!(cancel_answers_the_cancelled_coupon);

async fn cancel_rules_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    app.cancel("NOSUCHCODE", None)
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    let redeemed = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&redeemed, "o1", "u1").await;
    app.cancel(&redeemed, None)
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    let cancelled = code_of(&app.issue_ok(batch, "u1").await);
    assert_eq!(app.cancel(&cancelled, None).await.status, 200);
    app.cancel(&cancelled, Some("again"))
        .await
        .assert_error(409, "COUPON_CANCELLED");
    // Unredeem of a cancelled coupon: it is not redeemed.
    app.unredeem(&cancelled, "o1", None)
        .await
        .assert_error(409, "COUPON_NOT_REDEEMED");
    // After an unredeem it can be cancelled.
    assert_eq!(app.unredeem(&redeemed, "o1", None).await.status, 200);
    assert_eq!(app.cancel(&redeemed, None).await.status, 200);
    assert_eq!(app.batch_stats(batch).await, (2, 0, 2, 8));
    // Input.
    for (body, fields) in [
        (json!({}), &["code"][..]),
        (json!({"code": ""}), &["code"][..]),
        (json!({"code": "X", "reason": 5}), &["reason"][..]),
        (
            json!({"code": "X", "reason": "r".repeat(501)}),
            &["reason"][..],
        ),
    ] {
        app.post_new(CANCEL, &body).await.assert_validation(fields);
    }
    let ok = app
        .post_new(
            CANCEL,
            &json!({"code": code_of(&app.issue_ok(batch, "u1").await), "reason": "r".repeat(500)}),
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
}
backend_test!(cancel_rules_in_order);

async fn cancelling_gives_no_capacity_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(2, 1)).await;
    let a = code_of(&app.issue_ok(batch, "u1").await);
    app.issue_ok(batch, "u2").await;
    assert_eq!(app.cancel(&a, None).await.status, 200);
    app.issue(batch, "u3", &new_key("after-cancel"))
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    assert_eq!(app.batch_stats(batch).await, (2, 0, 1, 0));
}
backend_test!(cancelling_gives_no_capacity_back);

async fn unredeem_restores_the_coupon_and_the_counters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app
        .new_batch(&batch_body(
            json!({"percent": 10, "per_user_limit": 5, "total_limit": 5}),
        ))
        .await;
    let issued = app.issue_ok(batch, "u1").await;
    let code = code_of(&issued);
    let before = app.coupon(&code).await;
    // Redeemed by someone else than the holder (the seed's "anyone" policy).
    let r = app.redeem_amount(&code, "ord-1", "u2", Some(10_000)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.batch_stats(batch).await, (1, 1, 0, 4));
    assert_eq!(app.list_items("user_id=u2").await.len(), 1);

    let r = app.unredeem(&code, "ord-1", Some("order refunded")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_detail_shape(&body);
    assert_eq!(body, before, "back to exactly what it was when issued");
    assert_eq!(body["status"], "issued");
    for field in [
        "redeemed_by",
        "redeemed_at",
        "order_id",
        "order_amount",
        "discount_amount",
    ] {
        assert_eq!(body[field], Value::Null, "{field}");
    }
    assert_eq!(app.coupon(&code).await, before);
    assert_eq!(app.batch_stats(batch).await, (1, 0, 0, 4));
    assert!(
        app.list_items("user_id=u2").await.is_empty(),
        "no longer redeemed by u2"
    );
    assert_eq!(app.list_items("user_id=u1&status=issued").await.len(), 1);
    assert!(app.list_items("status=redeemed").await.is_empty());

    // It can be redeemed again, for another order, by anyone.
    let r = app.redeem_amount(&code, "ord-2", "u3", Some(500)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["discount_amount"], json!(50));
    assert_eq!(app.batch_stats(batch).await, (1, 1, 0, 4));
    // The per-user count of the holder is unchanged (unredeem is not a new issue).
    for _ in 0..4 {
        app.issue_ok(batch, "u1").await;
    }
    app.issue(batch, "u1", &new_key("sixth"))
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
}
backend_test!(unredeem_restores_the_coupon_and_the_counters);

async fn unredeem_rules_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    app.unredeem("NOSUCHCODE", "o1", None)
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    let code = code_of(&app.issue_ok(batch, "u1").await);
    // Not redeemed comes before the order check.
    app.unredeem(&code, "o1", None)
        .await
        .assert_error(409, "COUPON_NOT_REDEEMED");
    app.redeem_ok(&code, "o1", "u1").await;
    app.unredeem(&code, "o2", None)
        .await
        .assert_error(409, "ORDER_MISMATCH");
    // Order ids are matched exactly.
    app.unredeem(&code, "O1", None)
        .await
        .assert_error(409, "ORDER_MISMATCH");
    assert_eq!(app.coupon(&code).await["status"], "redeemed");
    assert_eq!(app.batch_stats(batch).await, (1, 1, 0, 9));
    assert_eq!(app.unredeem(&code, "o1", None).await.status, 200);
    app.unredeem(&code, "o1", None)
        .await
        .assert_error(409, "COUPON_NOT_REDEEMED");
    assert_eq!(app.batch_stats(batch).await, (1, 0, 0, 9));
    // A numeric order id is the same as its decimal string, as for redeem.
    let r = app
        .post_new(
            REDEEM,
            &json!({"code": code, "order_id": 42, "user_id": "u1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.unredeem(&code, "42", None).await.status, 200);

    for (body, fields) in [
        (json!({}), &["code", "order_id"][..]),
        (json!({"code": "X"}), &["order_id"][..]),
        (json!({"order_id": "o1"}), &["code"][..]),
        (
            json!({"code": "X", "order_id": "o1", "reason": ["r"]}),
            &["reason"][..],
        ),
    ] {
        app.post_new(UNREDEEM, &body)
            .await
            .assert_validation(fields);
    }
}
backend_test!(unredeem_rules_in_order);

/// 32 requests at once on one redeemed coupon, half redeeming it (for the same order),
/// half giving it back: every one either succeeds or is refused for the state it
/// found, the successes alternate, and the counters match the final state exactly.
async fn unredeem_racing_redeem(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    // Another coupon of the batch, redeemed throughout: the batch's counter must
    // count it too, whatever the race does.
    let other = code_of(&app.issue_ok(batch, "u2").await);
    app.redeem_ok(&other, "o-other", "u2").await;
    app.redeem_ok(&code, "o-race", "u1").await;

    let mut redeemed_total = 1i64;
    let mut unredeemed_total = 0i64;
    for round in 0..3 {
        let client = app.client();
        let code2 = code.clone();
        let responses = concurrently(32, move |i| {
            let client = client.clone();
            let code = code2.clone();
            async move {
                if i % 2 == 0 {
                    client
                        .redeem(&code, "o-race", "u1", &format!("race-r-{round}-{i}"))
                        .await
                } else {
                    client
                        .post_json(
                            UNREDEEM,
                            Some(&format!("race-u-{round}-{i}")),
                            &json!({"code": code, "order_id": "o-race", "reason": "refund"}),
                        )
                        .await
                }
            }
        })
        .await;
        assert_no_server_errors(&responses);
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for (i, r) in responses.iter().enumerate() {
            let label = match (i % 2 == 0, r.status.as_u16()) {
                (true, 200) => "redeemed",
                (false, 200) => "unredeemed",
                (true, _) => {
                    r.assert_error(409, "COUPON_ALREADY_REDEEMED");
                    "redeem refused"
                }
                (false, _) => {
                    r.assert_error(409, "COUPON_NOT_REDEEMED");
                    "unredeem refused"
                }
            };
            *counts.entry(label).or_default() += 1;
        }
        let redeemed = counts.get("redeemed").copied().unwrap_or(0);
        let unredeemed = counts.get("unredeemed").copied().unwrap_or(0);
        assert!(
            unredeemed >= 1,
            "round {round}: the coupon was redeemed, so at least one unredeem wins: {counts:?}"
        );
        redeemed_total += redeemed;
        unredeemed_total += unredeemed;

        // Starting redeemed, the successes alternate: unredeemed, redeemed, ...
        let now_redeemed = redeemed_total == unredeemed_total + 1;
        assert!(
            now_redeemed || redeemed_total == unredeemed_total,
            "round {round}: {redeemed_total} redeems vs {unredeemed_total} unredeems"
        );
        let detail = app.coupon(&code).await;
        assert_eq!(
            detail["status"],
            if now_redeemed { "redeemed" } else { "issued" },
            "round {round}: {counts:?}: {detail}"
        );
        let (issued, redeemed_now, cancelled, remaining) = app.batch_stats(batch).await;
        assert_eq!(
            (issued, redeemed_now, cancelled, remaining),
            (2, 1 + i64::from(now_redeemed), 0, 98),
            "round {round}: counters exact ({counts:?})"
        );
        // The history records each success once, in alternation.
        let kinds = app.event_kinds(&code).await;
        assert_eq!(kinds[0], "issued");
        let changes = &kinds[1..];
        assert_eq!(
            changes.len() as i64,
            redeemed_total + unredeemed_total,
            "round {round}: one event per success: {kinds:?}"
        );
        for (j, kind) in changes.iter().enumerate() {
            let want = if j % 2 == 0 { "redeemed" } else { "unredeemed" };
            assert_eq!(kind, want, "round {round}: event {j} of {kinds:?}");
        }
        // Each round starts from a redeemed coupon.
        if !now_redeemed {
            app.redeem_ok(&code, "o-race", "u1").await;
            redeemed_total += 1;
        }
    }
    // Listing agrees with the counters.
    assert_eq!(
        app.list_items(&format!("batch_id={batch}&status=redeemed"))
            .await
            .len(),
        2
    );
}
backend_test!(multi_thread: unredeem_racing_redeem);

/// Many coupons of one batch redeemed and given back at once: the batch's counters
/// are exact (on PostgreSQL they are spread over rows; none may lose a change).
async fn concurrent_changes_on_many_coupons_keep_exact_counters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let mut codes = Vec::new();
    for i in 0..24 {
        codes.push(code_of(&app.issue_ok(batch, &format!("u{i}")).await));
    }
    // First 16 redeemed, of which 8 are given back and 8 stay; the last 8: 4 cancelled.
    let client = app.client();
    let first = codes.clone();
    let responses = concurrently(16, move |i| {
        let client = client.clone();
        let code = first[i].clone();
        async move {
            client
                .redeem(&code, &format!("o{i}"), "u", &format!("m-r-{i}"))
                .await
        }
    })
    .await;
    assert!(
        responses.iter().all(|r| r.status == 200),
        "{:?}",
        tally(&responses)
    );
    let client = app.client();
    let all = codes.clone();
    let responses = concurrently(12, move |i| {
        let client = client.clone();
        let all = all.clone();
        async move {
            if i < 8 {
                client
                    .post_json(
                        UNREDEEM,
                        Some(&format!("m-u-{i}")),
                        &json!({"code": all[i], "order_id": format!("o{i}")}),
                    )
                    .await
            } else {
                client
                    .post_json(
                        CANCEL,
                        Some(&format!("m-c-{i}")),
                        &json!({"code": all[i + 8]}),
                    )
                    .await
            }
        }
    })
    .await;
    assert!(
        responses.iter().all(|r| r.status == 200),
        "{:?}",
        tally(&responses)
    );
    assert_eq!(app.batch_stats(batch).await, (24, 8, 4, 76));
}
backend_test!(multi_thread: concurrent_changes_on_many_coupons_keep_exact_counters);

/// Cancel racing redeem on each of 16 coupons: exactly one of the two wins each time,
/// and the counters agree with the winners.
async fn cancel_racing_redeem(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let mut codes = Vec::new();
    for _ in 0..16 {
        codes.push(code_of(&app.issue_ok(batch, "u1").await));
    }
    let client = app.client();
    let all = codes.clone();
    let responses = concurrently(32, move |i| {
        let client = client.clone();
        let code = all[i / 2].clone();
        async move {
            if i % 2 == 0 {
                client
                    .redeem(&code, &format!("o{i}"), "u1", &format!("cr-r-{i}"))
                    .await
            } else {
                client
                    .post_json(CANCEL, Some(&format!("cr-c-{i}")), &json!({"code": code}))
                    .await
            }
        }
    })
    .await;
    assert_no_server_errors(&responses);
    let (mut redeemed, mut cancelled) = (0, 0);
    for (n, code) in codes.iter().enumerate() {
        let (redeem, cancel) = (&responses[2 * n], &responses[2 * n + 1]);
        let status = app.coupon(code).await["status"].clone();
        match (redeem.status.as_u16(), cancel.status.as_u16()) {
            (200, _) => {
                cancel.assert_error(409, "COUPON_ALREADY_REDEEMED");
                assert_eq!(status, "redeemed");
                redeemed += 1;
            }
            (_, 200) => {
                redeem.assert_error(409, "COUPON_CANCELLED");
                assert_eq!(status, "cancelled");
                cancelled += 1;
            }
            _ => panic!("neither won on {code}: {redeem:?} {cancel:?}"),
        }
        assert_eq!(app.events(code).await.len(), 2, "{code}: one change");
    }
    assert_eq!(redeemed + cancelled, 16);
    assert_eq!(app.batch_stats(batch).await, (16, redeemed, cancelled, 84));
}
backend_test!(multi_thread: cancel_racing_redeem);
