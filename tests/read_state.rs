//! CONTRACT §6 "Read state" and "Mentor inbox", end to end with the real
//! binary: `read` and `viewed` move a cursor that never goes back, every
//! connection of the room hears of a move, posting moves the sender's own,
//! `bad_seq`; `/conversations` carries the read state and sorts and filters
//! by it, across reconnects and a restart.

mod common;

use std::time::Duration;

use common::django::DjangoStandin;
use common::server::Server;
use common::ws::{Client, Next};
use serde_json::{json, Value};

const MENTOR: i64 = 10;

fn student_url(student: i64, lesson: i64) -> String {
    format!("token=tok-s{student}&user_id={student}&lesson_id={lesson}")
}

fn mentor_url(student: i64, lesson: i64) -> String {
    format!("token=tok-m10&user_id=10&lesson_id={lesson}&student_id={student}")
}

async fn django() -> DjangoStandin {
    let django = DjangoStandin::start().await;
    django.add_user("tok-m10", MENTOR, true);
    for student in [25, 26, 27] {
        django.add_user(&format!("tok-s{student}"), student, false);
    }
    django.add_lesson(100, 1, MENTOR, None);
    django.add_lesson(101, 1, MENTOR, None);
    django
}

/// The next event that is not presence or typing.
async fn next_of_interest(client: &mut Client) -> Value {
    loop {
        let event = client.event().await;
        if event["type"] != "presence" && event["type"] != "typing" {
            return event;
        }
    }
}

/// Connects and waits until the session joined (its first presence).
async fn connect(server: &Server, query: &str) -> Client {
    let mut client = Client::connect(&server.ws_url(query)).await;
    client.expect("presence").await;
    client
}

/// Sends messages and waits for their acks; returns the acked events.
async fn post(client: &mut Client, texts: &[&str]) -> Vec<Value> {
    for text in texts {
        client.send(json!({"type":"message","text":text})).await;
    }
    let mut acks = Vec::new();
    while acks.len() < texts.len() {
        let event = next_of_interest(client).await;
        if event["type"] == "ack" {
            acks.push(event);
        }
    }
    acks
}

/// Skips events until one of `kind` arrives.
async fn until(client: &mut Client, kind: &str) -> Value {
    loop {
        let event = next_of_interest(client).await;
        if event["type"] == kind {
            return event;
        }
    }
}

async fn inbox(server: &Server, user: i64, query: &str) -> Vec<Value> {
    let token = if user == MENTOR {
        "tok-m10".to_string()
    } else {
        format!("tok-s{user}")
    };
    let reply = server
        .get(&format!("/conversations?{query}"), Some(&token), Some(user))
        .await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.json);
    reply.json.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn read_moves_forward_only_and_every_connection_hears_it() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    let mut student = connect(&server, &student_url(25, 100)).await;
    let mut tab1 = connect(&server, &mentor_url(25, 100)).await;
    let mut tab2 = connect(&server, &mentor_url(25, 100)).await;
    let acks = post(&mut student, &["a", "b", "c"]).await;
    let conversation = until(&mut tab1, "message").await["conversation_id"].clone();
    assert_eq!(acks[2]["seq"], 3);

    tab1.send(json!({"type":"read","seq":2})).await;
    let expected =
        json!({"type":"read","conversation_id":conversation,"user_id":10,"last_read_seq":2});
    assert_eq!(until(&mut tab1, "read").await, expected);
    assert_eq!(
        until(&mut tab2, "read").await,
        expected,
        "the reader's other tab"
    );
    assert_eq!(
        until(&mut student, "read").await,
        expected,
        "the other participant"
    );

    // Lower or equal: accepted, nothing moves, nothing is relayed.
    tab1.send(json!({"type":"read","seq":1})).await;
    tab1.send(json!({"type":"read","seq":2})).await;
    // Beyond the last seq: bad_seq, to the sender only.
    tab1.send(json!({"type":"read","seq":4})).await;
    let error = until(&mut tab1, "error").await;
    assert_eq!(error["code"], "bad_seq", "{error}");
    tab1.send(json!({"type":"read","seq":"3"})).await;
    assert_eq!(until(&mut tab1, "error").await["code"], "bad_seq");
    student.expect_silence().await;
    let mentor_view = inbox(&server, MENTOR, "").await;
    assert_eq!(mentor_view[0]["last_read_seq"], 2);
    assert_eq!(mentor_view[0]["unread_count"], 1);
    let student_view = inbox(&server, 25, "").await;
    assert_eq!(student_view[0]["other_last_read_seq"], 2, "for seen ticks");
    assert_eq!(student_view[0]["unread_count"], 0);

    // `viewed` moves it too.
    let third = acks[2]["id"].clone();
    tab2.send(json!({"type":"viewed","message_id":third})).await;
    let viewed = until(&mut student, "viewed").await;
    assert_eq!(viewed["message_id"], third);
    let moved =
        json!({"type":"read","conversation_id":conversation,"user_id":10,"last_read_seq":3});
    assert_eq!(until(&mut student, "read").await, moved);
    assert_eq!(until(&mut tab1, "read").await, moved);
    assert_eq!(until(&mut tab2, "read").await, moved);
    assert_eq!(inbox(&server, MENTOR, "").await[0]["unread_count"], 0);
}

#[tokio::test]
async fn posting_moves_the_senders_cursor_without_a_read_event() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    let mut student = connect(&server, &student_url(25, 100)).await;
    let mut mentor = connect(&server, &mentor_url(25, 100)).await;
    post(&mut student, &["one", "two"]).await;
    assert_eq!(inbox(&server, MENTOR, "").await[0]["unread_count"], 2);
    post(&mut mentor, &["reply"]).await;
    let mentor_view = &inbox(&server, MENTOR, "").await[0];
    assert_eq!(mentor_view["last_read_seq"], 3);
    assert_eq!(mentor_view["unread_count"], 0);
    assert_eq!(mentor_view["last_seq"], 3);
    assert_eq!(mentor_view["last_message"]["text"], "reply");
    assert_eq!(
        mentor_view["waiting_since"],
        Value::Null,
        "the mentor spoke last"
    );
    let student_view = &inbox(&server, 25, "").await[0];
    assert_eq!(student_view["unread_count"], 1);
    assert_eq!(student_view["other_last_read_seq"], 3);
    assert_eq!(student_view["last_read_seq"], 2, "their own newest message");
    // The student heard the reply, and no read event.
    loop {
        match student.next_within(Duration::from_millis(300)).await {
            Next::Event(event) => assert_ne!(event["type"], "read", "{event}"),
            Next::Nothing => break,
            Next::Closed(code) => panic!("closed {code:?}"),
        }
    }
}

#[tokio::test]
async fn unread_counts_hold_across_reconnects_and_a_restart() {
    let django = django().await;
    let mut server = Server::start(&django.base_url(), &[]);
    let mut student = connect(&server, &student_url(25, 100)).await;
    post(&mut student, &["1", "2", "3", "4"]).await;
    let mut mentor = connect(&server, &mentor_url(25, 100)).await;
    mentor.send(json!({"type":"read","seq":3})).await;
    until(&mut mentor, "read").await;
    drop(mentor);
    let mut mentor = connect(&server, &mentor_url(25, 100)).await;
    mentor.send(json!({"type":"read","seq":1})).await;
    mentor.expect_silence().await;
    assert_eq!(inbox(&server, MENTOR, "").await[0]["unread_count"], 1);
    drop((mentor, student));
    assert!(server.terminate().success());
    server.restart();
    let view = &inbox(&server, MENTOR, "").await[0];
    assert_eq!(view["last_read_seq"], 3, "the cursor survived the restart");
    assert_eq!(view["unread_count"], 1);
    server.crash_and_restart();
    assert_eq!(inbox(&server, MENTOR, "").await[0]["last_read_seq"], 3);
}

#[tokio::test]
async fn the_mentor_inbox_sorts_and_filters() {
    let django = django().await;
    let server = Server::start(&django.base_url(), &[]);
    // Created in this order: A (25, lesson 100), B (26, 100), C (27, 101).
    let mut a = connect(&server, &student_url(25, 100)).await;
    let mut b = connect(&server, &student_url(26, 100)).await;
    let _c = connect(&server, &student_url(27, 101)).await;
    let mut mentor_b = connect(&server, &mentor_url(26, 100)).await;
    // B: the student asks, the mentor answers: not waiting.
    post(&mut b, &["b asks"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A: the student asks twice and waits.
    post(&mut a, &["a asks", "a again"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    post(&mut mentor_b, &["b answered"]).await;

    let created = inbox(&server, MENTOR, "").await;
    let students: Vec<i64> = created
        .iter()
        .map(|c| c["student_id"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(
        students,
        [25, 26, 27],
        "sort=created is the default, oldest first"
    );
    let keys: Vec<&String> = created[0]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    for key in [
        "id",
        "lesson_id",
        "mentor_id",
        "student_id",
        "created_at",
        "last_seq",
        "last_message",
        "unread_count",
        "last_read_seq",
        "other_last_read_seq",
        "waiting_since",
    ] {
        assert!(
            keys.iter().any(|k| *k == key),
            "{key} missing from {keys:?}"
        );
    }
    let a_entry = &created[0];
    assert_eq!(a_entry["unread_count"], 2);
    assert_eq!(a_entry["last_message"]["text"], "a again");
    assert!(a_entry["waiting_since"].is_string(), "{a_entry}");
    // The oldest student message after the mentor's last one: "a asks".
    let page = server
        .get(
            &format!(
                "/messages?conversation_id={}",
                a_entry["id"].as_str().unwrap_or("")
            ),
            Some("tok-m10"),
            Some(MENTOR),
        )
        .await;
    assert_eq!(a_entry["waiting_since"], page.json[0]["created_at"]);
    assert_eq!(created[1]["waiting_since"], Value::Null, "answered");
    assert_eq!(created[2]["waiting_since"], Value::Null, "nobody spoke");
    assert_eq!(created[2]["last_message"], Value::Null);
    assert_eq!(created[2]["last_seq"], 0);

    let order = |list: Vec<Value>| -> Vec<i64> {
        list.iter()
            .map(|c| c["student_id"].as_i64().unwrap_or(0))
            .collect()
    };
    assert_eq!(
        order(inbox(&server, MENTOR, "sort=waiting").await),
        [25, 26, 27]
    );
    assert_eq!(
        order(inbox(&server, MENTOR, "sort=recent").await),
        [26, 25, 27]
    );
    assert_eq!(order(inbox(&server, MENTOR, "unread=true").await), [25]);
    assert_eq!(order(inbox(&server, MENTOR, "lesson_id=101").await), [27]);
    assert_eq!(
        order(inbox(&server, MENTOR, "lesson_id=100&sort=recent").await),
        [26, 25]
    );
    // For a student, waiting_since is always null.
    assert_eq!(
        inbox(&server, 25, "").await[0]["waiting_since"],
        Value::Null
    );
    // One conversation carries the same fields.
    let one = server
        .get(
            &format!("/conversations/{}", a_entry["id"].as_str().unwrap_or("")),
            Some("tok-m10"),
            Some(MENTOR),
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(&one.json, a_entry);
    for bad in ["sort=oldest", "sort=", "unread=yes", "lesson_id=x"] {
        let reply = server
            .get(
                &format!("/conversations?{bad}"),
                Some("tok-m10"),
                Some(MENTOR),
            )
            .await;
        if bad == "sort=" {
            // An empty value is an absent one.
            assert_eq!(reply.status, 200, "{bad}");
            continue;
        }
        assert_eq!(reply.status, 400, "{bad}: {}", reply.json);
        assert_eq!(reply.json["error"]["code"], "bad_request");
    }
}
