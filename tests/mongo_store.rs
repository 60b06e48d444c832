//! MongoStore against a real mongod, when `MONGO_URI` names one
//! (e.g. `docker run -d -p 27017:27017 mongo:7` and
//! `MONGO_URI=mongodb://127.0.0.1:27017/?directConnection=true`).
//! Each test uses its own database and drops it afterwards.
//!
//! The read state and inbox scenarios (CONTRACT §6, as `tests/read_state.rs`
//! checks them end to end) run on the reference `MemoryStore` first, so their
//! expectations are the reference's, then on MongoDB.

use std::sync::Arc;
use std::time::Duration;

use chat_service::config::Config;
use chat_service::model::{Conversation, ConversationKey, Message, Millis, ObjectId};
use chat_service::store::memory::MemoryStore;
use chat_service::store::mongo::{MongoSettings, MongoStore};
use chat_service::store::{
    ConversationFilter, HistoryQuery, InboxEntry, ReadUpTo, Store, WriteOp, WriteOutcome,
};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

/// The server's URI, or `None` (after saying so loudly) to skip.
fn mongo_uri(test: &str) -> Option<String> {
    match std::env::var("MONGO_URI") {
        Ok(uri) if !uri.trim().is_empty() => Some(uri),
        _ => {
            eprintln!("SKIPPED {test}: MONGO_URI is not set (no MongoDB to test against)");
            None
        }
    }
}

/// Settings for a database no other test uses.
fn scratch_settings(uri: &str) -> MongoSettings {
    MongoSettings {
        uri: uri.into(),
        database: format!("chat_test_{}", ObjectId::new()),
        timeout: Duration::from_secs(10),
        ..MongoSettings::from(&Config::defaults())
    }
}

fn oid(id: ObjectId) -> bson::oid::ObjectId {
    bson::oid::ObjectId::from_bytes(id.bytes())
}

fn message(
    conversation_id: ObjectId,
    sender_id: i64,
    text: &str,
    client_id: Option<&str>,
) -> Message {
    Message {
        id: ObjectId::new(),
        conversation_id,
        sender_id,
        text: text.into(),
        created_at: Millis(1_735_725_600_000),
        seq: 0,
        client_id: client_id.map(str::to_string),
        viewed_by: None,
        viewed_at: None,
    }
}

#[tokio::test]
async fn a_database_the_go_service_wrote_is_read_as_it_is() {
    let Some(uri) = mongo_uri("a_database_the_go_service_wrote_is_read_as_it_is") else {
        return;
    };
    let settings = scratch_settings(&uri);
    // What the Go service left behind: its index and its documents, raw.
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let database = client.database(&settings.database);
    let conversations = database.collection::<Document>("conversations");
    let messages = database.collection::<Document>("messages");
    conversations
        .create_index(
            IndexModel::builder()
                .keys(doc! { "lesson_id": 1, "mentor_id": 1, "student_id": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap();
    let conversation_id = bson::oid::ObjectId::new();
    conversations
        .insert_one(doc! {
            "_id": conversation_id, "lesson_id": 7_i64, "mentor_id": 10_i64, "student_id": 25_i64,
            "created_at": bson::DateTime::from_millis(1_700_000_000_000),
        })
        .await
        .unwrap();
    let seed_ids: Vec<bson::oid::ObjectId> = (0..3).map(|_| bson::oid::ObjectId::new()).collect();
    messages
        .insert_many([
            doc! { "_id": seed_ids[0], "conversation_id": conversation_id, "sender_id": 10_i64,
                   "text": "hello", "created_at": bson::DateTime::from_millis(1_700_000_001_000) },
            doc! { "_id": seed_ids[1], "conversation_id": conversation_id, "sender_id": 25_i64,
                   "text": "hi", "created_at": bson::DateTime::from_millis(1_700_000_002_000), "viewed_by": 10_i64 },
            doc! { "_id": seed_ids[2], "conversation_id": conversation_id, "sender_id": Bson::Int32(10),
                   "text": "int32 from another tool", "created_at": bson::DateTime::from_millis(1_700_000_003_000) },
        ])
        .await
        .unwrap();

    let store = MongoStore::connect(&settings).await.unwrap();

    let key = ConversationKey {
        lesson_id: 7,
        mentor_id: 10,
        student_id: 25,
    };
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    assert_eq!(conversation.id.bytes(), conversation_id.bytes());
    assert_eq!(conversation.created_at, Millis(1_700_000_000_000));
    let listed = store
        .conversations(ConversationFilter {
            participant: Some(25),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], conversation);
    let history = store
        .messages(HistoryQuery {
            conversation_id: conversation.id,
            before: None,
            after: None,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .messages;
    let ids: Vec<[u8; 12]> = history.iter().map(|m| m.id.bytes()).collect();
    assert_eq!(
        ids,
        seed_ids.iter().map(|id| id.bytes()).collect::<Vec<_>>()
    );
    // Numbered at connect, in time order.
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(conversation.last_seq, 3);
    assert_eq!(history[1].viewed_by, Some(10));
    assert_eq!(history[2].sender_id, 10);
    let newest_two = store
        .messages(HistoryQuery {
            conversation_id: conversation.id,
            before: None,
            after: None,
            limit: 2,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .messages;
    assert_eq!(newest_two, history[1..]);

    let indexes = messages.list_index_names().await.unwrap();
    assert!(
        indexes.contains(&"conversation_id_1__id_1".to_string()),
        "{indexes:?}"
    );
    assert!(
        indexes.contains(&"conversation_id_1_sender_id_1_client_id_1".to_string()),
        "{indexes:?}"
    );
    assert!(
        indexes.contains(&"conversation_id_1_seq_1".to_string()),
        "{indexes:?}"
    );
    database.drop().await.unwrap();
}

#[tokio::test]
async fn fifty_concurrent_first_connections_get_one_conversation() {
    let Some(uri) = mongo_uri("fifty_concurrent_first_connections_get_one_conversation") else {
        return;
    };
    let store = Arc::new(MongoStore::connect(&scratch_settings(&uri)).await.unwrap());
    let key = ConversationKey {
        lesson_id: 1,
        mentor_id: 2,
        student_id: 3,
    };

    let calls: Vec<_> = (0..50)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.conversation_for(key, Millis(i)).await })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().unwrap().id);
    }

    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let stored = store.database().collection::<Document>("conversations");
    assert_eq!(stored.count_documents(doc! {}).await.unwrap(), 1);
    let raw = stored.find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(raw.get("lesson_id"), Some(&Bson::Int64(1)));
    assert!(matches!(raw.get("created_at"), Some(Bson::DateTime(_))));
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn resends_are_deduplicated_and_retried_batches_are_idempotent() {
    let Some(uri) = mongo_uri("resends_are_deduplicated_and_retried_batches_are_idempotent") else {
        return;
    };
    let store = MongoStore::connect(&scratch_settings(&uri)).await.unwrap();
    let conversation = store
        .conversation_for(
            ConversationKey {
                lesson_id: 1,
                mentor_id: 10,
                student_id: 25,
            },
            Millis(0),
        )
        .await
        .unwrap();
    let first = message(conversation.id, 25, "hello", Some("c-1"));
    let resend = message(conversation.id, 25, "hello again", Some("c-1"));
    let other_sender = message(
        conversation.id,
        10,
        "same client id, other sender",
        Some("c-1"),
    );
    let batch = vec![
        WriteOp::Insert(first.clone()),
        WriteOp::Insert(resend.clone()),
        WriteOp::Insert(other_sender.clone()),
        WriteOp::View {
            conversation_id: conversation.id,
            message_id: first.id,
            viewer_id: 10,
            at: Millis(5),
        },
        WriteOp::View {
            conversation_id: conversation.id,
            message_id: first.id,
            viewer_id: 25,
            at: Millis(6),
        },
    ];

    let outcomes = store.write_batch(batch.clone()).await.unwrap();
    let retried = store.write_batch(batch).await.unwrap();

    let expected = [
        WriteOutcome::Inserted { seq: 1 },
        WriteOutcome::Duplicate {
            existing: first.id,
            seq: 1,
        },
        WriteOutcome::Inserted { seq: 2 },
        WriteOutcome::Viewed,
        WriteOutcome::ViewTargetMissing,
    ];
    assert_eq!(outcomes, expected);
    assert_eq!(retried, expected);
    let history = store
        .messages(HistoryQuery {
            conversation_id: conversation.id,
            before: None,
            after: None,
            limit: 10,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .messages;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].viewed_by, Some(10));
    assert_eq!(history[0].viewed_at, Some(Millis(5)));
    let raw = store
        .database()
        .collection::<Document>("messages")
        .find_one(doc! { "_id": oid(first.id) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.get("sender_id"), Some(&Bson::Int64(25)));
    assert_eq!(raw.get("viewed_by"), Some(&Bson::Int64(10)));
    assert_eq!(
        raw.get("conversation_id"),
        Some(&Bson::ObjectId(oid(conversation.id)))
    );
    store.database().drop().await.unwrap();
}

fn history_query(conversation_id: ObjectId) -> HistoryQuery {
    HistoryQuery {
        conversation_id,
        before: None,
        after: None,
        limit: 1000,
        max_bytes: usize::MAX,
    }
}

#[tokio::test]
async fn seqs_are_gap_free_across_batches_duplicates_and_restarts() {
    let Some(uri) = mongo_uri("seqs_are_gap_free_across_batches_duplicates_and_restarts") else {
        return;
    };
    let settings = scratch_settings(&uri);
    let store = MongoStore::connect(&settings).await.unwrap();
    let key = |lesson_id| ConversationKey {
        lesson_id,
        mentor_id: 10,
        student_id: 25,
    };
    let a = store.conversation_for(key(1), Millis(0)).await.unwrap();
    let b = store.conversation_for(key(2), Millis(0)).await.unwrap();
    assert_eq!((a.last_seq, b.last_seq), (0, 0));

    let first = message(a.id, 25, "a1", Some("c-1"));
    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(first.clone()),
            WriteOp::Insert(message(b.id, 10, "b1", None)),
            WriteOp::Insert(message(a.id, 25, "resend", Some("c-1"))),
            WriteOp::Insert(message(a.id, 10, "a2", None)),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Duplicate {
                existing: first.id,
                seq: 1
            },
            WriteOutcome::Inserted { seq: 2 },
        ]
    );
    // A resend in a later batch keeps the first seq and uses none.
    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(message(a.id, 25, "resend", Some("c-1"))),
            WriteOp::Insert(message(a.id, 25, "a3", Some("c-2"))),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Duplicate {
                existing: first.id,
                seq: 1
            },
            WriteOutcome::Inserted { seq: 3 },
        ]
    );
    drop(store);

    // A restart: the last seqs are read from the database.
    let store = MongoStore::connect(&settings).await.unwrap();
    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(message(b.id, 25, "b2", None)),
            WriteOp::Insert(message(a.id, 10, "a4", None)),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 2 },
            WriteOutcome::Inserted { seq: 4 }
        ]
    );

    for (conversation, count) in [(a.id, 4), (b.id, 2)] {
        let history = store
            .messages(history_query(conversation))
            .await
            .unwrap()
            .messages;
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<u64>>());
        for message in &history {
            assert_eq!(
                store
                    .message_at_seq(conversation, message.seq)
                    .await
                    .unwrap(),
                Some(message.id)
            );
        }
        assert_eq!(
            store.message_at_seq(conversation, count + 1).await.unwrap(),
            None
        );
        let read = store.conversation(conversation).await.unwrap().unwrap();
        assert_eq!(read.last_seq, count);
    }
    let listed = store
        .conversations(ConversationFilter {
            mentor_id: Some(10),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let last_seqs: Vec<u64> = listed.iter().map(|c| c.last_seq).collect();
    assert_eq!(last_seqs, [4, 2]);
    assert_eq!(
        store
            .conversation_for(key(1), Millis(0))
            .await
            .unwrap()
            .last_seq,
        4
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn legacy_messages_are_numbered_by_time_then_id_once() {
    let Some(uri) = mongo_uri("legacy_messages_are_numbered_by_time_then_id_once") else {
        return;
    };
    let settings = scratch_settings(&uri);
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let messages = client
        .database(&settings.database)
        .collection::<Document>("messages");
    let (legacy, partly) = (bson::oid::ObjectId::new(), bson::oid::ObjectId::new());
    let at = bson::DateTime::from_millis;
    let ids: Vec<bson::oid::ObjectId> = (0..6).map(|_| bson::oid::ObjectId::new()).collect();
    messages
        .insert_many([
            // Ids out of time order, and a time tie (broken by id).
            doc! { "_id": ids[2], "conversation_id": legacy, "sender_id": 10_i64, "text": "3rd", "created_at": at(300) },
            doc! { "_id": ids[1], "conversation_id": legacy, "sender_id": 10_i64, "text": "2nd", "created_at": at(100) },
            doc! { "_id": ids[0], "conversation_id": legacy, "sender_id": 10_i64, "text": "1st", "created_at": at(100) },
            // Numbered up to 2 by this service, then a legacy write.
            doc! { "_id": ids[3], "conversation_id": partly, "sender_id": 10_i64, "text": "a", "created_at": at(10), "seq": 1_i64 },
            doc! { "_id": ids[4], "conversation_id": partly, "sender_id": 10_i64, "text": "b", "created_at": at(20), "seq": 2_i64 },
            doc! { "_id": ids[5], "conversation_id": partly, "sender_id": 10_i64, "text": "old", "created_at": at(5), "seq": Bson::Null },
        ])
        .await
        .unwrap();
    let seqs = || async {
        let mut found = Vec::new();
        for id in &ids {
            let document = messages
                .find_one(doc! { "_id": id })
                .await
                .unwrap()
                .unwrap();
            found.push(document.get("seq").cloned());
        }
        found
    };
    let expected: Vec<Option<Bson>> = [1, 2, 3, 1, 2, 3]
        .into_iter()
        .map(|seq: i64| Some(Bson::Int64(seq)))
        .collect();

    let store = MongoStore::connect(&settings).await.unwrap();
    assert_eq!(seqs().await, expected);
    drop(store);
    // Idempotent: a second start changes nothing.
    let store = MongoStore::connect(&settings).await.unwrap();
    assert_eq!(seqs().await, expected);

    // New messages go on after the numbered ones.
    let conversation = ObjectId::from_bytes(legacy.bytes());
    let outcomes = store
        .write_batch(vec![WriteOp::Insert(message(
            conversation,
            10,
            "new",
            None,
        ))])
        .await
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Inserted { seq: 4 }]);
    store.database().drop().await.unwrap();
}

const MENTOR: i64 = 10;

async fn conversation_of(store: &dyn Store, lesson_id: i64, student_id: i64) -> Conversation {
    let key = ConversationKey {
        lesson_id,
        mentor_id: MENTOR,
        student_id,
    };
    store.conversation_for(key, Millis(0)).await.unwrap()
}

fn read(conversation: &Conversation, user_id: i64, up_to: ReadUpTo) -> WriteOp {
    WriteOp::Read {
        conversation_id: conversation.id,
        user_id,
        up_to,
    }
}

/// Posts `texts` by `sender`, one batch, a millisecond apart from `at`.
async fn post(
    store: &dyn Store,
    conversation: &Conversation,
    sender: i64,
    texts: &[&str],
    at: i64,
) -> Vec<Message> {
    let messages: Vec<Message> = texts
        .iter()
        .enumerate()
        .map(|(n, text)| Message {
            created_at: Millis(at + n as i64),
            ..message(conversation.id, sender, text, None)
        })
        .collect();
    let ops = messages.iter().cloned().map(WriteOp::Insert).collect();
    let outcomes = store.write_batch(ops).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Inserted { .. })),
        "{outcomes:?}"
    );
    messages
}

async fn one(store: &dyn Store, op: WriteOp) -> WriteOutcome {
    store.write_batch(vec![op]).await.unwrap().remove(0)
}

async fn entry(store: &dyn Store, caller: i64, conversation: &Conversation) -> InboxEntry {
    store
        .inbox(caller, vec![conversation.clone()])
        .await
        .unwrap()
        .remove(0)
}

/// `read_moves_forward_only…` and `posting_moves_the_senders_cursor…` of
/// `tests/read_state.rs`, at the store.
async fn cursors_move_forward_only_and_posting_moves_the_senders(store: &dyn Store) {
    let c = conversation_of(store, 100, 25).await;
    let sent = post(store, &c, 25, &["a", "b", "c"], 1_000).await;

    assert_eq!(
        one(store, read(&c, MENTOR, ReadUpTo::Seq(2))).await,
        WriteOutcome::ReadMoved { last_read_seq: 2 }
    );
    // Lower or equal: nothing moves; beyond the last seq: refused.
    for seq in [1, 2] {
        assert_eq!(
            one(store, read(&c, MENTOR, ReadUpTo::Seq(seq))).await,
            WriteOutcome::ReadUnchanged { last_read_seq: 2 }
        );
    }
    assert_eq!(
        one(store, read(&c, MENTOR, ReadUpTo::Seq(4))).await,
        WriteOutcome::SeqBeyondLast { last_seq: 3 }
    );
    let mentor = entry(store, MENTOR, &c).await;
    assert_eq!(
        (
            mentor.last_read_seq,
            mentor.unread_count,
            mentor.conversation.last_seq
        ),
        (2, 1, 3)
    );
    let student = entry(store, 25, &c).await;
    assert_eq!(student.other_last_read_seq, 2, "for seen ticks");
    assert_eq!(student.unread_count, 0);
    assert_eq!(student.last_read_seq, 3, "their own newest message");

    // `viewed` moves it too; only to the other participant's message.
    assert_eq!(
        one(store, read(&c, MENTOR, ReadUpTo::Message(sent[2].id))).await,
        WriteOutcome::ReadMoved { last_read_seq: 3 }
    );
    assert_eq!(
        one(store, read(&c, 25, ReadUpTo::Message(sent[0].id))).await,
        WriteOutcome::ViewTargetMissing
    );
    assert_eq!(
        one(store, read(&c, MENTOR, ReadUpTo::Message(ObjectId::new()))).await,
        WriteOutcome::ViewTargetMissing
    );
    let elsewhere = conversation_of(store, 101, 25).await;
    assert_eq!(
        one(
            store,
            read(&elsewhere, MENTOR, ReadUpTo::Message(sent[1].id))
        )
        .await,
        WriteOutcome::ViewTargetMissing,
        "a message of another conversation"
    );
    assert_eq!(entry(store, MENTOR, &c).await.unread_count, 0);

    // Posting moves the sender's cursor, without a stored move.
    let reply = post(store, &c, MENTOR, &["reply"], 2_000).await;
    let mentor = entry(store, MENTOR, &c).await;
    assert_eq!(mentor.last_read_seq, 4);
    assert_eq!(mentor.unread_count, 0);
    assert_eq!(mentor.conversation.last_seq, 4);
    assert_eq!(
        mentor.last_message.as_ref().map(|m| (m.id, m.seq)),
        Some((reply[0].id, 4))
    );
    assert_eq!(mentor.waiting_since, None, "the mentor spoke last");
    let student = entry(store, 25, &c).await;
    assert_eq!(
        (
            student.unread_count,
            student.other_last_read_seq,
            student.last_read_seq
        ),
        (1, 4, 3)
    );
    assert_eq!(
        one(store, read(&c, MENTOR, ReadUpTo::Seq(3))).await,
        WriteOutcome::ReadUnchanged { last_read_seq: 4 }
    );
}

/// A batch's reads answer in its order, and the same batch again is safe.
async fn reads_follow_the_batch_order_and_a_retry_is_safe(
    store: &dyn Store,
) -> (Conversation, Vec<WriteOutcome>, Vec<WriteOutcome>) {
    let c = conversation_of(store, 100, 25).await;
    let first = message(c.id, 25, "first", None);
    let second = message(c.id, 25, "second", None);
    let answer = message(c.id, MENTOR, "answer", None);
    let batch = vec![
        WriteOp::Insert(first),
        read(&c, MENTOR, ReadUpTo::Seq(1)),
        // `second` (seq 2) is not there yet.
        read(&c, MENTOR, ReadUpTo::Message(second.id)),
        WriteOp::Insert(second.clone()),
        read(&c, MENTOR, ReadUpTo::Seq(3)),
        // A `viewed`, as the hub submits it.
        WriteOp::View {
            conversation_id: c.id,
            message_id: second.id,
            viewer_id: MENTOR,
            at: Millis(7),
        },
        read(&c, MENTOR, ReadUpTo::Message(second.id)),
        WriteOp::Insert(answer),
        read(&c, MENTOR, ReadUpTo::Seq(3)),
    ];

    let outcomes = store.write_batch(batch.clone()).await.unwrap();
    let retried = store.write_batch(batch.clone()).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::ReadMoved { last_read_seq: 1 },
            WriteOutcome::ViewTargetMissing,
            WriteOutcome::Inserted { seq: 2 },
            WriteOutcome::SeqBeyondLast { last_seq: 2 },
            WriteOutcome::Viewed,
            WriteOutcome::ReadMoved { last_read_seq: 2 },
            WriteOutcome::Inserted { seq: 3 },
            // Their own message.
            WriteOutcome::ReadUnchanged { last_read_seq: 3 },
        ]
    );
    // The retry stores nothing twice, and its reads leave the cursors as
    // they were (what they answer: see `retried_reads_answer_as_first`).
    for (n, op) in batch.iter().enumerate() {
        if !matches!(op, WriteOp::Read { .. }) {
            assert_eq!(outcomes[n], retried[n], "op {n}");
        }
    }
    let mentor = entry(store, MENTOR, &c).await;
    assert_eq!((mentor.last_read_seq, mentor.unread_count), (3, 0));
    let student = entry(store, 25, &c).await;
    assert_eq!((student.last_read_seq, student.unread_count), (2, 1));
    assert_eq!(student.other_last_read_seq, 3);
    (c, outcomes, retried)
}

/// MongoDB answers a retried batch's reads in batch order, as the first try
/// did, except that a move the first try stored is found stored (the
/// reference store answers from everything stored, the batch's later
/// messages included).
fn retried_reads_answer_as_first(outcomes: &[WriteOutcome], retried: &[WriteOutcome]) {
    for (n, (first, again)) in outcomes.iter().zip(retried).enumerate() {
        match (first, again) {
            (
                WriteOutcome::ReadMoved { last_read_seq: to },
                WriteOutcome::ReadUnchanged { last_read_seq: at },
            ) => assert!(at >= to, "op {n}: {again:?} after {first:?}"),
            _ => assert_eq!(first, again, "op {n}"),
        }
    }
}

/// `the_mentor_inbox_sorts_and_filters` of `tests/read_state.rs`, at the
/// store (sorting and filtering are REST's): one call for the list.
async fn the_inbox_counts_and_waits(store: &dyn Store) -> Vec<Conversation> {
    // Created in this order: A (25, lesson 100), B (26, 100), C (27, 101).
    let a = conversation_of(store, 100, 25).await;
    let b = conversation_of(store, 100, 26).await;
    let c = conversation_of(store, 101, 27).await;
    post(store, &b, 26, &["b asks"], 1_000).await;
    let asked = post(store, &a, 25, &["a asks", "a again"], 2_000).await;
    post(store, &b, MENTOR, &["b answered"], 3_000).await;

    let listed = vec![a.clone(), b.clone(), c.clone()];
    let inbox = store.inbox(MENTOR, listed.clone()).await.unwrap();

    let ids: Vec<ObjectId> = inbox.iter().map(|e| e.conversation.id).collect();
    assert_eq!(ids, [a.id, b.id, c.id], "in the list's order");
    assert_eq!(inbox[0].unread_count, 2);
    assert_eq!(
        inbox[0].last_message.as_ref().map(|m| m.text.as_str()),
        Some("a again")
    );
    // The oldest student message after the mentor's last one.
    assert_eq!(inbox[0].waiting_since, Some(asked[0].created_at));
    assert_eq!(inbox[0].conversation.last_seq, 2);
    assert_eq!(inbox[1].waiting_since, None, "answered");
    assert_eq!(inbox[1].unread_count, 0);
    assert_eq!(inbox[1].last_read_seq, 2);
    assert_eq!(inbox[1].other_last_read_seq, 1, "the student's own message");
    assert_eq!(inbox[2].waiting_since, None, "nobody spoke");
    assert_eq!(inbox[2].last_message, None);
    assert_eq!(inbox[2].conversation.last_seq, 0);

    // Reading does not end the wait; answering does.
    one(store, read(&a, MENTOR, ReadUpTo::Seq(1))).await;
    let after_read = entry(store, MENTOR, &a).await;
    assert_eq!(after_read.unread_count, 1);
    assert_eq!(after_read.waiting_since, Some(asked[0].created_at));
    // For a student, waiting_since is always null.
    let student = entry(store, 25, &a).await;
    assert_eq!(student.waiting_since, None);
    assert_eq!(
        (
            student.last_read_seq,
            student.other_last_read_seq,
            student.unread_count
        ),
        (2, 1, 0)
    );
    listed
}

#[tokio::test]
async fn read_cursors_move_forward_only_and_posting_moves_the_senders() {
    cursors_move_forward_only_and_posting_moves_the_senders(&MemoryStore::new()).await;
    let Some(uri) = mongo_uri("read_cursors_move_forward_only_and_posting_moves_the_senders")
    else {
        return;
    };
    let store = MongoStore::connect(&scratch_settings(&uri)).await.unwrap();
    cursors_move_forward_only_and_posting_moves_the_senders(&store).await;
    // One document per reader: the mentor's, moved by `read` and `viewed`
    // (posting stored nothing); the student never read.
    let cursors: Vec<Document> = {
        let mut found = store
            .database()
            .collection::<Document>("read_cursors")
            .find(doc! {})
            .projection(doc! { "_id": 0 })
            .await
            .unwrap();
        let mut all = Vec::new();
        while found.advance().await.unwrap() {
            all.push(found.deserialize_current().unwrap());
        }
        all
    };
    assert_eq!(cursors.len(), 1, "{cursors:?}");
    assert_eq!(cursors[0].get("user_id"), Some(&Bson::Int64(MENTOR)));
    assert_eq!(cursors[0].get("last_read_seq"), Some(&Bson::Int64(3)));
    assert!(matches!(
        cursors[0].get("conversation_id"),
        Some(Bson::ObjectId(_))
    ));
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn reads_in_a_batch_follow_its_order_and_a_retried_batch_is_safe() {
    reads_follow_the_batch_order_and_a_retry_is_safe(&MemoryStore::new()).await;
    let Some(uri) = mongo_uri("reads_in_a_batch_follow_its_order_and_a_retried_batch_is_safe")
    else {
        return;
    };
    let store = MongoStore::connect(&scratch_settings(&uri)).await.unwrap();
    let (c, outcomes, retried) = reads_follow_the_batch_order_and_a_retry_is_safe(&store).await;
    retried_reads_answer_as_first(&outcomes, &retried);
    let stored = store
        .database()
        .collection::<Document>("read_cursors")
        .find_one(doc! { "conversation_id": oid(c.id), "user_id": MENTOR })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.get("last_read_seq"),
        Some(&Bson::Int64(2)),
        "moved by reads only, to the seq of the viewed message"
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn the_inbox_counts_unread_and_waiting_and_survives_a_restart() {
    the_inbox_counts_and_waits(&MemoryStore::new()).await;
    let Some(uri) = mongo_uri("the_inbox_counts_unread_and_waiting_and_survives_a_restart") else {
        return;
    };
    let settings = scratch_settings(&uri);
    let store = MongoStore::connect(&settings).await.unwrap();
    let listed = the_inbox_counts_and_waits(&store).await;
    let before = store.inbox(MENTOR, listed.clone()).await.unwrap();
    drop(store);

    let store = MongoStore::connect(&settings).await.unwrap();
    let after = store.inbox(MENTOR, listed).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after[0].last_read_seq, 1, "the cursor survived the restart");
    // As REST lists them: `conversations`, then the inbox of that list.
    let listed = store
        .conversations(ConversationFilter {
            participant: Some(MENTOR),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.inbox(MENTOR, listed).await.unwrap(), after);
    store.database().drop().await.unwrap();
}
