//! Each conversation's last seq: read with the conversation (REST, the
//! upgrade path) and kept by the writer between batches.
//!
//! Every query here names the partial filter of `conversation_id_1_seq_1`
//! (`seq: {$type: "number"}`) literally: the planner uses a partial index
//! only for a query that implies its filter, and spelling it out does not
//! depend on how well it reasons about `$eq` or `$sort` against `$type`.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};
use parking_lot::Mutex;

use super::documents::{bson_id, int};
use super::errors::store_error;
use super::{MongoStore, MESSAGES};
use crate::model::{ConversationId, MessageId, Seq};
use crate::store::StoreError;

/// Conversations whose last seq the cache holds, at most. One node writes a
/// conversation, so its own count is exact; past this it starts over, and a
/// conversation written again costs one indexed read.
const CACHE_MAX: usize = 100_000;

/// The field the `$lookup` of [`last_seq_lookup`] fills.
const LAST: &str = "last_message";

/// The partial filter of the seq index, as a query clause on `seq`.
pub(crate) fn numbered() -> Document {
    doc! { "$type": "number" }
}

/// A `$lookup` stage for a pipeline over conversations: the newest numbered
/// message's seq, one index seek per conversation (the `$expr` equality and
/// the sort both come from `{conversation_id: 1, seq: 1}`).
pub(crate) fn last_seq_lookup() -> Document {
    doc! { "$lookup": {
        "from": MESSAGES,
        "let": { "conversation": "$_id" },
        "pipeline": [
            { "$match": {
                "$expr": { "$eq": ["$conversation_id", "$$conversation"] },
                "seq": numbered(),
            } },
            { "$sort": { "seq": -1 } },
            { "$limit": 1 },
            { "$project": { "_id": 0, "seq": 1 } },
        ],
        "as": LAST,
    } }
}

/// The last seq a [`last_seq_lookup`] found; 0 for a conversation without
/// a numbered message.
pub(crate) fn looked_up_last_seq(document: &Document) -> Result<Seq, StoreError> {
    let newest = document
        .get_array(LAST)
        .ok()
        .and_then(|found| found.first())
        .and_then(Bson::as_document);
    match newest {
        Some(message) => stored_seq(message),
        None => Ok(0),
    }
}

/// A stored message's `seq`, which the seq index only holds as a number;
/// one that is no positive integer is corrupt data.
pub(crate) fn stored_seq(message: &Document) -> Result<Seq, StoreError> {
    int(message, "seq")
        .and_then(|seq| Seq::try_from(seq).ok())
        .filter(|&seq| seq > 0)
        .ok_or_else(|| {
            StoreError::Internal(format!(
                "a stored message has a malformed `seq`: {:?}",
                message.get("seq")
            ))
        })
}

/// The writer's last seq per conversation, so a batch reads it only for a
/// conversation it has not written since start. Never ahead of the
/// database: a value is set only after its insert was acknowledged, and a
/// batch that fails forgets its conversations (see [`ForgetUnlessKept`]).
#[derive(Default)]
pub(crate) struct SeqCache {
    // Held for map operations only, never across an `.await`.
    last: Mutex<HashMap<ConversationId, Seq>>,
}

impl SeqCache {
    /// The cached last seq of each of `conversations` that has one.
    pub(crate) fn get(&self, conversations: &[ConversationId]) -> HashMap<ConversationId, Seq> {
        let last = self.last.lock();
        conversations
            .iter()
            .filter_map(|id| last.get(id).map(|&seq| (*id, seq)))
            .collect()
    }

    pub(crate) fn set(&self, seqs: &HashMap<ConversationId, Seq>) {
        let mut last = self.last.lock();
        if last.len().saturating_add(seqs.len()) > CACHE_MAX {
            last.clear();
        }
        last.extend(seqs);
    }

    fn forget(&self, conversations: &[ConversationId]) {
        let mut last = self.last.lock();
        for id in conversations {
            last.remove(id);
        }
    }

    /// A guard that forgets `conversations` when dropped unless
    /// [`ForgetUnlessKept::keep`] was called: on an error *and* when the
    /// store call's deadline drops the batch's future mid-way.
    pub(crate) fn forget_unless_kept(
        &self,
        conversations: Vec<ConversationId>,
    ) -> ForgetUnlessKept<'_> {
        ForgetUnlessKept {
            cache: self,
            conversations,
            keep: false,
        }
    }
}

pub(crate) struct ForgetUnlessKept<'a> {
    cache: &'a SeqCache,
    conversations: Vec<ConversationId>,
    keep: bool,
}

impl ForgetUnlessKept<'_> {
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for ForgetUnlessKept<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.cache.forget(&self.conversations);
        }
    }
}

impl MongoStore {
    /// The highest stored seq of `conversation` (0 when none): one seek at
    /// the end of its range of the seq index.
    pub(crate) async fn read_last_seq(
        &self,
        conversation: ConversationId,
    ) -> Result<Seq, StoreError> {
        let newest = self
            .messages
            .find_one(doc! { "conversation_id": bson_id(conversation), "seq": numbered() })
            .sort(doc! { "seq": -1 })
            .projection(doc! { "_id": 0, "seq": 1 })
            .await
            .map_err(|error| store_error("read last seq", error))?;
        newest.as_ref().map_or(Ok(0), stored_seq)
    }

    /// The id of message `seq` of `conversation`, if stored.
    pub(crate) async fn find_at_seq(
        &self,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Option<MessageId>, StoreError> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(None);
        };
        let found = self
            .messages
            .find_one(doc! {
                "conversation_id": bson_id(conversation),
                "seq": { "$eq": Bson::Int64(seq), "$type": "number" },
            })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|error| store_error("find message by seq", error))?;
        found
            .map(|document| super::documents::object_id(&document, "_id", "message"))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectId;

    #[test]
    fn a_failed_batch_forgets_its_conversations_and_a_kept_one_does_not() {
        let cache = SeqCache::default();
        let (a, b) = (ObjectId::new(), ObjectId::new());
        cache.set(&HashMap::from([(a, 4), (b, 9)]));

        cache.forget_unless_kept(vec![a]).keep();
        assert_eq!(cache.get(&[a, b]).len(), 2);

        drop(cache.forget_unless_kept(vec![a]));
        assert_eq!(cache.get(&[a, b]), HashMap::from([(b, 9)]));
    }

    #[test]
    fn the_looked_up_last_seq_is_zero_without_a_numbered_message() {
        assert_eq!(looked_up_last_seq(&doc! { LAST: [] }).unwrap(), 0);
        assert_eq!(
            looked_up_last_seq(&doc! { LAST: [{ "seq": Bson::Int32(7) }] }).unwrap(),
            7
        );
        assert!(looked_up_last_seq(&doc! { LAST: [{ "seq": -1_i64 }] }).is_err());
    }
}
