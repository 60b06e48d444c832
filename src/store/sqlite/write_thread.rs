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
use super::journal::{self, remove_segment, Segment};
use super::legacy_seq::number_unnumbered;
use super::priority::lower_priority;
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
/// Messages per merge transaction: large enough that a conversation's run
/// rarely splits, small enough that a waiting batch is not held up long.
const MERGE_CHUNK: usize = 8_192;
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
            last_seqs: HashMap::default(),
        })
    }

    pub(super) fn run(mut self, jobs: mpsc::Receiver<WriteJob>) {
        lower_priority();
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
                let _ = self.merge_step();
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
            self.merge_step()?;
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
    fn merge_step(&mut self) -> Result<(), StoreError> {
        if !self.tail.read().is_merging() {
            self.rotate()?;
        }
        let chunk = self.tail.read().next_chunk(MERGE_CHUNK);
        if !chunk.is_empty() {
            if let Err(e) = merge_chunk(&self.conn, &chunk) {
                let pause = self.merge_retry.map_or(MERGE_RETRY_MIN, |(_, pause)| {
                    (pause * 2).min(MERGE_RETRY_MAX)
                });
                self.merge_retry = Some((Instant::now() + pause, pause));
                tracing::warn!("journal merge failed, retrying in {pause:?}: {e}");
                return Err(e);
            }
            self.merge_retry = None;
            self.tail.write().remove_merged(&chunk);
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
        while self.tail.read().len() > 0 {
            self.merge_step()?;
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

/// One merge transaction.
fn merge_chunk(conn: &Connection, chunk: &[Message]) -> Result<(), StoreError> {
    in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
        let mut insert = conn.prepare_cached(INSERT_MESSAGE)?;
        for message in chunk {
            drop_if_refused(insert_message(&mut insert, message), message.id, "merge")?;
        }
        Ok(())
    })
}
