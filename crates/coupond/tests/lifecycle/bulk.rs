//! Bulk codes for printed vouchers: `POST /v1/coupon-batches/{id}/codes/`, the job's
//! progress, the CSV export, and a million codes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

async fn a_job_generates_unassigned_codes_counted_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(30_000, 1)).await;
    let first = app.issue_ok(batch, "u1").await;

    let r = app.start_codes(batch, 25_000).await;
    assert_eq!(r.status, 202, "{r:?}");
    let job = r.json();
    assert_eq!(keys(&job), set(&JOB_FIELDS), "{job}");
    assert_eq!(job["batch_id"], json!(batch));
    assert_eq!(job["requested"], json!(25_000));
    assert_eq!(job["generated"], json!(0));
    assert_eq!(job["status"], "running");
    assert_eq!(job["finished_at"], Value::Null);
    let created = parse_utc(&job["created_at"]);
    let id = job["id"].as_i64().expect("job id");
    // The codes count against the batch at once, before they exist.
    assert_eq!(app.batch_stats(batch).await, (25_001, 0, 0, 4_999));

    let done = app.wait_job(batch, id, Duration::from_secs(120)).await;
    assert_eq!(done["generated"], json!(25_000));
    assert_eq!(done["requested"], json!(25_000));
    assert!(parse_utc(&done["finished_at"]) >= created, "{done}");
    assert_eq!(done["created_at"], job["created_at"]);
    assert_eq!(app.batch_stats(batch).await, (25_001, 0, 0, 4_999));

    let r = app.export_csv(batch).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/csv")),
        "{:?}",
        r.headers
    );
    let rows = parse_csv(&r.body);
    assert_eq!(rows.len(), 25_001);
    // In the order they were made: the issued one first.
    assert_eq!(rows[0][0], code_of(&first));
    assert_eq!(rows[0][2], "u1");
    let mut codes = HashSet::new();
    for row in &rows {
        assert_eq!(row.len(), 4, "{row:?}");
        assert_code(&json!(row[0]));
        assert!(codes.insert(row[0].clone()), "duplicate code {}", row[0]);
        assert_eq!(row[1], "issued");
        parse_utc(&json!(row[3]));
    }
    assert_eq!(
        rows.iter().filter(|row| row[2].is_empty()).count(),
        25_000,
        "the generated ones belong to nobody"
    );
    // They are coupons like any other: listed, with nobody as the holder.
    let listed = app.list_items(&format!("batch_id={batch}&limit=200")).await;
    assert_eq!(listed.len(), 200);
    for item in &listed {
        assert_coupon_shape(item);
        assert_eq!(item["issued_to"], Value::Null);
        assert_eq!(item["issued_at"], Value::Null);
    }

    // What is left can still be issued, and then no more, by codes or by issue.
    app.start_codes(batch, 5_000)
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    let r = app.start_codes(batch, 4_998).await;
    assert_eq!(r.status, 202, "{r:?}");
    app.issue_ok(batch, "u2").await;
    app.issue(batch, "u3", &new_key("over"))
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    app.start_codes(batch, 1)
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    let id = r.json()["id"].as_i64().expect("id");
    app.wait_job(batch, id, Duration::from_secs(60)).await;
    assert_eq!(app.batch_stats(batch).await, (30_000, 0, 0, 0));
    assert_eq!(app.csv_rows(batch).await.len(), 30_000);
}
backend_test!(a_job_generates_unassigned_codes_counted_at_once);

async fn code_job_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 1)).await;
    for body in [
        json!({}),
        json!({"count": 0}),
        json!({"count": -1}),
        json!({"count": 1_000_001}),
        json!({"count": "5"}),
        json!({"count": 2.5}),
    ] {
        app.post_new(&format!("{BATCHES}{batch}/codes/"), &body)
            .await
            .assert_validation(&["count"]);
    }
    // A valid count, more than the batch has left.
    app.start_codes(batch, 1_000_000)
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    app.start_codes(batch, 101)
        .await
        .assert_error(409, "BATCH_LIMIT_REACHED");
    app.start_codes(777, 1)
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
    app.post_new(&format!("{BATCHES}x/codes/"), &json!({"count": 1}))
        .await
        .assert_validation(&["id"]);
    assert_eq!(app.batch_stats(batch).await, (0, 0, 0, 100));

    let job = app.generate_codes(batch, 3).await;
    let id = job["id"].as_i64().expect("id");
    let other = app.new_batch(&seed_batch()).await;
    app.get(&format!("{BATCHES}{other}/codes/{id}/"))
        .await
        .assert_error(404, "NOT_FOUND");
    app.get(&format!("{BATCHES}{batch}/codes/{}/", id + 100))
        .await
        .assert_error(404, "NOT_FOUND");
    app.get(&format!("{BATCHES}{batch}/codes/abc/"))
        .await
        .assert_validation(&["job_id"]);

    app.get(&format!("{BATCHES}777/codes.csv"))
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
}
backend_test!(code_job_errors);

async fn a_batch_without_coupons_exports_just_the_header(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;
    let r = app.export_csv(batch).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/csv")),
        "{r:?}"
    );
    assert_eq!(
        r.text(),
        "code,status,issued_to,created_at\n",
        "the same columns as for a batch with coupons, and no rows"
    );
}
backend_test!(a_batch_without_coupons_exports_just_the_header);

async fn the_csv_shows_each_coupons_status_and_holder_safely(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(10, 10)).await;
    let plain = code_of(&app.issue_ok(batch, "u1").await);
    let formula = code_of(&app.issue_ok(batch, "=HYPERLINK(\"x\")").await);
    let comma = code_of(&app.issue_ok(batch, "doe, jane").await);
    let redeemed = code_of(&app.issue_ok(batch, "u1").await);
    app.redeem_ok(&redeemed, "o1", "u1").await;
    let cancelled = code_of(&app.issue_ok(batch, "u1").await);
    assert_eq!(app.cancel(&cancelled, None).await.status, 200);

    let text = app.export_csv(batch).await.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let line = |code: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(code))
            .unwrap_or_else(|| panic!("{code} in {text}"))
            .to_string()
    };
    assert!(line(&plain).starts_with(&format!("{plain},issued,u1,")));
    // Never a formula for a spreadsheet; quoted when it holds a comma or quote.
    assert!(
        line(&formula).starts_with(&format!("{formula},issued,\"'=HYPERLINK(\"\"x\"\")\",")),
        "{}",
        line(&formula)
    );
    assert!(line(&comma).starts_with(&format!("{comma},issued,\"doe, jane\",")));
    assert!(line(&redeemed).starts_with(&format!("{redeemed},redeemed,u1,")));
    assert!(line(&cancelled).starts_with(&format!("{cancelled},cancelled,u1,")));
}
backend_test!(the_csv_shows_each_coupons_status_and_holder_safely);

/// One million codes at a time on this machine: the two backends' runs take turns.
static MILLION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A million pre-generated codes: the job reports its progress, the server keeps
/// answering meanwhile, the codes are all distinct, and it takes under a minute on
/// SQLite.
async fn a_million_codes(backend: Backend) {
    const COUNT: i64 = 1_000_000;
    let _turn = MILLION.lock().await;
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(COUNT + 10, 10)).await;
    let started = Instant::now();
    let r = app.start_codes(batch, COUNT).await;
    assert_eq!(r.status, 202, "{r:?}");
    let job = r.json()["id"].as_i64().expect("job id");

    // Follow the job; between polls, other requests must still be answered promptly.
    let mut progress = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut issued = 0;
    let done = loop {
        let body = app.job(batch, job).await;
        let generated = body["generated"].as_i64().expect("generated");
        progress.push(generated);
        if body["status"] == "done" {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not done after 10 minutes: {body}"
        );
        let t = Instant::now();
        if issued < 10 {
            app.issue_ok(batch, "meanwhile").await;
            issued += 1;
        }
        let r = app.list(&format!("batch_id={batch}&limit=5")).await;
        assert_eq!(r.status, 200, "{r:?}");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    let server_took = parse_utc(&done["finished_at"]) - parse_utc(&done["created_at"]);
    println!(
        "{backend:?}: 1,000,000 codes generated in {:.1} s (the job's own clock: {:.1} s); \
         slowest other request meanwhile {} ms; {} progress polls",
        took.as_secs_f64(),
        server_took.as_seconds_f64(),
        slowest.as_millis(),
        progress.len()
    );
    assert_eq!(done["generated"], json!(COUNT));
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back"
    );
    assert!(
        progress.iter().any(|g| *g > 0 && *g < COUNT),
        "progress was reported along the way: {progress:?}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "the server kept answering while generating (slowest: {slowest:?})"
    );
    assert_eq!(
        app.batch_stats(batch).await,
        (COUNT + issued, 0, 0, 10 - issued)
    );

    // Every code, from the export: a million distinct ones nobody holds yet.
    let exported = Instant::now();
    let r = app.export_csv(batch).await;
    assert_eq!(r.status, 200);
    let text = std::str::from_utf8(&r.body).expect("UTF-8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("code,status,issued_to,created_at"));
    let mut codes: HashSet<&str> = HashSet::with_capacity(COUNT as usize + 16);
    let mut unassigned = 0;
    let mut rows = 0;
    for line in lines {
        rows += 1;
        let mut fields = line.split(',');
        let code = fields.next().expect("code");
        assert!(
            code.len() == 10
                && code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
            "{line}"
        );
        assert!(codes.insert(code), "duplicate code {code}");
        assert_eq!(fields.next(), Some("issued"), "{line}");
        if fields.next() == Some("") {
            unassigned += 1;
        }
    }
    println!(
        "{backend:?}: exported and checked {rows} codes in {:.1} s",
        exported.elapsed().as_secs_f64()
    );
    assert_eq!(rows, COUNT + issued);
    assert_eq!(codes.len() as i64, COUNT + issued, "no duplicates");
    assert_eq!(unassigned, COUNT);

    if backend == Backend::Sqlite {
        assert!(
            took < Duration::from_secs(60),
            "a million codes must take under a minute on SQLite; took {took:?}"
        );
    }
}
backend_test!(multi_thread: a_million_codes);

/// Code jobs and issues competing for the last of a batch's capacity: the batch never
/// hands out more than its limit, and its counter is exactly what exists.
async fn code_jobs_and_issues_share_the_limit_exactly(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 100)).await;
    let client = app.client();
    let responses = concurrently(64, move |i| {
        let client = client.clone();
        async move {
            if i % 16 == 0 {
                // 4 jobs of 20.
                client
                    .post_json(
                        &format!("{BATCHES}{batch}/codes/"),
                        Some(&format!("cap-j-{i}")),
                        &json!({"count": 20}),
                    )
                    .await
            } else {
                client
                    .issue(batch, &format!("u{}", i % 5), &format!("cap-i-{i}"))
                    .await
            }
        }
    })
    .await;
    assert_no_server_errors(&responses);
    let mut jobs = Vec::new();
    let mut issued = 0;
    for (i, r) in responses.iter().enumerate() {
        match r.status.as_u16() {
            202 => jobs.push(r.json()["id"].as_i64().expect("id")),
            200 => issued += 1,
            _ => {
                r.assert_error(409, "BATCH_LIMIT_REACHED");
            }
        }
        if i % 16 != 0 {
            assert_ne!(r.status.as_u16(), 202);
        }
    }
    let total = issued + 20 * jobs.len() as i64;
    assert_eq!(
        total,
        100,
        "the limit is used up exactly: {:?}",
        tally(&responses)
    );
    for job in &jobs {
        app.wait_job(batch, *job, Duration::from_secs(60)).await;
    }
    assert_eq!(app.batch_stats(batch).await, (100, 0, 0, 0));
    let rows = app.csv_rows(batch).await;
    assert_eq!(rows.len(), 100);
    assert_eq!(
        rows.iter().filter(|r| r[2].is_empty()).count(),
        20 * jobs.len()
    );
}
backend_test!(multi_thread: code_jobs_and_issues_share_the_limit_exactly);
