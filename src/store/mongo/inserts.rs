//! A batch's inserts, each given the next seq of its conversation
//! (CONTRACT §6), in three steps:
//!
//! 1. One `find` for what is stored under the inserts' unique keys: a
//!    message with the same `_id` (this batch tried before) is `Inserted`
//!    again with its seq; one with the same (conversation, sender,
//!    client_id) makes the insert a `Duplicate` of it. Neither uses a seq,
//!    which is why duplicates are found *before* seqs are given.
//! 2. The remaining messages get seqs in batch order, from each
//!    conversation's last seq: the writer's cache, else one indexed read.
//! 3. One *ordered* `insert_many`.
//!
//! Why no gap: an ordered insert stops at its first failing document, so
//! what it stored is a prefix of the list, and in each conversation a prefix
//! of the seqs given — never 7 without 6 (an unordered insert could store 7
//! after failing 6). A document refused for good is `Rejected` and the ones
//! after it are renumbered from the stored prefix and sent again, so the
//! next message takes its seq. Any other failure is `Unavailable`, and the
//! batch's cached last seqs are forgotten (`SeqCache::forget_unless_kept`):
//! the retry finds the stored prefix in step 1 and re-reads the last seqs,
//! so it carries on right after it. The cache is set only from an
//! acknowledged insert, so it is never ahead of the database. A
//! duplicate key in step 3 means another writer got there after step 1 (not
//! expected: one node writes a conversation); it is `Unavailable` too, and
//! the retry's step 1 sorts it out.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, IndexedWriteError, InsertManyError};

use super::documents::{bson_id, int, message_document, object_id};
use super::errors::{is_duplicate_key_code, is_permanent_write_code, store_error};
use super::indexes::unique_message_indexes;
use super::last_seq::stored_seq;
use super::MongoStore;
use crate::model::{ConversationId, Message, MessageId, Seq, UserId};
use crate::store::{StoreError, WriteOutcome};

/// The unique keys (and seq) of a stored message, as step 1 reads them.
#[derive(Clone, Debug)]
struct StoredKey {
    id: MessageId,
    conversation_id: Option<ConversationId>,
    sender_id: Option<UserId>,
    client_id: Option<String>,
    /// `None`: stored without a (valid) seq.
    seq: Option<Seq>,
}

/// What an insert is, once the stored keys are known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// Settled without writing.
    Settled(WriteOutcome),
    /// The same id as insert `n` (of this batch's inserts) before it: its
    /// outcome.
    SameIdAs(usize),
    /// The same client message as new insert `n` before it: a duplicate
    /// of it.
    SameClientAs(usize),
    /// Written, with the next seq.
    New,
}

impl MongoStore {
    /// Writes `inserts` (batch position, message) and sets their outcomes.
    pub(super) async fn insert_messages(
        &self,
        inserts: Vec<(usize, Message)>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        if inserts.is_empty() {
            return Ok(());
        }
        let stored = self.stored_keys(&inserts).await?;
        let plans = plan(&inserts, &stored);

        let ids: Vec<MessageId> = inserts.iter().map(|(_, message)| message.id).collect();
        let positions: Vec<usize> = inserts.iter().map(|(position, _)| *position).collect();
        let mut fresh: Vec<(usize, Message)> = Vec::new();
        for (n, ((_, message), plan)) in inserts.into_iter().zip(&plans).enumerate() {
            if *plan == Plan::New {
                fresh.push((n, message));
            }
        }

        let mut results: Vec<Option<WriteOutcome>> = vec![None; plans.len()];
        if !fresh.is_empty() {
            let mut last = self.last_seqs(&fresh).await?;
            self.insert_fresh(fresh, &mut last, &mut results).await?;
            self.seqs.set(&last);
        }

        for (n, plan) in plans.into_iter().enumerate() {
            let outcome = match plan {
                Plan::Settled(outcome) => outcome,
                Plan::New => results[n].take().ok_or_else(|| {
                    StoreError::Internal("mongodb: an insert got no outcome".into())
                })?,
                Plan::SameIdAs(first) => outcome_of(&outcomes[positions[first]])?.clone(),
                Plan::SameClientAs(first) => match outcome_of(&outcomes[positions[first]])? {
                    WriteOutcome::Inserted { seq } => WriteOutcome::Duplicate {
                        existing: ids[first],
                        seq: *seq,
                    },
                    // Refused: this resend is refused alike.
                    other => other.clone(),
                },
            };
            outcomes[positions[n]] = Some(outcome);
        }
        Ok(())
    }

    /// Step 1: one `find` for every stored message sharing an `_id` or a
    /// (conversation, sender, client_id) with an insert.
    async fn stored_keys(
        &self,
        inserts: &[(usize, Message)],
    ) -> Result<Vec<StoredKey>, StoreError> {
        let ids: Vec<Bson> = inserts
            .iter()
            .map(|(_, message)| Bson::ObjectId(bson_id(message.id)))
            .collect();
        // Client ids grouped by (conversation, sender), in batch order: one
        // `$in` clause each, served by the client id index.
        let mut senders: Vec<((ConversationId, UserId), Vec<Bson>)> = Vec::new();
        for (_, message) in inserts {
            let Some(client_id) = &message.client_id else {
                continue;
            };
            let sender = (message.conversation_id, message.sender_id);
            let client_id = Bson::String(client_id.clone());
            match senders.iter_mut().find(|(key, _)| *key == sender) {
                Some((_, client_ids)) if client_ids.contains(&client_id) => {}
                Some((_, client_ids)) => client_ids.push(client_id),
                None => senders.push((sender, vec![client_id])),
            }
        }
        // Each `_id` and each client id matches at most one document (both
        // are unique keys).
        let limit = ids.len() + senders.iter().map(|(_, ids)| ids.len()).sum::<usize>();
        let mut clauses = vec![doc! { "_id": { "$in": ids } }];
        for ((conversation, sender), client_ids) in senders {
            clauses.push(doc! {
                "conversation_id": bson_id(conversation),
                "sender_id": Bson::Int64(sender),
                // `$type` names the index's partial filter, so it is used.
                "client_id": { "$in": client_ids, "$type": "string" },
            });
        }
        let cursor = self
            .messages
            .find(doc! { "$or": clauses })
            .projection(doc! {
                "_id": 1, "conversation_id": 1, "sender_id": 1, "client_id": 1, "seq": 1,
            })
            .limit(super::as_limit(limit))
            .batch_size(super::as_batch(limit))
            .await
            .map_err(|error| store_error("find stored duplicates", error))?;
        super::drain(cursor, "find stored duplicates", |document| {
            Ok(StoredKey {
                id: object_id(document, "_id", "message")?,
                conversation_id: object_id(document, "conversation_id", "message").ok(),
                sender_id: int(document, "sender_id"),
                client_id: document.get_str("client_id").ok().map(str::to_string),
                seq: stored_seq(document).ok(),
            })
        })
        .await
    }

    /// Step 2's starting points: the last seq of each conversation `fresh`
    /// writes, from the cache or read (the reads run together).
    async fn last_seqs(
        &self,
        fresh: &[(usize, Message)],
    ) -> Result<HashMap<ConversationId, Seq>, StoreError> {
        let mut conversations: Vec<ConversationId> = Vec::new();
        for (_, message) in fresh {
            if !conversations.contains(&message.conversation_id) {
                conversations.push(message.conversation_id);
            }
        }
        let mut last = self.seqs.get(&conversations);
        let reads = conversations
            .iter()
            .filter(|id| !last.contains_key(id))
            .map(|&id| async move { Ok::<_, StoreError>((id, self.read_last_seq(id).await?)) });
        last.extend(try_join_all(reads).await?);
        Ok(last)
    }

    /// Steps 2 and 3: seqs, then ordered inserts until every message is
    /// stored or refused (more than one round trip only after a refusal).
    /// `last` ends as the last stored seq of each conversation.
    async fn insert_fresh(
        &self,
        mut fresh: Vec<(usize, Message)>,
        last: &mut HashMap<ConversationId, Seq>,
        results: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        let mut start = 0;
        while start < fresh.len() {
            let pending = &mut fresh[start..];
            assign_seqs(pending, last)?;
            let documents: Vec<Document> = pending
                .iter()
                .map(|(_, message)| message_document(message))
                .collect();
            let inserted = self.messages.insert_many(documents).ordered(true).await;
            let refused = match inserted {
                Ok(_) => None,
                Err(error) => match first_write_error(&error) {
                    Some(refused) => Some(refused),
                    None => return Err(store_error("insert messages", error)),
                },
            };
            // Ordered: everything before the refused document is stored,
            // nothing after it.
            let stored = match &refused {
                None => pending.len(),
                Some(error) if error.index < pending.len() => error.index,
                Some(error) => {
                    return Err(StoreError::Internal(format!(
                        "mongodb insert: write error for document {} of {}",
                        error.index,
                        pending.len()
                    )))
                }
            };
            for (n, message) in &pending[..stored] {
                results[*n] = Some(WriteOutcome::Inserted { seq: message.seq });
                last.insert(message.conversation_id, message.seq);
            }
            let Some(refused) = refused else {
                return Ok(());
            };
            if !refused_for_good(refused.code, &refused.message) {
                return Err(StoreError::Unavailable(format!(
                    "mongodb insert: code {}: {}; the batch is retried from what is stored",
                    refused.code, refused.message
                )));
            }
            results[pending[stored].0] = Some(WriteOutcome::Rejected(refused.message));
            start += stored + 1;
        }
        Ok(())
    }
}

/// Decides each insert from the stored keys, in batch order, as the
/// reference store does (`MemoryStore`): same id stored, same id earlier in
/// the batch, same client message stored, same client message earlier in
/// the batch, else new.
fn plan(inserts: &[(usize, Message)], stored: &[StoredKey]) -> Vec<Plan> {
    let stored_by_id: HashMap<MessageId, &StoredKey> =
        stored.iter().map(|key| (key.id, key)).collect();
    let mut first_with_id: HashMap<MessageId, usize> = HashMap::new();
    let mut new_with_client_id: HashMap<(ConversationId, UserId, &str), usize> = HashMap::new();
    let mut plans = Vec::with_capacity(inserts.len());
    for (n, (_, message)) in inserts.iter().enumerate() {
        let client_key = message
            .client_id
            .as_deref()
            .map(|client_id| (message.conversation_id, message.sender_id, client_id));
        let plan = if let Some(key) = stored_by_id.get(&message.id) {
            Plan::Settled(match key.seq {
                Some(seq) => WriteOutcome::Inserted { seq },
                None => stored_without_seq(),
            })
        } else if let Some(&first) = first_with_id.get(&message.id) {
            Plan::SameIdAs(first)
        } else if let Some(key) = stored.iter().find(|key| key.same_client_message(message)) {
            Plan::Settled(match key.seq {
                Some(seq) => WriteOutcome::Duplicate {
                    existing: key.id,
                    seq,
                },
                None => stored_without_seq(),
            })
        } else if let Some(&first) = client_key.and_then(|key| new_with_client_id.get(&key)) {
            Plan::SameClientAs(first)
        } else {
            if let Some(key) = client_key {
                new_with_client_id.insert(key, n);
            }
            Plan::New
        };
        first_with_id.entry(message.id).or_insert(n);
        plans.push(plan);
    }
    plans
}

/// A stored message without a seq (written by an older build after this
/// one's start-up numbering): its seq is unknown until the next start, and
/// acknowledging without one would break the client's ordering.
fn stored_without_seq() -> WriteOutcome {
    WriteOutcome::Rejected(
        "the stored message with this id or client_id has no seq yet (numbered at the next start)"
            .into(),
    )
}

/// Gives each message the next seq of its conversation after `last`, in
/// order; `last` itself is left alone (only stored messages move it).
fn assign_seqs(
    pending: &mut [(usize, Message)],
    last: &HashMap<ConversationId, Seq>,
) -> Result<(), StoreError> {
    let mut next: HashMap<ConversationId, Seq> = HashMap::new();
    for (_, message) in pending {
        let conversation = message.conversation_id;
        let seq = match next.get(&conversation) {
            Some(&given) => given + 1,
            None => {
                let base = last.get(&conversation).ok_or_else(|| {
                    StoreError::Internal("mongodb insert: no last seq read".into())
                })?;
                base + 1
            }
        };
        next.insert(conversation, seq);
        message.seq = seq;
    }
    Ok(())
}

/// The first document's error of a failed insert that has per-document
/// errors only (no write concern error: then nothing is known durable).
fn first_write_error(error: &mongodb::error::Error) -> Option<IndexedWriteError> {
    match &*error.kind {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(write_errors),
            write_concern_error: None,
            ..
        }) => write_errors.iter().min_by_key(|error| error.index).cloned(),
        _ => None,
    }
}

/// A write error no retry can fix: the document is refused alone.
/// Duplicate keys on this service's own unique indexes are races (see the
/// module docs); on some other unique index they are not.
fn refused_for_good(code: i32, message: &str) -> bool {
    if is_duplicate_key_code(code) {
        return on_another_unique_index(message);
    }
    is_permanent_write_code(code)
}

/// Whether an E11000 message ("… index: <name> dup key: …") names a unique
/// index other than ours; one that names none is taken for ours.
fn on_another_unique_index(message: &str) -> bool {
    let Some((_, after)) = message.split_once("index: ") else {
        return false;
    };
    let name = after.split_whitespace().next().unwrap_or_default();
    !unique_message_indexes().any(|ours| ours == name)
}

fn outcome_of(outcome: &Option<WriteOutcome>) -> Result<&WriteOutcome, StoreError> {
    outcome
        .as_ref()
        .ok_or_else(|| StoreError::Internal("mongodb: an insert got no outcome".into()))
}

impl StoredKey {
    fn same_client_message(&self, message: &Message) -> bool {
        message.client_id.is_some()
            && self.client_id == message.client_id
            && self.conversation_id == Some(message.conversation_id)
            && self.sender_id == Some(message.sender_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Millis, ObjectId};

    fn message(conversation: ConversationId, sender: UserId, client_id: Option<&str>) -> Message {
        Message {
            id: ObjectId::new(),
            conversation_id: conversation,
            sender_id: sender,
            text: "t".into(),
            created_at: Millis(1),
            seq: 0,
            client_id: client_id.map(str::to_string),
            viewed_by: None,
            viewed_at: None,
        }
    }

    fn stored(message: &Message, seq: Option<Seq>) -> StoredKey {
        StoredKey {
            id: message.id,
            conversation_id: Some(message.conversation_id),
            sender_id: Some(message.sender_id),
            client_id: message.client_id.clone(),
            seq,
        }
    }

    #[test]
    fn duplicates_are_settled_before_any_seq_is_given() {
        let conversation = ObjectId::new();
        let retried = message(conversation, 10, Some("c-0"));
        let resent = message(conversation, 10, Some("c-1"));
        let first = message(conversation, 10, Some("c-1-old"));
        let resend = Message {
            client_id: Some("c-1-old".into()),
            ..message(conversation, 10, None)
        };
        let other_sender = message(conversation, 15, Some("c-1-old"));
        let fresh = message(conversation, 10, Some("c-2"));
        let fresh_again = Message {
            id: ObjectId::new(),
            ..fresh.clone()
        };
        let inserts: Vec<(usize, Message)> = [
            retried.clone(),
            resend,
            other_sender,
            fresh.clone(),
            fresh_again,
            fresh.clone(),
            resent,
        ]
        .into_iter()
        .enumerate()
        .collect();
        let stored_keys = [stored(&retried, Some(4)), stored(&first, Some(2))];

        let plans = plan(&inserts, &stored_keys);

        assert_eq!(
            plans,
            [
                Plan::Settled(WriteOutcome::Inserted { seq: 4 }),
                Plan::Settled(WriteOutcome::Duplicate {
                    existing: first.id,
                    seq: 2
                }),
                Plan::New,
                Plan::New,
                Plan::SameClientAs(3),
                Plan::SameIdAs(3),
                Plan::New,
            ]
        );
    }

    #[test]
    fn a_stored_message_without_a_seq_is_not_acknowledged_with_a_made_up_one() {
        let legacy = message(ObjectId::new(), 10, Some("c-1"));
        let resend = Message {
            id: ObjectId::new(),
            ..legacy.clone()
        };
        let plans = plan(&[(0, resend)], &[stored(&legacy, None)]);
        assert!(matches!(
            &plans[..],
            [Plan::Settled(WriteOutcome::Rejected(_))]
        ));
    }

    #[test]
    fn seqs_follow_each_conversation_s_last_in_batch_order() {
        let (a, b) = (ObjectId::new(), ObjectId::new());
        let mut pending: Vec<(usize, Message)> = [a, b, a, a, b]
            .into_iter()
            .map(|conversation| message(conversation, 10, None))
            .enumerate()
            .collect();
        let last = HashMap::from([(a, 0), (b, 41)]);

        assign_seqs(&mut pending, &last).unwrap();

        let seqs: Vec<Seq> = pending.iter().map(|(_, m)| m.seq).collect();
        assert_eq!(seqs, [1, 42, 2, 3, 43]);
        assert_eq!(last[&a], 0, "only stored messages move the last seq");
        let unknown = message(ObjectId::new(), 10, None);
        assert!(assign_seqs(&mut [(0, unknown)], &last).is_err());
    }

    #[test]
    fn a_duplicate_key_on_our_indexes_is_a_race_and_on_another_a_refusal() {
        let race = [
            "E11000 duplicate key error collection: chat.messages index: _id_ dup key: { _id: 1 }",
            "E11000 duplicate key error collection: chat.messages index: conversation_id_1_seq_1 dup key: { }",
            "E11000 duplicate key error collection: chat.messages index: conversation_id_1_sender_id_1_client_id_1 dup key: { }",
            "E11000 duplicate key error",
        ];
        for message in race {
            assert!(!refused_for_good(11000, message), "{message}");
        }
        assert!(refused_for_good(
            11000,
            "E11000 duplicate key error collection: chat.messages index: text_1 dup key: { }"
        ));
        assert!(refused_for_good(121, "Document failed validation"));
        assert!(!refused_for_good(10107, "not primary"));
    }
}
