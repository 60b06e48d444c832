//! SQLite-only behaviour: durability across a reopen and a crash (the
//! journal replayed), the journal absorbing writes while another process
//! holds SQLite's lock (a journaled batch is acknowledged even when the
//! merge its ack waits for cannot run), and lock contention reported as
//! `Unavailable` (what the writer retries) where a write needs SQLite. And `seq` across
//! reopens and crashes, and for what an older build left: a database
//! without the column, a version-1 journal.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use chat_service::model::{
    ConversationId, ConversationKey, Message, Millis, ObjectId, Seq, UserId,
};
use chat_service::store::sqlite::{SqliteOptions, SqliteStore, SqliteSync, DATABASE_FILE};
use chat_service::store::{Store, StoreError, WriteOp, WriteOutcome};
use common::{history, ids, message, random_key, sqlite_defaults};

/// Inserts of `count` new messages "durable 0", "durable 1", … from `sender`.
fn numbered_inserts(conversation_id: ConversationId, sender: UserId, count: usize) -> Vec<WriteOp> {
    ids(count)
        .into_iter()
        .enumerate()
        .map(|(n, id)| {
            WriteOp::Insert(message(
                id,
                conversation_id,
                sender,
                &format!("durable {n}"),
                None,
            ))
        })
        .collect()
}

/// One `Inserted` per seq.
fn inserted(seqs: impl IntoIterator<Item = Seq>) -> Vec<WriteOutcome> {
    seqs.into_iter()
        .map(|seq| WriteOutcome::Inserted { seq })
        .collect()
}

fn seqs_of(messages: &[Message]) -> Vec<Seq> {
    messages.iter().map(|m| m.seq).collect()
}

/// Writes `count` messages into the new conversation for `key`, in one
/// batch: seqs 1 to `count`.
async fn write_messages(store: &SqliteStore, key: ConversationKey, count: usize) {
    let conversation = store.conversation_for(key, Millis(1)).await.unwrap();
    let ops = numbered_inserts(conversation.id, key.student_id, count);
    let outcomes = store.write_batch(ops).await.unwrap();
    assert_eq!(outcomes, inserted(1..=count as Seq));
}

async fn assert_messages_stored(dir: &Path, key: ConversationKey, count: usize) {
    let store = SqliteStore::open(dir, sqlite_defaults()).unwrap();
    let conversation = store.conversation_for(key, Millis(2)).await.unwrap();
    assert_eq!(
        conversation.created_at,
        Millis(1),
        "the conversation was recreated"
    );
    let stored = history(&store, conversation.id).await;
    let texts: Vec<&str> = stored.iter().map(|m| m.text.as_str()).collect();
    let expected: Vec<String> = (0..count).map(|n| format!("durable {n}")).collect();
    assert_eq!(texts, expected);
    assert_eq!(seqs_of(&stored), (1..=count as Seq).collect::<Vec<_>>());
    assert_eq!(conversation.last_seq, count as Seq);
}

#[tokio::test]
async fn open_creates_the_directory_and_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested").join("data");
    let store = SqliteStore::open(
        &dir,
        SqliteOptions {
            sync: SqliteSync::Full,
            ..sqlite_defaults()
        },
    )
    .unwrap();
    store.ping().await.unwrap();
    assert!(dir.join(DATABASE_FILE).is_file());
    assert_eq!(store.kind(), "sqlite");
}

#[tokio::test]
async fn committed_batch_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        write_messages(&store, key, 100).await;
    }
    assert_messages_stored(dir.path(), key, 100).await;
}

/// Variables that turn [`crash_child`] into the crashing writer.
const CRASH_DIR: &str = "CHAT_TEST_CRASH_DIR";
const CRASH_KEY: &str = "CHAT_TEST_CRASH_KEY";

#[test]
fn committed_batch_survives_process_abort() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    let status = crash_child_in(dir.path(), key);
    assert!(
        !status.success(),
        "the child was meant to abort, got {status}"
    );

    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(assert_messages_stored(dir.path(), key, 250));
}

/// Runs [`crash_child`] in a child process writing into `dir`.
fn crash_child_in(dir: &Path, key: ConversationKey) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir)
        .env(
            CRASH_KEY,
            format!("{} {} {}", key.lesson_id, key.mentor_id, key.student_id),
        )
        .stdout(Stdio::null())
        .status()
        .unwrap()
}

/// Not a test by itself: run by `committed_batch_survives_process_abort` in a
/// child process, it commits a batch and aborts without closing anything.
#[test]
#[ignore = "helper of committed_batch_survives_process_abort"]
fn crash_child() {
    let (Ok(dir), Ok(key)) = (std::env::var(CRASH_DIR), std::env::var(CRASH_KEY)) else {
        return;
    };
    let parts: Vec<i64> = key.split(' ').map(|n| n.parse().unwrap()).collect();
    let key = ConversationKey {
        lesson_id: parts[0],
        mentor_id: parts[1],
        student_id: parts[2],
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::open(Path::new(&dir), sqlite_defaults()).unwrap();
        write_messages(&store, key, 250).await;
        // Before the store is dropped: a clean close would merge the journal.
        std::process::abort();
    });
}

fn with_journal_max(journal_max: usize) -> SqliteOptions {
    SqliteOptions {
        journal_max,
        ..sqlite_defaults()
    }
}

fn journal_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("chat.journal."))
        .collect()
}

fn stored_rows(dir: &Path) -> Vec<(String, Option<i64>)> {
    let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    let mut stmt = conn
        .prepare("SELECT text, viewed_by FROM messages ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// With the journal (the default), a write needs no SQLite lock: it is
/// acknowledged, readable, deduplicated and viewable from the journal while
/// another process holds the lock, and lands in SQLite once it is released.
#[tokio::test]
async fn the_journal_absorbs_writes_while_sqlite_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    let key = random_key();
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let [first, second, resend] = ids(3).try_into().unwrap();

    let other = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(message(
                first,
                conversation.id,
                key.student_id,
                "one",
                Some("c1"),
            )),
            WriteOp::Insert(message(second, conversation.id, key.mentor_id, "two", None)),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, inserted([1, 2]));
    let outcomes = store
        .write_batch(vec![
            WriteOp::Insert(message(
                resend,
                conversation.id,
                key.student_id,
                "one again",
                Some("c1"),
            )),
            WriteOp::View {
                conversation_id: conversation.id,
                message_id: first,
                viewer_id: key.mentor_id,
                at: Millis(7),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Duplicate {
                existing: first,
                seq: 1
            },
            WriteOutcome::Viewed
        ]
    );
    let page = history(&store, conversation.id).await;
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(page[0].viewed_by, Some(key.mentor_id));
    assert_eq!(
        other
            .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0
    );
    assert_eq!(journal_files(dir.path()).len(), 1, "one live segment");

    other.execute_batch("COMMIT").unwrap();
    drop(other);
    // Closing the store merges what the journal holds and removes it.
    drop(store);
    assert_eq!(
        stored_rows(dir.path()),
        [
            ("one".to_string(), Some(key.mentor_id)),
            ("two".to_string(), None)
        ]
    );
    assert_eq!(journal_files(dir.path()), Vec::<String>::new());
}

/// Once the journal holds `journal_max` messages, a batch's ack waits for
/// the merge; a merge that cannot take the lock makes it `Unavailable`, and
/// the retry succeeds once the lock is gone, storing each message once.
#[tokio::test]
async fn a_full_journal_is_unavailable_until_the_merge_can_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), with_journal_max(2)).unwrap();
    let key = random_key();
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let ops = numbered_inserts(conversation.id, key.student_id, 3);

    let other = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(
        store.write_batch(ops[..2].to_vec()).await.unwrap(),
        [
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Inserted { seq: 2 }
        ],
        "two fit in the journal"
    );
    let refused = store.write_batch(ops[2..].to_vec()).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(
        history(&store, conversation.id).await.len(),
        3,
        "journaled, readable"
    );

    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        store.write_batch(ops[2..].to_vec()).await.unwrap(),
        [WriteOutcome::Inserted { seq: 3 }],
        "the retry keeps the seq its journaled copy got"
    );
    // The merge ran before that ack: SQLite has all three, once each.
    assert_eq!(
        stored_rows(dir.path()).len(),
        3,
        "merged into SQLite before the ack"
    );
    assert_eq!(history(&store, conversation.id).await.len(), 3);
}

/// A journal segment cut in the middle of a record (a crash during the
/// write) is replayed up to the last whole record.
#[tokio::test]
async fn a_torn_journal_is_replayed_up_to_its_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    // The crash child leaves its journal unmerged; copy it before the
    // store that replays it removes it.
    let status = crash_child_in(dir.path(), key);
    assert!(!status.success());
    let segments = journal_files(dir.path());
    assert_eq!(segments.len(), 1, "the aborted process left its journal");
    let segment = dir.path().join(&segments[0]);
    let length = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(length - 5).unwrap();
    drop(file);

    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    let conversation = store.conversation_for(key, Millis(2)).await.unwrap();
    let texts: Vec<String> = history(&store, conversation.id)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    let expected: Vec<String> = (0..249).map(|n| format!("durable {n}")).collect();
    assert_eq!(texts, expected, "all but the torn last record");
    assert_eq!(
        journal_files(dir.path()).len(),
        1,
        "only the new, empty segment"
    );
}

#[tokio::test]
async fn a_locked_database_is_unavailable_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // Without the journal every batch commits before its ack.
    let store = SqliteStore::open(dir.path(), with_journal_max(0)).unwrap();
    let key = random_key();
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let [id] = ids(1).try_into().unwrap();
    let op = WriteOp::Insert(message(id, conversation.id, key.mentor_id, "later", None));

    // Another process (here: another connection) holds the write lock.
    let other = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let refused = store.write_batch(vec![op.clone()]).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    // Reads go on meanwhile. The message is in the journal (it would be
    // replayed after a crash), so it reads back although unacknowledged.
    store.ping().await.unwrap();
    assert_eq!(history(&store, conversation.id).await.len(), 1);

    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        store.write_batch(vec![op]).await.unwrap(),
        [WriteOutcome::Inserted { seq: 1 }]
    );
    assert_eq!(history(&store, conversation.id).await.len(), 1);
}

/// A retried insert of a message SQLite already holds (merged by an earlier
/// run) is `Inserted` again with the seq it was stored with, stored once,
/// uses no seq, and does not hide the stored message's view.
#[tokio::test]
async fn reinserting_a_merged_message_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    let [id] = ids(1).try_into().unwrap();
    let conversation_id;
    {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        conversation_id = store.conversation_for(key, Millis(0)).await.unwrap().id;
        let ops = vec![
            WriteOp::Insert(message(id, conversation_id, key.student_id, "once", None)),
            WriteOp::View {
                conversation_id,
                message_id: id,
                viewer_id: key.mentor_id,
                at: Millis(9),
            },
        ];
        assert_eq!(
            store.write_batch(ops).await.unwrap(),
            [WriteOutcome::Inserted { seq: 1 }, WriteOutcome::Viewed]
        );
    }
    assert_eq!(stored_rows(dir.path()).len(), 1, "merged at close");

    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    let retry = WriteOp::Insert(message(id, conversation_id, key.student_id, "once", None));
    assert_eq!(
        store.write_batch(vec![retry]).await.unwrap(),
        inserted([1]),
        "the seq it was stored with"
    );
    let page = history(&store, conversation_id).await;
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0].viewed_by,
        Some(key.mentor_id),
        "the stored copy wins"
    );
    // A view of it now, kept through the closing merge.
    let view = WriteOp::View {
        conversation_id,
        message_id: id,
        viewer_id: key.mentor_id + 1,
        at: Millis(10),
    };
    assert_eq!(
        store.write_batch(vec![view]).await.unwrap(),
        [WriteOutcome::Viewed]
    );
    let [next] = ids(1).try_into().unwrap();
    let next = WriteOp::Insert(message(next, conversation_id, key.mentor_id, "next", None));
    assert_eq!(
        store.write_batch(vec![next]).await.unwrap(),
        inserted([2]),
        "the retry used no seq"
    );
    drop(store);
    assert_eq!(
        stored_rows(dir.path()),
        [
            ("once".to_string(), Some(key.mentor_id + 1)),
            ("next".to_string(), None)
        ]
    );
}

/// An open failure names the data directory: SQLite's own message ("unable
/// to open database file") does not say which file.
#[test]
fn a_store_that_cannot_open_names_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where a journal segment should be: the error comes from
    // the journal, whose messages name no file ("Is a directory").
    std::fs::create_dir(dir.path().join("chat.journal.00000000000000000001")).unwrap();
    let error = match SqliteStore::open(dir.path(), with_journal_max(0)) {
        Ok(_) => panic!("opened a directory as a database"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&dir.path().display().to_string()), "{error}");
}

/// The write thread merges on its own once the oldest unmerged message is
/// 5 s old, with no job to wake it, and a tail larger than one merge chunk
/// (8,192) goes in over several transactions: all of it reaches the file
/// while the store stays open.
#[tokio::test]
async fn an_idle_journal_merges_on_its_own_in_chunks() {
    const COUNT: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    let key = random_key();
    let written = std::time::Instant::now();
    write_messages(&store, key, COUNT).await;

    let file = rusqlite::Connection::open_with_flags(
        dir.path().join(DATABASE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let in_file = || -> i64 {
        file.query_row("SELECT count(DISTINCT id) FROM messages", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(in_file(), 0, "journaled, not merged yet");
    while in_file() < COUNT as i64 {
        assert!(
            written.elapsed() < std::time::Duration::from_secs(30),
            "only {} of {COUNT} merged after 30 s",
            in_file()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        written.elapsed() >= std::time::Duration::from_secs(4),
        "merged after {:?}: before the age trigger",
        written.elapsed()
    );
    let check: String = file
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // Served once each, now from SQLite rather than the tail.
    let conversation = store.conversation_for(key, Millis(1)).await.unwrap();
    assert_eq!(history(&store, conversation.id).await.len(), COUNT);
}

/// Inserts of new messages into `conversation_id` from `sender`, texts
/// `"{prefix} 0"`, `"{prefix} 1"`, …
fn inserts_of(
    conversation_id: ConversationId,
    sender: UserId,
    prefix: &str,
    count: usize,
) -> Vec<Message> {
    ids(count)
        .into_iter()
        .enumerate()
        .map(|(n, id)| message(id, conversation_id, sender, &format!("{prefix} {n}"), None))
        .collect()
}

fn ops(messages: &[Message]) -> Vec<WriteOp> {
    messages.iter().cloned().map(WriteOp::Insert).collect()
}

/// (conversation, id, seq) of every stored row, read from the file.
fn stored_seqs(dir: &Path) -> Vec<([u8; 12], [u8; 12], Option<i64>)> {
    let conn = rusqlite::Connection::open(dir.join(DATABASE_FILE)).unwrap();
    let mut stmt = conn
        .prepare("SELECT conversation_id, id, seq FROM messages ORDER BY conversation_id, id")
        .unwrap();
    let rows = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Seqs continue where the last run stopped, per conversation; a retried
/// batch of the last run keeps its seqs, a resend its first message's.
#[tokio::test]
async fn seqs_continue_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (key, other_key) = (random_key(), random_key());
    let (a, b, first_batch, resent);
    {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        a = store.conversation_for(key, Millis(0)).await.unwrap().id;
        b = store
            .conversation_for(other_key, Millis(0))
            .await
            .unwrap()
            .id;
        let [a0, a1, a2] = inserts_of(a, key.mentor_id, "a", 3).try_into().unwrap();
        let [b0, b1] = inserts_of(b, other_key.student_id, "b", 2)
            .try_into()
            .unwrap();
        resent = Message {
            client_id: Some("k".into()),
            ..b1
        };
        first_batch = vec![a0, b0, a1];
        assert_eq!(
            store.write_batch(ops(&first_batch)).await.unwrap(),
            inserted([1, 1, 2])
        );
        assert_eq!(
            store.write_batch(ops(&[a2, resent.clone()])).await.unwrap(),
            inserted([3, 2])
        );
    }
    assert_eq!(journal_files(dir.path()), Vec::<String>::new(), "merged");

    {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        let last_seq = |id| {
            let store = &store;
            async move { store.conversation(id).await.unwrap().unwrap().last_seq }
        };
        assert_eq!((last_seq(a).await, last_seq(b).await), (3, 2));
        assert_eq!(
            store
                .conversation_for(key, Millis(0))
                .await
                .unwrap()
                .last_seq,
            3
        );
        let more_a = inserts_of(a, key.student_id, "more a", 2);
        let more_b = inserts_of(b, other_key.mentor_id, "more b", 1);
        assert_eq!(
            store
                .write_batch(ops(&[more_a[0].clone(), more_b[0].clone()]))
                .await
                .unwrap(),
            inserted([4, 3])
        );
        assert_eq!(
            store.write_batch(ops(&first_batch)).await.unwrap(),
            inserted([1, 1, 2]),
            "the last run's batch retried"
        );
        let resend = Message {
            id: ids(1)[0],
            ..resent.clone()
        };
        assert_eq!(
            store.write_batch(ops(&[resend])).await.unwrap(),
            [WriteOutcome::Duplicate {
                existing: resent.id,
                seq: 2
            }]
        );
        assert_eq!(
            store.write_batch(ops(&more_a[1..])).await.unwrap(),
            inserted([5])
        );
        let in_a = history(&store, a).await;
        assert_eq!(seqs_of(&in_a), [1, 2, 3, 4, 5]);
        for message in &in_a {
            assert_eq!(
                store.message_at_seq(a, message.seq).await.unwrap(),
                Some(message.id)
            );
        }
        assert_eq!(store.message_at_seq(a, 6).await.unwrap(), None);
    }

    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    assert_eq!(seqs_of(&history(&store, a).await), [1, 2, 3, 4, 5]);
    assert_eq!(seqs_of(&history(&store, b).await), [1, 2, 3]);
    assert_eq!(store.conversation(b).await.unwrap().unwrap().last_seq, 3);
}

/// A crash leaves the journal unmerged: the copy of the data directory of
/// an open store (no closing merge) is what it leaves. Opened, the copy
/// replays the journal with the seqs it carries, after those SQLite has,
/// and numbering goes on from there.
#[tokio::test]
async fn seqs_continue_after_a_crash_with_the_journal_left() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let key = random_key();
    let c;
    let (merged, journaled);
    {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        c = store.conversation_for(key, Millis(0)).await.unwrap().id;
        merged = inserts_of(c, key.mentor_id, "merged", 3);
        assert_eq!(
            store.write_batch(ops(&merged)).await.unwrap(),
            inserted(1..=3)
        );
    }
    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    let mut fresh = inserts_of(c, key.student_id, "journaled", 2);
    fresh[1].client_id = Some("j".into());
    journaled = fresh;
    assert_eq!(
        store.write_batch(ops(&journaled)).await.unwrap(),
        inserted([4, 5])
    );
    // Journaled, not merged (that waits 5 s): copy the directory now. The
    // write thread writes nothing to SQLite meanwhile; the shared-memory
    // index is rebuilt by whoever opens the copy.
    assert_eq!(stored_rows(dir.path()).len(), 3);
    let segments = journal_files(dir.path());
    assert_eq!(segments.len(), 1);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name();
        if !name.to_string_lossy().ends_with("-shm") {
            std::fs::copy(dir.path().join(&name), crashed.path().join(&name)).unwrap();
        }
    }
    drop(store);

    let store = SqliteStore::open(crashed.path(), sqlite_defaults()).unwrap();
    assert_ne!(
        journal_files(crashed.path()),
        segments,
        "the journal was replayed and removed"
    );
    assert_eq!(stored_rows(crashed.path()).len(), 5, "replayed into SQLite");
    let stored = history(&store, c).await;
    assert_eq!(seqs_of(&stored), [1, 2, 3, 4, 5]);
    assert_eq!(stored[3].id, journaled[0].id);
    assert_eq!(
        store
            .conversation_for(key, Millis(0))
            .await
            .unwrap()
            .last_seq,
        5
    );
    // The journaled batch retried, a resend of its client id, a new one.
    assert_eq!(
        store.write_batch(ops(&journaled)).await.unwrap(),
        inserted([4, 5])
    );
    let resend = Message {
        id: ids(1)[0],
        ..journaled[1].clone()
    };
    assert_eq!(
        store.write_batch(ops(&[resend])).await.unwrap(),
        [WriteOutcome::Duplicate {
            existing: journaled[1].id,
            seq: 5
        }]
    );
    let next = inserts_of(c, key.mentor_id, "next", 1);
    assert_eq!(store.write_batch(ops(&next)).await.unwrap(), inserted([6]));
    assert_eq!(store.message_at_seq(c, 6).await.unwrap(), Some(next[0].id));
}

/// After a real crash (the child aborts with its batch only journaled),
/// the next run numbers on from the replayed batch's last seq.
#[test]
fn seqs_continue_after_a_process_abort() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    assert!(!crash_child_in(dir.path(), key).success());
    assert_eq!(journal_files(dir.path()).len(), 1, "left unmerged");

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        let conversation = store.conversation_for(key, Millis(2)).await.unwrap();
        assert_eq!(conversation.last_seq, 250);
        let next = inserts_of(conversation.id, key.mentor_id, "after the crash", 2);
        assert_eq!(
            store.write_batch(ops(&next)).await.unwrap(),
            inserted([251, 252])
        );
        // By seq, not history's id order: this process's ids are of the
        // same second as the child's, and its random process bytes may
        // sort them first.
        let mut stored = history(&store, conversation.id).await;
        stored.sort_by_key(|m| m.seq);
        assert_eq!(seqs_of(&stored), (1..=252).collect::<Vec<Seq>>());
        let mut texts: Vec<String> = (0..250).map(|n| format!("durable {n}")).collect();
        texts.extend(["after the crash 0".into(), "after the crash 1".into()]);
        assert_eq!(
            stored.into_iter().map(|m| m.text).collect::<Vec<_>>(),
            texts
        );
    });
}

/// The schema of the build before `seq` (schema version 1): today's
/// without the column and its index.
const SCHEMA_WITHOUT_SEQ: &str = "
CREATE TABLE conversations (
    id         BLOB    NOT NULL PRIMARY KEY,
    lesson_id  INTEGER NOT NULL,
    mentor_id  INTEGER NOT NULL,
    student_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (lesson_id, mentor_id, student_id)
) WITHOUT ROWID;
CREATE INDEX conversations_by_mentor ON conversations (mentor_id, created_at, id);
CREATE INDEX conversations_by_student ON conversations (student_id, created_at, id);
CREATE TABLE messages (
    conversation_id BLOB    NOT NULL,
    id              BLOB    NOT NULL,
    sender_id       INTEGER NOT NULL,
    text            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    client_id       TEXT,
    viewed_by       INTEGER,
    viewed_at       INTEGER,
    PRIMARY KEY (conversation_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX messages_by_client_id
    ON messages (conversation_id, sender_id, client_id) WHERE client_id IS NOT NULL;
CREATE INDEX messages_recent_client_ids
    ON messages (conversation_id, sender_id, id, client_id) WHERE client_id IS NOT NULL;
PRAGMA user_version = 1;
";

/// Inserts `conversation` and `messages` as an older build did: no seq.
fn insert_without_seq(
    conn: &rusqlite::Connection,
    conversation: Option<(ConversationId, ConversationKey)>,
    messages: &[Message],
) {
    if let Some((id, key)) = conversation {
        conn.execute(
            "INSERT INTO conversations (id, lesson_id, mentor_id, student_id, created_at)
             VALUES (?1, ?2, ?3, ?4, 0)",
            (id.bytes(), key.lesson_id, key.mentor_id, key.student_id),
        )
        .unwrap();
    }
    for m in messages {
        conn.execute(
            "INSERT INTO messages (conversation_id, id, sender_id, text, created_at,
                                   client_id, viewed_by, viewed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            (
                m.conversation_id.bytes(),
                m.id.bytes(),
                m.sender_id,
                &m.text,
                m.created_at.0,
                &m.client_id,
                m.viewed_by,
                m.viewed_at.map(|at| at.0),
            ),
        )
        .unwrap();
    }
}

/// A version-1 journal segment (the format before seq, see
/// `src/store/sqlite/journal.rs`): header, then one framed record per op,
/// inserts without the trailing seq.
fn write_v1_segment(dir: &Path, number: u64, records: &[WriteOp]) {
    fn put_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    fn put_i64(buf: &mut Vec<u8>, value: Option<i64>) {
        match value {
            None => buf.push(0),
            Some(v) => {
                buf.push(1);
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let mut file = b"CHATJNL\0".to_vec();
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&0u32.to_le_bytes());
    for record in records {
        let mut payload = Vec::new();
        match record {
            WriteOp::Insert(m) => {
                payload.push(1);
                payload.extend_from_slice(&m.conversation_id.bytes());
                payload.extend_from_slice(&m.id.bytes());
                payload.extend_from_slice(&m.sender_id.to_le_bytes());
                payload.extend_from_slice(&m.created_at.0.to_le_bytes());
                put_str(&mut payload, &m.text);
                match &m.client_id {
                    None => payload.push(0),
                    Some(client_id) => {
                        payload.push(1);
                        put_str(&mut payload, client_id);
                    }
                }
                put_i64(&mut payload, m.viewed_by);
                put_i64(&mut payload, m.viewed_at.map(|at| at.0));
            }
            WriteOp::View {
                conversation_id,
                message_id,
                viewer_id,
                at,
            } => {
                payload.push(2);
                payload.extend_from_slice(&conversation_id.bytes());
                payload.extend_from_slice(&message_id.bytes());
                payload.extend_from_slice(&viewer_id.to_le_bytes());
                payload.extend_from_slice(&at.0.to_le_bytes());
            }
            WriteOp::Read { .. } => unreachable!("a version-1 journal holds no reads"),
        }
        file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        file.extend_from_slice(&payload);
    }
    std::fs::write(dir.join(format!("chat.journal.{number:020}")), file).unwrap();
}

/// Collects what the service logs.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens the store, with what the opening logged (it runs on this thread).
fn open_logged(dir: &Path) -> (SqliteStore, String) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let store = tracing::subscriber::with_default(subscriber, || {
        SqliteStore::open(dir, sqlite_defaults()).unwrap()
    });
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    (store, logged)
}

const NUMBERED_LOG: &str = "numbered the stored messages that had no seq";

/// What an older build left: a database without `seq`, and its journal
/// (version 1) not merged. At open the column is added, the journal
/// replayed, and every message numbered per conversation in (created_at,
/// id) order, whatever order the ids or the journal have. Once: a second
/// open numbers nothing and changes no seq.
#[tokio::test]
async fn an_older_builds_database_and_journal_are_numbered_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (key, other_key) = (random_key(), random_key());
    let (a, b) = (ObjectId::new(), ObjectId::new());
    let ids = ids(8);
    let at = |n: usize, created_at: i64| Message {
        created_at: Millis(created_at),
        ..message(ids[n], a, key.mentor_id, &format!("a{n}"), None)
    };
    // Ids and times disagree; 1 and 3 tie on time (id decides); 5 comes
    // from the journal but sorts between stored ones.
    let stored_a = [
        at(0, 300),
        Message {
            client_id: Some("legacy".into()),
            viewed_by: Some(key.student_id),
            viewed_at: Some(Millis(301)),
            ..at(1, 100)
        },
        at(2, 200),
        at(3, 100),
        at(4, 50),
    ];
    let journaled_a = at(5, 250);
    let stored_b = [
        message(ids[6], b, other_key.mentor_id, "b0", None),
        Message {
            created_at: Millis(1),
            ..message(ids[7], b, other_key.student_id, "b1", None)
        },
    ];
    {
        let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        conn.execute_batch(SCHEMA_WITHOUT_SEQ).unwrap();
        insert_without_seq(&conn, Some((a, key)), &stored_a);
        insert_without_seq(&conn, Some((b, other_key)), &stored_b);
    }
    write_v1_segment(
        dir.path(),
        3,
        &[
            WriteOp::Insert(journaled_a.clone()),
            WriteOp::View {
                conversation_id: a,
                message_id: ids[0],
                viewer_id: key.student_id,
                at: Millis(400),
            },
        ],
    );

    let (store, logged) = open_logged(dir.path());
    assert!(logged.contains(NUMBERED_LOG), "{logged}");
    assert!(logged.contains("messages=8"), "{logged}");
    assert!(
        logged.contains("messages.seq added"),
        "the column is added: {logged}"
    );
    assert_eq!(journal_files(dir.path()).len(), 1, "only the new segment");

    // (created_at, id): 4 (50), 1 (100), 3 (100), 2 (200), 5 (250), 0 (300).
    let expected_seq = [6, 2, 4, 3, 1, 5];
    let in_a = history(&store, a).await;
    assert_eq!(
        in_a.iter().map(|m| (m.id, m.seq)).collect::<Vec<_>>(),
        ids[..6]
            .iter()
            .copied()
            .zip(expected_seq)
            .collect::<Vec<_>>()
    );
    assert_eq!(in_a[0].viewed_by, Some(key.student_id), "the view replayed");
    assert_eq!(in_a[1].client_id.as_deref(), Some("legacy"));
    assert_eq!(
        seqs_of(&history(&store, b).await),
        [2, 1],
        "by time, not id"
    );
    for (n, seq) in expected_seq.into_iter().enumerate() {
        assert_eq!(store.message_at_seq(a, seq).await.unwrap(), Some(ids[n]));
    }
    assert_eq!(store.conversation(a).await.unwrap().unwrap().last_seq, 6);
    assert_eq!(
        store
            .conversation_for(other_key, Millis(0))
            .await
            .unwrap()
            .last_seq,
        2
    );
    // New writes go on from there; a resend of a legacy client id gets
    // the legacy message's seq.
    let new = inserts_of(a, key.student_id, "new", 1);
    assert_eq!(store.write_batch(ops(&new)).await.unwrap(), inserted([7]));
    let resend = Message {
        id: ObjectId::new(),
        ..stored_a[1].clone()
    };
    assert_eq!(
        store.write_batch(ops(&[resend])).await.unwrap(),
        [WriteOutcome::Duplicate {
            existing: ids[1],
            seq: 2
        }]
    );
    drop(store);
    let numbered = stored_seqs(dir.path());
    assert!(numbered.iter().all(|(_, _, seq)| seq.is_some()));

    let (store, logged) = open_logged(dir.path());
    assert!(!logged.contains(NUMBERED_LOG), "numbered again: {logged}");
    assert!(!logged.contains("messages.seq added"), "{logged}");
    drop(store);
    assert_eq!(stored_seqs(dir.path()), numbered, "no seq changed");
}

/// Rows an older build wrote into a numbered database (a rollback): at the
/// next open they are numbered after the conversation's highest seq, even
/// when older, and what was numbered keeps its seq.
#[tokio::test]
async fn rows_without_seq_in_a_numbered_database_are_numbered_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = random_key();
    let c;
    let first = {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        c = store.conversation_for(key, Millis(0)).await.unwrap().id;
        let first = inserts_of(c, key.mentor_id, "numbered", 2);
        assert_eq!(
            store.write_batch(ops(&first)).await.unwrap(),
            inserted([1, 2])
        );
        first
    };
    // The older build's rows: created long before, ids in reverse order.
    let rolled_back: Vec<Message> = ids(2)
        .into_iter()
        .rev()
        .enumerate()
        .map(|(n, id)| Message {
            created_at: Millis(n as i64),
            ..message(id, c, key.student_id, &format!("older build {n}"), None)
        })
        .collect();
    {
        let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        insert_without_seq(&conn, None, &rolled_back);
    }

    let (store, logged) = open_logged(dir.path());
    assert!(logged.contains("messages=2"), "{logged}");
    assert_eq!(store.message_at_seq(c, 1).await.unwrap(), Some(first[0].id));
    assert_eq!(store.message_at_seq(c, 2).await.unwrap(), Some(first[1].id));
    assert_eq!(
        store.message_at_seq(c, 3).await.unwrap(),
        Some(rolled_back[0].id)
    );
    assert_eq!(
        store.message_at_seq(c, 4).await.unwrap(),
        Some(rolled_back[1].id)
    );
    let next = inserts_of(c, key.mentor_id, "next", 1);
    assert_eq!(store.write_batch(ops(&next)).await.unwrap(), inserted([5]));
}

/// A version-1 journal over a numbered database (an older build ran after
/// a rollback and stopped without merging): replayed, a record SQLite
/// already holds keeps its seq, the rest are numbered after the highest.
#[tokio::test]
async fn a_version_1_journal_is_replayed_and_numbered() {
    let dir = tempfile::tempdir().unwrap();
    let (key, other_key) = (random_key(), random_key());
    let (a, b);
    let merged = {
        let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
        a = store.conversation_for(key, Millis(0)).await.unwrap().id;
        b = store
            .conversation_for(other_key, Millis(0))
            .await
            .unwrap()
            .id;
        let merged = inserts_of(a, key.mentor_id, "merged", 2);
        assert_eq!(
            store.write_batch(ops(&merged)).await.unwrap(),
            inserted([1, 2])
        );
        merged
    };
    let ids = ids(4);
    let journaled = |n: usize, conversation, created_at, client_id: Option<&str>| Message {
        created_at: Millis(created_at),
        ..message(
            ids[n],
            conversation,
            key.student_id,
            &format!("v1 {n}"),
            client_id,
        )
    };
    let (a3, b0, a4, a5) = (
        journaled(0, a, 1_000, None),
        journaled(1, b, 900, None),
        journaled(2, a, 1_000, None),
        journaled(3, a, 1_100, Some("v1")),
    );
    write_v1_segment(
        dir.path(),
        7,
        &[
            WriteOp::Insert(a3.clone()),
            WriteOp::Insert(b0.clone()),
            // A crash during a merge: the merged message journaled again.
            WriteOp::Insert(merged[1].clone()),
            WriteOp::Insert(a4.clone()),
            WriteOp::View {
                conversation_id: a,
                message_id: merged[0].id,
                viewer_id: other_key.mentor_id,
                at: Millis(5),
            },
            WriteOp::Insert(a5.clone()),
        ],
    );

    let (store, logged) = open_logged(dir.path());
    assert!(logged.contains("messages=4"), "{logged}");
    assert_eq!(
        journal_files(dir.path()),
        ["chat.journal.00000000000000000008"],
        "replayed and removed; the new segment follows it"
    );
    let in_a = history(&store, a).await;
    assert_eq!(
        in_a.iter().map(|m| (m.id, m.seq)).collect::<Vec<_>>(),
        [
            (merged[0].id, 1),
            (merged[1].id, 2),
            (a3.id, 3),
            (a4.id, 4),
            (a5.id, 5)
        ]
    );
    assert_eq!(in_a[0].viewed_by, Some(other_key.mentor_id));
    assert_eq!(seqs_of(&history(&store, b).await), [1]);
    assert_eq!(store.conversation(a).await.unwrap().unwrap().last_seq, 5);

    let resend = Message {
        id: ObjectId::new(),
        ..a5.clone()
    };
    let next = inserts_of(a, key.mentor_id, "next", 1);
    assert_eq!(
        store
            .write_batch(ops(&[resend, next[0].clone()]))
            .await
            .unwrap(),
        [
            WriteOutcome::Duplicate {
                existing: a5.id,
                seq: 5
            },
            WriteOutcome::Inserted { seq: 6 }
        ]
    );
}
