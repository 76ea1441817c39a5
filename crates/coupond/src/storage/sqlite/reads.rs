//! The read side of SQLite: a few rusqlite connections, used right on the calling
//! task. A read here is one B-tree lookup or a short range scan in the page cache, some
//! microseconds, cheaper to run in place than to hand to another thread and wait for
//! (which is what sqlx does for SQLite, and what capped replays at half the rate,
//! docs/PERFORMANCE.md). WAL readers never wait for the writer; the one exception,
//! a checkpoint that needs the WAL reset, is bounded by the busy timeout.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags};

use crate::storage::StoreError;

pub struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    pub fn new(path: PathBuf, busy_timeout: Duration, max_idle: usize) -> Arc<ReadPool> {
        Arc::new(ReadPool {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        })
    }

    fn open(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        // A small page cache per reader: the OS caches the file too, and the server's
        // memory stays flat however many readers there are.
        conn.pragma_update(None, "cache_size", -1024)?;
        // Case folding beyond ASCII (SQLite's own LIKE and lower() stop at ASCII), so
        // that searching a name works as on PostgreSQL.
        conn.create_scalar_function(
            "coupond_fold",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| Ok(ctx.get::<String>(0)?.to_lowercase()),
        )?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Runs `read` on an idle connection (or a new one) and puts it back.
    pub fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let taken = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match taken {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = read(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        result
    }

    /// Connections open and not in use.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// Drops the idle connections.
    pub fn close(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
