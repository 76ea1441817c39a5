//! SQLite, the embedded default: one writer thread (see `writer`) and a pool of
//! readers. WAL lets the readers run beside the writer; replays and lists never wait
//! for a write.

mod commands;
mod keys;
mod queries;
mod reads;
mod sessions;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::Connection;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    IdempotencyRecord, PoolStats, PurgeBy, StoreError, StoreOptions, WriteOutcome, WriteRequest,
};
use crate::faults::{FaultAction, Faults};
use reads::ReadPool;
use writer::Job;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for SQLite's own file lock (another process writing the
/// same file, e.g. `coupond keys`) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    reads: Arc<ReadPool>,
    writer: mpsc::Sender<Job>,
    connect: SqliteConnectOptions,
    faults: Arc<Faults>,
    /// Dropping it stops the checkpointer.
    checkpointer: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// The last write that failed for want of the database (disk full, read-only,
    /// I/O error), cleared by the next one that succeeds: readiness reports it.
    write_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a failed write keeps readiness at 503 when nothing has written since.
const WRITE_FAILURE_SHOWS_FOR: Duration = Duration::from_secs(10);

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
        let writer_path = path.clone();
        let writer_conn =
            tokio::task::spawn_blocking(move || writer::open(&writer_path, BUSY_TIMEOUT))
                .await
                .map_err(|_| StoreError::WriterGone)??;
        let (stop_checkpoints, checkpoints) = std::sync::mpsc::channel();
        let wal = writer::Wal::default();
        writer::spawn_checkpointer(&path, BUSY_TIMEOUT, wal.clone(), checkpoints)
            .map_err(|_| StoreError::WriterGone)?;
        let reads = ReadPool::new(path, BUSY_TIMEOUT, options.max_connections as usize);
        let (writer, queue) = mpsc::channel(writer::QUEUE_DEPTH);
        writer::spawn(writer_conn, queue, wal).map_err(|_| StoreError::WriterGone)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                reads,
                writer,
                connect,
                faults: options.faults,
                checkpointer: std::sync::Mutex::new(Some(stop_checkpoints)),
                write_failure: std::sync::Mutex::new(None),
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
        let queued = std::time::Instant::now();
        let job: writer::Work = Box::new(move |conn| {
            crate::metrics::record_db_wait("writer", queued.elapsed());
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
        let result = rx.await.map_err(|_| StoreError::WriterGone)?;
        if let Ok(mut failure) = self.inner.write_failure.lock() {
            match &result {
                Ok(_) => *failure = None,
                Err(e) if e.is_unavailable() => {
                    *failure = Some((std::time::Instant::now(), e.to_string()));
                }
                Err(_) => {}
            }
        }
        result
    }

    /// Readers idle and writes queued, for the metrics page.
    pub fn pool_stats(&self) -> PoolStats {
        let writer = &self.inner.writer;
        PoolStats {
            in_use: 0,
            idle: self.inner.reads.idle(),
            queued_writes: writer.max_capacity() - writer.capacity(),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        // A connection of its own: the migrator runs its own transactions, and
        // busy_timeout makes it queue behind the writer rather than fail.
        let mut conn = SqliteConnection::connect_with(&self.inner.connect).await?;
        MIGRATOR.run(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let applied: Option<i64> = self.inner.reads.read(|conn| {
            Ok(conn.query_row(
                "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
                [],
                |row| row.get(0),
            )?)
        })?;
        super::check_schema(applied, &MIGRATOR)?;
        if self.inner.writer.is_closed() {
            return Err(StoreError::WriterGone);
        }
        let failure = self.inner.write_failure.lock().ok().and_then(|f| f.clone());
        match failure {
            Some((at, why)) if at.elapsed() < WRITE_FAILURE_SHOWS_FOR => Err(
                StoreError::Unavailable(format!("writes are failing: {why}")),
            ),
            _ => Ok(()),
        }
    }

    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.writer.send(Job::Close(reply)).await.is_ok() {
            let _ = done.await;
        }
        self.inner.reads.close();
        if let Ok(mut stop) = self.inner.checkpointer.lock() {
            stop.take();
        }
    }

    pub async fn find_idempotency_record(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner
            .reads
            .read(|conn| commands::find_record(conn, scope, key))
    }

    pub async fn execute(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        // No look at the read pool first: recent replays were answered from memory
        // before this (idempotency::RecordCache), and the writer looks at the record
        // anyway. A reader's look would cost a read transaction per write, and under
        // constant writes every read transaction starts with a cold page cache.
        let faults = self.inner.faults.clone();
        self.write(move |conn| {
            let key = request.claim.key.clone();
            let outcome = commands::execute(conn, request)?;
            // The fault point sits between a write and its commit; a replay wrote nothing.
            if !matches!(outcome, WriteOutcome::Executed(_)) {
                return Ok(outcome);
            }
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
