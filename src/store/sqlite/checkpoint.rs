//! WAL checkpoints on a thread of their own: copying the WAL into the
//! database file (and, under `synchronous=normal`, syncing it) takes tens
//! of milliseconds for a large WAL. Run by the write connection at a commit
//! (SQLite's automatic checkpoint), it would hold up the next journal
//! append and so every waiting message; here it runs beside it. A PASSIVE
//! checkpoint never waits for the writer or the readers.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

use super::errors::store_error;
use super::priority::lower_priority;
use super::spawn_thread;
use crate::store::StoreError;

/// How often the WAL is checkpointed: a merge step adds at most a few
/// hundred pages, so the WAL stays a few MiB.
const INTERVAL: Duration = Duration::from_millis(200);

/// The running checkpointer; dropping it stops the thread.
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path).map_err(store_error)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = spawn_thread("sqlite-checkpoint", move || run(&conn, &stopped))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    lower_priority();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        if let Err(error) = checkpoint(conn) {
            tracing::warn!(%error, "WAL checkpoint failed; retrying");
        }
    }
}

/// One PASSIVE checkpoint: (WAL frames, frames copied).
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::DATABASE_FILE;

    #[test]
    fn a_passive_checkpoint_copies_the_wal_while_another_connection_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        let writer = Connection::open(&path).unwrap();
        writer
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        let checkpointer = Connection::open(&path).unwrap();
        let (frames, copied) = checkpoint(&checkpointer).unwrap();
        assert!(frames > 0, "the writer's commits are in the WAL");
        assert_eq!(copied, frames, "all of it copied");
        // A write transaction open on the writer does not block it.
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (3);")
            .unwrap();
        checkpoint(&checkpointer).unwrap();
        writer.execute_batch("COMMIT").unwrap();
    }
}
