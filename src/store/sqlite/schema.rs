//! The tables and indexes, created (or completed) when the store opens.
//!
//! Ids are the 12 ObjectId bytes as BLOBs, so SQLite's memcmp order is id
//! order; times are INTEGER milliseconds (`Millis`). `messages` is a
//! WITHOUT ROWID table keyed by (conversation_id, id): a history page is one
//! primary-key range scan, and every write names its conversation.

use rusqlite::Connection;

use super::errors::store_error;
use crate::store::StoreError;

/// The schema version this code writes (`PRAGMA user_version`). Adding an
/// index does not change it: `CREATE INDEX IF NOT EXISTS` adds it to an
/// existing database at open, and an older build still reads and writes a
/// database that has it (SQLite maintains it), so a rollback keeps working.
const SCHEMA_VERSION: i64 = 1;

/// The index connects read client ids from before a message was relayed
/// only once stored (CONTRACT §6): nothing reads it now, and every insert
/// paid for it, so it is dropped at open (an older build recreates it).
const RETIRED_INDEX: &str = "messages_recent_client_ids";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    id         BLOB    NOT NULL PRIMARY KEY,
    lesson_id  INTEGER NOT NULL,
    mentor_id  INTEGER NOT NULL,
    student_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (lesson_id, mentor_id, student_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_mentor
    ON conversations (mentor_id, created_at, id);
CREATE INDEX IF NOT EXISTS conversations_by_student
    ON conversations (student_id, created_at, id);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id BLOB    NOT NULL,
    id              BLOB    NOT NULL,
    sender_id       INTEGER NOT NULL,
    text            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    client_id       TEXT,
    viewed_by       INTEGER,
    viewed_at       INTEGER,
    seq             INTEGER,
    PRIMARY KEY (conversation_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (conversation_id, sender_id, client_id) WHERE client_id IS NOT NULL;
";

/// After `seq` exists (a database from before it gets the column first).
/// NULLs (legacy messages before their numbering) are distinct, so the
/// index is unique without being partial; `last_seq` is one probe of it.
const SEQ_INDEX: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (conversation_id, seq);
-- A participant's newest message (posting moves their read cursor) and
-- the other's messages after a cursor (unread counts, waiting_since).
CREATE INDEX IF NOT EXISTS messages_by_sender_seq ON messages (conversation_id, sender_id, seq);
-- Read cursors moved by `read` and `viewed` (CONTRACT §6); written by the
-- write thread directly, not through the journal: they are few.
CREATE TABLE IF NOT EXISTS read_cursors (
    conversation_id BLOB    NOT NULL,
    user_id         INTEGER NOT NULL,
    last_read_seq   INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
";

/// Creates what is missing and records the version; refuses a database a
/// newer build wrote.
pub(super) fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(store_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "database schema version {version} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    conn.execute_batch(SCHEMA).map_err(store_error)?;
    if !column_exists(conn, "messages", "seq")? {
        // A database from before seq: its messages are numbered at open
        // (`legacy_seq`). Nullable, so an older build still writes rows.
        conn.execute_batch("ALTER TABLE messages ADD COLUMN seq INTEGER")
            .map_err(store_error)?;
        tracing::info!("SQLite column messages.seq added to the existing database");
    }
    conn.execute_batch(SEQ_INDEX).map_err(store_error)?;
    if index_exists(conn, RETIRED_INDEX)? {
        conn.execute_batch(&format!("DROP INDEX {RETIRED_INDEX}"))
            .map_err(store_error)?;
        tracing::info!(
            index = RETIRED_INDEX,
            "SQLite index no longer used, dropped"
        );
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(store_error)
}

fn column_exists(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |row| row.get(0),
    )
    .map_err(store_error)
}

fn index_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
        [name],
        |row| row.get(0),
    )
    .map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::DATABASE_FILE;

    #[test]
    fn an_existing_database_gets_the_new_indexes_and_loses_the_retired_one() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        create_schema(&conn).unwrap();
        conn.execute_batch(&format!(
            "DROP INDEX messages_by_sender_seq;
             CREATE INDEX {RETIRED_INDEX} ON messages (conversation_id, sender_id, id, client_id)
                 WHERE client_id IS NOT NULL;"
        ))
        .unwrap();

        create_schema(&conn).unwrap();
        assert!(index_exists(&conn, "messages_by_sender_seq").unwrap());
        assert!(!index_exists(&conn, RETIRED_INDEX).unwrap());
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
