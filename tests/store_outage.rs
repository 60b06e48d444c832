//! The store failing under a running service: another process holds
//! SQLite's write lock, so every commit fails with SQLITE_BUSY, and the
//! journal is off (`CHAT_SQLITE_JOURNAL_MAX=0`), so every batch needs a
//! commit before its ack (with the journal on, the lock only delays merges
//! until the journal is full: tests/sqlite_store.rs). Nothing is relayed
//! or acked before it is stored (CONTRACT §6), the bounded queue refuses
//! with `overloaded`, `/readyz` turns 503, and all of it recovers by itself
//! when the lock is released: the held messages are relayed then.

mod common;

use std::time::Duration;

use common::django::DjangoStandin;
use common::server::Server;
use common::ws::{Client, Next};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_refuses_beyond_the_queue_and_recovers() {
    let django = DjangoStandin::start().await;
    django.add_user("tok-m10", 10, true);
    django.add_user("tok-s25", 25, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(
        &django.base_url(),
        &[
            ("CHAT_WRITER_QUEUE", "4"),
            ("CHAT_WRITER_WINDOW_MS", "0"),
            ("CHAT_SQLITE_JOURNAL_MAX", "0"),
        ],
    );
    let (mut student, mut mentor) = common::ws::join_pair(
        &server.ws_url("token=tok-s25&user_id=25&lesson_id=100"),
        &server.ws_url("token=tok-m10&user_id=10&lesson_id=100&student_id=25"),
    )
    .await;

    // Take SQLite's write lock, as a stuck backup or another writer would.
    let lock = rusqlite::Connection::open(server.data_dir().join("chat.sqlite3")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    for i in 0..10 {
        student
            .send(json!({"type": "message", "text": format!("m{i}"), "client_id": format!("c{i}")}))
            .await;
    }
    let mut refused = Vec::new();
    while refused.len() < 6 {
        match student.next_within(Duration::from_secs(10)).await {
            Next::Event(e) if e["type"] == "error" => {
                assert_eq!(e["code"], "overloaded", "{e}");
                refused.push(e["client_id"].as_str().unwrap().to_string());
            }
            other => panic!("only refusals while the store cannot commit: {other:?}"),
        }
    }
    assert_eq!(
        refused,
        ["c4", "c5", "c6", "c7", "c8", "c9"],
        "the queue holds 4 writes"
    );
    // Stored, then relayed: the 4 held ones reach nobody yet.
    mentor.expect_silence().await;
    student.expect_silence().await;

    let mut unready = false;
    for _ in 0..50 {
        let ready = server.get("/readyz", None, None).await;
        if ready.status == 503 {
            assert_eq!(ready.json["status"], "unavailable");
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready, "/readyz reports the failing store");

    // The store comes back: the held writes commit and are acked, by themselves.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let held = ["c0", "c1", "c2", "c3"];
    let mut acked = Vec::new();
    while acked.len() < 4 {
        match student.next_within(Duration::from_secs(15)).await {
            Next::Event(e) if e["type"] == "ack" => {
                acked.push(e["client_id"].as_str().unwrap().to_string())
            }
            Next::Event(e) if e["type"] == "message" => {}
            other => panic!("expected echoes and acks after recovery, got {other:?}"),
        }
    }
    assert_eq!(acked, held);
    for client_id in held {
        assert_eq!(
            mentor.expect("message").await["client_id"],
            client_id,
            "relayed once stored"
        );
    }
    let delivered = held;
    let mut ready = false;
    for _ in 0..100 {
        if server.get("/readyz", None, None).await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz recovers");

    // Accepted again, and history holds exactly what was acked.
    student
        .send(json!({"type": "message", "text": "after", "client_id": "after"}))
        .await;
    let event = student.expect("message").await;
    assert_eq!(student.expect("ack").await["client_id"], "after");
    let conversation = event["conversation_id"].as_str().unwrap();
    let history = server
        .get(
            &format!("/messages?conversation_id={conversation}"),
            Some("tok-s25"),
            Some(25),
        )
        .await;
    let stored: Vec<&str> = history
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_str().unwrap())
        .collect();
    let mut expected = delivered.to_vec();
    expected.push("after");
    assert_eq!(stored, expected);
}

/// CONTRACT §3 row 11: a first connection needs a new conversation, which
/// needs a write; while the store cannot write, that is 503. A conversation
/// that already exists is read, not written, so it still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_while_the_store_cannot_write_is_503() {
    let django = DjangoStandin::start().await;
    django.add_user("tok-s25", 25, false);
    django.add_user("tok-s26", 26, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(&django.base_url(), &[]);
    let existing = server.ws_url("token=tok-s25&user_id=25&lesson_id=100");
    Client::connect(&existing).await.close().await;

    let lock = rusqlite::Connection::open(server.data_dir().join("chat.sqlite3")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let new = server.ws_url("token=tok-s26&user_id=26&lesson_id=100");
    assert_eq!(Client::refused_status(&new).await, 503);
    let mut student = Client::connect(&existing).await;
    assert_eq!(student.expect("presence").await["user_id"], 10);

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    Client::connect(&new).await;
}

/// The acks of a long store outage arrive as one burst: the sender is paced
/// by backpressure while the store is down (its reader stops at a bounded
/// number of answers owed) and gets every ack when it returns — never 1013.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_burst_after_an_outage_never_closes_the_sender() {
    let django = DjangoStandin::start().await;
    django.add_user("tok-s25", 25, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(&django.base_url(), &[("CHAT_SQLITE_JOURNAL_MAX", "0")]);
    let mut student =
        Client::connect(&server.ws_url("token=tok-s25&user_id=25&lesson_id=100")).await;
    student.expect("presence").await;

    let lock = rusqlite::Connection::open(server.data_dir().join("chat.sqlite3")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    const PENDING: usize = 1_600;
    let (mut sink, mut stream) = futures_util::StreamExt::split(student.ws);
    let sender = tokio::spawn(async move {
        use futures_util::SinkExt;
        for i in 0..PENDING {
            let event =
                json!({"type": "message", "text": format!("p{i}"), "client_id": format!("p{i}")});
            sink.feed(tokio_tungstenite::tungstenite::Message::text(
                event.to_string(),
            ))
            .await
            .unwrap();
        }
        sink.flush().await.unwrap();
        sink
    });
    // Hold the lock for a while: echoes flow, acks wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    lock.execute_batch("ROLLBACK").unwrap();

    let mut acks = 0;
    while acks < PENDING {
        let next = tokio::time::timeout(
            Duration::from_secs(15),
            futures_util::StreamExt::next(&mut stream),
        )
        .await;
        match next {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                let event: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                match event["type"].as_str() {
                    Some("ack") => acks += 1,
                    Some("message") => {}
                    _ => panic!("after {acks} acks: {event}"),
                }
            }
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => {}
            other => panic!("after {acks} acks: {other:?}"),
        }
    }
    let _sink = sender.await.unwrap();
    let closes =
        server.get("/readyz", None, None).await.json["detail"]["closed_connections"].clone();
    assert_eq!(closes["slow_consumer"], 0, "{closes}");
}
