//! Shard fan-out: one `message` published into a room of 2 and of 100
//! connections, through the real hub (one shard task, bounded queues) with
//! an in-memory store behind the writer. Throughput counts deliveries.
//!
//! `cargo bench --bench fanout`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::mpsc;

use chat_service::config::Config;
use chat_service::hub::conn::Receiver;
use chat_service::hub::{Command, ConnHandle, Hub, HubSettings};
use chat_service::model::{Conversation, Millis, ObjectId};
use chat_service::store::memory::MemoryStore;
use chat_service::store::writer::{Writer, WriterConfig};

/// Messages per measured batch; queues are sized to hold a whole batch.
const BATCH: usize = 256;

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for room_size in [2usize, 100] {
        let (hub, shard, receivers, conversation) =
            runtime.block_on(async { room(room_size).await });
        let receivers = Arc::new(tokio::sync::Mutex::new(receivers));
        group.throughput(Throughput::Elements(room_size as u64));
        group.bench_function(format!("room_of_{room_size}"), |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let shard = shard.clone();
                let receivers = receivers.clone();
                async move {
                    let mut receivers = receivers.lock().await;
                    let mut total = Duration::ZERO;
                    let mut left = iterations as usize;
                    while left > 0 {
                        let n = left.min(BATCH);
                        let start = Instant::now();
                        for i in 0..n {
                            let publish = Command::Publish {
                                conversation_id: conversation,
                                // Not a member: no ack traffic, only the fan-out.
                                conn_id: 0,
                                sender_id: 1,
                                text: format!("benchmark message {i}"),
                                client_id: None,
                                received: std::time::Instant::now(),
                            };
                            shard.send(publish).await.unwrap();
                        }
                        for rx in receivers.iter_mut() {
                            for _ in 0..n {
                                rx.recv().await;
                            }
                        }
                        total += start.elapsed();
                        left -= n;
                    }
                    total
                }
            })
        });
        drop(hub);
    }
    group.finish();
}

async fn room(size: usize) -> (Hub, mpsc::Sender<Command>, Vec<Receiver>, ObjectId) {
    let store = Arc::new(MemoryStore::new());
    let (writer, handle) = Writer::spawn(
        store,
        // The batch this bench was measured with, not the service's default.
        WriterConfig {
            max_batch: 512,
            queue_capacity: 1 << 20,
            ..WriterConfig::from(&Config::defaults())
        },
    );
    std::mem::forget(writer); // lives for the whole bench
    let settings = HubSettings {
        shards: 1,
        ..HubSettings::from(&Config::defaults())
    };
    let (hub, _shards) = Hub::start(settings, handle);
    let conversation = Conversation {
        id: ObjectId::new(),
        lesson_id: 1,
        mentor_id: 1,
        student_id: 2,
        created_at: Millis(0),
        last_seq: 0,
    };
    let shard = hub.shard_for(&conversation.id);
    let mut receivers = Vec::with_capacity(size);
    for i in 0..size {
        // The queue is bounded in bytes: room for two batches of these frames.
        let (conn, mut rx) = ConnHandle::new(i as u64 + 1, 2 + i as i64, BATCH * 2 * 1024);
        shard
            .send(Command::Join {
                conversation: conversation.clone(),
                conn,
                recovering: None,
            })
            .await
            .unwrap();
        // Drain the presence events of joining.
        while tokio::time::timeout(Duration::from_millis(20), rx.recv())
            .await
            .is_ok()
        {}
        receivers.push(rx);
    }
    for rx in receivers.iter_mut() {
        while tokio::time::timeout(Duration::from_millis(5), rx.recv())
            .await
            .is_ok()
        {}
    }
    (hub, shard, receivers, conversation.id)
}

criterion_group!(benches, fanout);
criterion_main!(benches);
