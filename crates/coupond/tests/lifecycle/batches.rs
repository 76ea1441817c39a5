//! Batches: list and one batch with live stats, the optional fields at creation,
//! `starts_at`, activation, and who may manage them.

use coupond::domain::Scope;
use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

async fn a_batch_reads_back_with_its_settings_and_zero_stats(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = batch_body(json!({
        "name": "Autumn",
        "percent": 15,
        "total_limit": 500,
        "per_user_limit": 2,
        "starts_at": "2030-01-01T00:00:00Z",
        "min_order_amount": 10_000,
        "max_discount": 2_500,
        "currency": "krw",
    }));
    let created = app.create_batch(Some("b-settings"), &body).await;
    assert_eq!(created.status, 201, "{created:?}");
    let created = created.json();
    assert_batch_shape(&created);
    let id = created["id"].as_i64().expect("id");
    for (field, value) in [
        ("name", json!("Autumn")),
        ("discount_type", json!("percent")),
        ("amount", Value::Null),
        ("percent", json!(15)),
        ("per_user_limit", json!(2)),
        ("total_limit", json!(500)),
        ("expires_at", json!(FAR_FUTURE)),
        ("redeem_policy", json!("anyone")),
        ("starts_at", json!("2030-01-01T00:00:00Z")),
        ("min_order_amount", json!(10_000)),
        ("max_discount", json!(2_500)),
        ("currency", json!("KRW")),
        ("active", json!(true)),
        ("code_length", json!(10)),
        ("code_prefix", json!("")),
        ("code_alphabet", json!("standard")),
    ] {
        assert_eq!(created[field], value, "{field}: {created}");
    }
    assert_eq!(stats_of(&created), (0, 0, 0, 500));
    parse_utc(&created["created_at"]);

    // GET answers the same batch, byte for byte the same JSON.
    let got = app.get_batch(id).await;
    assert_eq!(got, created);

    // Without the optional fields they are null (and the seed's fields unchanged).
    let plain = app.create_batch(Some("b-plain"), &seed_batch()).await;
    assert_eq!(plain.status, 201, "{plain:?}");
    let plain = plain.json();
    assert_batch_shape(&plain);
    for field in ["starts_at", "min_order_amount", "max_discount", "currency"] {
        assert_eq!(plain[field], Value::Null, "{field}: {plain}");
    }
    assert_eq!(stats_of(&plain), (0, 0, 0, 1000));

    // A batch that does not exist, and ids that cannot be one.
    app.get(&format!("{BATCHES}999/"))
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
    app.get(&format!("{BATCHES}abc/"))
        .await
        .assert_validation(&["id"]);
    app.get(&format!("{BATCHES}0/"))
        .await
        .assert_validation(&["id"]);
    app.get(&format!("{BATCHES}-3/"))
        .await
        .assert_validation(&["id"]);
}
backend_test!(a_batch_reads_back_with_its_settings_and_zero_stats);

async fn invalid_optional_fields_are_named(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"currency": "EURO"}), &["currency"]),
        (json!({"currency": "XYZ"}), &["currency"]),
        (json!({"currency": 978}), &["currency"]),
        (json!({"min_order_amount": -1}), &["min_order_amount"]),
        (json!({"min_order_amount": "100"}), &["min_order_amount"]),
        (json!({"min_order_amount": 1.5}), &["min_order_amount"]),
        (json!({"max_discount": 0}), &["max_discount"]),
        (json!({"max_discount": "100"}), &["max_discount"]),
        (json!({"max_discount": 99.5}), &["max_discount"]),
        (json!({"starts_at": "tomorrow"}), &["starts_at"]),
        // starts_at must come before expires_at.
        (json!({"starts_at": FAR_FUTURE}), &["starts_at"]),
        (json!({"starts_at": "2100-01-01T00:00:00Z"}), &["starts_at"]),
    ];
    for (fields, bad) in cases {
        let body = batch_body(fields.clone());
        let r = app.create_batch(Some(&new_key("bad")), &body).await;
        r.assert_validation(bad);
    }
    // A fixed discount cannot be capped: it is its amount.
    let mut fixed = fixed_batch(500, 10, 1);
    fixed["max_discount"] = json!(100);
    app.create_batch(Some("fixed-cap"), &fixed)
        .await
        .assert_validation(&["max_discount"]);
    // Amounts are integers in minor units.
    for amount in [json!(9.99), json!("500"), json!(0)] {
        let mut fixed = fixed_batch(500, 10, 1);
        fixed["amount"] = amount;
        app.create_batch(Some(&new_key("fixed-amount")), &fixed)
            .await
            .assert_validation(&["amount"]);
    }
    // min_order_amount may be 0.
    let ok = app
        .create_batch(
            Some("min-zero"),
            &batch_body(json!({"min_order_amount": 0})),
        )
        .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(ok.json()["min_order_amount"], json!(0));
    // Nothing was created by the refusals.
    let (items, _) = app.walk(BATCHES, "", 50).await;
    assert_eq!(items.len(), 1, "only the valid batch exists: {items:?}");
}
backend_test!(invalid_optional_fields_are_named);

async fn stats_are_live(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let a = code_of(&app.issue_ok(batch, "u1").await);
    let b = code_of(&app.issue_ok(batch, "u1").await);
    let c = code_of(&app.issue_ok(batch, "u2").await);
    assert_eq!(app.batch_stats(batch).await, (3, 0, 0, 7));

    app.redeem_ok(&a, "o-a", "u1").await;
    assert_eq!(app.batch_stats(batch).await, (3, 1, 0, 7));

    let r = app.cancel(&b, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Cancelling does not give capacity back.
    assert_eq!(app.batch_stats(batch).await, (3, 1, 1, 7));

    let r = app.unredeem(&a, "o-a", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Unredeem gives the redemption back; the coupon stays issued.
    assert_eq!(app.batch_stats(batch).await, (3, 0, 1, 7));

    app.redeem_ok(&c, "o-c", "u2").await;
    app.redeem_ok(&a, "o-a2", "u1").await;
    assert_eq!(app.batch_stats(batch).await, (3, 2, 1, 7));

    // Refusals change nothing.
    app.redeem(&a, "o-x", "u1", &new_key("again"))
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    app.cancel(&b, None)
        .await
        .assert_error(409, "COUPON_CANCELLED");
    assert_eq!(app.batch_stats(batch).await, (3, 2, 1, 7));

    // The list shows the same counters as the single batch.
    let items = app.walk(BATCHES, "", 50).await.0;
    assert_eq!(items.len(), 1);
    assert_eq!(stats_of(&items[0]), (3, 2, 1, 7));
    assert_eq!(items[0], app.get_batch(batch).await);
}
backend_test!(stats_are_live);

async fn remaining_reaches_zero_and_issue_stops(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(3, 3)).await;
    let first = code_of(&app.issue_ok(batch, "u1").await);
    app.issue_ok(batch, "u2").await;
    let r = app.cancel(&first, Some("lost")).await;
    assert_eq!(r.status, 200, "{r:?}");
    app.issue_ok(batch, "u3").await;
    assert_eq!(app.batch_stats(batch).await, (3, 0, 1, 0));
    app.issue(batch, "u4", &new_key("full"))
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    assert_eq!(app.batch_stats(batch).await, (3, 0, 1, 0));
}
backend_test!(remaining_reaches_zero_and_issue_stops);

async fn batch_list_is_paginated_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut body = batch_body(json!({"name": format!("Batch {i}")}));
        if i % 2 == 1 {
            body["name"] = json!(format!("Summer {i}"));
        }
        ids.push(app.new_batch(&body).await);
    }
    ids.reverse();

    let (items, pages) = app.walk(BATCHES, "", 3).await;
    assert_eq!(ids_of(&items), ids, "newest first, each once");
    assert_eq!(pages, vec![3, 3, 1]);
    for item in &items {
        assert_batch_shape(item);
    }
    // A page exactly as long as what is left still has a cursor; the next one is empty.
    let (_, pages) = app.walk(BATCHES, "", 7).await;
    assert_eq!(pages, vec![7, 0]);

    // Default page: 50 (the seed's), at most 200.
    let r = app.get(BATCHES).await;
    assert_eq!(r.status, 200);
    assert_eq!(keys(&r.json()), set(&["items"]), "7 < 50: no cursor");
    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=junk",
        "active=yes",
    ] {
        let field = bad.split('=').next().expect("name");
        app.get(&format!("{BATCHES}?{bad}"))
            .await
            .assert_validation(&[field]);
    }
    assert_eq!(app.get(&format!("{BATCHES}?limit=200")).await.status, 200);

    // Filters: name (contains, any case) and active.
    let (summer, _) = app.walk(BATCHES, "name=summer", 2).await;
    let expected: Vec<i64> = ids
        .iter()
        .zip((0..7).rev())
        .filter(|(_, i)| i % 2 == 1)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids_of(&summer), expected);
    app.set_active_ok(ids[0], false).await;
    app.set_active_ok(ids[3], false).await;
    let (inactive, _) = app.walk(BATCHES, "active=false", 50).await;
    assert_eq!(ids_of(&inactive), vec![ids[0], ids[3]]);
    let (active, _) = app.walk(BATCHES, "active=true", 2).await;
    let expected: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| *id != ids[0] && *id != ids[3])
        .collect();
    assert_eq!(ids_of(&active), expected);
}
backend_test!(batch_list_is_paginated_newest_first);

async fn the_name_filter_takes_wildcards_literally(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut id = std::collections::BTreeMap::new();
    for name in ["50% off", "50 off", "a_b", "axb", "back\\slash", "Ünïcode"] {
        id.insert(
            name,
            app.new_batch(&batch_body(json!({"name": name}))).await,
        );
    }
    for (query, expected) in [
        ("name=%25", vec!["50% off"]),
        ("name=50%25", vec!["50% off"]),
        ("name=_", vec!["a_b"]),
        ("name=a_b", vec!["a_b"]),
        ("name=%5C", vec!["back\\slash"]),
        ("name=OFF", vec!["50 off", "50% off"]),
        ("name=%C3%9Cn", vec!["Ünïcode"]),
        ("name=zzz", vec![]),
    ] {
        let (items, _) = app.walk(BATCHES, query, 50).await;
        let mut want: Vec<i64> = expected.iter().map(|n| id[n]).collect();
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(ids_of(&items), want, "{query}");
    }
}
backend_test!(the_name_filter_takes_wildcards_literally);

/// "Batches whose name contains this, in any case" (the route's documentation), on
/// both backends alike: also for letters outside ASCII.
async fn the_name_filter_ignores_case_beyond_ascii(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app
        .new_batch(&batch_body(json!({"name": "Été Ünïcode"})))
        .await;
    for query in [
        "name=%C3%A9t%C3%A9",
        "name=%C3%BCN%C3%8F",
        "name=%C3%89T%C3%89",
    ] {
        let (items, _) = app.walk(BATCHES, query, 50).await;
        assert_eq!(ids_of(&items), vec![id], "{query}");
    }
}
backend_test!(the_name_filter_ignores_case_beyond_ascii);

async fn batch_list_walk_is_stable_under_concurrent_creates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut before = Vec::new();
    for i in 0..40 {
        before.push(
            app.new_batch(&batch_body(json!({"name": format!("b{i}")})))
                .await,
        );
    }
    let client = app.client();
    let creator = tokio::spawn(async move {
        let mut made = Vec::new();
        for i in 0..30 {
            made.push(
                client
                    .new_batch(&batch_body(json!({"name": format!("new{i}")})))
                    .await,
            );
        }
        made
    });
    let (items, _) = app.walk(BATCHES, "", 3).await;
    let made = creator.await.expect("creator");
    let walked = ids_of(&items);
    assert!(
        walked.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first, no repeats: {walked:?}"
    );
    for id in &before {
        assert_eq!(
            walked.iter().filter(|w| *w == id).count(),
            1,
            "batch {id}, there before the walk, is seen exactly once"
        );
    }
    for id in &walked {
        assert!(
            before.contains(id) || made.contains(id),
            "{id} is a batch that exists"
        );
    }
}
backend_test!(multi_thread: batch_list_walk_is_stable_under_concurrent_creates);

async fn starts_at_holds_issue_and_redeem_until_then(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let starts = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(3000);
    let body = batch_body(json!({"starts_at": rfc3339(starts), "total_limit": 100}));
    let batch = app.new_batch(&body).await;
    app.issue(batch, "u1", &new_key("early"))
        .await
        .assert_error(409, "BATCH_NOT_STARTED");
    // A pre-generated code exists before the start, and cannot be used yet.
    app.generate_codes(batch, 1).await;
    let rows = app.csv_rows(batch).await;
    let code = rows[0][0].clone();
    app.redeem(&code, "o1", "u1", &new_key("early-redeem"))
        .await
        .assert_error(409, "BATCH_NOT_STARTED");
    app.validate(&code, "u1", None)
        .await
        .assert_error(409, "BATCH_NOT_STARTED");
    // Inactive comes before not started.
    app.set_active_ok(batch, false).await;
    app.issue(batch, "u1", &new_key("early-inactive"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    app.redeem(&code, "o1", "u1", &new_key("early-inactive-r"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    app.set_active_ok(batch, true).await;
    assert_eq!(app.batch_stats(batch).await, (1, 0, 0, 99));
    assert!(
        time::OffsetDateTime::now_utc() < starts,
        "the set-up took longer than the 3 s before the start (an overloaded machine?)"
    );

    sleep_past(starts).await;
    app.issue_ok(batch, "u1").await;
    app.redeem_ok(&code, "o1", "u1").await;
    assert_eq!(app.batch_stats(batch).await, (2, 1, 0, 98));
}
backend_test!(starts_at_holds_issue_and_redeem_until_then);

async fn deactivate_and_activate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let held = code_of(&app.issue_ok(batch, "u1").await);
    let redeemed = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&redeemed, "o-r", "u1").await;

    let off = app.set_active_ok(batch, false).await;
    assert_batch_shape(&off);
    assert_eq!(stats_of(&off), (2, 1, 0, 8));
    let mut expected = app.get_batch(batch).await;
    assert_eq!(off, expected, "the answer is the batch as it now is");
    assert_eq!(expected["active"], json!(false));

    app.issue(batch, "u2", &new_key("inactive"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    app.redeem(&held, "o1", "u1", &new_key("inactive"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    app.validate(&held, "u1", None)
        .await
        .assert_error(409, "BATCH_INACTIVE");
    // Inactive is checked before the coupon's own state.
    app.redeem(&redeemed, "o2", "u1", &new_key("inactive-2"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    // Deactivating twice is fine and changes nothing.
    assert_eq!(app.set_active_ok(batch, false).await, expected);
    assert_eq!(app.batch_stats(batch).await, (2, 1, 0, 8));
    let coupon = app.coupon(&held).await;
    assert_eq!(coupon["status"], "issued", "the coupon itself is untouched");

    let on = app.set_active_ok(batch, true).await;
    expected["active"] = json!(true);
    assert_eq!(on, expected);
    app.issue_ok(batch, "u2").await;
    app.redeem_ok(&held, "o1", "u1").await;
    assert_eq!(app.batch_stats(batch).await, (3, 2, 0, 7));

    for verb in ["activate", "deactivate"] {
        app.post_new(&format!("{BATCHES}4242/{verb}/"), &json!({}))
            .await
            .assert_error(404, "BATCH_NOT_FOUND");
        app.post_new(&format!("{BATCHES}nope/{verb}/"), &json!({}))
            .await
            .assert_validation(&["id"]);
    }
}
backend_test!(deactivate_and_activate);

async fn issue_rules_keep_their_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Inactive before expired.
    let expired = app.new_batch(&batch_expiring_in(-60, 10, 1)).await;
    app.issue(expired, "u1", &new_key("exp"))
        .await
        .assert_error(409, "BATCH_EXPIRED");
    app.set_active_ok(expired, false).await;
    app.issue(expired, "u1", &new_key("exp-off"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    // Inactive before the user's and the batch's limits.
    let full = app.new_batch(&batch_with_limits(1, 1)).await;
    app.issue_ok(full, "u1").await;
    app.issue(full, "u1", &new_key("full-user"))
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
    app.issue(full, "u2", &new_key("full-batch"))
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    app.set_active_ok(full, false).await;
    for user in ["u1", "u2"] {
        app.issue(full, user, &new_key("full-off"))
            .await
            .assert_error(409, "BATCH_INACTIVE");
    }
    // Not started before the user's limit (a user who already holds one cannot exist
    // before the start, but the batch's limit can be used up by bulk codes).
    let later = app
        .new_batch(&batch_body(json!({
            "starts_at": in_days(1), "total_limit": 1
        })))
        .await;
    app.generate_codes(later, 1).await;
    app.issue(later, "u1", &new_key("later"))
        .await
        .assert_error(409, "BATCH_NOT_STARTED");
    app.issue(9999, "u1", &new_key("none"))
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
}
backend_test!(issue_rules_keep_their_order);

async fn scopes_of_the_new_endpoints(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (service, _) = client_of(&app, Scope::Service).await;
    let (read, _) = client_of(&app, Scope::Read).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let code = code_of(&app.issue_ok(batch, "u1").await);
    let generated = app.generate_codes(batch, 2).await;
    let job = generated["id"].as_i64().expect("job id");

    // Batch management: admin only.
    for client in [&service, &read] {
        for (path, body) in [
            (BATCHES.to_owned(), seed_batch()),
            (format!("{BATCHES}{batch}/deactivate/"), json!({})),
            (format!("{BATCHES}{batch}/activate/"), json!({})),
            (format!("{BATCHES}{batch}/codes/"), json!({"count": 1})),
        ] {
            client
                .post_new(&path, &body)
                .await
                .assert_error(403, "FORBIDDEN");
        }
    }
    // Coupon operations: admin or service; read may not.
    for (path, body) in [
        (ISSUE, json!({"batch_id": batch, "user_id": "u9"})),
        (
            VALIDATE,
            json!({"code": code, "user_id": "u1", "order_amount": 100}),
        ),
        (
            REDEEM,
            json!({"code": code, "order_id": "o1", "user_id": "u1"}),
        ),
        (UNREDEEM, json!({"code": code, "order_id": "o1"})),
    ] {
        read.post_new(path, &body)
            .await
            .assert_error(403, "FORBIDDEN");
        let r = service.post_new(path, &body).await;
        assert_eq!(r.status, 200, "service may {path}: {r:?}");
    }
    read.cancel(&code, None)
        .await
        .assert_error(403, "FORBIDDEN");
    let r = service.cancel(&code, None).await;
    assert_eq!(r.status, 200, "service may cancel: {r:?}");
    // Reads: any key.
    for client in [&service, &read] {
        for path in [
            BATCHES.to_owned(),
            format!("{BATCHES}{batch}/"),
            format!("{BATCHES}{batch}/codes/{job}/"),
            format!("{BATCHES}{batch}/codes.csv"),
            format!("{LIST}?batch_id={batch}"),
            format!("{LIST}{code}/"),
            format!("{LIST}{code}/events/"),
        ] {
            let r = client.get(&path).await;
            assert_eq!(r.status, 200, "GET {path}: {r:?}");
        }
    }
    // Nobody without a key.
    let anonymous = app.client_with(None);
    anonymous
        .get(&format!("{BATCHES}{batch}/"))
        .await
        .assert_error(401, "UNAUTHENTICATED");
    anonymous
        .validate(&code, "u1", None)
        .await
        .assert_error(401, "UNAUTHENTICATED");
    // The refused requests changed nothing: 1 issued + 2 generated + service's issue.
    assert_eq!(app.batch_stats(batch).await, (4, 0, 1, 96));
    assert_eq!(app.get_batch(batch).await["active"], json!(true));
}
backend_test!(scopes_of_the_new_endpoints);
