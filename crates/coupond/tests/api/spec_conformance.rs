//! What the server answers matches its OpenAPI description: every outcome of every
//! operation, on both backends, is a status the spec lists for it, with a body that
//! validates against the schema given for that status, no field the schema does not
//! name, and no API header (`Idempotent-Replayed`, `Retry-After`, `WWW-Authenticate`)
//! the spec does not document for that status. (`.ci/schemathesis` does the same with
//! generated requests; this runs in `cargo test`.)

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::backend_test;
use crate::helpers::*;

/// A small JSON Schema (2020-12, as OpenAPI 3.1 uses it) validator for what the spec
/// uses: `$ref`, `type` (one or a list), `enum`, `const`, `properties`, `required`,
/// `additionalProperties`, `items`, `oneOf`/`anyOf`/`allOf`, `minimum`/`maximum`,
/// `minLength`/`maxLength`, `format: date-time`. Stricter in one way: an object field
/// the schema does not name (and no `additionalProperties` allows) is reported, so that
/// an undocumented field is a mismatch too.
struct Validator<'a> {
    spec: &'a Value,
}

impl Validator<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = self
                    .spec
                    .pointer(r.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("{r} resolves to nothing"));
                self.resolve(target)
            }
            None => schema,
        }
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        self.check(schema, value, at, true, errors);
    }

    /// The fields an object of `schema` may have (`None`: any), `allOf` parts included.
    fn known_fields(&self, schema: &Value) -> Option<std::collections::BTreeSet<String>> {
        let schema = self.resolve(schema);
        match schema.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(_) => return None,
        }
        let mut known: std::collections::BTreeSet<String> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            known.extend(self.known_fields(part)?);
        }
        Some(known)
    }

    /// `strict`: report fields no part of the schema names (off inside an `allOf` part,
    /// whose siblings may name them).
    fn check(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        strict: bool,
        errors: &mut Vec<String>,
    ) {
        let schema = self.resolve(schema);
        if let Some(true) = schema.as_bool() {
            return;
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let matches = types.iter().any(|t| match *t {
                "null" => value.is_null(),
                "boolean" => value.is_boolean(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                _ => false,
            });
            if !matches {
                errors.push(format!("{at}: {value} is not of type {types:?}"));
                return;
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                errors.push(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        if let Some(c) = schema.get("const") {
            if c != value {
                errors.push(format!("{at}: {value} is not {c}"));
            }
        }
        for (keyword, must) in [("oneOf", 1usize), ("anyOf", 0)] {
            if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
                let passing = options
                    .iter()
                    .filter(|option| {
                        let mut e = Vec::new();
                        self.check(option, value, at, strict, &mut e);
                        e.is_empty()
                    })
                    .count();
                let ok = if must == 1 {
                    passing == 1
                } else {
                    passing >= 1
                };
                if !ok {
                    errors.push(format!(
                        "{at}: {value} matches {passing} of the {keyword} options"
                    ));
                }
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for option in all {
                self.check(option, value, at, false, errors);
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    errors.push(format!("{at}: {n} < minimum {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    errors.push(format!("{at}: {n} > maximum {max}"));
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    errors.push(format!("{at}: {s:?} is shorter than {min}"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    errors.push(format!("{at}: {s:?} is longer than {max}"));
                }
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && time::OffsetDateTime::parse(s, &Rfc3339).is_err()
            {
                errors.push(format!("{at}: {s:?} is not a date-time"));
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !object.contains_key(name) {
                        errors.push(format!("{at}: required field {name:?} is missing"));
                    }
                }
            }
            let additional = schema.get("additionalProperties");
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => {
                        self.validate(field_schema, field, &format!("{at}.{name}"), errors)
                    }
                    None => match additional {
                        Some(Value::Bool(false)) => errors.push(format!(
                            "{at}: field {name:?} is not allowed (additionalProperties: false)"
                        )),
                        Some(extra) if extra.is_object() => {
                            self.validate(extra, field, &format!("{at}.{name}"), errors)
                        }
                        _ => {}
                    },
                }
            }
            if strict {
                if let Some(known) = self.known_fields(schema) {
                    for name in object.keys().filter(|n| !known.contains(*n)) {
                        errors.push(format!(
                            "{at}: field {name:?} is not in the schema (undocumented)"
                        ));
                    }
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                self.validate(items, item, &format!("{at}[{i}]"), errors);
            }
        }
    }
}

/// Checks one exchange against the spec; returns what does not match.
fn check(spec: &Value, method: &str, path: &str, r: &TestResponse) -> Vec<String> {
    let what = format!("{} {path} -> {}", method.to_uppercase(), r.status.as_u16());
    let Some(operation) = spec["paths"].get(path).and_then(|p| p.get(method)) else {
        return vec![format!("{what}: the spec has no such operation")];
    };
    let status = r.status.as_u16().to_string();
    let Some(response) = operation["responses"]
        .get(&status)
        .or_else(|| operation["responses"].get("default"))
    else {
        return vec![format!(
            "{what}: status {status} is not documented (documented: {:?}); body {}",
            operation["responses"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
            r.text()
        )];
    };
    let mut errors = Vec::new();
    match response.get("content").and_then(Value::as_object) {
        Some(content) => {
            let ct = r.header("content-type").unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            match content.get(essence) {
                None => errors.push(format!(
                    "{what}: content-type {ct:?} is not documented ({:?})",
                    content.keys().collect::<Vec<_>>()
                )),
                Some(_) if essence != "application/json" => {}
                Some(media) => {
                    let body: Value = match serde_json::from_slice(&r.body) {
                        Ok(v) => v,
                        Err(e) => {
                            return vec![format!("{what}: body is not JSON ({e}): {}", r.text())]
                        }
                    };
                    let mut found = Vec::new();
                    Validator { spec }.validate(&media["schema"], &body, "body", &mut found);
                    errors.extend(
                        found
                            .into_iter()
                            .map(|e| format!("{what}: {e}; body {body}")),
                    );
                }
            }
        }
        None => {
            if !r.body.is_empty() {
                errors.push(format!("{what}: a body where the spec documents none"));
            }
        }
    }
    let documented = response
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| h.keys().map(|k| k.to_ascii_lowercase()).collect::<Vec<_>>())
        .unwrap_or_default();
    for header in ["idempotent-replayed", "retry-after", "www-authenticate"] {
        if let Some(value) = r.header(header) {
            if !documented.iter().any(|d| d == header) {
                errors.push(format!(
                    "{what}: header {header}: {value} is sent but not documented for {status}"
                ));
            }
            if header == "retry-after" && value.parse::<u32>().is_err() {
                errors.push(format!("{what}: Retry-After {value:?} is not an integer"));
            }
        }
    }
    errors
}

async fn every_answer_matches_the_spec(backend: Backend) {
    let spec: Value = serde_json::from_str(&coupond::http::openapi::spec_json()).expect("the spec");
    let app = TestApp::spawn_with(
        backend,
        |s| {
            s.not_found_limit = 2;
            s.body_limit = 4096;
        },
        std::sync::Arc::default(),
    )
    .await;
    let (_, service) = app
        .create_key("service", coupond::domain::Scope::Service)
        .await;
    let (_, read) = app.create_key("read", coupond::domain::Scope::Read).await;
    let service = app.client_with(Some(&service));
    let read = app.client_with(Some(&read));
    let anonymous = app.client_with(None);
    let mut exchanges: Vec<(&str, &str, TestResponse)> = Vec::new();
    let too_big = format!("{{\"name\": \"{}\"}}", "x".repeat(5000));

    // Batches.
    let percent = app
        .create_batch(Some("sc-b1"), &batch_with_limits(1, 1))
        .await;
    let batch = percent.json()["id"].as_i64().expect("id");
    let mut owner_only = json!({
        "name": "owner", "discount_type": "fixed", "amount": 500, "total_limit": 10,
        "expires_at": FAR_FUTURE, "redeem_policy": "owner_only",
    });
    let owned = app.create_batch(Some("sc-b2"), &owner_only).await;
    let owned_batch = owned.json()["id"].as_i64().expect("id");
    let soon = app
        .create_batch(Some("sc-b3"), &batch_expiring_in(2, 10, 5))
        .await;
    let soon_batch = soon.json()["id"].as_i64().expect("id");
    let expires = parse_utc(&soon.json()["expires_at"]);
    owner_only["name"] = json!("other");
    for r in [
        percent,
        owned,
        soon,
        app.create_batch(Some("sc-b1"), &batch_with_limits(1, 1))
            .await,
        app.create_batch(Some("sc-b1"), &owner_only).await,
        app.create_batch(Some("sc-b4"), &json!({"discount_type": "bogus"}))
            .await,
        app.create_batch(None, &seed_batch()).await,
        app.create_batch(Some(&"k".repeat(300)), &seed_batch())
            .await,
        anonymous.create_batch(Some("sc-b5"), &seed_batch()).await,
        service.create_batch(Some("sc-b6"), &seed_batch()).await,
        app.post_bytes(BATCHES, Some("sc-b7"), Some("text/plain"), "x")
            .await,
        app.post_bytes(
            BATCHES,
            Some("sc-b8"),
            Some("application/json"),
            too_big.clone(),
        )
        .await,
        app.post_bytes(BATCHES, Some("sc-b9"), Some("application/json"), "{")
            .await,
    ] {
        exchanges.push(("post", BATCHES, r));
    }

    // Issue.
    let issued = app.issue(batch, "u1", "sc-i1").await;
    let code = issued.json()["code"].as_str().expect("code").to_owned();
    let owned_code = app.issue_ok(owned_batch, "owner").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let soon_code = app.issue_ok(soon_batch, "u1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    for r in [
        issued,
        app.issue(batch, "u1", "sc-i1").await,
        app.issue(batch, "u1", "sc-i2").await,
        app.issue(batch, "u2", "sc-i3").await,
        app.issue(batch + 1000, "u1", "sc-i4").await,
        app.issue(batch + 1000, "u1", "sc-i4").await,
        app.issue(batch, "u3", "sc-i1").await,
        app.post_json(ISSUE, Some("sc-i5"), &json!({"batch_id": "x"}))
            .await,
        app.post_json(ISSUE, None, &json!({"batch_id": batch, "user_id": "u"}))
            .await,
        anonymous.issue(batch, "u1", "sc-i6").await,
        read.issue(batch, "u1", "sc-i7").await,
        service.issue(owned_batch, "owner2", "sc-i8").await,
        app.post_bytes(ISSUE, Some("sc-i9"), Some("text/plain"), "x")
            .await,
        app.post_bytes(
            ISSUE,
            Some("sc-i10"),
            Some("application/json"),
            too_big.clone(),
        )
        .await,
    ] {
        exchanges.push(("post", ISSUE, r));
    }

    // Redeem.
    for r in [
        app.redeem(&code, "o1", "u1", "sc-r1").await,
        app.redeem(&code, "o1", "u1", "sc-r1").await,
        app.redeem(&code, "o2", "u1", "sc-r2").await,
        service.redeem(&owned_code, "o3", "intruder", "sc-r3").await,
        service.redeem(&owned_code, "o3", "owner", "sc-r4").await,
        app.redeem(&code, "o9", "u1", "sc-r1").await,
        app.post_json(REDEEM, Some("sc-r5"), &json!({"code": 5}))
            .await,
        anonymous.redeem(&code, "o", "u1", "sc-r6").await,
        read.redeem(&code, "o", "u1", "sc-r7").await,
        app.post_bytes(REDEEM, Some("sc-r8"), Some("text/plain"), "x")
            .await,
        app.post_bytes(
            REDEEM,
            Some("sc-r13"),
            Some("application/json"),
            too_big.clone(),
        )
        .await,
        app.redeem("NOPE000000", "o", "guesser", "sc-r9").await,
        app.redeem("NOPE000001", "o", "guesser", "sc-r10").await,
        app.redeem("NOPE000002", "o", "guesser", "sc-r11").await,
        app.redeem("NOPE000000", "o", "guesser", "sc-r9").await,
    ] {
        exchanges.push(("post", REDEEM, r));
    }
    sleep_past(expires).await;
    exchanges.push((
        "post",
        REDEEM,
        app.redeem(&soon_code, "o", "u1", "sc-r12").await,
    ));
    exchanges.push(("post", ISSUE, app.issue(soon_batch, "u2", "sc-i11").await));

    // List and operations.
    for r in [
        app.list("").await,
        app.list("user_id=u1").await,
        app.list("user_id=nobody&status=issued").await,
        service.list("status=redeemed").await,
        read.list("status=expired").await,
        app.list("status=bogus").await,
        anonymous.list("").await,
    ] {
        exchanges.push(("get", LIST, r));
    }
    exchanges.push(("get", "/healthz", anonymous.get("/healthz").await));
    exchanges.push(("get", "/readyz", anonymous.get("/readyz").await));

    // Batch management, bulk codes and the coupon lifecycle.
    const BATCH: &str = "/v1/coupon-batches/{id}/";
    const ACTIVATE: &str = "/v1/coupon-batches/{id}/activate/";
    const DEACTIVATE: &str = "/v1/coupon-batches/{id}/deactivate/";
    const CODES: &str = "/v1/coupon-batches/{id}/codes/";
    const JOB: &str = "/v1/coupon-batches/{id}/codes/{job_id}/";
    const CSV: &str = "/v1/coupon-batches/{id}/codes.csv";
    const VALIDATE: &str = "/v1/coupons/validate/";
    const CANCEL: &str = "/v1/coupons/cancel/";
    const UNREDEEM: &str = "/v1/coupons/unredeem/";
    const COUPON: &str = "/v1/coupons/{code}/";
    const EVENTS: &str = "/v1/coupons/{code}/events/";
    let pool = app.new_batch(&batch_with_limits(100, 50)).await;
    let b = format!("/v1/coupon-batches/{pool}");
    let missing = format!("/v1/coupon-batches/{}", pool + 1000);
    let post = |client: &ApiClient, path: String, key: Option<&str>, body: Option<Value>| {
        let mut builder = client.request(reqwest::Method::POST, &path);
        if let Some(key) = key {
            builder = builder.header("idempotency-key", key);
        }
        if let Some(body) = body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let client = client.clone();
        async move { client.send(builder).await }
    };
    for r in [
        app.get(BATCHES).await,
        app.get("/v1/coupon-batches/?limit=1").await,
        read.get("/v1/coupon-batches/?active=true&name=welcome")
            .await,
        app.get("/v1/coupon-batches/?active=maybe").await,
        anonymous.get(BATCHES).await,
    ] {
        exchanges.push(("get", BATCHES, r));
    }
    for r in [
        app.get(&format!("{b}/")).await,
        app.get(&format!("{missing}/")).await,
        app.get("/v1/coupon-batches/abc/").await,
        anonymous.get(&format!("{b}/")).await,
    ] {
        exchanges.push(("get", BATCH, r));
    }
    for (template, action) in [(DEACTIVATE, "deactivate"), (ACTIVATE, "activate")] {
        let path = format!("{b}/{action}/");
        for r in [
            post(&app, path.clone(), Some(&format!("sc-{action}")), None).await,
            post(&app, path.clone(), Some(&format!("sc-{action}")), None).await,
            post(&app, path.clone(), Some(&format!("sc-{action}-2")), None).await,
            post(&app, path.clone(), None, None).await,
            post(
                &app,
                format!("{missing}/{action}/"),
                Some(&format!("sc-{action}-3")),
                None,
            )
            .await,
            post(
                &service,
                path.clone(),
                Some(&format!("sc-{action}-4")),
                None,
            )
            .await,
            post(
                &anonymous,
                path.clone(),
                Some(&format!("sc-{action}-5")),
                None,
            )
            .await,
        ] {
            exchanges.push(("post", template, r));
        }
    }
    let job = post(
        &app,
        format!("{b}/codes/"),
        Some("sc-job"),
        Some(json!({"count": 3})),
    )
    .await;
    let job_id = job.json()["id"].as_i64();
    for r in [
        job,
        post(
            &app,
            format!("{b}/codes/"),
            Some("sc-job"),
            Some(json!({"count": 3})),
        )
        .await,
        post(
            &app,
            format!("{b}/codes/"),
            Some("sc-job"),
            Some(json!({"count": 4})),
        )
        .await,
        post(
            &app,
            format!("{b}/codes/"),
            Some("sc-job-2"),
            Some(json!({"count": 0})),
        )
        .await,
        post(
            &app,
            format!("{missing}/codes/"),
            Some("sc-job-3"),
            Some(json!({"count": 1})),
        )
        .await,
        app.post_bytes(
            &format!("{b}/codes/"),
            Some("sc-job-4"),
            Some("text/plain"),
            "x",
        )
        .await,
        app.post_bytes(
            &format!("{b}/codes/"),
            Some("sc-job-5"),
            Some("application/json"),
            too_big.clone(),
        )
        .await,
        post(
            &service,
            format!("{b}/codes/"),
            Some("sc-job-6"),
            Some(json!({"count": 1})),
        )
        .await,
        post(
            &anonymous,
            format!("{b}/codes/"),
            Some("sc-job-7"),
            Some(json!({"count": 1})),
        )
        .await,
    ] {
        exchanges.push(("post", CODES, r));
    }
    let job_id = job_id.expect("the job's id");
    let job_path = format!("{b}/codes/{job_id}/");
    let done = eventually(std::time::Duration::from_secs(10), || {
        let app = &app;
        let job_path = &job_path;
        async move { app.get(job_path).await.json()["status"] != "running" }
    })
    .await;
    assert!(done, "the bulk-code job finished");
    for r in [
        app.get(&job_path).await,
        read.get(&job_path).await,
        app.get(&format!("{b}/codes/{}/", job_id + 1000)).await,
        anonymous.get(&job_path).await,
    ] {
        exchanges.push(("get", JOB, r));
    }
    for r in [
        app.get(&format!("{b}/codes.csv")).await,
        app.get(&format!("{missing}/codes.csv")).await,
        anonymous.get(&format!("{b}/codes.csv")).await,
    ] {
        exchanges.push(("get", CSV, r));
    }
    let fresh = app.issue_ok(pool, "v1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let to_cancel = app.issue_ok(pool, "v1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let to_unredeem = app.issue_ok(pool, "v1").await["code"]
        .as_str()
        .expect("code")
        .to_owned();
    assert_eq!(
        app.redeem(&to_unredeem, "ord-u", "v1", "sc-setup")
            .await
            .status,
        200
    );
    for r in [
        post(
            &app,
            VALIDATE.into(),
            None,
            Some(json!({"code": fresh, "user_id": "v1"})),
        )
        .await,
        post(
            &service,
            VALIDATE.into(),
            None,
            Some(json!({"code": fresh, "user_id": "v1", "order_amount": 10000})),
        )
        .await,
        post(
            &app,
            VALIDATE.into(),
            None,
            Some(json!({"code": "NOPE000009", "user_id": "v1"})),
        )
        .await,
        post(
            &app,
            VALIDATE.into(),
            None,
            Some(json!({"code": to_unredeem, "user_id": "v1"})),
        )
        .await,
        post(&app, VALIDATE.into(), None, Some(json!({"user_id": 5}))).await,
        post(
            &read,
            VALIDATE.into(),
            None,
            Some(json!({"code": fresh, "user_id": "v1"})),
        )
        .await,
        post(
            &anonymous,
            VALIDATE.into(),
            None,
            Some(json!({"code": fresh, "user_id": "v1"})),
        )
        .await,
    ] {
        exchanges.push(("post", VALIDATE, r));
    }
    for r in [
        post(
            &app,
            CANCEL.into(),
            Some("sc-c1"),
            Some(json!({"code": to_cancel, "reason": "test"})),
        )
        .await,
        post(
            &app,
            CANCEL.into(),
            Some("sc-c1"),
            Some(json!({"code": to_cancel, "reason": "test"})),
        )
        .await,
        post(
            &app,
            CANCEL.into(),
            Some("sc-c2"),
            Some(json!({"code": to_cancel})),
        )
        .await,
        post(
            &app,
            CANCEL.into(),
            Some("sc-c3"),
            Some(json!({"code": "NOPE000009"})),
        )
        .await,
        post(&app, CANCEL.into(), Some("sc-c4"), Some(json!({}))).await,
        post(
            &read,
            CANCEL.into(),
            Some("sc-c5"),
            Some(json!({"code": fresh})),
        )
        .await,
        post(
            &anonymous,
            CANCEL.into(),
            Some("sc-c6"),
            Some(json!({"code": fresh})),
        )
        .await,
    ] {
        exchanges.push(("post", CANCEL, r));
    }
    for r in [
        post(
            &app,
            UNREDEEM.into(),
            Some("sc-u1"),
            Some(json!({"code": to_unredeem, "order_id": "ord-other"})),
        )
        .await,
        post(
            &app,
            UNREDEEM.into(),
            Some("sc-u2"),
            Some(json!({"code": to_unredeem, "order_id": "ord-u"})),
        )
        .await,
        post(
            &app,
            UNREDEEM.into(),
            Some("sc-u2"),
            Some(json!({"code": to_unredeem, "order_id": "ord-u"})),
        )
        .await,
        post(
            &app,
            UNREDEEM.into(),
            Some("sc-u3"),
            Some(json!({"code": "NOPE000009", "order_id": "o"})),
        )
        .await,
        post(
            &app,
            UNREDEEM.into(),
            Some("sc-u4"),
            Some(json!({"code": to_unredeem})),
        )
        .await,
        post(
            &anonymous,
            UNREDEEM.into(),
            Some("sc-u5"),
            Some(json!({"code": fresh, "order_id": "o"})),
        )
        .await,
    ] {
        exchanges.push(("post", UNREDEEM, r));
    }
    for (template, suffix) in [(COUPON, ""), (EVENTS, "events/")] {
        for r in [
            app.get(&format!("/v1/coupons/{to_unredeem}/{suffix}"))
                .await,
            read.get(&format!("/v1/coupons/{to_cancel}/{suffix}")).await,
            app.get(&format!("/v1/coupons/{}/{suffix}", fresh.to_lowercase()))
                .await,
            app.get(&format!("/v1/coupons/NOPE000009/{suffix}")).await,
            anonymous
                .get(&format!("/v1/coupons/{fresh}/{suffix}"))
                .await,
        ] {
            exchanges.push(("get", template, r));
        }
    }
    for r in [
        app.list(&format!("batch_id={pool}&limit=2")).await,
        app.list("created_after=2000-01-01T00:00:00Z&status=cancelled")
            .await,
        app.list("limit=0").await,
    ] {
        exchanges.push(("get", LIST, r));
    }

    // Every documented status of every operation was seen at least once.
    let mut seen = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    for (method, path, r) in &exchanges {
        seen.insert((*method, *path, r.status.as_u16()));
        errors.extend(check(&spec, method, path, r));
    }
    // The seed's operations: every documented status. The others: their success, 401,
    // and 404 where they document one.
    let seed_operations = [
        ("post", BATCHES),
        ("post", ISSUE),
        ("post", REDEEM),
        ("get", LIST),
        ("get", "/healthz"),
        ("get", "/readyz"),
    ];
    let mut unseen = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            let seed = seed_operations.contains(&(method.as_str(), path.as_str()));
            for status in operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
            {
                let code: u16 = status.parse().expect("a status");
                // Outcomes a healthy server under test never gives: a database that is
                // down or busy (see operability.rs), or a lost in-flight race.
                if code == 503 {
                    continue;
                }
                // Every scope may read, so a GET is never 403.
                if method == "get" && code == 403 {
                    continue;
                }
                if !(seed || (200..300).contains(&code) || code == 401 || code == 404) {
                    continue;
                }
                if !seen.contains(&(method.as_str(), path.as_str(), code)) {
                    unseen.push(format!("{method} {path} {status}"));
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} answers do not match the spec:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(
        unseen.is_empty(),
        "documented but not exercised here: {unseen:?}"
    );
}
backend_test!(every_answer_matches_the_spec);

#[test]
fn the_validator_catches_what_it_should() {
    let spec: Value = serde_json::from_str(&coupond::http::openapi::spec_json()).expect("the spec");
    let coupon = &spec["components"]["schemas"]["CouponView"];
    let good = json!({
        "id": 1, "code": "ABCDE12345", "status": "issued", "issued_to": "u1",
        "issued_at": "2030-01-01T00:00:00Z", "redeemed_by": null, "redeemed_at": null,
        "order_id": null,
    });
    let errors = |value: &Value| {
        let mut e = Vec::new();
        Validator { spec: &spec }.validate(coupon, value, "body", &mut e);
        e
    };
    assert_eq!(errors(&good), Vec::<String>::new());
    for (change, expected) in [
        (json!({"id": "1"}), "is not of type"),
        (json!({"status": "lost"}), "is not one of"),
        (json!({"issued_at": "yesterday"}), "is not a date-time"),
        (json!({"surprise": 1}), "undocumented"),
    ] {
        let mut bad = good.clone();
        for (k, v) in change.as_object().expect("object") {
            bad[k] = v.clone();
        }
        let found = errors(&bad);
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "{change}: {found:?}"
        );
    }
    // allOf: the fields of every part are documented, and only those.
    let detail = &spec["components"]["schemas"]["CouponDetail"];
    let mut full = good.clone();
    full["batch_id"] = json!(3);
    full["created_at"] = json!("2030-01-01T00:00:00Z");
    let mut e = Vec::new();
    Validator { spec: &spec }.validate(detail, &full, "body", &mut e);
    assert_eq!(e, Vec::<String>::new());
    full["surprise"] = json!(true);
    let mut e = Vec::new();
    Validator { spec: &spec }.validate(detail, &full, "body", &mut e);
    assert!(e.iter().any(|e| e.contains("\"surprise\"")), "{e:?}");
    assert_eq!(e.len(), 1, "{e:?}");
    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("code");
    assert!(errors(&missing)
        .iter()
        .any(|e| e.contains("required field")));
}

/// NUL and other control characters in every string a request can carry: never a
/// server error (PostgreSQL refuses NUL in text), always an answer the spec documents.
async fn control_characters_anywhere_get_a_documented_answer(backend: Backend) {
    let spec: Value = serde_json::from_str(&coupond::http::openapi::spec_json()).expect("the spec");
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let mut errors = Vec::new();
    for bad in ["a%00b", "%00", "a%01b", "a%7Fb", "a%0Ab"] {
        let gets = [
            (
                "/v1/coupon-batches/",
                format!("/v1/coupon-batches/?name={bad}"),
            ),
            (
                "/v1/coupon-batches/",
                format!("/v1/coupon-batches/?cursor={bad}"),
            ),
            (
                "/v1/coupon-batches/",
                format!("/v1/coupon-batches/?active={bad}"),
            ),
            ("/v1/coupons/", format!("/v1/coupons/?user_id={bad}")),
            ("/v1/coupons/", format!("/v1/coupons/?status={bad}")),
            ("/v1/coupons/", format!("/v1/coupons/?cursor={bad}")),
            ("/v1/coupons/", format!("/v1/coupons/?batch_id={bad}")),
            ("/v1/coupons/", format!("/v1/coupons/?created_after={bad}")),
            ("/v1/coupons/{code}/", format!("/v1/coupons/{bad}/")),
            (
                "/v1/coupons/{code}/events/",
                format!("/v1/coupons/{bad}/events/"),
            ),
            (
                "/v1/coupon-batches/{id}/",
                format!("/v1/coupon-batches/{bad}/"),
            ),
        ];
        for (template, path) in gets {
            let r = app.get(&path).await;
            for e in check(&spec, "get", template, &r) {
                errors.push(format!("GET {path}: {e}"));
            }
        }
    }
    for bad in ["a\u{0}b", "\u{0}", "a\u{1}b", "a\u{7f}b"] {
        let posts = [
            (ISSUE, json!({"batch_id": batch, "user_id": bad})),
            (
                REDEEM,
                json!({"code": bad, "order_id": "o", "user_id": "u1"}),
            ),
            (
                REDEEM,
                json!({"code": code, "order_id": bad, "user_id": "u1"}),
            ),
            (
                REDEEM,
                json!({"code": code, "order_id": "o", "user_id": bad}),
            ),
            (
                "/v1/coupons/validate/",
                json!({"code": bad, "user_id": "u1"}),
            ),
            (
                "/v1/coupons/validate/",
                json!({"code": code, "user_id": bad}),
            ),
            ("/v1/coupons/cancel/", json!({"code": bad})),
            ("/v1/coupons/cancel/", json!({"code": code, "reason": bad})),
            (
                "/v1/coupons/unredeem/",
                json!({"code": bad, "order_id": "o"}),
            ),
            (
                "/v1/coupons/unredeem/",
                json!({"code": code, "order_id": bad}),
            ),
            (BATCHES, {
                let mut b = seed_batch();
                b["name"] = json!(bad);
                b
            }),
            (BATCHES, {
                let mut b = seed_batch();
                b["code_prefix"] = json!(bad);
                b
            }),
            (BATCHES, {
                let mut b = seed_batch();
                b["currency"] = json!(bad);
                b
            }),
        ];
        for (path, body) in posts {
            let r = app.post_json(path, Some(&new_key("ctl")), &body).await;
            for e in check(&spec, "post", path, &r) {
                errors.push(format!("POST {path} {body}: {e}"));
            }
            if r.status.is_server_error() {
                errors.push(format!("POST {path} {body}: {r:?}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} answers are server errors or not in the spec:\n{}",
        errors.len(),
        errors.join("\n")
    );
}
backend_test!(control_characters_anywhere_get_a_documented_answer);
