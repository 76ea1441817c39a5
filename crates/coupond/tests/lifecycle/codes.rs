//! Code formats per batch: length, prefix, the unambiguous alphabet, the code-space
//! check, and case-insensitive matching.

use std::collections::BTreeSet;

use serde_json::json;

use crate::backend_test;
use crate::helpers::*;
use crate::support::*;

const STANDARD: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const UNAMBIGUOUS: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";

#[track_caller]
fn assert_format(code: &str, prefix: &str, length: usize, alphabet: &str) {
    let random = code
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{code:?} does not start with {prefix:?}"));
    assert_eq!(random.len(), length, "{code:?}: {length} random characters");
    assert!(
        random.chars().all(|c| alphabet.contains(c)),
        "{code:?}: every character from {alphabet}"
    );
}

async fn the_default_format_is_the_seeds(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.get_batch(app.new_batch(&seed_batch()).await).await;
    assert_eq!(batch["code_length"], json!(10));
    assert_eq!(batch["code_prefix"], json!(""));
    assert_eq!(batch["code_alphabet"], json!("standard"));
    let id = batch["id"].as_i64().expect("id");
    for i in 0..20 {
        let coupon = app.issue_ok(id, &format!("u{i}")).await;
        assert_coupon_shape(&coupon);
        assert_format(&code_of(&coupon), "", 10, STANDARD);
    }
}
backend_test!(the_default_format_is_the_seeds);

async fn length_prefix_and_alphabet_apply_to_issued_and_generated_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = batch_body(json!({
        "code_length": 12,
        "code_prefix": "xmas-",
        "code_alphabet": "unambiguous",
        "total_limit": 3000,
        "per_user_limit": 100,
    }));
    let created = app.create_batch(Some("fmt"), &body).await;
    assert_eq!(created.status, 201, "{created:?}");
    let created = created.json();
    assert_eq!(created["code_length"], json!(12));
    assert_eq!(
        created["code_prefix"],
        json!("XMAS-"),
        "prefixes are upper case"
    );
    assert_eq!(created["code_alphabet"], json!("unambiguous"));
    let batch = created["id"].as_i64().expect("id");

    let mut codes = BTreeSet::new();
    for _ in 0..30 {
        let code = code_of(&app.issue_ok(batch, "u1").await);
        assert_format(&code, "XMAS-", 12, UNAMBIGUOUS);
        codes.insert(code);
    }
    // 2,000 pre-generated codes: enough that every symbol should show up and any
    // look-alike would.
    app.generate_codes(batch, 2000).await;
    let rows = app.csv_rows(batch).await;
    assert_eq!(rows.len(), 2030);
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert_format(&row[0], "XMAS-", 12, UNAMBIGUOUS);
        assert!(codes.insert(row[0].clone()) || row[2] == "u1", "{row:?}");
        seen.extend(row[0]["XMAS-".len()..].chars());
    }
    for look_alike in ['0', 'O', '1', 'I', 'L'] {
        assert!(!seen.contains(&look_alike), "{look_alike} never appears");
    }
    assert_eq!(
        seen.len(),
        UNAMBIGUOUS.len(),
        "all 31 symbols are used: {seen:?}"
    );
    assert_eq!(codes.len(), 2030, "every code is distinct");

    // The shortest and the longest lengths.
    for length in [6, 32] {
        let batch = app
            .new_batch(&batch_body(
                json!({"code_length": length, "total_limit": 100}),
            ))
            .await;
        let code = code_of(&app.issue_ok(batch, "u1").await);
        assert_format(&code, "", length, STANDARD);
    }
}
backend_test!(length_prefix_and_alphabet_apply_to_issued_and_generated_codes);

async fn bad_formats_are_refused_with_the_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (fields, bad) in [
        (json!({"code_length": 5}), "code_length"),
        (json!({"code_length": 33}), "code_length"),
        (json!({"code_length": "10"}), "code_length"),
        (json!({"code_alphabet": "emoji"}), "code_alphabet"),
        (json!({"code_alphabet": "UNAMBIGUOUS"}), "code_alphabet"),
        (json!({"code_prefix": "BAD PREFIX"}), "code_prefix"),
        (json!({"code_prefix": "ÄPFEL"}), "code_prefix"),
        (json!({"code_prefix": "A_B"}), "code_prefix"),
        (json!({"code_prefix": 12}), "code_prefix"),
        (json!({"code_prefix": "X".repeat(17)}), "code_prefix"),
    ] {
        app.create_batch(Some(&new_key("fmt")), &batch_body(fields))
            .await
            .assert_validation(&[bad]);
    }
    // 16 characters of prefix are allowed.
    let ok = app
        .create_batch(
            Some("prefix-16"),
            &batch_body(json!({"code_prefix": "P".repeat(16)})),
        )
        .await;
    assert_eq!(ok.status, 201, "{ok:?}");
}
backend_test!(bad_formats_are_refused_with_the_reason);

async fn a_code_space_too_small_for_the_limit_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // alphabet^length must be at least total_limit * 1,000,000.
    // 36^6 = 2,176,782,336: room for 2,176 coupons, not 2,177.
    // 31^6 = 887,503,681: room for 887, not 888.
    // 36^8 = 2,821,109,907,456: room for 2,821,109.
    for (length, alphabet, fits, too_many) in [
        (6, "standard", 2_176, 2_177),
        (6, "unambiguous", 887, 888),
        (8, "standard", 2_821_109, 2_821_110),
    ] {
        let body = |total: i64| {
            batch_body(json!({
                "code_length": length, "code_alphabet": alphabet, "total_limit": total
            }))
        };
        let r = app
            .create_batch(Some(&new_key("space")), &body(too_many))
            .await;
        r.assert_validation(&["code_length"]);
        let reason = r.json()["error"]["fields"]["code_length"]
            .as_str()
            .expect("reason")
            .to_owned();
        assert!(
            reason.contains(&too_many.to_string()),
            "the reason names the limit: {reason}"
        );
        let r = app.create_batch(Some(&new_key("space")), &body(fits)).await;
        assert_eq!(r.status, 201, "{length} {alphabet} fits {fits}: {r:?}");
    }
    // The seed's 10 characters hold a million-coupon batch.
    let r = app
        .create_batch(
            Some("million"),
            &batch_body(json!({"total_limit": 1_000_000})),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
}
backend_test!(a_code_space_too_small_for_the_limit_is_refused);

async fn codes_match_in_any_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app
        .new_batch(&batch_body(json!({
            "code_prefix": "Sale-", "total_limit": 100, "per_user_limit": 10
        })))
        .await;
    let coupon = app.issue_ok(batch, "u1").await;
    let code = code_of(&coupon);
    assert!(code.starts_with("SALE-"), "{code}");
    let lower = code.to_lowercase();
    let mixed: String = code
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();

    let got = app.coupon(&lower).await;
    assert_eq!(got["code"], json!(code), "answered in upper case");
    assert_eq!(app.coupon(&mixed).await, got);
    assert_eq!(app.events(&lower).await.len(), 1);

    let v = app.validate(&mixed, "u1", None).await;
    assert_eq!(v.status, 200, "{v:?}");
    assert_eq!(v.json()["coupon"]["code"], json!(code));

    let r = app.redeem(&lower, "o1", "u1", &new_key("lower")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["code"], json!(code));
    app.redeem(&code, "o2", "u1", &new_key("upper"))
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");

    let r = app.unredeem(&mixed, "o1", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = app.cancel(&lower, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["code"], json!(code));
    assert_eq!(app.batch_stats(batch).await, (1, 0, 1, 99));
}
backend_test!(codes_match_in_any_case);
