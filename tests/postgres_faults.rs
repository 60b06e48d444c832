//! The PostgreSQL store under real faults: a throwaway cluster of each
//! test's own (`common::postgres::Cluster`) is stopped, restarted, locked or
//! has its sessions killed, under the real binary or the store alone.
//! CONTRACT §3 "Delivery and durability" and §6: nothing is acked or relayed
//! before it is stored, a store that cannot answer is retried (acks wait;
//! beyond the writer queue a message is refused with `overloaded`, never lost
//! in silence), `/readyz` and REST answer 503 meanwhile, and once the
//! database is back every acknowledged message is in history exactly once,
//! with gap-free seqs.
//!
//! Without PostgreSQL installed these print SKIPPED and pass (they fail
//! under `CHAT_TEST_REQUIRE_POSTGRES=1`).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_service::model::{ConversationKey, Message, Millis, ObjectId};
use chat_service::store::postgres::{PostgresSettings, PostgresStore};
use chat_service::store::{ConversationFilter, ReadUpTo, Store, StoreError, WriteOp, WriteOutcome};
use common::django::{DjangoStandin, PAIR_MENTOR, PAIR_STUDENT};
use common::postgres::Cluster;
use common::server::{Reply, Server};
use common::ws::{join_pair, Client, Next};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What the writer logs each time a batch fails with `Unavailable`
/// (src/store/writer.rs).
const RETRY_LOG: &str = "store unavailable; keeping the batch";
/// What it logs when the store refused a batch for good (`Internal`): the
/// batch's messages are lost, which no fault here may cause.
const REFUSED_LOG: &str = "store refused a write batch";

// ---------------------------------------------------------------------------
// Helpers

fn server_with(django: &DjangoStandin, cluster: &Cluster, env: &[(&str, &str)]) -> Server {
    let mut all = vec![("CHAT_POSTGRES_URL", cluster.url.as_str())];
    all.extend_from_slice(env);
    Server::start(&django.base_url(), &all)
}

/// Settings for a store of the test's own on `cluster`.
fn settings(cluster: &Cluster, timeout: Duration) -> PostgresSettings {
    PostgresSettings {
        timeout,
        ..common::postgres::settings(&cluster.url)
    }
}

/// Lines of the server's log holding `needle`.
fn log_count(server: &Server, needle: &str) -> usize {
    server
        .logs
        .lock()
        .iter()
        .filter(|line| line.contains(needle))
        .count()
}

fn logs(server: &Server) -> String {
    server.logs.lock().join("\n")
}

/// Waits until the server logged at least `count` lines holding `needle`.
async fn wait_for_log(server: &Server, needle: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while log_count(server, needle) < count {
        assert!(
            Instant::now() < deadline,
            "no {count} log lines with {needle:?} within {within:?}; logs:\n{}",
            logs(server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until it answers `status`.
async fn readyz_becomes(server: &Server, status: u16, within: Duration) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let reply = server.get("/readyz", None, None).await;
        if reply.status == status {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within {within:?}; last: {} {}",
            reply.status,
            reply.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The student's (25) REST GET.
async fn student_get(server: &Server, path: &str) -> Reply {
    server.get(path, Some("tok-s25"), Some(25)).await
}

/// Every stored message of a conversation, through REST, oldest first.
async fn rest_history(server: &Server, conversation: &str) -> Vec<Value> {
    let reply = student_get(
        server,
        &format!("/messages?conversation_id={conversation}&limit=1000"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    reply
        .json
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {}", reply.json))
        .clone()
}

fn seq(event: &Value) -> u64 {
    event["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {event}"))
}

fn client_id(event: &Value) -> String {
    event["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no client_id in {event}"))
        .to_string()
}

/// The `message` events `client` receives until seq `last`, skipping other
/// events; fails on silence, a close, or a seq past `last`.
async fn messages_until(client: &mut Client, last: u64) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::new();
    while messages.last().map(seq) != Some(last) {
        match client.next_within(Duration::from_secs(15)).await {
            Next::Event(event) if event["type"] == "message" => {
                assert!(seq(&event) <= last, "beyond seq {last}: {event}");
                messages.push(event);
            }
            Next::Event(event) if event["type"] == "presence" || event["type"] == "typing" => {}
            other => panic!(
                "after {} messages waiting for seq {last}: {other:?}",
                messages.len()
            ),
        }
    }
    messages
}

/// A psql session holding `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` inside an
/// open transaction until [`TableLock::release`] (or drop) ends it: the
/// lock is held exactly as long as the test says, whatever the timing.
struct TableLock {
    psql: Option<Child>,
}

impl TableLock {
    /// Takes the lock and returns once PostgreSQL shows it granted.
    fn take(cluster: &Cluster, table: &str) -> TableLock {
        let mut psql = Command::new("psql")
            .arg(&cluster.url)
            .args(["-qAtX", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let stdin = psql.stdin.as_mut().expect("psql stdin");
        writeln!(
            stdin,
            "BEGIN;\nLOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;"
        )
        .and_then(|()| stdin.flush())
        .expect("write to psql");
        let lock = TableLock { psql: Some(psql) };
        let granted = format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass \
             AND mode = 'AccessExclusiveLock' AND granted"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.psql(&granted) == "0" {
            assert!(Instant::now() < deadline, "psql did not take the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        lock
    }

    /// Commits, which releases the lock, and waits for psql to end.
    fn release(mut self) {
        let mut psql = self.psql.take().expect("psql");
        let stdin = psql.stdin.as_mut().expect("psql stdin");
        writeln!(stdin, "COMMIT;").expect("write to psql");
        drop(psql.stdin.take());
        let output = psql.wait_with_output().expect("wait for psql");
        assert!(
            output.status.success(),
            "psql holding the lock failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        if let Some(mut psql) = self.psql.take() {
            let _ = psql.kill();
            let _ = psql.wait();
        }
    }
}

/// Waits until a session of chat-service waits for a lock on `table`.
fn wait_for_lock_waiter(cluster: &Cluster, table: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: usize = cluster
            .psql(&format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.relation = '{table}'::regclass AND NOT l.granted \
                 AND a.application_name = 'chat-service'"
            ))
            .parse()
            .expect("a count");
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no chat-service session waits for {table}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn insert(message: &Message) -> WriteOp {
    WriteOp::Insert(message.clone())
}

fn unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Unavailable(reason)) => eprintln!("{what}: Unavailable({reason})"),
        other => panic!("{what}: expected Err(Unavailable), got {other:?}"),
    }
}

fn inserted(seqs: &[u64]) -> Vec<WriteOutcome> {
    seqs.iter()
        .map(|&seq| WriteOutcome::Inserted { seq })
        .collect()
}

async fn stored_seqs(store: &PostgresStore, conversation: ObjectId) -> Vec<(ObjectId, u64)> {
    common::history(store, conversation)
        .await
        .iter()
        .map(|m| (m.id, m.seq))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Stopped mid-stream

/// When an event was sent or received, relative to the outage.
const UP: u8 = 0;
/// `Cluster::stop` is running.
const STOPPING: u8 = 1;
/// `Cluster::stop` returned; the restart has not begun.
const DOWN: u8 = 2;
const RESTARTED: u8 = 3;

/// The writer's queue in test 1: a burst of more than this while the
/// database is down must be partly refused with `overloaded`.
const QUEUE: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_mid_stream_acks_wait_nothing_is_lost_and_seqs_stay_gap_free() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let django = DjangoStandin::with_pair().await;
    let queue = QUEUE.to_string();
    let server = server_with(
        &django,
        &cluster,
        &[
            ("CHAT_POSTGRES_TIMEOUT_MS", "1000"),
            ("CHAT_WRITER_QUEUE", &queue),
            ("CHAT_MSG_RATE", "0"),
        ],
    );
    let (student, mut mentor) =
        join_pair(&server.ws_url(PAIR_STUDENT), &server.ws_url(PAIR_MENTOR)).await;
    assert_eq!(
        readyz_becomes(&server, 200, Duration::from_secs(5))
            .await
            .json["detail"]["store"],
        "postgres"
    );

    let phase = Arc::new(AtomicU8::new(UP));
    let (mut sink, mut stream) = student.ws.split();
    // Everything the student receives, with the phase it arrived in.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<(Value, u8)>();
    let collector = tokio::spawn({
        let phase = Arc::clone(&phase);
        async move {
            while let Some(Ok(frame)) = stream.next().await {
                if let WsMessage::Text(text) = frame {
                    let event: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    if events_tx
                        .send((event, phase.load(Ordering::SeqCst)))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let frame = |i: usize| {
        WsMessage::text(
            json!({"type": "message", "text": format!("m{i}"), "client_id": format!("c{i}")})
                .to_string(),
        )
    };

    // A steady stream, one message every 10 ms; the cluster stops in the
    // middle of it.
    const PACED: usize = 60;
    let sender = tokio::spawn({
        let phase = Arc::clone(&phase);
        async move {
            let mut sent = Vec::new();
            for i in 0..PACED {
                sent.push(phase.load(Ordering::SeqCst));
                sink.send(frame(i)).await.expect("send");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (sink, sent)
        }
    });
    let mut received: Vec<(Value, u8)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.iter().filter(|(e, _)| e["type"] == "ack").count() < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => received.push(event),
            other => panic!("no 5 acks while PostgreSQL is up: {other:?} after {received:?}"),
        }
    }
    let retries_before = log_count(&server, RETRY_LOG);
    phase.store(STOPPING, Ordering::SeqCst);
    cluster.stop();
    phase.store(DOWN, Ordering::SeqCst);

    let (mut sink, mut sent_phase) = sender.await.expect("sender");
    // A burst beyond the writer's queue while the database is down.
    const BURST: usize = QUEUE + 10;
    for i in PACED..PACED + BURST {
        sent_phase.push(DOWN);
        sink.feed(frame(i)).await.expect("send");
    }
    sink.flush().await.expect("flush");
    let total = PACED + BURST;

    // The writer tried the held batch against the stopped server, twice,
    // and kept it.
    wait_for_log(
        &server,
        RETRY_LOG,
        retries_before + 2,
        Duration::from_secs(10),
    )
    .await;
    let unready = readyz_becomes(&server, 503, Duration::from_secs(10)).await;
    assert_eq!(unready.json["status"], "unavailable", "{}", unready.json);
    // A connection needs its conversation from the store (CONTRACT §3 row 11).
    assert_eq!(
        Client::refused_status(&server.ws_url(PAIR_MENTOR)).await,
        503
    );
    // At most QUEUE messages wait: at least BURST - QUEUE are refused, at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while received
        .iter()
        .filter(|(e, _)| e["type"] == "error")
        .count()
        < BURST - QUEUE
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => received.push(event),
            other => panic!("no overloaded refusals beyond the queue: {other:?}"),
        }
    }
    while let Ok(event) = events.try_recv() {
        received.push(event);
    }
    let index_of = |event: &Value| -> usize {
        client_id(event)
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a client id of ours: {event}"))
    };
    for (event, at) in &received {
        // Stored, then echoed and acked: nothing sent while down is either.
        if (event["type"] == "ack" || event["type"] == "message") && *at == DOWN {
            assert_ne!(
                sent_phase[index_of(event)],
                DOWN,
                "answered while PostgreSQL was down: {event}"
            );
        }
    }

    phase.store(RESTARTED, Ordering::SeqCst);
    cluster.restart();

    // Every message sent gets exactly one answer: an ack or a refusal.
    let answered = |received: &[(Value, u8)]| {
        received
            .iter()
            .filter(|(e, _)| e["type"] == "ack" || e["type"] == "error")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered(&received) < total {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => received.push(event),
            other => panic!(
                "{} of {total} messages answered after the restart: {other:?}; logs:\n{}",
                answered(&received),
                logs(&server)
            ),
        }
    }
    let mut answers: HashMap<usize, &Value> = HashMap::new();
    let mut acks = Vec::new();
    let mut echoes = Vec::new();
    let mut refused = 0;
    for (event, _) in &received {
        match event["type"].as_str() {
            Some("ack") => acks.push(event.clone()),
            Some("message") => echoes.push(event.clone()),
            Some("error") => {
                assert_eq!(event["code"], "overloaded", "{event}");
                assert_ne!(sent_phase[index_of(event)], UP, "refused while up: {event}");
                refused += 1;
            }
            Some("presence" | "typing") => continue,
            _ => panic!("unexpected {event}"),
        }
        if event["type"] == "ack" || event["type"] == "error" {
            if let Some(first) = answers.insert(index_of(event), event) {
                panic!("answered twice: {first} and {event}");
            }
        }
    }
    assert_eq!(answers.len(), total, "every message answered once");
    eprintln!(
        "{} acked, {refused} refused with overloaded, {} sent while down",
        acks.len(),
        sent_phase.iter().filter(|&&p| p == DOWN).count()
    );
    assert!(refused >= BURST - QUEUE, "{refused} refused");
    let n = acks.len() as u64;
    assert!(n >= 5 && acks.len() + refused == total);
    assert_eq!(
        acks.iter().map(seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "acks carry seqs 1..N in order"
    );
    let acked_ids: Vec<String> = acks.iter().map(client_id).collect();
    let mut in_send_order = acked_ids.clone();
    in_send_order.sort_by_key(|c| c[1..].parse::<usize>().unwrap());
    assert_eq!(acked_ids, in_send_order, "seqs follow the sending order");
    // The sender's echo comes with each ack, never for a refused message.
    assert_eq!(
        echoes.iter().map(client_id).collect::<Vec<_>>(),
        acked_ids,
        "one echo per acked message"
    );

    // The mentor got each stored message once, in seq order, and nothing else.
    let relayed = messages_until(&mut mentor, n).await;
    assert_eq!(
        relayed.iter().map(seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(relayed.iter().map(client_id).collect::<Vec<_>>(), acked_ids);
    mentor.expect_silence().await;

    // History holds exactly the acknowledged messages, with their ids and seqs.
    let conversation = acks[0]["conversation_id"]
        .as_str()
        .or_else(|| echoes[0]["conversation_id"].as_str())
        .expect("conversation id")
        .to_string();
    let stored = rest_history(&server, &conversation).await;
    assert_eq!(
        stored.iter().map(client_id).collect::<Vec<_>>(),
        acked_ids,
        "history is the acked messages, once each"
    );
    assert_eq!(
        stored.iter().map(seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    for (stored, ack) in stored.iter().zip(&acks) {
        assert_eq!(stored["id"], ack["id"]);
    }
    readyz_becomes(&server, 200, Duration::from_secs(15)).await;
    assert_eq!(log_count(&server, REFUSED_LOG), 0, "{}", logs(&server));
    drop(sink);
    collector.abort();
}

// ---------------------------------------------------------------------------
// 2. Restarted while idle

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_while_idle_is_used_again_without_restarting_the_service() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let django = DjangoStandin::with_pair().await;
    let server = server_with(&django, &cluster, &[("CHAT_POSTGRES_TIMEOUT_MS", "1000")]);
    let pid = server.pid();
    let (mut student, mut mentor) =
        join_pair(&server.ws_url(PAIR_STUDENT), &server.ws_url(PAIR_MENTOR)).await;
    student
        .send(json!({"type": "message", "text": "before", "client_id": "before"}))
        .await;
    let echo = student.expect("message").await;
    assert_eq!(seq(&student.expect("ack").await), 1);
    assert_eq!(seq(&mentor.expect("message").await), 1);
    let conversation = echo["conversation_id"].as_str().unwrap().to_string();
    // Reads at once, so the pool holds several idle connections, all of
    // which die with the server.
    let reads = (0..4).map(|_| student_get(&server, "/conversations"));
    for reply in futures_util::future::join_all(reads).await {
        assert_eq!(reply.status, 200, "{}", reply.json);
    }

    cluster.stop();
    // Down: REST says 503, not 500.
    let reply = student_get(&server, "/conversations").await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(reply.json["error"]["code"], "unavailable");
    cluster.restart();

    // The first call after the restart finds a live connection.
    let reply = student_get(&server, "/conversations").await;
    assert_eq!(
        reply.status,
        200,
        "{}; logs:\n{}",
        reply.json,
        logs(&server)
    );
    assert_eq!(reply.json[0]["last_seq"], 1, "{}", reply.json);
    student
        .send(json!({"type": "message", "text": "after", "client_id": "after"}))
        .await;
    assert_eq!(seq(&student.expect("message").await), 2);
    let ack = student.expect("ack").await;
    assert_eq!((seq(&ack), client_id(&ack).as_str()), (2, "after"));
    let relayed = mentor.expect("message").await;
    assert_eq!((seq(&relayed), client_id(&relayed).as_str()), (2, "after"));

    // The same when the sessions are killed without a restart.
    let killed = cluster.psql(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
         FROM pg_stat_activity WHERE application_name = 'chat-service'",
    );
    assert_ne!(killed, "0", "chat-service holds connections");
    student
        .send(json!({"type": "message", "text": "killed", "client_id": "killed"}))
        .await;
    assert_eq!(seq(&student.expect("message").await), 3);
    assert_eq!(seq(&student.expect("ack").await), 3);
    assert_eq!(seq(&mentor.expect("message").await), 3);
    let reply = student_get(&server, "/conversations").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json[0]["last_seq"], 3, "{}", reply.json);

    let stored = rest_history(&server, &conversation).await;
    assert_eq!(
        stored.iter().map(client_id).collect::<Vec<_>>(),
        ["before", "after", "killed"]
    );
    assert_eq!(stored.iter().map(seq).collect::<Vec<_>>(), [1, 2, 3]);
    readyz_becomes(&server, 200, Duration::from_secs(10)).await;
    assert_eq!(server.pid(), pid, "the same process throughout");
    assert_eq!(log_count(&server, REFUSED_LOG), 0, "{}", logs(&server));
}

// ---------------------------------------------------------------------------
// 3. Statement and lock timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_times_out_into_retries_and_the_message_is_stored_once_released() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let django = DjangoStandin::with_pair().await;
    let server = server_with(&django, &cluster, &[("CHAT_POSTGRES_TIMEOUT_MS", "300")]);
    // Connected (the conversation exists) before the table is locked.
    let (mut student, mut mentor) =
        join_pair(&server.ws_url(PAIR_STUDENT), &server.ws_url(PAIR_MENTOR)).await;
    let store = PostgresStore::connect(&settings(&cluster, Duration::from_millis(300)))
        .await
        .expect("connect");
    // Another conversation's message first, so the writer's connection has
    // its statements prepared (the timeout then meets the INSERT itself,
    // at least on that connection).
    django.add_user("tok-s26", 26, false);
    let mut other = Client::connect(&server.ws_url("token=tok-s26&user_id=26&lesson_id=100")).await;
    other.expect("presence").await;
    other
        .send(json!({"type": "message", "text": "warm", "client_id": "warm"}))
        .await;
    other.expect("message").await;
    assert_eq!(seq(&other.expect("ack").await), 1);

    let lock = TableLock::take(&cluster, "chat.conversations");
    let retries_before = log_count(&server, RETRY_LOG);
    student
        .send(json!({"type": "message", "text": "locked", "client_id": "locked"}))
        .await;
    // The statement gives up on the lock within the timeout and the writer
    // keeps the batch for a retry, twice.
    wait_for_log(
        &server,
        RETRY_LOG,
        retries_before + 2,
        Duration::from_secs(10),
    )
    .await;
    let retry_lines: Vec<String> = server
        .logs
        .lock()
        .iter()
        .filter(|line| line.contains(RETRY_LOG))
        .skip(retries_before)
        .cloned()
        .collect();
    assert!(
        retry_lines
            .iter()
            .all(|line| line.contains("lock timeout") || line.contains("statement timeout")),
        "the retries are for the timeout: {retry_lines:#?}"
    );
    eprintln!("{}", retry_lines.join("\n"));
    // Not stored, so neither acked nor relayed.
    assert!(matches!(
        student.next_within(Duration::from_millis(200)).await,
        Next::Nothing
    ));
    mentor.expect_silence().await;
    // The writer is failing: not ready (the ping itself needs no lock).
    let unready = server.get("/readyz", None, None).await;
    assert_eq!(unready.status, 503, "{}", unready.json);
    assert_eq!(
        unready.json["reason"], "the store is failing writes; retrying",
        "{}",
        unready.json
    );
    // A REST read of the locked table: 503 within the timeout, not a hang.
    let started = Instant::now();
    let reply = student_get(&server, "/conversations").await;
    assert_eq!(reply.status, 503, "{}", reply.json);
    assert_eq!(reply.json["error"]["code"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The store itself: Unavailable (retryable), within its deadline.
    let started = Instant::now();
    unavailable(
        "a read of the locked table",
        store
            .conversations(ConversationFilter {
                mentor_id: Some(10),
                student_id: None,
                participant: None,
                limit: 10,
            })
            .await,
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Still nothing acked while the lock is held.
    assert!(matches!(
        student.next_within(Duration::from_millis(50)).await,
        Next::Nothing
    ));

    lock.release();
    let echo = match student.next_within(Duration::from_secs(15)).await {
        Next::Event(event) if event["type"] == "message" => event,
        other => panic!("expected the echo once the lock is released, got {other:?}"),
    };
    let ack = student.expect("ack").await;
    assert_eq!((seq(&ack), client_id(&ack).as_str()), (1, "locked"));
    assert_eq!(ack["id"], echo["id"]);
    let relayed = mentor.expect("message").await;
    assert_eq!((seq(&relayed), &relayed["id"]), (1, &ack["id"]));
    student.expect_silence().await;
    mentor.expect_silence().await;

    let conversation = echo["conversation_id"].as_str().unwrap();
    let stored = rest_history(&server, conversation).await;
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!((seq(&stored[0]), &stored[0]["id"]), (1, &ack["id"]));
    readyz_becomes(&server, 200, Duration::from_secs(10)).await;
    let reply = student_get(&server, "/conversations").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json[0]["last_seq"], 1, "{}", reply.json);
    assert_eq!(log_count(&server, REFUSED_LOG), 0, "{}", logs(&server));
}

// ---------------------------------------------------------------------------
// 4. The store alone against a stopped server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reports_a_stopped_server_as_unavailable_and_a_retried_batch_keeps_its_seqs() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let timeout = Duration::from_millis(1000);
    let deadline = timeout * 2 + Duration::from_secs(1);

    // Connecting to a stopped server.
    cluster.stop();
    let started = Instant::now();
    unavailable(
        "connect to a stopped server",
        PostgresStore::connect(&settings(&cluster, timeout))
            .await
            .map(drop),
    );
    assert!(started.elapsed() < deadline, "{:?}", started.elapsed());
    cluster.restart();

    let store = PostgresStore::connect(&settings(&cluster, timeout))
        .await
        .expect("connect");
    let key = ConversationKey {
        lesson_id: 100,
        mentor_id: 10,
        student_id: 25,
    };
    let conversation = store
        .conversation_for(key, Millis(1_735_725_600_000))
        .await
        .expect("conversation")
        .id;
    let ids = common::ids(4);
    let messages: Vec<Message> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            // Half with a client_id: a retry must find the others by id.
            let client = format!("c{i}");
            let client = (i % 2 == 0).then_some(client.as_str());
            common::message(*id, conversation, 25, &format!("m{i}"), client)
        })
        .collect();
    let first: Vec<WriteOp> = messages[..2].iter().map(insert).collect();
    assert_eq!(
        store.write_batch(first.clone()).await.expect("first batch"),
        inserted(&[1, 2])
    );
    // Two inserts and a cursor move: one pipelined transaction.
    let second = vec![
        insert(&messages[2]),
        insert(&messages[3]),
        WriteOp::Read {
            conversation_id: conversation,
            user_id: 10,
            up_to: ReadUpTo::Seq(3),
        },
    ];

    cluster.stop();
    for (what, batch) in [("the new batch", &second), ("a stored batch", &first)] {
        let started = Instant::now();
        unavailable(what, store.write_batch(batch.clone()).await);
        assert!(
            started.elapsed() < deadline,
            "{what}: {:?}",
            started.elapsed()
        );
    }
    unavailable("a read", store.conversation(conversation).await);
    unavailable("ping", store.ping().await);
    cluster.restart();

    let mut expected = inserted(&[3, 4]);
    expected.push(WriteOutcome::ReadMoved { last_read_seq: 3 });
    assert_eq!(
        store.write_batch(second.clone()).await.expect("retried"),
        expected
    );
    // Retried again (an ack lost with the connection): the same seqs, no
    // new rows; and so for the batch stored before the outage.
    let mut expected = inserted(&[3, 4]);
    expected.push(WriteOutcome::ReadUnchanged { last_read_seq: 3 });
    assert_eq!(
        store.write_batch(second).await.expect("retried again"),
        expected
    );
    assert_eq!(
        store.write_batch(first).await.expect("first batch again"),
        inserted(&[1, 2])
    );
    assert_eq!(
        stored_seqs(&store, conversation).await,
        ids.iter().copied().zip(1..=4).collect::<Vec<_>>()
    );
    let found = store.conversation(conversation).await.expect("read");
    assert_eq!(found.expect("conversation").last_seq, 4);
}

// ---------------------------------------------------------------------------
// 5. A session killed in the middle of a batch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_session_is_killed_mid_statement_is_unavailable_and_retries_cleanly() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    // Long enough that the lock wait outlasts the kill.
    let store = Arc::new(
        PostgresStore::connect(&settings(&cluster, Duration::from_secs(5)))
            .await
            .expect("connect"),
    );
    let conversation_of = |lesson_id| {
        let store = Arc::clone(&store);
        async move {
            let key = ConversationKey {
                lesson_id,
                mentor_id: 10,
                student_id: 25,
            };
            store
                .conversation_for(key, Millis(1_735_725_600_000))
                .await
                .expect("conversation")
                .id
        }
    };
    let conversation = conversation_of(100).await;
    let other = conversation_of(101).await;
    let batch_in = |conversation, count| -> (Vec<ObjectId>, Vec<WriteOp>) {
        let ids = common::ids(count);
        let mut batch: Vec<WriteOp> = ids
            .iter()
            .map(|id| insert(&common::message(*id, conversation, 25, "hello", None)))
            .collect();
        // A cursor move too: the batch is one pipelined transaction.
        batch.push(WriteOp::Read {
            conversation_id: conversation,
            user_id: 10,
            up_to: ReadUpTo::Seq(2),
        });
        (ids, batch)
    };
    // The pooled connection has the batch's statements prepared, so the
    // kill below meets the transaction's INSERT, not its PREPARE.
    let (_, warm_up) = batch_in(other, 2);
    store.write_batch(warm_up).await.expect("warm-up batch");
    let (ids, batch) = batch_in(conversation, 3);

    let lock = TableLock::take(&cluster, "chat.conversations");
    let write = tokio::spawn({
        let store = Arc::clone(&store);
        let batch = batch.clone();
        async move { store.write_batch(batch).await }
    });
    // The batch's statement waits for the lock; its session is killed
    // while the lock is still held, so nothing can have been written.
    wait_for_lock_waiter(&cluster, "chat.conversations");
    let killed = cluster.psql(
        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.relation = 'chat.conversations'::regclass AND NOT l.granted \
         AND a.application_name = 'chat-service'",
    );
    assert_eq!(killed, "1");
    // At once: not at a deadline (the store's is 10 s, the lock's 5 s), nor
    // after the ops were tried again one by one behind the lock.
    let result = tokio::time::timeout(Duration::from_secs(2), write)
        .await
        .expect("the batch ends when its session is killed")
        .expect("join");
    unavailable("a batch whose session was killed", result);
    lock.release();

    let mut expected = inserted(&[1, 2, 3]);
    expected.push(WriteOutcome::ReadMoved { last_read_seq: 2 });
    assert_eq!(
        store.write_batch(batch.clone()).await.expect("retried"),
        expected
    );
    let mut expected = inserted(&[1, 2, 3]);
    expected.push(WriteOutcome::ReadUnchanged { last_read_seq: 2 });
    assert_eq!(
        store.write_batch(batch).await.expect("retried again"),
        expected
    );
    assert_eq!(
        stored_seqs(&store, conversation).await,
        ids.iter().copied().zip(1..=3).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// 6. A server that stops answering

/// A TCP proxy that can black-hole: [`BlackHole::freeze`] stops forwarding
/// on every connection (bytes are swallowed, sockets stay open, nothing is
/// answered or closed: a network partition or a failed-over address), and
/// [`BlackHole::heal`] lets new connections through again while the frozen
/// ones stay dead, as after a failover.
struct BlackHole {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start(target: u16) -> BlackHole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let accept = tokio::spawn({
            let frozen = Arc::clone(&frozen);
            let epoch = Arc::clone(&epoch);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let frozen = Arc::clone(&frozen);
                    let epoch = Arc::clone(&epoch);
                    tokio::spawn(async move {
                        let born = epoch.load(Ordering::SeqCst);
                        let alive = move || {
                            !frozen.load(Ordering::SeqCst) && epoch.load(Ordering::SeqCst) == born
                        };
                        if !alive() {
                            // Accepted, never answered.
                            let _held = client;
                            return std::future::pending::<()>().await;
                        }
                        let Ok(server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                        else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let up = pump(client_read, server_write, alive.clone());
                        let down = pump(server_read, client_write, alive);
                        tokio::join!(up, down);
                    });
                }
            }
        });
        BlackHole {
            port,
            frozen,
            epoch,
            accept,
        }
    }

    fn freeze(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while `alive()`; after that holds both open and
/// forwards nothing, for ever.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if !alive() {
            return std::future::pending().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_missed_its_deadline_is_not_used_again() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let proxy = BlackHole::start(cluster.port).await;
    let url = cluster
        .url
        .replace(&format!(":{}/", cluster.port), &format!(":{}/", proxy.port));
    const POOL: u32 = 4;
    let timeout = Duration::from_millis(300);
    let deadline = timeout * 2 + Duration::from_secs(1);
    let store = PostgresStore::connect(&PostgresSettings {
        url,
        pool_size: POOL,
        timeout,
    })
    .await
    .expect("connect through the proxy");
    let key = ConversationKey {
        lesson_id: 100,
        mentor_id: 10,
        student_id: 25,
    };
    let conversation = store
        .conversation_for(key, Millis(1_735_725_600_000))
        .await
        .expect("conversation")
        .id;
    let message = |text: &str| common::message(ObjectId::new(), conversation, 25, text, None);
    assert_eq!(
        store
            .write_batch(vec![insert(&message("before"))])
            .await
            .expect("write"),
        inserted(&[1])
    );
    // Reads at once: the pool holds several connections.
    let reads = (0..POOL).map(|_| store.conversation(conversation));
    for read in futures_util::future::join_all(reads).await {
        assert!(read.expect("read").is_some());
    }

    proxy.freeze();
    for what in ["a read", "another read", "ping", "a write"] {
        let started = Instant::now();
        let result = match what {
            "ping" => store.ping().await,
            "a write" => store
                .write_batch(vec![insert(&message("during"))])
                .await
                .map(drop),
            _ => store.conversation(conversation).await.map(drop),
        };
        unavailable(what, result);
        assert!(
            started.elapsed() < deadline,
            "{what}: {:?}",
            started.elapsed()
        );
    }
    proxy.heal();

    // The connections that missed their deadline are gone: reads recover
    // once each idle connection of before the freeze has failed once (they
    // look alive until used), not never.
    let mut failures = Vec::new();
    loop {
        match store.conversation(conversation).await {
            Ok(found) => {
                assert_eq!(found.expect("conversation").last_seq, 1);
                break;
            }
            Err(StoreError::Unavailable(reason)) => failures.push(reason),
            Err(internal) => panic!("after the partition healed: {internal:?}"),
        }
        assert!(
            failures.len() <= POOL as usize,
            "reads still fail after the partition healed: {failures:#?}"
        );
    }
    eprintln!("{} reads failed after the partition healed", failures.len());
    assert!(store.ping().await.is_ok());
    assert_eq!(
        store
            .write_batch(vec![insert(&message("after"))])
            .await
            .expect("write after"),
        inserted(&[2])
    );
}
