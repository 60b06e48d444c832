//! Messages that are journaled but not yet merged into SQLite.
//!
//! Readers see the store as SQLite plus this tail. Two generations: new
//! writes go to `active`; a merge freezes it as `merging` and moves it into
//! SQLite chunk by chunk, so writes never wait for a whole merge. An entry
//! leaves the tail only after the SQLite transaction holding it committed,
//! and a reader copies its tail entries *before* it starts its SQLite read,
//! so a message is always in at least one of the two (a reader keeps the
//! SQLite copy when it sees both).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::model::{ConversationId, Message, MessageId, ObjectId, UserId};
use crate::store::HistoryQuery;

type MessageKey = (ConversationId, MessageId);
/// (conversation, sender, client id): what makes a resend a duplicate.
pub(super) type ClientKey = (ConversationId, UserId, String);

#[derive(Default)]
pub(super) struct Tail {
    active: Generation,
    merging: Generation,
}

#[derive(Default)]
struct Generation {
    messages: BTreeMap<MessageKey, Message>,
    client_ids: HashMap<ClientKey, MessageId, foldhash::fast::RandomState>,
    /// The messages with a client id, by sender and id, so every connect's
    /// `recent_client_ids` reads only those: a conversation's run in the
    /// tail may be 262,144 messages without one (seed clients).
    with_client_id: BTreeSet<(ConversationId, UserId, MessageId)>,
    /// When the first message of this generation arrived.
    since: Option<Instant>,
}

impl Generation {
    fn insert(&mut self, message: Message) {
        if let Some(client_id) = &message.client_id {
            self.client_ids.insert(
                (
                    message.conversation_id,
                    message.sender_id,
                    client_id.clone(),
                ),
                message.id,
            );
            self.with_client_id
                .insert((message.conversation_id, message.sender_id, message.id));
        }
        self.since.get_or_insert_with(Instant::now);
        self.messages
            .insert((message.conversation_id, message.id), message);
    }

    fn remove(&mut self, key: &MessageKey) {
        if let Some(message) = self.messages.remove(key) {
            if let Some(client_id) = message.client_id {
                self.client_ids
                    .remove(&(message.conversation_id, message.sender_id, client_id));
                self.with_client_id.remove(&(
                    message.conversation_id,
                    message.sender_id,
                    message.id,
                ));
            }
        }
        if self.messages.is_empty() {
            self.since = None;
        }
    }

    /// This generation's messages of one conversation with `after < id < before`.
    fn range(
        &self,
        conversation: ConversationId,
        after: Option<MessageId>,
        before: Option<MessageId>,
    ) -> impl DoubleEndedIterator<Item = &Message> {
        let low = after.unwrap_or(ObjectId::from_bytes([0; 12]));
        let high = before.unwrap_or(ObjectId::from_bytes([0xff; 12]));
        self.messages
            .range((conversation, low)..=(conversation, high))
            .map(|(_, message)| message)
            .filter(move |message| {
                after.is_none_or(|after| message.id > after)
                    && before.is_none_or(|before| message.id < before)
            })
    }
}

impl Tail {
    pub(super) fn len(&self) -> usize {
        self.active.messages.len() + self.merging.messages.len()
    }

    pub(super) fn active_len(&self) -> usize {
        self.active.messages.len()
    }

    /// How long the oldest unmerged message of `active` has waited.
    pub(super) fn active_age(&self) -> Option<std::time::Duration> {
        self.active.since.map(|since| since.elapsed())
    }

    pub(super) fn is_merging(&self) -> bool {
        !self.merging.messages.is_empty()
    }

    pub(super) fn insert(&mut self, message: Message) {
        self.active.insert(message);
    }

    pub(super) fn get(&self, conversation: ConversationId, id: MessageId) -> Option<&Message> {
        let key = (conversation, id);
        self.active
            .messages
            .get(&key)
            .or_else(|| self.merging.messages.get(&key))
    }

    pub(super) fn get_mut(
        &mut self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Option<&mut Message> {
        let key = (conversation, id);
        match self.active.messages.get_mut(&key) {
            Some(message) => Some(message),
            None => self.merging.messages.get_mut(&key),
        }
    }

    pub(super) fn by_client_id(&self, key: &ClientKey) -> Option<MessageId> {
        self.active
            .client_ids
            .get(key)
            .or_else(|| self.merging.client_ids.get(key))
            .copied()
    }

    /// Starts a merge: what was written so far becomes `merging`. Only when
    /// the previous merge finished.
    pub(super) fn freeze(&mut self) {
        debug_assert!(self.merging.messages.is_empty());
        self.merging = std::mem::take(&mut self.active);
    }

    /// Copies of the next (at most) `max` messages to merge, in key order, so
    /// one conversation's run lands in one transaction.
    pub(super) fn next_chunk(&self, max: usize) -> Vec<Message> {
        self.merging.messages.values().take(max).cloned().collect()
    }

    /// Drops merged messages; call after their transaction committed.
    pub(super) fn remove_merged(&mut self, merged: &[Message]) {
        for message in merged {
            self.merging.remove(&(message.conversation_id, message.id));
        }
    }

    /// The tail's part of a history page: at most `limit` messages from the
    /// same end of the range the SQLite query reads, oldest first.
    pub(super) fn history(&self, query: &HistoryQuery) -> Vec<Message> {
        let mut found: Vec<Message> = Vec::new();
        for generation in [&self.merging, &self.active] {
            let range = generation.range(query.conversation_id, query.after, query.before);
            if query.after.is_some() {
                found.extend(range.take(query.limit).cloned());
            } else {
                found.extend(range.rev().take(query.limit).cloned());
            }
        }
        found.sort_by_key(|message| message.id);
        found
    }

    /// The tail's part of [`Store::recent_client_ids`], newest first.
    ///
    /// [`Store::recent_client_ids`]: crate::store::Store::recent_client_ids
    pub(super) fn recent_client_ids(
        &self,
        conversation: ConversationId,
        sender: UserId,
        limit: usize,
    ) -> Vec<(String, MessageId)> {
        let lowest = (conversation, sender, ObjectId::from_bytes([0; 12]));
        let highest = (conversation, sender, ObjectId::from_bytes([0xff; 12]));
        let mut found: Vec<(String, MessageId)> = Vec::new();
        for generation in [&self.merging, &self.active] {
            found.extend(
                generation
                    .with_client_id
                    .range(lowest..=highest)
                    .rev()
                    .take(limit)
                    .filter_map(|&(conversation, _, id)| {
                        let message = generation.messages.get(&(conversation, id))?;
                        Some((message.client_id.clone()?, id))
                    }),
            );
        }
        found.sort_by_key(|&(_, id)| std::cmp::Reverse(id));
        found.truncate(limit);
        found
    }
}

/// A history page from SQLite's page and the tail's: the union by id (the
/// SQLite copy wins: a message there may have been viewed since the tail
/// was read), cut to `limit` from the end the query reads.
pub(super) fn merge_history(
    stored: Vec<Message>,
    tail: Vec<Message>,
    query: &HistoryQuery,
) -> Vec<Message> {
    if tail.is_empty() {
        return stored;
    }
    let mut merged: BTreeMap<MessageId, Message> = tail
        .into_iter()
        .map(|message| (message.id, message))
        .collect();
    merged.extend(stored.into_iter().map(|message| (message.id, message)));
    let mut page: Vec<Message> = merged.into_values().collect();
    if query.after.is_some() {
        page.truncate(query.limit);
    } else if page.len() > query.limit {
        page.drain(..page.len() - query.limit);
    }
    page
}

/// [`Tail::recent_client_ids`] and SQLite's answer, newest first, deduplicated.
pub(super) fn merge_client_ids(
    stored: Vec<(String, MessageId)>,
    tail: Vec<(String, MessageId)>,
    limit: usize,
) -> Vec<(String, MessageId)> {
    if tail.is_empty() {
        return stored;
    }
    let merged: BTreeMap<MessageId, String> = tail
        .into_iter()
        .chain(stored)
        .map(|(client_id, id)| (id, client_id))
        .collect();
    merged
        .into_iter()
        .rev()
        .take(limit)
        .map(|(id, client_id)| (client_id, id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Millis;

    fn message(conversation: ConversationId, sender: UserId, client_id: Option<&str>) -> Message {
        Message {
            id: ObjectId::new(),
            conversation_id: conversation,
            sender_id: sender,
            text: "t".into(),
            created_at: Millis(0),
            client_id: client_id.map(str::to_string),
            viewed_by: None,
            viewed_at: None,
        }
    }

    fn client_ids(found: Vec<(String, MessageId)>) -> Vec<String> {
        found.into_iter().map(|(client_id, _)| client_id).collect()
    }

    #[test]
    fn recent_client_ids_span_both_generations_and_forget_merged_messages() {
        let (conversation, other) = (ObjectId::new(), ObjectId::new());
        let mut tail = Tail::default();
        let mut merged = Vec::new();
        for n in 0..3 {
            let sent = message(conversation, 25, Some(&format!("c{n}")));
            merged.push(sent.clone());
            tail.insert(sent);
            tail.insert(message(conversation, 25, None));
        }
        tail.freeze();
        tail.insert(message(conversation, 25, Some("c3")));
        tail.insert(message(conversation, 10, Some("mentor")));
        tail.insert(message(other, 25, Some("elsewhere")));
        tail.insert(message(conversation, 25, None));

        assert_eq!(
            client_ids(tail.recent_client_ids(conversation, 25, 10)),
            ["c3", "c2", "c1", "c0"]
        );
        assert_eq!(
            client_ids(tail.recent_client_ids(conversation, 25, 2)),
            ["c3", "c2"]
        );
        assert_eq!(
            client_ids(tail.recent_client_ids(conversation, 10, 10)),
            ["mentor"]
        );

        tail.remove_merged(&merged[..2]);
        assert_eq!(
            client_ids(tail.recent_client_ids(conversation, 25, 10)),
            ["c3", "c2"]
        );
        assert_eq!(tail.merging.with_client_id.len(), 1);
    }
}
