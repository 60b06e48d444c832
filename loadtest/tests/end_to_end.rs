//! The generator against real servers on loopback: a small chat relay written
//! here (CONTRACT §3's message/ack flow, no storage), a server that refuses every
//! upgrade, and the Django stand-in over real HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{upgrade, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use loadtest::config::Args;
use loadtest::report::Report;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How the relay treats a connection's first message.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Relay,
    /// Close with 1013 instead of relaying (a slow-consumer disconnect).
    CloseOnMessage,
}

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Vec<u8>>>>>>;

async fn start_relay(mode: Mode) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rooms: Rooms = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (rooms, ids) = (rooms.clone(), ids.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (rooms, ids) = (rooms.clone(), ids.clone());
                    async move { Ok::<_, Infallible>(upgrade_relay(req, rooms, ids, mode)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn upgrade_relay(
    mut req: Request<Incoming>,
    rooms: Rooms,
    ids: Arc<AtomicU64>,
    mode: Mode,
) -> Response<Empty<Bytes>> {
    let q = query(&req);
    let user: i64 = q["user_id"].parse().unwrap();
    let student = q
        .get("student_id")
        .cloned()
        .unwrap_or_else(|| q["user_id"].clone());
    let room = format!("{}-{}", q["lesson_id"], student);
    let (response, fut) = upgrade::upgrade(&mut req).unwrap();
    tokio::spawn(async move {
        let ws = fut.await.unwrap();
        let (mut rx, mut tx) = ws.split(tokio::io::split);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<(OpCode, Vec<u8>)>();
        rooms
            .lock()
            .unwrap()
            .entry(room.clone())
            .or_default()
            .push(out_tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some((opcode, payload)) = ctl_rx.recv() => {
                        let _ = tx.write_frame(Frame::new(true, opcode, None, Payload::Owned(payload))).await;
                        if opcode == OpCode::Close { return; }
                    }
                    Some(event) = out_rx.recv() => {
                        if tx.write_frame(Frame::text(Payload::Owned(event))).await.is_err() { return; }
                    }
                    else => return,
                }
            }
        });
        let ctl = ctl_tx.clone();
        let mut obligations = move |frame: Frame<'_>| {
            let _ = ctl.send((frame.opcode, frame.payload.to_vec()));
            std::future::ready(Ok::<(), Infallible>(()))
        };
        while let Ok(frame) = rx.read_frame(&mut obligations).await {
            if frame.opcode != OpCode::Text {
                if frame.opcode == OpCode::Close {
                    break;
                }
                continue;
            }
            let inbound: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
            if mode == Mode::CloseOnMessage {
                let mut payload = 1013u16.to_be_bytes().to_vec();
                payload.extend_from_slice(b"try again later");
                let _ = ctl_tx.send((OpCode::Close, payload));
                break;
            }
            let id = format!("{:024x}", ids.fetch_add(1, Ordering::Relaxed));
            let event = serde_json::json!({
                "type": "message", "id": id, "conversation_id": room, "sender_id": user,
                "text": inbound["text"], "created_at": "2025-01-01T10:00:00Z", "client_id": inbound["client_id"],
            });
            let event = serde_json::to_vec(&event).unwrap();
            for peer in rooms.lock().unwrap().get(&room).into_iter().flatten() {
                let _ = peer.send(event.clone());
            }
            let ack =
                serde_json::json!({"type": "ack", "id": id, "client_id": inbound["client_id"]});
            let _ = out_tx.send(serde_json::to_vec(&ack).unwrap());
        }
        rooms
            .lock()
            .unwrap()
            .get_mut(&room)
            .unwrap()
            .retain(|s| !s.same_channel(&out_tx));
    });
    response
}

/// Answers every request with 503, as the service does at capacity.
async fn start_refuser() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

async fn run(addr: SocketAddr, extra: &[&str]) -> Report {
    let target = addr.to_string();
    let mut args = vec![
        "loadtest",
        "--target",
        &target,
        "--threads",
        "2",
        "--drain-timeout",
        "5",
    ];
    args.extend_from_slice(extra);
    let cfg = Args::try_parse_from(args)
        .unwrap()
        .validate(20_000, 2)
        .unwrap();
    loadtest::execute(cfg, Path::new(env!("CARGO_BIN_EXE_loadtest")))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_to_the_peer_and_acked() {
    let addr = start_relay(Mode::Relay).await;
    let r = run(
        addr,
        &[
            "--pairs",
            "20",
            "--rate",
            "max",
            "--duration",
            "0.5",
            "--window",
            "4",
        ],
    )
    .await;
    assert_eq!(r.connections.established, 40, "{}", r.table());
    assert_eq!(r.connections.failed, 0);
    assert!(r.messages.sent > 0);
    assert_eq!(r.messages.delivered, r.messages.sent, "{}", r.table());
    assert_eq!(r.messages.acked, r.messages.sent);
    assert_eq!(
        r.messages.echoes, r.messages.sent,
        "the sender's own copy is not a delivery"
    );
    assert_eq!((r.messages.lost, r.messages.unacked), (0, 0));
    assert_eq!(r.latency_us.count, r.messages.delivered);
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    assert!(
        r.errors.close_codes.is_empty(),
        "{:?}",
        r.errors.close_codes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_with_one_sending_side() {
    let addr = start_relay(Mode::Relay).await;
    let r = run(
        addr,
        &[
            "--pairs",
            "10",
            "--rate",
            "200",
            "--senders",
            "mentor",
            "--duration",
            "0.5",
        ],
    )
    .await;
    assert!(r.messages.sent > 0, "{}", r.table());
    assert_eq!(r.messages.delivered, r.messages.sent);
    assert_eq!(r.messages.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_processes_split_the_pairs_and_merge_their_reports() {
    let addr = start_relay(Mode::Relay).await;
    let r = run(
        addr,
        &[
            "--pairs",
            "9",
            "--procs",
            "3",
            "--rate",
            "max",
            "--duration",
            "0.3",
            "--threads",
            "1",
        ],
    )
    .await;
    assert_eq!(r.config.procs, 3);
    assert_eq!(r.connections.established, 18, "{}", r.table());
    assert!(r.messages.sent > 0);
    assert_eq!(r.messages.delivered, r.messages.sent, "{}", r.table());
    assert_eq!(
        r.latency_us.count, r.messages.delivered,
        "histograms merged across processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_are_counted_by_status() {
    let addr = start_refuser().await;
    let r = run(addr, &["--pairs", "5", "--duration", "0"]).await;
    assert_eq!(r.connections.established, 0);
    assert_eq!(r.connections.failed, 10);
    assert_eq!(
        r.connections.failures.get("http_503"),
        Some(&10),
        "{:?}",
        r.connections.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_are_counted_by_code_and_their_messages_as_lost() {
    let addr = start_relay(Mode::CloseOnMessage).await;
    let r = run(
        addr,
        &[
            "--pairs",
            "3",
            "--rate",
            "max",
            "--duration",
            "0.3",
            "--drain-timeout",
            "0.5",
        ],
    )
    .await;
    assert_eq!(r.errors.close_codes.get(&1013), Some(&6), "{}", r.table());
    assert!(r.messages.lost > 0 && r.messages.lost == r.messages.sent);
    assert!(!r.passed() || r.checks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expectations_are_checked_against_the_run() {
    let addr = start_relay(Mode::Relay).await;
    let r = run(
        addr,
        &[
            "--pairs",
            "2",
            "--duration",
            "0",
            "--expect",
            "connections_failed==0",
            "--expect",
            "sent>=1",
        ],
    )
    .await;
    assert!(r.checks[0].pass && !r.checks[1].pass, "{:?}", r.checks);
    assert!(!r.passed());
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn standin_answers_the_token_scheme() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(loadtest::standin::StandinStats::default());
    tokio::spawn(loadtest::standin::serve(
        listener,
        stats.clone(),
        std::future::pending(),
    ));
    let users = "/api/content/chat-service/users";
    let lesson = "/api/content/chat-service/lesson";

    let (status, body) = get(addr, &format!("{users}/1005/"), Some("bench-m-1005")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"id":1005,"is_mentor":true}"#)
    );
    let (status, body) = get(addr, &format!("{users}/1000005/"), Some("bench-s-1000005")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"id":1000005,"is_mentor":false}"#)
    );
    assert_eq!(
        get(addr, &format!("{users}/1006/"), Some("bench-m-1005"))
            .await
            .0,
        401,
        "token for another user"
    );
    assert_eq!(get(addr, &format!("{users}/1005/"), None).await.0, 401);
    assert_eq!(
        get(addr, &format!("{users}/1005/"), Some("secret")).await.0,
        401
    );

    let (status, body) = get(
        addr,
        &format!("{lesson}/1005/detail/"),
        Some("bench-s-1000005"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"id":1005,"course_id":1,"teacher_id":1005}"#)
    );
    assert_eq!(
        get(addr, &format!("{lesson}/999/detail/"), Some("bench-m-1005"))
            .await
            .0,
        404
    );
    assert_eq!(
        get(addr, &format!("{lesson}/1005/detail/"), None).await.0,
        401
    );
    assert_eq!(get(addr, "/elsewhere", Some("bench-m-1005")).await.0, 404);

    let base = format!("http://{addr}");
    assert_eq!(loadtest::standin::fetch_request_count(&base).await, Some(9));
    assert_eq!(stats.users_ok.load(Ordering::Relaxed), 2);
    assert_eq!(stats.lessons_ok.load(Ordering::Relaxed), 1);
}
