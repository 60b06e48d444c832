//! SQLite-only behaviour: durability across a reopen and a crash (the
//! journal replayed), the journal absorbing writes while another process
//! holds SQLite's lock, and lock contention reported as `Unavailable` (what
//! the writer retries) once the journal is full or off.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use chat_service::model::{ConversationId, ConversationKey, Millis, UserId};
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

/// Writes `count` messages into the conversation for `key`, in one batch.
async fn write_messages(store: &SqliteStore, key: ConversationKey, count: usize) {
    let conversation = store.conversation_for(key, Millis(1)).await.unwrap();
    let ops = numbered_inserts(conversation.id, key.student_id, count);
    let outcomes = store.write_batch(ops).await.unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Inserted; count]);
}

async fn assert_messages_stored(dir: &Path, key: ConversationKey, count: usize) {
    let store = SqliteStore::open(dir, sqlite_defaults()).unwrap();
    let conversation = store.conversation_for(key, Millis(2)).await.unwrap();
    assert_eq!(
        conversation.created_at,
        Millis(1),
        "the conversation was recreated"
    );
    let texts: Vec<String> = history(&store, conversation.id)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    let expected: Vec<String> = (0..count).map(|n| format!("durable {n}")).collect();
    assert_eq!(texts, expected);
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
    assert_eq!(outcomes, [WriteOutcome::Inserted, WriteOutcome::Inserted]);
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
            WriteOutcome::Duplicate { existing: first },
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
        store
            .recent_client_ids(conversation.id, key.student_id, 10)
            .await
            .unwrap(),
        [("c1".to_string(), first)]
    );
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
        [WriteOutcome::Inserted, WriteOutcome::Inserted],
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
        [WriteOutcome::Inserted]
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
        [WriteOutcome::Inserted]
    );
    assert_eq!(history(&store, conversation.id).await.len(), 1);
}

/// A retried insert of a message SQLite already holds (merged by an earlier
/// run) is `Inserted` again and stored once, and its journaled copy does not
/// hide the stored message's view.
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
            [WriteOutcome::Inserted, WriteOutcome::Viewed]
        );
    }
    assert_eq!(stored_rows(dir.path()).len(), 1, "merged at close");

    let store = SqliteStore::open(dir.path(), sqlite_defaults()).unwrap();
    let retry = WriteOp::Insert(message(id, conversation_id, key.student_id, "once", None));
    assert_eq!(
        store.write_batch(vec![retry]).await.unwrap(),
        [WriteOutcome::Inserted]
    );
    let page = history(&store, conversation_id).await;
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0].viewed_by,
        Some(key.mentor_id),
        "the stored copy wins"
    );
    // A view now lands on the journaled copy; the merge must keep it.
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
    drop(store);
    assert_eq!(
        stored_rows(dir.path()),
        [("once".to_string(), Some(key.mentor_id + 1))]
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
