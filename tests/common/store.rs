//! Helpers of the store tests: a SQLite store that owns its
//! temporary directory, and builders for keys, ids and messages.
#![allow(dead_code)] // each test crate uses a different subset

use std::sync::Arc;

use chat_service::config::Config;
use chat_service::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, ObjectId, UserId,
};
use chat_service::store::sqlite::{SqliteOptions, SqliteStore};
use chat_service::store::{
    ConversationFilter, HistoryPage, HistoryQuery, Store, StoreFuture, WriteOp, WriteOutcome,
};
use tempfile::TempDir;

/// The service's SQLite options when nothing is configured.
pub fn sqlite_defaults() -> SqliteOptions {
    SqliteOptions::from(&Config::defaults())
}

/// A [`SqliteStore`] in a temporary directory that lives as long as it.
pub struct TempSqlite {
    // Declared first so the store's queues close before the directory goes.
    pub store: SqliteStore,
    pub dir: TempDir,
}

impl TempSqlite {
    pub fn new() -> TempSqlite {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        TempSqlite { store, dir }
    }

    pub fn with_options(options: SqliteOptions) -> TempSqlite {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), options).unwrap();
        TempSqlite { store, dir }
    }

    /// Without the journal: every batch is merged into SQLite before its
    /// ack, so reads and views meet SQLite, not the in-memory tail.
    pub fn without_journal() -> TempSqlite {
        Self::with_options(SqliteOptions {
            journal_max: 0,
            ..sqlite_defaults()
        })
    }
}

impl Store for TempSqlite {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }
    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation> {
        self.store.conversation_for(key, created_at)
    }
    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        self.store.conversation(id)
    }
    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        self.store.conversations(filter)
    }
    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        self.store.messages(query)
    }
    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<chat_service::store::InboxEntry>> {
        self.store.inbox(caller, conversations)
    }
    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: u64,
    ) -> StoreFuture<'_, Option<MessageId>> {
        self.store.message_at_seq(conversation_id, seq)
    }
    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        self.store.write_batch(ops)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.store.ping()
    }
}

pub fn temp_sqlite() -> Arc<dyn Store> {
    Arc::new(TempSqlite::new())
}

/// A random positive id, so tests sharing one database (MongoDB) never see
/// each other's users or lessons.
pub fn random_id() -> i64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    (u64::from_le_bytes(bytes) >> 2) as i64 + 1
}

pub fn random_key() -> ConversationKey {
    ConversationKey {
        lesson_id: random_id(),
        mentor_id: random_id(),
        student_id: random_id(),
    }
}

/// `n` fresh ids in increasing order (sorted, so a wrap of the ObjectId
/// counter cannot reorder them).
pub fn ids(n: usize) -> Vec<ObjectId> {
    let mut ids: Vec<ObjectId> = (0..n).map(|_| ObjectId::new()).collect();
    ids.sort();
    ids
}

pub fn message(
    id: MessageId,
    conversation_id: ConversationId,
    sender_id: UserId,
    text: &str,
    client_id: Option<&str>,
) -> Message {
    Message {
        id,
        conversation_id,
        sender_id,
        text: text.to_string(),
        created_at: Millis(1_735_725_600_000),
        seq: 0,
        client_id: client_id.map(str::to_string),
        viewed_by: None,
        viewed_at: None,
    }
}

/// Every message of a conversation, oldest first.
pub async fn history(store: &dyn Store, conversation_id: ConversationId) -> Vec<Message> {
    store
        .messages(HistoryQuery {
            conversation_id,
            before: None,
            after: None,
            limit: 1_000_000,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .messages
}
