//! The SQLite page-cache wrapper (`src/store/sqlite/page_cache.rs`): once
//! installed, ordinary commits skip the cache truncation, a rolled-back
//! transaction that grew the file still truncates, and the data stays whole.
//!
//! Its own test binary: the wrapper can only be installed before the
//! process opens its first SQLite connection.

mod common;

use chat_service::model::Millis;
use chat_service::store::sqlite::{
    install_page_cache, truncate_counts, SqliteOptions, SqliteStore, DATABASE_FILE,
};
use chat_service::store::{Store, WriteOp, WriteOutcome};
use common::{history, ids, message, random_key};
use rusqlite::Connection;

const CONVERSATIONS: usize = 32;
const BATCHES: usize = 20;
const PER_CONVERSATION: usize = 8;

#[tokio::test]
async fn commits_skip_truncation_and_rollbacks_still_truncate() {
    assert!(
        install_page_cache(),
        "the wrapper must install before any connection in this process"
    );
    let dir = tempfile::tempdir().unwrap();
    // Without the journal, every batch is its own commit, as the check
    // below counts.
    let options = SqliteOptions {
        journal_max: 0,
        ..common::sqlite_defaults()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();

    // Many conversations written in interleaved batches: leaves of the table
    // and of the client-id index split out of page order, which is what
    // sends SQLite's rebalance through the temporary lock-byte key.
    let mut conversations = Vec::new();
    for _ in 0..CONVERSATIONS {
        let key = random_key();
        conversations.push((key, store.conversation_for(key, Millis(1)).await.unwrap()));
    }
    let before = truncate_counts();
    for batch in 0..BATCHES {
        let mut ops = Vec::new();
        for (key, conversation) in &conversations {
            for (n, id) in ids(PER_CONVERSATION).into_iter().enumerate() {
                let text = format!("batch {batch} message {n} {}", "x".repeat(120));
                let client_id = format!("{batch}-{n}");
                ops.push(WriteOp::Insert(message(
                    id,
                    conversation.id,
                    key.student_id,
                    &text,
                    Some(&client_id),
                )));
            }
        }
        let count = ops.len();
        let outcomes = store.write_batch(ops).await.unwrap();
        assert_eq!(outcomes, vec![WriteOutcome::Inserted; count]);
    }
    let after_commits = truncate_counts();
    assert!(
        after_commits.skipped >= before.skipped + BATCHES as u64,
        "every commit with nothing beyond the file should skip: {before:?} -> {after_commits:?}"
    );
    for (_, conversation) in &conversations {
        let stored = history(&store, conversation.id).await;
        assert_eq!(stored.len(), BATCHES * PER_CONVERSATION);
        assert!(stored.windows(2).all(|pair| pair[0].id < pair[1].id));
    }
    drop(store);

    // A transaction that grows the file and is rolled back leaves pages
    // beyond the file's end in the cache: they must be dropped.
    let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let count = |conn: &Connection| -> i64 {
        conn.query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .unwrap()
    };
    let stored = count(&conn);
    assert_eq!(stored, (CONVERSATIONS * BATCHES * PER_CONVERSATION) as i64);
    let grow = |conn: &Connection, tag: &str| {
        conn.execute_batch("BEGIN").unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO messages (conversation_id, id, sender_id, text, created_at)
                 VALUES (?1, ?2, 1, ?3, 0)",
            )
            .unwrap();
        for n in 0..5_000u32 {
            let mut conversation = [0u8; 12];
            conversation[..4].copy_from_slice(&n.to_be_bytes());
            let text = format!("{tag} {n} {}", "y".repeat(200));
            insert.execute((conversation, [7u8; 12], text)).unwrap();
        }
    };
    let before_rollback = truncate_counts();
    grow(&conn, "rolled back");
    conn.execute_batch("ROLLBACK").unwrap();
    let after_rollback = truncate_counts();
    assert!(
        after_rollback.passed > before_rollback.passed,
        "a rollback past the file's end must truncate: {before_rollback:?} -> {after_rollback:?}"
    );
    assert_eq!(count(&conn), stored);

    // The same page numbers are allocated again, now committed.
    grow(&conn, "committed");
    conn.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&conn), stored + 5_000);
    let rolled_back: i64 = conn
        .query_row(
            "SELECT count(*) FROM messages WHERE text LIKE 'rolled back%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rolled_back, 0);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}
