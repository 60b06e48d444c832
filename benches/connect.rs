//! Connect cost: `Store::recent_client_ids` (which every /ws upgrade ran
//! while rooms kept recent client ids; kept while the trait has it), on
//! the real `SqliteStore`, for a conversation of 1k and of 1M seed-style
//! messages (no `client_id`: seed clients never send one) plus 100 messages
//! with client ids spread among them. It must not grow with the
//! conversation (issue 11 point 4: 130-200 ms per connect at 558k).
//!
//! `cargo bench --bench connect`
//!
//! Under `cargo test --benches` (criterion's test mode: no `--bench`
//! argument) the fixtures are 100 and 1,000 messages, so a debug run stays
//! quick.

use std::path::Path;

use chat_service::config::Config;
use chat_service::model::{Conversation, ConversationKey, Millis, ObjectId};
use chat_service::store::sqlite::{SqliteOptions, SqliteStore, DATABASE_FILE};
use chat_service::store::Store;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// Messages with a client id in every fixture, fewer than the limit asked
/// for, so a scan cannot stop early.
const WITH_CLIENT_ID: usize = 100;
/// The limit asked for: what the upgrade asked for while rooms kept recent
/// client ids (before the store's duplicate check became the only one).
const RECENT_CLIENT_IDS: usize = 1024;

fn recent_client_ids(c: &mut Criterion) {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let sizes: &[usize] = if benchmarking {
        &[1_000, 1_000_000]
    } else {
        &[100, 1_000]
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("recent_client_ids_sqlite");
    group.sample_size(20);
    for &size in sizes {
        let dir = tempfile::tempdir().unwrap();
        let conversation = fixture(dir.path(), size, &runtime);
        let store =
            SqliteStore::open(dir.path(), SqliteOptions::from(&Config::defaults())).unwrap();
        let found = runtime
            .block_on(store.recent_client_ids(
                conversation.id,
                conversation.student_id,
                RECENT_CLIENT_IDS,
            ))
            .unwrap();
        assert_eq!(found.len(), WITH_CLIENT_ID);
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                runtime
                    .block_on(store.recent_client_ids(
                        conversation.id,
                        conversation.student_id,
                        RECENT_CLIENT_IDS,
                    ))
                    .unwrap()
            });
        });
    }
    group.finish();
}

/// A database in `dir` with one conversation of `size` messages, two
/// senders alternating, `WITH_CLIENT_ID` of the student's carrying a client
/// id. Written in one SQL transaction: 1M messages through the store's
/// journal would take minutes in a debug build.
fn fixture(dir: &Path, size: usize, runtime: &tokio::runtime::Runtime) -> Conversation {
    let key = ConversationKey {
        lesson_id: 1,
        mentor_id: 10,
        student_id: 25,
    };
    let conversation = {
        // The store creates the schema and the conversation, then closes.
        let store = SqliteStore::open(dir, SqliteOptions::from(&Config::defaults())).unwrap();
        runtime
            .block_on(store.conversation_for(key, Millis(0)))
            .unwrap()
    };
    let mut conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO messages
                     (conversation_id, id, sender_id, text, created_at, client_id, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap();
        let every = size / WITH_CLIENT_ID;
        for n in 0..size {
            // Every `every`-th message is the student's, with a client id.
            let client_id = (n % every == every - 1).then(|| format!("client-{n}"));
            let sender = if client_id.is_some() || n % 2 == 0 {
                key.student_id
            } else {
                key.mentor_id
            };
            insert
                .execute((
                    conversation.id.bytes(),
                    ObjectId::new().bytes(),
                    sender,
                    "a message from a seed client, without a client id",
                    1_735_725_600_000_i64 + n as i64,
                    client_id,
                    n as i64 + 1,
                ))
                .unwrap();
        }
    }
    tx.commit().unwrap();
    conversation
}

criterion_group!(benches, recent_client_ids);
criterion_main!(benches);
