//! API keys: every route refuses a missing, unknown or revoked key (401) and a scope that
//! does not cover it (403), before any idempotency record is touched; idempotency keys
//! belong to their caller; owner-only redemption; the code-guessing throttle; keys kept
//! only as hashes; the `keys` commands against a running server.

use std::time::{Duration, Instant};

use coupond::domain::Scope;
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Value};

use crate::backend_test;
use crate::helpers::*;

/// The challenge of every 401.
const CHALLENGE: &str = "Bearer realm=\"coupond\"";

/// What a route needs of its caller's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// Any key (GET routes).
    Read,
    /// `service` or `admin`: issue, redeem and the other coupon operations.
    Coupons,
    /// `admin`: creating and managing batches.
    Batches,
}

impl Needs {
    fn allowed(self, scope: Scope) -> bool {
        match self {
            Needs::Read => true,
            Needs::Coupons => scope != Scope::Read,
            Needs::Batches => scope == Scope::Admin,
        }
    }
}

/// One request to a route behind a key, valid for an admin.
#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    /// Whether it takes an `Idempotency-Key` (every POST that changes something).
    idempotent: bool,
    needs: Needs,
}

impl Call {
    fn post(path: impl Into<String>, body: Option<Value>, needs: Needs) -> Call {
        Call {
            method: Method::POST,
            path: path.into(),
            body,
            idempotent: true,
            needs,
        }
    }

    fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            body: None,
            idempotent: false,
            needs: Needs::Read,
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// Sends the call with `Idempotency-Key: key` (if it takes one) and, if given, this
    /// exact `Authorization` header instead of the client's.
    async fn send(
        &self,
        client: &ApiClient,
        authorization: Option<&str>,
        key: &str,
    ) -> TestResponse {
        let mut builder = client.request(self.method.clone(), &self.path);
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        if self.idempotent {
            builder = builder.header("idempotency-key", key);
        }
        if let Some(body) = &self.body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        client.send(builder).await
    }
}

/// Whether `r` is an answer past authentication and authorisation (whatever the route
/// then made of the request), and no server error.
fn got_through(r: &TestResponse) -> bool {
    r.status != 401 && r.status != 403 && !r.status.is_server_error()
}

/// Every route behind a key (those of src/http/mod.rs), each with a request an admin
/// could make, on a batch and coupons made for them.
async fn calls(app: &TestApp) -> Vec<Call> {
    let batch = app.new_batch(&batch_with_limits(1000, 100)).await;
    let to_redeem = assert_code(&app.issue_ok(batch, "owner").await["code"]);
    let to_cancel = assert_code(&app.issue_ok(batch, "owner").await["code"]);
    let to_unredeem = assert_code(&app.issue_ok(batch, "owner").await["code"]);
    let r = app
        .redeem(&to_unredeem, "ord-u", "owner", &new_key("setup"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let job = app
        .post_json(
            &format!("/v1/coupon-batches/{batch}/codes/"),
            Some(&new_key("setup")),
            &json!({"count": 2}),
        )
        .await;
    assert_eq!(job.status, 202, "{job:?}");
    let job = job.json()["id"].as_i64().expect("job id");
    let b = format!("/v1/coupon-batches/{batch}");
    vec![
        Call::get(BATCHES),
        Call::post(BATCHES, Some(seed_batch()), Needs::Batches),
        Call::get(format!("{b}/")),
        Call::post(format!("{b}/deactivate/"), None, Needs::Batches),
        Call::post(format!("{b}/activate/"), None, Needs::Batches),
        Call::post(
            format!("{b}/codes/"),
            Some(json!({"count": 1})),
            Needs::Batches,
        ),
        Call::get(format!("{b}/codes/{job}/")),
        Call::get(format!("{b}/codes.csv")),
        Call::post(
            ISSUE,
            Some(json!({"batch_id": batch, "user_id": "auth-u"})),
            Needs::Coupons,
        ),
        Call::post(
            REDEEM,
            Some(json!({"code": to_redeem, "order_id": "auth-o", "user_id": "owner"})),
            Needs::Coupons,
        ),
        Call {
            idempotent: false,
            ..Call::post(
                "/v1/coupons/validate/",
                Some(json!({"code": to_cancel, "user_id": "owner"})),
                Needs::Coupons,
            )
        },
        Call::post(
            "/v1/coupons/cancel/",
            Some(json!({"code": to_cancel, "reason": "auth test"})),
            Needs::Coupons,
        ),
        Call::post(
            "/v1/coupons/unredeem/",
            Some(json!({"code": to_unredeem, "order_id": "ord-u"})),
            Needs::Coupons,
        ),
        Call::get(LIST),
        Call::get(format!("/v1/coupons/{to_redeem}/")),
        Call::get(format!("/v1/coupons/{to_redeem}/events/")),
    ]
}

/// No idempotency record mentions any of `keys`: read from the table itself, so that a
/// record stored under any scope at all would be seen.
async fn assert_no_record_mentions(app: &TestApp, keys: &[String]) {
    let dump = dump_database(app.database_url()).await;
    assert!(
        dump.iter().any(|(table, _)| table == "idempotency_records"),
        "the dump reads the idempotency records (some exist by now)"
    );
    for (table, row) in dump {
        if table != "idempotency_records" {
            continue;
        }
        for key in keys {
            assert!(
                row != *key && !row.contains(&format!("\"{key}\"")),
                "a record was stored for {key}: {row}"
            );
        }
    }
}

/// Waits (at most `limit`) until `client` gets a 401 on the list; returns how long.
async fn refused_within(client: &ApiClient, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let refused = eventually(limit, || async move {
        client.list("").await.status == reqwest::StatusCode::UNAUTHORIZED
    })
    .await;
    refused.then(|| started.elapsed())
}

async fn every_route_refuses_a_missing_unknown_or_revoked_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let calls = calls(&app).await;

    // A key that worked, then was revoked.
    let (revoked_id, revoked) = app.create_key("to revoke", Scope::Admin).await;
    let revoked_client = app.client_with(Some(&revoked));
    assert_eq!(revoked_client.list("").await.status, 200);
    app.store
        .revoke_api_key(revoked_id, coupond::domain::now())
        .await
        .expect("revoking")
        .expect("the key exists");
    let took = refused_within(&revoked_client, Duration::from_secs(1)).await;
    assert!(took.is_some(), "a revoked key still worked after 1s");

    let unknown = format!("cpd_{}", "Q".repeat(40));
    let admin_plus = format!("{TEST_ADMIN_KEY}x");
    let admin_cut = &TEST_ADMIN_KEY[..TEST_ADMIN_KEY.len() - 1];
    // (what is sent as `Authorization`, whether a token was presented)
    let credentials: Vec<(Option<String>, bool)> = vec![
        (None, false),
        (Some(format!("Bearer {unknown}")), true),
        (Some("Bearer not-a-key".to_owned()), true),
        (Some(format!("Bearer {admin_plus}")), true),
        (Some(format!("Bearer {admin_cut}")), true),
        (Some(format!("Bearer {revoked}")), true),
        (Some(format!("Token {TEST_ADMIN_KEY}")), false),
        (Some("Basic dXNlcjpwYXNz".to_owned()), false),
        (Some("Bearer".to_owned()), false),
        (Some("Bearer ".to_owned()), false),
    ];
    let anonymous = app.client_with(None);
    let mut used_keys = Vec::new();
    for call in &calls {
        for (i, (authorization, presented)) in credentials.iter().enumerate() {
            let key = new_key(&format!("unauth-{i}"));
            let r = call.send(&anonymous, authorization.as_deref(), &key).await;
            let what = format!("{} with Authorization {authorization:?}", call.name());
            r.assert_error(401, "UNAUTHENTICATED");
            let challenge = r
                .header("www-authenticate")
                .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate: {r:?}"));
            assert!(
                challenge.starts_with(CHALLENGE),
                "{what}: WWW-Authenticate {challenge:?}"
            );
            assert_eq!(
                challenge.contains("error=\"invalid_token\""),
                *presented,
                "{what}: WWW-Authenticate {challenge:?} (RFC 6750: invalid_token only when a \
                 token was presented)"
            );
            assert!(r.header("idempotent-replayed").is_none(), "{what}: {r:?}");
            if call.idempotent {
                for scope in [app.scope(), format!("key:{revoked_id}")] {
                    let record = app
                        .store
                        .find_idempotency_record(&scope, &key)
                        .await
                        .expect("reading a record");
                    assert!(record.is_none(), "{what}: a record was stored: {record:?}");
                }
                used_keys.push((call.clone(), key));
            }
        }
        // Refused before the body is looked at: no Idempotency-Key, a broken body.
        if call.method == Method::POST {
            let r = anonymous
                .post_bytes(&call.path, None, Some("application/json"), "{")
                .await;
            r.assert_error(401, "UNAUTHENTICATED");
            let r = revoked_client
                .post_bytes(&call.path, None, Some("text/plain"), "x")
                .await;
            r.assert_error(401, "UNAUTHENTICATED");
        }
    }
    let keys: Vec<String> = used_keys.iter().map(|(_, k)| k.clone()).collect();
    assert_no_record_mentions(&app, &keys).await;
    // Nothing was stored, so each key runs afresh for a caller that may use it.
    for (call, key) in used_keys.iter().step_by(credentials.len()) {
        let r = call.send(&app, None, key).await;
        assert!(got_through(&r), "{}: {r:?}", call.name());
        assert!(!r.replayed(), "{}: {r:?}", call.name());
    }

    // Every path under /v1/ needs a key, routed or not; the others need none.
    for path in [
        "/v1/",
        "/v1/nope",
        "/v1/coupons/nope/deeper/",
        "/v1/coupon-batches/1/x/",
    ] {
        let r = anonymous.get(path).await;
        r.assert_error(401, "UNAUTHENTICATED");
        app.get(path).await.assert_error(404, "NOT_FOUND");
    }
    for client in [&anonymous, &app.client_with(Some(&unknown))] {
        for path in ["/healthz", "/readyz", "/openapi.json", "/docs/"] {
            let r = client.get(path).await;
            assert_eq!(r.status, 200, "{path} without a valid key: {r:?}");
        }
    }
    // The scheme is matched in any case.
    let r = anonymous
        .send(
            anonymous
                .request(Method::GET, LIST)
                .header(AUTHORIZATION, format!("bEaReR {TEST_ADMIN_KEY}")),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
backend_test!(every_route_refuses_a_missing_unknown_or_revoked_key);

async fn each_scope_may_do_what_it_covers_and_no_more(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let calls = calls(&app).await;
    let (service_id, service) = app.create_key("checkout", Scope::Service).await;
    let (read_id, read) = app.create_key("dashboard", Scope::Read).await;
    let (admin_id, admin) = app.create_key("second admin", Scope::Admin).await;

    let callers = [
        (admin_id, admin.as_str(), Scope::Admin),
        (service_id, service.as_str(), Scope::Service),
        (read_id, read.as_str(), Scope::Read),
    ];
    for (id, secret, scope) in callers {
        let client = app.client_with(Some(secret));
        let record_scope = format!("key:{id}");
        for call in &calls {
            let key = new_key("scope");
            let r = call.send(&client, None, &key).await;
            let what = format!("{} by a {scope:?} key", call.name());
            if call.needs.allowed(scope) {
                assert!(got_through(&r), "{what} is allowed: {r:?}");
                assert!(!r.replayed(), "{what}: {r:?}");
                continue;
            }
            r.assert_error(403, "FORBIDDEN");
            assert!(r.header("www-authenticate").is_none(), "{what}: {r:?}");
            if call.method != Method::POST {
                continue;
            }
            // Refused before the Idempotency-Key and the body are looked at.
            client
                .post_bytes(&call.path, None, Some("application/json"), "{")
                .await
                .assert_error(403, "FORBIDDEN");
            client
                .post_bytes(&call.path, Some(&"k".repeat(300)), Some("text/plain"), "x")
                .await
                .assert_error(403, "FORBIDDEN");
            if call.idempotent {
                let record = app
                    .store
                    .find_idempotency_record(&record_scope, &key)
                    .await
                    .expect("reading a record");
                assert!(record.is_none(), "{what}: a record was stored: {record:?}");
                assert_no_record_mentions(&app, std::slice::from_ref(&key)).await;
                // The key is free for a caller whose scope covers the route.
                let r = call.send(&app, None, &key).await;
                assert!(got_through(&r) && !r.replayed(), "{what}: {r:?}");
            }
        }
    }
    // The scopes as the README has them.
    for (needs, admin, service, read) in [
        (Needs::Batches, true, false, false),
        (Needs::Coupons, true, true, false),
        (Needs::Read, true, true, true),
    ] {
        assert_eq!(
            (
                needs.allowed(Scope::Admin),
                needs.allowed(Scope::Service),
                needs.allowed(Scope::Read)
            ),
            (admin, service, read)
        );
    }
    // A request an admin made is no answer for a service key with the same
    // Idempotency-Key: it is refused, not replayed.
    let created = app.create_batch(Some("scoped-batch"), &seed_batch()).await;
    assert_eq!(created.status, 201);
    app.client_with(Some(&service))
        .create_batch(Some("scoped-batch"), &seed_batch())
        .await
        .assert_error(403, "FORBIDDEN");
}
backend_test!(each_scope_may_do_what_it_covers_and_no_more);

async fn idempotency_keys_belong_to_their_caller(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let batch = app.new_batch(&batch_with_limits(100, 2)).await;
    let (a_id, a) = app.create_key("shop a", Scope::Service).await;
    let (b_id, b) = app.create_key("shop b", Scope::Service).await;
    let (_, c) = app.create_key("shop c", Scope::Service).await;
    let (a, b, c) = (
        app.client_with(Some(&a)),
        app.client_with(Some(&b)),
        app.client_with(Some(&c)),
    );

    // Same Idempotency-Key, same body, two callers: two effects.
    let first_a = a.issue(batch, "u1", "shared-1").await;
    let first_b = b.issue(batch, "u1", "shared-1").await;
    for r in [&first_a, &first_b] {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.replayed(), "a caller got another caller's answer: {r:?}");
    }
    assert_ne!(first_a.json()["id"], first_b.json()["id"]);
    assert_ne!(first_a.json()["code"], first_b.json()["code"]);
    assert_eq!(app.list_items("user_id=u1").await.len(), 2);

    // Each caller's retry replays its own answer.
    for (client, first) in [(&a, &first_a), (&b, &first_b), (&a, &first_a)] {
        let r = client.issue(batch, "u1", "shared-1").await;
        assert!(r.replayed(), "{r:?}");
        assert_eq!(r.body, first.body);
    }
    for (id, first) in [(a_id, &first_a), (b_id, &first_b)] {
        let record = app
            .store
            .find_idempotency_record(&format!("key:{id}"), "shared-1")
            .await
            .expect("reading a record")
            .expect("each caller has its own record");
        assert_eq!(record.response.status, 200);
        assert_eq!(record.response.body, first.body);
    }
    // A third caller runs the request itself and hits the per-user limit the other two
    // used up: an answer of its own, not a replay of theirs.
    let third = c.issue(batch, "u1", "shared-1").await;
    third.assert_error(409, "PER_USER_LIMIT_REACHED");
    assert!(!third.replayed(), "{third:?}");
    // The admin key has no record under that key either.
    assert!(app.idempotency_record("shared-1").await.is_none());

    // A key one caller used with one body is no mismatch for another caller's body.
    let r = a.issue(batch, "u2", "shared-2").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = b.issue(batch, "u3", "shared-2").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.replayed(), "{r:?}");
    assert_eq!(r.json()["issued_to"], "u3");
    a.issue(batch, "u3", "shared-2")
        .await
        .assert_error(409, "IDEMPOTENCY_KEY_BODY_MISMATCH");

    // Batches, by two admin keys.
    let (_, admin2) = app.create_key("second admin", Scope::Admin).await;
    let one = app.create_batch(Some("shared-batch"), &seed_batch()).await;
    let two = app
        .client_with(Some(&admin2))
        .create_batch(Some("shared-batch"), &seed_batch())
        .await;
    assert_eq!((one.status.as_u16(), two.status.as_u16()), (201, 201));
    assert!(!two.replayed(), "{two:?}");
    assert_ne!(
        one.json()["id"],
        two.json()["id"],
        "two batches were created"
    );
}
backend_test!(idempotency_keys_belong_to_their_caller);

async fn owner_only_coupons_are_redeemed_by_their_owner_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut body = batch_with_limits(100, 5);
    body["redeem_policy"] = json!("owner_only");
    let created = app.create_batch(Some("owner-batch"), &body).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["redeem_policy"], "owner_only");
    let owner_only = created.json()["id"].as_i64().expect("id");
    let anyone = app.create_batch(Some("anyone-batch"), &seed_batch()).await;
    assert_eq!(anyone.json()["redeem_policy"], "anyone", "{anyone:?}");
    let anyone = anyone.json()["id"].as_i64().expect("id");

    let coupon = app.issue_ok(owner_only, "u1").await;
    let code = assert_code(&coupon["code"]);

    // Another user: refused, and the refusal is an answer, stored and replayed.
    let refused = app.redeem(&code, "ord-1", "u2", "own-1").await;
    refused.assert_error(409, "COUPON_OWNERSHIP_MISMATCH");
    assert!(!refused.replayed());
    let again = app.redeem(&code, "ord-1", "u2", "own-1").await;
    assert!(again.replayed() && again.body == refused.body, "{again:?}");
    let items = app.list_items("user_id=u1").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "issued", "the refusal changed nothing");
    assert_eq!(items[0]["redeemed_by"], Value::Null);
    assert!(app.list_items("user_id=u2").await.is_empty());

    // The owner.
    let r = app.redeem(&code, "ord-2", "u1", "own-2").await;
    assert_eq!(r.status, 200, "{r:?}");
    let redeemed = r.json();
    assert_eq!(redeemed["status"], "redeemed");
    assert_eq!(redeemed["redeemed_by"], "u1");
    assert_eq!(redeemed["order_id"], "ord-2");
    // Already redeemed comes before ownership.
    app.redeem(&code, "ord-3", "u2", "own-3")
        .await
        .assert_error(409, "COUPON_ALREADY_REDEEMED");
    // The code in another case is the same coupon, still owner-only.
    let lower = assert_code(&app.issue_ok(owner_only, "u1").await["code"]).to_lowercase();
    app.redeem(&lower, "ord-4", "u3", "own-4")
        .await
        .assert_error(409, "COUPON_OWNERSHIP_MISMATCH");
    assert_eq!(app.redeem(&lower, "ord-4", "u1", "own-5").await.status, 200);

    // A user id sent as a number is the same user as its decimal string.
    let numbered = app
        .post_json(
            ISSUE,
            Some("own-num"),
            &json!({"batch_id": owner_only, "user_id": 42}),
        )
        .await;
    assert_eq!(numbered.status, 200, "{numbered:?}");
    let code42 = assert_code(&numbered.json()["code"]);
    app.post_json(
        REDEEM,
        Some("own-num-1"),
        &json!({"code": code42, "order_id": "o", "user_id": 43}),
    )
    .await
    .assert_error(409, "COUPON_OWNERSHIP_MISMATCH");
    let r = app.redeem(&code42, "o", "42", "own-num-2").await;
    assert_eq!(r.status, 200, "{r:?}");

    // The default policy is the seed's: anyone holding the code.
    let code = assert_code(&app.issue_ok(anyone, "u1").await["code"]);
    let r = app.redeem(&code, "ord-5", "u2", "own-6").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["redeemed_by"], "u2");
    assert_eq!(r.json()["issued_to"], "u1");
}
backend_test!(owner_only_coupons_are_redeemed_by_their_owner_only);

const THROTTLE_WINDOW: Duration = Duration::from_secs(2);

async fn code_guessing_is_throttled_per_key_and_user_and_recovers(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        |s| {
            s.not_found_limit = 3;
            s.not_found_window = THROTTLE_WINDOW;
        },
        std::sync::Arc::default(),
    )
    .await;
    let batch = app.new_batch(&batch_with_limits(100, 10)).await;
    let code = assert_code(&app.issue_ok(batch, "u1").await["code"]);
    let (_, service) = app.create_key("other shop", Scope::Service).await;
    let service = app.client_with(Some(&service));

    let started = Instant::now();
    let miss = app.redeem("ZZZZZZZZZ0", "o", "u1", "guess-0").await;
    miss.assert_error(404, "COUPON_NOT_FOUND");
    // Replays of a miss are not new misses.
    for _ in 0..4 {
        let r = app.redeem("ZZZZZZZZZ0", "o", "u1", "guess-0").await;
        assert!(r.status == 404 && r.replayed(), "{r:?}");
    }
    for i in 1..3 {
        app.redeem(&format!("ZZZZZZZZZ{i}"), "o", "u1", &format!("guess-{i}"))
            .await
            .assert_error(404, "COUPON_NOT_FOUND");
    }
    // Over the limit: any redeem for that key and user, even of a real code.
    for (code, key) in [("ZZZZZZZZZ9", "guess-9"), (code.as_str(), "guess-real")] {
        let r = app.redeem(code, "o", "u1", key).await;
        r.assert_error(429, "RATE_LIMITED");
        let retry: u64 = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not a number of seconds: {r:?}"));
        assert!(
            (1..=THROTTLE_WINDOW.as_secs()).contains(&retry),
            "Retry-After {retry} is not within the {THROTTLE_WINDOW:?} window"
        );
        assert!(
            app.idempotency_record(key).await.is_none(),
            "429 stored {key}"
        );
    }
    assert!(
        started.elapsed() < THROTTLE_WINDOW,
        "the test was too slow to see the throttle within its window"
    );
    // Other users of the same key, and the same user through another key, are not
    // affected.
    app.redeem("ZZZZZZZZZ8", "o", "u2", "guess-u2")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    service
        .redeem("ZZZZZZZZZ8", "o", "u1", "guess-svc")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
    assert_eq!(app.list_items("user_id=u1").await[0]["status"], "issued");

    // Once the window is over the pair may redeem again; the key refused with 429 runs
    // afresh.
    let deadline = started + THROTTLE_WINDOW + Duration::from_secs(2);
    let (r, recovered) = loop {
        let r = app.redeem(&code, "o", "u1", "guess-real").await;
        if r.status != 429 {
            break (r, true);
        }
        if Instant::now() >= deadline {
            break (r, false);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(recovered, "still throttled after the window: {r:?}");
    assert!(
        started.elapsed() >= THROTTLE_WINDOW,
        "the throttle lifted after {:?}, before its window",
        started.elapsed()
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.replayed(), "{r:?}");
    assert_eq!(r.json()["status"], "redeemed");
    // A new window starts with the next miss.
    app.redeem("ZZZZZZZZZ7", "o", "u1", "guess-7")
        .await
        .assert_error(404, "COUPON_NOT_FOUND");
}
backend_test!(code_guessing_is_throttled_per_key_and_user_and_recovers);

/// A key as `keys create` prints it: `cpd_` and 40 characters of base62.
#[track_caller]
fn assert_key_format(key: &str) {
    let random = key
        .strip_prefix("cpd_")
        .unwrap_or_else(|| panic!("{key:?} does not start with cpd_"));
    assert_eq!(random.len(), 40, "{key:?}");
    assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{key:?}");
}

/// The `keys list` row of key `id`, split on white space.
fn list_row(listing: &str, id: i64) -> Vec<String> {
    listing
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("no row for key {id} in:\n{listing}"))
}

async fn the_keys_commands_work_on_a_running_server(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let env = [("COUPOND_DATABASE_URL", app.database_url())];
    let batch = app.new_batch(&seed_batch()).await;

    let created = run_coupond(
        &["keys", "create", "--name", "checkout", "--scope", "service"],
        &env,
    )
    .await;
    assert!(created.success, "{created:?}");
    let key = created
        .stdout
        .lines()
        .last()
        .expect("a last line")
        .to_owned();
    assert_key_format(&key);
    assert_eq!(
        created.stdout.matches(&key).count(),
        1,
        "the key is printed once: {created:?}"
    );
    assert!(!created.stderr.contains(&key), "{created:?}");
    let id = app
        .store
        .find_api_key(&sha256(&key))
        .await
        .expect("reading keys")
        .expect("the printed key is stored (by its hash)")
        .id;

    // The running server takes it at once, with its scope.
    let client = app.client_with(Some(&key));
    assert_eq!(client.issue(batch, "u1", "cli-1").await.status, 200);
    client
        .create_batch(Some("cli-b"), &seed_batch())
        .await
        .assert_error(403, "FORBIDDEN");

    let listed = run_coupond(&["keys", "list"], &env).await;
    assert!(listed.success, "{listed:?}");
    assert!(!listed.stdout.contains(&key[..13]), "{listed:?}");
    let row = list_row(&listed.stdout, id);
    assert_eq!(row[1], "checkout", "{row:?}");
    assert_eq!(row[2], "service", "{row:?}");
    assert_eq!(row[3], format!("{}…", &key[..12]), "{row:?}");
    assert_eq!(
        row.last().map(String::as_str),
        Some("-"),
        "not revoked: {row:?}"
    );
    let admin = list_row(&listed.stdout, app.admin_key_id);
    assert_eq!(admin[2], "admin", "{admin:?}");

    let revoked = run_coupond(&["keys", "revoke", &id.to_string()], &env).await;
    assert!(revoked.success, "{revoked:?}");
    assert_eq!(
        revoked.stdout.trim(),
        format!("revoked API key {id} (checkout)")
    );
    let took = refused_within(&client, Duration::from_secs(1)).await;
    assert!(
        took.is_some(),
        "the running server still accepted the key 1s after `keys revoke`"
    );
    client
        .issue(batch, "u2", "cli-2")
        .await
        .assert_error(401, "UNAUTHENTICATED");
    let listed = run_coupond(&["keys", "list"], &env).await;
    let row = list_row(&listed.stdout, id);
    assert_ne!(
        row.last().map(String::as_str),
        Some("-"),
        "revoked: {row:?}"
    );
    // Revoking again is no error and changes nothing.
    assert!(
        run_coupond(&["keys", "revoke", &id.to_string()], &env)
            .await
            .success
    );
    assert_eq!(
        app.list_items("").await.len(),
        1,
        "the admin key still works"
    );

    // Refusals.
    let missing = run_coupond(&["keys", "revoke", "999999"], &env).await;
    assert!(!missing.success, "{missing:?}");
    assert!(
        missing.stderr.contains("no API key with id 999999"),
        "{missing:?}"
    );
    for args in [
        &["keys", "create", "--name", "x", "--scope", "root"][..],
        &["keys", "create", "--name", "  ", "--scope", "read"][..],
        &["keys", "create", "--scope", "read"][..],
    ] {
        let r = run_coupond(args, &env).await;
        assert!(!r.success, "{args:?}: {r:?}");
        assert!(!r.stdout.contains("cpd_"), "{args:?}: {r:?}");
    }
    assert_eq!(
        app.store.list_api_keys().await.expect("keys").len(),
        2,
        "the refused commands created no key"
    );
}
backend_test!(the_keys_commands_work_on_a_running_server);

async fn the_keys_commands_take_database_url_as_the_readme_shows(backend: Backend) {
    // README: "The `keys` commands work on the database directly (pass `--database-url`
    // or set `COUPOND_DATABASE_URL` as for `serve`)", next to `coupond keys create
    // --name checkout --scope service`; so the flag goes where it goes for `serve`.
    let app = TestApp::spawn(backend).await;
    let url = app.database_url();
    let created = run_coupond(
        &[
            "keys",
            "create",
            "--name",
            "flag",
            "--scope",
            "read",
            "--database-url",
            url,
        ],
        &[],
    )
    .await;
    assert!(
        created.success,
        "`coupond keys create --name flag --scope read --database-url URL` failed: {created:?}"
    );
    let key = created.stdout.lines().last().expect("a line").to_owned();
    assert_key_format(&key);
    assert_eq!(app.client_with(Some(&key)).list("").await.status, 200);
    let listed = run_coupond(&["keys", "list", "--database-url", url], &[]).await;
    assert!(listed.success, "{listed:?}");
    assert!(listed.stdout.contains("flag"), "{listed:?}");
    let id = app
        .store
        .list_api_keys()
        .await
        .expect("keys")
        .len()
        .to_string();
    let revoked = run_coupond(&["keys", "revoke", &id, "--database-url", url], &[]).await;
    assert!(revoked.success, "{revoked:?}");
}
backend_test!(the_keys_commands_take_database_url_as_the_readme_shows);

/// Every window of `len` characters of `key`.
fn windows(key: &str, len: usize) -> impl Iterator<Item = &str> {
    (0..=key.len().saturating_sub(len)).map(move |i| &key[i..i + len])
}

async fn keys_are_stored_only_as_hashes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, service) = app.create_key("service key", Scope::Service).await;
    let (_, read) = app.create_key("read key", Scope::Read).await;
    let env = [("COUPOND_DATABASE_URL", app.database_url())];
    let created = run_coupond(
        &["keys", "create", "--name", "cli key", "--scope", "admin"],
        &env,
    )
    .await;
    assert!(created.success, "{created:?}");
    let cli = created.stdout.lines().last().expect("a line").to_owned();
    let keys = [TEST_ADMIN_KEY.to_owned(), service, read, cli];
    // Use each, so that whatever is written about use is written too (a second server
    // keeps the database while the first stops and writes its "last used" times).
    for key in &keys {
        assert_eq!(app.client_with(Some(key)).list("").await.status, 200);
    }
    let sibling = app.spawn_sibling(|_| {}, std::sync::Arc::default()).await;
    let url = app.database_url().to_owned();
    app.stop().await;

    // Nothing in any table holds a key, or 13 consecutive characters of one (the
    // stored prefix, kept to tell keys apart, is 12).
    let dump = dump_database(&url).await;
    assert!(
        dump.iter().any(|(table, _)| table == "api_keys"),
        "the dump reads the api_keys table"
    );
    for key in &keys {
        for part in windows(key, 13) {
            for (table, value) in &dump {
                assert!(
                    !value.contains(part),
                    "{table} holds {part:?} of key {key:?}: {value}"
                );
            }
        }
    }

    // Each row: the SHA-256 of its key and its first 12 characters.
    let rows: Vec<(i64, Vec<u8>, String)> = match backend {
        Backend::Sqlite => {
            let path = url.strip_prefix("sqlite://").expect("a file");
            let conn = rusqlite::Connection::open(path).expect("opening the file");
            let mut statement = conn
                .prepare("SELECT id, key_hash, key_prefix FROM api_keys ORDER BY id")
                .expect("reading api_keys");
            let rows = statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("reading api_keys")
                .collect::<Result<_, _>>()
                .expect("reading api_keys");
            rows
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connecting");
            let rows = sqlx::query_as("SELECT id, key_hash, key_prefix FROM api_keys ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .expect("reading api_keys");
            let _ = conn.close().await;
            rows
        }
    };
    assert_eq!(rows.len(), keys.len(), "{rows:?}");
    for key in &keys {
        let hash = sha256(key);
        let (_, stored, prefix) = rows
            .iter()
            .find(|(_, h, _)| h.as_slice() == hash.as_slice())
            .unwrap_or_else(|| panic!("no row has the SHA-256 of {key:?}: {rows:?}"));
        assert_eq!(stored.len(), 32);
        assert_eq!(prefix.as_str(), &key[..12], "{rows:?}");
    }

    // SQLite: not in the files' bytes either (database, WAL, shared memory).
    if backend == Backend::Sqlite {
        let path = url.strip_prefix("sqlite://").expect("a file");
        for suffix in ["", "-wal", "-shm"] {
            let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) else {
                continue;
            };
            for key in &keys {
                for part in windows(key, 13) {
                    assert!(
                        !bytes.windows(part.len()).any(|w| w == part.as_bytes()),
                        "{path}{suffix} holds {part:?} of key {key:?}"
                    );
                }
            }
        }
    }
    sibling.stop().await;
}
backend_test!(keys_are_stored_only_as_hashes);
