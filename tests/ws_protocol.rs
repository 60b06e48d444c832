//! The WebSocket protocol (CONTRACT §3) end to end: every event with its
//! exact fields, delivery, acks, idempotency, typing, viewed, presence,
//! refusals, limits and slow consumers.

mod common;

use common::django::DjangoStandin;
use common::server::Server;
use common::ws::{Client, Next};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Chat {
    _django: DjangoStandin,
    server: Server,
}

const STUDENT: &str = "token=tok-s25&user_id=25&lesson_id=100";
const MENTOR: &str = "token=tok-m10&user_id=10&lesson_id=100&student_id=25";

async fn chat(env: &[(&str, &str)]) -> Chat {
    let django = DjangoStandin::start().await;
    django.add_user("tok-m10", 10, true);
    django.add_user("tok-s25", 25, false);
    django.add_user("tok-s26", 26, false);
    django.add_lesson(100, 1, 10, None);
    let server = Server::start(&django.base_url(), env);
    Chat {
        _django: django,
        server,
    }
}

impl Chat {
    async fn connect(&self, query: &str) -> Client {
        Client::connect(&self.server.ws_url(query)).await
    }

    /// REST history, as student 25, of the conversation `event` belongs to.
    async fn student_history(&self, event: &Value) -> Value {
        let conversation = event["conversation_id"].as_str().unwrap();
        let path = format!("/messages?conversation_id={conversation}");
        self.server.get(&path, Some("tok-s25"), Some(25)).await.json
    }

    /// Student then mentor, with the presence events of joining consumed.
    async fn pair(&self) -> (Client, Client) {
        let mut student = self.connect(STUDENT).await;
        assert_eq!(
            student.expect("presence").await,
            json!({"type":"presence","user_id":10,"online":false})
        );
        let mut mentor = self.connect(MENTOR).await;
        assert_eq!(
            mentor.expect("presence").await,
            json!({"type":"presence","user_id":25,"online":true})
        );
        assert_eq!(
            student.expect("presence").await,
            json!({"type":"presence","user_id":10,"online":true})
        );
        (student, mentor)
    }
}

fn is_hex_id(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() == 24
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn keys(event: &Value) -> Vec<String> {
    let mut keys: Vec<String> = event.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_message_reaches_every_connection_and_is_acked_once_durable() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "message", "text": "Hello, mentor!", "client_id": "c-1"}))
        .await;

    let to_mentor = mentor.expect("message").await;
    assert_eq!(
        keys(&to_mentor),
        [
            "client_id",
            "conversation_id",
            "created_at",
            "id",
            "sender_id",
            "seq",
            "text",
            "type"
        ]
    );
    assert_eq!(to_mentor["text"], "Hello, mentor!");
    assert_eq!(to_mentor["sender_id"], 25);
    assert_eq!(to_mentor["client_id"], "c-1");
    assert!(is_hex_id(&to_mentor["id"]) && is_hex_id(&to_mentor["conversation_id"]));
    let created_at = to_mentor["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.contains('T'),
        "{created_at}"
    );

    let echo = student.expect("message").await;
    assert_eq!(echo, to_mentor, "the sender's echo is the same event");
    let ack = student.expect("ack").await;
    assert_eq!(
        ack,
        json!({"type": "ack", "id": to_mentor["id"], "seq": 1, "client_id": "c-1"})
    );
    mentor.expect_silence().await;

    // Acked means stored: REST shows the same instant and id.
    let conversation = to_mentor["conversation_id"].as_str().unwrap();
    let history = chat
        .server
        .get(
            &format!("/messages?conversation_id={conversation}"),
            Some("tok-m10"),
            Some(10),
        )
        .await;
    assert_eq!(history.status, 200);
    assert_eq!(history.json[0]["id"], to_mentor["id"]);
    assert_eq!(history.json[0]["created_at"], to_mentor["created_at"]);
    assert_eq!(history.json[0]["text"], "Hello, mentor!");
}

#[tokio::test]
async fn an_ack_without_client_id_has_only_the_id_and_seq() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    mentor.send(json!({"type": "message", "text": "hi"})).await;
    let event = mentor.expect("message").await;
    assert!(event.get("client_id").is_none());
    assert_eq!(
        mentor.expect("ack").await,
        json!({"type": "ack", "id": event["id"], "seq": 1})
    );
    student.expect("message").await;
}

#[tokio::test]
async fn a_resend_with_the_same_client_id_is_neither_stored_nor_delivered_again() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "message", "text": "once", "client_id": "same"}))
        .await;
    let first = mentor.expect("message").await;
    student.expect("message").await;
    student.expect("ack").await;

    student.send(json!({"type": "message", "text": "once (resent, even with other text)", "client_id": "same"})).await;
    assert_eq!(
        student.expect("ack").await,
        json!({"type": "ack", "id": first["id"], "seq": 1, "client_id": "same"})
    );
    mentor.expect_silence().await;

    // After a reconnect too.
    student.close().await;
    let mut student = chat.connect(STUDENT).await;
    student.expect("presence").await;
    mentor.expect("presence").await; // offline
    mentor.expect("presence").await; // online again
    student
        .send(json!({"type": "message", "text": "once", "client_id": "same"}))
        .await;
    assert_eq!(student.expect("ack").await["id"], first["id"]);
    mentor.expect_silence().await;

    let history = chat.student_history(&first).await;
    assert_eq!(history.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn text_is_relayed_and_stored_byte_exact() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    let text = "a\u{0}b \"quoted\" \\ 😀 שלום \u{202e}rtl\n\ttab";
    student.send(json!({"type": "message", "text": text})).await;
    let event = mentor.expect("message").await;
    assert_eq!(event["text"], text);
    student.expect("message").await;
    student.expect("ack").await;
    let history = chat.student_history(&event).await;
    assert_eq!(history[0]["text"], text);
}

#[tokio::test]
async fn typing_goes_to_every_other_connection_but_not_back() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    let mut student_tab2 = chat.connect(STUDENT).await;
    student_tab2.expect("presence").await;

    student
        .send(json!({"type": "typing", "is_typing": true}))
        .await;
    let event = mentor.expect("typing").await;
    assert_eq!(
        keys(&event),
        ["conversation_id", "is_typing", "sender_id", "type"]
    );
    assert_eq!(event["sender_id"], 25);
    assert_eq!(event["is_typing"], true);
    assert_eq!(
        student_tab2.expect("typing").await,
        event,
        "the sender's other tab sees it too"
    );
    student.expect_silence().await;

    student
        .send(json!({"type": "typing", "is_typing": false}))
        .await;
    assert_eq!(
        mentor.expect("typing").await["is_typing"],
        false,
        "false is sent, not omitted"
    );
}

/// CONTRACT §6: a typing indicator cannot get stuck. A `true` not
/// refreshed for `CHAT_TYPING_TTL_S` ends with `false`, though the student
/// sends nothing more and stays connected.
#[tokio::test]
async fn typing_not_refreshed_for_the_ttl_ends_with_false() {
    let chat = chat(&[("CHAT_TYPING_TTL_S", "1")]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "typing", "is_typing": true}))
        .await;
    let started = mentor.expect("typing").await;
    assert_eq!(started["is_typing"], true);
    // A lower bound only: the server cannot end it early.
    match mentor.next_within(Duration::from_millis(700)).await {
        Next::Nothing => {}
        other => panic!("ended before the TTL: {other:?}"),
    }
    assert_eq!(
        mentor.expect("typing").await,
        json!({
            "type": "typing",
            "conversation_id": started["conversation_id"],
            "sender_id": 25,
            "is_typing": false,
        })
    );
    student.expect_silence().await;
}

/// CONTRACT §6: the typer's message, or their last tab closing, ends their
/// typing at once (well inside the default 6 s TTL).
#[tokio::test]
async fn a_message_or_the_last_tab_closing_ends_typing() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "typing", "is_typing": true}))
        .await;
    assert_eq!(mentor.expect("typing").await["is_typing"], true);
    student
        .send(json!({"type": "message", "text": "typed"}))
        .await;
    assert_eq!(mentor.expect("typing").await["is_typing"], false);
    assert_eq!(mentor.expect("message").await["text"], "typed");
    student.expect("message").await;
    student.expect("ack").await;

    // Typing again right after the message is news, not a repeat.
    student
        .send(json!({"type": "typing", "is_typing": true}))
        .await;
    assert_eq!(mentor.expect("typing").await["is_typing"], true);

    let mut tab2 = chat.connect(STUDENT).await;
    tab2.expect("presence").await;
    student.close().await;
    mentor.expect_silence().await; // the student is still here
    tab2.close().await;
    assert_eq!(
        mentor.expect("typing").await["is_typing"],
        false,
        "before presence"
    );
    assert_eq!(
        mentor.expect("presence").await,
        json!({"type":"presence","user_id":25,"online":false})
    );
}

#[tokio::test]
async fn viewed_is_stored_and_relayed_to_others_only() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "message", "text": "read me"}))
        .await;
    let message = mentor.expect("message").await;
    student.expect("message").await;
    student.expect("ack").await;

    mentor
        .send(json!({"type": "viewed", "message_id": message["id"]}))
        .await;
    let viewed = student.expect("viewed").await;
    assert_eq!(
        viewed,
        json!({"type": "viewed", "message_id": message["id"], "viewer_id": 10, "conversation_id": message["conversation_id"]})
    );
    // The view moved the mentor's read cursor: `read` to every connection
    // of the room, the viewer's included (CONTRACT §6); `viewed` to the
    // others only.
    let read = json!({"type": "read", "conversation_id": message["conversation_id"], "user_id": 10, "last_read_seq": 1});
    assert_eq!(student.expect("read").await, read);
    assert_eq!(mentor.expect("read").await, read);
    mentor.expect_silence().await;
    student.expect_silence().await;

    let history = chat.student_history(&message).await;
    assert_eq!(history[0]["viewed_by"], 10);
}

/// Sends `repeats` copies of the same `viewed`, then a `viewed` of an
/// unknown id: it goes through the same ordered writer, so its error shows
/// that every repeat before it was handled. `reads` is how many `read`
/// events (cursor moves) the viewer gets before that error.
async fn view_repeatedly(viewer: &mut Client, message_id: &Value, repeats: usize, reads: usize) {
    for _ in 0..repeats {
        viewer
            .send(json!({"type": "viewed", "message_id": message_id}))
            .await;
    }
    viewer
        .send(json!({"type": "viewed", "message_id": "663af8129dde123456789def"}))
        .await;
    for _ in 0..reads {
        viewer.expect("read").await;
    }
    let after = viewer.event().await;
    assert_eq!(
        (after["type"].as_str(), after["code"].as_str()),
        (Some("error"), Some("message_not_found")),
        "a repeated viewed got an answer: {after}"
    );
}

#[tokio::test]
async fn a_repeated_viewed_is_accepted_but_relayed_and_stored_once() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "message", "text": "read me"}))
        .await;
    let message = mentor.expect("message").await;
    student.expect("message").await;
    student.expect("ack").await;
    let viewed_at = || async {
        let history = chat.student_history(&message).await;
        assert_eq!(history[0]["viewed_by"], 10);
        history[0]["viewed_at"].clone()
    };

    // 200 at once: most reach the writer before the first is stored.
    view_repeatedly(&mut mentor, &message["id"], 200, 1).await;
    assert_eq!(student.expect("viewed").await["message_id"], message["id"]);
    assert_eq!(student.expect("read").await["last_read_seq"], 1);
    student.expect_silence().await;
    let first = viewed_at().await;
    assert!(first.is_string(), "{first}");

    // Later repeats leave the first time. More of them than the requests a
    // connection may have in flight (64): each repeat is answered, so the
    // mentor's reader never stops for good.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    view_repeatedly(&mut mentor, &message["id"], 1000, 0).await;
    student.expect_silence().await;
    mentor.expect_silence().await;
    assert_eq!(viewed_at().await, first);
    mentor
        .send(json!({"type": "message", "text": "still here"}))
        .await;
    assert_eq!(mentor.expect("message").await["text"], "still here");
    mentor.expect("ack").await;
}

#[tokio::test]
async fn viewed_of_an_own_unknown_or_foreign_message_is_refused() {
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    student
        .send(json!({"type": "message", "text": "mine"}))
        .await;
    let own = student.expect("message").await;
    student.expect("ack").await;
    mentor.expect("message").await;

    // Own message.
    student
        .send(json!({"type": "viewed", "message_id": own["id"]}))
        .await;
    assert_eq!(student.expect("error").await["code"], "message_not_found");
    // Unknown id, malformed id.
    student
        .send(json!({"type": "viewed", "message_id": "663af8129dde123456789def"}))
        .await;
    assert_eq!(student.expect("error").await["code"], "message_not_found");
    student
        .send(json!({"type": "viewed", "message_id": "zzz"}))
        .await;
    assert_eq!(student.expect("error").await["code"], "message_not_found");

    // A message of another conversation (student 26 with the same mentor).
    let mut other = chat.connect("token=tok-s26&user_id=26&lesson_id=100").await;
    other.expect("presence").await;
    other
        .send(json!({"type": "message", "text": "elsewhere"}))
        .await;
    let foreign = other.expect("message").await;
    mentor
        .send(json!({"type": "viewed", "message_id": foreign["id"]}))
        .await;
    assert_eq!(mentor.expect("error").await["code"], "message_not_found");
    student.expect_silence().await;
}

#[tokio::test]
async fn presence_counts_tabs_and_rest_agrees() {
    let chat = chat(&[]).await;
    let (student, mut mentor) = chat.pair().await;
    let mut tab2 = chat.connect(STUDENT).await;
    assert_eq!(
        tab2.expect("presence").await,
        json!({"type":"presence","user_id":10,"online":true})
    );
    mentor.expect_silence().await; // a second tab is not news

    let online = |server: &Server| {
        let server_url = server.http_url("/presence?user_id=25");
        async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let reply: Value = reqwest::Client::new()
                .get(server_url)
                .header("Authorization", "Bearer tok-m10")
                .header("X-User-Id", "10")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            reply
        }
    };
    assert_eq!(
        online(&chat.server).await,
        json!({"user_id": 25, "online": true})
    );
    student.close().await;
    mentor.expect_silence().await; // one tab left
    assert_eq!(
        online(&chat.server).await,
        json!({"user_id": 25, "online": true})
    );
    tab2.close().await;
    assert_eq!(
        mentor.expect("presence").await,
        json!({"type":"presence","user_id":25,"online":false})
    );
    assert_eq!(
        online(&chat.server).await,
        json!({"user_id": 25, "online": false})
    );
}

#[tokio::test]
async fn refused_frames_get_error_events_and_the_connection_stays_open() {
    let chat = chat(&[("CHAT_MAX_TEXT_BYTES", "10")]).await;
    let (mut student, mut mentor) = chat.pair().await;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_json"),
        ("[1,2,3]".into(), "bad_json"),
        (r#"{"text":"no type"}"#.into(), "unknown_type"),
        (r#"{"type":"shout"}"#.into(), "unknown_type"),
        (r#"{"type":"message"}"#.into(), "empty_text"),
        (r#"{"type":"message","text":""}"#.into(), "empty_text"),
        (
            r#"{"type":"message","text":"12345678901"}"#.into(),
            "text_too_long",
        ),
        (
            r#"{"type":"message","text":"ok","client_id":""}"#.into(),
            "bad_client_id",
        ),
        (
            format!(
                r#"{{"type":"message","text":"ok","client_id":"{}"}}"#,
                "x".repeat(65)
            ),
            "bad_client_id",
        ),
    ];
    for (frame, code) in &cases {
        student.send_raw(Message::text(frame.clone())).await;
        let error = student.expect("error").await;
        assert_eq!(error["code"], *code, "{frame}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    student
        .send(json!({"type":"message","text":"","client_id":"k"}))
        .await;
    assert_eq!(
        student.expect("error").await,
        json!({"type":"error","code":"empty_text","message":"\"text\" is empty","client_id":"k"})
    );
    mentor.expect_silence().await;

    // Still open; exactly 10 bytes is fine; binary frames carrying JSON are accepted (seed).
    student
        .send_raw(Message::binary(
            br#"{"type":"message","text":"1234567890"}"#.to_vec(),
        ))
        .await;
    assert_eq!(mentor.expect("message").await["text"], "1234567890");
}

/// Issue 11: 100,000 nested levels used to overflow a runtime thread's
/// stack inside simd-json and abort the process, and a lone high surrogate
/// escape was stored as U+0000. Both are `bad_json` now, on an open
/// connection of a server that keeps working.
#[tokio::test]
async fn deep_nesting_and_lone_surrogates_are_bad_json_and_the_connection_stays_open() {
    let chat = chat(&[("CHAT_MAX_FRAME_BYTES", "1048576")]).await;
    let (mut student, mut mentor) = chat.pair().await;
    const DEPTH: usize = 100_000;
    let arrays = || format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let objects = || format!("{}1{}", r#"{"a":"#.repeat(DEPTH), "}".repeat(DEPTH));
    let in_message = |nested: String| {
        format!(r#"{{"type":"message","text":"hi","client_id":"deep","x":{nested}}}"#)
    };
    let frames = [
        arrays(),
        objects(),
        in_message(arrays()),
        in_message(objects()),
        r#"{"type":"message","text":"ab\ud800"}"#.to_string(),
        r#"{"type":"message","text":"ab\udc00"}"#.to_string(),
        r#"{"type":"message","text":"\ud800\u0041"}"#.to_string(),
        r#"{"type":"message","text":"ok","client_id":"c\ud800"}"#.to_string(),
    ];
    for frame in frames {
        let head: String = frame.chars().take(60).collect();
        student.send_raw(Message::text(frame)).await;
        let error = student.expect("error").await;
        assert_eq!(error["code"], "bad_json", "{head}");
    }
    mentor.expect_silence().await;

    // A valid surrogate pair still round-trips, relayed and stored.
    student
        .send_raw(Message::text(
            r#"{"type":"message","text":"ab\ud83d\ude00","client_id":"after"}"#,
        ))
        .await;
    let event = mentor.expect("message").await;
    assert_eq!(event["text"], "ab😀");
    student.expect("message").await;
    assert_eq!(student.expect("ack").await["client_id"], "after");
    let history = chat.student_history(&event).await;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{}", history);
    assert_eq!(history[0]["text"], "ab😀");
}

#[tokio::test]
async fn a_message_over_the_frame_limit_closes_with_1009() {
    let chat = chat(&[("CHAT_MAX_FRAME_BYTES", "1024")]).await;
    let (mut student, mut mentor) = chat.pair().await;
    let big = json!({"type": "message", "text": "x".repeat(2000)}).to_string();
    student.send_raw(Message::text(big)).await;
    assert_eq!(student.expect_close().await, Some(1009));
    assert_eq!(mentor.expect("presence").await["online"], false);
    // Every close is counted by reason, for operators.
    let mut counted = serde_json::Value::Null;
    for _ in 0..50 {
        counted = chat.server.get("/readyz", None, None).await.json["detail"]["closed_connections"]
            .clone();
        if counted["too_big"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(counted["too_big"], 1, "{counted}");
    assert_eq!(counted["slow_consumer"], 0);
}

#[tokio::test]
async fn a_fragmented_message_over_the_limit_closes_with_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame, FrameHeader,
    };
    let chat = chat(&[("CHAT_MAX_FRAME_BYTES", "1024")]).await;
    let (mut student, _mentor) = chat.pair().await;
    // Each fragment is under the limit; together they are not.
    let fragment = |opcode, fin: bool| {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            ..FrameHeader::default()
        };
        Message::Frame(Frame::from_payload(header, vec![b' '; 600].into()))
    };
    student
        .send_raw(fragment(OpCode::Data(Data::Text), false))
        .await;
    student
        .send_raw(fragment(OpCode::Data(Data::Continue), false))
        .await;
    assert_eq!(student.expect_close().await, Some(1009));
}

#[tokio::test]
async fn a_fragmented_message_within_the_limit_is_reassembled() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        coding::{Data, OpCode},
        Frame, FrameHeader,
    };
    let chat = chat(&[]).await;
    let (mut student, mut mentor) = chat.pair().await;
    let whole = json!({"type": "message", "text": "in three parts"}).to_string();
    let parts = [&whole[..10], &whole[10..20], &whole[20..]];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let header = FrameHeader {
            is_final: i == 2,
            opcode,
            ..FrameHeader::default()
        };
        student
            .send_raw(Message::Frame(Frame::from_payload(
                header,
                part.as_bytes().to_vec().into(),
            )))
            .await;
    }
    assert_eq!(mentor.expect("message").await["text"], "in three parts");
}

// Multi-threaded so the fast reader really reads while the mentor sends; on
// one thread the send loop would starve it into a slow consumer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_is_closed_with_1013_and_never_delays_the_others() {
    // The default queue (4 MiB): the slow reader must fall behind by more
    // than that plus what the socket buffers hold, while the fast one may
    // be 200 messages (1.6 MB) behind.
    let chat = chat(&[]).await;
    // The slow reader: a tiny receive buffer and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(chat.server.addr.parse().unwrap())
        .await
        .unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(chat.server.ws_url(STUDENT), stream)
        .await
        .unwrap();

    let mut mentor = chat.connect(MENTOR).await;
    mentor.expect("presence").await;
    let mut fast_student = chat.connect(STUDENT).await;
    fast_student.expect("presence").await;

    // The mentor reads its own echoes and acks concurrently, as a real client does.
    use futures_util::{SinkExt, StreamExt};
    let (mut mentor_tx, mut mentor_rx) = mentor.ws.split();
    let mentor_reader =
        tokio::spawn(async move { while let Some(Ok(_)) = mentor_rx.next().await {} });
    let count = 1500;
    // The fast reader is fast by construction: the sender never gets more
    // than 200 messages ahead of it, while the slow one never reads at all.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fast_progress = progress.clone();
    let fast_reader = tokio::spawn(async move {
        let mut received = 0;
        while received < count {
            let event = match fast_student.next_within(common::ws::WAIT).await {
                Next::Event(event) => event,
                other => panic!("after {received} messages: {other:?}"),
            };
            if event["type"] == "message" {
                assert_eq!(
                    event["client_id"],
                    format!("m{received}"),
                    "in order, none missing"
                );
                received += 1;
                fast_progress.store(received, std::sync::atomic::Ordering::Release);
            }
        }
        received
    });
    let text = "y".repeat(8000);
    for i in 0..count {
        while i > progress.load(std::sync::atomic::Ordering::Acquire) + 200 {
            // A failed reader shows its panic below instead of a hang here.
            if fast_reader.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let event = json!({"type": "message", "text": text, "client_id": format!("m{i}")});
        mentor_tx
            .send(Message::text(event.to_string()))
            .await
            .unwrap();
    }
    // The fast reader gets every message.
    assert_eq!(fast_reader.await.unwrap(), count);
    mentor_reader.abort();
    // The slow one is told to reconnect: 1013 after whatever it had buffered.
    let mut code = None;
    while let Ok(Some(frame)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), slow.next()).await
    {
        match frame {
            Ok(Message::Close(Some(close))) => {
                code = Some(u16::from(close.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1013));
}

#[tokio::test]
async fn client_close_is_answered_and_the_peer_sees_presence() {
    let chat = chat(&[]).await;
    let (student, mut mentor) = chat.pair().await;
    student.close().await;
    assert_eq!(
        mentor.expect("presence").await,
        json!({"type":"presence","user_id":25,"online":false})
    );
}

#[tokio::test]
async fn the_server_pings_and_closes_idle_connections_with_1001() {
    let chat = chat(&[("CHAT_PING_INTERVAL_S", "1"), ("CHAT_IDLE_TIMEOUT_S", "2")]).await;
    let mut raw = chat.connect(STUDENT).await;
    use futures_util::StreamExt;
    // tungstenite answers pings by itself, but a pong is a frame from the client,
    // so to go idle we must stop reading: read the first ping, then wait.
    let mut saw_ping = false;
    while let Some(Ok(message)) = raw.ws.next().await {
        if matches!(message, Message::Ping(_)) {
            saw_ping = true;
            break;
        }
    }
    assert!(saw_ping, "the server pings");
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let mut code = None;
    while let Some(Ok(message)) = raw.ws.next().await {
        if let Message::Close(frame) = message {
            code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1001));
    let _ = Next::Nothing;
}
