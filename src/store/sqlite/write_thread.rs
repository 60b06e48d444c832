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

use std::collections::HashMap;

use foldhash::fast::RandomState as FastHash;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rusqlite::{Connection, OptionalExtension};

use super::journal::{self, Segment};
use super::tail::{ClientKey, Tail};
use super::{
    get_or_create, lower_priority, refuses_only_this_op, store_error, WriteJob, INSERT_MESSAGE,
    VIEW_MESSAGE, VIEW_TARGET,
};
use crate::model::{ConversationId, Message, MessageId, Millis, ObjectId, UserId, ViewEffect};
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

/// An earlier message with this client id (a resend). The message's own id
/// is not looked up: a retried message SQLite already holds is journaled
/// again, reported `Inserted`, and its second insert does nothing at merge.
const STORED_CLIENT_ID: &str = "SELECT id FROM messages
    WHERE conversation_id = ?1 AND sender_id = ?2 AND client_id = ?3";

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
        let next = replay(&conn, dir)?;
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
                }
            }
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
        // Views whose message is already in SQLite: (outcome index, op).
        let mut stored_views = Vec::new();
        // One read transaction for the batch's lookups: each statement on
        // its own would take and release SQLite's file locks (fcntl calls).
        let looked_up = in_transaction(&self.conn, "BEGIN", |conn| {
            let tail = self.tail.read();
            let mut by_client_id = conn.prepare_cached(STORED_CLIENT_ID)?;
            for op in ops {
                let outcome = match op {
                    WriteOp::Insert(message) => match staged.conflict(&tail, &message) {
                        Some(existing) => conflict_outcome(&message, existing),
                        None => {
                            let stored = match message.client_id.as_deref() {
                                Some(client_id) => by_client_id
                                    .query_row(
                                        (
                                            message.conversation_id.bytes(),
                                            message.sender_id,
                                            client_id,
                                        ),
                                        |row| row.get::<_, [u8; 12]>(0),
                                    )
                                    .optional()?,
                                None => None,
                            };
                            match stored {
                                Some(existing) => {
                                    conflict_outcome(&message, ObjectId::from_bytes(existing))
                                }
                                None => {
                                    staged.push_insert(message);
                                    WriteOutcome::Inserted
                                }
                            }
                        }
                    },
                    WriteOp::View {
                        conversation_id,
                        message_id,
                        viewer_id,
                        at,
                    } => {
                        if let Some(message) = staged.insert_mut(conversation_id, message_id) {
                            message.mark_viewed(viewer_id, at).into()
                        } else if let Some(message) = tail.get(conversation_id, message_id) {
                            // The tail gets this batch's views only after the
                            // append: an earlier one of the batch counts first.
                            let key = (conversation_id, message_id);
                            let (viewed_by, viewed_at) = match staged.tail_views.get(&key) {
                                Some(&(viewer, at)) => (Some(viewer), Some(at)),
                                None => (message.viewed_by, message.viewed_at),
                            };
                            let effect = ViewEffect::of(
                                message.sender_id,
                                viewed_by,
                                viewed_at,
                                viewer_id,
                                at,
                            );
                            if effect == ViewEffect::Recorded {
                                staged.tail_views.insert(key, (viewer_id, at));
                                staged.records.push(WriteOp::View {
                                    conversation_id,
                                    message_id,
                                    viewer_id,
                                    at,
                                });
                            }
                            effect.into()
                        } else {
                            stored_views.push((
                                staged.outcomes.len(),
                                (conversation_id, message_id, viewer_id, at),
                            ));
                            WriteOutcome::ViewTargetMissing
                        }
                    }
                };
                staged.outcomes.push(outcome);
            }
            Ok(())
        });
        looked_up?;
        if !stored_views.is_empty() {
            let outcomes = self.view_stored(&stored_views)?;
            for ((index, _), outcome) in stored_views.iter().zip(outcomes) {
                staged.outcomes[*index] = outcome;
            }
        }
        Ok(staged)
    }

    /// Views of merged messages go straight to SQLite, in one transaction.
    /// A view that changed nothing is looked up: the message exists (viewed
    /// already) or not.
    fn view_stored(&self, views: &[(usize, StoredView)]) -> Result<Vec<WriteOutcome>, StoreError> {
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

/// A view of a message already in SQLite: conversation, message, viewer, time.
type StoredView = (ConversationId, MessageId, UserId, Millis);

/// A batch's decisions before its journal append.
#[derive(Default)]
struct Staged {
    outcomes: Vec<WriteOutcome>,
    records: Vec<WriteOp>,
    /// Index in `records` of each new message.
    by_id: HashMap<(ConversationId, MessageId), usize, FastHash>,
    by_client_id: HashMap<ClientKey, MessageId, FastHash>,
    /// The last view this batch records of each tail message: (viewer, at).
    tail_views: HashMap<(ConversationId, MessageId), (UserId, Millis), FastHash>,
}

impl Staged {
    fn with_capacity(ops: usize) -> Staged {
        Staged {
            outcomes: Vec::with_capacity(ops),
            records: Vec::with_capacity(ops),
            ..Staged::default()
        }
    }

    /// A message this batch or the tail already holds with the same id or
    /// client id.
    fn conflict(&self, tail: &Tail, message: &Message) -> Option<MessageId> {
        let (conversation, id) = (message.conversation_id, message.id);
        if self.by_id.contains_key(&(conversation, id)) || tail.get(conversation, id).is_some() {
            return Some(id);
        }
        let key = (conversation, message.sender_id, message.client_id.clone()?);
        self.by_client_id
            .get(&key)
            .copied()
            .or_else(|| tail.by_client_id(&key))
    }

    fn push_insert(&mut self, message: Message) {
        let key = (message.conversation_id, message.id);
        if let Some(client_id) = &message.client_id {
            self.by_client_id.insert(
                (
                    message.conversation_id,
                    message.sender_id,
                    client_id.clone(),
                ),
                message.id,
            );
        }
        self.by_id.insert(key, self.records.len());
        self.records.push(WriteOp::Insert(message));
    }

    fn insert_mut(&mut self, conversation: ConversationId, id: MessageId) -> Option<&mut Message> {
        let index = *self.by_id.get(&(conversation, id))?;
        match self.records.get_mut(index) {
            Some(WriteOp::Insert(message)) => Some(message),
            _ => None,
        }
    }
}

fn conflict_outcome(message: &Message, existing: MessageId) -> WriteOutcome {
    if existing == message.id {
        WriteOutcome::Inserted
    } else {
        WriteOutcome::Duplicate { existing }
    }
}

/// One merge transaction.
fn merge_chunk(conn: &Connection, chunk: &[Message]) -> Result<(), StoreError> {
    in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
        let mut insert = conn.prepare_cached(INSERT_MESSAGE)?;
        for message in chunk {
            drop_if_refused(insert_record(&mut insert, message), message.id, "merge")?;
        }
        Ok(())
    })
}

/// A journaled op SQLite can never take (a constraint the journal does not
/// know) is logged and dropped rather than blocking every later merge, or
/// every start.
fn drop_if_refused(
    applied: rusqlite::Result<()>,
    message: MessageId,
    during: &str,
) -> rusqlite::Result<()> {
    match applied {
        Err(e) if refuses_only_this_op(&e) => {
            tracing::error!(id = %message, "journaled write dropped by SQLite at {during}: {e}");
            Ok(())
        }
        other => other,
    }
}

fn insert_record(insert: &mut rusqlite::Statement<'_>, message: &Message) -> rusqlite::Result<()> {
    insert.execute((
        message.conversation_id.bytes(),
        message.id.bytes(),
        message.sender_id,
        message.text.as_str(),
        message.created_at.0,
        message.client_id.as_deref(),
        message.viewed_by,
        message.viewed_at.map(|at| at.0),
    ))?;
    Ok(())
}

/// Runs `body` between `begin` and `COMMIT`, rolling back on failure.
fn in_transaction<T>(
    conn: &Connection,
    begin: &str,
    body: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    let result = conn
        .prepare_cached(begin)
        .and_then(|mut begin| begin.execute([]))
        .and_then(|_| body(conn))
        .and_then(|value| {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(value)
        });
    result.map_err(|e| {
        // A failed COMMIT (e.g. SQLITE_BUSY) leaves the transaction open.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        store_error(e)
    })
}

/// Applies every journal segment an earlier process left, in order, and
/// removes them; returns the number for the next segment.
fn replay(conn: &Connection, dir: &Path) -> Result<u64, StoreError> {
    let segments = journal::list_segments(dir).map_err(journal_error)?;
    let Some(&(last, _)) = segments.last() else {
        return Ok(1);
    };
    let mut replayed = 0usize;
    for (_, path) in &segments {
        let contents = journal::read_segment(path).map_err(journal_error)?;
        if contents.torn {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = contents.valid_len,
                "journal segment ends in a partial record (a write cut short): ignoring the rest"
            );
        }
        for records in contents.records.chunks(MERGE_CHUNK) {
            in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
                let mut insert = conn.prepare_cached(INSERT_MESSAGE)?;
                let mut view = conn.prepare_cached(VIEW_MESSAGE)?;
                for record in records {
                    let (applied, id) = match record {
                        WriteOp::Insert(message) => {
                            (insert_record(&mut insert, message), message.id)
                        }
                        WriteOp::View {
                            conversation_id,
                            message_id,
                            viewer_id,
                            at,
                        } => (
                            view.execute((
                                conversation_id.bytes(),
                                message_id.bytes(),
                                viewer_id,
                                at.0,
                            ))
                            .map(drop),
                            *message_id,
                        ),
                    };
                    drop_if_refused(applied, id, "replay")?;
                }
                Ok(())
            })?;
        }
        replayed += contents.records.len();
    }
    for (_, path) in &segments {
        remove_segment(path);
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            segments = segments.len(),
            "replayed the journal of the previous run into SQLite"
        );
    }
    Ok(last + 1)
}

/// A merged segment is only garbage; failing to remove it costs a replay.
fn remove_segment(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove a merged journal segment: {e}");
        }
    }
}

/// Journal I/O errors: a full disk or a failing volume may pass, so the
/// writer retries them.
fn journal_error(error: std::io::Error) -> StoreError {
    match error.kind() {
        std::io::ErrorKind::InvalidData => StoreError::Internal(format!("journal: {error}")),
        _ => StoreError::Unavailable(format!("journal: {error}")),
    }
}
