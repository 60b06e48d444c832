//! The batched writer persisting at batch sizes 1, 64 and 512; throughput
//! in messages. Into SQLite (`synchronous=normal`, a temp directory), and
//! into PostgreSQL when `CHAT_BENCH_POSTGRES_URL` names a server (the same
//! cases in the same run, so the two are comparable; see BENCHMARKS.md for
//! the server's settings).
//!
//! Each iteration submits a burst of prepared messages (spread over 64
//! conversations, or all in one; every message with a client id, as
//! resend-aware clients send) and waits until every completion ran, i.e.
//! until every message is committed. The spread matters: every conversation
//! in a batch dirties its own B-tree pages, and each dirty page is a 4 KiB
//! WAL frame per commit.
//!
//! `cargo bench --bench writer -- --warm-up-time 1 --measurement-time 3`

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_service::config::Config;
use chat_service::model::{ConversationKey, Message, Millis, ObjectId};
use chat_service::store::postgres::{PostgresSettings, PostgresStore};
use chat_service::store::sqlite::{SqliteOptions, SqliteStore};
use chat_service::store::writer::{Writer, WriterConfig, WriterHandle};
use chat_service::store::{Store, WriteOp};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// A store to bench and whatever must live as long as it (a temp dir).
type Opened = (Arc<dyn Store>, Box<dyn Any>);

fn writer_batching(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_store(c, &runtime, "writer_sqlite_normal", &|| {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(dir.path(), SqliteOptions::from(&Config::defaults())).unwrap();
        (Arc::new(store), Box::new(dir))
    });
    match std::env::var("CHAT_BENCH_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let settings = PostgresSettings {
                url,
                ..PostgresSettings::from(&Config::defaults())
            };
            bench_store(c, &runtime, "writer_postgres", &|| {
                let store = runtime.block_on(PostgresStore::connect(&settings)).unwrap();
                (Arc::new(store), Box::new(()))
            });
        }
        _ => {
            eprintln!("SKIPPED: writer_postgres (set CHAT_BENCH_POSTGRES_URL to bench PostgreSQL)")
        }
    }
}

fn bench_store(c: &mut Criterion, runtime: &Runtime, group: &str, open: &dyn Fn() -> Opened) {
    let mut group = c.benchmark_group(group);
    // (batch size, conversations written at once, messages per iteration)
    let cases: [(usize, i64, usize); 4] = [
        (1, 64, 512),
        (64, 64, 8_192),
        (512, 64, 16_384),
        (512, 1, 16_384),
    ];
    for (max_batch, spread, burst) in cases {
        let (store, _keep) = open();
        let conversations = runtime.block_on(async {
            let mut ids = Vec::new();
            for n in 0..spread {
                let key = ConversationKey {
                    lesson_id: n,
                    mentor_id: 1_000 + n,
                    student_id: 2_000 + n,
                };
                ids.push(store.conversation_for(key, Millis(0)).await.unwrap());
            }
            ids
        });
        // The queue this bench was measured with, not the service's default.
        let config = WriterConfig {
            max_batch,
            queue_capacity: 65_536,
            ..WriterConfig::from(&Config::defaults())
        };
        let (writer, handle) = runtime.block_on(async { Writer::spawn(store, config) });
        let mut sequence = 0u64;

        group.throughput(Throughput::Elements(burst as u64));
        group.bench_function(
            BenchmarkId::new(
                format!("batch_{max_batch}"),
                format!("{spread}_conversations"),
            ),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let messages: Vec<Message> = (0..burst)
                            .map(|n| {
                                sequence += 1;
                                let conversation = &conversations[n % conversations.len()];
                                Message {
                                    id: ObjectId::new(),
                                    conversation_id: conversation.id,
                                    sender_id: conversation.student_id,
                                    text: format!(
                                        "message number {sequence} of the writer benchmark"
                                    ),
                                    created_at: Millis(1_735_725_600_000),
                                    seq: 0,
                                    // Unique across cases and runs: a PostgreSQL database outlives them.
                                    client_id: Some(format!("client-{}", ObjectId::new())),
                                    viewed_by: None,
                                    viewed_at: None,
                                }
                            })
                            .collect();
                        let started = Instant::now();
                        runtime.block_on(write_all(&handle, messages));
                        total += started.elapsed();
                    }
                    total
                });
            },
        );
        runtime.block_on(writer.shutdown(Duration::from_secs(30)));
    }
    group.finish();
}

/// Submits every message and waits until all are committed.
async fn write_all(handle: &WriterHandle, messages: Vec<Message>) {
    let count = messages.len();
    let completed = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    for message in messages {
        let (completed, all_done) = (Arc::clone(&completed), Arc::clone(&all_done));
        let done = Box::new(move |result: Result<_, _>| {
            assert!(result.is_ok(), "{result:?}");
            if completed.fetch_add(1, Ordering::Relaxed) + 1 == count {
                all_done.notify_one();
            }
        });
        handle.submit(WriteOp::Insert(message), done).unwrap();
    }
    all_done.notified().await;
}

criterion_group!(benches, writer_batching);
criterion_main!(benches);
