//! One conformance suite for every [`Store`] implementation.
//!
//! `store_conformance!(module, factory)` expands to one `#[tokio::test]` per
//! behaviour of the `Store` contract. `factory` is an async expression giving
//! `Option<Arc<dyn Store>>`; `None` skips the suite (the factory prints a
//! loud `SKIPPED: …` line naming what is missing). The checks use random
//! user and lesson ids, so a store shared by all tests (one MongoDB
//! database) works as well as a fresh one per test.
//!
//! Every variant runs every check: a check left out of the macro's list is
//! dead code, which `clippy -D warnings` refuses. The variants: SQLite as
//! configured by default (the journal's tail serves most reads), SQLite
//! without the journal (every batch merged before its ack), SQLite with
//! forced merges (a tail of two messages: the merge runs inside the checks,
//! proven against the database file), the in-memory reference store,
//! PostgreSQL when `CHAT_TEST_POSTGRES_URL` is set, and MongoDB when
//! `MONGO_URI` is set.

mod common;

use std::sync::Arc;

use chat_service::model::{Conversation, ConversationKey, Message, Millis, ObjectId, Seq};
use chat_service::store::{
    ConversationFilter, HistoryQuery, InboxEntry, ReadUpTo, Store, WriteOp, WriteOutcome,
};
use common::{history, ids, message, random_id, random_key};

macro_rules! store_conformance {
    ($module:ident, $factory:expr) => {
        store_conformance!($module, $factory, after_each = |_| async {});
    };
    // `after_each` gets the factory's store once a check passed on it.
    ($module:ident, $factory:expr, after_each = $after:expr) => {
        mod $module {
            use super::*;

            /// Runs `check` on a fresh store from the factory.
            async fn run<Check, Done>(name: &str, check: Check)
            where
                Check: FnOnce(Arc<dyn Store>) -> Done,
                Done: std::future::Future<Output = ()>,
            {
                match $factory.await {
                    Some(store) => {
                        check(store.clone()).await;
                        ($after)(&*store).await;
                    }
                    None => eprintln!("SKIPPED: {}::{name} conformance check", module_path!()),
                }
            }

            store_conformance!(@tests
                get_or_create_returns_one_conversation_per_key,
                conversation_lookup_by_id,
                conversation_filters_and_order,
                conversations_are_ordered_by_created_at,
                insert_then_history_oldest_first,
                history_pagination,
                history_is_cut_by_bytes,
                history_of_empty_conversation_is_empty,
                reinserting_the_same_id_is_idempotent,
                duplicate_client_id_stores_nothing,
                same_client_id_elsewhere_is_stored,
                view_applies_to_another_senders_message,
                view_is_refused_for_wrong_targets,
                view_after_insert_in_the_same_batch,
                a_repeated_view_is_already_viewed_and_keeps_the_first,
                text_round_trips_byte_exact,
                seqs_count_each_conversations_inserts_in_write_order,
                a_duplicate_reports_the_first_seq_and_uses_none,
                a_retried_batch_gets_the_same_seqs,
                a_partly_applied_batch_retried_whole_leaves_no_gap,
                message_at_seq_finds_each_message,
                conversations_report_last_seq,
                read_cursors_move_forward_only_and_posting_moves_the_senders,
                reads_in_a_batch_follow_its_order_and_a_retry_is_safe,
                the_inbox_counts_unread_and_waiting,
                ping_succeeds,
            );

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_get_or_create_yields_one_id() {
                let check = super::checks::concurrent_get_or_create_yields_one_id;
                run("concurrent_get_or_create_yields_one_id", check).await
            }
        }
    };
    (@tests $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                run(stringify!($check), super::checks::$check).await
            }
        )*
    };
}

store_conformance!(sqlite, async { Some(common::temp_sqlite()) });

// Every batch merged before its ack: the SQL paths instead of the tail's.
store_conformance!(sqlite_without_journal, async {
    Some(Arc::new(common::TempSqlite::without_journal()) as Arc<dyn Store>)
});

// Most batches end in a merge and reads meet SQLite and the tail together;
// after each check the database file shows the merges happened.
store_conformance!(
    sqlite_with_forced_merges,
    async { Some(Arc::new(forced_merges::open())) },
    after_each = forced_merges::assert_merged
);

store_conformance!(memory, async {
    Some(Arc::new(chat_service::store::memory::MemoryStore::new()) as Arc<dyn Store>)
});

// MongoDB: one shared database per run; the suite's random ids keep tests apart.
store_conformance!(mongodb, async {
    let Ok(uri) = std::env::var("MONGO_URI") else {
        eprintln!("SKIPPED: MONGO_URI is not set — MongoDB store conformance not run");
        return None;
    };
    let database = format!("chat_conformance_{}", chat_service::model::ObjectId::new());
    let settings = chat_service::store::mongo::MongoSettings {
        uri,
        database,
        ..chat_service::store::mongo::MongoSettings::from(&chat_service::config::Config::defaults())
    };
    let store = chat_service::store::mongo::MongoStore::connect(&settings)
        .await
        .expect("MONGO_URI is set but MongoDB cannot be reached");
    Some(Arc::new(store) as Arc<dyn Store>)
});

// PostgreSQL: the server `.ci/run` starts (CHAT_TEST_POSTGRES_URL), shared by
// every check; skipped loudly without one, failed under
// CHAT_TEST_REQUIRE_POSTGRES=1.
store_conformance!(postgres, common::postgres::store());

/// The forced-merges variant: a SQLite store whose journal may hold only
/// [`forced_merges::TAIL_MAX`] unmerged messages, so a batch's ack waits for
/// the merge (the path that otherwise runs only past 65,536 messages or
/// after 5 s) once the tail would exceed it.
mod forced_merges {
    use chat_service::model::{ConversationId, Millis, ObjectId};
    use chat_service::store::sqlite::{SqliteOptions, DATABASE_FILE};
    use chat_service::store::{Store, WriteOp, WriteOutcome};
    use rusqlite::{Connection, OpenFlags};

    use super::common::{history, ids, message, random_key, TempSqlite};

    /// Unmerged messages the journal may hold after an ack.
    pub const TAIL_MAX: usize = 2;

    pub fn open() -> TempSqlite {
        TempSqlite::with_options(SqliteOptions {
            journal_max: TAIL_MAX,
            ..super::common::sqlite_defaults()
        })
    }

    /// At most `TAIL_MAX` of the messages the store serves are missing from
    /// the database file, read on a connection of its own: a check that
    /// stored more than that cannot pass without a merge. Each check has a
    /// fresh store, so the file's conversations are all the check made.
    pub async fn assert_merged(sqlite: &TempSqlite) {
        let file = Connection::open_with_flags(
            sqlite.dir.path().join(DATABASE_FILE),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let conversations: Vec<[u8; 12]> = file
            .prepare("SELECT id FROM conversations")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut unmerged = 0;
        for id in conversations {
            let conversation: ConversationId = ObjectId::from_bytes(id);
            let in_file: usize = file
                .query_row(
                    "SELECT COUNT(*) FROM messages WHERE conversation_id = ?1",
                    [id],
                    |row| row.get(0),
                )
                .unwrap();
            let served = history(sqlite, conversation).await.len();
            assert!(
                in_file <= served,
                "the file holds messages the store does not serve"
            );
            unmerged += served - in_file;
        }
        assert!(
            unmerged <= TAIL_MAX,
            "{unmerged} served messages are not in SQLite; the tail may hold {TAIL_MAX}"
        );
    }

    /// The probe on its own: a batch beyond the tail's room reaches the
    /// file while the store is open (not only at its closing merge).
    #[tokio::test]
    async fn a_batch_beyond_the_tail_reaches_the_database_file() {
        let sqlite = open();
        let key = random_key();
        let conversation = sqlite.conversation_for(key, Millis(0)).await.unwrap();
        let ops: Vec<_> = ids(TAIL_MAX + 1)
            .into_iter()
            .map(|id| WriteOp::Insert(message(id, conversation.id, key.mentor_id, "m", None)))
            .collect();
        let outcomes = sqlite.write_batch(ops).await.unwrap();
        let seqs = 1..=TAIL_MAX as u64 + 1;
        assert_eq!(
            outcomes,
            seqs.map(|seq| WriteOutcome::Inserted { seq })
                .collect::<Vec<_>>()
        );
        assert_merged(&sqlite).await;
    }
}

mod checks {
    use super::*;

    /// The natural key a conversation is stored under.
    fn key_of(conversation: &Conversation) -> ConversationKey {
        ConversationKey {
            lesson_id: conversation.lesson_id,
            mentor_id: conversation.mentor_id,
            student_id: conversation.student_id,
        }
    }

    async fn write(store: &dyn Store, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
        store.write_batch(ops).await.unwrap()
    }

    /// `message` as the store returns it once it is number `seq`.
    fn with_seq(message: &Message, seq: Seq) -> Message {
        Message {
            seq,
            ..message.clone()
        }
    }

    /// `messages` numbered `first`, `first + 1`, … in their order.
    fn numbered(messages: &[Message], first: Seq) -> Vec<Message> {
        (first..)
            .zip(messages)
            .map(|(seq, message)| with_seq(message, seq))
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

    fn page(
        conversation_id: ObjectId,
        before: Option<ObjectId>,
        after: Option<ObjectId>,
        limit: usize,
    ) -> HistoryQuery {
        HistoryQuery {
            conversation_id,
            before,
            after,
            limit,
            max_bytes: usize::MAX,
        }
    }

    pub async fn get_or_create_returns_one_conversation_per_key(store: Arc<dyn Store>) {
        let key = random_key();
        let first = store.conversation_for(key, Millis(1_000)).await.unwrap();
        assert_eq!(key_of(&first), key);
        assert_eq!(first.created_at, Millis(1_000));

        let again = store.conversation_for(key, Millis(2_000)).await.unwrap();
        assert_eq!(
            again, first,
            "a second call must return the stored conversation"
        );

        let other_key = ConversationKey {
            lesson_id: random_id(),
            ..key
        };
        let other = store
            .conversation_for(other_key, Millis(3_000))
            .await
            .unwrap();
        assert_ne!(other.id, first.id);
        assert_eq!(key_of(&other), other_key);
    }

    pub async fn concurrent_get_or_create_yields_one_id(store: Arc<dyn Store>) {
        let key = random_key();
        let calls: Vec<_> = (0..50)
            .map(|n| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.conversation_for(key, Millis(n)).await })
            })
            .collect();
        let mut ids = Vec::new();
        for call in calls {
            ids.push(call.await.unwrap().unwrap().id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "50 concurrent calls for one key made {ids:?}");
        let listed = store
            .conversations(ConversationFilter {
                mentor_id: Some(key.mentor_id),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
    }

    pub async fn conversation_lookup_by_id(store: Arc<dyn Store>) {
        let created = store
            .conversation_for(random_key(), Millis(5))
            .await
            .unwrap();
        assert_eq!(store.conversation(created.id).await.unwrap(), Some(created));
        assert_eq!(store.conversation(ObjectId::new()).await.unwrap(), None);
    }

    pub async fn conversation_filters_and_order(store: Arc<dyn Store>) {
        let (mentor, other_mentor) = (random_id(), random_id());
        let (student, other_student) = (random_id(), random_id());
        let lesson = random_id();
        let create = |lesson_id, mentor_id, student_id, at| {
            let store = Arc::clone(&store);
            async move {
                let key = ConversationKey {
                    lesson_id,
                    mentor_id,
                    student_id,
                };
                store.conversation_for(key, Millis(at)).await.unwrap()
            }
        };
        let a = create(lesson, mentor, student, 1_000).await;
        let b = create(random_id(), mentor, other_student, 2_000).await;
        let c = create(lesson, other_mentor, student, 3_000).await;
        // `mentor` as the student of someone else's conversation.
        let d = create(random_id(), other_mentor, mentor, 4_000).await;

        let list = |mentor_id, student_id, participant, limit| {
            let store = Arc::clone(&store);
            async move {
                store
                    .conversations(ConversationFilter {
                        mentor_id,
                        student_id,
                        participant,
                        limit,
                    })
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            list(Some(mentor), None, None, 10).await,
            [a.clone(), b.clone()]
        );
        assert_eq!(
            list(None, Some(student), None, 10).await,
            [a.clone(), c.clone()]
        );
        assert_eq!(
            list(None, None, Some(mentor), 10).await,
            [a.clone(), b.clone(), d.clone()]
        );
        assert_eq!(
            list(None, None, Some(student), 10).await,
            [a.clone(), c.clone()]
        );
        assert_eq!(
            list(Some(mentor), Some(student), None, 10).await,
            std::slice::from_ref(&a)
        );
        assert_eq!(
            list(Some(other_mentor), None, Some(mentor), 10).await,
            std::slice::from_ref(&d)
        );
        assert_eq!(list(None, Some(other_student), Some(student), 10).await, []);
        assert_eq!(
            list(Some(mentor), None, None, 1).await,
            std::slice::from_ref(&a),
            "oldest first"
        );
        assert_eq!(list(None, None, Some(mentor), 2).await, [a, b]);
        assert_eq!(list(Some(random_id()), None, None, 10).await, []);
    }

    /// "Oldest first" is by `created_at` (the caller's), then id: not the
    /// order the conversations were created in.
    pub async fn conversations_are_ordered_by_created_at(store: Arc<dyn Store>) {
        let mentor = random_id();
        let create = |at| {
            let store = Arc::clone(&store);
            async move {
                let key = ConversationKey {
                    mentor_id: mentor,
                    ..random_key()
                };
                store.conversation_for(key, Millis(at)).await.unwrap()
            }
        };
        let late = create(3_000).await;
        let mut tied = [create(1_000).await, create(1_000).await];
        let middle = create(2_000).await;
        tied.sort_by_key(|conversation| conversation.id);
        let [first, second] = tied;
        let listed = store
            .conversations(ConversationFilter {
                mentor_id: Some(mentor),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed, [first, second, middle, late]);
    }

    pub async fn insert_then_history_oldest_first(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let other = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let ids = ids(6);
        let messages: Vec<_> = ids[..5]
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let sender = if n % 2 == 0 {
                    key.mentor_id
                } else {
                    key.student_id
                };
                message(*id, conversation.id, sender, &format!("message {n}"), None)
            })
            .collect();
        // Given newest first, listed oldest (smallest id) first; numbered
        // in the order written, so the newest id is seq 1.
        let ops = messages
            .iter()
            .rev()
            .cloned()
            .map(WriteOp::Insert)
            .collect();
        assert_eq!(write(&*store, ops).await, inserted(1..=5));
        let elsewhere = message(ids[5], other.id, key.mentor_id, "elsewhere", None);
        assert_eq!(
            write(&*store, vec![WriteOp::Insert(elsewhere.clone())]).await,
            inserted([1])
        );

        let expected: Vec<_> = (0..5)
            .map(|n| with_seq(&messages[n], 5 - n as Seq))
            .collect();
        assert_eq!(history(&*store, conversation.id).await, expected);
        assert_eq!(history(&*store, other.id).await, [with_seq(&elsewhere, 1)]);
    }

    pub async fn history_pagination(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        // Odd ids are never stored: cursors that name no message.
        let all_ids = ids(20);
        let stored: Vec<_> = all_ids.iter().step_by(2).copied().collect();
        let missing: Vec<_> = all_ids.iter().skip(1).step_by(2).copied().collect();
        let messages: Vec<_> = stored
            .iter()
            .enumerate()
            .map(|(n, id)| message(*id, conversation.id, key.student_id, &format!("m{n}"), None))
            .collect();
        write(
            &*store,
            messages.iter().cloned().map(WriteOp::Insert).collect(),
        )
        .await;
        // Pages carry each message's seq.
        let messages = numbered(&messages, 1);

        let c = conversation.id;
        let get = |query| {
            let store = Arc::clone(&store);
            async move { store.messages(query).await.unwrap().messages }
        };
        let m = |range: std::ops::Range<usize>| messages[range].to_vec();

        assert_eq!(
            get(page(c, None, None, 3)).await,
            m(7..10),
            "limit alone: newest N"
        );
        assert_eq!(get(page(c, None, None, 100)).await, m(0..10));
        assert_eq!(get(page(c, Some(stored[5]), None, 3)).await, m(2..5));
        assert_eq!(get(page(c, Some(stored[2]), None, 10)).await, m(0..2));
        assert_eq!(
            get(page(c, None, Some(stored[5]), 3)).await,
            m(6..9),
            "after: first N"
        );
        assert_eq!(get(page(c, None, Some(stored[7]), 10)).await, m(8..10));
        assert_eq!(
            get(page(c, Some(stored[6]), Some(stored[2]), 10)).await,
            m(3..6)
        );
        assert_eq!(
            get(page(c, Some(stored[9]), Some(stored[2]), 2)).await,
            m(3..5)
        );
        assert_eq!(get(page(c, Some(stored[3]), Some(stored[2]), 10)).await, []);
        assert_eq!(get(page(c, Some(stored[0]), None, 10)).await, []);
        assert_eq!(get(page(c, None, Some(stored[9]), 10)).await, []);

        // Cursors that name no message still bound by id.
        assert_eq!(get(page(c, Some(missing[4]), None, 2)).await, m(3..5));
        assert_eq!(get(page(c, None, Some(missing[4]), 2)).await, m(5..7));
        assert_eq!(
            get(page(c, Some(missing[6]), Some(missing[2]), 10)).await,
            m(3..7)
        );
        let (lowest, highest) = (
            ObjectId::from_bytes([0; 12]),
            ObjectId::from_bytes([0xff; 12]),
        );
        assert_eq!(get(page(c, None, Some(lowest), 2)).await, m(0..2));
        assert_eq!(get(page(c, Some(highest), None, 2)).await, m(8..10));
        assert_eq!(get(page(c, Some(lowest), None, 2)).await, []);
        assert_eq!(get(page(c, None, Some(highest), 2)).await, []);
    }

    /// `max_bytes` bounds the page's JSON from the end the query reads;
    /// a cut page says so, one message always comes, and continuing from
    /// the page's edge walks the whole history with no gap or repeat.
    pub async fn history_is_cut_by_bytes(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let c = conversation.id;
        let all = ids(12);
        let inserts = all
            .iter()
            .enumerate()
            .map(|(n, id)| {
                // Control characters take six bytes each in JSON.
                let text = format!("{}m{n}\"", "\u{1}".repeat(40 * (n % 4 + 1)));
                let sender = if n % 2 == 0 {
                    key.student_id
                } else {
                    key.mentor_id
                };
                let client_id = (n % 3 == 0).then(|| format!("c{n}"));
                WriteOp::Insert(message(*id, c, sender, &text, client_id.as_deref()))
            })
            .chain([4, 9].map(|n| WriteOp::View {
                conversation_id: c,
                message_id: all[n],
                viewer_id: if n % 2 == 0 {
                    key.mentor_id
                } else {
                    key.student_id
                },
                at: Millis(1_735_725_600_999),
            }))
            .collect();
        write(&*store, inserts).await;
        let messages = history(&*store, c).await;
        assert_eq!(seqs_of(&messages), (1..=12).collect::<Vec<_>>());
        assert!(messages[4].viewed_by.is_some() && messages[9].viewed_at.is_some());

        let json = |page: &[chat_service::model::Message]| serde_json::to_vec(page).unwrap().len();
        let get = |before, after, limit, max_bytes| {
            let store = Arc::clone(&store);
            async move {
                store
                    .messages(HistoryQuery {
                        conversation_id: c,
                        before,
                        after,
                        limit,
                        max_bytes,
                    })
                    .await
                    .unwrap()
            }
        };
        let expect = |page: chat_service::store::HistoryPage,
                      range: std::ops::Range<usize>,
                      truncated: bool,
                      what: &str| {
            assert_eq!(page.messages, messages[range.clone()], "{what}");
            assert_eq!(page.truncated, truncated, "{what}: truncated");
        };

        let newest_three = json(&messages[9..12]);
        expect(
            get(None, None, 100, newest_three).await,
            9..12,
            true,
            "newest end, exact fit",
        );
        expect(
            get(None, None, 100, newest_three - 1).await,
            10..12,
            true,
            "one byte short",
        );
        expect(
            get(Some(all[6]), None, 100, json(&messages[3..6])).await,
            3..6,
            true,
            "before: the newest before it",
        );
        expect(
            get(None, Some(all[1]), 100, json(&messages[2..6])).await,
            2..6,
            true,
            "after: the first after it",
        );
        expect(
            get(Some(all[8]), Some(all[2]), 100, json(&messages[3..5])).await,
            3..5,
            true,
            "between both cursors, read from after",
        );
        expect(
            get(Some(all[8]), Some(all[2]), 100, json(&messages[3..8])).await,
            3..8,
            false,
            "the whole range fits",
        );
        expect(
            get(None, None, 2, usize::MAX).await,
            10..12,
            false,
            "the count cuts first",
        );
        expect(
            get(None, None, 2, json(&messages[10..12])).await,
            10..12,
            false,
            "both at once",
        );

        // One message even when it alone is over the budget.
        expect(get(None, None, 100, 1).await, 11..12, true, "newest alone");
        expect(
            get(Some(all[5]), None, 100, 1).await,
            4..5,
            true,
            "before, alone",
        );
        expect(
            get(None, Some(all[5]), 100, 1).await,
            6..7,
            true,
            "after, alone",
        );
        expect(
            get(None, Some(all[10]), 100, 1).await,
            11..12,
            false,
            "the last one",
        );

        // Walking back from the newest page and forward from the oldest.
        let budget = json(&messages[0..3]) + 40;
        let (mut walked, mut before, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = get(before, None, 100, budget).await;
            assert!(json(&page.messages) <= budget, "page {pages} over budget");
            pages += 1;
            walked.splice(0..0, page.messages.iter().cloned());
            if !page.truncated {
                break;
            }
            before = page.messages.first().map(|first| first.id);
        }
        assert_eq!(walked, messages, "walking back with before");
        assert!(pages >= 4, "{pages} pages");
        let (mut walked, mut after) = (Vec::new(), Some(ObjectId::from_bytes([0; 12])));
        loop {
            let page = get(None, after, 100, budget).await;
            assert!(json(&page.messages) <= budget);
            walked.extend(page.messages.iter().cloned());
            if !page.truncated {
                break;
            }
            after = page.messages.last().map(|last| last.id);
        }
        assert_eq!(walked, messages, "walking forward with after");
    }

    pub async fn history_of_empty_conversation_is_empty(store: Arc<dyn Store>) {
        let conversation = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let c = conversation.id;
        let cursor = ObjectId::new();
        for query in [
            page(c, None, None, 10),
            page(c, Some(cursor), None, 10),
            page(c, None, Some(cursor), 10),
        ] {
            assert_eq!(store.messages(query).await.unwrap().messages, []);
        }
        // A conversation that does not exist reads the same.
        assert_eq!(
            store
                .messages(page(ObjectId::new(), None, None, 10))
                .await
                .unwrap()
                .messages,
            []
        );
    }

    pub async fn reinserting_the_same_id_is_idempotent(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let [plain, with_client_id] = ids(2).try_into().unwrap();
        let plain = message(plain, conversation.id, key.mentor_id, "once", None);
        let with_client_id = message(
            with_client_id,
            conversation.id,
            key.mentor_id,
            "twice?",
            Some("c-1"),
        );
        let batch = vec![
            WriteOp::Insert(plain.clone()),
            WriteOp::Insert(with_client_id.clone()),
        ];
        assert_eq!(write(&*store, batch.clone()).await, inserted([1, 2]));
        // A retried batch: the same ids again, client id included.
        assert_eq!(write(&*store, batch).await, inserted([1, 2]));
        assert_eq!(
            history(&*store, conversation.id).await,
            numbered(&[plain, with_client_id], 1)
        );
    }

    pub async fn duplicate_client_id_stores_nothing(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let ids = ids(4);
        let first = message(ids[0], conversation.id, key.student_id, "first", Some("a"));
        let resend = message(
            ids[1],
            conversation.id,
            key.student_id,
            "changed",
            Some("a"),
        );
        assert_eq!(
            write(&*store, vec![WriteOp::Insert(first.clone())]).await,
            inserted([1])
        );
        assert_eq!(
            write(&*store, vec![WriteOp::Insert(resend)]).await,
            [WriteOutcome::Duplicate {
                existing: ids[0],
                seq: 1
            }]
        );

        // Within one batch too.
        let third = message(ids[2], conversation.id, key.student_id, "third", Some("b"));
        let again = message(ids[3], conversation.id, key.student_id, "third", Some("b"));
        assert_eq!(
            write(
                &*store,
                vec![WriteOp::Insert(third.clone()), WriteOp::Insert(again)]
            )
            .await,
            [
                WriteOutcome::Inserted { seq: 2 },
                WriteOutcome::Duplicate {
                    existing: ids[2],
                    seq: 2
                }
            ]
        );
        assert_eq!(
            history(&*store, conversation.id).await,
            [with_seq(&first, 1), with_seq(&third, 2)]
        );
    }

    pub async fn same_client_id_elsewhere_is_stored(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let other = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let ids = ids(5);
        let batch = vec![
            message(
                ids[0],
                conversation.id,
                key.student_id,
                "from the student",
                Some("x"),
            ),
            message(
                ids[1],
                conversation.id,
                key.mentor_id,
                "from the mentor",
                Some("x"),
            ),
            message(
                ids[2],
                other.id,
                key.student_id,
                "another conversation",
                Some("x"),
            ),
            message(ids[3], conversation.id, key.mentor_id, "no client id", None),
            message(ids[4], conversation.id, key.mentor_id, "no client id", None),
        ];
        assert_eq!(
            write(
                &*store,
                batch.iter().cloned().map(WriteOp::Insert).collect()
            )
            .await,
            inserted([1, 2, 1, 3, 4]),
            "the other conversation's message is its number 1"
        );
        let mut expected = batch.clone();
        expected.remove(2);
        assert_eq!(
            history(&*store, conversation.id).await,
            numbered(&expected, 1)
        );
        assert_eq!(history(&*store, other.id).await, [with_seq(&batch[2], 1)]);
    }

    pub async fn view_applies_to_another_senders_message(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let [id] = ids(1).try_into().unwrap();
        let sent = message(id, conversation.id, key.mentor_id, "read me", None);
        write(&*store, vec![WriteOp::Insert(sent.clone())]).await;
        let sent = with_seq(&sent, 1);

        let view = WriteOp::View {
            conversation_id: conversation.id,
            message_id: id,
            viewer_id: key.student_id,
            at: Millis(1_735_725_601_234),
        };
        assert_eq!(
            write(&*store, vec![view.clone()]).await,
            [WriteOutcome::Viewed]
        );
        // Idempotent.
        assert_eq!(write(&*store, vec![view]).await, [WriteOutcome::Viewed]);

        let stored = history(&*store, conversation.id).await;
        let expected = chat_service::model::Message {
            viewed_by: Some(key.student_id),
            viewed_at: Some(Millis(1_735_725_601_234)),
            ..sent
        };
        assert_eq!(stored, [expected]);
    }

    pub async fn view_is_refused_for_wrong_targets(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let other = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let [own_id, elsewhere_id] = ids(2).try_into().unwrap();
        let own = message(own_id, conversation.id, key.student_id, "mine", None);
        let elsewhere = message(elsewhere_id, other.id, key.mentor_id, "not here", None);
        write(
            &*store,
            vec![
                WriteOp::Insert(own.clone()),
                WriteOp::Insert(elsewhere.clone()),
            ],
        )
        .await;

        let view = |conversation_id, message_id| WriteOp::View {
            conversation_id,
            message_id,
            viewer_id: key.student_id,
            at: Millis(42),
        };
        let outcomes = write(
            &*store,
            vec![
                view(conversation.id, own_id),          // own message
                view(conversation.id, elsewhere_id),    // another conversation's message
                view(conversation.id, ObjectId::new()), // unknown id
            ],
        )
        .await;
        assert_eq!(outcomes, vec![WriteOutcome::ViewTargetMissing; 3]);
        assert_eq!(history(&*store, conversation.id).await, [with_seq(&own, 1)]);
        assert_eq!(history(&*store, other.id).await, [with_seq(&elsewhere, 1)]);
    }

    pub async fn view_after_insert_in_the_same_batch(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let [id] = ids(1).try_into().unwrap();
        let sent = message(id, conversation.id, key.student_id, "hello", Some("h"));
        let outcomes = write(
            &*store,
            vec![
                WriteOp::Insert(sent.clone()),
                WriteOp::View {
                    conversation_id: conversation.id,
                    message_id: id,
                    viewer_id: key.mentor_id,
                    at: Millis(77),
                },
            ],
        )
        .await;
        assert_eq!(
            outcomes,
            [WriteOutcome::Inserted { seq: 1 }, WriteOutcome::Viewed]
        );
        let stored = history(&*store, conversation.id).await;
        assert_eq!(stored[0].viewed_by, Some(key.mentor_id));
        assert_eq!(stored[0].viewed_at, Some(Millis(77)));
    }

    pub async fn a_repeated_view_is_already_viewed_and_keeps_the_first(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let [first, second, third] = ids(3).try_into().unwrap();
        let sent = |id| message(id, conversation.id, key.mentor_id, "read me", None);
        write(
            &*store,
            vec![WriteOp::Insert(sent(first)), WriteOp::Insert(sent(second))],
        )
        .await;
        let view = |message_id, at| WriteOp::View {
            conversation_id: conversation.id,
            message_id,
            viewer_id: key.student_id,
            at: Millis(at),
        };

        // Batch by batch.
        assert_eq!(
            write(&*store, vec![view(first, 1_000)]).await,
            [WriteOutcome::Viewed]
        );
        assert_eq!(
            write(&*store, vec![view(first, 2_000)]).await,
            [WriteOutcome::AlreadyViewed]
        );
        // In one batch, of a message stored by an earlier one.
        assert_eq!(
            write(
                &*store,
                vec![view(second, 3_000), view(second, 4_000), view(first, 5_000)]
            )
            .await,
            [
                WriteOutcome::Viewed,
                WriteOutcome::AlreadyViewed,
                WriteOutcome::AlreadyViewed
            ]
        );
        // In the batch that inserts it.
        let outcomes = write(
            &*store,
            vec![
                WriteOp::Insert(sent(third)),
                view(third, 6_000),
                view(third, 7_000),
            ],
        )
        .await;
        assert_eq!(
            outcomes,
            [
                WriteOutcome::Inserted { seq: 3 },
                WriteOutcome::Viewed,
                WriteOutcome::AlreadyViewed
            ]
        );

        let viewed_at: Vec<_> = history(&*store, conversation.id)
            .await
            .iter()
            .map(|m| (m.viewed_by, m.viewed_at))
            .collect();
        let by_student = |at| (Some(key.student_id), Some(Millis(at)));
        assert_eq!(
            viewed_at,
            [by_student(1_000), by_student(3_000), by_student(6_000)],
            "the first view's time is kept"
        );
    }

    pub async fn text_round_trips_byte_exact(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let mut eight_kib = "é🎉x".repeat(8192 / 7);
        while eight_kib.len() < 8192 {
            eight_kib.push('z');
        }
        let texts = [
            "emoji 👋🏽 👨‍👩‍👧 🇺🇦".to_string(),
            "nul\0inside\0".to_string(),
            "שלום עולם · مرحبا بالعالم".to_string(),
            "  spaces, tabs\t, newlines\r\n  ".to_string(),
            "\u{feff}bom and \u{200b}zero width".to_string(),
            "quotes \" ' \\ and <html> &amp;".to_string(),
            eight_kib,
        ];
        let ids = ids(texts.len());
        let messages: Vec<_> = texts
            .iter()
            .zip(&ids)
            .map(|(text, id)| message(*id, conversation.id, key.mentor_id, text, Some("ü-ñ")))
            .collect();
        let client_ids: Vec<_> = (0..messages.len()).map(|n| format!("ü-ñ {n}")).collect();
        let messages: Vec<_> = messages
            .into_iter()
            .zip(&client_ids)
            .map(|(m, client_id)| chat_service::model::Message {
                client_id: Some(client_id.clone()),
                ..m
            })
            .collect();
        write(
            &*store,
            messages.iter().cloned().map(WriteOp::Insert).collect(),
        )
        .await;

        let stored = history(&*store, conversation.id).await;
        assert_eq!(stored.len(), texts.len());
        for (stored, text) in stored.iter().zip(&texts) {
            assert_eq!(stored.text.as_bytes(), text.as_bytes());
        }
        assert_eq!(stored, numbered(&messages, 1));
    }

    pub async fn seqs_count_each_conversations_inserts_in_write_order(store: Arc<dyn Store>) {
        let key = random_key();
        let a = store.conversation_for(key, Millis(0)).await.unwrap();
        let b = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let ids = ids(7);
        let to = |n: usize, conversation: &Conversation| {
            message(
                ids[n],
                conversation.id,
                key.mentor_id,
                &format!("m{n}"),
                None,
            )
        };
        // Interleaved, and a seq already set on the op is ignored.
        let first = vec![
            to(0, &a),
            to(1, &b),
            Message {
                seq: 99,
                ..to(2, &a)
            },
        ];
        let second = vec![to(3, &b), to(4, &b), to(5, &a)];
        let third = vec![to(6, &a)];
        let ops = |batch: &[Message]| batch.iter().cloned().map(WriteOp::Insert).collect();
        assert_eq!(write(&*store, ops(&first)).await, inserted([1, 1, 2]));
        assert_eq!(write(&*store, ops(&second)).await, inserted([2, 3, 3]));
        assert_eq!(write(&*store, ops(&third)).await, inserted([4]));

        let in_a = history(&*store, a.id).await;
        let in_b = history(&*store, b.id).await;
        assert_eq!(seqs_of(&in_a), [1, 2, 3, 4]);
        assert_eq!(seqs_of(&in_b), [1, 2, 3]);
        let expected_a = [&first[0], &first[2], &second[2], &third[0]].map(|m| m.id);
        assert_eq!(in_a.iter().map(|m| m.id).collect::<Vec<_>>(), expected_a);
    }

    /// A resend (same client id) reports the first message's id and seq,
    /// takes no number of its own, and stays a duplicate when it is retried.
    pub async fn a_duplicate_reports_the_first_seq_and_uses_none(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let c = conversation.id;
        let ids = ids(8);
        let student = key.student_id;
        let original = message(ids[0], c, student, "hello", Some("k1"));
        let other = message(ids[1], c, key.mentor_id, "hi", None);
        assert_eq!(
            write(
                &*store,
                vec![
                    WriteOp::Insert(original.clone()),
                    WriteOp::Insert(other.clone())
                ]
            )
            .await,
            inserted([1, 2])
        );
        let duplicate_of_first = WriteOutcome::Duplicate {
            existing: ids[0],
            seq: 1,
        };
        let resend = WriteOp::Insert(message(ids[2], c, student, "hello", Some("k1")));
        assert_eq!(
            write(&*store, vec![resend.clone()]).await,
            std::slice::from_ref(&duplicate_of_first)
        );
        // The next insert is number 3: the resend used no seq.
        let next = message(ids[3], c, student, "next", Some("k2"));
        assert_eq!(
            write(&*store, vec![WriteOp::Insert(next.clone())]).await,
            inserted([3])
        );
        // The resend again (a retried batch), and a resend of the newest
        // together with new messages in one batch.
        let later = message(ids[5], c, student, "later", None);
        let outcomes = write(
            &*store,
            vec![
                resend,
                WriteOp::Insert(message(ids[4], c, student, "next", Some("k2"))),
                WriteOp::Insert(later.clone()),
            ],
        )
        .await;
        assert_eq!(
            outcomes,
            [
                duplicate_of_first,
                WriteOutcome::Duplicate {
                    existing: ids[3],
                    seq: 3
                },
                WriteOutcome::Inserted { seq: 4 }
            ]
        );
        // A resend within the batch that stores the original.
        let fresh = message(ids[6], c, student, "fresh", Some("k3"));
        let outcomes = write(
            &*store,
            vec![
                WriteOp::Insert(fresh.clone()),
                WriteOp::Insert(message(ids[7], c, student, "fresh", Some("k3"))),
            ],
        )
        .await;
        assert_eq!(
            outcomes,
            [
                WriteOutcome::Inserted { seq: 5 },
                WriteOutcome::Duplicate {
                    existing: ids[6],
                    seq: 5
                }
            ]
        );
        assert_eq!(
            history(&*store, c).await,
            numbered(&[original, other, next, later, fresh], 1)
        );
        assert_eq!(store.conversation(c).await.unwrap().unwrap().last_seq, 5);
    }

    /// The same batch again (the writer retries a batch whose reply was
    /// lost) reports the seqs of its first try and stores nothing twice.
    pub async fn a_retried_batch_gets_the_same_seqs(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let other = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let c = conversation.id;
        let ids = ids(6);
        let messages = [
            message(ids[0], c, key.student_id, "plain", None),
            message(ids[1], c, key.student_id, "with a client id", Some("r1")),
            message(ids[2], other.id, key.mentor_id, "elsewhere", None),
            message(ids[3], c, key.mentor_id, "mentor", Some("r1")),
        ];
        let mut batch: Vec<_> = messages.iter().cloned().map(WriteOp::Insert).collect();
        batch.push(WriteOp::View {
            conversation_id: c,
            message_id: ids[0],
            viewer_id: key.mentor_id,
            at: Millis(5),
        });
        let expected = {
            let mut outcomes = inserted([1, 2, 1, 3]);
            outcomes.push(WriteOutcome::Viewed);
            outcomes
        };
        assert_eq!(write(&*store, batch.clone()).await, expected);
        assert_eq!(write(&*store, batch.clone()).await, expected, "retried");
        assert_eq!(write(&*store, batch).await, expected, "retried again");

        // Numbering goes on after the last seq of the first try.
        let after = message(ids[4], c, key.mentor_id, "after", None);
        let elsewhere = message(ids[5], other.id, key.mentor_id, "elsewhere 2", None);
        assert_eq!(
            write(
                &*store,
                vec![
                    WriteOp::Insert(after.clone()),
                    WriteOp::Insert(elsewhere.clone())
                ]
            )
            .await,
            inserted([4, 2])
        );
        let mut viewed = with_seq(&messages[0], 1);
        viewed.viewed_by = Some(key.mentor_id);
        viewed.viewed_at = Some(Millis(5));
        assert_eq!(
            history(&*store, c).await,
            [
                viewed,
                with_seq(&messages[1], 2),
                with_seq(&messages[3], 3),
                with_seq(&after, 4)
            ]
        );
        assert_eq!(
            history(&*store, other.id).await,
            [with_seq(&messages[2], 1), with_seq(&elsewhere, 2)]
        );
    }

    /// `Err(Unavailable)` may leave a batch partly applied; the retry of
    /// the whole batch keeps the applied part's seqs and numbers the rest
    /// after them.
    pub async fn a_partly_applied_batch_retried_whole_leaves_no_gap(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let c = conversation.id;
        let messages: Vec<_> = ids(5)
            .into_iter()
            .enumerate()
            .map(|(n, id)| {
                let client_id = (n % 2 == 0).then(|| format!("p{n}"));
                message(
                    id,
                    c,
                    key.student_id,
                    &format!("p{n}"),
                    client_id.as_deref(),
                )
            })
            .collect();
        let ops: Vec<_> = messages.iter().cloned().map(WriteOp::Insert).collect();
        assert_eq!(write(&*store, ops[..2].to_vec()).await, inserted([1, 2]));
        assert_eq!(write(&*store, ops.clone()).await, inserted(1..=5));
        assert_eq!(history(&*store, c).await, numbered(&messages, 1));
        for seq in 1..=5 {
            assert_eq!(
                store.message_at_seq(c, seq).await.unwrap(),
                Some(messages[seq as usize - 1].id),
                "seq {seq}"
            );
        }
    }

    pub async fn message_at_seq_finds_each_message(store: Arc<dyn Store>) {
        let key = random_key();
        let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
        let other = store
            .conversation_for(random_key(), Millis(0))
            .await
            .unwrap();
        let c = conversation.id;
        let ids = ids(7);
        let at = |conversation_id, seq| {
            let store = Arc::clone(&store);
            async move { store.message_at_seq(conversation_id, seq).await.unwrap() }
        };
        assert_eq!(at(c, 1).await, None, "nothing stored yet");
        // Over three batches, the other conversation's in between.
        let insert = |n: usize, conversation_id| {
            WriteOp::Insert(message(ids[n], conversation_id, key.mentor_id, "m", None))
        };
        write(
            &*store,
            vec![insert(0, c), insert(1, other.id), insert(2, c)],
        )
        .await;
        write(&*store, vec![insert(3, c), insert(4, other.id)]).await;
        write(&*store, vec![insert(5, c), insert(6, c)]).await;

        for (seq, n) in [(1, 0), (2, 2), (3, 3), (4, 5), (5, 6)] {
            assert_eq!(at(c, seq).await, Some(ids[n]), "seq {seq}");
        }
        assert_eq!(at(other.id, 1).await, Some(ids[1]));
        assert_eq!(at(other.id, 2).await, Some(ids[4]));
        for seq in [
            0,
            6,
            7,
            1_000,
            i64::MAX as Seq,
            i64::MAX as Seq + 1,
            Seq::MAX,
        ] {
            assert_eq!(at(c, seq).await, None, "seq {seq}");
        }
        assert_eq!(at(other.id, 3).await, None);
        assert_eq!(at(ObjectId::new(), 1).await, None, "unknown conversation");
    }

    /// `last_seq`: 0 while empty, then the newest seq, wherever a
    /// conversation is read (get-or-create, by id, listed).
    pub async fn conversations_report_last_seq(store: Arc<dyn Store>) {
        let key = random_key();
        let created = store.conversation_for(key, Millis(10)).await.unwrap();
        assert_eq!(created.last_seq, 0);
        let empty_key = ConversationKey {
            lesson_id: random_id(),
            ..key
        };
        let empty = store.conversation_for(empty_key, Millis(20)).await.unwrap();
        let c = created.id;
        let listed = |mentor_id| {
            let store = Arc::clone(&store);
            async move {
                store
                    .conversations(ConversationFilter {
                        mentor_id: Some(mentor_id),
                        limit: 10,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .iter()
                    .map(|conversation| (conversation.id, conversation.last_seq))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(store.conversation(c).await.unwrap().unwrap().last_seq, 0);
        assert_eq!(listed(key.mentor_id).await, [(c, 0), (empty.id, 0)]);

        let ids = ids(4);
        let ops = |range: std::ops::Range<usize>| {
            ids[range]
                .iter()
                .map(|id| WriteOp::Insert(message(*id, c, key.student_id, "x", None)))
                .collect()
        };
        write(&*store, ops(0..3)).await;
        let check = |last_seq: Seq| {
            let store = Arc::clone(&store);
            let created = created.clone();
            async move {
                let again = store.conversation_for(key, Millis(99)).await.unwrap();
                assert_eq!(
                    again,
                    Conversation {
                        last_seq,
                        ..created.clone()
                    },
                    "get-or-create"
                );
                assert_eq!(
                    store.conversation(c).await.unwrap().unwrap().last_seq,
                    last_seq,
                    "by id"
                );
            }
        };
        check(3).await;
        assert_eq!(listed(key.mentor_id).await, [(c, 3), (empty.id, 0)]);
        // A view changes nothing; the next insert does.
        write(
            &*store,
            vec![WriteOp::View {
                conversation_id: c,
                message_id: ids[0],
                viewer_id: key.mentor_id,
                at: Millis(1),
            }],
        )
        .await;
        check(3).await;
        write(&*store, ops(3..4)).await;
        check(4).await;
        assert_eq!(listed(key.mentor_id).await, [(c, 4), (empty.id, 0)]);
        let by_participant = store
            .conversations(ConversationFilter {
                participant: Some(key.student_id),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            by_participant
                .iter()
                .map(|c| c.last_seq)
                .collect::<Vec<_>>(),
            [4, 0]
        );
    }

    fn read(conversation: &Conversation, user_id: i64, up_to: ReadUpTo) -> WriteOp {
        WriteOp::Read {
            conversation_id: conversation.id,
            user_id,
            up_to,
        }
    }

    /// Posts `texts` by `sender` in one batch, `created_at` a millisecond
    /// apart from `at`.
    async fn post(
        store: &dyn Store,
        conversation: &Conversation,
        sender: i64,
        texts: &[&str],
        at: i64,
    ) -> Vec<Message> {
        let messages: Vec<Message> = ids(texts.len())
            .into_iter()
            .zip(texts)
            .enumerate()
            .map(|(n, (id, text))| Message {
                created_at: Millis(at + n as i64),
                ..message(id, conversation.id, sender, text, None)
            })
            .collect();
        let outcomes = write(
            store,
            messages.iter().cloned().map(WriteOp::Insert).collect(),
        )
        .await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, WriteOutcome::Inserted { .. })),
            "{outcomes:?}"
        );
        messages
    }

    async fn one(store: &dyn Store, op: WriteOp) -> WriteOutcome {
        write(store, vec![op]).await.remove(0)
    }

    async fn entry(store: &dyn Store, caller: i64, conversation: &Conversation) -> InboxEntry {
        let mut entries = store
            .inbox(caller, vec![conversation.clone()])
            .await
            .unwrap();
        assert_eq!(entries.len(), 1);
        entries.remove(0)
    }

    /// CONTRACT §6 read state: a cursor moves by `read` (a seq) and by
    /// `viewed` (a message of the other participant), never back, never
    /// beyond the last seq; posting moves the sender's own cursor.
    pub async fn read_cursors_move_forward_only_and_posting_moves_the_senders(
        store: Arc<dyn Store>,
    ) {
        let key = random_key();
        let (mentor, student) = (key.mentor_id, key.student_id);
        let c = store.conversation_for(key, Millis(0)).await.unwrap();
        let store = &*store;
        let sent = post(store, &c, student, &["a", "b", "c"], 1_000).await;

        assert_eq!(
            one(store, read(&c, mentor, ReadUpTo::Seq(2))).await,
            WriteOutcome::ReadMoved { last_read_seq: 2 }
        );
        for seq in [1, 2] {
            assert_eq!(
                one(store, read(&c, mentor, ReadUpTo::Seq(seq))).await,
                WriteOutcome::ReadUnchanged { last_read_seq: 2 },
                "seq {seq} does not move it back"
            );
        }
        assert_eq!(
            one(store, read(&c, mentor, ReadUpTo::Seq(4))).await,
            WriteOutcome::SeqBeyondLast { last_seq: 3 }
        );
        let m = entry(store, mentor, &c).await;
        assert_eq!(
            (m.last_read_seq, m.unread_count, m.conversation.last_seq),
            (2, 1, 3)
        );
        let s = entry(store, student, &c).await;
        assert_eq!(s.other_last_read_seq, 2, "for seen ticks");
        assert_eq!(s.unread_count, 0);
        assert_eq!(s.last_read_seq, 3, "their own newest message");

        assert_eq!(
            one(store, read(&c, mentor, ReadUpTo::Message(sent[2].id))).await,
            WriteOutcome::ReadMoved { last_read_seq: 3 }
        );
        assert_eq!(
            one(store, read(&c, student, ReadUpTo::Message(sent[0].id))).await,
            WriteOutcome::ViewTargetMissing,
            "their own message"
        );
        assert_eq!(
            one(store, read(&c, mentor, ReadUpTo::Message(ObjectId::new()))).await,
            WriteOutcome::ViewTargetMissing,
            "an unknown message"
        );
        let elsewhere = store
            .conversation_for(
                ConversationKey {
                    lesson_id: random_id(),
                    ..key
                },
                Millis(0),
            )
            .await
            .unwrap();
        assert_eq!(
            one(
                store,
                read(&elsewhere, mentor, ReadUpTo::Message(sent[1].id))
            )
            .await,
            WriteOutcome::ViewTargetMissing,
            "a message of another conversation"
        );
        assert_eq!(entry(store, mentor, &elsewhere).await.last_read_seq, 0);
        assert_eq!(entry(store, mentor, &c).await.unread_count, 0);

        let reply = post(store, &c, mentor, &["reply"], 2_000).await;
        let m = entry(store, mentor, &c).await;
        assert_eq!(
            (m.last_read_seq, m.unread_count, m.conversation.last_seq),
            (4, 0, 4)
        );
        assert_eq!(
            m.last_message.as_ref().map(|last| (last.id, last.seq)),
            Some((reply[0].id, 4))
        );
        assert_eq!(m.waiting_since, None, "the mentor spoke last");
        let s = entry(store, student, &c).await;
        assert_eq!(
            (s.unread_count, s.other_last_read_seq, s.last_read_seq),
            (1, 4, 3)
        );
        assert_eq!(
            one(store, read(&c, mentor, ReadUpTo::Seq(3))).await,
            WriteOutcome::ReadUnchanged { last_read_seq: 4 }
        );
    }

    /// A batch's reads answer as if applied in its order (a read sees the
    /// inserts before it, not those after it); the same batch retried stores
    /// nothing twice and leaves the cursors where the first try put them.
    pub async fn reads_in_a_batch_follow_its_order_and_a_retry_is_safe(store: Arc<dyn Store>) {
        let key = random_key();
        let (mentor, student) = (key.mentor_id, key.student_id);
        let c = store.conversation_for(key, Millis(0)).await.unwrap();
        let [first, second, answer]: [ObjectId; 3] = ids(3).try_into().unwrap();
        let batch = vec![
            WriteOp::Insert(message(first, c.id, student, "first", None)),
            read(&c, mentor, ReadUpTo::Seq(1)),
            read(&c, mentor, ReadUpTo::Message(second)),
            WriteOp::Insert(message(second, c.id, student, "second", None)),
            read(&c, mentor, ReadUpTo::Seq(3)),
            WriteOp::View {
                conversation_id: c.id,
                message_id: second,
                viewer_id: mentor,
                at: Millis(7),
            },
            read(&c, mentor, ReadUpTo::Message(second)),
            WriteOp::Insert(message(answer, c.id, mentor, "answer", None)),
            read(&c, mentor, ReadUpTo::Seq(3)),
        ];
        let outcomes = write(&*store, batch.clone()).await;
        assert_eq!(
            outcomes,
            [
                WriteOutcome::Inserted { seq: 1 },
                WriteOutcome::ReadMoved { last_read_seq: 1 },
                WriteOutcome::ViewTargetMissing,
                WriteOutcome::Inserted { seq: 2 },
                WriteOutcome::SeqBeyondLast { last_seq: 2 },
                WriteOutcome::Viewed,
                WriteOutcome::ReadMoved { last_read_seq: 2 },
                WriteOutcome::Inserted { seq: 3 },
                WriteOutcome::ReadUnchanged { last_read_seq: 3 },
            ]
        );
        let retried = write(&*store, batch.clone()).await;
        for (n, op) in batch.iter().enumerate() {
            if !matches!(op, WriteOp::Read { .. }) {
                let expected = match &outcomes[n] {
                    WriteOutcome::Viewed => WriteOutcome::AlreadyViewed,
                    other => other.clone(),
                };
                assert!(
                    retried[n] == expected || retried[n] == outcomes[n],
                    "op {n}: {:?} then {:?}",
                    outcomes[n],
                    retried[n]
                );
            }
        }
        assert_eq!(
            history(&*store, c.id).await.len(),
            3,
            "nothing stored twice"
        );
        let m = entry(&*store, mentor, &c).await;
        assert_eq!((m.last_read_seq, m.unread_count), (3, 0));
        let s = entry(&*store, student, &c).await;
        assert_eq!((s.last_read_seq, s.unread_count), (2, 1));
        assert_eq!(s.other_last_read_seq, 3);
    }

    /// The inbox of a list, in the list's order: last message, unread count,
    /// both cursors and `waiting_since` (the mentor's only).
    pub async fn the_inbox_counts_unread_and_waiting(store: Arc<dyn Store>) {
        let key_a = random_key();
        let mentor = key_a.mentor_id;
        let key_b = ConversationKey {
            student_id: random_id(),
            ..key_a
        };
        let key_c = ConversationKey {
            lesson_id: random_id(),
            student_id: random_id(),
            ..key_a
        };
        let a = store.conversation_for(key_a, Millis(1)).await.unwrap();
        let b = store.conversation_for(key_b, Millis(2)).await.unwrap();
        let c = store.conversation_for(key_c, Millis(3)).await.unwrap();
        let store = &*store;
        post(store, &b, key_b.student_id, &["b asks"], 1_000).await;
        let asked = post(store, &a, key_a.student_id, &["a asks", "a again"], 2_000).await;
        post(store, &b, mentor, &["b answered"], 3_000).await;

        // Not in creation order: the inbox keeps the caller's order.
        let listed = vec![c.clone(), a.clone(), b.clone()];
        let inbox = store.inbox(mentor, listed.clone()).await.unwrap();
        let listed_ids: Vec<ObjectId> = inbox.iter().map(|e| e.conversation.id).collect();
        assert_eq!(listed_ids, [c.id, a.id, b.id]);
        let (ic, ia, ib) = (&inbox[0], &inbox[1], &inbox[2]);
        assert_eq!(ia.unread_count, 2);
        assert_eq!(
            ia.last_message.as_ref().map(|m| m.text.as_str()),
            Some("a again")
        );
        assert_eq!(ia.waiting_since, Some(asked[0].created_at));
        assert_eq!(ia.conversation.last_seq, 2);
        assert_eq!(ib.waiting_since, None, "answered");
        assert_eq!((ib.unread_count, ib.last_read_seq), (0, 2));
        assert_eq!(ib.other_last_read_seq, 1, "the student's own message");
        assert_eq!(ic.waiting_since, None, "nobody spoke");
        assert_eq!(ic.last_message, None);
        assert_eq!((ic.conversation.last_seq, ic.unread_count), (0, 0));

        // Reading does not end the wait; answering does.
        one(store, read(&a, mentor, ReadUpTo::Seq(1))).await;
        let read_a = entry(store, mentor, &a).await;
        assert_eq!(read_a.unread_count, 1);
        assert_eq!(read_a.waiting_since, Some(asked[0].created_at));
        let student = entry(store, key_a.student_id, &a).await;
        assert_eq!(student.waiting_since, None, "never for the student");
        assert_eq!(
            (
                student.last_read_seq,
                student.other_last_read_seq,
                student.unread_count
            ),
            (2, 1, 0)
        );
        post(store, &a, mentor, &["answer"], 4_000).await;
        let answered = entry(store, mentor, &a).await;
        assert_eq!(
            (
                answered.waiting_since,
                answered.unread_count,
                answered.last_read_seq
            ),
            (None, 0, 3)
        );
        assert!(store.inbox(mentor, Vec::new()).await.unwrap().is_empty());
    }

    pub async fn ping_succeeds(store: Arc<dyn Store>) {
        store.ping().await.unwrap();
        assert!(!store.kind().is_empty());
    }
}
