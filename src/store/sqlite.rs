//! The embedded store: SQLite in WAL mode (to be implemented).
//!
//! API CONTRACT: `SqliteStore::open(dir: &Path, sync: SqliteSync) -> Result<SqliteStore, StoreError>`
//! (creates the directory and the database file `chat.sqlite3` in it), then `impl Store for SqliteStore`.
