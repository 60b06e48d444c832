//! Writes that are durable in the `journal` table but not yet merged into
//! `messages`, indexed in memory so reads and dedupe see them at once.
//!
//! Appending to the journal costs about the bytes of the message; inserting
//! into `messages` (clustered by conversation) dirties one B-tree page per
//! conversation per commit. Merging the journal in large sorted batches pays
//! that per-page cost once for many messages.

use std::collections::HashMap;

use tokio::time::Instant;

use crate::model::{ConversationId, Message, MessageId, Millis, UserId};

/// The journaled state: messages (with views applied) by conversation.
#[derive(Default)]
pub(super) struct Pending {
    by_conversation: HashMap<ConversationId, Vec<Message>>,
    /// Where each pending message is: its conversation and its index there.
    positions: HashMap<MessageId, (ConversationId, usize)>,
    client_ids: HashMap<(ConversationId, UserId, String), MessageId>,
    count: usize,
    since: Option<Instant>,
}

/// One journaled change, applied to `Pending` once its commit succeeded.
pub(super) enum Change {
    Insert(Message),
    View {
        message_id: MessageId,
        viewer_id: UserId,
        at: Millis,
    },
}

impl Pending {
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// When the oldest pending write was journaled.
    pub(super) fn since(&self) -> Option<Instant> {
        self.since
    }

    pub(super) fn message(&self, id: &MessageId) -> Option<&Message> {
        let (conversation, index) = self.positions.get(id)?;
        self.by_conversation.get(conversation)?.get(*index)
    }

    pub(super) fn by_client_id(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
        client_id: &str,
    ) -> Option<MessageId> {
        // The key owns a String; building one for a look-up is the price of
        // a plain HashMap, paid only for messages that carry a client id.
        self.client_ids
            .get(&(conversation_id, sender_id, client_id.to_string()))
            .copied()
    }

    pub(super) fn apply(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.since.get_or_insert_with(Instant::now);
        for change in changes {
            match change {
                Change::Insert(message) => {
                    if let Some(client_id) = &message.client_id {
                        self.client_ids.insert(
                            (
                                message.conversation_id,
                                message.sender_id,
                                client_id.clone(),
                            ),
                            message.id,
                        );
                    }
                    let list = self
                        .by_conversation
                        .entry(message.conversation_id)
                        .or_default();
                    self.positions
                        .insert(message.id, (message.conversation_id, list.len()));
                    list.push(message);
                    self.count += 1;
                }
                Change::View {
                    message_id,
                    viewer_id,
                    at,
                } => {
                    if let Some((conversation, index)) = self.positions.get(&message_id) {
                        if let Some(message) = self
                            .by_conversation
                            .get_mut(conversation)
                            .and_then(|list| list.get_mut(*index))
                        {
                            message.viewed_by = Some(viewer_id);
                            message.viewed_at = Some(at);
                        }
                    }
                }
            }
        }
    }

    /// Everything was merged into `messages`.
    pub(super) fn clear(&mut self) {
        *self = Pending::default();
    }

    /// Pending messages of a conversation with `after < id < before`.
    pub(super) fn range(
        &self,
        conversation_id: ConversationId,
        after: Option<MessageId>,
        before: Option<MessageId>,
    ) -> Vec<Message> {
        self.by_conversation
            .get(&conversation_id)
            .map(|list| {
                list.iter()
                    .filter(|m| after.is_none_or(|a| m.id > a) && before.is_none_or(|b| m.id < b))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pending (client_id, id) pairs of one sender in one conversation.
    pub(super) fn client_ids_of(
        &self,
        conversation_id: ConversationId,
        sender_id: UserId,
    ) -> Vec<(String, MessageId)> {
        self.by_conversation
            .get(&conversation_id)
            .map(|list| {
                list.iter()
                    .filter(|m| m.sender_id == sender_id)
                    .filter_map(|m| m.client_id.clone().map(|c| (c, m.id)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Combines a page read from `messages` with the pending messages of the
/// same range: sorted by id, each id once (the merged copy wins, as it is
/// at least as recent), then cut to the page the query asked for.
pub(super) fn combine_page(
    merged: Vec<Message>,
    pending: Vec<Message>,
    limit: usize,
    first_n: bool,
) -> Vec<Message> {
    if pending.is_empty() {
        return merged;
    }
    let mut all = merged;
    all.extend(pending);
    // Stable sort: for equal ids the merged copy, which came first, stays first.
    all.sort_by_key(|m| m.id);
    all.dedup_by_key(|m| m.id);
    if all.len() > limit {
        if first_n {
            all.truncate(limit);
        } else {
            all.drain(..all.len() - limit);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectId;

    fn message(conversation: ConversationId, id: MessageId, client_id: Option<&str>) -> Message {
        Message {
            id,
            conversation_id: conversation,
            sender_id: 1,
            text: "t".into(),
            created_at: Millis(0),
            client_id: client_id.map(str::to_string),
            viewed_by: None,
            viewed_at: None,
        }
    }

    #[test]
    fn indexes_messages_client_ids_and_views() {
        let conversation = ObjectId::new();
        let (a, b) = (ObjectId::new(), ObjectId::new());
        let mut pending = Pending::default();
        pending.apply(vec![
            Change::Insert(message(conversation, a, Some("x"))),
            Change::Insert(message(conversation, b, None)),
            Change::View {
                message_id: a,
                viewer_id: 2,
                at: Millis(5),
            },
        ]);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending.by_client_id(conversation, 1, "x"), Some(a));
        assert_eq!(pending.by_client_id(conversation, 2, "x"), None);
        assert_eq!(pending.message(&a).unwrap().viewed_by, Some(2));
        assert_eq!(pending.range(conversation, Some(a), None).len(), 1);
        assert_eq!(
            pending.client_ids_of(conversation, 1),
            vec![("x".to_string(), a)]
        );
        pending.clear();
        assert_eq!(pending.len(), 0);
        assert!(pending.message(&a).is_none());
    }

    #[test]
    fn pages_combine_without_duplicates() {
        let conversation = ObjectId::new();
        let mut ids: Vec<MessageId> = (0..6).map(|_| ObjectId::new()).collect();
        ids.sort();
        let merged: Vec<Message> = ids[..3]
            .iter()
            .map(|id| message(conversation, *id, None))
            .collect();
        let pending: Vec<Message> = ids[2..]
            .iter()
            .map(|id| message(conversation, *id, None))
            .collect();
        let last = combine_page(merged.clone(), pending.clone(), 4, false);
        assert_eq!(
            last.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[2..].to_vec()
        );
        let first = combine_page(merged, pending, 4, true);
        assert_eq!(
            first.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[..4].to_vec()
        );
    }
}
