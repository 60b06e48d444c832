//! Write batches: one round trip each.
//!
//! A run of inserts is one statement that numbers the new messages by
//! bumping `last_seq` on their conversations (`UPDATE … RETURNING`, which
//! locks those rows until the commit: nodes sharing the database number a
//! conversation's messages one batch after another, with no gap) and
//! inserts them. It is first tried optimistically ([`INSERT_NEW_MESSAGES`]:
//! every message new), since a resend or a retried batch is rare; the unique
//! indexes catch the exceptions (a unique violation), and the batch is then
//! written again with [`INSERT_MESSAGES`], which first finds what is
//! already stored (by id: a retried batch; by client_id: a resent message).
//! Measured with `benches/writer.rs` (docs/performance.md): the two lookups
//! per message of the careful statement cost about as much as the insert.
//! A batch over several conversations, or of several statements, is a
//! transaction that first locks its conversations in id order
//! ([`LOCK_CONVERSATIONS`]), so nodes never deadlock; long runs are cut
//! into statements of at most [`RUN_ROWS`] messages. A fresh connection
//! prepares its statements first (once). A batch that also
//! views messages or moves read cursors runs as one transaction whose
//! statements are pipelined (`BEGIN`, each run or op in batch order,
//! `COMMIT`), so a view sees the insert before it.
//!
//! A statement that fails for good (a bug or a constraint no op should
//! meet) would fail the whole batch, other users' messages with it: the
//! batch is then written in halves, down to the ops that fail alone, which
//! are `Rejected`. Each try has the store's deadline.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::errors::write_error;
use super::pipeline;
use super::rows::{column, id_bytes, millis, object_id, seq_param, seq_value, stored_text, time};
use super::PostgresStore;
use crate::model::{Message, MessageId, ViewEffect};
use crate::store::{ReadUpTo, StoreError, WriteOp, WriteOutcome};

/// The run of messages to insert, as the statement's rows (`ord`: 1-based
/// position in the run). Shared by both insert statements.
macro_rules! input_rows {
    () => {
        "
WITH input AS (
    SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::text[], $5::bytea[],
                         $6::timestamptz[], $7::bytea[])
        WITH ORDINALITY AS i(id, conversation_id, sender_id, text, text_exact, created_at,
                             client_id, ord)
),"
    };
}

/// Numbers the rows of `$new` (a CTE of new messages) from each
/// conversation's `last_seq`, which it bumps, and inserts them: CTEs
/// `bumped`, `numbered` and `inserted`. Shared by both insert statements.
macro_rules! number_and_insert {
    ($new:literal) => {
        concat!(
            "
bumped AS (
    UPDATE chat.conversations c SET last_seq = c.last_seq + n.count
    FROM (SELECT conversation_id, count(*) AS count FROM ",
            $new,
            " GROUP BY conversation_id) n
    WHERE c.id = n.conversation_id
    RETURNING c.id, c.last_seq - n.count AS base
),
numbered AS (
    SELECT f.*, b.base + row_number() OVER (PARTITION BY f.conversation_id ORDER BY f.ord) AS seq
    FROM ",
            $new,
            " f JOIN bumped b ON b.id = f.conversation_id
),
inserted AS (
    INSERT INTO chat.messages (id, conversation_id, seq, sender_id, text, text_exact,
                               created_at, client_id)
    SELECT id, conversation_id, seq, sender_id, text, text_exact, created_at, client_id
    FROM numbered
)"
        )
    };
}

/// Inserts a run of messages; one row per input message, in input order:
/// `stored_seq` (stored by an earlier try, same id), `duplicate_id` and
/// `duplicate_seq` (another message with its client_id was stored first),
/// `new_seq` (stored now), and for a message that repeats an earlier one
/// of the same run, the position of that one by id or by client_id.
const INSERT_MESSAGES: &str = concat!(
    input_rows!(),
    "
stored_by_id AS (
    SELECT i.ord, m.seq FROM input i JOIN chat.messages m ON m.id = i.id
),
stored_by_client AS (
    SELECT i.ord, m.id, m.seq FROM input i
    JOIN chat.messages m ON m.conversation_id = i.conversation_id
        AND m.sender_id = i.sender_id AND m.client_id = i.client_id
    WHERE i.client_id IS NOT NULL
),
candidates AS (
    SELECT i.*,
        first_value(i.ord) OVER (PARTITION BY i.id ORDER BY i.ord) AS first_by_id,
        CASE WHEN i.client_id IS NULL THEN i.ord
             ELSE first_value(i.ord) OVER (
                 PARTITION BY i.conversation_id, i.sender_id, i.client_id ORDER BY i.ord)
        END AS first_by_client
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM stored_by_id s WHERE s.ord = i.ord)
      AND NOT EXISTS (SELECT 1 FROM stored_by_client s WHERE s.ord = i.ord)
),
fresh AS (
    SELECT * FROM candidates WHERE first_by_id = ord AND first_by_client = ord
),",
    number_and_insert!("fresh"),
    "
SELECT s.seq AS stored_seq, d.id AS duplicate_id, d.seq AS duplicate_seq, n.seq AS new_seq,
       c.first_by_id, c.first_by_client
FROM input i
LEFT JOIN stored_by_id s ON s.ord = i.ord
LEFT JOIN stored_by_client d ON d.ord = i.ord
LEFT JOIN numbered n ON n.ord = i.ord
LEFT JOIN candidates c ON c.ord = i.ord
ORDER BY i.ord"
);

/// Inserts a run of messages that are all new (no id or client_id stored,
/// none twice in the run; else a unique violation fails it): one row per
/// input message, in input order, with its seq (NULL: no such
/// conversation).
const INSERT_NEW_MESSAGES: &str = concat!(
    input_rows!(),
    number_and_insert!("input"),
    "
SELECT n.seq FROM input i LEFT JOIN numbered n ON n.ord = i.ord ORDER BY i.ord"
);

/// Locks a batch's conversations in id order before anything else, so
/// batches of several nodes that touch the same conversations wait for each
/// other instead of deadlocking (every other row a batch writes belongs to
/// one of them).
const LOCK_CONVERSATIONS: &str =
    "SELECT 1 FROM chat.conversations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Marks a message viewed under the rule of [`ViewEffect::of`]; answers
/// the message's state before the statement (no row: no such message).
const VIEW_MESSAGE: &str = "
WITH target AS (
    SELECT sender_id, viewed_by, viewed_at FROM chat.messages
    WHERE id = $2 AND conversation_id = $1
),
recorded AS (
    UPDATE chat.messages SET viewed_by = $3, viewed_at = $4
    WHERE id = $2 AND conversation_id = $1 AND sender_id <> $3
      AND (viewed_by IS DISTINCT FROM $3 OR viewed_at IS NOT DISTINCT FROM $4)
)
SELECT sender_id, viewed_by, viewed_at FROM target";

/// Moves a read cursor forward to seq `$3`, or to the seq of message `$4`
/// when it is the other participant's. The cursor before the move is the
/// stored one or the user's own newest message, whichever is later
/// (posting moves it without a row). Answers `last_seq`, that cursor, the
/// target seq (NULL: no such message) and the moved cursor (NULL: not
/// moved); no row when the conversation does not exist.
const MOVE_CURSOR: &str = "
WITH state AS (
    SELECT c.last_seq, GREATEST(
        coalesce((SELECT r.last_read_seq FROM chat.read_cursors r
                  WHERE r.conversation_id = $1 AND r.user_id = $2), 0),
        coalesce((SELECT max(m.seq) FROM chat.messages m
                  WHERE m.conversation_id = $1 AND m.sender_id = $2), 0)) AS cursor
    FROM chat.conversations c WHERE c.id = $1
),
target AS (
    SELECT $3::int8 AS seq WHERE $4::bytea IS NULL
    UNION ALL
    SELECT m.seq FROM chat.messages m
    WHERE $4::bytea IS NOT NULL AND m.id = $4 AND m.conversation_id = $1 AND m.sender_id <> $2
),
moved AS (
    INSERT INTO chat.read_cursors (conversation_id, user_id, last_read_seq)
    SELECT $1, $2, t.seq FROM state s, target t WHERE t.seq <= s.last_seq AND t.seq > s.cursor
    ON CONFLICT (conversation_id, user_id) DO UPDATE
        SET last_read_seq = GREATEST(chat.read_cursors.last_read_seq, EXCLUDED.last_read_seq)
    RETURNING last_read_seq
)
SELECT s.last_seq, s.cursor, (SELECT t.seq FROM target t), (SELECT last_read_seq FROM moved)
FROM state s";

/// What one statement of a batch does.
enum Step {
    /// `ops[range]` are all inserts.
    Inserts(std::ops::Range<usize>),
    /// `ops[index]` is a view or a cursor move.
    Single(usize),
}

/// Most messages one insert statement carries, and most text bytes: a
/// drained backlog (up to `CHAT_WRITER_BATCH` ops) becomes several
/// statements in one transaction, each well inside `statement_timeout`.
const RUN_ROWS: usize = 1_000;
const RUN_TEXT_BYTES: usize = 4 << 20;

/// The statements of a batch, in order: runs of inserts (cut at
/// [`RUN_ROWS`] or [`RUN_TEXT_BYTES`]) and single ops.
fn steps(ops: &[WriteOp]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut index = 0;
    while index < ops.len() {
        if matches!(ops[index], WriteOp::Insert(_)) {
            let start = index;
            let mut bytes = 0;
            while index < ops.len() && index - start < RUN_ROWS && bytes < RUN_TEXT_BYTES {
                let WriteOp::Insert(message) = &ops[index] else {
                    break;
                };
                bytes += message.text.len();
                index += 1;
            }
            steps.push(Step::Inserts(start..index));
        } else {
            steps.push(Step::Single(index));
            index += 1;
        }
    }
    steps
}

/// The conversations a batch writes to.
fn conversations_of(ops: &[WriteOp]) -> Vec<Vec<u8>> {
    let mut ids: Vec<_> = ops
        .iter()
        .map(|op| match op {
            WriteOp::Insert(message) => message.conversation_id,
            WriteOp::View {
                conversation_id, ..
            }
            | WriteOp::Read {
                conversation_id, ..
            } => *conversation_id,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().map(id_bytes).collect()
}

/// The parameters of one statement, owned so the pipeline can borrow them.
enum Params {
    Inserts {
        ids: Vec<Vec<u8>>,
        conversations: Vec<Vec<u8>>,
        senders: Vec<i64>,
        texts: Vec<String>,
        exact_texts: Vec<Option<Vec<u8>>>,
        created: Vec<SystemTime>,
        client_ids: Vec<Option<Vec<u8>>>,
    },
    View {
        conversation: Vec<u8>,
        message: Vec<u8>,
        viewer: i64,
        at: SystemTime,
    },
    Read {
        conversation: Vec<u8>,
        user: i64,
        seq: Option<i64>,
        message: Option<Vec<u8>>,
    },
}

impl Params {
    fn of(step: &Step, ops: &[WriteOp]) -> Params {
        match step {
            Step::Inserts(range) => {
                let messages: Vec<&Message> = ops[range.clone()]
                    .iter()
                    .filter_map(|op| match op {
                        WriteOp::Insert(message) => Some(message),
                        _ => None,
                    })
                    .collect();
                let (texts, exact_texts) = messages.iter().map(|m| stored_text(&m.text)).unzip();
                Params::Inserts {
                    ids: messages.iter().map(|m| id_bytes(m.id)).collect(),
                    conversations: messages
                        .iter()
                        .map(|m| id_bytes(m.conversation_id))
                        .collect(),
                    senders: messages.iter().map(|m| m.sender_id).collect(),
                    texts,
                    exact_texts,
                    created: messages.iter().map(|m| time(m.created_at)).collect(),
                    client_ids: messages
                        .iter()
                        .map(|m| m.client_id.as_ref().map(|c| c.as_bytes().to_vec()))
                        .collect(),
                }
            }
            Step::Single(index) => match &ops[*index] {
                WriteOp::View {
                    conversation_id,
                    message_id,
                    viewer_id,
                    at,
                } => Params::View {
                    conversation: id_bytes(*conversation_id),
                    message: id_bytes(*message_id),
                    viewer: *viewer_id,
                    at: time(*at),
                },
                WriteOp::Read {
                    conversation_id,
                    user_id,
                    up_to,
                } => {
                    let (seq, message) = match up_to {
                        ReadUpTo::Seq(seq) => (Some(seq_param(*seq)), None),
                        ReadUpTo::Message(id) => (None, Some(id_bytes(*id))),
                    };
                    Params::Read {
                        conversation: id_bytes(*conversation_id),
                        user: *user_id,
                        seq,
                        message,
                    }
                }
                // `steps` puts inserts in runs.
                WriteOp::Insert(_) => Params::Read {
                    conversation: Vec::new(),
                    user: 0,
                    seq: None,
                    message: None,
                },
            },
        }
    }

    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Params::Inserts {
                ids,
                conversations,
                senders,
                texts,
                exact_texts,
                created,
                client_ids,
            } => vec![
                ids,
                conversations,
                senders,
                texts,
                exact_texts,
                created,
                client_ids,
            ],
            Params::View {
                conversation,
                message,
                viewer,
                at,
            } => vec![conversation, message, viewer, at],
            Params::Read {
                conversation,
                user,
                seq,
                message,
            } => vec![conversation, user, seq, message],
        }
    }
}

/// How a run of inserts is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inserts {
    /// As all new ([`INSERT_NEW_MESSAGES`]).
    Optimistic,
    /// Looking for what is stored first ([`INSERT_MESSAGES`]).
    Careful,
}

/// Why a try at a batch failed.
enum Failure {
    /// The optimistic inserts met a stored message (a unique violation).
    Conflict,
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

/// The batch's prepared statements on one connection.
struct Statements {
    lock: Statement,
    insert: Statement,
    view: Statement,
    read: Statement,
}

impl Statements {
    async fn prepare(client: &Object, inserts: Inserts) -> Result<Statements, StoreError> {
        let prepare = |sql: &'static str| async move {
            client
                .prepare_cached(sql)
                .await
                .map_err(|error| write_error("prepare", error))
        };
        let insert = match inserts {
            Inserts::Optimistic => INSERT_NEW_MESSAGES,
            Inserts::Careful => INSERT_MESSAGES,
        };
        Ok(Statements {
            lock: prepare(LOCK_CONVERSATIONS).await?,
            insert: prepare(insert).await?,
            view: prepare(VIEW_MESSAGE).await?,
            read: prepare(MOVE_CURSOR).await?,
        })
    }

    fn of(&self, step: &Step, ops: &[WriteOp]) -> &Statement {
        match step {
            Step::Inserts(_) => &self.insert,
            Step::Single(index) => match ops[*index] {
                WriteOp::View { .. } => &self.view,
                _ => &self.read,
            },
        }
    }
}

/// A connection that goes back to the pool only after a batch ended
/// cleanly: a batch dropped or failed halfway could leave it inside a
/// transaction, so it is closed instead. Reads use it too: a read dropped
/// at its deadline leaves its statement on the connection, and every later
/// call on it would wait behind that one (a server that stopped answering).
pub(super) struct BatchConnection(pub(super) Option<Object>);

impl BatchConnection {
    pub(super) fn client(&self) -> Result<&Object, StoreError> {
        self.0.as_ref().ok_or_else(|| {
            StoreError::Internal("postgres: batch connection used after release".into())
        })
    }

    pub(super) fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for BatchConnection {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
        }
    }
}

type RowsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

impl PostgresStore {
    pub(super) async fn apply_batch(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.apply_isolating(&ops).await
    }

    /// The batch; if it fails for good, each half of it, down to the ops
    /// that fail alone, which are `Rejected` (about 2·log2(n) tries for
    /// one bad op). Halves are written in order, each committed before the
    /// next, so a view still comes after its insert. `Unavailable` ends it:
    /// the writer retries the whole batch, which is safe.
    fn apply_isolating<'a>(
        &'a self,
        ops: &'a [WriteOp],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<WriteOutcome>, StoreError>> + Send + 'a>> {
        Box::pin(async move {
            match self.apply_once(ops).await {
                Err(StoreError::Internal(reason)) if ops.len() == 1 => {
                    tracing::error!(%reason, "PostgreSQL refused a write for good; it is rejected");
                    Ok(vec![WriteOutcome::Rejected(reason)])
                }
                Err(StoreError::Internal(reason)) => {
                    tracing::warn!(%reason, ops = ops.len(), "a PostgreSQL batch failed for good; writing its halves apart");
                    let (first, second) = ops.split_at(ops.len() / 2);
                    let mut outcomes = self.apply_isolating(first).await?;
                    outcomes.extend(self.apply_isolating(second).await?);
                    Ok(outcomes)
                }
                result => result,
            }
        })
    }

    /// One try, within the call deadline: optimistic first, and written
    /// again carefully if it met a stored message.
    async fn apply_once(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.bounded("write batch", async {
            match self.apply_steps(ops, Inserts::Optimistic).await {
                Ok(outcomes) => Ok(outcomes),
                Err(Failure::Conflict) => match self.apply_steps(ops, Inserts::Careful).await {
                    Ok(outcomes) => Ok(outcomes),
                    Err(Failure::Store(error)) => Err(error),
                    // Careful inserts report unique violations as store errors.
                    Err(Failure::Conflict) => Err(StoreError::Unavailable(
                        "postgres: a stored message appeared while the batch was written".into(),
                    )),
                },
                Err(Failure::Store(error)) => Err(error),
            }
        })
        .await
    }

    async fn apply_steps(
        &self,
        ops: &[WriteOp],
        inserts: Inserts,
    ) -> Result<Vec<WriteOutcome>, Failure> {
        let connection = BatchConnection(Some(self.write_client().await?));
        let result = run_pipeline(connection.client()?, ops, inserts).await;
        // Every answer was read, an error's too (an aborted transaction ends
        // with its COMMIT as a rollback): the session is idle again. Only a
        // try dropped halfway (its deadline) closes the connection.
        connection.release();
        result
    }
}

/// Sends a batch's statements (in a transaction when there are several,
/// or several conversations) and reads their answers, one round trip.
async fn run_pipeline(
    client: &Object,
    ops: &[WriteOp],
    inserts: Inserts,
) -> Result<Vec<WriteOutcome>, Failure> {
    let statements = Statements::prepare(client, inserts).await?;
    // The error that fails the batch: a unique violation of the
    // optimistic inserts means "write it carefully".
    let failure = |what: &str, error: tokio_postgres::Error| {
        if inserts == Inserts::Optimistic
            && error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        {
            Failure::Conflict
        } else {
            Failure::Store(write_error(what, error))
        }
    };
    let steps = steps(ops);
    let params: Vec<Params> = steps.iter().map(|step| Params::of(step, ops)).collect();
    let values: Vec<Vec<&(dyn ToSql + Sync)>> = params.iter().map(Params::values).collect();
    let conversations = conversations_of(ops);
    let lock_values: [&(dyn ToSql + Sync); 1] = [&conversations];
    let in_transaction = steps.len() > 1 || conversations.len() > 1;
    let mut futures: Vec<RowsFuture<'_>> = Vec::with_capacity(steps.len() + 3);
    if in_transaction {
        futures.push(Box::pin(async move {
            client.batch_execute("BEGIN").await.map(|()| Vec::new())
        }));
        futures.push(Box::pin(client.query(&statements.lock, &lock_values)));
    }
    for (step, values) in steps.iter().zip(&values) {
        let statement = statements.of(step, ops);
        futures.push(Box::pin(client.query(statement, values)));
    }
    if in_transaction {
        // After a failed statement this ends the transaction as a
        // ROLLBACK; the statement's own error is what is reported.
        futures.push(Box::pin(async move {
            client.batch_execute("COMMIT").await.map(|()| Vec::new())
        }));
    }
    let mut answers = pipeline::in_order(futures).await;
    if in_transaction {
        let commit = answers.pop();
        // BEGIN, the lock, the statements: the first error is the cause of
        // a failed commit (the statements after it only say the transaction
        // aborted).
        if let Some(position) = answers.iter().position(Result::is_err) {
            if let Some(Err(error)) = answers.into_iter().nth(position) {
                return Err(failure("write batch", error));
            }
            return Err(Failure::Store(StoreError::Internal(
                "postgres: lost a statement's error".into(),
            )));
        }
        answers.drain(..2);
        if let Some(Err(error)) = commit {
            return Err(failure("commit", error));
        }
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for (step, answer) in steps.iter().zip(answers) {
        let rows = answer.map_err(|error| failure("write batch", error))?;
        match step {
            Step::Inserts(range) => {
                let run = &ops[range.clone()];
                match inserts {
                    Inserts::Optimistic => new_insert_outcomes(run, &rows, &mut outcomes)?,
                    Inserts::Careful => insert_outcomes(run, &rows, &mut outcomes)?,
                }
            }
            Step::Single(index) => outcomes.push(single_outcome(&ops[*index], &rows)?),
        }
    }
    Ok(outcomes)
}

/// Both insert statements answer one row per message of the run.
fn one_row_per_insert(ops: &[WriteOp], rows: &[Row]) -> Result<(), StoreError> {
    if rows.len() == ops.len() {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "postgres: {} outcomes for {} inserts",
            rows.len(),
            ops.len()
        )))
    }
}

/// Outcomes of a run of inserts from [`INSERT_MESSAGES`]' rows.
fn insert_outcomes(
    ops: &[WriteOp],
    rows: &[Row],
    outcomes: &mut Vec<WriteOutcome>,
) -> Result<(), StoreError> {
    one_row_per_insert(ops, rows)?;
    let first = outcomes.len();
    for (position, row) in rows.iter().enumerate() {
        let stored_seq: Option<i64> = column(row, 0)?;
        let duplicate_id: Option<Vec<u8>> = column(row, 1)?;
        let duplicate_seq: Option<i64> = column(row, 2)?;
        let new_seq: Option<i64> = column(row, 3)?;
        let first_by_id: Option<i64> = column(row, 4)?;
        let first_by_client: Option<i64> = column(row, 5)?;
        // Positions in the run are 1-based (ORDINALITY).
        let earlier = |ordinal: Option<i64>| {
            ordinal
                .and_then(|o| usize::try_from(o - 1).ok())
                .filter(|&p| p < position)
        };
        let outcome = if let Some(seq) = stored_seq {
            WriteOutcome::Inserted {
                seq: seq_value(seq),
            }
        } else if let (Some(id), Some(seq)) = (duplicate_id, duplicate_seq) {
            WriteOutcome::Duplicate {
                existing: object_id(&id, "message")?,
                seq: seq_value(seq),
            }
        } else if let Some(seq) = new_seq {
            WriteOutcome::Inserted {
                seq: seq_value(seq),
            }
        } else if let Some(same_id) = earlier(first_by_id) {
            // The same message twice in the run: as the first one went.
            outcomes[first + same_id].clone()
        } else if let Some(same_client) = earlier(first_by_client) {
            match &outcomes[first + same_client] {
                WriteOutcome::Inserted { seq } => WriteOutcome::Duplicate {
                    existing: message_id(&ops[same_client])?,
                    seq: *seq,
                },
                other => other.clone(),
            }
        } else {
            WriteOutcome::Rejected("no such conversation".into())
        };
        outcomes.push(outcome);
    }
    Ok(())
}

/// Outcomes of a run of inserts from [`INSERT_NEW_MESSAGES`]' rows.
fn new_insert_outcomes(
    ops: &[WriteOp],
    rows: &[Row],
    outcomes: &mut Vec<WriteOutcome>,
) -> Result<(), StoreError> {
    one_row_per_insert(ops, rows)?;
    for row in rows {
        let seq: Option<i64> = column(row, 0)?;
        outcomes.push(match seq {
            Some(seq) => WriteOutcome::Inserted {
                seq: seq_value(seq),
            },
            None => WriteOutcome::Rejected("no such conversation".into()),
        });
    }
    Ok(())
}

fn message_id(op: &WriteOp) -> Result<MessageId, StoreError> {
    match op {
        WriteOp::Insert(message) => Ok(message.id),
        _ => Err(StoreError::Internal(
            "postgres: an insert run holds another op".into(),
        )),
    }
}

/// The outcome of a view or a cursor move from its statement's rows.
fn single_outcome(op: &WriteOp, rows: &[Row]) -> Result<WriteOutcome, StoreError> {
    match op {
        WriteOp::View { viewer_id, at, .. } => {
            let Some(row) = rows.first() else {
                return Ok(WriteOutcome::ViewTargetMissing);
            };
            let sender: i64 = column(row, 0)?;
            let viewed_by: Option<i64> = column(row, 1)?;
            let viewed_at: Option<SystemTime> = column(row, 2)?;
            Ok(ViewEffect::of(sender, viewed_by, viewed_at.map(millis), *viewer_id, *at).into())
        }
        WriteOp::Read { up_to, .. } => {
            let Some(row) = rows.first() else {
                // No such conversation: nothing to read in it.
                return Ok(match up_to {
                    ReadUpTo::Seq(0) => WriteOutcome::ReadUnchanged { last_read_seq: 0 },
                    ReadUpTo::Seq(_) => WriteOutcome::SeqBeyondLast { last_seq: 0 },
                    ReadUpTo::Message(_) => WriteOutcome::ViewTargetMissing,
                });
            };
            let last_seq = seq_value(column(row, 0)?);
            let cursor = seq_value(column(row, 1)?);
            let target: Option<i64> = column(row, 2)?;
            let moved: Option<i64> = column(row, 3)?;
            Ok(match (up_to, target, moved) {
                (_, _, Some(moved)) => WriteOutcome::ReadMoved {
                    last_read_seq: seq_value(moved),
                },
                (ReadUpTo::Message(_), None, None) => WriteOutcome::ViewTargetMissing,
                (ReadUpTo::Seq(seq), _, None) if *seq > last_seq => {
                    WriteOutcome::SeqBeyondLast { last_seq }
                }
                _ => WriteOutcome::ReadUnchanged {
                    last_read_seq: cursor,
                },
            })
        }
        WriteOp::Insert(_) => Err(StoreError::Internal(
            "postgres: an insert outside an insert run".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Millis, ObjectId};

    fn insert() -> WriteOp {
        WriteOp::Insert(Message {
            id: ObjectId::new(),
            conversation_id: ObjectId::new(),
            sender_id: 1,
            text: String::new(),
            created_at: Millis(0),
            seq: 0,
            client_id: None,
            viewed_by: None,
            viewed_at: None,
        })
    }

    fn read() -> WriteOp {
        WriteOp::Read {
            conversation_id: ObjectId::new(),
            user_id: 1,
            up_to: ReadUpTo::Seq(1),
        }
    }

    #[test]
    fn inserts_run_together_and_other_ops_stand_alone() {
        let ops = vec![insert(), insert(), read(), read(), insert()];
        let shape: Vec<String> = steps(&ops)
            .iter()
            .map(|step| match step {
                Step::Inserts(range) => format!("i{}..{}", range.start, range.end),
                Step::Single(index) => format!("s{index}"),
            })
            .collect();
        assert_eq!(shape, ["i0..2", "s2", "s3", "i4..5"]);
    }

    #[test]
    fn long_runs_are_cut_by_rows_and_by_text_bytes() {
        let many: Vec<WriteOp> = (0..2_500).map(|_| insert()).collect();
        let lengths: Vec<usize> = steps(&many)
            .iter()
            .map(|step| match step {
                Step::Inserts(range) => range.len(),
                Step::Single(_) => 0,
            })
            .collect();
        assert_eq!(lengths, [1_000, 1_000, 500]);
        let big = |_| match insert() {
            WriteOp::Insert(message) => WriteOp::Insert(Message {
                text: "x".repeat(1 << 20),
                ..message
            }),
            other => other,
        };
        let large: Vec<WriteOp> = (0..10).map(big).collect();
        let lengths: Vec<usize> = steps(&large)
            .iter()
            .map(|step| match step {
                Step::Inserts(range) => range.len(),
                Step::Single(_) => 0,
            })
            .collect();
        assert_eq!(lengths, [4, 4, 2]);
    }
}
