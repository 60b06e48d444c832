//! The indexes of CONTRACT §5, created at start.
//!
//! `createIndexes` is idempotent for an identical spec, so a database the Go
//! service created is accepted as it is — which is why the seed's index keeps
//! its default name (the same keys under another name would be refused).
//! Each index is created on its own, so one that cannot be built on existing
//! data (duplicates, a conflicting older index) does not stop the others.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use super::errors::store_error;
use crate::store::StoreError;

pub(crate) const CONVERSATIONS: &str = "conversations";
pub(crate) const MESSAGES: &str = "messages";
/// Read cursors (CONTRACT §6): `{conversation_id: ObjectId, user_id: int64,
/// last_read_seq: int64}`, one per participant who has read; see
/// `read_state` for why a collection of its own.
pub(crate) const READ_CURSORS: &str = "read_cursors";

/// One index this service relies on.
pub(crate) struct IndexSpec {
    pub(crate) collection: &'static str,
    pub(crate) name: &'static str,
    pub(crate) keys: Document,
    pub(crate) unique: bool,
    pub(crate) partial_filter: Option<Document>,
    /// What breaks while it is missing, for the log line.
    pub(crate) purpose: &'static str,
}

pub(crate) fn index_specs() -> Vec<IndexSpec> {
    vec![
        IndexSpec {
            collection: CONVERSATIONS,
            name: "lesson_id_1_mentor_id_1_student_id_1",
            keys: doc! { "lesson_id": 1, "mentor_id": 1, "student_id": 1 },
            unique: true,
            partial_filter: None,
            purpose: "one conversation per (lesson, mentor, student); without it, two first \
                      connections at once may create two conversations",
        },
        IndexSpec {
            collection: MESSAGES,
            name: "conversation_id_1__id_1",
            keys: doc! { "conversation_id": 1, "_id": 1 },
            unique: false,
            partial_filter: None,
            purpose: "history pages; without it, every history read scans the collection",
        },
        IndexSpec {
            collection: MESSAGES,
            name: "conversation_id_1_sender_id_1_client_id_1",
            keys: doc! { "conversation_id": 1, "sender_id": 1, "client_id": 1 },
            unique: true,
            partial_filter: Some(doc! { "client_id": { "$type": "string" } }),
            purpose: "idempotent resends by client_id; without it, a resend after a \
                      reconnect may be stored twice",
        },
        // A message's place in its conversation (CONTRACT §6): no two alike,
        // and the last one found without reading the conversation. Partial,
        // so legacy messages without a seq (numbered right after this, see
        // `legacy_seq`) do not collide as nulls. Its default name, so the
        // same spec created by hand is accepted as it is.
        IndexSpec {
            collection: MESSAGES,
            name: "conversation_id_1_seq_1",
            keys: doc! { "conversation_id": 1, "seq": 1 },
            unique: true,
            partial_filter: Some(doc! { "seq": { "$type": "number" } }),
            purpose: "message seqs; without it, two messages may get one seq and every \
                      conversation read and first write scans the conversation",
        },
        // A participant's newest message (it moves their read cursor) and
        // the other's messages after a cursor (unread counts, the mentor's
        // wait): a seek or a range per conversation and sender. Not
        // partial: not unique, so unnumbered messages collide with nothing,
        // and any query on these keys may use it.
        IndexSpec {
            collection: MESSAGES,
            name: "conversation_id_1_sender_id_1_seq_1",
            keys: doc! { "conversation_id": 1, "sender_id": 1, "seq": 1 },
            unique: false,
            partial_filter: None,
            purpose: "read cursors and the inbox; without it, each read, unread count and \
                      waiting time walks the conversation",
        },
        IndexSpec {
            collection: READ_CURSORS,
            name: "conversation_id_1_user_id_1",
            keys: doc! { "conversation_id": 1, "user_id": 1 },
            unique: true,
            partial_filter: None,
            purpose: "one read cursor per participant; without it, every cursor read scans \
                      the collection",
        },
    ]
}

/// The names of the unique indexes on messages this service relies on,
/// `_id_` included: a duplicate key on one of them is a known conflict.
pub(crate) fn unique_message_indexes() -> impl Iterator<Item = &'static str> {
    index_specs()
        .into_iter()
        .filter(|spec| spec.collection == MESSAGES && spec.unique)
        .map(|spec| spec.name)
        .chain(["_id_"])
}

/// Creates every index. A failure the database reports about the data or
/// an existing index is logged loudly and skipped; an unreachable database is
/// an error, since nothing else would work either. A build still running
/// after `patience` (a large existing collection) goes on on the server and
/// the service starts meanwhile.
pub(crate) async fn ensure_indexes(
    database: &Database,
    patience: Duration,
) -> Result<(), StoreError> {
    for spec in index_specs() {
        let options = IndexOptions::builder()
            .name(spec.name.to_string())
            .unique(spec.unique.then_some(true))
            .partial_filter_expression(spec.partial_filter.clone())
            .build();
        let model = IndexModel::builder()
            .keys(spec.keys.clone())
            .options(options)
            .build();
        let collection = database.collection::<Document>(spec.collection);
        let Ok(created) = tokio::time::timeout(patience, collection.create_index(model)).await
        else {
            tracing::warn!(
                collection = spec.collection,
                index = spec.name,
                "MongoDB index build takes longer than {patience:?}; it continues on the \
                 server and the service starts meanwhile ({})",
                spec.purpose
            );
            continue;
        };
        if let Err(error) = created {
            match store_error("createIndexes", error) {
                StoreError::Unavailable(reason) => return Err(StoreError::Unavailable(reason)),
                StoreError::Internal(reason) => tracing::error!(
                    collection = spec.collection,
                    index = spec.name,
                    error = %reason,
                    "MONGODB INDEX NOT CREATED; the service starts without it: {}. \
                     Fix the data or the conflicting index, then restart.",
                    spec.purpose
                ),
            }
        }
    }
    Ok(())
}
