//! One writer batch in as few round trips as its order allows.
//!
//! All inserts go in one ordered `insert_many` after one `find` for
//! duplicates (see `inserts`, which gives the seqs), then all views in one
//! `update` command with a statement each (works on every server version;
//! `bulkWrite` needs 8.0), then all read cursor moves (see `read_state`).
//! Running inserts first keeps the trait's order — a view after its insert
//! sees it — and a view that names a message inserted *later* in the batch
//! runs before the inserts, as in-order application would have it. The
//! reads run last and answer as if in batch order (`read_state` says how).

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};

use super::documents::{bson_date, bson_id, int, object_id, optional_date};
use super::errors::{is_permanent_write_code, store_error};
use super::read_state::{BatchInsert, PendingRead};
use super::{MongoStore, MESSAGES};
use crate::model::{ConversationId, Message, MessageId, Millis, UserId, ViewEffect};
use crate::store::{StoreError, WriteOp, WriteOutcome};

/// A `WriteOp::View`'s fields, with the op's position in the batch.
struct View {
    position: usize,
    conversation_id: ConversationId,
    message_id: MessageId,
    viewer_id: UserId,
    at: Millis,
}

impl MongoStore {
    pub(super) async fn apply_batch(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut last_insert_of: HashMap<MessageId, usize> = HashMap::new();
        let mut written: Vec<ConversationId> = Vec::new();
        for (position, op) in ops.iter().enumerate() {
            if let WriteOp::Insert(message) = op {
                last_insert_of.insert(message.id, position);
                if !written.contains(&message.conversation_id) {
                    written.push(message.conversation_id);
                }
            }
        }
        // Whatever ends this batch early (an error, or the store call's
        // deadline dropping this future) may leave the cached last seqs of
        // its conversations behind the database: the retry re-reads them.
        let cached = self.seqs.forget_unless_kept(written);
        let mut inserts: Vec<(usize, Message)> = Vec::new();
        let mut views_before_inserts = Vec::new();
        let mut views_after_inserts = Vec::new();
        let mut reads: Vec<PendingRead> = Vec::new();
        let count = ops.len();
        for (position, op) in ops.into_iter().enumerate() {
            match op {
                WriteOp::Read {
                    conversation_id,
                    user_id,
                    up_to,
                } => reads.push(PendingRead {
                    position,
                    conversation_id,
                    user_id,
                    up_to,
                }),
                WriteOp::Insert(message) => inserts.push((position, message)),
                WriteOp::View {
                    conversation_id,
                    message_id,
                    viewer_id,
                    at,
                } => {
                    let view = View {
                        position,
                        conversation_id,
                        message_id,
                        viewer_id,
                        at,
                    };
                    let inserted_later = last_insert_of
                        .get(&message_id)
                        .is_some_and(|&insert| insert > position);
                    if inserted_later {
                        views_before_inserts.push(view);
                    } else {
                        views_after_inserts.push(view);
                    }
                }
            }
        }

        // What the reads need of the inserts, which `insert_messages` takes.
        let batch_inserts: Vec<BatchInsert> = if reads.is_empty() {
            Vec::new()
        } else {
            inserts
                .iter()
                .map(|(position, message)| BatchInsert {
                    position: *position,
                    id: message.id,
                    conversation_id: message.conversation_id,
                    sender_id: message.sender_id,
                })
                .collect()
        };

        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; count];
        self.apply_views(&views_before_inserts, &mut outcomes)
            .await?;
        self.insert_messages(inserts, &mut outcomes).await?;
        // The inserts are stored now: a failure for good of what follows
        // rejects those ops only, so the messages are still acknowledged
        // and relayed (a retryable one retries the batch, which finds them).
        let views_done = self.apply_views(&views_after_inserts, &mut outcomes).await;
        let positions = views_after_inserts.iter().map(|view| view.position);
        reject_on_internal(views_done, positions, &mut outcomes)?;
        let reads_done = self
            .apply_reads(&reads, &batch_inserts, &mut outcomes)
            .await;
        let positions = reads.iter().map(|read| read.position);
        reject_on_internal(reads_done, positions, &mut outcomes)?;
        cached.keep();
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| StoreError::Internal("mongodb: an op got no outcome".into()))
            })
            .collect()
    }

    /// Sets `viewed_by`/`viewed_at` on each target, one `update` statement
    /// per view, in one round trip (more only if a statement is refused).
    /// When fewer matched than were sent (a missing target or a repeat), one
    /// `find` tells which.
    async fn apply_views(
        &self,
        views: &[View],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        let mut pending: &[View] = views;
        let mut applied: Vec<&View> = Vec::new();
        let mut matched: i64 = 0;
        while !pending.is_empty() {
            let reply = self.update_views(pending).await?;
            if let Ok(concern) = reply.get_document("writeConcernError") {
                return Err(StoreError::Unavailable(format!(
                    "mongodb update views: write concern: {concern}"
                )));
            }
            matched += int(&reply, "n").unwrap_or_default();
            // Ordered: the first refused statement stopped the ones after it.
            let refused = reply
                .get_array("writeErrors")
                .ok()
                .and_then(|errors| errors.iter().find_map(Bson::as_document));
            let Some(refused) = refused else {
                applied.extend(pending);
                break;
            };
            let code = int(refused, "code").unwrap_or_default();
            let index = int(refused, "index")
                .and_then(|index| usize::try_from(index).ok())
                .filter(|&index| index < pending.len());
            let (Some(index), true) = (index, is_permanent_write_code(code as i32)) else {
                return Err(StoreError::Unavailable(format!(
                    "mongodb update views: {refused}"
                )));
            };
            applied.extend(&pending[..index]);
            let message = refused.get_str("errmsg").unwrap_or("refused").to_string();
            outcomes[pending[index].position] = Some(WriteOutcome::Rejected(message));
            pending = &pending[index + 1..];
        }
        if usize::try_from(matched).is_ok_and(|matched| matched == applied.len()) {
            for view in applied {
                outcomes[view.position] = Some(WriteOutcome::Viewed);
            }
            return Ok(());
        }
        self.resolve_view_targets(&applied, outcomes).await
    }

    async fn update_views(&self, views: &[View]) -> Result<Document, StoreError> {
        let statements: Vec<Document> = views
            .iter()
            .map(|view| {
                // `ViewEffect::of` in BSON; the `viewed_at` clause lets a
                // retried batch match the view its first try stored.
                doc! {
                    "q": {
                        "_id": bson_id(view.message_id),
                        "conversation_id": bson_id(view.conversation_id),
                        "sender_id": { "$ne": Bson::Int64(view.viewer_id) },
                        "$or": [
                            { "viewed_by": { "$ne": Bson::Int64(view.viewer_id) } },
                            { "viewed_at": bson_date(view.at) },
                        ],
                    },
                    "u": { "$set": {
                        "viewed_by": Bson::Int64(view.viewer_id),
                        "viewed_at": bson_date(view.at),
                    } },
                    "upsert": false,
                    "multi": false,
                }
            })
            .collect();
        let command = doc! {
            "update": MESSAGES,
            "updates": statements,
            // In order, so two views of one message leave the later one.
            "ordered": true,
            "writeConcern": self.write_concern.clone(),
        };
        self.database
            .run_command(command)
            .await
            .map_err(|error| store_error("update views", error))
    }

    /// Some view matched nothing: find out which targets exist, qualify and
    /// were viewed already (the `update` reply only counts matches). Read
    /// after the update, a target shows this batch's views: its first view
    /// of a message has that view's time, a later repeat another.
    async fn resolve_view_targets(
        &self,
        views: &[&View],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        if views.is_empty() {
            return Ok(());
        }
        let ids: Vec<Bson> = views
            .iter()
            .map(|view| Bson::ObjectId(bson_id(view.message_id)))
            .collect();
        let limit = ids.len();
        let cursor = self
            .messages
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! {
                "_id": 1, "conversation_id": 1, "sender_id": 1, "viewed_by": 1, "viewed_at": 1,
            })
            .limit(super::as_limit(limit))
            .batch_size(super::as_batch(limit))
            .await
            .map_err(|error| store_error("read back view targets", error))?;
        let targets = super::drain(cursor, "read back view targets", |document| {
            Ok(ViewTarget {
                id: object_id(document, "_id", "message")?,
                conversation_id: object_id(document, "conversation_id", "message").ok(),
                sender_id: int(document, "sender_id"),
                viewed_by: int(document, "viewed_by"),
                viewed_at: optional_date(document, "viewed_at"),
            })
        })
        .await?;
        for view in views {
            let target = targets.iter().find(|target| {
                target.id == view.message_id && target.conversation_id == Some(view.conversation_id)
            });
            let outcome = match target {
                // No sender_id is nobody (user ids are positive), as the
                // update's `$ne` has it.
                Some(target) => ViewEffect::of(
                    target.sender_id.unwrap_or_default(),
                    target.viewed_by,
                    target.viewed_at,
                    view.viewer_id,
                    view.at,
                )
                .into(),
                None => WriteOutcome::ViewTargetMissing,
            };
            outcomes[view.position] = Some(outcome);
        }
        Ok(())
    }
}

/// What decides a view's outcome, as read back after its update.
struct ViewTarget {
    id: MessageId,
    conversation_id: Option<ConversationId>,
    sender_id: Option<UserId>,
    viewed_by: Option<UserId>,
    viewed_at: Option<Millis>,
}

/// `Internal` (refused for good) becomes each op's `Rejected`; anything
/// else is the batch's result.
fn reject_on_internal(
    done: Result<(), StoreError>,
    positions: impl Iterator<Item = usize>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<(), StoreError> {
    match done {
        Err(StoreError::Internal(message)) => {
            tracing::error!(%message, "mongodb refused views or read cursors; the batch's messages stand");
            for position in positions {
                if let Some(outcome) = outcomes.get_mut(position) {
                    *outcome = Some(WriteOutcome::Rejected(message.clone()));
                }
            }
            Ok(())
        }
        other => other,
    }
}
