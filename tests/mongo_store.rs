//! MongoStore against a real mongod, when `MONGO_URI` names one
//! (e.g. `docker run -d -p 27017:27017 mongo:7` and
//! `MONGO_URI=mongodb://127.0.0.1:27017/?directConnection=true`).
//! Each test uses its own database and drops it afterwards.

use std::sync::Arc;
use std::time::Duration;

use chat_service::config::Config;
use chat_service::model::{Conversation, ConversationKey, Message, Millis, ObjectId};
use chat_service::store::mongo::{MongoSettings, MongoStore};
use chat_service::store::{
    ConversationFilter, HistoryQuery, ReadUpTo, Store, WriteOp, WriteOutcome,
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

// The read-state and inbox behaviour itself is the conformance suite's
// (`tests/store_conformance.rs`, run on MongoDB when MONGO_URI is set);
// these check what only MongoDB has: the documents and a restart.

async fn conversation_of(store: &dyn Store, lesson_id: i64, student_id: i64) -> Conversation {
    let key = ConversationKey {
        lesson_id,
        mentor_id: MENTOR,
        student_id,
    };
    store.conversation_for(key, Millis(0)).await.unwrap()
}

/// Posts `texts` by `sender` in one batch.
async fn post(
    store: &dyn Store,
    conversation: &Conversation,
    sender: i64,
    texts: &[&str],
) -> Vec<Message> {
    let messages: Vec<Message> = texts
        .iter()
        .map(|text| message(conversation.id, sender, text, None))
        .collect();
    let ops = messages.iter().cloned().map(WriteOp::Insert).collect();
    store.write_batch(ops).await.unwrap();
    messages
}

async fn read(
    store: &dyn Store,
    conversation: &Conversation,
    user_id: i64,
    up_to: ReadUpTo,
) -> WriteOutcome {
    let op = WriteOp::Read {
        conversation_id: conversation.id,
        user_id,
        up_to,
    };
    store.write_batch(vec![op]).await.unwrap().remove(0)
}

#[tokio::test]
async fn a_read_cursor_is_one_document_per_reader() {
    let Some(uri) = mongo_uri("a_read_cursor_is_one_document_per_reader") else {
        return;
    };
    let store = MongoStore::connect(&scratch_settings(&uri)).await.unwrap();
    let c = conversation_of(&store, 100, 25).await;
    let sent = post(&store, &c, 25, &["a", "b", "c"]).await;
    assert_eq!(
        read(&store, &c, MENTOR, ReadUpTo::Seq(2)).await,
        WriteOutcome::ReadMoved { last_read_seq: 2 }
    );
    assert_eq!(
        read(&store, &c, MENTOR, ReadUpTo::Message(sent[2].id)).await,
        WriteOutcome::ReadMoved { last_read_seq: 3 }
    );
    // Posting moves the student's cursor without a document.
    post(&store, &c, 25, &["d"]).await;

    let mut found = store
        .database()
        .collection::<Document>("read_cursors")
        .find(doc! {})
        .projection(doc! { "_id": 0 })
        .await
        .unwrap();
    let mut cursors = Vec::new();
    while found.advance().await.unwrap() {
        cursors.push(found.deserialize_current().unwrap());
    }
    assert_eq!(
        cursors,
        [doc! { "conversation_id": oid(c.id), "user_id": MENTOR, "last_read_seq": 3_i64 }]
    );
    store.database().drop().await.unwrap();
}

#[tokio::test]
async fn the_inbox_survives_a_restart() {
    let Some(uri) = mongo_uri("the_inbox_survives_a_restart") else {
        return;
    };
    let settings = scratch_settings(&uri);
    let store = MongoStore::connect(&settings).await.unwrap();
    let a = conversation_of(&store, 100, 25).await;
    let b = conversation_of(&store, 100, 26).await;
    post(&store, &a, 25, &["a asks", "a again"]).await;
    post(&store, &b, 26, &["b asks"]).await;
    post(&store, &b, MENTOR, &["b answered"]).await;
    read(&store, &a, MENTOR, ReadUpTo::Seq(1)).await;
    let listed = vec![a.clone(), b.clone()];
    let before = store.inbox(MENTOR, listed.clone()).await.unwrap();
    assert_eq!(
        before
            .iter()
            .map(|e| (e.unread_count, e.last_read_seq, e.waiting_since.is_some()))
            .collect::<Vec<_>>(),
        [(1, 1, true), (0, 2, false)]
    );
    drop(store);

    let store = MongoStore::connect(&settings).await.unwrap();
    assert_eq!(store.inbox(MENTOR, listed).await.unwrap(), before);
    // As REST lists them: `conversations`, then the inbox of that list.
    let listed = store
        .conversations(ConversationFilter {
            participant: Some(MENTOR),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.inbox(MENTOR, listed).await.unwrap(), before);
    store.database().drop().await.unwrap();
}
