//! A batch's decisions before its journal append: each op's outcome, the
//! records to journal, and the batch's own indexes, so a later op of the
//! batch sees an earlier one before either reaches the tail.
//!
//! Views of messages only SQLite may hold are collected here; the write
//! thread applies them there, in one transaction, and sets their outcomes.

use std::collections::HashMap;

use foldhash::fast::RandomState as FastHash;
use rusqlite::Statement;

use rusqlite::OptionalExtension;

use super::sql::{last_seq, stored_client_id, stored_id};
use super::tail::{ClientKey, Tail};
use crate::model::{ConversationId, Message, MessageId, Millis, Seq, UserId, ViewEffect};
use crate::store::{ReadUpTo, WriteOp, WriteOutcome};

/// A view's fields: conversation, message, viewer, time.
pub(super) type View = (ConversationId, MessageId, UserId, Millis);

/// A batch's decisions before its journal append.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) outcomes: Vec<WriteOutcome>,
    pub(super) records: Vec<WriteOp>,
    /// Views whose message only SQLite may hold: (index in `outcomes`, view).
    pub(super) stored_views: Vec<(usize, View)>,
    /// Index in `records` of each new message.
    by_id: HashMap<(ConversationId, MessageId), usize, FastHash>,
    by_client_id: HashMap<ClientKey, MessageId, FastHash>,
    /// The last view this batch records of each tail message: (viewer, at).
    tail_views: HashMap<(ConversationId, MessageId), (UserId, Millis), FastHash>,
    /// The last seq this batch gave in each conversation; the write thread
    /// keeps them only once the batch is journaled.
    pub(super) last_seqs: HashMap<ConversationId, Seq, FastHash>,
    /// Each participant's newest message in this batch.
    sent: HashMap<(ConversationId, UserId), Seq, FastHash>,
    /// Read cursors this batch moves: the write thread stores them.
    pub(super) cursors: HashMap<(ConversationId, UserId), Seq, FastHash>,
}

/// What staging reads besides the batch: the tail, SQLite's statements,
/// and the write thread's last seqs (those it knows; others are read).
pub(super) struct Lookups<'a, 'conn> {
    pub(super) tail: &'a Tail,
    pub(super) by_client_id: &'a mut Statement<'conn>,
    pub(super) by_id: &'a mut Statement<'conn>,
    pub(super) last_seq: &'a mut Statement<'conn>,
    pub(super) known_seqs: &'a HashMap<ConversationId, Seq, FastHash>,
    /// `READ_CURSOR`, `LAST_SENT`, `SEQ_AND_SENDER`.
    pub(super) read_cursor: &'a mut Statement<'conn>,
    pub(super) last_sent: &'a mut Statement<'conn>,
    pub(super) seq_and_sender: &'a mut Statement<'conn>,
}

impl Staged {
    pub(super) fn with_capacity(ops: usize) -> Staged {
        Staged {
            outcomes: Vec::with_capacity(ops),
            records: Vec::with_capacity(ops),
            ..Staged::default()
        }
    }

    /// Decides `op`'s outcome (see `insert` and `view`).
    pub(super) fn push(
        &mut self,
        lookups: &mut Lookups<'_, '_>,
        op: WriteOp,
    ) -> rusqlite::Result<()> {
        let tail = lookups.tail;
        let outcome = match op {
            WriteOp::Insert(message) => self.insert(lookups, message)?,
            WriteOp::View {
                conversation_id,
                message_id,
                viewer_id,
                at,
            } => self.view(tail, (conversation_id, message_id, viewer_id, at)),
            WriteOp::Read {
                conversation_id,
                user_id,
                up_to,
            } => self.read(lookups, conversation_id, user_id, up_to)?,
        };
        self.outcomes.push(outcome);
        Ok(())
    }

    /// A conflict with this batch, the tail or SQLite (looked up with a
    /// prepared `STORED_CLIENT_ID`, or `STORED_ID` without a client id),
    /// else staged with the conversation's next seq.
    fn insert(
        &mut self,
        lookups: &mut Lookups<'_, '_>,
        mut message: Message,
    ) -> rusqlite::Result<WriteOutcome> {
        if let Some(existing) = self.conflict(lookups.tail, &message) {
            return Ok(conflict_outcome(&message, existing));
        }
        if let Some(existing) = stored_client_id(lookups.by_client_id, &message)? {
            return Ok(conflict_outcome(&message, existing));
        }
        if let Some(existing) = stored_id(lookups.by_id, &message)? {
            return Ok(conflict_outcome(&message, existing));
        }
        let conversation = message.conversation_id;
        message.seq = self.last_seq(lookups, conversation)? + 1;
        self.last_seqs.insert(conversation, message.seq);
        self.sent
            .insert((conversation, message.sender_id), message.seq);
        let seq = message.seq;
        self.push_insert(message);
        Ok(WriteOutcome::Inserted { seq })
    }

    /// The conversation's last seq so far: this batch's, the write
    /// thread's, or SQLite's and the tail's.
    fn last_seq(
        &self,
        lookups: &mut Lookups<'_, '_>,
        conversation: ConversationId,
    ) -> rusqlite::Result<Seq> {
        if let Some(&seq) = self.last_seqs.get(&conversation) {
            return Ok(seq);
        }
        if let Some(&seq) = lookups.known_seqs.get(&conversation) {
            return Ok(seq);
        }
        Ok(last_seq(lookups.last_seq, conversation)?.max(lookups.tail.last_seq(conversation)))
    }

    /// Moves `user`'s cursor (see `WriteOp::Read`); `cursors` collects the
    /// moves for the write thread.
    fn read(
        &mut self,
        lookups: &mut Lookups<'_, '_>,
        conversation: ConversationId,
        user: UserId,
        up_to: ReadUpTo,
    ) -> rusqlite::Result<WriteOutcome> {
        let target = match up_to {
            ReadUpTo::Seq(seq) => {
                let last_seq = self.last_seq(lookups, conversation)?;
                if seq > last_seq {
                    return Ok(WriteOutcome::SeqBeyondLast { last_seq });
                }
                seq
            }
            ReadUpTo::Message(id) => match self.seq_and_sender(lookups, conversation, id)? {
                Some((seq, sender)) if sender != user => seq,
                _ => return Ok(WriteOutcome::ViewTargetMissing),
            },
        };
        let cursor = self.cursor(lookups, conversation, user)?;
        if target <= cursor {
            return Ok(WriteOutcome::ReadUnchanged {
                last_read_seq: cursor,
            });
        }
        self.cursors.insert((conversation, user), target);
        Ok(WriteOutcome::ReadMoved {
            last_read_seq: target,
        })
    }

    /// `user`'s cursor: what they read, or their own newest message.
    fn cursor(
        &self,
        lookups: &mut Lookups<'_, '_>,
        conversation: ConversationId,
        user: UserId,
    ) -> rusqlite::Result<Seq> {
        let key = (conversation, user);
        let batch = self.cursors.get(&key).copied().unwrap_or(0);
        let sent = self.sent.get(&key).copied().unwrap_or(0);
        let read: Option<i64> = lookups
            .read_cursor
            .query_row((conversation.bytes(), user), |row| row.get(0))
            .optional()?;
        let stored_sent: i64 = lookups
            .last_sent
            .query_row((conversation.bytes(), user), |row| row.get(0))?;
        let as_seq = |value: i64| Seq::try_from(value).unwrap_or(0);
        Ok(batch
            .max(sent)
            .max(read.map_or(0, as_seq))
            .max(as_seq(stored_sent))
            .max(lookups.tail.last_sent(conversation, user)))
    }

    /// A message's seq and sender: from this batch, the tail or SQLite.
    fn seq_and_sender(
        &self,
        lookups: &mut Lookups<'_, '_>,
        conversation: ConversationId,
        id: MessageId,
    ) -> rusqlite::Result<Option<(Seq, UserId)>> {
        if let Some(&index) = self.by_id.get(&(conversation, id)) {
            if let WriteOp::Insert(message) = &self.records[index] {
                return Ok(Some((message.seq, message.sender_id)));
            }
        }
        if let Some(message) = lookups.tail.get(conversation, id) {
            return Ok(Some((message.seq, message.sender_id)));
        }
        let stored: Option<(Option<i64>, UserId)> = lookups
            .seq_and_sender
            .query_row((conversation.bytes(), id.bytes()), |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        Ok(stored.map(|(seq, sender)| {
            (
                seq.and_then(|seq| Seq::try_from(seq).ok()).unwrap_or(0),
                sender,
            )
        }))
    }

    /// Applied to this batch's insert or to the tail's copy; a message
    /// neither holds can only be in SQLite: the view is left in
    /// `stored_views` and its outcome set by `set_stored_view_outcomes`.
    fn view(&mut self, tail: &Tail, view: View) -> WriteOutcome {
        let (conversation_id, message_id, viewer_id, at) = view;
        if let Some(message) = self.insert_mut(conversation_id, message_id) {
            return message.mark_viewed(viewer_id, at).into();
        }
        if let Some(message) = tail.get(conversation_id, message_id) {
            return self.view_tail_message(message, view);
        }
        self.stored_views.push((self.outcomes.len(), view));
        WriteOutcome::ViewTargetMissing
    }

    /// The outcomes of `stored_views`, in their order.
    pub(super) fn set_stored_view_outcomes(&mut self, outcomes: Vec<WriteOutcome>) {
        for (&(index, _), outcome) in self.stored_views.iter().zip(outcomes) {
            self.outcomes[index] = outcome;
        }
    }

    /// The tail gets this batch's views only after the append: an earlier
    /// one of the batch counts first.
    fn view_tail_message(&mut self, message: &Message, view: View) -> WriteOutcome {
        let (conversation_id, message_id, viewer_id, at) = view;
        let key = (conversation_id, message_id);
        let (viewed_by, viewed_at) = match self.tail_views.get(&key) {
            Some(&(viewer, at)) => (Some(viewer), Some(at)),
            None => (message.viewed_by, message.viewed_at),
        };
        let effect = ViewEffect::of(message.sender_id, viewed_by, viewed_at, viewer_id, at);
        if effect == ViewEffect::Recorded {
            self.tail_views.insert(key, (viewer_id, at));
            self.records.push(WriteOp::View {
                conversation_id,
                message_id,
                viewer_id,
                at,
            });
        }
        effect.into()
    }

    /// A message this batch or the tail already holds with the same id or
    /// client id: its id and seq.
    fn conflict(&self, tail: &Tail, message: &Message) -> Option<(MessageId, Seq)> {
        let conversation = message.conversation_id;
        let seq_of = |id: MessageId| match self.by_id.get(&(conversation, id)) {
            Some(&index) => match &self.records[index] {
                WriteOp::Insert(staged) => Some(staged.seq),
                WriteOp::View { .. } | WriteOp::Read { .. } => None,
            },
            None => tail.get(conversation, id).map(|stored| stored.seq),
        };
        if let Some(seq) = seq_of(message.id) {
            return Some((message.id, seq));
        }
        let key = (conversation, message.sender_id, message.client_id.clone()?);
        let existing = self
            .by_client_id
            .get(&key)
            .copied()
            .or_else(|| tail.by_client_id(&key))?;
        Some((existing, seq_of(existing)?))
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

/// A conflict with the message itself (a retry) is its insert again.
fn conflict_outcome(message: &Message, (existing, seq): (MessageId, Seq)) -> WriteOutcome {
    if existing == message.id {
        WriteOutcome::Inserted { seq }
    } else {
        WriteOutcome::Duplicate { existing, seq }
    }
}
