//! The one seam between the service and a database.
//!
//! REST and the upgrade path read through [`Store`]; every write goes through
//! the batching [`writer`], which calls [`Store::write_batch`]. The service
//! runs [`postgres::PostgresStore`] (`CHAT_POSTGRES_URL`),
//! [`mongo::MongoStore`] (`MONGO_URI`) or [`sqlite::SqliteStore`] (embedded,
//! when neither is set); [`memory::MemoryStore`] serves tests and benches.
//! Every one of them, and SQLite without a journal and with forced merges,
//! passes the same conformance suite (`tests/store_conformance.rs`;
//! PostgreSQL when `CHAT_TEST_POSTGRES_URL` is set, MongoDB when
//! `MONGO_URI` is).

pub mod memory;
pub mod mongo;
pub mod postgres;
pub mod sqlite;
pub mod writer;

use std::future::Future;
use std::pin::Pin;

use crate::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, Seq, UserId,
    ViewEffect,
};

/// A boxed future, so `Store` can be a trait object shared by REST, the
/// upgrade path and the writer without making them all generic.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out; the call may succeed if
    /// retried. The writer retries these; REST answers 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (corrupt data, a bug, a refused write). Not retried.
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// A stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Internal(_) => "internal",
        }
    }
}

/// Runs a call of `store` with its deadline; a missed deadline is
/// `Unavailable`, like any other timeout. The remote stores bound every
/// call with it (their drivers have no overall deadline of their own).
pub(crate) async fn within<T>(
    store: &str,
    what: &str,
    deadline: std::time::Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{store} {what}: no answer within {deadline:?}"
        ))),
    }
}

/// A conversation as one participant's inbox shows it (CONTRACT §6): the
/// conversation with the caller's read state and what is waiting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InboxEntry {
    #[serde(flatten)]
    pub conversation: Conversation,
    /// The newest message, as `/messages` lists it.
    pub last_message: Option<Message>,
    /// The other participant's messages after the caller's cursor.
    pub unread_count: u64,
    pub last_read_seq: Seq,
    pub other_last_read_seq: Seq,
    /// For the conversation's mentor: `created_at` of the oldest student
    /// message after the mentor's newest one; `None` when the mentor spoke
    /// last or nobody spoke, and always for the student.
    pub waiting_since: Option<Millis>,
}

/// Which conversations to list. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationFilter {
    pub mentor_id: Option<UserId>,
    pub student_id: Option<UserId>,
    /// The user is the mentor *or* the student.
    pub participant: Option<UserId>,
    /// At most this many, oldest first.
    pub limit: usize,
}

/// One page of a conversation's history.
///
/// With `after`: the first `limit` messages whose id is greater than `after`
/// (and less than `before`, when set). Otherwise the last `limit` messages
/// whose id is less than `before` (all, when unset). Always returned oldest
/// (smallest id) first.
///
/// The page is also cut by size: read from the end named above, it stops
/// before the first message that would take the page's JSON array (as
/// `/messages` sends it) over `max_bytes`, but always holds at least one.
/// A store stops reading there rather than load the range and trim it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    pub conversation_id: ConversationId,
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    pub limit: usize,
    pub max_bytes: usize,
}

impl HistoryQuery {
    /// Whether the page is read from its newest end (no `after`).
    pub(crate) fn newest_first(&self) -> bool {
        self.after.is_none()
    }
}

/// The answer to a [`HistoryQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// The byte budget ended the page: more messages match in the
    /// direction it was read (it has fewer than `limit`).
    pub truncated: bool,
}

impl HistoryPage {
    /// Length of `messages` as a JSON array.
    pub(crate) fn json_len(&self) -> usize {
        2 + self.messages.iter().map(Message::json_len).sum::<usize>()
            + self.messages.len().saturating_sub(1)
    }
}

/// Collects a page in the order a store reads it, applying the query's
/// count and byte bounds; every store uses it, so they cut alike.
pub(crate) struct PageBuilder {
    messages: Vec<Message>,
    /// JSON length of `messages` as an array.
    bytes: usize,
    limit: usize,
    max_bytes: usize,
    newest_first: bool,
    truncated: bool,
}

impl PageBuilder {
    pub(crate) fn new(query: &HistoryQuery) -> PageBuilder {
        PageBuilder {
            messages: Vec::new(),
            bytes: 2,
            limit: query.limit,
            max_bytes: query.max_bytes,
            newest_first: query.newest_first(),
            truncated: false,
        }
    }

    /// Adds the next message in read order; `false` once the page is full
    /// (the caller stops reading). A message over the budget is not added.
    pub(crate) fn push(&mut self, message: Message) -> bool {
        if self.messages.len() >= self.limit {
            return false;
        }
        let added = message.json_len() + usize::from(!self.messages.is_empty());
        if !self.messages.is_empty() && self.bytes.saturating_add(added) > self.max_bytes {
            self.truncated = true;
            return false;
        }
        self.bytes = self.bytes.saturating_add(added);
        self.messages.push(message);
        self.messages.len() < self.limit
    }

    /// Pushes from `messages` until the page is full; the rest is never
    /// pulled from the iterator.
    pub(crate) fn fill(&mut self, messages: impl IntoIterator<Item = Message>) {
        for message in messages {
            if !self.push(message) {
                break;
            }
        }
    }

    /// Messages in the page so far.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// Records that messages the caller did not offer also match (it cut
    /// its input short); counts only when the page is under its limit.
    pub(crate) fn more_unread(&mut self) {
        if self.messages.len() < self.limit {
            self.truncated = true;
        }
    }

    pub(crate) fn finish(mut self) -> HistoryPage {
        if self.newest_first {
            self.messages.reverse();
        }
        HistoryPage {
            messages: self.messages,
            truncated: self.truncated,
        }
    }
}

/// One write the writer hands to [`Store::write_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert a message, giving it the next `seq` of its conversation (its
    /// own `seq` field is ignored). Idempotent: if a message with the same
    /// `id` is already stored this is [`WriteOutcome::Inserted`] again with
    /// the seq it got (a retried batch); if one with the same (conversation,
    /// sender, client_id) is, it is [`WriteOutcome::Duplicate`] naming the
    /// stored id and seq, and no seq is used.
    Insert(Message),
    /// Mark a message viewed: sets `viewed_by` and `viewed_at` only on the
    /// message `message_id` of `conversation_id` whose sender is not
    /// `viewer_id`, and only once per viewer (the rule:
    /// [`ViewEffect::of`](crate::model::ViewEffect::of)). The same op
    /// again (a retried batch) is [`WriteOutcome::Viewed`] again.
    View {
        conversation_id: ConversationId,
        message_id: MessageId,
        viewer_id: UserId,
        at: Millis,
    },
    /// Move `user_id`'s read cursor in `conversation_id` forward to `up_to`
    /// (CONTRACT §6). A cursor never moves back; the cursor a participant
    /// has is at least the seq of their own newest message (posting moves
    /// it), so a read below that changes nothing.
    Read {
        conversation_id: ConversationId,
        user_id: UserId,
        up_to: ReadUpTo,
    },
}

/// Where a [`WriteOp::Read`] moves the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadUpTo {
    /// Inbound `read`: to this seq (beyond the conversation's last seq:
    /// [`WriteOutcome::SeqBeyondLast`]).
    Seq(Seq),
    /// `viewed`: to this message's seq, if it is the other participant's
    /// (else [`WriteOutcome::ViewTargetMissing`]).
    Message(MessageId),
}

/// What one [`WriteOp`] did, in the order the ops were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The message is stored (now, or already by an earlier try of this
    /// batch) as number `seq` of its conversation.
    Inserted { seq: Seq },
    /// Another message with this (conversation, sender, client_id) was stored
    /// first; nothing was written.
    Duplicate { existing: MessageId, seq: Seq },
    /// The view was recorded.
    Viewed,
    /// The message was viewed by this viewer before (another `View` op):
    /// nothing was written, the first `viewed_at` stays. Not an error; the
    /// hub relays nothing.
    AlreadyViewed,
    /// No message of that conversation with that id and another sender.
    ViewTargetMissing,
    /// The read cursor moved to `last_read_seq` (the `read` event's value).
    ReadMoved { last_read_seq: Seq },
    /// The read cursor was already at `last_read_seq`, at or past the
    /// target: nothing was written.
    ReadUnchanged { last_read_seq: Seq },
    /// A `read` beyond the conversation's last seq: nothing was written.
    SeqBeyondLast { last_seq: Seq },
    /// This op can never succeed (e.g. a constraint); the others may have.
    Rejected(String),
}

impl From<ViewEffect> for WriteOutcome {
    fn from(effect: ViewEffect) -> WriteOutcome {
        match effect {
            ViewEffect::Recorded => WriteOutcome::Viewed,
            ViewEffect::AlreadyViewed => WriteOutcome::AlreadyViewed,
            ViewEffect::OwnMessage => WriteOutcome::ViewTargetMissing,
        }
    }
}

/// A database for conversations and messages.
///
/// Contract for every implementation (checked by the conformance suite):
/// - `conversation_for` is a race-free get-or-create on the natural key: any
///   number of concurrent calls for one key return the same conversation.
/// - `write_batch` applies ops in order (a `View` after the `Insert` it names
///   in the same batch sees it) and returns one outcome per op. `Ok` means
///   every `Inserted`/`Viewed` outcome is durable. Each conversation's
///   inserts get seqs 1, 2, 3 … in the order they are applied, with no gap
///   and no repeat, also across restarts and retried batches (the one
///   writer of a conversation's seqs is the store's writer). `Err(Unavailable)` means
///   the batch may be partly applied and is safe to retry whole: inserts are
///   idempotent by id and by client_id, views by value.
/// - Reads never wait behind a write batch for long: they do not share one
///   queue with the writer.
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and `/readyz`: `"sqlite"`, `"postgres"`,
    /// `"mongodb"` or `"memory"`.
    fn kind(&self) -> &'static str;

    /// The conversation for `key`, created with `created_at` if absent.
    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation>;

    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>>;

    /// Conversations matching `filter`, oldest first.
    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>>;

    /// Each of `conversations` (as `conversations` or `conversation`
    /// returned them) with `caller`'s read state, in the same order. A
    /// fixed number of queries, whatever the count.
    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<InboxEntry>>;

    /// One page of history; see [`HistoryQuery`].
    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage>;

    /// The id of message number `seq` of `conversation_id`, if stored: the
    /// seq cursors of REST and recovery are resolved to id cursors with it
    /// (within a conversation, seq order is id order).
    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> StoreFuture<'_, Option<MessageId>>;

    /// Applies `ops` in order; see the trait docs for the contract.
    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>>;

    /// Succeeds when the store can serve reads and writes (`/readyz`).
    fn ping(&self) -> StoreFuture<'_, ()>;
}
