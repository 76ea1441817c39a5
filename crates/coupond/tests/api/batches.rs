//! `POST /v1/coupon-batches/`: the seed's `CouponBatchCreateSerializer` and its rules.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;

fn percent_body() -> Value {
    json!({
        "name": "Welcome 10%",
        "discount_type": "percent",
        "percent": 10,
        "per_user_limit": 3,
        "total_limit": 100,
        "expires_at": "2030-01-01T00:00:00Z",
    })
}

fn fixed_body() -> Value {
    json!({
        "name": "5000 off",
        "discount_type": "fixed",
        "amount": 5000,
        "total_limit": 10,
        "expires_at": "2031-06-30T12:34:56Z",
    })
}

/// `base` with `changes` applied: `Some(v)` sets a field, `None` removes it.
fn with(base: Value, changes: &[(&str, Option<Value>)]) -> Value {
    let mut body = base;
    let object = body.as_object_mut().expect("object");
    for (field, value) in changes {
        match value {
            Some(v) => {
                object.insert((*field).to_owned(), v.clone());
            }
            None => {
                object.remove(*field);
            }
        }
    }
    body
}

fn set_to(field: &str, value: Value) -> (&str, Option<Value>) {
    (field, Some(value))
}

fn without(field: &str) -> (&str, Option<Value>) {
    (field, None)
}

async fn create_returns_201_with_the_batch(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let r = app.create_batch(Some("b-1"), &percent_body()).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.is_json(), "{r:?}");
    assert!(!r.replayed());
    let b = r.json();
    assert!(b["id"].as_i64().is_some_and(|id| id >= 1), "{b}");
    assert_eq!(b["name"], "Welcome 10%");
    assert_eq!(b["discount_type"], "percent");
    assert_eq!(b["amount"], Value::Null);
    assert_eq!(b["percent"], 10);
    assert_eq!(b["per_user_limit"], 3);
    assert_eq!(b["total_limit"], 100);
    assert_eq!(b["expires_at"], "2030-01-01T00:00:00Z");

    let r = app.create_batch(Some("b-2"), &fixed_body()).await;
    assert_eq!(r.status, 201, "{r:?}");
    let f = r.json();
    assert!(
        f["id"].as_i64() > b["id"].as_i64(),
        "ids increase: {b} then {f}"
    );
    assert_eq!(f["name"], "5000 off");
    assert_eq!(f["discount_type"], "fixed");
    assert_eq!(f["amount"], 5000);
    assert_eq!(f["percent"], Value::Null);
    assert_eq!(f["per_user_limit"], 1, "per_user_limit defaults to 1");
    assert_eq!(f["total_limit"], 10);
    assert_eq!(f["expires_at"], "2031-06-30T12:34:56Z");
}
backend_test!(create_returns_201_with_the_batch);

// The issue allows more fields after the seed's ("more fields may follow"); the seed's
// must all be there, and the extra ones are the documented ones.
async fn create_response_has_the_seed_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [percent_body(), fixed_body()] {
        let r = app.create_batch(Some(&new_key("b")), &body).await;
        assert_eq!(r.status, 201, "{r:?}");
        let fields = keys(&r.json());
        let seed = set(&BATCH_FIELDS);
        assert!(fields.is_superset(&seed), "missing seed fields: {r:?}");
        let extra: BTreeSet<String> = fields.difference(&seed).cloned().collect();
        assert!(
            extra.is_subset(&set(&BATCH_EXTRA_FIELDS)),
            "undocumented fields {extra:?}: {r:?}"
        );
    }
}
backend_test!(create_response_has_the_seed_fields);

async fn per_user_limit_defaults_to_1(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [
        with(percent_body(), &[without("per_user_limit")]),
        with(percent_body(), &[set_to("per_user_limit", Value::Null)]),
    ] {
        let r = app.create_batch(Some(&new_key("b")), &body).await;
        assert_eq!(r.status, 201, "{body}: {r:?}");
        assert_eq!(r.json()["per_user_limit"], 1, "{r:?}");
        // And it is enforced as 1.
        let id = r.json()["id"].as_i64().expect("id");
        app.issue_ok(id, "u1").await;
        app.issue(id, "u1", &new_key("i"))
            .await
            .assert_error(409, "PER_USER_LIMIT_REACHED");
    }
}
backend_test!(per_user_limit_defaults_to_1);

async fn edge_values_are_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = [
        (
            "name of 80 characters",
            with(percent_body(), &[set_to("name", json!("n".repeat(80)))]),
        ),
        (
            "name of 80 non-ASCII characters",
            with(percent_body(), &[set_to("name", json!("가".repeat(80)))]),
        ),
        (
            "percent 1",
            with(percent_body(), &[set_to("percent", json!(1))]),
        ),
        (
            "percent 100",
            with(percent_body(), &[set_to("percent", json!(100))]),
        ),
        (
            "amount 1",
            with(fixed_body(), &[set_to("amount", json!(1))]),
        ),
        (
            "total_limit 1",
            with(percent_body(), &[set_to("total_limit", json!(1))]),
        ),
        (
            "per_user_limit 1",
            with(percent_body(), &[set_to("per_user_limit", json!(1))]),
        ),
        (
            "expires_at with an offset",
            with(
                percent_body(),
                &[set_to("expires_at", json!("2030-01-01T09:00:00+09:00"))],
            ),
        ),
        (
            "expires_at in the past",
            with(
                percent_body(),
                &[set_to("expires_at", json!("2001-01-01T00:00:00Z"))],
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (what, body) in cases {
        let r = app.create_batch(Some(&new_key("edge")), &body).await;
        if r.status != 201 {
            failures.push(format!("{what}: {r:?}"));
            continue;
        }
        let b = r.json();
        for field in [
            "name",
            "discount_type",
            "amount",
            "percent",
            "total_limit",
            "per_user_limit",
        ] {
            if body.get(field).is_some() && b[field] != body[field] {
                failures.push(format!(
                    "{what}: {field} came back as {} for {}",
                    b[field], body[field]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
backend_test!(edge_values_are_accepted);

async fn every_validation_rule_names_its_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let p = percent_body;
    let f = fixed_body;
    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("name missing", with(p(), &[without("name")]), &["name"]),
        (
            "name null",
            with(p(), &[set_to("name", Value::Null)]),
            &["name"],
        ),
        (
            "name empty",
            with(p(), &[set_to("name", json!(""))]),
            &["name"],
        ),
        (
            "name blank",
            with(p(), &[set_to("name", json!("   "))]),
            &["name"],
        ),
        (
            "name of 81 characters",
            with(p(), &[set_to("name", json!("n".repeat(81)))]),
            &["name"],
        ),
        (
            "name of 81 non-ASCII characters",
            with(p(), &[set_to("name", json!("가".repeat(81)))]),
            &["name"],
        ),
        (
            "discount_type missing",
            with(p(), &[without("discount_type")]),
            &["discount_type"],
        ),
        (
            "discount_type unknown",
            with(p(), &[set_to("discount_type", json!("bogus"))]),
            &["discount_type"],
        ),
        (
            "discount_type in capitals",
            with(p(), &[set_to("discount_type", json!("PERCENT"))]),
            &["discount_type"],
        ),
        (
            "discount_type a number",
            with(p(), &[set_to("discount_type", json!(1))]),
            &["discount_type"],
        ),
        (
            "fixed without amount",
            with(f(), &[without("amount")]),
            &["amount"],
        ),
        (
            "fixed with amount null",
            with(f(), &[set_to("amount", Value::Null)]),
            &["amount"],
        ),
        (
            "amount 0",
            with(f(), &[set_to("amount", json!(0))]),
            &["amount"],
        ),
        (
            "amount negative",
            with(f(), &[set_to("amount", json!(-100))]),
            &["amount"],
        ),
        (
            "amount fractional",
            with(f(), &[set_to("amount", json!(1.5))]),
            &["amount"],
        ),
        (
            "amount an object",
            with(f(), &[set_to("amount", json!({"value": 5}))]),
            &["amount"],
        ),
        (
            "percent without percent",
            with(p(), &[without("percent")]),
            &["percent"],
        ),
        (
            "percent null",
            with(p(), &[set_to("percent", Value::Null)]),
            &["percent"],
        ),
        (
            "percent 0",
            with(p(), &[set_to("percent", json!(0))]),
            &["percent"],
        ),
        (
            "percent 101",
            with(p(), &[set_to("percent", json!(101))]),
            &["percent"],
        ),
        (
            "percent negative",
            with(p(), &[set_to("percent", json!(-10))]),
            &["percent"],
        ),
        (
            "percent fractional",
            with(p(), &[set_to("percent", json!(10.5))]),
            &["percent"],
        ),
        (
            "per_user_limit 0",
            with(p(), &[set_to("per_user_limit", json!(0))]),
            &["per_user_limit"],
        ),
        (
            "per_user_limit negative",
            with(p(), &[set_to("per_user_limit", json!(-1))]),
            &["per_user_limit"],
        ),
        (
            "per_user_limit fractional",
            with(p(), &[set_to("per_user_limit", json!(1.5))]),
            &["per_user_limit"],
        ),
        (
            "total_limit missing",
            with(p(), &[without("total_limit")]),
            &["total_limit"],
        ),
        (
            "total_limit null",
            with(p(), &[set_to("total_limit", Value::Null)]),
            &["total_limit"],
        ),
        (
            "total_limit 0",
            with(p(), &[set_to("total_limit", json!(0))]),
            &["total_limit"],
        ),
        (
            "total_limit negative",
            with(p(), &[set_to("total_limit", json!(-5))]),
            &["total_limit"],
        ),
        (
            "total_limit a list",
            with(p(), &[set_to("total_limit", json!([100]))]),
            &["total_limit"],
        ),
        (
            "expires_at missing",
            with(p(), &[without("expires_at")]),
            &["expires_at"],
        ),
        (
            "expires_at null",
            with(p(), &[set_to("expires_at", Value::Null)]),
            &["expires_at"],
        ),
        (
            "expires_at words",
            with(p(), &[set_to("expires_at", json!("soon"))]),
            &["expires_at"],
        ),
        (
            "expires_at a date",
            with(p(), &[set_to("expires_at", json!("2030-01-01"))]),
            &["expires_at"],
        ),
        (
            "expires_at without offset",
            with(p(), &[set_to("expires_at", json!("2030-01-01T00:00:00"))]),
            &["expires_at"],
        ),
        (
            "expires_at month 13",
            with(p(), &[set_to("expires_at", json!("2030-13-01T00:00:00Z"))]),
            &["expires_at"],
        ),
        (
            "expires_at a number",
            with(p(), &[set_to("expires_at", json!(1_893_456_000))]),
            &["expires_at"],
        ),
        (
            "empty object",
            json!({}),
            &["name", "discount_type", "total_limit", "expires_at"],
        ),
        (
            "many bad fields at once",
            json!({
                "name": "n".repeat(81),
                "discount_type": "bogus",
                "per_user_limit": 0,
                "total_limit": 0,
                "expires_at": "soon",
            }),
            &[
                "name",
                "discount_type",
                "per_user_limit",
                "total_limit",
                "expires_at",
            ],
        ),
        (
            "percent and limits bad together",
            with(
                p(),
                &[set_to("percent", json!(0)), set_to("total_limit", json!(0))],
            ),
            &["percent", "total_limit"],
        ),
    ];
    let mut failures = Vec::new();
    let mut used_keys = Vec::new();
    for (what, body, fields) in cases {
        let key = new_key("invalid");
        let r = app.create_batch(Some(&key), &body).await;
        used_keys.push(key);
        let ok = r.status == 400
            && r.is_json()
            && r.json()["error"]["code"] == "VALIDATION"
            && r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
            && r.fields() == set(fields);
        if !ok {
            failures.push(format!(
                "{what}: expected 400 VALIDATION naming {fields:?}, got {r:?}"
            ));
        } else {
            r.assert_envelope();
        }
    }
    assert!(
        failures.is_empty(),
        "{} rule(s) broken:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // None of it was stored: no record for any key, and the first real batch is id 1.
    for key in &used_keys {
        assert!(
            app.idempotency_record(key).await.is_none(),
            "a record was stored for {key}"
        );
    }
    let r = app.create_batch(Some(&new_key("b")), &percent_body()).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.json()["id"],
        1,
        "invalid requests must not have created batches: {r:?}"
    );
}
backend_test!(every_validation_rule_names_its_field);

async fn non_object_bodies_are_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for body in [
        json!([]),
        json!([percent_body()]),
        json!("batch"),
        json!(7),
        json!(true),
        Value::Null,
    ] {
        let r = app.create_batch(Some(&new_key("b")), &body).await;
        r.assert_error(400, "VALIDATION");
    }
}
backend_test!(non_object_bodies_are_rejected);
