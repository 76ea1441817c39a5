//! Operability that needs a process of its own: Prometheus metrics (the recorder is
//! process-wide, so this binary runs no other in-process server, and its metrics tests
//! take turns), the JSON request log of the real binary, and `coupond serve --help`
//! against the README's configuration table.

#[path = "api/helpers.rs"]
mod helpers;

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use helpers::*;

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// The metrics tests of both backends share the process's recorder: one at a time.
static RECORDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A sample's name and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// Parses the Prometheus text format.
fn parse_metrics(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                (name.to_owned(), parse_labels(body))
            }
        };
        out.insert((name, labels), value);
    }
    out
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.trim().is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} is quoted: {body}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name.trim().trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `after - before` for every series of `name` that changed.
fn deltas(
    before: &BTreeMap<Series, f64>,
    after: &BTreeMap<Series, f64>,
    name: &str,
) -> BTreeMap<BTreeMap<String, String>, f64> {
    after
        .iter()
        .filter(|((n, _), _)| n == name)
        .filter_map(|((n, l), v)| {
            let was = before.get(&(n.clone(), l.clone())).copied().unwrap_or(0.0);
            (*v != was).then(|| (l.clone(), v - was))
        })
        .collect()
}

/// The total change of a counter without labels (0 when it never appeared).
fn delta(before: &BTreeMap<Series, f64>, after: &BTreeMap<Series, f64>, name: &str) -> f64 {
    deltas(before, after, name).values().sum()
}

async fn scrape(metrics: &ApiClient) -> (String, BTreeMap<Series, f64>) {
    let r = metrics.get("/metrics").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{r:?}"
    );
    let text = r.text();
    let samples = parse_metrics(&text);
    (text, samples)
}

/// A server with its metrics on a listener of their own, and a client of that listener
/// holding the server's admin key.
async fn spawn_with_metrics_listener(backend: Backend) -> (TestApp, ApiClient) {
    let (app, metrics_addr) = TestApp::spawn_with_metrics(backend, |s| {
        s.metrics_bind = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let metrics = ApiClient {
        addr: metrics_addr,
        base_url: format!("http://{metrics_addr}"),
        ..app.client()
    };
    (app, metrics)
}

async fn metrics_count_a_known_sequence_exactly(backend: Backend) {
    let _turn = RECORDER.lock().await;
    let (app, metrics) = spawn_with_metrics_listener(backend).await;
    assert_ne!(metrics.addr.port(), app.addr.port(), "its own listener");
    let (_, read) = app
        .create_key("prometheus", coupond::domain::Scope::Read)
        .await;
    let metrics = ApiClient {
        api_key: Some(read.clone()),
        ..metrics
    };
    let anonymous_metrics = ApiClient {
        api_key: None,
        ..metrics.clone()
    };

    // Only for callers with a key, and only on its own port.
    let r = anonymous_metrics.get("/metrics").await;
    r.assert_error(401, "UNAUTHENTICATED");
    assert!(r.header("www-authenticate").is_some(), "{r:?}");
    ApiClient {
        api_key: Some("cpd_unknown_key_000000000000000".into()),
        ..metrics.clone()
    }
    .get("/metrics")
    .await
    .assert_error(401, "UNAUTHENTICATED");
    metrics.get("/other").await.assert_error(404, "NOT_FOUND");
    app.get("/metrics").await.assert_error(404, "NOT_FOUND");

    let (_, before) = scrape(&metrics).await;

    // The known sequence.
    let batch = app.new_batch(&batch_with_limits(10, 1)).await;
    let first = app.issue(batch, "u1", "m-i1").await;
    assert_eq!(first.status, 200, "{first:?}");
    let code = assert_code(&first.json()["code"]);
    assert!(app.issue(batch, "u1", "m-i1").await.replayed());
    app.issue(batch, "u1", "m-i2")
        .await
        .assert_error(409, "PER_USER_LIMIT_REACHED");
    app.issue(batch, "u2", "m-i1")
        .await
        .assert_error(409, "IDEMPOTENCY_KEY_BODY_MISMATCH");
    assert_eq!(app.redeem(&code, "o1", "u1", "m-r1").await.status, 200);
    app.redeem(&code, "o2", "u1", "m-r2")
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    app.redeem("NOPE000000", "o", "u1", "m-r3")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    assert!(app.redeem("NOPE000000", "o", "u1", "m-r3").await.replayed());
    app.issue(batch + 1000, "u1", "m-i3")
        .await
        .assert_error(404, "BATCH_NOT_FOUND");
    assert_eq!(app.list("").await.status, 200);
    app.client_with(None)
        .list("")
        .await
        .assert_error(401, "UNAUTHENTICATED");
    app.client_with(Some(&read))
        .issue(batch, "u3", "m-i4")
        .await
        .assert_error(403, "FORBIDDEN");
    app.post_json(ISSUE, None, &json!({"batch_id": batch, "user_id": "u4"}))
        .await
        .assert_error(400, "IDEMPOTENCY_KEY_REQUIRED");
    app.get("/nope").await.assert_error(404, "NOT_FOUND");
    assert_eq!(app.client_with(None).get("/healthz").await.status, 200);
    app.send(app.request(Method::DELETE, LIST))
        .await
        .assert_error(405, "METHOD_NOT_ALLOWED");

    let (text, after) = scrape(&metrics).await;
    let http = |method: &str, route: &str, status: &str| {
        labels(&[("method", method), ("route", route), ("status", status)])
    };
    let expected_http: BTreeMap<_, f64> = [
        (http("POST", BATCHES, "201"), 1.0),
        (http("POST", ISSUE, "200"), 2.0),
        (http("POST", ISSUE, "409"), 2.0),
        (http("POST", ISSUE, "404"), 1.0),
        (http("POST", ISSUE, "403"), 1.0),
        (http("POST", ISSUE, "400"), 1.0),
        (http("POST", REDEEM, "200"), 1.0),
        (http("POST", REDEEM, "409"), 1.0),
        (http("POST", REDEEM, "404"), 2.0),
        (http("GET", LIST, "200"), 1.0),
        (http("GET", LIST, "401"), 1.0),
        (http("GET", "unmatched", "404"), 1.0),
        (http("GET", "/healthz", "200"), 1.0),
        (http("DELETE", LIST, "405"), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        deltas(&before, &after, "coupond_http_requests_total"),
        expected_http,
        "requests by method, route and status"
    );
    // The latency histogram saw the same requests.
    assert_eq!(
        deltas(
            &before,
            &after,
            "coupond_http_request_duration_seconds_count"
        ),
        expected_http,
        "latency samples by method, route and status"
    );
    let infinite: BTreeMap<_, f64> = deltas(
        &before,
        &after,
        "coupond_http_request_duration_seconds_bucket",
    )
    .into_iter()
    .filter(|(l, _)| l.get("le").map(String::as_str) == Some("+Inf"))
    .map(|(mut l, v)| {
        l.remove("le");
        (l, v)
    })
    .collect();
    assert_eq!(
        infinite, expected_http,
        "every sample is in the +Inf bucket"
    );
    let sums = deltas(&before, &after, "coupond_http_request_duration_seconds_sum");
    for l in expected_http.keys() {
        assert!(
            sums.get(l).is_some_and(|s| *s > 0.0),
            "a latency sum for {l:?}"
        );
    }

    assert_eq!(delta(&before, &after, "coupond_batches_created_total"), 1.0);
    assert_eq!(delta(&before, &after, "coupond_coupons_issued_total"), 1.0);
    assert_eq!(
        delta(&before, &after, "coupond_coupons_redeemed_total"),
        1.0
    );
    assert_eq!(
        deltas(&before, &after, "coupond_idempotency_replays_total"),
        [(labels(&[("source", "memory")]), 2.0)]
            .into_iter()
            .collect(),
        "both replays answered from this process's memory"
    );
    assert_eq!(
        delta(&before, &after, "coupond_idempotency_mismatches_total"),
        1.0
    );
    assert_eq!(
        deltas(&before, &after, "coupond_rejections_total"),
        [
            (labels(&[("code", "PER_USER_LIMIT_REACHED")]), 1.0),
            (labels(&[("code", "COUPON_ALREADY_REDEEMED")]), 1.0),
            (labels(&[("code", "COUPON_NOT_FOUND")]), 1.0),
            (labels(&[("code", "BATCH_NOT_FOUND")]), 1.0),
        ]
        .into_iter()
        .collect(),
        "refusals by code, replays not counted again"
    );
    for name in [
        "coupond_idempotency_inflight_waits_total",
        "coupond_idempotency_in_progress_total",
    ] {
        assert_eq!(delta(&before, &after, name), 0.0, "{name}");
    }

    // The database waits were measured, by the kind of wait this backend has.
    let kind = match backend {
        Backend::Sqlite => "writer",
        Backend::Postgres => "pool",
    };
    let waits = deltas(&before, &after, "coupond_db_wait_seconds_count");
    assert!(
        waits
            .get(&labels(&[("kind", kind)]))
            .is_some_and(|n| *n >= 1.0),
        "db waits of kind {kind}: {waits:?}"
    );
    let backend_name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    for state in ["idle", "in_use"] {
        let gauge = after.get(&(
            "coupond_db_connections".to_owned(),
            labels(&[("backend", backend_name), ("state", state)]),
        ));
        assert!(
            gauge.is_some_and(|v| *v >= 0.0),
            "coupond_db_connections{{state={state}}}"
        );
    }
    for (name, kind) in [
        ("coupond_http_requests_total", "counter"),
        ("coupond_http_request_duration_seconds", "histogram"),
        ("coupond_coupons_issued_total", "counter"),
        ("coupond_rejections_total", "counter"),
        ("coupond_db_wait_seconds", "histogram"),
        ("coupond_db_connections", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} is a {kind}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has help");
    }
}

backend_test!(metrics_count_a_known_sequence_exactly);

/// A key retried at a process that did not run it (another server behind the load
/// balancer, or this one after a restart) is read from the database once; its retries
/// after that are answered from memory.
async fn replays_read_from_the_database_are_remembered(backend: Backend) {
    let _turn = RECORDER.lock().await;
    let (app, metrics) = spawn_with_metrics_listener(backend).await;
    let other = app
        .spawn_sibling(
            |_| {},
            std::sync::Arc::new(coupond::faults::Faults::default()),
        )
        .await;
    let batch = app.new_batch(&batch_with_limits(10, 1)).await;
    let first = app.issue(batch, "u1", "src-1").await;
    assert_eq!(first.status, 200, "{first:?}");

    let (_, before) = scrape(&metrics).await;
    for _ in 0..3 {
        let again = other.issue(batch, "u1", "src-1").await;
        assert!(again.replayed(), "{again:?}");
        assert_eq!(again.body, first.body);
    }
    // A different body under the key is refused from memory too, and counts no replay.
    other
        .issue(batch, "u2", "src-1")
        .await
        .assert_error(409, "IDEMPOTENCY_KEY_BODY_MISMATCH");
    let (_, after) = scrape(&metrics).await;
    assert_eq!(
        deltas(&before, &after, "coupond_idempotency_replays_total"),
        [
            (labels(&[("source", "database")]), 1.0),
            (labels(&[("source", "memory")]), 2.0),
        ]
        .into_iter()
        .collect(),
        "the first retry at the other server reads the database, the rest do not"
    );
    other.stop().await;
    app.stop().await;
}

backend_test!(replays_read_from_the_database_are_remembered);

// ---------------------------------------------------------------------------------------
// The JSON log
// ---------------------------------------------------------------------------------------

/// A UUID as tower-http's `MakeRequestUuid` makes them.
fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == vec![8, 4, 4, 4, 12]
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && groups[2].starts_with('4')
}

/// A field of a log line: on the line itself, or on its span.
fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    match line.get(name) {
        Some(v) => v,
        None => &line["span"][name],
    }
}

async fn the_json_log_has_one_line_per_request(backend: Backend) {
    let db = FreshDatabase::create(backend).await;
    let admin = "cpd_log_test_admin_key_0123456789";
    let server = ChildServer::start(
        &[
            "--database-url",
            db.url(),
            "--db-max-connections",
            "2",
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        &[("COUPOND_BOOTSTRAP_ADMIN_KEY", admin)],
    )
    .await;
    let app = server.client_with(Some(admin));
    let anonymous = server.client_with(None);
    let batch = {
        let r = app.create_batch(Some("log-b"), &seed_batch()).await;
        assert_eq!(r.status, 201, "{r:?}");
        (r, Method::POST, BATCHES, None::<&str>)
    };
    let batch_id = batch.0.json()["id"].as_i64().expect("id");
    let issue_body = json!({"batch_id": batch_id, "user_id": "u1"}).to_string();
    let issue_with_id = app
        .send(
            app.request(Method::POST, ISSUE)
                .header("idempotency-key", "log-i")
                .header("content-type", "application/json")
                .header("x-request-id", "client-chosen-1")
                .body(issue_body.clone()),
        )
        .await;
    // (response, method, route as logged, the id the client sent)
    let sent: Vec<(TestResponse, Method, &str, Option<&str>)> = vec![
        batch,
        (issue_with_id, Method::POST, ISSUE, Some("client-chosen-1")),
        (
            app.send(
                app.request(Method::POST, ISSUE)
                    .header("idempotency-key", "log-i")
                    .header("content-type", "application/json")
                    .body(issue_body),
            )
            .await,
            Method::POST,
            ISSUE,
            None,
        ),
        (app.list("").await, Method::GET, LIST, None),
        (anonymous.list("").await, Method::GET, LIST, None),
        (
            app.post_json(ISSUE, None, &json!({})).await,
            Method::POST,
            ISSUE,
            None,
        ),
        (
            anonymous
                .send(
                    anonymous
                        .request(Method::GET, "/nope")
                        .header("x-request-id", "client-chosen-2"),
                )
                .await,
            Method::GET,
            "unmatched",
            Some("client-chosen-2"),
        ),
        (
            app.send(app.request(Method::DELETE, LIST)).await,
            Method::DELETE,
            LIST,
            None,
        ),
        (
            anonymous.get("/healthz").await,
            Method::GET,
            "/healthz",
            None,
        ),
        (anonymous.get("/readyz").await, Method::GET, "/readyz", None),
    ];
    let expected_statuses = [201, 200, 200, 200, 401, 400, 404, 405, 200, 200];
    let out = server.stop().await;
    assert!(out.exit.success(), "{out:?}");

    // Every line is a JSON object.
    let lines: Vec<Value> = out
        .stderr
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l:?}"))
        })
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let requests: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "request")
        .filter(|l| {
            !field(l, "request_id")
                .as_str()
                .is_some_and(|id| id.starts_with(PROBE_REQUEST_ID_PREFIX))
        })
        .collect();
    assert_eq!(
        requests.len(),
        sent.len(),
        "one request line per request: {requests:#?}"
    );

    for ((r, method, route, chosen), status) in sent.iter().zip(expected_statuses) {
        assert_eq!(r.status.as_u16(), status, "{r:?}");
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id: {r:?}"));
        match chosen {
            Some(chosen) => assert_eq!(id, *chosen, "the client's id is echoed"),
            None => assert!(is_uuid_v4(id), "a generated id is a UUID: {id:?}"),
        }
        let mine: Vec<&&Value> = requests
            .iter()
            .filter(|l| field(l, "request_id") == id)
            .collect();
        assert_eq!(mine.len(), 1, "exactly one line for {id}: {requests:#?}");
        let line = mine[0];
        assert_eq!(field(line, "method"), method.as_str(), "{line}");
        assert_eq!(field(line, "route"), *route, "{line}");
        assert_eq!(field(line, "status"), status, "{line}");
        let latency = field(line, "latency_ms")
            .as_f64()
            .unwrap_or_else(|| panic!("latency_ms is a number: {line}"));
        assert!((0.0..60_000.0).contains(&latency), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
}

backend_test!(the_json_log_has_one_line_per_request);

// ---------------------------------------------------------------------------------------
// Configuration: `serve --help` and the README
// ---------------------------------------------------------------------------------------

/// The rows of README.md's configuration table: (variable, flag, default).
fn readme_settings() -> Vec<(String, String, String)> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .expect("README.md");
    let section = readme
        .split("## Configuration")
        .nth(1)
        .expect("a Configuration section");
    let section = section.split("\n## ").next().expect("the section");
    let rows: Vec<_> = section
        .lines()
        .filter(|l| l.starts_with("| `COUPOND_"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect();
            (cells[0].clone(), cells[1].clone(), cells[2].clone())
        })
        .collect();
    assert!(rows.len() >= 10, "the table was read: {rows:?}");
    rows
}

/// `coupond serve --help`, as (flag, variable, default) per option.
async fn serve_help() -> (String, Vec<(String, String, Option<String>)>) {
    let help = run_coupond(&["serve", "--help"], &[]).await;
    assert!(help.success, "{help:?}");
    let mut options = Vec::new();
    let mut flag: Option<String> = None;
    for line in help.stdout.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with("-h") {
            flag = trimmed
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_owned());
        }
        if let Some(start) = line.find("[env: ") {
            let rest = &line[start + "[env: ".len()..];
            let var: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let default = line.find("[default: ").map(|d| {
                line[d + "[default: ".len()..]
                    .split(']')
                    .next()
                    .expect("a closing bracket")
                    .to_owned()
            });
            options.push((flag.clone().expect("a flag above"), var, default));
        }
    }
    (help.stdout, options)
}

#[tokio::test]
async fn serve_help_lists_every_variable_of_the_readme() {
    let (help, options) = serve_help().await;
    for (var, flag, _) in readme_settings() {
        let option = options.iter().find(|(_, v, _)| *v == var);
        let Some((help_flag, _, _)) = option else {
            panic!("{var} (README) is not in `coupond serve --help`:\n{help}");
        };
        assert_eq!(*help_flag, flag, "{var}: the README's flag");
    }
}

#[tokio::test]
async fn the_readme_documents_every_serve_setting_with_its_default() {
    let (_, options) = serve_help().await;
    let readme = readme_settings();
    let mut problems = Vec::new();
    for (flag, var, default) in &options {
        match readme.iter().find(|(v, _, _)| v == var) {
            None => problems.push(format!(
                "{var} ({flag}) is a setting of `coupond serve` but not in README.md's \
                 configuration table"
            )),
            Some((_, _, documented)) => {
                // "none" and "off": no default value.
                let documented =
                    (documented != "none" && documented != "off").then(|| documented.clone());
                if documented != *default {
                    problems.push(format!(
                        "{var}: README says default {documented:?}, --help {default:?}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_metrics_parser_reads_labels() {
    let parsed = parse_metrics(
        "# TYPE x counter\nx{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\nz_bucket{le=\"+Inf\"} 1\n",
    );
    assert_eq!(
        parsed.get(&("x".into(), labels(&[("a", "1"), ("b", "q\"uote")]))),
        Some(&3.0)
    );
    assert_eq!(parsed.get(&("y".into(), BTreeMap::new())), Some(&2.5));
    assert_eq!(
        parsed.get(&("z_bucket".into(), labels(&[("le", "+Inf")]))),
        Some(&1.0)
    );
}
