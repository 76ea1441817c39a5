//! The operator's round in a real browser, on both backends.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_test;
use crate::browser::{Browser, DESKTOP, PHONE};
use crate::helpers::{new_key, Backend, TestApp, TEST_ADMIN_KEY};
use crate::web::Console;

/// One Chromium at a time: the machine has two cores, and the SQLite and PostgreSQL
/// rounds would otherwise race each other for them.
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The SQLite round's screenshots are the README's (`docs/admin/`); the PostgreSQL
/// round's go under `target/`.
fn screenshot_dir(backend: Backend) -> PathBuf {
    match backend {
        Backend::Sqlite => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/admin"),
        Backend::Postgres => {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-screenshots/postgres")
        }
    }
}

/// A page of another site (`localhost` is another site than `127.0.0.1`) whose form
/// posts itself to the console as soon as it is opened.
struct EvilSite {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl EvilSite {
    async fn start(html: String) -> EvilSite {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the other site");
        let port = listener.local_addr().expect("its address").port();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let html = html.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        EvilSite { port, task }
    }
}

impl Drop for EvilSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The text of the first element matching `css`, read by script (so a page being
/// replaced under it is never an error).
async fn text_of(b: &Browser, css: &str) -> Option<String> {
    b.js(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
        vec![json!(css)],
    )
    .await
    .as_str()
    .map(str::to_owned)
}

async fn wait_text(b: &Browser, css: &str, wanted: &str) {
    let what = format!("{css} to read {wanted:?}");
    b.until(&what, || async {
        text_of(b, css).await.as_deref() == Some(wanted)
    })
    .await;
}

async fn wait_contains(b: &Browser, css: &str, wanted: &str) -> String {
    let what = format!("{css} to contain {wanted:?}");
    b.until(&what, || async {
        text_of(b, css).await.is_some_and(|t| t.contains(wanted))
    })
    .await;
    text_of(b, css).await.unwrap_or_default()
}

/// Sends the form `form_css` twice at once, as a double click that got past the page
/// would; answers where each of the two ended up.
async fn send_twice(b: &Browser, form_css: &str) -> Vec<String> {
    let answer = b
        .js_async(
            r#"
            const done = arguments[arguments.length - 1];
            const form = document.querySelector(arguments[0]);
            const body = new URLSearchParams(new FormData(form)).toString();
            const send = () => fetch(form.action, {
                method: "POST",
                body,
                headers: {"Content-Type": "application/x-www-form-urlencoded"},
            });
            Promise.all([send(), send()])
                .then(rs => done(rs.map(r => r.status + " " + r.url)))
                .catch(e => done(["failed " + e]));
            "#,
            vec![json!(form_css)],
        )
        .await;
    answer
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..]).to_owned()
}

async fn coupon(app: &TestApp, code: &str) -> Value {
    let r = app.get(&format!("/v1/coupons/{code}/")).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

async fn events(app: &TestApp, code: &str) -> Vec<Value> {
    let r = app.get(&format!("/v1/coupons/{code}/events/")).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["items"].as_array().cloned().unwrap_or_default()
}

async fn issue(app: &TestApp, batch_id: i64, user: &str, key: &str) -> String {
    let r = app.issue(batch_id, user, key).await;
    assert_eq!(r.status, 200, "issuing to {user}: {r:?}");
    r.json()["code"].as_str().expect("a code").to_owned()
}

async fn operator_round(backend: Backend) {
    let _one = ONE_BROWSER_AT_A_TIME.lock().await;
    let app = TestApp::spawn(backend).await;
    let base = format!("http://{}", app.addr);
    let b = Browser::start(&base, screenshot_dir(backend)).await;

    // Signing in: a page without a session sends the browser to the sign-in page and,
    // afterwards, back.
    b.goto("/admin/batches").await;
    b.at("/admin/login").await;
    assert!(
        b.path().await.contains("next=%2Fadmin%2Fbatches"),
        "{}",
        b.path().await
    );
    b.shot("sign-in").await;
    b.fill("#key", "cpd_this_is_not_a_key_of_this_server_00000")
        .await;
    b.click("#sign-in").await;
    wait_contains(&b, "#login-error", "not an active admin API key").await;
    b.fill("#key", TEST_ADMIN_KEY).await;
    b.click("#sign-in").await;
    b.at("/admin/batches").await;

    // Creating a batch, first with mistakes: the messages are the API's own.
    b.click("#new-batch").await;
    b.at("/admin/batches/new").await;
    b.fill("#f-name", "Spring sale").await;
    b.select("#f-discount_type", "percent").await;
    b.fill("#f-percent", "150").await;
    b.set_value("#f-expires_at", "2099-12-31T23:59").await;
    b.click("#create-batch").await;
    b.find("p.error[data-field='total_limit']").await;
    let shown_percent = text_of(&b, "p.error[data-field='percent']").await;
    let shown_total = text_of(&b, "p.error[data-field='total_limit']").await;
    let api = app
        .create_batch(
            Some(&new_key("bad-batch")),
            &json!({
                "name": "Spring sale", "discount_type": "percent", "percent": 150,
                "per_user_limit": 1, "expires_at": "2099-12-31T23:59:00Z",
            }),
        )
        .await;
    api.assert_error(400, "VALIDATION");
    let fields = &api.json()["error"]["fields"];
    assert_eq!(shown_percent.as_deref(), fields["percent"].as_str());
    assert_eq!(shown_total.as_deref(), fields["total_limit"].as_str());
    b.shot("batch-new").await;
    b.fill("#f-percent", "15").await;
    b.fill("#f-total_limit", "100").await;
    b.fill("#f-per_user_limit", "2").await;
    b.click("#create-batch").await;
    wait_contains(&b, "#notice", "Batch created.").await;
    let here = b.path().await;
    let batch_id: i64 = here
        .trim_start_matches("/admin/batches/")
        .split('?')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not a batch page: {here}"));
    let batch = app
        .get(&format!("/v1/coupon-batches/{batch_id}/"))
        .await
        .json();
    assert_eq!(batch["name"], "Spring sale");
    assert_eq!(batch["percent"], 15);
    assert_eq!(batch["total_limit"], 100);
    assert_eq!(batch["expires_at"], "2099-12-31T23:59:00Z");

    // A double click on "Create batch" creates one batch.
    b.goto("/admin/batches/new").await;
    b.fill("#f-name", "Double click").await;
    b.fill("#f-percent", "5").await;
    b.fill("#f-total_limit", "10").await;
    b.set_value("#f-expires_at", "2099-06-30T12:00").await;
    let ends = send_twice(&b, "#new-batch-form").await;
    assert_eq!(ends.len(), 2, "{ends:?}");
    let pages: Vec<String> = ends
        .iter()
        .map(|e| path_of(e).split('?').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(pages[0], pages[1], "both ended on the same batch: {ends:?}");
    assert!(ends.iter().all(|e| e.starts_with("200 ")), "{ends:?}");
    assert_eq!(
        ends.iter().filter(|e| e.contains("replayed=1")).count(),
        1,
        "one ran, the other was replayed: {ends:?}"
    );
    let doubles = app
        .get("/v1/coupon-batches/?name=Double%20click")
        .await
        .json();
    assert_eq!(
        doubles["items"].as_array().map(Vec::len),
        Some(1),
        "{doubles}"
    );

    // Some life in the other batch too, for the screenshots.
    let doubles_id = doubles["items"][0]["id"].as_i64().expect("its id");
    for n in 0..7 {
        let code = issue(&app, doubles_id, &format!("fan-{n}"), &new_key("issue")).await;
        if n < 4 {
            let (order, user) = (format!("ord-f{n}"), format!("fan-{n}"));
            let r = app.redeem(&code, &order, &user, &new_key("redeem")).await;
            assert_eq!(r.status, 200, "{r:?}");
        }
    }

    // Issuing through the API.
    let code1 = issue(&app, batch_id, "user-42", "issue-user-42-first").await;
    let code2 = issue(&app, batch_id, "user-42", &new_key("issue")).await;
    let code3 = issue(&app, batch_id, "user-7", &new_key("issue")).await;
    let code4 = issue(&app, batch_id, "user-8", &new_key("issue")).await;
    let r = app
        .redeem(&code2, "ord-9", "user-42", &new_key("redeem"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // The dashboard: live stats per batch, recent activity.
    b.goto("/admin/").await;
    let row = format!("#batch-table tr[data-batch='{batch_id}']");
    wait_text(&b, &format!("{row} [data-stat='issued']"), "4").await;
    wait_text(&b, &format!("{row} [data-stat='redeemed']"), "1").await;
    wait_contains(&b, "#activity", &code2).await;
    b.shot("dashboard").await;
    issue(&app, batch_id, "user-9", &new_key("issue")).await;
    // No reload: the page fetches its numbers again by itself.
    wait_text(&b, &format!("{row} [data-stat='issued']"), "5").await;

    // The batch list: search by name, filter by state.
    b.goto("/admin/batches").await;
    b.fill("#batch-q", "spring").await;
    b.click(".filters button[type='submit']").await;
    b.until("the search to show one batch", || async {
        b.path().await.contains("q=spring")
            && b.find_all("#batches tr[data-batch]").await.len() == 1
    })
    .await;
    b.select("#batch-state", "expired").await;
    b.click(".filters button[type='submit']").await;
    b.until("no expired batch", || async {
        b.path().await.contains("state=expired") && b.find_all("#batches td.empty").await.len() == 1
    })
    .await;
    b.goto("/admin/batches").await;
    assert_eq!(b.find_all("#batches tr[data-batch]").await.len(), 2);
    b.shot("batches").await;

    // One batch: stats, chart, coupons; deactivate and activate it.
    b.goto(&format!("/admin/batches/{batch_id}")).await;
    wait_text(&b, "#stat-issued", "5").await;
    wait_text(&b, "#stat-redeemed", "1").await;
    assert!(
        !b.find_all("#chart rect.bar-issued").await.is_empty(),
        "the chart has bars"
    );
    let charted = b
        .js(
            "return [...document.querySelectorAll('#chart-table tbody tr')] \
             .reduce((n, tr) => n + (parseInt(tr.children[1]?.textContent) || 0), 0);",
            vec![],
        )
        .await;
    assert_eq!(charted, json!(5), "the chart counts every issue");
    assert_eq!(b.find_all("#coupons tr[data-code]").await.len(), 5);
    b.shot("batch").await;
    b.click("#toggle-active").await;
    wait_text(&b, "#batch-state", "inactive").await;
    wait_contains(&b, "#notice", "deactivated").await;
    app.issue(batch_id, "user-10", &new_key("issue"))
        .await
        .assert_error(409, "BATCH_INACTIVE");
    b.click("#toggle-active").await;
    wait_text(&b, "#batch-state", "active").await;

    // Finding the coupon: by user id, and by its code in any case.
    b.goto("/admin/coupons").await;
    b.fill("#coupon-q", "user-42").await;
    b.click("#coupon-search").await;
    b.find(&format!("#coupons tr[data-code='{code1}']")).await;
    b.find(&format!("#coupons tr[data-code='{code2}']")).await;
    assert_eq!(b.find_all("#coupons tr[data-code]").await.len(), 2);
    b.shot("coupons").await;
    b.fill("#coupon-q", &code1.to_lowercase()).await;
    b.click("#coupon-search").await;
    wait_contains(&b, "#exact", &code1).await;
    b.click("#exact a.code").await;
    b.at(&format!("/admin/coupons/{code1}")).await;
    wait_contains(&b, "li.event[data-kind='issued']", "to user-42").await;

    // Cancelling it, with a reason, after a confirmation.
    b.click("#cancel-coupon").await;
    b.at(&format!("/admin/coupons/{code1}/cancel")).await;
    let cancel_key = b.value("#confirm-form input[name='idem']").await;
    b.fill("#reason", "   ").await;
    b.click("#confirm").await;
    wait_text(&b, "p.error[data-field='reason']", "required").await;
    b.fill("#reason", "customer asked by phone").await;
    b.click("#confirm").await;
    b.at(&format!("/admin/coupons/{code1}")).await;
    wait_contains(&b, "#notice", "Coupon cancelled.").await;
    wait_text(&b, "#coupon-status", "cancelled").await;
    let event = wait_contains(
        &b,
        "li.event[data-kind='cancelled']",
        "customer asked by phone",
    )
    .await;
    assert!(
        event.contains(&format!("key #{}", app.admin_key_id)),
        "{event}"
    );
    b.shot("coupon").await;
    assert_eq!(coupon(&app, &code1).await["status"], "cancelled");
    let last = events(&app, &code1).await.pop().expect("events");
    assert_eq!(last["kind"], "cancelled");
    assert_eq!(last["reason"], "customer asked by phone");
    assert_eq!(last["api_key_id"], app.admin_key_id);
    // The console's cancel was the API's: the same request under the same key replays.
    let again = app
        .post_json(
            "/v1/coupons/cancel/",
            Some(&cancel_key),
            &json!({"code": code1, "reason": "customer asked by phone"}),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.replayed(), "{again:?}");

    // A double click on a confirmation does it once.
    b.goto(&format!("/admin/coupons/{code4}/cancel")).await;
    b.fill("#reason", "double click").await;
    let ends = send_twice(&b, "#confirm-form").await;
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert!(
        ends.iter()
            .all(|e| path_of(e).starts_with(&format!("/admin/coupons/{code4}?done=cancelled"))),
        "{ends:?}"
    );
    let cancelled = events(&app, &code4)
        .await
        .iter()
        .filter(|e| e["kind"] == "cancelled")
        .count();
    assert_eq!(cancelled, 1, "one cancellation, not two");

    // Giving a redemption back.
    b.goto(&format!("/admin/coupons/{code2}")).await;
    b.click("#unredeem-coupon").await;
    b.at(&format!("/admin/coupons/{code2}/unredeem")).await;
    b.fill("#reason", "order refunded").await;
    b.click("#confirm").await;
    b.at(&format!("/admin/coupons/{code2}")).await;
    wait_text(&b, "#coupon-status", "issued").await;
    wait_contains(&b, "li.event[data-kind='unredeemed']", "order refunded").await;
    assert_eq!(coupon(&app, &code2).await["status"], "issued");

    // Idempotency records: the API's, and the console's own.
    b.goto("/admin/idempotency").await;
    b.fill("#idem-key", "issue-user-42-first").await;
    b.click("#idem-search").await;
    wait_text(&b, "#record-status", "200").await;
    wait_contains(&b, "#record-body", &code1).await;
    b.shot("idempotency").await;
    b.fill("#idem-key", &cancel_key).await;
    b.click("#idem-search").await;
    wait_contains(&b, "#record-body", "cancelled").await;

    // API keys: create one (its secret shown once), use it, revoke it.
    b.goto("/admin/keys").await;
    b.fill("#key-name", "checkout").await;
    b.select("#key-scope", "service").await;
    b.click("#create-key").await;
    let secret = wait_contains(&b, "#secret", "cpd_").await;
    let heading = text_of(&b, "#created-h").await.unwrap_or_default();
    let key_id: i64 = heading
        .trim_start_matches("Key #")
        .split(' ')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no key id in {heading:?}"));
    let service = app.client_with(Some(&secret));
    assert_eq!(service.get("/v1/coupons/").await.status, 200);
    b.shot("keys").await;
    b.click(&format!("#revoke-{key_id}")).await;
    b.at(&format!("/admin/keys/{key_id}/revoke")).await;
    b.click("#confirm").await;
    b.at("/admin/keys").await;
    wait_contains(&b, "#notice", "revoked").await;
    wait_contains(&b, &format!("tr[data-key='{key_id}']"), "revoked").await;
    assert_eq!(service.get("/v1/coupons/").await.status, 401);

    // CSRF: a form whose token is not the session's does nothing.
    b.goto(&format!("/admin/coupons/{code3}/cancel")).await;
    let real_token = b.value("#confirm-form input[name='csrf']").await;
    let idem = b.value("#confirm-form input[name='idem']").await;
    b.fill("#reason", "forged").await;
    b.set_value("#confirm-form input[name='csrf']", "forged-token")
        .await;
    b.click("#confirm").await;
    wait_contains(&b, "#error-message", "CSRF").await;
    assert_eq!(coupon(&app, &code3).await["status"], "issued");

    // CSRF: another site's form, even one that knows the real token, does nothing
    // either: the session cookie is SameSite=Strict and the origin is checked.
    let evil = EvilSite::start(format!(
        r#"<!doctype html><html><body>
        <form id="f" method="post" action="{base}/admin/coupons/{code3}/cancel">
          <input type="hidden" name="csrf" value="{real_token}">
          <input type="hidden" name="idem" value="{idem}">
          <input type="hidden" name="reason" value="cross-site">
        </form>
        <script>document.getElementById("f").submit();</script>
        </body></html>"#
    ))
    .await;
    b.client
        .goto(&format!("http://localhost:{}/", evil.port))
        .await
        .expect("opening the other site");
    wait_contains(&b, "#error-message", "another site").await;
    assert!(b
        .path()
        .await
        .starts_with(&format!("/admin/coupons/{code3}/cancel")));
    drop(evil);
    assert_eq!(coupon(&app, &code3).await["status"], "issued");
    assert_eq!(events(&app, &code3).await.len(), 1, "only its issue");

    // A phone's width: the same pages, nothing wider than the screen.
    b.resize(PHONE).await;
    for (path, name) in [
        ("/admin/".to_owned(), "dashboard-phone"),
        (format!("/admin/coupons/{code1}"), "coupon-phone"),
    ] {
        b.goto(&path).await;
        b.at(path.split('?').next().unwrap_or("")).await;
        let fits = b
            .js(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1",
                vec![],
            )
            .await;
        assert_eq!(fits, json!(true), "{path} is wider than a phone");
        b.shot(name).await;
    }
    b.resize(DESKTOP).await;

    // Signing out ends the session on the server, not only in the browser.
    let token = b
        .client
        .get_named_cookie("coupond_admin")
        .await
        .expect("the session cookie")
        .value()
        .to_owned();
    b.goto("/admin/").await;
    b.click("#sign-out").await;
    b.at("/admin/login").await;
    wait_contains(&b, "#notice", "signed out").await;
    b.goto("/admin/keys").await;
    b.at("/admin/login").await;
    let mut old = Console::new(&base);
    old.session = Some(token);
    let page = old.get("/admin/").await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(page.location().starts_with("/admin/login"), "{page:?}");

    // A key revoked elsewhere (here: as `coupond keys revoke` does) ends its sessions.
    let (ops_id, ops_key) = app.create_key("ops", coupond::domain::Scope::Admin).await;
    b.goto("/admin/login").await;
    b.fill("#key", &ops_key).await;
    b.click("#sign-in").await;
    b.at("/admin/").await;
    wait_contains(&b, ".who", "ops").await;
    app.store
        .revoke_api_key(ops_id, coupond::domain::now())
        .await
        .expect("revoking")
        .expect("the key");
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.goto("/admin/batches").await;
    b.at("/admin/login").await;
    wait_contains(&b, "#notice", "session has ended").await;

    b.close().await;
}
backend_test!(multi_thread: operator_round);
