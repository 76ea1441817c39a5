//! Throwaway databases, and direct reads of them for the cross-checks that the API
//! cannot make (row counts, `PRAGMA integrity_check`, plain-text secrets).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use anyhow::{bail, Context, Result};
use sqlx::{Connection, Row};

/// The maintenance database PostgreSQL databases are created from (as the main suite).
pub const POSTGRES_URL_ENV: &str = "COUPOND_TEST_POSTGRES_URL";
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// `<prefix><pid>_<n>`: a database whose pid is gone was left by a killed run.
const PG_PREFIX: &str = "coupond_rel_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

pub fn postgres_admin_url() -> String {
    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A database of its own for one test, and a temp dir for its servers' logs (and the
/// SQLite file). PostgreSQL databases are dropped on drop; the dir is removed unless the
/// test is panicking, so a failure leaves the logs to look at (the path is printed).
pub struct Database {
    pub backend: Backend,
    /// What `coupond serve --database-url` gets.
    pub url: String,
    pub dir: PathBuf,
    pg: Option<PgDb>,
}

struct PgDb {
    admin_url: String,
    name: String,
}

impl Database {
    pub async fn create(backend: Backend) -> Result<Database> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "coupond-reliability-{}-{}-{n}-{}",
            backend.name(),
            std::process::id(),
            crate::random_tag()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        match backend {
            Backend::Sqlite => Ok(Database {
                backend,
                url: format!("sqlite://{}", dir.join("coupond.db").display()),
                dir,
                pg: None,
            }),
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("{PG_PREFIX}{}_{n}", std::process::id());
                let mut admin = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .with_context(|| {
                        format!(
                            "PostgreSQL is unreachable at {admin_url}; start it or set {POSTGRES_URL_ENV}"
                        )
                    })?;
                drop_stale(&mut admin).await;
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("CREATE DATABASE {name}"))?;
                let _ = admin.close().await;
                Ok(Database {
                    backend,
                    url: server_url(&admin_url, &name),
                    dir,
                    pg: Some(PgDb { admin_url, name }),
                })
            }
        }
    }

    /// The SQLite file, for SQLite databases.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    /// One integer from `sql` (a `SELECT count(*) ...`), read directly from the database.
    pub async fn scalar(&self, sql: &str) -> Result<i64> {
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path().context("no SQLite path")?;
                let sql = sql.to_owned();
                tokio::task::spawn_blocking(move || {
                    let conn = open_sqlite_read_only(&path)?;
                    conn.query_row(&sql, [], |r| r.get::<_, i64>(0))
                        .with_context(|| format!("{sql} on {}", path.display()))
                })
                .await
                .context("SQLite read task")?
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                let row = sqlx::query(sql).fetch_one(&mut conn).await?;
                let _ = conn.close().await;
                Ok(row.try_get::<i64, _>(0)?)
            }
        }
    }

    /// `PRAGMA integrity_check` of the SQLite file: `ok` or what is wrong.
    pub fn sqlite_integrity_check(&self) -> Result<String> {
        let path = self.sqlite_path().context("not a SQLite database")?;
        integrity_check(&path)
    }

    /// Every value of every table as text, for searching secrets in it. SQLite: the raw
    /// bytes of the database file, its WAL and its shared memory file are searched by
    /// the caller (see [`Database::raw_files`]); this adds the values decoded.
    pub async fn dump_text(&self) -> Result<String> {
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path().context("no SQLite path")?;
                tokio::task::spawn_blocking(move || {
                    let conn = open_sqlite_read_only(&path)?;
                    let mut tables = conn.prepare(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                    )?;
                    let names: Vec<String> = tables
                        .query_map([], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    let mut out = String::new();
                    for name in names {
                        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\""))?;
                        let columns = stmt.column_count();
                        let mut rows = stmt.query([])?;
                        while let Some(row) = rows.next()? {
                            for i in 0..columns {
                                let v: rusqlite::types::Value = row.get(i)?;
                                match v {
                                    rusqlite::types::Value::Text(t) => out.push_str(&t),
                                    rusqlite::types::Value::Blob(b) => {
                                        out.push_str(&String::from_utf8_lossy(&b))
                                    }
                                    other => out.push_str(&format!("{other:?}")),
                                }
                                out.push('\t');
                            }
                            out.push('\n');
                        }
                    }
                    anyhow::Ok(out)
                })
                .await
                .context("SQLite dump task")?
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await?;
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
                )
                .fetch_all(&mut conn)
                .await?;
                let mut out = String::new();
                for (name,) in tables {
                    let rows: Vec<(String,)> =
                        sqlx::query_as(&format!("SELECT row_to_json(t)::text FROM \"{name}\" t"))
                            .fetch_all(&mut conn)
                            .await?;
                    for (row,) in rows {
                        out.push_str(&row);
                        out.push('\n');
                    }
                }
                let _ = conn.close().await;
                Ok(out)
            }
        }
    }

    /// The SQLite file and its `-wal` / `-shm` companions that exist.
    pub fn raw_files(&self) -> Vec<PathBuf> {
        let Some(path) = self.sqlite_path() else {
            return Vec::new();
        };
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())))
            .filter(|p| p.is_file())
            .collect()
    }
}

pub fn open_sqlite_read_only(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// `PRAGMA integrity_check` of a SQLite file (read-write open, so that a WAL left by a
/// crash is recovered first, as the server would).
pub fn integrity_check(path: &Path) -> Result<String> {
    let conn =
        rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if lines.is_empty() {
        bail!("PRAGMA integrity_check returned nothing");
    }
    Ok(lines.join("; "))
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            let (admin_url, name) = (pg.admin_url, pg.name);
            // Drop may run inside a runtime, which must not block: a thread of its own.
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
                Ok(Err(e)) => eprintln!("warning: dropping a test database failed: {e}"),
                Err(_) => eprintln!("warning: the thread dropping a test database panicked"),
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "coupond-reliability: kept {} (server logs) for the failed test",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Databases of this suite whose test process no longer exists.
async fn drop_stale(admin: &mut sqlx::PgConnection) {
    static ONCE: Once = Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if !first {
        return;
    }
    let Ok(names) = sqlx::query_as::<_, (String,)>(
        "SELECT datname::text FROM pg_database WHERE datname LIKE $1",
    )
    .bind(format!("{PG_PREFIX}%"))
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    for (name,) in names {
        let pid = name
            .strip_prefix(PG_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut *admin)
            .await;
    }
}

/// The maintenance URL with its database replaced by `db` and `sslmode=disable`.
pub fn server_url(admin_url: &str, db: &str) -> String {
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

/// Copies the whole WAL of a SQLite file into the database file and syncs it (polling
/// until no frame is left behind a reader), so that what was committed so far survives
/// even a disk that dies the next moment. coupond runs with `synchronous=NORMAL`, which
/// promises that only for process crashes: a power cut or dying disk may take the last
/// commits before they are checkpointed.
pub fn sqlite_make_durable(path: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (busy, log, done): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if busy == 0 && log == done {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("WAL still has {} of {log} frames to copy", log - done);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::server_url;

    #[test]
    fn server_urls() {
        assert_eq!(
            server_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(
            server_url("postgres://u@h/p?sslmode=require&application_name=a", "x"),
            "postgres://u@h/x?application_name=a&sslmode=disable"
        );
    }
}
