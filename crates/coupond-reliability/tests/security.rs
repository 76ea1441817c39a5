//! Security checks against the real binary:
//!
//! * API keys are never written anywhere in plain text: not in the server's logs (at
//!   `trace`, JSON, with good, unknown and revoked keys used), not in `coupond keys list`,
//!   not in the database (every value of every table, and for SQLite the raw bytes of the
//!   file, its WAL and shared memory). Only the 12-character display prefix is kept.
//! * No cross-key replay: two API keys using the same `Idempotency-Key` get two
//!   independent executions, each replaying only its own answer.
//! * The metrics listener answers only callers with a valid API key, and is not on the
//!   API's port. The admin pages (`/admin/`) are not reachable without credentials.

use std::process::Command;
use std::time::Duration;

use coupond_bench::client::Client;
use coupond_reliability::db::{Backend, Database};
use coupond_reliability::server::{free_port, ServerProc, ServerSpec};
use coupond_reliability::{admin_key, backend_tests, bin, figures, random_tag};
use reqwest::Method;
use serde_json::{json, Value};

/// Characters of a key coupond keeps in clear (`cpd_` + 8), to tell keys apart in lists.
const DISPLAY_PREFIX: usize = 12;

/// `coupond keys <args>` on the test's database; its stdout.
fn keys_cli(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(bin::coupond().expect("coupond binary"))
        .arg("keys")
        .arg("--database-url")
        .arg(db_url)
        .args(args)
        .env("COUPOND_LOG", "trace")
        .output()
        .expect("running coupond keys");
    assert!(
        out.status.success(),
        "coupond keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn create_key(db_url: &str, scope: &str) -> (String, i64) {
    let out = keys_cli(
        db_url,
        &[
            "create",
            "--name",
            &format!("sec-{scope}"),
            "--scope",
            scope,
        ],
    );
    let secret = out
        .lines()
        .rev()
        .find(|l| l.starts_with("cpd_"))
        .expect("the key on its own line")
        .trim()
        .to_owned();
    let id = out
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .expect("the key's id");
    (secret, id)
}

fn client(server: &ServerProc, key: &str) -> Client {
    Client::new(&server.base_url(), Some(key), 4, Duration::from_secs(10)).expect("client")
}

/// Where the part of `secret` beyond its display prefix appears in `haystack`.
fn leaks(haystack: &str, secret: &str) -> bool {
    haystack.contains(&secret[DISPLAY_PREFIX..])
}

async fn api_keys_never_in_plain_text(backend: Backend) {
    let db = Database::create(backend).await.expect("database");
    let admin = admin_key();
    let metrics_port = free_port().expect("port");
    let spec = ServerSpec::new("secrets", &db, &admin)
        .env("COUPOND_LOG", "trace")
        .env("COUPOND_LOG_FORMAT", "json")
        .env("COUPOND_METRICS_BIND", &format!("127.0.0.1:{metrics_port}"));
    let mut server = ServerProc::start(spec).await.expect("starting coupond");
    let (service, _) = create_key(&db.url, "service");
    let (revoked, revoked_id) = create_key(&db.url, "read");
    let unknown = format!("cpd_{}{}", random_tag(), "Zz9".repeat(10));

    // Use every key, the good ones successfully, the others refused.
    let tag = random_tag();
    let c_admin = client(&server, &admin);
    let batch = c_admin
        .post_expect(
            "/v1/coupon-batches/",
            &format!("sec-{tag}"),
            &serde_json::to_vec(
                &json!({"name": "sec", "discount_type": "fixed", "amount": 1,
                "total_limit": 100, "expires_at": "2099-01-01T00:00:00Z"}),
            )
            .expect("json"),
            reqwest::StatusCode::CREATED,
        )
        .await
        .expect("batch");
    let batch: Value = serde_json::from_slice(&batch.body).expect("json");
    let c_service = client(&server, &service);
    let issued = c_service
        .send(
            Method::POST,
            "/v1/coupons/issue/",
            Some(&format!("sec-{tag}-i")),
            Some(
                &serde_json::to_vec(&json!({"batch_id": batch["id"], "user_id": "u"}))
                    .expect("json"),
            ),
        )
        .await
        .expect("issue");
    assert_eq!(issued.status, 200, "{}", issued.body_text());
    let read = client(&server, &revoked)
        .send(Method::GET, "/v1/coupons/?user_id=u", None, None)
        .await
        .expect("list");
    assert_eq!(read.status, 200);
    keys_cli(&db.url, &["revoke", &revoked_id.to_string()]);
    let mut refused_revoked = false;
    for _ in 0..50 {
        let a = client(&server, &revoked)
            .send(Method::GET, "/v1/coupons/?user_id=u", None, None)
            .await
            .expect("list");
        if a.status == 401 {
            refused_revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused_revoked, "a revoked key still worked after 5 s");
    let wrong = client(&server, &unknown)
        .send(Method::GET, "/v1/coupons/?user_id=u", None, None)
        .await
        .expect("list");
    assert_eq!(wrong.status, 401);
    // The metrics page, with each of them.
    let http = reqwest::Client::new();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut metrics_text = String::new();
    for key in [&admin, &service, &revoked, &unknown] {
        if let Ok(r) = http.get(&metrics_url).bearer_auth(key).send().await {
            metrics_text.push_str(&r.text().await.unwrap_or_default());
        }
    }
    let list = keys_cli(&db.url, &["list"]);
    server.stop(Duration::from_secs(10)).await.expect("stop");

    let log = server.log_text();
    let dump = db.dump_text().await.expect("dumping the database");
    let mut raw = String::new();
    for file in db.raw_files() {
        raw.push_str(&String::from_utf8_lossy(
            &std::fs::read(&file).expect("read"),
        ));
    }
    let mut found = Vec::new();
    for (name, secret) in [
        ("bootstrap admin key", &admin),
        ("service key", &service),
        ("revoked key", &revoked),
        ("unknown key", &unknown),
    ] {
        for (place, text) in [
            ("server log", &log),
            ("keys list", &list),
            ("database rows", &dump),
            ("database files", &raw),
            ("metrics page", &metrics_text),
        ] {
            if leaks(text, secret) {
                found.push(format!("{name} in the {place}"));
            }
        }
    }
    figures::record(
        &format!("security-secrets-{}", backend.name()),
        &json!({"test": "api_keys_never_in_plain_text", "backend": backend.name(),
                "log_bytes": log.len(), "database_bytes_searched": dump.len() + raw.len(),
                "keys_checked": 4, "leaks": found.len()}),
    );
    assert!(
        log.len() > 1000,
        "the trace log is suspiciously short ({} bytes)",
        log.len()
    );
    // The search covers what it should: the keys' display prefixes are in the rows.
    assert!(
        dump.contains(&service[..DISPLAY_PREFIX]),
        "the database dump does not even contain the keys' prefixes"
    );
    assert!(found.is_empty(), "API keys found in plain text: {found:?}");
}

backend_tests!(api_keys_never_in_plain_text);

async fn no_cross_key_replay(backend: Backend) {
    let db = Database::create(backend).await.expect("database");
    let admin = admin_key();
    let mut server = ServerProc::start(ServerSpec::new("cross-key", &db, &admin))
        .await
        .expect("starting coupond");
    let (service, _) = create_key(&db.url, "service");
    let c_admin = client(&server, &admin);
    let c_service = client(&server, &service);
    let tag = random_tag();
    let batch = c_admin
        .post_expect(
            "/v1/coupon-batches/",
            &format!("x-{tag}"),
            &serde_json::to_vec(&json!({"name": "x", "discount_type": "fixed", "amount": 1,
                "per_user_limit": 5, "total_limit": 100, "expires_at": "2099-01-01T00:00:00Z"}))
            .expect("json"),
            reqwest::StatusCode::CREATED,
        )
        .await
        .expect("batch");
    let batch: Value = serde_json::from_slice(&batch.body).expect("json");
    let body =
        serde_json::to_vec(&json!({"batch_id": batch["id"], "user_id": "shared"})).expect("json");
    let key = format!("shared-{tag}");
    let send = |c: Client| {
        let (key, body) = (key.clone(), body.clone());
        async move {
            c.send(Method::POST, "/v1/coupons/issue/", Some(&key), Some(&body))
                .await
                .expect("issue")
        }
    };
    let a1 = send(c_admin.clone()).await;
    let s1 = send(c_service.clone()).await;
    let a2 = send(c_admin.clone()).await;
    let s2 = send(c_service.clone()).await;
    let code = |a: &coupond_bench::client::Answer| {
        serde_json::from_slice::<Value>(&a.body).expect("json")["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    server.stop(Duration::from_secs(10)).await.expect("stop");
    assert_eq!((a1.status, s1.status), (200, 200));
    assert!(
        !a1.replayed && !s1.replayed,
        "the second caller got the first one's answer"
    );
    assert_ne!(code(&a1), code(&s1), "two callers, one key: two coupons");
    assert!(
        a2.replayed && a2.body == a1.body,
        "the admin's retry replays the admin's answer"
    );
    assert!(
        s2.replayed && s2.body == s1.body,
        "the service's retry replays its own answer"
    );
    let coupons = db
        .scalar("SELECT count(*) FROM coupons WHERE issued_to = 'shared'")
        .await
        .expect("count");
    assert_eq!(coupons, 2);
}

backend_tests!(no_cross_key_replay);

/// The metrics listener: `/metrics` only with a valid API key, and only on its own port.
/// The admin pages: nothing but a refusal (or a way to log in) without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_admin_need_credentials() {
    let db = Database::create(Backend::Sqlite).await.expect("database");
    let admin = admin_key();
    let metrics_port = free_port().expect("port");
    let mut server = ServerProc::start(
        ServerSpec::new("listeners", &db, &admin)
            .env("COUPOND_METRICS_BIND", &format!("127.0.0.1:{metrics_port}")),
    )
    .await
    .expect("starting coupond");
    let (read, _) = create_key(&db.url, "read");
    let (service, _) = create_key(&db.url, "service");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let status = |r: Result<reqwest::Response, reqwest::Error>| r.map(|r| r.status().as_u16()).ok();

    let mut failures = Vec::new();
    let mut seen = serde_json::Map::new();
    for (what, auth) in [
        ("no credentials", None),
        (
            "unknown key",
            Some(format!("Bearer cpd_{}", "x".repeat(40))),
        ),
        ("basic auth", Some("Basic YWRtaW46YWRtaW4=".to_owned())),
        ("empty bearer", Some("Bearer ".to_owned())),
    ] {
        let mut req = http.get(&metrics);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let got = status(req.send().await);
        seen.insert(format!("metrics, {what}"), json!(got));
        if got != Some(401) {
            failures.push(format!("/metrics with {what}: {got:?}, want 401"));
        }
    }
    let with_key = status(http.get(&metrics).bearer_auth(&read).send().await);
    seen.insert("metrics, read key".into(), json!(with_key));
    if with_key != Some(200) {
        failures.push(format!("/metrics with a valid key: {with_key:?}, want 200"));
    }
    let on_api = status(
        http.get(format!("{}/metrics", server.base_url()))
            .bearer_auth(&admin)
            .send()
            .await,
    );
    seen.insert("metrics on the API port".into(), json!(on_api));
    if on_api != Some(404) {
        failures.push(format!("/metrics on the API port: {on_api:?}, want 404"));
    }

    // Admin pages: whatever they become, without credentials (or with a key whose scope is
    // not admin) they refuse, or send the browser to a login page; never a 200.
    for path in [
        "/admin",
        "/admin/",
        "/admin/keys",
        "/admin/batches",
        "/admin/batches/1",
        "/admin/coupons",
        "/admin/coupons/ABCDEFGHIJ",
        "/admin/idempotency",
        "/admin/fragments/batch-stats",
    ] {
        for (what, auth) in [
            ("no credentials", None),
            ("read key", Some(format!("Bearer {read}"))),
            ("service key", Some(format!("Bearer {service}"))),
            ("forged cookie", None),
        ] {
            let mut req = http.get(format!("{}{path}", server.base_url()));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            if what == "forged cookie" {
                req = req.header("cookie", "session=admin; coupond_session=1");
            }
            let got = status(req.send().await);
            seen.insert(format!("{path}, {what}"), json!(got));
            if !matches!(got, Some(301 | 302 | 303 | 307 | 308 | 401 | 403 | 404)) {
                failures.push(format!("{path} with {what}: {got:?}"));
            }
        }
    }
    server.stop(Duration::from_secs(10)).await.expect("stop");
    figures::record(
        "security-listeners",
        &json!({"test": "metrics_and_admin_need_credentials", "answers": seen,
                "failures": failures.len()}),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
