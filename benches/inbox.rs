//! The mentor inbox (`GET /conversations`, CONTRACT §6) for a mentor with
//! 500 conversations of 20 messages each, some read: the store's part of
//! the request, `conversations` then `inbox`, on SQLite.
//!
//! - `merged`: every message in SQLite (the store reopened);
//! - `unmerged`: the same messages still in the journal's tail;
//! - `one_call_per_conversation`: `inbox` called once per conversation,
//!   the loop the two-statement read replaces, for comparison.
//!
//! `cargo bench --bench inbox -- --warm-up-time 1 --measurement-time 3`

use std::path::Path;
use std::sync::Arc;

use chat_service::config::Config;
use chat_service::model::{Conversation, ConversationKey, Message, Millis, ObjectId};
use chat_service::store::sqlite::{SqliteOptions, SqliteStore};
use chat_service::store::{ConversationFilter, ReadUpTo, Store, WriteOp};
use criterion::{criterion_group, criterion_main, Criterion};

const MENTOR: i64 = 1;
const CONVERSATIONS: i64 = 500;
const MESSAGES: usize = 20;

fn open(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir, SqliteOptions::from(&Config::defaults())).unwrap())
}

/// 500 conversations; in each the student and the mentor alternate, the
/// last two messages are the student's, and the mentor read up to half.
async fn fill(store: &dyn Store) {
    for n in 0..CONVERSATIONS {
        let key = ConversationKey {
            lesson_id: n % 7,
            mentor_id: MENTOR,
            student_id: 10_000 + n,
        };
        let conversation = store.conversation_for(key, Millis(n)).await.unwrap();
        let mut ops: Vec<WriteOp> = (0..MESSAGES)
            .map(|i| {
                let sender = if i % 2 == 0 || i >= MESSAGES - 2 {
                    key.student_id
                } else {
                    MENTOR
                };
                WriteOp::Insert(Message {
                    id: ObjectId::new(),
                    conversation_id: conversation.id,
                    sender_id: sender,
                    text: format!("message {i} of conversation {n}"),
                    created_at: Millis(1_000 * i as i64),
                    seq: 0,
                    client_id: None,
                    viewed_by: None,
                    viewed_at: None,
                })
            })
            .collect();
        ops.push(WriteOp::Read {
            conversation_id: conversation.id,
            user_id: MENTOR,
            up_to: ReadUpTo::Seq(MESSAGES as u64 / 2),
        });
        store.write_batch(ops).await.unwrap();
    }
}

fn mentor_filter() -> ConversationFilter {
    ConversationFilter {
        participant: Some(MENTOR),
        limit: 10_000,
        ..ConversationFilter::default()
    }
}

async fn inbox(store: &dyn Store) -> usize {
    let list = store.conversations(mentor_filter()).await.unwrap();
    let entries = store.inbox(MENTOR, list).await.unwrap();
    assert_eq!(entries.len(), CONVERSATIONS as usize);
    assert!(entries
        .iter()
        .all(|e| e.unread_count > 0 && e.waiting_since.is_some()));
    entries.len()
}

async fn inbox_one_by_one(store: &dyn Store) -> usize {
    let list: Vec<Conversation> = store.conversations(mentor_filter()).await.unwrap();
    let mut count = 0;
    for conversation in list {
        count += store.inbox(MENTOR, vec![conversation]).await.unwrap().len();
    }
    count
}

fn mentor_inbox(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let merged_dir = tempfile::tempdir().unwrap();
    runtime.block_on(fill(open(merged_dir.path()).as_ref()));
    // Reopened: the journal was merged at close.
    let merged = open(merged_dir.path());
    let unmerged_dir = tempfile::tempdir().unwrap();
    let unmerged = open(unmerged_dir.path());
    runtime.block_on(fill(unmerged.as_ref()));

    let mut group = c.benchmark_group("inbox_500_conversations");
    group.bench_function("merged", |b| {
        b.iter(|| runtime.block_on(inbox(merged.as_ref())))
    });
    group.bench_function("unmerged", |b| {
        b.iter(|| runtime.block_on(inbox(unmerged.as_ref())))
    });
    group.bench_function("one_call_per_conversation", |b| {
        b.iter(|| runtime.block_on(inbox_one_by_one(merged.as_ref())))
    });
    group.finish();
}

criterion_group!(benches, mentor_inbox);
criterion_main!(benches);
