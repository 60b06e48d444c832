//! An in-memory `Store`: the reference implementation of the trait's
//! contract, the plainest code that passes the conformance suite
//! (`tests/store_conformance.rs` runs it like every other store), for
//! benches and tests that must not touch a disk. Nothing survives the
//! process.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use super::{
    ConversationFilter, HistoryPage, HistoryQuery, InboxEntry, PageBuilder, ReadUpTo, Store,
    StoreFuture, WriteOp, WriteOutcome,
};
use crate::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, ObjectId, Seq,
    UserId,
};

#[derive(Default)]
pub struct MemoryStore {
    // One lock; held only for map operations, never across an `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conversations: BTreeMap<ConversationId, Conversation>,
    by_key: HashMap<ConversationKey, ConversationId>,
    messages: BTreeMap<(ConversationId, MessageId), Message>,
    client_ids: HashMap<(ConversationId, UserId, String), MessageId>,
    /// Each message's id by (conversation, seq); the last entry of a
    /// conversation is its `last_seq`.
    by_seq: BTreeMap<(ConversationId, Seq), MessageId>,
    /// Read cursors moved by `read`/`viewed` (posting moves one without
    /// an entry: see `read_cursor`).
    cursors: HashMap<(ConversationId, UserId), Seq>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl State {
    fn last_seq(&self, conversation: ConversationId) -> Seq {
        self.by_seq
            .range((conversation, 0)..=(conversation, Seq::MAX))
            .next_back()
            .map_or(0, |(&(_, seq), _)| seq)
    }

    /// The conversation's messages, oldest first.
    fn messages_of(
        &self,
        conversation: ConversationId,
    ) -> impl DoubleEndedIterator<Item = &Message> {
        let lowest = (conversation, ObjectId::from_bytes([0; 12]));
        let highest = (conversation, ObjectId::from_bytes([0xff; 12]));
        self.messages.range(lowest..=highest).map(|(_, m)| m)
    }

    /// `user`'s cursor: what they read, or their own newest message.
    fn read_cursor(&self, conversation: ConversationId, user: UserId) -> Seq {
        let read = self
            .cursors
            .get(&(conversation, user))
            .copied()
            .unwrap_or(0);
        let sent = self
            .messages_of(conversation)
            .filter(|m| m.sender_id == user)
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        read.max(sent)
    }

    fn inbox_entry(&self, caller: UserId, conversation: &Conversation) -> InboxEntry {
        let id = conversation.id;
        let other = conversation.other_participant(caller);
        let last_read_seq = self.read_cursor(id, caller);
        let unread_count = self
            .messages_of(id)
            .filter(|m| m.sender_id == other && m.seq > last_read_seq)
            .count() as u64;
        let waiting_since = (caller == conversation.mentor_id)
            .then(|| {
                let mentor_last = self
                    .messages_of(id)
                    .filter(|m| m.sender_id == caller)
                    .map(|m| m.seq)
                    .max()
                    .unwrap_or(0);
                self.messages_of(id)
                    .filter(|m| m.sender_id == conversation.student_id && m.seq > mentor_last)
                    .min_by_key(|m| m.seq)
                    .map(|m| m.created_at)
            })
            .flatten();
        InboxEntry {
            conversation: self.current(conversation),
            last_message: self.messages_of(id).max_by_key(|m| m.seq).cloned(),
            unread_count,
            last_read_seq,
            other_last_read_seq: self.read_cursor(id, other),
            waiting_since,
        }
    }

    fn read(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        up_to: ReadUpTo,
    ) -> WriteOutcome {
        let target = match up_to {
            ReadUpTo::Seq(seq) => {
                let last_seq = self.last_seq(conversation);
                if seq > last_seq {
                    return WriteOutcome::SeqBeyondLast { last_seq };
                }
                seq
            }
            ReadUpTo::Message(id) => match self.messages.get(&(conversation, id)) {
                Some(message) if message.sender_id != user => message.seq,
                _ => return WriteOutcome::ViewTargetMissing,
            },
        };
        let cursor = self.read_cursor(conversation, user);
        if target <= cursor {
            return WriteOutcome::ReadUnchanged {
                last_read_seq: cursor,
            };
        }
        self.cursors.insert((conversation, user), target);
        WriteOutcome::ReadMoved {
            last_read_seq: target,
        }
    }

    /// `conversation` with its current `last_seq`.
    fn current(&self, conversation: &Conversation) -> Conversation {
        Conversation {
            last_seq: self.last_seq(conversation.id),
            ..conversation.clone()
        }
    }

    fn apply(&mut self, op: WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Insert(mut message) => {
                let key = (message.conversation_id, message.id);
                if let Some(stored) = self.messages.get(&key) {
                    return WriteOutcome::Inserted { seq: stored.seq };
                }
                if let Some(client_id) = &message.client_id {
                    let dedupe = (
                        message.conversation_id,
                        message.sender_id,
                        client_id.clone(),
                    );
                    if let Some(existing) = self.client_ids.get(&dedupe) {
                        let seq = self.messages[&(message.conversation_id, *existing)].seq;
                        return WriteOutcome::Duplicate {
                            existing: *existing,
                            seq,
                        };
                    }
                    self.client_ids.insert(dedupe, message.id);
                }
                message.seq = self.last_seq(message.conversation_id) + 1;
                let seq = message.seq;
                self.by_seq
                    .insert((message.conversation_id, seq), message.id);
                self.messages.insert(key, message);
                WriteOutcome::Inserted { seq }
            }
            WriteOp::View {
                conversation_id,
                message_id,
                viewer_id,
                at,
            } => match self.messages.get_mut(&(conversation_id, message_id)) {
                Some(message) => message.mark_viewed(viewer_id, at).into(),
                None => WriteOutcome::ViewTargetMissing,
            },
            WriteOp::Read {
                conversation_id,
                user_id,
                up_to,
            } => self.read(conversation_id, user_id, up_to),
        }
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation> {
        let mut state = self.state.lock();
        let conversation = match state.by_key.get(&key) {
            Some(id) => state.current(&state.conversations[id]),
            None => {
                let conversation = Conversation {
                    id: ObjectId::new(),
                    lesson_id: key.lesson_id,
                    mentor_id: key.mentor_id,
                    student_id: key.student_id,
                    created_at,
                    last_seq: 0,
                };
                state.by_key.insert(key, conversation.id);
                state
                    .conversations
                    .insert(conversation.id, conversation.clone());
                conversation
            }
        };
        Box::pin(async move { Ok(conversation) })
    }

    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        let state = self.state.lock();
        let found = state.conversations.get(&id).map(|c| state.current(c));
        Box::pin(async move { Ok(found) })
    }

    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        let state = self.state.lock();
        let mut list: Vec<Conversation> = state
            .conversations
            .values()
            .filter(|c| filter.mentor_id.is_none_or(|m| c.mentor_id == m))
            .filter(|c| filter.student_id.is_none_or(|s| c.student_id == s))
            .filter(|c| filter.participant.is_none_or(|p| c.has_participant(p)))
            .map(|c| state.current(c))
            .collect();
        drop(state);
        // Oldest by the caller's `created_at`, which need not follow the
        // id (creation) order the map keeps.
        list.sort_by_key(|c| (c.created_at, c.id));
        list.truncate(filter.limit);
        Box::pin(async move { Ok(list) })
    }

    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<InboxEntry>> {
        let state = self.state.lock();
        let entries = conversations
            .iter()
            .map(|conversation| state.inbox_entry(caller, conversation))
            .collect();
        Box::pin(async move { Ok(entries) })
    }

    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        let state = self.state.lock();
        let lowest = (query.conversation_id, ObjectId::from_bytes([0; 12]));
        let highest = (query.conversation_id, ObjectId::from_bytes([0xff; 12]));
        let in_range = state
            .messages
            .range(lowest..=highest)
            .map(|(_, m)| m)
            .filter(|m| query.after.is_none_or(|a| m.id > a))
            .filter(|m| query.before.is_none_or(|b| m.id < b));
        let mut page = PageBuilder::new(&query);
        if query.newest_first() {
            page.fill(in_range.rev().cloned());
        } else {
            page.fill(in_range.cloned());
        }
        let page = page.finish();
        Box::pin(async move { Ok(page) })
    }

    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> StoreFuture<'_, Option<MessageId>> {
        let found = self
            .state
            .lock()
            .by_seq
            .get(&(conversation_id, seq))
            .copied();
        Box::pin(async move { Ok(found) })
    }

    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        let mut state = self.state.lock();
        let outcomes = ops.into_iter().map(|op| state.apply(op)).collect();
        Box::pin(async move { Ok(outcomes) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}
