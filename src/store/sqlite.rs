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
//! between jobs, and readers add the unmerged tail to what they read. A
//! few reader threads each own a read-only connection and share one job
//! queue (`readers`); WAL lets them read while a batch is being written, so
//! a history page never waits behind a batch.
//! Dropping the store closes the queues; the threads finish their current
//! job and close their connections.
//!
//! # Files
//!
//! This file is the [`Store`] impl and the opening; `schema` holds the
//! tables, `sql` the statements and `rows` their row mapping, `pragmas` the
//! connection tuning, `errors` which failures are retried, `staging` a
//! batch's decisions, `journal` the journal and its replay, `tail` the
//! unmerged messages, `priority` the checkpoint thread's nice value.

mod checkpoint;
mod errors;
mod inbox;
mod jobs;
mod journal;
mod legacy_seq;
mod pragmas;
mod priority;
mod readers;
mod rows;
mod schema;
mod sql;
mod staging;
mod tail;
mod write_thread;

use std::path::Path;
use std::sync::Arc;
use std::thread;

use parking_lot::RwLock;
use rusqlite::Connection;

use self::errors::{store_error, threads_stopped};
use self::readers::{ReaderConnections, Readers};
use self::tail::Tail;
use self::write_thread::WriteThread;
use tokio::sync::oneshot;

use super::{
    ConversationFilter, HistoryPage, HistoryQuery, InboxEntry, Store, StoreError, StoreFuture,
    WriteOp, WriteOutcome,
};
use crate::model::{Conversation, ConversationId, ConversationKey, MessageId, Millis, Seq, UserId};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "chat.sqlite3";

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
    writes: Option<jobs::JobSender<WriteJob>>,
    reads: Readers,
    /// Journaled messages not yet in SQLite, which readers add to theirs.
    tail: Arc<RwLock<Tail>>,
    write_thread: Option<thread::JoinHandle<()>>,
    /// Dropped after the write thread ended (field order): its last
    /// merges are checkpointed by SQLite when the last connection closes.
    _checkpointer: checkpoint::Checkpointer,
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

        let writer = Connection::open(&path).map_err(store_error)?;
        pragmas::configure_writer(&writer, options)?;
        schema::create_schema(&writer)?;

        // Readers open after the writer switched the file to WAL, so they
        // never see a rollback journal.
        let readers = ReaderConnections::open(&path, options.cache_mib / 4)?;

        let tail = Arc::new(RwLock::new(Tail::default()));
        let write_thread = WriteThread::open(
            writer,
            dir,
            options.sync == SqliteSync::Full,
            options.journal_max,
            Arc::clone(&tail),
        )?;
        let (writes, write_jobs) = jobs::channel();
        let write_thread = spawn_thread("sqlite-writer", move || write_thread.run(write_jobs))?;
        let reads = readers.start()?;
        let checkpointer = checkpoint::Checkpointer::start(&path)?;

        Ok(SqliteStore {
            writes: Some(writes),
            reads,
            tail,
            write_thread: Some(write_thread),
            _checkpointer: checkpointer,
        })
    }

    /// Runs `query` on a reader thread.
    fn read<T, F>(&self, query: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.reads.read(query)
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
            let found = match self
                .read(move |conn| sql::conversation_by_key(conn, &key))
                .await?
            {
                Some(found) => found,
                None => {
                    self.write(|reply| WriteJob::ConversationFor {
                        key,
                        created_at,
                        reply,
                    })
                    .await?
                }
            };
            let mut conversation = found;
            with_tail_seq(&mut conversation, &self.tail.read());
            Ok(conversation)
        })
    }

    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let mut found = sql::conversation_by_id(conn, id)?;
            if let Some(conversation) = &mut found {
                with_tail_seq(conversation, &tail.read());
            }
            Ok(found)
        })
    }

    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            let mut list = sql::conversations(conn, &filter)?;
            let tail = tail.read();
            for conversation in &mut list {
                with_tail_seq(conversation, &tail);
            }
            Ok(list)
        })
    }

    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<InboxEntry>> {
        let tail = Arc::clone(&self.tail);
        self.reads.read_store(move |conn| {
            // The tail first, as in `messages`.
            let parts = inbox::tail_parts(&tail.read(), &conversations);
            inbox::inbox(conn, caller, conversations, parts)
        })
    }

    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> StoreFuture<'_, Option<MessageId>> {
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            // The tail first, as in `messages`: a merge moves a message
            // into SQLite before it leaves the tail.
            if let Some(id) = tail.read().message_at_seq(conversation_id, seq) {
                return Ok(Some(id));
            }
            sql::message_at_seq(conn, conversation_id, seq)
        })
    }

    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        let tail = Arc::clone(&self.tail);
        self.read(move |conn| {
            // The tail first: see `tail` for why this order misses nothing.
            let unmerged = tail.read().history(&query);
            let stored = sql::history(conn, &query)?;
            Ok(tail::merge_history(stored, unmerged, &query))
        })
    }

    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        Box::pin(self.write(|reply| WriteJob::Batch { ops, reply }))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
    }
}

/// SQLite's `last_seq` does not count the tail's newer messages.
fn with_tail_seq(conversation: &mut Conversation, tail: &Tail) {
    conversation.last_seq = conversation.last_seq.max(tail.last_seq(conversation.id));
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
