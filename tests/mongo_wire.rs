//! MongoStore against a scripted MongoDB wire server on 127.0.0.1: the exact
//! commands the real driver sends (index specs, BSON types, write concern,
//! history filters, seqs and their reads, the numbering of legacy messages,
//! read cursors and the inbox) and how the store reads the server's answers
//! (duplicate keys, write-concern timeouts, a dropped connection).

#[path = "mongo_wire/server.rs"]
mod server;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_service::config::Config;
use chat_service::model::{Conversation, ConversationKey, Message, Millis, ObjectId};
use chat_service::store::mongo::{MongoSettings, MongoStore};
use chat_service::store::{
    ConversationFilter, HistoryQuery, InboxEntry, ReadUpTo, Store, StoreError, WriteOp,
    WriteOutcome,
};
use mongodb::bson::{self, doc, Bson, Document};

use server::{command_name, cursor_reply, Reply, WireServer};

fn settings(server: &WireServer) -> MongoSettings {
    MongoSettings {
        uri: server.uri(),
        database: "chat".into(),
        timeout: Duration::from_secs(3),
        ..MongoSettings::from(&Config::defaults())
    }
}

async fn connected() -> (WireServer, MongoStore) {
    let server = WireServer::start().await;
    let store = MongoStore::connect(&settings(&server)).await.unwrap();
    server.forget_commands();
    (server, store)
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
        created_at: Millis(1_735_725_600_123),
        seq: 0,
        client_id: client_id.map(str::to_string),
        viewed_by: None,
        viewed_at: None,
    }
}

/// The index specs of one `createIndexes` command.
fn index_specs(command: &Document) -> Vec<Document> {
    command
        .get_array("indexes")
        .unwrap()
        .iter()
        .map(|spec| spec.as_document().unwrap().clone())
        .collect()
}

/// The stages of one `aggregate` command.
fn pipeline(command: &Document) -> Vec<Document> {
    command
        .get_array("pipeline")
        .unwrap()
        .iter()
        .map(|stage| stage.as_document().unwrap().clone())
        .collect()
}

/// The batch's one look for stored duplicates (a `find` with `$or`).
fn is_duplicate_check(command: &Document) -> bool {
    command_name(command) == "find"
        && command
            .get_document("filter")
            .is_ok_and(|filter| filter.contains_key("$or"))
}

/// A read of one conversation's last seq (a `find` sorted by seq).
fn is_last_seq_read(command: &Document) -> bool {
    command_name(command) == "find" && command.get_document("sort") == Ok(&doc! { "seq": -1 })
}

/// The legacy numbering's scan (an `aggregate` over messages whose first
/// stage matches on `seq`).
fn is_numbering_scan(command: &Document) -> bool {
    command_name(command) == "aggregate"
        && command.get_str("aggregate") == Ok("messages")
        && pipeline(command)[0]
            .get_document("$match")
            .and_then(|stage| stage.get_document("seq"))
            .is_ok_and(|seq| seq.contains_key("$not"))
}

/// The legacy numbering's read of the highest seqs (an `aggregate` with `$group`).
fn is_highest_seq_read(command: &Document) -> bool {
    command_name(command) == "aggregate"
        && pipeline(command)
            .iter()
            .any(|stage| stage.contains_key("$group"))
}

/// The `updates` of an `update` command as (`q._id`, `u.$set.seq`).
fn numbered(update: &Document) -> Vec<(Bson, Bson)> {
    update
        .get_array("updates")
        .unwrap()
        .iter()
        .map(|statement| {
            let statement = statement.as_document().unwrap();
            let id = statement
                .get_document("q")
                .unwrap()
                .get("_id")
                .unwrap()
                .clone();
            let seq = statement
                .get_document("u")
                .unwrap()
                .get_document("$set")
                .unwrap()
                .get("seq")
                .unwrap()
                .clone();
            (id, seq)
        })
        .collect()
}

/// The `seq` of each document of an `insert` command.
fn inserted_seqs(insert: &Document) -> Vec<Bson> {
    insert
        .get_array("documents")
        .unwrap()
        .iter()
        .map(|document| document.as_document().unwrap().get("seq").unwrap().clone())
        .collect()
}

fn names(server: &WireServer) -> Vec<String> {
    server
        .commands()
        .iter()
        .map(|c| command_name(c).to_string())
        .collect()
}

#[tokio::test]
async fn connect_pings_and_creates_the_contract_indexes() {
    let server = WireServer::start().await;
    MongoStore::connect(&settings(&server)).await.unwrap();

    let commands = server.commands();
    assert_eq!(command_name(&commands[0]), "ping");
    assert_eq!(commands[0].get_str("$db").unwrap(), "chat");
    // Then the indexes, then the numbering of legacy messages (before any
    // write can give a seq).
    let order: Vec<&str> = commands.iter().map(command_name).collect();
    assert_eq!(
        order,
        [
            "ping",
            "createIndexes",
            "createIndexes",
            "createIndexes",
            "createIndexes",
            "createIndexes",
            "createIndexes",
            "aggregate"
        ]
    );
    assert!(is_numbering_scan(&commands[7]));
    let created: Vec<(String, Document)> = server
        .commands_named("createIndexes")
        .iter()
        .flat_map(|command| {
            let collection = command.get_str("createIndexes").unwrap().to_string();
            index_specs(command)
                .into_iter()
                .map(move |spec| (collection.clone(), spec))
        })
        .collect();
    assert_eq!(created.len(), 6, "{created:?}");

    let (collection, seed) = &created[0];
    assert_eq!(collection, "conversations");
    assert_eq!(
        seed.get_document("key").unwrap(),
        &doc! { "lesson_id": 1, "mentor_id": 1, "student_id": 1 }
    );
    assert_eq!(
        seed.get_str("name").unwrap(),
        "lesson_id_1_mentor_id_1_student_id_1"
    );
    assert_eq!(seed.get("unique"), Some(&Bson::Boolean(true)));
    assert!(seed.get("partialFilterExpression").is_none());

    let (collection, history) = &created[1];
    assert_eq!(collection, "messages");
    let keys: Vec<&String> = history.get_document("key").unwrap().keys().collect();
    assert_eq!(keys, ["conversation_id", "_id"]);
    assert_eq!(history.get_str("name").unwrap(), "conversation_id_1__id_1");
    assert!(history.get("unique").is_none());

    let (collection, resend) = &created[2];
    assert_eq!(collection, "messages");
    assert_eq!(
        resend.get_document("key").unwrap(),
        &doc! { "conversation_id": 1, "sender_id": 1, "client_id": 1 }
    );
    assert_eq!(
        resend.get_str("name").unwrap(),
        "conversation_id_1_sender_id_1_client_id_1"
    );
    assert_eq!(resend.get("unique"), Some(&Bson::Boolean(true)));
    assert_eq!(
        resend.get_document("partialFilterExpression").unwrap(),
        &doc! { "client_id": { "$type": "string" } }
    );

    let (collection, seq) = &created[3];
    assert_eq!(collection, "messages");
    let keys: Vec<&String> = seq.get_document("key").unwrap().keys().collect();
    assert_eq!(keys, ["conversation_id", "seq"]);
    assert_eq!(
        seq.get_document("key").unwrap(),
        &doc! { "conversation_id": 1, "seq": 1 }
    );
    assert_eq!(seq.get_str("name").unwrap(), "conversation_id_1_seq_1");
    assert_eq!(seq.get("unique"), Some(&Bson::Boolean(true)));
    assert_eq!(
        seq.get_document("partialFilterExpression").unwrap(),
        &doc! { "seq": { "$type": "number" } }
    );

    // A participant's newest message and the other's messages after a read
    // cursor, per conversation and sender.
    let (collection, by_sender) = &created[4];
    assert_eq!(collection, "messages");
    let keys: Vec<&String> = by_sender.get_document("key").unwrap().keys().collect();
    assert_eq!(keys, ["conversation_id", "sender_id", "seq"]);
    assert_eq!(
        by_sender.get_document("key").unwrap(),
        &doc! { "conversation_id": 1, "sender_id": 1, "seq": 1 }
    );
    assert_eq!(
        by_sender.get_str("name").unwrap(),
        "conversation_id_1_sender_id_1_seq_1"
    );
    assert!(by_sender.get("unique").is_none());
    assert!(by_sender.get("partialFilterExpression").is_none());

    // One read cursor per (conversation, user), in a collection of its own.
    let (collection, cursors) = &created[5];
    assert_eq!(collection, "read_cursors");
    let keys: Vec<&String> = cursors.get_document("key").unwrap().keys().collect();
    assert_eq!(keys, ["conversation_id", "user_id"]);
    assert_eq!(
        cursors.get_document("key").unwrap(),
        &doc! { "conversation_id": 1, "user_id": 1 }
    );
    assert_eq!(
        cursors.get_str("name").unwrap(),
        "conversation_id_1_user_id_1"
    );
    assert_eq!(cursors.get("unique"), Some(&Bson::Boolean(true)));
    assert!(cursors.get("partialFilterExpression").is_none());
}

/// Collects what `tracing` writes while it is the thread's subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_index_that_cannot_be_built_is_logged_and_connect_succeeds() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = WireServer::start().await;
    server.script(|command| {
        let builds_resend_index = command_name(command) == "createIndexes"
            && index_specs(command)[0].get_str("name") == Ok("conversation_id_1_sender_id_1_client_id_1");
        if builds_resend_index {
            Reply::Document(doc! {
                "ok": 0.0, "code": 11000, "codeName": "DuplicateKey",
                "errmsg": "Index build failed: E11000 duplicate key error collection: chat.messages index: conversation_id_1_sender_id_1_client_id_1",
            })
        } else {
            Reply::Default
        }
    });
    let store = MongoStore::connect(&settings(&server)).await;

    assert!(store.is_ok(), "{:?}", store.err());
    assert_eq!(server.commands_named("createIndexes").len(), 6);
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(logged.contains("MONGODB INDEX NOT CREATED"), "{logged}");
    assert!(
        logged.contains("conversation_id_1_sender_id_1_client_id_1"),
        "{logged}"
    );
}

#[tokio::test]
async fn a_slow_index_build_does_not_hold_up_the_start() {
    let server = WireServer::start().await;
    server.script(|command| {
        if command_name(command) == "createIndexes"
            && command.get_str("createIndexes") == Ok("conversations")
        {
            Reply::Never
        } else {
            Reply::Default
        }
    });
    let mut settings = settings(&server);
    settings.timeout = Duration::from_millis(300);

    let store = MongoStore::connect(&settings).await;

    assert!(store.is_ok(), "{:?}", store.err());
    assert_eq!(
        server.commands_named("createIndexes").len(),
        6,
        "the other indexes are still created"
    );
}

#[tokio::test]
async fn a_batch_is_one_duplicate_check_one_last_seq_read_one_ordered_insert_then_one_update() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    server.script(|command| {
        if is_last_seq_read(command) {
            Reply::Document(cursor_reply(command, vec![doc! { "seq": 41_i64 }]))
        } else {
            Reply::Default
        }
    });
    let first = message(conversation, 10, "Hello, mentor!", Some("c-1"));
    let second = message(conversation, 10, "no client id", None);
    let viewed_at = Millis(1_735_725_601_000);
    let ops = vec![
        WriteOp::Insert(first.clone()),
        WriteOp::Insert(second.clone()),
        WriteOp::View {
            conversation_id: conversation,
            message_id: first.id,
            viewer_id: 15,
            at: viewed_at,
        },
    ];

    let outcomes = store.write_batch(ops).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 42 },
            WriteOutcome::Inserted { seq: 43 },
            WriteOutcome::Viewed
        ]
    );
    assert_eq!(
        names(&server),
        ["find", "find", "insert", "update"],
        "one round trip each, duplicates checked and seqs given before the insert"
    );
    let commands = server.commands();
    assert!(is_duplicate_check(&commands[0]));
    assert_eq!(commands[0].get_str("find").unwrap(), "messages");
    assert_eq!(
        commands[0].get_document("filter").unwrap(),
        &doc! { "$or": [
            { "_id": { "$in": [oid(first.id), oid(second.id)] } },
            {
                "conversation_id": oid(conversation),
                "sender_id": Bson::Int64(10),
                "client_id": { "$in": ["c-1"], "$type": "string" },
            },
        ] }
    );
    assert_eq!(
        commands[0].get_document("projection").unwrap(),
        &doc! { "_id": 1, "conversation_id": 1, "sender_id": 1, "client_id": 1, "seq": 1 }
    );
    assert_eq!(commands[0].get("limit").and_then(Bson::as_i64), Some(3));
    // The last seq: the end of the conversation's range of the seq index
    // (the filter names the index's partial filter).
    let last_seq = &commands[1];
    assert!(is_last_seq_read(last_seq));
    assert_eq!(
        last_seq.get_document("filter").unwrap(),
        &doc! { "conversation_id": oid(conversation), "seq": { "$type": "number" } }
    );
    assert_eq!(last_seq.get("limit").and_then(Bson::as_i64), Some(1));

    let insert = &server.commands_named("insert")[0];
    assert_eq!(insert.get_str("insert").unwrap(), "messages");
    assert_eq!(
        insert.get("ordered"),
        Some(&Bson::Boolean(true)),
        "ordered: a failure stores a prefix, so no seq is skipped"
    );
    assert_eq!(inserted_seqs(insert), [Bson::Int64(42), Bson::Int64(43)]);
    let concern = insert.get_document("writeConcern").unwrap();
    assert_eq!(concern.get_str("w").unwrap(), "majority");
    assert_eq!(concern.get("j"), Some(&Bson::Boolean(true)));
    let documents = insert.get_array("documents").unwrap();
    assert_eq!(documents.len(), 2);
    let stored = documents[0].as_document().unwrap();
    let keys: Vec<&String> = stored.keys().collect();
    assert_eq!(
        keys,
        [
            "_id",
            "conversation_id",
            "sender_id",
            "text",
            "created_at",
            "client_id",
            "seq"
        ]
    );
    assert_eq!(stored.get("_id"), Some(&Bson::ObjectId(oid(first.id))));
    assert_eq!(
        stored.get("conversation_id"),
        Some(&Bson::ObjectId(oid(conversation)))
    );
    assert_eq!(
        stored.get("sender_id"),
        Some(&Bson::Int64(10)),
        "a small id is still Int64"
    );
    assert_eq!(
        stored.get("text"),
        Some(&Bson::String("Hello, mentor!".into()))
    );
    assert_eq!(
        stored.get("created_at"),
        Some(&Bson::DateTime(bson::DateTime::from_millis(
            1_735_725_600_123
        )))
    );
    assert_eq!(stored.get("client_id"), Some(&Bson::String("c-1".into())));
    let plain = documents[1].as_document().unwrap();
    assert!(plain.get("client_id").is_none() && plain.get("viewed_by").is_none());

    let update = &server.commands_named("update")[0];
    assert_eq!(update.get_str("update").unwrap(), "messages");
    assert_eq!(
        update
            .get_document("writeConcern")
            .unwrap()
            .get_str("w")
            .unwrap(),
        "majority"
    );
    assert_eq!(
        update.get_document("writeConcern").unwrap().get("j"),
        Some(&Bson::Boolean(true))
    );
    let statements = update.get_array("updates").unwrap();
    assert_eq!(statements.len(), 1);
    let statement = statements[0].as_document().unwrap();
    assert_eq!(
        statement.get_document("q").unwrap(),
        &doc! {
            "_id": oid(first.id),
            "conversation_id": oid(conversation),
            "sender_id": { "$ne": Bson::Int64(15) },
            // Not already viewed by 15, unless by this very view (a retry).
            "$or": [
                { "viewed_by": { "$ne": Bson::Int64(15) } },
                { "viewed_at": bson::DateTime::from_millis(1_735_725_601_000) },
            ],
        }
    );
    assert_eq!(
        statement.get_document("u").unwrap(),
        &doc! { "$set": {
            "viewed_by": Bson::Int64(15),
            "viewed_at": bson::DateTime::from_millis(1_735_725_601_000),
        } }
    );
    assert_ne!(statement.get_bool("multi"), Ok(true));
    assert_ne!(statement.get_bool("upsert"), Ok(true));
}

#[tokio::test]
async fn stored_duplicates_use_no_seq_and_report_the_stored_message_s_id_and_seq() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let fresh = message(conversation, 10, "fresh", Some("c-0"));
    let resend = message(conversation, 10, "resent", Some("c-1"));
    let retried = message(conversation, 10, "retried batch", Some("c-2"));
    let stored_first = ObjectId::new();
    let retried_id = retried.id;
    server.script(move |command| {
        if is_duplicate_check(command) {
            // The first send of c-1 (seq 3), and this batch's own earlier
            // try of `retried` (seq 4).
            Reply::Document(cursor_reply(
                command,
                vec![
                    doc! { "_id": oid(stored_first), "conversation_id": oid(conversation),
                    "sender_id": 10_i64, "client_id": "c-1", "seq": 3_i64 },
                    doc! { "_id": oid(retried_id), "conversation_id": oid(conversation),
                    "sender_id": 10_i64, "client_id": "c-2", "seq": Bson::Int32(4) },
                ],
            ))
        } else if is_last_seq_read(command) {
            Reply::Document(cursor_reply(command, vec![doc! { "seq": 4_i64 }]))
        } else {
            Reply::Default
        }
    });

    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(fresh.clone()),
            WriteOp::Insert(resend.clone()),
            WriteOp::Insert(retried),
        ])
        .await
        .unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 5 },
            WriteOutcome::Duplicate {
                existing: stored_first,
                seq: 3
            },
            WriteOutcome::Inserted { seq: 4 },
        ]
    );
    let check = &server.commands_named("find")[0];
    assert!(is_duplicate_check(check));
    let clauses = check
        .get_document("filter")
        .unwrap()
        .get_array("$or")
        .unwrap()
        .clone();
    assert!(clauses.contains(&Bson::Document(doc! {
        "conversation_id": oid(conversation),
        "sender_id": Bson::Int64(10),
        "client_id": { "$in": ["c-0", "c-1", "c-2"], "$type": "string" },
    })));
    let inserts = server.commands_named("insert");
    assert_eq!(inserts.len(), 1);
    let documents = inserts[0].get_array("documents").unwrap();
    assert_eq!(documents.len(), 1, "only the new message is written");
    let written = documents[0].as_document().unwrap();
    assert_eq!(written.get("_id"), Some(&Bson::ObjectId(oid(fresh.id))));
    assert_eq!(written.get("seq"), Some(&Bson::Int64(5)));
}

#[tokio::test]
async fn a_resend_within_the_batch_is_a_duplicate_of_the_first_and_uses_no_seq() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let first = message(conversation, 10, "hello", Some("c-1"));
    let resend = message(conversation, 10, "hello", Some("c-1"));
    let other_sender = message(conversation, 15, "hi", Some("c-1"));
    let after = message(conversation, 10, "after", None);

    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(first.clone()),
            WriteOp::Insert(resend),
            WriteOp::Insert(other_sender.clone()),
            WriteOp::Insert(first.clone()),
            WriteOp::Insert(after.clone()),
        ])
        .await
        .unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Duplicate {
                existing: first.id,
                seq: 1
            },
            WriteOutcome::Inserted { seq: 2 },
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Inserted { seq: 3 },
        ]
    );
    let insert = &server.commands_named("insert")[0];
    let ids: Vec<Bson> = insert
        .get_array("documents")
        .unwrap()
        .iter()
        .map(|document| document.as_document().unwrap().get("_id").unwrap().clone())
        .collect();
    assert_eq!(
        ids,
        [
            Bson::ObjectId(oid(first.id)),
            Bson::ObjectId(oid(other_sender.id)),
            Bson::ObjectId(oid(after.id))
        ]
    );
    assert_eq!(
        inserted_seqs(insert),
        [Bson::Int64(1), Bson::Int64(2), Bson::Int64(3)]
    );
}

#[tokio::test]
async fn the_last_seq_is_read_once_then_kept_and_each_conversation_counts_apart() {
    let (server, store) = connected().await;
    let (busy, quiet) = (ObjectId::new(), ObjectId::new());
    server.script(move |command| {
        let conversation = command
            .get_document("filter")
            .ok()
            .and_then(|filter| filter.get_object_id("conversation_id").ok());
        if is_last_seq_read(command) && conversation == Some(oid(busy)) {
            Reply::Document(cursor_reply(command, vec![doc! { "seq": 7_i64 }]))
        } else {
            Reply::Default
        }
    });
    let insert = |conversation| WriteOp::Insert(message(conversation, 10, "m", None));

    let first = store
        .write_batch(vec![insert(busy), insert(quiet), insert(busy)])
        .await
        .unwrap();
    let second = store
        .write_batch(vec![insert(quiet), insert(busy)])
        .await
        .unwrap();

    assert_eq!(
        first,
        [
            WriteOutcome::Inserted { seq: 8 },
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Inserted { seq: 9 },
        ]
    );
    assert_eq!(
        second,
        [
            WriteOutcome::Inserted { seq: 2 },
            WriteOutcome::Inserted { seq: 10 },
        ]
    );
    let reads = server
        .commands()
        .into_iter()
        .filter(is_last_seq_read)
        .count();
    assert_eq!(
        reads, 2,
        "one per conversation, the first time it is written"
    );
    assert_eq!(
        names(&server)[names(&server).len() - 2..],
        ["find", "insert"],
        "the second batch: the duplicate check, then the insert"
    );
}

#[tokio::test]
async fn a_batch_cut_by_the_deadline_forgets_its_last_seqs() {
    let server = WireServer::start().await;
    let mut settings = settings(&server);
    settings.timeout = Duration::from_millis(200);
    let store = MongoStore::connect(&settings).await.unwrap();
    let conversation = ObjectId::new();
    let insert = || WriteOp::Insert(message(conversation, 10, "m", None));
    assert_eq!(
        store.write_batch(vec![insert()]).await.unwrap(),
        [WriteOutcome::Inserted { seq: 1 }]
    );
    server.forget_commands();
    // The insert may still land after the store gave up on it.
    server.script(|command| match command_name(command) {
        "insert" => Reply::Never,
        _ => Reply::Default,
    });

    let result = store.write_batch(vec![insert()]).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    server.script(|command| {
        if is_last_seq_read(command) {
            Reply::Document(cursor_reply(command, vec![doc! { "seq": 2_i64 }]))
        } else {
            Reply::Default
        }
    });
    let outcomes = store.write_batch(vec![insert()]).await.unwrap();

    assert_eq!(outcomes, [WriteOutcome::Inserted { seq: 3 }]);
    let reads = server
        .commands()
        .into_iter()
        .filter(is_last_seq_read)
        .count();
    assert_eq!(reads, 1, "the cut batch's conversation is read again");
}

#[tokio::test]
async fn a_message_after_one_refused_for_good_takes_its_seq() {
    let (server, store) = connected().await;
    let mut inserts = 0;
    server.script(move |command| match command_name(command) {
        "insert" => {
            inserts += 1;
            if inserts == 1 {
                // Ordered: the server stopped at the refused document.
                Reply::Document(doc! {
                    "n": 1,
                    "writeErrors": [{ "index": 1, "code": 121, "codeName": "DocumentValidationFailure", "errmsg": "Document failed validation" }],
                    "ok": 1.0,
                })
            } else {
                Reply::Default
            }
        }
        _ => Reply::Default,
    });
    let conversation = ObjectId::new();
    let ops = vec![
        WriteOp::Insert(message(conversation, 10, "fine", None)),
        WriteOp::Insert(message(conversation, 10, "refused", None)),
        WriteOp::Insert(message(conversation, 10, "after it", None)),
        WriteOp::Insert(message(ObjectId::new(), 10, "elsewhere", None)),
    ];

    let outcomes = store.write_batch(ops).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Rejected("Document failed validation".into()),
            WriteOutcome::Inserted { seq: 2 },
            WriteOutcome::Inserted { seq: 1 },
        ]
    );
    let sent = server.commands_named("insert");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        inserted_seqs(&sent[0]),
        [
            Bson::Int64(1),
            Bson::Int64(2),
            Bson::Int64(3),
            Bson::Int64(1)
        ]
    );
    assert_eq!(
        inserted_seqs(&sent[1]),
        [Bson::Int64(2), Bson::Int64(1)],
        "what followed the refused document, renumbered"
    );
}

#[tokio::test]
async fn a_race_on_the_seq_index_is_unavailable_and_the_retry_re_reads_the_last_seq() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let earlier = message(conversation, 10, "earlier", None);
    let first = message(conversation, 10, "first", None);
    let second = message(conversation, 10, "second", None);
    let first_id = first.id;
    let mut tries = 0;
    server.script(move |command| {
        if command_name(command) == "insert" {
            tries += 1;
        }
        match (command_name(command), tries) {
            // The racing batch: its first document is stored (seq 2), then
            // another writer turns out to hold seq 3.
            ("insert", 2) => Reply::Document(doc! {
                "n": 1,
                "writeErrors": [{ "index": 1, "code": 11000, "errmsg": "E11000 duplicate key error collection: chat.messages index: conversation_id_1_seq_1 dup key: { conversation_id: ObjectId('0'), seq: 3 }" }],
                "ok": 1.0,
            }),
            // Its retry: the stored first message, and the other writer's seq.
            _ if is_duplicate_check(command) && tries == 2 => Reply::Document(cursor_reply(
                command,
                vec![doc! { "_id": oid(first_id), "conversation_id": oid(conversation),
                            "sender_id": 10_i64, "seq": 2_i64 }],
            )),
            _ if is_last_seq_read(command) && tries == 2 => {
                Reply::Document(cursor_reply(command, vec![doc! { "seq": 3_i64 }]))
            }
            _ => Reply::Default,
        }
    });
    // Leaves seq 1 in the writer's cache.
    assert_eq!(
        store
            .write_batch(vec![WriteOp::Insert(earlier)])
            .await
            .unwrap(),
        [WriteOutcome::Inserted { seq: 1 }]
    );
    let ops = vec![WriteOp::Insert(first), WriteOp::Insert(second.clone())];

    let result = store.write_batch(ops.clone()).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    let retried = store.write_batch(ops).await.unwrap();

    assert_eq!(
        retried,
        [
            WriteOutcome::Inserted { seq: 2 },
            WriteOutcome::Inserted { seq: 4 }
        ]
    );
    let reads = server
        .commands()
        .into_iter()
        .filter(is_last_seq_read)
        .count();
    assert_eq!(
        reads, 2,
        "read at the first write, then again after the failed batch forgot it"
    );
    let inserts = server.commands_named("insert");
    assert_eq!(inserted_seqs(&inserts[1]), [Bson::Int64(2), Bson::Int64(3)]);
    let documents = inserts[2].get_array("documents").unwrap();
    assert_eq!(documents.len(), 1);
    assert_eq!(
        documents[0].as_document().unwrap().get("_id"),
        Some(&Bson::ObjectId(oid(second.id)))
    );
    assert_eq!(inserted_seqs(&inserts[2]), [Bson::Int64(4)]);
}

#[tokio::test]
async fn a_write_concern_timeout_is_unavailable() {
    let (server, store) = connected().await;
    server.script(|command| match command_name(command) {
        "insert" => Reply::Document(doc! {
            "n": 1,
            "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out" },
            "ok": 1.0,
        }),
        _ => Reply::Default,
    });
    let op = WriteOp::Insert(message(ObjectId::new(), 10, "hi", None));

    let result = store.write_batch(vec![op]).await;

    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_refused_insert_for_another_reason_is_unavailable_so_the_batch_is_retried() {
    let (server, store) = connected().await;
    server.script(|command| match command_name(command) {
        "insert" => Reply::Document(doc! {
            "n": 1,
            "writeErrors": [{ "index": 0, "code": 10107, "errmsg": "not primary" }],
            "ok": 1.0,
        }),
        _ => Reply::Default,
    });
    let op = WriteOp::Insert(message(ObjectId::new(), 10, "hi", None));

    let result = store.write_batch(vec![op.clone(), op]).await;

    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_dropped_connection_mid_batch_is_unavailable_and_the_store_recovers() {
    let (server, store) = connected().await;
    server.script(|command| match command_name(command) {
        "insert" => Reply::HangUp,
        _ => Reply::Default,
    });
    let op = WriteOp::Insert(message(ObjectId::new(), 10, "hi", None));

    let result = store.write_batch(vec![op.clone()]).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );

    server.script(|_| Reply::Default);
    assert_eq!(
        store.write_batch(vec![op]).await.unwrap(),
        [WriteOutcome::Inserted { seq: 1 }]
    );
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_view_that_matches_nothing_is_read_back_as_missing_or_already_viewed() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let present = ObjectId::new();
    let absent = ObjectId::new();
    let seen = ObjectId::new();
    let seed_seen = ObjectId::new();
    server.script(move |command| match command_name(command) {
        // Only `present` matched: the others are missing or viewed already.
        "update" => Reply::Document(doc! { "n": 1, "nModified": 1, "ok": 1.0 }),
        "find" => Reply::Document(cursor_reply(
            command,
            vec![
                // As the update left it: viewed by this very op.
                doc! { "_id": oid(present), "conversation_id": oid(conversation), "sender_id": 10_i64,
                       "viewed_by": 15_i64, "viewed_at": bson::DateTime::from_millis(1) },
                doc! { "_id": oid(seen), "conversation_id": oid(conversation), "sender_id": 10_i64,
                       "viewed_by": 15_i64, "viewed_at": bson::DateTime::from_millis(0) },
                // The seed stored viewed_by (an int32 here) without a time.
                doc! { "_id": oid(seed_seen), "conversation_id": oid(conversation), "sender_id": 10_i64,
                       "viewed_by": Bson::Int32(15) },
            ],
        )),
        _ => Reply::Default,
    });
    let view = |message_id| WriteOp::View {
        conversation_id: conversation,
        message_id,
        viewer_id: 15,
        at: Millis(1),
    };

    let outcomes = store
        .write_batch(vec![
            view(absent),
            view(present),
            view(seen),
            view(seed_seen),
        ])
        .await
        .unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::ViewTargetMissing,
            WriteOutcome::Viewed,
            WriteOutcome::AlreadyViewed,
            WriteOutcome::AlreadyViewed
        ]
    );
    let names: Vec<String> = server
        .commands()
        .iter()
        .map(|c| command_name(c).to_string())
        .collect();
    assert_eq!(names, ["update", "find"]);
    let find = &server.commands_named("find")[0];
    assert_eq!(
        find.get_document("projection").unwrap(),
        &doc! { "_id": 1, "conversation_id": 1, "sender_id": 1, "viewed_by": 1, "viewed_at": 1 }
    );
}

#[tokio::test]
async fn a_view_naming_a_later_insert_runs_before_it() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let later = message(conversation, 10, "later", None);
    server.script(|command| match command_name(command) {
        "update" => Reply::Document(doc! { "n": 0, "nModified": 0, "ok": 1.0 }),
        _ => Reply::Default,
    });
    let ops = vec![
        WriteOp::View {
            conversation_id: conversation,
            message_id: later.id,
            viewer_id: 15,
            at: Millis(1),
        },
        WriteOp::Insert(later),
    ];

    let outcomes = store.write_batch(ops).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::ViewTargetMissing,
            WriteOutcome::Inserted { seq: 1 }
        ]
    );
    // The view's read-back, the duplicate check, the last seq, the insert.
    assert_eq!(names(&server), ["update", "find", "find", "find", "insert"]);
}

#[tokio::test]
async fn history_before_reads_newest_first_with_a_limit_and_returns_oldest_first() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let [oldest, middle, newest, cursor] = [
        ObjectId::new(),
        ObjectId::new(),
        ObjectId::new(),
        ObjectId::new(),
    ];
    server.script(move |command| match command_name(command) {
        // Newest first, as the sort asks; seed shapes: an int32 id, no
        // client_id, a viewed_by on one.
        "find" => Reply::Document(cursor_reply(command, vec![
            doc! { "_id": oid(newest), "conversation_id": oid(conversation), "sender_id": 10_i64, "text": "c",
                   "created_at": bson::DateTime::from_millis(3_000), "viewed_by": 15_i64 },
            doc! { "_id": oid(middle), "conversation_id": oid(conversation), "sender_id": Bson::Int32(15), "text": "b",
                   "created_at": bson::DateTime::from_millis(2_000) },
            doc! { "_id": oid(oldest), "conversation_id": oid(conversation), "sender_id": 10_i64, "text": "a",
                   "created_at": bson::DateTime::from_millis(1_000), "client_id": "c-1" },
        ])),
        _ => Reply::Default,
    });

    let page = store
        .messages(HistoryQuery {
            conversation_id: conversation,
            before: Some(cursor),
            after: None,
            limit: 3,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .messages;

    let ids: Vec<ObjectId> = page.iter().map(|m| m.id).collect();
    assert_eq!(ids, [oldest, middle, newest]);
    assert_eq!(page[1].sender_id, 15);
    assert_eq!(page[2].viewed_by, Some(15));
    assert_eq!(page[0].client_id.as_deref(), Some("c-1"));
    assert_eq!(page[0].created_at, Millis(1_000));
    let find = &server.commands_named("find")[0];
    assert_eq!(find.get_str("find").unwrap(), "messages");
    assert_eq!(
        find.get_document("filter").unwrap(),
        &doc! { "conversation_id": oid(conversation), "_id": { "$lt": oid(cursor) } }
    );
    assert_eq!(find.get_document("sort").unwrap(), &doc! { "_id": -1 });
    assert_eq!(find.get("limit").and_then(Bson::as_i64), Some(3));
}

/// A page cut by bytes: the newest messages that fit, and the cursor is
/// not read further (no `getMore`, which this server never answers).
#[tokio::test]
async fn history_stops_reading_the_cursor_once_the_byte_budget_is_spent() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let ids = [ObjectId::new(), ObjectId::new(), ObjectId::new()];
    let text = "\u{1}".repeat(1000);
    let documents: Vec<Document> = ids
        .iter()
        .rev()
        .map(|id| {
            doc! { "_id": oid(*id), "conversation_id": oid(conversation), "sender_id": 10_i64,
            "text": text.as_str(), "created_at": bson::DateTime::from_millis(1_000) }
        })
        .collect();
    server.script(move |command| match command_name(command) {
        // Newest first, and the cursor stays open for more.
        "find" => {
            let mut reply = cursor_reply(command, documents.clone());
            let cursor = reply.get_document_mut("cursor").unwrap();
            cursor.insert("id", 77_i64);
            Reply::Document(reply)
        }
        "getMore" => Reply::Never,
        _ => Reply::Default,
    });
    let expected = |id: ObjectId| Message {
        id,
        conversation_id: conversation,
        sender_id: 10,
        text: text.clone(),
        created_at: Millis(1_000),
        seq: 0,
        client_id: None,
        viewed_by: None,
        viewed_at: None,
    };
    let two = serde_json::to_vec(&[expected(ids[1]), expected(ids[2])])
        .unwrap()
        .len();

    let page = store
        .messages(HistoryQuery {
            conversation_id: conversation,
            before: None,
            after: None,
            limit: 100,
            max_bytes: two,
        })
        .await
        .unwrap();

    assert_eq!(page.messages, [expected(ids[1]), expected(ids[2])]);
    assert!(page.truncated);
    assert!(server.commands_named("getMore").is_empty());
    let find = &server.commands_named("find")[0];
    assert_eq!(find.get("limit").and_then(Bson::as_i64), Some(100));
    assert_eq!(
        find.get("batchSize"),
        Some(&Bson::Int32((two / Message::MIN_JSON_LEN + 1) as i32)),
        "no more documents per batch than the budget can hold"
    );
}

#[tokio::test]
async fn history_after_reads_oldest_first_between_both_cursors() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let (after, before) = (ObjectId::new(), ObjectId::new());

    let page = store
        .messages(HistoryQuery {
            conversation_id: conversation,
            before: Some(before),
            after: Some(after),
            limit: 50,
            max_bytes: usize::MAX,
        })
        .await
        .unwrap()
        .messages;

    assert!(page.is_empty());
    let find = &server.commands_named("find")[0];
    assert_eq!(
        find.get_document("filter").unwrap(),
        &doc! { "conversation_id": oid(conversation), "_id": { "$gt": oid(after), "$lt": oid(before) } }
    );
    assert_eq!(find.get_document("sort").unwrap(), &doc! { "_id": 1 });
    assert_eq!(find.get("limit").and_then(Bson::as_i64), Some(50));
}

#[tokio::test]
async fn conversations_are_filtered_sorted_and_limited() {
    let (server, store) = connected().await;

    let (with_messages, empty) = (ObjectId::new(), ObjectId::new());
    server.script(move |command| match command_name(command) {
        "aggregate" => Reply::Document(cursor_reply(
            command,
            vec![
                doc! { "_id": oid(with_messages), "lesson_id": 7_i64, "mentor_id": 10_i64,
                "student_id": 25_i64, "created_at": bson::DateTime::from_millis(1_000),
                "last_message": [{ "seq": 12_i64 }] },
                doc! { "_id": oid(empty), "lesson_id": 8_i64, "mentor_id": 10_i64,
                "student_id": 25_i64, "created_at": bson::DateTime::from_millis(2_000),
                "last_message": [] },
            ],
        )),
        _ => Reply::Default,
    });

    let filter = ConversationFilter {
        mentor_id: Some(10),
        student_id: None,
        participant: Some(10),
        limit: 20,
    };
    let listed = store.conversations(filter).await.unwrap();

    let last_seqs: Vec<(ObjectId, u64)> = listed.iter().map(|c| (c.id, c.last_seq)).collect();
    assert_eq!(last_seqs, [(with_messages, 12), (empty, 0)]);
    assert_eq!(names(&server), ["aggregate"], "one round trip for the list");
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(aggregate.get_str("aggregate").unwrap(), "conversations");
    assert_eq!(
        pipeline(aggregate),
        [
            doc! { "$match": {
                "mentor_id": Bson::Int64(10),
                "$or": [{ "mentor_id": Bson::Int64(10) }, { "student_id": Bson::Int64(10) }],
            } },
            doc! { "$sort": { "created_at": 1, "_id": 1 } },
            doc! { "$limit": 20_i64 },
            last_seq_lookup(),
        ]
    );
}

/// The `$lookup` every conversation read ends with: per conversation, one
/// seek at the end of its range of the seq index.
fn last_seq_lookup() -> Document {
    doc! { "$lookup": {
        "from": "messages",
        "let": { "conversation": "$_id" },
        "pipeline": [
            { "$match": {
                "$expr": { "$eq": ["$conversation_id", "$$conversation"] },
                "seq": { "$type": "number" },
            } },
            { "$sort": { "seq": -1 } },
            { "$limit": 1 },
            { "$project": { "_id": 0, "seq": 1 } },
        ],
        "as": "last_message",
    } }
}

#[tokio::test]
async fn a_conversation_is_read_with_its_last_seq() {
    let (server, store) = connected().await;
    let id = ObjectId::new();
    server.script(move |command| match command_name(command) {
        "aggregate" => Reply::Document(cursor_reply(
            command,
            vec![
                doc! { "_id": oid(id), "lesson_id": 7_i64, "mentor_id": 10_i64,
                "student_id": 25_i64, "created_at": bson::DateTime::from_millis(1_000),
                "last_message": [{ "seq": Bson::Int32(3) }] },
            ],
        )),
        _ => Reply::Default,
    });

    let conversation = store.conversation(id).await.unwrap().unwrap();

    assert_eq!(conversation.last_seq, 3);
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(
        pipeline(aggregate),
        [
            doc! { "$match": { "_id": oid(id) } },
            doc! { "$limit": 1 },
            last_seq_lookup()
        ]
    );
}

#[tokio::test]
async fn message_at_seq_is_one_indexed_find() {
    let (server, store) = connected().await;
    let (conversation, found) = (ObjectId::new(), ObjectId::new());
    server.script(move |command| match command_name(command) {
        "find" => Reply::Document(cursor_reply(command, vec![doc! { "_id": oid(found) }])),
        _ => Reply::Default,
    });

    assert_eq!(
        store.message_at_seq(conversation, 5).await.unwrap(),
        Some(found)
    );
    let find = &server.commands_named("find")[0];
    assert_eq!(find.get_str("find").unwrap(), "messages");
    assert_eq!(
        find.get_document("filter").unwrap(),
        &doc! {
            "conversation_id": oid(conversation),
            "seq": { "$eq": Bson::Int64(5), "$type": "number" },
        }
    );
    assert_eq!(find.get_document("projection").unwrap(), &doc! { "_id": 1 });

    server.script(|_| Reply::Default);
    assert_eq!(store.message_at_seq(conversation, 6).await.unwrap(), None);
}

#[tokio::test]
async fn get_or_create_upserts_on_the_natural_key_and_reads_back_after_a_lost_race() {
    let (server, store) = connected().await;
    let winner = ObjectId::new();
    let finds = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&finds);
    server.script(move |command| match command_name(command) {
        "aggregate" => {
            let mut finds = counted.lock().unwrap();
            *finds += 1;
            // Absent at first; after the lost race the winner's document.
            let found = if *finds == 1 {
                vec![]
            } else {
                vec![doc! {
                    "_id": oid(winner), "lesson_id": 7_i64, "mentor_id": 10_i64, "student_id": 25_i64,
                    "created_at": bson::DateTime::from_millis(9_000), "last_message": [{ "seq": 2_i64 }],
                }]
            };
            Reply::Document(cursor_reply(command, found))
        }
        "findAndModify" => Reply::Document(doc! {
            "ok": 0.0, "code": 11000, "codeName": "DuplicateKey",
            "errmsg": "E11000 duplicate key error collection: chat.conversations index: lesson_id_1_mentor_id_1_student_id_1",
        }),
        _ => Reply::Default,
    });
    let key = ConversationKey {
        lesson_id: 7,
        mentor_id: 10,
        student_id: 25,
    };

    let conversation = store.conversation_for(key, Millis(5_000)).await.unwrap();

    assert_eq!(conversation.id, winner);
    assert_eq!(conversation.created_at, Millis(9_000));
    assert_eq!(conversation.last_seq, 2);
    let natural_key = doc! {
        "lesson_id": Bson::Int64(7), "mentor_id": Bson::Int64(10), "student_id": Bson::Int64(25),
    };
    let upsert = &server.commands_named("findAndModify")[0];
    assert_eq!(upsert.get_str("findAndModify").unwrap(), "conversations");
    assert_eq!(upsert.get_document("query").unwrap(), &natural_key);
    assert_eq!(upsert.get("upsert"), Some(&Bson::Boolean(true)));
    assert_eq!(upsert.get("new"), Some(&Bson::Boolean(true)));
    let on_insert = upsert
        .get_document("update")
        .unwrap()
        .get_document("$setOnInsert")
        .unwrap();
    assert!(matches!(on_insert.get("_id"), Some(Bson::ObjectId(_))));
    assert_eq!(
        on_insert.get("created_at"),
        Some(&Bson::DateTime(bson::DateTime::from_millis(5_000)))
    );
    assert_eq!(
        upsert
            .get_document("writeConcern")
            .unwrap()
            .get_str("w")
            .unwrap(),
        "majority"
    );
    let reads = server.commands_named("aggregate");
    assert_eq!(reads.len(), 2);
    assert_eq!(pipeline(&reads[1])[0], doc! { "$match": natural_key });
}

#[tokio::test]
async fn ping_runs_the_ping_command() {
    let (server, store) = connected().await;
    store.ping().await.unwrap();
    let ping = &server.commands_named("ping")[0];
    assert_eq!(ping.get_i32("ping").unwrap(), 1);
    assert_eq!(store.kind(), "mongodb");
}

#[tokio::test]
async fn a_server_that_never_answers_a_hello_makes_connect_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds connections, never answering.
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let settings = MongoSettings {
        uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        database: "chat".into(),
        timeout: Duration::from_millis(300),
        ..MongoSettings::from(&Config::defaults())
    };

    let result = MongoStore::connect(&settings).await;

    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn a_server_that_stops_answering_makes_a_read_unavailable() {
    let server = WireServer::start().await;
    let mut settings = settings(&server);
    settings.timeout = Duration::from_millis(300);
    let store = MongoStore::connect(&settings).await.unwrap();
    server.script(|command| match command_name(command) {
        "find" => Reply::Never,
        _ => Reply::Default,
    });

    let query = HistoryQuery {
        conversation_id: ObjectId::new(),
        before: None,
        after: None,
        limit: 10,
        max_bytes: usize::MAX,
    };
    let result = store.messages(query).await;

    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_conversation_this_call_creates_has_no_seq_and_needs_no_second_read() {
    let (server, store) = connected().await;
    server.script(|command| match command_name(command) {
        // The upsert inserted: the document it returns has the call's own id.
        "findAndModify" => {
            let on_insert = command
                .get_document("update")
                .unwrap()
                .get_document("$setOnInsert")
                .unwrap();
            Reply::Document(doc! {
                "lastErrorObject": { "n": 1, "updatedExisting": false },
                "value": {
                    "_id": on_insert.get_object_id("_id").unwrap(),
                    "lesson_id": 7_i64, "mentor_id": 10_i64, "student_id": 25_i64,
                    "created_at": on_insert.get_datetime("created_at").unwrap().to_owned(),
                },
                "ok": 1.0,
            })
        }
        _ => Reply::Default,
    });
    let key = ConversationKey {
        lesson_id: 7,
        mentor_id: 10,
        student_id: 25,
    };

    let conversation = store.conversation_for(key, Millis(5_000)).await.unwrap();

    assert_eq!(conversation.last_seq, 0);
    assert_eq!(conversation.created_at, Millis(5_000));
    assert_eq!(names(&server), ["aggregate", "findAndModify"]);
}

/// Scripts the legacy numbering: the scan returns `unnumbered` (as
/// (conversation, message) in the server's sort order) and the highest
/// seq read returns `highest`.
fn script_numbering(
    server: &WireServer,
    unnumbered: Vec<(ObjectId, ObjectId)>,
    highest: Vec<(ObjectId, i64)>,
) {
    server.script(move |command| {
        if is_numbering_scan(command) {
            let documents = unnumbered
                .iter()
                .map(|(conversation, id)| {
                    doc! { "_id": oid(*id), "conversation_id": oid(*conversation),
                    "at": bson::DateTime::from_millis(1_000) }
                })
                .collect();
            Reply::Document(cursor_reply(command, documents))
        } else if is_highest_seq_read(command) {
            let asked: Vec<Bson> = pipeline(command)[0]
                .get_document("$match")
                .unwrap()
                .get_document("conversation_id")
                .unwrap()
                .get_array("$in")
                .unwrap()
                .clone();
            let documents = highest
                .iter()
                .filter(|(conversation, _)| asked.contains(&Bson::ObjectId(oid(*conversation))))
                .map(|(conversation, seq)| doc! { "_id": oid(*conversation), "seq": *seq })
                .collect();
            Reply::Document(cursor_reply(command, documents))
        } else {
            Reply::Default
        }
    });
}

#[tokio::test]
async fn legacy_messages_are_numbered_at_connect_after_each_conversation_s_highest_seq() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = WireServer::start().await;
    let (legacy_only, partly_numbered) = (ObjectId::new(), ObjectId::new());
    let [m1, m2, m3] = [ObjectId::new(), ObjectId::new(), ObjectId::new()];
    script_numbering(
        &server,
        vec![(legacy_only, m1), (legacy_only, m2), (partly_numbered, m3)],
        vec![(partly_numbered, 5)],
    );

    MongoStore::connect(&settings(&server)).await.unwrap();

    let scan = server
        .commands()
        .into_iter()
        .find(is_numbering_scan)
        .unwrap();
    assert_eq!(scan.get("allowDiskUse"), Some(&Bson::Boolean(true)));
    assert_eq!(
        pipeline(&scan),
        [
            doc! { "$match": {
                "seq": { "$not": { "$type": "number" } },
                "conversation_id": { "$type": "objectId" },
            } },
            // The time reads use: `created_at`, else the id's.
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
    );
    let highest = server
        .commands()
        .into_iter()
        .find(is_highest_seq_read)
        .unwrap();
    assert_eq!(highest.get_str("aggregate").unwrap(), "messages");
    assert_eq!(
        pipeline(&highest),
        [
            doc! { "$match": {
                "conversation_id": { "$in": [oid(legacy_only), oid(partly_numbered)] },
                "seq": { "$type": "number" },
            } },
            doc! { "$group": { "_id": "$conversation_id", "seq": { "$max": "$seq" } } },
        ]
    );
    let updates = server.commands_named("update");
    assert_eq!(updates.len(), 1);
    let update = &updates[0];
    assert_eq!(update.get_str("update").unwrap(), "messages");
    assert_eq!(update.get("ordered"), Some(&Bson::Boolean(true)));
    assert_eq!(
        update
            .get_document("writeConcern")
            .unwrap()
            .get_str("w")
            .unwrap(),
        "majority"
    );
    assert_eq!(
        numbered(update),
        [
            (Bson::ObjectId(oid(m1)), Bson::Int64(1)),
            (Bson::ObjectId(oid(m2)), Bson::Int64(2)),
            (Bson::ObjectId(oid(m3)), Bson::Int64(6)),
        ]
    );
    let statement = update.get_array("updates").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        statement.get_document("q").unwrap(),
        &doc! { "_id": oid(m1), "seq": { "$not": { "$type": "number" } } },
        "a numbered message is never numbered again"
    );
    assert_ne!(statement.get_bool("multi"), Ok(true));
    assert_ne!(statement.get_bool("upsert"), Ok(true));
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("numbered the stored messages that had no seq"),
        "{logged}"
    );
    assert!(logged.contains("messages=3"), "{logged}");
}

#[tokio::test]
async fn numbering_goes_in_bounded_chunks_and_a_conversation_carries_across_them() {
    let server = WireServer::start().await;
    let (long, short) = (ObjectId::new(), ObjectId::new());
    let mut unnumbered: Vec<(ObjectId, ObjectId)> =
        (0..1001).map(|_| (long, ObjectId::new())).collect();
    unnumbered.push((short, ObjectId::new()));
    script_numbering(&server, unnumbered.clone(), vec![(long, 10), (short, 3)]);

    MongoStore::connect(&settings(&server)).await.unwrap();

    let updates = server.commands_named("update");
    let sizes: Vec<usize> = updates
        .iter()
        .map(|update| update.get_array("updates").unwrap().len())
        .collect();
    assert_eq!(sizes, [1000, 2]);
    let seqs: Vec<(Bson, Bson)> = updates.iter().flat_map(numbered).collect();
    let expected: Vec<(Bson, Bson)> = unnumbered
        .iter()
        .enumerate()
        .map(|(n, (conversation, id))| {
            let seq = if *conversation == long {
                11 + n as i64
            } else {
                4
            };
            (Bson::ObjectId(oid(*id)), Bson::Int64(seq))
        })
        .collect();
    assert_eq!(seqs, expected);
    // The second chunk goes on with `long` from the first, and reads the
    // highest seq of `short` only.
    let reads: Vec<Document> = server
        .commands()
        .into_iter()
        .filter(is_highest_seq_read)
        .collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(
        pipeline(&reads[1])[0],
        doc! { "$match": { "conversation_id": { "$in": [oid(short)] }, "seq": { "$type": "number" } } }
    );
}

#[tokio::test]
async fn a_duplicate_seq_while_numbering_fails_the_start_as_unavailable() {
    let server = WireServer::start().await;
    let conversation = ObjectId::new();
    let scripted = {
        let unnumbered = ObjectId::new();
        move |command: &Document| {
            if command_name(command) == "update" {
                Reply::Document(doc! {
                    "n": 0,
                    "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "E11000 duplicate key error collection: chat.messages index: conversation_id_1_seq_1" }],
                    "ok": 1.0,
                })
            } else if is_numbering_scan(command) {
                Reply::Document(cursor_reply(
                    command,
                    vec![doc! { "_id": oid(unnumbered), "conversation_id": oid(conversation) }],
                ))
            } else {
                Reply::Default
            }
        }
    };
    server.script(scripted);

    let result = MongoStore::connect(&settings(&server)).await;

    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
}

/// The batch's look-up for its reads (an `aggregate` over conversations
/// that turns them into rows of readers).
fn is_reader_rows(command: &Document) -> bool {
    command_name(command) == "aggregate"
        && command.get_str("aggregate") == Ok("conversations")
        && pipeline(command)
            .iter()
            .any(|stage| stage.contains_key("$replaceRoot"))
}

/// The inbox's aggregation (it counts the unread messages).
fn is_inbox_read(command: &Document) -> bool {
    command_name(command) == "aggregate"
        && command.get_str("aggregate") == Ok("conversations")
        && format!("{command}").contains("\"unread\"")
}

/// A `$lookup` of the newest numbered message of `$$c` below `$$below`
/// (of sender `$$u` with `by_reader`), its seq only.
fn newest_below(by_reader: bool) -> Vec<Document> {
    let mut clauses = vec![doc! { "$eq": ["$conversation_id", "$$c"] }];
    if by_reader {
        clauses.push(doc! { "$eq": ["$sender_id", "$$u"] });
    }
    clauses.push(doc! { "$lt": ["$seq", "$$below"] });
    vec![
        doc! { "$match": { "$expr": { "$and": clauses }, "seq": { "$type": "number" } } },
        doc! { "$sort": { "seq": -1 } },
        doc! { "$limit": 1 },
        doc! { "$project": { "_id": 0, "seq": 1 } },
    ]
}

/// The reader rows' aggregation for `conversations` and `rows`
/// (conversation, user, below).
fn reader_rows_pipeline(
    conversations: &[ObjectId],
    rows: &[(ObjectId, i64, i64)],
) -> Vec<Document> {
    let conversations: Vec<Bson> = conversations
        .iter()
        .map(|id| Bson::ObjectId(oid(*id)))
        .collect();
    let rows: Vec<Document> = rows
        .iter()
        .map(|(c, u, below)| doc! { "c": oid(*c), "u": Bson::Int64(*u), "below": Bson::Int64(*below) })
        .collect();
    vec![
        doc! { "$match": { "_id": { "$in": conversations } } },
        doc! { "$project": {
            "_id": 0,
            "row": { "$filter": {
                "input": { "$literal": rows },
                "as": "row",
                "cond": { "$eq": ["$$row.c", "$_id"] },
            } },
        } },
        doc! { "$unwind": "$row" },
        doc! { "$replaceRoot": { "newRoot": "$row" } },
        doc! { "$lookup": {
            "from": "messages",
            "let": { "c": "$c", "below": "$below" },
            "pipeline": newest_below(false),
            "as": "last",
        } },
        doc! { "$lookup": {
            "from": "messages",
            "let": { "c": "$c", "u": "$u", "below": "$below" },
            "pipeline": newest_below(true),
            "as": "sent",
        } },
        doc! { "$lookup": {
            "from": "read_cursors",
            "let": { "c": "$c", "u": "$u" },
            "pipeline": [
                { "$match": { "$expr": { "$and": [
                    { "$eq": ["$conversation_id", "$$c"] },
                    { "$eq": ["$user_id", "$$u"] },
                ] } } },
                { "$project": { "_id": 0, "last_read_seq": 1 } },
            ],
            "as": "cursor",
        } },
    ]
}

#[tokio::test]
async fn reads_are_one_aggregation_and_one_find_then_one_max_upsert_per_moved_cursor() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    // Stored before: seqs 1..=4; the mentor (10) sent 2 and read 3, the
    // student (25) sent 4 and never read. `seen` is the student's 4.
    let seen = ObjectId::new();
    server.script(move |command| {
        if is_last_seq_read(command) {
            Reply::Document(cursor_reply(command, vec![doc! { "seq": 4_i64 }]))
        } else if is_reader_rows(command) {
            Reply::Document(cursor_reply(
                command,
                vec![
                    doc! { "c": oid(conversation), "u": 25_i64, "below": 5_i64,
                    "last": [{ "seq": 4_i64 }], "sent": [{ "seq": 4_i64 }], "cursor": [] },
                    doc! { "c": oid(conversation), "u": 10_i64, "below": 5_i64,
                    "last": [{ "seq": 4_i64 }], "sent": [{ "seq": Bson::Int32(2) }],
                    "cursor": [{ "last_read_seq": 3_i64 }] },
                ],
            ))
        } else if command_name(command) == "find" && command.get_str("find") == Ok("messages") {
            Reply::Document(cursor_reply(
                command,
                vec![
                    doc! { "_id": oid(seen), "conversation_id": oid(conversation),
                    "sender_id": 25_i64, "seq": 4_i64 },
                ],
            ))
        } else {
            Reply::Default
        }
    });
    let posted = message(conversation, 25, "new", None);
    let read = |user_id, up_to| WriteOp::Read {
        conversation_id: conversation,
        user_id,
        up_to,
    };
    let ops = vec![
        WriteOp::Insert(posted.clone()),
        read(10, ReadUpTo::Message(seen)),
        read(10, ReadUpTo::Seq(5)),
        read(10, ReadUpTo::Seq(2)),
        read(25, ReadUpTo::Seq(6)),
        read(25, ReadUpTo::Message(posted.id)),
        // Posting moved the student's cursor to 5.
        read(25, ReadUpTo::Seq(3)),
    ];

    let outcomes = store.write_batch(ops).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Inserted { seq: 5 },
            WriteOutcome::ReadMoved { last_read_seq: 4 },
            WriteOutcome::ReadMoved { last_read_seq: 5 },
            WriteOutcome::ReadUnchanged { last_read_seq: 5 },
            WriteOutcome::SeqBeyondLast { last_seq: 5 },
            WriteOutcome::ViewTargetMissing,
            WriteOutcome::ReadUnchanged { last_read_seq: 5 },
        ]
    );
    let names = names(&server);
    assert_eq!(names[..3], ["find", "find", "insert"]);
    let mut lookups = names[3..5].to_vec();
    lookups.sort();
    assert_eq!(
        lookups,
        ["aggregate", "find"],
        "side by side, one round trip"
    );
    assert_eq!(names[5..], ["update"], "one write for every moved cursor");

    let rows = server.commands().into_iter().find(is_reader_rows).unwrap();
    assert_eq!(
        pipeline(&rows),
        reader_rows_pipeline(
            &[conversation],
            // Below the batch's first message: what was there before it.
            &[(conversation, 10, 5), (conversation, 25, 5)],
        )
    );
    let targets = server.commands_named("find").into_iter().last().unwrap();
    assert_eq!(
        targets.get_document("filter").unwrap(),
        &doc! { "_id": { "$in": [oid(seen)] } },
        "the batch's own message is known without asking"
    );
    assert_eq!(
        targets.get_document("projection").unwrap(),
        &doc! { "_id": 1, "conversation_id": 1, "sender_id": 1, "seq": 1 }
    );
    let update = &server.commands_named("update")[0];
    assert_eq!(update.get_str("update").unwrap(), "read_cursors");
    assert_eq!(update.get("ordered"), Some(&Bson::Boolean(false)));
    let concern = update.get_document("writeConcern").unwrap();
    assert_eq!(concern.get_str("w").unwrap(), "majority");
    assert_eq!(concern.get("j"), Some(&Bson::Boolean(true)));
    let statements: Vec<Document> = update
        .get_array("updates")
        .unwrap()
        .iter()
        .map(|statement| statement.as_document().unwrap().clone())
        .collect();
    assert_eq!(
        statements,
        [doc! {
            "q": { "conversation_id": oid(conversation), "user_id": Bson::Int64(10) },
            "u": { "$max": { "last_read_seq": Bson::Int64(5) } },
            "upsert": true,
            "multi": false,
        }]
    );
}

#[tokio::test]
async fn reads_that_move_nothing_write_nothing() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let read = |seq| WriteOp::Read {
        conversation_id: conversation,
        user_id: 10,
        up_to: ReadUpTo::Seq(seq),
    };

    // Nothing stored: no row comes back.
    let outcomes = store.write_batch(vec![read(0), read(1)]).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::ReadUnchanged { last_read_seq: 0 },
            WriteOutcome::SeqBeyondLast { last_seq: 0 },
        ]
    );
    assert_eq!(
        names(&server),
        ["aggregate"],
        "no find without a message to look up"
    );
    let rows = &server.commands_named("aggregate")[0];
    assert_eq!(
        pipeline(rows),
        reader_rows_pipeline(&[conversation], &[(conversation, 10, i64::MAX)]),
        "no message of the batch: no bound"
    );
}

/// A batch may hold thousands of reads: the server would match every row
/// against every conversation of one aggregation, so readers go in chunks
/// of 256 (here 600 readers: 256, 256, 88), each its own rows only.
#[tokio::test]
async fn many_readers_are_read_in_chunks() {
    let (server, store) = connected().await;
    let conversations: Vec<ObjectId> = (0..300).map(|_| ObjectId::new()).collect();
    let reads: Vec<WriteOp> = conversations
        .iter()
        .flat_map(|&conversation| {
            [10, 25].map(|user_id| WriteOp::Read {
                conversation_id: conversation,
                user_id,
                up_to: ReadUpTo::Seq(1),
            })
        })
        .collect();

    let outcomes = store.write_batch(reads).await.unwrap();

    assert_eq!(outcomes.len(), 600);
    assert!(outcomes
        .iter()
        .all(|o| *o == WriteOutcome::SeqBeyondLast { last_seq: 0 }));
    let aggregations = server.commands_named("aggregate");
    let mut sizes: Vec<usize> = aggregations
        .iter()
        .map(|command| {
            let stages = pipeline(command);
            let conversations = stages[0]
                .get_document("$match")
                .and_then(|m| m.get_document("_id"))
                .and_then(|id| id.get_array("$in"))
                .unwrap()
                .len();
            let rows = stages[1]
                .get_document("$project")
                .and_then(|p| p.get_document("row"))
                .and_then(|r| r.get_document("$filter"))
                .and_then(|f| f.get_document("input"))
                .and_then(|i| i.get_array("$literal"))
                .unwrap()
                .len();
            assert_eq!(
                rows,
                2 * conversations,
                "each chunk names its own conversations"
            );
            rows
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [88, 256, 256]);
}

/// The batch's messages are stored before its reads run: a read step the
/// database answers with something unreadable (a failure for good) rejects
/// the reads only, and the message keeps its `Inserted`, so it is still
/// acknowledged and relayed.
#[tokio::test]
async fn reads_refused_for_good_after_the_inserts_reject_the_reads_only() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    server.script(move |command| {
        if is_reader_rows(command) {
            // A row without its user.
            Reply::Document(cursor_reply(
                command,
                vec![doc! { "c": oid(conversation), "below": 1_i64, "last": [], "sent": [], "cursor": [] }],
            ))
        } else {
            Reply::Default
        }
    });

    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(message(conversation, 25, "stored", None)),
            WriteOp::Read {
                conversation_id: conversation,
                user_id: 10,
                up_to: ReadUpTo::Seq(1),
            },
        ])
        .await
        .unwrap();

    assert_eq!(outcomes[0], WriteOutcome::Inserted { seq: 1 });
    assert!(
        matches!(&outcomes[1], WriteOutcome::Rejected(reason) if reason.contains("no user")),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn a_cursor_write_refused_for_good_rejects_its_reads_and_any_other_failure_is_unavailable() {
    let (server, store) = connected().await;
    let (refused, fine) = (ObjectId::new(), ObjectId::new());
    let reply = Arc::new(Mutex::new(doc! {}));
    let scripted = Arc::clone(&reply);
    server.script(move |command| {
        if is_reader_rows(command) {
            let rows = [refused, fine]
                .map(|c| doc! { "c": oid(c), "u": 10_i64, "below": i64::MAX, "last": [{ "seq": 3_i64 }] });
            Reply::Document(cursor_reply(command, rows.to_vec()))
        } else if command_name(command) == "update" {
            Reply::Document(scripted.lock().unwrap().clone())
        } else {
            Reply::Default
        }
    });
    let read = |conversation_id, seq| WriteOp::Read {
        conversation_id,
        user_id: 10,
        up_to: ReadUpTo::Seq(seq),
    };
    let ops = vec![read(refused, 2), read(fine, 2), read(refused, 3)];

    *reply.lock().unwrap() = doc! {
        "n": 1,
        "writeErrors": [{ "index": 0, "code": 121, "errmsg": "Document failed validation" }],
        "ok": 1.0,
    };
    let outcomes = store.write_batch(ops.clone()).await.unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Rejected("Document failed validation".into()),
            WriteOutcome::ReadMoved { last_read_seq: 2 },
            WriteOutcome::Rejected("Document failed validation".into()),
        ]
    );
    let statements = server.commands_named("update")[0]
        .get_array("updates")
        .unwrap()
        .len();
    assert_eq!(statements, 2, "one per cursor, its last move");

    for failure in [
        doc! { "n": 1, "writeErrors": [{ "index": 0, "code": 10107, "errmsg": "not primary" }], "ok": 1.0 },
        doc! { "n": 2, "writeConcernError": { "code": 64, "errmsg": "waiting for replication timed out" }, "ok": 1.0 },
        doc! { "n": 1, "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "E11000 duplicate key error collection: chat.read_cursors index: conversation_id_1_user_id_1" }], "ok": 1.0 },
    ] {
        *reply.lock().unwrap() = failure.clone();
        let result = store.write_batch(ops.clone()).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{failure}: {result:?}"
        );
    }
}

#[tokio::test]
async fn a_viewed_message_s_read_comes_after_its_view_in_the_same_batch() {
    let (server, store) = connected().await;
    let conversation = ObjectId::new();
    let seen = ObjectId::new();
    server.script(move |command| {
        if command_name(command) == "find" {
            Reply::Document(cursor_reply(
                command,
                vec![
                    doc! { "_id": oid(seen), "conversation_id": oid(conversation),
                    "sender_id": 25_i64, "seq": 1_i64 },
                ],
            ))
        } else if is_reader_rows(command) {
            Reply::Document(cursor_reply(
                command,
                vec![
                    doc! { "c": oid(conversation), "u": 10_i64, "below": i64::MAX,
                    "last": [{ "seq": 1_i64 }], "sent": [], "cursor": [] },
                ],
            ))
        } else {
            Reply::Default
        }
    });
    // What the hub submits for a `viewed`.
    let ops = vec![
        WriteOp::View {
            conversation_id: conversation,
            message_id: seen,
            viewer_id: 10,
            at: Millis(1),
        },
        WriteOp::Read {
            conversation_id: conversation,
            user_id: 10,
            up_to: ReadUpTo::Message(seen),
        },
    ];

    let outcomes = store.write_batch(ops).await.unwrap();

    assert_eq!(
        outcomes,
        [
            WriteOutcome::Viewed,
            WriteOutcome::ReadMoved { last_read_seq: 1 }
        ]
    );
    let updates: Vec<String> = server
        .commands_named("update")
        .iter()
        .map(|update| update.get_str("update").unwrap().to_string())
        .collect();
    assert_eq!(updates, ["messages", "read_cursors"]);
}

/// The inbox's aggregation for `caller` over `ids`; `mentors_any`: the
/// caller is the mentor of one of them.
fn inbox_pipeline(caller: i64, ids: &[ObjectId], mentors_any: bool) -> Vec<Document> {
    let ids: Vec<Bson> = ids.iter().map(|id| Bson::ObjectId(oid(*id))).collect();
    let me = Bson::Int64(caller);
    let matching = |more: Vec<Document>| {
        let mut clauses = vec![doc! { "$eq": ["$conversation_id", "$$c"] }];
        clauses.extend(more);
        doc! { "$match": { "$expr": { "$and": clauses }, "seq": { "$type": "number" } } }
    };
    let newest = |sender: Bson| {
        vec![
            matching(vec![doc! { "$eq": ["$sender_id", sender] }]),
            doc! { "$sort": { "seq": -1 } },
            doc! { "$limit": 1 },
            doc! { "$project": { "_id": 0, "seq": 1 } },
        ]
    };
    let cursor = |user: Bson| {
        vec![
            doc! { "$match": { "$expr": { "$and": [
                { "$eq": ["$conversation_id", "$$c"] },
                { "$eq": ["$user_id", user] },
            ] } } },
            doc! { "$project": { "_id": 0, "last_read_seq": 1 } },
        ]
    };
    let first = |path: &str| doc! { "$ifNull": [{ "$arrayElemAt": [path, 0] }, 0] };
    let mut fields = doc! {
        "mentor_id": 1,
        "student_id": 1,
        "other": { "$cond": [{ "$eq": ["$mentor_id", me.clone()] }, "$student_id", "$mentor_id"] },
    };
    if mentors_any {
        fields.insert(
            "waiting_on",
            doc! { "$cond": [{ "$eq": ["$mentor_id", me.clone()] }, "$student_id", Bson::Int64(i64::MIN)] },
        );
    }
    let mut stages = vec![
        doc! { "$match": { "_id": { "$in": ids } } },
        doc! { "$project": fields },
        doc! { "$lookup": {
            "from": "messages",
            "let": { "c": "$_id" },
            "pipeline": [matching(Vec::new()), { "$sort": { "seq": -1 } }, { "$limit": 1 }],
            "as": "last",
        } },
        doc! { "$lookup": { "from": "read_cursors", "let": { "c": "$_id" },
        "pipeline": cursor(me.clone()), "as": "my_read" } },
        doc! { "$lookup": { "from": "read_cursors", "let": { "c": "$_id", "u": "$other" },
        "pipeline": cursor(Bson::String("$$u".into())), "as": "other_read" } },
        doc! { "$lookup": { "from": "messages", "let": { "c": "$_id" },
        "pipeline": newest(me), "as": "my_sent" } },
        doc! { "$lookup": { "from": "messages", "let": { "c": "$_id", "u": "$other" },
        "pipeline": newest(Bson::String("$$u".into())), "as": "other_sent" } },
        doc! { "$addFields": {
            "sent_seq": first("$my_sent.seq"),
            "cursor": { "$max": [first("$my_sent.seq"), first("$my_read.last_read_seq")] },
        } },
        doc! { "$lookup": {
            "from": "messages",
            "let": { "c": "$_id", "u": "$other", "after": "$cursor" },
            "pipeline": [
                matching(vec![
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
            "from": "messages",
            "let": { "c": "$_id", "u": "$waiting_on", "after": "$sent_seq" },
            "pipeline": [
                matching(vec![
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

fn conversation_with(student_id: i64, last_seq: u64) -> Conversation {
    Conversation {
        id: ObjectId::new(),
        lesson_id: 7,
        mentor_id: 10,
        student_id,
        created_at: Millis(1_000),
        last_seq,
    }
}

#[tokio::test]
async fn the_inbox_is_one_aggregation_whatever_the_count() {
    let (server, store) = connected().await;
    let (waiting, answered, empty) = (
        conversation_with(25, 0),
        conversation_with(26, 0),
        // Listed with a stale last seq; no row comes back for it.
        conversation_with(27, 9),
    );
    let newest = ObjectId::new();
    let (a, b) = (waiting.id, answered.id);
    server.script(move |command| {
        if is_inbox_read(command) {
            // In the server's order, not the list's.
            Reply::Document(cursor_reply(
                command,
                vec![
                    doc! { "_id": oid(b), "last": [{ "_id": oid(ObjectId::new()), "conversation_id": oid(b),
                               "sender_id": 10_i64, "text": "answer", "created_at": bson::DateTime::from_millis(5_000),
                               "seq": 2_i64 }],
                           "my_read": [], "my_sent": [{ "seq": 2_i64 }], "other_read": [{ "last_read_seq": 2_i64 }],
                           "other_sent": [{ "seq": 1_i64 }], "unread": [], "waiting": [] },
                    doc! { "_id": oid(a), "last": [{ "_id": oid(newest), "conversation_id": oid(a),
                               "sender_id": 25_i64, "text": "still there?", "created_at": bson::DateTime::from_millis(4_000),
                               "seq": 5_i64 }],
                           "my_read": [{ "last_read_seq": 3_i64 }], "my_sent": [{ "seq": 2_i64 }],
                           "other_read": [], "other_sent": [{ "seq": 5_i64 }], "unread": [{ "n": 2 }],
                           "waiting": [{ "_id": oid(ObjectId::new()), "created_at": bson::DateTime::from_millis(3_000) }] },
                ],
            ))
        } else {
            Reply::Default
        }
    });
    let listed = vec![waiting.clone(), answered.clone(), empty.clone()];

    let inbox = store.inbox(10, listed).await.unwrap();

    let summary: Vec<(ObjectId, u64, u64, u64, u64, Option<Millis>)> = inbox
        .iter()
        .map(|entry: &InboxEntry| {
            (
                entry.conversation.id,
                entry.conversation.last_seq,
                entry.unread_count,
                entry.last_read_seq,
                entry.other_last_read_seq,
                entry.waiting_since,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (waiting.id, 5, 2, 3, 5, Some(Millis(3_000))),
            // The mentor's own newest message is their cursor.
            (answered.id, 2, 0, 2, 2, None),
            (empty.id, 0, 0, 0, 0, None),
        ]
    );
    assert_eq!(inbox[0].last_message.as_ref().unwrap().id, newest);
    assert_eq!(inbox[0].last_message.as_ref().unwrap().seq, 5);
    assert_eq!(inbox[2].last_message, None);
    assert_eq!(
        inbox[0].conversation.student_id, 25,
        "the listed conversation"
    );
    assert_eq!(names(&server), ["aggregate"]);
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(aggregate.get_str("aggregate").unwrap(), "conversations");
    assert_eq!(
        pipeline(aggregate),
        inbox_pipeline(10, &[waiting.id, answered.id, empty.id], true)
    );

    // Five hundred conversations: still one aggregation.
    server.forget_commands();
    let many: Vec<Conversation> = (0..500).map(|n| conversation_with(100 + n, 0)).collect();
    let inbox = store.inbox(10, many).await.unwrap();
    assert_eq!(inbox.len(), 500);
    assert_eq!(names(&server), ["aggregate"]);

    server.forget_commands();
    assert!(store.inbox(10, Vec::new()).await.unwrap().is_empty());
    assert!(server.commands().is_empty(), "an empty list asks nothing");
}

#[tokio::test]
async fn a_student_s_inbox_has_no_waiting_time() {
    let (server, store) = connected().await;
    let conversation = conversation_with(25, 0);
    let id = conversation.id;
    server.script(move |command| {
        if is_inbox_read(command) {
            // Even were one found, it is the mentor's alone.
            Reply::Document(cursor_reply(
                command,
                vec![doc! { "_id": oid(id), "last": [], "unread": [{ "n": Bson::Int64(1) }],
                            "waiting": [{ "_id": oid(ObjectId::new()), "created_at": bson::DateTime::from_millis(3_000) }] }],
            ))
        } else {
            Reply::Default
        }
    });

    let inbox = store.inbox(25, vec![conversation]).await.unwrap();

    assert_eq!(inbox[0].waiting_since, None);
    assert_eq!(inbox[0].unread_count, 1);
    let aggregate = &server.commands_named("aggregate")[0];
    assert_eq!(pipeline(aggregate), inbox_pipeline(25, &[id], false));
}
