//! The MongoDB store: the production database, with the Go service's
//! documents and indexes (CONTRACT §5) so an existing database is used as is.
//!
//! Every call is bounded by a deadline (the driver has no socket timeout), and
//! failures a retry may fix are `StoreError::Unavailable` (see [`errors`]).
//!
//! Seqs (CONTRACT §6): the writer gives them in `inserts` (why they have no
//! gap is told there), conversation reads add `last_seq` through
//! `last_seq`, and `legacy_seq` numbers the messages stored without one
//! when the store connects. Read cursors live in a collection of their own
//! (`read_state`, which also moves them), and `inbox` reads them with each
//! conversation's newest message and unread count.

mod batch;
mod documents;
mod errors;
mod inbox;
mod indexes;
mod inserts;
mod last_seq;
mod legacy_seq;
mod read_state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{Acknowledgment, ClientOptions, ReturnDocument, WriteConcern};
use mongodb::{Client, Collection, Cursor, Database};

use crate::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, ObjectId, Seq,
    UserId,
};
use crate::store::{
    ConversationFilter, HistoryPage, HistoryQuery, InboxEntry, PageBuilder, Store, StoreError,
    StoreFuture, WriteOp, WriteOutcome,
};

use documents::{bson_date, bson_id, conversation_from, message_from, object_id};
use errors::{is_duplicate_key, store_error};
pub(crate) use indexes::{CONVERSATIONS, MESSAGES, READ_CURSORS};
use last_seq::{last_seq_lookup, looked_up_last_seq, SeqCache};

/// How to reach MongoDB; built from `MONGO_URI`, `MONGO_DB` and
/// `CHAT_MONGO_*`, whose defaults are `Config`'s.
#[derive(Clone, Debug)]
pub struct MongoSettings {
    pub uri: String,
    pub database: String,
    pub pool_size: u32,
    /// Connect and server-selection timeout.
    pub timeout: Duration,
    /// Write concern `w`: `"majority"` or a node count.
    pub w: String,
    /// Write concern `j`.
    pub journal: bool,
}

impl MongoSettings {
    /// The write concern every write uses; `wtimeout` turns a stalled
    /// replication into a retryable error instead of a hang.
    fn write_concern(&self) -> WriteConcern {
        let w = match self.w.parse::<u32>() {
            Ok(nodes) => Acknowledgment::Nodes(nodes),
            Err(_) => Acknowledgment::from(self.w.as_str()),
        };
        WriteConcern::builder()
            .w(w)
            .journal(self.journal)
            .w_timeout(self.timeout)
            .build()
    }

    /// The same write concern as a command field, for commands the driver
    /// sends as they are (`update`).
    fn write_concern_document(&self) -> Document {
        let w = match self.w.parse::<i32>() {
            Ok(nodes) => Bson::Int32(nodes),
            Err(_) => Bson::String(self.w.clone()),
        };
        let wtimeout = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        doc! { "w": w, "j": self.journal, "wtimeout": wtimeout }
    }
}

/// Conversations and messages in MongoDB.
#[derive(Clone)]
pub struct MongoStore {
    database: Database,
    conversations: Collection<Document>,
    messages: Collection<Document>,
    write_concern: Document,
    /// Deadline of one store call: server selection plus the operation.
    call_timeout: Duration,
    /// The writer's last seq per conversation (see `inserts`); shared by
    /// clones, which write the same database.
    seqs: Arc<SeqCache>,
}

impl MongoStore {
    /// Connects, checks the server answers, creates the indexes (logging
    /// loudly any that cannot be built) and numbers the messages stored
    /// without a seq (`legacy_seq`). `Err(Unavailable)` when the server
    /// cannot be reached within `settings.timeout`.
    pub async fn connect(settings: &MongoSettings) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(&settings.uri).await.map_err(|error| {
            match store_error("connection string", error) {
                StoreError::Unavailable(reason) => StoreError::Unavailable(reason),
                StoreError::Internal(reason) => {
                    StoreError::Internal(format!("MONGO_URI is not usable: {reason}"))
                }
            }
        })?;
        // The CHAT_MONGO_* settings win over the URI's, so durability is what
        // the service's configuration says.
        options.max_pool_size = Some(settings.pool_size);
        options.connect_timeout = Some(settings.timeout);
        options.server_selection_timeout = Some(settings.timeout);
        options.write_concern = Some(settings.write_concern());
        if options.app_name.is_none() {
            options.app_name = Some("chat-service".into());
        }
        let client =
            Client::with_options(options).map_err(|error| store_error("client options", error))?;
        let database = client.database(&settings.database);
        let store = MongoStore {
            conversations: database.collection(CONVERSATIONS),
            messages: database.collection(MESSAGES),
            database,
            write_concern: settings.write_concern_document(),
            call_timeout: settings.timeout.saturating_mul(2),
            seqs: Arc::default(),
        };
        store.ping_now().await?;
        indexes::ensure_indexes(&store.database, store.call_timeout).await?;
        // Before any write: a new message's seq comes after every stored one.
        store.number_legacy_messages().await?;
        tracing::info!(database = %settings.database, "MongoDB store ready");
        Ok(store)
    }

    /// The database this store uses.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs `call` with the store's deadline; a missed deadline is
    /// `Unavailable`, like any other timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        crate::store::within("mongodb", what, self.call_timeout, call).await
    }

    async fn ping_now(&self) -> Result<(), StoreError> {
        self.bounded("ping", async {
            self.database
                .run_command(doc! { "ping": 1 })
                .await
                .map(drop)
                .map_err(|error| store_error("ping", error))
        })
        .await
    }

    /// The conversation matching `filter` (a unique key), with its last seq.
    async fn find_conversation(
        &self,
        filter: Document,
    ) -> Result<Option<Conversation>, StoreError> {
        let found = self
            .read_conversations(vec![doc! { "$match": filter }, doc! { "$limit": 1 }], 1)
            .await?;
        Ok(found.into_iter().next())
    }

    /// Conversations through `stages`, each with its `last_seq`, in one
    /// round trip: a `$lookup` per conversation seeks the end of its range
    /// of the seq index.
    async fn read_conversations(
        &self,
        mut stages: Vec<Document>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        stages.push(last_seq_lookup());
        let cursor = self
            .conversations
            .aggregate(stages)
            .batch_size(as_batch(limit))
            .await
            .map_err(|error| store_error("read conversations", error))?;
        drain(cursor, "read conversations", |document| {
            Ok(Conversation {
                last_seq: looked_up_last_seq(document)?,
                ..conversation_from(document)?
            })
        })
        .await
    }

    async fn get_or_create(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> Result<Conversation, StoreError> {
        // Int64 explicitly: the unique index and the Go service compare types.
        let filter = doc! {
            "lesson_id": Bson::Int64(key.lesson_id),
            "mentor_id": Bson::Int64(key.mentor_id),
            "student_id": Bson::Int64(key.student_id),
        };
        // Most calls find an existing conversation; a read needs no write concern.
        if let Some(found) = self.find_conversation(filter.clone()).await? {
            return Ok(found);
        }
        let new_id = ObjectId::new();
        let insert_fields = doc! {
            "$setOnInsert": { "_id": bson_id(new_id), "created_at": bson_date(created_at) }
        };
        let upserted = self
            .conversations
            .find_one_and_update(filter.clone(), insert_fields)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match upserted {
            // Created by this call: it has no message yet.
            Ok(Some(document)) if object_id(&document, "_id", "conversation")? == new_id => {
                conversation_from(&document)
            }
            // Created by another caller since the read: read it with its last seq.
            Ok(Some(_)) => self.existing_conversation(filter).await,
            // A concurrent upsert won the unique index; its document is the answer.
            Ok(None) => self.existing_conversation(filter).await,
            Err(error) if is_duplicate_key(&error) => self.existing_conversation(filter).await,
            Err(error) => Err(store_error("upsert conversation", error)),
        }
    }

    async fn existing_conversation(&self, filter: Document) -> Result<Conversation, StoreError> {
        self.find_conversation(filter).await?.ok_or_else(|| {
            StoreError::Unavailable("mongodb: conversation neither created nor found".into())
        })
    }

    async fn list_conversations(
        &self,
        filter: ConversationFilter,
    ) -> Result<Vec<Conversation>, StoreError> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let mut query = Document::new();
        if let Some(mentor) = filter.mentor_id {
            query.insert("mentor_id", Bson::Int64(mentor));
        }
        if let Some(student) = filter.student_id {
            query.insert("student_id", Bson::Int64(student));
        }
        if let Some(user) = filter.participant {
            query.insert(
                "$or",
                vec![
                    doc! { "mentor_id": Bson::Int64(user) },
                    doc! { "student_id": Bson::Int64(user) },
                ],
            );
        }
        let stages = vec![
            doc! { "$match": query },
            doc! { "$sort": { "created_at": 1, "_id": 1 } },
            doc! { "$limit": as_limit(filter.limit) },
        ];
        self.read_conversations(stages, filter.limit).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, StoreError> {
        if query.limit == 0 {
            return Ok(HistoryPage::default());
        }
        let mut id_range = Document::new();
        if let Some(after) = query.after {
            id_range.insert("$gt", bson_id(after));
        }
        if let Some(before) = query.before {
            id_range.insert("$lt", bson_id(before));
        }
        let mut filter = doc! { "conversation_id": bson_id(query.conversation_id) };
        if !id_range.is_empty() {
            filter.insert("_id", id_range);
        }
        // With `after`, the first N after it; otherwise the last N, read
        // newest first so the index gives them directly.
        let mut cursor = self
            .messages
            .find(filter)
            .sort(doc! { "_id": if query.newest_first() { -1 } else { 1 } })
            .limit(as_limit(query.limit))
            .batch_size(as_batch(history_batch(&query)))
            .await
            .map_err(|error| store_error("find messages", error))?;
        let mut page = PageBuilder::new(&query);
        // Stops consuming the cursor once the page is full: dropping it
        // kills it on the server, and later batches are never fetched.
        while cursor
            .advance()
            .await
            .map_err(|error| store_error("find messages", error))?
        {
            let document = cursor
                .deserialize_current()
                .map_err(|error| store_error("find messages", error))?;
            if !page.push(message_from(&document)?) {
                break;
            }
        }
        Ok(page.finish())
    }
}

/// Reads every document of a (limited) cursor through `parse`.
async fn drain<T>(
    mut cursor: Cursor<Document>,
    what: &str,
    parse: impl Fn(&Document) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    while cursor
        .advance()
        .await
        .map_err(|error| store_error(what, error))?
    {
        let document = cursor
            .deserialize_current()
            .map_err(|error| store_error(what, error))?;
        out.push(parse(&document)?);
    }
    Ok(out)
}

fn as_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Documents to ask for per batch: no more than a page can hold, since
/// every message takes at least [`Message::MIN_JSON_LEN`] bytes of the
/// budget. A reply is still capped at 16 MiB by the server, whatever the
/// count.
fn history_batch(query: &HistoryQuery) -> usize {
    query.limit.min(query.max_bytes / Message::MIN_JSON_LEN + 1)
}

/// The whole page in the first reply when it fits (the server caps a reply
/// at 16 MiB), instead of the server's default 101 documents.
fn as_batch(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX)
}

impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation> {
        Box::pin(self.bounded("conversation_for", self.get_or_create(key, created_at)))
    }

    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        Box::pin(self.bounded(
            "conversation",
            self.find_conversation(doc! { "_id": bson_id(id) }),
        ))
    }

    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        Box::pin(self.bounded("conversations", self.list_conversations(filter)))
    }

    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        Box::pin(self.bounded("messages", self.history(query)))
    }

    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        Box::pin(self.bounded("write_batch", self.apply_batch(ops)))
    }

    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<InboxEntry>> {
        Box::pin(self.bounded("inbox", self.read_inbox(caller, conversations)))
    }

    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> StoreFuture<'_, Option<MessageId>> {
        Box::pin(self.bounded("message_at_seq", self.find_at_seq(conversation_id, seq)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ping_now())
    }
}
