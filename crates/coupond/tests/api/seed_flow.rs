//! The seed's pytest, `test_issue_and_redeem_idempotent_flow`, step by step.

use crate::backend_test;
use crate::helpers::*;

async fn issue_and_redeem_idempotent_flow(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&seed_batch()).await;

    let r1 = app.issue(batch, "u1", "iss-1").await;
    assert_eq!(r1.status, 200, "{r1:?}");
    assert!(!r1.replayed(), "the original is not a replay: {r1:?}");
    let code = assert_code(&r1.json()["code"]);

    let r2 = app.issue(batch, "u1", "iss-1").await;
    assert_eq!(r2.status, 200, "{r2:?}");
    assert_eq!(r2.json()["code"], code.as_str());
    assert_eq!(r2.body, r1.body, "a replay is byte-identical");
    assert!(r2.replayed(), "{r2:?}");

    let r3 = app.issue(batch, "u1", "iss-2").await;
    r3.assert_error(409, "PER_USER_LIMIT_REACHED");

    let rr1 = app.redeem(&code, "ord_1", "u1", "red-1").await;
    assert_eq!(rr1.status, 200, "{rr1:?}");
    assert_eq!(rr1.json()["status"], "redeemed");
    assert!(!rr1.replayed());

    let rr2 = app.redeem(&code, "ord_1", "u1", "red-1").await;
    assert_eq!(rr2.status, 200, "{rr2:?}");
    assert_eq!(rr2.json()["code"], code.as_str());
    assert_eq!(rr2.body, rr1.body, "a replay is byte-identical");
    assert!(rr2.replayed());

    let rr3 = app.redeem(&code, "ord_1", "u1", "red-2").await;
    rr3.assert_error(409, "COUPON_ALREADY_REDEEMED");

    // Of all that, one coupon exists, redeemed once.
    let items = app.list_items("").await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["code"], code.as_str());
    assert_eq!(items[0]["status"], "redeemed");
    assert_eq!(
        items[0],
        rr1.json(),
        "the list shows the coupon as redeemed"
    );
}
backend_test!(issue_and_redeem_idempotent_flow);
