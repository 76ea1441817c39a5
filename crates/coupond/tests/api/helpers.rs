//! The test harness: a real coupond server per test, in-process, on SQLite or PostgreSQL,
//! spoken to over real HTTP.
//!
//! * `TestApp::spawn(Backend::Sqlite | Backend::Postgres)` starts a server on
//!   `127.0.0.1:0` with a fresh database (a temp file, or a new PostgreSQL database that
//!   is dropped again when the last `TestApp` using it is dropped).
//! * `TestApp::spawn_with(backend, |settings| ..., faults)` tweaks the settings first and
//!   hands the server a `Faults` the test keeps (every `TestApp` has one in `faults`).
//! * `app.spawn_sibling(tweak, faults)` starts a second server on the same database, as
//!   a second process would be: its own pool, its own in-flight map. `app.stop()` shuts
//!   a server down gracefully (the database lives on while a sibling holds it).
//! * `app.store` is the server's `Store`; `app.idempotency_record(key)` reads a record.
//! * Every request goes through `ApiClient::request` (HTTP via reqwest) or
//!   `ApiClient::raw` (bytes on a TCP socket, for what reqwest will not send); both add
//!   `Authorization: Bearer <api_key>` when `api_key` is set, via `ApiClient::auth_value`.
//! * `TestApp` derefs to `ApiClient`; `app.client()` is a clone to move into spawned
//!   tasks for concurrency tests.
//! * `backend_test!(name)` runs one `async fn name(backend: Backend)` as the tests
//!   `name::sqlite` and `name::postgres`.

// Parts of the harness are here for the tests of later issues (API keys, restarts).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use clap::Parser;
use coupond::app::{AppError, Application};
use coupond::config::{LogArgs, LogFormat, ServeArgs};
use coupond::faults::Faults;
use coupond::storage::{IdempotencyRecord, Store};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The maintenance database the PostgreSQL tests create their databases from.
pub const POSTGRES_URL_ENV: &str = "COUPOND_TEST_POSTGRES_URL";
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Prefix of every database the suite creates; `<prefix><pid>_<n>`.
const PG_DB_PREFIX: &str = "coupond_test_";
/// PostgreSQL allows 100 connections in all and tests run in parallel.
pub const PG_MAX_CONNECTIONS: u32 = 4;
pub const SQLITE_MAX_CONNECTIONS: u32 = 4;

pub const BATCHES: &str = "/v1/coupon-batches/";
pub const ISSUE: &str = "/v1/coupons/issue/";
pub const REDEEM: &str = "/v1/coupons/redeem/";
pub const LIST: &str = "/v1/coupons/";

/// The fields of the seed's `CouponSerializer`, no more, no fewer.
pub const COUPON_FIELDS: [&str; 8] = [
    "id",
    "code",
    "status",
    "issued_to",
    "issued_at",
    "redeemed_by",
    "redeemed_at",
    "order_id",
];
/// The fields of the seed's `CouponBatchCreateSerializer`.
/// Fields a batch has besides the seed's ("more fields may follow").
pub const BATCH_EXTRA_FIELDS: [&str; 12] = [
    "created_at",
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
    "expires_at",
];

pub const BATCH_FIELDS: [&str; 8] = [
    "id",
    "name",
    "discount_type",
    "amount",
    "percent",
    "per_user_limit",
    "total_limit",
    "expires_at",
];

/// Runs `async fn name(backend: Backend)` (defined just above, at module level, where
/// rustfmt formats it) on both backends, as `name::sqlite` and `name::postgres`:
///
/// ```ignore
/// async fn issue_works(backend: Backend) { let app = TestApp::spawn(backend).await; ... }
/// backend_test!(issue_works);
/// backend_test!(multi_thread: many_writers); // a 4-worker runtime, for concurrency
/// ```
#[macro_export]
macro_rules! backend_test {
    (multi_thread: $name:ident) => {
        $crate::backend_test!(@emit
            [tokio::test(flavor = "multi_thread", worker_threads = 4)] $name);
    };
    ($name:ident) => {
        $crate::backend_test!(@emit [tokio::test] $name);
    };
    (@emit [$($attr:tt)*] $name:ident) => {
        mod $name {
            #[$($attr)*]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }

            #[$($attr)*]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await;
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

// ---------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------

enum Database {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

impl Database {
    async fn create(backend: Backend) -> Database {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("coupond-test-")
                    .tempdir()
                    .expect("creating a temp dir for SQLite");
                let path: PathBuf = dir.path().join("coupond.db");
                Database::Sqlite {
                    url: format!("sqlite://{}", path.display()),
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                let admin_url =
                    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
                static N: AtomicU64 = AtomicU64::new(0);
                let name = format!(
                    "{PG_DB_PREFIX}{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                );
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL is unreachable at {admin_url} ({e}); start it or point \
                         {POSTGRES_URL_ENV} at a server where this user may CREATE DATABASE"
                        )
                    });
                drop_stale_databases(&mut admin).await;
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
                let _ = admin.close().await;
                let url = server_url(&admin_url, &name);
                Database::Postgres {
                    url,
                    admin_url,
                    name,
                }
            }
        }
    }

    fn url(&self) -> &str {
        match self {
            Database::Sqlite { url, .. } | Database::Postgres { url, .. } => url,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Database::Postgres {
            admin_url, name, ..
        } = self
        else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which must not be blocked on; a short-lived
        // thread with a runtime of its own does the work.
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok::<_, String>(())
            })
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: dropping test database failed: {e}"),
            Err(_) => eprintln!("warning: the thread dropping a test database panicked"),
        }
    }
}

/// Databases left behind by test processes that no longer exist (killed runs).
async fn drop_stale_databases(admin: &mut sqlx::PgConnection) {
    static ONCE: Once = Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if !first {
        return;
    }
    let names: Vec<(String,)> =
        match sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{PG_DB_PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    for (name,) in names {
        let pid = name
            .strip_prefix(PG_DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut *admin)
            .await;
    }
}

/// The maintenance URL with its database replaced by `db` and `sslmode=disable`.
fn server_url(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let without_db = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    let mut params: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslmode="))
        .collect();
    params.push("sslmode=disable");
    format!("{without_db}/{db}?{}", params.join("&"))
}

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

#[derive(Parser)]
struct DefaultSettings {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The settings a test server starts with: clap's defaults for anything new, then every
/// known setting pinned so that `COUPOND_*` variables in the environment do not leak in.
pub fn test_settings(backend: Backend, database_url: &str) -> ServeArgs {
    let mut settings = DefaultSettings::try_parse_from([
        "coupond-test",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        database_url,
    ])
    .unwrap_or_else(|e| panic!("default settings do not parse: {e}"))
    .serve;
    settings.bind = "127.0.0.1:0".parse().expect("address");
    settings.database.database_url = database_url.to_owned();
    settings.database.db_max_connections = match backend {
        Backend::Sqlite => SQLITE_MAX_CONNECTIONS,
        Backend::Postgres => PG_MAX_CONNECTIONS,
    };
    settings.idempotency_ttl = Duration::from_secs(24 * 3600);
    settings.idempotency_wait = Duration::from_secs(5);
    // Long, so that the purge task never runs in a test that does not ask for it.
    settings.purge_interval = Duration::from_secs(3600);
    settings.body_limit = 64 * 1024;
    settings.request_timeout = Duration::from_secs(30);
    settings.shutdown_grace = Duration::from_secs(2);
    // Every test server starts with this admin key, and clients send it unless a test
    // says otherwise.
    settings.bootstrap_admin_key = Some(TEST_ADMIN_KEY.to_owned());
    settings.not_found_limit = 20;
    settings.not_found_window = Duration::from_secs(60);
    settings.log = LogArgs {
        log_format: LogFormat::Text,
        log_level: std::env::var("COUPOND_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    };
    settings
}

fn init_logging(settings: &ServeArgs) {
    // Set COUPOND_TEST_LOG=debug (or any filter) to see the server's logs.
    static ONCE: Once = Once::new();
    if std::env::var_os("COUPOND_TEST_LOG").is_some() {
        ONCE.call_once(|| coupond::telemetry::init(&settings.log));
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// The admin key of every test server (see `test_settings`).
pub const TEST_ADMIN_KEY: &str = "cpd_test_admin_key_for_the_integration_suite";

pub struct TestApp {
    pub backend: Backend,
    /// The id of the admin key `TEST_ADMIN_KEY`.
    pub admin_key_id: i64,
    pub addr: SocketAddr,
    pub settings: ServeArgs,
    /// The store the server uses (a clone): for looking at records a test cannot see
    /// through the API.
    pub store: Store,
    /// The server's fault points; flip them at any time.
    pub faults: Arc<Faults>,
    /// Where `/metrics` is served, when the settings turn it on.
    pub metrics_addr: Option<SocketAddr>,
    client: ApiClient,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), AppError>>>,
    db: Arc<Database>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, |_| {}, Arc::new(Faults::default())).await
    }

    pub async fn spawn_with(
        backend: Backend,
        tweak: impl FnOnce(&mut ServeArgs),
        faults: Arc<Faults>,
    ) -> TestApp {
        let db = Arc::new(Database::create(backend).await);
        let mut settings = test_settings(backend, db.url());
        tweak(&mut settings);
        TestApp::start(backend, settings, faults, db).await
    }

    /// A second server on the same database, with its own settings (the same unless
    /// tweaked), pool and in-flight map, as another process would be.
    pub async fn spawn_sibling(
        &self,
        tweak: impl FnOnce(&mut ServeArgs),
        faults: Arc<Faults>,
    ) -> TestApp {
        let mut settings = self.settings.clone();
        settings.bind = "127.0.0.1:0".parse().expect("address");
        tweak(&mut settings);
        TestApp::start(self.backend, settings, faults, self.db.clone()).await
    }

    async fn start(
        backend: Backend,
        settings: ServeArgs,
        faults: Arc<Faults>,
        db: Arc<Database>,
    ) -> TestApp {
        init_logging(&settings);
        let app = Application::build(settings.clone(), faults.clone())
            .await
            .unwrap_or_else(|e| panic!("starting coupond on {backend:?} failed: {e}"));
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let store = app.store();
        let admin_key_id = store
            .find_api_key(&coupond::domain::apikey::hash_key(TEST_ADMIN_KEY))
            .await
            .expect("reading the admin key")
            .map(|k| k.id)
            .expect("the bootstrap admin key exists");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the HTTP client");
        TestApp {
            backend,
            admin_key_id,
            addr,
            settings,
            store,
            faults,
            metrics_addr,
            client: ApiClient {
                http,
                addr,
                base_url: format!("http://{addr}"),
                api_key: Some(TEST_ADMIN_KEY.to_owned()),
            },
            shutdown: Some(tx),
            server: Some(server),
            db,
        }
    }

    /// A handle to move into spawned tasks.
    pub fn client(&self) -> ApiClient {
        self.client.clone()
    }

    /// The idempotency scope requests made with the admin key land in.
    pub fn scope(&self) -> String {
        format!("key:{}", self.admin_key_id)
    }

    /// The committed idempotency record of `key`, read straight from the store.
    pub async fn idempotency_record(&self, key: &str) -> Option<IdempotencyRecord> {
        self.store
            .find_idempotency_record(&self.scope(), key)
            .await
            .expect("reading an idempotency record")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(Duration::from_secs(10), server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("server failed: {e}"),
                Ok(Err(e)) => panic!("server task failed: {e}"),
                Err(_) => panic!("server did not stop within 10s"),
            }
        }
    }
}

impl Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

/// `app.api_key = Some(..)` sets the bearer token every later request of `app` sends.
impl DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut ApiClient {
        &mut self.client
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The server task ends with the test's runtime; the database goes with the last
        // `Arc<Database>` (PostgreSQL: DROP DATABASE ... WITH (FORCE)).
    }
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    pub addr: SocketAddr,
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
}

static KEYS: AtomicU64 = AtomicU64::new(0);

/// A fresh idempotency key.
pub fn new_key(prefix: &str) -> String {
    format!("{prefix}-{}", KEYS.fetch_add(1, Ordering::Relaxed))
}

impl ApiClient {
    /// The value of the `Authorization` header every request carries, if any.
    pub fn auth_value(&self) -> Option<String> {
        self.api_key.as_ref().map(|k| format!("Bearer {k}"))
    }

    /// Every HTTP request of the suite starts here.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(auth) = self.auth_value() {
            builder = builder.header(reqwest::header::AUTHORIZATION, auth);
        }
        builder
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> TestResponse {
        let response = builder.send().await.expect("sending the request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("reading the body").to_vec();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(self.request(Method::GET, path)).await
    }

    /// POSTs `body` as JSON with `Idempotency-Key: key` when given.
    pub async fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> TestResponse {
        let bytes = serde_json::to_vec(body).expect("encoding JSON");
        self.post_bytes(path, key, Some("application/json"), bytes)
            .await
    }

    /// POSTs raw bytes with the given content type (none if `None`).
    pub async fn post_bytes(
        &self,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> TestResponse {
        let mut builder = self.request(Method::POST, path).body(body.into());
        if let Some(ct) = content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(key) = key {
            builder = builder.header("Idempotency-Key", key);
        }
        self.send(builder).await
    }

    pub async fn create_batch(&self, key: Option<&str>, body: &Value) -> TestResponse {
        self.post_json(BATCHES, key, body).await
    }

    pub async fn issue(&self, batch_id: i64, user: &str, key: &str) -> TestResponse {
        self.post_json(
            ISSUE,
            Some(key),
            &json!({"batch_id": batch_id, "user_id": user}),
        )
        .await
    }

    pub async fn redeem(&self, code: &str, order_id: &str, user: &str, key: &str) -> TestResponse {
        self.post_json(
            REDEEM,
            Some(key),
            &json!({"code": code, "order_id": order_id, "user_id": user}),
        )
        .await
    }

    /// `GET /v1/coupons/?<query>`; `query` is sent as written (already encoded).
    pub async fn list(&self, query: &str) -> TestResponse {
        if query.is_empty() {
            self.get(LIST).await
        } else {
            self.get(&format!("{LIST}?{query}")).await
        }
    }

    /// The items of a list that must succeed.
    pub async fn list_items(&self, query: &str) -> Vec<Value> {
        let r = self.list(query).await;
        assert_eq!(r.status, 200, "list {query:?}: {r:?}");
        let body = r.json();
        let object = body.as_object().expect("list body is an object");
        // The seed's `items`, and `next_cursor` only when a page is full.
        let keys: Vec<_> = object.keys().map(String::as_str).collect();
        assert!(
            keys == ["items"] || keys == ["items", "next_cursor"],
            "list body has `items` (and maybe `next_cursor`): {r:?}"
        );
        body["items"].as_array().expect("items is an array").clone()
    }

    /// Creates a batch that must succeed; returns its id.
    pub async fn new_batch(&self, body: &Value) -> i64 {
        let r = self.create_batch(Some(&new_key("batch")), body).await;
        assert_eq!(r.status, 201, "creating batch {body}: {r:?}");
        r.json()["id"].as_i64().expect("batch id")
    }

    /// Issues a coupon that must succeed; returns it.
    pub async fn issue_ok(&self, batch_id: i64, user: &str) -> Value {
        let r = self.issue(batch_id, user, &new_key("issue")).await;
        assert_eq!(r.status, 200, "issuing from {batch_id} to {user}: {r:?}");
        r.json()
    }

    /// Sends bytes on a fresh TCP connection, for what reqwest will not send: header names
    /// in any case, chunked bodies, bytes that are not valid in `http` types. Adds `Host`,
    /// `Connection: close`, the body framing and the `Authorization` header.
    pub async fn raw(
        &self,
        method: &str,
        target: &[u8],
        headers: &[(&str, &[u8])],
        body: RawBody,
    ) -> TestResponse {
        let mut head = Vec::new();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target);
        head.extend_from_slice(b" HTTP/1.1\r\n");
        head.extend_from_slice(format!("Host: {}\r\nConnection: close\r\n", self.addr).as_bytes());
        if let Some(auth) = self.auth_value() {
            head.extend_from_slice(format!("Authorization: {auth}\r\n").as_bytes());
        }
        for (name, value) in headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        let payload = match body {
            RawBody::None => Vec::new(),
            RawBody::Fixed(bytes) => {
                head.extend_from_slice(format!("Content-Length: {}\r\n", bytes.len()).as_bytes());
                bytes
            }
            RawBody::Chunked(chunks) => {
                head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                let mut out = Vec::new();
                for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
        };
        head.extend_from_slice(b"\r\n");

        let stream = TcpStream::connect(self.addr).await.expect("connecting");
        let (mut reader, mut writer) = stream.into_split();
        // Written beside the read: a server may answer (413, say) before it has read the
        // whole body, and then stops reading.
        let write = tokio::spawn(async move {
            let _ = writer.write_all(&head).await;
            for piece in payload.chunks(8 * 1024) {
                if writer.write_all(piece).await.is_err() {
                    break;
                }
            }
            let _ = writer.flush().await;
            writer
        });
        let mut received = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let response = loop {
            if let Some(response) = parse_response(&received, false) {
                break response;
            }
            match tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    break parse_response(&received, true).unwrap_or_else(|| {
                        panic!(
                            "no complete HTTP response; got {:?}",
                            String::from_utf8_lossy(&received)
                        )
                    })
                }
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                Err(_) => panic!("no HTTP response within 30s"),
            }
        };
        write.abort();
        response
    }
}

pub enum RawBody {
    None,
    Fixed(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

/// A complete response from `bytes`, or `None` if more must be read. `eof`: the peer
/// closed, so a body without framing ends here.
fn parse_response(bytes: &[u8], eof: bool) -> Option<TestResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).expect("response head is ASCII");
    let rest = &bytes[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(TestResponse {
        status: StatusCode::from_u16(code).ok()?,
        headers,
        body,
    })
}

fn decode_chunked(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if bytes.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| {
            v.to_str()
                .unwrap_or_else(|_| panic!("header {name} is not visible ASCII"))
        })
    }

    /// Whether `Idempotent-Replayed: true` is present (and nothing else is in it).
    pub fn replayed(&self) -> bool {
        match self.header("idempotent-replayed") {
            None => false,
            Some("true") => true,
            Some(other) => panic!("Idempotent-Replayed: {other:?} is neither absent nor true"),
        }
    }

    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
    }

    /// `error.code` of an envelope.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code: {self:?}"))
            .to_owned()
    }

    /// Checks the envelope `{"error": {"code", "message"[, "fields"]}}` with the given
    /// status and code, served as application/json.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "status: {self:?}");
        self.assert_envelope();
        assert_eq!(self.error_code(), code, "error code: {self:?}");
        self
    }

    /// Checks only the envelope's shape and content type.
    #[track_caller]
    pub fn assert_envelope(&self) -> &Self {
        assert!(
            self.is_json(),
            "content-type is not application/json: {self:?}"
        );
        let body = self.json();
        let object = body
            .as_object()
            .unwrap_or_else(|| panic!("envelope is not an object: {self:?}"));
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            vec!["error"],
            "envelope has exactly `error`: {self:?}"
        );
        let error = object["error"]
            .as_object()
            .unwrap_or_else(|| panic!("`error` is not an object: {self:?}"));
        let code = error.get("code").and_then(Value::as_str);
        assert!(
            code.is_some_and(|c| !c.is_empty()),
            "error.code must be a non-empty string: {self:?}"
        );
        assert!(
            error.get("message").is_some_and(Value::is_string),
            "error.message must be a string: {self:?}"
        );
        for key in error.keys() {
            assert!(
                ["code", "message", "fields"].contains(&key.as_str()),
                "unexpected error.{key}: {self:?}"
            );
        }
        if let Some(fields) = error.get("fields") {
            let fields = fields
                .as_object()
                .unwrap_or_else(|| panic!("error.fields is not an object: {self:?}"));
            for (name, reason) in fields {
                assert!(
                    reason.as_str().is_some_and(|r| !r.is_empty()),
                    "error.fields.{name} must be a non-empty string: {self:?}"
                );
            }
        }
        self
    }

    /// The names in `error.fields` (empty if there is none).
    pub fn fields(&self) -> BTreeSet<String> {
        self.json()["error"]["fields"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[track_caller]
    pub fn assert_validation(&self, fields: &[&str]) -> &Self {
        self.assert_error(400, "VALIDATION");
        assert_eq!(self.fields(), set(fields), "error.fields: {self:?}");
        self
    }
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The key names of a JSON object.
pub fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// Bodies and values
// ---------------------------------------------------------------------------------------

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formatting RFC 3339")
}

/// `now + seconds`, RFC 3339.
pub fn from_now(seconds: i64) -> String {
    rfc3339(OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
}

pub fn in_days(days: i64) -> String {
    from_now(days * 86_400)
}

/// An expiry far enough away for any test, and the same on every call, so that two
/// bodies built from the same helper are the same request.
pub const FAR_FUTURE: &str = "2099-12-31T23:59:59Z";

/// The seed's `_mk_batch` defaults: percent 10, one per user, 1000 in all, not expiring
/// (the seed says a year from now; a fixed date keeps bodies equal for replays).
pub fn seed_batch() -> Value {
    json!({
        "name": "Welcome 10%",
        "discount_type": "percent",
        "percent": 10,
        "per_user_limit": 1,
        "total_limit": 1000,
        "expires_at": FAR_FUTURE,
    })
}

pub fn batch_with_limits(total_limit: i64, per_user_limit: i64) -> Value {
    let mut body = seed_batch();
    body["total_limit"] = json!(total_limit);
    body["per_user_limit"] = json!(per_user_limit);
    body
}

/// A batch that expires `seconds` from now (negative: already expired).
pub fn batch_expiring_in(seconds: i64, total_limit: i64, per_user_limit: i64) -> Value {
    let mut body = batch_with_limits(total_limit, per_user_limit);
    body["expires_at"] = json!(from_now(seconds));
    body
}

/// Parses an RFC 3339 timestamp from a response and checks it is written in UTC.
#[track_caller]
pub fn parse_utc(value: &Value) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"));
    assert!(
        text.ends_with('Z') && t.offset().is_utc(),
        "{text:?} is not written in UTC (…Z)"
    );
    t
}

/// A coupon code as the seed makes them: 10 characters of A-Z0-9.
#[track_caller]
pub fn assert_code(code: &Value) -> String {
    let code = code
        .as_str()
        .unwrap_or_else(|| panic!("code is not a string: {code}"));
    assert_eq!(code.len(), 10, "code {code:?} is not 10 characters");
    assert!(
        code.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
        "code {code:?} is not A-Z0-9"
    );
    code.to_owned()
}

/// Checks a coupon object's shape: exactly the seed's fields, the right types.
#[track_caller]
pub fn assert_coupon_shape(coupon: &Value) {
    assert_eq!(keys(coupon), set(&COUPON_FIELDS), "coupon fields: {coupon}");
    assert!(
        coupon["id"].as_i64().is_some_and(|id| id >= 1),
        "id: {coupon}"
    );
    assert_code(&coupon["code"]);
    let status = coupon["status"].as_str().expect("status is a string");
    assert!(
        ["issued", "redeemed", "cancelled", "expired"].contains(&status),
        "status: {coupon}"
    );
    for field in ["issued_to", "redeemed_by", "order_id"] {
        assert!(
            coupon[field].is_string() || coupon[field].is_null(),
            "{field}: {coupon}"
        );
    }
    for field in ["issued_at", "redeemed_at"] {
        if !coupon[field].is_null() {
            parse_utc(&coupon[field]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

/// Runs `n` requests at once: each in its own task, released together by a barrier.
/// Returns the responses in the order of `i`.
pub async fn concurrently<F, Fut>(n: usize, make: F) -> Vec<TestResponse>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = TestResponse> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let request = make(i);
            tokio::spawn(async move {
                barrier.wait().await;
                request.await
            })
        })
        .collect();
    let mut responses = Vec::with_capacity(n);
    for handle in handles {
        responses.push(handle.await.expect("request task panicked"));
    }
    responses
}

/// No response may be a server error (SQLite's "database is locked" would be one).
#[track_caller]
pub fn assert_no_server_errors(responses: &[TestResponse]) {
    let bad: Vec<_> = responses
        .iter()
        .filter(|r| r.status.is_server_error() || r.text().contains("locked"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} responses were server errors: {bad:#?}",
        bad.len(),
        responses.len()
    );
}

/// How many responses have each (status, error code or "-").
pub fn tally(responses: &[TestResponse]) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for r in responses {
        let code = if r.status.is_success() {
            "-".to_owned()
        } else {
            r.json()["error"]["code"].as_str().unwrap_or("?").to_owned()
        };
        *counts.entry((r.status.as_u16(), code)).or_insert(0) += 1;
    }
    counts
}

/// Sleeps until the wall clock is a little past `t` (a batch's expiry, say).
pub async fn sleep_past(t: OffsetDateTime) {
    let left = t - OffsetDateTime::now_utc() + time::Duration::milliseconds(50);
    if left.is_positive() {
        tokio::time::sleep(left.unsigned_abs()).await;
    }
}

/// Waits until `check` holds, polling every 25 ms, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_replaces_the_database_and_disables_tls() {
        assert_eq!(
            server_url("postgres://postgres@127.0.0.1:5432/postgres", "db1"),
            "postgres://postgres@127.0.0.1:5432/db1?sslmode=disable"
        );
        assert_eq!(
            server_url(
                "postgres://u:p@h/x?sslmode=require&application_name=a",
                "db2"
            ),
            "postgres://u:p@h/db2?application_name=a&sslmode=disable"
        );
        assert_eq!(
            server_url("postgresql://h:5433", "db3"),
            "postgresql://h:5433/db3?sslmode=disable"
        );
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(decode_chunked(b"3\r\nab"), None);
    }
}

// ---------------------------------------------------------------------------------------
// API keys, databases and the real binary (the tests of API keys and operability)
// ---------------------------------------------------------------------------------------

impl TestApp {
    /// The URL the server's database is reached at (PostgreSQL: with `sslmode=disable`).
    pub fn database_url(&self) -> &str {
        self.db.url()
    }

    /// PostgreSQL: the maintenance URL and the name of this server's database.
    pub fn postgres_database(&self) -> Option<(&str, &str)> {
        match &*self.db {
            Database::Postgres {
                admin_url, name, ..
            } => Some((admin_url, name)),
            Database::Sqlite { .. } => None,
        }
    }

    /// A client of this server that sends `key` (or no `Authorization` at all).
    pub fn client_with(&self, key: Option<&str>) -> ApiClient {
        ApiClient {
            api_key: key.map(str::to_owned),
            ..self.client()
        }
    }

    /// Creates an API key straight in the store; returns its id and the key.
    pub async fn create_key(&self, name: &str, scope: coupond::domain::Scope) -> (i64, String) {
        let new = coupond::domain::NewApiKey::generate(name, scope);
        let secret = new.secret.clone();
        let key = self
            .store
            .create_api_key(new, coupond::domain::now())
            .await
            .expect("creating an API key");
        (key.id, secret)
    }

    /// `spawn_with`, plus the address of the `/metrics` listener (which `tweak` must turn
    /// on with `settings.metrics_bind`).
    pub async fn spawn_with_metrics(
        backend: Backend,
        tweak: impl FnOnce(&mut ServeArgs),
    ) -> (TestApp, SocketAddr) {
        let app = TestApp::spawn_with(backend, tweak, Arc::new(Faults::default())).await;
        let metrics = app
            .metrics_addr
            .expect("the settings turn the metrics listener on");
        (app, metrics)
    }
}

/// A fresh, empty database no server has touched (dropped with this value), for tests
/// that run the real binary on it.
pub struct FreshDatabase(Database);

impl FreshDatabase {
    pub async fn create(backend: Backend) -> FreshDatabase {
        FreshDatabase(Database::create(backend).await)
    }

    pub fn url(&self) -> &str {
        self.0.url()
    }

    /// SQLite: the database file.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.0 {
            Database::Sqlite { url, .. } => url.strip_prefix("sqlite://").map(PathBuf::from),
            Database::Postgres { .. } => None,
        }
    }
}

/// The SHA-256 of an API key, as coupond stores it.
pub fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// Every row of every table of the database at `url`, each value as text (PostgreSQL:
/// `row_to_json`, so bytea is `\x…` hex; SQLite: text as is, blobs hex-encoded and also
/// lossily as text), with the table it came from.
pub async fn dump_database(url: &str) -> Vec<(String, String)> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("opening the SQLite file");
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .expect("listing tables")
            .query_map([], |row| row.get(0))
            .expect("listing tables")
            .collect::<Result<_, _>>()
            .expect("listing tables");
        let mut out = Vec::new();
        for table in tables {
            let mut statement = conn
                .prepare(&format!("SELECT * FROM \"{table}\""))
                .expect("reading a table");
            let columns = statement.column_count();
            let mut rows = statement.query([]).expect("reading a table");
            while let Some(row) = rows.next().expect("reading a row") {
                for i in 0..columns {
                    use rusqlite::types::ValueRef;
                    let text = match row.get_ref(i).expect("a value") {
                        ValueRef::Null => continue,
                        ValueRef::Integer(n) => n.to_string(),
                        ValueRef::Real(x) => x.to_string(),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        ValueRef::Blob(b) => {
                            format!("{} {}", hex::encode(b), String::from_utf8_lossy(b))
                        }
                    };
                    out.push((table.clone(), text));
                }
            }
        }
        out
    } else {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connecting to PostgreSQL");
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("listing tables");
        let mut out = Vec::new();
        for (table,) in tables {
            let rows: Vec<(String,)> =
                sqlx::query_as(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                    .fetch_all(&mut conn)
                    .await
                    .expect("reading a table");
            out.extend(rows.into_iter().map(|(row,)| (table.clone(), row)));
        }
        let _ = conn.close().await;
        out
    }
}

/// The `COUPOND_*` variables of this process, which a child `coupond` must not inherit.
fn coupond_env_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("COUPOND_"))
        .collect()
}

/// The real `coupond` binary, with no `COUPOND_*` variable of the test's environment.
pub fn coupond_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_coupond"));
    for var in coupond_env_vars() {
        command.env_remove(var);
    }
    command.stdin(std::process::Stdio::null());
    command
}

/// What a finished `coupond` command did.
#[derive(Debug)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `coupond ARGS` with `envs` (off the async runtime's threads) and waits for it.
pub async fn run_coupond(args: &[&str], envs: &[(&str, &str)]) -> CommandOutput {
    let mut command = coupond_command();
    command.args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the command's thread")
        .expect("running coupond");
    CommandOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A port that was free a moment ago (the binary only logs the address it bound, so a
/// test that runs it must choose one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// The request id the readiness probe of `ChildServer` sends, so that a test reading the
/// server's log can tell its own requests from the probe's.
pub const PROBE_REQUEST_ID_PREFIX: &str = "coupond-test-probe-";

/// `coupond serve` as a child process on a port of its own, its stdout and stderr
/// collected line by line. Killed when dropped.
pub struct ChildServer {
    pub addr: SocketAddr,
    pub client: ApiClient,
    child: tokio::process::Child,
    stdout: Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a `ChildServer` printed, once it has stopped.
#[derive(Debug)]
pub struct ChildOutput {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub exit: std::process::ExitStatus,
}

impl ChildServer {
    /// Starts `coupond serve --bind 127.0.0.1:<free port> ARGS` with `envs` and waits
    /// until `/healthz` answers 200 (up to 60 s).
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> ChildServer {
        let mut last_error = String::new();
        // A port can be taken between choosing it and the child binding it; try again.
        for _ in 0..3 {
            match ChildServer::try_start(args, envs).await {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("coupond serve did not start: {last_error}");
    }

    async fn try_start(args: &[&str], envs: &[(&str, &str)]) -> Result<ChildServer, String> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let mut command = tokio::process::Command::from(coupond_command());
        command
            .arg("serve")
            .arg("--bind")
            .arg(addr.to_string())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| format!("spawning: {e}"))?;
        let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let readers = vec![
            collect_lines(child.stdout.take().expect("stdout"), stdout.clone()),
            collect_lines(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building the HTTP client");
        let client = ApiClient {
            http,
            addr,
            base_url: format!("http://{addr}"),
            api_key: None,
        };
        let mut server = ChildServer {
            addr,
            client,
            child,
            stdout,
            stderr,
            readers,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut probe = 0u32;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                for reader in server.readers.drain(..) {
                    let _ = reader.await;
                }
                return Err(format!(
                    "it exited with {status}; stderr: {}",
                    server.stderr_lines().join("\n")
                ));
            }
            probe += 1;
            let sent = server
                .client
                .http
                .get(format!("{}/healthz", server.client.base_url))
                .header("x-request-id", format!("{PROBE_REQUEST_ID_PREFIX}{probe}"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status() == StatusCode::OK) {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no 200 from /healthz within 60s; stderr: {}",
                    server.stderr_lines().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of this server that sends `key`.
    pub fn client_with(&self, key: Option<&str>) -> ApiClient {
        ApiClient {
            api_key: key.map(str::to_owned),
            ..self.client.clone()
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 15 s, then SIGKILL) for the process and its output.
    pub async fn stop(mut self) -> ChildOutput {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let exit = match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => status.expect("waiting for coupond"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "coupond did not stop within 15s of SIGTERM; stderr: {}",
                    self.stderr_lines().join("\n")
                );
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        ChildOutput {
            stdout: self.stdout_lines(),
            stderr: self.stderr_lines(),
            exit,
        }
    }
}

fn collect_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<std::sync::Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut all) = into.lock() {
                all.push(line);
            }
        }
    })
}
