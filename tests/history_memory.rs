//! `/messages` memory stays bounded whatever the data and however slowly
//! clients read: the real binary over a conversation of large messages,
//! clients that stop reading their answers, the server's RSS sampled.
//!
//! Linux only: RSS is read from `/proc`, and the bound counts on Linux's
//! socket buffer sizes.
#![cfg(target_os = "linux")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_service::model::{ConversationKey, Millis};
use chat_service::store::sqlite::SqliteStore;
use chat_service::store::{Store, WriteOp};
use common::django::DjangoStandin;
use common::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// 2,000 messages of 8,000 control characters: 16 MB stored, 96 MB of JSON.
const MESSAGES: usize = 2_000;
const TEXT_CHARS: usize = 8_000;
/// Over the 4 MiB a socket's send buffer can take on Linux, so a reader
/// that stops reading leaves the rest of its page in the server.
const MAX_HISTORY_BYTES: u64 = 8 * 1024 * 1024;
const CONCURRENCY: u64 = 10;
const WAIT: Duration = Duration::from_millis(2_000);
const MIB: u64 = 1024 * 1024;

/// Writes the conversation of (lesson 100, mentor 10, student 25) into `dir`
/// through the library's store; closing the store merges its journal.
async fn fill(dir: &std::path::Path) -> String {
    let store = SqliteStore::open(dir, common::sqlite_defaults()).unwrap();
    let key = ConversationKey {
        lesson_id: 100,
        mentor_id: 10,
        student_id: 25,
    };
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let text = "\u{1}".repeat(TEXT_CHARS);
    let ids = common::ids(MESSAGES);
    for chunk in ids.chunks(250) {
        let ops = chunk
            .iter()
            .map(|id| WriteOp::Insert(common::message(*id, conversation.id, 25, &text, None)))
            .collect();
        store.write_batch(ops).await.unwrap();
    }
    drop(store);
    conversation.id.to_string()
}

/// `VmRSS` of `pid`; `None` once the process is gone.
fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The highest RSS of `pid` seen every 10 ms until stopped.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(rss) = vm_rss_bytes(pid) else { return };
                    peak.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Sampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Sends `GET path` as student 25 on a socket with a small receive buffer.
async fn send_get(addr: &str, path: &str, close: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let connection = if close { "Connection: close\r\n" } else { "" };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer tok-s25\r\n\
         X-User-Id: 25\r\n{connection}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A client that reads the status line of its answer and then stops reading.
async fn slow_reader(addr: &str, path: &str) -> TcpStream {
    let mut stream = send_get(addr, path, false).await;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    stream
}

/// The status of a whole answer, read to its end (0 if there was none).
async fn status_of(addr: &str, path: &str) -> u16 {
    let mut stream = send_get(addr, path, true).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer
        .get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_history_readers_hold_bounded_memory() {
    let django = DjangoStandin::start().await;
    django.add_user("tok-s25", 25, false);
    let data = tempfile::tempdir().unwrap();
    let conversation = fill(data.path()).await;
    let data_dir = data.path().to_str().unwrap().to_string();
    let server = Server::start(
        &django.base_url(),
        &[
            ("CHAT_DATA_DIR", &data_dir),
            ("CHAT_MAX_HISTORY_BYTES", &MAX_HISTORY_BYTES.to_string()),
            ("CHAT_HISTORY_CONCURRENCY", &CONCURRENCY.to_string()),
            ("CHAT_HISTORY_WAIT_MS", &WAIT.as_millis().to_string()),
            // One user plays every reader here.
            ("CHAT_HISTORY_PER_USER", "100"),
        ],
    );
    let addr = server.addr.clone();
    let history = format!("/messages?conversation_id={conversation}");
    let small = format!("{history}&limit=1");

    // Warm: authentication cached, SQLite and the allocator past their start.
    assert_eq!(status_of(&addr, &small).await, 200);
    let before = vm_rss_bytes(server.pid()).unwrap();
    let sampler = Sampler::start(server.pid());

    let mut readers = Vec::new();
    for _ in 0..CONCURRENCY {
        readers.push(slow_reader(&addr, &history).await);
    }
    // Ten more want a turn while the first ten hang.
    let started = Instant::now();
    let queued: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (addr, history) = (addr.clone(), history.clone());
            tokio::spawn(async move { status_of(&addr, &history).await })
        })
        .collect();
    // Meanwhile the server answers the rest at once, and history in time.
    let health = tokio::time::timeout(Duration::from_secs(2), server.get("/healthz", None, None))
        .await
        .map(|reply| reply.status);
    let meanwhile =
        tokio::time::timeout(WAIT + Duration::from_secs(5), status_of(&addr, &small)).await;
    let mut queued_statuses = Vec::new();
    for call in queued {
        let status = tokio::time::timeout(WAIT + Duration::from_secs(10), call).await;
        queued_statuses.push(status.map_or(0, |status| status.unwrap_or(0)));
    }
    let waited = started.elapsed();
    let peak = sampler.finish();

    let growth = peak.saturating_sub(before);
    let bound = CONCURRENCY * MAX_HISTORY_BYTES * 2 + 32 * MIB;
    eprintln!(
        "RSS before {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB (bound {:.1} MiB); \
         queued answers {queued_statuses:?} after {waited:?}; /healthz {health:?}; \
         small /messages meanwhile {meanwhile:?}",
        before as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        bound as f64 / MIB as f64,
    );
    assert!(
        growth < bound,
        "RSS grew {growth} bytes with {CONCURRENCY} slow readers (bound {bound})"
    );
    assert!(
        queued_statuses.iter().all(|status| *status == 503),
        "every permit is held by a slow reader: {queued_statuses:?}"
    );
    assert!(waited >= WAIT, "refused only after waiting {waited:?}");
    assert_eq!(health, Ok(200), "/healthz answers at once");
    let meanwhile = meanwhile.expect("a small /messages answers (or is refused) in time");
    assert!(
        meanwhile == 503 || meanwhile == 200,
        "small /messages: {meanwhile}"
    );

    // A reader that goes away gives its permit back.
    drop(readers);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match status_of(&addr, &small).await {
            200 => break,
            status => assert!(
                Instant::now() < deadline,
                "history still refused ({status}) after the slow readers left"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
