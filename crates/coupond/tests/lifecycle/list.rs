//! `GET /v1/coupons/`: cursor pagination, the filters, and a walk over 10,000 coupons
//! while new ones are being inserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

async fn pages_default_to_50_and_go_up_to_200(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(1000, 1)).await;
    app.generate_codes(batch, 230).await;

    let r = app.list("").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(keys(&body), set(&["items", "next_cursor"]), "a full page");
    let first = body["items"].as_array().expect("items").clone();
    assert_eq!(first.len(), 50, "the seed's page size");
    let ids = ids_of(&first);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    for item in &first {
        assert_coupon_shape(item);
    }
    // The next page starts right after the last one.
    let cursor = body["next_cursor"].as_str().expect("cursor");
    let second = app.list_items(&format!("cursor={cursor}")).await;
    assert_eq!(second.len(), 50);
    assert!(ids_of(&second)[0] < *ids.last().expect("last"));

    let (all, pages) = app.walk(LIST, "", 200).await;
    assert_eq!(pages, vec![200, 30]);
    let (same, pages) = app.walk(LIST, "", 50).await;
    assert_eq!(pages, vec![50, 50, 50, 50, 30]);
    assert_eq!(ids_of(&all), ids_of(&same));
    let distinct: BTreeSet<i64> = ids_of(&all).into_iter().collect();
    assert_eq!(distinct.len(), 230);
    // An exact multiple: the last full page still has a cursor, and then an empty one.
    let (_, pages) = app.walk(LIST, "", 115).await;
    assert_eq!(pages, vec![115, 115, 0]);
    let (_, pages) = app.walk(LIST, "", 1).await;
    assert_eq!(pages.len(), 231);

    for (bad, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=-5", "limit"),
        ("limit=ten", "limit"),
        ("cursor=junk", "cursor"),
        ("cursor=djE6MA", "cursor"),
        ("status=lost", "status"),
        ("batch_id=x", "batch_id"),
        ("batch_id=0", "batch_id"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2030-13-01T00:00:00Z", "created_before"),
    ] {
        app.list(bad).await.assert_validation(&[field]);
    }
}
backend_test!(pages_default_to_50_and_go_up_to_200);

/// A coupon of the filter test: its batch, its status, its detail view.
type Known = (i64, String, Value);
/// Which known coupons a query should answer.
type Keep = Box<dyn Fn(&Known) -> bool>;

async fn filters_combine_with_the_cursor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.new_batch(&batch_with_limits(100, 100)).await;
    let b = app.new_batch(&batch_with_limits(100, 100)).await;
    // 30 coupons: batch a or b, users u0..u2, some redeemed, some cancelled.
    let mut all: Vec<Known> = Vec::new();
    for i in 0..30 {
        let batch = if i % 3 == 0 { b } else { a };
        let user = format!("u{}", i % 4);
        let coupon = app.issue_ok(batch, &user).await;
        let code = code_of(&coupon);
        let status = match i % 5 {
            0 => {
                app.redeem_ok(&code, &format!("o{i}"), &user).await;
                "redeemed"
            }
            1 => {
                assert_eq!(app.cancel(&code, None).await.status, 200);
                "cancelled"
            }
            _ => "issued",
        };
        all.push((batch, status.to_owned(), app.coupon(&code).await));
    }
    // Each filter, alone and together, walked in pages of 4.
    let queries: Vec<(String, Keep)> = vec![
        (format!("batch_id={a}"), Box::new(move |c| c.0 == a)),
        (format!("batch_id={b}"), Box::new(move |c| c.0 == b)),
        ("status=redeemed".into(), Box::new(|c| c.1 == "redeemed")),
        ("status=cancelled".into(), Box::new(|c| c.1 == "cancelled")),
        ("status=issued".into(), Box::new(|c| c.1 == "issued")),
        ("user_id=u1".into(), Box::new(|c| c.2["issued_to"] == "u1")),
        (
            format!("batch_id={a}&status=issued&user_id=u2"),
            Box::new(move |c| c.0 == a && c.1 == "issued" && c.2["issued_to"] == "u2"),
        ),
        (
            format!("batch_id={b}&status=redeemed"),
            Box::new(move |c| c.0 == b && c.1 == "redeemed"),
        ),
        ("user_id=nobody".into(), Box::new(|_| false)),
        ("batch_id=999".into(), Box::new(|_| false)),
    ];
    for (query, keep) in &queries {
        let mut expected: Vec<i64> = all
            .iter()
            .filter(|c| keep(c))
            .map(|c| c.2["id"].as_i64().expect("id"))
            .collect();
        expected.reverse();
        let (items, _) = app.walk(LIST, query, 4).await;
        assert_eq!(ids_of(&items), expected, "{query}");
        for item in &items {
            let full = all.iter().find(|c| c.2["id"] == item["id"]).expect("known");
            for field in COUPON_FIELDS {
                assert_eq!(item[field], full.2[field], "{query}: {field}");
            }
        }
    }

    // The created-at range: [after, before).
    let created: Vec<String> = all
        .iter()
        .map(|c| c.2["created_at"].as_str().expect("created_at").to_owned())
        .collect();
    let distinct: BTreeSet<&String> = created.iter().collect();
    assert_eq!(distinct.len(), 30, "distinct creation times");
    let ids: Vec<i64> = all
        .iter()
        .map(|c| c.2["id"].as_i64().expect("id"))
        .collect();
    let range = |from: usize, to: usize| -> Vec<i64> {
        let mut v = ids[from..to].to_vec();
        v.reverse();
        v
    };
    let after = format!("created_after={}", created[10]);
    let before = format!("created_before={}", created[20]);
    assert_eq!(ids_of(&app.walk(LIST, &after, 7).await.0), range(10, 30));
    assert_eq!(ids_of(&app.walk(LIST, &before, 7).await.0), range(0, 20));
    assert_eq!(
        ids_of(&app.walk(LIST, &format!("{after}&{before}"), 3).await.0),
        range(10, 20)
    );
    // In another offset, the same instants.
    let plus_two = |t: &str| {
        let t = parse_utc(&json!(t));
        let shifted = t.to_offset(time::UtcOffset::from_hms(2, 0, 0).expect("offset"));
        rfc3339(shifted).replace('+', "%2B")
    };
    let shifted = format!(
        "created_after={}&created_before={}&batch_id={a}",
        plus_two(&created[10]),
        plus_two(&created[20])
    );
    let expected: Vec<i64> = all[10..20]
        .iter()
        .rev()
        .filter(|c| c.0 == a)
        .map(|c| c.2["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids_of(&app.walk(LIST, &shifted, 2).await.0), expected);
}
backend_test!(filters_combine_with_the_cursor);

/// Walks 10,000 coupons of a batch, in pages, while two writers keep issuing new ones
/// into the same batch: every coupon that was there before the walk is seen exactly
/// once, none twice, in strictly descending order, and nothing unknown appears.
async fn a_walk_over_10000_coupons_is_stable_under_concurrent_inserts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(50_000, 50_000)).await;
    let other = app.new_batch(&batch_with_limits(50_000, 50_000)).await;
    app.generate_codes(batch, 10_000).await;
    let before: BTreeSet<String> = app
        .csv_rows(batch)
        .await
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    assert_eq!(before.len(), 10_000);

    let stop = Arc::new(AtomicBool::new(false));
    let inserted_during = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let client = app.client();
            let stop = stop.clone();
            let count = inserted_during.clone();
            tokio::spawn(async move {
                let mut made = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Into the walked batch and into another one.
                    let into = if i % 3 == 2 { other } else { batch };
                    let r = client
                        .issue(into, &format!("w{w}"), &format!("walk-{w}-{i}"))
                        .await;
                    assert_eq!(r.status, 200, "{r:?}");
                    made.push(code_of(&r.json()));
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                made
            })
        })
        .collect();
    // Let the writers get going.
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            let n = inserted_during.clone();
            async move { n.load(Ordering::Relaxed) >= 4 }
        })
        .await
    );

    let mut walks = Vec::new();
    for (query, limit) in [
        (format!("batch_id={batch}"), 200),
        (format!("batch_id={batch}&status=issued"), 137),
        (String::new(), 200),
    ] {
        let at_start = inserted_during.load(Ordering::Relaxed);
        let (items, pages) = app.walk(LIST, &query, limit).await;
        let at_end = inserted_during.load(Ordering::Relaxed);
        walks.push((query, items, pages.len(), at_end - at_start));
    }
    stop.store(true, Ordering::Relaxed);
    let mut made = BTreeSet::new();
    for writer in writers {
        made.extend(writer.await.expect("writer"));
    }

    for (query, items, pages, inserts) in &walks {
        assert!(
            *inserts > 0,
            "{query}: coupons were inserted while it walked"
        );
        assert!(*pages >= 10_000 / 200, "{query}: {pages} pages");
        let ids = ids_of(items);
        assert!(
            ids.windows(2).all(|w| w[0] > w[1]),
            "{query}: strictly descending ids (no repeats)"
        );
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for item in items {
            *seen.entry(code_of(item)).or_default() += 1;
        }
        let missing: Vec<_> = before.iter().filter(|c| !seen.contains_key(*c)).collect();
        assert!(
            missing.is_empty(),
            "{query}: {} coupons present before the walk were skipped, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "{query}: repeated {repeated:?}");
        let unknown: Vec<_> = seen
            .keys()
            .filter(|c| !before.contains(*c) && !made.contains(*c))
            .collect();
        assert!(unknown.is_empty(), "{query}: unknown coupons {unknown:?}");
    }
    // And once the writers have stopped, a walk sees exactly what exists.
    let (others, _) = app.walk(LIST, &format!("batch_id={other}"), 200).await;
    let (items, _) = app.walk(LIST, &format!("batch_id={batch}"), 200).await;
    let in_batch = 10_000 + made.len() - others.len();
    assert_eq!(items.len(), in_batch);
    assert_eq!(app.batch_stats(batch).await.0, in_batch as i64);
}
backend_test!(multi_thread: a_walk_over_10000_coupons_is_stable_under_concurrent_inserts);

/// A user's list costs a page, not the table: with 20,000 coupons in the table, listing
/// one user's coupons (with and without a status filter, and a second page) reads no row
/// of `coupons` by a sequential scan. (The query used to be `c.id IN (issued_to …
/// UNION redeemed_by …)`, which PostgreSQL planned as a hash join over a scan of every
/// coupon whenever the table had grown past its statistics, as it does in a burst before
/// autovacuum catches up: the list got slower with every coupon issued to anyone; with
/// that query this test saw 220,880 rows scanned.) PostgreSQL only: its statistics tell
/// what the plans did.
mod a_users_list_never_scans_the_table {
    use super::*;
    use sqlx::Connection;

    /// A backend reports its statistics when idle, at most once a second and at the
    /// latest after 10 s (PostgreSQL 15's PGSTAT_IDLE_INTERVAL).
    const STATS_SETTLE: std::time::Duration = std::time::Duration::from_secs(11);

    async fn seq_tup_read(db: &mut sqlx::PgConnection) -> i64 {
        let (read,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = 'coupons'",
        )
        .fetch_one(&mut *db)
        .await
        .expect("pg_stat_user_tables");
        read
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let app = TestApp::spawn(Backend::Postgres).await;
        let batch = app.new_batch(&batch_with_limits(100_000, 100)).await;
        app.generate_codes(batch, 20_000).await;
        for n in 0..60 {
            app.issue_ok(batch, "scan-user").await;
            if n % 3 == 0 {
                app.issue_ok(batch, &format!("other-{n}")).await;
            }
        }
        let mut db = sqlx::PgConnection::connect(app.database_url())
            .await
            .expect("connecting");
        tokio::time::sleep(STATS_SETTLE).await;
        let before = seq_tup_read(&mut db).await;
        for query in [
            "user_id=scan-user",
            "user_id=scan-user&status=issued",
            "user_id=scan-user&status=redeemed",
            "user_id=scan-user&limit=20",
        ] {
            for _ in 0..10 {
                assert_eq!(app.list(query).await.status, 200);
            }
        }
        let page = app.list("user_id=scan-user").await.json();
        assert_eq!(page["items"].as_array().map(Vec::len), Some(50));
        let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
        let second = app
            .list_items(&format!("user_id=scan-user&cursor={cursor}"))
            .await;
        assert_eq!(second.len(), 10);
        tokio::time::sleep(STATS_SETTLE).await;
        let after = seq_tup_read(&mut db).await;
        assert_eq!(
            after - before,
            0,
            "listing one user's coupons scanned {} rows of coupons",
            after - before
        );
    }
}
