//! The shard's typing timer on tokio's paused clock: an `is_typing: true`
//! not refreshed for the TTL ends with `false`, at the TTL and not before;
//! so does the typer's last connection closing, and their message.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::hub::conn::Receiver;
use crate::hub::{Command, ConnHandle, Hub, HubSettings};
use crate::model::{Conversation, Millis, ObjectId};
use crate::store::memory::MemoryStore;
use crate::store::writer::{self, Writer, WriterConfig};

const TTL: Duration = Duration::from_secs(6);
const MS: Duration = Duration::from_millis(1);
const MENTOR: i64 = 10;
const STUDENT: i64 = 20;
/// No typing event.
const NONE: [bool; 0] = [];

struct Fixture {
    shard: mpsc::Sender<Command>,
    conversation: Conversation,
    _hub: Hub,
    _writer: Writer,
}

fn fixture() -> Fixture {
    let (writer, handle) = Writer::spawn(
        Arc::new(MemoryStore::new()),
        WriterConfig {
            max_batch: 64,
            window: MS,
            queue_capacity: 1024,
            retry_initial: writer::RETRY_INITIAL,
            retry_max: writer::RETRY_MAX,
        },
    );
    let settings = HubSettings {
        shards: 1,
        typing_ttl: TTL,
    };
    let (hub, _tasks) = Hub::start(settings, handle);
    let conversation = Conversation {
        id: ObjectId::new(),
        lesson_id: 1,
        mentor_id: MENTOR,
        student_id: STUDENT,
        created_at: Millis(0),
        last_seq: 0,
    };
    Fixture {
        shard: hub.shard_for(&conversation.id),
        conversation,
        _hub: hub,
        _writer: writer,
    }
}

impl Fixture {
    async fn send(&self, command: Command) {
        self.shard.send(command).await.unwrap();
        // The shard runs before the paused clock moves on.
        tokio::task::yield_now().await;
    }

    async fn join(&self, conn_id: u64, user: i64) -> Receiver {
        let (conn, rx) = ConnHandle::new(conn_id, user, 65536);
        self.send(Command::Join {
            conversation: self.conversation.clone(),
            conn,
            recovering: None,
        })
        .await;
        rx
    }

    async fn leave(&self, conn_id: u64) {
        self.send(Command::Leave {
            conversation_id: self.conversation.id,
            conn_id,
        })
        .await;
    }

    async fn typing(&self, conn_id: u64, user: i64, is_typing: bool) {
        self.send(Command::Typing {
            conversation_id: self.conversation.id,
            conn_id,
            sender_id: user,
            is_typing,
        })
        .await;
    }
}

/// Everything queued to `rx`, once the shard has run.
async fn events(rx: &mut Receiver) -> Vec<Value> {
    tokio::time::sleep(MS / 10).await;
    let mut events = Vec::new();
    while let Ok(frame) = rx.try_recv() {
        // An unmasked server frame: the payload follows a 2, 4 or 10 byte
        // header.
        let start = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        events.push(serde_json::from_slice(&frame[start..]).unwrap());
    }
    events
}

/// The `is_typing` values among `rx`'s events.
async fn typing(rx: &mut Receiver) -> Vec<bool> {
    events(rx)
        .await
        .iter()
        .filter(|e| e["type"] == "typing")
        .map(|e| e["is_typing"] == true)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn typing_ends_at_the_ttl_and_not_before() {
    let chat = fixture();
    let mut mentor = chat.join(1, MENTOR).await;
    let mut student = chat.join(2, STUDENT).await;
    let start = Instant::now();
    chat.typing(2, STUDENT, true).await;
    assert_eq!(typing(&mut mentor).await, [true]);

    sleep_until(start + TTL - MS).await;
    assert_eq!(typing(&mut mentor).await, NONE, "not before the TTL");
    sleep_until(start + TTL + MS).await;
    let events = events(&mut mentor).await;
    assert_eq!(
        events,
        [json!({
            "type": "typing",
            "conversation_id": chat.conversation.id.to_string(),
            "sender_id": STUDENT,
            "is_typing": false,
        })]
    );
    assert_eq!(typing(&mut student).await, NONE, "no echo to the typer");
    sleep_until(start + TTL * 3).await;
    assert_eq!(typing(&mut mentor).await, NONE, "once");
}

#[tokio::test(start_paused = true)]
async fn typing_refreshed_within_the_ttl_does_not_end() {
    let chat = fixture();
    let mut mentor = chat.join(1, MENTOR).await;
    let _student = chat.join(2, STUDENT).await;
    let start = Instant::now();
    // A client repeating `true` every 5 s, under the 6 s TTL; the room
    // relays each (older than TYPING_REFRESH) as a heartbeat.
    let mut last = start;
    for _ in 0..3 {
        sleep_until(last + Duration::from_secs(5)).await;
        last = Instant::now();
        chat.typing(2, STUDENT, true).await;
    }
    assert_eq!(typing(&mut mentor).await, [true; 3]);
    // A repeat 1 s later is not relayed, but the TTL runs from it.
    sleep_until(last + Duration::from_secs(1)).await;
    last = Instant::now();
    chat.typing(2, STUDENT, true).await;
    assert_eq!(typing(&mut mentor).await, NONE);
    sleep_until(last + TTL - MS).await;
    assert_eq!(typing(&mut mentor).await, NONE, "refreshed, not ended");
    sleep_until(last + TTL + MS).await;
    assert_eq!(typing(&mut mentor).await, [false], "the last true + TTL");
}

#[tokio::test(start_paused = true)]
async fn the_last_tab_closing_ends_typing_before_presence() {
    let chat = fixture();
    let mut mentor = chat.join(1, MENTOR).await;
    let _tab1 = chat.join(2, STUDENT).await;
    let mut tab2 = chat.join(3, STUDENT).await;
    chat.typing(2, STUDENT, true).await;
    assert_eq!(typing(&mut mentor).await, [true]);
    assert_eq!(typing(&mut tab2).await, [true]);

    tokio::time::sleep(Duration::from_secs(1)).await;
    chat.leave(2).await;
    assert!(
        events(&mut mentor).await.is_empty(),
        "one of two tabs closed: the student is still here"
    );
    chat.leave(3).await;
    let events = events(&mut mentor).await;
    let kinds: Vec<(&Value, &Value)> = events
        .iter()
        .map(|e| (&e["type"], e.get("is_typing").or(e.get("online")).unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("typing"), &json!(false)),
            (&json!("presence"), &json!(false)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_ends_typing_before_it_is_relayed() {
    let chat = fixture();
    let mut mentor = chat.join(1, MENTOR).await;
    let _student = chat.join(2, STUDENT).await;
    chat.typing(2, STUDENT, true).await;
    assert_eq!(typing(&mut mentor).await, [true]);

    tokio::time::sleep(Duration::from_secs(1)).await;
    chat.send(Command::Publish {
        conversation_id: chat.conversation.id,
        conn_id: 2,
        sender_id: STUDENT,
        text: "done typing".into(),
        client_id: None,
        received: std::time::Instant::now(),
    })
    .await;
    let events = events(&mut mentor).await;
    let ended = events
        .iter()
        .position(|e| e["type"] == "typing")
        .expect("typing ended");
    assert_eq!(events[ended]["is_typing"], false);
    if let Some(message) = events.iter().position(|e| e["type"] == "message") {
        assert!(ended < message, "{events:?}");
    }
    sleep_until(Instant::now() + TTL * 2).await;
    assert_eq!(typing(&mut mentor).await, NONE, "nothing left to expire");
}
