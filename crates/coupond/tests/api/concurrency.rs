//! Limits hold under truly concurrent HTTP requests (spawned tasks on a multi-thread
//! runtime, released together), and no request ever answers 5xx for it.

use std::collections::BTreeSet;
use std::sync::Arc;

use coupond::faults::Faults;

use crate::backend_test;
use crate::helpers::*;

async fn a_batch_never_exceeds_its_total_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 1)).await;
    let client = app.client();
    let responses = concurrently(40, |i| {
        let client = client.clone();
        async move {
            client
                .issue(batch, &format!("user-{i}"), &format!("bl-{i}"))
                .await
        }
    })
    .await;
    assert_no_server_errors(&responses);
    let ok: Vec<_> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ok.len(), 10, "{:?}", tally(&responses));
    for r in responses.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "BATCH_LIMIT_REACHED");
    }
    let codes: BTreeSet<String> = ok.iter().map(|r| assert_code(&r.json()["code"])).collect();
    assert_eq!(codes.len(), 10, "codes are distinct");
    let users: BTreeSet<String> = ok
        .iter()
        .map(|r| r.json()["issued_to"].as_str().expect("user").to_owned())
        .collect();
    assert_eq!(users.len(), 10);

    let items = app.list_items("").await;
    assert_eq!(items.len(), 10, "the list shows exactly the 10 issued");
    let listed: BTreeSet<String> = items.iter().map(|c| assert_code(&c["code"])).collect();
    assert_eq!(listed, codes);
    // And the batch stays full.
    app.issue(batch, "late", "bl-late")
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
}
backend_test!(multi_thread: a_batch_never_exceeds_its_total_limit);

async fn a_user_never_exceeds_the_per_user_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(1000, 3)).await;
    let client = app.client();
    let responses = concurrently(32, |i| {
        let client = client.clone();
        async move { client.issue(batch, "greedy", &format!("pu-{i}")).await }
    })
    .await;
    assert_no_server_errors(&responses);
    assert_eq!(
        responses.iter().filter(|r| r.status == 200).count(),
        3,
        "{:?}",
        tally(&responses)
    );
    for r in responses.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "PER_USER_LIMIT_REACHED");
    }
    assert_eq!(app.list_items("user_id=greedy").await.len(), 3);
    assert_eq!(app.list_items("").await.len(), 3);
    // Others are unaffected.
    app.issue_ok(batch, "modest").await;
}
backend_test!(multi_thread: a_user_never_exceeds_the_per_user_limit);

async fn a_coupon_is_redeemed_at_most_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let code = assert_code(&app.issue_ok(batch, "owner").await["code"]);
    let client = app.client();
    let responses = concurrently(32, |i| {
        let client = client.clone();
        let code = code.clone();
        async move {
            client
                .redeem(
                    &code,
                    &format!("ord-{i}"),
                    &format!("user-{i}"),
                    &format!("rd-{i}"),
                )
                .await
        }
    })
    .await;
    assert_no_server_errors(&responses);
    let winners: Vec<_> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(winners.len(), 1, "{:?}", tally(&responses));
    for r in responses.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "COUPON_ALREADY_REDEEMED");
    }
    let winner = winners[0].json();
    let items = app.list_items("status=redeemed").await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0], winner,
        "the list shows the one redemption that won"
    );
    assert_eq!(items[0]["order_id"], winner["order_id"]);
    assert_eq!(items[0]["redeemed_by"], winner["redeemed_by"]);
}
backend_test!(multi_thread: a_coupon_is_redeemed_at_most_once);

async fn one_key_has_one_effect(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 50)).await;
    let client = app.client();
    let responses = concurrently(32, |_| {
        let client = client.clone();
        async move { client.issue(batch, "u1", "same-key").await }
    })
    .await;
    assert_no_server_errors(&responses);
    for r in &responses {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, responses[0].body, "every answer is the same bytes");
    }
    assert_eq!(
        responses.iter().filter(|r| !r.replayed()).count(),
        1,
        "one original, 31 replays"
    );
    assert_eq!(app.list_items("").await.len(), 1, "one coupon");
}
backend_test!(multi_thread: one_key_has_one_effect);

async fn one_key_creates_one_batch(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let client = app.client();
    let responses = concurrently(32, |_| {
        let client = client.clone();
        async move {
            client
                .create_batch(Some("one-batch"), &batch_with_limits(7, 1))
                .await
        }
    })
    .await;
    assert_no_server_errors(&responses);
    for r in &responses {
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.body, responses[0].body);
    }
    assert_eq!(responses.iter().filter(|r| !r.replayed()).count(), 1);
    let id = responses[0].json()["id"].as_i64().expect("id");
    assert_eq!(id, 1);
    // Exactly one batch exists: the next is id 2.
    assert_eq!(app.new_batch(&seed_batch()).await, 2);
}
backend_test!(multi_thread: one_key_creates_one_batch);

async fn many_concurrent_writers_never_fail(backend: Backend) {
    // SQLite's classic failure is "database is locked" under concurrent writers; no
    // request may ever answer 5xx, whatever the mix of writes and reads.
    let app = TestApp::spawn(backend).await;
    let a = app.new_batch(&batch_with_limits(7, 2)).await;
    let b = app.new_batch(&batch_with_limits(1000, 5)).await;
    let mut codes = Vec::new();
    for i in 0..16 {
        codes.push(assert_code(
            &app.issue_ok(b, &format!("holder-{i}")).await["code"],
        ));
    }
    let client = app.client();
    // 96 requests, 16 of each kind.
    let responses = concurrently(96, |i| {
        let client = client.clone();
        // Each of 8 codes is redeemed twice.
        let code = codes[i % 16].clone();
        async move {
            match i % 6 {
                0 => {
                    client
                        .create_batch(Some(&format!("mw-b-{i}")), &batch_with_limits(5, 1))
                        .await
                }
                1 => {
                    client
                        .issue(a, &format!("mw-a-{}", i % 5), &format!("mw-ia-{i}"))
                        .await
                }
                2 => {
                    client
                        .issue(b, &format!("mw-b-{i}"), &format!("mw-ib-{i}"))
                        .await
                }
                3 => {
                    client
                        .redeem(&code, &format!("ord-{i}"), "mw-r", &format!("mw-r-{i}"))
                        .await
                }
                4 => client.list(&format!("user_id=mw-a-{}", i % 5)).await,
                _ => client.issue(b, "mw-same", "mw-same-key").await,
            }
        }
    })
    .await;
    assert_no_server_errors(&responses);
    let kind = |k: usize| -> Vec<&TestResponse> {
        responses
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 6 == k)
            .map(|(_, r)| r)
            .collect()
    };
    for r in kind(0) {
        assert_eq!(r.status, 201, "{r:?}");
    }
    let issued_a = kind(1).iter().filter(|r| r.status == 200).count();
    assert_eq!(
        issued_a, 7,
        "batch a has 7 coupons and 5 users who may take 2 each"
    );
    for r in kind(1).iter().filter(|r| r.status != 200) {
        let code = r.error_code();
        assert!(
            r.status == 409 && (code == "BATCH_LIMIT_REACHED" || code == "PER_USER_LIMIT_REACHED"),
            "{r:?}"
        );
    }
    for r in kind(2) {
        assert_eq!(r.status, 200, "{r:?}");
    }
    let redeems = kind(3);
    assert_eq!(
        redeems.iter().filter(|r| r.status == 200).count(),
        8,
        "8 codes, each redeemed twice"
    );
    for r in redeems.iter().filter(|r| r.status != 200) {
        r.assert_error(409, "COUPON_ALREADY_REDEEMED");
    }
    for r in kind(4) {
        assert_eq!(r.status, 200, "{r:?}");
    }
    let same = kind(5);
    for r in &same {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, same[0].body);
    }
    assert_eq!(same.iter().filter(|r| !r.replayed()).count(), 1);

    // What the database holds afterwards agrees.
    assert_eq!(app.list_items("status=redeemed").await.len(), 8);
    assert_eq!(app.list_items("user_id=mw-same").await.len(), 1);
    let mut from_a = 0;
    for u in 0..5 {
        let n = app.list_items(&format!("user_id=mw-a-{u}")).await.len();
        assert!(n <= 2, "user mw-a-{u} holds {n}");
        from_a += n;
    }
    assert_eq!(from_a, 7);
    // 2 batches before, 16 during: the next one is the 19th.
    assert_eq!(app.new_batch(&seed_batch()).await, 19);
}
backend_test!(multi_thread: many_concurrent_writers_never_fail);

async fn sell_outs_under_contention_never_fail(backend: Backend) {
    // Many small batches sold out by three times as many racing users: on PostgreSQL the
    // last units of several capacity shards run out at the same moment, which is where a
    // transaction that has to wait for a unit could once deadlock with another (a 1 s
    // stall, then 500). The pool is larger than other tests' so that a dozen transactions
    // really are in the database at once.
    let app = TestApp::spawn_with(
        backend,
        |s| s.database.db_max_connections = 12,
        Arc::new(Faults::default()),
    )
    .await;
    let client = app.client();
    for round in 0..40 {
        let limit = 17 + round % 16;
        let batch = app.new_batch(&batch_with_limits(limit, 1)).await;
        let responses = concurrently(3 * limit as usize, |i| {
            let client = client.clone();
            async move {
                client
                    .issue(
                        batch,
                        &format!("so-{round}-{i}"),
                        &format!("so-{round}-{i}"),
                    )
                    .await
            }
        })
        .await;
        assert_no_server_errors(&responses);
        let won = responses.iter().filter(|r| r.status == 200).count();
        assert_eq!(
            won,
            limit as usize,
            "round {round}: {:?}",
            tally(&responses)
        );
        for r in responses.iter().filter(|r| r.status != 200) {
            r.assert_error(409, "BATCH_LIMIT_REACHED");
        }
    }
}
backend_test!(multi_thread: sell_outs_under_contention_never_fail);
