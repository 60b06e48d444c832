//! MongoStore against a real mongod, when `MONGO_URI` names one
//! (e.g. `docker run -d -p 27017:27017 mongo:7` and
//! `MONGO_URI=mongodb://127.0.0.1:27017/?directConnection=true`).
//! Each test uses its own database and drops it afterwards.

use std::sync::Arc;
use std::time::Duration;

use chat_service::config::Config;
use chat_service::model::{ConversationKey, Message, Millis, ObjectId};
use chat_service::store::mongo::{MongoSettings, MongoStore};
use chat_service::store::{ConversationFilter, HistoryQuery, Store, WriteOp, WriteOutcome};
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
        WriteOutcome::Inserted,
        WriteOutcome::Duplicate { existing: first.id },
        WriteOutcome::Inserted,
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
    let client_ids = store
        .recent_client_ids(conversation.id, 25, 10)
        .await
        .unwrap();
    assert_eq!(client_ids, [("c-1".to_string(), first.id)]);
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
