//! CONTRACT §6 end to end, with the real binary over real sockets: stored,
//! then relayed; per-conversation `seq`; recovery with `since_seq`; the seq
//! cursors of `/messages`; seq across SIGTERM and kill -9.

mod common;

use std::time::Duration;

use common::django::{DjangoStandin, PAIR_MENTOR as MENTOR, PAIR_STUDENT as STUDENT};
use common::server::Server;
use common::ws::{join_pair, Client, Next};
use serde_json::{json, Value};

/// The replayed messages' seqs, up to and with the `recovered` event that
/// ends them; anything else fails the test.
async fn replay(client: &mut Client) -> (Vec<u64>, Value) {
    let mut replayed = Vec::new();
    loop {
        let event = next_of_interest(client).await;
        match event["type"].as_str() {
            Some("message") => replayed.push(seq(&event)),
            Some("recovered") => return (replayed, event),
            _ => panic!("unexpected {event}"),
        }
    }
}

fn seq(event: &Value) -> u64 {
    event["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {event}"))
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

/// Sends `count` messages and waits for each one's echo and ack; returns
/// the conversation id and the acked seqs.
async fn send_acked(client: &mut Client, from: usize, count: usize) -> (String, Vec<u64>) {
    for i in from..from + count {
        client
            .send(json!({"type":"message","text":format!("m{i}"),"client_id":format!("c{i}")}))
            .await;
    }
    let mut conversation = String::new();
    let mut acked = Vec::new();
    while acked.len() < count {
        let event = next_of_interest(client).await;
        match event["type"].as_str() {
            Some("message") => conversation = event["conversation_id"].as_str().unwrap().into(),
            Some("ack") => acked.push(seq(&event)),
            _ => panic!("unexpected {event}"),
        }
    }
    (conversation, acked)
}

/// `seq`s of the message events `client` receives until it has seen
/// `until` (inclusive) or nothing comes for the wait.
async fn message_seqs_until(client: &mut Client, until: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last() != Some(&until) {
        match client.next_within(common::ws::WAIT).await {
            Next::Event(event) if event["type"] == "message" => seqs.push(seq(&event)),
            Next::Event(_) => {}
            other => panic!("after {seqs:?}: {other:?}"),
        }
    }
    seqs
}

async fn history(server: &Server, query: &str) -> (u16, Value) {
    let reply = server
        .get(&format!("/messages?{query}"), Some("tok-s25"), Some(25))
        .await;
    (reply.status, reply.json)
}

fn seqs_of(page: &Value) -> Vec<u64> {
    page.as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(seq)
        .collect()
}

#[tokio::test]
async fn what_a_peer_sees_is_already_in_history_with_the_same_id_seq_and_time() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let (mut student, mut mentor) =
        join_pair(&server.ws_url(STUDENT), &server.ws_url(MENTOR)).await;
    for i in 1..=20u64 {
        student
            .send(json!({"type":"message","text":format!("hello {i}"),"client_id":format!("k{i}")}))
            .await;
        let seen = mentor.expect("message").await;
        assert_eq!(seq(&seen), i);
        // Read at once: the relay came after durability.
        let conversation = seen["conversation_id"].as_str().unwrap();
        let (status, page) = history(
            &server,
            &format!("conversation_id={conversation}&after_seq={}", i - 1),
        )
        .await;
        assert_eq!(status, 200);
        let stored = &page[0];
        assert_eq!(stored["id"], seen["id"]);
        assert_eq!(stored["seq"], seen["seq"]);
        assert_eq!(stored["created_at"], seen["created_at"]);
        assert_eq!(stored["text"], seen["text"]);
        // The sender's echo and its ack come together, with the same seq.
        let echo = student.expect("message").await;
        let ack = student.expect("ack").await;
        assert_eq!(echo["id"], seen["id"]);
        assert_eq!(ack["id"], seen["id"]);
        assert_eq!(ack["seq"], seen["seq"]);
        assert_eq!(ack["client_id"], format!("k{i}"));
    }
}

#[tokio::test]
async fn seqs_are_gap_free_in_relay_order_and_a_resend_takes_none() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let (mut student, mut mentor) =
        join_pair(&server.ws_url(STUDENT), &server.ws_url(MENTOR)).await;
    // Both sides at once, interleaved.
    for i in 0..40 {
        student
            .send(json!({"type":"message","text":format!("s{i}"),"client_id":format!("s{i}")}))
            .await;
        mentor
            .send(json!({"type":"message","text":format!("m{i}")}))
            .await;
    }
    // A resend of an acknowledged client id, and of one still in flight.
    student
        .send(json!({"type":"message","text":"s0 again","client_id":"s0"}))
        .await;
    // The student: every message once, and 41 acks (the resend's too).
    let mut student_seen = Vec::new();
    let mut s0_acks = Vec::new();
    let mut s0_seq = 0;
    let mut acks = 0;
    while student_seen.len() < 80 || acks < 41 {
        match student.next_within(common::ws::WAIT).await {
            Next::Event(event) if event["type"] == "message" => {
                if event["client_id"] == "s0" {
                    s0_seq = seq(&event);
                }
                student_seen.push(seq(&event))
            }
            Next::Event(event) if event["type"] == "ack" => {
                acks += 1;
                if event["client_id"] == "s0" {
                    s0_acks.push(event);
                }
            }
            Next::Event(_) => {}
            other => panic!("after {student_seen:?} and {acks} acks: {other:?}"),
        }
    }
    let mentor_seen = message_seqs_until(&mut mentor, 80).await;
    let expected: Vec<u64> = (1..=80).collect();
    assert_eq!(
        student_seen, expected,
        "the student saw every seq once, in order"
    );
    assert_eq!(mentor_seen, expected, "the mentor saw the same order");
    assert_eq!(s0_acks.len(), 2);
    assert_eq!(
        s0_acks[0], s0_acks[1],
        "the resend is acked as the first: {s0_acks:?}"
    );
    assert_eq!(seq(&s0_acks[0]), s0_seq, "the first message's seq");
    // The resend was not relayed and used no seq: the next is 81.
    mentor.send(json!({"type":"message","text":"after"})).await;
    assert_eq!(message_seqs_until(&mut student, 81).await, [81]);
    assert_eq!(message_seqs_until(&mut mentor, 81).await, [81]);
}

#[tokio::test]
async fn a_client_killed_mid_stream_recovers_exactly_what_it_missed_then_live() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let (mut student, mut mentor) =
        join_pair(&server.ws_url(STUDENT), &server.ws_url(MENTOR)).await;
    let (_, acked) = send_acked(&mut student, 0, 10).await;
    assert_eq!(acked, (1..=10).collect::<Vec<_>>());
    let seen = message_seqs_until(&mut mentor, 10).await;
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    // The mentor's connection dies without a close.
    drop(mentor);
    let (_, acked) = send_acked(&mut student, 10, 15).await;
    assert_eq!(acked, (11..=25).collect::<Vec<_>>());

    let mut mentor = Client::connect(&server.ws_url(&format!("{MENTOR}&since_seq=10"))).await;
    let (replayed, recovered) = replay(&mut mentor).await;
    assert_eq!(replayed, (11..=25).collect::<Vec<_>>());
    assert_eq!(recovered["from_seq"], 11);
    assert_eq!(recovered["last_seq"], 25);
    assert_eq!(recovered["complete"], true);
    // Then live traffic.
    student.send(json!({"type":"message","text":"live"})).await;
    let live = next_of_interest(&mut mentor).await;
    assert_eq!((live["type"].as_str(), seq(&live)), (Some("message"), 26));
    mentor.expect_silence().await;
}

#[tokio::test]
async fn nothing_missed_is_an_empty_replay_and_no_since_seq_is_the_seed_behaviour() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, _) = send_acked(&mut student, 0, 3).await;
    let mut mentor = Client::connect(&server.ws_url(&format!("{MENTOR}&since_seq=3"))).await;
    let recovered = next_of_interest(&mut mentor).await;
    assert_eq!(
        recovered,
        json!({"type":"recovered","conversation_id":conversation,"from_seq":4,"last_seq":3,"complete":true})
    );
    // Without since_seq: no replay, no recovered.
    let mut plain = Client::connect(&server.ws_url(MENTOR)).await;
    assert_eq!(plain.expect("presence").await["online"], true);
    plain.expect_silence().await;
}

#[tokio::test]
async fn recovery_while_the_other_side_keeps_sending_has_no_gap_and_no_duplicate() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[("CHAT_MSG_RATE", "0")]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    send_acked(&mut student, 0, 300).await;
    const TOTAL: usize = 1500;
    let sender = tokio::spawn(async move {
        for i in 300..TOTAL {
            student
                .send(json!({"type":"message","text":format!("busy {i}")}))
                .await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        student
    });
    // Reconnect in the middle of the stream, from seq 100.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut mentor = Client::connect(&server.ws_url(&format!("{MENTOR}&since_seq=100"))).await;
    let mut seqs = Vec::new();
    let mut recovered = None;
    while seqs.last() != Some(&(TOTAL as u64)) {
        match mentor.next_within(common::ws::WAIT).await {
            Next::Event(event) if event["type"] == "message" => seqs.push(seq(&event)),
            Next::Event(event) if event["type"] == "recovered" => {
                recovered = Some((seqs.len(), event))
            }
            Next::Event(_) => {}
            other => panic!("after {} messages: {other:?}", seqs.len()),
        }
    }
    let _student = sender.await.unwrap();
    assert_eq!(
        seqs,
        (101..=TOTAL as u64).collect::<Vec<_>>(),
        "contiguous, none twice"
    );
    let (replayed, recovered) = recovered.expect("a recovered event");
    let last = recovered["last_seq"].as_u64().unwrap();
    assert_eq!(recovered["from_seq"], 101);
    assert_eq!(recovered["complete"], true);
    assert_eq!(
        replayed as u64,
        last - 100,
        "everything up to last_seq came before recovered"
    );
}

#[tokio::test]
async fn more_missed_than_the_recovery_max_replays_the_newest_and_rest_pages_with_before_seq() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[("CHAT_RECOVERY_MAX", "5")]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, _) = send_acked(&mut student, 0, 12).await;
    let mut mentor = Client::connect(&server.ws_url(&format!("{MENTOR}&since_seq=0"))).await;
    let (replayed, recovered) = replay(&mut mentor).await;
    assert_eq!(replayed, [8, 9, 10, 11, 12]);
    assert_eq!(recovered["from_seq"], 8);
    assert_eq!(recovered["last_seq"], 12);
    assert_eq!(recovered["complete"], false);
    let (status, older) = history(
        &server,
        &format!("conversation_id={conversation}&before_seq=8"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seqs_of(&older), (1..=7).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_malformed_since_seq_is_400() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    for bad in ["-1", "abc", "1.5", "99999999999999999999999"] {
        let url = server.ws_url(&format!("{STUDENT}&since_seq={bad}"));
        assert_eq!(Client::refused_status(&url).await, 400, "since_seq={bad}");
    }
}

#[tokio::test]
async fn messages_page_by_seq() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(&django.base_url(), &[]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, _) = send_acked(&mut student, 0, 10).await;
    let page = |query: &str| format!("conversation_id={conversation}&{query}");
    let cases: [(&str, Vec<u64>); 9] = [
        ("after_seq=0&limit=3", vec![1, 2, 3]),
        ("after_seq=3&limit=3", vec![4, 5, 6]),
        ("after_seq=8", vec![9, 10]),
        ("after_seq=10", vec![]),
        ("after_seq=99", vec![]),
        ("before_seq=5&limit=2", vec![3, 4]),
        ("before_seq=1", vec![]),
        ("before_seq=99&limit=2", vec![9, 10]),
        ("after_seq=2&before_seq=6", vec![3, 4, 5]),
    ];
    for (query, expected) in cases {
        let (status, json) = history(&server, &page(query)).await;
        assert_eq!(status, 200, "{query}: {json}");
        assert_eq!(seqs_of(&json), expected, "{query}");
    }
    // Every message of a plain page carries its seq.
    let (_, all) = history(&server, &page("limit=1000")).await;
    assert_eq!(seqs_of(&all), (1..=10).collect::<Vec<_>>());
    // The conversation reports its last seq.
    let reply = server
        .get(
            &format!("/conversations/{conversation}"),
            Some("tok-s25"),
            Some(25),
        )
        .await;
    assert_eq!(reply.json["last_seq"], 10, "{}", reply.json);
    let first_id = all[0]["id"].as_str().unwrap().to_string();
    for bad in [
        "after_seq=-1",
        "before_seq=x",
        "after_seq=1.0",
        &format!("after_seq=1&after={first_id}"),
        &format!("before_seq=3&before={first_id}"),
        &format!("after_seq=1&before={first_id}"),
    ] {
        let (status, json) = history(&server, &page(bad)).await;
        assert_eq!(status, 400, "{bad}: {json}");
        assert_eq!(json["error"]["code"], "bad_request");
    }
}

#[tokio::test]
async fn seq_continues_after_sigterm_and_after_kill_9() {
    let django = DjangoStandin::with_pair().await;
    let mut server = Server::start(&django.base_url(), &[]);
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (conversation, acked) = send_acked(&mut student, 0, 5).await;
    assert_eq!(acked, [1, 2, 3, 4, 5]);
    drop(student);

    assert!(server.terminate().success());
    server.restart();
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (_, acked) = send_acked(&mut student, 5, 5).await;
    assert_eq!(acked, [6, 7, 8, 9, 10], "after SIGTERM");
    // More in flight at the crash: acked or not, no seq anyone saw is
    // given again.
    for i in 10..60 {
        student
            .send(json!({"type":"message","text":format!("m{i}")}))
            .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        if let Next::Event(event) = student.next_within(common::ws::WAIT).await {
            if event["type"] == "message" {
                seen.push(seq(&event));
            }
        }
    }
    server.crash_and_restart();
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    let (_, after) = history(&server, &format!("conversation_id={conversation}")).await;
    let stored = seqs_of(&after);
    let last = *stored.last().unwrap_or(&0);
    assert_eq!(
        stored,
        (1..=last).collect::<Vec<_>>(),
        "gap-free after kill -9"
    );
    assert!(
        seen.iter().all(|s| *s <= last),
        "every seq seen is stored: {seen:?}, last {last}"
    );
    let (_, acked) = send_acked(&mut student, 100, 1).await;
    assert_eq!(acked, [last + 1], "after kill -9");
}

#[tokio::test]
async fn a_thousand_clients_reconnecting_at_once_all_recover_exactly() {
    let django = DjangoStandin::with_pair().await;
    let server = Server::start(
        &django.base_url(),
        &[("CHAT_MAX_CONNECTIONS_PER_USER", "2000")],
    );
    let mut student = Client::connect(&server.ws_url(STUDENT)).await;
    student.expect("presence").await;
    send_acked(&mut student, 0, 200).await;
    let url = server.ws_url(MENTOR);
    let clients = (0..1000u64).map(|i| {
        let url = format!("{url}&since_seq={}", i % 201);
        tokio::spawn(async move {
            let since = i % 201;
            let mut client = Client::connect(&url).await;
            let mut replayed = Vec::new();
            loop {
                let event = next_of_interest(&mut client).await;
                match event["type"].as_str() {
                    Some("message") => replayed.push(seq(&event)),
                    Some("recovered") => {
                        assert_eq!(replayed, (since + 1..=200).collect::<Vec<_>>());
                        assert_eq!(event["last_seq"], 200);
                        assert_eq!(event["from_seq"], since + 1);
                        assert_eq!(event["complete"], true);
                        return client;
                    }
                    _ => panic!("unexpected {event}"),
                }
            }
        })
    });
    let clients = futures_util::future::join_all(clients).await;
    assert_eq!(clients.iter().filter(|c| c.is_ok()).count(), 1000);
}
