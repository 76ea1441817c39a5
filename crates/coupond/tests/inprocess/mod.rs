//! A small in-process harness shared by `tests/hostile_input.rs` and `tests/security.rs`
//! (kept apart from `tests/api/helpers.rs` so that either can change on its own): a real
//! coupond server on `127.0.0.1:0` on SQLite (a temp file) or PostgreSQL (a fresh database,
//! dropped afterwards), and HTTP to it, through reqwest or raw bytes on a socket.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use coupond::app::Application;
use coupond::config::ServeArgs;
use coupond::faults::Faults;
use coupond::storage::Store;
use serde_json::Value;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ADMIN_KEY: &str = "cpd_inprocess_admin_key_for_hostile_tests";
pub const POSTGRES_URL_ENV: &str = "COUPOND_TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `name::sqlite` and `name::postgres` (the names CI counts) from `fn name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::inprocess::Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                super::$name($crate::inprocess::Backend::Postgres);
            }
        }
    };
}

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    serve: ServeArgs,
}

enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin: String, name: String },
}

pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    pub store: Store,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    db: Db,
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        static N: AtomicU64 = AtomicU64::new(0);
        let (url, db) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("coupond.db").display());
                (url, Db::Sqlite(dir))
            }
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_URL_ENV)
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let name = format!(
                    "coupond_hostile_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL unreachable at {admin}: {e}"));
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("CREATE DATABASE");
                let _ = conn.close().await;
                let base = admin.split('?').next().unwrap_or(&admin);
                let base = &base[..base.rfind('/').unwrap_or(base.len())];
                (
                    format!("{base}/{name}?sslmode=disable"),
                    Db::Postgres { admin, name },
                )
            }
        };
        let mut settings = Defaults::try_parse_from([
            "coupond-test",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            &url,
        ])
        .expect("default settings")
        .serve;
        settings.bind = "127.0.0.1:0".parse().expect("addr");
        settings.database.database_url = url;
        settings.database.db_max_connections = 4;
        settings.bootstrap_admin_key = Some(ADMIN_KEY.into());
        settings.purge_interval = Duration::from_secs(3600);
        settings.not_found_limit = 0;
        settings.log.log_level = "warn".into();
        let app = Application::build(settings, Arc::new(Faults::default()))
            .await
            .expect("starting coupond");
        let addr = app.local_addr();
        let store = app.store();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            base: format!("http://{addr}"),
            store,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            stop: Some(tx),
            db,
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Reply {
        let r = builder.send().await.expect("a response");
        let status = r.status().as_u16();
        let replayed = r.headers().contains_key("idempotent-replayed");
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = r.bytes().await.expect("body").to_vec();
        Reply {
            status,
            content_type,
            body,
            replayed,
        }
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("idempotency-key", key)
                .json(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// Sends `request` as raw bytes (with `Connection: close` already in it) and reads the
    /// answer until the server closes; `None` if it closed without one.
    pub async fn raw(&self, request: &[u8]) -> Option<Reply> {
        let mut s = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let _ = s.write_all(request).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "no answer within 10 s to {:?}",
            String::from_utf8_lossy(request)
        );
        let text = String::from_utf8_lossy(&got).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let content_type = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        let replayed = head
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true");
        Some(Reply {
            status,
            content_type,
            body: body.as_bytes().to_vec(),
            replayed,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Db::Postgres { admin, name } = &self.db {
            let (admin, name) = (admin.clone(), name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .ok()?;
                    conn.close().await.ok()
                })
            })
            .join();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub replayed: bool,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `Err(why)` unless this is the error envelope `{"error": {"code", "message"}}` sent
    /// as JSON, with a stable upper-case code.
    pub fn check_envelope(&self) -> Result<String, String> {
        if !self.content_type.starts_with("application/json") {
            return Err(format!("content type {:?}", self.content_type));
        }
        let v = self
            .json()
            .ok_or_else(|| format!("not JSON: {}", self.text()))?;
        let code = v["error"]["code"]
            .as_str()
            .ok_or_else(|| format!("no error.code: {}", self.text()))?;
        if v["error"]["message"].as_str().is_none() {
            return Err(format!("no error.message: {}", self.text()));
        }
        if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err(format!("odd code {code:?}"));
        }
        Ok(code.to_owned())
    }
}

/// A multi-threaded runtime for a synchronous test (proptest drives its cases itself).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
