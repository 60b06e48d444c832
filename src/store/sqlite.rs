//! The embedded store: SQLite in WAL mode, used when `MONGO_URI` is unset.
//!
//! # Threads
//!
//! Every SQLite call blocks, so none runs on a tokio runtime thread. One
//! dedicated thread owns the only write connection, the journal and the
//! tail of unmerged messages (`write_thread`), and runs every write — the
//! writer's batches and conversation creation — in arrival order, which
//! also makes get-or-create race-free inside the process (the UNIQUE key
//! makes it race-free across processes). A batch is acknowledged once it
//! is appended to the journal; the thread merges the journal into SQLite
//! between jobs, and readers add the unmerged tail to what they read. A few reader threads each own a
//! read-only connection and share one job queue; WAL lets them read while a
//! batch is being written, so a history page never waits behind a batch.
//! Dropping the store closes the queues; the threads finish their current
//! job and close their connections.
//!
//! # Schema
//!
//! Ids are the 12 ObjectId bytes as BLOBs, so SQLite's memcmp order is id
//! order; times are INTEGER milliseconds (`Millis`). `messages` is a
//! WITHOUT ROWID table keyed by (conversation_id, id): a history page is one
//! primary-key range scan, and every write names its conversation.

mod journal;
mod page_cache;
mod tail;
mod write_thread;

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rusqlite::{ffi, Connection, OpenFlags, OptionalExtension, Row};

use self::tail::Tail;
use self::write_thread::WriteThread;
use tokio::sync::oneshot;

use super::{
    ConversationFilter, HistoryPage, HistoryQuery, PageBuilder, Store, StoreError, StoreFuture,
    WriteOp, WriteOutcome,
};
use crate::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, ObjectId, UserId,
};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

pub use page_cache::{install as install_page_cache, truncate_counts, TruncateCounts};

/// Reader threads: enough that a slow page does not hold up the next request
/// on a 2-core machine, few enough to stay cheap.
const READERS: usize = 3;

/// How long a connection waits for a lock held by another process (e.g. the
/// `sqlite3` tool) before the call fails as `Unavailable`; the writer
/// retries such batches, so this need not cover long locks.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// The schema version this code writes (`PRAGMA user_version`). Adding an
/// index does not change it: `CREATE INDEX IF NOT EXISTS` adds it to an
/// existing database at open, and an older build still reads and writes a
/// database that has it (SQLite maintains it), so a rollback keeps working.
const SCHEMA_VERSION: i64 = 1;

/// See `SCHEMA`; its creation on an existing database is logged.
const RECENT_CLIENT_IDS_INDEX: &str = "messages_recent_client_ids";

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
    PRIMARY KEY (conversation_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_client_id
    ON messages (conversation_id, sender_id, client_id) WHERE client_id IS NOT NULL;
-- `RECENT_CLIENT_IDS` (every WebSocket connect) reads it newest first and
-- stops at its limit, never visiting the messages without a client id (seed
-- clients send none); `client_id` last makes it covering.
CREATE INDEX IF NOT EXISTS messages_recent_client_ids
    ON messages (conversation_id, sender_id, id, client_id) WHERE client_id IS NOT NULL;
";

const CONVERSATION_COLUMNS: &str = "id, lesson_id, mentor_id, student_id, created_at";
const MESSAGE_COLUMNS: &str =
    "id, conversation_id, sender_id, text, created_at, client_id, viewed_by, viewed_at";

/// Merges a journaled message. It may be stored already (journaled again by
/// a retry, or replayed after a crash during a merge): then only a view the
/// journaled copy carries is kept. Any other conflict (a resend's client id
/// the write path let through) stores nothing.
const INSERT_MESSAGE: &str = "INSERT INTO messages
    (conversation_id, id, sender_id, text, created_at, client_id, viewed_by, viewed_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT (conversation_id, id) DO UPDATE
        SET viewed_by = excluded.viewed_by, viewed_at = excluded.viewed_at
        WHERE excluded.viewed_by IS NOT NULL
    ON CONFLICT DO NOTHING";
/// `ViewEffect::of` in SQL: a view by someone other than the sender, and
/// once per viewer (the same view again, a retry, rewrites the same values).
const VIEW_MESSAGE: &str = "UPDATE messages SET viewed_by = ?3, viewed_at = ?4
    WHERE conversation_id = ?1 AND id = ?2 AND sender_id <> ?3
        AND (viewed_by IS NOT ?3 OR viewed_at = ?4)";
/// Whether a view that changed nothing had a target (then it was a repeat).
const VIEW_TARGET: &str = "SELECT 1 FROM messages
    WHERE conversation_id = ?1 AND id = ?2 AND sender_id <> ?3";
/// A sender's newest client ids; planned onto `messages_recent_client_ids`
/// (a test checks the plan).
const RECENT_CLIENT_IDS: &str = "SELECT client_id, id FROM messages
    WHERE conversation_id = ?1 AND sender_id = ?2 AND client_id IS NOT NULL
    ORDER BY id DESC LIMIT ?3";
const INSERT_CONVERSATION: &str = "INSERT INTO conversations
    (id, lesson_id, mentor_id, student_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING";

/// SQLite's `synchronous` setting for the embedded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    /// Survives a crash of the process (WAL, no fsync per commit).
    Normal,
    /// Survives power loss (fsync per commit).
    Full,
}

/// How the embedded store is opened; built from `CHAT_SQLITE_*`, whose
/// defaults (and why they are what they are) are `Config`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    pub sync: SqliteSync,
    /// Page cache of the write connection, in MiB (each reader gets a quarter).
    pub cache_mib: u32,
    /// Journaled messages held in memory, unmerged, at most: beyond it a
    /// batch's ack waits for the merge. 0 merges every batch before its ack
    /// (no journal).
    pub journal_max: usize,
}

/// SQLite behind the [`Store`] trait; see the module docs.
pub struct SqliteStore {
    /// `None` once dropping began: closing it tells the write thread to
    /// merge what it holds and stop.
    writes: Option<mpsc::Sender<WriteJob>>,
    reads: mpsc::Sender<ReadJob>,
    /// Journaled messages not yet in SQLite, which readers add to theirs.
    tail: Arc<RwLock<Tail>>,
    write_thread: Option<thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    /// Waits for the write thread's last merge, so a store closed cleanly
    /// leaves SQLite complete and no journal behind.
    fn drop(&mut self) {
        self.writes = None;
        if let Some(thread) = self.write_thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Work for the write thread.
enum WriteJob {
    Batch {
        ops: Vec<WriteOp>,
        reply: Reply<Vec<WriteOutcome>>,
    },
    ConversationFor {
        key: ConversationKey,
        created_at: Millis,
        reply: Reply<Conversation>,
    },
}

/// Work for a reader thread: a query that sends its own result.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

impl SqliteStore {
    /// Opens (creating if needed) `dir/chat.sqlite3`, creates the schema and
    /// starts the writer and reader threads. Blocking: call it before the
    /// runtime serves traffic, or from `spawn_blocking`.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        // SQLite's own messages ("unable to open database file") do not
        // say which file: every open error names the directory.
        Self::open_in(dir, options).map_err(|error| {
            let place = dir.display().to_string();
            match error {
                StoreError::Unavailable(m) if !m.contains(&place) => {
                    StoreError::Unavailable(format!("{place}: {m}"))
                }
                StoreError::Internal(m) if !m.contains(&place) => {
                    StoreError::Internal(format!("{place}: {m}"))
                }
                named => named,
            }
        })
    }

    fn open_in(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(DATABASE_FILE);

        // Must precede the process's first connection; see `page_cache`.
        if !page_cache::install() {
            tracing::debug!("SQLite was initialized before the store: default page cache");
        }
        let writer = Connection::open(&path).map_err(store_error)?;
        configure_writer(&writer, options)?;
        create_schema(&writer)?;

        // Readers open after the writer switched the file to WAL, so they
        // never see a rollback journal.
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(store_error)?;
            configure_reader(&conn, options.cache_mib / 4).map_err(store_error)?;
            readers.push(conn);
        }

        let tail = Arc::new(RwLock::new(Tail::default()));
        let write_thread = WriteThread::open(
            writer,
            dir,
            options.sync == SqliteSync::Full,
            options.journal_max,
            Arc::clone(&tail),
        )?;
        let (writes, write_jobs) = mpsc::channel();
        let write_thread = spawn_thread("sqlite-writer", move || write_thread.run(write_jobs))?;

        let (reads, read_jobs) = mpsc::channel::<ReadJob>();
        let read_jobs = Arc::new(Mutex::new(read_jobs));
        for (n, conn) in readers.into_iter().enumerate() {
            let jobs = Arc::clone(&read_jobs);
            spawn_thread(&format!("sqlite-reader-{n}"), move || {
                run_reader(conn, &jobs)
            })?;
        }

        Ok(SqliteStore {
            writes: Some(writes),
            reads,
            tail,
            write_thread: Some(write_thread),
        })
    }

    /// Runs `query` on a reader thread.
    fn read<T, F>(&self, query: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let job: ReadJob = Box::new(move |conn| {
                let _ = reply.send(query(conn).map_err(store_error));
            });
            self.reads.send(job).map_err(|_| threads_stopped())?;
            answer.await.map_err(|_| threads_stopped())?
        })
    }

    /// Hands a job to the write thread and waits for its reply.
    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> WriteJob) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .as_ref()
            .ok_or_else(threads_stopped)?
            .send(job(reply))
            .map_err(|_| threads_stopped())?;
        answer.await.map_err(|_| threads_stopped())?
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation> {
        Box::pin(async move {
            // Almost always the conversation exists: look it up on a reader
            // so an upgrade does not queue behind write batches.
            if let Some(found) = self
                .read(move |conn| conversation_by_key(conn, &key))
                .await?
            {
                return Ok(found);
            }
            self.write(|reply| WriteJob::ConversationFor {
                key,
                created_at,
                reply,
            })
            .await
        })
    }

    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"
            ))?
            .query_row([id.bytes()], conversation_from_row)
            .optional()
        })
    }

    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE 1 = 1");
            let mut args: Vec<i64> = Vec::with_capacity(5);
            if let Some(mentor) = filter.mentor_id {
                sql.push_str(" AND mentor_id = ?");
                args.push(mentor);
            }
            if let Some(student) = filter.student_id {
                sql.push_str(" AND student_id = ?");
                args.push(student);
            }
            if let Some(user) = filter.participant {
                sql.push_str(" AND (mentor_id = ? OR student_id = ?)");
                args.extend([user, user]);
            }
            sql.push_str(" ORDER BY created_at, id LIMIT ?");
            args.push(sql_limit(filter.limit));
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), conversation_from_row)?;
            rows.collect()
        })
    }

    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            // The tail first: see `tail` for why this order misses nothing.
            let unmerged = tail.read().history(&query);
            let stored = history(conn, &query)?;
            Ok(tail::merge_history(stored, unmerged, &query))
        })
    }

    fn recent_client_ids(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(String, MessageId)>> {
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let unmerged = tail
                .read()
                .recent_client_ids(conversation_id, sender_id, limit);
            let mut stmt = conn.prepare_cached(RECENT_CLIENT_IDS)?;
            let rows = stmt.query_map(
                (conversation_id.bytes(), sender_id, sql_limit(limit)),
                |row| Ok((row.get(0)?, ObjectId::from_bytes(row.get(1)?))),
            )?;
            let stored = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(tail::merge_client_ids(stored, unmerged, limit))
        })
    }

    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        Box::pin(self.write(|reply| WriteJob::Batch { ops, reply }))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
    }
}

fn spawn_thread(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<thread::JoinHandle<()>, StoreError> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map_err(|e| StoreError::Internal(format!("cannot start thread {name}: {e}")))
}

fn configure_writer(conn: &Connection, options: SqliteOptions) -> Result<(), StoreError> {
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
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    // Keep the WAL file from staying huge after a burst.
    conn.pragma_update(None, "journal_size_limit", 67_108_864)?;
    Ok(())
}

fn configure_reader(conn: &Connection, cache_mib: u32) -> rusqlite::Result<()> {
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

fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(store_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Internal(format!(
            "database schema version {version} is newer than this build's {SCHEMA_VERSION}"
        )));
    }
    // A database from before the index gets it now: one pass over the
    // messages, logged since it delays the start on a large one.
    let building = version > 0 && !index_exists(conn, RECENT_CLIENT_IDS_INDEX)?;
    let started = std::time::Instant::now();
    conn.execute_batch(SCHEMA).map_err(store_error)?;
    if building {
        tracing::info!(
            index = RECENT_CLIENT_IDS_INDEX,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "SQLite index added to the existing database"
        );
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
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

/// Delivery comes before durability: when the cores are busy, the threads
/// that relay messages run first and this one takes what is left.
fn lower_priority() {
    const WRITER_NICE: libc::c_int = 10;
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // changes only this thread's nice value.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WRITER_NICE)
    };
    if result != 0 {
        tracing::debug!("could not lower the SQLite writer thread's priority");
    }
}

fn run_reader(conn: Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        // One reader waits in `recv` while the others wait for the lock;
        // the lock is released before the job runs.
        let job = jobs.lock().recv();
        match job {
            Ok(job) => job(&conn),
            Err(mpsc::RecvError) => return,
        }
    }
}

fn get_or_create(
    conn: &Connection,
    key: &ConversationKey,
    created_at: Millis,
) -> rusqlite::Result<Conversation> {
    conn.prepare_cached(INSERT_CONVERSATION)?.execute((
        ObjectId::new().bytes(),
        key.lesson_id,
        key.mentor_id,
        key.student_id,
        created_at.0,
    ))?;
    conversation_by_key(conn, key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

fn conversation_by_key(
    conn: &Connection,
    key: &ConversationKey,
) -> rusqlite::Result<Option<Conversation>> {
    conn.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations
         WHERE lesson_id = ?1 AND mentor_id = ?2 AND student_id = ?3"
    ))?
    .query_row(
        (key.lesson_id, key.mentor_id, key.student_id),
        conversation_from_row,
    )
    .optional()
}

/// See [`HistoryQuery`]: with `after`, the first page after it; otherwise the
/// last page before `before`, read newest first. Rows are stepped one at a
/// time and reading stops once the page is full, so a long range of large
/// messages is never loaded to be trimmed.
fn history(conn: &Connection, query: &HistoryQuery) -> rusqlite::Result<HistoryPage> {
    let conversation = query.conversation_id.bytes();
    let limit = sql_limit(query.limit);
    let order = if query.newest_first() { "DESC" } else { "ASC" };
    let select = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1");
    let mut page = PageBuilder::new(query);
    match (query.after, query.before) {
        (Some(after), Some(before)) => fill_page(
            &mut page,
            conn.prepare_cached(&format!(
                "{select} AND id > ?2 AND id < ?3 ORDER BY id {order} LIMIT ?4"
            ))?
            .query((conversation, after.bytes(), before.bytes(), limit))?,
        )?,
        (Some(bound), None) | (None, Some(bound)) => {
            let op = if query.after.is_some() { ">" } else { "<" };
            fill_page(
                &mut page,
                conn.prepare_cached(&format!(
                    "{select} AND id {op} ?2 ORDER BY id {order} LIMIT ?3"
                ))?
                .query((conversation, bound.bytes(), limit))?,
            )?
        }
        (None, None) => fill_page(
            &mut page,
            conn.prepare_cached(&format!("{select} ORDER BY id {order} LIMIT ?2"))?
                .query((conversation, limit))?,
        )?,
    }
    Ok(page.finish())
}

/// Steps `rows` into `page` until it is full.
fn fill_page(page: &mut PageBuilder, mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<()> {
    while let Some(row) = rows.next()? {
        if !page.push(message_from_row(row)?) {
            break;
        }
    }
    Ok(())
}

fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: ObjectId::from_bytes(row.get(0)?),
        lesson_id: row.get(1)?,
        mentor_id: row.get(2)?,
        student_id: row.get(3)?,
        created_at: Millis(row.get(4)?),
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: ObjectId::from_bytes(row.get(0)?),
        conversation_id: ObjectId::from_bytes(row.get(1)?),
        sender_id: row.get(2)?,
        text: row.get(3)?,
        created_at: Millis(row.get(4)?),
        client_id: row.get(5)?,
        viewed_by: row.get(6)?,
        viewed_at: row.get::<_, Option<i64>>(7)?.map(Millis),
    })
}

/// SQLite's LIMIT is an i64; a larger `usize` means "no limit".
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Errors that concern one op's data, not the database: the op is
/// `Rejected` and the batch goes on.
fn refuses_only_this_op(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(
            ffi::Error {
                code: ffi::ErrorCode::ConstraintViolation
                    | ffi::ErrorCode::TooBig
                    | ffi::ErrorCode::TypeMismatch,
                ..
            },
            _,
        )
    )
}

/// Locks, I/O and a full disk may pass (`Unavailable`, retried); anything
/// else is a bug or corruption (`Internal`).
fn store_error(error: rusqlite::Error) -> StoreError {
    match &error {
        rusqlite::Error::SqliteFailure(
            ffi::Error {
                code:
                    ffi::ErrorCode::DatabaseBusy
                    | ffi::ErrorCode::DatabaseLocked
                    | ffi::ErrorCode::SystemIoFailure
                    | ffi::ErrorCode::DiskFull
                    | ffi::ErrorCode::CannotOpen
                    | ffi::ErrorCode::FileLockingProtocolFailed,
                ..
            },
            _,
        ) => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Internal(error.to_string()),
    }
}

/// A worker thread is gone: it panicked, which retrying will not fix.
fn threads_stopped() -> StoreError {
    StoreError::Internal("the SQLite worker threads have stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The plan's detail lines, e.g. `SEARCH messages USING ...`.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = explain.query_map([1, 2, 3], |row| row.get::<_, String>(3));
        rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn recent_client_ids_read_only_their_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        create_schema(&conn).unwrap();
        // A walk of the primary key shows as SEARCH too: only the index
        // bounds the rows read to the sender's messages with a client id,
        // and only its order lets LIMIT stop the read (no sort).
        assert_eq!(
            plan(&conn, RECENT_CLIENT_IDS),
            [format!(
                "SEARCH messages USING COVERING INDEX {RECENT_CLIENT_IDS_INDEX} \
                 (conversation_id=? AND sender_id=?)"
            )]
        );
    }

    #[test]
    fn an_existing_database_gets_the_index_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        create_schema(&conn).unwrap();
        conn.execute_batch(&format!("DROP INDEX {RECENT_CLIENT_IDS_INDEX}"))
            .unwrap();
        assert!(!index_exists(&conn, RECENT_CLIENT_IDS_INDEX).unwrap());

        create_schema(&conn).unwrap();
        assert!(index_exists(&conn, RECENT_CLIENT_IDS_INDEX).unwrap());
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
