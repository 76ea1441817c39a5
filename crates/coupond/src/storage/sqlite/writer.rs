//! The one SQLite writer: a thread of its own holding the only write connection.
//! Whatever requests are waiting when it comes round are committed as one transaction
//! (group commit), each inside its own savepoint so that one request's failure undoes
//! only its own work. Concurrent writers therefore queue instead of failing with
//! "database is locked", and the cost of a commit is shared by the group.
//!
//! It uses rusqlite rather than sqlx: every statement here is a direct call on this
//! thread, where sqlx would send each one to a worker thread and back, and this loop
//! is the ceiling of the whole service's write throughput (docs/PERFORMANCE.md).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// The writer's page cache. Issuing inserts codes at random places in the code index,
/// so its pages are touched all over; this keeps most of them in memory.
const WRITER_CACHE_KIB: i64 = 4 * 1024;
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
/// WAL frames (pages) after which the writer starts the WAL over from its beginning.
/// Readers are always about, so the WAL never goes back to the start by itself; it
/// would grow without end, and every write would land on fresh disk blocks.
const RESTART_FRAMES: i64 = 32_768;
/// What the WAL file is cut back to after a restart, if it grew beyond.
const WAL_SIZE_LIMIT: i64 = 160 << 20;

/// What the writer and the checkpointer share about the WAL.
#[derive(Clone, Default)]
pub struct Wal {
    /// Frames in the WAL, as the checkpointer last saw them.
    frames: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Held while either of them checkpoints, so that neither ever waits in SQLite's
    /// busy handler (which sleeps in steps of milliseconds) for the other.
    checkpointing: std::sync::Arc<std::sync::Mutex<()>>,
}

/// Most requests one transaction commits; bounds the latency a group adds.
const MAX_GROUP: usize = 256;
/// Requests allowed to wait for the writer before callers feel backpressure.
pub const QUEUE_DEPTH: usize = 8192;

/// Called once the job's group has committed (`Ok`) or failed to (`Err` with why).
pub type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Work for the writer: run on the write connection inside the job's savepoint, it
/// says whether it succeeded (on failure the savepoint is rolled back) and how to
/// answer once the group's fate is known.
pub type Work = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

pub enum Job {
    Work(Work),
    /// Finish what is queued before it, then stop.
    Close(oneshot::Sender<()>),
}

/// Opens the write connection with the settings every coupond writer uses.
pub fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    // WAL with synchronous=NORMAL: a committed group survives a crash of coupond or of
    // the OS process; a power cut can lose the last groups committed before it, never
    // corrupt the file. Readers run beside the writer.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints (copying the WAL back into the database file, with its fsync) run
    // on a thread of their own, see `spawn_checkpointer`, not inside this writer's
    // commits, where they would stall every request queued behind them.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Starts the writer thread; it ends when every sender is gone or a `Close` arrives.
pub fn spawn(conn: Connection, queue: mpsc::Receiver<Job>, wal: Wal) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("coupond-sqlite-writer".into())
        .spawn(move || run(conn, queue, &wal))
        .map(drop)
}

/// Runs a checkpoint; answers the number of frames in the WAL.
fn checkpoint(conn: &Connection, mode: &str) -> Result<i64, rusqlite::Error> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        row.get::<_, i64>(1)
    })
}

/// Checkpoints the WAL in the background (PASSIVE: never waits for the writer or the
/// readers, copies what it can). Ends when `stop` is dropped.
pub fn spawn_checkpointer(
    path: &Path,
    busy_timeout: Duration,
    wal: Wal,
    stop: std::sync::mpsc::Receiver<()>,
) -> std::io::Result<()> {
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("coupond-sqlite-checkpoint".into())
        .spawn(move || {
            let conn = match open(&path, busy_timeout) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::error!(error = %e, "sqlite checkpointer could not open the database");
                    return;
                }
            };
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(CHECKPOINT_EVERY)
            {
                let Ok(_checkpointing) = wal.checkpointing.lock() else {
                    break;
                };
                match checkpoint(&conn, "PASSIVE") {
                    Ok(frames) => wal.frames.store(frames, Ordering::Relaxed),
                    Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
                }
            }
            // A last full one, so a clean stop leaves a short WAL.
            let _ = checkpoint(&conn, "TRUNCATE");
        })
        .map(drop)
}

fn run(conn: Connection, mut queue: mpsc::Receiver<Job>, wal: &Wal) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = queue.blocking_recv() else {
            break;
        };
        let mut group = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Close(reply) => closing = Some(reply),
                Job::Work(work) => group.push(work),
            }
            if closing.is_none() && group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&conn, group);
        }
        if wal.frames.load(Ordering::Relaxed) >= RESTART_FRAMES {
            // Between groups, with nothing of ours in flight, and only if the
            // checkpointer is not at work (else next time). It has copied most frames
            // already, so this mostly waits for readers of old snapshots and rewinds.
            if let Ok(_checkpointing) = wal.checkpointing.try_lock() {
                let started = std::time::Instant::now();
                match checkpoint(&conn, "RESTART") {
                    Ok(frames) => {
                        wal.frames.store(0, Ordering::Relaxed);
                        tracing::debug!(
                            frames,
                            took_ms = started.elapsed().as_secs_f64() * 1e3,
                            "sqlite WAL restarted"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "sqlite WAL restart failed"),
                }
            }
        }
    }
    drop(conn);
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

fn commit_group(conn: &Connection, group: Vec<Work>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "sqlite writer could not begin a transaction");
        // Dropping the work drops its reply channel: each caller learns that its
        // write did not happen.
        drop(group);
        return;
    }
    let replies: Vec<Reply> = group
        .into_iter()
        .map(|work| run_in_savepoint(conn, work))
        .collect();
    match exec(conn, "COMMIT") {
        Ok(()) => replies.into_iter().for_each(|reply| reply(Ok(()))),
        Err(e) => {
            tracing::error!(error = %e, "sqlite group commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            let why = e.to_string();
            replies
                .into_iter()
                .for_each(|reply| reply(Err(why.clone())));
        }
    }
}

fn run_in_savepoint(conn: &Connection, work: Work) -> Reply {
    if let Err(e) = exec(conn, "SAVEPOINT job") {
        tracing::error!(error = %e, "sqlite savepoint failed");
        drop(work);
        return Box::new(drop);
    }
    let (ok, reply) = work(conn);
    if !ok {
        if let Err(e) = exec(conn, "ROLLBACK TO job") {
            tracing::error!(error = %e, "sqlite rollback to savepoint failed");
        }
    }
    if let Err(e) = exec(conn, "RELEASE job") {
        tracing::error!(error = %e, "sqlite release savepoint failed");
    }
    reply
}

/// Runs a statement through the prepared-statement cache: these few run for every job.
fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}
