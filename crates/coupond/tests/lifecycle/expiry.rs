//! Expiry: a coupon whose batch has expired while it was unused reads `expired`
//! everywhere; what was redeemed or cancelled keeps its status.

use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

async fn an_unused_coupon_of_an_expired_batch_reads_expired_everywhere(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = batch_body(json!({
        "expires_at": from_now(3), "total_limit": 10, "per_user_limit": 10
    }));
    let batch = app.new_batch(&body).await;
    let expires_at = app.get_batch(batch).await["expires_at"].clone();
    let expires = parse_utc(&expires_at);
    let unused = code_of(&app.issue_ok(batch, "u1").await);
    let redeemed = code_of(&app.issue_ok(batch, "u1").await);
    let cancelled = code_of(&app.issue_ok(batch, "u1").await);
    let refunded = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&redeemed, "o-r", "u1").await;
    app.redeem_ok(&refunded, "o-f", "u1").await;
    assert_eq!(app.cancel(&cancelled, None).await.status, 200);
    app.generate_codes(batch, 1).await;
    let generated = app
        .csv_rows(batch)
        .await
        .into_iter()
        .find(|row| row[2].is_empty())
        .expect("the generated code")[0]
        .clone();
    assert_eq!(app.coupon(&unused).await["status"], "issued");
    assert_eq!(app.list_items("status=expired").await.len(), 0);
    assert!(
        time::OffsetDateTime::now_utc() < expires,
        "the set-up took longer than the 3 s before the expiry (an overloaded machine?)"
    );

    sleep_past(expires).await;

    // GET.
    for (code, status) in [
        (&unused, "expired"),
        (&generated, "expired"),
        (&redeemed, "redeemed"),
        (&cancelled, "cancelled"),
        (&refunded, "redeemed"),
    ] {
        assert_eq!(app.coupon(code).await["status"], status, "{code}");
    }
    // Events: the expiry is the last line, at the batch's expiry, by nobody.
    for code in [&unused, &generated] {
        let events = app.events(code).await;
        let last = events.last().expect("events");
        assert_eq!(last["kind"], "expired", "{events:?}");
        assert_eq!(last["at"], expires_at);
        assert_eq!(last["api_key_id"], Value::Null);
        assert_eq!(events.len(), 2, "{events:?}");
    }
    for code in [&redeemed, &cancelled] {
        assert!(
            app.event_kinds(code).await.iter().all(|k| k != "expired"),
            "{code} was used before the expiry"
        );
    }
    // The list, and its status filter: `expired` is exactly the unused ones, `issued`
    // none of them.
    let by_code = |items: &[Value]| -> Vec<(String, String)> {
        let mut v: Vec<_> = items
            .iter()
            .map(|c| (code_of(c), c["status"].as_str().expect("status").to_owned()))
            .collect();
        v.sort();
        v
    };
    let mut expected = vec![
        (unused.clone(), "expired".to_owned()),
        (generated.clone(), "expired".to_owned()),
        (redeemed.clone(), "redeemed".to_owned()),
        (cancelled.clone(), "cancelled".to_owned()),
        (refunded.clone(), "redeemed".to_owned()),
    ];
    expected.sort();
    assert_eq!(by_code(&app.list_items("").await), expected);
    let mut expired = vec![
        (unused.clone(), "expired".to_owned()),
        (generated.clone(), "expired".to_owned()),
    ];
    expired.sort();
    assert_eq!(by_code(&app.list_items("status=expired").await), expired);
    assert_eq!(
        by_code(
            &app.list_items(&format!("status=expired&batch_id={batch}"))
                .await
        ),
        expired
    );
    assert_eq!(
        by_code(&app.list_items("status=expired&user_id=u1").await),
        vec![(unused.clone(), "expired".to_owned())]
    );
    assert!(app.list_items("status=issued").await.is_empty());
    assert_eq!(app.list_items("status=redeemed").await.len(), 2);
    assert_eq!(app.list_items("status=cancelled").await.len(), 1);
    // The CSV export.
    for row in app.csv_rows(batch).await {
        let want = expected
            .iter()
            .find(|(code, _)| *code == row[0])
            .expect("a known code");
        assert_eq!(row[1], want.1, "{row:?}");
    }
    // Redeem and validate: COUPON_EXPIRED, also for the one already redeemed (the
    // seed checks expiry first); issue: BATCH_EXPIRED.
    for code in [&unused, &generated, &redeemed] {
        app.redeem(code, "o-late", "u1", &new_key("late"))
            .await
            .assert_error(409, "COUPON_EXPIRED");
        app.validate(code, "u1", None)
            .await
            .assert_error(409, "COUPON_EXPIRED");
    }
    app.redeem(&cancelled, "o-late", "u1", &new_key("late-c"))
        .await
        .assert_error(409, "COUPON_EXPIRED");
    app.issue(batch, "u1", &new_key("late-i"))
        .await
        .assert_error(409, "BATCH_EXPIRED");

    // Giving back a redemption after the expiry: the coupon is unused again, and so
    // it reads expired, in the answer and afterwards.
    let r = app.unredeem(&refunded, "o-f", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "expired", "{r:?}");
    assert_eq!(app.coupon(&refunded).await["status"], "expired");
    assert_eq!(
        app.event_kinds(&refunded).await,
        vec!["issued", "redeemed", "unredeemed", "expired"]
    );
    assert_eq!(app.list_items("status=expired").await.len(), 3);
    // The counters: nothing expired is counted as redeemed or cancelled.
    assert_eq!(app.batch_stats(batch).await, (5, 1, 1, 5));
    // An inactive batch is refused as such before its expiry is looked at.
    app.set_active_ok(batch, false).await;
    app.redeem(&unused, "o-off", "u1", &new_key("late-off"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    app.validate(&unused, "u1", None)
        .await
        .assert_error(409, "BATCH_INACTIVE");
    app.issue(batch, "u1", &new_key("late-off-i"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    assert_eq!(app.coupon(&unused).await["status"], "expired");
}
backend_test!(an_unused_coupon_of_an_expired_batch_reads_expired_everywhere);

/// A redemption given back after the batch expired: the coupon reads expired from
/// then on, and its history stays in time order (it became an unused coupon of an
/// expired batch when it was given back, not at the expiry, when it was redeemed).
async fn a_redemption_given_back_after_expiry_expires_in_time_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = batch_body(json!({
        "expires_at": from_now(2), "total_limit": 10, "per_user_limit": 10
    }));
    let batch = app.new_batch(&body).await;
    let expires = parse_utc(&app.get_batch(batch).await["expires_at"]);
    let code = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&code, "o1", "u1").await;
    sleep_past(expires).await;
    assert_eq!(app.coupon(&code).await["status"], "redeemed");
    let r = app.unredeem(&code, "o1", Some("refund")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "expired", "{r:?}");
    assert_eq!(app.coupon(&code).await["status"], "expired");

    let events = app.events(&code).await;
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, vec!["issued", "redeemed", "unredeemed", "expired"]);
    let times: Vec<_> = events.iter().map(|e| parse_utc(&e["at"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "events in time order: {events:#?}"
    );
}
backend_test!(a_redemption_given_back_after_expiry_expires_in_time_order);
