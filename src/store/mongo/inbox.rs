//! The inbox read (CONTRACT §6): a list of conversations with one caller's
//! read state, in one aggregation whatever the list's length.
//!
//! Over the listed conversations' documents, each `$lookup` is one seek or
//! one range on an index, per conversation: the newest message
//! (`{conversation_id: 1, seq: 1}`), both participants' stored cursors
//! (`read_cursors`' `{conversation_id: 1, user_id: 1}`) and newest own
//! messages (`{conversation_id: 1, sender_id: 1, seq: 1}`); then, from the
//! caller's cursor (the larger of what they read and their own newest
//! message, computed in the pipeline), the other participant's messages
//! after it (counted) and, for the mentor, the oldest student message after
//! the mentor's newest. Before MongoDB 5.0 a `$lookup` uses an index for
//! the equalities only, so the last two read the sender's part of the
//! conversation; from 5.0 on the seq range is an index bound too.
//!
//! The whole aggregation reads one snapshot per conversation document only
//! (no transaction): a message stored meanwhile may show in one lookup and
//! not another, and the next read is right.

use std::collections::HashMap;

use mongodb::bson::{doc, Bson, Document};

use super::documents::{message_from, object_id, optional_date};
use super::errors::store_error;
use super::last_seq::numbered;
use super::read_state::first_seq;
use super::{MongoStore, MESSAGES, READ_CURSORS};
use crate::model::{Conversation, ConversationId, Message, Millis, Seq, UserId};
use crate::store::{InboxEntry, StoreError};

/// What the aggregation found for one conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Row {
    last: Option<Message>,
    my_read: Seq,
    my_sent: Seq,
    other_read: Seq,
    other_sent: Seq,
    unread: u64,
    waiting: Option<Millis>,
}

impl MongoStore {
    pub(super) async fn read_inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> Result<Vec<InboxEntry>, StoreError> {
        if conversations.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<ConversationId> = Vec::new();
        for conversation in &conversations {
            if !ids.contains(&conversation.id) {
                ids.push(conversation.id);
            }
        }
        let mentors_any = conversations.iter().any(|c| c.mentor_id == caller);
        let count = ids.len();
        let cursor = self
            .conversations
            .aggregate(inbox_pipeline(caller, &ids, mentors_any))
            .batch_size(super::as_batch(count))
            .await
            .map_err(|error| store_error("read the inbox", error))?;
        let rows: HashMap<ConversationId, Row> = super::drain(cursor, "read the inbox", parse_row)
            .await?
            .into_iter()
            .collect();
        Ok(conversations
            .into_iter()
            .map(|conversation| {
                let row = rows.get(&conversation.id).cloned().unwrap_or_default();
                entry(caller, conversation, row)
            })
            .collect())
    }
}

/// `[<path>][0]`, or 0 when the array is empty.
fn first_or_zero(path: &str) -> Document {
    doc! { "$ifNull": [{ "$arrayElemAt": [path, 0] }, 0] }
}

/// A `$lookup` pipeline's `$match`: the conversation `$$c`, numbered
/// messages, and `more` (`$expr` clauses on the `let` variables).
fn messages_of(more: Vec<Document>) -> Document {
    let mut clauses = vec![Bson::Document(doc! { "$eq": ["$conversation_id", "$$c"] })];
    clauses.extend(more.into_iter().map(Bson::Document));
    doc! { "$match": { "$expr": { "$and": clauses }, "seq": numbered() } }
}

/// The newest message of `$$c` matching `more`, its seq only.
fn newest_seq(more: Vec<Document>) -> Vec<Document> {
    vec![
        messages_of(more),
        doc! { "$sort": { "seq": -1 } },
        doc! { "$limit": 1 },
        doc! { "$project": { "_id": 0, "seq": 1 } },
    ]
}

/// The stored cursor of `$$c` and `user`.
fn cursor_of(user: Bson) -> Vec<Document> {
    vec![
        doc! { "$match": { "$expr": { "$and": [
            { "$eq": ["$conversation_id", "$$c"] },
            { "$eq": ["$user_id", user] },
        ] } } },
        doc! { "$project": { "_id": 0, "last_read_seq": 1 } },
    ]
}

/// The aggregation over `conversations`. `mentors_any`: the caller is the
/// mentor of one of them, so the waiting time is looked up.
/// A sender id no user has.
const NO_SENDER: i64 = i64::MIN;

fn inbox_pipeline(caller: UserId, ids: &[ConversationId], mentors_any: bool) -> Vec<Document> {
    let ids: Vec<Bson> = ids
        .iter()
        .map(|&id| super::documents::bson_id(id).into())
        .collect();
    let me = Bson::Int64(caller);
    let is_mentor = doc! { "$eq": ["$mentor_id", me.clone()] };
    let mut fields = doc! {
        "mentor_id": 1,
        "student_id": 1,
        // The memory store's rule: the student for the mentor, else the mentor.
        "other": { "$cond": [is_mentor.clone(), "$student_id", "$mentor_id"] },
    };
    if mentors_any {
        // Whose messages wait: the student's, and only for the mentor. For
        // a student, a sender no user is (Django ids are positive): still
        // an equality the index serves, where null would not be.
        fields.insert(
            "waiting_on",
            doc! { "$cond": [is_mentor, "$student_id", Bson::Int64(NO_SENDER)] },
        );
    }
    let mut stages = vec![
        doc! { "$match": { "_id": { "$in": ids } } },
        doc! { "$project": fields },
        doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$_id" },
            "pipeline": [
                messages_of(Vec::new()),
                { "$sort": { "seq": -1 } },
                { "$limit": 1 },
            ],
            "as": "last",
        } },
        doc! { "$lookup": {
            "from": READ_CURSORS,
            "let": { "c": "$_id" },
            "pipeline": cursor_of(me.clone()),
            "as": "my_read",
        } },
        doc! { "$lookup": {
            "from": READ_CURSORS,
            "let": { "c": "$_id", "u": "$other" },
            "pipeline": cursor_of(Bson::String("$$u".into())),
            "as": "other_read",
        } },
        doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$_id" },
            "pipeline": newest_seq(vec![doc! { "$eq": ["$sender_id", me] }]),
            "as": "my_sent",
        } },
        doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$_id", "u": "$other" },
            "pipeline": newest_seq(vec![doc! { "$eq": ["$sender_id", "$$u"] }]),
            "as": "other_sent",
        } },
        doc! { "$addFields": {
            "sent_seq": first_or_zero("$my_sent.seq"),
            "cursor": { "$max": [
                first_or_zero("$my_sent.seq"),
                first_or_zero("$my_read.last_read_seq"),
            ] },
        } },
        doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$_id", "u": "$other", "after": "$cursor" },
            "pipeline": [
                messages_of(vec![
                    doc! { "$eq": ["$sender_id", "$$u"] },
                    doc! { "$gt": ["$seq", "$$after"] },
                ]),
                { "$count": "n" },
            ],
            "as": "unread",
        } },
    ];
    if mentors_any {
        stages.push(doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$_id", "u": "$waiting_on", "after": "$sent_seq" },
            "pipeline": [
                messages_of(vec![
                    doc! { "$eq": ["$sender_id", "$$u"] },
                    doc! { "$gt": ["$seq", "$$after"] },
                ]),
                { "$sort": { "seq": 1 } },
                { "$limit": 1 },
                { "$project": { "_id": 1, "created_at": 1 } },
            ],
            "as": "waiting",
        } });
    }
    stages
}

fn first<'a>(row: &'a Document, field: &str) -> Option<&'a Document> {
    row.get_array(field)
        .ok()
        .and_then(|found| found.first())
        .and_then(Bson::as_document)
}

fn parse_row(row: &Document) -> Result<(ConversationId, Row), StoreError> {
    let id = object_id(row, "_id", "conversation")?;
    let last = first(row, "last").map(message_from).transpose()?;
    let waiting = match first(row, "waiting") {
        Some(message) => Some(match optional_date(message, "created_at") {
            Some(at) => at,
            // As `/messages` shows a message stored without a time.
            None => object_id(message, "_id", "message")?.timestamp(),
        }),
        None => None,
    };
    let unread = first(row, "unread")
        .and_then(|counted| super::documents::int(counted, "n"))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    Ok((
        id,
        Row {
            last,
            my_read: first_seq(row, "my_read", "last_read_seq"),
            my_sent: first_seq(row, "my_sent", "seq"),
            other_read: first_seq(row, "other_read", "last_read_seq"),
            other_sent: first_seq(row, "other_sent", "seq"),
            unread,
            waiting,
        },
    ))
}

/// The entry of `conversation`; a conversation the aggregation did not
/// find (no document) has nothing stored.
fn entry(caller: UserId, conversation: Conversation, row: Row) -> InboxEntry {
    let waiting_since = row.waiting.filter(|_| caller == conversation.mentor_id);
    InboxEntry {
        conversation: Conversation {
            last_seq: row.last.as_ref().map_or(0, |message| message.seq),
            ..conversation
        },
        last_message: row.last,
        unread_count: row.unread,
        last_read_seq: row.my_read.max(row.my_sent),
        other_last_read_seq: row.other_read.max(row.other_sent),
        waiting_since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectId;
    use mongodb::bson::{self, oid};

    fn conversation() -> Conversation {
        Conversation {
            id: ObjectId::new(),
            lesson_id: 7,
            mentor_id: 10,
            student_id: 25,
            created_at: Millis(1_000),
            last_seq: 0,
        }
    }

    #[test]
    fn a_row_is_read_into_the_caller_s_entry() {
        let listed = conversation();
        let (last_id, waiting_id) = (oid::ObjectId::new(), oid::ObjectId::new());
        let row = doc! {
            "_id": bson::oid::ObjectId::from_bytes(listed.id.bytes()),
            "last": [{ "_id": last_id, "conversation_id": bson::oid::ObjectId::from_bytes(listed.id.bytes()),
                       "sender_id": 25_i64, "text": "newest", "created_at": bson::DateTime::from_millis(9_000),
                       "seq": 6_i64 }],
            "my_read": [{ "last_read_seq": 2_i64 }],
            "my_sent": [{ "seq": 3_i64 }],
            "other_read": [],
            "other_sent": [{ "seq": Bson::Int32(6) }],
            "unread": [{ "n": 2 }],
            // Stored without a time: the id's.
            "waiting": [{ "_id": waiting_id }],
        };

        let (id, parsed) = parse_row(&row).unwrap();
        assert_eq!(id, listed.id);
        let as_mentor = entry(10, listed.clone(), parsed.clone());

        assert_eq!(as_mentor.conversation.last_seq, 6);
        assert_eq!(
            as_mentor.last_message.as_ref().map(|m| m.text.as_str()),
            Some("newest")
        );
        assert_eq!(as_mentor.last_read_seq, 3, "their own newest message");
        assert_eq!(as_mentor.other_last_read_seq, 6);
        assert_eq!(as_mentor.unread_count, 2);
        assert_eq!(
            as_mentor.waiting_since,
            Some(ObjectId::from_bytes(waiting_id.bytes()).timestamp())
        );
        let as_student = entry(25, listed, parsed);
        assert_eq!(as_student.waiting_since, None, "only for the mentor");
    }

    #[test]
    fn a_conversation_without_a_row_has_nothing_stored() {
        let listed = Conversation {
            last_seq: 4,
            ..conversation()
        };
        let found = entry(10, listed.clone(), Row::default());
        assert_eq!(
            found,
            InboxEntry {
                conversation: Conversation {
                    last_seq: 0,
                    ..listed
                },
                last_message: None,
                unread_count: 0,
                last_read_seq: 0,
                other_last_read_seq: 0,
                waiting_since: None,
            }
        );
    }

    #[test]
    fn the_waiting_lookup_is_left_out_when_the_caller_mentors_none() {
        let ids = [ObjectId::new()];
        let as_student = inbox_pipeline(25, &ids, false);
        let as_mentor = inbox_pipeline(10, &ids, true);
        assert_eq!(as_mentor.len(), as_student.len() + 1);
        assert!(!format!("{as_student:?}").contains("waiting"));
    }
}
