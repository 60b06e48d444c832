//! An in-memory `Store`: the reference implementation of the trait's
//! contract, the plainest code that passes the conformance suite
//! (`tests/store_conformance.rs` runs it like every other store), for
//! benches and tests that must not touch a disk. Nothing survives the
//! process.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;

use super::{
    ConversationFilter, HistoryPage, HistoryQuery, PageBuilder, Store, StoreFuture, WriteOp,
    WriteOutcome,
};
use crate::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, ObjectId, UserId,
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
    /// The messages with a client id, by sender and id: `recent_client_ids`
    /// reads the newest without visiting anyone else's.
    with_client_id: BTreeSet<(ConversationId, UserId, MessageId)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl State {
    fn apply(&mut self, op: WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Insert(message) => {
                let key = (message.conversation_id, message.id);
                if self.messages.contains_key(&key) {
                    return WriteOutcome::Inserted;
                }
                if let Some(client_id) = &message.client_id {
                    let dedupe = (
                        message.conversation_id,
                        message.sender_id,
                        client_id.clone(),
                    );
                    if let Some(existing) = self.client_ids.get(&dedupe) {
                        return WriteOutcome::Duplicate {
                            existing: *existing,
                        };
                    }
                    self.client_ids.insert(dedupe, message.id);
                    self.with_client_id.insert((
                        message.conversation_id,
                        message.sender_id,
                        message.id,
                    ));
                }
                self.messages.insert(key, message);
                WriteOutcome::Inserted
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
            Some(id) => state.conversations[id].clone(),
            None => {
                let conversation = Conversation {
                    id: ObjectId::new(),
                    lesson_id: key.lesson_id,
                    mentor_id: key.mentor_id,
                    student_id: key.student_id,
                    created_at,
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
        let found = self.state.lock().conversations.get(&id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        let mut list: Vec<Conversation> = self
            .state
            .lock()
            .conversations
            .values()
            .filter(|c| filter.mentor_id.is_none_or(|m| c.mentor_id == m))
            .filter(|c| filter.student_id.is_none_or(|s| c.student_id == s))
            .filter(|c| filter.participant.is_none_or(|p| c.has_participant(p)))
            .cloned()
            .collect();
        // Oldest by the caller's `created_at`, which need not follow the
        // id (creation) order the map keeps.
        list.sort_by_key(|c| (c.created_at, c.id));
        list.truncate(filter.limit);
        Box::pin(async move { Ok(list) })
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

    fn recent_client_ids(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
        limit: usize,
    ) -> StoreFuture<'_, Vec<(String, MessageId)>> {
        let state = self.state.lock();
        let lowest = (conversation_id, sender_id, ObjectId::from_bytes([0; 12]));
        let highest = (conversation_id, sender_id, ObjectId::from_bytes([0xff; 12]));
        let ids: Vec<(String, MessageId)> = state
            .with_client_id
            .range(lowest..=highest)
            .rev()
            .take(limit)
            .filter_map(|&(conversation, _, id)| {
                let client_id = state.messages.get(&(conversation, id))?.client_id.clone()?;
                Some((client_id, id))
            })
            .collect();
        Box::pin(async move { Ok(ids) })
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
