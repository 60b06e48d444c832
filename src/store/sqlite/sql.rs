//! Every statement the store runs, and the functions that run them on a
//! given connection: reads on a reader's, writes on the write thread's.

use rusqlite::{Connection, OptionalExtension, Statement};

use super::errors::store_error;
use super::rows::{
    conversation_from_row, message_from_row, message_params, CONVERSATION_COLUMNS, MESSAGE_COLUMNS,
};
use crate::model::{
    Conversation, ConversationId, ConversationKey, Message, MessageId, Millis, ObjectId, Seq,
};
use crate::store::{ConversationFilter, HistoryPage, HistoryQuery, PageBuilder, StoreError};

/// Merges a journaled message. It may be stored already (journaled again by
/// a retry, or replayed after a crash during a merge): then only a view the
/// journaled copy carries is kept. Any other conflict (a resend's client id
/// the write path let through) stores nothing.
pub(super) const INSERT_MESSAGE: &str = "INSERT INTO messages
    (conversation_id, id, sender_id, text, created_at, client_id, viewed_by, viewed_at, seq)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (conversation_id, id) DO UPDATE
        SET viewed_by = excluded.viewed_by, viewed_at = excluded.viewed_at
        WHERE excluded.viewed_by IS NOT NULL
    ON CONFLICT DO NOTHING";
/// `ViewEffect::of` in SQL: a view by someone other than the sender, and
/// once per viewer (the same view again, a retry, rewrites the same values).
pub(super) const VIEW_MESSAGE: &str = "UPDATE messages SET viewed_by = ?3, viewed_at = ?4
    WHERE conversation_id = ?1 AND id = ?2 AND sender_id <> ?3
        AND (viewed_by IS NOT ?3 OR viewed_at = ?4)";
/// Whether a view that changed nothing had a target (then it was a repeat).
pub(super) const VIEW_TARGET: &str = "SELECT 1 FROM messages
    WHERE conversation_id = ?1 AND id = ?2 AND sender_id <> ?3";
/// An earlier message with this client id (a resend), or the message
/// itself (a retried batch): its id and seq.
pub(super) const STORED_CLIENT_ID: &str = "SELECT id, seq FROM messages
    WHERE conversation_id = ?1 AND sender_id = ?2 AND client_id = ?3";
/// The message itself, when it has no client id for `STORED_CLIENT_ID` to
/// find: a retried insert SQLite already holds keeps its seq (numbering it
/// again would report a seq it does not have and leave a gap).
pub(super) const STORED_ID: &str = "SELECT seq FROM messages
    WHERE conversation_id = ?1 AND id = ?2";
/// A conversation's newest seq in SQLite (the write thread adds the tail's).
pub(super) const LAST_SEQ: &str =
    "SELECT coalesce(max(seq), 0) FROM messages WHERE conversation_id = ?1";
/// A stored read cursor (without the own messages' part).
pub(super) const READ_CURSOR: &str =
    "SELECT last_read_seq FROM read_cursors WHERE conversation_id = ?1 AND user_id = ?2";
/// A participant's newest message in SQLite.
pub(super) const LAST_SENT: &str =
    "SELECT coalesce(max(seq), 0) FROM messages WHERE conversation_id = ?1 AND sender_id = ?2";
/// A stored message's seq and sender.
pub(super) const SEQ_AND_SENDER: &str =
    "SELECT seq, sender_id FROM messages WHERE conversation_id = ?1 AND id = ?2";
/// A cursor only moves forward, also when two writes race.
pub(super) const MOVE_CURSOR: &str = "INSERT INTO read_cursors
    (conversation_id, user_id, last_read_seq) VALUES (?1, ?2, ?3)
    ON CONFLICT DO UPDATE SET last_read_seq = max(last_read_seq, excluded.last_read_seq)";
/// The id of a conversation's message number ?2.
const MESSAGE_AT_SEQ: &str = "SELECT id FROM messages WHERE conversation_id = ?1 AND seq = ?2";
const INSERT_CONVERSATION: &str = "INSERT INTO conversations
    (id, lesson_id, mentor_id, student_id, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING";

/// Runs `body` between `begin` and `COMMIT`, rolling back on failure.
pub(super) fn in_transaction<T>(
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

/// Runs a prepared [`INSERT_MESSAGE`] for `message`.
pub(super) fn insert_message(
    insert: &mut Statement<'_>,
    message: &Message,
) -> rusqlite::Result<()> {
    insert.execute(message_params(message))?;
    Ok(())
}

/// Runs a prepared [`STORED_CLIENT_ID`]: the id of the stored message with
/// `message`'s client id, if it has one.
pub(super) fn stored_client_id(
    by_client_id: &mut Statement<'_>,
    message: &Message,
) -> rusqlite::Result<Option<(MessageId, Seq)>> {
    let Some(client_id) = message.client_id.as_deref() else {
        return Ok(None);
    };
    let stored = by_client_id
        .query_row(
            (
                message.conversation_id.bytes(),
                message.sender_id,
                client_id,
            ),
            |row| Ok((row.get::<_, [u8; 12]>(0)?, row.get::<_, Option<i64>>(1)?)),
        )
        .optional()?;
    Ok(stored.map(|(id, seq)| (ObjectId::from_bytes(id), seq_of(seq))))
}

/// Runs a prepared [`STORED_ID`] for a `message` without a client id (one
/// with a client id is found by [`stored_client_id`]).
pub(super) fn stored_id(
    by_id: &mut Statement<'_>,
    message: &Message,
) -> rusqlite::Result<Option<(MessageId, Seq)>> {
    if message.client_id.is_some() {
        return Ok(None);
    }
    let stored = by_id
        .query_row(
            (message.conversation_id.bytes(), message.id.bytes()),
            |row| row.get::<_, Option<i64>>(0),
        )
        .optional()?;
    Ok(stored.map(|seq| (message.id, seq_of(seq))))
}

/// A stored seq; NULL (a legacy message before its numbering) is 0.
fn seq_of(stored: Option<i64>) -> Seq {
    stored.and_then(|seq| seq.try_into().ok()).unwrap_or(0)
}

/// Runs a prepared [`LAST_SEQ`].
pub(super) fn last_seq(
    last: &mut Statement<'_>,
    conversation: ConversationId,
) -> rusqlite::Result<Seq> {
    let seq: i64 = last.query_row([conversation.bytes()], |row| row.get(0))?;
    Ok(seq_of(Some(seq)))
}

/// The stored part of `Store::message_at_seq`.
pub(super) fn message_at_seq(
    conn: &Connection,
    conversation: ConversationId,
    seq: Seq,
) -> rusqlite::Result<Option<MessageId>> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(None);
    };
    conn.prepare_cached(MESSAGE_AT_SEQ)?
        .query_row((conversation.bytes(), seq), |row| row.get::<_, [u8; 12]>(0))
        .optional()
        .map(|id| id.map(ObjectId::from_bytes))
}

pub(super) fn get_or_create(
    conn: &Connection,
    key: &ConversationKey,
    created_at: Millis,
) -> rusqlite::Result<Conversation> {
    conn.prepare_cached(INSERT_CONVERSATION)?.execute((
        ObjectId::new().bytes(),
        key.lesson_id,
        key.mentor_id,
        key.student_id,
        created_at.0,
    ))?;
    conversation_by_key(conn, key)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

pub(super) fn conversation_by_key(
    conn: &Connection,
    key: &ConversationKey,
) -> rusqlite::Result<Option<Conversation>> {
    conn.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations
         WHERE lesson_id = ?1 AND mentor_id = ?2 AND student_id = ?3"
    ))?
    .query_row(
        (key.lesson_id, key.mentor_id, key.student_id),
        conversation_from_row,
    )
    .optional()
}

pub(super) fn conversation_by_id(
    conn: &Connection,
    id: ConversationId,
) -> rusqlite::Result<Option<Conversation>> {
    conn.prepare_cached(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"
    ))?
    .query_row([id.bytes()], conversation_from_row)
    .optional()
}

/// See [`ConversationFilter`]: one statement per combination of set
/// fields, oldest first.
pub(super) fn conversations(
    conn: &Connection,
    filter: &ConversationFilter,
) -> rusqlite::Result<Vec<Conversation>> {
    let mut sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE 1 = 1");
    let mut args: Vec<i64> = Vec::with_capacity(5);
    if let Some(mentor) = filter.mentor_id {
        sql.push_str(" AND mentor_id = ?");
        args.push(mentor);
    }
    if let Some(student) = filter.student_id {
        sql.push_str(" AND student_id = ?");
        args.push(student);
    }
    if let Some(user) = filter.participant {
        sql.push_str(" AND (mentor_id = ? OR student_id = ?)");
        args.extend([user, user]);
    }
    sql.push_str(" ORDER BY created_at, id LIMIT ?");
    args.push(sql_limit(filter.limit));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), conversation_from_row)?;
    rows.collect()
}

/// See [`HistoryQuery`]: with `after`, the first page after it; otherwise the
/// last page before `before`, read newest first. Rows are stepped one at a
/// time and reading stops once the page is full, so a long range of large
/// messages is never loaded to be trimmed.
pub(super) fn history(conn: &Connection, query: &HistoryQuery) -> rusqlite::Result<HistoryPage> {
    let conversation = query.conversation_id.bytes();
    let limit = sql_limit(query.limit);
    let order = if query.newest_first() { "DESC" } else { "ASC" };
    let select = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1");
    let mut page = PageBuilder::new(query);
    match (query.after, query.before) {
        (Some(after), Some(before)) => fill_page(
            &mut page,
            conn.prepare_cached(&format!(
                "{select} AND id > ?2 AND id < ?3 ORDER BY id {order} LIMIT ?4"
            ))?
            .query((conversation, after.bytes(), before.bytes(), limit))?,
        )?,
        (Some(bound), None) | (None, Some(bound)) => {
            let op = if query.after.is_some() { ">" } else { "<" };
            fill_page(
                &mut page,
                conn.prepare_cached(&format!(
                    "{select} AND id {op} ?2 ORDER BY id {order} LIMIT ?3"
                ))?
                .query((conversation, bound.bytes(), limit))?,
            )?
        }
        (None, None) => fill_page(
            &mut page,
            conn.prepare_cached(&format!("{select} ORDER BY id {order} LIMIT ?2"))?
                .query((conversation, limit))?,
        )?,
    }
    Ok(page.finish())
}

/// Steps `rows` into `page` until it is full.
fn fill_page(page: &mut PageBuilder, mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<()> {
    while let Some(row) = rows.next()? {
        if !page.push(message_from_row(row)?) {
            break;
        }
    }
    Ok(())
}

/// SQLite's LIMIT is an i64; a larger `usize` means "no limit".
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
