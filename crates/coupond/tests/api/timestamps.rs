//! Every timestamp on the wire is RFC 3339, in UTC.

use serde_json::json;
use time::OffsetDateTime;

use crate::backend_test;
use crate::helpers::*;

async fn timestamps_are_rfc3339_in_utc(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    // An offset is normalised to UTC, the instant kept.
    let mut body = seed_batch();
    body["expires_at"] = json!("2030-01-01T09:00:00+09:00");
    let r = app.create_batch(Some("t-b1"), &body).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["expires_at"], "2030-01-01T00:00:00Z");

    body["expires_at"] = json!("2030-06-30T18:30:00-05:30");
    let r = app.create_batch(Some("t-b2"), &body).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["expires_at"], "2030-07-01T00:00:00Z");

    // Fractions of a second survive, to the microsecond.
    body["expires_at"] = json!("2030-01-01T00:00:00.123456Z");
    let r = app.create_batch(Some("t-b3"), &body).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["expires_at"], "2030-01-01T00:00:00.123456Z");
    let batch = r.json()["id"].as_i64().expect("id");

    let issued = app.issue_ok(batch, "u1").await;
    let issued_at = parse_utc(&issued["issued_at"]);
    let now = OffsetDateTime::now_utc();
    assert!(
        (now - issued_at).abs() < time::Duration::seconds(30),
        "{issued_at} vs {now}"
    );

    let r = app
        .redeem(&assert_code(&issued["code"]), "o", "u1", "t-r")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let redeemed_at = parse_utc(&r.json()["redeemed_at"]);
    assert!(redeemed_at >= issued_at);

    for item in app.list_items("").await {
        parse_utc(&item["issued_at"]);
        parse_utc(&item["redeemed_at"]);
    }
}
backend_test!(timestamps_are_rfc3339_in_utc);
