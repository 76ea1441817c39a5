//! SQLite, the embedded default: one writer thread (see `writer`) and a pool of
//! readers. WAL lets the readers run beside the writer; replays and lists never wait
//! for a write.

mod commands;
mod keys;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, FromRow, QueryBuilder, Sqlite};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    IdempotencyRecord, PurgeBy, StoreError, StoreOptions, StoredResponse, WriteOutcome,
    WriteRequest,
};
use crate::domain::{from_unix_micros, Coupon, CouponStatus, ListFilter};
use crate::faults::{FaultAction, Faults};
use writer::Job;

/// How long a connection waits for SQLite's own file lock (another process writing the
/// same file, e.g. `coupond keys`) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    reads: SqlitePool,
    writer: mpsc::Sender<Job>,
    connect: SqliteConnectOptions,
    faults: Arc<Faults>,
}

#[derive(FromRow)]
struct CouponRow {
    id: i64,
    batch_id: i64,
    code: String,
    status: String,
    issued_to: Option<String>,
    issued_at: Option<i64>,
    redeemed_by: Option<String>,
    redeemed_at: Option<i64>,
    order_id: Option<String>,
    created_at: i64,
}

impl From<CouponRow> for Coupon {
    fn from(row: CouponRow) -> Coupon {
        Coupon {
            id: row.id,
            batch_id: row.batch_id,
            code: row.code,
            status: CouponStatus::parse(&row.status).unwrap_or(CouponStatus::Issued),
            issued_to: row.issued_to,
            issued_at: row.issued_at.map(from_unix_micros),
            redeemed_by: row.redeemed_by,
            redeemed_at: row.redeemed_at.map(from_unix_micros),
            order_id: row.order_id,
            created_at: from_unix_micros(row.created_at),
        }
    }
}

#[derive(FromRow)]
struct RecordRow {
    fingerprint: String,
    response_status: i64,
    response_body: Vec<u8>,
    created_at: i64,
    expires_at: i64,
}

impl From<RecordRow> for IdempotencyRecord {
    fn from(row: RecordRow) -> IdempotencyRecord {
        IdempotencyRecord {
            fingerprint: row.fingerprint,
            response: StoredResponse {
                status: u16::try_from(row.response_status).unwrap_or(500),
                body: row.response_body,
            },
            created_at: from_unix_micros(row.created_at),
            expires_at: from_unix_micros(row.expires_at),
        }
    }
}

const COUPON_COLUMNS: &str = "id, batch_id, code, status, issued_to, issued_at, redeemed_by, \
                              redeemed_at, order_id, created_at";

/// The file a `sqlite:` URL names. In-memory databases are refused: the writer and the
/// readers are separate connections, and each would see a database of its own.
fn database_path(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(PathBuf::from(path))
}

impl SqliteStore {
    pub async fn connect(url: &str, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        let path = database_path(url)?;
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        // Creates the file (and switches it to WAL) before anyone else opens it.
        let writer_conn = tokio::task::spawn_blocking(move || writer::open(&path, BUSY_TIMEOUT))
            .await
            .map_err(|_| StoreError::WriterGone)??;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect.clone())
            .await?;
        let (writer, queue) = mpsc::channel(writer::QUEUE_DEPTH);
        writer::spawn(writer_conn, queue).map_err(|_| StoreError::WriterGone)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                reads,
                writer,
                connect,
                faults: options.faults,
            }),
        })
    }

    /// Runs `work` on the writer, inside its own savepoint of the next group, and
    /// answers once that group has committed. An error from `work` undoes its writes.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: writer::Work = Box::new(move |conn| {
            let result = work(conn);
            let ok = result.is_ok();
            let reply: writer::Reply = Box::new(move |committed| {
                let _ = tx.send(match committed {
                    Ok(()) => result,
                    Err(why) => Err(StoreError::GroupCommitFailed(why)),
                });
            });
            (ok, reply)
        });
        self.inner
            .writer
            .send(Job::Work(job))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        // A dropped reply means the writer could not even start the group.
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        // A connection of its own: the migrator runs its own transactions, and
        // busy_timeout makes it queue behind the writer rather than fail.
        let mut conn = SqliteConnection::connect_with(&self.inner.connect).await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.inner.reads).await?;
        if self.inner.writer.is_closed() {
            return Err(StoreError::WriterGone);
        }
        Ok(())
    }

    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.writer.send(Job::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        self.inner.reads.close().await;
    }

    pub async fn find_idempotency_record(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row: Option<RecordRow> = sqlx::query_as(
            "SELECT fingerprint, response_status, response_body, created_at, expires_at \
             FROM idempotency_records WHERE scope = ?1 AND key = ?2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.inner.reads)
        .await?;
        Ok(row.map(IdempotencyRecord::from))
    }

    pub async fn execute(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        // Replays are reads: answer them from the read pool, without queueing behind
        // the writer. The writer looks again before it writes, so this is only a
        // shortcut, never the decision.
        let claim = &request.claim;
        if let Some(outcome) = self
            .find_idempotency_record(&claim.scope, &claim.key)
            .await?
            .and_then(|record| record.answer(&claim.fingerprint, request.now))
        {
            return Ok(outcome);
        }
        let faults = self.inner.faults.clone();
        self.write(move |conn| {
            let key = request.claim.key.clone();
            let outcome = commands::execute(conn, request)?;
            match faults.before_commit(&key) {
                FaultAction::Proceed => {}
                FaultAction::Fail => return Err(StoreError::InjectedFault),
                // Holds the writer, and so every write behind this one: tests only.
                FaultAction::Pause(d) => std::thread::sleep(d),
            }
            Ok(outcome)
        })
        .await
    }

    pub async fn purge_idempotency(
        &self,
        by: PurgeBy,
        cutoff: OffsetDateTime,
        limit: i64,
    ) -> Result<u64, StoreError> {
        self.write(move |conn| commands::purge(conn, by, cutoff, limit))
            .await
    }

    pub async fn list_coupons(&self, filter: &ListFilter) -> Result<Vec<Coupon>, StoreError> {
        let mut query =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COUPON_COLUMNS} FROM coupons WHERE 1"));
        if let Some(user) = &filter.user_id {
            query
                .push(" AND (issued_to = ")
                .push_bind(user)
                .push(" OR redeemed_by = ")
                .push_bind(user)
                .push(")");
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(filter.limit);
        let rows: Vec<CouponRow> = query.build_query_as().fetch_all(&self.inner.reads).await?;
        Ok(rows.into_iter().map(Coupon::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::database_path;

    #[test]
    fn urls_name_files() {
        assert_eq!(
            database_path("sqlite://coupond.db").ok(),
            Some("coupond.db".into())
        );
        assert_eq!(
            database_path("sqlite:///var/lib/c.db?mode=rwc").ok(),
            Some("/var/lib/c.db".into())
        );
        assert_eq!(
            database_path("sqlite:rel/c.db").ok(),
            Some("rel/c.db".into())
        );
        assert!(database_path("sqlite::memory:").is_err());
        assert!(database_path("sqlite://").is_err());
        assert!(database_path("postgres://x").is_err());
    }
}
