//! How each connection is tuned: the write connection for batched commits
//! in WAL mode, the readers for read-only queries beside it.

use std::time::Duration;

use rusqlite::Connection;

use super::errors::store_error;
use super::{SqliteOptions, SqliteSync};
use crate::store::StoreError;

/// How long a connection waits for a lock held by another process (e.g. the
/// `sqlite3` tool) before the call fails as `Unavailable`; the writer
/// retries such batches, so this need not cover long locks.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Switches the file to WAL (refusing a file system without it) and tunes
/// the write connection.
pub(super) fn configure_writer(
    conn: &Connection,
    options: SqliteOptions,
) -> Result<(), StoreError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(store_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "journal_mode is {mode}: the file system does not support WAL"
        )));
    }
    configure_writer_pragmas(conn, options).map_err(store_error)
}

fn configure_writer_pragmas(conn: &Connection, options: SqliteOptions) -> rusqlite::Result<()> {
    let synchronous = match options.sync {
        SqliteSync::Normal => "NORMAL",
        SqliteSync::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // See `CHAT_SQLITE_CACHE_MB` in config.rs; mmap serves cold pages of
    // the main file cheaply, but pages still in the WAL are read with pread.
    conn.pragma_update(None, "cache_size", cache_size_pragma(options.cache_mib))?;
    conn.pragma_update(None, "mmap_size", 268_435_456)?;
    // Checkpoint every ~64 MiB of WAL instead of 4 MiB: a conversation's
    // hot page is rewritten by many commits but copied back once.
    // Checkpoints run on their own thread (`checkpoint`), never at a
    // commit of this connection, which would hold up the journal.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Keep the WAL file from staying huge after a burst.
    conn.pragma_update(None, "journal_size_limit", 67_108_864)?;
    Ok(())
}

pub(super) fn configure_reader(conn: &Connection, cache_mib: u32) -> rusqlite::Result<()> {
    // Room for every query shape (filters x cursors) this store prepares.
    conn.set_prepared_statement_cache_capacity(32);
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", cache_size_pragma(cache_mib))?;
    conn.pragma_update(None, "mmap_size", 268_435_456)?;
    Ok(())
}

/// `PRAGMA cache_size` takes a negative number for a size in KiB.
fn cache_size_pragma(mib: u32) -> i64 {
    -(i64::from(mib.max(1)) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::DATABASE_FILE;

    #[test]
    fn the_cache_option_reaches_both_kinds_of_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        let options = SqliteOptions {
            sync: SqliteSync::Normal,
            cache_mib: 40,
            journal_max: 262_144,
        };
        let writer = Connection::open(&path).unwrap();
        configure_writer(&writer, options).unwrap();
        let reader = Connection::open(&path).unwrap();
        configure_reader(&reader, options.cache_mib / 4).unwrap();
        let cache = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA cache_size", [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(cache(&writer), -40 * 1024, "KiB, negative");
        assert_eq!(cache(&reader), -10 * 1024);
    }
}
