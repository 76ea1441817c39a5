//! SQL is built only with bound parameters.
//!
//! * `sql_injection_through_every_field`: quotes, comment markers, statement separators,
//!   `LIKE` wildcards and SQL fragments go through every field a client controls (batch
//!   name, discount type, policy, dates, ids, user ids, order ids, codes, the
//!   `Idempotency-Key`, the list's `user_id` and `status`, the bearer token). Each must be
//!   either refused with a 4xx envelope or stored and echoed back verbatim, match only
//!   itself, and leave every other row alone.
//! * `sql_is_built_from_constants_only`: a scan of `crates/coupond/src`: every `format!`
//!   that builds SQL may interpolate only constants (upper-case names: column lists) and a
//!   short list of code-chosen values, never a request's data.

mod inprocess;

use inprocess::{runtime, Backend, Server};
use reqwest::Method;
use serde_json::{json, Value};

const PAYLOADS: &[&str] = &[
    "'",
    "''",
    "\"",
    "`",
    "\\",
    "\\'",
    "' OR '1'='1",
    "' OR 1=1 --",
    "\" OR \"\"=\"",
    "'; DROP TABLE coupons; --",
    "Robert'); DROP TABLE coupon_batches;--",
    "1; DELETE FROM idempotency_records",
    "' UNION SELECT key_hash, key_prefix FROM api_keys --",
    "%",
    "_",
    "%' --",
    "$1",
    "?1",
    ":name",
    "/* comment */",
    "';SELECT pg_sleep(5);--",
    "' AND sqlite_version() --",
    "E'\\x27'",
];

fn injection(backend: Backend) {
    let rt = runtime();
    let server = rt.block_on(Server::start(backend));
    rt.block_on(async {
        // A canary that no injected query may touch.
        let canary_batch = server
            .post(
                "/v1/coupon-batches/",
                "canary-batch",
                &json!({"name": "canary", "discount_type": "fixed", "amount": 7,
                        "per_user_limit": 100, "total_limit": 1000,
                        "expires_at": "2099-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(canary_batch.status, 201);
        let canary_id = canary_batch.json().expect("json")["id"]
            .as_i64()
            .expect("id");
        let canary = server
            .post(
                "/v1/coupons/issue/",
                "canary-coupon",
                &json!({"batch_id": canary_id, "user_id": "canary"}),
            )
            .await;
        assert_eq!(canary.status, 200);
        let canary_code = canary.json().expect("json")["code"]
            .as_str()
            .expect("code")
            .to_owned();

        let mut failures = Vec::new();
        let mut fail = |what: String| failures.push(what);
        for (i, p) in PAYLOADS.iter().enumerate() {
            // Batch fields: the name is stored verbatim; the rest must be refused.
            let named = server
                .post(
                    "/v1/coupon-batches/",
                    &format!("inj-batch-{i}"),
                    &json!({"name": p, "discount_type": "fixed", "amount": 1,
                            "per_user_limit": 5, "total_limit": 50,
                            "expires_at": "2099-01-01T00:00:00Z"}),
                )
                .await;
            let batch = match named.status {
                201 => {
                    let v = named.json().expect("json");
                    if v["name"] != json!(p) {
                        fail(format!("batch name {p:?} came back as {}", v["name"]));
                    }
                    v["id"].as_i64()
                }
                400 if p.trim().is_empty() => None,
                s => {
                    fail(format!("batch name {p:?}: {s} {}", named.text()));
                    None
                }
            };
            for (field, value) in [
                ("discount_type", json!(p)),
                ("redeem_policy", json!(p)),
                ("expires_at", json!(p)),
                ("total_limit", json!(p)),
                ("amount", json!(p)),
            ] {
                let mut body = json!({"name": "x", "discount_type": "fixed", "amount": 1,
                                      "total_limit": 5, "expires_at": "2099-01-01T00:00:00Z"});
                body[field] = value;
                let r = server
                    .post("/v1/coupon-batches/", &format!("inj-{field}-{i}"), &body)
                    .await;
                if r.status != 400 || r.check_envelope().as_deref() != Ok("VALIDATION") {
                    fail(format!("{field} = {p:?}: {} {}", r.status, r.text()));
                }
            }
            // batch_id as a string: refused.
            let r = server
                .post(
                    "/v1/coupons/issue/",
                    &format!("inj-batchid-{i}"),
                    &json!({"batch_id": p, "user_id": "u"}),
                )
                .await;
            if r.status != 400 {
                fail(format!("batch_id = {p:?}: {} {}", r.status, r.text()));
            }
            // user_id: stored verbatim, and the list finds exactly that coupon.
            let Some(batch) = batch.or(Some(canary_id)) else {
                continue;
            };
            let user = format!("{p}-{i}");
            let issued = server
                .post(
                    "/v1/coupons/issue/",
                    &format!("inj-user-{i}"),
                    &json!({"batch_id": batch, "user_id": user}),
                )
                .await;
            if issued.status != 200 {
                fail(format!(
                    "user_id {user:?}: {} {}",
                    issued.status,
                    issued.text()
                ));
                continue;
            }
            let coupon = issued.json().expect("json");
            if coupon["issued_to"] != json!(user) {
                fail(format!(
                    "user_id {user:?} came back as {}",
                    coupon["issued_to"]
                ));
            }
            let code = coupon["code"].as_str().unwrap_or_default().to_owned();
            let query = serde_urlencoded::to_string([("user_id", user.as_str())]).expect("query");
            let list = server.get(&format!("/v1/coupons/?{query}")).await;
            let items = list
                .json()
                .map(|v| v["items"].clone())
                .unwrap_or(Value::Null);
            let codes: Vec<&str> = items
                .as_array()
                .map(|a| a.iter().filter_map(|c| c["code"].as_str()).collect())
                .unwrap_or_default();
            if list.status != 200 || codes != [code.as_str()] {
                fail(format!("list user_id={user:?}: {} {codes:?}", list.status));
            }
            // The payload alone as a list filter matches nothing (no user is named so).
            let bare = serde_urlencoded::to_string([("user_id", *p)]).expect("query");
            let list = server.get(&format!("/v1/coupons/?{bare}")).await;
            let n = list
                .json()
                .and_then(|v| v["items"].as_array().map(Vec::len))
                .unwrap_or(usize::MAX);
            if !(list.status == 200 && n == 0 || list.status == 400) {
                fail(format!(
                    "list user_id={p:?}: {} with {n} items",
                    list.status
                ));
            }
            let status = serde_urlencoded::to_string([("status", *p)]).expect("query");
            let list = server.get(&format!("/v1/coupons/?{status}")).await;
            if list.status != 400 {
                fail(format!("list status={p:?}: {}", list.status));
            }
            // order_id: stored verbatim. code: an injected code finds nothing.
            let redeemed = server
                .post(
                    "/v1/coupons/redeem/",
                    &format!("inj-order-{i}"),
                    &json!({"code": code, "order_id": format!("{p}-{i}"), "user_id": user}),
                )
                .await;
            let order = redeemed.json().map(|v| v["order_id"].clone());
            if redeemed.status != 200 || order != Some(json!(format!("{p}-{i}"))) {
                fail(format!(
                    "order_id {p:?}: {} {}",
                    redeemed.status,
                    redeemed.text()
                ));
            }
            let candidates = [
                p.to_string(),
                format!("{canary_code}{p}"),
                format!("{p}{canary_code}"),
            ];
            for (j, candidate) in candidates.into_iter().enumerate() {
                let r = server
                    .post(
                        "/v1/coupons/redeem/",
                        &format!("inj-code-{i}-{j}"),
                        &json!({"code": candidate, "order_id": "o", "user_id": "attacker"}),
                    )
                    .await;
                let code = r.check_envelope();
                let ok = matches!(
                    (r.status, code.as_deref()),
                    (404, Ok("COUPON_NOT_FOUND")) | (400, Ok("VALIDATION"))
                );
                if !ok {
                    fail(format!("code {candidate:?}: {} {}", r.status, r.text()));
                }
            }
            // The Idempotency-Key header (visible ASCII only, so payloads with spaces are
            // sent without them): a key like any other, replayed, scoped to itself.
            let key: String = p.chars().filter(|c| c.is_ascii_graphic()).collect();
            if !key.is_empty() {
                let key = format!("{key}{i}");
                let body = json!({"batch_id": canary_id, "user_id": format!("k{i}")});
                let first = server.post("/v1/coupons/issue/", &key, &body).await;
                let again = server.post("/v1/coupons/issue/", &key, &body).await;
                if first.status != 200 || !again.replayed || again.body != first.body {
                    fail(format!(
                        "Idempotency-Key {key:?}: {} then {} (replayed {})",
                        first.status, again.status, again.replayed
                    ));
                }
            }
            // The bearer token.
            let r = server
                .send(
                    server
                        .http
                        .request(Method::GET, format!("{}/v1/coupons/", server.base))
                        .header("authorization", format!("Bearer {}", p.replace(' ', ""))),
                )
                .await;
            if !(r.status == 401 && r.check_envelope().as_deref() == Ok("UNAUTHENTICATED")) {
                fail(format!("bearer {p:?}: {} {}", r.status, r.text()));
            }
        }
        // The canary is untouched: still there, still issued, the only coupon of its user.
        let list = server.get("/v1/coupons/?user_id=canary").await;
        let items = list.json().expect("json")["items"].clone();
        let ok = items.as_array().is_some_and(|a| {
            a.len() == 1 && a[0]["code"] == json!(canary_code) && a[0]["status"] == "issued"
        });
        if !ok {
            fail(format!("the canary changed: {items}"));
        }
        // Every table is still there and holds what the requests above made of it.
        let all = server.get("/v1/coupons/").await;
        if all.status != 200 {
            fail(format!("list after the payloads: {}", all.status));
        }
        assert!(
            failures.is_empty(),
            "{} problem(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

fn sql_injection_through_every_field(backend: Backend) {
    injection(backend);
}

both_backends!(sql_injection_through_every_field);

/// Interpolations allowed in SQL built with `format!`, besides upper-case constants: each
/// is chosen by the code, never taken from a request.
const ALLOWED: &[(&str, &str)] = &[
    ("by.column()", "PurgeBy's fixed column name"),
    ("column", "a fixed column name chosen by the code"),
    ("mode", "a checkpoint mode literal"),
    ("limit", "an integer"),
    ("counter", "a fixed column name chosen by the code"),
    ("u", "a `?N` placeholder made by the query builder"),
];

const SQL_WORDS: &[&str] = &[
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE ",
    " FROM ",
    " WHERE ",
    "VALUES",
    "PRAGMA ",
    " ORDER BY",
    " LIMIT",
    "RETURNING",
    " SET ",
    " AND ",
    " OR ",
];

/// The `format!` calls of `source` as (line, literal, args).
fn format_calls(source: &str) -> Vec<(usize, String, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = source.as_bytes();
    let mut from = 0;
    while let Some(at) = source[from..].find("format!(") {
        let start = from + at;
        from = start + 8;
        let line = source[..start].lines().count();
        let mut i = from;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        // The literal: "..." (with escapes) or r"..." / r#"..."#.
        let (literal, mut j) = if source[i..].starts_with('"') {
            let mut j = i + 1;
            let mut lit = String::new();
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                lit.push(bytes[j] as char);
                j += 1;
            }
            (lit, j + 1)
        } else if source[i..].starts_with('r') {
            let hashes = source[i + 1..].chars().take_while(|c| *c == '#').count();
            let open = i + 1 + hashes + 1;
            let close = format!("\"{}", "#".repeat(hashes));
            match source[open..].find(&close) {
                Some(end) => (
                    source[open..open + end].to_owned(),
                    open + end + close.len(),
                ),
                None => continue,
            }
        } else {
            continue;
        };
        // The arguments, up to the closing parenthesis.
        let mut args = Vec::new();
        let mut depth = 0;
        let mut current = String::new();
        let mut in_str = false;
        while j < bytes.len() {
            let c = bytes[j] as char;
            if in_str {
                current.push(c);
                if c == '\\' {
                    j += 1;
                    if j < bytes.len() {
                        current.push(bytes[j] as char);
                    }
                } else if c == '"' {
                    in_str = false;
                }
            } else {
                match c {
                    '"' => {
                        in_str = true;
                        current.push(c);
                    }
                    '(' | '[' | '{' => {
                        depth += 1;
                        current.push(c);
                    }
                    ')' | ']' | '}' if depth == 0 => break,
                    ')' | ']' | '}' => {
                        depth -= 1;
                        current.push(c);
                    }
                    ',' if depth == 0 => {
                        if !current.trim().is_empty() {
                            args.push(current.trim().to_owned());
                        }
                        current.clear();
                    }
                    _ => current.push(c),
                }
            }
            j += 1;
        }
        if !current.trim().is_empty() {
            args.push(current.trim().to_owned());
        }
        out.push((line, literal, args));
    }
    out
}

/// The expressions a format literal interpolates, given its positional arguments.
fn interpolations(literal: &str, args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut positional = 0;
    let chars: Vec<char> = literal.chars().collect();
    let mut k = 0;
    while k < chars.len() {
        if chars[k] == '{' {
            if chars.get(k + 1) == Some(&'{') {
                k += 2;
                continue;
            }
            let end = chars[k..]
                .iter()
                .position(|c| *c == '}')
                .map_or(chars.len(), |e| k + e);
            let inner: String = chars[k + 1..end].iter().collect();
            let name = inner.split(':').next().unwrap_or("").trim().to_owned();
            // `?{n}` / `${n}`: the number of a bound parameter, whatever computes it.
            let placeholder = k > 0 && matches!(chars[k - 1], '?' | '$');
            if placeholder {
                if name.is_empty() {
                    positional += 1;
                }
            } else if name.is_empty() {
                out.push(args.get(positional).cloned().unwrap_or_default());
                positional += 1;
            } else if let Ok(n) = name.parse::<usize>() {
                out.push(args.get(n).cloned().unwrap_or_default());
            } else {
                // A named argument `name = expr` or a captured variable.
                let named = args.iter().find_map(|a| {
                    let (k, v) = a.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().to_owned())
                });
                out.push(named.unwrap_or(name));
            }
            k = end + 1;
        } else {
            if chars[k] == '}' && chars.get(k + 1) == Some(&'}') {
                k += 1;
            }
            k += 1;
        }
    }
    out
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sql_is_built_from_constants_only() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut sql_formats = 0;
    let mut bad = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read");
        for (line, literal, args) in format_calls(&source) {
            let upper = literal.to_ascii_uppercase();
            if !SQL_WORDS.iter().any(|w| literal.contains(w)) || upper.starts_with("HTTP") {
                continue;
            }
            sql_formats += 1;
            for expr in interpolations(&literal, &args) {
                let constant = !expr.is_empty()
                    && expr
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !constant && !ALLOWED.iter().any(|(e, _)| *e == expr) {
                    bad.push(format!(
                        "{}:{line}: SQL interpolates `{expr}`: bind it as a parameter, or if the \
                         code chooses it, add it to ALLOWED with the reason",
                        file.strip_prefix(&src).unwrap_or(file).display()
                    ));
                }
            }
        }
    }
    assert!(
        sql_formats >= 10,
        "found only {sql_formats} SQL format! calls; is the scanner broken?"
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_scanner_sees_interpolated_request_data() {
    let source = r#"
        let sql = format!("SELECT {COLUMNS} FROM coupons WHERE code = '{code}'");
        let other = format!(
            "UPDATE coupons SET order_id = '{}' WHERE id = {}",
            request.order_id,
            id
        );
        let bound = format!(" ORDER BY id DESC LIMIT ?{}", values.len());
    "#;
    let calls = format_calls(source);
    assert_eq!(calls.len(), 3);
    assert!(interpolations(&calls[2].1, &calls[2].2).is_empty());
    assert_eq!(
        interpolations(&calls[0].1, &calls[0].2),
        ["COLUMNS", "code"]
    );
    assert_eq!(
        interpolations(&calls[1].1, &calls[1].2),
        ["request.order_id", "id"]
    );
}
