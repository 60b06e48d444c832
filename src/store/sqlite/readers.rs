//! The reader pool: a few threads, each owning a read-only connection,
//! sharing one job queue.
//!
//! WAL lets them read while the write thread commits, so a history page
//! never waits behind a batch, and no SQLite call blocks a runtime thread.

use std::path::Path;
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::errors::{store_error, threads_stopped};
use super::pragmas::configure_reader;
use super::spawn_thread;
use crate::store::{StoreError, StoreFuture};

/// Reader threads: enough that a slow page does not hold up the next request
/// on a 2-core machine, few enough to stay cheap.
const READERS: usize = 3;

/// Work for a reader thread: a query that sends its own result.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The readers' connections, opened but not yet serving.
pub(super) struct ReaderConnections(Vec<Connection>);

/// The queue of the running readers; dropping it stops them once the jobs
/// already queued are done.
pub(super) struct Readers {
    jobs: mpsc::Sender<ReadJob>,
}

impl ReaderConnections {
    /// Opens every reader's connection to `path`, each with `cache_mib` of
    /// page cache. Call it after the writer switched the file to WAL, so
    /// readers never see a rollback journal.
    pub(super) fn open(path: &Path, cache_mib: u32) -> Result<ReaderConnections, StoreError> {
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(store_error)?;
            configure_reader(&conn, cache_mib).map_err(store_error)?;
            readers.push(conn);
        }
        Ok(ReaderConnections(readers))
    }

    /// Starts a thread per connection.
    pub(super) fn start(self) -> Result<Readers, StoreError> {
        let (jobs, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for (n, conn) in self.0.into_iter().enumerate() {
            let queue = Arc::clone(&queue);
            spawn_thread(&format!("sqlite-reader-{n}"), move || {
                run_reader(conn, &queue)
            })?;
        }
        Ok(Readers { jobs })
    }
}

impl Readers {
    /// Runs `query` on a reader thread.
    pub(super) fn read<T, F>(&self, query: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.read_store(move |conn| query(conn).map_err(store_error))
    }

    /// [`Readers::read`] for a query that maps its own errors.
    pub(super) fn read_store<T, F>(&self, query: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let job: ReadJob = Box::new(move |conn| {
                let _ = reply.send(query(conn));
            });
            self.jobs.send(job).map_err(|_| threads_stopped())?;
            // The reply is dropped unanswered only when the query panicked.
            answer
                .await
                .map_err(|_| StoreError::Internal("a SQLite read failed (logged)".into()))?
        })
    }
}

fn run_reader(conn: Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        // One reader waits in `recv` while the others wait for the lock;
        // the lock is released before the job runs.
        let job = jobs.lock().recv();
        match job {
            // A panicking query (a bug) fails its own request, whose reply
            // is dropped, and not every later read: the thread lives on.
            // Its statements were dropped in the unwind; a transaction it
            // had begun is rolled back here, or the connection would keep
            // an old snapshot and pin the WAL.
            Ok(job) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn))).is_err() {
                    tracing::error!("a SQLite read panicked; its request failed");
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                }
            }
            Err(mpsc::RecvError) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More panicking reads than there are reader threads, then a read that
    /// must still be answered: before, each panic killed its thread for
    /// good, and three of them stopped every read of the store.
    #[tokio::test]
    async fn a_panicking_read_fails_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("readers.sqlite3");
        Connection::open(&path)
            .and_then(|conn| conn.pragma_update(None, "journal_mode", "WAL"))
            .expect("a WAL database");
        let readers = ReaderConnections::open(&path, 1)
            .and_then(ReaderConnections::start)
            .expect("readers");
        for _ in 0..READERS * 2 {
            // Inside a transaction, as the inbox reads.
            let failed = readers
                .read(|conn| -> rusqlite::Result<()> {
                    conn.execute_batch("BEGIN")?;
                    panic!("a bug in a query")
                })
                .await;
            assert!(failed.is_err());
        }
        for _ in 0..READERS * 2 {
            let answer = readers
                .read(|conn| {
                    conn.execute_batch("BEGIN")?;
                    let answer = conn.query_row("SELECT 41 + 1", [], |row| row.get::<_, i64>(0));
                    conn.execute_batch("COMMIT")?;
                    answer
                })
                .await;
            assert_eq!(answer.ok(), Some(42));
        }
    }
}
