//! The OpenAPI description: a snapshot, so that it never changes without a reviewed
//! `.snap` diff, and the rules every operation of it follows. That it matches what the
//! server answers is checked against live servers in `tests/api/spec_conformance.rs`
//! and by `.ci/schemathesis`.
//!
//! After a deliberate change of the API: `cargo insta review` (or run this test with
//! `INSTA_UPDATE=always`) and commit the new `tests/snapshots/openapi__openapi.json.snap`.

use std::collections::BTreeSet;

use serde_json::Value;

fn spec() -> Value {
    serde_json::from_str(&coupond::http::openapi::spec_json()).expect("the spec is JSON")
}

/// `(path, method, operation)` for every operation.
fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                out.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    out
}

#[test]
fn the_spec_does_not_drift_silently() {
    let json = coupond::http::openapi::spec_json();
    insta::assert_snapshot!("openapi.json", json);
}

#[test]
fn the_spec_is_openapi_3_1() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["info"]["title"].is_string() && spec["info"]["version"].is_string());
    assert!(!operations(&spec).is_empty());
    // 3.1: nullable is written as a type list, never the 3.0 `nullable` keyword.
    let text = spec.to_string();
    assert!(
        !text.contains("\"nullable\""),
        "3.0's `nullable` in a 3.1 spec"
    );
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.insert(v.as_str().expect("$ref is a string").to_owned());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let spec = spec();
    let mut found = BTreeSet::new();
    refs(&spec, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(
            spec.pointer(pointer).is_some(),
            "{reference} resolves to nothing"
        );
    }
}

#[test]
fn operation_ids_are_unique() {
    let spec = spec();
    let mut seen = BTreeSet::new();
    for (path, method, operation) in operations(&spec) {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(seen.insert(id.to_owned()), "operationId {id} repeats");
    }
}

/// POSTs that only look (and so take no Idempotency-Key).
const READ_ONLY_POSTS: [&str; 1] = ["/v1/coupons/validate/"];

fn schema_ref(response: &Value) -> Option<&str> {
    response["content"]["application/json"]["schema"]["$ref"].as_str()
}

#[test]
fn every_api_operation_documents_its_key_and_errors() {
    let spec = spec();
    let bearer = &spec["components"]["securitySchemes"]["api_key"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    for (path, method, operation) in operations(&spec) {
        let what = format!("{method} {path}");
        let responses = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: no responses"));
        for (status, response) in responses {
            let code: u16 = status
                .parse()
                .unwrap_or_else(|_| panic!("{what}: response {status} is not a status"));
            assert!(response["description"].is_string(), "{what} {status}");
            if code >= 400 && path.starts_with("/v1/") {
                assert_eq!(
                    schema_ref(response),
                    Some("#/components/schemas/ErrorEnvelope"),
                    "{what} {status}: errors are the envelope"
                );
            }
            if code == 429 || (code == 503 && path.starts_with("/v1/")) {
                assert!(
                    response["headers"]["Retry-After"].is_object(),
                    "{what} {status}: Retry-After"
                );
            }
        }
        if path.starts_with("/v1/") {
            assert_eq!(
                operation["security"],
                serde_json::json!([{"api_key": []}]),
                "{what}: needs the key"
            );
            assert!(responses.contains_key("401"), "{what}: no 401");
            // Every scope may read, so only writes can be refused for their scope.
            assert_eq!(
                responses.contains_key("403"),
                method == "post",
                "{what}: 403 documented exactly on writes"
            );
            assert!(
                responses["401"]["headers"]["WWW-Authenticate"].is_object(),
                "{what}: 401 documents WWW-Authenticate"
            );
        } else {
            assert!(
                operation.get("security").is_none()
                    || operation["security"] == serde_json::json!([]),
                "{what}: needs no key"
            );
        }
        if method == "post" {
            let params = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let key = params.iter().find(|p| p["name"] == "Idempotency-Key");
            if READ_ONLY_POSTS.contains(&path.as_str()) {
                assert!(key.is_none(), "{what} changes nothing and needs no key");
            } else {
                let key = key.unwrap_or_else(|| panic!("{what}: no Idempotency-Key"));
                assert_eq!(key["in"], "header", "{what}");
                assert_eq!(key["required"], true, "{what}");
                assert_eq!(key["schema"]["minLength"], 1, "{what}");
                assert_eq!(key["schema"]["maxLength"], 255, "{what}");
                for status in ["400", "409"] {
                    assert!(responses.contains_key(status), "{what}: no {status}");
                }
            }
            if let Some(body) = operation.get("requestBody") {
                assert_eq!(body["required"], true, "{what}");
                assert!(
                    body["content"]["application/json"].is_object(),
                    "{what}: a JSON body"
                );
                for status in ["400", "413", "415"] {
                    assert!(responses.contains_key(status), "{what}: no {status}");
                }
            }
        }
    }
}
