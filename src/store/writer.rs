//! The batched background writer: every store write goes through here.
//!
//! One tokio task takes [`WriteOp`]s from a queue, groups them into batches
//! and hands each batch to [`Store::write_batch`], one batch at a time, so
//! ops reach the store in submission order (a `View` lands after the
//! `Insert` it names). The policy:
//!
//! - **Batching.** The task waits for the first op, then takes more until it
//!   has [`WriterConfig::max_batch`] or [`WriterConfig::window`] has passed
//!   since that first op; ops already queued are taken without waiting.
//! - **Completion.** Each op's [`Completion`] runs on the writer task once its
//!   batch is committed (`Ok`, with the store's outcome — a
//!   [`WriteOutcome::Rejected`] is an `Ok` the caller judges) or has failed
//!   for good (`Err`). Completions must be quick and must not block.
//! - **Store down.** On [`StoreError::Unavailable`] the batch is kept and
//!   retried with jittered exponential backoff from `retry_initial` to
//!   `retry_max`; [`WriterHandle::is_healthy`] is false meanwhile and new ops
//!   keep queueing up to `queue_capacity`. It recovers on its own.
//! - **Store refuses.** On [`StoreError::Internal`] that batch's ops complete
//!   with the error; they are not retried.
//! - **Bounded.** [`WriterHandle::submit`] never blocks: it answers
//!   [`Overloaded`] when `queue_capacity` ops are already pending (queued or
//!   in flight) or once shutdown has begun.
//! - **Shutdown.** [`Writer::shutdown`] stops intake, writes everything
//!   queued (still retrying until the deadline) and completes every op,
//!   with `Err(Unavailable("shutdown"))` for what it could not write. When all
//!   handles are dropped instead, the task writes what is queued and ends
//!   (retrying without a deadline, unless `shutdown` is called).
//!
//! ```ignore
//! let (writer, handle) = Writer::spawn(store, WriterConfig::from(&config));
//! handle.submit(WriteOp::Insert(message), Box::new(|result| { /* ack or error */ }))?;
//! let report = writer.shutdown(Duration::from_secs(10)).await;
//! ```

use std::future::pending;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::{Store, StoreError, WriteOp, WriteOutcome};
use crate::metrics;

/// The batching, bounding and retry policy; built from `CHAT_WRITER_*`,
/// whose defaults are `Config`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Ops per `write_batch` call, at most (0 counts as 1).
    pub max_batch: usize,
    /// How long a partial batch waits for more ops.
    pub window: Duration,
    /// Ops held at most, queued plus in flight (0 counts as 1).
    pub queue_capacity: usize,
    /// First backoff after `Unavailable` ([`RETRY_INITIAL`] in service).
    pub retry_initial: Duration,
    /// Backoff cap ([`RETRY_MAX`] in service).
    pub retry_max: Duration,
}

/// The first backoff after `Unavailable`. Not an operator setting: how
/// patiently a down store is retried is the writer's policy, not a
/// deployment's; tests shorten it through [`WriterConfig`].
pub(crate) const RETRY_INITIAL: Duration = Duration::from_millis(50);
/// The backoff cap: a store that comes back is written to within this.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// Called once with an op's result, on the writer task; see the module docs.
pub type Completion = Box<dyn FnOnce(Result<WriteOutcome, StoreError>) + Send>;

/// `submit` refused the op: the queue is full or the writer is shutting
/// down. The op's completion is dropped without being called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the writer is overloaded or shutting down")]
pub struct Overloaded;

/// What the final flush did, counted from the moment it began (shutdown, or
/// the last handle dropped) until the task ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Ops the store settled (completed with `Ok`) over the writer's life,
    /// the final flush included.
    pub written_total: u64,
    /// Ops the store settled during the final flush.
    pub written: u64,
    /// Ops completed with `Err`: not written.
    pub unwritten: usize,
}

/// State shared by the handles and the task.
#[derive(Debug)]
struct Shared {
    /// Ops accepted and not yet completed; bounds the queue.
    pending: AtomicUsize,
    capacity: usize,
    healthy: AtomicBool,
    /// Set when shutdown begins, so `submit` refuses before the queue closes.
    closed: AtomicBool,
}

type Job = (WriteOp, Completion);

/// Submits ops to the writer; cheap to clone. When every handle is dropped
/// the writer flushes and ends.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
}

/// Owns the writer task; [`Writer::shutdown`] ends it. Dropping a `Writer`
/// without calling `shutdown` leaves the task running for its handles.
pub struct Writer {
    task: JoinHandle<FlushReport>,
    stop: oneshot::Sender<Instant>,
    shared: Arc<Shared>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, config: WriterConfig) -> (Writer, WriterHandle) {
        let config = WriterConfig {
            max_batch: config.max_batch.max(1),
            queue_capacity: config.queue_capacity.max(1),
            ..config
        };
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            capacity: config.queue_capacity,
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        // Unbounded channel: the bound is `pending`, which also counts the
        // batch in flight.
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task {
            store,
            config,
            shared: Arc::clone(&shared),
            jobs: jobs_rx,
            stop: Some(stop_rx),
            deadline: None,
            report: FlushReport::default(),
            flushing: false,
        };
        let task = tokio::spawn(task.run());
        let writer = Writer {
            task,
            stop: stop_tx,
            shared: Arc::clone(&shared),
        };
        let handle = WriterHandle {
            jobs: jobs_tx,
            shared,
        };
        (writer, handle)
    }

    /// Stops taking ops, writes everything queued (retrying until `deadline`
    /// has passed), completes every op (with `Err(Unavailable)` for what
    /// could not be written) and reports.
    pub async fn shutdown(self, deadline: Duration) -> FlushReport {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Fails only when the task already ended (all handles dropped).
        let _ = self.stop.send(Instant::now() + deadline);
        match self.task.await {
            Ok(report) => report,
            Err(join_error) => {
                tracing::error!(error = %join_error, "the writer task failed");
                FlushReport {
                    written_total: 0,
                    written: 0,
                    unwritten: self.shared.pending.load(Ordering::SeqCst),
                }
            }
        }
    }
}

impl WriterHandle {
    /// Queues `op`; never blocks. `done` runs on the writer task after the
    /// op's batch is committed (`Ok`) or has failed permanently (`Err`).
    pub fn submit(&self, op: WriteOp, done: Completion) -> Result<(), Overloaded> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Overloaded);
        }
        let capacity = self.shared.capacity;
        self.shared
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |pending| {
                (pending < capacity).then_some(pending + 1)
            })
            .map_err(|_| Overloaded)?;
        // Fails once the task closed the queue for shutdown; what was sent
        // before that is still flushed.
        self.jobs.send((op, done)).map_err(|_| {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            Overloaded
        })
    }

    /// False while a batch is failing with `Unavailable` and being retried.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }

    /// Ops accepted and not yet completed, in flight included.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }
}

/// The background task's state.
struct Task {
    store: Arc<dyn Store>,
    config: WriterConfig,
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedReceiver<Job>,
    /// `None` once the signal arrived or the `Writer` was dropped.
    stop: Option<oneshot::Receiver<Instant>>,
    /// When shutdown must be over; `None` until it begins.
    deadline: Option<Instant>,
    report: FlushReport,
    /// The final flush has begun: no more waiting for a window.
    flushing: bool,
}

/// What ended a wait for ops.
enum Wake {
    Stop(Instant),
    /// This many ops arrived; 0 means the queue is closed and empty.
    Received(usize),
    WindowOver,
}

impl Task {
    async fn run(mut self) -> FlushReport {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        while self.collect(&mut batch).await {
            self.write(&mut batch).await;
        }
        self.report
    }

    /// Fills `batch` per the batching policy; false when no op will come.
    async fn collect(&mut self, batch: &mut Vec<Job>) -> bool {
        loop {
            match self.wait(batch, None).await {
                Wake::Stop(deadline) => self.begin_shutdown(deadline),
                Wake::Received(0) => {
                    self.flushing = true;
                    return false;
                }
                Wake::Received(_) => break,
                Wake::WindowOver => {}
            }
        }
        let window_end = Instant::now() + self.config.window;
        // Without a window a batch is what queued while the last one was
        // written (group commit). Not a zero-length sleep: tokio's timer
        // rounds a deadline up to its next millisecond tick, which put up
        // to 1 ms on every batch, hence on every delivery (docs/performance.md).
        let no_wait = self.config.window.is_zero();
        while batch.len() < self.config.max_batch {
            if self.flushing || no_wait {
                // Take what is queued; waiting would only delay (shutdown).
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
                continue;
            }
            match self.wait(batch, Some(window_end)).await {
                Wake::Stop(deadline) => self.begin_shutdown(deadline),
                Wake::Received(0) => self.flushing = true,
                Wake::Received(_) => {}
                Wake::WindowOver => break,
            }
        }
        true
    }

    /// Waits for ops (appended to `batch`), the stop signal, or `until`.
    async fn wait(&mut self, batch: &mut Vec<Job>, until: Option<Instant>) -> Wake {
        let room = self.config.max_batch.saturating_sub(batch.len()).max(1);
        tokio::select! {
            biased;
            deadline = stop_requested(&mut self.stop) => Wake::Stop(deadline),
            received = self.jobs.recv_many(batch, room) => Wake::Received(received),
            () = sleep_until_some(until) => Wake::WindowOver,
        }
    }

    /// Writes `batch`, retrying while the store is unavailable, and
    /// completes every op in it.
    async fn write(&mut self, batch: &mut Vec<Job>) {
        let metrics = metrics::get();
        metrics.writer_batch_ops.observe(batch.len() as f64);
        let mut backoff = self.config.retry_initial;
        loop {
            if self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
            {
                return self.fail(batch, &StoreError::Unavailable("shutdown".into()));
            }
            let ops = batch.iter().map(|(op, _)| op.clone()).collect();
            let started = Instant::now();
            match self.attempt(ops).await {
                Ok(outcomes) => {
                    metrics
                        .writer_commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.set_healthy(true);
                    return self.complete(batch, outcomes);
                }
                Err(StoreError::Internal(reason)) => {
                    // The store answered, so it is up; this batch is lost.
                    metrics.store_error("write", "internal");
                    self.set_healthy(true);
                    tracing::error!(%reason, ops = batch.len(), "store refused a write batch");
                    return self.fail(batch, &StoreError::Internal(reason));
                }
                Err(StoreError::Unavailable(reason)) => {
                    metrics.store_error("write", "unavailable");
                    self.set_healthy(false);
                    let delay = jittered(backoff);
                    tracing::warn!(%reason, ops = batch.len(), retry_in = ?delay, "store unavailable; keeping the batch");
                    self.pause(delay).await;
                    backoff = backoff.saturating_mul(2).min(self.config.retry_max);
                }
            }
        }
    }

    /// One `write_batch` call, cut short by the shutdown deadline.
    async fn attempt(&mut self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError> {
        let store = Arc::clone(&self.store);
        let write = store.write_batch(ops);
        tokio::pin!(write);
        loop {
            let deadline = tokio::select! {
                biased;
                result = &mut write => return result,
                deadline = stop_requested(&mut self.stop) => deadline,
                () = sleep_until_some(self.deadline) => {
                    return Err(StoreError::Unavailable("shutdown".into()));
                }
            };
            self.begin_shutdown(deadline);
        }
    }

    /// Sleeps for `delay` (but not past the shutdown deadline).
    async fn pause(&mut self, delay: Duration) {
        let wake = Instant::now() + delay;
        loop {
            let until = self.deadline.map_or(wake, |deadline| deadline.min(wake));
            let deadline = tokio::select! {
                biased;
                deadline = stop_requested(&mut self.stop) => deadline,
                () = sleep_until(until) => return,
            };
            self.begin_shutdown(deadline);
        }
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Later sends fail; everything sent before is still received.
        self.jobs.close();
        self.deadline = Some(deadline);
        self.flushing = true;
    }

    fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    fn complete(&mut self, batch: &mut Vec<Job>, outcomes: Vec<WriteOutcome>) {
        if outcomes.len() != batch.len() {
            tracing::error!(
                ops = batch.len(),
                outcomes = outcomes.len(),
                "store returned a wrong number of outcomes"
            );
        }
        let mut outcomes = outcomes.into_iter();
        for (_, done) in batch.drain(..) {
            let result = outcomes.next().ok_or_else(|| {
                StoreError::Internal("the store returned no outcome for this op".into())
            });
            self.finish(done, result);
        }
    }

    fn fail(&mut self, batch: &mut Vec<Job>, error: &StoreError) {
        for (_, done) in batch.drain(..) {
            self.finish(done, Err(error.clone()));
        }
    }

    fn finish(&mut self, done: Completion, result: Result<WriteOutcome, StoreError>) {
        if result.is_ok() {
            self.report.written_total += 1;
        }
        match &result {
            Ok(WriteOutcome::Inserted { .. }) => {
                metrics::get().messages_stored.inc();
            }
            Ok(WriteOutcome::Duplicate { .. }) => {
                metrics::get().messages_duplicate.inc();
            }
            Ok(WriteOutcome::Rejected(_)) => metrics::get().store_error("write", "rejected"),
            _ => {}
        }
        if self.flushing {
            match result {
                Ok(_) => self.report.written += 1,
                Err(_) => self.report.unwritten += 1,
            }
        }
        // Freed before the callback, so a caller that saw its completion can
        // submit again at once.
        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        // A panicking callback must not stop every later write.
        if catch_unwind(AssertUnwindSafe(|| done(result))).is_err() {
            tracing::error!("a write completion panicked");
        }
    }
}

/// Resolves with the shutdown deadline once `Writer::shutdown` sends it;
/// never, if the `Writer` was dropped.
async fn stop_requested(stop: &mut Option<oneshot::Receiver<Instant>>) -> Instant {
    if let Some(signal) = stop {
        let received = signal.await;
        *stop = None;
        if let Ok(deadline) = received {
            return deadline;
        }
    }
    pending().await
}

/// Sleeps until `until`; forever when there is none.
async fn sleep_until_some(until: Option<Instant>) {
    match until {
        Some(until) => sleep_until(until).await,
        None => pending().await,
    }
}

/// Somewhere in `[backoff / 2, backoff]`, so many nodes that lost the same
/// database do not retry in step.
fn jittered(backoff: Duration) -> Duration {
    let random = getrandom::u64().unwrap_or(u64::MAX);
    let half = backoff / 2;
    let extra_nanos = u128::from(random) * half.as_nanos() / u128::from(u64::MAX);
    half + Duration::from_nanos(u64::try_from(extra_nanos).unwrap_or(u64::MAX))
}
