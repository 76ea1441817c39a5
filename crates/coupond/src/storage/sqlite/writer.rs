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
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::commands;
use crate::faults::{FaultAction, Faults};
use crate::storage::{StoreError, WriteOutcome, WriteRequest};

/// Most requests one transaction commits; bounds the latency a group adds.
const MAX_GROUP: usize = 256;
/// Requests allowed to wait for the writer before callers feel backpressure.
pub const QUEUE_DEPTH: usize = 8192;

pub enum Job {
    Execute(
        Box<WriteRequest>,
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
    ),
    Purge {
        cutoff: OffsetDateTime,
        limit: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
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
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Starts the writer thread; it ends when every sender is gone or a `Close` arrives.
pub fn spawn(
    conn: Connection,
    queue: mpsc::Receiver<Job>,
    faults: Arc<Faults>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("coupond-sqlite-writer".into())
        .spawn(move || run(conn, queue, &faults))
        .map(drop)
}

fn run(conn: Connection, mut queue: mpsc::Receiver<Job>, faults: &Faults) {
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
                work => group.push(work),
            }
            if closing.is_none() && group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&conn, group, faults);
        }
    }
    drop(conn);
    if let Some(reply) = closing {
        let _ = reply.send(());
    }
}

/// A job's result, held back until its group has committed.
enum Done {
    Execute(
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
        Result<WriteOutcome, StoreError>,
    ),
    Purge(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
}

impl Done {
    fn is_ok(&self) -> bool {
        match self {
            Done::Execute(_, r) => r.is_ok(),
            Done::Purge(_, r) => r.is_ok(),
        }
    }

    fn send(self) {
        // A caller that went away no longer needs the answer; its effect stands.
        match self {
            Done::Execute(reply, result) => drop(reply.send(result)),
            Done::Purge(reply, result) => drop(reply.send(result)),
        }
    }

    fn fail(self, why: &str) {
        let error = || StoreError::GroupCommitFailed(why.to_owned());
        match self {
            Done::Execute(reply, _) => drop(reply.send(Err(error()))),
            Done::Purge(reply, _) => drop(reply.send(Err(error()))),
        }
    }
}

fn commit_group(conn: &Connection, group: Vec<Job>, faults: &Faults) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "sqlite writer could not begin a transaction");
        let why = e.to_string();
        for job in group {
            fail_job(job, &why);
        }
        return;
    }
    let done: Vec<Done> = group
        .into_iter()
        .filter_map(|job| run_in_savepoint(conn, job, faults))
        .collect();
    match exec(conn, "COMMIT") {
        Ok(()) => done.into_iter().for_each(Done::send),
        Err(e) => {
            tracing::error!(error = %e, "sqlite group commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            let why = e.to_string();
            done.into_iter().for_each(|d| d.fail(&why));
        }
    }
}

fn fail_job(job: Job, why: &str) {
    let error = StoreError::GroupCommitFailed(why.to_owned());
    match job {
        Job::Execute(_, reply) => drop(reply.send(Err(error))),
        Job::Purge { reply, .. } => drop(reply.send(Err(error))),
        Job::Close(reply) => drop(reply.send(())),
    }
}

fn run_in_savepoint(conn: &Connection, job: Job, faults: &Faults) -> Option<Done> {
    if let Err(e) = exec(conn, "SAVEPOINT job") {
        let why = e.to_string();
        fail_job(job, &why);
        return None;
    }
    let done = match job {
        Job::Execute(request, reply) => {
            let key = request.claim.key.clone();
            let mut result = commands::execute(conn, *request);
            if result.is_ok() {
                match faults.before_commit(&key) {
                    FaultAction::Proceed => {}
                    FaultAction::Fail => result = Err(StoreError::InjectedFault),
                    FaultAction::Pause(d) => std::thread::sleep(d),
                }
            }
            Done::Execute(reply, result)
        }
        Job::Purge {
            cutoff,
            limit,
            reply,
        } => Done::Purge(reply, commands::purge(conn, cutoff, limit)),
        Job::Close(reply) => {
            // Close never reaches a group; answer it rather than leave it hanging.
            let _ = reply.send(());
            let _ = exec(conn, "RELEASE job");
            return None;
        }
    };
    if !done.is_ok() {
        if let Err(e) = exec(conn, "ROLLBACK TO job") {
            tracing::error!(error = %e, "sqlite rollback to savepoint failed");
        }
    }
    if let Err(e) = exec(conn, "RELEASE job") {
        tracing::error!(error = %e, "sqlite release savepoint failed");
    }
    Some(done)
}

/// Runs a statement through the prepared-statement cache: these few run for every job.
fn exec(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}
