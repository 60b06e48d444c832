//! Messages that are journaled but not yet merged into SQLite.
//!
//! Readers see the store as SQLite plus this tail. Two generations: new
//! writes go to `active`; a merge freezes it as `merging` and moves it into
//! SQLite chunk by chunk, so writes never wait for a whole merge. An entry
//! leaves the tail only after the SQLite transaction holding it committed,
//! and a reader copies its tail entries *before* it starts its SQLite read,
//! so a message is always in at least one of the two (a reader keeps the
//! SQLite copy when it sees both).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::model::{ConversationId, Message, MessageId, ObjectId, Seq, UserId};
use crate::store::{HistoryPage, HistoryQuery, PageBuilder};

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
        // Crossed cursors (`after` >= `before`) match nothing; `BTreeMap`
        // panics on a range whose start is past its end, so the bounds
        // never cross (`low..=low` holds at most `after`, filtered below).
        let high = before.unwrap_or(ObjectId::from_bytes([0xff; 12])).max(low);
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

    /// The newest seq of `conversation` in the tail, 0 when it has none:
    /// seq order is id order, so it is the last entry of the range.
    pub(super) fn last_seq(&self, conversation: ConversationId) -> Seq {
        [&self.active, &self.merging]
            .iter()
            .filter_map(|generation| generation.range(conversation, None, None).next_back())
            .map(|message| message.seq)
            .max()
            .unwrap_or(0)
    }

    /// The seq of `sender`'s newest message in `conversation` in the tail,
    /// 0 when none.
    pub(super) fn last_sent(&self, conversation: ConversationId, sender: UserId) -> Seq {
        [&self.active, &self.merging]
            .iter()
            .filter_map(|generation| {
                generation
                    .range(conversation, None, None)
                    .rev()
                    .find(|message| message.sender_id == sender)
            })
            .map(|message| message.seq)
            .max()
            .unwrap_or(0)
    }

    /// Every message of `conversation` in the tail, oldest (lowest seq) first.
    pub(super) fn conversation_messages(&self, conversation: ConversationId) -> Vec<&Message> {
        let mut messages: Vec<&Message> = [&self.merging, &self.active]
            .iter()
            .flat_map(|generation| generation.range(conversation, None, None))
            .collect();
        messages.sort_by_key(|message| message.seq);
        messages
    }

    /// The id of `conversation`'s message number `seq`, if the tail has it.
    pub(super) fn message_at_seq(
        &self,
        conversation: ConversationId,
        seq: Seq,
    ) -> Option<MessageId> {
        [&self.active, &self.merging].iter().find_map(|generation| {
            generation
                .range(conversation, None, None)
                .find(|message| message.seq == seq)
                .map(|message| message.id)
        })
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

    /// The tail's part of a history page: each generation's page, read
    /// from the same end of the range as the SQLite query and cut by the
    /// same bounds.
    pub(super) fn history(&self, query: &HistoryQuery) -> [HistoryPage; 2] {
        [&self.merging, &self.active].map(|generation| {
            let range = generation.range(query.conversation_id, query.after, query.before);
            let mut page = PageBuilder::new(query);
            if query.newest_first() {
                page.fill(range.rev().cloned());
            } else {
                page.fill(range.cloned());
            }
            page.finish()
        })
    }
}

/// A history page from SQLite's page and the tail's (`tail` ordered
/// oldest generation first): the union by id (a later source's copy wins,
/// so SQLite's: a message there may have been viewed since the tail was
/// read), cut again by the query's bounds from the end the query reads.
///
/// A source cut by bytes may have left unread messages just past its last
/// one, so the page never reaches beyond that message: it would skip them.
pub(super) fn merge_history(
    stored: HistoryPage,
    tail: [HistoryPage; 2],
    query: &HistoryQuery,
) -> HistoryPage {
    if tail.iter().all(|page| page.messages.is_empty()) {
        return stored;
    }
    let newest_first = query.newest_first();
    let [merging, active] = tail;
    let sources = [merging, active, stored];
    let any_truncated = sources.iter().any(|page| page.truncated);
    // The message of a byte-cut source read last: the page stops there.
    let frontier = sources
        .iter()
        .filter(|page| page.truncated)
        .filter_map(|page| {
            if newest_first {
                page.messages.first()
            } else {
                page.messages.last()
            }
        })
        .map(|message| message.id)
        .reduce(|a, b| if newest_first { a.max(b) } else { a.min(b) });
    let within = |id: MessageId| {
        frontier.is_none_or(|edge| if newest_first { id >= edge } else { id <= edge })
    };
    let mut merged: BTreeMap<MessageId, Message> = BTreeMap::new();
    for source in sources {
        merged.extend(
            source
                .messages
                .into_iter()
                .map(|message| (message.id, message)),
        );
    }
    let offered = merged.len();
    let in_read_order: Box<dyn Iterator<Item = Message>> = if newest_first {
        Box::new(merged.into_values().rev())
    } else {
        Box::new(merged.into_values())
    };
    let mut page = PageBuilder::new(query);
    for message in in_read_order {
        if !within(message.id) || !page.push(message) {
            break;
        }
    }
    if any_truncated || page.len() < offered {
        page.more_unread();
    }
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Millis;

    fn message(id: u8, text_len: usize) -> Message {
        Message {
            id: ObjectId::from_bytes([id; 12]),
            conversation_id: ObjectId::from_bytes([0; 12]),
            sender_id: 1,
            text: "x".repeat(text_len),
            created_at: Millis(0),
            seq: 0,
            client_id: None,
            viewed_by: None,
            viewed_at: None,
        }
    }

    fn message_from(
        conversation: ConversationId,
        sender: UserId,
        client_id: Option<&str>,
    ) -> Message {
        Message {
            id: ObjectId::new(),
            conversation_id: conversation,
            sender_id: sender,
            text: "t".into(),
            created_at: Millis(0),
            seq: 0,
            client_id: client_id.map(str::to_string),
            viewed_by: None,
            viewed_at: None,
        }
    }

    fn query(newest_first: bool, max_bytes: usize) -> HistoryQuery {
        HistoryQuery {
            conversation_id: ObjectId::from_bytes([0; 12]),
            before: None,
            after: (!newest_first).then(|| ObjectId::from_bytes([0; 12])),
            limit: 100,
            max_bytes,
        }
    }

    fn page(messages: Vec<Message>, truncated: bool) -> HistoryPage {
        HistoryPage {
            messages,
            truncated,
        }
    }

    fn ids(page: &HistoryPage) -> Vec<u8> {
        page.messages.iter().map(|m| m.id.bytes()[0]).collect()
    }

    /// SQLite holds 1 (unread: the budget stopped at 2) and 2; the tail
    /// holds 0, older than both (ids from another process). Taking 0 would
    /// skip 1 for good, since the client continues before 0.
    #[test]
    fn a_merged_page_stops_at_the_last_message_a_cut_source_read() {
        let budget = 2 * message(2, 100).json_len() + 3;
        let stored = page(vec![message(2, 100)], true);
        let tail = [page(vec![message(0, 10)], false), HistoryPage::default()];
        let merged = merge_history(stored, tail, &query(true, budget));
        assert_eq!(ids(&merged), [2]);
        assert!(merged.truncated);

        // Read with `after`: the mirror image.
        let stored = page(vec![message(1, 100)], true);
        let tail = [HistoryPage::default(), page(vec![message(3, 10)], false)];
        let merged = merge_history(stored, tail, &query(false, budget));
        assert_eq!(ids(&merged), [1]);
        assert!(merged.truncated);
    }

    #[test]
    fn a_merged_page_is_cut_by_bytes_and_prefers_the_sqlite_copy() {
        let one = message(5, 10).json_len();
        let viewed = Message {
            viewed_by: Some(2),
            ..message(5, 10)
        };
        let stored = page(vec![message(4, 10), viewed.clone()], false);
        let tail = [
            page(vec![message(5, 10)], false),
            page(vec![message(6, 10), message(7, 10)], false),
        ];
        // Room for three messages of `one` bytes (the viewed copy is larger).
        let budget = 2 + 3 * one + 2 + 4;
        let merged = merge_history(stored.clone(), tail.clone(), &query(true, budget));
        assert_eq!(ids(&merged), [6, 7]);
        assert!(merged.truncated, "5 did not fit");
        let merged = merge_history(stored, tail, &query(true, usize::MAX));
        assert_eq!(ids(&merged), [4, 5, 6, 7]);
        assert_eq!(merged.messages[1], viewed);
        assert!(!merged.truncated);
    }

    /// `after` at or past `before` is an empty page, from either end, not
    /// a panic of the reader thread.
    #[test]
    fn crossed_cursors_read_nothing() {
        let mut tail = Tail::default();
        for id in 1..=5 {
            tail.insert(message(id, 10));
        }
        tail.freeze();
        tail.insert(message(6, 10));
        for (after, before) in [(4, 2), (3, 3), (0xff, 1)] {
            for newest_first in [true, false] {
                let query = HistoryQuery {
                    after: Some(ObjectId::from_bytes([after; 12])),
                    before: Some(ObjectId::from_bytes([before; 12])),
                    ..query(newest_first, usize::MAX)
                };
                for page in tail.history(&query) {
                    assert!(page.messages.is_empty(), "after {after}, before {before}");
                }
            }
        }
        let query = HistoryQuery {
            after: Some(ObjectId::from_bytes([2; 12])),
            before: Some(ObjectId::from_bytes([6; 12])),
            ..query(false, usize::MAX)
        };
        let [merging, active] = tail.history(&query);
        assert_eq!((ids(&merging), ids(&active)), (vec![3, 4, 5], vec![]));
    }

    #[test]
    fn client_ids_span_both_generations_and_forget_merged_messages() {
        let conversation = ObjectId::new();
        let mut tail = Tail::default();
        let mut merged = Vec::new();
        for n in 0..3 {
            let sent = message_from(conversation, 25, Some(&format!("c{n}")));
            merged.push(sent.clone());
            tail.insert(sent);
        }
        tail.freeze();
        let active = message_from(conversation, 25, Some("c3"));
        tail.insert(active.clone());
        let key = |client_id: &str| (conversation, 25, client_id.to_string());

        assert_eq!(tail.by_client_id(&key("c0")), Some(merged[0].id));
        assert_eq!(tail.by_client_id(&key("c3")), Some(active.id));
        assert_eq!(tail.by_client_id(&(conversation, 10, "c3".into())), None);

        tail.remove_merged(&merged[..2]);
        assert_eq!(tail.by_client_id(&key("c0")), None);
        assert_eq!(tail.by_client_id(&key("c2")), Some(merged[2].id));
        assert_eq!(tail.by_client_id(&key("c3")), Some(active.id));
    }
}
