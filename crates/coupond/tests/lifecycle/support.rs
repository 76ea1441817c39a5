//! Small helpers for the lifecycle endpoints, on top of the shared harness
//! (`../api/helpers.rs`, which this binary includes unchanged).

// Not every test binary module uses every helper.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

pub const VALIDATE: &str = "/v1/coupons/validate/";
pub const CANCEL: &str = "/v1/coupons/cancel/";
pub const UNREDEEM: &str = "/v1/coupons/unredeem/";

/// The fields of the extended coupon (cancel, unredeem, GET, validate's `coupon`).
pub const DETAIL_FIELDS: [&str; 12] = [
    "id",
    "code",
    "status",
    "issued_to",
    "issued_at",
    "redeemed_by",
    "redeemed_at",
    "order_id",
    "batch_id",
    "order_amount",
    "discount_amount",
    "created_at",
];

/// The fields of a batch as coupond answers it (create, GET, list, (de)activate).
pub const BATCH_VIEW_FIELDS: [&str; 19] = [
    "id",
    "name",
    "discount_type",
    "amount",
    "percent",
    "per_user_limit",
    "total_limit",
    "expires_at",
    "redeem_policy",
    "starts_at",
    "min_order_amount",
    "max_discount",
    "currency",
    "active",
    "code_length",
    "code_prefix",
    "code_alphabet",
    "stats",
    "created_at",
];

pub const EVENT_FIELDS: [&str; 6] = ["kind", "at", "api_key_id", "user_id", "order_id", "reason"];
pub const JOB_FIELDS: [&str; 7] = [
    "id",
    "batch_id",
    "requested",
    "generated",
    "status",
    "created_at",
    "finished_at",
];

/// `seed_batch()` with `fields` set on top (a `null` removes a field).
pub fn batch_body(fields: Value) -> Value {
    let mut body = seed_batch();
    for (k, v) in fields.as_object().expect("fields is an object") {
        if v.is_null() {
            body.as_object_mut().expect("object").remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

/// A fixed-amount batch: `amount` off, `total_limit` coupons, `per_user_limit` each.
pub fn fixed_batch(amount: i64, total_limit: i64, per_user_limit: i64) -> Value {
    batch_body(json!({
        "name": "Fixed",
        "discount_type": "fixed",
        "amount": amount,
        "percent": null,
        "total_limit": total_limit,
        "per_user_limit": per_user_limit,
    }))
}

/// The code of a coupon (issue, redeem or detail view).
pub fn code_of(coupon: &Value) -> String {
    coupon["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {coupon}"))
        .to_owned()
}

/// Stats of a batch from a batch view.
pub fn stats_of(batch: &Value) -> (i64, i64, i64, i64) {
    let s = &batch["stats"];
    assert_eq!(
        keys(s),
        set(&["issued", "redeemed", "cancelled", "remaining"]),
        "stats fields: {batch}"
    );
    let n = |f: &str| {
        s[f].as_i64()
            .unwrap_or_else(|| panic!("stats.{f}: {batch}"))
    };
    (n("issued"), n("redeemed"), n("cancelled"), n("remaining"))
}

#[track_caller]
pub fn assert_detail_shape(coupon: &Value) {
    assert_eq!(
        keys(coupon),
        set(&DETAIL_FIELDS),
        "extended coupon fields: {coupon}"
    );
    parse_utc(&coupon["created_at"]);
    assert!(coupon["batch_id"].as_i64().is_some(), "batch_id: {coupon}");
}

#[track_caller]
pub fn assert_batch_shape(batch: &Value) {
    assert_eq!(
        keys(batch),
        set(&BATCH_VIEW_FIELDS),
        "batch fields: {batch}"
    );
    stats_of(batch);
}

/// The part of a response that a comparison of two refusals cares about.
pub fn outcome(r: &TestResponse) -> (u16, String) {
    let code = if r.status.is_success() {
        "-".to_owned()
    } else {
        r.error_code()
    };
    (r.status.as_u16(), code)
}

/// The lifecycle endpoints, as calls on a client (a trait, so that helpers added to
/// the shared harness later cannot clash with these).
pub(crate) trait Lifecycle {
    async fn post_new(&self, path: &str, body: &Value) -> TestResponse;
    async fn redeem_amount(
        &self,
        code: &str,
        order_id: &str,
        user: &str,
        order_amount: Option<i64>,
    ) -> TestResponse;
    async fn redeem_ok(&self, code: &str, order_id: &str, user: &str) -> Value;
    async fn validate(&self, code: &str, user: &str, order_amount: Option<i64>) -> TestResponse;
    async fn cancel(&self, code: &str, reason: Option<&str>) -> TestResponse;
    async fn unredeem(&self, code: &str, order_id: &str, reason: Option<&str>) -> TestResponse;
    async fn set_active(&self, batch: i64, active: bool) -> TestResponse;
    async fn set_active_ok(&self, batch: i64, active: bool) -> Value;
    async fn get_batch(&self, batch: i64) -> Value;
    async fn batch_stats(&self, batch: i64) -> (i64, i64, i64, i64);
    async fn coupon(&self, code: &str) -> Value;
    async fn events(&self, code: &str) -> Vec<Value>;
    async fn event_kinds(&self, code: &str) -> Vec<String>;
    async fn start_codes(&self, batch: i64, count: i64) -> TestResponse;
    async fn job(&self, batch: i64, job: i64) -> Value;
    async fn wait_job(&self, batch: i64, job: i64, limit: Duration) -> Value;
    async fn generate_codes(&self, batch: i64, count: i64) -> Value;
    async fn export_csv(&self, batch: i64) -> TestResponse;
    async fn csv_rows(&self, batch: i64) -> Vec<Vec<String>>;
    async fn walk(&self, path: &str, query: &str, limit: usize) -> (Vec<Value>, Vec<usize>);
}

impl Lifecycle for ApiClient {
    /// POSTs `body` with a fresh idempotency key.
    async fn post_new(&self, path: &str, body: &Value) -> TestResponse {
        self.post_json(path, Some(&new_key("lc")), body).await
    }

    async fn redeem_amount(
        &self,
        code: &str,
        order_id: &str,
        user: &str,
        order_amount: Option<i64>,
    ) -> TestResponse {
        let mut body = json!({"code": code, "order_id": order_id, "user_id": user});
        if let Some(amount) = order_amount {
            body["order_amount"] = json!(amount);
        }
        self.post_new(REDEEM, &body).await
    }

    /// A redeem that must succeed; returns the response body.
    async fn redeem_ok(&self, code: &str, order_id: &str, user: &str) -> Value {
        let r = self.redeem(code, order_id, user, &new_key("redeem")).await;
        assert_eq!(r.status, 200, "redeeming {code}: {r:?}");
        r.json()
    }

    /// `POST /v1/coupons/validate/` without an idempotency key.
    async fn validate(&self, code: &str, user: &str, order_amount: Option<i64>) -> TestResponse {
        let mut body = json!({"code": code, "user_id": user});
        if let Some(amount) = order_amount {
            body["order_amount"] = json!(amount);
        }
        self.post_json(VALIDATE, None, &body).await
    }

    async fn cancel(&self, code: &str, reason: Option<&str>) -> TestResponse {
        let mut body = json!({"code": code});
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        self.post_new(CANCEL, &body).await
    }

    async fn unredeem(&self, code: &str, order_id: &str, reason: Option<&str>) -> TestResponse {
        let mut body = json!({"code": code, "order_id": order_id});
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        self.post_new(UNREDEEM, &body).await
    }

    async fn set_active(&self, batch: i64, active: bool) -> TestResponse {
        let verb = if active { "activate" } else { "deactivate" };
        self.post_new(&format!("{BATCHES}{batch}/{verb}/"), &json!({}))
            .await
    }

    /// (De)activates a batch, which must succeed; returns the batch view.
    async fn set_active_ok(&self, batch: i64, active: bool) -> Value {
        let r = self.set_active(batch, active).await;
        assert_eq!(
            r.status, 200,
            "setting batch {batch} active={active}: {r:?}"
        );
        let body = r.json();
        assert_eq!(body["active"], json!(active), "{body}");
        body
    }

    async fn get_batch(&self, batch: i64) -> Value {
        let r = self.get(&format!("{BATCHES}{batch}/")).await;
        assert_eq!(r.status, 200, "GET batch {batch}: {r:?}");
        r.json()
    }

    async fn batch_stats(&self, batch: i64) -> (i64, i64, i64, i64) {
        stats_of(&self.get_batch(batch).await)
    }

    /// `GET /v1/coupons/{code}/`, which must succeed.
    async fn coupon(&self, code: &str) -> Value {
        let r = self.get(&format!("{LIST}{code}/")).await;
        assert_eq!(r.status, 200, "GET coupon {code}: {r:?}");
        let body = r.json();
        assert_detail_shape(&body);
        body
    }

    /// The events of a coupon, which must exist.
    async fn events(&self, code: &str) -> Vec<Value> {
        let r = self.get(&format!("{LIST}{code}/events/")).await;
        assert_eq!(r.status, 200, "GET events of {code}: {r:?}");
        let body = r.json();
        assert_eq!(keys(&body), set(&["items"]), "{body}");
        let items = body["items"].as_array().expect("items").clone();
        for e in &items {
            assert_eq!(keys(e), set(&EVENT_FIELDS), "event fields: {e}");
            parse_utc(&e["at"]);
        }
        items
    }

    /// The kinds of a coupon's events, in order.
    async fn event_kinds(&self, code: &str) -> Vec<String> {
        self.events(code)
            .await
            .iter()
            .map(|e| e["kind"].as_str().expect("kind").to_owned())
            .collect()
    }

    async fn start_codes(&self, batch: i64, count: i64) -> TestResponse {
        self.post_new(
            &format!("{BATCHES}{batch}/codes/"),
            &json!({ "count": count }),
        )
        .await
    }

    async fn job(&self, batch: i64, job: i64) -> Value {
        let r = self.get(&format!("{BATCHES}{batch}/codes/{job}/")).await;
        assert_eq!(r.status, 200, "GET job {job}: {r:?}");
        let body = r.json();
        assert_eq!(keys(&body), set(&JOB_FIELDS), "job fields: {body}");
        body
    }

    /// Waits until a job says `done` (polling every 50 ms, at most `limit`); returns it.
    async fn wait_job(&self, batch: i64, job: i64, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let body = self.job(batch, job).await;
            if body["status"] == "done" {
                return body;
            }
            assert_eq!(body["status"], "running", "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} not done within {limit:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pre-generates `count` codes of `batch` and waits for the job; returns the job.
    async fn generate_codes(&self, batch: i64, count: i64) -> Value {
        let r = self.start_codes(batch, count).await;
        assert_eq!(r.status, 202, "starting a code job: {r:?}");
        let job = r.json()["id"].as_i64().expect("job id");
        let done = self.wait_job(batch, job, Duration::from_secs(120)).await;
        assert_eq!(done["generated"], json!(count), "{done}");
        done
    }

    /// `GET /v1/coupon-batches/{id}/codes.csv` (generous timeout: it may be large).
    async fn export_csv(&self, batch: i64) -> TestResponse {
        self.send(
            self.request(reqwest::Method::GET, &format!("{BATCHES}{batch}/codes.csv"))
                .timeout(Duration::from_secs(600)),
        )
        .await
    }

    /// The rows of a batch's CSV (after the header line, which is checked).
    async fn csv_rows(&self, batch: i64) -> Vec<Vec<String>> {
        let r = self.export_csv(batch).await;
        assert_eq!(r.status, 200, "CSV export: {}", r.status);
        parse_csv(&r.body)
    }

    /// Walks `GET <path>?<query>&limit=<limit>` page by page along `next_cursor`;
    /// returns the items and the pages' sizes. Checks that `next_cursor` is there
    /// exactly when a page is full.
    async fn walk(&self, path: &str, query: &str, limit: usize) -> (Vec<Value>, Vec<usize>) {
        let mut items = Vec::new();
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("limit={limit}");
            if !query.is_empty() {
                q = format!("{query}&{q}");
            }
            if let Some(c) = &cursor {
                q = format!("{q}&cursor={c}");
            }
            let r = self.get(&format!("{path}?{q}")).await;
            assert_eq!(r.status, 200, "GET {path}?{q}: {r:?}");
            let body = r.json();
            let page = body["items"].as_array().expect("items").clone();
            let next = body.get("next_cursor");
            if page.len() == limit {
                assert!(
                    next.is_some_and(Value::is_string),
                    "a full page has next_cursor: {path}?{q}"
                );
            } else {
                assert_eq!(
                    keys(&body),
                    set(&["items"]),
                    "a page that is not full has no next_cursor: {path}?{q}"
                );
            }
            pages.push(page.len());
            items.extend(page);
            match next {
                Some(c) => cursor = Some(c.as_str().expect("cursor").to_owned()),
                None => return (items, pages),
            }
            assert!(pages.len() < 100_000, "the walk does not end");
        }
    }
}

/// Splits the CSV export (`code,status,issued_to,created_at`) into rows, checking the
/// header. Fields are simple here (no quoting needed for the values tests use).
pub fn parse_csv(body: &[u8]) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(body).expect("CSV is UTF-8");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("code,status,issued_to,created_at"),
        "CSV header"
    );
    lines
        .map(|line| line.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

pub fn ids_of(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

pub fn codes_of(items: &[Value]) -> BTreeSet<String> {
    items.iter().map(code_of).collect()
}

/// A client of `app` with a new key of `scope`, and the key's id.
pub async fn client_of(app: &TestApp, scope: coupond::domain::Scope) -> (ApiClient, i64) {
    let (id, secret) = app.create_key(&format!("{scope:?}-key"), scope).await;
    (app.client_with(Some(&secret)), id)
}
