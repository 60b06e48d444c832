//! The batched writer against a real SQLite store wrapped in a
//! fault-injecting [`Store`]: it records every `write_batch` call, can fail
//! calls (before or after really committing) and can hold calls at a gate.
//! Batch sizes are observed through the recorded calls, never through
//! timings; backoff is checked on tokio's paused clock, where sleeps are exact.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_service::config::Config;
use chat_service::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, Seq, UserId,
};
use chat_service::store::writer::{Completion, FlushReport, Overloaded, Writer, WriterConfig};
use chat_service::store::{
    ConversationFilter, HistoryPage, HistoryQuery, Store, StoreError, StoreFuture, WriteOp,
    WriteOutcome,
};
use common::{history, ids, message, random_key, TempSqlite};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How the next `write_batch` call misbehaves.
#[derive(Clone, Debug)]
enum Fault {
    /// Fails without touching the database.
    Before(StoreError),
    /// Commits, then reports the error (a lost reply): the retry must be
    /// harmless.
    AfterCommit(StoreError),
}

#[derive(Clone, Debug)]
struct Call {
    ops: usize,
    at: Instant,
    ok: bool,
}

struct FaultStore {
    inner: TempSqlite,
    calls: Mutex<Vec<Call>>,
    faults: Mutex<VecDeque<Fault>>,
    /// While set, every call fails with `Unavailable` before touching the database.
    down: AtomicBool,
    /// Ids of inserts whose batch the inner store committed.
    committed: Mutex<HashSet<MessageId>>,
    /// While true, calls wait here before doing anything.
    gate: watch::Sender<bool>,
}

impl FaultStore {
    fn new() -> Arc<FaultStore> {
        Arc::new(FaultStore {
            inner: TempSqlite::new(),
            calls: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
            down: AtomicBool::new(false),
            committed: Mutex::new(HashSet::new()),
            gate: watch::Sender::new(false),
        })
    }

    fn batch_sizes(&self) -> Vec<usize> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.ok)
            .map(|c| c.ops)
            .collect()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    fn record(&self, ops: usize, at: Instant, ok: bool) {
        self.calls.lock().push(Call { ops, at, ok });
    }
}

impl Store for FaultStore {
    fn kind(&self) -> &'static str {
        "fault"
    }
    fn conversation_for(
        &self,
        key: ConversationKey,
        created_at: Millis,
    ) -> StoreFuture<'_, Conversation> {
        self.inner.conversation_for(key, created_at)
    }
    fn conversation(&self, id: ConversationId) -> StoreFuture<'_, Option<Conversation>> {
        self.inner.conversation(id)
    }
    fn conversations(&self, filter: ConversationFilter) -> StoreFuture<'_, Vec<Conversation>> {
        self.inner.conversations(filter)
    }
    fn messages(&self, query: HistoryQuery) -> StoreFuture<'_, HistoryPage> {
        self.inner.messages(query)
    }
    fn inbox(
        &self,
        caller: UserId,
        conversations: Vec<Conversation>,
    ) -> StoreFuture<'_, Vec<chat_service::store::InboxEntry>> {
        self.inner.inbox(caller, conversations)
    }
    fn message_at_seq(
        &self,
        conversation_id: ConversationId,
        seq: u64,
    ) -> StoreFuture<'_, Option<MessageId>> {
        self.inner.message_at_seq(conversation_id, seq)
    }
    fn write_batch(&self, ops: Vec<WriteOp>) -> StoreFuture<'_, Vec<WriteOutcome>> {
        Box::pin(async move {
            let _ = self.gate.subscribe().wait_for(|held| !held).await;
            let at = Instant::now();
            let count = ops.len();
            let fault = if self.down.load(Ordering::SeqCst) {
                Some(Fault::Before(StoreError::Unavailable(
                    "injected: down".into(),
                )))
            } else {
                self.faults.lock().pop_front()
            };
            if let Some(Fault::Before(error)) = fault {
                self.record(count, at, false);
                return Err(error);
            }
            let inserted: Vec<MessageId> = ops
                .iter()
                .filter_map(|op| match op {
                    WriteOp::Insert(m) => Some(m.id),
                    WriteOp::View { .. } | WriteOp::Read { .. } => None,
                })
                .collect();
            let result = self.inner.write_batch(ops).await;
            if result.is_ok() {
                self.committed.lock().extend(inserted);
            }
            if let Some(Fault::AfterCommit(error)) = fault {
                self.record(count, at, false);
                return Err(error);
            }
            self.record(count, at, result.is_ok());
            result
        })
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
}

type Done = (MessageId, Result<WriteOutcome, StoreError>);

/// Submits inserts and collects their completions.
struct Client {
    handle: Option<chat_service::store::writer::WriterHandle>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

impl Client {
    fn new(handle: chat_service::store::writer::WriterHandle) -> Client {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Client {
            handle: Some(handle),
            done_tx,
            done_rx,
        }
    }

    fn completion(&self, id: MessageId) -> Completion {
        let done = self.done_tx.clone();
        Box::new(move |result| {
            let _ = done.send((id, result));
        })
    }

    fn submit(&self, op: WriteOp) -> Result<(), Overloaded> {
        let id = match &op {
            WriteOp::Insert(m) => m.id,
            WriteOp::View { message_id, .. } => *message_id,
            WriteOp::Read { .. } => panic!("these tests submit no reads"),
        };
        self.handle
            .as_ref()
            .expect("handle dropped")
            .submit(op, self.completion(id))
    }

    /// Waits for `n` completions.
    async fn completed(&mut self, n: usize) -> Vec<Done> {
        let mut done = Vec::with_capacity(n);
        while done.len() < n {
            done.push(self.done_rx.recv().await.unwrap());
        }
        done
    }
}

/// `n` inserts into one fresh conversation.
async fn inserts(store: &FaultStore, n: usize) -> (ConversationId, Vec<Message>) {
    let key = random_key();
    let conversation = store.conversation_for(key, Millis(0)).await.unwrap();
    let messages = ids(n)
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            message(
                id,
                conversation.id,
                key.student_id,
                &format!("op {i}"),
                None,
            )
        })
        .collect();
    (conversation.id, messages)
}

/// The queue is the 65,536 these tests were written against, not the
/// service's default.
fn config(max_batch: usize, window: Duration) -> WriterConfig {
    WriterConfig {
        max_batch,
        window,
        queue_capacity: 65_536,
        ..WriterConfig::from(&Config::defaults())
    }
}

/// Every completion is `Inserted` with its message's seq: `first` for
/// `messages[0]`, `first + 1` for the next, … (the order they were written).
fn assert_inserted(done: &[Done], messages: &[Message], first: Seq) {
    for (id, result) in done {
        let index = messages
            .iter()
            .position(|m| m.id == *id)
            .unwrap_or_else(|| panic!("a completion for {id}, which is not among the messages"));
        let seq = first + index as Seq;
        assert_eq!(
            result.as_ref().ok(),
            Some(&WriteOutcome::Inserted { seq }),
            "op {id}: {result:?}"
        );
    }
}

/// `messages` as history returns them: numbered from `first`.
fn numbered(messages: &[Message], first: Seq) -> Vec<Message> {
    (first..)
        .zip(messages)
        .map(|(seq, m)| Message { seq, ..m.clone() })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn batches_by_count() {
    let store = FaultStore::new();
    let (_writer, handle) = Writer::spawn(store.clone(), config(10, Duration::from_secs(3600)));
    let mut client = Client::new(handle);
    let (conversation, messages) = inserts(&store, 25).await;
    for m in &messages {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }
    let done = client.completed(25).await;
    assert_inserted(&done, &messages, 1);
    // Two full batches at once; the rest after the (virtual) window.
    assert_eq!(store.batch_sizes(), [10, 10, 5]);
    assert_eq!(history(&*store, conversation).await, numbered(&messages, 1));
}

/// Without a window (the default) a lone op is written at once: not even
/// the timer's next millisecond tick (which a zero-length sleep waits for)
/// may pass before its batch is written; the clock is paused, so any wait
/// shows as elapsed time.
#[tokio::test(start_paused = true)]
async fn without_a_window_a_lone_op_is_written_at_once() {
    let store = FaultStore::new();
    let (_writer, handle) = Writer::spawn(store.clone(), config(100, Duration::ZERO));
    let mut client = Client::new(handle);
    let (_, messages) = inserts(&store, 3).await;
    // Off the timer's millisecond grid, where a rounded-up deadline shows.
    tokio::time::advance(Duration::from_micros(300)).await;

    for (n, m) in messages.iter().enumerate() {
        let submitted = Instant::now();
        client.submit(WriteOp::Insert(m.clone())).unwrap();
        assert_inserted(&client.completed(1).await, &messages[n..=n], n as Seq + 1);
        assert_eq!(submitted.elapsed(), Duration::ZERO, "op {n} waited");
    }
    assert_eq!(store.batch_sizes(), [1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn batches_by_window() {
    let store = FaultStore::new();
    let window = Duration::from_millis(50);
    let (_writer, handle) = Writer::spawn(store.clone(), config(100, window));
    let mut client = Client::new(handle);
    let (_, messages) = inserts(&store, 5).await;

    // The first op opens a window; ops arriving within it join its batch.
    client.submit(WriteOp::Insert(messages[0].clone())).unwrap();
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(20)).await;
    client.submit(WriteOp::Insert(messages[1].clone())).unwrap();
    client.submit(WriteOp::Insert(messages[2].clone())).unwrap();
    assert_inserted(&client.completed(3).await, &messages[..3], 1);
    assert_eq!(
        store.batch_sizes(),
        [3],
        "a partial batch is written when the window ends"
    );

    client.submit(WriteOp::Insert(messages[3].clone())).unwrap();
    client.submit(WriteOp::Insert(messages[4].clone())).unwrap();
    assert_inserted(&client.completed(2).await, &messages[3..], 4);
    assert_eq!(store.batch_sizes(), [3, 2]);
}

#[tokio::test]
async fn ops_keep_submission_order_across_batches() {
    let store = FaultStore::new();
    let (_writer, handle) = Writer::spawn(store.clone(), config(1, Duration::ZERO));
    let mut client = Client::new(handle);
    let (conversation, messages) = inserts(&store, 1).await;
    client.submit(WriteOp::Insert(messages[0].clone())).unwrap();
    client
        .submit(WriteOp::View {
            conversation_id: conversation,
            message_id: messages[0].id,
            viewer_id: messages[0].sender_id + 1,
            at: Millis(9),
        })
        .unwrap();
    let done = client.completed(2).await;
    assert_eq!(
        done[0].1.as_ref().unwrap(),
        &WriteOutcome::Inserted { seq: 1 }
    );
    assert_eq!(done[1].1.as_ref().unwrap(), &WriteOutcome::Viewed);
    assert_eq!(store.batch_sizes(), [1, 1]);
}

#[tokio::test]
async fn completions_run_only_after_commit() {
    let store = FaultStore::new();
    let (_writer, handle) = Writer::spawn(store.clone(), config(512, Duration::from_millis(1)));
    let (conversation, messages) = inserts(&store, 20).await;

    // Each completion checks, when it runs, that its insert is committed.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let submit_all = |messages: &[Message]| {
        for m in messages {
            let (id, store, seen) = (m.id, store.clone(), seen_tx.clone());
            let done: Completion = Box::new(move |result| {
                let committed = store.committed.lock().contains(&id);
                let _ = seen.send(((id, result), committed));
            });
            handle.submit(WriteOp::Insert(m.clone()), done).unwrap();
        }
    };

    store.gate.send_replace(true);
    submit_all(&messages[..10]);
    // Give the writer every chance to complete early (not a timing assertion:
    // nothing may arrive however long this is).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        seen_rx.try_recv().is_err(),
        "a completion ran before its commit"
    );
    assert_eq!(handle.pending(), 10);

    store.gate.send_replace(false);
    submit_all(&messages[10..]);
    for _ in 0..20 {
        let (done, committed) = seen_rx.recv().await.unwrap();
        assert_inserted(&[done], &messages, 1);
        assert!(committed, "completed before the store committed");
    }
    assert_eq!(handle.pending(), 0);
    assert_eq!(history(&*store, conversation).await, numbered(&messages, 1));
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_with_backoff_until_it_succeeds() {
    let store = FaultStore::new();
    let unavailable = || StoreError::Unavailable("injected".into());
    store.faults.lock().extend([
        Fault::Before(unavailable()),
        Fault::AfterCommit(unavailable()),
        Fault::Before(unavailable()),
        Fault::Before(unavailable()),
    ]);
    let config = WriterConfig {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
        ..config(512, Duration::ZERO)
    };
    let (writer, handle) = Writer::spawn(store.clone(), config);
    let mut client = Client::new(handle.clone());
    let (conversation, messages) = inserts(&store, 20).await;
    for m in &messages {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }

    let done = client.completed(20).await;
    // The retry after the lost reply reports the seqs of the commit.
    assert_inserted(&done, &messages, 1);
    let ids: HashSet<MessageId> = done.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 20, "every op completed exactly once");
    assert_eq!(
        history(&*store, conversation).await,
        numbered(&messages, 1),
        "nothing lost or doubled"
    );

    let calls = store.calls();
    assert_eq!(
        calls.iter().map(|c| c.ok).collect::<Vec<_>>(),
        [false, false, false, false, true]
    );
    assert!(calls.iter().all(|c| c.ops == 20), "the batch is kept whole");
    // Jittered exponential backoff: within [d/2, d] for d = 100, 200, 400, 400 (capped).
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, max_ms) in gaps.iter().zip([100u64, 200, 400, 400]) {
        let max = Duration::from_millis(max_ms);
        assert!(
            *gap >= max / 2 && *gap <= max,
            "gap {gap:?} outside [{:?}, {max:?}]",
            max / 2
        );
    }

    // Nothing is completed twice: the writer ends with no stray completion.
    drop(client.handle);
    drop(client.done_tx);
    drop(handle);
    writer.shutdown(Duration::from_secs(1)).await;
    assert!(client.done_rx.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn unhealthy_while_failing_then_healthy_again() {
    let store = FaultStore::new();
    store.down.store(true, Ordering::SeqCst);
    let config = WriterConfig {
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        ..config(512, Duration::ZERO)
    };
    let (_writer, handle) = Writer::spawn(store.clone(), config);
    let mut client = Client::new(handle.clone());
    let (conversation, messages) = inserts(&store, 2).await;
    assert!(handle.is_healthy());

    client.submit(WriteOp::Insert(messages[0].clone())).unwrap();
    while store.calls().len() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!handle.is_healthy());
    // New ops are still accepted while the store is down.
    client.submit(WriteOp::Insert(messages[1].clone())).unwrap();
    assert_eq!(handle.pending(), 2);
    assert!(client.done_rx.try_recv().is_err());

    store.down.store(false, Ordering::SeqCst);
    let done = client.completed(2).await;
    assert_inserted(&done, &messages, 1);
    assert!(handle.is_healthy());
    assert_eq!(history(&*store, conversation).await, numbered(&messages, 1));
}

#[tokio::test]
async fn full_queue_is_overloaded_until_it_drains() {
    let store = FaultStore::new();
    let config = WriterConfig {
        queue_capacity: 4,
        ..config(2, Duration::ZERO)
    };
    let (_writer, handle) = Writer::spawn(store.clone(), config);
    let mut client = Client::new(handle.clone());
    let (conversation, messages) = inserts(&store, 6).await;

    store.gate.send_replace(true);
    for m in &messages[..4] {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }
    // Let the writer take a batch in flight: it still counts.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(handle.pending(), 4);
    assert_eq!(
        client.submit(WriteOp::Insert(messages[4].clone())),
        Err(Overloaded)
    );

    store.gate.send_replace(false);
    assert_inserted(&client.completed(4).await, &messages[..4], 1);
    assert_eq!(handle.pending(), 0);
    client.submit(WriteOp::Insert(messages[5].clone())).unwrap();
    // The refused one took no seq.
    assert_inserted(&client.completed(1).await, &messages[5..], 5);

    let mut expected = messages[..4].to_vec();
    expected.push(messages[5].clone());
    assert_eq!(history(&*store, conversation).await, numbered(&expected, 1));
}

#[tokio::test]
async fn internal_error_fails_the_batch_without_retry() {
    let store = FaultStore::new();
    store
        .faults
        .lock()
        .push_back(Fault::Before(StoreError::Internal("injected".into())));
    let (_writer, handle) = Writer::spawn(store.clone(), config(512, Duration::from_millis(5)));
    let mut client = Client::new(handle.clone());
    let (conversation, messages) = inserts(&store, 4).await;
    for m in &messages[..3] {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }
    for (_, result) in client.completed(3).await {
        assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}");
    }
    assert_eq!(store.calls().len(), 1, "an Internal error is not retried");
    assert!(handle.is_healthy());

    // The writer goes on with the next ops.
    client.submit(WriteOp::Insert(messages[3].clone())).unwrap();
    assert_inserted(&client.completed(1).await, &messages[3..], 1);
    assert_eq!(
        history(&*store, conversation).await,
        numbered(&messages[3..], 1)
    );
}

#[tokio::test]
async fn shutdown_flushes_everything_and_reports() {
    let store = FaultStore::new();
    // A window far longer than the test: only shutdown can end the last batch.
    let (writer, handle) = Writer::spawn(store.clone(), config(8, Duration::from_secs(3600)));
    let mut client = Client::new(handle.clone());
    let (conversation, messages) = inserts(&store, 20).await;
    // The first batch is held in flight when shutdown begins.
    store.gate.send_replace(true);
    for m in &messages {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    let shutdown = tokio::spawn(writer.shutdown(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        client.submit(WriteOp::Insert(messages[0].clone())),
        Err(Overloaded)
    );
    store.gate.send_replace(false);
    let report = shutdown.await.unwrap();

    assert_eq!(
        report,
        FlushReport {
            written_total: 20,
            written: 20,
            unwritten: 0
        }
    );
    assert_eq!(store.batch_sizes(), [8, 8, 4]);
    assert_inserted(&client.completed(20).await, &messages, 1);
    assert_eq!(history(&*store, conversation).await, numbered(&messages, 1));
    assert_eq!(handle.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_at_the_deadline_when_the_store_stays_down() {
    let store = FaultStore::new();
    store.down.store(true, Ordering::SeqCst);
    let config = WriterConfig {
        retry_initial: Duration::from_millis(100),
        ..config(4, Duration::ZERO)
    };
    let (writer, handle) = Writer::spawn(store.clone(), config);
    let mut client = Client::new(handle.clone());
    let (conversation, messages) = inserts(&store, 10).await;
    for m in &messages {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }

    let deadline = Duration::from_secs(1);
    let started = Instant::now();
    let report = writer.shutdown(deadline).await;
    assert!(
        started.elapsed() <= deadline,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        report,
        FlushReport {
            written_total: 0,
            written: 0,
            unwritten: 10
        }
    );
    let done = client.completed(10).await;
    let mut by_id = HashMap::new();
    for (id, result) in done {
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert!(by_id.insert(id, ()).is_none(), "completed twice");
    }
    assert_eq!(handle.pending(), 0);
    assert!(
        store.calls().len() > 1,
        "it kept retrying until the deadline"
    );

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(history(&*store, conversation).await, []);
}

#[tokio::test]
async fn dropping_every_handle_flushes_and_ends_the_task() {
    let store = FaultStore::new();
    let (_writer, handle) = Writer::spawn(store.clone(), config(512, Duration::from_secs(3600)));
    let mut client = Client::new(handle);
    let (conversation, messages) = inserts(&store, 5).await;
    for m in &messages {
        client.submit(WriteOp::Insert(m.clone())).unwrap();
    }
    client.handle = None;
    assert_inserted(&client.completed(5).await, &messages, 1);
    assert_eq!(history(&*store, conversation).await, numbered(&messages, 1));

    // The task held a clone of the store until it ended.
    while Arc::strong_count(&store) > 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
