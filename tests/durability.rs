//! Nothing acknowledged is lost: across `kill -9`, across SIGTERM, and two
//! first connections at once make one conversation.

mod common;

use std::collections::HashSet;

use common::django::{DjangoStandin, PAIR_MENTOR as MENTOR, PAIR_STUDENT as STUDENT};
use common::server::Server;
use common::ws::{Client, Next};
use serde_json::json;

/// Sends `count` messages and returns the ids acknowledged so far, while
/// more messages may still be in flight.
async fn send_and_collect_acks(client: &mut Client, count: usize) -> (String, HashSet<String>) {
    for i in 0..count {
        client
            .send(json!({"type": "message", "text": format!("m{i}"), "client_id": format!("c{i}")}))
            .await;
    }
    let mut acked = HashSet::new();
    let mut conversation = String::new();
    while acked.len() < count {
        match client.next_within(common::ws::WAIT).await {
            Next::Event(event) if event["type"] == "ack" => {
                acked.insert(event["id"].as_str().unwrap().to_string());
            }
            Next::Event(event) if event["type"] == "message" => {
                conversation = event["conversation_id"].as_str().unwrap().to_string();
            }
            Next::Event(_) => {}
            other => panic!("after {} acks: {other:?}", acked.len()),
        }
    }
    (conversation, acked)
}

async fn stored_ids(server: &Server, conversation: &str) -> HashSet<String> {
    let reply = server
        .get(
            &format!("/messages?conversation_id={conversation}"),
            Some("tok-s25"),
            Some(25),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    reply
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_acked_message_survives_kill_9() {
    let django = DjangoStandin::with_pair().await;
    let mut server = Server::start(&django.base_url(), &[]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, acked) = send_and_collect_acks(&mut student, 200).await;
    // More in flight at the moment of the crash: acked or not, never corrupt.
    for i in 200..300 {
        student
            .send(json!({"type": "message", "text": format!("m{i}"), "client_id": format!("c{i}")}))
            .await;
    }
    server.crash_and_restart();
    let stored = stored_ids(&server, &conversation).await;
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acked but lost after kill -9: {lost:?}");
}

#[tokio::test]
async fn resends_after_a_restart_are_recognised() {
    let django = DjangoStandin::with_pair().await;
    let mut server = Server::start(&django.base_url(), &[]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, acked) = send_and_collect_acks(&mut student, 3).await;
    server.crash_and_restart();

    // The client resends with the same client_ids, as it must after a reconnect.
    let (mut student, mut mentor) =
        common::ws::join_pair(&server.ws_url(STUDENT), &server.ws_url(MENTOR)).await;
    let (_, acked_again) = send_and_collect_acks(&mut student, 3).await;
    assert_eq!(acked_again, acked, "each resend is acked with its first id");
    mentor.expect_silence().await;
    assert_eq!(stored_ids(&server, &conversation).await, acked);
}

#[tokio::test]
async fn sigterm_closes_with_1001_flushes_and_exits_0() {
    let django = DjangoStandin::with_pair().await;
    // NO_COLOR empty counts as unset: the logs go to a pipe, which alone
    // must turn colour codes off.
    let mut server = Server::start(&django.base_url(), &[("NO_COLOR", "")]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, acked) = send_and_collect_acks(&mut student, 50).await;
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(student.expect_close().await, Some(1001));
    let logs = server.logs.lock().clone();
    let stopped = logs
        .iter()
        .find(|l| l.contains("stopped"))
        .expect("shutdown was orderly");
    // What was stored over the process's life, not only in the last flush.
    assert!(stopped.contains("written_total=50"), "{stopped}");
    assert!(stopped.contains("final_flush_written="), "{stopped}");
    assert!(
        logs.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in a piped log: {logs:?}"
    );

    // Same data directory, new process.
    let mut restarted = Server::start(
        &django.base_url(),
        &[("CHAT_DATA_DIR", server.data_dir().to_str().unwrap())],
    );
    let stored = stored_ids(&restarted, &conversation).await;
    assert!(acked.is_subset(&stored));
    restarted.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_connections_at_once_make_one_conversation() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let connects = (0..10).map(|i| {
        let url = server.ws_url(if i % 2 == 0 { STUDENT } else { MENTOR });
        tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            client
                .send(json!({"type": "typing", "is_typing": true}))
                .await;
            client
                .send(json!({"type": "message", "text": "race"}))
                .await;
            loop {
                let event = client.event().await;
                if event["type"] == "message" {
                    return event["conversation_id"].as_str().unwrap().to_string();
                }
            }
        })
    });
    let mut conversations = HashSet::new();
    for connect in connects.collect::<Vec<_>>() {
        conversations.insert(connect.await.unwrap());
    }
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    let listed = server
        .get("/conversations", Some("tok-m10"), Some(10))
        .await;
    assert_eq!(listed.json.as_array().unwrap().len(), 1);
}
