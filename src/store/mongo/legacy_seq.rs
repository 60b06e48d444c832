//! Numbering at connect: messages stored without `seq` (by the Go service
//! or a build before it) get theirs, per conversation in (`created_at`,
//! `_id`) order after the conversation's highest seq (CONTRACT §6).
//! Idempotent: a second run finds nothing to number, and a run cut short
//! carries on where it stopped, since a numbered message is never numbered
//! again (each update's filter says so).
//!
//! One aggregation streams the unnumbered messages (`_id`, conversation and
//! time only), sorted by conversation, time and `_id` on the server
//! (`allowDiskUse`, so a large backlog sorts on disk). They are numbered in
//! chunks of [`CHUNK`]: one read of the highest seq of the conversations the
//! chunk starts, and one `update` command with a statement per message. The
//! service holds one chunk at a time, whatever the backlog.
//!
//! Its cost once everything is numbered: the scan of the collection the
//! `$match` needs (a missing field cannot be found through an index).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};

use super::documents::{int, object_id};
use super::errors::{is_duplicate_key_code, is_transient_code, store_error};
use super::last_seq::{numbered, stored_seq};
use super::{MongoStore, MESSAGES};
use crate::model::{ConversationId, Seq};
use crate::store::StoreError;

/// Messages numbered per `update` command.
const CHUNK: usize = 1000;

/// How long the scan's first reply may take: it comes once the server has
/// scanned the collection and sorted what it found, far longer than one
/// ordinary call on a large database. A stalled server still fails the start.
const SCAN_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// A message without a seq, as the scan returns it.
#[derive(Clone, Debug, PartialEq)]
struct Unnumbered {
    /// Whatever type it was stored with; only used to address the message.
    id: Bson,
    conversation_id: ConversationId,
}

/// The scan: every message without a numeric seq, in numbering order. Only
/// messages of an ObjectId conversation: no read of the service can reach
/// the others. The time is the one reads use (`created_at`, else the id's).
fn unnumbered_pipeline() -> Vec<Document> {
    vec![
        doc! { "$match": {
            "seq": { "$not": numbered() },
            "conversation_id": { "$type": "objectId" },
        } },
        doc! { "$project": {
            "conversation_id": 1,
            "at": { "$cond": [
                { "$eq": [{ "$type": "$created_at" }, "date"] },
                "$created_at",
                { "$convert": { "input": "$_id", "to": "date", "onError": null, "onNull": null } },
            ] },
        } },
        doc! { "$sort": { "conversation_id": 1, "at": 1, "_id": 1 } },
    ]
}

impl MongoStore {
    /// Numbers every message stored without a seq; returns how many.
    pub(super) async fn number_legacy_messages(&self) -> Result<u64, StoreError> {
        let started = Instant::now();
        let scan = self
            .messages
            .aggregate(unnumbered_pipeline())
            .allow_disk_use(true)
            .batch_size(CHUNK as u32);
        let mut cursor = match tokio::time::timeout(SCAN_PATIENCE, scan).await {
            Ok(cursor) => cursor.map_err(|error| store_error("find unnumbered messages", error))?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "mongodb: the scan for messages without a seq took over {SCAN_PATIENCE:?}"
                )))
            }
        };
        let mut last: Option<(ConversationId, Seq)> = None;
        let mut chunk: Vec<Unnumbered> = Vec::with_capacity(CHUNK);
        let mut count: u64 = 0;
        loop {
            let more = self
                .bounded("find unnumbered messages", async {
                    cursor
                        .advance()
                        .await
                        .map_err(|error| store_error("find unnumbered messages", error))
                })
                .await?;
            if more {
                let document = cursor
                    .deserialize_current()
                    .map_err(|error| store_error("find unnumbered messages", error))?;
                chunk.push(Unnumbered {
                    id: document.get("_id").cloned().unwrap_or(Bson::Null),
                    conversation_id: object_id(&document, "conversation_id", "message")?,
                });
            }
            if chunk.len() >= CHUNK || (!more && !chunk.is_empty()) {
                count += self.number_chunk(&chunk, &mut last).await?;
                chunk.clear();
            }
            if !more {
                break;
            }
        }
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if count > 0 {
            tracing::info!(
                messages = count,
                elapsed_ms,
                "numbered the stored messages that had no seq"
            );
        } else {
            tracing::debug!(elapsed_ms, "every stored message has a seq");
        }
        Ok(count)
    }

    /// Numbers one chunk; `last` carries the conversation the previous
    /// chunk ended in, which this one may go on with.
    async fn number_chunk(
        &self,
        chunk: &[Unnumbered],
        last: &mut Option<(ConversationId, Seq)>,
    ) -> Result<u64, StoreError> {
        let starting = conversations_started(chunk, *last);
        let highest = self
            .bounded("read highest seqs", self.highest_seqs(&starting))
            .await?;
        let seqs = number(chunk, last, &highest)?;
        let statements: Vec<Document> = seqs
            .into_iter()
            .map(|(id, seq)| {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                doc! {
                    // Only if still unnumbered: never renumber a message.
                    "q": { "_id": id, "seq": { "$not": numbered() } },
                    "u": { "$set": { "seq": Bson::Int64(seq) } },
                    "upsert": false,
                    "multi": false,
                }
            })
            .collect();
        let sent = statements.len();
        let command = doc! {
            "update": MESSAGES,
            "updates": statements,
            "ordered": true,
            "writeConcern": self.write_concern.clone(),
        };
        let reply = self
            .bounded("number messages", async {
                self.database
                    .run_command(command)
                    .await
                    .map_err(|error| store_error("number messages", error))
            })
            .await?;
        check_update_reply(&reply)?;
        let matched = int(&reply, "n")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or_default();
        if matched < sent as u64 {
            // Numbered (or deleted) by someone else meanwhile.
            tracing::warn!(
                sent,
                matched,
                "some messages were numbered or deleted by another process while this one \
                 numbered them; start one node first when upgrading"
            );
        }
        Ok(matched)
    }

    /// The highest seq of each of `conversations` that has one.
    async fn highest_seqs(
        &self,
        conversations: &[ConversationId],
    ) -> Result<HashMap<ConversationId, Seq>, StoreError> {
        if conversations.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<Bson> = conversations
            .iter()
            .map(|id| Bson::ObjectId(super::documents::bson_id(*id)))
            .collect();
        let cursor = self
            .messages
            .aggregate([
                doc! { "$match": { "conversation_id": { "$in": ids }, "seq": numbered() } },
                doc! { "$group": { "_id": "$conversation_id", "seq": { "$max": "$seq" } } },
            ])
            .batch_size(super::as_batch(conversations.len()))
            .await
            .map_err(|error| store_error("read highest seqs", error))?;
        let highest = super::drain(cursor, "read highest seqs", |document| {
            Ok((
                object_id(document, "_id", "conversation")?,
                stored_seq(document)?,
            ))
        })
        .await?;
        Ok(highest.into_iter().collect())
    }
}

/// The conversations `chunk` starts, other than the one `last` goes on
/// with; sorted by conversation, each appears in one run.
fn conversations_started(
    chunk: &[Unnumbered],
    last: Option<(ConversationId, Seq)>,
) -> Vec<ConversationId> {
    let mut previous = last.map(|(conversation, _)| conversation);
    let mut started = Vec::new();
    for message in chunk {
        if previous != Some(message.conversation_id) {
            started.push(message.conversation_id);
            previous = Some(message.conversation_id);
        }
    }
    started
}

/// Each message's seq: after the previous message of its conversation, or
/// after the conversation's highest stored seq (0 when none) for its first.
fn number(
    chunk: &[Unnumbered],
    last: &mut Option<(ConversationId, Seq)>,
    highest: &HashMap<ConversationId, Seq>,
) -> Result<Vec<(Bson, Seq)>, StoreError> {
    let mut seqs = Vec::with_capacity(chunk.len());
    for message in chunk {
        let previous = match *last {
            Some((conversation, seq)) if conversation == message.conversation_id => seq,
            _ => highest.get(&message.conversation_id).copied().unwrap_or(0),
        };
        let seq = previous.checked_add(1).ok_or_else(|| {
            StoreError::Internal("mongodb: a conversation's seq is at its maximum".into())
        })?;
        *last = Some((message.conversation_id, seq));
        seqs.push((message.id.clone(), seq));
    }
    Ok(seqs)
}

/// An `update` reply's failures: a write-concern error or a transient code
/// may pass with a retry (the next start), a duplicate seq means another
/// process numbered the same conversation at once (the next start carries
/// on from what it stored), anything else is final.
fn check_update_reply(reply: &Document) -> Result<(), StoreError> {
    if let Ok(concern) = reply.get_document("writeConcernError") {
        return Err(StoreError::Unavailable(format!(
            "mongodb number messages: write concern: {concern}"
        )));
    }
    let Some(refused) = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|errors| errors.iter().find_map(Bson::as_document))
    else {
        return Ok(());
    };
    let code = int(refused, "code")
        .and_then(|code| i32::try_from(code).ok())
        .unwrap_or_default();
    let message = format!("mongodb number messages: {refused}");
    if is_duplicate_key_code(code) || is_transient_code(code) {
        Err(StoreError::Unavailable(message))
    } else {
        Err(StoreError::Internal(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectId;

    fn unnumbered(conversation: ConversationId, id: i32) -> Unnumbered {
        Unnumbered {
            id: Bson::Int32(id),
            conversation_id: conversation,
        }
    }

    #[test]
    fn each_conversation_goes_on_from_its_highest_seq_across_chunks() {
        let (a, b, c) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let first = [unnumbered(a, 1), unnumbered(a, 2), unnumbered(b, 3)];
        let second = [unnumbered(b, 4), unnumbered(c, 5)];
        let mut last = None;

        assert_eq!(conversations_started(&first, last), [a, b]);
        let highest = HashMap::from([(b, 7)]);
        let seqs = number(&first, &mut last, &highest).unwrap();
        assert_eq!(
            seqs,
            [
                (Bson::Int32(1), 1),
                (Bson::Int32(2), 2),
                (Bson::Int32(3), 8)
            ]
        );

        // `b` goes on from the previous chunk, not from its stored highest.
        assert_eq!(conversations_started(&second, last), [c]);
        let seqs = number(&second, &mut last, &HashMap::new()).unwrap();
        assert_eq!(seqs, [(Bson::Int32(4), 9), (Bson::Int32(5), 1)]);
        assert_eq!(last, Some((c, 1)));
    }

    #[test]
    fn the_scan_sorts_by_conversation_then_the_time_reads_use_then_id() {
        let pipeline = unnumbered_pipeline();
        assert_eq!(
            pipeline[0].get_document("$match").unwrap(),
            &doc! { "seq": { "$not": { "$type": "number" } }, "conversation_id": { "$type": "objectId" } }
        );
        assert_eq!(
            pipeline[2].get_document("$sort").unwrap(),
            &doc! { "conversation_id": 1, "at": 1, "_id": 1 }
        );
    }

    #[test]
    fn a_duplicate_seq_while_numbering_is_retried_at_the_next_start() {
        let duplicate = doc! { "n": 0, "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "E11000" }], "ok": 1.0 };
        assert!(matches!(
            check_update_reply(&duplicate),
            Err(StoreError::Unavailable(_))
        ));
        let invalid =
            doc! { "n": 0, "writeErrors": [{ "index": 0, "code": 2, "errmsg": "bad" }], "ok": 1.0 };
        assert!(matches!(
            check_update_reply(&invalid),
            Err(StoreError::Internal(_))
        ));
        assert!(check_update_reply(&doc! { "n": 3, "ok": 1.0 }).is_ok());
    }
}
