//! The write thread: the only write connection, the journal and the tail.
//!
//! A batch is checked against the tail and SQLite (duplicates), views of
//! merged messages are applied to SQLite, and the new messages are appended
//! to the journal with one `write` (`fdatasync` too under `synchronous=full`)
//! and published to the tail: then it is acknowledged. Between jobs the
//! thread merges the tail into SQLite in key order, a chunk per transaction,
//! so a conversation's messages of several seconds share its B-tree pages
//! in one commit instead of dirtying them once per batch (the cost that
//! bounded the direct writes, docs/performance.md).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use foldhash::fast::RandomState as FastHash;
use parking_lot::RwLock;
use rusqlite::Connection;

use super::errors::{drop_if_refused, journal_error, refuses_only_this_op, store_error};
use super::jobs::JobReceiver;
use super::journal::{self, remove_segment, Segment};
use super::legacy_seq::number_unnumbered;
use super::sql::{
    get_or_create, in_transaction, insert_message, INSERT_MESSAGE, LAST_SENT, LAST_SEQ,
    MOVE_CURSOR, READ_CURSOR, SEQ_AND_SENDER, STORED_CLIENT_ID, STORED_ID, VIEW_MESSAGE,
    VIEW_TARGET,
};
use super::staging::{Lookups, Staged, View};
use super::tail::Tail;
use super::WriteJob;
use crate::model::{ConversationId, Message, Seq, UserId};
use crate::store::{StoreError, WriteOp, WriteOutcome};

/// A merge starts when this many messages wait in the tail...
const MERGE_AT: usize = 65_536;
/// ...or when the oldest has waited this long.
const MERGE_AFTER: Duration = Duration::from_secs(5);
/// Messages per merge transaction at most: large enough that a
/// conversation's run rarely splits.
const MERGE_CHUNK: usize = 8_192;
/// How long one merge step between jobs may take: a batch that arrives
/// meanwhile waits at most this (plus the commit) before its append. The
/// step's size follows what fits (`MergeStepSize`).
const MERGE_STEP_BUDGET: Duration = Duration::from_millis(2);
/// The fewest messages a merge step merges before it yields to a waiting
/// job: a commit per few inserts would cost more than the wait it saves.
const MERGE_YIELD_MIN: usize = 64;
/// The smallest merge step, so a slow disk still makes progress.
const MERGE_STEP_MIN: usize = 64;
/// Pause after a failed merge (another process holds SQLite's lock, a full
/// disk), doubled up to `MERGE_RETRY_MAX`.
const MERGE_RETRY_MIN: Duration = Duration::from_millis(50);
const MERGE_RETRY_MAX: Duration = Duration::from_secs(2);

pub(super) struct WriteThread {
    conn: Connection,
    dir: PathBuf,
    sync: bool,
    /// Unmerged messages held at most before a batch's ack waits for merges.
    tail_limit: usize,
    tail: Arc<RwLock<Tail>>,
    /// Receives the appends of the active generation.
    segment: Segment,
    /// Earlier files of the active generation (a segment broken by a failed
    /// append is replaced, not reused).
    active_retired: Vec<PathBuf>,
    /// The files of the generation being merged, removed once it is merged.
    merging_segments: Vec<PathBuf>,
    merge_retry: Option<(Instant, Duration)>,
    /// Messages the next merge step takes (see `MERGE_STEP_BUDGET`).
    merge_step_size: usize,
    /// Records the last batch appended: a merge step that yields to a
    /// waiting job merges at least this many, so merging keeps pace.
    last_appended: usize,
    /// The last seq given in each conversation written to since start: this
    /// thread is the only writer of seqs, so once read it stays exact.
    last_seqs: HashMap<ConversationId, Seq, FastHash>,
}

impl WriteThread {
    /// Replays what an earlier process journaled but did not merge, then
    /// starts a fresh journal segment.
    pub(super) fn open(
        conn: Connection,
        dir: &Path,
        sync: bool,
        tail_limit: usize,
        tail: Arc<RwLock<Tail>>,
    ) -> Result<WriteThread, StoreError> {
        let next = journal::replay(&conn, dir, MERGE_CHUNK)?;
        // After the replay, which may bring unnumbered messages of a
        // version-1 journal.
        number_unnumbered(&conn)?;
        let segment = Segment::create(dir, next, sync).map_err(journal_error)?;
        Ok(WriteThread {
            conn,
            dir: dir.to_owned(),
            sync,
            tail_limit,
            tail,
            segment,
            active_retired: Vec::new(),
            merging_segments: Vec::new(),
            merge_retry: None,
            merge_step_size: 1_024,
            last_appended: 0,
            last_seqs: HashMap::default(),
        })
    }

    pub(super) fn run(mut self, jobs: JobReceiver<WriteJob>) {
        loop {
            let job = if self.merge_due() {
                match jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            } else {
                match jobs.recv_timeout(self.until_merge_due()) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            match job {
                Some(WriteJob::Batch { ops, reply }) => {
                    let _ = reply.send(self.write_batch(ops));
                }
                Some(WriteJob::ConversationFor {
                    key,
                    created_at,
                    reply,
                }) => {
                    let _ = reply
                        .send(get_or_create(&self.conn, &key, created_at).map_err(store_error));
                }
                None => {}
            }
            if self.merge_due() {
                let _ = self.merge_step(MERGE_STEP_BUDGET, Some(&jobs));
            }
        }
        // Closing: merge everything, so a clean shutdown leaves no journal.
        if let Err(e) = self.merge_all() {
            tracing::warn!("journal left for the next start: {e}");
        }
    }

    fn merge_due(&self) -> bool {
        if self.merge_retry.is_some_and(|(at, _)| Instant::now() < at) {
            return false;
        }
        let tail = self.tail.read();
        tail.is_merging()
            || tail.active_len() >= MERGE_AT
            || tail.active_age().is_some_and(|age| age >= MERGE_AFTER)
    }

    fn until_merge_due(&self) -> Duration {
        if let Some((at, _)) = self.merge_retry {
            return at.saturating_duration_since(Instant::now());
        }
        match self.tail.read().active_age() {
            Some(age) => MERGE_AFTER.saturating_sub(age),
            None => Duration::from_secs(3600),
        }
    }

    fn write_batch(&mut self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, StoreError> {
        let staged = self.stage(ops)?;
        let outcomes = staged.outcomes;
        if !staged.records.is_empty() {
            if let Err(e) = self.segment.append(&staged.records, self.sync) {
                if self.segment.is_broken() {
                    self.replace_broken_segment();
                }
                return Err(journal_error(e));
            }
            self.last_seqs.extend(staged.last_seqs);
            self.last_appended = staged.records.len();
            let mut tail = self.tail.write();
            for record in staged.records {
                match record {
                    WriteOp::Insert(message) => tail.insert(message),
                    WriteOp::View {
                        conversation_id,
                        message_id,
                        viewer_id,
                        at,
                    } => {
                        if let Some(message) = tail.get_mut(conversation_id, message_id) {
                            message.mark_viewed(viewer_id, at);
                        }
                    }
                    // Staging never journals one.
                    WriteOp::Read { .. } => {}
                }
            }
        }
        // After the append: a failure here, or of a merge below, fails the
        // batch, and the writer retries it whole. Its inserts are journaled
        // already: staging finds each in the tail or, merged, in SQLite by
        // id, with the seq it got; the cursors move again (`max`).
        if !staged.cursors.is_empty() {
            move_cursors(&self.conn, &staged.cursors)?;
        }
        // Memory stays bounded: beyond the limit the ack waits for merges.
        while self.tail.read().len() > self.tail_limit {
            self.merge_step(MERGE_STEP_BUDGET, None)?;
        }
        Ok(outcomes)
    }

    /// Decides every op's outcome and what to journal; applies views of
    /// merged messages to SQLite.
    fn stage(&mut self, ops: Vec<WriteOp>) -> Result<Staged, StoreError> {
        let mut staged = Staged::with_capacity(ops.len());
        // One read transaction for the batch's lookups: each statement on
        // its own would take and release SQLite's file locks (fcntl calls).
        in_transaction(&self.conn, "BEGIN", |conn| {
            let tail = self.tail.read();
            let mut by_client_id = conn.prepare_cached(STORED_CLIENT_ID)?;
            let mut by_id = conn.prepare_cached(STORED_ID)?;
            let mut last_seq = conn.prepare_cached(LAST_SEQ)?;
            let mut read_cursor = conn.prepare_cached(READ_CURSOR)?;
            let mut last_sent = conn.prepare_cached(LAST_SENT)?;
            let mut seq_and_sender = conn.prepare_cached(SEQ_AND_SENDER)?;
            let mut lookups = Lookups {
                tail: &tail,
                by_client_id: &mut by_client_id,
                by_id: &mut by_id,
                last_seq: &mut last_seq,
                known_seqs: &self.last_seqs,
                read_cursor: &mut read_cursor,
                last_sent: &mut last_sent,
                seq_and_sender: &mut seq_and_sender,
            };
            for op in ops {
                staged.push(&mut lookups, op)?;
            }
            Ok(())
        })?;
        if !staged.stored_views.is_empty() {
            let outcomes = self.view_stored(&staged.stored_views)?;
            staged.set_stored_view_outcomes(outcomes);
        }
        Ok(staged)
    }

    /// Views of merged messages go straight to SQLite, in one transaction.
    /// A view that changed nothing is looked up: the message exists (viewed
    /// already) or not.
    fn view_stored(&self, views: &[(usize, View)]) -> Result<Vec<WriteOutcome>, StoreError> {
        in_transaction(&self.conn, "BEGIN IMMEDIATE", |conn| {
            let mut view = conn.prepare_cached(VIEW_MESSAGE)?;
            let mut target = conn.prepare_cached(VIEW_TARGET)?;
            views
                .iter()
                .map(|(_, (conversation, message, viewer, at))| {
                    let keys = (conversation.bytes(), message.bytes(), viewer);
                    match view.execute((keys.0, keys.1, keys.2, at.0)) {
                        Ok(0) if target.exists(keys)? => Ok(WriteOutcome::AlreadyViewed),
                        Ok(0) => Ok(WriteOutcome::ViewTargetMissing),
                        Ok(_) => Ok(WriteOutcome::Viewed),
                        Err(e) if refuses_only_this_op(&e) => {
                            Ok(WriteOutcome::Rejected(e.to_string()))
                        }
                        Err(e) => Err(e),
                    }
                })
                .collect()
        })
    }

    /// One step of merging: starts a merge if none runs, else moves one chunk
    /// into SQLite; removes the merged generation's file when it is done.
    /// Merges what fits in `budget`; with `jobs`, ends early once a job
    /// waits there, after at least as many messages as the last batch
    /// appended (and `MERGE_YIELD_MIN`).
    fn merge_step(
        &mut self,
        budget: Duration,
        jobs: Option<&JobReceiver<WriteJob>>,
    ) -> Result<(), StoreError> {
        if !self.tail.read().is_merging() {
            self.rotate()?;
        }
        let chunk = self.tail.read().next_chunk(self.merge_step_size);
        if !chunk.is_empty() {
            let started = Instant::now();
            let at_least = self.last_appended.max(MERGE_YIELD_MIN);
            let yield_now =
                |merged: usize| merged >= at_least && jobs.is_some_and(JobReceiver::is_waiting);
            let merged = merge_chunk(&self.conn, &chunk, started + budget, yield_now);
            if let Ok(count) = merged {
                self.merge_step_size = next_step_size(
                    self.merge_step_size,
                    count,
                    chunk.len(),
                    started.elapsed(),
                    budget,
                );
            }
            match merged {
                Ok(count) => {
                    self.merge_retry = None;
                    self.tail.write().remove_merged(&chunk[..count]);
                }
                Err(e) => {
                    let pause = self.merge_retry.map_or(MERGE_RETRY_MIN, |(_, pause)| {
                        (pause * 2).min(MERGE_RETRY_MAX)
                    });
                    self.merge_retry = Some((Instant::now() + pause, pause));
                    tracing::warn!("journal merge failed, retrying in {pause:?}: {e}");
                    return Err(e);
                }
            }
        }
        if !self.tail.read().is_merging() {
            for path in self.merging_segments.drain(..) {
                remove_segment(&path);
            }
        }
        Ok(())
    }

    /// The broken segment's records stay replayable: it is kept with the
    /// active generation's files until that generation is merged.
    fn replace_broken_segment(&mut self) {
        match Segment::create(&self.dir, self.segment.number() + 1, self.sync) {
            Ok(next) => {
                let broken = std::mem::replace(&mut self.segment, next);
                tracing::warn!(path = %broken.path().display(), "journal segment replaced after a failed append");
                self.active_retired.push(broken.path().to_owned());
            }
            Err(e) => tracing::warn!("cannot start a new journal segment: {e}"),
        }
    }

    /// Freezes the active generation for merging; its appends continue in a
    /// new segment.
    fn rotate(&mut self) -> Result<(), StoreError> {
        if self.tail.read().active_len() == 0 {
            return Ok(());
        }
        let next = Segment::create(&self.dir, self.segment.number() + 1, self.sync)
            .map_err(journal_error)?;
        let frozen = std::mem::replace(&mut self.segment, next);
        self.merging_segments = std::mem::take(&mut self.active_retired);
        self.merging_segments.push(frozen.path().to_owned());
        self.tail.write().freeze();
        Ok(())
    }

    fn merge_all(&mut self) -> Result<(), StoreError> {
        self.merge_retry = None;
        // Nothing waits at shutdown: whole chunks.
        self.merge_step_size = MERGE_CHUNK;
        while self.tail.read().len() > 0 {
            self.merge_step(Duration::from_secs(3600), None)?;
        }
        for path in self.active_retired.drain(..) {
            remove_segment(&path);
        }
        remove_segment(self.segment.path());
        Ok(())
    }
}

/// Stores the cursors a batch moved, in one transaction.
fn move_cursors(
    conn: &Connection,
    cursors: &HashMap<(ConversationId, UserId), Seq, FastHash>,
) -> Result<(), StoreError> {
    in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
        let mut cursor = conn.prepare_cached(MOVE_CURSOR)?;
        for (&(conversation, user), &seq) in cursors {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            cursor.execute((conversation.bytes(), user, seq))?;
        }
        Ok(())
    })
}

/// One merge transaction: inserts `chunk` in order until `deadline`,
/// then commits; returns how many it merged (at least a few dozen).
fn merge_chunk(
    conn: &Connection,
    chunk: &[Message],
    deadline: Instant,
    yield_now: impl Fn(usize) -> bool,
) -> Result<usize, StoreError> {
    // The clock is read once per this many inserts.
    const CHECK_EVERY: usize = 32;
    in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
        let mut insert = conn.prepare_cached(INSERT_MESSAGE)?;
        for (n, message) in chunk.iter().enumerate() {
            if n > 0 && yield_now(n) {
                return Ok(n);
            }
            if n > 0 && n % CHECK_EVERY == 0 && Instant::now() >= deadline {
                return Ok(n);
            }
            drop_if_refused(insert_message(&mut insert, message), message.id, "merge")?;
        }
        Ok(chunk.len())
    })
}

/// The next merge step's size: what fit in the budget when the deadline
/// cut it (unchanged when a waiting job did), twice as much when it finished in half the budget, within
/// [`MERGE_STEP_MIN`, `MERGE_CHUNK`].
fn next_step_size(
    size: usize,
    merged: usize,
    offered: usize,
    took: Duration,
    budget: Duration,
) -> usize {
    let next = if merged < offered && took >= budget {
        merged
    } else if merged < offered {
        // Cut short for a waiting job: what fits is unknown, keep it.
        size
    } else if took < budget / 2 && offered == size {
        size * 2
    } else {
        size
    };
    next.clamp(MERGE_STEP_MIN, MERGE_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_step_stops_at_its_deadline_and_the_size_follows() {
        let conn = Connection::open_in_memory().unwrap();
        super::super::schema::create_schema(&conn).unwrap();
        let conversation = crate::model::ObjectId::new();
        let chunk: Vec<Message> = (0..500u64)
            .map(|n| Message {
                id: crate::model::ObjectId::new(),
                conversation_id: conversation,
                sender_id: 1,
                text: format!("m{n}"),
                created_at: crate::model::Millis(0),
                seq: n + 1,
                client_id: None,
                viewed_by: None,
                viewed_at: None,
            })
            .collect();
        // A deadline already passed: one check's worth, committed.
        let merged = merge_chunk(&conn, &chunk, Instant::now(), |_| false).unwrap();
        assert_eq!(merged, 32);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 32);
        // Time enough: the rest.
        let far = Instant::now() + Duration::from_secs(60);
        // A job waiting once 40 are merged: it yields there.
        assert_eq!(
            merge_chunk(&conn, &chunk[32..], far, |merged| merged >= 40).unwrap(),
            40
        );
        let done = 32 + 40;
        assert_eq!(
            merge_chunk(&conn, &chunk[done..], far, |_| false).unwrap(),
            500 - done
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 500);

        let budget = MERGE_STEP_BUDGET;
        assert_eq!(next_step_size(1024, 300, 1024, budget, budget), 300);
        assert_eq!(
            next_step_size(1024, 10, 1024, budget, budget),
            MERGE_STEP_MIN
        );
        assert_eq!(next_step_size(1024, 1024, 1024, budget / 4, budget), 2048);
        assert_eq!(
            next_step_size(8192, 8192, 8192, budget / 4, budget),
            MERGE_CHUNK
        );
        // Cut short by a waiting job before the budget: kept.
        assert_eq!(next_step_size(1024, 64, 1024, budget / 8, budget), 1024);
        // A short tail offered less than the size: no growth from it.
        assert_eq!(next_step_size(1024, 10, 10, budget / 4, budget), 1024);
    }
}
