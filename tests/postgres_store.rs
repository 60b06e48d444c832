//! The PostgreSQL store beyond the conformance suite: configuration,
//! migrations, the stored layout, and several nodes writing one
//! conversation (two stores with pools of their own, as two processes
//! would). Needs `CHAT_TEST_POSTGRES_URL` (scripts/test.sh starts a
//! server); skipped loudly without one.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chat_service::model::{Millis, ObjectId};
use chat_service::store::postgres::PostgresStore;
use chat_service::store::{ReadUpTo, Store, StoreError, WriteOp, WriteOutcome};
use common::postgres::psql;
use common::{history, message, random_key};

/// A store on a database of its own.
async fn fresh_store() -> Option<(PostgresStore, String)> {
    common::postgres::url()?;
    let url = common::postgres::fresh_database();
    let store = PostgresStore::connect(&common::postgres::settings(&url))
        .await
        .expect("connect");
    Some((store, url))
}

/// Retries a batch while the store says `Unavailable`, as the writer does.
async fn write_retrying(store: &dyn Store, ops: Vec<WriteOp>) -> Vec<WriteOutcome> {
    for _ in 0..50 {
        match store.write_batch(ops.clone()).await {
            Ok(outcomes) => return outcomes,
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => panic!("{error}"),
        }
    }
    panic!("still unavailable after 50 tries");
}

#[test]
fn both_store_variables_refuse_to_start_naming_both() {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .env_clear()
        .env("DJANGO_BASE_URL", "http://127.0.0.1:9")
        .env("MONGO_URI", "mongodb://127.0.0.1:9")
        .env("CHAT_POSTGRES_URL", "postgres://127.0.0.1:9/chat")
        .env("PORT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run chat-service");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MONGO_URI") && stderr.contains("CHAT_POSTGRES_URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unusable_url_is_refused_naming_the_variable() {
    let settings = common::postgres::settings("postgres://u@h:notaport/db");
    match PostgresStore::connect(&settings).await {
        Err(StoreError::Internal(reason)) => {
            assert!(reason.contains("CHAT_POSTGRES_URL"), "{reason}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("connected with a bad URL"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    if common::postgres::url().is_none() {
        return;
    }
    let url = common::postgres::fresh_database();
    let settings = common::postgres::settings(&url);
    let starts = (0..6).map(|_| {
        let settings = settings.clone();
        tokio::spawn(async move { PostgresStore::connect(&settings).await.map(drop) })
    });
    for start in starts {
        start.await.expect("join").expect("connect and migrate");
    }
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(version::text, ',') FROM chat.schema_migrations"
        ),
        "1"
    );
    // A schema newer than the build (a rolling upgrade's old node) is used.
    psql(
        &url,
        "INSERT INTO chat.schema_migrations (version, description) VALUES (99, 'from a newer build')",
    );
    PostgresStore::connect(&settings)
        .await
        .expect("starts on a newer schema");
}

#[tokio::test]
async fn texts_with_nul_are_exact_through_the_store_and_readable_in_sql() {
    let Some((store, url)) = fresh_store().await else {
        return;
    };
    let key = random_key();
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let id = ObjectId::new();
    let text = "before\0after";
    let outcomes = store
        .write_batch(vec![WriteOp::Insert(message(
            id,
            conversation.id,
            key.student_id,
            text,
            Some("retry\0key"),
        ))])
        .await
        .unwrap();
    assert_eq!(outcomes, [WriteOutcome::Inserted { seq: 1 }]);
    assert_eq!(history(&store, conversation.id).await[0].text, text);
    assert_eq!(
        psql(&url, "SELECT text, encode(id, 'hex') FROM chat.messages"),
        format!("before\u{fffd}after|{id}")
    );
}

/// Two nodes (two stores, two pools) write one conversation at once: the
/// seqs they are given are 1..N with no gap or repeat, and history agrees
/// with every outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_one_conversation_share_one_gap_free_sequence() {
    let Some((first, url)) = fresh_store().await else {
        return;
    };
    let second = PostgresStore::connect(&common::postgres::settings(&url))
        .await
        .unwrap();
    let key = random_key();
    let conversation = first.conversation_for(key, Millis(0)).await.unwrap();
    const BATCHES: usize = 60;
    const PER_BATCH: usize = 5;
    let nodes: Vec<Arc<dyn Store>> = vec![Arc::new(first), Arc::new(second)];
    let writers = nodes.iter().enumerate().map(|(node, store)| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut given = Vec::new();
            for batch in 0..BATCHES {
                let messages: Vec<_> = (0..PER_BATCH)
                    .map(|n| {
                        message(
                            ObjectId::new(),
                            conversation.id,
                            key.student_id,
                            &format!("node {node} batch {batch} #{n}"),
                            None,
                        )
                    })
                    .collect();
                let ops = messages.iter().cloned().map(WriteOp::Insert).collect();
                for (message, outcome) in
                    messages.into_iter().zip(write_retrying(&*store, ops).await)
                {
                    match outcome {
                        WriteOutcome::Inserted { seq } => given.push((message.id, seq)),
                        other => panic!("{other:?}"),
                    }
                }
            }
            given
        })
    });
    let mut given = Vec::new();
    for writer in writers {
        given.extend(writer.await.expect("join"));
    }
    let total = (2 * BATCHES * PER_BATCH) as u64;
    let mut seqs: Vec<u64> = given.iter().map(|(_, seq)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let stored = history(&*nodes[0], conversation.id).await;
    assert_eq!(stored.len() as u64, total);
    for message in &stored {
        assert!(given.contains(&(message.id, message.seq)), "{message:?}");
    }
    let reread = nodes[1]
        .conversation(conversation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reread.last_seq, total);
}

/// The same resent message (same client_id) reaching two nodes at once is
/// stored once; the other node answers with its id and seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resent_message_on_two_nodes_is_stored_once() {
    let Some((first, url)) = fresh_store().await else {
        return;
    };
    let second = PostgresStore::connect(&common::postgres::settings(&url))
        .await
        .unwrap();
    let key = random_key();
    let conversation = first.conversation_for(key, Millis(0)).await.unwrap();
    let nodes: Vec<Arc<dyn Store>> = vec![Arc::new(first), Arc::new(second)];
    for round in 0..20 {
        let client_id = format!("resend {round}");
        let tries = nodes.iter().map(|store| {
            let store = Arc::clone(store);
            let op = WriteOp::Insert(message(
                ObjectId::new(),
                conversation.id,
                key.mentor_id,
                "once",
                Some(client_id.as_str()),
            ));
            tokio::spawn(async move { write_retrying(&*store, vec![op]).await })
        });
        let mut outcomes = Vec::new();
        for attempt in tries {
            outcomes.extend(attempt.await.expect("join"));
        }
        let inserted: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                WriteOutcome::Inserted { seq } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(inserted, [round + 1], "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, WriteOutcome::Duplicate { seq, .. } if *seq == round + 1)),
            "{outcomes:?}"
        );
    }
    assert_eq!(history(&*nodes[1], conversation.id).await.len(), 20);
}

/// Batches of two nodes touching the same conversations in opposite orders
/// wait for each other (the batch locks its conversations in id order
/// first) instead of deadlocking: not one try fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_orders_on_two_nodes_never_deadlock() {
    let Some((first, url)) = fresh_store().await else {
        return;
    };
    let second = PostgresStore::connect(&common::postgres::settings(&url))
        .await
        .unwrap();
    let (x_key, y_key) = (random_key(), random_key());
    let x = first.conversation_for(x_key, Millis(0)).await.unwrap();
    let y = first.conversation_for(y_key, Millis(0)).await.unwrap();
    let nodes: Vec<Arc<dyn Store>> = vec![Arc::new(first), Arc::new(second)];
    // Three writers per node, as a node's batches and another's overlap.
    let writers = (0..6).map(|writer| {
        let node = writer % 2;
        let store = Arc::clone(&nodes[node]);
        let order = if node == 0 {
            [x.clone(), y.clone()]
        } else {
            [y.clone(), x.clone()]
        };
        // Inserts into one, a cursor move (so the next inserts are a
        // statement of their own), inserts into the other.
        let ops_of = move || -> Vec<WriteOp> {
            order
                .iter()
                .flat_map(|conversation| {
                    (0..3)
                        .map(|_| {
                            WriteOp::Insert(message(
                                ObjectId::new(),
                                conversation.id,
                                conversation.student_id,
                                "crossing",
                                None,
                            ))
                        })
                        .chain([WriteOp::Read {
                            conversation_id: conversation.id,
                            user_id: conversation.mentor_id,
                            up_to: ReadUpTo::Seq(1),
                        }])
                })
                .collect()
        };
        tokio::spawn(async move {
            for _ in 0..40 {
                // Not retried: a deadlock would surface here as Unavailable.
                store.write_batch(ops_of()).await.expect("no deadlock");
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    for writer in writers {
        writer.await.expect("join");
    }
    for conversation in [&x, &y] {
        let stored = history(&*nodes[0], conversation.id).await;
        let mut seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=720).collect::<Vec<_>>());
    }
}

/// An op the database refuses for good is rejected alone: the batch is
/// written in halves until it stands alone, the others are stored, and
/// the seqs stay gap-free.
#[tokio::test]
async fn an_op_refused_for_good_is_rejected_alone() {
    let Some((store, url)) = fresh_store().await else {
        return;
    };
    // A rule of this database only, to make one message unstorable.
    psql(
        &url,
        "ALTER TABLE chat.messages ADD CONSTRAINT test_no_poison CHECK (text <> 'poison')",
    );
    let key = random_key();
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let texts = ["one", "two", "poison", "three", "four"];
    let ops: Vec<WriteOp> = texts
        .iter()
        .map(|text| {
            WriteOp::Insert(message(
                ObjectId::new(),
                conversation.id,
                key.student_id,
                text,
                None,
            ))
        })
        .collect();
    let outcomes = store.write_batch(ops).await.expect("the batch is written");
    assert_eq!(
        outcomes[..2],
        [
            WriteOutcome::Inserted { seq: 1 },
            WriteOutcome::Inserted { seq: 2 }
        ]
    );
    assert!(
        matches!(&outcomes[2], WriteOutcome::Rejected(reason) if reason.contains("test_no_poison")),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(
        outcomes[3..],
        [
            WriteOutcome::Inserted { seq: 3 },
            WriteOutcome::Inserted { seq: 4 }
        ]
    );
    let stored: Vec<_> = history(&store, conversation.id)
        .await
        .into_iter()
        .map(|m| (m.text, m.seq))
        .collect();
    assert_eq!(
        stored,
        [("one", 1), ("two", 2), ("three", 3), ("four", 4)].map(|(t, s)| (t.to_string(), s))
    );
}

/// sslmode as libpq means it, against a server with Debian's self-signed
/// snakeoil certificate: `prefer` (the default) and `require` encrypt
/// without checking it, `verify-full` refuses it.
#[tokio::test]
async fn sslmode_require_accepts_a_self_signed_server_and_verify_full_refuses_it() {
    const CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    const KEY: &str = "/etc/ssl/private/ssl-cert-snakeoil.key";
    if !std::path::Path::new(KEY).exists() {
        common::postgres::skip("no snakeoil certificate (Debian's ssl-cert package)");
        return;
    }
    let Some(cluster) = common::postgres::Cluster::start() else {
        return;
    };
    cluster.psql(&format!("ALTER SYSTEM SET ssl_cert_file = '{CERT}'"));
    cluster.psql(&format!("ALTER SYSTEM SET ssl_key_file = '{KEY}'"));
    cluster.psql("ALTER SYSTEM SET ssl = on");
    cluster.psql("SELECT pg_reload_conf()");
    let encrypted = |url: String| async move {
        let store = PostgresStore::connect(&common::postgres::settings(&url)).await?;
        store.ping().await?;
        Ok::<_, StoreError>(())
    };
    for mode in ["prefer", "require"] {
        encrypted(format!("{}?sslmode={mode}", cluster.url))
            .await
            .unwrap_or_else(|error| panic!("sslmode={mode}: {error}"));
    }
    assert_eq!(
        cluster.psql("SELECT count(*) > 0 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'chat-service'"),
        "t",
        "no encrypted session seen"
    );
    let refused = encrypted(format!("{}?sslmode=verify-full", cluster.url)).await;
    assert!(
        refused.is_err(),
        "verify-full accepted a self-signed certificate"
    );
}
