//! Read cursors (CONTRACT §6): a batch's `WriteOp::Read`s.
//!
//! Storage: a collection of its own, `read_cursors`, one document
//! `{conversation_id: ObjectId, user_id: int64, last_read_seq: int64}` per
//! (conversation, user), unique on `{conversation_id: 1, user_id: 1}`.
//! Not fields on the conversation document: that document is the seed's
//! (CONTRACT §5) and the Go service may still write it, while nothing but
//! this service knows `read_cursors`. A cursor belongs to a user, not to a
//! role, as in SQLite's table of the same name. A move is one `$max` upsert
//! on the unique key, which never moves a cursor back and is idempotent.
//!
//! A participant's cursor is the larger of the stored `last_read_seq` and
//! the seq of their own newest message: posting moves it without a write.
//!
//! The reads run after the batch's inserts and views, yet answer as if
//! applied in batch order (the trait's contract): a read sees the messages
//! inserted before it in the batch and not those inserted after it. So the
//! database is asked what it held *before this batch's messages* (their
//! seqs are the conversation's newest, in batch order: everything below the
//! lowest of them), and the batch's own messages are added in memory, each
//! from its position on. All reads take one round trip (an aggregation for
//! every reader's stored cursor, newest own message and conversation's last
//! seq, and alongside it a `find` for the messages a `viewed` names), then
//! one `update` with an upsert per cursor that moved.
//!
//! A retried batch is safe: its inserts are found stored, and a cursor its
//! first try moved is found there, so that read answers `ReadUnchanged`
//! (its move was relayed by nobody, since the first try failed: the next
//! move or the inbox shows it).

use std::collections::{HashMap, HashSet};

use futures_util::future::{try_join, try_join_all};
use mongodb::bson::{doc, Bson, Document};

use super::documents::{bson_id, int, object_id};
use super::errors::{is_permanent_write_code, store_error};
use super::last_seq::numbered;
use super::{MongoStore, MESSAGES, READ_CURSORS};
use crate::model::{ConversationId, MessageId, Seq, UserId};
use crate::store::{ReadUpTo, StoreError, WriteOutcome};

/// A `WriteOp::Read`'s fields, with the op's position in the batch.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingRead {
    pub(super) position: usize,
    pub(super) conversation_id: ConversationId,
    pub(super) user_id: UserId,
    pub(super) up_to: ReadUpTo,
}

/// An insert of the batch; whether it stored a message, and with which
/// seq, is its outcome.
#[derive(Clone, Copy, Debug)]
pub(super) struct BatchInsert {
    pub(super) position: usize,
    pub(super) id: MessageId,
    pub(super) conversation_id: ConversationId,
    pub(super) sender_id: UserId,
}

/// A message this batch stored (now or in an earlier try), at the first
/// position of its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchMessage {
    position: usize,
    id: MessageId,
    conversation_id: ConversationId,
    sender_id: UserId,
    seq: Seq,
}

/// One (conversation, reader) before this batch's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Before {
    /// The conversation's last seq.
    last_seq: Seq,
    /// The reader's newest message's seq.
    sent: Seq,
    /// The stored `last_read_seq`.
    cursor: Seq,
}

/// A message a `viewed` names, as stored.
#[derive(Clone, Copy, Debug)]
struct Target {
    conversation_id: Option<ConversationId>,
    sender_id: Option<UserId>,
    seq: Option<Seq>,
}

type Reader = (ConversationId, UserId);

/// Each read's outcome (position, outcome), and each moved cursor's new
/// value in the order first moved.
#[derive(Debug, Default, PartialEq, Eq)]
struct Resolved {
    outcomes: Vec<(usize, WriteOutcome)>,
    moves: Vec<(Reader, Seq)>,
}

impl MongoStore {
    /// Resolves and stores `reads` (in batch order) after the batch's
    /// inserts, whose outcomes are in `outcomes` already.
    pub(super) async fn apply_reads(
        &self,
        reads: &[PendingRead],
        inserts: &[BatchInsert],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        if reads.is_empty() {
            return Ok(());
        }
        let batch = batch_messages(inserts, outcomes);
        let (before, targets) = try_join(
            self.read_before(reads, &batch),
            self.read_targets(reads, &batch),
        )
        .await?;
        let resolved = resolve(reads, &batch, &before, &targets);
        for (position, outcome) in resolved.outcomes {
            outcomes[position] = Some(outcome);
        }
        self.write_cursors(&resolved.moves, reads, outcomes).await
    }

    /// The aggregation: for each reader, what the database held before
    /// this batch's messages.
    async fn read_before(
        &self,
        reads: &[PendingRead],
        batch: &[BatchMessage],
    ) -> Result<HashMap<Reader, Before>, StoreError> {
        let mut seen: HashSet<Reader> = HashSet::new();
        let readers: Vec<Reader> = reads
            .iter()
            .map(|read| (read.conversation_id, read.user_id))
            .filter(|reader| seen.insert(*reader))
            .collect();
        let lowest = lowest_seqs(batch);
        // The server matches every row against every conversation of its
        // aggregation: chunks keep that small however large the batch.
        let chunks = readers
            .chunks(READERS_PER_AGGREGATION)
            .map(|chunk| self.read_before_chunk(chunk, &lowest));
        let rows = try_join_all(chunks).await?;
        Ok(rows.into_iter().flatten().collect())
    }

    async fn read_before_chunk(
        &self,
        readers: &[Reader],
        lowest: &HashMap<ConversationId, i64>,
    ) -> Result<Vec<(Reader, Before)>, StoreError> {
        let cursor = self
            .conversations
            .aggregate(before_pipeline(readers, lowest))
            .batch_size(super::as_batch(readers.len()))
            .await
            .map_err(|error| store_error("read cursors", error))?;
        super::drain(cursor, "read cursors", |row| {
            let conversation = object_id(row, "c", "read cursor row")?;
            let user = int(row, "u").ok_or_else(|| {
                StoreError::Internal("mongodb: a read cursor row has no user".into())
            })?;
            Ok((
                (conversation, user),
                Before {
                    last_seq: first_seq(row, "last", "seq"),
                    sent: first_seq(row, "sent", "seq"),
                    cursor: first_seq(row, "cursor", "last_read_seq"),
                },
            ))
        })
        .await
    }

    /// The stored messages that `viewed` reads name (not this batch's own,
    /// which are known).
    async fn read_targets(
        &self,
        reads: &[PendingRead],
        batch: &[BatchMessage],
    ) -> Result<HashMap<MessageId, Target>, StoreError> {
        let own: HashSet<MessageId> = batch.iter().map(|message| message.id).collect();
        let mut seen: HashSet<MessageId> = HashSet::new();
        let ids: Vec<MessageId> = reads
            .iter()
            .filter_map(|read| match read.up_to {
                ReadUpTo::Message(id) => Some(id),
                ReadUpTo::Seq(_) => None,
            })
            .filter(|id| !own.contains(id) && seen.insert(*id))
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let limit = ids.len();
        let ids: Vec<Bson> = ids.into_iter().map(|id| bson_id(id).into()).collect();
        let cursor = self
            .messages
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1, "conversation_id": 1, "sender_id": 1, "seq": 1 })
            .limit(super::as_limit(limit))
            .batch_size(super::as_batch(limit))
            .await
            .map_err(|error| store_error("find read targets", error))?;
        let targets = super::drain(cursor, "find read targets", |document| {
            Ok((
                object_id(document, "_id", "message")?,
                Target {
                    conversation_id: object_id(document, "conversation_id", "message").ok(),
                    sender_id: int(document, "sender_id"),
                    seq: int(document, "seq")
                        .and_then(|seq| Seq::try_from(seq).ok())
                        .filter(|&seq| seq > 0),
                },
            ))
        })
        .await?;
        Ok(targets.into_iter().collect())
    }

    /// One `$max` upsert per moved cursor, in one `update` command. A
    /// statement refused for good rejects the reads that moved that cursor;
    /// anything else is `Unavailable` (the batch is retried).
    async fn write_cursors(
        &self,
        moves: &[(Reader, Seq)],
        reads: &[PendingRead],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        if moves.is_empty() {
            return Ok(());
        }
        let command = doc! {
            "update": READ_CURSORS,
            "updates": cursor_updates(moves),
            // Each statement names another cursor: none depends on another.
            "ordered": false,
            "writeConcern": self.write_concern.clone(),
        };
        let reply = self
            .database
            .run_command(command)
            .await
            .map_err(|error| store_error("update read cursors", error))?;
        if let Ok(concern) = reply.get_document("writeConcernError") {
            return Err(StoreError::Unavailable(format!(
                "mongodb update read cursors: write concern: {concern}"
            )));
        }
        let Ok(refused) = reply.get_array("writeErrors") else {
            return Ok(());
        };
        for refused in refused.iter().filter_map(Bson::as_document) {
            let code = int(refused, "code").unwrap_or_default();
            let index = int(refused, "index")
                .and_then(|index| usize::try_from(index).ok())
                .filter(|&index| index < moves.len());
            let (Some(index), true) = (index, is_permanent_write_code(code as i32)) else {
                return Err(StoreError::Unavailable(format!(
                    "mongodb update read cursors: {refused}"
                )));
            };
            let (reader, _) = moves[index];
            let message = refused.get_str("errmsg").unwrap_or("refused").to_string();
            for read in reads {
                let moved = matches!(
                    outcomes[read.position],
                    Some(WriteOutcome::ReadMoved { .. })
                );
                if moved && (read.conversation_id, read.user_id) == reader {
                    outcomes[read.position] = Some(WriteOutcome::Rejected(message.clone()));
                }
            }
        }
        Ok(())
    }
}

/// The messages the batch stored, each at the first position of its id
/// (a repeated id is the same message).
fn batch_messages(inserts: &[BatchInsert], outcomes: &[Option<WriteOutcome>]) -> Vec<BatchMessage> {
    let mut messages: Vec<BatchMessage> = Vec::new();
    let mut seen: HashSet<MessageId> = HashSet::new();
    for insert in inserts {
        if !seen.insert(insert.id) {
            continue;
        }
        if let Some(WriteOutcome::Inserted { seq }) = outcomes[insert.position] {
            messages.push(BatchMessage {
                position: insert.position,
                id: insert.id,
                conversation_id: insert.conversation_id,
                sender_id: insert.sender_id,
                seq,
            });
        }
    }
    messages
}

/// Readers per aggregation of `read_before`.
const READERS_PER_AGGREGATION: usize = 256;

/// Per conversation of the batch, its lowest new seq: seqs below it are
/// the conversation's messages from before the batch (the batch's own come
/// after them all). A conversation not in it: `i64::MAX`.
fn lowest_seqs(batch: &[BatchMessage]) -> HashMap<ConversationId, i64> {
    let mut lowest: HashMap<ConversationId, i64> = HashMap::new();
    for message in batch {
        let seq = i64::try_from(message.seq).unwrap_or(i64::MAX);
        lowest
            .entry(message.conversation_id)
            .and_modify(|low| *low = (*low).min(seq))
            .or_insert(seq);
    }
    lowest
}

/// The batch's messages by conversation and by (conversation, sender) as
/// (position, highest seq up to there) in batch order, and by id: each read
/// finds the newest of its earlier messages with a binary search instead of
/// a pass over the batch.
struct BatchIndex<'a> {
    by_conversation: HashMap<ConversationId, Vec<(usize, Seq)>>,
    by_sender: HashMap<Reader, Vec<(usize, Seq)>>,
    by_id: HashMap<MessageId, &'a BatchMessage>,
}

impl<'a> BatchIndex<'a> {
    fn new(batch: &'a [BatchMessage]) -> BatchIndex<'a> {
        fn push(run: &mut Vec<(usize, Seq)>, message: &BatchMessage) {
            let highest = run
                .last()
                .map_or(message.seq, |&(_, seq)| seq.max(message.seq));
            run.push((message.position, highest));
        }
        let mut index = BatchIndex {
            by_conversation: HashMap::new(),
            by_sender: HashMap::new(),
            by_id: HashMap::new(),
        };
        // `batch` is in batch order (`batch_messages`).
        for message in batch {
            push(
                index
                    .by_conversation
                    .entry(message.conversation_id)
                    .or_default(),
                message,
            );
            push(
                index
                    .by_sender
                    .entry((message.conversation_id, message.sender_id))
                    .or_default(),
                message,
            );
            index.by_id.entry(message.id).or_insert(message);
        }
        index
    }

    /// The highest seq of `run` placed before `position`; 0 for none.
    fn newest_before(run: Option<&Vec<(usize, Seq)>>, position: usize) -> Seq {
        let Some(run) = run else {
            return 0;
        };
        let earlier = run.partition_point(|&(at, _)| at < position);
        earlier.checked_sub(1).map_or(0, |last| run[last].1)
    }
}

/// The aggregation of [`MongoStore::read_before`]. It starts from the
/// readers' conversations only to have documents to hang the rows on: each
/// conversation's document becomes its readers' rows `{c, u, below}` (a
/// table of values, without `$documents`, which needs 5.1), and each row
/// looks up, below its bound, the conversation's newest seq and the
/// reader's, and the stored cursor. Each lookup is a seek on an index:
/// `{conversation_id: 1, seq: 1}`, `{conversation_id: 1, sender_id: 1,
/// seq: 1}` and `{conversation_id: 1, user_id: 1}` of `read_cursors`. A
/// conversation without a document has no row: nothing stored, zeros.
fn before_pipeline(readers: &[Reader], lowest: &HashMap<ConversationId, i64>) -> Vec<Document> {
    let mut seen: HashSet<ConversationId> = HashSet::new();
    let conversations: Vec<ConversationId> = readers
        .iter()
        .map(|&(conversation, _)| conversation)
        .filter(|conversation| seen.insert(*conversation))
        .collect();
    let rows: Vec<Bson> = readers
        .iter()
        .map(|&(conversation, user)| {
            Bson::Document(doc! {
                "c": bson_id(conversation),
                "u": Bson::Int64(user),
                "below": Bson::Int64(lowest.get(&conversation).copied().unwrap_or(i64::MAX)),
            })
        })
        .collect();
    let conversations: Vec<Bson> = conversations
        .into_iter()
        .map(|id| bson_id(id).into())
        .collect();
    let newest = |sender: Option<&str>| {
        let mut clauses = vec![Bson::Document(doc! { "$eq": ["$conversation_id", "$$c"] })];
        if let Some(sender) = sender {
            clauses.push(Bson::Document(doc! { "$eq": ["$sender_id", sender] }));
        }
        clauses.push(Bson::Document(doc! { "$lt": ["$seq", "$$below"] }));
        vec![
            doc! { "$match": { "$expr": { "$and": clauses }, "seq": numbered() } },
            doc! { "$sort": { "seq": -1 } },
            doc! { "$limit": 1 },
            doc! { "$project": { "_id": 0, "seq": 1 } },
        ]
    };
    vec![
        doc! { "$match": { "_id": { "$in": conversations } } },
        doc! { "$project": {
            "_id": 0,
            "row": { "$filter": {
                "input": { "$literal": rows },
                "as": "row",
                "cond": { "$eq": ["$$row.c", "$_id"] },
            } },
        } },
        doc! { "$unwind": "$row" },
        doc! { "$replaceRoot": { "newRoot": "$row" } },
        doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$c", "below": "$below" },
            "pipeline": newest(None),
            "as": "last",
        } },
        doc! { "$lookup": {
            "from": MESSAGES,
            "let": { "c": "$c", "u": "$u", "below": "$below" },
            "pipeline": newest(Some("$$u")),
            "as": "sent",
        } },
        doc! { "$lookup": {
            "from": READ_CURSORS,
            "let": { "c": "$c", "u": "$u" },
            "pipeline": [
                { "$match": { "$expr": { "$and": [
                    { "$eq": ["$conversation_id", "$$c"] },
                    { "$eq": ["$user_id", "$$u"] },
                ] } } },
                { "$project": { "_id": 0, "last_read_seq": 1 } },
            ],
            "as": "cursor",
        } },
    ]
}

/// The `key` of the first document of the array `field`, as a seq; 0 when
/// there is none (nothing stored).
pub(super) fn first_seq(document: &Document, field: &str, key: &str) -> Seq {
    document
        .get_array(field)
        .ok()
        .and_then(|found| found.first())
        .and_then(Bson::as_document)
        .and_then(|found| int(found, key))
        .and_then(|seq| Seq::try_from(seq).ok())
        .unwrap_or(0)
}

/// The `update` statements of [`MongoStore::write_cursors`].
fn cursor_updates(moves: &[(Reader, Seq)]) -> Vec<Document> {
    moves
        .iter()
        .map(|&((conversation, user), seq)| {
            doc! {
                "q": { "conversation_id": bson_id(conversation), "user_id": Bson::Int64(user) },
                // `$max`: never back, and the same move again changes nothing.
                "u": { "$max": {
                    "last_read_seq": Bson::Int64(i64::try_from(seq).unwrap_or(i64::MAX)),
                } },
                "upsert": true,
                "multi": false,
            }
        })
        .collect()
}

/// Decides each read in batch order, as the reference store does
/// (`MemoryStore::read`), from what was stored before the batch plus the
/// batch's own messages and moves before it.
fn resolve(
    reads: &[PendingRead],
    batch: &[BatchMessage],
    before: &HashMap<Reader, Before>,
    targets: &HashMap<MessageId, Target>,
) -> Resolved {
    let mut resolved = Resolved::default();
    let mut moved: HashMap<Reader, Seq> = HashMap::new();
    let index = BatchIndex::new(batch);
    for read in reads {
        let reader = (read.conversation_id, read.user_id);
        let stored = before.get(&reader).copied().unwrap_or_default();
        let last_seq = stored.last_seq.max(BatchIndex::newest_before(
            index.by_conversation.get(&read.conversation_id),
            read.position,
        ));
        let target = match read.up_to {
            ReadUpTo::Seq(seq) if seq > last_seq => {
                let outcome = WriteOutcome::SeqBeyondLast { last_seq };
                resolved.outcomes.push((read.position, outcome));
                continue;
            }
            ReadUpTo::Seq(seq) => Some(seq),
            ReadUpTo::Message(id) => target_seq(read, id, &index, targets),
        };
        let Some(target) = target else {
            let outcome = WriteOutcome::ViewTargetMissing;
            resolved.outcomes.push((read.position, outcome));
            continue;
        };
        let sent = stored.sent.max(BatchIndex::newest_before(
            index.by_sender.get(&reader),
            read.position,
        ));
        let cursor = stored
            .cursor
            .max(sent)
            .max(moved.get(&reader).copied().unwrap_or(0));
        let outcome = if target <= cursor {
            WriteOutcome::ReadUnchanged {
                last_read_seq: cursor,
            }
        } else {
            moved.insert(reader, target);
            WriteOutcome::ReadMoved {
                last_read_seq: target,
            }
        };
        resolved.outcomes.push((read.position, outcome));
    }
    for read in reads {
        let reader = (read.conversation_id, read.user_id);
        if let Some(seq) = moved.remove(&reader) {
            resolved.moves.push((reader, seq));
        }
    }
    resolved
}

/// The seq of the message a `viewed` names, if it is the other
/// participant's message of that conversation and there at the read's
/// place in the batch.
fn target_seq(
    read: &PendingRead,
    id: MessageId,
    index: &BatchIndex<'_>,
    targets: &HashMap<MessageId, Target>,
) -> Option<Seq> {
    if let Some(message) = index.by_id.get(&id) {
        let there = message.conversation_id == read.conversation_id
            && message.position < read.position
            && message.sender_id != read.user_id;
        return there.then_some(message.seq);
    }
    let target = targets.get(&id)?;
    let qualifies = target.conversation_id == Some(read.conversation_id)
        && target.sender_id != Some(read.user_id);
    // A message without a seq (written by an older build since the start's
    // numbering) has no place a cursor could move to.
    target.seq.filter(|_| qualifies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectId;

    const MENTOR: UserId = 10;
    const STUDENT: UserId = 25;

    fn read(
        position: usize,
        conversation: ConversationId,
        user: UserId,
        up_to: ReadUpTo,
    ) -> PendingRead {
        PendingRead {
            position,
            conversation_id: conversation,
            user_id: user,
            up_to,
        }
    }

    fn stored(
        position: usize,
        conversation: ConversationId,
        sender: UserId,
        seq: Seq,
    ) -> BatchMessage {
        BatchMessage {
            position,
            id: ObjectId::new(),
            conversation_id: conversation,
            sender_id: sender,
            seq,
        }
    }

    fn outcomes(resolved: &Resolved) -> Vec<WriteOutcome> {
        resolved.outcomes.iter().map(|(_, o)| o.clone()).collect()
    }

    #[test]
    fn a_cursor_moves_forward_only_and_never_below_the_readers_own_newest_message() {
        let c = ObjectId::new();
        let before = HashMap::from([(
            (c, MENTOR),
            Before {
                last_seq: 9,
                sent: 4,
                cursor: 6,
            },
        )]);
        let reads = [
            read(0, c, MENTOR, ReadUpTo::Seq(3)),
            read(1, c, MENTOR, ReadUpTo::Seq(6)),
            read(2, c, MENTOR, ReadUpTo::Seq(8)),
            read(3, c, MENTOR, ReadUpTo::Seq(7)),
            read(4, c, MENTOR, ReadUpTo::Seq(10)),
            read(5, c, MENTOR, ReadUpTo::Seq(9)),
        ];

        let resolved = resolve(&reads, &[], &before, &HashMap::new());

        assert_eq!(
            outcomes(&resolved),
            [
                WriteOutcome::ReadUnchanged { last_read_seq: 6 },
                WriteOutcome::ReadUnchanged { last_read_seq: 6 },
                WriteOutcome::ReadMoved { last_read_seq: 8 },
                WriteOutcome::ReadUnchanged { last_read_seq: 8 },
                WriteOutcome::SeqBeyondLast { last_seq: 9 },
                WriteOutcome::ReadMoved { last_read_seq: 9 },
            ]
        );
        assert_eq!(
            resolved.moves,
            [((c, MENTOR), 9)],
            "one write, the last move"
        );
    }

    #[test]
    fn the_own_newest_message_counts_even_with_no_stored_cursor() {
        let c = ObjectId::new();
        let before = HashMap::from([(
            (c, STUDENT),
            Before {
                last_seq: 3,
                sent: 2,
                cursor: 0,
            },
        )]);
        let resolved = resolve(
            &[
                read(0, c, STUDENT, ReadUpTo::Seq(1)),
                read(1, c, STUDENT, ReadUpTo::Seq(3)),
            ],
            &[],
            &before,
            &HashMap::new(),
        );
        assert_eq!(
            outcomes(&resolved),
            [
                WriteOutcome::ReadUnchanged { last_read_seq: 2 },
                WriteOutcome::ReadMoved { last_read_seq: 3 },
            ]
        );
    }

    #[test]
    fn a_read_sees_the_batch_s_messages_before_it_and_not_those_after_it() {
        let c = ObjectId::new();
        // Stored before the batch: seqs 1..=2. The batch: the student's 3,
        // the mentor's 4, then the student's 5.
        let batch = [
            stored(0, c, STUDENT, 3),
            stored(3, c, MENTOR, 4),
            stored(7, c, STUDENT, 5),
        ];
        let before = HashMap::from([
            (
                (c, MENTOR),
                Before {
                    last_seq: 2,
                    sent: 1,
                    cursor: 0,
                },
            ),
            (
                (c, STUDENT),
                Before {
                    last_seq: 2,
                    sent: 2,
                    cursor: 0,
                },
            ),
        ]);
        let reads = [
            // Before the mentor's 4: 3 is there, 4 is not.
            read(1, c, MENTOR, ReadUpTo::Seq(4)),
            read(2, c, MENTOR, ReadUpTo::Seq(3)),
            // After the mentor's 4: their own message is their cursor.
            read(4, c, MENTOR, ReadUpTo::Seq(4)),
            read(5, c, STUDENT, ReadUpTo::Seq(4)),
            // The student's 5 is in place only after position 7.
            read(6, c, MENTOR, ReadUpTo::Message(batch[2].id)),
            read(8, c, MENTOR, ReadUpTo::Message(batch[2].id)),
            // The student's own message is no target for them.
            read(9, c, STUDENT, ReadUpTo::Message(batch[2].id)),
        ];

        let resolved = resolve(&reads, &batch, &before, &HashMap::new());

        assert_eq!(
            outcomes(&resolved),
            [
                WriteOutcome::SeqBeyondLast { last_seq: 3 },
                WriteOutcome::ReadMoved { last_read_seq: 3 },
                WriteOutcome::ReadUnchanged { last_read_seq: 4 },
                WriteOutcome::ReadMoved { last_read_seq: 4 },
                WriteOutcome::ViewTargetMissing,
                WriteOutcome::ReadMoved { last_read_seq: 5 },
                WriteOutcome::ViewTargetMissing,
            ]
        );
        assert_eq!(resolved.moves, [((c, MENTOR), 5), ((c, STUDENT), 4)]);
    }

    #[test]
    fn a_stored_target_must_be_the_other_participant_s_message_of_that_conversation() {
        let (c, elsewhere) = (ObjectId::new(), ObjectId::new());
        let (theirs, mine, foreign, unnumbered, absent) = (
            ObjectId::new(),
            ObjectId::new(),
            ObjectId::new(),
            ObjectId::new(),
            ObjectId::new(),
        );
        let target = |conversation, sender, seq| Target {
            conversation_id: Some(conversation),
            sender_id: Some(sender),
            seq,
        };
        let targets = HashMap::from([
            (theirs, target(c, STUDENT, Some(2))),
            (mine, target(c, MENTOR, Some(3))),
            (foreign, target(elsewhere, STUDENT, Some(7))),
            (unnumbered, target(c, STUDENT, None)),
        ]);
        let before = HashMap::from([(
            (c, MENTOR),
            Before {
                last_seq: 3,
                sent: 0,
                cursor: 1,
            },
        )]);
        let reads: Vec<PendingRead> = [theirs, mine, foreign, unnumbered, absent, theirs]
            .into_iter()
            .enumerate()
            .map(|(n, id)| read(n, c, MENTOR, ReadUpTo::Message(id)))
            .collect();

        let resolved = resolve(&reads, &[], &before, &targets);

        assert_eq!(
            outcomes(&resolved),
            [
                WriteOutcome::ReadMoved { last_read_seq: 2 },
                WriteOutcome::ViewTargetMissing,
                WriteOutcome::ViewTargetMissing,
                WriteOutcome::ViewTargetMissing,
                WriteOutcome::ViewTargetMissing,
                WriteOutcome::ReadUnchanged { last_read_seq: 2 },
            ]
        );
    }

    #[test]
    fn only_stored_inserts_count_each_id_once() {
        let c = ObjectId::new();
        let insert = |position| BatchInsert {
            position,
            id: ObjectId::new(),
            conversation_id: c,
            sender_id: STUDENT,
        };
        let (first, refused, duplicate) = (insert(0), insert(1), insert(2));
        let again = BatchInsert {
            position: 3,
            ..first
        };
        let outcomes = [
            Some(WriteOutcome::Inserted { seq: 7 }),
            Some(WriteOutcome::Rejected("no".into())),
            Some(WriteOutcome::Duplicate {
                existing: ObjectId::new(),
                seq: 2,
            }),
            Some(WriteOutcome::Inserted { seq: 7 }),
        ];

        let batch = batch_messages(&[first, refused, duplicate, again], &outcomes);

        assert_eq!(
            batch,
            [BatchMessage {
                position: 0,
                id: first.id,
                conversation_id: c,
                sender_id: STUDENT,
                seq: 7
            }]
        );
        assert_eq!(lowest_seqs(&batch), HashMap::from([(c, 7)]));
    }

    #[test]
    fn a_cursor_move_is_a_max_upsert_on_the_unique_key() {
        let c = ObjectId::new();
        assert_eq!(
            cursor_updates(&[((c, MENTOR), 4)]),
            [doc! {
                "q": { "conversation_id": bson_id(c), "user_id": Bson::Int64(MENTOR) },
                "u": { "$max": { "last_read_seq": Bson::Int64(4) } },
                "upsert": true,
                "multi": false,
            }]
        );
    }

    #[test]
    fn first_seq_reads_a_looked_up_value_or_zero() {
        let row = doc! { "last": [{ "seq": Bson::Int32(3) }], "sent": [], "cursor": [{ "last_read_seq": 5_i64 }] };
        assert_eq!(first_seq(&row, "last", "seq"), 3);
        assert_eq!(first_seq(&row, "sent", "seq"), 0);
        assert_eq!(first_seq(&row, "cursor", "last_read_seq"), 5);
        assert_eq!(first_seq(&row, "absent", "seq"), 0);
    }
}
